"""Exact, memory-bounded pure-PyTorch backend (``backend="reference"``); runs on any device.

It walks the pair matrices block by block (at most ``block_size`` x ``block_size`` pairs alive at a
time), computes every kernel scale from one distance block, visits only the blocks on and above
the diagonal of the xx and yy matrices (off-diagonal blocks count twice), sums each block in the
compute dtype and combines the block sums in float64.  When an input requires a gradient the same
pass also accumulates the gradient parts (Liger style: the loss is a scalar, so its gradient is
computed in the forward and only scaled in backward), with W = dk/dr:

    d/dx_i sum_j k(x_i, y_j) = 2 (rowsum(W)_i x_i - (W y)_i)          (one matmul per block)

Points are shifted by the shared offset first, r is clamped at 0 and r_ii is set to exactly 0.
"""
from __future__ import annotations

import torch

from .contract import compute_dtype, define_backend_ops
from .kernel_specs import KIND_IMQ, KIND_RBF

#: Side of the square pair block. 1024^2 fp32 values are 4 MiB; a block pass holds a handful.
BLOCK_SIZE = 1024


def kernel_and_derivative(r: torch.Tensor, kind: int, params: list[float], need_deriv: bool):
    """Sum over scales of k(r) and (optionally) dk/dr, computed from one distance block.

    IMQ: k = C/(C+r), dk/dr = -C/(C+r)^2.  RBF: k = exp(-g r), dk/dr = -g exp(-g r)."""
    k = torch.zeros_like(r)
    w = torch.zeros_like(r) if need_deriv else None
    t = torch.empty_like(r)
    for p in params:
        if kind == KIND_IMQ:
            torch.add(r, p, out=t)
            t.reciprocal_()                  # t = 1/(C+r)
            k.add_(t, alpha=p)
            if w is not None:
                w.addcmul_(t, t, value=-p)
        elif kind == KIND_RBF:
            torch.mul(r, -p, out=t)
            t.exp_()                         # t = exp(-g r)
            k.add_(t)
            if w is not None:
                w.add_(t, alpha=-p)
        else:
            raise ValueError(f"kind: unknown kernel kind {kind}")
    return k, w


def _sq_dist(a, b, na, nb, diagonal: bool):
    r = torch.addmm(na[:, None] + nb[None, :], a, b.T, alpha=-2.0)
    r.clamp_(min=0.0)
    if diagonal:
        r.diagonal().zero_()
    return r


def _self_term(p, kind, params, unbiased, g_acc, block):
    """Sum of k over pairs of one set (symmetric blocks visited once); accumulates the
    unnormalised gradient sum_j W_ij (p_i - p_j) into g_acc when given."""
    n = p.shape[0]
    sq = (p * p).sum(1)
    total = torch.zeros((), dtype=torch.float64, device=p.device)
    for i0 in range(0, n, block):
        a, na = p[i0:i0 + block], sq[i0:i0 + block]
        for j0 in range(i0, n, block):
            b, nb = p[j0:j0 + block], sq[j0:j0 + block]
            diag = i0 == j0
            r = _sq_dist(a, b, na, nb, diag)
            k, w = kernel_and_derivative(r, kind, params, g_acc is not None)
            if diag and unbiased:
                k.diagonal().zero_()
            s = k.sum(dtype=torch.float64)
            total += s if diag else 2.0 * s
            if g_acc is not None:
                if diag:
                    w.diagonal().zero_()
                g_acc[i0:i0 + block] += w.sum(1)[:, None] * a - w @ b
                if not diag:
                    g_acc[j0:j0 + block] += w.sum(0)[:, None] * b - w.T @ a
    return total


def _cross_term(x, y, kind, params, gx_acc, gy_acc, block):
    sx, sy = (x * x).sum(1), (y * y).sum(1)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    need = gx_acc is not None or gy_acc is not None
    for i0 in range(0, x.shape[0], block):
        a, na = x[i0:i0 + block], sx[i0:i0 + block]
        for j0 in range(0, y.shape[0], block):
            b, nb = y[j0:j0 + block], sy[j0:j0 + block]
            r = _sq_dist(a, b, na, nb, False)
            k, w = kernel_and_derivative(r, kind, params, need)
            total += k.sum(dtype=torch.float64)
            if gx_acc is not None:
                gx_acc[i0:i0 + block] += w.sum(1)[:, None] * a - w @ b
            if gy_acc is not None:
                gy_acc[j0:j0 + block] += w.sum(0)[:, None] * b - w.T @ a
    return total


def mmd_terms_blocked(x, y, offset, kind, params, unbiased, grad_x=False, grad_y=False,
                      block_size: int = BLOCK_SIZE):
    """Contract forward (see :mod:`wae_fast.contract`) with an explicit block size.

    Value: block sums combined in float64. Gradient parts: accumulated in the compute dtype
    straight into the (2, N, d) / (2, M, d) outputs (each block adds one matmul's worth of
    terms, so this is as accurate as one long matmul), keeping the extra memory at the outputs
    plus one block."""
    ct = compute_dtype(x.dtype)
    n, m = x.shape[0], y.shape[0]
    xs = x.to(ct) - offset.to(ct)
    ys = y.to(ct) - offset.to(ct)
    gx = torch.zeros((2,) + tuple(xs.shape), dtype=ct, device=x.device) if grad_x else None
    gy = torch.zeros((2,) + tuple(ys.shape), dtype=ct, device=y.device) if grad_y else None

    nxx = n * (n - 1) if unbiased else n * n
    nyy = m * (m - 1) if unbiased else m * m
    sxx = _self_term(xs, kind, params, unbiased, gx[0] if grad_x else None, block_size)
    syy = _self_term(ys, kind, params, unbiased, gy[0] if grad_y else None, block_size)
    sxy = _cross_term(xs, ys, kind, params, gx[1] if grad_x else None,
                      gy[1] if grad_y else None, block_size)
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


def _mmd_fwd(x, y, offset, kind, params, unbiased, grad_x, grad_y, precision):
    return mmd_terms_blocked(x, y, offset, kind, params, unbiased, grad_x, grad_y)


def _mmd_bwd(grad_terms, x, y, offset, kind, params, unbiased, grad_x, grad_y, precision):
    # Only reached if the forward ran without gradient flags (e.g. an op called directly).
    _, px, py = mmd_terms_blocked(x, y, offset, kind, params, unbiased, grad_x, grad_y)
    gt = grad_terms.to(px.dtype if grad_x else py.dtype)
    gx = (gt[0] * px[0] + gt[2] * px[1]).to(x.dtype) if grad_x else x.new_empty((0,))
    gy = (gt[1] * py[0] + gt[2] * py[1]).to(y.dtype) if grad_y else y.new_empty((0,))
    return gx, gy


def eps_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal noise of t's shape in the compute dtype, a pure function of ``seed``."""
    g = torch.Generator(device=t.device)
    g.manual_seed(int(seed))
    return torch.randn(t.shape, generator=g, device=t.device, dtype=compute_dtype(t.dtype))


def _reparam_fwd(mu, logvar, seed):
    eps = eps_like(logvar, seed)
    ct = eps.dtype
    return (mu.to(ct) + torch.exp(logvar.to(ct) * 0.5) * eps).to(mu.dtype)


def _reparam_bwd(grad_z, logvar, seed):
    eps = eps_like(logvar, seed)
    ct = eps.dtype
    return (grad_z.to(ct) * eps * torch.exp(logvar.to(ct) * 0.5) * 0.5).to(logvar.dtype)


define_backend_ops(
    "reference",
    fuses_grad=True,
    mmd_fwd=_mmd_fwd,
    mmd_bwd=_mmd_bwd,
    reparam_fwd=_reparam_fwd,
    reparam_bwd=_reparam_bwd,
)
