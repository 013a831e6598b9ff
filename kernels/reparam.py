"""Triton kernels for reparameterized Gaussian sampling, z = mu + exp(logvar / 2) * eps.

eps = ``tl.randn(seed, offset)`` (Philox 4x32-10) with offset = the flat element index, so eps is
a pure function of (seed, index), independent of the block size and of the launch; the backward
regenerates it instead of storing it:  grad_logvar = grad_z * eps * exp(logvar / 2) / 2.
Where mu or logvar is not finite, z (and where logvar is not, grad_logvar) is NaN (the
hostile-input contract; logvar = -inf would otherwise give a finite z = mu).
Offsets are int64 (Triton's Philox uses the high word as the second counter, which is 0 for
indices below 2^32, so the stream equals the int32-offset stream there).
"""
from __future__ import annotations

import triton
import triton.language as tl

INF = tl.constexpr(float("inf"))  # no NaN global: see kernels/mmd.py (INF - INF is NaN)


@triton.jit
def _reparam_fwd_kernel(MU, LV, Z, n, seed, CT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    mu = tl.load(MU + offs, mask=mask, other=0.0).to(CT)
    lv = tl.load(LV + offs, mask=mask, other=0.0).to(CT)
    eps = tl.randn(seed, offs).to(CT)
    z = mu + tl.exp(lv * 0.5) * eps
    z = tl.where((mu - mu) + (lv - lv) == 0.0, z, INF - INF)  # x - x is 0 only for finite x
    tl.store(Z + offs, z.to(Z.dtype.element_ty), mask=mask)


@triton.jit
def _reparam_bwd_kernel(GZ, LV, GLV, n, seed, CT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    gz = tl.load(GZ + offs, mask=mask, other=0.0).to(CT)
    lv = tl.load(LV + offs, mask=mask, other=0.0).to(CT)
    eps = tl.randn(seed, offs).to(CT)
    g = gz * eps * tl.exp(lv * 0.5) * 0.5
    g = tl.where(lv - lv == 0.0, g, INF - INF)
    tl.store(GLV + offs, g.to(GLV.dtype.element_ty), mask=mask)
