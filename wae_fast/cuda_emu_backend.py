"""Dispatch entry of the emulated CUDA backend (``backend="cuda_emu"``): a TESTING backend.

``wae_fast._C_cuda_emu`` is the CUDA C++ of ``csrc/cuda`` (the kernels, launchers and binding of
``backend="cuda"``, unchanged) compiled by the host C++ compiler with ``__CUDA_ARCH__ = 900``
against the emulator of ``csrc/cuda_emu``: the threads of a block run as fibers on the CPU,
with barriers, warp collectives, ``nvcuda::wmma`` TF32 and every inline PTX instruction modelled
(``csrc/include/wae_fast/ptx.h``).  It takes CPU tensors and implements the same op families,
schemas and errors as ``cuda`` (``wae_fast::*_cuda_emu``), so the shared test suite checks the
CUDA kernels' logic, indexing, barriers and modelled numerics on a machine without a GPU.

It is slow (every GPU thread is a fiber) and ``backend="auto"`` never picks it (it is in
:data:`wae_fast.dispatch.BACKEND_TABLE`, not in ``AUTO_ORDER``).  Built by
``pip install`` on x86-64 Linux wherever a C++ compiler exists (``WAE_FAST_BUILD_CUDA_EMU=0``
skips it).
"""
from __future__ import annotations

from typing import Optional

from .contract import define_backend_ops

define_backend_ops("cuda_emu", fuses_grad=False)

_ext = None
_error: Optional[str] = None
try:
    from . import _C_cuda_emu as _ext  # noqa: F811  (registers wae_fast::*_cuda_emu for CPU)
except ImportError as exc:
    _error = (f"wae_fast._C_cuda_emu is not built ({exc}): pip install --no-build-isolation -e . "
              "on x86-64 Linux with a C++ compiler (WAE_FAST_BUILD_CUDA_EMU=1 to force)")


def availability(device_type: str) -> Optional[str]:
    if _ext is None:
        return _error
    if device_type != "cpu":
        return (f"the cuda_emu backend (the CUDA kernels emulated on the CPU, for testing) runs on "
                f"CPU tensors only (got device type {device_type!r})")
    return None
