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

from .contract import segments_unfused
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
# One-launch schedule (triton, cuda, cuda_emu): host task tables over every set, built from the
# host offsets; the kernels compute the per-set sums and denominators themselves.


#: Sets per y-side backward task of a shared y (see :attr:`Plan.y_chunks`).
SHARED_Y_CHUNK = 8


def sum_chunks(g, chunks: int):
    """The y-side gradient of a chunked buffer: (chunks * M, ...) summed over the chunks."""
    return g if g is None or chunks == 1 else g.view(chunks, -1, *g.shape[1:]).sum(0)


class Plan:
    """Device layout of one ``mmd_segments`` call for the one-launch kernels: int64 offsets
    (``y_offsets`` is [0, M] for a shared y, whose rows every set reads in place), the forward
    task table ``[set, term, r0, r1]`` (term 0 xx, 1 yy, 2 xy; grouped by set, ``set_tasks`` the
    (B + 1,) start of each set's tasks) and, on demand, the backward table
    ``[side, b0, b1, r0, r1, o0]`` (side 0 x, 1 y; rows [r0, r1) of that side for the sets
    [b0, b1), their gradients written at output rows o0 + i - r0: a shared y's row tiles span a
    chunk of sets and write the chunk's slice of the buffer, see :attr:`y_chunks`)."""

    def __init__(self, x_offsets, y_offsets, block: int, device):
        xo, yo = [int(v) for v in x_offsets.tolist()], [int(v) for v in y_offsets.tolist()]
        self.nsets = len(xo) - 1
        self.shared_y = len(yo) == 2
        self.block, self.device = block, device
        self._xo, self._yo = xo, yo
        self._bwd: dict = {}
        self.x_offsets = torch.tensor(xo, dtype=torch.int64).to(device)
        self.y_offsets = torch.tensor(yo, dtype=torch.int64).to(device)
        tasks, starts = [], [0]
        for b in range(self.nsets):
            x0, x1 = xo[b], xo[b + 1]
            y0, y1 = self.y_range(b)
            # row tiles start at multiples of block from the set's first row: the kernels'
            # symmetric self tiles take a task's first column block as its diagonal block
            for term, (r0, r1) in ((0, (x0, x1)), (2, (x0, x1)), (1, (y0, y1))):
                tasks.extend((b, term, i, min(i + block, r1)) for i in range(r0, r1, block))
            starts.append(len(tasks))
        self.fwd_tasks = torch.tensor(tasks, dtype=torch.int64).reshape(-1, 4).to(device)
        self.set_tasks = torch.tensor(starts, dtype=torch.int64).to(device)

    def y_range(self, b: int):
        return (self._yo[0], self._yo[1]) if self.shared_y else (self._yo[b], self._yo[b + 1])

    def bwd_tasks(self, x_side: bool, y_side: bool) -> torch.Tensor:
        key = (bool(x_side), bool(y_side))
        if key not in self._bwd:
            self._bwd[key] = self._build_bwd(*key)
        return self._bwd[key]

    @property
    def y_chunks(self) -> int:
        """Slices of the y-side gradient buffer: a shared y's row tiles are split over chunks of
        SHARED_Y_CHUNK sets (parallelism for large B), each chunk writing its own slice of a
        (y_chunks * M, ...) buffer that the host sums over the chunks (fixed order); 1 otherwise."""
        return -(-self.nsets // SHARED_Y_CHUNK) if self.shared_y else 1

    def _build_bwd(self, x_side: bool, y_side: bool) -> torch.Tensor:
        blk, rows = self.block, []
        if x_side:
            for b in range(self.nsets):
                x0, x1 = self._xo[b], self._xo[b + 1]
                rows.extend((0, b, b + 1, i, min(i + blk, x1), i) for i in range(x0, x1, blk))
        if y_side:
            m = self._yo[1] - self._yo[0]
            spans = [(b0, min(b0 + SHARED_Y_CHUNK, self.nsets), 0, m, c * m)
                     for c, b0 in enumerate(range(0, self.nsets, SHARED_Y_CHUNK))] if self.shared_y else [
                (b, b + 1, self._yo[b], self._yo[b + 1], self._yo[b]) for b in range(self.nsets)]
            for b0, b1, y0, y1, o0 in spans:
                rows.extend((1, b0, b1, i, min(i + blk, y1), o0 + i - y0) for i in range(y0, y1, blk))
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, 6).to(self.device)


_PLANS: dict = {}


def get_plan(x_offsets, y_offsets, block: int, device) -> Plan:
    """The :class:`Plan` of these offsets, cached (a training loop repeats its set layout: the
    task tables are built and copied to the device once, not per call; ~1 ms of host time at
    B = 256 otherwise)."""
    key = (tuple(x_offsets.tolist()), tuple(y_offsets.tolist()), int(block), str(device))
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 32:
            _PLANS.clear()
        plan = _PLANS[key] = Plan(x_offsets, y_offsets, block, device)
    return plan


def plan_inputs(x, y, x_weights, y_weights, shifts):
    """(X, Y, xw, yw, shifts) contiguous in the compute dtype (weights: empty when absent)."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    xw = x_weights.to(ct).contiguous() if x_weights.numel() else x.new_empty((0,), dtype=ct)
    yw = y_weights.to(ct).contiguous() if y_weights.numel() else y.new_empty((0,), dtype=ct)
    return x.to(ct).contiguous(), y.to(ct).contiguous(), xw, yw, shifts.to(ct).contiguous()


def plan_ops(extension, block: int, max_d: int):
    """(forward, backward) implementations of the contract for a CUDA-style extension with
    ``seg_fwd`` / ``seg_bwd`` (csrc/cuda/segments_kernels.cu: one launch + one finalize forward,
    one launch backward, over :class:`Plan` tables of row tiles of ``block``); ``extension()``
    returns the built module.  Feature dimensions above ``max_d`` run the reference's passes."""

    def fwd(x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind, params, unbiased,
            grad_x, grad_y, grad_xw, grad_yw, precision):
        # the gradients are the backward's: no fused parts
        if x.shape[1] > max_d:
            ct = torch.float64 if x.dtype == torch.float64 else torch.float32
            return segments_unfused(segment_terms(x, y, x_offsets, y_offsets, x_weights, y_weights,
                                                  shifts, kind, params, unbiased, ct), x)
        X, Y, xw, yw, sh = plan_inputs(x, y, x_weights, y_weights, shifts)
        plan = get_plan(x_offsets, y_offsets, block, x.device)
        return segments_unfused(extension().seg_fwd(
            X, Y, xw, yw, plan.x_offsets, plan.y_offsets, plan.shared_y, sh,
            [float(p) for p in params], plan.fwd_tasks, plan.set_tasks, int(kind), bool(unbiased)), x)

    def bwd(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights, y_weights, shifts, kind,
            params, unbiased, grad_x, grad_y, grad_xw, grad_yw, precision):
        if x.shape[1] > max_d:
            ct = torch.float64 if x.dtype == torch.float64 else torch.float32
            return segment_grads(grad_terms, terms, x, y, x_offsets, y_offsets, x_weights,
                                 y_weights, shifts, kind, params, unbiased, grad_x, grad_y,
                                 grad_xw, grad_yw, ct)
        X, Y, xw, yw, sh = plan_inputs(x, y, x_weights, y_weights, shifts)
        plan = get_plan(x_offsets, y_offsets, block, x.device)
        gx, gy, gxw, gyw = extension().seg_bwd(
            grad_terms.double().contiguous(), terms.double().contiguous(), X, Y, xw, yw,
            plan.x_offsets, plan.y_offsets, plan.shared_y, sh, [float(p) for p in params],
            plan.bwd_tasks(grad_x or grad_xw, grad_y or grad_yw), int(kind), bool(unbiased),
            bool(grad_x), bool(grad_y), bool(grad_xw), bool(grad_yw), plan.y_chunks * Y.shape[0])
        gy, gyw = sum_chunks(gy, plan.y_chunks), sum_chunks(gyw, plan.y_chunks)
        empty = x.new_empty((0,))
        return (gx.to(x.dtype) if grad_x else empty, gy.to(y.dtype) if grad_y else empty,
                gxw.to(x_weights.dtype) if grad_xw else empty,
                gyw.to(y_weights.dtype) if grad_yw else empty)

    return fwd, bwd
