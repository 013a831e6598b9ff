"""Dispatch entry of the emulated CUDA backend (``backend="cuda_emu"``): a TESTING backend.

``wae_fast._C_cuda_emu`` is the CUDA C++ of ``csrc/cuda`` (the kernels, launchers and binding of
``backend="cuda"``, unchanged) compiled by the host C++ compiler with ``__CUDA_ARCH__ = 900``
against the emulator of ``csrc/cuda_emu``: the threads of a block run as fibers on the CPU,
with barriers, warp collectives, ``nvcuda::wmma`` TF32 and every inline PTX instruction modelled
(``csrc/include/wae_fast/ptx.h``).  It takes CPU tensors and implements the same op families,
schemas and errors as ``cuda`` (``wae_fast::*_cuda_emu``), so the shared test suite checks the
CUDA kernels' logic, indexing, barriers and modelled numerics on a machine without a GPU.

Sanitizer checks of every kernel access (memcheck, initcheck, racecheck: the environment
variable ``WAE_CUDA_EMU_CHECKS``, off in a plain call, "all" in the test suite; README
"cuda_emu") raise RuntimeError naming the kernel, block, thread, array or buffer and source line.

It is slow (every GPU thread is a fiber) and ``backend="auto"`` never picks it (it is in
:data:`wae_fast.dispatch.BACKEND_TABLE`, not in ``AUTO_ORDER``).  Built by
``pip install`` on x86-64 Linux wherever a C++ compiler exists (``WAE_FAST_BUILD_CUDA_EMU=0``
skips it).
"""
from __future__ import annotations

from typing import Optional

from . import build
from . import segment_sums
from .small_sets import cuda_one_launch
from .contract import define_backend_ops

define_backend_ops("cuda_emu", fuses_grad=False)

#: The op families the extension registers (its TORCH_LIBRARY_IMPL), given placeholders that
#: build it on first use; routing by capabilities lives in wae_fast.dispatch.
EXTENSION_FAMILIES = ("mmd", "reparam", "prior")

# Built at install (matching this torch) or cached; never compiles here (see wae_fast.build).
_ext = build.load_prebuilt("cuda_emu")   # registers wae_fast::*_cuda_emu for CPU
if _ext is None:
    build.build_on_first_use("cuda_emu", EXTENSION_FAMILIES)


def _seg_extension():
    # the extension (csrc/cuda/segments_kernels.cu: seg_fwd / seg_bwd), built on first use if needed
    return build.ensure("cuda_emu")


#: mmd_segments: one launch over every (set, term, 64-row tile) task + one finalize, one backward
#: launch (d <= 256; wider d runs the reference's passes); task tables: wae_fast.segment_sums.Plan
_seg_fwd, _seg_bwd = segment_sums.plan_ops(_seg_extension, block=64, max_d=256)
define_backend_ops("cuda_emu", one_launch=cuda_one_launch, dispatch_key="CPU",
                   mmd_segments_fwd=_seg_fwd, mmd_segments_bwd=_seg_bwd)


def availability(device_type: str) -> Optional[str]:
    """None when the emulated backend runs on ``device_type`` (CPU tensors; the extension loaded
    or buildable on first use), else why not.  Never compiles."""
    if device_type != "cpu":
        return (f"the cuda_emu backend (the CUDA kernels emulated on the CPU, for testing) runs on "
                f"CPU tensors only (got device type {device_type!r})")
    return build.unavailable_reason("cuda_emu")


def prepare(device_type: str) -> Optional[str]:
    """Before the first real call (dispatch runs it once): build the extension if needed."""
    return build.prepare("cuda_emu")


def status() -> str:
    """How the extension is provided: built at install, cached build, needs a build on first use."""
    return build.status("cuda_emu")


def extension():
    """The extension module (the emulator's knobs and self-test hooks), compiled first if needed."""
    return build.ensure("cuda_emu")
