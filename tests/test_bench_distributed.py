"""Smoke run of the multi-rank CPU benchmark (N=M=256, K=1 and 2 gloo ranks, one call each)."""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_distributed_quick(tmp_path):
    out = tmp_path / "report.md"
    env = dict(os.environ, PYTHONWARNINGS="ignore::FutureWarning")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_distributed", "--quick", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    why = f"report:\n{text}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert text in proc.stdout, why
    rows = [line for line in text.splitlines() if line.startswith("| 256 |")]
    assert len(rows) == 3, why  # reference, K=1, K=2
    values = {float(r.split("|")[-2]) for r in rows}
    assert max(values) - min(values) <= 1e-5 * max(values), why  # the same MMD^2 everywhere
    k2_pairs = rows[2].split("|")[7]
    one = int(rows[1].split("|")[7].replace(",", ""))
    assert sum(int(p.replace(",", "")) for p in k2_pairs.split(", ")) == one, why  # ranks' pairs sum up
