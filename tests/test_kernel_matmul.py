"""kernel_matmul (K(x, y) @ v without K) on every backend that implements it, against the dense
float64 oracle: values and the gradients to x, y and v on ragged shapes, every dtype.

Tolerances: the value against the scale |K| @ |v| (max over entries), the gradients against
their norm; fp32 compute 5e-6 / 5e-5 (as tests/test_backends.py), fp64 1e-12 / 1e-10, fp16/bf16
outputs are rounded to the input dtype: 2 units of its roundoff.
"""
from __future__ import annotations

import pytest
import torch

import wae_fast

from . import oracle

KERNELS = {"imq7": wae_fast.IMQ(), "rbf3": wae_fast.RBF(bandwidth=(0.6, 1.5, 4.0)),
           "poly3": wae_fast.Polynomial(), "poly2": wae_fast.Polynomial(degree=2, gamma=0.3, coef0=-0.5)}
SHAPES = [(1, 1, 1, 1), (37, 29, 5, 3), (130, 67, 17, 1), (19, 70, 130, 65)]
VAL_TOL = {torch.float64: 1e-12, torch.float32: 5e-6, torch.float16: 2 * 2.0**-11, torch.bfloat16: 2 * 2.0**-8}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 2 * 2.0**-11, torch.bfloat16: 2 * 2.0**-8}


def _inputs(n, m, d, p, dtype, dev, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.9 + 0.2
    y = torch.randn(m, d, generator=g, dtype=torch.float64)
    v = torch.randn(m, p, generator=g, dtype=torch.float64)
    return [t.to(device=dev, dtype=dtype) for t in (x, y, v)]


def _check(kmm_backend, n, m, d, p, kname, dtype, seed=0):
    name, dev = kmm_backend
    spec = KERNELS[kname]
    x, y, v = [t.requires_grad_(True) for t in _inputs(n, m, d, p, dtype, dev, seed)]
    out = wae_fast.kernel_matmul(x, y, v, spec, backend=name)
    assert out.shape == (n, p) and out.dtype == dtype and out.device.type == dev
    gout = torch.randn(n, p, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    out.backward(gout.to(device=dev, dtype=dtype))
    kind, params = spec.lower(d)
    xd, yd, vd = [t.detach().cpu().double().requires_grad_(True) for t in (x, y, v)]
    want = oracle.kernel_matmul(xd, yd, vd, kind, params)
    grads = torch.autograd.grad(want, (xd, yd, vd), gout.to(dtype).double())
    scale = (oracle.kernel_matrix(xd, yd, kind, params).abs() @ vd.abs()).max().item()
    err = (out.detach().cpu().double() - want.detach()).abs().max().item()
    assert err <= VAL_TOL[dtype] * scale, f"value error {err:.3g} vs scale {scale:.3g}"
    for t, wg, nm in zip((x, y, v), grads, "xyv"):
        assert t.grad.dtype == dtype and t.grad.shape == t.shape
        gerr = (t.grad.cpu().double() - wg).norm().item()
        assert gerr <= GRAD_TOL[dtype] * wg.norm().item() + 1e-300, f"d{nm} error {gerr:.3g} vs {wg.norm().item():.3g}"


@pytest.mark.parametrize("n,m,d,p", SHAPES)
@pytest.mark.parametrize("kname", ["imq7", "rbf3", "poly3", "poly2"])
def test_fp32_against_oracle(kmm_backend, n, m, d, p, kname):
    _check(kmm_backend, n, m, d, p, kname, torch.float32, seed=n + m + d + p)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kname", ["imq7", "poly3"])
def test_dtypes_against_oracle(kmm_backend, dtype, kname):
    _check(kmm_backend, 45, 70, 64, 5, kname, dtype, seed=9)


def test_vector_v_and_agreement_with_reference(kmm_backend):
    name, dev = kmm_backend
    x, y, v = _inputs(150, 97, 20, 1, torch.float32, dev, 4)
    got = wae_fast.kernel_matmul(x, y, v[:, 0], backend=name)
    assert got.shape == (150,)
    want = wae_fast.kernel_matmul(x.cpu(), y.cpu(), v.cpu(), backend="reference")[:, 0]
    kind, params = wae_fast.IMQ().lower(20)
    scale = (oracle.kernel_matrix(x.cpu(), y.cpu(), kind, params) @ v.cpu().double().abs()).max().item()
    assert torch.allclose(got.cpu(), want, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("kname", ["imq7", "rbf3", "poly3"])
def test_gradcheck_fp64(kmm_backend, kname):
    name, dev = kmm_backend
    x, y, v = [t.requires_grad_(True) for t in _inputs(6, 5, 3, 2, torch.float64, dev, 2)]
    spec = KERNELS[kname]
    assert torch.autograd.gradcheck(lambda a, b, c: wae_fast.kernel_matmul(a, b, c, spec, backend=name),
                                    (x, y, v), eps=1e-6, atol=1e-8)


def test_opcheck(kmm_backend):
    from wae_fast import contract

    name, dev = kmm_backend
    x, y, v = _inputs(19, 13, 5, 3, torch.float32, dev, 3)
    off = y.mean(0)
    for req in (False, True):
        args = (x.clone().requires_grad_(req), y.clone().requires_grad_(req), v.clone().requires_grad_(req),
                off, 0, [1.0, 3.0], "ieee")
        torch.library.opcheck(contract.op(f"kernel_matmul_fwd_{name}").default, args)


def test_non_finite_in_non_finite_out(kmm_backend):
    name, dev = kmm_backend
    x, y, v = _inputs(9, 7, 3, 2, torch.float32, dev, 1)
    x[2, 1] = float("nan")
    out = wae_fast.kernel_matmul(x, y, v, backend=name)
    assert torch.isnan(out[2]).all() and torch.isfinite(out[[0, 1, 3]]).all()
    big = wae_fast.kernel_matmul(x * 1e5, y * 1e5, v, wae_fast.Polynomial(degree=9, gamma=1.0), backend=name)
    assert not torch.isfinite(big).all()
    with pytest.raises(ValueError, match="x contains non-finite"):
        wae_fast.kernel_matmul(x, y, v, backend=name, check_finite=True)


def test_validation_names_the_argument():
    x, y, v = _inputs(5, 4, 3, 2, torch.float32, "cpu", 0)
    with pytest.raises(ValueError, match="^y has d=2"):
        wae_fast.kernel_matmul(x, y[:, :2], v)
    with pytest.raises(ValueError, match="^v must be"):
        wae_fast.kernel_matmul(x, y, v[:3])
    with pytest.raises(ValueError, match="^x must be 2-D"):
        wae_fast.kernel_matmul(x[0], y, v)
    with pytest.raises(ValueError, match="^y is empty"):
        wae_fast.kernel_matmul(x, y[:0], v[:0])
    with pytest.raises(TypeError, match="^v has unsupported dtype"):
        wae_fast.kernel_matmul(x, y, v.long())
    with pytest.raises(ValueError, match="^degree must be"):
        wae_fast.Polynomial(degree=0)
    with pytest.raises(ValueError, match="^precision"):
        wae_fast.kernel_matmul(x, y, v, precision="fast")
