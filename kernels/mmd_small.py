"""One Triton launch for the MMD of small sets: the three terms, the fused gradient parts and the
per-term shifts, with no host synchronisation (issue 15, item 3).

Used by the Triton backend when :func:`fits` holds (N, M <= ``SMALL_MAX_ROWS`` = 1024 by default,
d <= 64): there a call costs launches, not pair arithmetic, so the forward is one launch of
``_mmd_small_kernel`` plus one tiny finalize (``part.sum(0)``, fp64) and the backward only scales
the parts by ``grad_terms`` (the contract's fused-gradient form).  No autotuning (the config is a
fixed function of the sizes, :func:`small_config`), no ``torch.zeros``, no median launches: a
CUDA graph can capture forward + backward.

Grid: one program per row block of x and one per row block of y.  A program

1. computes the contract's shifts itself (:func:`wae_fast.contract.term_shifts`): the
   coordinate-wise lower median of x and of y (by rank counting, :func:`_col_medians`; a NaN in
   a column makes its shift NaN), and the xy shift
   lerp(median(x), median(y), M / (N + M)) as ``torch.lerp`` computes it, and writes them to its
   own (3, d) slot of a scratch buffer, which the tile helpers of :mod:`wae_fast.kernels.mmd` read
   (no slot is shared between programs: no race);
2. loops over EVERY column block of its own set (self term) and of the other set (cross term),
   from one r per pair evaluating k and w = dk/dr, accumulating its rows' k sums (fp32 per tile,
   fp64 across tiles) and its rows' gradient parts
   g_i = c (rowsum(W)_i a_i - (W b)_i), c = 4 / #pairs (self) or 2 / (N M) (cross);
3. writes its gradient rows (only its own: no atomics, deterministic) and its fp64 partial terms,
   already divided by the pair counts, to its own row of ``PART`` (P, 3).

The x programs give the xx and xy sums, the y programs the yy sums (their cross loop runs only
for the y gradient).  Each program ranks both sets (O(d (N^2 + M^2)) compares per program, the
same order as a whole row block's pair work only when BLOCK ~ N: the price of having no second
launch; at N = M = 100, d = 8 it is ~160k compares per program).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from wae_fast import small_sets
from wae_fast.pairsum import pair_count

from .mmd import INF, INTERPRET, dot_tile, load_off, load_rows, pair_kw, padded_dim, \
    row_norms

#: Largest N and M (env ``WAE_FAST_SMALL_MAX_ROWS``; 0 disables it) and d of the one-launch path:
#: the same limits as the CUDA path, defined once in :mod:`wae_fast.small_sets` (module globals
#: here, so a test may lower this backend's threshold alone).
SMALL_MAX_ROWS, SMALL_MAX_D = small_sets.SMALL_MAX_ROWS, small_sets.SMALL_MAX_D
#: (candidates, rows, columns) tile of the in-kernel medians' rank counting (the interpreter
#: pays per operation, not per element: one big tile there).
MEDIAN_TILE = (128, 128, 16) if INTERPRET else (16, 16, 16)


def fits(n: int, m: int, d: int) -> bool:
    """True when the one-launch path computes an (N, d), (M, d) call."""
    return max(n, m) <= SMALL_MAX_ROWS and d <= SMALL_MAX_D


def small_config(n: int, m: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK, num_warps), fixed by the sizes (no autotuning, so a graph capture never tunes).
    Small tiles give more programs for small sets (BLOCK >= 16: tl.dot's minimum); untuned and
    unmeasured on a GPU so far."""
    del dtype  # same tiles for fp64 (fp64 registers: the d = 64 variants compile, see aot)
    if INTERPRET:
        return 64, 4
    # 64-row tiles spill heavily at d = 64 on sm_90 (16 KB with 4 warps, `python -m
    # wae_fast.kernels.aot --only small --set all`): at most 32 rows
    return (16, 2) if max(n, m) <= 128 else (32, 4)


#: -inf (a constexpr global: no NaN globals, tests/test_triton_launch_rules.py)
NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _col_medians(A, NA, dims, D, CT: tl.constexpr, RB: tl.constexpr, CB: tl.constexpr,
                 DC: tl.constexpr):
    """Lower medians (torch.median's) of the columns ``dims`` (DC of them) of the (NA, D) matrix
    A, in CT; NaN for a column holding a NaN.  By ranks, no sort: the value v_i with
    #{v_j < v_i} <= (NA - 1) // 2 < #{v_j <= v_i}, counted over (RB, CB, DC) tiles of candidates
    i, rows j and columns (O(NA^2) compares per column: cheap at these sizes; tl.sort sorts only
    along the last axis and costs seconds per program under the interpreter)."""
    mid = (NA - 1) // 2
    okd = dims < D
    best = tl.full((RB, DC), NEG_INF, dtype=CT)
    nans = tl.zeros((DC,), dtype=tl.int32)
    for i0 in range(0, NA, RB):
        ri = i0 + tl.arange(0, RB)
        oki = ri < NA
        vi = tl.load(A + ri.to(tl.int64)[:, None] * D + dims[None, :],
                     mask=oki[:, None] & okd[None, :], other=0.0).to(CT)
        lt = tl.zeros((RB, DC), dtype=tl.int32)
        le = tl.zeros((RB, DC), dtype=tl.int32)
        for j0 in range(0, NA, CB):
            rj = j0 + tl.arange(0, CB)
            okj = rj < NA
            vj = tl.load(A + rj.to(tl.int64)[:, None] * D + dims[None, :],
                         mask=okj[:, None] & okd[None, :], other=0.0).to(CT)
            nans += tl.sum(tl.where(okj[:, None] & (vj != vj), 1, 0), 0)
            a = vi[:, None, :]
            b = vj[None, :, :]
            valid = okj[None, :, None]
            lt += tl.sum(tl.where(valid & (b < a), 1, 0), 1)
            le += tl.sum(tl.where(valid & (b <= a), 1, 0), 1)
        hit = oki[:, None] & (lt <= mid) & (le > mid)
        best = tl.where(hit, vi, best)  # every hit of a column holds the same value
    med = tl.max(best, 0)
    return tl.where(nans > 0, INF - INF, med)


@triton.jit
def _write_shifts(X, Y, S, N, M, D, wgt, KIND: tl.constexpr, CT: tl.constexpr, RB: tl.constexpr,
                  CB: tl.constexpr, DC: tl.constexpr, LERP_HI: tl.constexpr):
    """S[0] = median(x), S[1] = median(y), S[2] = lerp(S[0], S[1], M / (N + M)) (zeros for the
    polynomial, which is not translation invariant)."""
    w = wgt + tl.zeros((1,), dtype=CT)  # a scalar argument, as a CT value
    for k0 in range(0, D, DC):
        dims = k0 + tl.arange(0, DC)
        if KIND == 2:
            mx = tl.zeros((DC,), dtype=CT)
            my = mx
            mix = mx
        else:
            mx = _col_medians(X, N, dims, D, CT, RB, CB, DC)
            my = _col_medians(Y, M, dims, D, CT, RB, CB, DC)
            # torch.lerp: start + w (end - start) for w < 0.5, else end - (end - start) (1 - w)
            if LERP_HI:
                mix = my - (my - mx) * (1.0 - w)
            else:
                mix = mx + w * (my - mx)
        ok = dims < D
        tl.store(S + dims, mx, mask=ok)
        tl.store(S + D + dims, my, mask=ok)
        tl.store(S + 2 * D + dims, mix, mask=ok)


@triton.jit
def _term_loop(A, B, OFF, P, rows, NA, NB, D, c,
               SELF: tl.constexpr, UNBIASED: tl.constexpr, GRAD: tl.constexpr,
               KIND: tl.constexpr, NUM_SCALES: tl.constexpr, PRECISION: tl.constexpr,
               CT: tl.constexpr, BLOCK: tl.constexpr, BK: tl.constexpr, DG: tl.constexpr):
    """Rows ``rows`` of A against every row of B (B is A when SELF), points shifted by OFF:
    returns (sum of k over the valid pairs, fp64; the gradient part c (rowsum(W) a - W b),
    (BLOCK, DG) in CT, zeros unless GRAD)."""
    idx = tl.arange(0, BLOCK)
    dims = tl.arange(0, DG)
    off = load_off(OFF, dims, D, CT, False)
    na = row_norms(A, OFF, rows, NA, D, CT, BLOCK, BK, False, False)
    total = tl.zeros((1,), dtype=tl.float64)
    acc = tl.zeros((BLOCK, DG), dtype=CT)
    rs = tl.zeros((BLOCK,), dtype=CT)
    row_ok = rows < NA
    for jb in range(0, tl.cdiv(NB, BLOCK)):
        cols = jb * BLOCK + idx
        col_ok = cols < NB
        ab, nb = dot_tile(A, B, OFF, rows, cols, NA, NB, D, CT, PRECISION, BLOCK, BK, False, False,
                          False)
        eye = rows[:, None] == cols[None, :]
        k, w = pair_kw(ab, na, nb, eye, P, KIND, NUM_SCALES, GRAD, SELF)
        keep = row_ok[:, None] & col_ok[None, :]
        if SELF and UNBIASED:
            keep = keep & (rows[:, None] != cols[None, :])
        total += tl.sum(tl.sum(tl.where(keep, k, 0.0), 1), 0).to(tl.float64)
        if GRAD:
            # the r-kernels' diagonal W_ii multiplies a_i - a_i = 0 (dropped); the polynomial's
            # self pair counts unless unbiased (as mmd._bwd_self_loop)
            if SELF and not (KIND == 2 and not UNBIASED):
                wk = col_ok[None, :] & (rows[:, None] != cols[None, :])
            else:
                wk = col_ok[None, :] | (rows < 0)[:, None]
            w = tl.where(wk, w * c, 0.0)
            if KIND != 2:
                rs += tl.sum(w, 1)
            b = load_rows(B, cols, dims, NB, D, off, CT, False, False)
            acc = tl.dot(w, b, acc, input_precision=PRECISION, out_dtype=CT)
    g = rs[:, None] * load_rows(A, rows, dims, NA, D, off, CT, False, False) - acc
    return total, g


@triton.jit
def _store_part(G, g, rows, NA, D, DG: tl.constexpr):
    dims = tl.arange(0, DG)
    gp = G + rows.to(tl.int64)[:, None] * D + dims[None, :]
    tl.store(gp, g.to(G.dtype.element_ty), mask=(rows < NA)[:, None] & (dims < D)[None, :])


@triton.jit
def _side(A, B, S_SELF, S_CROSS, P, G, PART, blk, NA, NB, D, n_self, n_cross,
          IS_X: tl.constexpr, GRAD: tl.constexpr, UNBIASED: tl.constexpr, KIND: tl.constexpr,
          NUM_SCALES: tl.constexpr, PRECISION: tl.constexpr, CT: tl.constexpr,
          BLOCK: tl.constexpr, BK: tl.constexpr, DG: tl.constexpr):
    """One row block ``blk`` of A (x when IS_X, else y): self and cross loops, gradient parts
    G[0] (self) and G[1] (cross) for its rows, and its partial terms."""
    rows = blk * BLOCK + tl.arange(0, BLOCK)
    c_self = (4.0 / n_self).to(CT)
    c_cross = (2.0 / n_cross).to(CT)
    s_self, g = _term_loop(A, A, S_SELF, P, rows, NA, NA, D, c_self, True, UNBIASED, GRAD, KIND,
                           NUM_SCALES, PRECISION, CT, BLOCK, BK, DG)
    if GRAD:
        _store_part(G, g, rows, NA, D, DG)
    s_cross = tl.zeros((1,), dtype=tl.float64)
    if IS_X or GRAD:  # the y programs need the cross loop only for the y gradient
        s_cross, g = _term_loop(A, B, S_CROSS, P, rows, NA, NB, D, c_cross, False, UNBIASED, GRAD,
                                KIND, NUM_SCALES, PRECISION, CT, BLOCK, BK, DG)
        if GRAD:
            _store_part(G + NA.to(tl.int64) * D, g, rows, NA, D, DG)
    t = tl.arange(0, 4)
    s_self = s_self / n_self
    if IS_X:
        vals = tl.where(t == 0, s_self, tl.where(t == 2, s_cross / n_cross, 0.0))
    else:
        vals = tl.where(t == 1, s_self, 0.0)
    tl.store(PART + t, vals, mask=t < 3)


@triton.jit
def _mmd_small_kernel(
    X, Y, P, S, PART, GX, GY,
    N, M, D, CXX, CYY, CXY, WGT,
    UNBIASED: tl.constexpr, KIND: tl.constexpr, NUM_SCALES: tl.constexpr,
    PRECISION: tl.constexpr, CT: tl.constexpr, GRAD_X: tl.constexpr, GRAD_Y: tl.constexpr,
    BLOCK: tl.constexpr, BK: tl.constexpr, DG: tl.constexpr, RB: tl.constexpr, CB: tl.constexpr,
    DC: tl.constexpr, LERP_HI: tl.constexpr,
):
    """Programs [0, cdiv(N, BLOCK)) own row blocks of x, the rest row blocks of y.  CXX, CYY,
    CXY: the pair counts of the terms (integers < 2^24 at these sizes: exact in the fp32 scalar
    arguments); WGT = M / (N + M), LERP_HI = WGT >= 0.5 (the xy shift's torch.lerp branch)."""
    pid = tl.program_id(0)
    S = S + pid.to(tl.int64) * 3 * D
    _write_shifts(X, Y, S, N, M, D, WGT, KIND, CT, RB, CB, DC, LERP_HI)
    tl.debug_barrier()  # the shifts this program stored, visible to all its threads
    nxx = CXX + tl.zeros((1,), dtype=tl.float64)  # scalar arguments as fp64 values
    nyy = CYY + tl.zeros((1,), dtype=tl.float64)
    nxy = CXY + tl.zeros((1,), dtype=tl.float64)
    nbx = tl.cdiv(N, BLOCK)
    if pid < nbx:
        _side(X, Y, S, S + 2 * D, P, GX, PART + pid * 3, pid, N, M, D, nxx, nxy, True, GRAD_X,
              UNBIASED, KIND, NUM_SCALES, PRECISION, CT, BLOCK, BK, DG)
    else:
        _side(Y, X, S + D, S + 2 * D, P, GY, PART + pid * 3, pid - nbx, M, N, D, nyy, nxy, False,
              GRAD_Y, UNBIASED, KIND, NUM_SCALES, PRECISION, CT, BLOCK, BK, DG)


#: Triton launches of ``_mmd_small_kernel`` in this process (tests count launches with it).
LAUNCHES = [0]


def launch_small(x, y, p, unbiased, kind, grad_x, grad_y, prec, ct, tct):
    """The contract's forward for a small call: (terms (3,) fp64, gx_parts (2, N, d) or (0,),
    gy_parts (2, M, d) or (0,)) from one launch plus ``part.sum(0)``."""
    n, d = x.shape
    m = y.shape[0]
    block, warps = small_config(n, m, x.dtype)
    progs = triton.cdiv(n, block) + triton.cdiv(m, block)
    scratch = torch.empty((progs, 3, d), dtype=ct, device=x.device)
    part = torch.empty((progs, 3), dtype=torch.float64, device=x.device)
    gx = torch.empty((2, n, d), dtype=ct, device=x.device) if grad_x else x.new_empty((0,), dtype=ct)
    gy = torch.empty((2, m, d), dtype=ct, device=x.device) if grad_y else y.new_empty((0,), dtype=ct)
    _mmd_small_kernel[(progs,)](
        x, y, p, scratch, part, gx, gy, n, m, d, float(pair_count(n, unbiased)),
        float(pair_count(m, unbiased)), float(n * m), m / (n + m),
        UNBIASED=bool(unbiased), KIND=kind, NUM_SCALES=p.numel(), PRECISION=prec, CT=tct,
        GRAD_X=bool(grad_x), GRAD_Y=bool(grad_y), BLOCK=block, BK=16 if padded_dim(d) <= 16 else 32,
        DG=padded_dim(d), RB=MEDIAN_TILE[0], CB=MEDIAN_TILE[1], DC=MEDIAN_TILE[2],
        LERP_HI=2 * m >= n + m, num_warps=warps, num_stages=1)
    LAUNCHES[0] += 1
    return part.sum(0), gx, gy

