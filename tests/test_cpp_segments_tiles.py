"""The cpp backend's mmd_segments on the single-call tile engine (csrc/cpu/segments_cpu.cpp):
sets of several 64-point tiles (the rounds that give race-free gradients on symmetric and cross
tiles), a y shared by every set with multi-tile sets, weight-0 rows over NaN padding, on every
tile-kernel variant this machine runs, against the float64 oracle; results independent of the
thread count; the unbiased weighted denominator when one weight dominates."""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch

import wae_fast
from wae_fast import contract
from wae_fast.dispatch import unavailable_reason

from . import oracle
from .segment_cases import GRAD_TOL, VAL_TOL, segment_data, segment_oracle, terms_scale

REASON = unavailable_reason("cpp", "cpu")
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"cpp backend unavailable: {REASON}")

ISAS = ["baseline", "avx2", "avx512"]
X_OFF = [0, 2, 150, 281, 345, 475]      # 2, 148, 131, 64, 130 points: up to 3 row blocks
Y_OFF = [0, 70, 72, 262, 267, 395]      # 70, 2, 190, 5, 128


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    runs = wae_fast.cpp_backend.extension().isas()
    if request.param not in runs:
        pytest.skip(f"this CPU/OS runs {runs}, not {request.param}")
    monkeypatch.setenv("WAE_FAST_CPU_ISA", request.param)
    return request.param


def _run(x, y, xo, yo, xw, yw, kname, unbiased, d):
    spec = {"imq": wae_fast.IMQ(), "rbf": wae_fast.RBF(bandwidth=(0.6, 1.5, 4.0)),
            "poly": wae_fast.Polynomial()}[kname]
    kind, params = spec.lower(d)
    wae_fast.which_backend("cpu", "cpp", family="mmd_segments")  # the ops are registered
    return contract.mmd_segments("cpp", x, y, xo, yo, xw, yw, kind, params, unbiased), kind, params


@pytest.mark.parametrize("kname,unbiased,dtype,shared", [
    ("imq", True, torch.float64, False), ("rbf", False, torch.float64, False),
    ("poly", True, torch.float64, False), ("imq", True, torch.float32, False),
    ("imq", True, torch.float64, True), ("rbf", False, torch.float32, True)])
def test_multi_tile_sets_against_oracle(isa, kname, unbiased, dtype, shared):
    yo = [0, 200] if shared else Y_OFF
    x, y, xw, yw = segment_data(X_OFF, yo, 5, dtype, "cpu", seed=7 + shared)
    ins = [t.requires_grad_(True) for t in (x, y, xw, yw)]
    t, kind, params = _run(*ins[:2], X_OFF, yo, *ins[2:], kname, unbiased, 5)
    gt = torch.linspace(-1.0, 2.0, 3 * (len(X_OFF) - 1), dtype=torch.float64).view(-1, 3)
    got = torch.autograd.grad((t * gt).sum(), ins)
    want, gw = segment_oracle(x, y, xw, yw, X_OFF, yo, kind, params, unbiased, gt)
    assert bool(((t.detach() - want).abs() <= VAL_TOL[dtype] * terms_scale(want)[:, None]).all())
    kx, ky = xw.detach() != 0, yw.detach() != 0
    assert bool((got[0][~kx] == 0).all()) and bool((got[1][~ky] == 0).all())
    for a, b, name in ((got[0], gw[0], "x"), (got[1], gw[1], "y"), (got[2][kx], gw[2][kx], "xw"),
                       (got[3][ky], gw[3][ky], "yw")):
        e = (a.double() - b).norm().item()
        assert e <= GRAD_TOL[dtype] * b.norm().item(), f"{isa} d{name}: {e:.3g} vs {b.norm():.3g}"


def test_results_do_not_depend_on_the_thread_count():
    g = torch.Generator().manual_seed(3)
    xo, yo = [0, 40, 300, 310], [0, 200, 210, 330]
    x = torch.randn(310, 7, generator=g, requires_grad=True)
    y = torch.randn(330, 7, generator=g, requires_grad=True)
    xw = (torch.rand(310, generator=g) + 0.2).requires_grad_(True)
    yw = (torch.rand(330, generator=g) + 0.2).requires_grad_(True)
    old = torch.get_num_threads()
    res = []
    try:
        for th in (1, 2):
            torch.set_num_threads(th)
            t, _, _ = _run(x, y, xo, yo, xw, yw, "imq", True, 7)
            res.append((t, *torch.autograd.grad((t * torch.tensor([1.0, 2.0, -3.0])).sum(), (x, y, xw, yw))))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(a, b) for a, b in zip(*res))


def test_unbiased_denominator_with_one_dominant_weight():
    """sum_{i != j} w_i w_j without the cancellation of (sum w)^2 - sum w^2: one weight 1e12."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64)
    w = torch.tensor([1e12, 1.0, 0.5, 2.0, 1.5], dtype=torch.float64)
    t, kind, params = _run(x, y, [0, 5], [0, 4], w, y.new_empty((0,)), "imq", True, 3)
    k = oracle.kernel_matrix(x, x, kind, params)  # translation invariant: no shift needed
    off = ~torch.eye(5, dtype=torch.bool)
    num = float((w[:, None] * w[None, :] * k)[off].sum())
    ws = [Fraction(v) for v in w.tolist()]
    exact = float(sum(a * b for i, a in enumerate(ws) for j, b in enumerate(ws) if i != j))
    cancel = float(w.sum() ** 2 - (w ** 2).sum())
    assert abs(float(t[0, 0]) - num / exact) <= 1e-12 * abs(num / exact)
    assert abs(num / cancel - num / exact) > 1e-9 * abs(num / exact)  # what the naive form loses


# sets of 2 to 70 points: diagonal tiles with 1 to 5 lane blocks of every ISA, partial blocks
ROT_X_OFF = [0, 2, 19, 36, 100, 170, 177]   # 2, 17, 17, 64, 70, 7 points
ROT_Y_OFF = [0, 9, 12, 45, 78, 81, 145]     # 9, 3, 33, 33, 3, 64


def _cum(sizes):
    out = [0]
    for n in sizes:
        out.append(out[-1] + n)
    return out


# one task per set (segments_cpu.cpp fuse_values): every set within one 64-row block ("one"), or
# at least 16 sets within 8 blocks ("many": up to 5 blocks); the planned passes otherwise
# ("small": a 70-point set among 6, "multi": up to 3 blocks among 5, "large": 5 blocks)
OFFSETS = {"one": (_cum([2, 17, 17, 64, 7, 33]), _cum([9, 3, 33, 33, 3, 64])),
           "many": (_cum([2, 70, 17, 130, 5, 64, 300, 9, 40, 65, 3, 128, 20, 33, 190, 12, 2]),
                    _cum([64, 3, 150, 2, 290, 17, 40, 129, 8, 64, 77, 5, 30, 2, 66, 100, 9])),
           "small": (ROT_X_OFF, ROT_Y_OFF), "multi": (X_OFF, Y_OFF),
           "large": ([0, 300, 310, 330], [0, 20, 290, 300])}


@pytest.mark.parametrize("offs", ["one", "many", "small", "multi", "large"])
@pytest.mark.parametrize("d", [3, 8, 40, 70])
@pytest.mark.parametrize("kname,unbiased,dtype,weighted", [
    ("imq", True, torch.float64, True), ("imq", False, torch.float64, False),
    ("rbf", False, torch.float64, True), ("rbf", True, torch.float64, False),
    ("poly", False, torch.float64, True), ("poly", True, torch.float64, False),
    ("imq", True, torch.float32, True), ("imq", False, torch.float32, False)])
def test_value_only_diagonal_tiles_against_oracle(isa, offs, d, kname, unbiased, dtype, weighted):
    """The forward without gradients: its diagonal tiles skip the columns below the diagonal and
    evaluate their diagonal lane blocks by rotations (every pair once, counted twice; the j == i
    term of the biased estimator once): AVX-512 at every d (rotations in the register), the
    other ISAs for d <= 64 (d = 40: the rotations' coordinates in two chunks of kRotChunk = 32
    and 8), d = 70 there runs the plain tiles.  "one" and "many" pack each set right before its
    tiles (one task per set)."""
    xo, yo = OFFSETS[offs]
    x, y, xw, yw = segment_data(xo, yo, d, dtype, "cpu", seed=d + 3 * unbiased, nan_pad=weighted)
    if not weighted:
        xw = yw = None
    with torch.no_grad():
        t, kind, params = _run(x, y, xo, yo, xw, yw, kname, unbiased, d)
    gt = torch.zeros(len(xo) - 1, 3, dtype=torch.float64)
    want, _ = segment_oracle(x, y, xw, yw, xo, yo, kind, params, unbiased, gt)
    err = (t - want).abs()
    assert bool((err <= VAL_TOL[dtype] * terms_scale(want)[:, None]).all()), err.max().item()


@pytest.mark.parametrize("d", [4, 8, 40, 70])
def test_value_only_non_finite_point_stays_in_its_set(isa, d):
    """A NaN coordinate in the rotated diagonal block of set 1 (lane 5): that set's xx term is
    NaN, the other sets' terms are finite and right."""
    x, y, _, _ = segment_data(ROT_X_OFF, ROT_Y_OFF, d, torch.float32, "cpu", seed=5, nan_pad=False)
    x[ROT_X_OFF[1] + 5, 1] = float("nan")
    with torch.no_grad():
        t, kind, params = _run(x, y, ROT_X_OFF, ROT_Y_OFF, None, None, "imq", True, d)
    assert torch.isnan(t[1, 0]) and torch.isnan(t[1, 2]) and torch.isfinite(t[1, 1])
    keep = [b for b in range(len(ROT_X_OFF) - 1) if b != 1]
    assert torch.isfinite(t[keep]).all()
    gt = torch.zeros(len(ROT_X_OFF) - 1, 3, dtype=torch.float64)
    want, _ = segment_oracle(x, y, None, None, ROT_X_OFF, ROT_Y_OFF, kind, params, True, gt)
    assert bool(((t[keep] - want[keep]).abs() <= VAL_TOL[torch.float32] * terms_scale(want[keep])[:, None]).all())


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("offs", ["one", "many", "small"])
def test_value_only_forward_equals_the_planned_passes(shared, offs):
    """The forward without gradients (each set packed right before its tiles, diagonal blocks by
    rotations) gives the terms of the forward with gradients (the planned passes) to rounding,
    unweighted and weighted."""
    xo, yo = OFFSETS[offs]
    yo = [0, 40] if shared else yo
    x, y, xw, yw = segment_data(xo, yo, 8, torch.float64, "cpu", seed=11, nan_pad=False)
    for w in (False, True):
        a, b = (xw, yw) if w else (None, None)
        with torch.no_grad():
            t0, _, _ = _run(x, y, xo, yo, a, b, "imq", True, 8)
        xg = x.clone().requires_grad_(True)
        t1, _, _ = _run(xg, y, xo, yo, a, b, "imq", True, 8)
        torch.testing.assert_close(t0, t1.detach(), rtol=1e-13, atol=0)


@pytest.mark.parametrize("offs", ["one", "many", "small", "multi", "large"])
@pytest.mark.parametrize("d", [3, 6, 40])
@pytest.mark.parametrize("kname,unbiased,dtype,weighted,grads", [
    ("imq", True, torch.float64, False, "xy"), ("imq", False, torch.float64, True, "x"),
    ("rbf", True, torch.float64, True, "y"), ("poly", True, torch.float64, False, "xy"),
    ("imq", True, torch.float32, True, "xy"), ("rbf", False, torch.float32, False, "x")])
def test_point_gradients_per_set_tasks_against_oracle(isa, offs, d, kname, unbiased, dtype, weighted, grads):
    """Gradients to the points without the weights' (weights, if any, constants): "one" and
    "many" run one task per set (pack, the three terms with their row and column sides, the
    parts), the others the planned rounds; in a task, a set of at most 64 points on both sides
    writes its row sides straight to the parts.  d = 3, 6, 40: the row sides' small-d, paired
    and plain products (fp32 AVX-512; fewer lanes take other ones).  d = 40: the fp32 packs'
    16-row transposes (AVX-512: two 16-coordinate blocks, the AVX2 variant for the last 8; AVX2:
    five 8 x 8 blocks)."""
    xo, yo = OFFSETS[offs]
    x, y, xw, yw = segment_data(xo, yo, d, dtype, "cpu", seed=21 + unbiased, nan_pad=weighted)
    if not weighted:
        xw = yw = None
    ins = [x.requires_grad_("x" in grads), y.requires_grad_("y" in grads)]
    t, kind, params = _run(*ins, xo, yo, xw, yw, kname, unbiased, d)
    gt = torch.linspace(-1.0, 2.0, 3 * (len(xo) - 1), dtype=torch.float64).view(-1, 3)
    need = [a for a in ins if a.requires_grad]
    got = torch.autograd.grad((t * gt).sum(), need)
    want, gw = segment_oracle(x, y, xw, yw, xo, yo, kind, params, unbiased, gt)
    assert bool(((t.detach() - want).abs() <= VAL_TOL[dtype] * terms_scale(want)[:, None]).all())
    pairs = [(g, w, n) for g, w, n in zip(got, [gw[i] for i, a in enumerate(ins) if a.requires_grad],
                                             [n for n, a in zip("xy", ins) if a.requires_grad])]
    for a, b, name in pairs:
        if weighted:
            keep = (xw if name == "x" else yw) != 0
            assert bool((a[~keep] == 0).all()), f"{isa} d{name}: weight-0 rows"
        e = (a.double() - b).norm().item()
        assert e <= GRAD_TOL[dtype] * b.norm().item(), f"{isa} d{name}: {e:.3g} vs {b.norm():.3g}"


@pytest.mark.parametrize("offs", ["one", "many"])
def test_per_set_tasks_do_not_depend_on_the_thread_count(offs):
    g = torch.Generator().manual_seed(4)
    xo, yo = OFFSETS[offs]
    x = torch.randn(xo[-1], 7, generator=g, requires_grad=True)
    y = torch.randn(yo[-1], 7, generator=g, requires_grad=True)
    old = torch.get_num_threads()
    res = []
    try:
        for th in (1, 2):
            torch.set_num_threads(th)
            t, _, _ = _run(x, y, xo, yo, None, None, "imq", True, 7)
            res.append((t, *torch.autograd.grad((t * torch.tensor([1.0, 2.0, -3.0])).sum(), (x, y))))
            with torch.no_grad():
                res[-1] += (_run(x, y, xo, yo, None, None, "imq", True, 7)[0],)
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(a, b) for a, b in zip(*res))
