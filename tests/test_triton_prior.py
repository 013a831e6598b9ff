"""MMD to the prior with the prior samples generated inside the kernels
(``mmd_to_prior(..., estimator="sampled", backend=B)``, the ``prior`` op family of the contract:
Triton, :mod:`wae_fast.kernels.prior`, and CUDA C++, csrc/cuda; the tests taking
``prior_backend`` run on every such backend available on this device).

Under the interpreter (CPU) or on CUDA.  The in-kernel estimator must equal, value and x
gradient, ``wae_fast.mmd(x, materialise_prior(...), backend="triton")`` and the float64 oracle on
the materialised samples, to the fp32 tolerances of tests/test_backends.py (value: 5e-6 x the
kernel-sum scale; gradient: 5e-5 x the gradient norm; fp64: 1e-12 / 1e-10).

Memory (no (M, d) tensor): by construction, see the module docstring of wae_fast.kernels.prior:
the host code allocates nothing whose size depends on M except the ceil(M / 16) fp64 partials;
``test_no_prior_sized_allocation`` checks that on CPU by intercepting torch allocations.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import wae_fast
from wae_fast.dispatch import unavailable_reason
from wae_fast.prior import mmd_to_prior, mmd_to_prior_terms

from . import oracle
from .conftest import backend_params

DEV = "cuda" if torch.cuda.is_available() else "cpu"
_REASON = unavailable_reason("triton", DEV)
pytestmark = pytest.mark.skipif(_REASON is not None, reason=str(_REASON))

if _REASON is None:
    from wae_fast.kernels.prior import materialise_prior

KERNELS = {"imq7": wae_fast.IMQ(), "rbf3": wae_fast.RBF(bandwidth=(0.6, 1.5, 4.0))}
VAL_TOL = {torch.float32: 5e-6, torch.float64: 1e-12}
GRAD_TOL = {torch.float32: 5e-5, torch.float64: 1e-10}
SEED = 2**40 + 12345   # > 2^32: exercises the 64-bit seed path


def _x(n, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.1 + 0.2
    return x.to(device=DEV, dtype=dtype).requires_grad_(True)


@pytest.fixture(params=[p for p in backend_params("prior")
                        if p.values[0][1] == DEV and p.values[0][0] in ("triton", "cuda")])
def prior_backend(request):
    """Name of an in-kernel prior backend on DEV (triton; cuda on a GPU with the extension)."""
    return request.param[0]


def _in_kernel(x, spec, unbiased, m, seed, sigma2=1.0, backend="triton"):
    return mmd_to_prior(x, spec, sigma2=sigma2, estimator="sampled", unbiased=unbiased,
                        num_samples=m, seed=seed, backend=backend)


@pytest.mark.parametrize("n,m,d", [(37, 70, 3), (100, 67, 17), (70, 45, 64)])
@pytest.mark.parametrize("kname", ["imq7", "rbf3"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_matches_materialised_and_oracle(prior_backend, n, m, d, kname, unbiased):
    spec, dtype = KERNELS[kname], torch.float32
    x = _x(n, d, dtype, seed=n + m + d)
    val = _in_kernel(x, spec, unbiased, m, SEED, backend=prior_backend)
    assert val.dtype == torch.float32 and val.shape == ()
    val.backward()
    g_kernel = x.grad.clone()

    y = materialise_prior(m, d, SEED, 1.0, dtype, DEV)
    x.grad = None
    ref = wae_fast.mmd(x, y, spec, estimator="unbiased" if unbiased else "biased", backend="triton")
    ref.backward()
    g_ref = x.grad.clone()

    kind, params = spec.lower(d)
    want, gx, _gy, scale = oracle.mmd_and_grads(x.detach().cpu(), y.cpu(), kind, params, unbiased)
    for v in (val, ref):
        err = abs(v.item() - want.item())
        assert err <= VAL_TOL[dtype] * scale, f"value error {err:.3g} vs scale {scale:.3g}"
    gnorm = gx.norm().item()
    for g in (g_kernel, g_ref):
        assert g.dtype == dtype and g.shape == x.shape
        gerr = (g.double().cpu() - gx).norm().item()
        assert gerr <= GRAD_TOL[dtype] * gnorm, f"grad error {gerr:.3g} vs norm {gnorm:.3g}"


def test_fp64_and_sigma2_and_grad_output(prior_backend):
    spec = wae_fast.IMQ(sigma2=2.5)
    n, m, d = 41, 29, 9
    x = _x(n, d, torch.float64, seed=3)
    val = _in_kernel(x, spec, True, m, 77, sigma2=2.5, backend=prior_backend)
    assert val.dtype == torch.float64
    (-3.7 * val).backward()
    y = materialise_prior(m, d, 77, 2.5, torch.float64, DEV)
    kind, params = spec.lower(d)
    want, gx, _gy, scale = oracle.mmd_and_grads(x.detach().cpu(), y.cpu(), kind, params, True, -3.7)
    assert abs(val.item() - want.item()) <= VAL_TOL[torch.float64] * scale
    assert (x.grad.cpu() - gx).norm().item() <= GRAD_TOL[torch.float64] * gx.norm().item()


@pytest.mark.parametrize("dtype,n,m,d", [(torch.bfloat16, 37, 23, 5), (torch.float16, 20, 30, 130)])
def test_half_inputs_and_wide_d(prior_backend, dtype, n, m, d):
    """Half codes are upcast after the load; the samples stay fp32 (the compute dtype); d = 130
    splits the backward over three gradient-column chunks (grid axis 1)."""
    spec = KERNELS["imq7"]
    x = _x(n, d, dtype, seed=11)
    val = _in_kernel(x, spec, True, m, SEED, backend=prior_backend)
    assert val.dtype == torch.float32
    val.backward()
    assert x.grad.dtype == dtype
    y = materialise_prior(m, d, SEED, 1.0, torch.float32, DEV)
    kind, params = spec.lower(d)
    want, gx, _gy, scale = oracle.mmd_and_grads(x.detach().cpu(), y.cpu(), kind, params, True)
    assert abs(val.item() - want.item()) <= 5e-6 * scale
    tol = 2 * (2.0**-8 if dtype == torch.bfloat16 else 2.0**-11)
    assert (x.grad.double().cpu() - gx).norm().item() <= tol * gx.norm().item()


def test_terms_and_partial_grad_terms(prior_backend):
    """The terms' gradient for an arbitrary grad_terms (yy term has no x gradient)."""
    spec = KERNELS["imq7"]
    n, m, d = 33, 50, 5
    x = _x(n, d, torch.float32, seed=5)
    t = mmd_to_prior_terms(x, spec, estimator="sampled", num_samples=m, seed=9,
                           backend=prior_backend)
    assert t.dtype == torch.float64 and t.shape == (3,)
    w = torch.tensor([0.3, 11.0, -1.7], dtype=torch.float64, device=DEV)
    (t * w).sum().backward()
    y = materialise_prior(m, d, 9, 1.0, torch.float32, DEV)
    kind, params = spec.lower(d)
    xd = x.detach().cpu().double().requires_grad_(True)
    want = oracle.mmd_terms(xd, y.cpu().double(), kind, params, True)
    (want * w.cpu()).sum().backward()
    scale = float((want.sum() + want[2]).detach())
    assert (t.detach().cpu() - want.detach()).abs().max().item() <= 5e-6 * scale
    assert (x.grad.cpu().double() - xd.grad).norm().item() <= 5e-5 * xd.grad.norm().item()


def test_seed_determinism(prior_backend):
    spec = KERNELS["rbf3"]
    x = _x(20, 6, torch.float32, seed=1)
    a = _in_kernel(x, spec, True, 30, 123, backend=prior_backend)
    b = _in_kernel(x, spec, True, 30, 123, backend=prior_backend)
    c = _in_kernel(x, spec, True, 30, 124, backend=prior_backend)
    assert torch.equal(a, b)                      # bit-identical reruns
    assert a.item() != c.item()
    ya = materialise_prior(30, 6, 123, 1.0, torch.float32, DEV)
    assert torch.equal(ya, materialise_prior(30, 6, 123, 1.0, torch.float32, DEV))
    assert not torch.equal(ya, materialise_prior(30, 6, 124, 1.0, torch.float32, DEV))
    # generator-drawn seeds: same generator state -> same value
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    v1 = mmd_to_prior(x, spec, estimator="sampled", generator=g1, backend=prior_backend)
    v2 = mmd_to_prior(x, spec, estimator="sampled", generator=g2, backend=prior_backend)
    assert torch.equal(v1, v2)


def test_materialise_statistics_and_layout():
    m, d, s2 = 1000, 20, 2.5
    y = materialise_prior(m, d, 31, s2, torch.float32, DEV).double().cpu()
    assert y.shape == (m, d)
    assert abs(y.mean().item()) < 5 * (s2 / (m * d)) ** 0.5
    assert abs(y.var().item() / s2 - 1.0) < 0.05          # sd of the ratio ~ 0.01
    # the flat stream: the (m, d) samples are the first m*d of any wider/longer virtual matrix
    flat = materialise_prior(1, m * d, 31, s2, torch.float32, DEV).cpu().reshape(m, d)
    assert torch.equal(flat.double(), y)
    # fp64 samples are the fp32 normals scaled in fp64
    y64 = materialise_prior(m, d, 31, s2, torch.float64, DEV).cpu()
    eps = materialise_prior(m, d, 31, 1.0, torch.float32, DEV).cpu().double()
    assert torch.equal(y64, eps * s2 ** 0.5)


def test_no_prior_sized_allocation(monkeypatch):
    """No host allocation of M * d (or N * M) elements: intercept the tensor factories the
    module uses and record sizes (a large M would be too slow under the interpreter)."""
    import wae_fast.kernels.prior as kp
    n, m, d = 20, 300, 8
    sizes = []
    for name in ("empty", "zeros", "empty_like", "zeros_like", "tensor", "stack"):
        orig = getattr(torch, name)

        def wrap(*a, _orig=orig, **k):
            t = _orig(*a, **k)
            sizes.append(t.numel())
            return t
        monkeypatch.setattr(kp.torch, name, wrap)
    x = _x(n, d, torch.float32)
    v = _in_kernel(x, KERNELS["imq7"], True, m, 4)
    v.backward()
    monkeypatch.undo()
    assert sizes and max(sizes) <= max(n * d, -(-m // 16))
    assert x.grad.shape == (n, d)


def test_backend_errors():
    x = _x(10, 3, torch.float32)
    with pytest.raises(ValueError, match="backend"):
        mmd_to_prior(x, estimator="sampled", backend="cuda-magic")
    with pytest.raises(ValueError, match="sampled"):
        mmd_to_prior(x, estimator="closed_form", backend="triton")
    with pytest.raises(ValueError, match="sampled"):
        mmd_to_prior(x, estimator="linear", backend="triton")
    with pytest.raises(TypeError, match="backend must be a string"):  # as wae_fast.mmd
        mmd_to_prior_terms(x, estimator="sampled", backend=None)
    # the reference path is unchanged by the new keyword
    a = mmd_to_prior(x, estimator="sampled", seed=3)
    b = mmd_to_prior(x, estimator="sampled", seed=3, backend="reference")
    assert torch.equal(a, b)


def test_prior_op_contract():
    """The prior ops go through torch.library: opcheck (schema, fake, autograd registration) and
    torch.compile with fullgraph see them."""
    from wae_fast import contract
    x = _x(12, 5, torch.float32).detach()
    kind, params = wae_fast.IMQ().lower(5)
    args = (x, kind, params, 1.0, True, 17, 3, "ieee")
    torch.library.opcheck(contract.op("prior_fwd_triton").default, args,
                          test_utils=("test_schema", "test_faketensor"))
    gt = torch.tensor([1.0, 0.5, -2.0], dtype=torch.float64, device=DEV)
    torch.library.opcheck(contract.op("prior_bwd_triton").default, (gt,) + args,
                          test_utils=("test_schema", "test_faketensor"))
    xr = x.clone().requires_grad_(True)
    f = torch.compile(lambda a: mmd_to_prior(a, estimator="sampled", num_samples=17, seed=3,
                                             backend="triton"), fullgraph=True, backend="aot_eager")
    v = f(xr)
    v.backward()
    xe = x.clone().requires_grad_(True)
    ve = mmd_to_prior(xe, estimator="sampled", num_samples=17, seed=3, backend="triton")
    ve.backward()
    assert torch.allclose(v, ve) and torch.allclose(xr.grad, xe.grad)


def test_auto_backend_picks_an_in_kernel_sampler_or_the_reference():
    x = _x(15, 4, torch.float32).detach()
    auto = mmd_to_prior(x, estimator="sampled", num_samples=20, seed=8, backend="auto")
    if DEV == "cuda":
        want = "cuda" if unavailable_reason("cuda", DEV, "prior") is None else "triton"
    else:  # CPU: the C++ backend's in-kernel sampler when built (Triton only under the interpreter)
        want = "cpp" if unavailable_reason("cpp", DEV, "prior") is None else "reference"
    same = mmd_to_prior(x, estimator="sampled", num_samples=20, seed=8, backend=want)
    assert torch.equal(auto, same)
    # closed form with "auto" is the reference path
    assert torch.equal(mmd_to_prior(x, backend="auto"), mmd_to_prior(x))


def test_unavailable_raises_runtime_error(monkeypatch):
    import wae_fast.dispatch as dispatch
    monkeypatch.setattr(dispatch, "unavailable_reason", lambda *args, **kwargs: "no GPU here")
    x = _x(10, 3, torch.float32)
    with pytest.raises(RuntimeError, match="no GPU here"):
        mmd_to_prior(x, estimator="sampled", backend="triton")


@pytest.mark.skipif(os.environ.get("WAE_FAST_SKIP_AOT") == "1", reason="WAE_FAST_SKIP_AOT=1")
def test_aot_compile_prior_kernels_sm90(tmp_path):
    """The new kernel variants compile for sm_90 (TRITON_INTERPRET unset, fresh process);
    WAE_FAST_AOT_SET=all compiles the extra variants too (a few minutes)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    out = tmp_path / "aot.json"
    which = os.environ.get("WAE_FAST_AOT_SET", "core")
    code = ("import sys; from wae_fast.kernels.aot import compile_prior; "
            f"compile_prior({which!r}, 90, {str(out)!r})")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=900)
    print(res.stdout)
    assert out.exists(), f"aot did not run (rc {res.returncode}):\n{res.stderr[-4000:]}"
    rows = json.loads(out.read_text())
    failed = [r for r in rows if not r["ok"]]
    assert not failed, "AOT failures:\n" + "\n".join(f"{r['name']}: {r['error']}" for r in failed)
    names = {r["name"].split()[0] for r in rows}
    assert names == {"prior_fwd", "prior_bwd", "prior_sample"}
    assert all(r["regs"] > 0 for r in rows)


def test_yy_config_prune():
    """On the GPU the generated yy forward is only tuned over 4-warp configs (8 warps spill)."""
    import triton

    from wae_fast.kernels.prior import _prune_prior_fwd
    cfgs = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((64, 8), (128, 8), (64, 4), (32, 4))]
    args = {"A": torch.empty(1)}
    yy = _prune_prior_fwd(cfgs, args, SYM=True, GEN_A=True)
    assert yy and all(c.num_warps == 4 for c in yy)
    xy = _prune_prior_fwd(cfgs, args, SYM=False, GEN_A=False)
    assert len(xy) == 4
