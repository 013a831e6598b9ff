"""Every set of an ``mmd_segments`` call at once, in PyTorch (the reference backend's forward and
backward, and the wide-d fallback of the one-launch backends).

The sets of each side are gathered into a padded (B, n_max, d) tensor, shifted by their set's
shift, with weight 0 on the padding; each row pass of :mod:`wae_fast.segment_sums` (its formulas)
then runs for all sets together, as batched matmuls over blocks of rows: a few torch ops per
block, whatever the number of sets, and no per-set host synchronisation (the offsets are read
on the host once, and a shared y's shifts compared once).  Memory: the padded sides,
O(B n_max d), plus one (B, rows, n_max) block of pairs (at most :data:`PAIRS_PER_BLOCK`).  A y
shared by every set with one shift (what the glue passes) stays one (1, M, d) side, broadcast.
"""
from __future__ import annotations

from typing import Optional

import torch

from .kernel_specs import KIND_POLY, max_sq_norm
from .pairsum import kernel_and_derivative, poly_and_derivative

#: Pairs per block of a batched row pass (elements of one (B, rows, n_max) tensor).
PAIRS_PER_BLOCK = 1 << 22


class Side:
    """One side (x or y) of every set, padded: ``p`` (S, n, d) shifted points (0 on padding and,
    in ``cols``, on weight-0 rows), ``w`` (S, n) weights (0 on padding), ``idx`` / ``valid`` the
    input row of each padded slot.  S = B, or 1 for a y shared with one shift."""

    def __init__(self, pts, weights, starts, lens, shifts, ct):
        dev = pts.device
        n = max(max(lens), 1)
        st = torch.tensor(starts, dtype=torch.int64, device=dev)
        ln = torch.tensor(lens, dtype=torch.int64, device=dev)
        ar = torch.arange(n, device=dev)
        self.valid = ar[None, :] < ln[:, None]
        self.idx = (st[:, None] + ar[None, :]).clamp(max=max(pts.shape[0] - 1, 0))
        zero = torch.zeros((), dtype=ct, device=dev)
        p = pts[self.idx].to(ct) - shifts[:, None, :]
        self.p = torch.where(self.valid[..., None], p, zero)
        w = (torch.ones(self.idx.shape, dtype=ct, device=dev) if weights.numel() == 0
             else weights[self.idx].to(ct))
        self.w = torch.where(self.valid, w, zero)
        # columns: a weight-0 row's coordinates never reach a sum (padding may hold NaN)
        self.cols = torch.where((self.w != 0)[..., None], self.p, zero)
        self.n_rows = _sq_norms(self.p)
        self.n_cols = _sq_norms(self.cols)

    def scatter(self, out: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """out[input row] = values at every valid slot of ``values`` (S' = S sets, each input row
        in one slot; or S' = 1: the slots of the first set, a shared y's rows)."""
        idx, valid = self.idx[:values.shape[0]], self.valid[:values.shape[0]]
        out[idx[valid]] = values[valid].to(out.dtype)
        return out


def _sq_norms(p: torch.Tensor) -> torch.Tensor:
    """|p_i|^2, NaN outside the supported magnitude range (the hostile-input contract)."""
    n = (p * p).sum(-1)
    return n.masked_fill(~(n <= max_sq_norm(p.dtype)), float("nan"))


def row_pass(a: Side, b: Side, kind: int, params, self_pass: bool, unbiased: bool,
             need_grad: bool, sets: Optional[slice] = None):
    """For every set (or ``sets`` of a broadcast side): s_i = sum_j v_j k(a_i, b_j) (float64,
    (S, n_a)) and, with ``need_grad``, G_i = sum_j v_j W_ij (a_i - b_j) ((S, n_a, d); the
    polynomial: -sum_j v_j W_ij b_j), b's weight-0 and padding columns zeroed; ``self_pass``: a is
    b (r_ii = 0 exactly; the j == i pairs dropped when ``unbiased``, as the polynomial's W_ii)."""
    def pick(t):
        return t if sets is None or t.shape[0] == 1 else t[sets]
    pa, na = pick(a.p), pick(a.n_rows)
    pb, nb, v = pick(b.cols), pick(b.n_cols), pick(b.w)
    S = max(pa.shape[0], pb.shape[0])
    n, m = pa.shape[1], pb.shape[1]
    s = torch.zeros((S, n), dtype=torch.float64, device=pa.device)
    g = torch.zeros((S, n, pa.shape[2]), dtype=pa.dtype, device=pa.device) if need_grad else None
    block = max(1, min(n, PAIRS_PER_BLOCK // max(S * m, 1)))
    bt = pb.transpose(1, 2)
    for i0 in range(0, n, block):
        ab = pa[:, i0:i0 + block]
        dots = torch.matmul(ab, bt)
        if kind == KIND_POLY:
            k, w = poly_and_derivative(dots, params, need_grad)
        else:
            r = (na[:, i0:i0 + block, None] + nb[:, None, :]) - 2.0 * dots
            r.clamp_(min=0.0)  # keeps NaN
            if self_pass:
                r = _on_diagonal(r, i0, 0.0)
            k, w = kernel_and_derivative(r, kind, params, need_grad)
        if self_pass and unbiased:
            k = _on_diagonal(k, i0, 0.0)
        if w is not None and self_pass and (unbiased or kind != KIND_POLY):
            w = _on_diagonal(w, i0, 0.0)  # r-kernels: W_ii multiplies a_i - a_i = 0
        s[:, i0:i0 + block] = (k * v[:, None, :]).sum(-1, dtype=torch.float64)
        if g is not None:
            wv = w * v[:, None, :]
            wb = torch.matmul(wv, pb)
            g[:, i0:i0 + block] = -wb if kind == KIND_POLY else wv.sum(-1)[..., None] * ab - wb
    return s, g


def _on_diagonal(t: torch.Tensor, i0: int, value: float) -> torch.Tensor:
    """t (S, rows, m) with the entries of pairs (i0 + i, i0 + i) set to ``value``."""
    rows = torch.arange(t.shape[1], device=t.device) + i0
    diag = rows[:, None] == torch.arange(t.shape[2], device=t.device)[None, :]
    return torch.where(diag, torch.full((), value, dtype=t.dtype, device=t.device), t)


def denominators(w: torch.Tensor, unbiased: bool):
    """Per set (sum w, D, dD/dw_i) in float64 ((S,), (S,), (S, n)); NaN for a set with a negative
    or non-finite weight.  Unbiased: D = sum_{i != j} w_i w_j = 2 sum_i w_i sum_{j<i} w_j."""
    wd = w.double()
    bad = (~torch.isfinite(wd) | (wd < 0)).any(1)
    nan = torch.full((), float("nan"), dtype=torch.float64, device=w.device)
    total = torch.where(bad, nan, wd.sum(1))
    if unbiased:
        before = torch.cumsum(wd, 1) - wd
        D, dD = 2.0 * (wd * before).sum(1), 2.0 * (total[:, None] - wd)
    else:
        D, dD = total * total, (2.0 * total)[:, None].expand_as(wd)
    return total, torch.where(bad, nan, D), torch.where(bad[:, None], nan, dD)


def row_dot(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Per set sum_i w_i s_i over the rows with w_i != 0 (a weight-0 row's s may be NaN)."""
    zero = torch.zeros((), dtype=torch.float64, device=s.device)
    return torch.where(w != 0, w.double() * s, zero).sum(1)


def sides(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, ct):
    """The padded x and y sides, and whether y is one side shared by every set."""
    xo, yo = [int(v) for v in x_offsets.tolist()], [int(v) for v in y_offsets.tolist()]
    nsets = len(xo) - 1
    sh = shifts.to(ct)
    xs = Side(x, x_weights, xo[:-1], [e - s for s, e in zip(xo[:-1], xo[1:])], sh, ct)
    if len(yo) == 2 and nsets > 1:
        one = bool((sh == sh[:1]).all()) if nsets > 1 else True
        if one:  # one (1, M, d) side broadcast over the sets
            return xs, Side(y, y_weights, [yo[0]], [yo[1] - yo[0]], sh[:1], ct), True
        return xs, Side(y, y_weights, [yo[0]] * nsets, [yo[1] - yo[0]] * nsets, sh, ct), True
    return xs, Side(y, y_weights, yo[:-1], [e - s for s, e in zip(yo[:-1], yo[1:])], sh, ct), False


def segment_terms(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind, params,
                  unbiased: bool, ct) -> torch.Tensor:
    """Contract forward ``mmd_segments_fwd``: float64 (B, 3) terms of every set."""
    xs, ys, _ = sides(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, ct)
    sw, dx, _ = denominators(xs.w, unbiased)
    sv, dy, _ = denominators(ys.w, unbiased)
    sxx, _ = row_pass(xs, xs, kind, params, True, unbiased, False)
    syy, _ = row_pass(ys, ys, kind, params, True, unbiased, False)
    sxy, _ = row_pass(xs, ys, kind, params, False, unbiased, False)
    nsets = xs.p.shape[0]
    return torch.stack([row_dot(xs.w, sxx) / dx, (row_dot(ys.w, syy) / dy).expand(nsets),
                        row_dot(xs.w, sxy) / (sw * sv)], 1)


def segment_grads(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights, y_weights, shifts,
                  kind, params, unbiased, grad_x, grad_y, grad_xw, grad_yw, ct):
    """Contract backward ``mmd_segments_bwd``: gradients of sum_b grad_terms[b] . terms[b] to x, y
    (in their dtype) and the weights (theirs); (0,) where the flag is off.  Formulas:
    :mod:`wae_fast.segment_sums`; a y shared by every set sums its sets' contributions."""
    xs, ys, shared = sides(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, ct)
    g, t = grad_terms.double(), terms.double()
    sw, dx, ddx = denominators(xs.w, unbiased)
    sv, dy, ddy = denominators(ys.w, unbiased)
    empty = x.new_empty((0,))
    out = [empty, empty, empty, empty]
    if grad_x or grad_xw:
        s_self, g_self = row_pass(xs, xs, kind, params, True, unbiased, grad_x)
        s_cross, g_cross = row_pass(xs, ys, kind, params, False, unbiased, grad_x)
        if grad_x:
            c_self = (4.0 * g[:, 0] / dx)[:, None] * xs.w.double()
            c_cross = (2.0 * g[:, 2] / (sw * sv))[:, None] * xs.w.double()
            gp = c_self.to(ct)[..., None] * g_self + c_cross.to(ct)[..., None] * g_cross
            gp = torch.where((xs.w != 0)[..., None], gp, torch.zeros((), dtype=ct, device=x.device))
            out[0] = xs.scatter(torch.zeros(x.shape, dtype=x.dtype, device=x.device), gp)
        if grad_xw:
            gw = (g[:, 0:1] * (2.0 * s_self - t[:, 0:1] * ddx) / dx[:, None]
                  + g[:, 2:3] * (s_cross / sv[:, None] - t[:, 2:3]) / sw[:, None])
            out[2] = xs.scatter(torch.zeros(x_weights.shape, dtype=x_weights.dtype, device=x.device), gw)
    if grad_y or grad_yw:
        # a y side per set, or one (shared by every set: its gradients summed over the sets;
        # S = B when the sets shift it differently, S = 1 broadcast otherwise)
        S = ys.p.shape[0]
        a = g[:, 1] if S > 1 else g[:, 1].sum().reshape(1)  # each y side's coefficient of t_yy
        ca = g[:, 1] * t[:, 1] if S > 1 else (g[:, 1] * t[:, 1]).sum().reshape(1)
        s_self, g_self = row_pass(ys, ys, kind, params, True, unbiased, grad_y)
        gp = (4.0 * a / dy)[:, None, None].to(ct) * ys.w[..., None] * g_self if grad_y else None
        gw = (2.0 * a[:, None] * s_self - ca[:, None] * ddy) / dy[:, None] if grad_yw else None
        if shared and S > 1:
            gp = gp.sum(0, keepdim=True) if grad_y else None
            gw = gw.sum(0, keepdim=True) if grad_yw else None
        # xy, y side: y rows against each set's x columns (a shared y: summed over the sets, in
        # chunks that keep one (sets, M, d) block within the pair budget)
        nsets, m = xs.p.shape[0], ys.p.shape[1]
        step = nsets if not shared else max(1, PAIRS_PER_BLOCK // max(m * max(xs.p.shape[1], x.shape[1]), 1))
        for b0 in range(0, nsets, step):
            sl = slice(b0, min(b0 + step, nsets))
            s_c, g_c = row_pass(ys, xs, kind, params, False, unbiased, grad_y, sets=sl)
            gb, tb, swb = g[sl, 2], t[sl, 2], sw[sl]
            svb, wy = (sv[sl], ys.w[sl]) if S > 1 else (sv, ys.w)
            if grad_y:
                part = ((2.0 * gb / (swb * svb))[:, None] * wy.double()).to(ct)[..., None] * g_c
                gp = gp + part.sum(0, keepdim=True) if shared else gp + part
            if grad_yw:
                part = gb[:, None] * (s_c / swb[:, None] - tb[:, None]) / svb[:, None]
                gw = gw + part.sum(0, keepdim=True) if shared else gw + part
        if grad_y:
            keep = (ys.w[:gp.shape[0]] != 0)[..., None]
            gp = torch.where(keep, gp, torch.zeros((), dtype=ct, device=y.device))
            out[1] = ys.scatter(torch.zeros(y.shape, dtype=y.dtype, device=y.device), gp)
        if grad_yw:
            out[3] = ys.scatter(torch.zeros(y_weights.shape, dtype=y_weights.dtype, device=y.device), gw)
    return tuple(out)
