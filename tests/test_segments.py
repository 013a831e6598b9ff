"""Many MMDs in one call (mmd_batched, mmd_terms_batched, mmd_varlen) and weighted samples
(x_weights / y_weights), on every backend implementing the ``mmd_segments`` family, against the
dense float64 weighted oracle (tests/oracle.py, written independently of wae_fast.segment_sums).

Tolerances: values against the scale sum(terms) + terms[2] (DESIGN.md 5b), gradients against
their norm: fp64 1e-12 / 1e-10, fp32 5e-6 / 5e-5 (as tests/test_backends.py); fp16/bf16 inputs
are rounded before the oracle sees them, so only the compute (fp32) error remains.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import wae_fast
from wae_fast import contract

from . import oracle
from .segment_cases import GRAD_TOL, VAL_TOL, segment_data, segment_oracle, terms_scale

KERNELS = {"imq7": wae_fast.IMQ(), "rbf3": wae_fast.RBF(bandwidth=(0.6, 1.5, 4.0)),
           "poly3": wae_fast.Polynomial()}
X_OFF = [0, 2, 9, 40, 43, 113]      # ragged: 2, 7, 31, 3, 70 points
Y_OFF = [0, 5, 7, 19, 85, 88]       # 5, 2, 12, 66, 3 points


def _compare_grads(grads_got, grads_want, dtype, what):
    for name, a, b in zip(("x", "y", "x_weights", "y_weights"), grads_got, grads_want):
        a = a.detach().cpu().double()
        e = (a - b).norm().item()
        assert e <= GRAD_TOL[dtype] * b.norm().item() + 1e-300, f"{what}: d{name} error {e:.3g} vs {b.norm():.3g}"


@pytest.mark.parametrize("kname", ["imq7", "rbf3", "poly3"])
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_varlen_weighted_against_oracle(seg_backend, kname, estimator, dtype):
    """Ragged sets, weights with zeros over NaN padding: terms and the gradients to x, y and
    both weights (weight-0 rows: zero gradient to their coordinates)."""
    name, dev = seg_backend
    spec = KERNELS[kname]
    x, y, xw, yw = segment_data(X_OFF, Y_OFF, 5, dtype, dev, seed=len(kname) + (estimator == "biased"))
    for t in (x, y, xw, yw):
        t.requires_grad_(True)
    got = wae_fast.mmd_varlen(x, y, X_OFF, torch.tensor(Y_OFF), spec, x_weights=xw, y_weights=yw,
                              estimator=estimator, backend=name)
    assert got.shape == (5,) and torch.isfinite(got).all()
    gt = torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64) * torch.linspace(0.5, 1.5, 5, dtype=torch.float64)[:, None]
    got_w = (got.double() * torch.linspace(0.5, 1.5, 5, dtype=torch.float64).to(dev)).sum()
    gx, gy, gxw, gyw = torch.autograd.grad(got_w, (x, y, xw, yw))
    kind, params = spec.lower(5)
    want, gwant = segment_oracle(x, y, xw, yw, X_OFF, Y_OFF, kind, params, estimator == "unbiased", gt)
    mmd_want = want @ torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64)
    scale = terms_scale(want)
    assert bool(((got.cpu().double() - mmd_want).abs() <= VAL_TOL[dtype] * scale).all())
    # gradients: weight-0 rows have zero coordinate gradients; their weight gradients read the
    # (NaN) padding and are compared on the other rows only
    assert bool((gx[xw.detach() == 0] == 0).all()) and bool((gy[yw.detach() == 0] == 0).all())
    kx, ky = (xw.detach() != 0).cpu(), (yw.detach() != 0).cpu()
    _compare_grads((gx, gy, gxw[kx], gyw[ky]), (gwant[0], gwant[1], gwant[2][kx], gwant[3][ky]),
                   dtype, f"{name} {kname}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(seg_backend, dtype):
    name, dev = seg_backend
    x, y, xw, yw = segment_data([0, 9, 20], [0, 6, 19], 4, dtype, dev, seed=3)
    t = wae_fast.mmd_terms_batched(x[:18].view(2, 9, 4), y[:18].view(2, 9, 4), backend=name,
                                   x_weights=xw[:18].view(2, 9), y_weights=yw[:18].view(2, 9))
    kind, params = wae_fast.IMQ().lower(4)
    want, _ = segment_oracle(x[:18], y[:18], xw[:18], yw[:18], [0, 9, 18], [0, 9, 18], kind, params, True,
                      torch.ones(2, 3, dtype=torch.float64))
    assert t.dtype == torch.float64 and t.shape == (2, 3)
    assert bool(((t.cpu() - want).abs() <= VAL_TOL[dtype] * terms_scale(want)[:, None]).all())


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_batched_and_equal_weights_equal_plain_mmd_fp64(seg_backend, estimator):
    """Unit and equal weights give today's estimators within 4 ulp of the scale (fp64)."""
    name, dev = seg_backend
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 13, 6, generator=g, dtype=torch.float64).to(dev)
    y = torch.randn(4, 9, 6, generator=g, dtype=torch.float64).to(dev) + 0.3
    plain = torch.stack([wae_fast.mmd_terms(x[b], y[b], estimator=estimator, backend=name)
                         for b in range(4)])
    scale = terms_scale(plain.cpu())
    ulp = 4 * torch.finfo(torch.float64).eps * scale
    for xw, yw in [(None, None), (torch.ones(4, 13), None), (torch.full((4, 13), 3.0), torch.full((4, 9), 0.25))]:
        kw = {} if xw is None else {"x_weights": xw.double().to(dev)}
        if yw is not None:
            kw["y_weights"] = yw.double().to(dev)
        t = wae_fast.mmd_terms_batched(x, y, estimator=estimator, backend=name, **kw)
        assert bool(((t - plain).abs().cpu() <= ulp[:, None]).all()), (t - plain).abs().max()
        v = wae_fast.mmd_batched(x, y, estimator=estimator, backend=name, **kw)
        assert v.shape == (4,) and v.dtype == torch.float64
    for b in range(2):  # weighted plain mmd is the B = 1 case
        w = torch.full((13,), 2.0, dtype=torch.float64, device=dev)
        one = wae_fast.mmd(x[b], y[b], estimator=estimator, backend=name, x_weights=w)
        ref = plain[b] @ torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64, device=plain.device)
        assert abs(float(one - ref)) <= 3 * float(ulp[b])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_value_node_per_set_gradients(seg_backend, weighted, dtype):
    """mmd_batched's and mmd_terms_batched's eager one-node path (the value formed in its
    forward; equal sets: the parts scaled through a (B, n) view in its backward): the value the
    same bits as terms . (1, 1, -2), gradients of sum_b g_b mmd_b (a different g_b per set) and
    of sum_b g_b . terms_b (a different coefficient per set and term) to x, y and the weights
    against the oracle."""
    name, dev = seg_backend
    xo, yo = [0, 7, 14, 21], [0, 5, 10, 15]
    x, y, xw, yw = segment_data(xo, yo, 3, dtype, dev, seed=21, zero_frac=0.2 if weighted else 0.0,
                                nan_pad=weighted)
    ins = [x.view(3, 7, 3).clone().requires_grad_(True), y.view(3, 5, 3).clone().requires_grad_(True)]
    kw = {}
    if weighted:
        ins += [xw.view(3, 7).clone().requires_grad_(True), yw.view(3, 5).clone().requires_grad_(True)]
        kw = {"x_weights": ins[2], "y_weights": ins[3]}
    v = wae_fast.mmd_batched(ins[0], ins[1], backend=name, **kw)
    t = wae_fast.mmd_terms_batched(ins[0], ins[1], backend=name, **kw)
    for out in (v, t):  # one node each, not torch.library's wrapper (and dot and cast)
        assert type(out.grad_fn).__name__ == "EagerSegmentsBackward"
    assert torch.equal(v, (t @ torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64, device=dev)).to(v.dtype))
    gv = torch.tensor([1.5, -0.5, 2.0], dtype=v.dtype, device=dev)
    kind, params = wae_fast.IMQ().lower(3)
    # the value's gradients, then the terms' with a different coefficient per set and term
    g_terms = torch.tensor([[1.0, 2.0, -3.0], [0.5, -1.0, 1.0], [2.0, 0.25, 0.2]], dtype=torch.float64)
    for what, out, gt in (("value", v, gv.double().cpu()[:, None] * torch.tensor([1.0, 1.0, -2.0],
                                                                                dtype=torch.float64)),
                          ("terms", t, g_terms)):
        got = torch.autograd.grad((out * (gv if what == "value" else gt.to(dev))).sum(), ins,
                                  retain_graph=True)
        want, gw = segment_oracle(x, y, xw if weighted else None, yw if weighted else None, xo, yo,
                                  kind, params, True, gt)
        assert bool(((t.detach().cpu() - want).abs() <= VAL_TOL[dtype] * terms_scale(want)[:, None]).all())
        got = [got[0].reshape(-1, 3), got[1].reshape(-1, 3)] + [g.reshape(-1) for g in got[2:]]
        if weighted:  # the weights' gradients where the weight is not 0 (as the other tests)
            kx, ky = (xw != 0).cpu(), (yw != 0).cpu()
            # rows of weight 0 (NaN padding): no contribution
            assert bool((got[0].cpu()[~kx] == 0).all()) and bool((got[1].cpu()[~ky] == 0).all())
            got[2], got[3], gw = got[2][kx], got[3][ky], (gw[0], gw[1], gw[2][kx], gw[3][ky])
        _compare_grads(got, gw[:len(got)], dtype, f"{name} batched {what}")


@pytest.mark.parametrize("entry", ["batched", "varlen"])
def test_value_from_parts_per_set_gradients(seg_backend, entry):
    """MMD^2 whose every asked gradient is in the fused parts (cpp; the other backends take the
    backward op): the forward returns MMD^2's own parts (value_parts) and the backward scales
    them by grad_b alone, by an equal-set view (``batched``) or per-row coefficients
    (``varlen``); gradients of sum_b g_b mmd_b (a different g_b per set, one of them 0) to x and
    y against the oracle, fp64."""
    name, dev = seg_backend
    xo, yo = ([0, 6, 12, 18, 24], [0, 9, 18, 27, 36]) if entry == "batched" else ([0, 6, 13, 40, 42], [0, 9, 11, 30, 70])
    x, y, _, _ = segment_data(xo, yo, 3, torch.float64, dev, seed=31, zero_frac=0.0, nan_pad=False)
    px, py = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    if entry == "batched":
        out = wae_fast.mmd_batched(px.view(4, 6, 3), py.view(4, 9, 3), backend=name)
    else:
        out = wae_fast.mmd_varlen(px, py, xo, yo, backend=name)
    assert type(out.grad_fn).__name__ == "EagerSegmentsBackward"
    gv = torch.tensor([1.5, -0.5, 0.0, 2.0], dtype=torch.float64)
    got = torch.autograd.grad((out * gv.to(dev)).sum(), (px, py))
    kind, params = wae_fast.IMQ().lower(3)
    gt = gv[:, None] * torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64)
    _, want = segment_oracle(x, y, None, None, xo, yo, kind, params, True, gt)
    _compare_grads(got, want, torch.float64, f"{name} {entry}")
    assert bool((got[0][xo[2]:xo[3]] == 0).all())  # g_b = 0: that set's rows get 0


def test_value_output_gradient_through_the_op():
    """The op's value output (cpp, value_parts) is differentiable through the op's registered
    autograd: d value_b = d terms[b] . (1, 1, -2), so sum_b g_b value_b and sum_b g_b terms[b] .
    (1, 1, -2) give the same gradients to x, y and the weights, fp64 (alone and with the terms)."""
    xo, yo = [0, 6, 13], [0, 5, 9]
    x, y, xw, yw = segment_data(xo, yo, 3, torch.float64, "cpu", seed=41, zero_frac=0.0,
                                nan_pad=False)
    kind, params = wae_fast.IMQ().lower(3)
    fwd = contract.op("mmd_segments_fwd_cpp")
    g = torch.tensor([1.5, -0.5], dtype=torch.float64)
    w = torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64)
    grads = []
    for use in ("value", "terms", "both"):
        ins = [t.clone().requires_grad_(True) for t in (x, y, xw, yw)]
        out = fwd(ins[0], ins[1], torch.tensor(xo), torch.tensor(yo), ins[2], ins[3], torch.empty(0),
                  int(kind), [float(p) for p in params], True, True, True, True, True, "ieee", True)
        assert out[5].shape == (2,) and torch.equal(out[5], out[0] @ w)
        loss = {"value": (g * out[5]).sum(), "terms": (g * (out[0] @ w)).sum(),
                "both": (0.5 * g * out[5]).sum() + (0.5 * g * (out[0] @ w)).sum()}[use]
        grads.append(torch.autograd.grad(loss, ins))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weights_grad", [False, True])
def test_value_parts_are_the_first_minus_twice_the_second(seg_backend, dtype, weights_grad):
    """``value_parts``: each part the forward returns is MMD^2's, one per input: the terms' first
    part minus twice the second (a backend that fuses them: cpp, both with the per-set tasks'
    tiles writing the rows, gradients to the points only, and with the weights' gradients);
    the terms are the same bit for bit; the others return (0,) parts either way.  (The weights'
    parts are NaN at weight-0 rows holding NaN: their true derivative reads them.)"""
    name, dev = seg_backend
    if weights_grad:  # ragged, weight-0 rows (NaN padding): the row-sum passes
        xo, yo = [0, 5, 12, 150], [0, 4, 9, 80]
        x, y, xw, yw = segment_data(xo, yo, 3, dtype, dev, seed=12, nan_pad=True)
    else:  # small equal sets, unit weights: the rows written by the tiles (out_rows, out_add)
        xo, yo = [0, 30, 60, 90], [0, 20, 40, 60]
        x, y, _, _ = segment_data(xo, yo, 5, dtype, dev, seed=12, zero_frac=0.0, nan_pad=False)
        xw = yw = x.new_empty((0,))
    xo_t, yo_t = torch.tensor(xo, device=dev), torch.tensor(yo, device=dev)
    kind, params = wae_fast.IMQ().lower(x.shape[1])
    common = (x, y, xo_t, yo_t, xw, yw, contract.segment_shifts(kind, y, yo, yw, 3), int(kind),
              [float(p) for p in params], True, True, True, weights_grad, weights_grad, "ieee")
    two = contract.op(f"mmd_segments_fwd_{name}")(*common)
    one = contract.op(f"mmd_segments_fwd_{name}")(*common, True)
    assert torch.equal(one[0], two[0])
    # the value output: a fusing backend's MMD^2 of every set with value_parts, the same bits as
    # terms . (1, 1, -2) rounded to the value dtype; else empty
    w = torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64, device=dev)
    assert two[5].numel() == 0 and one[5].dtype == contract.segments_value_dtype(dtype)
    if name == "cpp":
        assert torch.equal(one[5], (one[0] @ w).to(one[5].dtype)), (one[5], one[0] @ w)
    else:
        assert one[5].numel() == 0
    for k, (p1, p2) in enumerate(zip(one[1:5], two[1:5])):
        if p2.numel() == 0:
            assert p1.numel() == 0
            continue
        assert p1.shape == (1,) + p2.shape[1:], (k, p1.shape, p2.shape)
        want = p2[0].double() - 2.0 * p2[1].double()
        # fp32: both rounded from fp64 sums, the pair's difference once more
        tol = dict(rtol=1e-11, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p1[0].double(), want, **tol, equal_nan=True, msg=f"{name} part {k}")


@pytest.mark.parametrize("weights_grad", [False, True])
def test_weighted_mmd_is_one_node_and_a_scalar(seg_backend, weights_grad):
    """A weighted ``mmd`` / ``mmd_terms`` is one set of the segments op without the set dimension
    (0-dim / (3,)): one autograd node (no select after it), an output that may be modified in
    place, and gradients to x, y (and the weights) against the oracle, fp64."""
    name, dev = seg_backend
    xo, yo = [0, 11], [0, 8]
    x, y, xw, yw = segment_data(xo, yo, 4, torch.float64, dev, seed=33, zero_frac=0.2, nan_pad=True)
    ins = [x.clone().requires_grad_(True), y.clone().requires_grad_(True), xw.clone(), yw.clone()]
    if weights_grad:
        ins[2].requires_grad_(True)
        ins[3].requires_grad_(True)
    kind, params = wae_fast.IMQ().lower(4)
    gt_terms = torch.tensor([[0.5, -1.5, 2.0]], dtype=torch.float64)
    for what in ("value", "terms"):
        fn = wae_fast.mmd if what == "value" else wae_fast.mmd_terms
        out = fn(ins[0], ins[1], backend=name, x_weights=ins[2], y_weights=ins[3])
        assert type(out.grad_fn).__name__ == "EagerSegmentsBackward"
        assert out.shape == (() if what == "value" else (3,))
        out += 0.0  # in place on the output: allowed (not a view made inside the node)
        gt = (1.25 * torch.tensor([[1.0, 1.0, -2.0]], dtype=torch.float64) if what == "value" else gt_terms)
        got = torch.autograd.grad((out * gt.view(out.shape).to(dev)).sum() if what == "terms" else 1.25 * out,
                                  [t for t in ins if t.requires_grad])
        want_t, want = segment_oracle(x, y, xw, yw, xo, yo, kind, params, True, gt)
        if what == "value":
            ref = want_t[0] @ torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64)
            assert abs(float(out.detach().cpu()) - float(ref)) <= VAL_TOL[torch.float64] * float(terms_scale(want_t)[0])
        got = [got[0].reshape(-1, 4), got[1].reshape(-1, 4)] + [g for g in got[2:]]
        kx, ky = (xw != 0).cpu(), (yw != 0).cpu()
        assert bool((got[0].cpu()[~kx] == 0).all()) and bool((got[1].cpu()[~ky] == 0).all())
        want = list(want)
        if weights_grad:
            got[2], got[3], want[2], want[3] = got[2][kx], got[3][ky], want[2][kx], want[3][ky]
        _compare_grads(got, want[:len(got)], torch.float64, f"{name} weighted {what}")


@pytest.mark.parametrize("chunk", [8, 2])
def test_shared_y_and_float32_batched(seg_backend, chunk, monkeypatch):
    """A 2-D y is shared by every set (its gradient sums over the sets; chunk 2: the one-launch
    backends split the 3 sets into 2 chunks of y-gradient slices); fp32 against the oracle."""
    from wae_fast import segment_sums
    monkeypatch.setattr(segment_sums, "SHARED_Y_CHUNK", chunk)
    monkeypatch.setattr(segment_sums, "_PLANS", {})
    name, dev = seg_backend
    x, y, xw, yw = segment_data([0, 17, 34, 51], [0, 23], 3, torch.float32, dev, seed=11)
    x3 = x.view(3, 17, 3).requires_grad_(True)
    yy = y.clone().requires_grad_(True)
    ywr = yw.clone().requires_grad_(True)
    t = wae_fast.mmd_terms_batched(x3, yy, backend=name, x_weights=xw.view(3, 17), y_weights=ywr)
    gt = torch.tensor([[1.0, 2.0, -3.0], [0.5, 1.0, 1.0], [2.0, -1.0, 0.2]], dtype=torch.float64)
    gx, gy, gyw = torch.autograd.grad((t * gt.to(dev)).sum(), (x3, yy, ywr))
    kind, params = wae_fast.IMQ().lower(3)
    want, gw = segment_oracle(x, y, xw, yw, [0, 17, 34, 51], [0, 23], kind, params, True, gt)
    ky = (yw != 0).cpu()
    _compare_grads((gx.reshape(-1, 3), gy, gyw[ky]), (gw[0], gw[1], gw[3][ky]), torch.float32,
                   "shared y")
    assert bool(((t.detach().cpu() - want).abs() <= 5e-6 * terms_scale(want)[:, None]).all())


def test_gradient_to_zero_weights_is_the_true_derivative(seg_backend):
    """With finite padding, the gradient to a weight equal to 0 is the derivative at 0."""
    name, dev = seg_backend
    x, y, xw, yw = segment_data([0, 8, 19], [0, 6, 13], 3, torch.float64, dev, seed=2, nan_pad=False)
    xw.requires_grad_(True)
    yw.requires_grad_(True)
    v = wae_fast.mmd_varlen(x, y, [0, 8, 19], [0, 6, 13], x_weights=xw, y_weights=yw, backend=name)
    gxw, gyw = torch.autograd.grad(v.sum(), (xw, yw))
    kind, params = wae_fast.IMQ().lower(3)
    gt = torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64).expand(2, 3)
    _, gw = segment_oracle(x, y, xw, yw, [0, 8, 19], [0, 6, 13], kind, params, True,
                    gt, drop_zero=False)
    assert torch.allclose(gxw.cpu(), gw[2], rtol=0, atol=1e-10 * gw[2].norm().item())
    assert torch.allclose(gyw.cpu(), gw[3], rtol=0, atol=1e-10 * gw[3].norm().item())


@pytest.mark.parametrize("kname", ["imq7", "poly3"])
def test_gradcheck_fp64(seg_backend, kname):
    name, dev = seg_backend
    x, y, xw, yw = segment_data([0, 4, 7], [0, 3, 8], 2, torch.float64, dev, seed=8, zero_frac=0.0,
                         nan_pad=False)
    ins = [t.requires_grad_(True) for t in (x, y, xw, yw)]

    def f(a, b, c, e):
        return wae_fast.mmd_varlen(a, b, [0, 4, 7], [0, 3, 8], KERNELS[kname], x_weights=c,
                                   y_weights=e, backend=name)

    # full Jacobians on the reference; a random projection (fast_mode) on the kernel backends,
    # whose interpreted launches are slow
    fast = name != "reference"
    assert torch.autograd.gradcheck(f, ins, fast_mode=fast)
    shared = y[:5].detach()  # a shared y, biased, batched

    def g(a, c):
        return wae_fast.mmd_batched(a[:6].view(2, 3, 2), shared, KERNELS[kname],
                                    x_weights=c[:6].view(2, 3), estimator="biased", backend=name)

    assert torch.autograd.gradcheck(g, (ins[0], ins[2]), fast_mode=fast)


def test_weight_edge_cases_give_that_sets_nan(seg_backend):
    """A negative or non-finite weight, or a zero denominator: that set is NaN, the others are
    not; with check_finite=True a ValueError names the argument and the set."""
    name, dev = seg_backend
    x, y, xw, yw = segment_data([0, 6, 12, 18], [0, 5, 10, 15], 3, torch.float32, dev, seed=4,
                         zero_frac=0.0)
    xb, yb = x.view(3, 6, 3), y.view(3, 5, 3)
    cases = [("x_weights", 1, -0.5, "unbiased"), ("y_weights", 2, float("inf"), "unbiased"),
             ("x_weights", 0, float("nan"), "biased")]
    for arg, b, val, est in cases:
        w = (xw if arg == "x_weights" else yw).clone().view(3, -1)
        w[b, 1] = val
        kw = {arg: w}
        out = wae_fast.mmd_batched(xb, yb, estimator=est, backend=name, **kw)
        assert torch.isnan(out[b]) and torch.isfinite(out[[i for i in range(3) if i != b]]).all()
        with pytest.raises(ValueError, match=rf"{arg}: set {b} has a negative or non-finite weight"):
            wae_fast.mmd_batched(xb, yb, estimator=est, backend=name, check_finite=True, **kw)
    # zero denominators: one positive weight (unbiased), all zero (biased)
    for est, keep in (("unbiased", 1), ("biased", 0)):
        w = xw.clone().view(3, 6)
        w[1] = 0.0
        w[1, :keep] = 1.0
        out = wae_fast.mmd_batched(xb, yb, estimator=est, backend=name, x_weights=w)
        assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
        with pytest.raises(ValueError, match=r"x_weights: set 1's weights leave a zero denominator"):
            wae_fast.mmd_batched(xb, yb, estimator=est, backend=name, x_weights=w, check_finite=True)
    # a non-finite coordinate of a weighted row: that set NaN, ValueError under check_finite
    xn = xb.clone()
    xn[2, 3, 0] = float("inf")
    out = wae_fast.mmd_batched(xn, yb, backend=name, x_weights=xw.view(3, 6))
    assert torch.isnan(out[2]) and torch.isfinite(out[:2]).all()
    with pytest.raises(ValueError, match=r"x: set 2 contains non-finite"):
        wae_fast.mmd_batched(xn, yb, backend=name, x_weights=xw.view(3, 6), check_finite=True)


def test_opcheck_and_compile(seg_backend):
    name, dev = seg_backend
    x, y, xw, yw = segment_data([0, 5, 12], [0, 4, 9], 3, torch.float32, dev, seed=6, zero_frac=0.0,
                         nan_pad=False)
    op = contract.op(f"mmd_segments_fwd_{name}").default
    xo = torch.tensor([0, 5, 12], device=dev)
    yo = torch.tensor([0, 4, 9], device=dev)
    shifts = torch.zeros(2, 3, device=dev)
    # the flags ask a fusing backend (cpp) for the gradient parts (none when y is shared), as
    # the terms' or (value_parts) as MMD^2's
    for (wx, wy), flags, yo_, value_parts in itertools.product(
            [(xw, yw), (x.new_empty((0,)), x.new_empty((0,)))],
            [(False,) * 4, (True,) * 4, (True, False, False, True)],
            [yo, torch.tensor([0, 9], device=dev)], [False, True]):
        if value_parts and not any(flags):
            continue
        args = (x.clone().requires_grad_(True), y.clone().requires_grad_(True), xo, yo_,
                wx.clone().requires_grad_(wx.numel() > 0), wy.clone().requires_grad_(wy.numel() > 0),
                shifts, 0, [1.0, 3.0], True, *flags, "ieee") + ((True,) if value_parts else ())
        torch.library.opcheck(op, args)
    xr = x.clone().requires_grad_(True)

    def loss(a, b, c):
        return (wae_fast.mmd_varlen(a, b, [0, 5, 12], [0, 4, 9], x_weights=c, backend=name).sum()
                + wae_fast.mmd_batched(a[:10].view(2, 5, 3), b[:8].view(2, 4, 3), backend=name).sum()
                + wae_fast.mmd(a, b, y_weights=c[:9], backend=name))

    got = torch.compile(loss, fullgraph=True, backend="aot_eager")(xr, y, xw)
    (g1,) = torch.autograd.grad(got, xr)
    want = loss(xr, y, xw)
    (g2,) = torch.autograd.grad(want, xr)
    assert torch.allclose(got, want, rtol=0, atol=1e-6) and torch.allclose(g1, g2, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype,big", [(torch.float64, 1e8), (torch.float32, 1e14)])
def test_dominant_weight_unbiased_denominator(seg_backend, dtype, big):
    """One weight dominates its set: sum_{i != j} w_i w_j must not be formed as
    (sum w)^2 - sum w^2 (it cancels: relative error ~1e-9 at 1e8 in fp64, ~1e-3 at 1e14 in fp32),
    terms and gradients to x and the weights against the exact oracle."""
    name, dev = seg_backend
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 9, 3, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(2, 7, 3, generator=g, dtype=torch.float64).to(dtype)
    xw = torch.ones(2, 9, dtype=dtype)
    xw[0, 0] = big      # the first row of set 0
    xw[1, 4] = big      # a middle row of set 1
    yw = torch.ones(2, 7, dtype=dtype)
    yw[1, 6] = big      # the last row of set 1
    x, y, xw, yw = [t.to(dev).requires_grad_(True) for t in (x, y, xw, yw)]
    t = wae_fast.mmd_terms_batched(x, y, backend=name, x_weights=xw, y_weights=yw)
    gt = torch.tensor([[1.0, 2.0, -2.0], [0.5, 1.0, -1.0]], dtype=torch.float64)
    grads = torch.autograd.grad((t * gt.to(dev)).sum(), (x, y, xw, yw))
    kind, params = wae_fast.IMQ().lower(3)
    want, gw = segment_oracle(x.reshape(18, 3), y.reshape(14, 3), xw.reshape(-1), yw.reshape(-1),
                       [0, 9, 18], [0, 7, 14], kind, params, True, gt)
    err = (t.detach().cpu() - want).abs().max().item()
    assert err <= VAL_TOL[dtype] * terms_scale(want).min().item(), f"{name}: terms error {err:.3g}"
    _compare_grads([a.reshape(-1, 3) if a.dim() == 3 else a.reshape(-1) for a in grads], gw, dtype,
                   f"{name} dominant weight")


def test_check_finite_accepts_a_dominant_weight():
    """check_finite's zero-denominator check forms sum_{i != j} w_i w_j as the backends do: with
    weights (1e20, 1, 1) the denominator is 2e20 + 2, while (sum w)^2 - sum w^2 cancels to 0 in
    fp64 and raised a ValueError for a valid set."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 2, generator=g, dtype=torch.float64)
    y = torch.randn(1, 4, 2, generator=g, dtype=torch.float64)
    xw = torch.tensor([[1e20, 1.0, 1.0]], dtype=torch.float64)
    got = wae_fast.mmd_batched(x, y, x_weights=xw, backend="reference", check_finite=True)
    want = wae_fast.mmd_batched(x, y, x_weights=xw, backend="reference")
    assert torch.isfinite(got).all() and torch.equal(got, want)
    with pytest.raises(ValueError, match="x_weights: set 0"):  # one positive weight: no pair
        wae_fast.mmd_batched(x, y, x_weights=torch.tensor([[1e20, 0.0, 0.0]], dtype=torch.float64),
                             backend="reference", check_finite=True)


def test_one_launch_schedule_triton(monkeypatch):
    """Triton: B ragged sets with all three terms, weighted, take ONE main launch + one finalize
    forward and ONE launch backward (x, y and both weights' gradients), whatever B."""
    from wae_fast.dispatch import unavailable_reason
    reason = unavailable_reason("triton", "cpu", "mmd_segments")
    if reason:
        pytest.skip(reason)
    from wae_fast.kernels import segments as seg
    calls = []
    cls = type(seg._seg_fwd_kernel)
    run = cls.run

    def counting_run(self, *args, **kwargs):  # every Triton launch of this kernel class
        calls.append(getattr(getattr(self, "fn", self), "__name__", str(self)))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(cls, "run", counting_run)
    for xo, yo in (([0, 3, 5, 9, 12], [0, 4, 6, 8, 11]),):
        x, y, xw, yw = segment_data(xo, yo, 2, torch.float32, "cpu", seed=3, nan_pad=False)
        for tt in (x, y, xw, yw):
            tt.requires_grad_(True)
        calls.clear()
        out = wae_fast.mmd_varlen(x, y, xo, yo, x_weights=xw, y_weights=yw, backend="triton")
        assert sorted(calls) == ["_seg_finalize_kernel", "_seg_fwd_kernel"], calls
        calls.clear()
        out.sum().backward()
        assert calls == ["_seg_bwd_kernel"], calls
    # a shared y: the same launches, the y rows read in place
    x, y, xw, yw = segment_data([0, 6, 12, 18], [0, 9], 2, torch.float32, "cpu", seed=4, nan_pad=False)
    x.requires_grad_(True)
    y.requires_grad_(True)
    calls.clear()
    out = wae_fast.mmd_batched(x.view(3, 6, 2), y, backend="triton")
    assert sorted(calls) == ["_seg_finalize_kernel", "_seg_fwd_kernel"], calls
    calls.clear()
    out.sum().backward()
    assert calls == ["_seg_bwd_kernel"], calls


# Set sizes around the row blocks of the one-launch backends (Triton: 64 interpreted, 32 compiled;
# CUDA / cuda_emu: 64): 1, 2, BLOCK - 1, BLOCK, BLOCK + 1 and 2 BLOCK + 3 for both blocks.
SYM_SIZES = [1, 2, 31, 32, 33, 63, 64, 65, 67, 131]


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_symmetric_self_tiles_against_oracle(seg_backend, estimator, dtype):
    """The forward's self terms (xx, yy) from the upper triangle only (one-launch backends: a
    row stripe sweeps the columns from its first row, pairs above the diagonal counted twice,
    on it once or not at all, below it not at all): every term of sets whose sizes straddle the
    row blocks, unweighted and weighted with zeros over NaN padding (the zeros include the
    first row of a stripe and the last row of a set), own and shared y, against the oracle."""
    name, dev = seg_backend
    unbiased = estimator == "unbiased"
    xs = [3 if (n == 1 and unbiased) else n for n in SYM_SIZES]  # the U-statistic needs 2 points
    xo = [0] + list(itertools.accumulate(xs))
    ys = xs[::-1]
    ys[-2:] = ys[-1], ys[-2]  # (segment_data keeps the first two weights of a set positive: not last)
    yo = [0] + list(itertools.accumulate(ys))
    x, y, xw, yw = segment_data(xo, yo, 3, dtype, dev, seed=21 + unbiased)
    big_x, big_y = xo[-2], yo[0]  # the first rows of the 131-point sets
    for w, p, r0 in ((xw, x, big_x), (yw, y, big_y)):
        zero = torch.tensor([r0 + 32, r0 + 64, r0 + 65, r0 + 130], device=dev)
        w[zero] = 0.0
        p[zero] = float("nan")
    kind, params = wae_fast.IMQ().lower(3)
    shifts = torch.zeros(len(xs), 3, dtype=dtype, device=dev)
    empty = x.new_empty((0,))
    fwd = contract.op(f"mmd_segments_fwd_{name}")
    cases = [(xo, x, y, yo, xw, yw), (xo, x.nan_to_num(0.5), y.nan_to_num(-0.5), yo, empty, empty),
             # a y (the 131-point set) shared by the first three sets of x
             (xo[:4], x[:xo[3]], y[:yo[1]], yo[:2], xw[:xo[3]], yw[:yo[1]])]
    for cxo, cx, cy, cyo, cxw, cyw in cases:
        nsets = len(cxo) - 1
        got = fwd(cx, cy, torch.tensor(cxo, device=dev), torch.tensor(cyo, device=dev), cxw, cyw,
                  shifts[:nsets], int(kind), [float(q) for q in params], unbiased, False, False,
                  False, False, "ieee")[0].cpu()
        yr = [(cyo[0], cyo[1]) if len(cyo) == 2 else (cyo[b], cyo[b + 1]) for b in range(nsets)]
        want = torch.stack([oracle.weighted_mmd_terms(
            cx[cxo[b]:cxo[b + 1]].cpu(), cy[yr[b][0]:yr[b][1]].cpu(), kind, params, unbiased,
            cxw[cxo[b]:cxo[b + 1]].cpu() if cxw.numel() else None,
            cyw[yr[b][0]:yr[b][1]].cpu() if cyw.numel() else None) for b in range(nsets)])
        err = (got - want).abs() / terms_scale(want)[:, None]
        assert bool((err <= VAL_TOL[dtype]).all()), f"{name} {estimator}: term errors {err}"


@pytest.mark.cuda_emu
def test_one_call_schedule_cuda_emu(monkeypatch):
    """cuda_emu: one extension call forward (its launcher makes one main launch + one finalize,
    segments_kernels.cu seg_fwd_impl) and one backward (one launch); the emulator has no launch
    counter yet, so the launches inside each call are not counted here."""
    from wae_fast.dispatch import unavailable_reason
    reason = unavailable_reason("cuda_emu", "cpu", "mmd_segments")
    if reason:
        pytest.skip(reason)
    from wae_fast import build
    ext = build.ensure("cuda_emu")
    calls = []
    for fn in ("seg_fwd", "seg_bwd"):
        orig = getattr(ext, fn)
        monkeypatch.setattr(ext, fn, lambda *a, _f=orig, _n=fn: (calls.append(_n), _f(*a))[1])
    x, y, xw, yw = segment_data(X_OFF, Y_OFF, 4, torch.float32, "cpu", seed=3, nan_pad=False)
    for tt in (x, y, xw, yw):
        tt.requires_grad_(True)
    out = wae_fast.mmd_varlen(x, y, X_OFF, Y_OFF, x_weights=xw, y_weights=yw, backend="cuda_emu")
    out.sum().backward()
    assert calls == ["seg_fwd", "seg_bwd"], calls


# ---------------------------------------------------------------------------------------------
# validation (backend independent)


def test_mmd_and_mmdloss_still_refuse_3d_and_take_weights():
    x, y = torch.randn(2, 5, 3), torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="x must be 2-D"):
        wae_fast.mmd(x, y)
    with pytest.raises(ValueError, match="x must be 2-D"):
        wae_fast.MMDLoss()(x, y)
    loss = wae_fast.MMDLoss(backend="reference")
    w = torch.rand(5) + 0.1
    a = loss(x[0], y[0], x_weights=w)
    b = wae_fast.mmd(x[0], y[0], backend="reference", x_weights=w)
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.dim() == 0


def test_argument_errors_name_argument_and_set():
    x, y = torch.randn(3, 5, 2), torch.randn(3, 4, 2)
    bad = [
        (lambda: wae_fast.mmd_batched(x, torch.randn(2, 4, 2)), "y has B=2 sets but x has B=3"),
        (lambda: wae_fast.mmd_batched(x[0], y), "x must be 3-D"),
        (lambda: wae_fast.mmd_batched(x, y, x_weights=torch.ones(3, 4)), r"x_weights must have shape \(3, 5\)"),
        (lambda: wae_fast.mmd_batched(x, y[0], y_weights=torch.ones(3, 4)), r"y_weights must have shape \(4,\)"),
        (lambda: wae_fast.mmd_batched(x, torch.randn(3, 4, 3)), "y has d=3 features but x has d=2"),
        (lambda: wae_fast.mmd_batched(x[:, :1], y), "x: set 0 has 1 point"),
        (lambda: wae_fast.mmd_varlen(x[0], y[0], [1, 5], [0, 4]), "x_offsets must start at 0"),
        (lambda: wae_fast.mmd_varlen(x[0], y[0], [0, 3, 2, 5], [0, 1, 2, 4]), "x_offsets decreases at set 1"),
        (lambda: wae_fast.mmd_varlen(x[0], y[0], [0, 4], [0, 4]), "x_offsets must end at the number of rows 5"),
        (lambda: wae_fast.mmd_varlen(x[0], y[0], [0, 2, 5], [0, 4]), "y_offsets has B=1 sets but x_offsets has B=2"),
        (lambda: wae_fast.mmd_varlen(x[0], y[0], torch.tensor([0, 5], dtype=torch.int32), [0, 4]), "x_offsets must be int64"),
        (lambda: wae_fast.mmd_varlen(x[0], y[0], [0, 2, 5], [0, 3, 4]), "y: set 1 has 1 point"),
        (lambda: wae_fast.mmd_varlen(x[0], y[0], [0, 2, 2, 5], [0, 1, 2, 4], estimator="biased"), "x: set 1 has 0 point"),
        (lambda: wae_fast.mmd_varlen(x[0], y[0], [0], [0, 4]), "x_offsets must have B \\+ 1 >= 2"),
        (lambda: wae_fast.mmd(x[0], y[0], x_weights=torch.ones(5, dtype=torch.int64)), "x_weights has unsupported dtype"),
        (lambda: wae_fast.mmd(x[0], y[0], y_weights=torch.ones(5)), r"y_weights must have shape \(4,\)"),
    ]
    for fn, msg in bad:
        with pytest.raises((ValueError, TypeError), match=msg):
            fn()


def test_auto_routes_to_a_backend_that_implements_the_family(monkeypatch):
    """"auto" never picks a backend without the family; naming one raises, naming the limit."""
    import dataclasses

    from wae_fast import dispatch
    name = dispatch.resolve_backend("auto", "cpu", request=dispatch.Request("mmd_segments"))
    assert "mmd_segments" in dispatch.BACKEND_TABLE[name].caps.families
    entry = dispatch.BACKEND_TABLE[name]
    fams = tuple(f for f in entry.caps.families if f != "mmd_segments")
    monkeypatch.setitem(dispatch.BACKEND_TABLE, name, dataclasses.replace(
        entry, caps=dataclasses.replace(entry.caps, families=fams)))
    dispatch.clear_selection_cache()
    other = dispatch.resolve_backend("auto", "cpu", request=dispatch.Request("mmd_segments"))
    assert other != name and "mmd_segments" in dispatch.BACKEND_TABLE[other].caps.families
    with pytest.raises(ValueError, match="does not implement the mmd_segments op family"):
        wae_fast.mmd_batched(torch.randn(2, 3, 2), torch.randn(2, 3, 2), backend=name)
    dispatch.clear_selection_cache()


def test_bench_segments_tiny_runs(capsys):
    """The benchmark script's smoke run (tiny shapes, one rep) prints every row."""
    from benchmarks import bench_segments

    bench_segments.main(["--tiny", "--reps", "1"])
    out = capsys.readouterr().out
    assert out.count("| batched") == 16 and out.count("| ragged") == 12 and out.count("| single") == 4


def test_bench_segments_ratio_tiny_runs(capsys):
    """The interleaved per-pair ratio script runs and prints a positive ratio."""
    from benchmarks import bench_segments_ratio
    r = bench_segments_ratio.main(["--tiny", "--rounds", "1", "--grad", "--d", "3"])
    assert r > 0 and "per-pair ratio" in capsys.readouterr().out


def test_bench_segments_split_tiny_runs(capsys):
    """The time-split script's smoke run (tiny shapes, one rep) prints one row per d."""
    from benchmarks import bench_segments_split

    threads = torch.get_num_threads()
    bench_segments_split.main(["--tiny", "--reps", "1", "--single-reps", "1", "--d", "3", "5"])
    assert torch.get_num_threads() == threads
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| 3 |") or r.startswith("| 5 |")]
    assert len(rows) == 2 and all(r.count(" ms") == 6 and r.count("x |") == 3 for r in rows)


@pytest.mark.parametrize("shared", [False, True])
def test_fused_parts_are_the_backward_per_term(seg_backend, shared):
    """The forward's gradient parts (a backend that fuses them: cpp) are the backward op's
    gradients of each term alone, weight-0 rows included; the others return (0,) parts, and
    a y shared by B > 1 sets never has parts (the backward sums its cross term over the sets)."""
    name, dev = seg_backend
    xo, yo = [0, 5, 12, 150], ([0, 9] if shared else [0, 4, 9, 80])
    x, y, xw, yw = segment_data(xo, yo, 3, torch.float64, dev, seed=11, nan_pad=False)
    xo_t, yo_t = torch.tensor(xo, device=dev), torch.tensor(yo, device=dev)
    shifts = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(dev)
    kind, params = wae_fast.IMQ().lower(3)
    common = (x, y, xo_t, yo_t, xw, yw, shifts, int(kind), [float(p) for p in params], True)
    out = contract.op(f"mmd_segments_fwd_{name}")(*common, True, True, True, True, "ieee")
    fused = contract.segments_fused_flags(name, xo_t, yo_t, xw, yw, True, True, True, True)
    if name == "cpp":
        assert fused == (True, not shared, True, not shared)
    for k, (flag, part) in enumerate(zip(fused, out[1:])):
        if not flag:
            assert part.numel() == 0
            continue
        for j, t in enumerate((0, 2) if k % 2 == 0 else (1, 2)):
            gt = torch.zeros(3, 3, dtype=torch.float64, device=dev)
            gt[:, t] = 1.0
            flags = [False] * 4
            flags[k] = True
            want = contract.op(f"mmd_segments_bwd_{name}")(gt, out[0], *common, *flags, "ieee")[k]
            torch.testing.assert_close(part[j], want, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("shared", [False, True])
def test_cpp_training_step_runs_the_tiles_once(monkeypatch, shared):
    """cpp fuses every gradient into the forward: the backward op (which recomputes the tiles)
    is not called, except for a y shared by B > 1 sets (its cross term sums over the sets)."""
    pytest.importorskip("wae_fast.cpp_backend")
    if wae_fast.which_backend(torch.zeros(1), "cpp", family="mmd_segments") != "cpp":
        pytest.skip("cpp backend unavailable")
    x, y, xw, yw = segment_data([0, 5, 70], [0, 9] if shared else [0, 4, 80], 3, torch.float64, "cpu",
                         seed=4, nan_pad=False)
    x, y, xw, yw = (t.requires_grad_(True) for t in (x, y, xw, yw))
    calls = []
    real = contract.op
    monkeypatch.setattr(contract, "op", lambda name: calls.append(name) or real(name))
    out = wae_fast.mmd_varlen(x, y, [0, 5, 70], None if shared else [0, 4, 80], backend="cpp",
                              x_weights=xw, y_weights=yw)
    grads = torch.autograd.grad(out.sum(), (x, y, xw, yw))
    assert all(torch.isfinite(g).all() for g in grads)
    assert ("mmd_segments_bwd_cpp" in calls) == shared, calls


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("kname", ["imq", "poly"])
def test_cpp_empty_shifts_are_the_glue_shifts(shared, kname):
    """cpp declares computes_shifts: given empty shifts it forms contract.segment_shifts itself
    (per-set means of the y rows with non-zero weight; weight-0 rows hold NaN and are not read)."""
    if wae_fast.which_backend(torch.zeros(1), "cpp", family="mmd_segments") != "cpp":
        pytest.skip("cpp backend unavailable")
    xo, yo = [0, 5, 70], ([0, 9] if shared else [0, 4, 80])
    x, y, xw, yw = segment_data(xo, yo, 3, torch.float64, "cpu", seed=8)  # NaN on weight-0 rows
    y = y + 1e4  # far from the origin: a wrong shift shows in fp64 rounding, and a NaN one as NaN
    kind, params = (wae_fast.IMQ() if kname == "imq" else wae_fast.Polynomial()).lower(3)
    xo_t, yo_t = torch.tensor(xo), torch.tensor(yo)
    glue = contract.segment_shifts(kind, y, yo, yw, 2)
    outs = []
    for sh in (glue, torch.empty(0, dtype=torch.float64)):
        args = (x, y, xo_t, yo_t, xw, yw, sh, int(kind), [float(p) for p in params], True)
        t = contract.op("mmd_segments_fwd_cpp")(*args, False, False, False, False, "ieee")[0]
        gt = torch.tensor([[1.0, 0.5, -2.0], [0.3, -1.0, 2.0]], dtype=torch.float64)
        outs.append((t,) + contract.op("mmd_segments_bwd_cpp")(gt, t, *args, True, True, True, True, "ieee"))
    for a, b in zip(*outs):
        assert torch.isfinite(a[a == a]).all() and torch.isfinite(b).all() == torch.isfinite(a).all()
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("grads", ["none", "points", "weights"])
@pytest.mark.parametrize("sizes", ["one_block", "many_sets"])
def test_cpp_empty_shifts_in_the_set_tasks(grads, sizes):
    """The forward's one task per set computes each set's shift itself, right before packing it
    (empty shifts, a y per set): the terms and fused parts equal those given the glue's shifts,
    in the passes with one task per set (sets of <= 64 points, or >= 16 sets of <= 8 blocks;
    without gradients, or with the points') and in the planned passes (the weights' gradients)."""
    if wae_fast.which_backend(torch.zeros(1), "cpp", family="mmd_segments") != "cpp":
        pytest.skip("cpp backend unavailable")
    if sizes == "one_block":
        xo, yo = [0, 5, 69, 100], [0, 64, 70, 103]
    else:
        xo = list(itertools.accumulate([0] + [3 + (37 * b) % 140 for b in range(17)]))
        yo = list(itertools.accumulate([0] + [2 + (53 * b) % 150 for b in range(17)]))
    nsets = len(xo) - 1
    x, y, xw, yw = segment_data(xo, yo, 5, torch.float32, "cpu", seed=31, nan_pad=False)
    y = y + 300.0  # far from the origin: an unshifted fp32 set loses its digits, a NaN shift is NaN
    x = x + 300.0
    kind, params = wae_fast.IMQ().lower(5)
    xo_t, yo_t = torch.tensor(xo), torch.tensor(yo)
    flags = {"none": (False,) * 4, "points": (True, True, False, False), "weights": (True,) * 4}[grads]
    glue = contract.segment_shifts(kind, y, yo, yw, nsets)
    outs = []
    for sh in (glue, torch.empty(0)):
        args = (x, y, xo_t, yo_t, xw, yw, sh, int(kind), [float(p) for p in params], True)
        outs.append(contract.op("mmd_segments_fwd_cpp")(*args, *flags, "ieee"))
    for k, (a, b) in enumerate(zip(*(o[:5] for o in outs))):
        assert a.shape == b.shape and (a.numel() > 0) == (k == 0 or flags[k - 1]), k
        if a.numel() == 0:
            continue
        assert torch.isfinite(a).all() and torch.isfinite(b).all(), k
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


@pytest.mark.parametrize("where", ["x", "y"])
def test_non_finite_point_gradients_stay_in_its_set(seg_backend, where):
    """A NaN coordinate (weight != 0) in set 1: that set's value and every gradient row paired
    with the point are NaN (all of set 1's rows: each is paired with it); the other sets'
    values and gradients are finite and those of the clean data (fused parts or backward op)."""
    name, dev = seg_backend
    xo, yo = [0, 6, 75, 80], [0, 5, 12, 90]
    x, y, xw, yw = segment_data(xo, yo, 3, torch.float64, dev, seed=12, zero_frac=0.0, nan_pad=False)

    def run(px, py):
        px, py, w = px.clone().requires_grad_(True), py.clone().requires_grad_(True), xw.clone().requires_grad_(True)
        out = wae_fast.mmd_varlen(px, py, xo, yo, backend=name, x_weights=w)
        return (out,) + torch.autograd.grad(out.sum(), (px, py, w))

    clean = run(x, y)
    xn, yn = x.clone(), y.clone()
    (xn if where == "x" else yn)[(xo if where == "x" else yo)[1] + 3, 1] = float("nan")
    got = run(xn, yn)
    assert torch.isnan(got[0][1]) and torch.isfinite(got[0][[0, 2]]).all()
    torch.testing.assert_close(got[0][[0, 2]], clean[0][[0, 2]], rtol=1e-12, atol=1e-14)
    for g, gc, offs in ((got[1], clean[1], xo), (got[2], clean[2], yo), (got[3], clean[3], xo)):
        inside = torch.zeros(g.shape[0], dtype=torch.bool, device=g.device)
        inside[offs[1]:offs[2]] = True
        assert torch.isnan(g[inside]).flatten(1).all(1).all() if g.dim() > 1 else torch.isnan(g[inside]).all()
        torch.testing.assert_close(g[~inside], gc[~inside], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("entry", ["mmd_batched", "mmd_terms"])
def test_backward_fills_no_zeros_for_the_parts(entry):
    """The forward ops' gradient parts are outputs no loss uses: their backward gets None, not a
    zero tensor of their size each (at B = 256 sets of 64 points, d = 64, 8 MB filled per call)."""
    if wae_fast.which_backend(torch.zeros(1), "cpp", family="mmd_segments") != "cpp":
        pytest.skip("cpp backend unavailable")
    g = torch.Generator().manual_seed(3)
    if entry == "mmd_batched":
        x, y = torch.randn(4, 16, 3, generator=g), torch.randn(4, 16, 3, generator=g)
        fn = wae_fast.mmd_batched
    else:
        x, y = torch.randn(16, 3, generator=g), torch.randn(16, 3, generator=g)
        fn = wae_fast.mmd_terms
    x.requires_grad_(True)
    y.requires_grad_(True)
    loss = fn(x, y, backend="cpp").sum()
    with torch.profiler.profile(record_shapes=True) as prof:
        loss.backward()
    filled = [e for e in prof.events() if e.name in ("aten::fill_", "aten::zero_", "aten::zeros")]
    sizes = [math.prod(e.input_shapes[0]) if e.input_shapes and e.input_shapes[0] else 0 for e in filled]
    assert all(n < 2 * x.numel() for n in sizes), sizes  # parts: (2, rows, d); sum(0)'s fill: rows d
    assert x.grad is not None and torch.isfinite(x.grad).all() and y.grad is not None
