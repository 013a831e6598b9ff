"""Triton kernel of the ``mmd_segments`` family: the per-set row passes of
:mod:`wae_fast.segment_sums`, every set's tiles in one launch per term.

A program owns one task: ``BLOCK`` rows ``[r0, r1)`` of a row operand A (x or y) in set b,
against the set's columns ``[c0, c1)`` of a column operand C with column weights v; it streams
the columns in blocks and writes, for its rows,

    s_i = sum_j v_j k(a_i, c_j)      G_i = sum_j v_j W_ij (a_i - c_j)   (polynomial: -sum_j v_j W_ij c_j)

to ``S[o0 + i - r0]`` and ``G[o0 + i - r0]`` (each output row written by one program: no atomics).
Points are shifted by the set's shift on load; a column with weight 0 is loaded as zeros (its
coordinates never reach a sum); ``SELF`` sets r_ii = 0 (A and C the same tensor, so i == j) and
``EXCL`` drops the j == i terms (U-statistic).  The whole feature dimension is one tile (padded to
a power of two >= 16), which bounds d (the host falls back to the reference beyond ``MAX_D``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import params_tensor
from .mmd import (INTERPRET, MAX_SQ_NORM_F32, MAX_SQ_NORM_F64, kernel_sum, padded_dim, poly_sum,
                  sq_dist)

#: Largest feature dimension of the one-tile kernel (a (BLOCK, d) tile of A stays resident).
MAX_D = 256

# No NaN global: compiled Triton re-checks the globals a kernel read at each launch with `!=`, and
# NaN != NaN fails that check; INF - INF is NaN.
SEG_INF = tl.constexpr(float("inf"))


@triton.jit
def _seg_rows_kernel(
    A, C, CW, SH, P, TASKS, S, G, D,
    KIND: tl.constexpr, NUM_SCALES: tl.constexpr, PRECISION: tl.constexpr, CT: tl.constexpr,
    BLOCK: tl.constexpr, DP: tl.constexpr, SELF: tl.constexpr, EXCL: tl.constexpr,
    GRAD: tl.constexpr, HAS_W: tl.constexpr,
):
    t = tl.program_id(0)
    b = tl.load(TASKS + t * 6 + 0)
    r0 = tl.load(TASKS + t * 6 + 1)
    r1 = tl.load(TASKS + t * 6 + 2)
    c0 = tl.load(TASKS + t * 6 + 3)
    c1 = tl.load(TASKS + t * 6 + 4)
    o0 = tl.load(TASKS + t * 6 + 5)
    idx = tl.arange(0, BLOCK)
    dims = tl.arange(0, DP)
    dmask = dims < D
    off = tl.load(SH + b * D + dims, mask=dmask, other=0.0).to(CT)
    rows = r0 + idx
    rmask = rows < r1
    a = tl.load(A + rows[:, None] * D + dims[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
    a = tl.where(dmask[None, :], a.to(CT) - off[None, :], 0.0)
    if CT == tl.float64:
        lim = MAX_SQ_NORM_F64
    else:
        lim = MAX_SQ_NORM_F32
    na = tl.sum(a * a, 1)
    na = tl.where(na <= lim, na, SEG_INF - SEG_INF)
    s = tl.zeros((BLOCK,), dtype=tl.float64)
    rs = tl.zeros((BLOCK,), dtype=CT)
    acc = tl.zeros((BLOCK, DP), dtype=CT)
    for j0 in range(c0, c1, BLOCK):
        cols = j0 + idx
        cmask = cols < c1
        if HAS_W:
            v = tl.load(CW + cols, mask=cmask, other=0.0).to(CT)
        else:
            v = tl.where(cmask, 1.0, 0.0).to(CT)
        keep = v != 0.0
        c = tl.load(C + cols[:, None] * D + dims[None, :], mask=keep[:, None] & dmask[None, :], other=0.0)
        c = tl.where(keep[:, None] & dmask[None, :], c.to(CT) - off[None, :], 0.0)
        nc = tl.sum(c * c, 1)
        nc = tl.where(nc <= lim, nc, SEG_INF - SEG_INF)
        ab = tl.dot(a, tl.trans(c), input_precision=PRECISION, out_dtype=CT)
        diag = rows[:, None] == cols[None, :]  # a self pass: A is C, rows and columns the same indices
        if KIND == 2:
            k, w = poly_sum(ab, P, GRAD)
        else:
            r = sq_dist(ab, na, nc)
            if SELF:
                r = tl.where(diag, 0.0, r)
            k, w = kernel_sum(r, P, KIND, NUM_SCALES, GRAD)
        if EXCL:
            k = tl.where(diag, 0.0, k)
        kv = k * v[None, :]
        s += tl.sum(kv, 1).to(tl.float64)
        if GRAD:
            if EXCL:
                w = tl.where(diag, 0.0, w)
            wv = w * v[None, :]
            if KIND != 2:
                rs += tl.sum(wv, 1)
            acc = tl.dot(wv, c, acc, input_precision=PRECISION, out_dtype=CT)
    out = o0 + idx
    tl.store(S + out, s, mask=rmask)
    if GRAD:
        if KIND == 2:
            g = -acc
        else:
            g = rs[:, None] * a - acc
        tl.store(G + out[:, None] * D + dims[None, :], g.to(G.dtype.element_ty),
                 mask=rmask[:, None] & dmask[None, :])


def block_size(dtype: torch.dtype) -> int:
    """Rows per program and columns per step: 64 under the interpreter (few, big programs), 32 on
    the GPU (fp32 and fp64; unmeasured: no GPU this session)."""
    return 64 if INTERPRET else 32


def row_pass(a, c, cw, shifts, params, tasks, n_out, kind, self_pass, exclude_diag, need_grad, prec,
             ct, tct):
    """Launch one row pass over every task of the int64 (T, 6) table [set, r0, r1, c0, c1, o0]
    (:func:`wae_fast.segment_sums.task_table`): returns s (n_out,) float64 and G (n_out, d) in ct
    (or None).  a, c: (rows, d) in ct; cw: column weights (ct) or an empty tensor; params: the
    kernel's params (host floats)."""
    p = params_tensor(params, ct, a.device, kind)
    d = a.shape[1]
    s = torch.zeros((n_out,), dtype=torch.float64, device=a.device)
    g = torch.zeros((n_out, d), dtype=ct, device=a.device) if need_grad else s
    if tasks.shape[0] == 0:
        return s, (g if need_grad else None)
    block = block_size(ct)
    _seg_rows_kernel[(tasks.shape[0],)](
        a, c, cw if cw.numel() else a, shifts, p, tasks, s, g, d,
        KIND=kind, NUM_SCALES=p.numel(), PRECISION=prec, CT=tct, BLOCK=block, DP=padded_dim(d),
        SELF=self_pass, EXCL=exclude_diag, GRAD=need_grad, HAS_W=cw.numel() > 0,
        num_warps=4)
    return s, (g if need_grad else None)
