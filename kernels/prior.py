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

Shifts (translation invariance, DESIGN.md 5b): each term uses its own shift: xx by mean(x),
yy by 0 (the prior mean), xy and the backward by N / (N + M) * mean(x) (the expected pooled
mean); each term is invariant, so only rounding depends on that choice.

The samples are NOT those of the reference "sampled" estimator (``wae_fast.prior.prior_samples``:
per-block torch.Generator streams): same law, same seed handling, different numbers.  For
fp16/bf16 codes the samples stay in fp32 (the compute dtype); use ``dtype=torch.float32`` in
:func:`materialise_prior` to reproduce them.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from wae_fast.pairsum import pair_count

from . import mmd as _mmd
from .mmd import (_bwd_body, _configs, _dot_tile, _dot_tile_g, _fwd_tile_sum, _gen_rows,  # noqa: F401
                  _HEUR, _HEUR_BWD, _kernel_sum, _load_rows, _prune_bwd, _prune_fwd, _row_norms,
                  _row_norms_g, _sq_dist, _tile_rows)

SAMPLE_BLOCK = 1024


# ----------------------------------------------------------------------------------------------
# device helpers: the generator (``_gen_rows``, ``_tile_rows``, ``_dot_tile_g``, ``_row_norms_g``)
# and the shared tile / loop bodies (``_fwd_tile_sum``, ``_bwd_body``) live in
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
    """``_prune_fwd``, and for the yy term (SYM with generated A) only 4-warp configs: with
    8 warps ptxas caps that variant at 128 registers and spills (sm_90, Triton 3.7: 80 bytes
    at d = 64 IMQ), with 4 warps it takes ~207 registers and spills nothing."""
    keep = _prune_fwd(configs, named_args, **kwargs)
    if kwargs.get("SYM") and kwargs.get("GEN_A"):
        keep = [c for c in keep if c.num_warps <= 4] or keep
    return keep


#: The (BLOCK, num_warps) the AOT check reports for the generated yy forward.
PRIMARY_YY = (64, 4)


@triton.autotune(configs=_configs("fwd"), key=["D", "SIZE_BUCKET", "NUM_SCALES", "KIND", "GEN_A"],
                 prune_configs_by={"early_config_prune": _prune_prior_fwd})
@triton.heuristics(_HEUR)
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
    na = _row_norms_g(A, seed, sig, OFF, rows, NA, D, CT, BLOCK, BK, GEN_A, EVEN_A, EVEN_K)
    total = tl.zeros((1,), dtype=tl.float64)
    nblocks = tl.cdiv(NB, BLOCK)
    # Symmetric terms visit the diagonal tile and the tiles to its right in ONE loop (unlike
    # _mmd_fwd_kernel's separate diagonal step: one inlined tile body instead of two keeps the
    # generated-A variant at ~170 registers without spills on sm_90).  rows and cols are disjoint
    # off the diagonal, so the eye masks only act on the diagonal tile (weight 1, others 2).
    start = pid if SYM else 0
    for jb in range(start, nblocks):
        cols = jb * BLOCK + idx
        tsum = _fwd_tile_sum(A, B, seed, sig, OFF, P, rows, cols, na, NA, NB, D, SYM, UNBIASED,
                             KIND, NUM_SCALES, PRECISION, CT, BLOCK, BK, GEN_A, GEN_B, EVEN_A,
                             EVEN_B, EVEN_K)
        if SYM:
            tsum = tl.where(jb == pid, tsum, 2.0 * tsum)
        total += tsum
    tl.store(PART + pid + tl.arange(0, 1), total)


@triton.autotune(configs=_configs("bwd"), key=["D", "SIZE_BUCKET", "NUM_SCALES", "KIND"],
                 prune_configs_by={"early_config_prune": _prune_bwd})
@triton.heuristics(_HEUR_BWD)
@triton.jit
def _prior_bwd_kernel(
    A, OFF, P, SIG, COEF, G,
    NA, NB, D, SIZE_BUCKET, seed,
    KIND: tl.constexpr, NUM_SCALES: tl.constexpr,
    PRECISION: tl.constexpr, CT: tl.constexpr,
    BLOCK: tl.constexpr, DP: tl.constexpr, BK: tl.constexpr,
    EVEN_A: tl.constexpr, EVEN_B: tl.constexpr, EVEN_D: tl.constexpr, EVEN_K: tl.constexpr,
):
    """G[i] = c_self * sum_j W(a_i,a_j) (a_i - a_j) + c_cross * sum_j W(a_i,y_j) (a_i - y_j)
    with y_j generated (NB of them), for the columns [pid1 * DP, pid1 * DP + DP) of G."""
    sig = tl.load(SIG).to(CT)
    _bwd_body(A, A, seed, sig, OFF, P, COEF, G, NA, NB, D, KIND, NUM_SCALES, PRECISION, CT, BLOCK,
              DP, BK, True, EVEN_A, EVEN_B, EVEN_D, EVEN_K)


# ----------------------------------------------------------------------------------------------
# host side


def _ct(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_ct(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not (0 <= seed < 2**63):
        raise ValueError(f"seed must be an int in [0, 2^63), got {seed!r}")
    return int(seed)


def _sig_tensor(sigma2: float, ct: torch.dtype, device) -> torch.Tensor:
    s2 = float(sigma2)
    if not math.isfinite(s2) or s2 <= 0:
        raise ValueError(f"sigma2 must be finite and > 0, got {sigma2!r}")
    return torch.tensor([math.sqrt(s2)], dtype=ct, device=device)


class _guard:
    def __init__(self, t):
        self.ctx = torch.cuda.device(t.device) if t.device.type == "cuda" else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx is not None else False


def materialise_prior(M: int, d: int, seed: int, sigma2: float = 1.0, dtype=torch.float32,
                      device="cpu") -> torch.Tensor:
    """The (M, d) prior samples the in-kernel estimator uses for ``seed``:
    y[j, k] = sqrt(sigma2) * tl.randn(seed, j * d + k), computed in fp64 for ``dtype=float64``
    and in fp32 otherwise (then rounded to ``dtype``).  For tests; the MMD kernels never store it."""
    if M < 0 or d < 0:
        raise ValueError(f"M and d must be >= 0, got {M}, {d}")
    seed = _check_seed(seed)
    ct = _ct(dtype)
    y = torch.empty((M, d), dtype=dtype, device=device)
    n = M * d
    if n:
        sig = _sig_tensor(sigma2, ct, y.device)
        with _guard(y):
            _prior_sample_kernel[(triton.cdiv(n, SAMPLE_BLOCK),)](
                y, sig, n, d, seed, CT=_tl_ct(dtype), BLOCK=SAMPLE_BLOCK)
    return y


def _launch_fwd_gen(a, na_rows, nb_rows, d, off, p, sig, seed, sym, unbiased, kind, prec, tct,
                    bucket, gen_a):
    part = torch.zeros(triton.cdiv(na_rows, _mmd.MIN_BLOCK), dtype=torch.float64, device=a.device)
    grid = lambda meta: (triton.cdiv(na_rows, meta["BLOCK"]),)  # noqa: E731
    _prior_fwd_kernel[grid](
        a, a, off, p, sig, part, na_rows, nb_rows, d, bucket, seed,
        SYM=sym, UNBIASED=unbiased, KIND=kind, NUM_SCALES=p.numel(), PRECISION=prec, CT=tct,
        GEN_A=gen_a, GEN_B=True)
    return part.sum()


def _setup(x, kind, params, sigma2, precision):
    from .backend import _dot_precision, _params_tensor
    ct = _ct(x.dtype)
    p = _params_tensor(params, ct, x.device)
    sig = _sig_tensor(sigma2, ct, x.device)
    return ct, p, sig, _dot_precision(x.dtype, precision), _tl_ct(x.dtype)


def _cross_offset(x, m, ct):
    n = x.shape[0]
    return (x.detach().to(ct).mean(0) * (n / (n + m))).contiguous()


def prior_terms_fwd(x, kind, params, sigma2, unbiased, m, seed, precision="ieee"):
    """float64 (3,) terms (mean k(x,x'), mean k(y,y'), mean k(x,y)) with y generated in-kernel."""
    from .backend import _launch_fwd
    n, d = x.shape
    x = x.detach().contiguous()
    ct, p, sig, prec, tct = _setup(x, kind, params, sigma2, precision)
    bucket = _mmd.size_bucket(max(n, m))
    off_xx = x.to(ct).mean(0).contiguous()
    off_yy = torch.zeros(d, dtype=ct, device=x.device)
    off_xy = _cross_offset(x, m, ct)
    ub = bool(unbiased)
    with _guard(x):
        sxx = _launch_fwd(x, x, off_xx, p, True, ub, kind, prec, tct, bucket)
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
    off = _cross_offset(x, m, ct)
    gt = grad_terms.to(device=x.device, dtype=torch.float64)
    nxx = pair_count(n, unbiased)
    coef = torch.stack([gt[0] * (4.0 / nxx), gt[2] * (2.0 / (n * m))]).to(ct)
    g = torch.empty_like(x)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]), triton.cdiv(d, meta["DP"]))  # noqa: E731
    with _guard(x):
        _prior_bwd_kernel[grid](x, off, p, sig, coef, g, n, m, d, bucket, seed,
                                KIND=kind, NUM_SCALES=p.numel(), PRECISION=prec, CT=tct)
    return g


def prior_terms(x, kind, params, sigma2, unbiased, m, seed, precision="ieee"):
    """Differentiable (w.r.t. x) float64 (3,) terms of the sampled MMD to N(0, sigma2 I) with the
    M = ``m`` prior samples generated inside the kernels from ``seed`` (see the module docstring),
    through the ``wae_fast::prior_fwd_triton`` op.  The backward recomputes (it keeps only x and
    the seed)."""
    from wae_fast.contract import prior_terms as _op_terms
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must be a non-empty (N, d) tensor, got {tuple(x.shape)}")
    seed = _check_seed(seed)
    return _op_terms("triton", x, kind, params, sigma2, unbiased, m, seed, precision)


# ----------------------------------------------------------------------------------------------
# ahead-of-time compile variants (used by tests/test_triton_prior.py with wae_fast.kernels.aot)


def aot_variants(which: str = "core"):
    """(name, kernel, runtime signature, constexprs, num_warps, num_stages) of the new kernels,
    in the format of :func:`wae_fast.kernels.aot.mmd_variants`, with the primary tile configs
    (:data:`wae_fast.kernels.mmd.PRIMARY`), ragged tiles.  ``core``: fp32 IMQ/RBF at d = 64,
    fp32 IMQ at d = 3, the fp32 sampler; ``all`` adds biased yy, bf16 codes, fp64 IMQ/RBF,
    d = 17 / 130, the 8-warp yy forward (pruned at run time) and the fp64 sampler."""
    ptr = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16", "fp64": "*fp64"}
    out = []

    def cts(dtype):
        return ("fp64", tl.float64) if dtype == "fp64" else ("fp32", tl.float32)

    def fwd(dtype, kind, sym, unb, d=64, warps=None):
        block, w = _mmd.PRIMARY["fp64"] if dtype == "fp64" else (PRIMARY_YY if sym else _mmd.PRIMARY["fwd"])
        warps = warps or w
        c, ct = cts(dtype)
        scales = 7 if kind == _mmd.KIND_IMQ else 3
        dp = _mmd.padded_dim(d)
        sig = {"A": ptr[dtype], "B": ptr[dtype], "OFF": "*" + c, "P": "*" + c, "SIG": "*" + c,
               "PART": "*fp64", "NA": "i32", "NB": "i32", "D": "i32", "SIZE_BUCKET": "i32",
               "seed": "i64"}
        cx = dict(SYM=sym, UNBIASED=unb, KIND=kind, NUM_SCALES=scales, PRECISION="ieee", CT=ct,
                  GEN_A=sym, GEN_B=True, BLOCK=block, DP=dp, EVEN_A=False, EVEN_B=False,
                  EVEN_D=(d == dp), BK=_mmd.chunk_dim(d), EVEN_K=(d % _mmd.chunk_dim(d) == 0))
        name = (f"prior_fwd {'imq' if kind == 0 else 'rbf'} {dtype} {'yy' if sym else 'xy'}"
                f"{(' unbiased' if unb else ' biased') if sym else ''} d={d} B={block} w={warps}")
        out.append((name, _prior_fwd_kernel, sig, cx, warps, 2))

    def bwd(dtype, kind, d=64):
        block, warps = _mmd.PRIMARY["fp64" if dtype == "fp64" else "bwd"]
        c, ct = cts(dtype)
        scales = 7 if kind == _mmd.KIND_IMQ else 3
        dp = _mmd.grad_chunk(d)
        sig = {"A": ptr[dtype], "OFF": "*" + c, "P": "*" + c, "SIG": "*" + c, "COEF": "*" + c,
               "G": ptr[dtype], "NA": "i32", "NB": "i32", "D": "i32", "SIZE_BUCKET": "i32",
               "seed": "i64"}
        cx = dict(KIND=kind, NUM_SCALES=scales, PRECISION="ieee", CT=ct, BLOCK=block, DP=dp,
                  EVEN_A=False, EVEN_B=False, EVEN_D=(d % dp == 0), BK=_mmd.chunk_dim(d),
                  EVEN_K=(d % _mmd.chunk_dim(d) == 0))
        name = f"prior_bwd {'imq' if kind == 0 else 'rbf'} {dtype} d={d} B={block} w={warps}"
        out.append((name, _prior_bwd_kernel, sig, cx, warps, 2))

    def sample(dtype):
        c, ct = cts(dtype)
        out.append((f"prior_sample {dtype}", _prior_sample_kernel,
                    {"Y": ptr[dtype], "SIG": "*" + c, "n": "i64", "D": "i32", "seed": "i64"},
                    dict(CT=ct, BLOCK=SAMPLE_BLOCK), 4, 1))

    for dtype, kind, d in (("fp32", 0, 64), ("fp32", 1, 64), ("fp32", 0, 3)):
        fwd(dtype, kind, True, True, d=d)
        fwd(dtype, kind, False, False, d=d)
        bwd(dtype, kind, d=d)
    sample("fp32")
    if which == "all":
        fwd("fp64", 0, True, True)
        fwd("fp64", 0, False, False)
        bwd("fp64", 0)
        for kind in (0, 1):
            fwd("fp32", kind, True, False)
            fwd("fp32", kind, True, True, warps=8)   # the spilling config, pruned at run time
            fwd("bf16", kind, False, False)
            bwd("bf16", kind)
        fwd("fp64", 1, True, True)
        fwd("fp64", 1, False, False)
        bwd("fp64", 1)
        for d in (17, 130):
            fwd("fp32", 0, True, True, d=d)
            fwd("fp32", 0, False, False, d=d)
            bwd("fp32", 0, d=d)
        sample("fp64")
    return out


def aot_compile(which: str = "core", arch: int = 90, json_path=None) -> int:
    """Compile :func:`aot_variants` for sm_``arch`` with :mod:`wae_fast.kernels.aot`'s helpers
    and print registers / spills (TRITON_INTERPRET must be unset).  Returns the failure count.

        python -c "from wae_fast.kernels.prior import aot_compile; aot_compile('all')"
    """
    import json
    import time

    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    from . import aot as A

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    rows = []
    for name, kern, sig, cx, warps, stages in aot_variants(which):
        t0 = time.time()
        try:
            ck = triton.compile(A._source(A._jit_fn(kern), sig, cx, backend), target=target,
                                options={"num_warps": warps, "num_stages": stages})
            regs, sst, sld = A._usage(ck.asm["ptx"])
            row = dict(name=name, ok=True, regs=regs, spill_stores=sst, spill_loads=sld)
        except Exception as exc:  # noqa: BLE001 - report every failure
            row = dict(name=name, ok=False, error=f"{type(exc).__name__}: {str(exc)[-400:]}")
        row["seconds"] = round(time.time() - t0, 2)
        rows.append(row)
        if row["ok"]:
            print(f"{name:<48} regs {row['regs']:>4}  spill st/ld {row['spill_stores']:>5}/"
                  f"{row['spill_loads']:<5} {row['seconds']:5.2f}s", flush=True)
        else:
            print(f"{name:<48} FAILED {row['error']}", flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
    return sum(not r["ok"] for r in rows)
