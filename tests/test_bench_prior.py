"""Smoke run of the prior-at-scale benchmark (benchmarks/bench_prior.py --set tiny): every row
runs in its own process and reports a time, a peak-memory figure and a finite MMD^2; the
sampled rows' values equal a direct call with the same seed."""
from __future__ import annotations

import math

import torch

import wae_fast
from benchmarks import bench_prior
from wae_fast.prior import mmd_to_prior


def test_bench_prior_tiny(tmp_path):
    out = tmp_path / "prior.md"
    rc = bench_prior.main(["--set", "tiny", "--out", str(out)])
    text = out.read_text()
    assert rc == 0, text
    rows = [ln for ln in text.splitlines() if ln.startswith("| sampled") or ln.startswith("| closed")
            or ln.startswith("| linear")]
    assert len(rows) == len(bench_prior.rows_for("tiny")), text
    for ln in rows:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        t, mb, val = float(cells[7]), float(cells[8]), float(cells[10])
        assert t > 0 and mb >= 0 and math.isfinite(val), ln
    # the sampled row with M = 1000 is the library's value for that seed and these codes
    row = bench_prior.rows_for("tiny")[1]
    g = torch.Generator().manual_seed(row.n + row.d)
    x = torch.randn(row.n, row.d, generator=g) * 1.05 + 0.05
    want = float(mmd_to_prior(x, wae_fast.IMQ(), estimator="sampled", num_samples=row.m, seed=1234))
    got = float([c.strip() for c in rows[1].strip("|").split("|")][10])
    assert abs(got - want) <= 1e-3 * abs(want), (got, want)


def test_budget_skips_rows(tmp_path):
    out = tmp_path / "prior.md"
    rc = bench_prior.main(["--set", "tiny", "--budget", "0", "--backends", "reference", "--out", str(out)])
    text = out.read_text()
    assert rc == 1 and text.count("skipped: budget") == len(bench_prior.rows_for("tiny")), text
