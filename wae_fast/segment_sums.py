"""Weighted kernel sums over many point sets (the ``mmd_segments`` op family), in PyTorch: the
reference backend's implementation and the formulas every backend follows.

Set b holds x rows ``x_offsets[b]:x_offsets[b+1]`` with weights w and y rows (its own range, or
all of y when y is shared) with weights v, both shifted by ``shifts[b]``.  Everything comes
from row passes over the set's pair matrices, with the column weights applied in the pass:

    s_i = sum_j v_j k(a_i, b_j)               (j != i on a self matrix under the U-statistic)
    G_i = sum_j v_j W_ij (a_i - b_j)          (polynomial: -sum_j v_j W_ij b_j; W = dk/dr)

Terms (float64): t_xx = sum_i w_i s^xx_i / D_x with D_x = (sum w)^2 (biased) or
sum_{i != j} w_i w_j = 2 sum_i w_i sum_{j<i} w_j (unbiased: exact for tiny weights, where
(sum w)^2 - sum w^2 cancels); t_yy likewise; t_xy = sum_i w_i s^xy_i / (sum w sum v).
Gradients, with g = d loss / d terms:

    d/dx_i = 4 g_xx w_i G^xx_i / D_x + 2 g_xy w_i G^xy_i / (sum w sum v)
    d/dw_i = g_xx (2 s^xx_i - t_xx dD_x/dw_i) / D_x + g_xy (s^xy_i / sum v - t_xy) / sum w

with dD_x/dw_i = 2 sum w (biased) or 2 (sum w - w_i) (unbiased); y and v alike.  A column with
weight 0 is zeroed before the pass (its coordinates never reach a sum); a row with weight 0
only feeds the gradient to its own weight (the true derivative, which reads that row).  A
negative or non-finite weight makes its set's denominators, hence the set, NaN.
"""
from __future__ import annotations

import torch

from .pairsum import BLOCK_SIZE, acc_rows, pair_block, sq_norms


def row_pass(a, b, v, kind, params, exclude_diag: bool, self_pass: bool, need_grad: bool,
             block: int = BLOCK_SIZE):
    """s (n,) float64 and, with ``need_grad``, G (n, d) in a's dtype (see the module doc).
    ``self_pass``: a and b are the same rows (r_ii = 0 exactly on diagonal blocks);
    ``exclude_diag``: the j == i terms are skipped (U-statistic)."""
    n = a.shape[0]
    na, nb = sq_norms(a), sq_norms(b)
    s = torch.zeros((n,), dtype=torch.float64, device=a.device)
    g = torch.zeros_like(a) if need_grad else None
    for i0 in range(0, n, block):
        ab, nab = a[i0:i0 + block], na[i0:i0 + block]
        for j0 in range(0, b.shape[0], block):
            diag = self_pass and i0 == j0
            k, w = pair_block(ab, b[j0:j0 + block], nab, nb[j0:j0 + block], diag, kind, params,
                              need_grad)
            if diag and exclude_diag:
                k.diagonal().zero_()
                if w is not None:
                    w.diagonal().zero_()
            vb = v[j0:j0 + block]
            s[i0:i0 + block] += (k * vb).sum(1, dtype=torch.float64)
            if g is not None:
                acc_rows(g, i0, w * vb, ab, b[j0:j0 + block], kind)
    return s, g


def set_weights(w: torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    """The set's weights in the compute dtype (unit weights when ``w`` is empty)."""
    return torch.ones((n,), dtype=like.dtype, device=like.device) if w.numel() == 0 else w.to(like.dtype)


def denominators(w: torch.Tensor, unbiased: bool):
    """(sum w, D, dD/dw) in float64; NaN when a weight is negative or not finite."""
    wd = w.double()
    bad = not bool(torch.isfinite(wd).all()) or bool((wd < 0).any())
    if bad:
        wd = torch.full_like(wd, float("nan"))
    total = wd.sum()
    if unbiased:
        before = torch.cumsum(wd, 0) - wd  # sum_{j<i} w_j
        return total, 2.0 * (wd * before).sum(), 2.0 * (total - wd)
    return total, total * total, (2.0 * total).expand_as(wd)


def masked_columns(p: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Rows with weight 0 replaced by zeros: their coordinates never reach a sum."""
    return torch.where((w != 0)[:, None], p, torch.zeros((), dtype=p.dtype, device=p.device))


def row_dot(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """sum_i w_i s_i over the rows with w_i != 0 (a weight-0 row's s may be NaN: never read)."""
    wd = w.double()
    return torch.where(w != 0, wd * s, torch.zeros((), dtype=torch.float64, device=s.device)).sum()


def ranges(x_offsets: torch.Tensor, y_offsets: torch.Tensor):
    """Host (x range, y range) of every set."""
    xo, yo = x_offsets.tolist(), y_offsets.tolist()
    nsets = len(xo) - 1
    shared = len(yo) == 2
    return [((xo[b], xo[b + 1]), (yo[0], yo[1]) if shared else (yo[b], yo[b + 1])) for b in range(nsets)]


def _set_data(x, y, xw, yw, shift, xr, yr, ct):
    xs = x[xr[0]:xr[1]].to(ct) - shift
    ys = y[yr[0]:yr[1]].to(ct) - shift
    w = set_weights(xw[xr[0]:xr[1]] if xw.numel() else xw, xs.shape[0], xs)
    v = set_weights(yw[yr[0]:yr[1]] if yw.numel() else yw, ys.shape[0], ys)
    return xs, ys, w, v


def segment_terms(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind, params,
                  unbiased: bool, ct) -> torch.Tensor:
    """Contract forward ``mmd_segments_fwd``: float64 (B, 3) terms, one set at a time."""
    rows = []
    for b, (xr, yr) in enumerate(ranges(x_offsets, y_offsets)):
        xs, ys, w, v = _set_data(x, y, x_weights, y_weights, shifts[b].to(ct), xr, yr, ct)
        xm, ym = masked_columns(xs, w), masked_columns(ys, v)
        sw, dx, _ = denominators(w, unbiased)
        sv, dy, _ = denominators(v, unbiased)
        sxx, _ = row_pass(xs, xm, w, kind, params, unbiased, True, False)
        syy, _ = row_pass(ys, ym, v, kind, params, unbiased, True, False)
        sxy, _ = row_pass(xs, ym, v, kind, params, False, False, False)
        rows.append(torch.stack([row_dot(w, sxx) / dx, row_dot(v, syy) / dy,
                                 row_dot(w, sxy) / (sw * sv)]))
    return torch.stack(rows)


def _side_grads(a, am, wa, b, bm, wb, g_self, g_cross, t_self, t_cross, unbiased, kind, params,
                need_p, need_w):
    """Gradients to one side's rows a (weights wa) of its set: the self term and the cross term
    against the other side b (weights wb)."""
    sa, d_self, dd = denominators(wa, unbiased)
    sb, _, _ = denominators(wb, unbiased)
    s_self, g_s = row_pass(a, am, wa, kind, params, unbiased, True, need_p)
    s_cross, g_c = row_pass(a, bm, wb, kind, params, False, False, need_p)
    gp = gw = None
    if need_p:
        c_self = (4.0 * g_self / d_self) * wa.double()
        c_cross = (2.0 * g_cross / (sa * sb)) * wa.double()
        gp = c_self.to(a.dtype)[:, None] * g_s + c_cross.to(a.dtype)[:, None] * g_c
        gp = torch.where((wa != 0)[:, None], gp, torch.zeros((), dtype=gp.dtype, device=gp.device))
    if need_w:
        gw = g_self * (2.0 * s_self - t_self * dd) / d_self + g_cross * (s_cross / sb - t_cross) / sa
    return gp, gw


def segment_grads(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights, y_weights, shifts,
                  kind, params, unbiased, grad_x, grad_y, grad_xw, grad_yw, ct):
    """Contract backward ``mmd_segments_bwd``: gradients to x, y and the weights (a y shared by
    every set sums its sets' contributions)."""
    gx = torch.zeros(x.shape, dtype=ct, device=x.device) if grad_x else None
    gy = torch.zeros(y.shape, dtype=ct, device=y.device) if grad_y else None
    gxw = torch.zeros(x_weights.shape, dtype=torch.float64, device=x.device) if grad_xw else None
    gyw = torch.zeros(y_weights.shape, dtype=torch.float64, device=x.device) if grad_yw else None
    g = grad_terms.double()
    for b, (xr, yr) in enumerate(ranges(x_offsets, y_offsets)):
        xs, ys, w, v = _set_data(x, y, x_weights, y_weights, shifts[b].to(ct), xr, yr, ct)
        xm, ym = masked_columns(xs, w), masked_columns(ys, v)
        t = terms[b].double()
        if grad_x or grad_xw:
            gp, gw = _side_grads(xs, xm, w, ys, ym, v, g[b, 0], g[b, 2], t[0], t[2], unbiased,
                                 kind, params, grad_x, grad_xw)
            if grad_x:
                gx[xr[0]:xr[1]] += gp
            if grad_xw:
                gxw[xr[0]:xr[1]] += gw
        if grad_y or grad_yw:
            gp, gw = _side_grads(ys, ym, v, xs, xm, w, g[b, 1], g[b, 2], t[1], t[2], unbiased,
                                 kind, params, grad_y, grad_yw)
            if grad_y:
                gy[yr[0]:yr[1]] += gp
            if grad_yw:
                gyw[yr[0]:yr[1]] += gw
    empty = x.new_empty((0,))
    return (gx.to(x.dtype) if grad_x else empty, gy.to(y.dtype) if grad_y else empty,
            gxw.to(x_weights.dtype) if grad_xw else empty,
            gyw.to(y_weights.dtype) if grad_yw else empty)


# ---------------------------------------------------------------------------------------------
# Vectorised combination for backends whose kernels produce the row sums of every set at once
# (triton): "virtual rows" list each set's rows one after another (a shared y appears once per
# set), so that per-set sums are index_add reductions over a set id per virtual row.


class Sides:
    """Host layout of the sets: the x and y virtual rows, their set ids and real row indices."""

    def __init__(self, x_offsets, y_offsets, device):
        self.ranges = ranges(x_offsets, y_offsets)
        self.nsets = len(self.ranges)
        xs = [r for r, _ in self.ranges]
        ys = [r for _, r in self.ranges]
        self.x_base = [s for s, _ in xs]  # x virtual rows are the x rows
        self.y_base, total = [], 0
        for s, e in ys:
            self.y_base.append(total)
            total += e - s
        self.ny_virtual = total
        self.x_rows = torch.arange(xs[-1][1], device=device)
        self.y_rows = torch.cat([torch.arange(s, e, device=device) for s, e in ys])
        counts_x = torch.tensor([e - s for s, e in xs], device=device)
        counts_y = torch.tensor([e - s for s, e in ys], device=device)
        ids = torch.arange(self.nsets, device=device)
        self.x_seg = torch.repeat_interleave(ids, counts_x)
        self.y_seg = torch.repeat_interleave(ids, counts_y)


def side_stats(w, seg, nsets, unbiased):
    """Per set (sum w, D) in float64 (NaN for a negative or non-finite weight)."""
    wd = w.double()
    z = torch.zeros((nsets,), dtype=torch.float64, device=w.device)
    total = z.index_add(0, seg, wd)
    sq = z.index_add(0, seg, wd * wd)
    bad = z.index_add(0, seg, ((wd < 0) | ~torch.isfinite(wd)).double()) > 0
    den = total * total - sq if unbiased else total * total
    nan = torch.full_like(total, float("nan"))
    return torch.where(bad, nan, total), torch.where(bad, nan, den)


def seg_dot(w, s, seg, nsets):
    """Per set sum_i w_i s_i over the rows with w_i != 0."""
    z = torch.zeros((nsets,), dtype=torch.float64, device=s.device)
    return z.index_add(0, seg, torch.where(w != 0, w.double() * s, torch.zeros_like(s)))


def combine_terms(sides, wx, wy, sxx, sxy, syy, unbiased):
    """(B, 3) terms from the virtual-row sums (wx, wy: virtual-row weights)."""
    sw, dx = side_stats(wx, sides.x_seg, sides.nsets, unbiased)
    sv, dy = side_stats(wy, sides.y_seg, sides.nsets, unbiased)
    return torch.stack([seg_dot(wx, sxx, sides.x_seg, sides.nsets) / dx,
                        seg_dot(wy, syy, sides.y_seg, sides.nsets) / dy,
                        seg_dot(wx, sxy, sides.x_seg, sides.nsets) / (sw * sv)], 1)


def combine_side_grads(w, seg, w_other, seg_other, nsets, g, terms, self_col, s_self, s_cross,
                       g_self, g_cross, unbiased):
    """Virtual-row gradients of one side: (coordinates (rows, d) or None, weights or None).
    ``self_col``: 0 for x (terms column 0), 1 for y; the cross term is column 2."""
    sa, da = side_stats(w, seg, nsets, unbiased)
    sb, _ = side_stats(w_other, seg_other, nsets, unbiased)
    gs, gc = g[:, self_col][seg], g[:, 2][seg]
    wd = w.double()
    gp = gw = None
    if g_self is not None:
        c_self = (4.0 * gs / da[seg]) * wd
        c_cross = (2.0 * gc / (sa[seg] * sb[seg])) * wd
        ct = g_self.dtype
        gp = c_self.to(ct)[:, None] * g_self + c_cross.to(ct)[:, None] * g_cross
        gp = torch.where((w != 0)[:, None], gp, torch.zeros((), dtype=ct, device=gp.device))
    if s_self is not None:
        dd = 2.0 * (sa[seg] - wd) if unbiased else 2.0 * sa[seg]
        gw = (gs * (2.0 * s_self - terms[:, self_col][seg] * dd) / da[seg]
              + gc * (s_cross / sb[seg] - terms[:, 2][seg]) / sa[seg])
    return gp, gw


def task_table(sets, block: int, device) -> torch.Tensor:
    """int64 (T, 6) task table [set, r0, r1, c0, c1, o0] of the row-pass kernels: ``sets`` =
    (set, row start, row end, column start, column end, output start) per set, cut into row
    tiles of ``block`` (o0: the output row of the tile's first row)."""
    rows = []
    for b, r0, r1, c0, c1, o0 in sets:
        for i in range(r0, r1, block):
            rows.append((b, i, min(i + block, r1), c0, c1, o0 + i - r0))
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 6).to(device)


def _pass_sets(sides, side, other):
    """(set, r0, r1, c0, c1, o0) of every set: rows of ``side``, columns of ``other`` ('x'/'y');
    x rows are output at their own index, y rows at their virtual index."""
    out = []
    for b, (xr, yr) in enumerate(sides.ranges):
        rr = xr if side == "x" else yr
        cr = xr if other == "x" else yr
        out.append((b, rr[0], rr[1], cr[0], cr[1], rr[0] if side == "x" else sides.y_base[b]))
    return out


def _rows_setup(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts):
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    X, Y = x.to(ct).contiguous(), y.to(ct).contiguous()
    sides = Sides(x_offsets, y_offsets, x.device)
    xw = x_weights.to(ct).contiguous() if x_weights.numel() else x.new_empty((0,), dtype=ct)
    yw = y_weights.to(ct).contiguous() if y_weights.numel() else y.new_empty((0,), dtype=ct)
    wx = xw if xw.numel() else torch.ones((x.shape[0],), dtype=ct, device=x.device)
    wy = yw[sides.y_rows] if yw.numel() else torch.ones((sides.ny_virtual,), dtype=ct, device=x.device)
    return X, Y, xw, yw, wx, wy, sides, shifts.to(ct).contiguous()


def rows_fwd(row_pass_fn, block, x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind,
             params, unbiased, precision):
    """Contract forward for a backend with a row-pass kernel ``row_pass_fn(a, c, cw, shifts,
    params, tasks, n_out, kind, self_pass, exclude_diag, need_grad, precision) -> (s, G)``: three
    launches (xx, xy, yy), each over the tiles of every set, then the per-set reductions."""
    X, Y, xw, yw, wx, wy, sides, sh = _rows_setup(x, y, x_offsets, y_offsets, x_weights, y_weights,
                                                  shifts)

    def run(a, c, cw, side, other, n_out, self_pass, excl):
        tasks = task_table(_pass_sets(sides, side, other), block, x.device)
        return row_pass_fn(a, c, cw, sh, params, tasks, n_out, kind, self_pass, excl, False,
                           precision)[0]

    sxx = run(X, X, xw, "x", "x", x.shape[0], True, unbiased)
    sxy = run(X, Y, yw, "x", "y", x.shape[0], False, False)
    syy = run(Y, Y, yw, "y", "y", sides.ny_virtual, True, unbiased)
    return combine_terms(sides, wx, wy, sxx, sxy, syy, unbiased)


def rows_bwd(row_pass_fn, block, grad_terms, terms, x, y, x_offsets, y_offsets, x_weights, y_weights,
             shifts, kind, params, unbiased, grad_x, grad_y, grad_xw, grad_yw, precision):
    """Contract backward for a backend with a row-pass kernel (see :func:`rows_fwd`): the self
    and cross passes of each side with G, then the gradient formulas of the module doc (a shared
    y sums its sets' contributions)."""
    X, Y, xw, yw, wx, wy, sides, sh = _rows_setup(x, y, x_offsets, y_offsets, x_weights, y_weights,
                                                  shifts)
    g, t = grad_terms.double(), terms.double()
    empty = x.new_empty((0,))
    gx = gy = gxw = gyw = empty

    def run(a, c, cw, side, other, n_out, self_pass, excl, need):
        tasks = task_table(_pass_sets(sides, side, other), block, x.device)
        return row_pass_fn(a, c, cw, sh, params, tasks, n_out, kind, self_pass, excl, need, precision)

    if grad_x or grad_xw:
        ss, gs = run(X, X, xw, "x", "x", x.shape[0], True, unbiased, grad_x)
        sc, gc = run(X, Y, yw, "x", "y", x.shape[0], False, False, grad_x)
        gp, gw = combine_side_grads(wx, sides.x_seg, wy, sides.y_seg, sides.nsets, g, t, 0, ss, sc,
                                    gs, gc, unbiased)
        gx = gp.to(x.dtype) if grad_x else empty
        gxw = gw.to(x_weights.dtype) if grad_xw else empty
    if grad_y or grad_yw:
        n = sides.ny_virtual
        ss, gs = run(Y, Y, yw, "y", "y", n, True, unbiased, grad_y)
        sc, gc = run(Y, X, xw, "y", "x", n, False, False, grad_y)
        gp, gw = combine_side_grads(wy, sides.y_seg, wx, sides.x_seg, sides.nsets, g, t, 1, ss, sc,
                                    gs, gc, unbiased)
        if grad_y:
            gy = torch.zeros_like(Y).index_add_(0, sides.y_rows, gp).to(y.dtype)
        if grad_yw:
            gyw = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device).index_add_(
                0, sides.y_rows, gw).to(y_weights.dtype)
    return gx, gy, gxw, gyw


def row_pass_ops(row_pass_fn, block: int, max_d: int):
    """(forward, backward) implementations of the contract for a backend whose extension
    provides ``row_pass_fn`` (see :func:`rows_fwd`); feature dimensions above ``max_d`` run the
    reference's per-set passes instead."""

    def fwd(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind, params, unbiased,
            precision):
        if x.shape[1] > max_d:
            ct = torch.float64 if x.dtype == torch.float64 else torch.float32
            return segment_terms(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind,
                                 params, unbiased, ct)
        return rows_fwd(row_pass_fn, block, x, y, x_offsets, y_offsets, x_weights, y_weights,
                        shifts, kind, params, unbiased, precision)

    def bwd(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind,
            params, unbiased, grad_x, grad_y, grad_xw, grad_yw, precision):
        if x.shape[1] > max_d:
            ct = torch.float64 if x.dtype == torch.float64 else torch.float32
            return segment_grads(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights,
                                 y_weights, shifts, kind, params, unbiased, grad_x, grad_y,
                                 grad_xw, grad_yw, ct)
        return rows_bwd(row_pass_fn, block, grad_terms, terms, x, y, x_offsets, y_offsets,
                        x_weights, y_weights, shifts, kind, params, unbiased, grad_x, grad_y,
                        grad_xw, grad_yw, precision)

    return fwd, bwd


# ---------------------------------------------------------------------------------------------
# One-launch schedule (triton): host task tables over every set, built from the host offsets.


class Plan:
    """Device layout of one ``mmd_segments`` call for the one-launch kernels: int64 offsets
    (``y_offsets`` is [0, M] for a shared y, whose rows every set reads in place), the forward
    task table ``[set, term, r0, r1]`` (term 0 xx, 1 yy, 2 xy; grouped by set, ``set_tasks`` the
    (B + 1,) start of each set's tasks) and, on demand, the backward table
    ``[side, b0, b1, r0, r1]`` (side 0 x, 1 y; a shared y's row tiles span every set, so each of
    its gradient rows is written by one program)."""

    def __init__(self, x_offsets, y_offsets, block: int, device):
        xo, yo = [int(v) for v in x_offsets.tolist()], [int(v) for v in y_offsets.tolist()]
        self.nsets = len(xo) - 1
        self.shared_y = len(yo) == 2
        self.block, self.device = block, device
        self._xo, self._yo = xo, yo
        self.x_offsets = torch.tensor(xo, dtype=torch.int64).to(device)
        self.y_offsets = torch.tensor(yo, dtype=torch.int64).to(device)
        tasks, starts = [], [0]
        for b in range(self.nsets):
            x0, x1 = xo[b], xo[b + 1]
            y0, y1 = self.y_range(b)
            for term, (r0, r1) in ((0, (x0, x1)), (2, (x0, x1)), (1, (y0, y1))):
                tasks.extend((b, term, i, min(i + block, r1)) for i in range(r0, r1, block))
            starts.append(len(tasks))
        self.fwd_tasks = torch.tensor(tasks, dtype=torch.int64).reshape(-1, 4).to(device)
        self.set_tasks = torch.tensor(starts, dtype=torch.int64).to(device)

    def y_range(self, b: int):
        return (self._yo[0], self._yo[1]) if self.shared_y else (self._yo[b], self._yo[b + 1])

    def bwd_tasks(self, x_side: bool, y_side: bool) -> torch.Tensor:
        blk, rows = self.block, []
        if x_side:
            for b in range(self.nsets):
                x0, x1 = self._xo[b], self._xo[b + 1]
                rows.extend((0, b, b + 1, i, min(i + blk, x1)) for i in range(x0, x1, blk))
        if y_side:
            spans = [(0, self.nsets, self._yo[0], self._yo[1])] if self.shared_y else [
                (b, b + 1, self._yo[b], self._yo[b + 1]) for b in range(self.nsets)]
            for b0, b1, y0, y1 in spans:
                rows.extend((1, b0, b1, i, min(i + blk, y1)) for i in range(y0, y1, blk))
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, 5).to(self.device)


def plan_inputs(x, y, x_weights, y_weights, shifts):
    """(X, Y, xw, yw, shifts) contiguous in the compute dtype (weights: empty when absent)."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    xw = x_weights.to(ct).contiguous() if x_weights.numel() else x.new_empty((0,), dtype=ct)
    yw = y_weights.to(ct).contiguous() if y_weights.numel() else y.new_empty((0,), dtype=ct)
    return x.to(ct).contiguous(), y.to(ct).contiguous(), xw, yw, shifts.to(ct).contiguous()
