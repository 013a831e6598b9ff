"""One launch for small sets on the CUDA backends (issue 15, item 3): csrc/cuda/mmd_small.cu.

Runs on ``cuda_emu`` (the CUDA sources emulated on the CPU, with the sanitizer checks of
tests/conftest.py) and on ``cuda`` where a GPU is present.  Launches are counted through the
emulator's launch shim (``launch_names``), not op calls.  Values and gradients are checked
against the float64 oracle on ragged small shapes, every dtype the backend accepts, both
estimators, IMQ and RBF, a far-away cluster with outliers (the in-kernel medians must shift each
term like ``contract.term_shifts``), and NaN inputs.  The emulator is ~100x slower than the
CPU backend: shapes stay small.
"""
from __future__ import annotations

import math

import pytest
import torch

import wae_fast
from wae_fast.dispatch import unavailable_reason

from . import oracle

BACKENDS = [pytest.param("cuda_emu", marks=[pytest.mark.cuda_emu, pytest.mark.skipif(
    unavailable_reason("cuda_emu", "cpu", "mmd") is not None, reason="cuda_emu unavailable")])]
if torch.cuda.is_available():
    BACKENDS.append(pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        unavailable_reason("cuda", "cuda", "mmd") is not None, reason="cuda unavailable")]))

KERNELS = {"imq7": wae_fast.IMQ(), "rbf3": wae_fast.RBF(bandwidth=(0.6, 1.5, 4.0))}
VAL_TOL = {torch.float64: 1e-12, torch.float32: 5e-6, torch.float16: 5e-6, torch.bfloat16: 5e-6}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 2 * 2.0**-11,
            torch.bfloat16: 2 * 2.0**-8}


def _dev(backend):
    return "cuda" if backend == "cuda" else "cpu"


def _launches(backend, fn):
    """(fn(), names of the emulated kernel launches it made; None on a real GPU)."""
    if backend != "cuda_emu":
        return fn(), None
    from wae_fast import cuda_emu_backend
    ext = cuda_emu_backend.extension()
    ext.reset_launch_names()
    out = fn()
    return out, list(ext.launch_names())


def _pts(n, m, d, dtype, dev, seed=0, far=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.1 + 0.2
    y = torch.randn(m, d, generator=g, dtype=torch.float64)
    if far is not None:  # a tight cluster far away (the per-term shift test)
        x = far + 1e-3 * x
    return x.to(dev, dtype), y.to(dev, dtype)


def _check_tensors(backend, x, y, kname="imq7", estimator="unbiased"):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    spec = KERNELS[kname]
    val, fwd = _launches(backend, lambda: wae_fast.mmd(x, y, spec, estimator=estimator, backend=backend))
    _, bwd = _launches(backend, val.backward)
    if fwd is not None:  # one main launch (the finalize is a torch sum), none in the backward
        assert len(fwd) == 1 and "mmd_small_kernel" in fwd[0] and bwd == [], (fwd, bwd)
    kind, params = spec.lower(x.shape[1])
    want, gx, gy, scale = oracle.mmd_and_grads(x.cpu(), y.cpu(), kind, params, estimator == "unbiased")
    dtype = x.dtype
    assert abs(val.item() - want.item()) <= VAL_TOL[dtype] * scale, (val.item(), want.item())
    gnorm = torch.cat([gx.flatten(), gy.flatten()]).norm().item()
    for t, ref in ((x, gx), (y, gy)):
        assert t.grad.dtype == dtype
        err = (t.grad.double().cpu() - ref).norm().item()
        assert err <= GRAD_TOL[dtype] * gnorm + 1e-300, (err, gnorm)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kname,estimator", [("imq7", "unbiased"), ("rbf3", "biased"),
                                             ("imq7", "biased"), ("rbf3", "unbiased")])
def test_one_launch_matches_the_oracle(backend, dtype, kname, estimator):
    """Ragged: x spans two 32-row blocks, d not a power of 2."""
    x, y = _pts(33, 20, 8, dtype, _dev(backend), seed=3)
    _check_tensors(backend, x, y, kname, estimator)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,m,d", [(5, 7, 3), (70, 64, 17), (2, 3, 1), (9, 4, 64)])
def test_one_launch_shapes(backend, n, m, d):
    """Every register width (d <= 16, 32, 64), a partly idle last block, tiny sets."""
    x, y = _pts(n, m, d, torch.float32, _dev(backend), seed=n + m + d)
    _check_tensors(backend, x, y, "imq7", "unbiased")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kname", ["imq7", "rbf3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_launch_far_cluster(backend, kname, dtype):
    """A tight cluster (spread 1e-3) at 1e3 from the other set: exact with each term's own shift."""
    x, y = _pts(9, 7, 3, dtype, _dev(backend), seed=5, far=1e3)
    _check_tensors(backend, x, y, kname, "unbiased")


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_launch_shifts_resist_a_few_far_points(backend):
    """Two outliers among 20 codes of a far cluster: the medians stay with the bulk."""
    x, y = _pts(20, 11, 3, torch.float32, _dev(backend), seed=8, far=1e3)
    x[3] = 4e5
    x[11] = -3e5
    _check_tensors(backend, x, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["x", "y"])
def test_nan_in_nan_out(backend, where):
    x, y = _pts(6, 5, 3, torch.float32, _dev(backend), seed=1)
    (x if where == "x" else y)[2, 1] = math.nan
    x.requires_grad_(True)
    y.requires_grad_(True)
    val = wae_fast.mmd(x, y, backend=backend)
    val.backward()
    assert val.isnan().item()
    # the NaN column makes its set's median and the xy shift NaN: every gradient row reads NaN
    assert x.grad.isnan().all().item() and y.grad.isnan().all().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_op_returns_terms_and_the_fused_parts(backend):
    """The op with an empty offset: terms (3,) fp64 and the per-term gradient parts."""
    from wae_fast import contract

    dev = _dev(backend)
    x, y = _pts(13, 10, 4, torch.float32, dev, seed=2)
    kind, params = wae_fast.IMQ().lower(4)
    (terms, gx, gy), names = _launches(backend, lambda: contract.op(f"mmd_fwd_{backend}")(
        x, y, x.new_empty((0,)), kind, params, True, True, True, "ieee"))
    if names is not None:
        assert len(names) == 1 and "mmd_small_kernel" in names[0], names
    assert terms.dtype == torch.float64 and terms.shape == (3,)
    assert gx.shape == (2, 13, 4) and gy.shape == (2, 10, 4)
    xd, yd = x.double().cpu().requires_grad_(True), y.double().cpu().requires_grad_(True)
    want = oracle.mmd_terms(xd, yd, kind, params, True)
    assert torch.allclose(terms.cpu(), want.detach(), rtol=0, atol=5e-6 * want.abs().sum().item())
    for t_idx, part, src in ((0, gx[0], xd), (2, gx[1], xd), (1, gy[0], yd), (2, gy[1], yd)):
        (ref,) = torch.autograd.grad(want[t_idx], src, retain_graph=True)
        assert (part.double().cpu() - ref).norm() <= 5e-5 * ref.norm() + 1e-12, t_idx


@pytest.mark.parametrize("backend", BACKENDS)
def test_outside_the_path_keeps_the_tiled_kernels(backend, monkeypatch):
    """The polynomial and sets above the threshold take the tiled kernels, same answers."""
    from wae_fast import small_sets

    x, y = _pts(21, 17, 3, torch.float64, _dev(backend), seed=2)
    small = wae_fast.mmd(x, y, backend=backend)
    monkeypatch.setattr(small_sets, "SMALL_MAX_ROWS", 16)
    tiled, names = _launches(backend, lambda: wae_fast.mmd(x, y, backend=backend))
    if names is not None:
        assert not any("mmd_small_kernel" in s for s in names) and len(names) > 1, names
    assert abs(small.item() - tiled.item()) <= 1e-13
    assert not small_sets.cuda_one_launch(x, y, 2)  # the polynomial


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_of_the_one_launch_forward(backend):
    """The op with an empty offset: schema, fake (fused shapes), autograd registration and aot
    dispatch agree with the real kernel."""
    from wae_fast import contract

    x, y = _pts(9, 6, 3, torch.float32, _dev(backend), seed=4)
    kind, params = wae_fast.IMQ().lower(3)
    x.requires_grad_(True)
    torch.library.opcheck(contract.op(f"mmd_fwd_{backend}").default,
                          (x, y, x.new_empty((0,)), kind, params, True, True, False, "ieee"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_matches_eager(backend):
    """torch.compile (aot_eager, fullgraph) traces the one-launch path: same value and gradient."""
    x, y = _pts(12, 10, 3, torch.float32, _dev(backend))
    xe = x.clone().requires_grad_(True)
    ve = wae_fast.mmd(xe, y, backend=backend)
    ve.backward()
    xc = x.clone().requires_grad_(True)
    vc = torch.compile(lambda a, b: wae_fast.mmd(a, b, backend=backend), fullgraph=True,
                       backend="aot_eager")(xc, y)
    vc.backward()
    assert torch.equal(vc, ve) and torch.equal(xc.grad, xe.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kname,precision", [("imq7", "tf32"), ("rbf3", "tf32x3")])
def test_empty_offset_outside_the_kernel_still_returns_the_parts(backend, kname, precision):
    """A tensor-core precision (fp32, d >= 16) keeps the tiled kernels, but an empty offset still
    gets the fused parts the contract's fake promises (from two tiled backward passes): compiled
    (aot_eager, fullgraph) equals eager, and both are near the oracle."""
    x, y = _pts(11, 9, 16, torch.float32, _dev(backend), seed=6)
    spec = KERNELS[kname]
    xe = x.clone().requires_grad_(True)
    ve, names = _launches(backend, lambda: wae_fast.mmd(xe, y, spec, backend=backend, precision=precision))
    if names is not None:
        assert not any("mmd_small_kernel" in s for s in names), names
    ve.backward()
    xc = x.clone().requires_grad_(True)
    vc = torch.compile(lambda a, b: wae_fast.mmd(a, b, spec, backend=backend, precision=precision),
                       fullgraph=True, backend="aot_eager")(xc, y)
    vc.backward()
    assert torch.equal(vc, ve) and torch.equal(xc.grad, xe.grad)
    kind, params = spec.lower(16)
    want, gx, _, scale = oracle.mmd_and_grads(x.cpu(), y.cpu(), kind, params, True)
    assert abs(ve.item() - want.item()) <= 1e-2 * scale  # tf32 products: ~1e-3 relative
    assert (xe.grad.double().cpu() - gx).norm() <= 5e-2 * gx.norm()
