"""MMD to the prior at scale: time and peak memory of :func:`wae_fast.mmd_to_prior` as N and the
number of prior samples M grow (issue: N = 10,000,000 codes, memory O(N d) independent of M).

    python -m benchmarks.bench_prior --set cpu            # this machine (about 2-4 minutes)
    python -m benchmarks.bench_prior --set gpu            # a CUDA GPU (N = 10M rows; minutes)
    python -m benchmarks.bench_prior --set tiny           # smoke run (seconds)
    (--backends cuda,reference keeps those rows; --budget S starts no row after S seconds)

Every row runs in a fresh process: the codes x (N, d) fp32 are made first, one small warm-up
call follows, then one timed call (``--reps`` for the median of several).  Peak memory is what
the call added on top of x: on CUDA ``torch.cuda.max_memory_allocated()`` minus the allocation
before the call; on CPU the growth of the process's peak RSS (``ru_maxrss``) over the call,
so it includes allocator slack.  ``x MB`` is N * d * 4 bytes for comparison.  fwd+bwd rows
differentiate w.r.t. x (the prior samples are not inputs).

Estimators (see :mod:`wae_fast.prior`): ``sampled`` (M prior samples regenerated block by block,
never stored: every backend draws the same Philox stream, the reference 1024 rows at a time in
torch, the kernel backends inside the kernels, cpp in chunks of 4096 rows), ``closed_form`` (no samples: only the x-x term is pairwise),
``linear`` (Gretton et al. 2012: O(N d) time, M = N samples materialised).

The report (markdown) goes to ``benchmarks/results/prior-<device>-<date>.md`` unless ``--out``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")


@dataclass(frozen=True)
class PriorRow:
    estimator: str
    backend: str
    n: int
    m: int
    d: int
    passes: str = "fwdbwd"    # "fwd" or "fwdbwd"
    device: str = "cpu"


def rows_for(name: str) -> list[PriorRow]:
    R = PriorRow
    if name == "tiny":
        return [R("sampled", "reference", 300, m, 4) for m in (100, 1000)] + [
            R("closed_form", "reference", 300, 0, 4), R("linear", "reference", 10_000, 0, 4)]
    if name == "cpu":
        rows = [R("linear", "reference", 10_000_000, 0, 8, "fwd"),
                R("linear", "reference", 10_000_000, 0, 8, "fwdbwd")]
        rows += [R("sampled", be, 4096, m, 8) for be in ("reference", "cpp") for m in (4096, 32768, 131072)]
        rows += [R("closed_form", "reference", n, 0, 8) for n in (4096, 16384)]
        return rows
    if name == "gpu":
        big = 10_000_000
        rows = [R("linear", "reference", big, 0, 8, "fwdbwd", "cuda")]
        for be in ("cuda", "triton"):
            rows += [R("sampled", be, big, m, 8, "fwd", "cuda") for m in (65536, 1 << 20)]
        rows += [R("sampled", be, 1 << 20, 1 << 20, 64, "fwdbwd", "cuda") for be in ("cuda", "triton")]
        rows += [R("closed_form", "reference", 1 << 20, 0, 8, "fwd", "cuda")]
        return rows
    raise SystemExit(f"unknown row set {name!r}; expected tiny, cpu or gpu")


# Runs in a fresh interpreter: argv[1] = the row as JSON, argv[2] = reps.
_CHILD = r"""
import json, resource, statistics, sys, time
import torch
import wae_fast
from wae_fast.prior import mmd_to_prior
row = json.loads(sys.argv[1]); reps = int(sys.argv[2])
dev = row["device"]
cuda = dev == "cuda"
g = torch.Generator(device="cpu").manual_seed(row["n"] + row["d"])
x = (torch.randn(row["n"], row["d"], generator=g) * 1.05 + 0.05).to(dev)
kw = dict(estimator=row["estimator"])
if row["estimator"] != "closed_form":
    kw.update(seed=1234)
if row["estimator"] == "sampled":
    kw.update(num_samples=row["m"], backend=row["backend"])
grad = row["passes"] == "fwdbwd"

def call(xx, kw=kw):
    xx = xx.detach().requires_grad_(grad)
    v = mmd_to_prior(xx, wae_fast.IMQ(), **kw)
    if grad:
        v.backward()
    return float(v)

small = dict(kw)
if "num_samples" in small:
    small["num_samples"] = min(64, row["m"])
call(x[:64], small)                                  # warm-up: lazy inits, kernel compiles
if cuda:
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(reps):
    if cuda: torch.cuda.synchronize()
    t0 = time.perf_counter()
    val = call(x)
    if cuda: torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
out = {"time_s": statistics.median(times), "value": val}
if cuda:
    out["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    out["gpu"] = torch.cuda.get_device_name()
else:
    out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
print("RESULT " + json.dumps(out))
"""


def run_row(row: PriorRow, reps: int, timeout: float) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        p = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(asdict(row)), str(reps)],
                           capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(line[-1][len("RESULT "):])


def report(results: list[tuple[PriorRow, dict]], title: str, command: str) -> str:
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             f"Machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), "
             f"python {platform.python_version()}", "",
             "| estimator | backend | device | N | M | d | passes | time s | peak extra MB | x MB | MMD^2 |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for row, r in results:
        xmb = row.n * row.d * 4 / 2**20
        m = row.m if row.estimator == "sampled" else ("N" if row.estimator == "linear" else "-")
        if "error" in r:
            lines.append(f"| {row.estimator} | {row.backend} | {row.device} | {row.n} | {m} | {row.d} | "
                         f"{row.passes} | error: {r['error']} | | {xmb:.1f} | |")
            continue
        lines.append(f"| {row.estimator} | {row.backend} | {row.device} | {row.n} | {m} | {row.d} | "
                     f"{row.passes} | {r['time_s']:.3g} | {r['peak_mb']:.1f} | {xmb:.1f} | {r['value']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="cpu", choices=("tiny", "cpu", "gpu"))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900.0, help="per row, seconds")
    ap.add_argument("--budget", type=float, default=None,
                    help="start no row after this many seconds (the rest are reported as skipped)")
    ap.add_argument("--backends", default=None, help="comma-separated: keep only these backends' rows")
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/prior-<set>-<date>.md)")
    args = ap.parse_args(argv)
    rows = rows_for(args.set)
    if args.backends:
        keep = set(args.backends.split(","))
        rows = [r for r in rows if r.backend in keep]
    results = []
    t0 = time.perf_counter()
    for row in rows:
        # >=: a budget of 0 starts no row (with >, a first check in the same tick of time.time()
        # read 0 s spent and ran the first row: a flaky test_budget_skips_rows in CI)
        if args.budget is not None and time.perf_counter() - t0 >= args.budget:
            r = {"error": f"skipped: budget of {args.budget:.0f} s spent"}
        else:
            r = run_row(row, args.reps, args.timeout)
        results.append((row, r))
        print(row, r, flush=True)
    date = _dt.date.today().isoformat()
    cmd = "python -m benchmarks.bench_prior " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, f"MMD to the prior at scale ({args.set}, {date})", cmd.strip())
    out = args.out or os.path.join(RESULTS, f"prior-{args.set}-{date}.md")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(text)
    return 1 if any("error" in r for _, r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
