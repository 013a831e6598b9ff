"""The reference backend against the independent float64 brute force (tests/oracle.py)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import wae_fast
from wae_fast import reference
from wae_fast.kernel_specs import KIND_IMQ, KIND_RBF

from . import oracle

KERNELS = {
    "imq7": wae_fast.IMQ(),
    "imq1": wae_fast.IMQ(C=1.5),
    "rbf1": wae_fast.RBF(bandwidth=1.3),
    "rbf3": wae_fast.RBF(bandwidth=(0.5, 1.0, 2.0)),
}


def _points(n, m, d, seed=0, dtype=torch.float64, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.2 + 0.3 + shift
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + shift
    return x.to(dtype), y.to(dtype)


def test_worked_case_design_section_3():
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    k = wae_fast.IMQ(C=1.0)
    u = wae_fast.mmd(x, y, k, backend="reference")
    b = wae_fast.mmd(x, y, k, estimator="biased", backend="reference")
    # -0.4 = 1/2 + 1/5 - 2 * (1 + 1/2 + 1/5 + 1/2) / 4 ; 0.25 likewise with diagonals.
    assert u.dtype == torch.float64 and b.dtype == torch.float64
    assert abs(u.item() - (-0.4)) <= 4 * 2.0**-52
    assert abs(b.item() - 0.25) <= 4 * 2.0**-52


@pytest.mark.parametrize("kname", list(KERNELS))
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("n,m,d", [(2, 3, 1), (37, 23, 5), (50, 81, 17), (19, 19, 130), (64, 33, 64)])
def test_matches_bruteforce_float64(kname, estimator, n, m, d):
    spec = KERNELS[kname]
    x, y = _points(n, m, d, seed=n * 1000 + m)
    kind, params = spec.lower(d)
    want = oracle.mmd_terms(x, y, kind, params, estimator == "unbiased")
    # block 16: N, M not multiples of it, several symmetric off-diagonal blocks.
    off = y.mean(0)
    got, _, _ = reference.mmd_terms_blocked(x, y, off, kind, params, estimator == "unbiased", block_size=16)
    scale = float(want[0] + want[1] + 2 * want[2])
    # float64 throughout: errors are a few ulps of the kernel-sum scale.
    assert torch.allclose(got, want, rtol=0, atol=1e-13 * scale)
    val = wae_fast.mmd(x, y, spec, estimator=estimator, backend="reference")
    assert abs(val.item() - float(want[0] + want[1] - 2 * want[2])) <= 1e-13 * scale


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 70), m=st.integers(2, 70), d=st.integers(1, 130),
       block=st.integers(1, 40), biased=st.booleans(), rbf=st.booleans(), seed=st.integers(0, 10**6))
def test_blocked_equals_bruteforce_property(n, m, d, block, biased, rbf, seed):
    x, y = _points(n, m, d, seed=seed)
    kind = KIND_RBF if rbf else KIND_IMQ
    params = [0.7 / d, 2.0 / d] if rbf else [0.5 * d, 4.0 * d]
    want = oracle.mmd_terms(x, y, kind, params, not biased)
    got, gx, gy = reference.mmd_terms_blocked(x, y, y.mean(0), kind, params, not biased,
                                              True, True, block_size=block)
    scale = float(want[0] + want[1] + 2 * want[2])
    assert torch.allclose(got, want, rtol=0, atol=1e-13 * scale)
    _, ox, oy, _ = oracle.mmd_and_grads(x, y, kind, params, not biased)
    gnorm = float(torch.cat([ox.flatten(), oy.flatten()]).norm()) + 1e-300
    assert (gx[0] - 2 * gx[1] - ox).norm() <= 1e-11 * gnorm
    assert (gy[0] - 2 * gy[1] - oy).norm() <= 1e-11 * gnorm


def test_block_by_block_equals_one_block():
    x, y = _points(130, 77, 9, seed=3)
    kind, params = wae_fast.IMQ().lower(9)
    a = reference.mmd_terms_blocked(x, y, y.mean(0), kind, params, True, True, True, block_size=7)
    b = reference.mmd_terms_blocked(x, y, y.mean(0), kind, params, True, True, True, block_size=10**6)
    for u, v in zip(a, b):
        assert torch.allclose(u, v, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_gradcheck_float64(kernel, estimator, monkeypatch):
    monkeypatch.setattr(reference, "BLOCK_SIZE", 4)  # exercise the blocked gradient paths
    x, y = _points(9, 7, 3, seed=5)
    x.requires_grad_(True)
    y.requires_grad_(True)
    f = lambda a, b: wae_fast.mmd(a, b, kernel, estimator=estimator, backend="reference")
    assert torch.autograd.gradcheck(f, (x, y))
    # only one side requiring grad
    xd = x.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: f(a, y.detach()), (xd,))
    yd = y.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda b: f(x.detach(), b), (yd,))


def test_gradients_match_bruteforce_with_grad_output():
    x, y = _points(45, 31, 6, seed=11)
    x.requires_grad_(True)
    y.requires_grad_(True)
    loss = 3.7 * wae_fast.mmd(x, y, backend="reference")
    loss.backward()
    kind, params = wae_fast.IMQ().lower(6)
    _, gx, gy, _ = oracle.mmd_and_grads(x, y, kind, params, True, grad_out=3.7)
    assert torch.allclose(x.grad, gx, rtol=1e-10, atol=1e-14)
    assert torch.allclose(y.grad, gy, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    x, y = _points(60, 45, 8, seed=2, dtype=dtype)
    x.requires_grad_(True)
    y.requires_grad_(True)
    val = wae_fast.mmd(x, y, backend="reference")
    assert val.dtype == torch.float32
    val.backward()
    assert x.grad.dtype == dtype and y.grad.dtype == dtype
    kind, params = wae_fast.IMQ().lower(8)
    # Oracle on the rounded inputs: what remains is fp32 compute error. Kernel values carry
    # ~1e-7 relative error each; sums of 5000 such terms stay within ~1e-6 of the scale.
    want, gx, gy, scale = oracle.mmd_and_grads(x, y, kind, params, True)
    assert abs(val.item() - want.item()) <= 2e-6 * scale
    # Gradients are then rounded to the input dtype: error bounded by its unit roundoff.
    u = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    gnorm = torch.cat([gx.flatten(), gy.flatten()]).norm()
    assert (x.grad.double() - gx).norm() <= u * gnorm
    assert (y.grad.double() - gy).norm() <= u * gnorm


def test_large_offset_does_not_cancel():
    # Points far from the origin relative to their spread: the shared shift keeps fp32 exact-ish.
    x, y = _points(80, 70, 16, seed=9, shift=1000.0)
    kind, params = wae_fast.IMQ().lower(16)
    want, gx, _, scale = oracle.mmd_and_grads(x, y, kind, params, True)
    x32 = x.float().requires_grad_(True)
    val = wae_fast.mmd(x32, y.float(), backend="reference")
    val.backward()
    # the fp32 inputs themselves are rounded at 1000 * 6e-8 = 6e-5 absolute: compare with the
    # oracle on the rounded inputs
    want32, gx32, _, scale = oracle.mmd_and_grads(x.float(), y.float(), kind, params, True)
    assert abs(val.item() - want32.item()) <= 2e-6 * scale
    assert (x32.grad.double() - gx32).norm() <= 1e-4 * gx32.norm()


def test_biased_is_nonnegative_and_zero_for_identical_sets():
    x, _ = _points(50, 2, 4, seed=1, dtype=torch.float32)
    v = wae_fast.mmd(x, x.clone(), estimator="biased", backend="reference")
    assert v.item() >= 0 and abs(v.item()) < 1e-6


def test_same_distribution_small_different_large():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 4, generator=g)
    y = torch.randn(400, 4, generator=g)
    z = torch.randn(400, 4, generator=g) * 2 + 1
    assert abs(wae_fast.mmd(x, y).item()) < 0.05 * wae_fast.mmd(z, y).item()


def test_deterministic_reruns_bit_identical():
    x, y = _points(300, 200, 12, seed=4, dtype=torch.float32)
    outs = []
    for _ in range(2):
        xa = x.clone().requires_grad_(True)
        v = wae_fast.mmd(xa, y, backend="reference")
        v.backward()
        outs.append((v.detach().clone(), xa.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_multiscale_is_sum_of_single_scales():
    x, y = _points(40, 30, 5, seed=8)
    total = wae_fast.mmd(x, y, wae_fast.IMQ())
    parts = sum(wae_fast.mmd(x, y, wae_fast.IMQ(C=c)) for c in wae_fast.IMQ().constants(5))
    assert math.isclose(total.item(), parts.item(), rel_tol=1e-12, abs_tol=1e-15)


def test_default_kernel_constants():
    assert wae_fast.IMQ().constants(8) == tuple(s * 2 * 8 * 1.0 for s in wae_fast.WAE_SCALES)
    assert wae_fast.IMQ(sigma2=4.0).constants(2)[3] == 16.0
    kind, gam = wae_fast.RBF(bandwidth=2.0).lower(3)
    assert kind == KIND_RBF and gam == [1 / 8]
    # tied RBF: 2 s^2 = scale * 2 d sigma2
    assert wae_fast.RBF(scales=(0.5,)).gammas(4) == (1 / (0.5 * 8),)
