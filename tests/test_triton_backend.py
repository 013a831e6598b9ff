"""Tests of the Triton backend (``backend="triton"``) against the float64 brute-force oracle.

Without a GPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set before the
kernels are imported).  The interpreter costs ~0.5 ms per program and ~20 ms per 64x64 tile of
the 7-scale kernel on this machine, so shapes are small and the case list is hand-picked to
cover: N, M in 1..300 with N != M (ragged and even tiles, several row blocks, d ragged against
the 16/32-wide d-chunks and the padded d of the backward), d in {1, 3, 8, 17, 64, 130}, IMQ and
RBF, one and several scales, both estimators, fp32/fp16/bf16/fp64.

Tolerances (errors of MMD^2 judged against the scale mean Kxx + mean Kyy + 2 mean Kxy, gradient
errors against the gradient's norm; fp16/bf16 results are compared with the oracle evaluated
on the ROUNDED inputs, since rounding the inputs is not the kernel's error):

* value, fp32/fp16/bf16 (all computed in fp32 after the load): 2e-5.  Each kernel value carries
  a few fp32 ulps (distance by expansion after the mean shift, one division/exp per scale), tile
  sums are fp32 over <= 64*64 terms (relative error ~1e-6 worst case), partials combine in
  fp64; measured errors are ~1e-7 of the scale.
* value, fp64: 1e-11 (fp64 throughout; measured ~1e-15).
* gradients, fp32: 1e-4 relative in norm (fp32 accumulation over <= 300 columns of W with
  cancellation in rowsum(W) a - W b; measured ~1e-6).
* gradients, fp16: 3e-3 (the result is rounded to fp16: 2^-11 relative per element);
  bf16: 2e-2 (rounded to bf16: 2^-8 relative per element); fp64: 1e-10; for fp16/bf16 plus
  twice the error of rounding the exact gradient itself to the dtype (subnormals, see
  ``_grad_tol``).
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import wae_fast  # noqa: E402
from wae_fast import contract  # noqa: E402
from wae_fast.dispatch import unavailable_reason  # noqa: E402
from wae_fast.kernel_specs import IMQ, RBF  # noqa: E402

from . import oracle  # noqa: E402

_REASON = unavailable_reason("triton", "cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"triton backend unavailable: {_REASON}")

DEV = "cuda" if torch.cuda.is_available() else "cpu"

VALUE_TOL = {torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5, torch.float64: 1e-11}
GRAD_TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float64: 1e-10}

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64

# (N, M, d, kernel, estimator, dtype, grad_out)
CASES = [
    (2, 3, 1, IMQ(), "unbiased", F32, 1.0),
    (61, 70, 8, IMQ(scales=(0.5, 2.0)), "unbiased", F32, 1.0),          # even number of scales
    (5, 2, 3, RBF(bandwidth=0.7), "biased", F32, 3.7),
    (1, 4, 3, IMQ(), "biased", F32, 1.0),
    (300, 130, 8, IMQ(), "unbiased", F32, 3.7),
    (64, 128, 17, RBF(scales=(0.5, 1.0, 2.0)), "biased", F32, 1.0),
    (150, 299, 1, RBF(bandwidth=(0.2, 1.0)), "unbiased", F32, -2.0),
    (97, 33, 64, IMQ(C=1.0), "unbiased", F16, 1.0),
    (128, 256, 64, IMQ(), "biased", F16, 1.0),
    (40, 71, 130, RBF(), "unbiased", BF16, 3.7),
    (33, 65, 3, IMQ(), "biased", BF16, 1.0),
    (20, 31, 8, IMQ(), "unbiased", F64, 3.7),
    (23, 9, 17, RBF(bandwidth=(0.5, 2.0)), "biased", F64, 1.0),
]


def _ids(c):
    n, m, d, k, est, dt, go = c
    return f"{n}x{m}x{d}-{type(k).__name__}{len(k.lower(d)[1])}-{est}-{str(dt)[6:]}"


def _points(n, m, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # y off-centre and not unit-scaled so that the mean shift and the clamp matter
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.8
    y = torch.randn(m, d, generator=g, dtype=torch.float64) * 1.1 + 0.5
    return x.to(dtype).to(DEV), y.to(dtype).to(DEV)


def _grad_tol(exact, dtype):
    """GRAD_TOL plus twice the error of merely rounding the exact gradient to ``dtype``: small
    gradients fall into the fp16 subnormal range (< 6.1e-5), where rounding alone loses more
    than 2^-11 relative (e.g. 5e-3 for IMQ(C=1) at d=64)."""
    return GRAD_TOL[dtype] + 2.0 * _rel(exact.to(dtype), exact)


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    nb = float(b.norm())
    return float((a - b).norm()) / (nb if nb > 0 else 1.0)


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_value_and_grads_vs_oracle(case):
    n, m, d, kernel, est, dtype, grad_out = case
    x, y = _points(n, m, d, dtype)
    x.requires_grad_(True)
    y.requires_grad_(True)
    val = wae_fast.mmd(x, y, kernel, estimator=est, backend="triton")
    assert val.dtype == (F64 if dtype == F64 else F32)
    (val * grad_out).backward()
    kind, params = kernel.lower(d)
    # the oracle on the rounded inputs (x, y are already in dtype)
    ov, ogx, ogy, scale = oracle.mmd_and_grads(x.detach().cpu(), y.detach().cpu(), kind, params,
                                               est == "unbiased", grad_out)
    err = abs(float(val.detach()) - float(ov)) / scale
    assert err <= VALUE_TOL[dtype], (err, float(val), float(ov), scale)
    assert x.grad.dtype == dtype and y.grad.dtype == dtype
    assert x.grad.shape == x.shape and y.grad.shape == y.shape
    ex, ey = _rel(x.grad, ogx), _rel(y.grad, ogy)
    assert ex <= _grad_tol(ogx, dtype), ex
    assert ey <= _grad_tol(ogy, dtype), ey


@pytest.mark.parametrize("est", ["unbiased", "biased"])
def test_terms_vs_oracle(est):
    x, y = _points(70, 45, 17, F32, seed=1)
    kernel = IMQ(scales=(0.5, 1.0, 2.0))
    t = wae_fast.mmd_terms(x, y, kernel, estimator=est, backend="triton")
    assert t.dtype == F64 and t.shape == (3,)
    kind, params = kernel.lower(17)
    ot = oracle.mmd_terms(x.cpu(), y.cpu(), kind, params, est == "unbiased")
    scale = float(ot[0] + ot[1] + 2 * ot[2])
    assert float((t.cpu() - ot).abs().max()) / scale <= VALUE_TOL[F32]


def test_worked_case():
    """DESIGN.md 3: x = [[0],[1]], y = [[0],[2]], IMQ with C = 1: unbiased -0.4, biased 0.25."""
    x = torch.tensor([[0.0], [1.0]], device=DEV)
    y = torch.tensor([[0.0], [2.0]], device=DEV)
    u = wae_fast.mmd(x, y, IMQ(C=1.0), estimator="unbiased", backend="triton")
    b = wae_fast.mmd(x, y, IMQ(C=1.0), estimator="biased", backend="triton")
    assert abs(float(u) + 0.4) < 1e-6 and abs(float(b) - 0.25) < 1e-6


def test_far_outliers_finite():
    """Squared distances up to ~1e10: the paired IMQ evaluation must neither overflow nor
    lose the gradient (and the clamp keeps r >= 0)."""
    x, y = _points(20, 25, 3, F32, seed=13)
    x[0] = 1e5
    x[1] = -3e4
    x.requires_grad_(True)
    v = wae_fast.mmd(x, y, IMQ(), backend="triton")
    v.backward()
    kind, params = IMQ().lower(3)
    ov, ogx, _, scale = oracle.mmd_and_grads(x.detach().cpu(), y.cpu(), kind, params, True)
    assert torch.isfinite(x.grad).all()
    assert abs(float(v.detach()) - float(ov)) / scale <= VALUE_TOL[F32]
    assert _rel(x.grad, ogx) <= GRAD_TOL[F32]


@pytest.mark.parametrize("which", ["x", "y"])
def test_single_input_grad(which):
    x, y = _points(37, 80, 8, F32, seed=2)
    (x if which == "x" else y).requires_grad_(True)
    val = wae_fast.mmd(x, y, RBF(scales=(0.5, 2.0)), backend="triton")
    (val * 3.7).backward()
    kind, params = RBF(scales=(0.5, 2.0)).lower(8)
    _, ogx, ogy, _ = oracle.mmd_and_grads(x.detach().cpu(), y.detach().cpu(), kind, params, True, 3.7)
    if which == "x":
        assert y.grad is None and _rel(x.grad, ogx) <= GRAD_TOL[F32]
    else:
        assert x.grad is None and _rel(y.grad, ogy) <= GRAD_TOL[F32]


def test_bit_identical_reruns():
    x, y = _points(150, 90, 17, F32, seed=3)
    outs = []
    for _ in range(2):
        xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        v = wae_fast.mmd(xr, yr, IMQ(), backend="triton")
        v.backward()
        outs.append((v.detach(), xr.grad, yr.grad))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_no_grad_and_detached():
    x, y = _points(10, 12, 3, F32)
    with torch.no_grad():
        v = wae_fast.mmd(x.requires_grad_(True), y, IMQ(), backend="triton")
    assert not v.requires_grad


def test_direct_op_and_backward_op():
    """mmd_bwd_triton (the recompute kernel) equals the autograd result and the reference."""
    x, y = _points(45, 30, 8, F32, seed=4)
    kind, params = IMQ().lower(8)
    off = y.mean(0)
    terms, gxp, gyp = contract.op("mmd_fwd_triton")(x, y, off, kind, params, True, True, True, "ieee")
    assert gxp.numel() == 0 and gyp.numel() == 0          # recompute backward: no fused parts
    gt = torch.tensor([1.0, 1.0, -2.0], dtype=F64, device=DEV)
    gx, gy = contract.op("mmd_bwd_triton")(gt, x, y, off, kind, params, True, True, False, "ieee")
    assert gy.numel() == 0 and gx.shape == x.shape
    _, ogx, _, _ = oracle.mmd_and_grads(x.cpu(), y.cpu(), kind, params, True)
    assert _rel(gx, ogx) <= GRAD_TOL[F32]


def test_fp64_reference_route(monkeypatch):
    """fp64 runs natively by default; WAE_FAST_TRITON_FP64=reference routes it to the reference
    backend with a warning (the mode is read at import: patched here)."""
    from wae_fast.kernels import backend as B
    monkeypatch.setattr(B, "FP64_MODE", "reference")
    x, y = _points(9, 11, 3, F64, seed=12)
    x.requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="reference"):
        v = wae_fast.mmd(x, y, IMQ(), backend="triton")
        v.backward()
    kind, params = IMQ().lower(3)
    ov, ogx, _, scale = oracle.mmd_and_grads(x.detach().cpu(), y.cpu(), kind, params, True)
    assert abs(float(v.detach()) - float(ov)) / scale <= VALUE_TOL[F64]
    assert _rel(x.grad, ogx) <= GRAD_TOL[F64]


def test_availability_and_dispatch():
    from wae_fast.kernels import backend as B
    from wae_fast.dispatch import BACKEND_TABLE
    assert BACKEND_TABLE["triton"].caps.families == ("mmd", "reparam", "prior", "kernel_matmul", "mmd_segments")
    if torch.cuda.is_available():
        assert B.availability("cuda") is None
    else:
        assert B.availability("cuda") is not None
        assert B.availability("cpu") is None          # interpreter
    assert B.availability("mps") is not None


def test_torch_compile_fullgraph():
    """The custom ops are opaque to torch.compile: no graph break."""
    x, y = _points(20, 24, 3, F32, seed=5)
    x.requires_grad_(True)

    def f(a, b):
        return wae_fast.mmd(a, b, IMQ(), backend="triton") * 2.0

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    v = cf(x, y)
    v.backward()
    x2 = x.detach().clone().requires_grad_(True)
    v2 = f(x2, y)
    v2.backward()
    assert torch.allclose(v, v2) and torch.allclose(x.grad, x2.grad)


def test_opcheck():
    x, y = _points(9, 7, 3, F32, seed=6)
    kind, params = IMQ().lower(3)
    off = y.mean(0)
    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    torch.library.opcheck(contract.op("mmd_fwd_triton").default,
                          (xg, yg, off, kind, params, True, True, True, "ieee"))
    gt = torch.tensor([1.0, 1.0, -2.0], dtype=F64, device=DEV)
    torch.library.opcheck(contract.op("mmd_bwd_triton").default,
                          (gt, x, y, off, kind, params, False, True, True, "ieee"))
    mu, lv = torch.randn(4, 5, device=DEV), torch.randn(4, 5, device=DEV)
    torch.library.opcheck(contract.op("reparam_fwd_triton").default,
                          (mu.requires_grad_(True), lv.requires_grad_(True), 123))
    torch.library.opcheck(contract.op("reparam_bwd_triton").default, (torch.randn(4, 5, device=DEV), lv.detach(), 123))


# ---------------------------------------------------------------------------------------------
# sampling


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_reparam_determinism_and_seeds():
    mu = torch.randn(33, 70, device=DEV)
    lv = torch.randn(33, 70, device=DEV) * 0.3
    z1 = wae_fast.reparameterize(mu, lv, generator=_gen(7), backend="triton")
    z2 = wae_fast.reparameterize(mu, lv, generator=_gen(7), backend="triton")
    z3 = wae_fast.reparameterize(mu, lv, generator=_gen(8), backend="triton")
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, z3)
    assert (z1 != z3).float().mean() > 0.99


def test_reparam_eps_is_function_of_flat_index():
    from wae_fast.kernels.backend import eps
    a = eps((2500,), 11, device=DEV)
    b = eps((7,), 11, device=DEV)
    assert torch.equal(a[:7], b)


def test_reparam_statistics():
    from wae_fast.kernels.backend import eps
    e = eps((96, 1024), 1234, device=DEV).double()
    n = e.numel()
    assert abs(float(e.mean())) < 5.0 / n ** 0.5
    assert abs(float(e.var()) - 1.0) < 5.0 * (2.0 / n) ** 0.5
    # a few independence/shape checks: no correlation between neighbours, normal tails
    assert abs(float((e.flatten()[1:] * e.flatten()[:-1]).mean())) < 5.0 / n ** 0.5
    assert abs(float((e.abs() > 1.96).double().mean()) - 0.05) < 0.005


@pytest.mark.parametrize("dtype", [F32, F16, BF16, F64])
def test_reparam_values_and_grads(dtype):
    from wae_fast.kernels.backend import eps
    from wae_fast.philox import draw_seed
    g = torch.Generator().manual_seed(3)
    mu = (torch.randn(17, 30, generator=g) * 2).to(dtype).to(DEV).requires_grad_(True)
    lv = (torch.randn(17, 30, generator=g) * 0.5).to(dtype).to(DEV).requires_grad_(True)
    z = wae_fast.reparameterize(mu, lv, generator=_gen(5), backend="triton")
    assert z.dtype == dtype and z.shape == mu.shape
    # the seed the public API drew from the generator
    seed = draw_seed(_gen(5))
    assert seed == int(torch.randint(0, 2**62, (1,), generator=_gen(5)).item())
    ct = F64 if dtype == F64 else F32
    e = eps(mu.shape, seed, dtype=ct, device=DEV)
    std = torch.exp(lv.detach().to(ct) * 0.5)
    expect = mu.detach().to(ct) + std * e
    tol = {F32: 1e-6, F16: 2e-3, BF16: 1.6e-2, F64: 1e-12}[dtype]
    assert _rel(z, expect) <= tol
    w = torch.randn(z.shape, generator=g).to(dtype).to(DEV)
    (z * w).sum().backward()
    assert mu.grad.dtype == dtype and lv.grad.dtype == dtype
    assert torch.equal(mu.grad, w)
    glv = w.to(ct) * e * std * 0.5
    assert _rel(lv.grad, glv) <= tol


def test_reparam_grad_only_logvar():
    mu = torch.randn(5, 6, device=DEV)
    lv = torch.zeros(5, 6, device=DEV, requires_grad=True)
    z = wae_fast.reparameterize(mu, lv, generator=_gen(1), backend="triton")
    z.sum().backward()
    # with logvar = 0: dz/dlogvar = eps / 2 = (z - mu) / 2
    assert torch.allclose(lv.grad, (z.detach() - mu) / 2, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# GPU only


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_precision_flag_takes_effect():
    x, y = _points(2048, 2048, 64, F32, seed=9)
    x, y = x * 4.0, y * 4.0
    kind, params = IMQ().lower(64)
    ref = oracle.mmd_terms(x.cpu(), y.cpu(), kind, params, True)
    errs = {}
    for prec in ("ieee", "tf32x3", "tf32"):
        t = wae_fast.mmd_terms(x, y, IMQ(), backend="triton", precision=prec)
        errs[prec] = float((t.cpu() - ref).abs().max())
    assert errs["tf32"] > errs["ieee"], errs
    assert errs["tf32x3"] < errs["tf32"], errs


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_large_vs_reference():
    x, y = _points(5000, 4097, 64, F32, seed=10)
    x.requires_grad_(True)
    v = wae_fast.mmd(x, y, IMQ(), backend="triton")
    v.backward()
    xr = x.detach().clone().requires_grad_(True)
    vr = wae_fast.mmd(xr, y, IMQ(), backend="reference")
    vr.backward()
    t = wae_fast.mmd_terms(xr.detach(), y, IMQ(), backend="reference")
    scale = float(t[0] + t[1] + 2 * t[2])
    assert abs(float(v) - float(vr)) / scale < 2e-5
    assert _rel(x.grad, xr.grad) < 1e-4


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_second_device():
    x, y = _points(300, 200, 8, F32, seed=11)
    x1, y1 = x.to("cuda:1").requires_grad_(True), y.to("cuda:1")
    v = wae_fast.mmd(x1, y1, IMQ(), backend="triton")
    v.backward()
    assert v.device == x1.device and x1.grad.device == x1.device
    x0 = x.to("cuda:0").requires_grad_(True)
    v0 = wae_fast.mmd(x0, y.to("cuda:0"), IMQ(), backend="triton")
    v0.backward()
    assert torch.allclose(v.cpu(), v0.cpu(), rtol=1e-6)
    assert torch.allclose(x1.grad.cpu(), x0.grad.cpu(), rtol=1e-5, atol=1e-8)
