"""Backend registry and selection (``backend="auto"``).

Each backend lives in its own module, imported lazily, exposing

* ``availability(device_type: str) -> Optional[str]``: None when it runs on that device type,
  otherwise the reason it does not (and how to get it);
* ``OPS``: the op families it implements, a subset of {"mmd", "reparam"}.

Importing the module registers its ops (see :mod:`wae_fast.contract`).  ``import wae_fast``
imports none of them except the reference, so it never needs Triton, a GPU or an extension.
"""
from __future__ import annotations

import importlib
from typing import Optional, Union

import torch

BACKENDS: tuple[str, ...] = ("reference", "cpp", "triton", "cuda")

_MODULES = {
    "reference": "wae_fast._reference_backend",
    "cpp": "wae_fast.cpp_backend",
    "triton": "wae_fast.kernels.backend",
    "cuda": "wae_fast.cuda_backend",
}

#: Preference of ``backend="auto"`` per device type, fastest first.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpp", "reference"),
}

_cache: dict[str, object] = {}


def _load(name: str):
    if name not in _cache:
        try:
            _cache[name] = importlib.import_module(_MODULES[name])
        except ImportError as exc:  # missing Triton, extension not built, ...
            _cache[name] = exc
    return _cache[name]


def _device_type(where: Union[torch.Tensor, torch.device, str, None]) -> str:
    if where is None:
        return "cpu"
    if isinstance(where, torch.Tensor):
        return where.device.type
    return torch.device(where).type


def unavailable_reason(name: str, device: Union[torch.Tensor, torch.device, str, None] = None,
                       family: str = "mmd") -> Optional[str]:
    """None if backend ``name`` runs op family ``family`` on ``device``, else why not."""
    if name not in _MODULES:
        raise ValueError(f"backend: unknown backend {name!r}; expected 'auto' or one of {BACKENDS}")
    mod = _load(name)
    if isinstance(mod, Exception):
        return f"backend {name!r} could not be imported ({mod})"
    if family not in getattr(mod, "OPS", ()):
        return f"backend {name!r} does not implement {family}"
    return mod.availability(_device_type(device))


def available_backends(device: Union[torch.Tensor, torch.device, str, None] = None,
                       family: str = "mmd") -> dict[str, Optional[str]]:
    """Map every backend name to None (available on ``device``) or the reason it is not."""
    return {name: unavailable_reason(name, device, family) for name in BACKENDS}


def resolve_backend(backend: str, device: Union[torch.Tensor, torch.device, str, None] = None,
                    family: str = "mmd") -> str:
    """The backend a call with ``backend=...`` on ``device`` uses ("auto" picks the fastest
    available). Raises ValueError for an unknown name, RuntimeError when the requested one is
    not available here (with the reason)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    dev = _device_type(device)
    if backend == "auto":
        for name in AUTO_ORDER.get(dev, ("reference",)):
            if unavailable_reason(name, dev, family) is None:
                return name
        return "reference"
    reason = unavailable_reason(backend, dev, family)
    if reason is not None:
        raise RuntimeError(f"backend={backend!r} is not available for {family} on {dev}: {reason}")
    return backend


def which_backend(device: Union[torch.Tensor, torch.device, str, None] = None,
                  backend: str = "auto", family: str = "mmd") -> str:
    """Which backend a call on ``device`` (a tensor, device or name) with ``backend`` would use."""
    return resolve_backend(backend, device, family)
