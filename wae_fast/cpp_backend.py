"""Dispatch entry of the C++ CPU backend (``backend="cpp"``).

The op schemas are defined in Python (:func:`wae_fast.contract.define_backend_ops`) BEFORE the
extension is loaded; the extension registers the CPU implementations of
``wae_fast::mmd_fwd_cpp`` / ``mmd_bwd_cpp`` with ``TORCH_LIBRARY_IMPL(wae_fast, CPU, m)``.  The
extension is ``wae_fast._C`` built at install, or a build for the running torch made on first
use and cached (:mod:`wae_fast.build`).

The forward fuses the gradient parts (``fuses_grad=True``): with grad flags set it returns the
(2, N, d)/(2, M, d) parts computed in the same pass over the pair tiles.  It computes the
per-term median shifts itself from an empty offset (``computes_shifts=True``: the same lower
medians and lerp as ``contract.term_shifts``, by a bitonic network over the rows vectorised over
the coordinates).  ``reparam_fwd_cpp`` /
``reparam_bwd_cpp`` draw eps from the Philox stream of the Triton and CUDA kernels
(``tl.randn(seed, flat index)``, csrc/include/wae_fast/tile_math.h), so a seed gives the same eps
on every kernel backend.  ``prior_fwd_cpp`` / ``prior_bwd_cpp`` (MMD to N(0, sigma2 I) with the
prior samples generated in chunks of 4096 rows from the same stream, never all stored) make
``mmd_to_prior(..., estimator="sampled", backend="cpp")`` (and "auto" on CPU).
``kernel_matmul_fwd_cpp`` / ``kernel_matmul_bwd_cpp`` (csrc/cpu/kmm_cpu.cpp) make :func:`wae_fast.kernel_matmul`:
row blocks in parallel, one GEMM per block for the dot products, the kernel in place, a second
GEMM for the product.  ``mmd_segments_fwd_cpp`` / ``mmd_segments_bwd_cpp``
(csrc/cpu/segments_cpu.cpp) make :func:`wae_fast.mmd_batched` / :func:`wae_fast.mmd_varlen` and the
weighted ``mmd``: one parallel loop over the (set, row tile) tasks of every set.
"""
from __future__ import annotations

from typing import Optional

from . import build
from .contract import define_backend_ops

define_backend_ops("cpp", fuses_grad=True, segments_fuse_grad=True, computes_shifts=True)

#: The op families the extension registers (its TORCH_LIBRARY_IMPL), given placeholders that
#: build it on first use; routing by capabilities lives in wae_fast.dispatch.
EXTENSION_FAMILIES = ("mmd", "reparam", "prior", "mmd_segments")

# The extension built at install (if it matches this torch) or a cached first-use build; never
# compiles here.  Without either, the first eager call compiles it (wae_fast.build).
_C = build.load_prebuilt("cpp")   # registers the CPU kernels
if _C is None:
    build.build_on_first_use("cpp", EXTENSION_FAMILIES)


def availability(device_type: str) -> Optional[str]:
    """None when the backend runs on ``device_type`` (its extension loaded, or buildable on
    first use), else why not.  Never compiles."""
    if device_type != "cpu":
        return f"the cpp backend runs on CPU tensors only (got device type {device_type!r}); use 'cuda' or 'triton'"
    return build.unavailable_reason("cpp")


def prepare(device_type: str) -> Optional[str]:
    """Before the first real call (dispatch runs it once): build the extension if needed.
    None when it is loaded, else why not (so that "auto" moves on)."""
    return build.prepare("cpp")


def status() -> str:
    """How the extension is provided: built at install, cached build, needs a build on first use."""
    return build.status("cpp")


def extension():
    """The extension module (``isa()`` and the test hooks), compiled first if needed."""
    return build.ensure("cpp")


def isa() -> Optional[str]:
    """Instruction set of the tile kernels a call uses now ("avx512", "avx2" or "baseline": the
    widest this CPU and OS support, or the one ``WAE_FAST_CPU_ISA`` forces; an unknown or
    unsupported value raises ValueError), or None while the extension is not loaded."""
    ext = build.loaded("cpp")
    return None if ext is None else ext.isa()
