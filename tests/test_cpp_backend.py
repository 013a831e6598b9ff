"""The C++ CPU backend (backend="cpp", extension wae_fast._C) against the float64 oracle.

Errors are judged as DESIGN.md 5b says: MMD^2 (and the terms) against the kernel-sum scale
mean Kxx + mean Kyy + 2 mean Kxy, gradients against the oracle gradient's norm.

Tolerances (relative to those scales):
* fp64: 1e-11 (the backend computes in fp64 throughout);
* fp32: 2e-6 for values (fp32 dot products + per-tile fp32 sums combined in fp64; observed
  ~1e-8), 1e-4 for gradients (the rowsum(W) a - W b cancellation, observed ~1e-6);
* fp16/bf16: compared with the oracle on the ROUNDED inputs; the computation is fp32 so values
  keep the fp32 tolerance; gradients are returned in the input dtype, so their rounding
  (2^-11 for fp16, 2^-8 for bf16 per element) dominates: 2e-3 / 1.6e-2.
"""
from __future__ import annotations


import pytest
import torch

import wae_fast
from wae_fast.dispatch import unavailable_reason
from wae_fast.kernel_specs import IMQ, RBF

from . import oracle

REASON = unavailable_reason("cpp", "cpu")
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"cpp backend unavailable: {REASON}")

VAL_TOL = {torch.float64: 1e-11, torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

KERNELS = {
    "imq7": IMQ(),
    "imq1": IMQ(C=2.0),
    "imq_odd3": IMQ(scales=(0.3, 1.0, 4.0)),
    "rbf1": RBF(),
    "rbf3": RBF(scales=(0.2, 1.0, 5.0)),
    "rbf_pow2": RBF(bandwidth=(0.5, 1.0, 2.0)),  # gamma ratios 4: one exp, the rest by squaring
    "rbf_ratio2": RBF(scales=(4.0, 2.0, 1.0, 0.3)),  # ratios 2, 2 and one exp more
}


ISAS = ["baseline", "avx2", "avx512"]  # the tile-kernel variants (csrc/cpu: mmd_cpu.cpp, tiles_*.cpp)


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """Runs the test on one variant of the tile kernels (WAE_FAST_CPU_ISA), skipped where this
    machine cannot run it."""
    runs = wae_fast.cpp_backend.extension().isas()
    if request.param not in runs:
        pytest.skip(f"this CPU/OS runs {runs}, not {request.param}")
    monkeypatch.setenv("WAE_FAST_CPU_ISA", request.param)
    assert wae_fast.cpp_backend.isa() == request.param
    return request.param


def _points(n, m, d, dtype, seed=0, shift=0.1):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * 1.1 + shift).to(dtype)
    y = torch.randn(m, d, generator=g, dtype=torch.float64).to(dtype)
    return x, y


def _check(x, y, kernel, estimator, grad_x=True, grad_y=True, grad_out=1.0):
    dtype = x.dtype
    kind, params = kernel.lower(x.shape[1])
    unbiased = estimator == "unbiased"
    xr = x.detach().clone().requires_grad_(grad_x)
    yr = y.detach().clone().requires_grad_(grad_y)
    val = wae_fast.mmd(xr, yr, kernel, estimator=estimator, backend="cpp")
    assert val.shape == ()
    ref, gxo, gyo, scale = oracle.mmd_and_grads(x, y, kind, params, unbiased, grad_out)
    assert abs(val.item() - ref.item()) <= VAL_TOL[dtype] * scale, (val.item(), ref.item(), scale)
    if grad_x or grad_y:
        (val * grad_out).backward()
    for want, t, go in ((grad_x, xr, gxo), (grad_y, yr, gyo)):
        if not want:
            assert t.grad is None
            continue
        assert t.grad is not None and t.grad.dtype == dtype and t.grad.shape == t.shape
        err = (t.grad.double() - go).norm().item()
        assert err <= GRAD_TOL[dtype] * go.norm().item() + 1e-300, (err, go.norm().item())


SHAPES = [(2, 2, 1), (5, 7, 3), (64, 64, 8), (65, 63, 17), (130, 70, 64), (37, 100, 130), (200, 131, 8)]


@pytest.mark.parametrize("n,m,d", SHAPES)
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_shapes_fp32_fp64(n, m, d, estimator, isa):
    for dtype in (torch.float32, torch.float64):
        x, y = _points(n, m, d, dtype, seed=n + m + d)
        _check(x, y, KERNELS["imq7"], estimator)


@pytest.mark.parametrize("kname", list(KERNELS))
@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernels(kname, estimator, dtype, isa):
    x, y = _points(97, 66, 5, dtype, seed=3)
    _check(x, y, KERNELS[kname], estimator)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kname", ["imq7", "rbf3"])
def test_half_dtypes(dtype, kname, isa):
    x, y = _points(70, 81, 9, dtype, seed=5)  # the oracle sees the same rounded values
    _check(x, y, KERNELS[kname], "unbiased")


@pytest.mark.parametrize("which", ["x", "y", "none"])
def test_partial_grads_and_grad_out(which, isa):
    x, y = _points(66, 90, 6, torch.float32, seed=7)
    _check(x, y, KERNELS["imq7"], "unbiased", grad_x=which == "x", grad_y=which == "y", grad_out=-3.5)


def test_translation_far_from_origin(isa):
    # the shared shift (offset = mean(y)) removes the |a|^2 + |b|^2 - 2ab cancellation
    x, y = _points(80, 80, 8, torch.float32, seed=11)
    _check(x + 1000.0, y + 1000.0, KERNELS["imq7"], "unbiased")


def test_worked_case():
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    k = IMQ(C=1.0)
    assert abs(wae_fast.mmd(x, y, k, backend="cpp").item() - (-0.4)) < 1e-15
    assert abs(wae_fast.mmd(x, y, k, estimator="biased", backend="cpp").item() - 0.25) < 1e-15


def _run(x, y, kernel):
    xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    v = wae_fast.mmd(xr, yr, kernel, backend="cpp")
    v.backward()
    return v.detach(), xr.grad, yr.grad


def test_bit_identical_reruns_and_thread_counts():
    x, y = _points(300, 260, 12, torch.float32, seed=13)
    nt = torch.get_num_threads()
    try:
        a = _run(x, y, IMQ())
        b = _run(x, y, IMQ())
        torch.set_num_threads(1)
        c = _run(x, y, IMQ())
    finally:
        torch.set_num_threads(nt)
    for u, v, w in zip(a, b, c):
        assert torch.equal(u, v) and torch.equal(u, w)


# Sizes past the grouped schedule's thresholds: 2200 points = 35 row blocks of 64 (more blocks than
# the 32 groups, uneven groups), 700 = 11 blocks (an odd group count, padded with an empty group).
GROUPED = [(2200, 700, 5), (700, 2200, 5), (700, 700, 3)]


@pytest.mark.parametrize("n,m,d,which,kname", [(2200, 700, 5, "both", "imq7"), (700, 2200, 5, "y", "rbf3"),
                                                (700, 700, 3, "x", "imq7")])
def test_grouped_schedule_matches_oracle(n, m, d, which, kname):
    """Gradients of the self terms and of the cross term with both gradients come from the
    round-scheduled group pairs (every gradient row written by one task at a time)."""
    for dtype in (torch.float32, torch.float64):
        x, y = _points(n, m, d, dtype, seed=n + 2 * m)
        _check(x, y, KERNELS[kname], "unbiased", grad_x=which != "y", grad_y=which != "x", grad_out=0.7)


@pytest.mark.parametrize("n,m,d", GROUPED[:2])
def test_grouped_schedule_bit_identical_thread_counts(n, m, d):
    x, y = _points(n, m, d, torch.float32, seed=21)
    nt = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append(_run(x, y, IMQ()))
            xr = x.clone().requires_grad_(True)  # x-only gradient: row stripes + one grouped self term
            v = wae_fast.mmd(xr, y, IMQ(), backend="cpp")
            v.backward()
            outs[-1] = outs[-1] + (v.detach(), xr.grad)
    finally:
        torch.set_num_threads(nt)
    for o in outs[1:]:
        for u, v in zip(outs[0], o):
            assert torch.equal(u, v)


def test_isa_variants_match(monkeypatch):
    """Every tile-kernel variant this machine runs agrees with the one picked at run time (the
    widest) to fp32 rounding; the pick is the widest supported one."""
    runs = wae_fast.cpp_backend.extension().isas()
    monkeypatch.delenv("WAE_FAST_CPU_ISA", raising=False)
    assert runs[0] == "baseline" and wae_fast.cpp_backend.isa() == runs[-1]
    x, y = _points(90, 70, 10, torch.float32, seed=17)
    a = _run(x, y, IMQ())
    scale = 7.0 * 4
    for name in runs:
        monkeypatch.setenv("WAE_FAST_CPU_ISA", name)
        b = _run(x, y, IMQ())
        assert abs(a[0].item() - b[0].item()) <= 2e-6 * scale
        for u, v in zip(a[1:], b[1:]):
            assert (u - v).norm() <= 1e-4 * v.norm()


@pytest.mark.parametrize("value", ["avx", "AVX512", "sse2", "1"])
def test_cpu_isa_env_invalid(monkeypatch, value):
    monkeypatch.setenv("WAE_FAST_CPU_ISA", value)
    x, y = _points(10, 10, 3, torch.float32)
    with pytest.raises(ValueError, match="WAE_FAST_CPU_ISA must be one of avx512, avx2, baseline"):
        wae_fast.mmd(x, y, IMQ(), backend="cpp")
    with pytest.raises(ValueError, match="WAE_FAST_CPU_ISA"):
        wae_fast.cpp_backend.isa()


def test_direct_bwd_op_matches_fused_parts():
    from wae_fast.contract import op
    x, y = _points(50, 40, 7, torch.float64, seed=19)
    off = y.mean(0)
    kind, params = IMQ().lower(7)
    terms, px, py = op("mmd_fwd_cpp")(x, y, off, kind, params, True, True, True, "ieee")
    assert px.shape == (2, 50, 7) and py.shape == (2, 40, 7)
    gt = torch.tensor([0.5, -1.25, 2.0], dtype=torch.float64)
    gx, gy = op("mmd_bwd_cpp")(gt, x, y, off, kind, params, True, True, True, "ieee")
    torch.testing.assert_close(gx, 0.5 * px[0] + 2.0 * px[1], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(gy, -1.25 * py[0] + 2.0 * py[1], rtol=1e-12, atol=1e-15)
    t2, ex, ey = op("mmd_fwd_cpp")(x, y, off, kind, params, True, False, False, "ieee")
    assert torch.equal(t2, terms) and ex.numel() == 0 and ey.numel() == 0


def test_fp32_error_within_reference_error():
    """At a moderate size the fp32 error of cpp stays within ~2x that of the reference backend."""
    x, y = _points(512, 512, 8, torch.float32, seed=23)
    kind, params = IMQ().lower(8)
    ref, _, _, scale = oracle.mmd_and_grads(x, y, kind, params, True)
    e_cpp = abs(wae_fast.mmd(x, y, backend="cpp").item() - ref.item())
    e_ref = abs(wae_fast.mmd(x, y, backend="reference").item() - ref.item())
    assert e_cpp <= 2.0 * e_ref + 1e-7 * scale, (e_cpp, e_ref, scale)


def test_auto_picks_cpp_on_cpu():
    assert wae_fast.which_backend(torch.zeros(2, 2)) == "cpp"


def test_errors():
    from wae_fast.contract import op
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="same d"):
        op("mmd_fwd_cpp")(x, torch.randn(4, 2), torch.zeros(3), 0, [1.0], True, False, False, "ieee")
    with pytest.raises(RuntimeError, match="kernel scales"):
        op("mmd_fwd_cpp")(x, x, torch.zeros(3), 0, [1.0] * 17, True, False, False, "ieee")


@pytest.mark.parametrize("d", [3, 4, 5, 7, 8])
@pytest.mark.parametrize("kname", ["imq7", "rbf3"])
def test_pair_grad_path_ragged(d, kname, isa):
    # fp32 with 4 d > lanes >= 2 d takes the interleaved two-points-per-vector gradient path
    # (mmd_cpu_kernel.h tile_grad_*_pair: d = 5..8 on avx512, 3..4 on avx2/baseline); odd
    # counts leave a half-filled column pair and partial row groups in the last tiles
    x, y = _points(131, 67, d, torch.float32, seed=23 + d)
    _check(x, y, KERNELS[kname], "unbiased")
