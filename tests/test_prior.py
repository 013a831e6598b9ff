"""MMD to the Gaussian prior: closed forms (vs direct integration and Monte Carlo), seeded
blockwise prior samples (vs the materialised samples), the linear-time estimator."""
from __future__ import annotations

import math

import pytest
import torch

import wae_fast
from wae_fast import prior as P
from wae_fast.kernel_specs import KIND_IMQ
from wae_fast.philox import prior_rows

mpmath = pytest.importorskip("mpmath")

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors on a shared 2-core box: intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _codes(n, d, seed=0, scale=1.1, shift=0.2, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=F64) * scale + shift).to(dtype)


def _imq_exact(s, C, var, d):
    """C int_0^inf e^{-tC} (1+2t var)^{-d/2} exp(-t s/(1+2t var)) dt and its s-derivative,
    by mpmath adaptive quadrature at 30 digits (split at the integrand's scales)."""
    mpmath.mp.dps = 30
    s, C, var = mpmath.mpf(s), mpmath.mpf(C), mpmath.mpf(var)

    def f(t):
        q = 1 + 2 * t * var
        return C * mpmath.e ** (-t * C) * q ** (-mpmath.mpf(d) / 2) * mpmath.e ** (-t * s / q)

    pts = [0, 1 / (C + s), 10 / (C + s), 1 / C, 10 / C, mpmath.inf]
    val = mpmath.quad(f, pts)
    der = -mpmath.quad(lambda t: f(t) * t / (1 + 2 * t * var), pts)
    return float(val), float(der)


# --------------------------------------------------------------------------- quadrature

GRID = [(d, sc, sfac) for d in (1, 2, 8, 64) for sc in (0.1, 1.0, 10.0) for sfac in (0.0, 1.0, 50.0)]


@pytest.mark.parametrize("d,scale,sfac", GRID)
def test_imq_quadrature_vs_direct_integration(d, scale, sfac):
    var = 0.7
    C = 2 * d * var * scale
    s = sfac * d * var
    want, dwant = _imq_exact(s, C, var, d)
    f, df = P.imq_gauss_expectation(torch.tensor([s], dtype=F64), C, var, d, need_deriv=True)
    assert abs(float(f[0]) - want) <= 5e-16, (float(f[0]), want)
    assert abs(float(df[0]) - dwant) <= 5e-16 * max(1.0, 1.0 / C), (float(df[0]), dwant)


@pytest.mark.parametrize("d,scale,sfac", [g for g in GRID if g[0] * g[1] >= 1.0])
def test_laguerre_rule_accurate_when_C_not_small(d, scale, sfac):
    var = 1.0
    C = 2 * d * var * scale
    s = sfac * d * var
    want, _ = _imq_exact(s, C, var, d)
    f, _ = P.imq_gauss_expectation(torch.tensor([s], dtype=F64), C, var, d, rule="laguerre")
    assert abs(float(f[0]) - want) <= 1e-13


def test_quadrature_converges_with_nodes():
    d, C, var, s = 2, 0.4, 1.0, 2.0  # small C: the hard case
    want, _ = _imq_exact(s, C, var, d)
    errs = [abs(float(P.imq_gauss_expectation(torch.tensor([s], dtype=F64), C, var, d,
                                              nodes=n)[0][0]) - want) for n in (21, 41, 81, 161, 201)]
    assert errs[-1] <= 4e-16 and errs[0] > errs[1] > errs[2] > max(errs[3], 1e-17)


# --------------------------------------------------------------------------- Monte Carlo

@pytest.mark.parametrize("spec", [wae_fast.IMQ(), wae_fast.RBF(), wae_fast.RBF(bandwidth=(0.5, 2.0)),
                                  wae_fast.IMQ(C=0.3)], ids=["imq7", "rbf", "rbf2", "imq03"])
def test_closed_form_prior_terms_vs_monte_carlo(spec):
    d, sigma2, n, m = 4, 1.7, 12, 100_000
    x = _codes(n, d, seed=3, scale=1.5)
    kind, params = spec.lower(d)
    ek, _, eyy = P.gauss_expectations((x * x).sum(1), kind, params, sigma2, d)
    g = torch.Generator().manual_seed(11)
    y = torch.randn(m, d, generator=g, dtype=F64) * math.sqrt(sigma2)
    y2 = torch.randn(m, d, generator=g, dtype=F64) * math.sqrt(sigma2)

    def k(r):
        out = torch.zeros_like(r)
        for p in params:
            out = out + (p / (p + r) if kind == KIND_IMQ else torch.exp(-p * r))
        return out

    # E_y k(x_i, y) for every point: n x m values, SE per point from the sample spread
    kxy = k(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    mc, se = kxy.mean(1), kxy.std(1) / math.sqrt(m)
    assert ((ek - mc).abs() <= 5 * se + 1e-12).all(), ((ek - mc) / se)
    kyy = k(((y - y2) ** 2).sum(1))
    assert abs(eyy - float(kyy.mean())) <= 5 * float(kyy.std()) / math.sqrt(m)


def test_closed_form_is_unbiased_on_average():
    """Codes ~ N(mu, sigma2 I): the population MMD^2 is 2 E_{yy'} k - 2 E k(x, y) with x - y ~
    N(mu, 2 sigma2 I), i.e. F_{2 sigma2}(||mu||^2); the closed-form U-statistic averages to it."""
    d, sigma2, n, reps = 3, 1.0, 20, 200
    spec = wae_fast.IMQ()
    kind, params = spec.lower(d)
    mu = torch.tensor([0.6, -0.3, 0.2], dtype=F64)
    truth = 0.0
    for p in params:
        eyy = float(P.imq_gauss_expectation(torch.zeros(1, dtype=F64), p, 2 * sigma2, d)[0][0])
        exy = float(P.imq_gauss_expectation((mu * mu).sum()[None], p, 2 * sigma2, d)[0][0])
        truth += 2 * eyy - 2 * exy
    g = torch.Generator().manual_seed(5)
    vals = torch.stack([P.mmd_to_prior(torch.randn(n, d, generator=g, dtype=F64) + mu, spec)
                        for _ in range(reps)])
    assert abs(float(vals.mean()) - truth) <= 5 * float(vals.std()) / math.sqrt(reps)
    lin = torch.stack([P.mmd_to_prior(torch.randn(n, d, generator=g, dtype=F64) + mu, spec,
                                      estimator="linear", seed=i) for i in range(reps)])
    assert abs(float(lin.mean()) - truth) <= 5 * float(lin.std()) / math.sqrt(reps)
    assert float(lin.std()) > 1.5 * float(vals.std())  # same N: the linear one is much noisier


# --------------------------------------------------------------------------- closed form: xx term, grads

@pytest.mark.parametrize("unbiased", [True, False])
def test_closed_form_xx_term_matches_reference(unbiased):
    x = _codes(37, 5, seed=7)
    est = "unbiased" if unbiased else "biased"
    for spec in (wae_fast.IMQ(), wae_fast.RBF(bandwidth=1.3)):
        t = P.mmd_to_prior_terms(x, spec, unbiased=unbiased, block_size=8)
        ref = wae_fast.mmd_terms(x, _codes(5, 5, seed=1), spec, estimator=est, backend="reference")
        assert abs(float(t[0] - ref[0])) <= 1e-14 * float(ref[0])
        t2 = P.mmd_to_prior_terms(x, spec, unbiased=unbiased)  # one block
        assert torch.allclose(t, t2, rtol=1e-14, atol=0)


@pytest.mark.parametrize("spec", [wae_fast.IMQ(), wae_fast.RBF(), wae_fast.IMQ(C=0.5)],
                         ids=["imq7", "rbf", "imq1"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_closed_form_gradcheck(spec, unbiased):
    x = _codes(9, 3, seed=2).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: P.mmd_to_prior(z, spec, unbiased=unbiased, sigma2=1.3, block_size=4),
        (x,), eps=1e-6, atol=1e-9, rtol=1e-6)


def test_closed_form_fp32_dtype_and_grad():
    x = _codes(20, 4, dtype=torch.float32).requires_grad_(True)
    v = P.mmd_to_prior(x)
    v.backward()
    assert v.dtype == torch.float32 and x.grad.dtype == torch.float32
    x64 = x.detach().double().requires_grad_(True)
    v64 = P.mmd_to_prior(x64)
    v64.backward()
    assert abs(v.item() - v64.item()) <= 1e-5
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)


def test_closed_form_near_zero_for_prior_samples():
    g = torch.Generator().manual_seed(9)
    y = torch.randn(400, 6, generator=g, dtype=F64) * math.sqrt(2.0)
    v_good = P.mmd_to_prior(y, wae_fast.IMQ(sigma2=2.0))
    v_bad = P.mmd_to_prior(y + 1.0, wae_fast.IMQ(sigma2=2.0))
    assert abs(float(v_good)) < 5e-3 < float(v_bad)


# --------------------------------------------------------------------------- sampled

@pytest.mark.parametrize("spec", [wae_fast.IMQ(), wae_fast.RBF(bandwidth=(0.8, 2.0))], ids=["imq", "rbf"])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("n,m,block", [(23, 41, 8), (30, 30, 64), (5, 2, 1)])
def test_sampled_equals_materialised(spec, unbiased, n, m, block):
    x = _codes(n, 4, seed=n + m).requires_grad_(True)
    v = P.mmd_to_prior(x, spec, estimator="sampled", unbiased=unbiased, num_samples=m, seed=77,
                       block_size=block, sigma2=1.5)
    (gv,) = torch.autograd.grad(v, x)
    y = P.prior_samples(m, 4, seed=77, block_size=block, sigma2=1.5, dtype=F64)
    w = wae_fast.mmd(x, y, spec, estimator="unbiased" if unbiased else "biased", backend="reference")
    (gw,) = torch.autograd.grad(w, x)
    t = wae_fast.mmd_terms(x.detach(), y, spec, estimator="unbiased" if unbiased else "biased",
                           backend="reference")
    scale = float(t[0] + t[1] + 2 * t[2])
    assert abs(v.item() - w.item()) <= 1e-14 * scale
    torch.testing.assert_close(gv, gw, rtol=0, atol=1e-13 * float(gw.abs().max()))


def test_prior_blocks_regenerate_and_generator_route():
    y = P.prior_samples(50, 3, seed=123, block_size=16, dtype=F64)
    assert y.shape == (50, 3)
    # counter-based: any rows regenerate alone, whatever the block size
    assert torch.equal(P.prior_samples(50, 3, seed=123, block_size=7, dtype=F64), y)
    assert torch.equal(prior_rows(32, 48, 3, 123, 1.0, F64, "cpu"), y[32:48])
    assert torch.equal(prior_rows(48, 50, 3, 123, 1.0, F64, "cpu"), y[48:])
    assert not torch.equal(y[:16], y[16:32])
    x = _codes(10, 3)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a = P.mmd_to_prior(x, estimator="sampled", num_samples=50, generator=g1, block_size=16)
    yg = P.prior_samples(50, 3, generator=g2, block_size=16, dtype=F64)
    b = wae_fast.mmd(x, yg, backend="reference")
    assert abs(float(a - b)) <= 1e-14
    # fp32 codes draw fp32 samples
    a32 = P.mmd_to_prior(x.float(), estimator="sampled", num_samples=50, seed=8, block_size=16)
    y32 = P.prior_samples(50, 3, seed=8, block_size=16)
    assert a32.dtype == torch.float32
    assert abs(float(a32) - float(wae_fast.mmd(x.float(), y32, backend="reference"))) <= 1e-5


def test_sampled_converges_to_closed_form():
    x = _codes(16, 3, seed=4)
    cf = P.mmd_to_prior_terms(x)
    sm = P.mmd_to_prior_terms(x, estimator="sampled", num_samples=3000, seed=1, block_size=512)
    assert float(sm[0]) == pytest.approx(float(cf[0]), rel=1e-13)
    assert abs(float(sm[1] - cf[1])) < 0.02 and abs(float(sm[2] - cf[2])) < 0.02


# --------------------------------------------------------------------------- linear

def test_mmd_linear_by_hand_and_grad():
    x = torch.tensor([[0.0], [1.0], [3.0], [2.0], [9.0]], dtype=F64, requires_grad=True)
    y = torch.tensor([[0.0], [2.0], [1.0], [1.0], [5.0]], dtype=F64, requires_grad=True)
    spec = wae_fast.IMQ(C=1.0)

    def k(a, b):
        return 1.0 / (1.0 + (a - b) ** 2)

    h1 = k(0, 1) + k(0, 2) - k(0, 2) - k(1, 0)
    h2 = k(3, 2) + k(1, 1) - k(3, 1) - k(2, 1)
    v = P.mmd_linear(x, y, spec)
    assert abs(v.item() - (h1 + h2) / 2) <= 1e-15
    assert torch.autograd.gradcheck(lambda a, b: P.mmd_linear(a, b, spec), (x, y))
    v2, se = P.mmd_linear(x, y, spec, return_std=True)
    assert v2.item() == v.item() and se.item() > 0


def test_linear_prior_matches_materialised():
    x = _codes(31, 4)
    v = P.mmd_to_prior(x, wae_fast.RBF(), estimator="linear", seed=3, block_size=8)
    y = P.prior_samples(31, 4, seed=3, block_size=8, dtype=F64)
    assert float(v) == float(P.mmd_linear(x, y, wae_fast.RBF()))


# --------------------------------------------------------------------------- errors

def test_errors_name_the_argument():
    x = _codes(5, 2)
    with pytest.raises(ValueError, match="x must be 2-D"):
        P.mmd_to_prior(x[0])
    with pytest.raises(TypeError, match="x has unsupported dtype"):
        P.mmd_to_prior(x.long())
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        P.mmd_to_prior([[1.0]])
    with pytest.raises(ValueError, match="unbiased estimator needs at least 2"):
        P.mmd_to_prior(x[:1])
    assert torch.isfinite(P.mmd_to_prior(x[:1], unbiased=False))
    with pytest.raises(ValueError, match="estimator: unknown"):
        P.mmd_to_prior(x, estimator="exact")
    with pytest.raises(ValueError, match="sigma2"):
        P.mmd_to_prior(x, sigma2=-1.0)
    with pytest.raises(ValueError, match="num_samples"):
        P.mmd_to_prior(x, estimator="sampled", num_samples=1)
    with pytest.raises(ValueError, match="num_samples"):
        P.mmd_to_prior(x, estimator="linear", num_samples=7)
    with pytest.raises(ValueError, match="quadrature"):
        P.mmd_to_prior(x, quadrature="simpson")
    with pytest.raises(ValueError, match="quad_nodes"):
        P.mmd_to_prior(x, quad_nodes=1)
    with pytest.raises(ValueError, match="block_size"):
        P.mmd_to_prior(x, block_size=0)
    with pytest.raises(TypeError, match="generator"):
        P.mmd_to_prior(x, estimator="sampled", generator=3)
    with pytest.raises(ValueError, match="equal counts"):
        P.mmd_linear(x, _codes(6, 2))
    with pytest.raises(ValueError, match="y has d=3"):
        P.mmd_linear(x, _codes(5, 3))
    with pytest.raises(ValueError, match="non-finite"):
        P.mmd_to_prior(torch.full((3, 2), float("nan"), dtype=F64), check_finite=True)


@pytest.mark.parametrize("estimator", ["closed_form", "sampled"])
def test_recompute_backward_matches_fused(estimator):
    kw = dict(estimator=estimator, num_samples=29 if estimator == "sampled" else None, seed=6,
              block_size=8, sigma2=0.8)
    x = _codes(21, 3, seed=12).requires_grad_(True)
    v1 = P.mmd_to_prior(x, wae_fast.IMQ(), **kw)
    (g1,) = torch.autograd.grad(v1, x)
    v2 = P.mmd_to_prior(x, wae_fast.IMQ(), recompute_backward=True, **kw)
    (g2,) = torch.autograd.grad(v2, x)
    assert v1.item() == v2.item()
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-15 * float(g1.abs().max()))
    # only one term differentiated: the other passes are skipped, the result still right
    t = P.mmd_to_prior_terms(x, wae_fast.IMQ(), recompute_backward=True, **kw)
    (gt,) = torch.autograd.grad(t[2], x)
    t_f = P.mmd_to_prior_terms(x, wae_fast.IMQ(), **kw)
    (gf,) = torch.autograd.grad(t_f[2], x)
    torch.testing.assert_close(gt, gf, rtol=0, atol=1e-15 * float(gf.abs().max()))
