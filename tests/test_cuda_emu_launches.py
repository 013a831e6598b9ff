"""Kernel launches of the CUDA kernels, counted through the emulator's launch shim (csrc/cuda_emu
runtime: ``launch_count`` / ``launch_names``), not op calls (issue 15, item 3).

A small call's forward is one main launch (csrc/cuda/mmd_small.cu) + at most one finalize (the
finalize is a torch sum of the partials: not an emulated launch); more in
tests/test_cuda_one_launch.py.
"""
from __future__ import annotations

import pytest
import torch

import wae_fast
from wae_fast.dispatch import unavailable_reason

pytestmark = [pytest.mark.cuda_emu,
              pytest.mark.skipif(unavailable_reason("cuda_emu", "cpu", "mmd") is not None,
                                 reason=str(unavailable_reason("cuda_emu", "cpu", "mmd")))]


def _ext():
    from wae_fast import cuda_emu_backend
    return cuda_emu_backend.extension()


def _launches(fn):
    ext = _ext()
    ext.reset_launch_names()
    n0 = ext.launch_count()
    out = fn()
    names = list(ext.launch_names())
    assert ext.launch_count() - n0 == len(names)
    return out, names


def test_launch_counter_counts_each_kernel_launch():
    mu, lv = torch.randn(5, 3), torch.randn(5, 3)
    z, names = _launches(lambda: wae_fast.reparameterize(mu, lv, seed=3, backend="cuda_emu"))
    assert len(names) == 1 and "reparam_fwd" in names[0], names
    _, names = _launches(lambda: [wae_fast.reparameterize(mu, lv, seed=s, backend="cuda_emu")
                                  for s in (1, 2, 3)])
    assert len(names) == 3


def test_small_mmd_forward_is_one_launch_and_a_finalize():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 4, generator=g).requires_grad_(True)
    y = torch.randn(17, 4, generator=g)
    _, names = _launches(lambda: wae_fast.mmd(x, y, backend="cuda_emu"))
    assert len(names) <= 2, f"{len(names)} launches: {names}"
