"""Host-side helpers of the Triton launchers (a leaf of the kernels package: it imports no other
module of it).  Used by :mod:`wae_fast.kernels.backend` and :mod:`wae_fast.kernels.prior`."""
from __future__ import annotations

import math

import torch
import triton.language as tl


def tl_compute_dtype(dtype: torch.dtype):
    """The Triton compute dtype of inputs of ``dtype``: fp64 for fp64, fp32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype, precision: str) -> str:
    """fp64 dots are always exact; fp16/bf16 inputs are upcast to fp32 after the shift, so the
    fp32 precision option applies to them too."""
    return "ieee" if dtype == torch.float64 else precision


_PARAM_CACHE: dict = {}


def params_tensor(params, dtype, device, kind=None) -> torch.Tensor:
    """The kernel parameters as a small device tensor (cached: no H2D copy per call).  RBF
    (``kind`` 1, KIND_RBF) gammas are sorted ascending, so that ratios of 2 or 4 between
    neighbours become squarings in ``mmd.kernel_sum`` (the sum over scales is the same)."""
    vals = tuple(float(p) for p in params)
    if kind == 1:
        vals = tuple(sorted(vals))
    key = (vals, dtype, str(device))
    t = _PARAM_CACHE.get(key)
    if t is None:
        if len(_PARAM_CACHE) > 64:
            _PARAM_CACHE.clear()
        t = torch.tensor(key[0], dtype=dtype, device=device)
        _PARAM_CACHE[key] = t
    return t


def sigma_tensor(sigma2: float, dtype: torch.dtype, device) -> torch.Tensor:
    """sqrt(sigma2) as a (1,) tensor in the compute dtype (ValueError if sigma2 is not > 0)."""
    s2 = float(sigma2)
    if not math.isfinite(s2) or s2 <= 0:
        raise ValueError(f"sigma2 must be finite and > 0, got {sigma2!r}")
    return torch.tensor([math.sqrt(s2)], dtype=dtype, device=device)


class device_guard:
    """``torch.cuda.device(t.device)`` for CUDA tensors, a no-op otherwise."""

    def __init__(self, t: torch.Tensor):
        self.ctx = torch.cuda.device(t.device) if t.device.type == "cuda" else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False
