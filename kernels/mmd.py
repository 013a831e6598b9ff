"""Triton kernels for the fused, memory-flat squared MMD (forward and recompute backward).

Forward (``_mmd_fwd_kernel``): one launch per term (xx, yy, xy).  A program owns one row block
of ``A`` (kept in registers, shifted by ``offset`` on load) and streams column blocks of ``B``;
for every tile it forms r = |a|^2 + |b|^2 - 2 a.b with ``tl.dot`` (clamped at 0, r_ii set to exactly
0 on the diagonal tile), evaluates every kernel scale from that one r in registers, sums the tile
in fp32 and adds the tile sum to a per-program fp64 total.  For the symmetric terms (xx, yy) a
program visits only the diagonal tile and the tiles to its right (counted twice).  Each program
writes its fp64 partial sum to its own slot; the host sums the slots in fp64 (fixed order, no
atomics), so reruns are bit-identical.  No N x M tensor is ever written.

Backward (``_mmd_bwd_kernel``, recompute, no atomics): a program owns a row block of ``A`` (x for
dx, y for dy) and visits EVERY column block of ``A`` (self term) and of ``B`` (cross term),
recomputing W = dk/dr per tile and accumulating

    g_i = rowsum(c W)_i a_i - (c W @ b)_i          (c: the chain-rule coefficient of the term)

so each output row is written by exactly one program.  The coefficients (grad_terms times the
estimator normalisation, times 4 or 2 for dr/da) are computed on the device and loaded by the
kernel: no host synchronisation.

Kernel parameters are passed as a pointer to a small tensor (C_s for IMQ, gamma_s for RBF) plus
the constexpr NUM_SCALES; the scale loop is unrolled with ``tl.static_range``.  The code only
specialises on the number of scales, never on their values.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: Tile side under the interpreter (each program costs ~0.5 ms there: big tiles, few programs).
INTERPRET_BLOCK = int(os.environ.get("WAE_FAST_TRITON_INTERPRET_BLOCK", "64"))

KIND_IMQ = 0
KIND_RBF = 1


def padded_dim(d: int) -> int:
    """Feature dimension padded to a power of two >= 16 (tl.dot needs K >= 16 on the GPU)."""
    return max(16, triton.next_power_of_2(int(d)))


def size_bucket(n: int) -> int:
    """Coarse size class used as an autotune key (so tuning is not redone for every N)."""
    return min(8, max(0, (max(int(n), 1) - 1).bit_length() // 2))


def _configs():
    if INTERPRET:
        # One config: autotune with several configs fails under the interpreter.
        return [triton.Config({"BLOCK": INTERPRET_BLOCK}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK": 128}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK": 64}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK": 64}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK": 32}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK": 16}, num_warps=4, num_stages=2),
    ]


def _prune(configs, named_args, **kwargs):
    """Keep the tiles whose register/shared footprint is sane for this d (and at least one)."""
    dp = padded_dim(named_args["D"])
    # BLOCK * DP is the size of the resident row block (and of the backward accumulator).
    keep = [c for c in configs if c.kwargs["BLOCK"] * dp <= 8192 and (c.kwargs["BLOCK"] >= 32 or dp > 256)]
    if not keep:
        keep = [min(configs, key=lambda c: c.kwargs["BLOCK"])]
    return keep


_HEUR = {
    "DP": lambda a: padded_dim(a["D"]),
    "EVEN_A": lambda a: a["NA"] % a["BLOCK"] == 0,
    "EVEN_B": lambda a: a["NB"] % a["BLOCK"] == 0,
    "EVEN_D": lambda a: a["D"] == padded_dim(a["D"]),
}

#: The smallest tile any config may use (sizes the partial-sum buffer before tuning).
MIN_BLOCK = INTERPRET_BLOCK if INTERPRET else 16


@triton.jit
def _load_rows(ptr, rows, dims, N, D, off, CT: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr):
    """Rows ``rows`` of the (N, D) matrix at ``ptr`` as a (BLOCK, DP) tile in CT, minus ``off``.
    Padded columns are 0; padded rows hold -off (finite; their pairs are masked later)."""
    p = ptr + rows.to(tl.int64)[:, None] * D + dims[None, :]
    if EVEN_N and EVEN_D:
        v = tl.load(p)
    elif EVEN_D:
        v = tl.load(p, mask=(rows < N)[:, None], other=0.0)
    elif EVEN_N:
        v = tl.load(p, mask=(dims < D)[None, :], other=0.0)
    else:
        v = tl.load(p, mask=(rows < N)[:, None] & (dims < D)[None, :], other=0.0)
    # Cast right after the load (bf16 arithmetic is wrong under the interpreter).
    return v.to(CT) - off[None, :]


@triton.jit
def _sq_dist(a, na, b, nb, PRECISION: tl.constexpr):
    """r_ij = |a_i|^2 + |b_j|^2 - 2 a_i.b_j, clamped at 0."""
    ab = tl.dot(a, tl.trans(b), input_precision=PRECISION)
    r = na[:, None] + nb[None, :] - 2.0 * ab
    return tl.maximum(r, 0.0)


@triton.jit
def _kernel_sum(r, P, KIND: tl.constexpr, NUM_SCALES: tl.constexpr, NEED_W: tl.constexpr):
    """k = sum_s k_s(r) and (if NEED_W) w = sum_s dk_s/dr, every scale from the same r.
    IMQ: k_s = C/(C+r), dk_s/dr = -C/(C+r)^2.  RBF: k_s = exp(-g r), dk_s/dr = -g exp(-g r)."""
    k = tl.zeros_like(r)
    w = tl.zeros_like(r)
    for s in tl.static_range(NUM_SCALES):
        p = tl.load(P + s).to(r.dtype)
        if KIND == 0:
            t = 1.0 / (p + r)
            pt = p * t
            k += pt
            if NEED_W:
                w -= pt * t
        else:
            e = tl.exp(-p * r)
            k += e
            if NEED_W:
                w -= p * e
    return k, w


@triton.autotune(configs=_configs(), key=["D", "SIZE_BUCKET", "NUM_SCALES", "KIND"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.heuristics(_HEUR)
@triton.jit
def _mmd_fwd_kernel(
    A, B, OFF, P, PART,
    NA, NB, D, SIZE_BUCKET,
    SYM: tl.constexpr, UNBIASED: tl.constexpr, KIND: tl.constexpr, NUM_SCALES: tl.constexpr,
    PRECISION: tl.constexpr, CT: tl.constexpr,
    BLOCK: tl.constexpr, DP: tl.constexpr,
    EVEN_A: tl.constexpr, EVEN_B: tl.constexpr, EVEN_D: tl.constexpr,
):
    pid = tl.program_id(0)
    idx = tl.arange(0, BLOCK)
    dims = tl.arange(0, DP)
    if EVEN_D:
        off = tl.load(OFF + dims).to(CT)
    else:
        off = tl.load(OFF + dims, mask=dims < D, other=0.0).to(CT)
    rows = pid * BLOCK + idx
    a = _load_rows(A, rows, dims, NA, D, off, CT, EVEN_A, EVEN_D)
    na = tl.sum(a * a, 1)
    total = tl.zeros((1,), dtype=tl.float64)
    nblocks = tl.cdiv(NB, BLOCK)
    if SYM:
        # Diagonal tile (B is A): r_ii exactly 0; i == j pairs excluded when unbiased.
        r = _sq_dist(a, na, a, na, PRECISION)
        eye = rows[:, None] == rows[None, :]
        r = tl.where(eye, 0.0, r)
        k, _w = _kernel_sum(r, P, KIND, NUM_SCALES, False)
        if UNBIASED:
            k = tl.where(eye, 0.0, k)
        if not EVEN_A:
            k = tl.where((rows < NA)[:, None] & (rows < NA)[None, :], k, 0.0)
        total += tl.sum(tl.sum(k, 1), 0).to(tl.float64)
        start = pid + 1
        weight = 2.0
    else:
        start = 0
        weight = 1.0
    for jb in range(start, nblocks):
        cols = jb * BLOCK + idx
        b = _load_rows(B, cols, dims, NB, D, off, CT, EVEN_B, EVEN_D)
        nb = tl.sum(b * b, 1)
        r = _sq_dist(a, na, b, nb, PRECISION)
        k, _w = _kernel_sum(r, P, KIND, NUM_SCALES, False)
        if not EVEN_A:
            k = tl.where((rows < NA)[:, None], k, 0.0)
        if not EVEN_B:
            k = tl.where((cols < NB)[None, :], k, 0.0)
        total += weight * tl.sum(tl.sum(k, 1), 0).to(tl.float64)
    tl.store(PART + pid + tl.arange(0, 1), total)


@triton.autotune(configs=_configs(), key=["D", "SIZE_BUCKET", "NUM_SCALES", "KIND"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.heuristics(_HEUR)
@triton.jit
def _mmd_bwd_kernel(
    A, B, OFF, P, COEF, G,
    NA, NB, D, SIZE_BUCKET,
    KIND: tl.constexpr, NUM_SCALES: tl.constexpr,
    PRECISION: tl.constexpr, CT: tl.constexpr,
    BLOCK: tl.constexpr, DP: tl.constexpr,
    EVEN_A: tl.constexpr, EVEN_B: tl.constexpr, EVEN_D: tl.constexpr,
):
    """G[i] = c_self * sum_j W(a_i,a_j) (a_i - a_j) + c_cross * sum_j W(a_i,b_j) (a_i - b_j)."""
    pid = tl.program_id(0)
    idx = tl.arange(0, BLOCK)
    dims = tl.arange(0, DP)
    if EVEN_D:
        off = tl.load(OFF + dims).to(CT)
    else:
        off = tl.load(OFF + dims, mask=dims < D, other=0.0).to(CT)
    rows = pid * BLOCK + idx
    a = _load_rows(A, rows, dims, NA, D, off, CT, EVEN_A, EVEN_D)
    na = tl.sum(a * a, 1)
    c_self = tl.load(COEF).to(CT)
    c_cross = tl.load(COEF + 1).to(CT)
    rs = tl.zeros((BLOCK,), dtype=CT)          # sum_j c W_ij
    acc = tl.zeros((BLOCK, DP), dtype=CT)      # sum_j c W_ij b_j
    # Self term: every column block of A (the diagonal W_ii multiplies a_i - a_i = 0: dropped).
    for jb in range(0, tl.cdiv(NA, BLOCK)):
        cols = jb * BLOCK + idx
        b = _load_rows(A, cols, dims, NA, D, off, CT, EVEN_A, EVEN_D)
        nb = tl.sum(b * b, 1)
        r = _sq_dist(a, na, b, nb, PRECISION)
        _k, w = _kernel_sum(r, P, KIND, NUM_SCALES, True)
        keep = rows[:, None] != cols[None, :]
        if not EVEN_A:
            keep = keep & (cols < NA)[None, :]
        w = tl.where(keep, w * c_self, 0.0)
        rs += tl.sum(w, 1)
        acc = tl.dot(w, b, acc, input_precision=PRECISION)
    # Cross term: every column block of B.
    for jb in range(0, tl.cdiv(NB, BLOCK)):
        cols = jb * BLOCK + idx
        b = _load_rows(B, cols, dims, NB, D, off, CT, EVEN_B, EVEN_D)
        nb = tl.sum(b * b, 1)
        r = _sq_dist(a, na, b, nb, PRECISION)
        _k, w = _kernel_sum(r, P, KIND, NUM_SCALES, True)
        w = w * c_cross
        if not EVEN_B:
            w = tl.where((cols < NB)[None, :], w, 0.0)
        rs += tl.sum(w, 1)
        acc = tl.dot(w, b, acc, input_precision=PRECISION)
    g = rs[:, None] * a - acc
    gp = G + rows.to(tl.int64)[:, None] * D + dims[None, :]
    g = g.to(G.dtype.element_ty)
    if EVEN_A and EVEN_D:
        tl.store(gp, g)
    else:
        tl.store(gp, g, mask=(rows < NA)[:, None] & (dims < D)[None, :])
