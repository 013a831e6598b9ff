"""One suite for every MMD backend (reference, cpp, triton, cuda) on every device here:
the same contract against the float64 brute force on ragged shapes, forward and backward.

Tolerances (absolute, DESIGN.md 5b): the value against the kernel-sum scale
s = mean Kxx + mean Kyy + 2 mean Kxy, the gradients against the gradient's norm.
* fp64 inputs: 1e-12 s (a few hundred ulps of fp64 over a few thousand summands).
* fp32 compute: 5e-6 s = ~40 fp32 ulps of the scale: each kernel value carries a few ulps of
  error (distance expansion after the shift, reciprocal/exp), block sums add a few more; the
  gradient 5e-5 relative (rowsum(W) x - W y cancels one more digit).
* fp16/bf16 inputs: the oracle runs on the rounded inputs, so only compute error remains for the
  value (fp32, as above); the gradient is rounded to the input dtype at the end: 2 units of
  roundoff of that dtype (fp16 2^-11, bf16 2^-8) relative to the norm.
"""
from __future__ import annotations

import pytest
import torch

import wae_fast

from . import oracle

KERNELS = {"imq7": wae_fast.IMQ(), "imq1": wae_fast.IMQ(C=0.8), "rbf3": wae_fast.RBF(bandwidth=(0.6, 1.5, 4.0)),
           "poly3": wae_fast.Polynomial(), "poly2": wae_fast.Polynomial(degree=2, gamma=0.3, coef0=-0.5),
           "poly1": wae_fast.Polynomial(degree=1, coef0=2.0)}
SHAPES = [(2, 3, 1), (37, 23, 5), (130, 67, 17), (33, 70, 64), (19, 21, 130)]
VAL_TOL = {torch.float64: 1e-12, torch.float32: 5e-6, torch.float16: 5e-6, torch.bfloat16: 5e-6}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 2 * 2.0**-11, torch.bfloat16: 2 * 2.0**-8}


def _points(n, m, d, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.1 + 0.2
    y = torch.randn(m, d, generator=g, dtype=torch.float64)
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)


def _check(mmd_backend, n, m, d, kname, estimator, dtype, grad_out=1.0, need=(True, True), seed=0):
    name, dev = mmd_backend
    spec = KERNELS[kname]
    x, y = _points(n, m, d, dtype, dev, seed)
    x.requires_grad_(need[0])
    y.requires_grad_(need[1])
    val = wae_fast.mmd(x, y, spec, estimator=estimator, backend=name)
    assert val.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert val.shape == () and val.device.type == dev
    (val * grad_out).backward()
    kind, params = spec.lower(d)
    want, gx, gy, scale = oracle.mmd_and_grads(x.cpu(), y.cpu(), kind, params,
                                               estimator == "unbiased", grad_out)
    err = abs(val.item() - want.item())
    assert err <= VAL_TOL[dtype] * scale, f"value error {err:.3g} vs scale {scale:.3g}"
    gnorm = torch.cat([gx.flatten(), gy.flatten()]).norm().item()
    for t, want_g, flag in ((x, gx, need[0]), (y, gy, need[1])):
        if not flag:
            assert t.grad is None
            continue
        assert t.grad.dtype == dtype and t.grad.shape == t.shape
        gerr = (t.grad.double().cpu() - want_g).norm().item()
        assert gerr <= GRAD_TOL[dtype] * gnorm + 1e-300, f"grad error {gerr:.3g} vs norm {gnorm:.3g}"


@pytest.mark.parametrize("n,m,d", SHAPES)
@pytest.mark.parametrize("kname", ["imq7", "rbf3"])
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_fp32_against_oracle(mmd_backend, n, m, d, kname, estimator):
    _check(mmd_backend, n, m, d, kname, estimator, torch.float32, seed=n + m + d)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,m,d", [(37, 23, 5), (70, 45, 64)])
def test_dtypes_against_oracle(mmd_backend, dtype, n, m, d):
    _check(mmd_backend, n, m, d, "imq7", "unbiased", dtype, seed=7)


@pytest.mark.parametrize("need", [(True, False), (False, True)])
def test_one_side_grad_and_grad_output(mmd_backend, need):
    _check(mmd_backend, 41, 29, 9, "imq1", "unbiased", torch.float32, grad_out=-3.7, need=need)


def test_bit_identical_reruns(mmd_backend):
    name, dev = mmd_backend
    x, y = _points(150, 97, 20, torch.float32, dev, 5)
    res = []
    for _ in range(2):
        xa, ya = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        v = wae_fast.mmd(xa, ya, backend=name)
        v.backward()
        res.append((v.detach(), xa.grad, ya.grad))
    for a, b in zip(*res):
        assert torch.equal(a, b)


def test_agrees_with_reference(mmd_backend):
    """Each backend's three terms against another implementation: the reference backend for
    the others, the float64 oracle for the reference itself (never a backend with itself)."""
    name, dev = mmd_backend
    x, y = _points(200, 150, 33, torch.float32, dev, 8)
    a = wae_fast.mmd_terms(x, y, backend=name).cpu()
    if name == "reference":
        kind, params = wae_fast.IMQ().lower(33)
        b = oracle.mmd_terms(x.cpu().double(), y.cpu().double(), kind, params, True)
    else:
        b = wae_fast.mmd_terms(x.cpu(), y.cpu(), backend="reference")
    scale = float(b[0] + b[1] + 2 * b[2])
    assert torch.allclose(a, b.to(a.dtype), rtol=0, atol=5e-6 * scale)


def test_opcheck(mmd_backend):
    """Schema, fake (meta) implementation and autograd registration agree with the real op."""
    from wae_fast import contract

    name, dev = mmd_backend
    x, y = _points(19, 13, 5, torch.float32, dev, 3)
    off = y.mean(0)
    for gx, gy in [(False, False), (True, True), (True, False)]:
        args = (x.clone().requires_grad_(gx), y.clone().requires_grad_(gy), off, 0, [1.0, 3.0],
                True, gx, gy, "ieee")
        torch.library.opcheck(contract.op(f"mmd_fwd_{name}").default, args)


def test_torch_compile_fullgraph(mmd_backend):
    name, dev = mmd_backend
    x, y = _points(40, 31, 6, torch.float32, dev, 4)
    x.requires_grad_(True)

    def loss_fn(a, b):
        return 10.0 * wae_fast.mmd(a, b, backend=name) + a.square().mean()

    got = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(x, y)
    (g1,) = torch.autograd.grad(got, x)
    want = loss_fn(x, y)
    (g2,) = torch.autograd.grad(want, x)
    assert torch.allclose(got, want, rtol=0, atol=1e-6) and torch.allclose(g1, g2, rtol=1e-5, atol=1e-8)


def test_imq_constant_range_for_fp32(mmd_backend):
    """Outside [1e-18, 1e18] the fp32 pair math (two IMQ scales per reciprocal) loses range: every
    backend refuses such constants for fp32 compute with the same error, and fp64 accepts them."""
    name, dev = mmd_backend
    x, y = _points(9, 7, 3, torch.float32, dev, 1)
    for c in (1e-20, 1e19):
        with pytest.raises(ValueError, match="kernel: IMQ constant"):
            wae_fast.mmd(x, y, wae_fast.IMQ(C=(1.0, c)), backend=name)
    v = wae_fast.mmd(x.double() * 1e-9, y.double() * 1e-9, wae_fast.IMQ(C=1e-20), backend=name)
    assert torch.isfinite(v)


@pytest.mark.parametrize("n,m,d", [(2, 3, 1), (37, 23, 5), (130, 67, 17), (19, 21, 130)])
@pytest.mark.parametrize("kname", ["poly3", "poly2", "poly1"])
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_polynomial_against_oracle(mmd_backend, n, m, d, kname, estimator):
    """The polynomial kernel works from the dot products of the unshifted points (offset 0) and
    keeps the diagonal's gradient under the biased estimator (k(a_i, a_i) depends on a_i)."""
    _check(mmd_backend, n, m, d, kname, estimator, torch.float32, seed=3 * n + m + d)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_polynomial_dtypes_against_oracle(mmd_backend, dtype, estimator):
    _check(mmd_backend, 70, 45, 64, "poly3", estimator, dtype, seed=11)


def test_polynomial_overflow_is_not_finite(mmd_backend):
    """(gamma a.b + c)^p beyond the compute dtype's range gives inf/NaN, never a finite value;
    NaN inputs give NaN."""
    name, dev = mmd_backend
    x, y = _points(9, 7, 3, torch.float32, dev, 2)
    big = wae_fast.Polynomial(degree=9, gamma=1.0)
    xs = (x * 1e5).requires_grad_(True)
    v = wae_fast.mmd(xs, y * 1e5, big, backend=name)
    assert not torch.isfinite(v)
    v.backward()
    assert not torch.isfinite(xs.grad).all()
    xn = x.clone()
    xn[3, 1] = float("nan")
    assert torch.isnan(wae_fast.mmd(xn, y, wae_fast.Polynomial(), backend=name))


@pytest.mark.parametrize("kname", ["imq7", "rbf3"])
def test_nan_point_gives_nan(mmd_backend, kname):
    """A NaN coordinate must not be clamped into r = 0 (a finite kernel value): NaN out, and
    NaN in that point's gradient row."""
    name, dev = mmd_backend
    x, y = _points(9, 7, 3, torch.float32, dev, 6)
    x[2, 1] = float("nan")
    x.requires_grad_(True)
    v = wae_fast.mmd(x, y, KERNELS[kname], backend=name)
    assert torch.isnan(v)
    v.backward()
    assert torch.isnan(x.grad[2]).any()


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_polynomial_gradcheck_fp64(mmd_backend, estimator):
    name, dev = mmd_backend
    x, y = _points(6, 5, 3, torch.float64, dev, 4)
    x.requires_grad_(True)
    y.requires_grad_(True)
    spec = wae_fast.Polynomial(degree=3, gamma=0.4)
    assert torch.autograd.gradcheck(
        lambda a, b: wae_fast.mmd(a, b, spec, estimator=estimator, backend=name), (x, y), eps=1e-6, atol=1e-8)
