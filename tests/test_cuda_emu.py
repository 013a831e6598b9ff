"""The CUDA kernels of csrc/cuda executed on the CPU: backend "cuda_emu" (csrc/cuda_emu).

The shared suite (tests/test_backends.py, tests/test_sampling.py) already runs cuda_emu like any
backend.  This file adds a COVERING selection of the paths of the CUDA code (not the full
product, to keep CI time down), each forward and backward against the float64 oracle:

* shapes: partial tiles, d = 1, 15, 16, 17, 64, 129, several row blocks, N != M, N == 64
  (exact tile), the backward's split buffers (small N: always) and its one-split direct-write
  path (WAE_CUDA_EMU_TARGET_BLOCKS=1 lowers the launch heuristic's target), one-sided gradients
  with a grad_output;
* precisions "ieee", "tf32x3" (fp32 tolerances) and "tf32" (the fp32 tolerance PLUS the
  first-order effect of rounding every dot-product input to TF32, computed below from the
  oracle's kernel derivatives: the documented TF32 error, not fp32's);
* dtypes fp32, fp16, bf16, fp64;
* the prior family (in-kernel samples) against the oracle on the emulated build's own stream,
  and that stream against the Triton interpreter's tl.randn within the documented ulps;
* reparameterize (forward and backward) against the formula on the same stream.

Tolerances are those of tests/test_backends.py (DESIGN.md 5b).
"""
from __future__ import annotations

import math

import pytest
import torch

import wae_fast
from wae_fast import contract
from wae_fast.dispatch import unavailable_reason

from . import oracle

BE = "cuda_emu"
_REASON = unavailable_reason(BE, "cpu", "prior")
pytestmark = [pytest.mark.cuda_emu, pytest.mark.skipif(_REASON is not None, reason=str(_REASON))]

KERNELS = {"imq7": wae_fast.IMQ(), "imq1": wae_fast.IMQ(C=0.8), "rbf3": wae_fast.RBF(bandwidth=(0.6, 1.5, 4.0)),
           # gamma ratios 4 (the binding sorts them ascending): one exp per pair, then squarings
           "rbf_pow2": wae_fast.RBF(bandwidth=(0.5, 1.0, 2.0))}
VAL_TOL = {torch.float64: 1e-12, torch.float32: 5e-6, torch.float16: 5e-6, torch.bfloat16: 5e-6}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 2 * 2.0**-11, torch.bfloat16: 2 * 2.0**-8}
SEED = 2**40 + 12345   # > 2^32: the 64-bit seed path
F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16


def _points(n, m, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.1 + 0.2
    y = torch.randn(m, d, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def _derivs(kind, params, r):
    """|dk/dr| and |d2k/dr2| of the summed kernel at r (float64)."""
    d1 = torch.zeros_like(r)
    d2 = torch.zeros_like(r)
    for p in params:
        if kind == 0:  # IMQ C/(C+r)
            d1 += p / (p + r) ** 2
            d2 += 2 * p / (p + r) ** 3
        else:  # RBF exp(-g r)
            e = torch.exp(-p * r)
            d1 += p * e
            d2 += p * p * e
    return d1, d2


def tf32_bounds(x, y, kind, params, unbiased):
    """First-order bound of the error "tf32" adds to MMD^2 and to its gradient: every input of
    the dot products a.b (of the points shifted by mean(y), as the kernels do) rounded to TF32
    (relative 2^-11), the products exact, fp32 sums; the squared norms stay exact, so
    |dr_ij| <= 2 (2u + u^2 + d 2^-24) sum_k |a_ik b_jk| and r_ii = 0 exactly."""
    x, y = x.double(), y.double()
    off = y.mean(0)
    a, b = x - off, y - off
    n, m, d = a.shape[0], b.shape[0], a.shape[1]
    u = 2.0**-11
    c = 2 * (2 * u + u * u + d * 2.0**-24)

    def pair(A, B, self_term):
        r = torch.cdist(A, B).square()
        dr = c * (A.abs() @ B.abs().T)
        if self_term:
            dr.fill_diagonal_(0.0)
        d1, d2 = _derivs(kind, params, r)
        return d1 * dr, d2 * dr  # |dk| and |dW| per pair

    nxx = n * (n - 1) if unbiased else n * n
    nyy = m * (m - 1) if unbiased else m * m
    kxx, wxx = pair(a, a, True)
    kyy, wyy = pair(b, b, True)
    kxy, wxy = pair(a, b, False)
    val = kxx.sum() / nxx + kyy.sum() / nyy + 2 * kxy.sum() / (n * m)
    # d MMD / d a_i = 4/nxx sum_j W_ij (a_i - a_j) - 4/(nm) sum_j W_ij (a_i - b_j)
    dist_xx = torch.cdist(a, a)
    dist_yy = torch.cdist(b, b)
    dist_xy = torch.cdist(a, b)
    gx = 4 / nxx * (wxx * dist_xx).sum(1) + 4 / (n * m) * (wxy * dist_xy).sum(1)
    gy = 4 / nyy * (wyy * dist_yy).sum(1) + 4 / (n * m) * (wxy * dist_xy).sum(0)
    return val.item(), torch.cat([gx, gy]).norm().item()


def check_mmd(n, m, d, dtype, prec, kname, estimator, need=(True, True), grad_out=1.0, seed=None):
    spec = KERNELS[kname]
    x, y = _points(n, m, d, dtype, n + m + d if seed is None else seed)
    x.requires_grad_(need[0])
    y.requires_grad_(need[1])
    val = wae_fast.mmd(x, y, spec, estimator=estimator, backend=BE, precision=prec)
    assert val.dtype == (F64 if dtype == F64 else F32) and val.shape == ()
    (val * grad_out).backward()
    kind, params = spec.lower(d)
    unbiased = estimator == "unbiased"
    want, gx, gy, scale = oracle.mmd_and_grads(x.detach(), y.detach(), kind, params, unbiased, grad_out)
    gnorm = torch.cat([gx.flatten(), gy.flatten()]).norm().item()
    vtol, gtol = VAL_TOL[dtype] * scale, GRAD_TOL[dtype] * gnorm
    if prec == "tf32" and dtype != F64 and d >= 16:  # the tensor-core path (exact FMAs below d = 16)
        bv, bg = tf32_bounds(x.detach(), y.detach(), kind, params, unbiased)
        vtol, gtol = vtol + bv, gtol + abs(grad_out) * bg
    err = abs(val.item() - want.item())
    assert err <= vtol, f"value error {err:.3g} > {vtol:.3g} (scale {scale:.3g})"
    for t, want_g, flag in ((x, gx, need[0]), (y, gy, need[1])):
        if not flag:
            assert t.grad is None
            continue
        assert t.grad.dtype == dtype and t.grad.shape == t.shape
        gerr = (t.grad.double() - want_g).norm().item()
        assert gerr <= gtol + 1e-300, f"grad error {gerr:.3g} > {gtol:.3g}"
    return err, scale


# (n, m, d, dtype, precision, kernel, estimator): every d of the issue, partial and exact tiles,
# 1-4 row blocks, N != M both ways, each precision and dtype at least twice.
MMD_CASES = [
    (2, 3, 1, F32, "ieee", "imq7", "unbiased"),
    (37, 23, 15, F32, "tf32", "rbf3", "biased"),        # d < 16: tf32 falls back to exact FMAs
    (70, 45, 16, F32, "tf32", "imq7", "unbiased"),
    (130, 67, 17, F32, "tf32x3", "imq7", "unbiased"),   # 3 row blocks, a partial k-chunk
    (65, 129, 64, F32, "tf32", "rbf3", "biased"),
    (19, 21, 129, F32, "tf32x3", "rbf3", "unbiased"),   # 3 gradient-column chunks
    (33, 70, 64, F32, "ieee", "rbf3", "unbiased"),
    (41, 70, 6, F32, "ieee", "rbf_pow2", "unbiased"),
    (41, 30, 6, F64, "ieee", "rbf_pow2", "biased"),
    (200, 150, 33, F32, "ieee", "imq7", "biased"),      # 4 x 3 row blocks
    (67, 45, 129, F64, "ieee", "imq7", "unbiased"),     # fp64: 9 chunks of 16 gradient columns
    (64, 64, 16, F64, "tf32", "rbf3", "biased"),        # fp64 ignores the precision; exact tile
    (67, 45, 17, F16, "tf32x3", "imq7", "biased"),
    (45, 67, 5, F16, "ieee", "rbf3", "unbiased"),
    (67, 45, 64, BF16, "tf32", "rbf3", "unbiased"),
    (50, 80, 1, BF16, "ieee", "imq7", "biased"),
]


@pytest.mark.parametrize("n,m,d,dtype,prec,kname,estimator", MMD_CASES,
                         ids=[f"{c[0]}x{c[1]}x{c[2]}-{str(c[3])[6:]}-{c[4]}-{c[5]}-{c[6][0]}" for c in MMD_CASES])
def test_mmd_against_oracle(n, m, d, dtype, prec, kname, estimator):
    check_mmd(n, m, d, dtype, prec, kname, estimator)


@pytest.mark.parametrize("need,prec", [((True, False), "ieee"), ((False, True), "tf32x3"), ((True, False), "tf32")])
def test_one_sided_gradients(need, prec):
    check_mmd(41, 29, 16, F32, prec, "imq1", "unbiased", need=need, grad_out=-3.7)


@pytest.mark.parametrize("dtype,prec", [(F32, "tf32"), (F64, "ieee"), (BF16, "ieee")])
def test_one_split_direct_write_paths(monkeypatch, dtype, prec):
    """Target 1 block: every forward term runs with one column split and the backward with
    one split, writing the gradient in the output dtype directly (no fp64 split buffer)."""
    monkeypatch.setenv("WAE_CUDA_EMU_TARGET_BLOCKS", "1")
    check_mmd(130, 70, 17, dtype, prec, "rbf3", "unbiased")


@pytest.mark.parametrize("prec,dtype", [("ieee", F32), ("tf32x3", F32), ("ieee", F64)])
def test_thread_order_does_not_matter(monkeypatch, prec, dtype):
    """The threads of a block run between barriers in index order, in reverse order or shuffled
    (lanes of a warp included; WAE_CUDA_EMU_ORDER): bit-identical results, forward, backward and
    prior, or a thread reads what another writes in the same barrier interval (a race on the
    GPU) or the code assumes a warp runs in lockstep."""
    from wae_fast.prior import mmd_to_prior
    x, y = _points(70, 50, 17, dtype, 2)
    outs = []
    for order in ("forward", "reverse", "shuffle"):
        monkeypatch.setenv("WAE_CUDA_EMU_ORDER", order)
        xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        v = wae_fast.mmd(xg, yg, wae_fast.IMQ(), backend=BE, precision=prec)
        v.backward()
        xp = x.clone().requires_grad_(True)
        vp = mmd_to_prior(xp, estimator="sampled", num_samples=40, seed=3, backend=BE, precision=prec)
        vp.backward()
        outs.append((v.detach(), xg.grad, yg.grad, vp.detach(), xp.grad))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b)


def test_tf32_is_the_tensor_core_path():
    """tf32 must lose accuracy against ieee (else the wmma path did not run) and tf32x3 must not."""
    x, y = _points(256, 192, 64, F32, 9)
    x, y = x * 4.0, y * 4.0
    kind, params = wae_fast.IMQ().lower(64)
    ref = oracle.mmd_terms(x.double(), y.double(), kind, params, True)
    errs = {}
    for prec in ("ieee", "tf32x3", "tf32"):
        t = wae_fast.mmd_terms(x, y, wae_fast.IMQ(), backend=BE, precision=prec)
        errs[prec] = float((t - ref).abs().max())
    assert errs["tf32"] > 10 * errs["ieee"], errs
    assert errs["tf32x3"] < errs["tf32"] / 10, errs
    scale = float(ref[0] + ref[1] + 2 * ref[2])
    assert errs["tf32x3"] <= VAL_TOL[F32] * scale, errs


# ----------------------------------------------------------------------------------------------
# prior family (samples generated in the kernels) and reparameterize


def _emu_samples(m, d, seed, dtype):
    """The emulated kernels' own normal stream (reparam with mu = 0, logvar = 0: z = eps), cast
    to the compute dtype as the prior kernels do."""
    ct = F64 if dtype == F64 else F32
    z = torch.zeros(m, d, dtype=ct)
    return contract.reparam(BE, z, torch.zeros_like(z), seed).detach()


PRIOR_CASES = [
    (37, 70, 3, F32, "ieee", "imq7", True, 1.0),
    (100, 67, 17, F32, "tf32x3", "rbf3", False, 1.0),
    (70, 45, 64, F64, "ieee", "imq7", True, 2.5),
    (67, 45, 16, BF16, "ieee", "rbf3", True, 1.0),
    (67, 130, 5, F16, "ieee", "imq7", False, 1.0),
    (30, 20, 129, F32, "ieee", "imq1", True, 0.5),
]


@pytest.mark.parametrize("n,m,d,dtype,prec,kname,unbiased,sigma2", PRIOR_CASES)
def test_prior_against_oracle(n, m, d, dtype, prec, kname, unbiased, sigma2):
    from wae_fast.prior import mmd_to_prior
    spec = KERNELS[kname]
    g = torch.Generator().manual_seed(n + d)
    x = (torch.randn(n, d, generator=g, dtype=F64) * 1.1 + 0.2).to(dtype).requires_grad_(True)
    val = mmd_to_prior(x, spec, sigma2=sigma2, estimator="sampled", unbiased=unbiased, num_samples=m,
                       seed=SEED, backend=BE, precision=prec)
    assert val.dtype == (F64 if dtype == F64 else F32)
    val.backward()
    ct = F64 if dtype == F64 else F32
    y = _emu_samples(m, d, SEED, dtype) * torch.tensor(math.sqrt(sigma2), dtype=ct)
    kind, params = spec.lower(d)
    want, gx, _gy, scale = oracle.mmd_and_grads(x.detach(), y, kind, params, unbiased)
    assert abs(val.item() - want.item()) <= VAL_TOL[dtype] * scale
    assert x.grad.dtype == dtype
    assert (x.grad.double() - gx).norm().item() <= GRAD_TOL[dtype] * gx.norm().item()


def _ulps(a, b):
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()


def test_sample_stream_matches_triton_within_documented_ulps():
    """Device stream (philox_randn_tl: sqrt.approx.ftz + libm log/cos) against the host stream
    of the cpp backend (IEEE sqrt, the same host libm): they differ only by the sqrt.approx
    model (1 ulp, +1 for the final product's rounding).  Against the Triton interpreter's
    tl.randn (numpy's log/cos): that plus the host-libm difference cpp already shows."""
    if unavailable_reason("cpp", "cpu", "reparam") is not None:
        pytest.skip("cpp backend not built")
    m, d = 300, 7
    z = torch.zeros(m, d)
    y_emu = _emu_samples(m, d, SEED, F32)
    y_cpp = contract.reparam("cpp", z, z, SEED).detach()
    assert _ulps(y_emu, y_cpp).max().item() <= 2
    assert (y_emu != y_cpp).any()  # the worst-case sqrt.approx model is on
    if unavailable_reason("triton", "cpu", "prior") is None:
        from wae_fast.kernels.prior import materialise_prior
        y_tri = materialise_prior(m, d, SEED, 1.0, F32, "cpu")
        assert (_ulps(y_emu, y_tri) <= _ulps(y_cpp, y_tri) + 2).all()


@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16])
def test_reparam_forward_backward(dtype):
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(37, 29, generator=g).to(dtype).requires_grad_(True)
    lv = (torch.randn(37, 29, generator=g) * 0.5).to(dtype).requires_grad_(True)
    z = contract.reparam(BE, mu, lv, SEED)
    ct = F64 if dtype == F64 else F32
    eps = _emu_samples(37, 29, SEED, dtype)
    want = mu.detach().to(ct) + torch.exp(lv.detach().to(ct) * 0.5) * eps
    tol = {F32: 1e-6, F64: 1e-14, F16: 2.0**-10, BF16: 2.0**-7}[dtype]
    assert z.dtype == dtype
    torch.testing.assert_close(z.to(ct), want, rtol=tol, atol=tol)
    gz = torch.randn(37, 29, generator=g).to(dtype)
    z.backward(gz)
    want_lv = gz.to(ct) * eps * torch.exp(lv.detach().to(ct) * 0.5) * 0.5
    torch.testing.assert_close(lv.grad.to(ct), want_lv, rtol=tol, atol=tol)
    torch.testing.assert_close(mu.grad, gz)


def test_errors_match_the_cuda_backend():
    """Same op schemas and checks as "cuda", with the device named CPU."""
    from wae_fast.contract import op
    x = torch.randn(10, 3)
    kind, params = wae_fast.IMQ().lower(3)
    with pytest.raises(RuntimeError, match="cuda_emu backend: seed"):
        op("prior_fwd_cuda_emu")(x, kind, params, 1.0, True, 10, -1, "ieee")
    with pytest.raises(RuntimeError, match="num_samples"):
        op("prior_fwd_cuda_emu")(x, kind, params, 1.0, True, 1, 0, "ieee")
    with pytest.raises(RuntimeError, match="precision"):
        op("prior_fwd_cuda_emu")(x, kind, params, 1.0, True, 10, 0, "fp8")
    with pytest.raises(RuntimeError, match="sigma2"):
        op("prior_fwd_cuda_emu")(x, kind, params, -1.0, True, 10, 0, "ieee")
    with pytest.raises(RuntimeError, match="between 1 and 16 kernel scales"):
        op("mmd_fwd_cuda_emu")(x, x, x.mean(0), kind, [1.0] * 17, True, False, False, "ieee")
    with pytest.raises(RuntimeError, match="x and y must have the same dtype"):
        op("mmd_fwd_cuda_emu")(x, x.double(), x.mean(0), kind, params, True, False, False, "ieee")


def test_never_chosen_by_auto():
    from wae_fast.dispatch import AUTO_ORDER, resolve_backend
    assert all(BE not in order for order in AUTO_ORDER.values())
    assert resolve_backend("auto", "cpu") != BE
    assert resolve_backend(BE, "cpu") == BE
    assert "CPU tensors only" in unavailable_reason(BE, "cuda")


@pytest.mark.parametrize("dtype,prec", [(F32, "ieee"), (F32, "tf32"), (F64, "ieee")])
def test_non_finite_in_non_finite_out(dtype, prec):
    """A NaN point gives a NaN value and NaN gradients (the clamp of r at 0 used to map NaN to
    0: a finite wrong answer), an inf point a non-finite value."""
    x, y = _points(40, 30, 16, dtype, 1)
    x[3, 2] = float("nan")
    xg = x.clone().requires_grad_(True)
    v = wae_fast.mmd(xg, y, backend=BE, precision=prec)
    assert torch.isnan(v)
    v.backward()
    assert torch.isnan(xg.grad[3]).all()
    x2, y2 = _points(40, 30, 16, dtype, 1)
    y2[0, 0] = float("inf")
    assert not torch.isfinite(wae_fast.mmd(x2, y2, backend=BE, precision=prec))
    xp = x.clone().requires_grad_(True)
    from wae_fast.prior import mmd_to_prior
    vp = mmd_to_prior(xp, estimator="sampled", num_samples=20, seed=1, backend=BE, precision=prec)
    assert torch.isnan(vp)
