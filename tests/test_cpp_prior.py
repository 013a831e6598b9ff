"""MMD to the prior with the prior samples generated on the fly by the C++ CPU backend
(``mmd_to_prior(..., estimator="sampled", backend="cpp")``: ops ``prior_fwd_cpp``/``prior_bwd_cpp``).

Sample j is y_j[k] = sqrt(sigma2) * randn(seed, j * d + k) on the Philox stream of the Triton and
CUDA kernels (csrc/include/wae_fast/tile_math.h).  The host's log/cos/sqrt may differ from
Triton's by an ulp for some draws, so the oracle here runs on the samples the host draws
(``wae_fast._C.philox_randn_host``), with the tolerances of tests/test_backends.py (value 5e-6 x
the kernel-sum scale in fp32, 1e-12 in fp64; gradient 5e-5 / 1e-10 of its norm); against the
Triton kernels (same seed) the fp32 tolerance applies.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import wae_fast
from wae_fast.dispatch import unavailable_reason
from wae_fast.prior import mmd_to_prior, mmd_to_prior_terms

from . import oracle

_REASON = unavailable_reason("cpp", "cpu", "prior")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=str(_REASON))

KERNELS = {"imq7": wae_fast.IMQ(), "rbf3": wae_fast.RBF(bandwidth=(0.6, 1.5, 4.0))}
VAL_TOL = {torch.float32: 5e-6, torch.float64: 1e-12}
GRAD_TOL = {torch.float32: 5e-5, torch.float64: 1e-10}
SEED = 2**40 + 12345   # > 2^32: the seed's high word reaches the Philox key
CHUNK = 4096           # rows of samples the C++ code generates at a time (kPriorChunk)


def _x(n, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.1 + 0.2
    return x.to(dtype).requires_grad_(True)


def host_samples(m, d, seed, sigma2=1.0, dtype=torch.float32):
    """The samples prior_fwd_cpp draws: fp32 Philox normals, cast to the compute dtype, times
    sqrt(sigma2) in that dtype."""
    from wae_fast import cpp_backend
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    eps = cpp_backend.extension().philox_randn_host(seed, torch.arange(m * d)).reshape(m, d).to(ct)
    return eps * torch.tensor(sigma2, dtype=torch.float64).sqrt().to(ct)


def _sampled(x, spec, unbiased, m, seed, sigma2=1.0, backend="cpp"):
    return mmd_to_prior(x, spec, sigma2=sigma2, estimator="sampled", unbiased=unbiased,
                        num_samples=m, seed=seed, backend=backend)


@pytest.fixture(params=["baseline", "avx2", "avx512"])
def isa(request, monkeypatch):
    """One variant of the tile kernels (WAE_FAST_CPU_ISA), skipped where this machine cannot run it."""
    from wae_fast import cpp_backend
    runs = cpp_backend.extension().isas()
    if request.param not in runs:
        pytest.skip(f"this CPU/OS runs {runs}, not {request.param}")
    monkeypatch.setenv("WAE_FAST_CPU_ISA", request.param)
    return request.param


@pytest.mark.parametrize("n,m,d", [(37, 70, 3), (100, 67, 17), (70, 45, 64)])
@pytest.mark.parametrize("kname", ["imq7", "rbf3"])
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_oracle_on_the_drawn_samples(n, m, d, kname, unbiased, dtype, isa):
    spec = KERNELS[kname]
    x = _x(n, d, dtype, seed=n + m + d)
    val = _sampled(x, spec, unbiased, m, SEED, sigma2=1.7)
    assert val.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    (-2.5 * val).backward()
    y = host_samples(m, d, SEED, 1.7, dtype)
    kind, params = spec.lower(d)
    want, gx, _gy, scale = oracle.mmd_and_grads(x.detach(), y, kind, params, unbiased, -2.5)
    assert abs(val.item() - want.item()) <= VAL_TOL[dtype] * scale
    assert x.grad.dtype == dtype
    assert (x.grad.double() - gx).norm().item() <= GRAD_TOL[dtype] * gx.norm().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_several_sample_chunks(dtype):
    """M = 2 * 4096 + 37 samples: three chunks, the yy chunk pairs (a < b) and the xy stream.
    Compared with the cpp MMD on the materialised samples (itself checked against the oracle in
    tests/test_backends.py; the dense float64 oracle at this M takes ~20 s)."""
    n, m, d = 5, 2 * CHUNK + 37, 2
    x = _x(n, d, dtype, seed=3)
    val = _sampled(x, KERNELS["imq7"], True, m, SEED)
    val.backward()
    xr = x.detach().clone().requires_grad_(True)
    y = host_samples(m, d, SEED, dtype=dtype)
    t = wae_fast.mmd_terms(xr, y, KERNELS["imq7"], backend="cpp")
    ref = t[0] + t[1] - 2 * t[2]
    ref.backward()
    scale = float((t[0] + t[1] + 2 * t[2]).detach())
    assert abs(val.item() - ref.item()) <= VAL_TOL[dtype] * scale
    assert (x.grad - xr.grad).norm().item() <= GRAD_TOL[dtype] * xr.grad.norm().item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_codes(dtype, isa):
    x = _x(33, 9, dtype, seed=4)
    val = _sampled(x, KERNELS["imq7"], True, 50, SEED)
    assert val.dtype == torch.float32
    val.backward()
    assert x.grad.dtype == dtype
    kind, params = KERNELS["imq7"].lower(9)
    want, gx, _gy, scale = oracle.mmd_and_grads(x.detach(), host_samples(50, 9, SEED), kind, params, True)
    assert abs(val.item() - want.item()) <= 5e-6 * scale
    tol = 2 * (2.0**-8 if dtype == torch.bfloat16 else 2.0**-11)
    assert (x.grad.double() - gx).norm().item() <= tol * gx.norm().item()


def test_terms_and_partial_grad_terms():
    """Arbitrary grad_terms: the xx and xy parts of the recompute backward separately."""
    n, m, d = 29, 41, 5
    x = _x(n, d, torch.float64, seed=5)
    t = mmd_to_prior_terms(x, KERNELS["rbf3"], estimator="sampled", num_samples=m, seed=9, backend="cpp")
    w = torch.tensor([0.3, 11.0, -1.7], dtype=torch.float64)
    (t * w).sum().backward()
    kind, params = KERNELS["rbf3"].lower(d)
    xd = x.detach().clone().requires_grad_(True)
    want = oracle.mmd_terms(xd, host_samples(m, d, 9, dtype=torch.float64), kind, params, True)
    (want * w).sum().backward()
    scale = float((want.sum() + want[2]).detach())
    assert (t.detach() - want.detach()).abs().max().item() <= 1e-12 * scale
    assert (x.grad - xd.grad).norm().item() <= 1e-10 * xd.grad.norm().item()


def test_same_samples_as_the_triton_kernels():
    """The same seed gives the same samples as Triton's in-kernel prior, up to an ulp per draw."""
    if unavailable_reason("triton", "cpu", "prior") is not None:
        pytest.skip("triton (interpreter) not available")
    from wae_fast.kernels.prior import materialise_prior
    y_t = materialise_prior(300, 7, SEED, 2.0, torch.float32, "cpu")
    y_c = host_samples(300, 7, SEED, 2.0)
    torch.testing.assert_close(y_c, y_t, rtol=4e-6, atol=1e-6)
    x = _x(40, 7, torch.float32, seed=8)
    a = _sampled(x, KERNELS["imq7"], True, 300, SEED, sigma2=2.0)
    b = _sampled(x, KERNELS["imq7"], True, 300, SEED, sigma2=2.0, backend="triton")
    t = mmd_to_prior_terms(x.detach(), KERNELS["imq7"], sigma2=2.0, estimator="sampled", num_samples=300,
                           seed=SEED, backend="cpp")
    assert abs(a.item() - b.item()) <= 5e-6 * float(t[0] + t[1] + 2 * t[2])


def test_deterministic_and_seeded():
    x = _x(20, 6, torch.float32, seed=1).detach()
    a = _sampled(x, KERNELS["rbf3"], True, 30, 123)
    assert torch.equal(a, _sampled(x, KERNELS["rbf3"], True, 30, 123))
    assert a.item() != _sampled(x, KERNELS["rbf3"], True, 30, 124).item()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(a, _sampled(x, KERNELS["rbf3"], True, 30, 123))  # any thread count
    finally:
        torch.set_num_threads(threads)


def test_auto_on_cpu_is_cpp_and_opcheck():
    from wae_fast import contract
    x = _x(15, 4, torch.float32).detach()
    auto = mmd_to_prior(x, estimator="sampled", num_samples=20, seed=8, backend="auto")
    assert torch.equal(auto, mmd_to_prior(x, estimator="sampled", num_samples=20, seed=8, backend="cpp"))
    kind, params = wae_fast.IMQ().lower(4)
    args = (x, kind, params, 1.0, True, 17, 3, "ieee")
    torch.library.opcheck(contract.op("prior_fwd_cpp").default, args)
    gt = torch.tensor([1.0, 0.5, -2.0], dtype=torch.float64)
    torch.library.opcheck(contract.op("prior_bwd_cpp").default, (gt,) + args)


def test_errors():
    from wae_fast import contract
    x = _x(10, 3, torch.float32).detach()
    with pytest.raises(ValueError, match="num_samples"):
        _sampled(x, KERNELS["imq7"], True, 1, 3)
    with pytest.raises(ValueError, match="seed"):
        _sampled(x, KERNELS["imq7"], True, 10, -1)
    with pytest.raises(RuntimeError, match="sigma2"):
        contract.op("prior_fwd_cpp")(x, 0, [1.0], -1.0, True, 10, 3, "ieee")


_RSS = textwrap.dedent("""
    import json, resource, torch, wae_fast
    import wae_fast.cpp_backend  # registers the cpp ops
    from wae_fast import contract
    x = torch.randn(64, 32)
    kind, params = wae_fast.IMQ().lower(32)
    gt = torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64)
    bwd = contract.op("prior_bwd_cpp")
    bwd(gt, x, kind, params, 1.0, True, 100, 1, "ieee")            # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    g = bwd(gt, x, kind, params, 1.0, True, 1_000_000, 1, "ieee")  # the xy pass streams 1M samples
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_mb": (after - before) / 1024, "finite": bool(torch.isfinite(g).all())}))
""")


@pytest.mark.slow
def test_prior_samples_are_never_all_stored():
    """M = 1,000,000 samples of d = 32 would be 122 MB in fp32 (244 MB padded and shifted); the
    peak RSS of the pass that streams them past x grows by far less (chunks of 4096 rows)."""
    out = subprocess.run([sys.executable, "-c", _RSS], capture_output=True, text=True, timeout=600, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["finite"] and res["growth_mb"] < 30, res
