"""Triton kernels of the ``mmd_segments`` family: every term of every set in ONE launch, plus one
tiny finalize (forward), and every gradient in ONE launch (backward).

Set b owns x rows ``XO[b]:XO[b+1]`` and y rows ``YO[b]:YO[b+1]`` (a shared y: ``YO[0]:YO[1]``
for every set, read in place), both shifted by ``SH[b]`` on load.  Host task tables
(:class:`wae_fast.segment_sums.Plan`: ``fwd_tasks`` / ``bwd_tasks``) list the programs:

* forward ``[set, term, r0, r1]`` (term 0: xx, 1: yy, 2: xy): rows [r0, r1) of x (y for yy)
  against the columns of the set's x (xx) or y (yy, xy); the program writes one float64 partial
  ``PART[t] = sum_i w_i s_i`` with ``s_i = sum_j v_j k(a_i, c_j)`` (j != i under the U-statistic).
  A self task (xx, yy) sweeps only the columns j >= r0 with the symmetric factor of
  :func:`_sweep` (2 above the diagonal, 1 on it, 0 below it in the diagonal block): the pair
  term w_i w_j k_ij is symmetric, so the stripes together cover the upper triangle once.
  The finalize (one program per set) sums the set's partials in task order (deterministic: no
  atomics) and divides by the denominators of :func:`_set_stats`.  A shared y's yy term is the
  same for every set: only set 0 has yy tasks (computed with set 0's shift) and every set's
  finalize sums those (M^2 / 2 pair evaluations in all instead of B M^2 / 2).
* backward ``[side, b0, b1, r0, r1, o0]`` (side 0: x, 1: y): rows [r0, r1) of that side, for
  every set b in [b0, b1) (one set, or a chunk of sets for the rows of a shared y), sweep the
  set's self columns then its cross columns, and write the rows' gradients (coordinates and
  weights) once, at output rows o0 + i - r0 (a shared y: its chunk's slice of a buffer that the
  host sums over the chunks in a fixed order).

Weight-0 columns are loaded as zeros (their coordinates never reach a sum); the forward does not
read weight-0 rows either; the backward reads them (the gradient to a weight 0 is the true
derivative).  The whole feature dimension is one tile (padded to a power of two >= 16), which
bounds d (the host falls back to the reference beyond ``MAX_D``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from wae_fast.segment_sums import sum_chunks

from .launch import params_tensor
from .mmd import (INTERPRET, MAX_SQ_NORM_F32, MAX_SQ_NORM_F64, kernel_sum, padded_dim, poly_sum,
                  sq_dist)

#: Largest feature dimension of the one-tile kernel (a (BLOCK, d) tile of A stays resident).
MAX_D = 256

# No NaN global: compiled Triton re-checks the globals a kernel read at each launch with `!=`, and
# NaN != NaN fails that check; INF - INF is NaN.
SEG_INF = tl.constexpr(float("inf"))

#: Columns of the forward / backward task tables (segment_sums.Plan).
FWD_COLS = 4
BWD_COLS = 6


@triton.jit
def _set_stats(W, lo, hi, has_w, UNBIASED: tl.constexpr, BLOCK: tl.constexpr):
    """(sum w, D) of the weights W[lo:hi] in float64 (unit weights when not ``has_w``):
    D = (sum w)^2 biased, D = sum_{i != j} w_i w_j = 2 sum_i w_i sum_{j<i} w_j unbiased (a sum of
    non-negative terms: no cancellation when one weight dominates, unlike (sum w)^2 - sum w^2).
    NaN when a weight is negative or not finite."""
    idx = tl.arange(0, BLOCK)
    total = tl.zeros((), dtype=tl.float64)
    dsum = tl.zeros((), dtype=tl.float64)
    bad = tl.zeros((), dtype=tl.int32)
    for i0 in range(lo, hi, BLOCK):
        i = i0 + idx
        m = i < hi
        w = tl.load(W + i, mask=m & has_w, other=1.0).to(tl.float64)
        w = tl.where(m, w, 0.0)
        bad += tl.sum(((w < 0.0) | (w != w) | (w == SEG_INF)).to(tl.int32))
        if UNBIASED:
            # the exclusive prefix sum_{j<i} w_j as a cumulative sum of the previous rows (never
            # an inclusive sum minus w_i, which would cancel for a dominant w_i)
            wp = tl.load(W + i - 1, mask=m & (idx > 0) & has_w, other=1.0).to(tl.float64)
            wp = tl.where(m & (idx > 0), wp, 0.0)
            dsum += tl.sum(w * (tl.cumsum(wp, 0) + total))
        total += tl.sum(w)
    if UNBIASED:
        den = 2.0 * dsum
    else:
        den = total * total
    nan = SEG_INF - SEG_INF
    return tl.where(bad > 0, nan, total), tl.where(bad > 0, nan, den)


@triton.jit
def _load_shifted(A, rows, mask, off, D, dims, dmask, CT: tl.constexpr):
    """Rows of A minus the set's shift, in CT (masked rows and padded dims are 0)."""
    a = tl.load(A + rows[:, None].to(tl.int64) * D + dims[None, :], mask=mask[:, None] & dmask[None, :],
                other=0.0)
    return tl.where(mask[:, None] & dmask[None, :], a.to(CT) - off[None, :], 0.0)


@triton.jit
def _in_range(n, CT: tl.constexpr):
    """Squared norms beyond the dtype's safe range become NaN (never a finite wrong answer)."""
    if CT == tl.float64:
        lim = MAX_SQ_NORM_F64
    else:
        lim = MAX_SQ_NORM_F32
    return tl.where(n <= lim, n, SEG_INF - SEG_INF)


@triton.jit
def _sweep(a, na, rows, C, CW, c_has, c0, c1, off, P, D, dims, dmask, is_self, excl, coef, s, rs,
           acc, KIND: tl.constexpr, NUM_SCALES: tl.constexpr, PRECISION: tl.constexpr,
           CT: tl.constexpr, BLOCK: tl.constexpr, GRAD: tl.constexpr, SYM: tl.constexpr):
    """Stream the columns [c0, c1) of C (weights CW): s += sum_j v_j k_ij (float64) and, with
    GRAD, rs += coef sum_j v_j W_ij and acc -= coef sum_j v_j W_ij c_j (W = dk/dr; the host's
    per-set coefficient is applied in the sweep so that one accumulator serves both passes).
    SYM (forward only) on a self pass (is_self, c0 = the stripe's first row): each pair is
    weighted 2 for j > i, 1 for j == i (0 when excl) and 0 for j < i, so that sum_i w_i s_i is
    the full symmetric sum over the upper triangle (s_i alone is then NOT row i's full sum)."""
    idx = tl.arange(0, BLOCK)
    for j0 in range(c0, c1, BLOCK):
        cols = j0 + idx
        cmask = cols < c1
        v = tl.load(CW + cols, mask=cmask & c_has, other=1.0).to(CT)
        v = tl.where(cmask, v, 0.0)
        keep = v != 0.0
        c = _load_shifted(C, cols, keep, off, D, dims, dmask, CT)
        nc = _in_range(tl.sum(c * c, 1), CT)
        ab = tl.dot(a, tl.trans(c), input_precision=PRECISION, out_dtype=CT)
        diag = (rows[:, None] == cols[None, :]) & is_self  # self pass: rows and columns index one tensor
        if KIND == 2:
            k, w = poly_sum(ab, P, GRAD)
        else:
            r = sq_dist(ab, na, nc)
            r = tl.where(diag, 0.0, r)
            k, w = kernel_sum(r, P, KIND, NUM_SCALES, GRAD)
        drop = diag & excl
        k = tl.where(drop, 0.0, k)
        if SYM:
            # a self pass: 2 above the diagonal, 1 on it, 0 below (only in the first block)
            ks = tl.where(diag, k, tl.where(cols[None, :] > rows[:, None], 2.0 * k, 0.0))
            k = tl.where(is_self, ks, k)
        s += tl.sum(k * v[None, :], 1).to(tl.float64)
        if GRAD:
            wv = tl.where(drop, 0.0, w) * (v * coef)[None, :]
            if KIND != 2:
                rs += tl.sum(wv, 1)
            acc = tl.dot(-wv, c, acc, input_precision=PRECISION, out_dtype=CT)
    return s, rs, acc


@triton.jit
def _seg_fwd_kernel(
    X, Y, XW, YW, XO, YO, SH, P, TASKS, PART, D,
    KIND: tl.constexpr, NUM_SCALES: tl.constexpr, PRECISION: tl.constexpr, CT: tl.constexpr,
    BLOCK: tl.constexpr, DP: tl.constexpr, UNBIASED: tl.constexpr, HAS_XW: tl.constexpr,
    HAS_YW: tl.constexpr, SHARED_Y: tl.constexpr,
):
    t = tl.program_id(0)
    b = tl.load(TASKS + t * 4 + 0)
    term = tl.load(TASKS + t * 4 + 1)
    r0 = tl.load(TASKS + t * 4 + 2)
    r1 = tl.load(TASKS + t * 4 + 3)
    if SHARED_Y:
        y0 = tl.load(YO)
        y1 = tl.load(YO + 1)
    else:
        y0 = tl.load(YO + b)
        y1 = tl.load(YO + b + 1)
    # rows: y for yy, x otherwise; columns: x for xx, y otherwise
    if term == 1:
        A = Y
        RW = YW
    else:
        A = X
        RW = XW
    if term == 0:
        C = X
        CW = XW
        c0 = tl.load(XO + b)
        c1 = tl.load(XO + b + 1)
    else:
        C = Y
        CW = YW
        c0 = y0
        c1 = y1
    r_has = tl.where(term == 1, HAS_YW, HAS_XW)
    c_has = tl.where(term == 0, HAS_XW, HAS_YW)
    is_self = term != 2
    excl = is_self & UNBIASED
    idx = tl.arange(0, BLOCK)
    dims = tl.arange(0, DP)
    dmask = dims < D
    off = tl.load(SH + b * D + dims, mask=dmask, other=0.0).to(CT)
    rows = r0 + idx
    rmask = rows < r1
    wr = tl.load(RW + rows, mask=rmask & r_has, other=1.0).to(CT)
    wr = tl.where(rmask, wr, 0.0)
    live = wr != 0.0  # weight-0 rows are not read
    a = _load_shifted(A, rows, live, off, D, dims, dmask, CT)
    na = _in_range(tl.sum(a * a, 1), CT)
    s = tl.zeros((BLOCK,), dtype=tl.float64)
    rs = tl.zeros((BLOCK,), dtype=CT)
    acc = tl.zeros((BLOCK, DP), dtype=CT)
    # a self term sweeps only the columns from the stripe's first row (r0 - c0 is a multiple of
    # BLOCK: the first block is the diagonal one; the pair weights are _sweep's SYM factors):
    # T (T + 1) / 2 tiles of BLOCK^2 pair evaluations per self term of n points instead of T^2,
    # T = ceil(n / BLOCK).  BLOCK 64: n = 64 1 -> 1 tile, n = 100 4 -> 3, n = 512 64 -> 36;
    # BLOCK 32 (compiled): n = 64 4 -> 3, n = 100 16 -> 10, n = 512 256 -> 136.  The cross
    # term keeps its T_x T_y tiles.
    cs = tl.where(is_self, r0, c0)
    s, rs, acc = _sweep(a, na, rows, C, CW, c_has, cs, c1, off, P, D, dims, dmask, is_self, excl,
                        1.0, s, rs, acc, KIND, NUM_SCALES, PRECISION, CT, BLOCK, False, True)
    part = tl.sum(tl.where(live, wr.to(tl.float64) * s, 0.0))
    tl.store(PART + t, part)


@triton.jit
def _term_sums(PART, TASKS, t0, t1, BLOCK: tl.constexpr):
    """(xx, yy, xy) sums of the partials of tasks [t0, t1), in task order (deterministic)."""
    idx = tl.arange(0, BLOCK)
    sxx = tl.zeros((), dtype=tl.float64)
    syy = tl.zeros((), dtype=tl.float64)
    sxy = tl.zeros((), dtype=tl.float64)
    for i0 in range(t0, t1, BLOCK):
        i = i0 + idx
        m = i < t1
        p = tl.load(PART + i, mask=m, other=0.0)
        term = tl.load(TASKS + i * 4 + 1, mask=m, other=-1)
        sxx += tl.sum(tl.where(term == 0, p, 0.0))
        syy += tl.sum(tl.where(term == 1, p, 0.0))
        sxy += tl.sum(tl.where(term == 2, p, 0.0))
    return sxx, syy, sxy


@triton.jit
def _seg_finalize_kernel(XW, YW, XO, YO, TASKS, SET_TASKS, PART, OUT,
                         UNBIASED: tl.constexpr, HAS_XW: tl.constexpr, HAS_YW: tl.constexpr,
                         SHARED_Y: tl.constexpr, BLOCK: tl.constexpr):
    """One program per set: its partials summed per term in task order, over the denominators.
    A shared y's yy tasks are set 0's alone (segment_sums.Plan): every set sums set 0's yy
    partials, in the same order, so every set's yy term is the same, bit for bit."""
    b = tl.program_id(0)
    sxx, syy, sxy = _term_sums(PART, TASKS, tl.load(SET_TASKS + b), tl.load(SET_TASKS + b + 1),
                               BLOCK)
    if SHARED_Y:
        _, syy, _ = _term_sums(PART, TASKS, tl.load(SET_TASKS), tl.load(SET_TASKS + 1), BLOCK)
        y0 = tl.load(YO)
        y1 = tl.load(YO + 1)
    else:
        y0 = tl.load(YO + b)
        y1 = tl.load(YO + b + 1)
    sw, dx = _set_stats(XW, tl.load(XO + b), tl.load(XO + b + 1), HAS_XW, UNBIASED, BLOCK)
    sv, dy = _set_stats(YW, y0, y1, HAS_YW, UNBIASED, BLOCK)
    tl.store(OUT + b * 3 + 0, sxx / dx)
    tl.store(OUT + b * 3 + 1, syy / dy)
    tl.store(OUT + b * 3 + 2, sxy / (sw * sv))


@triton.jit
def _seg_bwd_kernel(
    X, Y, XW, YW, XO, YO, SH, P, TASKS, GT, TT, GX, GY, GXW, GYW, D,
    KIND: tl.constexpr, NUM_SCALES: tl.constexpr, PRECISION: tl.constexpr, CT: tl.constexpr,
    BLOCK: tl.constexpr, DP: tl.constexpr, UNBIASED: tl.constexpr, HAS_XW: tl.constexpr,
    HAS_YW: tl.constexpr, SHARED_Y: tl.constexpr, NEED_P: tl.constexpr, NEED_GX: tl.constexpr,
    NEED_GY: tl.constexpr, NEED_GXW: tl.constexpr, NEED_GYW: tl.constexpr,
):
    """Gradients of sum_b GT[b] . terms[b] (TT: the forward's terms) for the rows of one task:

        d/da_i = w_i sum_b [4 g_self/D_a G^self_i + 2 g_cross/(S_a S_b) G^cross_i]
        d/dw_i = sum_b [g_self (2 s^self_i - t_self dD_a/dw_i) / D_a + g_cross (s^cross_i / S_b - t_cross) / S_a]

    with dD/dw_i = 2 (S_a - w_i) (unbiased, in float64) or 2 S_a (biased)."""
    t = tl.program_id(0)
    side = tl.load(TASKS + t * 6 + 0)
    b0 = tl.load(TASKS + t * 6 + 1)
    b1 = tl.load(TASKS + t * 6 + 2)
    r0 = tl.load(TASKS + t * 6 + 3)
    r1 = tl.load(TASKS + t * 6 + 4)
    out0 = tl.load(TASKS + t * 6 + 5)  # output row of r0 (a shared y: its chunk's buffer slice)
    if side == 0:
        A = X
        AW = XW
        B = Y
        BW = YW
    else:
        A = Y
        AW = YW
        B = X
        BW = XW
    a_has = tl.where(side == 0, HAS_XW, HAS_YW)
    b_has = tl.where(side == 0, HAS_YW, HAS_XW)
    idx = tl.arange(0, BLOCK)
    dims = tl.arange(0, DP)
    dmask = dims < D
    rows = r0 + idx
    rmask = rows < r1
    wa = tl.load(AW + rows, mask=rmask & a_has, other=1.0).to(CT)
    wa = tl.where(rmask, wa, 0.0)
    wad = wa.to(tl.float64)
    acc = tl.zeros((BLOCK, DP), dtype=CT)
    gw = tl.zeros((BLOCK,), dtype=tl.float64)
    for b in range(b0, b1):
        x0 = tl.load(XO + b)
        x1 = tl.load(XO + b + 1)
        if SHARED_Y:
            y0 = tl.load(YO)
            y1 = tl.load(YO + 1)
        else:
            y0 = tl.load(YO + b)
            y1 = tl.load(YO + b + 1)
        if side == 0:
            s0 = x0
            s1 = x1
            o0 = y0
            o1 = y1
        else:
            s0 = y0
            s1 = y1
            o0 = x0
            o1 = x1
        sa, da = _set_stats(AW, s0, s1, a_has, UNBIASED, BLOCK)
        sb, _ = _set_stats(BW, o0, o1, b_has, UNBIASED, BLOCK)
        g_self = tl.load(GT + b * 3 + side)
        g_cross = tl.load(GT + b * 3 + 2)
        c_self = 4.0 * g_self / da
        c_cross = 2.0 * g_cross / (sa * sb)
        off = tl.load(SH + b * D + dims, mask=dmask, other=0.0).to(CT)
        a = _load_shifted(A, rows, rmask, off, D, dims, dmask, CT)
        na = _in_range(tl.sum(a * a, 1), CT)
        s_self = tl.zeros((BLOCK,), dtype=tl.float64)
        s_cross = tl.zeros((BLOCK,), dtype=tl.float64)
        rs = tl.zeros((BLOCK,), dtype=CT)
        s_self, rs, acc = _sweep(a, na, rows, A, AW, a_has, s0, s1, off, P, D, dims, dmask, True,
                                 UNBIASED, c_self.to(CT), s_self, rs, acc, KIND, NUM_SCALES,
                                 PRECISION, CT, BLOCK, NEED_P, False)
        s_cross, rs, acc = _sweep(a, na, rows, B, BW, b_has, o0, o1, off, P, D, dims, dmask, False,
                                  False, c_cross.to(CT), s_cross, rs, acc, KIND, NUM_SCALES,
                                  PRECISION, CT, BLOCK, NEED_P, False)
        if NEED_P:
            if KIND != 2:
                acc += rs[:, None] * a
        t_self = tl.load(TT + b * 3 + side)
        t_cross = tl.load(TT + b * 3 + 2)
        if UNBIASED:
            dd = 2.0 * (sa - wad)
        else:
            dd = 2.0 * sa
        gw += (g_self * (2.0 * s_self - t_self * dd) / da
               + g_cross * (s_cross / sb - t_cross) / sa)
    gmask = rmask[:, None] & dmask[None, :]
    gp = tl.where((wa != 0.0)[:, None], wa[:, None] * acc, 0.0)
    orow = out0 + idx
    out = orow[:, None].to(tl.int64) * D + dims[None, :]
    if side == 0:
        if NEED_GX:
            tl.store(GX + out, gp.to(GX.dtype.element_ty), mask=gmask)
        if NEED_GXW:
            tl.store(GXW + orow, gw, mask=rmask)
    else:
        if NEED_GY:
            tl.store(GY + out, gp.to(GY.dtype.element_ty), mask=gmask)
        if NEED_GYW:
            tl.store(GYW + orow, gw, mask=rmask)


def block_size(dtype: torch.dtype) -> int:
    """Rows per program and columns per step: 64 under the interpreter (few, big programs), 32 on
    the GPU (fp32 and fp64; unmeasured: no GPU this session)."""
    return 64 if INTERPRET else 32


def forward(X, Y, xw, yw, plan, shifts, params, kind, unbiased, prec, tct):
    """(B, 3) float64 terms: one launch of every (set, term, row block) task, one finalize.
    X, Y: contiguous rows in the compute dtype; xw / yw: weights in it or empty tensors; plan:
    :class:`wae_fast.segment_sums.Plan` on X's device; shifts (B, d) in the compute dtype."""
    ct = X.dtype
    p = params_tensor(params, ct, X.device, kind)
    d = X.shape[1]
    block = plan.block
    part = torch.empty((plan.fwd_tasks.shape[0],), dtype=torch.float64, device=X.device)
    out = torch.empty((plan.nsets, 3), dtype=torch.float64, device=X.device)
    flags = dict(UNBIASED=unbiased, HAS_XW=xw.numel() > 0, HAS_YW=yw.numel() > 0,
                 SHARED_Y=plan.shared_y)
    XW = xw if xw.numel() else X
    YW = yw if yw.numel() else Y
    if plan.fwd_tasks.shape[0]:
        _seg_fwd_kernel[(plan.fwd_tasks.shape[0],)](
            X, Y, XW, YW, plan.x_offsets, plan.y_offsets, shifts, p, plan.fwd_tasks, part, d,
            KIND=kind, NUM_SCALES=p.numel(), PRECISION=prec, CT=tct, BLOCK=block, DP=padded_dim(d),
            num_warps=4, **flags)
    _seg_finalize_kernel[(plan.nsets,)](XW, YW, plan.x_offsets, plan.y_offsets, plan.fwd_tasks,
                                        plan.set_tasks, part, out, BLOCK=block, num_warps=1, **flags)
    return out


def backward(grad_terms, terms, X, Y, xw, yw, plan, shifts, params, kind, unbiased, need, prec, tct):
    """(gx, gy, gxw, gyw): coordinates in the compute dtype, weights in float64 (None where not
    in ``need`` = (grad_x, grad_y, grad_xw, grad_yw)); one launch over ``plan.bwd_tasks(need)``
    (then, for a shared y over more than one chunk of sets, the sum over the chunks)."""
    ct = X.dtype
    p = params_tensor(params, ct, X.device, kind)
    d = X.shape[1]
    gx_n, gy_n, gxw_n, gyw_n = need
    gx = torch.empty_like(X) if gx_n else None
    ny = plan.y_chunks * Y.shape[0]  # a shared y: one buffer slice per chunk of sets
    gy = torch.empty((ny, d), dtype=ct, device=X.device) if gy_n else None
    gxw = torch.empty((X.shape[0],), dtype=torch.float64, device=X.device) if gxw_n else None
    gyw = torch.empty((ny,), dtype=torch.float64, device=X.device) if gyw_n else None
    tasks = plan.bwd_tasks(gx_n or gxw_n, gy_n or gyw_n)
    dummy = part_dummy = X.new_empty((1,), dtype=torch.float64)
    if tasks.shape[0]:
        _seg_bwd_kernel[(tasks.shape[0],)](
            X, Y, xw if xw.numel() else X, yw if yw.numel() else Y, plan.x_offsets, plan.y_offsets,
            shifts, p, tasks, grad_terms, terms, gx if gx_n else X, gy if gy_n else Y,
            gxw if gxw_n else dummy, gyw if gyw_n else part_dummy, d,
            KIND=kind, NUM_SCALES=p.numel(), PRECISION=prec, CT=tct, BLOCK=plan.block,
            DP=padded_dim(d), UNBIASED=unbiased, HAS_XW=xw.numel() > 0, HAS_YW=yw.numel() > 0,
            SHARED_Y=plan.shared_y, NEED_P=bool(gx_n or gy_n), NEED_GX=bool(gx_n),
            NEED_GY=bool(gy_n), NEED_GXW=bool(gxw_n), NEED_GYW=bool(gyw_n), num_warps=4)
    return gx, sum_chunks(gy, plan.y_chunks), gxw, sum_chunks(gyw, plan.y_chunks)
