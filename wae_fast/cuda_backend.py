"""Dispatch entry of the CUDA C++ backend (``backend="cuda"``).

The schemas are defined in Python first (:func:`wae_fast.contract.define_backend_ops`), then the
extension ``wae_fast._C_cuda`` registers the CUDA implementations with
``TORCH_LIBRARY_IMPL(wae_fast, CUDA, m)``.  The extension is built by setup.py when torch is a
CUDA build and nvcc is present; otherwise (or when it does not match the running torch), with a
CUDA torch, nvcc and ninja, it is compiled on the first eager call into
``$WAE_FAST_CACHE/cuda/<key>`` (default ``~/.cache/wae_fast``), see :mod:`wae_fast.build`.

The forward returns empty gradient parts (``fuses_grad=False``): the backward recomputes the
pair tiles (no N x M buffer).  Small calls (``one_launch``, :mod:`wae_fast.small_sets`: N, M <=
1024, d <= 64, IMQ/RBF) get an empty offset instead: one launch of csrc/cuda/mmd_small.cu computes
the shifts, the per-block partial terms and the fused gradient parts (the backward only scales
them); NOT yet run on a GPU (tested on ``cuda_emu``).

Op families: ``mmd`` (csrc/cuda/mmd_kernels.cu), ``prior`` (MMD to N(0, sigma2 I) with the
prior samples generated inside the kernels, csrc/cuda/prior_kernels.cu: the same samples as
:func:`wae_fast.kernels.prior.materialise_prior`), ``reparam`` (csrc/cuda/reparam_kernels.cu) and
``kernel_matmul`` (csrc/cuda/kmm_kernels.cu: exact FMA tiles; compiled and register-checked
without a GPU, NOT yet run on one), ``mmd_segments`` (csrc/cuda/segments_kernels.cu: the row pass
of every term of every set in one launch + one finalize, exposed as ``seg_fwd``/``seg_bwd``, registered from
Python with :func:`wae_fast.segment_sums.plan_ops`; compiled and emulated, NOT yet run on a
GPU).  The polynomial kernel always takes the exact FMA path.
``precision`` ("ieee", "tf32x3", "tf32") selects the fp32 dot-product path: exact FMAs, or tensor
cores (nvcuda::wmma tf32, 3 products for "tf32x3") when d >= 16 on sm_80+; fp64 ignores it.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import build
from . import segment_sums
from .small_sets import cuda_one_launch
from .contract import define_backend_ops

define_backend_ops("cuda", fuses_grad=False)

#: The op families the extension registers (its TORCH_LIBRARY_IMPL), given placeholders that
#: build it on first use; routing by capabilities lives in wae_fast.dispatch.
EXTENSION_FAMILIES = ("mmd", "reparam", "prior")

# Built at install (matching this torch) or cached; never compiles here (see wae_fast.build).
_ext = build.load_prebuilt("cuda")   # registers the CUDA kernels
if _ext is None:
    build.build_on_first_use("cuda", EXTENSION_FAMILIES)


def _seg_extension():
    # the extension (csrc/cuda/segments_kernels.cu: seg_fwd / seg_bwd), built on first use if needed
    return build.ensure("cuda")


#: mmd_segments: one launch over every (set, term, 64-row tile) task + one finalize, one backward
#: launch (d <= 256; wider d runs the reference's passes); task tables: wae_fast.segment_sums.Plan
_seg_fwd, _seg_bwd = segment_sums.plan_ops(_seg_extension, block=64, max_d=256)
define_backend_ops("cuda", one_launch=cuda_one_launch, dispatch_key="CUDA",
                   mmd_segments_fwd=_seg_fwd, mmd_segments_bwd=_seg_bwd)


def availability(device_type: str) -> Optional[str]:
    """None when the backend runs on ``device_type`` (a GPU, and the extension loaded or
    buildable on first use), else why not.  Never compiles."""
    if device_type != "cuda":
        return f"the cuda backend runs on CUDA tensors only (got device type {device_type!r}); use 'cpp' on CPU"
    if not torch.cuda.is_available():
        return "no CUDA device is available (torch.cuda.is_available() is False)"
    return build.unavailable_reason("cuda")


def status() -> str:
    """How the extension is provided: built at install, cached build, needs a build on first use."""
    return build.status("cuda")


def extension():
    """The extension module, compiled first if needed (needs a CUDA torch, nvcc and ninja)."""
    return build.ensure("cuda")


def prepare(device_type: str) -> Optional[str]:
    """Before the first real call (dispatch runs it once): build the extension if needed.
    None when it is loaded, else why not (so that "auto" moves on)."""
    return build.prepare("cuda")
