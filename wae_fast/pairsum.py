"""The blocked pair-sum engine: kernel sums over square blocks of a pair matrix, in float64,
with the gradient accumulated in the same pass (a leaf module: torch and the kernel kinds only).

Used by the reference backend (:mod:`wae_fast.reference`), the prior estimators
(:mod:`wae_fast.prior`) and the multi-process sums (:mod:`wae_fast.distributed`).  A block pass
holds at most ``block`` x ``block`` pairs; every kernel scale comes from one distance block;
the blocks on and above the diagonal of a symmetric (xx or yy) matrix are visited once (the
others count twice); with W = dk/dr the gradient of a block sum is one matmul (the polynomial
kernel works from the dot products instead, with the weight of :func:`poly_and_derivative`):

    d/da_i sum_j k(a_i, b_j) = 2 (rowsum(W)_i a_i - (W b)_i)
"""
from __future__ import annotations

import torch

from .kernel_specs import KIND_IMQ, KIND_POLY, KIND_RBF, max_sq_norm


def pair_count(n: int, unbiased: bool) -> int:
    """Ordered pairs a self (xx or yy) term is normalised by: n (n - 1) (U-statistic, i == j
    excluded) or n^2 (V-statistic)."""
    return n * (n - 1) if unbiased else n * n


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


def sq_norms(p: torch.Tensor) -> torch.Tensor:
    """|p_i|^2 of shifted rows, NaN where outside the supported magnitude range (or NaN): the
    hostile-input contract (:data:`wae_fast.kernel_specs.MAX_SQ_NORM`) makes their pairs NaN."""
    n = (p * p).sum(1)
    return n.masked_fill(~(n <= max_sq_norm(p.dtype)), float("nan"))


def poly_and_derivative(t: torch.Tensor, params: list[float], need_deriv: bool):
    """Polynomial kernel from the dot products t = a.b: k = (gamma t + c)^p and (optionally)
    w = -(gamma / 2) dk/dt = -(gamma p / 2) (gamma t + c)^(p-1), the weight that makes the
    gradient machinery's sum_j W_ij (a_i - b_j) with the a_i term dropped, -sum_j W_ij b_j,
    half the derivative (the r-kernels' dr/da = 2 (a - b) convention).  A power that overflows
    the dtype is NaN (not inf), as on every backend."""
    gamma, c, deg = float(params[0]), float(params[1]), int(params[2])
    base = t.mul(gamma).add_(c)
    pm1 = torch.ones_like(base)
    for _ in range(deg - 1):
        pm1.mul_(base)
    k = pm1 * base
    k += k - k  # an overflowed power reads NaN, not inf (outside the range: the contract)
    w = pm1.mul_(-0.5 * gamma * deg) if need_deriv else None
    if w is not None:
        w += w - w
    return k, w


def pair_block(a, b, na, nb, diagonal: bool, kind: int, params: list[float], need_deriv: bool):
    """k and W of one block of pairs: from r = ||a - b||^2 (IMQ, RBF; clamped, r_ii = 0 on a
    diagonal block) or from the dot products (Polynomial)."""
    if kind == KIND_POLY:
        return poly_and_derivative(a @ b.T, params, need_deriv)
    return kernel_and_derivative(sq_dist(a, b, na, nb, diagonal), kind, params, need_deriv)


def sq_dist(a, b, na, nb, diagonal: bool):
    """r_ij = |a_i - b_j|^2 = na_i + nb_j - 2 a_i.b_j, clamped at 0 (torch.clamp keeps NaN);
    r_ii = 0 exactly when ``diagonal`` (a is b)."""
    r = torch.addmm(na[:, None] + nb[None, :], a, b.T, alpha=-2.0)
    r.clamp_(min=0.0)
    if diagonal:
        r.diagonal().zero_()
    return r


def sym_block(a, b, na, nb, diag, kind, params, unbiased, need_w):
    """Kernel sum of one block of a symmetric (xx or yy) Gram matrix; ``diag``: a is b.
    Off-diagonal blocks count twice (their mirror image is never visited)."""
    k, w = pair_block(a, b, na, nb, diag, kind, params, need_w)
    if diag and unbiased:
        k.diagonal().zero_()
    # r-kernels: W_ii multiplies a_i - a_i = 0; the polynomial's k(a_i, a_i) depends on a_i
    if diag and w is not None and (unbiased or kind != KIND_POLY):
        w.diagonal().zero_()
    s = k.sum(dtype=torch.float64)
    return (s if diag else 2.0 * s), w


def acc_rows(g, i0, w, a, b, kind=KIND_IMQ):
    """g[i0:i0+len(a)] += sum_j W_ij (a_i - b_j)  (one matmul; g may be fp64 or the compute dtype);
    the polynomial drops the a_i term (see :func:`poly_and_derivative`)."""
    if kind == KIND_POLY:
        g[i0:i0 + a.shape[0]] -= (w @ b).to(g.dtype)
    else:
        g[i0:i0 + a.shape[0]] += (w.sum(1)[:, None] * a - w @ b).to(g.dtype)


def acc_cols(g, j0, w, a, b, kind=KIND_IMQ):
    """g[j0:j0+len(b)] += sum_i W_ij (b_j - a_i) (polynomial: without the b_j term)."""
    if kind == KIND_POLY:
        g[j0:j0 + b.shape[0]] -= (w.T @ a).to(g.dtype)
    else:
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
    sq = sq_norms(p)
    total = torch.zeros((), dtype=torch.float64, device=p.device)
    pairs = 0
    for i0, j0 in (sym_blocks(n, block) if blocks is None else blocks):
        a, na = p[i0:i0 + block], sq[i0:i0 + block]
        b, nb = p[j0:j0 + block], sq[j0:j0 + block]
        diag = i0 == j0
        s, w = sym_block(a, b, na, nb, diag, kind, params, unbiased, g_acc is not None)
        total += s
        pairs += a.shape[0] * b.shape[0]
        if g_acc is not None:
            acc_rows(g_acc, i0, w, a, b, kind)
            if not diag:
                acc_cols(g_acc, j0, w, a, b, kind)
    return total, pairs


def cross_sum(x, y, kind, params, block, blocks=None, gx_acc=None, gy_acc=None):
    """sum_{i,j} k(x_i, y_j) over the given blocks (all by default), float64; the derivatives
    of the sum are 2 * gx_acc and 2 * gy_acc.  Returns (sum, pairs evaluated)."""
    sx, sy = sq_norms(x), sq_norms(y)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    pairs = 0
    need = gx_acc is not None or gy_acc is not None
    for i0, j0 in (cross_blocks(x.shape[0], y.shape[0], block) if blocks is None else blocks):
        a, na = x[i0:i0 + block], sx[i0:i0 + block]
        b, nb = y[j0:j0 + block], sy[j0:j0 + block]
        k, w = pair_block(a, b, na, nb, False, kind, params, need)
        total += k.sum(dtype=torch.float64)
        pairs += a.shape[0] * b.shape[0]
        if gx_acc is not None:
            acc_rows(gx_acc, i0, w, a, b, kind)
        if gy_acc is not None:
            acc_cols(gy_acc, j0, w, a, b, kind)
    return total, pairs
