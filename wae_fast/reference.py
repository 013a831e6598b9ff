"""Exact, memory-bounded pure-PyTorch backend (``backend="reference"``); runs on any device.

It walks the pair matrices block by block (at most ``block_size`` x ``block_size`` pairs alive at a
time), computes every kernel scale from one distance block, visits only the blocks on and above
the diagonal of the xx and yy matrices (off-diagonal blocks count twice), sums each block in the
compute dtype and combines the block sums in float64.  When an input requires a gradient the same
pass also accumulates the gradient parts (Liger style: the loss is a scalar, so its gradient is
computed in the forward and only scaled in backward), with W = dk/dr:

    d/dx_i sum_j k(x_i, y_j) = 2 (rowsum(W)_i x_i - (W y)_i)          (one matmul per block)

Each term's points are shifted by its row of the offset first (xx, yy, xy: the contract), r is
clamped at 0 and r_ii is set to exactly 0.
The block walk is :mod:`wae_fast.pairsum`'s.

Prior ops (``prior_fwd/bwd_reference``): the M prior samples are the contract's Philox stream
(:func:`wae_fast.philox.prior_rows`, the samples of the cpp, triton and cuda kernels to an ulp),
generated ``BLOCK_SIZE`` rows at a time and dropped; the backward regenerates them.

``reparam_fwd/bwd_reference`` draw eps with ``torch.randn`` from a generator seeded with the seed
(same law as the kernel backends' Philox eps, not the same numbers).
"""
from __future__ import annotations

from typing import Optional

import torch

from .contract import compute_dtype, define_backend_ops, per_term, segments_unfused
from .pairsum import (BLOCK_SIZE, acc_cols, acc_rows, cross_blocks, cross_sum,
                      kernel_and_derivative, pair_block, pair_count, self_sum, sq_dist, sq_norms,
                      sym_block)
from .philox import check_seed, prior_rows
from .segment_batch import segment_grads, segment_terms
from .validation import check_sigma2

def mmd_terms_blocked(x, y, offset, kind, params, unbiased, grad_x=False, grad_y=False,
                      block_size: int = BLOCK_SIZE):
    """Contract forward (see :mod:`wae_fast.contract`) with an explicit block size.

    Value: block sums combined in float64. Gradient parts: accumulated in the compute dtype
    straight into the (2, N, d) / (2, M, d) outputs (each block adds one matmul's worth of
    terms, so this is as accurate as one long matmul), keeping the extra memory at the outputs
    plus one block."""
    ct = compute_dtype(x.dtype)
    n, m = x.shape[0], y.shape[0]
    off = per_term(offset).to(ct)  # rows: xx, yy, xy shifts
    gx = torch.zeros((2,) + tuple(x.shape), dtype=ct, device=x.device) if grad_x else None
    gy = torch.zeros((2,) + tuple(y.shape), dtype=ct, device=y.device) if grad_y else None

    nxx, nyy = pair_count(n, unbiased), pair_count(m, unbiased)
    sxx, _ = self_sum(x.to(ct) - off[0], kind, params, unbiased, block_size,
                      g_acc=gx[0] if grad_x else None)
    syy, _ = self_sum(y.to(ct) - off[1], kind, params, unbiased, block_size,
                      g_acc=gy[0] if grad_y else None)
    sxy, _ = cross_sum(x.to(ct) - off[2], y.to(ct) - off[2], kind, params, block_size,
                       gx_acc=gx[1] if grad_x else None, gy_acc=gy[1] if grad_y else None)
    terms = torch.stack([sxx / nxx, syy / nyy, sxy / (n * m)])

    # d r_ij / d a_i = 2 (a_i - b_j); each unordered xx pair appears twice in the sum.
    if grad_x:
        gx[0].mul_(4.0 / nxx)
        gx[1].mul_(2.0 / (n * m))
    if grad_y:
        gy[0].mul_(4.0 / nyy)
        gy[1].mul_(2.0 / (n * m))
    if not grad_x:
        gx = x.new_empty((0,), dtype=ct)
    if not grad_y:
        gy = y.new_empty((0,), dtype=ct)
    return terms, gx, gy


def mmd_fwd(x, y, offset, kind, params, unbiased, grad_x, grad_y, precision):
    """Contract forward ``mmd_fwd_reference`` (``precision`` is ignored: exact)."""
    return mmd_terms_blocked(x, y, offset, kind, params, unbiased, grad_x, grad_y)


def mmd_bwd(grad_terms, x, y, offset, kind, params, unbiased, grad_x, grad_y, precision):
    """Contract backward ``mmd_bwd_reference``."""
    # Only reached if the forward ran without gradient flags (e.g. an op called directly).
    _, px, py = mmd_terms_blocked(x, y, offset, kind, params, unbiased, grad_x, grad_y)
    gt = grad_terms.to(px.dtype if grad_x else py.dtype)
    gx = (gt[0] * px[0] + gt[2] * px[1]).to(x.dtype) if grad_x else x.new_empty((0,))
    gy = (gt[1] * py[0] + gt[2] * py[1]).to(y.dtype) if grad_y else y.new_empty((0,))
    return gx, gy


def kmm_blocked(x, y, v, offset, kind, params, block_size: int = BLOCK_SIZE):
    """Contract ``kernel_matmul_fwd``: K(x, y) @ v one (block x block) tile of K at a time,
    accumulated in the compute dtype, returned in the input dtype."""
    ct = compute_dtype(x.dtype)
    off = per_term(offset)[2].to(ct)  # the cross shift
    xs, ys, vs = x.to(ct) - off, y.to(ct) - off, v.to(ct)
    sx, sy = sq_norms(xs), sq_norms(ys)
    out = torch.zeros((x.shape[0], v.shape[1]), dtype=ct, device=x.device)
    for i0, j0 in cross_blocks(x.shape[0], y.shape[0], block_size):
        a, b = xs[i0:i0 + block_size], ys[j0:j0 + block_size]
        k, _ = pair_block(a, b, sx[i0:i0 + block_size], sy[j0:j0 + block_size], False, kind, params, False)
        out[i0:i0 + block_size].addmm_(k, vs[j0:j0 + block_size])
    return out.to(x.dtype)


def kmm_grads_blocked(grad_out, x, y, v, offset, kind, params, grad_x, grad_y,
                      block_size: int = BLOCK_SIZE):
    """Contract ``kernel_matmul_bwd``: with W_ij = w_ij (g_i . v_j), gx = 2 sum_j W_ij (x_i - y_j)
    and gy = 2 sum_i W_ij (y_j - x_i) (the polynomial without the x_i / y_j terms)."""
    ct = compute_dtype(x.dtype)
    off = per_term(offset)[2].to(ct)
    xs, ys = x.to(ct) - off, y.to(ct) - off
    vs, gs = v.to(ct), grad_out.to(ct)
    sx, sy = sq_norms(xs), sq_norms(ys)
    gx = torch.zeros_like(xs) if grad_x else None
    gy = torch.zeros_like(ys) if grad_y else None
    for i0, j0 in cross_blocks(x.shape[0], y.shape[0], block_size):
        a, b = xs[i0:i0 + block_size], ys[j0:j0 + block_size]
        _, w = pair_block(a, b, sx[i0:i0 + block_size], sy[j0:j0 + block_size], False, kind, params, True)
        w.mul_(gs[i0:i0 + block_size] @ vs[j0:j0 + block_size].T)
        if gx is not None:
            acc_rows(gx, i0, w, a, b, kind)
        if gy is not None:
            acc_cols(gy, j0, w, a, b, kind)
    gx = (2.0 * gx).to(x.dtype) if gx is not None else x.new_empty((0,))
    gy = (2.0 * gy).to(y.dtype) if gy is not None else y.new_empty((0,))
    return gx, gy


def _kmm_fwd(x, y, v, offset, kind, params, precision):
    return kmm_blocked(x, y, v, offset, kind, params)


def _kmm_bwd(grad_out, x, y, v, offset, kind, params, grad_x, grad_y, precision):
    return kmm_grads_blocked(grad_out, x, y, v, offset, kind, params, grad_x, grad_y)


def eps_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal noise of t's shape in the compute dtype, a pure function of ``seed``."""
    g = torch.Generator(device=t.device)
    g.manual_seed(int(seed))
    return torch.randn(t.shape, generator=g, device=t.device, dtype=compute_dtype(t.dtype))


def _reparam_fwd(mu, logvar, seed):
    eps = eps_like(logvar, seed)
    ct = eps.dtype
    z = mu.to(ct) + torch.exp(logvar.to(ct) * 0.5) * eps
    # NaN where mu or logvar is not finite (logvar = -inf would give a finite z = mu)
    return z.masked_fill(~(torch.isfinite(mu) & torch.isfinite(logvar)), float("nan")).to(mu.dtype)


def _reparam_bwd(grad_z, logvar, seed):
    eps = eps_like(logvar, seed)
    ct = eps.dtype
    g = grad_z.to(ct) * eps * torch.exp(logvar.to(ct) * 0.5) * 0.5
    return g.masked_fill(~torch.isfinite(logvar), float("nan")).to(logvar.dtype)


# ----------------------------------------------------------------------------------------------
# MMD to N(0, sigma2 I) with the prior samples generated block by block (never all stored)


def _prior_yy_sum(m, d, seed, sigma2, ct, device, kind, params, unbiased, block):
    """sum over yy pairs of the generated samples (shift 0: the prior mean), upper blocks only."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i0 in range(0, m, block):
        a = prior_rows(i0, min(i0 + block, m), d, seed, sigma2, ct, device)
        na = sq_norms(a)
        for j0 in range(i0, m, block):
            diag = i0 == j0
            b = a if diag else prior_rows(j0, min(j0 + block, m), d, seed, sigma2, ct, device)
            s, _ = sym_block(a, b, na, na if diag else sq_norms(b), diag, kind, params,
                             unbiased, False)
            total += s
    return total


def _prior_xy_sum(xs, m, seed, sigma2, off, kind, params, block, g_acc: Optional[torch.Tensor]):
    """sum_{i,j} k(x_i, y_j) over the generated samples, both sides shifted by ``off``; adds
    sum_j W_ij (x_i - y_j) to ``g_acc`` when given (the sum's x gradient is 2 g_acc)."""
    n, d = xs.shape
    xs = xs - off
    sx = sq_norms(xs)
    total = torch.zeros((), dtype=torch.float64, device=xs.device)
    for j0 in range(0, m, block):
        b = prior_rows(j0, min(j0 + block, m), d, seed, sigma2, xs.dtype, xs.device) - off
        nb = sq_norms(b)
        for i0 in range(0, n, block):
            a = xs[i0:i0 + block]
            k, w = kernel_and_derivative(sq_dist(a, b, sx[i0:i0 + block], nb, False), kind, params,
                                         g_acc is not None)
            total += k.sum(dtype=torch.float64)
            if g_acc is not None:
                acc_rows(g_acc, i0, w, a, b)
    return total


def _prior_setup(x, m, sigma2, seed):
    # the op may be called directly: the checks of the kernel backends' launchers
    check_sigma2(sigma2)
    check_seed(seed)
    if m < 1:
        raise ValueError(f"num_samples must be >= 1, got {m}")
    ct = compute_dtype(x.dtype)
    xs = x.detach().to(ct)
    med = xs.median(0).values  # a median: one outlier code cannot pull the shift off the cluster
    return xs, med, med * (x.shape[0] / (x.shape[0] + m))  # shifts: xx, then xy (contract)


def _prior_fwd(x, kind, params, sigma2, unbiased, num_samples, seed, precision):
    n, d = x.shape
    m = num_samples
    xs, off_xx, off_xy = _prior_setup(x, m, sigma2, seed)
    sxx, _ = self_sum(xs - off_xx, kind, params, unbiased, BLOCK_SIZE)
    syy = _prior_yy_sum(m, d, seed, sigma2, xs.dtype, x.device, kind, params, unbiased, BLOCK_SIZE)
    sxy = _prior_xy_sum(xs, m, seed, sigma2, off_xy, kind, params, BLOCK_SIZE, None)
    return torch.stack([sxx / pair_count(n, unbiased), syy / pair_count(m, unbiased), sxy / (n * m)])


def _prior_bwd(grad_terms, x, kind, params, sigma2, unbiased, num_samples, seed, precision):
    n, d = x.shape
    m = num_samples
    xs, off_xx, off_xy = _prior_setup(x, m, sigma2, seed)
    g = grad_terms.to(device=x.device, dtype=torch.float64)
    gx = torch.zeros(xs.shape, dtype=torch.float64, device=x.device)
    if bool(g[0] != 0):  # a term nobody differentiates is not recomputed
        gxx = torch.zeros_like(gx)
        self_sum(xs - off_xx, kind, params, unbiased, BLOCK_SIZE, g_acc=gxx)
        gx += (4.0 * g[0] / pair_count(n, unbiased)) * gxx
    if bool(g[2] != 0):
        gxy = torch.zeros_like(gx)
        _prior_xy_sum(xs, m, seed, sigma2, off_xy, kind, params, BLOCK_SIZE, gxy)
        gx += (2.0 * g[2] / (n * m)) * gxy
    return gx.to(x.dtype)


def _seg_fwd(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind, params, unbiased,
             grad_x, grad_y, grad_xw, grad_yw, precision, value_parts=False):
    return segments_unfused(segment_terms(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts,
                                          kind, params, unbiased, compute_dtype(x.dtype)), x)


def _seg_bwd(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind,
             params, unbiased, grad_x, grad_y, grad_xw, grad_yw, precision):
    return segment_grads(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights, y_weights,
                         shifts, kind, params, unbiased, grad_x, grad_y, grad_xw, grad_yw,
                         compute_dtype(x.dtype))


def availability(device_type: str) -> Optional[str]:
    """The reference runs wherever torch does."""
    return None


define_backend_ops(
    "reference",
    fuses_grad=True,
    mmd_fwd=mmd_fwd,
    mmd_bwd=mmd_bwd,
    reparam_fwd=_reparam_fwd,
    reparam_bwd=_reparam_bwd,
    prior_fwd=_prior_fwd,
    prior_bwd=_prior_bwd,
    kernel_matmul_fwd=_kmm_fwd,
    kernel_matmul_bwd=_kmm_bwd,
    mmd_segments_fwd=_seg_fwd,
    mmd_segments_bwd=_seg_bwd,
)
