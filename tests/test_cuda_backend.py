"""The CUDA C++ backend (csrc/cuda: mmd_tiles.cuh, mmd_kernels.cu, prior_kernels.cu, binding.cpp).

CPU-runnable (CI):
* the op families and schemas the backend declares, its availability message off-GPU;
* a host program built with nvcc from mmd_tiles.cuh alone (no kernel is launched: the layout
  helpers are host code) checks the memory plan at N = M = 10,000,000: workspace O((N + M) d)
  plus O(row blocks) partials, no N x M and no M x d term, bounded split buffers of the
  backward, row blocks on grid.x, the backward's dynamic shared memory (<= 64 KB).

GPU-only (``@pytest.mark.cuda``, skipped without a CUDA device and the built extension), for
a later GPU session:
* prior op (in-kernel samples) == ``wae_fast.mmd`` on the materialised samples (Triton's
  ``materialise_prior`` and the CUDA reparam op's own stream), the float64 oracle, and the
  Triton prior backend; tolerances of tests/test_triton_prior.py / tests/test_backends.py;
* "tf32" / "tf32x3" ordering against the float64 oracle, "tf32x3" within the ieee tolerances;
* profiler kernel names (backend="cuda" runs our kernels), bit-identical reruns;
* ragged shapes for every dtype (fwd + bwd, mmd and prior ops);
* large N: N = 5,000,000 prior forward with peak memory bounded, the backward's direct-write
  path (one split) against Triton.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import wae_fast
from wae_fast.dispatch import unavailable_reason

from . import oracle

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
INCLUDE = ROOT / "csrc" / "include"

_REASON = unavailable_reason("cuda", "cuda", "prior") if torch.cuda.is_available() else "needs a CUDA GPU"

KERNELS = {"imq7": wae_fast.IMQ(), "rbf3": wae_fast.RBF(bandwidth=(0.6, 1.5, 4.0))}
VAL_TOL = {torch.float64: 1e-12, torch.float32: 5e-6, torch.float16: 5e-6, torch.bfloat16: 5e-6}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 2 * 2.0**-11, torch.bfloat16: 2 * 2.0**-8}
SEED = 2**40 + 12345   # > 2^32: exercises the 64-bit seed path


# ----------------------------------------------------------------------------------------------
# CPU-runnable


def test_backend_declares_prior_family():
    import wae_fast.cuda_backend  # noqa: F401  (defines the ops)
    from wae_fast.dispatch import BACKEND_TABLE
    assert set(BACKEND_TABLE["cuda"].caps.families) == {"mmd", "reparam", "prior", "kernel_matmul",
                                                         "mmd_segments"}
    for name in ("mmd_fwd_cuda", "mmd_bwd_cuda", "prior_fwd_cuda", "prior_bwd_cuda",
                 "reparam_fwd_cuda", "reparam_bwd_cuda", "mmd_segments_fwd_cuda",
                 "mmd_segments_bwd_cuda"):
        assert hasattr(torch.ops.wae_fast, name)


def test_unavailable_off_gpu_has_a_reason():
    r = unavailable_reason("cuda", "cpu", "prior")
    assert isinstance(r, str) and "CUDA" in r


def test_binding_registers_every_op():
    src = (CUDA_DIR / "binding.cpp").read_text()
    for name in ("mmd_fwd_cuda", "mmd_bwd_cuda", "prior_fwd_cuda", "prior_bwd_cuda",
                 "reparam_fwd_cuda", "reparam_bwd_cuda"):
        assert f'm.impl(WAE_OP("{name}")' in src   # "_emu" appended in the cuda_emu build
    hdr = (CUDA_DIR / "wae_cuda.h").read_text()
    for fn in ("wae_prior_fwd", "wae_prior_bwd", "wae_prior_workspace_bytes", "WAE_PREC_TF32X3"):
        assert fn in hdr


def _nvcc():
    exe = shutil.which("nvcc")
    if exe:
        return exe
    cand = Path("/usr/local/cuda/bin/nvcc")
    return str(cand) if cand.exists() else None


_HOST_PROGRAM = r"""
#include <cstdio>
#include "mmd_tiles.cuh"

static void lay(const char* op, int dtype, long long n, long long m, long long d, int bwd) {
  const WsLayout L = op[0] == 'm' ? mmd_layout(dtype, n, m, d, bwd) : prior_layout(dtype, n, m, d, bwd);
  std::printf("{\"kind\": \"layout\", \"op\": \"%s\", \"dtype\": %d, \"n\": %lld, \"m\": %lld, \"d\": %lld, "
              "\"bwd\": %d, \"xs\": %zu, \"ys\": %zu, \"self\": %zu, \"part\": %zu, \"gacc\": %zu, "
              "\"total\": %zu}\n", op, dtype, n, m, d, bwd, L.xs, L.ys, L.self, L.part, L.gacc, L.total);
}

int main() {
  const long long big = 10000000LL;
  const long long ns[] = {1, 2, 63, 64, 65, 1000, 33792, 100000, 1000000, big};
  const long long ds[] = {1, 5, 16, 17, 64, 65, 130, 1024};
  for (int bwd = 0; bwd < 2; ++bwd)
    for (int dt = 0; dt < 4; ++dt) {
      lay("mmd", dt, big, big, 64, bwd);
      lay("prior", dt, big, big, 64, bwd);
      lay("prior", dt, 1000, big, 64, bwd);
      lay("mmd", dt, 1000, 1000, 64, bwd);
    }
  for (long long n : ns)
    for (long long d : ds)
      for (int dt = 0; dt < 2; ++dt)
        std::printf("{\"kind\": \"split\", \"dtype\": %d, \"n\": %lld, \"d\": %lld, \"fwd\": %lld, \"bwd\": %lld, "
                    "\"chunks\": %lld}\n", dt, n, d, (long long)fwd_nsplit(n, n), (long long)bwd_nsplit(dt, n, d),
                    (long long)grad_chunks(dt, d));
  std::printf("{\"kind\": \"smem\", \"f32\": %zu, \"f64\": %zu}\n", GradLayout<float>::bytes,
              GradLayout<double>::bytes);
  return 0;
}
"""


@pytest.fixture(scope="module")
def host_plan(tmp_path_factory):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    td = tmp_path_factory.mktemp("cuda_host")
    src = td / "plan.cu"
    src.write_text(_HOST_PROGRAM)
    exe = td / "plan"
    p = subprocess.run([nvcc, "-std=c++17", "-O1", "-o", str(exe), str(src), "-I", str(INCLUDE),
                        "-I", str(CUDA_DIR)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_memory_plan_at_ten_million_points(host_plan):
    MB = 1 << 20
    for r in (r for r in host_plan if r["kind"] == "layout"):
        n, m, d = r["n"], r["m"], r["d"]
        es = 8 if r["dtype"] == 1 else 4
        stored = (n + (m if r["op"] == "mmd" else 0)) * d * es
        # the backward holds one more copy of a side: its rows in the self term's shift (the
        # stored copies hold the cross term's; each term has its own shift)
        self_copy = (max(n, m) if r["op"] == "mmd" else n) * d * es if r["bwd"] else 0
        assert r["self"] <= self_copy + 256, r
        # partials: one fp64 per (row block, split), <= row blocks + 528 per term; never N x M or M x d
        assert r["part"] <= 8 * (max(n, m) // 64 + 1 + 528) + 256, r
        assert r["total"] <= stored + self_copy + 4 * MB + r["gacc"], r
        if r["op"] == "prior":
            assert r["ys"] == 0
        if r["bwd"]:
            assert r["part"] == 0
            assert r["gacc"] <= (1 << 30) + 256, r           # bounded split buffers
            if n >= 1000000:
                assert r["gacc"] == 0, r                    # one split: direct output
        else:
            assert r["gacc"] == 0
    big = [r for r in host_plan if r["kind"] == "layout" and r["n"] == 10**7 and r["dtype"] == 0]
    # 10M x 64 fp32: x and y copies (2.56 GB each), the backward one more (a side's self-term copy)
    assert big and all(r["total"] < (6 + 3 * r["bwd"]) * 10**9 for r in big)


def test_split_plan_bounds(host_plan):
    for r in (r for r in host_plan if r["kind"] == "split"):
        assert 1 <= r["fwd"] <= 528 and 1 <= r["bwd"] <= 32, r
        assert math.ceil(r["n"] / 64) * r["fwd"] <= math.ceil(r["n"] / 64) + 528, r
        assert r["bwd"] == 1 or r["bwd"] * r["n"] * r["d"] * 8 <= 1 << 30, r
        assert r["chunks"] * r["bwd"] <= 65535, r                 # grid.y
        assert math.ceil(r["n"] / 64) <= 2**31 - 1                  # grid.x
        if r["n"] >= 528 * 64:
            assert r["fwd"] == 1 and r["bwd"] == 1, r


def test_backward_shared_memory_fits_every_sm(host_plan):
    """Dynamic (opt-in above 48 KB) shared memory of the backward: <= 64 KB, the opt-in limit of
    sm_75; two blocks per SM fit sm_80's 164 KB and sm_90's 228 KB."""
    (s,) = [r for r in host_plan if r["kind"] == "smem"]
    for b in (s["f32"], s["f64"]):
        assert 48 * 1024 < b <= 64 * 1024


# ----------------------------------------------------------------------------------------------
# GPU-only


def _x(n, d, dtype, seed=0, scale=1.1, shift=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift
    return x.to(device="cuda", dtype=dtype)


def _points(n, m, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.1 + 0.2
    y = torch.randn(m, d, generator=g, dtype=torch.float64)
    return x.to(device="cuda", dtype=dtype), y.to(device="cuda", dtype=dtype)


def _cuda_samples(m, d, seed, dtype):
    """The samples the CUDA prior kernels generate for sigma2 = 1, through the CUDA reparam op
    (same tile_math.h Philox stream: z = 0 + exp(0) * eps = eps exactly)."""
    from wae_fast import contract
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    z = torch.zeros(m, d, dtype=ct, device="cuda")
    return contract.reparam("cuda", z, torch.zeros_like(z), seed).detach()


def _prior(x, spec, unbiased, m, seed, backend="cuda", precision="ieee", sigma2=1.0):
    from wae_fast.prior import mmd_to_prior
    return mmd_to_prior(x, spec, sigma2=sigma2, estimator="sampled", unbiased=unbiased,
                        num_samples=m, seed=seed, backend=backend, precision=precision)


def _prior_terms(x, spec, unbiased, m, seed, precision="ieee"):
    from wae_fast.prior import mmd_to_prior_terms
    return mmd_to_prior_terms(x, spec, estimator="sampled", unbiased=unbiased, num_samples=m,
                              seed=seed, backend="cuda", precision=precision)


@pytest.mark.cuda
@pytest.mark.parametrize("n,m,d", [(37, 70, 3), (100, 67, 17), (70, 45, 64), (130, 200, 130)])
@pytest.mark.parametrize("kname", ["imq7", "rbf3"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_prior_matches_materialised_oracle_and_triton(n, m, d, kname, unbiased):
    _gpu_only()
    spec, dtype = KERNELS[kname], torch.float32
    x = _x(n, d, dtype, seed=n + m + d).requires_grad_(True)
    val = _prior(x, spec, unbiased, m, SEED)
    assert val.dtype == torch.float32 and val.shape == ()
    val.backward()
    g_cuda = x.grad.clone()
    kind, params = spec.lower(d)
    est = "unbiased" if unbiased else "biased"
    for y in (_cuda_samples(m, d, SEED, dtype), _triton_samples(m, d, SEED, dtype)):
        if y is None:
            continue
        want, gx, _gy, scale = oracle.mmd_and_grads(x.detach().cpu(), y.cpu(), kind, params, unbiased)
        assert abs(val.item() - want.item()) <= VAL_TOL[dtype] * scale
        assert (g_cuda.double().cpu() - gx).norm().item() <= GRAD_TOL[dtype] * gx.norm().item()
        xr = x.detach().clone().requires_grad_(True)
        ref = wae_fast.mmd(xr, y, spec, estimator=est, backend="cuda")
        ref.backward()
        assert abs(ref.item() - want.item()) <= VAL_TOL[dtype] * scale
        assert (xr.grad.double().cpu() - gx).norm().item() <= GRAD_TOL[dtype] * gx.norm().item()
    if unavailable_reason("triton", "cuda", "prior") is None:
        xt = x.detach().clone().requires_grad_(True)
        vt = _prior(xt, spec, unbiased, m, SEED, backend="triton")
        vt.backward()
        kind, params = spec.lower(d)
        _w, gx, _gy, scale = oracle.mmd_and_grads(x.detach().cpu(), _cuda_samples(m, d, SEED, dtype).cpu(),
                                                  kind, params, unbiased)
        assert abs(vt.item() - val.item()) <= 2 * VAL_TOL[dtype] * scale
        assert (xt.grad - g_cuda).double().norm().item() <= 2 * GRAD_TOL[dtype] * gx.norm().item()


def _triton_samples(m, d, seed, dtype):
    if unavailable_reason("triton", "cuda", "prior") is not None:
        return None
    from wae_fast.kernels.prior import materialise_prior
    return materialise_prior(m, d, seed, 1.0, torch.float32 if dtype != torch.float64 else dtype, "cuda")


def _gpu_only():
    if _REASON is not None:
        pytest.skip(str(_REASON))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prior_samples_match_triton_stream(dtype):
    """CUDA's Philox + Box-Muller (tile_math.h philox_randn_tl: libdevice log/cos and
    sqrt.approx.ftz like Triton's lowering of tl.randn) gives Triton's samples bit for bit; the
    fp64 tests against ``materialise_prior`` (1e-12) need exactly that."""
    _gpu_only()
    y_t = _triton_samples(300, 7, SEED, dtype)
    if y_t is None:
        pytest.skip("triton prior backend unavailable")
    y_c = _cuda_samples(300, 7, SEED, dtype)
    close = (y_c - y_t).abs().max().item() <= 1e-6 * max(1.0, y_t.abs().max().item())
    assert close, "the CUDA and Triton normal streams differ beyond fp32 rounding"
    diff = int((y_c != y_t).sum())
    assert diff == 0, f"{diff} of {y_t.numel()} draws differ in the last bits (see philox_randn_tl)"


def _rounding(g: torch.Tensor, dtype: torch.dtype) -> float:
    """||fl(g) - g||: the error of the exact gradient rounded to the output dtype.  At d = 64
    and 130 the fp16 gradients are ~1e-5, below fp16's smallest normal (6.1e-5), where the
    spacing is 2^-24 absolute: no fp16 output can meet a relative bound alone (seen on an H200)."""
    return (g.to(dtype).double() - g).norm().item()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [1, 5, 17, 64, 130])
@pytest.mark.parametrize("unbiased", [True, False])
def test_ragged_every_dtype_mmd_and_prior(dtype, d, unbiased):
    _gpu_only()
    n, m = 67, 45
    spec = KERNELS["imq7"] if d % 2 else KERNELS["rbf3"]
    kind, params = spec.lower(d)
    est = "unbiased" if unbiased else "biased"
    # mmd op
    x, y = _points(n, m, d, dtype, seed=d)
    x.requires_grad_(True)
    y.requires_grad_(True)
    v = wae_fast.mmd(x, y, spec, estimator=est, backend="cuda")
    v.backward()
    want, gx, gy, scale = oracle.mmd_and_grads(x.detach().cpu(), y.detach().cpu(), kind, params, unbiased)
    assert abs(v.item() - want.item()) <= VAL_TOL[dtype] * scale
    gnorm = torch.cat([gx.flatten(), gy.flatten()]).norm().item()
    for t, g in ((x, gx), (y, gy)):
        assert t.grad.dtype == dtype and t.grad.shape == t.shape
        assert (t.grad.double().cpu() - g).norm().item() <= GRAD_TOL[dtype] * gnorm + _rounding(g, dtype)
    # prior op (samples in the compute dtype)
    xp = _x(n, d, dtype, seed=d + 1).requires_grad_(True)
    vp = _prior(xp, spec, unbiased, m, SEED)
    vp.backward()
    ys = _cuda_samples(m, d, SEED, dtype)
    want, gx, _gy, scale = oracle.mmd_and_grads(xp.detach().cpu(), ys.cpu(), kind, params, unbiased)
    assert abs(vp.item() - want.item()) <= VAL_TOL[dtype] * scale
    assert xp.grad.dtype == dtype and xp.grad.shape == xp.shape
    assert (xp.grad.double().cpu() - gx).norm().item() <= GRAD_TOL[dtype] * gx.norm().item() + _rounding(gx, dtype)


@pytest.mark.cuda
def test_prior_sigma2_and_fp64():
    _gpu_only()
    spec = wae_fast.IMQ(sigma2=4.0)
    x = _x(90, 6, torch.float64, seed=3, scale=2.0).requires_grad_(True)
    v = _prior(x, spec, True, 80, 7, sigma2=4.0)
    v.backward()
    kind, params = spec.lower(6)
    y = _cuda_samples(80, 6, 7, torch.float64) * 2.0      # sqrt(4) = 2 exactly
    want, gx, _gy, scale = oracle.mmd_and_grads(x.detach().cpu(), y.cpu(), kind, params, True)
    assert abs(v.item() - want.item()) <= 1e-12 * scale
    assert (x.grad.cpu() - gx).norm().item() <= 1e-10 * gx.norm().item()


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["mmd", "prior"])
def test_precision_flag_ordering(op):
    _gpu_only()
    n, m, d = 2048, 2048, 64
    spec = wae_fast.IMQ()
    kind, params = spec.lower(d)
    if op == "mmd":
        x, y = _points(n, m, d, torch.float32, seed=9)
        x, y = x * 4.0, y * 4.0
    else:
        x = _x(n, d, torch.float32, seed=9, scale=4.0)
        y = _cuda_samples(m, d, SEED, torch.float32)
    want, gx, gy, scale = oracle.mmd_and_grads(x.cpu(), y.cpu(), kind, params, True)
    ref_terms = oracle.mmd_terms(x.cpu().double(), y.cpu().double(), kind, params, True)
    errs, gerrs = {}, {}
    for prec in ("ieee", "tf32x3", "tf32"):
        xg = x.clone().requires_grad_(True)
        if op == "mmd":
            t = wae_fast.mmd_terms(xg, y, spec, backend="cuda", precision=prec)
        else:
            t = _prior_terms(xg, spec, True, m, SEED, precision=prec)
        (t[0] + t[1] - 2 * t[2]).backward()
        errs[prec] = float((t.detach().cpu() - ref_terms).abs().max())
        gerrs[prec] = float((xg.grad.double().cpu() - gx).norm())
    assert errs["tf32"] > errs["ieee"], errs
    assert errs["tf32x3"] < errs["tf32"], errs
    assert gerrs["tf32x3"] < gerrs["tf32"], gerrs
    assert errs["tf32x3"] <= VAL_TOL[torch.float32] * scale, errs
    assert gerrs["tf32x3"] <= GRAD_TOL[torch.float32] * gx.norm().item(), gerrs


@pytest.mark.cuda
def test_profiler_shows_our_kernels():
    _gpu_only()
    from torch.profiler import ProfilerActivity, profile
    x, y = _points(300, 200, 16, torch.float32, seed=1)
    x.requires_grad_(True)
    xp = _x(300, 16, torch.float32, seed=2).requires_grad_(True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        wae_fast.mmd(x, y, wae_fast.IMQ(), backend="cuda").backward()
        _prior(xp, wae_fast.IMQ(), True, 100, 5).backward()
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages()]
    assert any("mmd_fwd_tiles" in k for k in names), names
    assert any("mmd_grad_rows" in k for k in names), names
    assert any("mmd_fwd_tiles" in k and "GenSrc" in k for k in names), names
    assert any("mmd_grad_rows" in k and "GenSrc" in k for k in names), names
    assert not any("triton" in k.lower() for k in names), names


@pytest.mark.cuda
@pytest.mark.parametrize("prec", ["ieee", "tf32x3", "tf32"])
@pytest.mark.parametrize("n", [500, 40000])
def test_bit_identical_reruns(prec, n):
    _gpu_only()
    x, y = _points(n, 700, 24, torch.float32, seed=4)
    outs = []
    for _ in range(2):
        xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        t = wae_fast.mmd_terms(xg, yg, wae_fast.IMQ(), backend="cuda", precision=prec)
        (t[0] + t[1] - 2 * t[2]).backward()
        xp = x.clone().requires_grad_(True)
        tp = _prior_terms(xp, wae_fast.IMQ(), True, 900, SEED, precision=prec)
        (tp[0] + tp[1] - 2 * tp[2]).backward()
        outs.append((t.detach(), xg.grad, yg.grad, tp.detach(), xp.grad))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_one_split_backward_matches_triton():
    """N = 40,000 rows: 625 row blocks >= 528, so the backward runs with one split and writes
    the output directly (no fp64 buffer); compare with the Triton backend."""
    _gpu_only()
    if unavailable_reason("triton", "cuda", "prior") is not None:
        pytest.skip("triton unavailable")
    x = _x(40000, 8, torch.float32, seed=5)
    grads = {}
    for be in ("cuda", "triton"):
        xg = x.clone().requires_grad_(True)
        _prior(xg, wae_fast.IMQ(), True, 3000, SEED, backend=be).backward()
        grads[be] = xg.grad.double()
    rel = (grads["cuda"] - grads["triton"]).norm() / grads["triton"].norm()
    assert rel.item() < 1e-4


@pytest.mark.cuda
def test_large_n_prior_forward_memory_bounded():
    """N = 5,000,000 > 65535 * 64 (the old grid.y limit): the forward runs and its peak extra
    memory is the shifted copy of x (N d 4 bytes) plus O(N / 64) partials and small tensors,
    far from N x M (5e6 x 4096 x 4 B = 82 GB) or the old per-tile partials (N^2 / 4096 x 8 B)."""
    _gpu_only()
    N, d, M = 5_000_000, 8, 4096
    spec = wae_fast.RBF(bandwidth=1.0)
    x = _x(N, d, torch.float32, seed=6)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t = _prior_terms(x, spec, True, M, SEED)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    bound = 2 * N * d * 4 + (64 << 20)
    assert peak < bound, (peak, bound)
    assert torch.isfinite(t).all() and (t > 0).all() and (t <= 1).all()
    # the yy term depends on the samples only: check it against the oracle
    kind, params = spec.lower(d)
    y = _cuda_samples(M, d, SEED, torch.float32)
    want = oracle.mmd_terms(y.cpu().double(), y.cpu().double(), kind, params, True)[0]
    assert abs(t[1].item() - want.item()) <= 5e-6 * want.item()


@pytest.mark.cuda
def test_prior_op_errors():
    _gpu_only()
    from wae_fast.contract import op
    x = _x(10, 3, torch.float32)
    kind, params = wae_fast.IMQ().lower(3)
    with pytest.raises(RuntimeError, match="seed"):
        op("prior_fwd_cuda")(x, kind, params, 1.0, True, 10, -1, "ieee")
    with pytest.raises(RuntimeError, match="num_samples"):
        op("prior_fwd_cuda")(x, kind, params, 1.0, True, 1, 0, "ieee")
    with pytest.raises(RuntimeError, match="precision"):
        op("prior_fwd_cuda")(x, kind, params, 1.0, True, 10, 0, "fp8")
    with pytest.raises(RuntimeError, match="sigma2"):
        op("prior_fwd_cuda")(x, kind, params, -1.0, True, 10, 0, "ieee")
