"""Triton MMD to the Gaussian prior with the prior samples generated tile by tile in the kernels.

The M prior samples are never stored: sample j is

    y_j[k] = sqrt(sigma2) * tl.randn(seed, j * d + k)          (int64 flat index of a virtual (M, d))

(Philox 4x32-10, as in :mod:`wae_fast.kernels.reparam`; the value of an element depends only on
(seed, j, k), not on the tile or the launch), computed in the compute dtype (fp32, or fp64 for
fp64 codes: the fp32 normal draw is cast to fp64 and multiplied by sqrt(sigma2) in fp64).  Every
kernel that needs a y tile regenerates it in registers where the existing kernels would load it
(d-chunk by d-chunk, the same code path as :func:`wae_fast.kernels.mmd._load_rows`):

* ``_prior_fwd_kernel``: the forward of :mod:`wae_fast.kernels.mmd` (same tiling, symmetric
  tiles, per-program fp64 partials, IMQ scales two per reciprocal, all helpers imported from
  there) with two constexpr flags GEN_A / GEN_B: generate the A / B tile instead of loading it.
  yy term: SYM, GEN_A = GEN_B = True; xy term: A = x (loaded), GEN_B = True (the program owns a
  row block of x and streams generated y column blocks: a y tile is regenerated once per x row
  block, i.e. ceil(N / BLOCK) * M * d normal draws in all; the yy term draws about
  M^2 d / BLOCK).  One difference in structure: the symmetric case runs the diagonal tile inside
  the column loop (weight 1, others 2) instead of a separate step, and the yy launch is tuned
  over 4-warp configs only (:func:`_prune_prior_fwd`): with 8 warps ptxas caps the generated yy
  variant at 128 registers and spills.
  Cost note (unmeasured, no GPU): each normal draw is a Philox-4x32-10 call plus Box-Muller
  (log, sqrt, cos: special-function work, the bound of these kernels, DESIGN.md 6), so at
  BLOCK = 64, d = 64 regeneration may add work of the order of the pair work of the xy term;
  larger tiles (or keeping a generated A tile resident) amortise it.
* ``_prior_bwd_kernel``: the recompute backward for x only (y is not an input): the self (xx)
  loop is exactly that of ``_mmd_bwd_kernel`` (loads x), the cross loop generates its y tiles.
  One launch gives the whole x gradient (xx and xy terms), each output row written by exactly
  one program, no atomics.
* the xx forward term reuses the existing, unchanged ``_mmd_fwd_kernel`` (SYM launch on x).
* ``_prior_sample_kernel`` / :func:`materialise_prior`: writes exactly the samples the kernels
  use (for tests: ``wae_fast.mmd(x, materialise_prior(...))`` must give the same value).

Memory: the only tensors allocated are the (3,) terms, the per-program fp64 partials
(ceil(N / 16) and ceil(M / 16) doubles), a (d,) offset, the small parameter tensors and the
(N, d) gradient: nothing of size M x d or N x M, by construction (no host code here allocates
a tensor whose size depends on M other than the partial-sum buffer).

Shifts (translation invariance, DESIGN.md 5b): each term uses its own shift: xx by median(x)
(coordinate-wise; forward and the backward's self loop), yy by 0 (the prior mean), xy and the
backward's cross loop by N / (N + M) * median(x); each term is invariant, so only rounding
depends on that choice (a median: one outlier code cannot pull it off the others).

The reference backend draws the same samples in torch (:mod:`wae_fast.philox`, to an ulp of the
fp32 log/cos per draw; ``wae_fast.prior_samples`` materialises them on any device).  For
fp16/bf16 codes the samples stay in fp32 (the compute dtype); use ``dtype=torch.float32`` in
:func:`materialise_prior` to reproduce them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from wae_fast.contract import compute_dtype
from wae_fast.pairsum import pair_count
from wae_fast.philox import check_seed

from . import mmd as _mmd
from .launch import device_guard, dot_precision, params_tensor, sigma_tensor, tl_compute_dtype
from .mmd import (HEURISTICS, HEURISTICS_BWD, bwd_body, fwd_tile_sum, prune_bwd, prune_fwd,
                  row_norms_g, tune_configs)

SAMPLE_BLOCK = 1024


# ----------------------------------------------------------------------------------------------
# device helpers: the generator (``gen_rows``, ``tile_rows``, ``dot_tile_g``, ``row_norms_g``)
# and the shared tile / loop bodies (``fwd_tile_sum``, ``bwd_body``) live in
# :mod:`wae_fast.kernels.mmd`, which both kernel families call.


# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _prior_sample_kernel(Y, SIG, n, D, seed, CT: tl.constexpr, BLOCK: tl.constexpr):
    """Y.flat[i] = sig * randn(seed, i) for i < n = M * D (the samples the MMD kernels use)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    sig = tl.load(SIG).to(CT)
    v = tl.randn(seed, offs).to(CT) * sig
    tl.store(Y + offs, v.to(Y.dtype.element_ty), mask=offs < n)


def _prune_prior_fwd(configs, named_args, **kwargs):
    """``prune_fwd``, and for the yy term (SYM with generated A) only 4-warp configs: with
    8 warps ptxas caps that variant at 128 registers and spills (sm_90, Triton 3.7: 80 bytes
    at d = 64 IMQ), with 4 warps it takes ~207 registers and spills nothing."""
    keep = prune_fwd(configs, named_args, **kwargs)
    if kwargs.get("SYM") and kwargs.get("GEN_A"):
        keep = [c for c in keep if c.num_warps <= 4] or keep
    return keep


#: The (BLOCK, num_warps) the AOT check reports for the generated yy forward.
PRIMARY_YY = (64, 4)


@triton.autotune(configs=tune_configs("fwd"), key=["D", "SIZE_BUCKET", "NUM_SCALES", "KIND", "GEN_A"],
                 prune_configs_by={"early_config_prune": _prune_prior_fwd},
                 restore_value=["PART"])  # as kernels/mmd.py's forward: PART is sized for MIN_BLOCK
@triton.heuristics(HEURISTICS)
@triton.jit
def _prior_fwd_kernel(
    A, B, OFF, P, SIG, PART,
    NA, NB, D, SIZE_BUCKET, seed,
    SYM: tl.constexpr, UNBIASED: tl.constexpr, KIND: tl.constexpr, NUM_SCALES: tl.constexpr,
    PRECISION: tl.constexpr, CT: tl.constexpr, GEN_A: tl.constexpr, GEN_B: tl.constexpr,
    BLOCK: tl.constexpr, DP: tl.constexpr, BK: tl.constexpr,
    EVEN_A: tl.constexpr, EVEN_B: tl.constexpr, EVEN_D: tl.constexpr, EVEN_K: tl.constexpr,
):
    """``_mmd_fwd_kernel`` with GEN_A / GEN_B: the A / B rows are sig * randn(seed, flat index)
    generated in registers instead of loaded (the pointer of a generated side is not read)."""
    pid = tl.program_id(0)
    idx = tl.arange(0, BLOCK)
    rows = pid * BLOCK + idx
    sig = tl.load(SIG).to(CT)
    na = row_norms_g(A, seed, sig, OFF, rows, NA, D, CT, BLOCK, BK, GEN_A, EVEN_A, EVEN_K)
    total = tl.zeros((1,), dtype=tl.float64)
    nblocks = tl.cdiv(NB, BLOCK)
    # Symmetric terms visit the diagonal tile and the tiles to its right in ONE loop (unlike
    # _mmd_fwd_kernel's separate diagonal step: one inlined tile body instead of two keeps the
    # generated-A variant at ~170 registers without spills on sm_90).  rows and cols are disjoint
    # off the diagonal, so the eye masks only act on the diagonal tile (weight 1, others 2).
    start = pid if SYM else 0
    for jb in range(start, nblocks):
        cols = jb * BLOCK + idx
        tsum = fwd_tile_sum(A, B, seed, sig, OFF, P, rows, cols, na, NA, NB, D, SYM, UNBIASED,
                             KIND, NUM_SCALES, PRECISION, CT, BLOCK, BK, GEN_A, GEN_B, EVEN_A,
                             EVEN_B, EVEN_K)
        if SYM:
            tsum = tl.where(jb == pid, tsum, 2.0 * tsum)
        total += tsum
    tl.store(PART + pid + tl.arange(0, 1), total)


@triton.autotune(configs=tune_configs("bwd"), key=["D", "SIZE_BUCKET", "NUM_SCALES", "KIND"],
                 prune_configs_by={"early_config_prune": prune_bwd})
@triton.heuristics(HEURISTICS_BWD)
@triton.jit
def _prior_bwd_kernel(
    A, OFF, OFFX, P, SIG, COEF, G,
    NA, NB, D, SIZE_BUCKET, seed,
    KIND: tl.constexpr, NUM_SCALES: tl.constexpr,
    PRECISION: tl.constexpr, CT: tl.constexpr,
    BLOCK: tl.constexpr, DC: tl.constexpr, BK: tl.constexpr,
    EVEN_A: tl.constexpr, EVEN_B: tl.constexpr, EVEN_D: tl.constexpr, EVEN_K: tl.constexpr,
):
    """G[i] = c_self * sum_j W(a_i,a_j) (a_i - a_j) + c_cross * sum_j W(a_i,y_j) (a_i - y_j)
    with y_j generated (NB of them), for the columns [pid1 * DC, pid1 * DC + DC) of G; the self
    term shifted by OFF (median(x)), the cross term by OFFX."""
    sig = tl.load(SIG).to(CT)
    bwd_body(A, A, seed, sig, OFF, OFFX, P, COEF, G, NA, NB, D, KIND, NUM_SCALES, PRECISION, CT, BLOCK,
              DC, BK, True, EVEN_A, EVEN_B, EVEN_D, EVEN_K, True)


# ----------------------------------------------------------------------------------------------
# host side


def materialise_prior(M: int, d: int, seed: int, sigma2: float = 1.0, dtype=torch.float32,
                      device="cpu") -> torch.Tensor:
    """The (M, d) prior samples the in-kernel estimator uses for ``seed``:
    y[j, k] = sqrt(sigma2) * tl.randn(seed, j * d + k), computed in fp64 for ``dtype=float64``
    and in fp32 otherwise (then rounded to ``dtype``).  For tests; the MMD kernels never store it."""
    if M < 0 or d < 0:
        raise ValueError(f"M and d must be >= 0, got {M}, {d}")
    seed = check_seed(seed)
    y = torch.empty((M, d), dtype=dtype, device=device)
    n = M * d
    if n:
        sig = sigma_tensor(sigma2, compute_dtype(dtype), y.device)
        with device_guard(y):
            _prior_sample_kernel[(triton.cdiv(n, SAMPLE_BLOCK),)](
                y, sig, n, d, seed, CT=tl_compute_dtype(dtype), BLOCK=SAMPLE_BLOCK)
    return y


def _launch_fwd_gen(a, rows_a, rows_b, d, off, p, sig, seed, sym, unbiased, kind, prec, tct,
                    bucket, gen_a):
    part = torch.zeros(triton.cdiv(rows_a, _mmd.MIN_BLOCK), dtype=torch.float64, device=a.device)
    grid = lambda meta: (triton.cdiv(rows_a, meta["BLOCK"]),)  # noqa: E731
    _prior_fwd_kernel[grid](
        a, a, off, p, sig, part, rows_a, rows_b, d, bucket, seed,
        SYM=sym, UNBIASED=unbiased, KIND=kind, NUM_SCALES=p.numel(), PRECISION=prec, CT=tct,
        GEN_A=gen_a, GEN_B=True)
    return part.sum()


def _setup(x, kind, params, sigma2, precision):
    ct = compute_dtype(x.dtype)
    p = params_tensor(params, ct, x.device, kind)
    sig = sigma_tensor(sigma2, ct, x.device)
    return ct, p, sig, dot_precision(x.dtype, precision), tl_compute_dtype(x.dtype)


def _cross_offset(x, m, ct):
    n = x.shape[0]
    return (x.detach().to(ct).median(0).values * (n / (n + m))).contiguous()


def prior_terms_fwd(x, kind, params, sigma2, unbiased, m, seed, precision="ieee"):
    """float64 (3,) terms (mean k(x,x'), mean k(y,y'), mean k(x,y)) with y generated in-kernel."""
    n, d = x.shape
    x = x.detach().contiguous()
    ct, p, sig, prec, tct = _setup(x, kind, params, sigma2, precision)
    bucket = _mmd.size_bucket(max(n, m))
    off_xx = x.to(ct).median(0).values.contiguous()  # a median: one outlier code cannot move it
    off_yy = torch.zeros(d, dtype=ct, device=x.device)
    off_xy = _cross_offset(x, m, ct)
    ub = bool(unbiased)
    with device_guard(x):
        sxx = _mmd.launch_fwd(x, x, off_xx, p, True, ub, kind, prec, tct, bucket)
        syy = _launch_fwd_gen(x, m, m, d, off_yy, p, sig, seed, True, ub, kind, prec, tct, bucket, True)
        sxy = _launch_fwd_gen(x, n, m, d, off_xy, p, sig, seed, False, ub, kind, prec, tct, bucket, False)
    nxx, nyy = pair_count(n, unbiased), pair_count(m, unbiased)
    return torch.stack([sxx / nxx, syy / nyy, sxy / (n * m)])


def prior_terms_bwd(grad_terms, x, kind, params, sigma2, unbiased, m, seed, precision="ieee"):
    """d/dx of sum_t grad_terms[t] terms[t] (x dtype): one launch of ``_prior_bwd_kernel``."""
    n, d = x.shape
    x = x.detach().contiguous()
    ct, p, sig, prec, tct = _setup(x, kind, params, sigma2, precision)
    bucket = _mmd.size_bucket(max(n, m))
    off_xx = x.to(ct).median(0).values.contiguous()  # a median: one outlier code cannot move it
    off = _cross_offset(x, m, ct)
    gt = grad_terms.to(device=x.device, dtype=torch.float64)
    nxx = pair_count(n, unbiased)
    coef = torch.stack([gt[0] * (4.0 / nxx), gt[2] * (2.0 / (n * m))]).to(ct)
    g = torch.empty_like(x)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]), triton.cdiv(d, meta["DC"]))  # noqa: E731
    with device_guard(x):
        _prior_bwd_kernel[grid](x, off_xx, off, p, sig, coef, g, n, m, d, bucket, seed,
                                KIND=kind, NUM_SCALES=p.numel(), PRECISION=prec, CT=tct)
    return g
