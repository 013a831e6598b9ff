"""Dispatch entry of the C++ CPU backend (``backend="cpp"``).

The op schemas are defined in Python (:func:`wae_fast.contract.define_backend_ops`) BEFORE the
extension ``wae_fast._C`` is imported; the extension registers the CPU implementations of
``wae_fast::mmd_fwd_cpp`` / ``mmd_bwd_cpp`` with ``TORCH_LIBRARY_IMPL(wae_fast, CPU, m)``.

The forward fuses the gradient parts (``fuses_grad=True``): with grad flags set it returns the
(2, N, d)/(2, M, d) parts computed in the same pass over the pair tiles.  ``reparam_fwd_cpp`` /
``reparam_bwd_cpp`` draw eps from the Philox stream of the Triton and CUDA kernels
(``tl.randn(seed, flat index)``, csrc/include/wae_fast/tile_math.h), so a seed gives the same eps
on every kernel backend.  ``prior_fwd_cpp`` / ``prior_bwd_cpp`` (MMD to N(0, sigma2 I) with the
prior samples generated in chunks of 4096 rows from the same stream, never all stored) make
``mmd_to_prior(..., estimator="sampled", backend="cpp")`` (and "auto" on CPU).
"""
from __future__ import annotations

from typing import Optional

from .contract import define_backend_ops

define_backend_ops("cpp", fuses_grad=True)

_C = None
_IMPORT_ERROR: Optional[BaseException] = None
try:
    from . import _C  # noqa: F811  (registers the CPU kernels)
except ImportError as exc:  # extension not built
    _IMPORT_ERROR = exc

_HOW = ("the C++ extension wae_fast._C was not built: pip install --no-build-isolation -e . "
        "(or python setup.py build_ext --inplace) with a C++ compiler and torch installed")


def availability(device_type: str) -> Optional[str]:
    if _C is None:
        return f"{_HOW} (import error: {_IMPORT_ERROR})"
    if device_type != "cpu":
        return f"the cpp backend runs on CPU tensors only (got device type {device_type!r}); use 'cuda' or 'triton'"
    return None


def isa() -> Optional[str]:
    """Instruction set of the tile kernels chosen at run time ("avx2+fma" or "generic")."""
    return None if _C is None else _C.isa()
