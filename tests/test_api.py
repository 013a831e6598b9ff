"""Public API contract: input validation, dtypes, non-finite inputs, module, backend selection,
torch.library registration (opcheck, torch.compile), double backward."""
from __future__ import annotations

import pytest
import torch

import wae_fast
from wae_fast import contract


def _xy(n=6, m=5, d=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(m, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("backend", ["reference"])
class TestBadInput:
    def test_not_tensor(self, backend):
        x, y = _xy()
        with pytest.raises(TypeError, match="x must be a torch.Tensor"):
            wae_fast.mmd(x.tolist(), y, backend=backend)

    def test_not_2d(self, backend):
        x, y = _xy()
        with pytest.raises(ValueError, match="x must be 2-D"):
            wae_fast.mmd(x[0], y, backend=backend)
        with pytest.raises(ValueError, match="y must be 2-D"):
            wae_fast.mmd(x, y[None], backend=backend)

    def test_mismatched_d(self, backend):
        x, _ = _xy()
        with pytest.raises(ValueError, match="y has d=4 .* x has d=3"):
            wae_fast.mmd(x, torch.randn(5, 4), backend=backend)

    @pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
    def test_bad_dtype(self, backend, dtype):
        x, y = _xy()
        with pytest.raises(TypeError, match="x has unsupported dtype"):
            wae_fast.mmd(x.to(dtype), y, backend=backend)
        with pytest.raises(TypeError, match="y has unsupported dtype"):
            wae_fast.mmd(x, y.to(dtype), backend=backend)

    def test_empty(self, backend):
        x, y = _xy()
        with pytest.raises(ValueError, match="x is empty"):
            wae_fast.mmd(x[:0], y, estimator="biased", backend=backend)
        with pytest.raises(ValueError, match="y is empty"):
            wae_fast.mmd(x, y[:0], estimator="biased", backend=backend)
        with pytest.raises(ValueError, match="x is empty"):
            wae_fast.mmd(x[:, :0], y[:, :0], backend=backend)

    def test_too_few_points_unbiased(self, backend):
        x, y = _xy()
        with pytest.raises(ValueError, match="x has 1 point.*at least 2"):
            wae_fast.mmd(x[:1], y, backend=backend)
        with pytest.raises(ValueError, match="y has 1 point"):
            wae_fast.mmd(x, y[:1], backend=backend)
        # biased works with a single point
        assert torch.isfinite(wae_fast.mmd(x[:1], y[:1], estimator="biased", backend=backend))

    def test_bad_names(self, backend):
        x, y = _xy()
        with pytest.raises(ValueError, match="estimator: unknown estimator 'u'"):
            wae_fast.mmd(x, y, estimator="u", backend=backend)
        with pytest.raises(ValueError, match="kernel: unknown kernel 'laplace'"):
            wae_fast.mmd(x, y, "laplace", backend=backend)
        with pytest.raises(TypeError, match="kernel must be"):
            wae_fast.mmd(x, y, 3.0, backend=backend)
        with pytest.raises(ValueError, match="precision"):
            wae_fast.mmd(x, y, precision="fp8", backend=backend)

    def test_non_positive_params(self, backend):
        for bad in (0.0, -1.0, float("nan"), float("inf"), ()):
            with pytest.raises(ValueError, match="C must"):
                wae_fast.IMQ(C=bad)
            with pytest.raises(ValueError, match="bandwidth must"):
                wae_fast.RBF(bandwidth=bad)
        with pytest.raises(ValueError, match="sigma2 must"):
            wae_fast.IMQ(sigma2=0.0)
        with pytest.raises(ValueError, match="scales must"):
            wae_fast.IMQ(scales=(1.0, -2.0))
        with pytest.raises(TypeError, match="C must"):
            wae_fast.IMQ(C="big")

    def test_non_finite(self, backend):
        x, y = _xy()
        x[2, 1] = float("nan")
        assert torch.isnan(wae_fast.mmd(x, y, backend=backend))  # propagates, as torch ops do
        with pytest.raises(ValueError, match="x contains non-finite"):
            wae_fast.mmd(x, y, check_finite=True, backend=backend)
        x2, y2 = _xy()
        y2[0, 0] = float("inf")
        assert not torch.isfinite(wae_fast.mmd(x2, y2, backend=backend))
        with pytest.raises(ValueError, match="y contains non-finite"):
            wae_fast.mmd(x2, y2, check_finite=True, backend=backend)


def test_unknown_backend():
    x, y = _xy()
    with pytest.raises(ValueError, match="backend: unknown backend 'fast'"):
        wae_fast.mmd(x, y, backend="fast")
    with pytest.raises(TypeError, match="backend must be a string"):
        wae_fast.mmd(x, y, backend=None)


def test_unavailable_backend_says_why():
    x, y = _xy()
    av = wae_fast.available_backends("cpu")
    assert av["reference"] is None
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend='cuda' is not available"):
            wae_fast.mmd(x, y, backend="cuda")


def test_mixed_devices():
    if not torch.cuda.is_available():
        # a meta tensor stands in for "another device" without a GPU
        x, y = _xy()
        with pytest.raises(ValueError, match="x is on cpu but y is on meta"):
            wae_fast.mmd(x, y.to("meta"))
    else:
        x, y = _xy()
        with pytest.raises(ValueError, match="x is on cpu but y is on cuda"):
            wae_fast.mmd(x, y.cuda())


def test_which_backend_reports_choice():
    x, _ = _xy()
    name = wae_fast.which_backend(x)
    assert name in wae_fast.BACKENDS
    assert wae_fast.available_backends(x)[name] is None
    assert wae_fast.which_backend("cpu", "reference") == "reference"


def test_output_dtypes_and_mixed_promotion():
    x, y = _xy(dtype=torch.float16)
    assert wae_fast.mmd(x, y).dtype == torch.float32
    assert wae_fast.mmd(x.double(), y.double()).dtype == torch.float64
    xa = x.float().requires_grad_(True)
    yb = y.to(torch.bfloat16).requires_grad_(True)
    v = wae_fast.mmd(xa, yb)  # promoted to fp32
    v.backward()
    assert v.dtype == torch.float32 and xa.grad.dtype == torch.float32 and yb.grad.dtype == torch.bfloat16


def test_mmd_terms_consistent():
    x, y = _xy(dtype=torch.float64)
    t = wae_fast.mmd_terms(x, y)
    assert t.shape == (3,) and t.dtype == torch.float64
    assert torch.allclose(t[0] + t[1] - 2 * t[2], wae_fast.mmd(x, y))


def test_mmd_loss_module():
    x, y = _xy(dtype=torch.float64)
    loss = wae_fast.MMDLoss(wae_fast.RBF(bandwidth=1.0), estimator="biased")
    assert torch.equal(loss(x, y), wae_fast.mmd(x, y, wae_fast.RBF(bandwidth=1.0), estimator="biased"))
    assert "biased" in repr(loss)
    with pytest.raises(ValueError, match="estimator"):
        wae_fast.MMDLoss(estimator="nope")
    assert wae_fast.MMDLoss("imq").kernel == wae_fast.IMQ()


def test_double_backward_is_refused_clearly():
    x, y = _xy(dtype=torch.float64)
    x.requires_grad_(True)
    v = wae_fast.mmd(x, y)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(v, x, create_graph=True)
    (g,) = torch.autograd.grad(wae_fast.mmd(x, y), x)  # plain first order is fine
    assert g.shape == x.shape
    mu = torch.zeros(3, 2, requires_grad=True)
    lv = torch.zeros(3, 2, requires_grad=True)
    z = wae_fast.reparameterize(mu, lv, generator=torch.Generator().manual_seed(1))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(z.sum(), lv, create_graph=True)


def test_no_grad_path_returns_no_parts():
    x, y = _xy()
    x.requires_grad_(True)
    with torch.no_grad():
        v = wae_fast.mmd(x, y)
    assert not v.requires_grad


def test_opcheck_reference_ops():
    x, y = _xy(7, 5, 3)
    off = y.mean(0)
    for grads in [(False, False), (True, True), (True, False)]:
        xr, yr = x.clone().requires_grad_(grads[0]), y.clone().requires_grad_(grads[1])
        torch.library.opcheck(contract.op("mmd_fwd_reference").default,
                              (xr, yr, off, 0, [1.0, 2.0], True, grads[0], grads[1], "ieee"))
    torch.library.opcheck(contract.op("mmd_bwd_reference").default,
                          (torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64), x, y, off, 1, [0.5],
                           False, True, True, "ieee"))
    mu, lv = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    torch.library.opcheck(contract.op("reparam_fwd_reference").default, (mu, lv, 1234))


def test_torch_compile_fullgraph():
    x, y = _xy(20, 16, 4)
    x.requires_grad_(True)

    def loss_fn(a, b):
        return 2.0 * wae_fast.mmd(a, b, backend="reference") + a.pow(2).mean()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    got = compiled(x, y)
    got.backward()
    g1 = x.grad.clone()
    x.grad = None
    want = loss_fn(x, y)
    want.backward()
    assert torch.allclose(got, want) and torch.allclose(g1, x.grad)


def test_autocast_cpu():
    x, y = _xy(12, 10, 4)
    lin = torch.nn.Linear(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = lin(x)
        assert z.dtype == torch.bfloat16
        v = wae_fast.mmd(z, y)  # bf16 codes vs fp32 prior: promoted, fp32 result
    assert v.dtype == torch.float32 and torch.isfinite(v)
    v.backward()
    assert lin.weight.grad is not None
