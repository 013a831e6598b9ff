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


def _sym_block(a, b, na, nb, diag, kind, params, unbiased, need_w):
    """Kernel sum of one block of a symmetric (xx or yy) Gram matrix; ``diag``: a is b.
    Off-diagonal blocks count twice (their mirror image is never visited)."""
    r = _sq_dist(a, b, na, nb, diag)
    k, w = kernel_and_derivative(r, kind, params, need_w)
    if diag and unbiased:
        k.diagonal().zero_()
    if diag and w is not None:
        w.diagonal().zero_()
    s = k.sum(dtype=torch.float64)
    return (s if diag else 2.0 * s), w


def _acc_rows(g, i0, w, a, b):
    """g[i0:i0+len(a)] += sum_j W_ij (a_i - b_j)  (one matmul; g may be fp64 or the compute dtype)."""
    g[i0:i0 + a.shape[0]] += (w.sum(1)[:, None] * a - w @ b).to(g.dtype)


def _acc_cols(g, j0, w, a, b):
    """g[j0:j0+len(b)] += sum_i W_ij (b_j - a_i)."""
    g[j0:j0 + b.shape[0]] += (w.sum(0)[:, None] * b - w.T @ a).to(g.dtype)


def sym_blocks(n: int, block: int) -> list[tuple[int, int]]:
    """(i0, j0) of the blocks on and above the diagonal of an n x n pair matrix."""
    return [(i0, j0) for i0 in range(0, n, block) for j0 in range(i0, n, block)]


def cross_blocks(n: int, m: int, block: int) -> list[tuple[int, int]]:
    """(i0, j0) of all blocks of an n x m pair matrix."""
    return [(i0, j0) for i0 in range(0, n, block) for j0 in range(0, m, block)]


def block_pairs(i0: int, j0: int, n: int, m: int, block: int) -> int:
    """Kernel values evaluated for block (i0, j0) of an n x m pair matrix."""
    return (min(i0 + block, n) - i0) * (min(j0 + block, m) - j0)


def self_sum(p, kind, params, unbiased, block, blocks=None, g_acc=None):
    """sum_{i != j} (unbiased) or sum_{i,j} k(p_i, p_j) over the given upper blocks (all by
    default), in float64.  When ``g_acc`` (n, d) is given, adds sum_j W_ij (p_i - p_j) to it:
    the derivative of the returned sum w.r.t. p is 4 * g_acc.  Returns (sum, pairs evaluated)."""
    n = p.shape[0]
    sq = (p * p).sum(1)
    total = torch.zeros((), dtype=torch.float64, device=p.device)
    pairs = 0
    for i0, j0 in (sym_blocks(n, block) if blocks is None else blocks):
        a, na = p[i0:i0 + block], sq[i0:i0 + block]
        b, nb = p[j0:j0 + block], sq[j0:j0 + block]
        diag = i0 == j0
        s, w = _sym_block(a, b, na, nb, diag, kind, params, unbiased, g_acc is not None)
        total += s
        pairs += a.shape[0] * b.shape[0]
        if g_acc is not None:
            _acc_rows(g_acc, i0, w, a, b)
            if not diag:
                _acc_cols(g_acc, j0, w, a, b)
    return total, pairs


def cross_sum(x, y, kind, params, block, blocks=None, gx_acc=None, gy_acc=None):
    """sum_{i,j} k(x_i, y_j) over the given blocks (all by default), float64; the derivatives
    of the sum are 2 * gx_acc and 2 * gy_acc.  Returns (sum, pairs evaluated)."""
    sx, sy = (x * x).sum(1), (y * y).sum(1)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    pairs = 0
    need = gx_acc is not None or gy_acc is not None
    for i0, j0 in (cross_blocks(x.shape[0], y.shape[0], block) if blocks is None else blocks):
        a, na = x[i0:i0 + block], sx[i0:i0 + block]
        b, nb = y[j0:j0 + block], sy[j0:j0 + block]
        r = _sq_dist(a, b, na, nb, False)
        k, w = kernel_and_derivative(r, kind, params, need)
        total += k.sum(dtype=torch.float64)
        pairs += a.shape[0] * b.shape[0]
        if gx_acc is not None:
            _acc_rows(gx_acc, i0, w, a, b)
        if gy_acc is not None:
            _acc_cols(gy_acc, j0, w, a, b)
    return total, pairs


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
    sxx, _ = self_sum(xs, kind, params, unbiased, block_size, g_acc=gx[0] if grad_x else None)
    syy, _ = self_sum(ys, kind, params, unbiased, block_size, g_acc=gy[0] if grad_y else None)
    sxy, _ = cross_sum(xs, ys, kind, params, block_size, gx_acc=gx[1] if grad_x else None,
                       gy_acc=gy[1] if grad_y else None)
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
