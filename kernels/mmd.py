"""Triton kernels for the fused, memory-flat squared MMD (forward and recompute backward).

Forward (``_mmd_fwd_kernel``): one launch per term (xx, yy, xy).  A program owns one row block
of ``A`` and streams column blocks of ``B``; for every tile it forms r = |a|^2 + |b|^2 - 2 a.b
with ``tl.dot`` over d-chunks of 16/32 (points shifted by the term's row of ``offset`` on load:
xx by median(x), yy by median(y), xy by their size-weighted mean: the contract; K >= 16 as the GPU
compiler requires; nothing of size BLOCK x d stays resident, which keeps sm_90 register use
below 255 without spills), clamps r at 0, sets r_ii to exactly 0 on the diagonal tile,
evaluates every kernel scale from that one r in registers, sums the tile
in fp32 and adds the tile sum to a per-program fp64 total.  For the symmetric terms (xx, yy) a
program visits only the diagonal tile and the tiles to its right (counted twice).  Each program
writes its fp64 partial sum to its own slot; the host sums the slots in fp64 (fixed order, no
atomics), so reruns are bit-identical.  No N x M tensor is ever written.

Backward (``_mmd_bwd_kernel``, recompute, no atomics): a program owns a row block of ``A`` (x for
dx, y for dy) and visits EVERY column block of ``A`` (self term) and of ``B`` (cross term),
recomputing W = dk/dr per tile and accumulating

    g_i = rowsum(c W)_i a_i - (c W @ b)_i          (c: the chain-rule coefficient of the term)

so each output row is written by exactly one program.  Grid axis 1 splits d into chunks of
<= 64 gradient columns (the (BLOCK, d) accumulator of the FMA dot spills beyond that on sm_90);
for d > 64 each chunk recomputes W.  The coefficients (grad_terms times the
estimator normalisation, times 4 or 2 for dr/da) are computed on the device and loaded by the
kernel: no host synchronisation.

Kernel parameters are passed as a pointer to a small tensor (C_s for IMQ, gamma_s for RBF) plus
the constexpr NUM_SCALES; the scale loop is unrolled with ``tl.static_range``.  The code only
specialises on the number of scales, never on their values.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from wae_fast.kernel_specs import MAX_SQ_NORM

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: Tile side under the interpreter (each program costs ~0.5 ms there: big tiles, few programs).
INTERPRET_BLOCK = int(os.environ.get("WAE_FAST_TRITON_INTERPRET_BLOCK", "64"))

KIND_IMQ = 0
KIND_RBF = 1
KIND_POLY = 2

# Hostile input (wae_fast/contract.py): a shifted row whose squared norm exceeds the supported
# range of the compute dtype (kernel_specs.MAX_SQ_NORM, the numbers of tile_math.h), or is NaN,
# gets a NaN norm, so all its pairs are NaN; an infinite r is clamped to the largest finite value,
# where the IMQ pair math gives k = dk/dr = 0 (never inf * 0).
MAX_SQ_NORM_F32 = tl.constexpr(MAX_SQ_NORM[torch.float32])
MAX_SQ_NORM_F64 = tl.constexpr(MAX_SQ_NORM[torch.float64])
FINITE_MAX_F32 = tl.constexpr(3.4028234663852886e38)
FINITE_MAX_F64 = tl.constexpr(1.7976931348623157e308)
# No NaN global: Triton (3.6, compiled) re-checks every global a kernel read at each launch with
# `!=`, and NaN != NaN fails that check ("Global variable ... has changed"); INF - INF is NaN.
INF = tl.constexpr(float("inf"))


def padded_dim(d: int) -> int:
    """Feature dimension padded to a power of two >= 16 (tl.dot needs K >= 16 on the GPU)."""
    return max(16, triton.next_power_of_2(int(d)))


def grad_chunk(d: int) -> int:
    """Width of the d-chunk of the gradient one backward program accumulates (grid axis 1).
    Above 64 the FMA-dot accumulator (BLOCK, d) spills on sm_90, so wider d is split over
    programs that each recompute W (cost: ceil(d / 64) x the pair work for d > 64)."""
    return min(padded_dim(d), 64)


def chunk_dim(d: int) -> int:
    """Width of the d-chunks the distance dot product streams (16 or 32)."""
    return 16 if padded_dim(d) <= 16 else 32


def size_bucket(n: int) -> int:
    """Coarse size class used as an autotune key (so tuning is not redone for every N)."""
    return min(8, max(0, (max(int(n), 1) - 1).bit_length() // 2))


def tune_configs(kind: str):
    """Autotune configs (GPU) or the one interpreter config.  Register use on sm_90 at d = 64
    (``python -m wae_fast.kernels.aot``): 64x64 tiles need 8 warps to avoid spills in the
    backward (128-row backward tiles spill heavily: not offered); fp64 wants 32x32 tiles."""
    if INTERPRET:
        # One config: autotune with several configs fails under the interpreter.
        return [triton.Config({"BLOCK": INTERPRET_BLOCK}, num_warps=4, num_stages=1)]
    cfg = [(64, 8), (128, 8), (64, 4), (32, 4)] if kind == "fwd" else [(64, 8), (32, 4)]
    return [triton.Config({"BLOCK": b}, num_warps=w, num_stages=2) for b, w in cfg]


#: The config the AOT check reports for each kernel (the first of the list: the expected winner).
PRIMARY = {"fwd": (64, 8), "bwd": (64, 8), "fp64": (32, 4)}


def _is_fp64(named_args) -> bool:
    a = named_args.get("A")
    return getattr(a, "dtype", None) is not None and str(a.dtype) == "torch.float64"


def prune_fwd(configs, named_args, **kwargs):
    """The forward streams d in chunks: nothing of size BLOCK x d is resident; tiles >= 32
    (fp64: <= 64)."""
    keep = [c for c in configs if c.kwargs["BLOCK"] >= 32]
    if _is_fp64(named_args):
        keep = [c for c in keep if c.kwargs["BLOCK"] <= 64]
    return keep or configs


def prune_bwd(configs, named_args, **kwargs):
    """The backward keeps a (BLOCK, DC) accumulator, DC <= 64 (fp64: tiles <= 32)."""
    keep = list(configs)
    if _is_fp64(named_args):
        keep = [c for c in keep if c.kwargs["BLOCK"] <= 32]
    return keep or [min(configs, key=lambda c: c.kwargs["BLOCK"])]


HEURISTICS = {
    "DP": lambda a: padded_dim(a["D"]),
    "EVEN_A": lambda a: a["NA"] % a["BLOCK"] == 0,
    "EVEN_B": lambda a: a["NB"] % a["BLOCK"] == 0,
    "EVEN_D": lambda a: a["D"] == padded_dim(a["D"]),
    "BK": lambda a: chunk_dim(a["D"]),
    "EVEN_K": lambda a: a["D"] % chunk_dim(a["D"]) == 0,
}

# the backward's d-chunk is the gradient column chunk DC (grid axis 1), not the padded d
HEURISTICS_BWD = {k: v for k, v in HEURISTICS.items() if k != "DP"}
HEURISTICS_BWD["DC"] = lambda a: grad_chunk(a["D"])
HEURISTICS_BWD["EVEN_D"] = lambda a: a["D"] % grad_chunk(a["D"]) == 0

#: The smallest tile any config may use (sizes the partial-sum buffer before tuning).
MIN_BLOCK = INTERPRET_BLOCK if INTERPRET else 16


@triton.jit
def load_rows(ptr, rows, dims, N, D, off, CT: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr):
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
def load_off(OFF, dims, D, CT: tl.constexpr, EVEN: tl.constexpr):
    """The shift ``OFF[dims]`` in CT (0 past D unless EVEN)."""
    if EVEN:
        off = tl.load(OFF + dims).to(CT)
    else:
        off = tl.load(OFF + dims, mask=dims < D, other=0.0).to(CT)
    return off


@triton.jit
def gen_rows(seed, sig, rows, dims, N, D, off, CT: tl.constexpr, EVEN_N: tl.constexpr,
              EVEN_D: tl.constexpr):
    """Rows ``rows`` of the virtual (N, D) prior sample matrix sig * randn(seed, row * D + col)
    as a (BLOCK, BK) tile in CT, minus ``off``: the generated twin of ``load_rows`` (padded
    columns are 0, padded rows hold -off).  Used by :mod:`wae_fast.kernels.prior`."""
    idx = rows.to(tl.int64)[:, None] * D + dims[None, :]
    v = tl.randn(seed, idx).to(CT) * sig
    if EVEN_N and EVEN_D:
        v = v
    elif EVEN_D:
        v = tl.where((rows < N)[:, None], v, 0.0)
    elif EVEN_N:
        v = tl.where((dims < D)[None, :], v, 0.0)
    else:
        v = tl.where((rows < N)[:, None] & (dims < D)[None, :], v, 0.0)
    return v - off[None, :]


@triton.jit
def tile_rows(ptr, seed, sig, rows, dims, N, D, off, CT: tl.constexpr, GEN: tl.constexpr,
               EVEN_N: tl.constexpr, EVEN_D: tl.constexpr):
    """Load (GEN False: ``seed``/``sig`` unused) or generate (GEN True: ``ptr`` unused) a
    shifted (BLOCK, BK) tile."""
    if GEN:
        t = gen_rows(seed, sig, rows, dims, N, D, off, CT, EVEN_N, EVEN_D)
    else:
        t = load_rows(ptr, rows, dims, N, D, off, CT, EVEN_N, EVEN_D)
    return t


@triton.jit
def dot_tile_g(A, B, seed, sig, OFF, rows, cols, NA, NB, D, CT: tl.constexpr,
                PRECISION: tl.constexpr, BLOCK: tl.constexpr, BK: tl.constexpr,
                GEN_A: tl.constexpr, GEN_B: tl.constexpr, EVEN_A: tl.constexpr,
                EVEN_B: tl.constexpr, EVEN_K: tl.constexpr):
    """(a_i . b_j) for one tile and |b_j|^2, streaming d in chunks of BK (K >= 16 for tl.dot);
    nothing of size BLOCK x d stays resident, which keeps register use low.  GEN_A / GEN_B:
    generate that side (``gen_rows``) instead of loading it."""
    kk = tl.arange(0, BK)
    ab = tl.zeros((BLOCK, BLOCK), dtype=CT)
    nb = tl.zeros((BLOCK,), dtype=CT)
    for k0 in range(0, D, BK):
        dims = k0 + kk
        off = load_off(OFF, dims, D, CT, EVEN_K)
        a = tile_rows(A, seed, sig, rows, dims, NA, D, off, CT, GEN_A, EVEN_A, EVEN_K)
        b = tile_rows(B, seed, sig, cols, dims, NB, D, off, CT, GEN_B, EVEN_B, EVEN_K)
        ab = tl.dot(a, tl.trans(b), ab, input_precision=PRECISION, out_dtype=CT)
        nb += tl.sum(b * b, 1)
    return ab, _norm_in_range(nb, CT)


@triton.jit
def dot_tile(A, B, OFF, rows, cols, NA, NB, D, CT: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK: tl.constexpr, BK: tl.constexpr, EVEN_A: tl.constexpr, EVEN_B: tl.constexpr,
              EVEN_K: tl.constexpr):
    """``dot_tile_g`` with both sides loaded."""
    return dot_tile_g(A, B, 0, 1.0, OFF, rows, cols, NA, NB, D, CT, PRECISION, BLOCK, BK,
                       False, False, EVEN_A, EVEN_B, EVEN_K)


@triton.jit
def row_norms_g(A, seed, sig, OFF, rows, NA, D, CT: tl.constexpr, BLOCK: tl.constexpr,
                 BK: tl.constexpr, GEN_A: tl.constexpr, EVEN_A: tl.constexpr, EVEN_K: tl.constexpr):
    """|a_i|^2 of the (loaded or, GEN_A, generated) shifted rows, over d-chunks of BK."""
    kk = tl.arange(0, BK)
    na = tl.zeros((BLOCK,), dtype=CT)
    for k0 in range(0, D, BK):
        dims = k0 + kk
        off = load_off(OFF, dims, D, CT, EVEN_K)
        a = tile_rows(A, seed, sig, rows, dims, NA, D, off, CT, GEN_A, EVEN_A, EVEN_K)
        na += tl.sum(a * a, 1)
    return _norm_in_range(na, CT)


@triton.jit
def row_norms(A, OFF, rows, NA, D, CT: tl.constexpr, BLOCK: tl.constexpr, BK: tl.constexpr,
               EVEN_A: tl.constexpr, EVEN_K: tl.constexpr):
    return row_norms_g(A, 0, 1.0, OFF, rows, NA, D, CT, BLOCK, BK, False, EVEN_A, EVEN_K)


@triton.jit
def _norm_in_range(n, CT: tl.constexpr):
    """Squared norms of shifted rows, NaN where outside the supported range (or NaN)."""
    if CT == tl.float64:
        lim = MAX_SQ_NORM_F64
    else:
        lim = MAX_SQ_NORM_F32
    return tl.where(n <= lim, n, INF - INF)


@triton.jit
def sq_dist(ab, na, nb):
    """r_ij = |a_i|^2 + |b_j|^2 - 2 a_i.b_j, clamped at 0; the clamp keeps NaN (a NaN
    distance must never count as r = 0: tl.maximum would drop it on the GPU)."""
    r = na[:, None] + nb[None, :] - 2.0 * ab
    return tl.where(r < 0.0, 0.0, r)


@triton.jit
def kernel_sum(r, P, KIND: tl.constexpr, NUM_SCALES: tl.constexpr, NEED_W: tl.constexpr):
    """k = sum_s k_s(r) and (if NEED_W) w = sum_s dk_s/dr, every scale from the same r.

    IMQ: k_s = C/(C+r), dk_s/dr = -C/(C+r)^2, evaluated two scales per reciprocal
    (C1/u1 + C2/u2 = (C1 u2 + C2 u1) / (u1 u2), u = C + r), which halves the special-function
    (MUFU) work, the bound of this kernel on H100 (DESIGN.md 6).  Pairing, not one rational
    function of all scales: u1 u2 stays finite for r < ~1e19, while the product of 7 factors
    overflows fp32 near r ~ 3.5e5.  As tile_math.h: 1/u1 = u2 t and 1/u2 = u1 t with
    t = 1/(u1 u2), k_s = C_s / u_s and dk_s/dr = -k_s / u_s, so no intermediate exceeds
    C / u^2 (the former (C1 u2^2 + C2 u1^2) t t overflowed to inf * 0 = NaN for r ~ 1e20).  The
    pairs see an infinite r as the largest finite value: t = 0, k = dk/dr = 0.
    RBF: k_s = exp(-g r), dk_s/dr = -g exp(-g r): one exp per scale, except where a gamma is 2x
    or 4x the previous one (ascending, params_tensor sorts them): the previous value squared."""
    k = tl.zeros_like(r)
    w = tl.zeros_like(r)
    if KIND == 0:
        if r.dtype == tl.float64:
            rmax = FINITE_MAX_F64
        else:
            rmax = FINITE_MAX_F32
        rp = tl.where(r > rmax, rmax, r)  # the pairs' r; a single scale keeps inf: 1/inf = 0
        for s in tl.static_range(NUM_SCALES // 2):
            c1 = tl.load(P + 2 * s).to(r.dtype)
            c2 = tl.load(P + 2 * s + 1).to(r.dtype)
            u1 = c1 + rp
            u2 = c2 + rp
            t = 1.0 / (u1 * u2)
            t1 = u2 * t
            t2 = u1 * t
            k1 = c1 * t1
            k2 = c2 * t2
            k += k1 + k2
            if NEED_W:
                w -= k1 * t1 + k2 * t2
        if NUM_SCALES % 2 == 1:
            c = tl.load(P + (NUM_SCALES - 1)).to(r.dtype)
            t = 1.0 / (c + r)
            ct = c * t
            k += ct
            if NEED_W:
                w -= ct * t
    else:
        e = tl.exp(-tl.load(P).to(r.dtype) * r)
        for s in tl.static_range(NUM_SCALES):
            g = tl.load(P + s).to(r.dtype)
            if s > 0:
                # one exp per pair where the bandwidths allow (as tile_math.h rbf_eval): gammas
                # sorted ascending by params_tensor, exp(-4 g r) = exp(-g r)^4
                gp = tl.load(P + (s - 1)).to(r.dtype)
                if g == 2.0 * gp:
                    e = e * e
                elif g == 4.0 * gp:
                    e = e * e
                    e = e * e
                else:
                    e = tl.exp(-g * r)
            k += e
            if NEED_W:
                w -= g * e
    return k, w


@triton.jit
def poly_sum(t, P, NEED_W: tl.constexpr):
    """Polynomial kernel from the dot products t of unshifted points, P = [gamma, coef0, degree]:
    k = (gamma t + coef0)^p (p - 1 multiplications; overflow gives NaN) and, if NEED_W,
    w = -(gamma p / 2) (gamma t + coef0)^(p - 1): the weight whose -sum_j w_ij b_j is half the
    row gradient (the r-kernels' sum_j w_ij (a_i - b_j) without the a_i term)."""
    g = tl.load(P).to(t.dtype)
    c = tl.load(P + 1).to(t.dtype)
    deg = tl.load(P + 2).to(tl.int32)
    base = g * t + c
    pm1 = tl.zeros_like(t) + 1.0
    for _e in range(1, deg):
        pm1 = pm1 * base
    k = pm1 * base
    k = k + (k - k)  # an overflowed power reads NaN, not inf (tile_math.h poly_eval)
    w = tl.zeros_like(t)
    if NEED_W:
        w = -(0.5 * g * deg.to(t.dtype)) * pm1
        w = w + (w - w)
    return k, w


@triton.jit
def pair_kw(ab, na, nb, eye, P, KIND: tl.constexpr, NUM_SCALES: tl.constexpr,
            NEED_W: tl.constexpr, EYE: tl.constexpr):
    """k (and w) of a tile from its dot products ``ab``: the r-kernels through r (r_ii set to
    exactly 0 where ``eye``, if EYE), the polynomial from ``ab`` itself."""
    if KIND == 2:
        k, w = poly_sum(ab, P, NEED_W)
    else:
        r = sq_dist(ab, na, nb)
        if EYE:
            r = tl.where(eye, 0.0, r)
        k, w = kernel_sum(r, P, KIND, NUM_SCALES, NEED_W)
    return k, w


@triton.jit
def fwd_tile_sum(A, B, seed, sig, OFF, P, rows, cols, na, NA, NB, D, EYE: tl.constexpr,
                  UNBIASED: tl.constexpr, KIND: tl.constexpr, NUM_SCALES: tl.constexpr,
                  PRECISION: tl.constexpr, CT: tl.constexpr, BLOCK: tl.constexpr,
                  BK: tl.constexpr, GEN_A: tl.constexpr, GEN_B: tl.constexpr,
                  EVEN_A: tl.constexpr, EVEN_B: tl.constexpr, EVEN_K: tl.constexpr):
    """fp64 sum of k(a_i, b_j) over one tile (padded rows/columns masked).  EYE: the tile may
    hold i == j pairs (symmetric term): r_ii is set to exactly 0, and k_ii to 0 if UNBIASED."""
    ab, nb = dot_tile_g(A, B, seed, sig, OFF, rows, cols, NA, NB, D, CT, PRECISION, BLOCK, BK,
                         GEN_A, GEN_B, EVEN_A, EVEN_B, EVEN_K)
    eye = rows[:, None] == cols[None, :]
    k, _w = pair_kw(ab, na, nb, eye, P, KIND, NUM_SCALES, False, EYE)
    if EYE and UNBIASED:
        k = tl.where(eye, 0.0, k)
    if not EVEN_A:
        k = tl.where((rows < NA)[:, None], k, 0.0)
    if not EVEN_B:
        k = tl.where((cols < NB)[None, :], k, 0.0)
    return tl.sum(tl.sum(k, 1), 0).to(tl.float64)


# restore_value: PART holds one slot per MIN_BLOCK rows but a config with BLOCK > MIN_BLOCK writes
# fewer; without restoring it after each benchmarked config, the slots a smaller-BLOCK config
# wrote while tuning stay in the sum of the first call (seen on an H200: 0.3% to 1% errors).
@triton.autotune(configs=tune_configs("fwd"), key=["D", "SIZE_BUCKET", "NUM_SCALES", "KIND"],
                 prune_configs_by={"early_config_prune": prune_fwd}, restore_value=["PART"])
@triton.heuristics(HEURISTICS)
@triton.jit
def _mmd_fwd_kernel(
    A, B, OFF, P, PART,
    NA, NB, D, SIZE_BUCKET,
    SYM: tl.constexpr, UNBIASED: tl.constexpr, KIND: tl.constexpr, NUM_SCALES: tl.constexpr,
    PRECISION: tl.constexpr, CT: tl.constexpr,
    BLOCK: tl.constexpr, DP: tl.constexpr, BK: tl.constexpr,
    EVEN_A: tl.constexpr, EVEN_B: tl.constexpr, EVEN_D: tl.constexpr, EVEN_K: tl.constexpr,
):
    pid = tl.program_id(0)
    idx = tl.arange(0, BLOCK)
    rows = pid * BLOCK + idx
    na = row_norms(A, OFF, rows, NA, D, CT, BLOCK, BK, EVEN_A, EVEN_K)
    total = tl.zeros((1,), dtype=tl.float64)
    nblocks = tl.cdiv(NB, BLOCK)
    if SYM:
        # Diagonal tile (B is A): r_ii exactly 0; i == j pairs excluded when unbiased.
        ab, _nb = dot_tile(A, A, OFF, rows, rows, NA, NA, D, CT, PRECISION, BLOCK, BK, EVEN_A, EVEN_A, EVEN_K)
        eye = rows[:, None] == rows[None, :]
        k, _w = pair_kw(ab, na, na, eye, P, KIND, NUM_SCALES, False, True)
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
        total += weight * fwd_tile_sum(A, B, 0, 1.0, OFF, P, rows, cols, na, NA, NB, D, False,
                                        UNBIASED, KIND, NUM_SCALES, PRECISION, CT, BLOCK, BK,
                                        False, False, EVEN_A, EVEN_B, EVEN_K)
    tl.store(PART + pid + tl.arange(0, 1), total)


@triton.jit
def _bwd_self_loop(A, OFF, P, rows, dims, off, na, c_self, rs, acc, NA, D,
                   KIND: tl.constexpr, NUM_SCALES: tl.constexpr, PRECISION: tl.constexpr,
                   CT: tl.constexpr, BLOCK: tl.constexpr, BK: tl.constexpr,
                   EVEN_A: tl.constexpr, EVEN_D: tl.constexpr, EVEN_K: tl.constexpr,
                   UNBIASED: tl.constexpr):
    """Self term of the backward: every column block of A (for the r-kernels the diagonal W_ii
    multiplies a_i - a_i = 0: dropped; the polynomial keeps it unless UNBIASED).  Returns the
    updated (rs, acc) = (sum_j c W_ij, sum_j c W_ij a_j) (rs stays 0 for the polynomial)."""
    idx = tl.arange(0, BLOCK)
    for jb in range(0, tl.cdiv(NA, BLOCK)):
        cols = jb * BLOCK + idx
        ab, nb = dot_tile(A, A, OFF, rows, cols, NA, NA, D, CT, PRECISION, BLOCK, BK, EVEN_A, EVEN_A, EVEN_K)
        _k, w = pair_kw(ab, na, nb, 0, P, KIND, NUM_SCALES, True, False)
        if KIND == 2 and not UNBIASED:
            keep = (cols < NA)[None, :] | (rows < 0)[:, None]
        else:
            keep = rows[:, None] != cols[None, :]
            if not EVEN_A:
                keep = keep & (cols < NA)[None, :]
        w = tl.where(keep, w * c_self, 0.0)
        if KIND != 2:
            rs += tl.sum(w, 1)
        b = load_rows(A, cols, dims, NA, D, off, CT, EVEN_A, EVEN_D)
        acc = tl.dot(w, b, acc, input_precision=PRECISION, out_dtype=CT)
    return rs, acc


@triton.jit
def _bwd_cross_loop(A, B, seed, sig, OFF, P, rows, dims, off, na, c_cross, rs, acc, NA, NB, D,
                    KIND: tl.constexpr, NUM_SCALES: tl.constexpr, PRECISION: tl.constexpr,
                    CT: tl.constexpr, BLOCK: tl.constexpr, BK: tl.constexpr, GEN_B: tl.constexpr,
                    EVEN_A: tl.constexpr, EVEN_B: tl.constexpr, EVEN_D: tl.constexpr,
                    EVEN_K: tl.constexpr):
    """Cross term of the backward: every column block of B (GEN_B: of the generated prior
    samples, ``B`` unused).  Returns the updated (rs, acc)."""
    idx = tl.arange(0, BLOCK)
    for jb in range(0, tl.cdiv(NB, BLOCK)):
        cols = jb * BLOCK + idx
        ab, nb = dot_tile_g(A, B, seed, sig, OFF, rows, cols, NA, NB, D, CT, PRECISION, BLOCK, BK,
                             False, GEN_B, EVEN_A, EVEN_B, EVEN_K)
        _k, w = pair_kw(ab, na, nb, 0, P, KIND, NUM_SCALES, True, False)
        w = w * c_cross
        if not EVEN_B:
            w = tl.where((cols < NB)[None, :], w, 0.0)
        if KIND != 2:
            rs += tl.sum(w, 1)
        b = tile_rows(B, seed, sig, cols, dims, NB, D, off, CT, GEN_B, EVEN_B, EVEN_D)
        acc = tl.dot(w, b, acc, input_precision=PRECISION, out_dtype=CT)
    return rs, acc


@triton.jit
def bwd_body(A, B, seed, sig, OFF, OFFX, P, COEF, G, NA, NB, D,
              KIND: tl.constexpr, NUM_SCALES: tl.constexpr, PRECISION: tl.constexpr,
              CT: tl.constexpr, BLOCK: tl.constexpr, DC: tl.constexpr, BK: tl.constexpr,
              GEN_B: tl.constexpr, EVEN_A: tl.constexpr, EVEN_B: tl.constexpr,
              EVEN_D: tl.constexpr, EVEN_K: tl.constexpr, UNBIASED: tl.constexpr):
    """The whole recompute backward of one program (``_mmd_bwd_kernel``; with GEN_B the cross
    term's B rows are generated: ``_prior_bwd_kernel``): row norms, shifts (``OFF`` of the self
    term, ``OFFX`` of the cross term: each term on its own shifted coordinates), coefficients,
    self and cross loops, then G[rows, dims] = rs_self a_self + rs_cross a_cross - acc."""
    pid = tl.program_id(0)
    idx = tl.arange(0, BLOCK)
    dims = tl.program_id(1) * DC + tl.arange(0, DC)
    rows = pid * BLOCK + idx
    c_self = tl.load(COEF).to(CT)
    c_cross = tl.load(COEF + 1).to(CT)
    acc = tl.zeros((BLOCK, DC), dtype=CT)      # sum_j c W_ij b_j (each term's b in its shift)
    na = row_norms(A, OFF, rows, NA, D, CT, BLOCK, BK, EVEN_A, EVEN_K)
    off = load_off(OFF, dims, D, CT, EVEN_D)
    rs = tl.zeros((BLOCK,), dtype=CT)          # sum_j c W_ij of the self term
    rs, acc = _bwd_self_loop(A, OFF, P, rows, dims, off, na, c_self, rs, acc, NA, D, KIND,
                             NUM_SCALES, PRECISION, CT, BLOCK, BK, EVEN_A, EVEN_D, EVEN_K, UNBIASED)
    # fold the self part into acc (no second (BLOCK, DC) tile alive across the cross loop)
    acc -= rs[:, None] * load_rows(A, rows, dims, NA, D, off, CT, EVEN_A, EVEN_D)
    na = row_norms(A, OFFX, rows, NA, D, CT, BLOCK, BK, EVEN_A, EVEN_K)
    off = load_off(OFFX, dims, D, CT, EVEN_D)
    rs = tl.zeros((BLOCK,), dtype=CT)          # sum_j c W_ij of the cross term
    rs, acc = _bwd_cross_loop(A, B, seed, sig, OFFX, P, rows, dims, off, na, c_cross, rs, acc,
                              NA, NB, D, KIND, NUM_SCALES, PRECISION, CT, BLOCK, BK, GEN_B,
                              EVEN_A, EVEN_B, EVEN_D, EVEN_K)
    g = rs[:, None] * load_rows(A, rows, dims, NA, D, off, CT, EVEN_A, EVEN_D) - acc
    gp = G + rows.to(tl.int64)[:, None] * D + dims[None, :]
    g = g.to(G.dtype.element_ty)
    if EVEN_A and EVEN_D:
        tl.store(gp, g)
    else:
        tl.store(gp, g, mask=(rows < NA)[:, None] & (dims < D)[None, :])


@triton.autotune(configs=tune_configs("bwd"), key=["D", "SIZE_BUCKET", "NUM_SCALES", "KIND"],
                 prune_configs_by={"early_config_prune": prune_bwd})
@triton.heuristics(HEURISTICS_BWD)
@triton.jit
def _mmd_bwd_kernel(
    A, B, OFF, OFFX, P, COEF, G,
    NA, NB, D, SIZE_BUCKET,
    KIND: tl.constexpr, NUM_SCALES: tl.constexpr, UNBIASED: tl.constexpr,
    PRECISION: tl.constexpr, CT: tl.constexpr,
    BLOCK: tl.constexpr, DC: tl.constexpr, BK: tl.constexpr,
    EVEN_A: tl.constexpr, EVEN_B: tl.constexpr, EVEN_D: tl.constexpr, EVEN_K: tl.constexpr,
):
    """G[i] = c_self * sum_j W(a_i,a_j) (a_i - a_j) + c_cross * sum_j W(a_i,b_j) (a_i - b_j),
    for the columns [pid1 * DC, pid1 * DC + DC) of G (DC here is the gradient chunk width); the
    self term's points shifted by OFF, the cross term's by OFFX."""
    bwd_body(A, B, 0, 1.0, OFF, OFFX, P, COEF, G, NA, NB, D, KIND, NUM_SCALES, PRECISION, CT, BLOCK,
              DC, BK, False, EVEN_A, EVEN_B, EVEN_D, EVEN_K, UNBIASED)


# ----------------------------------------------------------------------------------------------
# host launchers (also used by wae_fast.kernels.prior for its xx term)


def launch_fwd(a, b, off, p, sym, unbiased, kind, prec, ct, bucket):
    """One forward launch (the xx, yy or xy term): the fp64 kernel sum over the pairs of a, b."""
    rows_a, d = a.shape
    rows_b = b.shape[0]
    part = torch.zeros(triton.cdiv(rows_a, MIN_BLOCK), dtype=torch.float64, device=a.device)
    grid = lambda meta: (triton.cdiv(rows_a, meta["BLOCK"]),)  # noqa: E731
    _mmd_fwd_kernel[grid](
        a, b, off, p, part, rows_a, rows_b, d, bucket,
        SYM=sym, UNBIASED=unbiased, KIND=kind, NUM_SCALES=p.numel(), PRECISION=prec, CT=ct)
    return part.sum()


def launch_bwd(a, b, off, p, coef, kind, prec, ct, bucket, unbiased=True, off_cross=None):
    """One backward launch: the gradient rows of a (self term against a with the shift ``off``,
    cross term against b with the shift ``off_cross``, default ``off``)."""
    rows_a, d = a.shape
    rows_b = b.shape[0]
    g = torch.empty_like(a)
    grid = lambda meta: (triton.cdiv(rows_a, meta["BLOCK"]), triton.cdiv(d, meta["DC"]))  # noqa: E731
    _mmd_bwd_kernel[grid](
        a, b, off, off if off_cross is None else off_cross, p, coef, g, rows_a, rows_b, d, bucket,
        KIND=kind, NUM_SCALES=p.numel(), UNBIASED=bool(unbiased), PRECISION=prec, CT=ct)
    return g
