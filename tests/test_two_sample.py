"""mmd_test (permutations from one kernel_matmul pass) and median_heuristic."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import wae_fast


def _split_perms(L, n):
    """Every split of L points into n + (L - n) as rows of a (C(L, n), L) permutation tensor."""
    rows = []
    for s in itertools.combinations(range(L), n):
        rows.append(list(s) + [i for i in range(L) if i not in s])
    return torch.tensor(rows)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
@pytest.mark.parametrize("kernel", [wae_fast.IMQ(), wae_fast.RBF(bandwidth=0.8), wae_fast.Polynomial(degree=2)])
def test_exact_enumeration_n4(kmm_backend, estimator, kernel):
    """All 70 splits of 4 + 4 points: the null equals the enumerated statistics, and the p-value
    is (1 + #{enumerated >= observed}) / (1 + 70)."""
    name, dev = kmm_backend
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64).to(dev)
    y = (torch.randn(4, 3, generator=g, dtype=torch.float64) + 0.7).to(dev)
    z = torch.cat([x, y])
    perms = _split_perms(8, 4)
    res = wae_fast.mmd_test(x, y, kernel, estimator=estimator, permutations=perms, backend=name)
    enum = torch.stack([wae_fast.mmd(z[p[:4]], z[p[4:]], kernel, estimator=estimator, backend="reference")
                        for p in perms.to(dev)]).cpu()
    assert torch.allclose(res.null, enum, rtol=0, atol=1e-12 * float(enum.abs().max()))
    assert torch.equal(res.statistic, wae_fast.mmd(x, y, kernel, estimator=estimator, backend=name))
    obs = float(res.statistic)
    want = (1 + int((enum >= obs - 1e-12 * abs(obs)).sum())) / 71
    assert res.p_value == pytest.approx(want, abs=1e-15)


def test_calibration_under_h0():
    """400 seeded runs with x, y from one law: rejection rate at alpha = 0.05 in [0.025, 0.08]."""
    rejections = 0
    for s in range(400):
        g = torch.Generator().manual_seed(s)
        x = torch.randn(15, 2, generator=g)
        y = torch.randn(12, 2, generator=g)
        res = wae_fast.mmd_test(x, y, wae_fast.RBF(bandwidth=1.0), num_permutations=99, generator=g)
        rejections += res.p_value <= 0.05
    assert 0.025 <= rejections / 400 <= 0.08, rejections / 400


def test_power_rises_with_n():
    rates = []
    for n in (8, 24, 72):
        rej = 0
        for s in range(40):
            g = torch.Generator().manual_seed(1000 + s)
            x = torch.randn(n, 3, generator=g)
            y = torch.randn(n, 3, generator=g)
            y[:, 0] += 0.8
            rej += wae_fast.mmd_test(x, y, wae_fast.RBF(bandwidth=1.5), num_permutations=99,
                                     generator=g).p_value <= 0.05
        rates.append(rej / 40)
    assert rates[0] < rates[1] < rates[2] or (rates[0] < rates[2] and rates[2] >= 0.9), rates
    assert rates[2] >= 0.8


def test_reproducible_with_generator_and_biased():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 4), torch.randn(25, 4) + 0.3
    a = wae_fast.mmd_test(x, y, num_permutations=50, generator=g1)
    b = wae_fast.mmd_test(x, y, num_permutations=50, generator=g2)
    assert a.p_value == b.p_value and torch.equal(a.null, b.null) and a.null.shape == (50,)


def test_mmd_test_validation():
    x, y = torch.randn(5, 3), torch.randn(6, 3)
    with pytest.raises(ValueError, match="^num_permutations must be"):
        wae_fast.mmd_test(x, y, num_permutations=0)
    with pytest.raises(ValueError, match="^y has d=2"):
        wae_fast.mmd_test(x, y[:, :2])
    with pytest.raises(ValueError, match="^x has 1 point"):
        wae_fast.mmd_test(x[:1], y)
    with pytest.raises(ValueError, match="^permutations"):
        wae_fast.mmd_test(x, y, permutations=torch.zeros(3, 11, dtype=torch.long))


def test_median_heuristic():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.randn(31, 5, generator=g) + 1.0
    z = torch.cat([x, y]).double()
    r = ((z[:, None] - z[None]) ** 2).sum(-1)
    iu = torch.triu_indices(71, 71, 1)
    vals = r[iu[0], iu[1]].sort().values
    want = (vals[(vals.numel() - 1) // 2] / 2).sqrt().item()   # lower median
    bw = wae_fast.median_heuristic(x, y)
    assert bw == pytest.approx(want, rel=1e-12)
    assert wae_fast.median_heuristic(x) > 0
    wae_fast.RBF(bandwidth=bw)  # accepted
    big = torch.randn(3000, 2, generator=g)
    a = wae_fast.median_heuristic(big, generator=torch.Generator().manual_seed(1), max_points=500)
    b = wae_fast.median_heuristic(big, generator=torch.Generator().manual_seed(1), max_points=500)
    # 2-D standard normals: r = ||a - b||^2 ~ 2 chi2_2, median 4 ln 2, bandwidth sqrt(2 ln 2)
    assert a == b and abs(a - (2 * math.log(2)) ** 0.5) < 0.1
    with pytest.raises(ValueError, match="^y must be 2-D"):
        wae_fast.median_heuristic(x, y[:, :2])
    with pytest.raises(ValueError, match="median pairwise distance is 0"):
        wae_fast.median_heuristic(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="^max_points"):
        wae_fast.median_heuristic(x, max_points=1)
