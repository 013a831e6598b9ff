"""The backend table and backend selection (``backend="auto"``): the only backend table.

:data:`BACKEND_TABLE` maps each backend name to its module (imported lazily: importing it
registers its ops, see :mod:`wae_fast.contract`) and its declared :class:`Capabilities` (op
families, kernel kinds, maximum number of kernel scales, dtypes, estimators, precisions, device
types).  The module itself only answers what depends on this machine:

* ``availability(device_type) -> Optional[str]``: None when it can run on that device type here,
  else why not (and how to get it).  Cheap: it never starts a compiler;
* optionally ``prepare(device_type) -> Optional[str]``: one-time work before the first real call
  (the compiled backends' first-use build, :mod:`wae_fast.build`), run only when resolving a real
  call; a failure makes "auto" move on;
* optionally ``status() -> str``: how it is provided (compiled backends: "built at install",
  "cached build", "needs a build on first use (about N s)", see :mod:`wae_fast.build`).

A call describes itself with a :class:`Request`; ``backend="auto"`` picks the first backend of
:data:`AUTO_ORDER` (fastest first) that is available and whose capabilities cover the request;
an explicitly named backend whose capabilities do not cover it raises ``ValueError`` naming the
limit, before any work.  ``import wae_fast`` imports none of the backend modules except the
reference, so it never needs Triton, a GPU or an extension.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .contract import FAMILIES, PRECISIONS
from .kernel_specs import KIND_IMQ, KIND_POLY, KIND_RBF
from .validation import FLOAT_DTYPES

Device = Union[torch.Tensor, torch.device, str, None]

_KIND_NAMES = {KIND_IMQ: "IMQ", KIND_RBF: "RBF", KIND_POLY: "Polynomial"}
MMD_ESTIMATORS = ("unbiased", "biased")
PRIOR_ESTIMATORS = ("closed_form", "sampled", "linear")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can compute, whatever the machine (declared, not probed)."""

    families: tuple[str, ...]
    devices: Optional[tuple[str, ...]] = None  # device types; None: any
    kinds: tuple[int, ...] = (KIND_IMQ, KIND_RBF, KIND_POLY)
    max_scales: Optional[int] = None  # None: any number of kernel scales
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    estimators: tuple[str, ...] = MMD_ESTIMATORS + ("sampled",)
    precisions: tuple[str, ...] = PRECISIONS


@dataclass(frozen=True)
class Request:
    """What one call needs; None fields are not checked."""

    family: str = "mmd"
    kind: Optional[int] = None
    num_scales: Optional[int] = None
    dtype: Optional[torch.dtype] = None
    estimator: Optional[str] = None
    precision: Optional[str] = None


@dataclass(frozen=True)
class Backend:
    module: str
    caps: Capabilities


#: Every backend: its module and its capabilities.  A new backend is one entry here.
BACKEND_TABLE: dict[str, Backend] = {
    "reference": Backend("wae_fast.reference", Capabilities(
        families=("mmd", "reparam", "prior", "kernel_matmul", "mmd_segments"),
        estimators=MMD_ESTIMATORS + PRIOR_ESTIMATORS)),
    "cpp": Backend("wae_fast.cpp_backend", Capabilities(
        families=("mmd", "reparam", "prior", "kernel_matmul", "mmd_segments"), devices=("cpu",),
        max_scales=16)),
    "triton": Backend("wae_fast.kernels.backend", Capabilities(
        families=("mmd", "reparam", "prior", "kernel_matmul", "mmd_segments"), devices=("cuda", "cpu"))),
    "cuda": Backend("wae_fast.cuda_backend", Capabilities(
        families=("mmd", "reparam", "prior", "kernel_matmul", "mmd_segments"), devices=("cuda",),
        max_scales=16)),
    # the cuda sources emulated on the CPU, for testing: never in AUTO_ORDER
    "cuda_emu": Backend("wae_fast.cuda_emu_backend", Capabilities(
        families=("mmd", "reparam", "prior", "mmd_segments"), devices=("cpu",), max_scales=16)),
}

BACKENDS: tuple[str, ...] = tuple(BACKEND_TABLE)

#: Preference of ``backend="auto"`` per device type, fastest first.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpp", "reference"),
}

_modules: dict[str, object] = {}
_prepared: dict[tuple[str, str], Optional[str]] = {}


def _load(name: str):
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(BACKEND_TABLE[name].module)
        except ImportError as exc:  # missing Triton, extension not built, ...
            _modules[name] = exc
    return _modules[name]


def _device_type(where: Device) -> str:
    if isinstance(where, torch.device):
        return where.type
    if where is None:
        return "cpu"
    if isinstance(where, torch.Tensor):
        return where.device.type
    return torch.device(where).type


def _check_name(name) -> None:
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name not in BACKEND_TABLE:
        raise ValueError(f"backend: unknown backend {name!r}; expected 'auto' or one of {BACKENDS}")


def capability_limit(name: str, request: Request) -> Optional[str]:
    """None if backend ``name``'s declared capabilities cover ``request``, else the limit."""
    _check_name(name)
    if request.family not in FAMILIES:
        raise ValueError(f"family: unknown op family {request.family!r}; expected one of {tuple(FAMILIES)}")
    caps = BACKEND_TABLE[name].caps
    if request.family not in caps.families:
        return f"backend {name!r} does not implement the {request.family} op family"
    if request.kind is not None and request.kind not in caps.kinds:
        return (f"backend {name!r} does not implement the {_KIND_NAMES.get(request.kind, request.kind)} "
                "kernel")
    if request.num_scales is not None and caps.max_scales is not None and request.num_scales > caps.max_scales:
        return (f"backend {name!r} supports at most {caps.max_scales} kernel scales, the kernel has "
                f"{request.num_scales}")
    if request.dtype is not None and request.dtype not in caps.dtypes:
        return f"backend {name!r} does not support dtype {request.dtype}"
    if request.estimator is not None and request.estimator not in caps.estimators:
        supported = [e for e in caps.estimators
                     if e in (PRIOR_ESTIMATORS if request.family == "prior" else MMD_ESTIMATORS)]
        return (f"backend {name!r} does not implement estimator={request.estimator!r} "
                f"(it implements {supported})")
    if request.precision is not None and request.precision not in caps.precisions:
        return f"backend {name!r} does not support precision={request.precision!r}"
    return None


def unavailable_reason(name: str, device: Device = None, family: str = "mmd",
                       request: Optional[Request] = None) -> Optional[str]:
    """None if backend ``name`` can run ``request`` (by default: op family ``family``) on
    ``device`` here, else why not.  Never compiles anything."""
    req = Request(family) if request is None else request
    limit = capability_limit(name, req)
    if limit is not None:
        return limit
    dev = _device_type(device)
    mod = _load(name)
    if isinstance(mod, Exception):
        return f"backend {name!r} could not be imported ({mod})"
    why = mod.availability(dev)  # the module's own words first: they say how to get it
    devices = BACKEND_TABLE[name].caps.devices
    if why is None and devices is not None and dev not in devices:
        why = f"backend {name!r} does not run on device type {dev!r}"
    return why


def available_backends(device: Device = None, family: str = "mmd",
                       detail: bool = False) -> dict[str, Optional[str]]:
    """Map every backend name to None (available on ``device``) or the reason it is not.

    ``detail=True``: map every name to a line, "available" with how the backend is provided
    (e.g. "available: built at install", "available: needs a build on first use (about 30 s
    ...)") or "unavailable: <reason>".  Neither form ever starts a compiler."""
    out: dict[str, Optional[str]] = {}
    for name in BACKENDS:
        reason = unavailable_reason(name, device, family)
        if detail:
            how = getattr(_load(name), "status", None) if reason is None else None
            reason = f"unavailable: {reason}" if reason is not None else (
                f"available: {how()}" if how is not None else "available")
        out[name] = reason
    return out


def _prepare(name: str, dev: str) -> Optional[str]:
    if torch.compiler.is_compiling():
        # a trace runs the ops' fake implementations: nothing to build (never compile in a trace)
        return None
    key = (name, dev)
    if key not in _prepared:
        hook = getattr(_load(name), "prepare", None)
        _prepared[key] = hook(dev) if hook is not None else None
    return _prepared[key]


def resolve_backend(backend: str, device: Device = None, family: str = "mmd",
                    request: Optional[Request] = None, prepare: bool = False) -> str:
    """The backend a call with ``backend=...`` on ``device`` uses: "auto" picks the fastest
    available backend whose capabilities cover ``request``.  Raises ValueError for an unknown
    name or a request beyond the named backend's capabilities (naming the limit), RuntimeError
    when the named backend is not available here (with the reason).  ``prepare`` runs the
    backend's one-time preparation (e.g. a JIT build) -- only for a real call."""
    req = Request(family) if request is None else request
    dev = _device_type(device)
    if backend == "auto":
        reasons = []
        for name in AUTO_ORDER.get(dev, ("reference",)):
            why = unavailable_reason(name, dev, request=req)
            if why is None and prepare:
                why = _prepare(name, dev)
            if why is None:
                return name
            reasons.append(f"{name}: {why}")
        raise ValueError(f"backend='auto': no backend can run this {req.family} call on {dev} "
                         f"({'; '.join(reasons)})")
    _check_name(backend)
    limit = capability_limit(backend, req)
    if limit is not None:
        raise ValueError(f"backend={backend!r} cannot run this call: {limit}")
    why = unavailable_reason(backend, dev, request=req)
    if why is None and prepare:
        why = _prepare(backend, dev)
    if why is not None:
        raise RuntimeError(f"backend={backend!r} is not available for {req.family} on {dev}: {why}")
    return backend


_selected: dict[tuple, str] = {}


@torch.compiler.assume_constant_result
def _select(backend: str, dev: str, family: str, kind: Optional[int], num_scales: Optional[int],
            dtype: Optional[torch.dtype], estimator: Optional[str], precision: Optional[str]) -> str:
    # Run eagerly even under torch.compile (a constant of the graph): backend modules are
    # imported and prepared here, never traced.  Cached per request: a call costs one lookup.
    key = (backend, dev, family, kind, num_scales, dtype, estimator, precision)
    name = _selected.get(key)
    if name is None:
        req = Request(family, kind, num_scales, dtype, estimator, precision)
        name = _selected[key] = resolve_backend(backend, dev, request=req, prepare=True)
    return name


def clear_selection_cache() -> None:
    """Forget the cached answers of :func:`select_backend` (after changing what is available
    in this process, e.g. in tests that patch a backend's availability)."""
    _selected.clear()


def select_backend(backend: str, device: Device, request: Request) -> str:
    """:func:`resolve_backend` for a real call (runs the backend's preparation once); the
    answer is cached per (backend, device type, request) and is a constant under torch.compile."""
    if not isinstance(backend, str):
        _check_name(backend)  # raises TypeError naming it
    return _select(backend, _device_type(device), request.family, request.kind,
                   request.num_scales, request.dtype, request.estimator, request.precision)


def select_mmd_backend(backend: str, device: torch.device, kind: int, num_scales: int,
                       dtype: torch.dtype, estimator: str, precision: str) -> str:
    """:func:`select_backend` for an mmd call, without building a :class:`Request` (the same
    cached answer: a small call pays one lookup)."""
    if not isinstance(backend, str):
        _check_name(backend)  # raises TypeError naming it
    return _select(backend, _device_type(device), "mmd", kind, num_scales, dtype, estimator, precision)


def which_backend(device: Device = None, backend: str = "auto", family: str = "mmd") -> str:
    """Which backend a call on ``device`` (a tensor, device or name) with ``backend`` would use."""
    return resolve_backend(backend, device, family)
