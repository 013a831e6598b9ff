"""The small-call fast path (issue 15): the cpp op computing the per-term median shifts itself
(an empty ``offset``), and ``mmd``'s eager one-node autograd (``contract.mmd_value``).

Both must give what the path they replace gave: the shifts of ``contract.term_shifts`` (lower
medians, NaN columns, the lerp of the xy row), and the value and gradients of
``dot(mmd_terms, (1, 1, -2))`` -- on ragged shapes, every dtype, with the float64 oracle as the
judge of the result itself."""
from __future__ import annotations

import pytest
import torch

import wae_fast
from wae_fast import contract
from wae_fast.dispatch import unavailable_reason
from wae_fast.kernel_specs import IMQ, KIND_POLY, RBF, Polynomial

from . import oracle

REASON = unavailable_reason("cpp", "cpu")
needs_cpp = pytest.mark.skipif(REASON is not None, reason=f"cpp backend unavailable: {REASON}")

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _points(n, m, d, dtype, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * spread + 3.0).to(dtype)
    y = (torch.randn(m, d, generator=g, dtype=torch.float64) * spread - 1.0).to(dtype)
    return x, y


@needs_cpp
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m,d", [(2, 2, 1), (64, 64, 8), (65, 31, 5), (7, 130, 3), (100, 100, 17)])
@pytest.mark.parametrize("kernel", [IMQ(), RBF(scales=(0.5, 2.0)), Polynomial()], ids=["imq7", "rbf2", "poly"])
def test_shifts_in_the_op_match_term_shifts(dtype, n, m, d, kernel):
    """mmd_fwd_cpp with an empty offset == with contract.term_shifts passed in (terms and parts)."""
    x, y = _points(n, m, d, dtype, seed=n + m + d)
    kind, params = kernel.lower(d)
    op = contract.op("mmd_fwd_cpp")
    ct = contract.compute_dtype(dtype)
    got = op(x, y, x.new_empty((0,), dtype=ct), kind, params, True, True, True, "ieee")
    want = op(x, y, contract.term_shifts(kind, x, y), kind, params, True, True, True, "ieee")
    # identical medians; the xy row may differ from torch.lerp by an ulp (FMA or not)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-6, atol=1e-7)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tol)
    if kind == KIND_POLY:  # no shift at all: exactly the zero-offset call
        for g, w in zip(got, want):
            assert torch.equal(g, w)


@needs_cpp
def test_shifts_in_the_op_nan_column_and_far_cluster():
    """A NaN coordinate makes its column's shifts NaN (every row of those terms NaN, as with
    torch.median); a tight cluster far from the other set stays accurate (its own shift)."""
    x, y = _points(40, 24, 3, torch.float32, seed=5)
    x[7, 1] = float("nan")
    kind, params = IMQ().lower(3)
    empty = torch.empty(0)
    terms, gx, gy = contract.op("mmd_fwd_cpp")(x, y, empty, kind, params, True, True, True, "ieee")
    assert torch.isnan(terms[0]) and torch.isnan(terms[2]) and not torch.isnan(terms[1])
    assert torch.isnan(gx).all(dim=-1).all() and torch.isnan(gy[1]).all()
    assert not torch.isnan(gy[0]).any()
    g = torch.Generator().manual_seed(3)
    xc = (1e4 + 1e-3 * torch.randn(30, 4, generator=g, dtype=torch.float64)).float()
    yc = torch.randn(20, 4, generator=g, dtype=torch.float64).float()
    kind, params = IMQ().lower(4)
    ref, _, _, scale = oracle.mmd_and_grads(xc, yc, kind, params, True)
    got = wae_fast.mmd(xc, yc, backend="cpp")
    assert abs(got.item() - ref.item()) <= 2e-6 * scale


@needs_cpp
@pytest.mark.parametrize("d", [2, 6, 16])  # one selection per column (d < 4) / bitonic network
@pytest.mark.parametrize("n,m", [(5, 9), (64, 64), (33, 100)])
def test_shift_medians_exact_with_ties_inf_and_nan(n, m, d):
    """The op's medians are torch.median's lower medians exactly (ties, +-inf, a NaN column):
    with them as the offset, the op gives the same bits as with the empty offset."""
    g = torch.Generator().manual_seed(n * m + d)
    x = torch.randint(-3, 4, (n, d), generator=g).float()  # many ties
    y = torch.randint(-2, 3, (m, d), generator=g).float() * 0.5
    x[0, 0] = float("inf")
    y[-1, d - 1] = float("-inf")
    x[n // 2, d // 2] = float("nan")
    kind, params = IMQ().lower(d)
    op = contract.op("mmd_fwd_cpp")
    got = op(x, y, torch.empty(0), kind, params, False, True, True, "ieee")
    want = op(x, y, contract.term_shifts(kind, x, y), kind, params, False, True, True, "ieee")
    for a, b in zip(got, want):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


@needs_cpp
def test_offset_shape_is_checked():
    x, y = _points(6, 5, 3, torch.float32)
    kind, params = IMQ().lower(3)
    with pytest.raises(RuntimeError, match="offset must be"):
        contract.op("mmd_fwd_cpp")(x, y, torch.zeros(2), kind, params, True, False, False, "ieee")


@needs_cpp
def test_opcheck_with_empty_offset():
    x, y = _points(9, 7, 3, torch.float32, seed=2)
    kind, params = IMQ().lower(3)
    torch.library.opcheck(contract.op("mmd_fwd_cpp").default,
                          (x, y, torch.empty(0), kind, params, True, False, False, "ieee"))
    torch.library.opcheck(contract.op("mmd_bwd_cpp").default,
                          (torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64), x, y, torch.empty(0),
                           kind, params, True, True, True, "ieee"))


def _terms_path(x, y, kernel, estimator, backend):
    """The former mmd: the differentiable terms and one dot (the reference for mmd_value)."""
    terms = wae_fast.mmd_terms(x, y, kernel, estimator=estimator, backend=backend)
    out = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.dot(terms, torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64)).to(out)


@pytest.mark.parametrize("dtype,grads,estimator", [
    (torch.float64, "x", "unbiased"), (torch.float32, "x", "unbiased"), (torch.float32, "xy", "biased"),
    (torch.float32, "y", "unbiased"), (torch.float16, "xy", "unbiased"), (torch.bfloat16, "x", "biased")])
def test_mmd_value_matches_terms_path(mmd_backend, dtype, grads, estimator):
    """wae_fast.mmd (one eager autograd node) == dot(mmd_terms, (1, 1, -2)): same value and
    gradients (bit for bit: the same op call, exact weights), and both match the oracle."""
    name, dev = mmd_backend
    if name == "triton" and dtype in (torch.float16, torch.bfloat16):
        pytest.skip("half dtypes under the Triton interpreter: covered by test_backends")
    x0, y0 = _points(37, 29, 5, dtype, seed=11)
    x0, y0 = x0.to(dev), y0.to(dev)
    kernel = IMQ()
    outs = []
    for fn in (lambda a, b: wae_fast.mmd(a, b, kernel, estimator=estimator, backend=name),
               lambda a, b: _terms_path(a, b, kernel, estimator, name)):
        x = x0.clone().requires_grad_("x" in grads)
        y = y0.clone().requires_grad_("y" in grads)
        v = fn(x, y)
        v.backward(torch.tensor(0.75, dtype=v.dtype, device=dev))
        outs.append((v, x.grad, y.grad))
    (v1, gx1, gy1), (v2, gx2, gy2) = outs
    assert v1.dtype == v2.dtype and v1.shape == ()
    for a, b in ((v1, v2), (gx1, gx2), (gy1, gy2)):
        if a is None or b is None:
            assert a is None and b is None
        else:
            assert torch.equal(a, b)
    kind, params = kernel.lower(5)
    ref, rgx, rgy, scale = oracle.mmd_and_grads(x0.cpu(), y0.cpu(), kind, params, estimator == "unbiased",
                                               grad_out=0.75)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert abs(v1.item() - ref.item() / 1.0) <= tol * scale
    gtol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]
    for g, r in ((gx1, rgx), (gy1, rgy)):
        if g is not None:
            assert ((g.cpu().double() - r).norm() / r.norm()).item() <= gtol


def test_mmd_value_no_grad_and_double_backward(mmd_backend):
    name, dev = mmd_backend
    x, y = _points(12, 10, 3, torch.float32, seed=4)
    x, y = x.to(dev).requires_grad_(), y.to(dev)
    with torch.no_grad():
        v = wae_fast.mmd(x, y, backend=name)
    assert v.grad_fn is None
    v = wae_fast.mmd(x, y, backend=name)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(v, x, create_graph=True)


@needs_cpp
def test_mmd_value_nan_in_nan_out_and_check_finite():
    x, y = _points(20, 18, 4, torch.float32, seed=8)
    x[3, 2] = float("inf")
    x.requires_grad_()
    v = wae_fast.mmd(x, y, backend="cpp")
    v.backward()
    assert torch.isnan(v) and torch.isnan(x.grad).all()
    with pytest.raises(ValueError, match="x contains non-finite"):
        wae_fast.mmd(x, y, backend="cpp", check_finite=True)
