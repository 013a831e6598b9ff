"""Which MMD calls the CUDA backends compute in one launch (issue 15, item 3):
``csrc/cuda/mmd_small.cu``, routed by ``csrc/cuda/binding.cpp`` for an empty offset.

The same threshold and environment knob as the Triton path (``wae_fast.kernels.mmd_small``,
which imports Triton and so is not imported here): N, M <= ``SMALL_MAX_ROWS`` (env
``WAE_FAST_SMALL_MAX_ROWS``, default 1024; 0 disables the path) and d <= 64, for the IMQ and
RBF kernels (the polynomial keeps the tiled kernels).  Up there a call costs launches, not pair
arithmetic; above it the tiled kernels' parallelism wins (each one-launch block ranks both sets
for its medians: O(d (N^2 + M^2)) compares per block).
"""
from __future__ import annotations

import os

import torch

#: Largest N and M of the one-launch path (env ``WAE_FAST_SMALL_MAX_ROWS``; 0 disables it).
SMALL_MAX_ROWS = int(os.environ.get("WAE_FAST_SMALL_MAX_ROWS", "1024"))
#: Largest d: the kernel keeps a row and its gradient in registers (csrc/cuda/mmd_small.cu).
SMALL_MAX_D = 64
#: kernel kinds of the path (KIND_IMQ, KIND_RBF of wae_fast.kernel_specs)
KINDS = (0, 1)


def cuda_one_launch(x: torch.Tensor, y: torch.Tensor, kind: int) -> bool:
    """The contract's ``one_launch`` predicate of the "cuda" and "cuda_emu" backends (shapes and
    kind only: evaluated while tracing)."""
    n, m = x.shape[0], y.shape[0]
    return (kind in KINDS and 1 <= min(n, m) and max(n, m) <= SMALL_MAX_ROWS
            and x.shape[1] <= SMALL_MAX_D)
