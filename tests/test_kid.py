"""wae_fast.kid against an independent dense float64 subset formula on the same indices, the full
U-statistic, torchmetrics' KernelInceptionDistance (when installed), and its input checks."""
from __future__ import annotations

import pytest
import torch

import wae_fast


def _features(n, m, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n, d, generator=g, dtype=torch.float64).abs()  # post-ReLU-like features
    f = torch.randn(m, d, generator=g, dtype=torch.float64).abs() * 1.1
    return r.to(dtype), f.to(dtype)


def _dense_kid(r, f, degree=3, gamma=None, coef0=1.0):
    """Unbiased MMD^2 with (gamma a.b + coef0)^degree from dense float64 matrices."""
    r, f = r.double(), f.double()
    g = 1.0 / r.shape[1] if gamma is None else gamma
    k = lambda a, b: (g * (a @ b.T) + coef0) ** degree  # noqa: E731
    n, m = r.shape[0], f.shape[0]
    kxx, kyy = k(r, r), k(f, f)
    return ((kxx.sum() - kxx.diag().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
            - 2 * k(r, f).mean())


def test_subsets_equal_dense_formula_on_same_indices(mmd_backend):
    name, dev = mmd_backend
    r, f = _features(40, 33, 16)
    got_mean, got_std = wae_fast.kid(r.to(dev), f.to(dev), subset_size=12, num_subsets=15,
                                     generator=torch.Generator().manual_seed(5), backend=name)
    g = torch.Generator().manual_seed(5)
    vals = []
    for _ in range(15):
        ir = torch.randperm(40, generator=g)[:12]
        jf = torch.randperm(33, generator=g)[:12]
        vals.append(_dense_kid(r[ir], f[jf]))
    vals = torch.stack(vals)
    assert got_mean.dtype == torch.float64
    assert abs(got_mean.item() - vals.mean().item()) < 1e-12 * 10
    assert abs(got_std.item() - vals.std(unbiased=False).item()) < 1e-12 * 10


def test_full_statistic_and_full_size_subsets():
    r, f = _features(50, 37, 24, seed=1)
    full, std0 = wae_fast.kid(r, f, subset_size=None)
    assert std0.item() == 0.0
    assert abs(full.item() - _dense_kid(r, f).item()) < 1e-12 * 10
    r2 = r[:37]
    mean, std = wae_fast.kid(r2, f, subset_size=37, num_subsets=6)  # every subset is the whole set
    assert std.item() < 1e-13
    assert abs(mean.item() - wae_fast.kid(r2, f, subset_size=None)[0].item()) < 1e-12


def test_kernel_options_and_fp32():
    r, f = _features(30, 30, 8, seed=2)
    got, _ = wae_fast.kid(r, f, subset_size=None, degree=2, gamma=0.3, coef0=0.5)
    assert abs(got.item() - _dense_kid(r, f, 2, 0.3, 0.5).item()) < 1e-12 * 10
    got32, _ = wae_fast.kid(r.float(), f.float(), subset_size=None)
    assert got32.dtype == torch.float32
    assert abs(got32.item() - _dense_kid(r.float(), f.float()).item()) < 5e-6 * 8


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_matches_torchmetrics(dtype, tol):
    tm = pytest.importorskip("torchmetrics.image.kid")
    r, f = _features(120, 90, 64, dtype, seed=3)
    metric = tm.KernelInceptionDistance(feature=torch.nn.Identity(), subsets=7, subset_size=50)
    metric.update(r, real=True)
    metric.update(f, real=False)
    torch.manual_seed(123)
    want_mean, want_std = metric.compute()
    torch.manual_seed(123)
    got_mean, got_std = wae_fast.kid(r, f, subset_size=50, num_subsets=7)
    assert abs(got_mean.item() - want_mean.item()) <= tol
    assert abs(got_std.item() - want_std.item()) <= tol


def test_validation_names_the_argument():
    r, f = _features(10, 8, 4)
    with pytest.raises(ValueError, match="^degree must be"):
        wae_fast.kid(r, f, subset_size=4, degree=0)
    with pytest.raises(ValueError, match="^subset_size=9 is larger"):
        wae_fast.kid(r, f, subset_size=9)
    with pytest.raises(ValueError, match="^subset_size must be"):
        wae_fast.kid(r, f, subset_size=1)
    with pytest.raises(ValueError, match="^num_subsets must be"):
        wae_fast.kid(r, f, subset_size=4, num_subsets=0)
    with pytest.raises(ValueError, match="^fake_features has d=3"):
        wae_fast.kid(r, f[:, :3], subset_size=4)
    with pytest.raises(ValueError, match="^real_features has 1 sample"):
        wae_fast.kid(r[:1], f, subset_size=None)
    with pytest.raises(ValueError, match="^real_features contains non-finite"):
        bad = r.clone()
        bad[0, 0] = float("inf")
        wae_fast.kid(bad, f, subset_size=4, check_finite=True)
    bad = r.clone()
    bad[0, 0] = float("nan")
    assert torch.isnan(wae_fast.kid(bad, f, subset_size=None)[0])
