"""One launch for small sets (issue 15, item 3): the Triton backend's ``mmd_small`` path.

Counts kernel launches, not op calls: every Triton launch of the process is counted by wrapping
the innermost ``run`` of Triton's kernel objects (the interpreter's ``InterpretedFunction`` here,
``JITFunction`` on a GPU), and the torch ops of the backend's forward are recorded with a
TorchDispatchMode.  Values and gradients are checked against the float64 oracle on ragged small
shapes, every dtype, both estimators, IMQ, RBF and the polynomial, and with a far-away cluster
(the in-kernel medians must shift each term like ``contract.term_shifts``).  Under the
interpreter each program costs ~1 ms: shapes stay small.  The CUDA graph test is GPU-only
(skipped here; unverified).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

import wae_fast
from wae_fast.dispatch import unavailable_reason

from . import oracle

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(unavailable_reason("triton", DEV, "mmd") is not None,
                                reason=f"triton unavailable on {DEV}")

KERNELS = {"imq7": wae_fast.IMQ(), "rbf3": wae_fast.RBF(bandwidth=(0.6, 1.5, 4.0)),
           "poly": wae_fast.Polynomial(degree=3)}
VAL_TOL = {torch.float64: 1e-12, torch.float32: 5e-6, torch.float16: 5e-6, torch.bfloat16: 5e-6}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 2 * 2.0**-11,
            torch.bfloat16: 2 * 2.0**-8}


@contextlib.contextmanager
def count_triton_launches():
    """Counts every Triton kernel launch (innermost ``run``: autotune/heuristics wrappers end in
    one of these per launch) while active."""
    import triton.runtime.jit as jit

    classes = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover
        pass
    names = []
    saved = [(c, c.run) for c in classes]

    def wrap(orig):
        def run(self, *args, **kwargs):
            names.append(getattr(self, "__name__", None) or getattr(self.fn, "__name__", "?"))
            # the interpreter's own torch calls (host copies of the arguments) are not the
            # backend's: hide them from an OpLog
            with _disable_current_modes():
                return orig(self, *args, **kwargs)
        return run

    for c, orig in saved:
        c.run = wrap(orig)
    try:
        yield names
    finally:
        for c, orig in saved:
            c.run = orig


class OpLog(TorchDispatchMode):
    """The aten ops run while active (the backend's own torch calls)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _pts(n, m, d, dtype, seed=0, far=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.1 + 0.2
    y = torch.randn(m, d, generator=g, dtype=torch.float64)
    if far is not None:  # a tight cluster far away (the per-term shift test)
        x = far + 1e-3 * x
    return x.to(DEV, dtype), y.to(DEV, dtype)


def _check(n, m, d, kname, estimator, dtype, seed=0, far=None):
    x, y = _pts(n, m, d, dtype, seed, far)
    x.requires_grad_(True)
    y.requires_grad_(True)
    spec = KERNELS[kname]
    with count_triton_launches() as fwd:
        val = wae_fast.mmd(x, y, spec, estimator=estimator, backend="triton")
    with count_triton_launches() as bwd:
        val.backward()
    assert fwd == ["_mmd_small_kernel"] and bwd == [], (fwd, bwd)
    kind, params = spec.lower(d)
    want, gx, gy, scale = oracle.mmd_and_grads(x.cpu(), y.cpu(), kind, params, estimator == "unbiased")
    assert abs(val.item() - want.item()) <= VAL_TOL[dtype] * scale, (val.item(), want.item())
    gnorm = torch.cat([gx.flatten(), gy.flatten()]).norm().item()
    for t, ref in ((x, gx), (y, gy)):
        assert t.grad.dtype == dtype
        err = (t.grad.double().cpu() - ref).norm().item()
        assert err <= GRAD_TOL[dtype] * gnorm + 1e-300, (err, gnorm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kname,estimator", [("imq7", "unbiased"), ("rbf3", "biased"),
                                             ("imq7", "biased"), ("rbf3", "unbiased")])
def test_one_launch_matches_the_oracle(dtype, kname, estimator):
    """Ragged shapes: x spans two row blocks under the interpreter (BLOCK 64), d not a power of 2."""
    _check(70, 29, 5, kname, estimator, dtype, seed=3)


@pytest.mark.parametrize("n,m,d", [(2, 3, 1), (37, 64, 16), (5, 9, 40)])
def test_one_launch_shapes(n, m, d):
    _check(n, m, d, "imq7", "unbiased", torch.float32, seed=n + m + d)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_one_launch_polynomial(estimator):
    _check(21, 13, 6, "poly", estimator, torch.float64)


@pytest.mark.parametrize("kname", ["imq7", "rbf3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_launch_far_cluster(kname, dtype):
    """A tight cluster (spread 1e-3) at 1e3 from the other set: exact only with each term's own
    shift (the in-kernel medians); one shared shift loses it in |a|^2 + |b|^2 - 2 a.b."""
    _check(9, 7, 3, kname, "unbiased", dtype, seed=5, far=1e3)


def test_one_launch_shifts_resist_a_few_far_points():
    """Two outliers among 20 codes: the medians stay with the bulk (a mean would not)."""
    x, y = _pts(20, 11, 3, torch.float32, seed=8, far=1e3)
    x = x.detach().clone()
    x[3] = 4e5
    x[11] = -3e5
    _check_tensors(x, y)


def _check_tensors(x, y):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    spec = KERNELS["imq7"]
    with count_triton_launches() as fwd:
        val = wae_fast.mmd(x, y, spec, backend="triton")
    val.backward()
    assert fwd == ["_mmd_small_kernel"]
    kind, params = spec.lower(x.shape[1])
    want, gx, gy, scale = oracle.mmd_and_grads(x.cpu(), y.cpu(), kind, params, True)
    assert abs(val.item() - want.item()) <= VAL_TOL[x.dtype] * scale
    gnorm = torch.cat([gx.flatten(), gy.flatten()]).norm().item()
    err = (torch.cat([x.grad.flatten(), y.grad.flatten()]).double().cpu()
           - torch.cat([gx.flatten(), gy.flatten()])).norm().item()
    assert err <= GRAD_TOL[x.dtype] * gnorm


def test_forward_is_one_launch_and_one_finalize():
    """The backend's forward: one Triton launch, and of torch ops only allocations and the one
    fp64 finalize (no median, sort, stack, zeros or copy; no .item())."""
    from wae_fast.kernels import backend as tb

    x, y = _pts(33, 20, 4, torch.float32)
    kind, params = wae_fast.IMQ().lower(4)
    empty = x.new_empty((0,))
    tb.mmd_fwd(x, y, empty, kind, params, True, True, True, "ieee")  # caches the parameter tensor
    with count_triton_launches() as launches, OpLog() as log:
        terms, gx, gy = tb.mmd_fwd(x, y, empty, kind, params, True, True, True, "ieee")
    assert launches == ["_mmd_small_kernel"]
    compute = [o for o in log.ops if o not in ("aten.empty", "aten.new_empty")]
    assert compute == ["aten.sum"], log.ops
    assert terms.dtype == torch.float64 and terms.shape == (3,)
    assert gx.shape == (2, 33, 4) and gy.shape == (2, 20, 4)
    # the parts are the per-term gradients: compare with autograd of the oracle's terms
    xd, yd = x.double().requires_grad_(True), y.double().requires_grad_(True)
    want = oracle.mmd_terms(xd, yd, kind, params, True)
    assert torch.allclose(terms.cpu(), want.detach(), rtol=0, atol=5e-6 * want.abs().sum().item())
    for t_idx, part, src in ((0, gx[0], xd), (2, gx[1], xd), (1, gy[0], yd), (2, gy[1], yd)):
        (ref,) = torch.autograd.grad(want[t_idx], src, retain_graph=True)
        assert (part.double().cpu() - ref).norm() <= 5e-5 * ref.norm() + 1e-12, t_idx


def test_large_sets_keep_the_tiled_path(monkeypatch):
    """Above the threshold the glue passes the medians and the tiled kernels run (forced here by
    lowering the threshold), with the same answer."""
    from wae_fast.kernels import mmd_small

    x, y = _pts(21, 17, 3, torch.float64, seed=2)
    small = wae_fast.mmd(x, y, backend="triton")
    monkeypatch.setattr(mmd_small, "SMALL_MAX_ROWS", 16)
    with count_triton_launches() as launches:
        tiled = wae_fast.mmd(x, y, backend="triton")
    assert "_mmd_small_kernel" not in launches and len(launches) == 3
    assert abs(small.item() - tiled.item()) <= 1e-13


def test_compiled_fake_reports_the_fused_parts():
    """torch.compile (aot_eager) traces the one-launch path: the fake gives the fused shapes."""
    x, y = _pts(12, 10, 3, torch.float32)
    xe = x.clone().requires_grad_(True)
    ve = wae_fast.mmd(xe, y, backend="triton")
    ve.backward()
    xc = x.clone().requires_grad_(True)
    vc = torch.compile(lambda a, b: wae_fast.mmd(a, b, backend="triton"), fullgraph=True,
                       backend="aot_eager")(xc, y)
    vc.backward()
    assert torch.equal(vc, ve) and torch.equal(xc.grad, xe.grad)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (unverified here)")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_forward_backward_captured_in_a_cuda_graph(backend):
    """GPU only (UNVERIFIED: written without a GPU): forward + backward of a small call captured
    with torch.cuda.graph and replayed on new inputs (copied in place) equals eager, for the
    Triton one-launch path and the cuda backend's (csrc/cuda/mmd_small.cu)."""
    if unavailable_reason(backend, "cuda", "mmd") is not None:
        pytest.skip(str(unavailable_reason(backend, "cuda", "mmd")))
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(100, 8, device="cuda", generator=g).requires_grad_(True)
    y = torch.randn(100, 8, device="cuda", generator=g)

    def step():
        x.grad = None
        v = wae_fast.mmd(x, y, backend=backend)
        v.backward()
        return v

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up: compile, cache the kernel parameters
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        v = wae_fast.mmd(x, y, backend=backend)
        v.backward()
    for seed in (1, 2):
        with torch.no_grad():
            x.copy_(torch.randn(100, 8, device="cuda", generator=g) * 1.3)
            y.copy_(torch.randn(100, 8, device="cuda", generator=g))
        graph.replay()
        got_v, got_g = v.clone(), x.grad.clone()
        xe = x.detach().clone().requires_grad_(True)
        ve = wae_fast.mmd(xe, y, backend=backend)
        ve.backward()
        assert torch.equal(got_v, ve) and torch.equal(got_g, xe.grad), seed


def test_opcheck_of_the_one_launch_forward():
    """The op with an empty offset (the one-launch form): schema, fake (fused shapes), autograd
    registration and aot dispatch agree with the real kernel."""
    from wae_fast import contract

    x, y = _pts(9, 6, 3, torch.float32, seed=4)
    kind, params = wae_fast.IMQ().lower(3)
    x.requires_grad_(True)
    torch.library.opcheck(contract.op("mmd_fwd_triton").default,
                          (x, y, x.new_empty((0,)), kind, params, True, True, False, "ieee"))
