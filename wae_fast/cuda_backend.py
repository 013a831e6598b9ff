"""Dispatch entry of the CUDA C++ backend (``backend="cuda"``).

The schemas are defined in Python first (:func:`wae_fast.contract.define_backend_ops`), then the
extension ``wae_fast._C_cuda`` registers the CUDA implementations with
``TORCH_LIBRARY_IMPL(wae_fast, CUDA, m)``.  The extension is built by setup.py when torch is a
CUDA build and nvcc is present; otherwise, on a machine with a GPU, a CUDA torch and nvcc, it is
JIT-built on first use with ``torch.utils.cpp_extension.load`` (ninja) into
``$WAE_FAST_CACHE`` (default ``~/.cache/wae_fast/cuda``).

The forward returns empty gradient parts (``fuses_grad=False``): the backward recomputes the
pair tiles (no N x M buffer).

Op families (declared in :mod:`wae_fast.dispatch`): ``mmd`` (csrc/cuda/mmd_kernels.cu), ``prior`` (MMD to N(0, sigma2 I) with the
prior samples generated inside the kernels, csrc/cuda/prior_kernels.cu: the same samples as
:func:`wae_fast.kernels.prior.materialise_prior`) and ``reparam`` (csrc/cuda/reparam_kernels.cu).
``precision`` ("ieee", "tf32x3", "tf32") selects the fp32 dot-product path: exact FMAs, or tensor
cores (nvcuda::wmma tf32, 3 products for "tf32x3") when d >= 16 on sm_80+; fp64 ignores it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from .contract import define_backend_ops

define_backend_ops("cuda", fuses_grad=False)

_ext = None
_error: Optional[str] = None
_tried_jit = False

try:
    from . import _C_cuda as _ext  # noqa: F811  (registers the CUDA kernels)
except ImportError as exc:
    _error = f"wae_fast._C_cuda is not built ({exc})"

_HOW = ("build it with a CUDA build of torch and nvcc: pip install --no-build-isolation -e . "
        "(WAE_FAST_BUILD_CUDA=1 to force), or let it JIT-build on first use (needs nvcc + ninja)")


def _sources():
    root = Path(__file__).resolve().parents[1] / "csrc"
    cuda = root / "cuda"
    return root, sorted(str(p) for p in cuda.glob("*.cu")) + [str(cuda / "binding.cpp")]


def _jit_build() -> None:
    global _ext, _error, _tried_jit
    _tried_jit = True
    root, srcs = _sources()
    if not all(os.path.exists(s) for s in srcs) or len(srcs) < 2:
        _error = "the csrc/cuda sources are not shipped with this installation"
        return
    from torch.utils import cpp_extension
    if torch.version.cuda is None or cpp_extension.CUDA_HOME is None or shutil.which("ninja") is None:
        _error = ("JIT build impossible: needs a CUDA build of torch, nvcc (CUDA_HOME) and ninja "
                  f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME})")
        return
    cache = Path(os.environ.get("WAE_FAST_CACHE", Path.home() / ".cache" / "wae_fast" / "cuda"))
    cache.mkdir(parents=True, exist_ok=True)
    try:
        _ext = cpp_extension.load(
            name="wae_fast_C_cuda", sources=srcs, build_directory=str(cache),
            extra_include_paths=[str(root / "include"), str(root / "cuda")],
            extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "-std=c++17"], verbose=False)
        _error = None
    except Exception as exc:  # compiler missing, build failure
        _error = f"JIT build of the CUDA extension failed: {exc}"


def _jit_possible() -> Optional[str]:
    """None when a JIT build could be tried here (no compiler is started), else why not."""
    root, srcs = _sources()
    if not all(os.path.exists(s) for s in srcs) or len(srcs) < 2:
        return "the csrc/cuda sources are not shipped with this installation"
    from torch.utils import cpp_extension
    if torch.version.cuda is None or cpp_extension.CUDA_HOME is None or shutil.which("ninja") is None:
        return ("JIT build impossible: needs a CUDA build of torch, nvcc (CUDA_HOME) and ninja "
                f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME})")
    return None


def availability(device_type: str) -> Optional[str]:
    """None when the backend can run here (built, or buildable on first use); never compiles."""
    if device_type != "cuda":
        return f"the cuda backend runs on CUDA tensors only (got device type {device_type!r}); use 'cpp' on CPU"
    if not torch.cuda.is_available():
        return "no CUDA device is available (torch.cuda.is_available() is False)"
    if _ext is None:
        why = _error if _tried_jit else _jit_possible()
        if why is not None:
            return f"{why}; {_HOW}"
    return None


def prepare(device_type: str) -> Optional[str]:
    """Before the first real call: JIT-build the extension if it is not built (once)."""
    if _ext is None and not _tried_jit:
        _jit_build()
    return None if _ext is not None else f"{_error}; {_HOW}"
