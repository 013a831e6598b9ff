"""The cpp backend against the honest CPU floor, before vs after a change, in one run.

    python -m benchmarks.bench_cpu_floor --before PATH [--n 16384] [--ds 2,8,16,64] [--reps 3]
                                         [--threads T] [--bf16] [--out benchmarks/results/cpu-floor-<date>.md]

PATH is a source tree of the package to compare with (its ``wae_fast`` with its built ``_C.so``,
e.g. main's checkout); the "after" side is this checkout.  Rows: N = M = ``--n``, forward +
backward (x requires grad, y does not), fp32 (and bf16 for the after side), kernels IMQ with the
7 default scales, RBF bandwidths (0.5, 1, 2) (gamma ratios 4) and (0.3, 1, 3.7), each d.

Every row runs in fresh subprocesses, before and after back to back; each measures the fp32 GEMM
rate (n = 1024, best of 3) just before and after its timed calls, so each row's pairs per
second can be normalised by the GEMM rate measured beside it (the machine may be shared: the
load changes between rows).  Times: one warm-up call, then ``--reps`` calls; the minimum is
reported beside the median (contention only adds time).  The floor of a row is
:func:`benchmarks.floor.cpu_floor` (the evaluation of the after side) at the peak rates
(:func:`benchmarks.floor.measure_cpu_peak`, about 1 s) measured FRESH beside the row, just before
and just after its runs (each rate the better of the two: contention only lowers a rate), so a
row's % of floor is not taken against a peak measured minutes earlier under another load; the
peaks at the start and the end of the table are reported too.  The report calls the machine
shared or quiet from the 1-minute load average sampled at the start, beside every row and at the
end, less this benchmark's own threads.

Quick path (one row, well under a minute on a quiet machine):

    python -m benchmarks.bench_cpu_floor --before PATH --kernels imq7 --ds 8 --reps 2 --threads 1
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

KERNELS = {  # name -> (floor kind, constructor source evaluated in the worker)
    "imq7": ("imq", "IMQ()"),
    "rbf-0.5-1-2": ("rbf", "RBF(bandwidth=(0.5, 1.0, 2.0))"),
    "rbf-0.3-1-3.7": ("rbf", "RBF(bandwidth=(0.3, 1.0, 3.7))"),
}


def _gemm_rate(torch) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2.0 * 1024 ** 3 / best


def worker(spec: dict) -> dict:
    """One row in this process: GEMM rate, warm-up, timed fwd+bwd calls, GEMM rate."""
    import torch

    import wae_fast
    from wae_fast.kernel_specs import IMQ, RBF  # noqa: F401  (the constructor source uses them)

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    n, d = spec["n"], spec["d"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    g = torch.Generator().manual_seed(1234 + d)
    x = torch.randn(n, d, generator=g).to(dtype)
    y = torch.randn(n, d, generator=g).to(dtype)
    kernel = eval(KERNELS[spec["kernel"]][1])

    def call():
        xr = x.clone().requires_grad_(True)
        wae_fast.mmd(xr, y, kernel, backend="cpp").backward()

    g0 = _gemm_rate(torch)
    call()
    ts, cs = [], []
    for _ in range(spec["reps"]):
        c = time.process_time()
        t = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    g1 = _gemm_rate(torch)
    import wae_fast.cpp_backend as cb
    return {"min_s": min(ts), "median_s": sorted(ts)[len(ts) // 2], "cpu_min_s": min(cs), "gemm": (g0 + g1) / 2, "gemm_before": g0,
            "gemm_after": g1, "isa": cb.isa(), "package": wae_fast.__file__, "threads": torch.get_num_threads()}


def _run(tree: Path, spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    if spec.get("threads"):
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    env.pop("WAE_FAST_CPU_ISA", None)
    # run as a script from a neutral directory: the package comes from PYTHONPATH, not the cwd
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                         cwd="/", env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(res["package"]).resolve().is_relative_to(tree.resolve()):
        return {"error": [f"imported {res['package']}, not from {tree}"]}
    return res


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _load1() -> float:
    """The 1-minute load average (NaN where /proc/loadavg is missing)."""
    try:
        return float(_loadavg().split()[0])
    except (ValueError, IndexError):
        return float("nan")


def best_peak(p, q):
    """Rates of two peak measurements beside a row, each the better one (contention only lowers a rate)."""
    import dataclasses
    return dataclasses.replace(p, fma_rate=max(p.fma_rate, q.fma_rate), div_rate=max(p.div_rate, q.div_rate),
                               exp_rate=max(p.exp_rate, q.exp_rate), mem_bw=max(p.mem_bw, q.mem_bw))


def machine_note(loads: list, own_threads: int, cores: int) -> str:
    """Shared or quiet, from 1-minute load averages sampled during the run: the largest, less the
    benchmark's own threads (its worker counts while it runs), is the other work on the machine;
    more than one busy core of it reads SHARED."""
    finite = [v for v in loads if v == v]
    if not finite:
        return "- load average unknown (no /proc/loadavg): whether the machine was shared is not known"
    other = max(0.0, max(finite) - own_threads)
    if other > 1.0:
        return (f"- the machine ({cores} cores) was SHARED: up to {other:.1f} cores busy with other work "
                f"(1-min load average up to {max(finite):.2f}, less this benchmark's {own_threads} threads); "
                "absolute times are pessimistic and noisy; the GEMM-normalised speed-up divides each side's "
                "pairs/s by the GEMM rate measured in the same process around its calls; % of floor uses the "
                "minimum time and the peak measured beside the row")
    return (f"- the machine ({cores} cores) was quiet: at most {other:.1f} cores busy with other work "
            f"(1-min load average up to {max(finite):.2f}, this benchmark's {own_threads} threads included); "
            "the GEMM-normalised speed-up divides each side's pairs/s by the GEMM rate measured in the same "
            "process around its calls; % of floor uses the minimum time and the peak measured beside the row")


CPU_TIME_NOTE = ("- speed-up, CPU time: the ratio of the processes' minimum CPU time per call (time.process_time, "
                 "all threads): time spent descheduled on a shared machine does not count in it")


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--before", type=Path, help="source tree of the 'before' package (with its built _C.so)")
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--ds", default="2,8,16,64")
    ap.add_argument("--kernels", default=",".join(KERNELS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="also time bf16 inputs (after side)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch/OpenMP threads of the rows and of the floor's rates (default: torch's)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return 0
    sys.path.insert(0, str(ROOT))
    from benchmarks import floor

    t_start = time.time()
    load0 = _loadavg()
    loads = [_load1()]
    peak = floor.measure_cpu_peak(threads=a.threads or None)
    lines = []
    head = ("| kernel | d | before ms (min / med) | after ms (min / med) | GEMM GFLOP/s before / after | "
            "speed-up, raw (min) | speed-up, GEMM-normalised | speed-up, CPU time (min) | FMA peak GFLOP/s beside the row | floor ms (bound) "
            "| % of floor before / after |"
            + (" after bf16 ms (min / med) | bf16 / fp32 time |" if a.bf16 else ""))
    lines.append(head)
    lines.append("|" + "|".join(["---"] * (head.count("|") - 1)) + "|")
    pairs = floor.pair_counts(a.n, a.n)["total"]
    for kname in a.kernels.split(","):
        for d in (int(v) for v in a.ds.split(",")):
            spec = {"n": a.n, "d": d, "kernel": kname, "dtype": "fp32", "reps": a.reps, "threads": a.threads}
            loads.append(_load1())
            p0 = floor.measure_cpu_peak(threads=a.threads or None)
            b = _run(a.before, spec) if a.before else {"error": ["no --before"]}
            f = _run(ROOT, spec)
            row_peak = best_peak(p0, floor.measure_cpu_peak(threads=a.threads or None))
            loads.append(_load1())
            from wae_fast.kernel_specs import IMQ, RBF  # noqa: F401
            params = eval(KERNELS[kname][1]).lower(d)[1]
            fl = floor.cpu_floor(a.n, a.n, d, KERNELS[kname][0], params, "fwdbwd", row_peak)
            fresh = f"{2 * row_peak.fma_rate / 1e9:.0f}"
            row = [kname, str(d)]
            for r in (b, f):
                row.append("error: " + " ".join(r["error"]) if "error" in r else
                           f"{r['min_s'] * 1e3:.0f} / {r['median_s'] * 1e3:.0f}")
            if "error" in b or "error" in f:
                row += ["", "", "", "", fresh, f"{fl['floor_s'] * 1e3:.1f} ({fl['bound']})", ""]
            else:
                row.append(f"{b['gemm'] / 1e9:.0f} / {f['gemm'] / 1e9:.0f}")
                raw = b["min_s"] / f["min_s"]
                norm = (pairs / f["min_s"] / f["gemm"]) / (pairs / b["min_s"] / b["gemm"])
                row += [f"{raw:.2f}x", f"{norm:.2f}x", f"{b['cpu_min_s'] / f['cpu_min_s']:.2f}x", fresh, f"{fl['floor_s'] * 1e3:.1f} ({fl['bound']})",
                        f"{100 * fl['floor_s'] / b['min_s']:.0f}% / {100 * fl['floor_s'] / f['min_s']:.0f}%"]
            if a.bf16:
                h = _run(ROOT, dict(spec, dtype="bf16"))
                if "error" in h or "error" in f:
                    row += ["error" if "error" in h else f"{h['min_s'] * 1e3:.0f} / {h['median_s'] * 1e3:.0f}", ""]
                else:
                    row += [f"{h['min_s'] * 1e3:.0f} / {h['median_s'] * 1e3:.0f}", f"{h['min_s'] / f['min_s']:.2f}"]
            lines.append("| " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
    isa = f.get("isa", "?") if isinstance(f, dict) else "?"
    load_end = _loadavg()
    loads.append(_load1())
    peak_end = floor.measure_cpu_peak(threads=a.threads or None)
    info = [
        f"# cpp backend vs the honest CPU floor, before / after ({_dt.datetime.utcnow():%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python -m benchmarks.bench_cpu_floor {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        f"- N = M = {a.n}, forward + backward (x requires grad), unbiased, fp32; {a.reps} timed calls per row after "
        f"one warm-up, each row in fresh processes, before and after back to back; threads: {a.threads or 'torch default'}",
        f"- before: {a.before} ; after: {ROOT} (tiles: {isa})",
        "- floor rates: measured beside each row (the FMA column; division, exp and copy likewise); "
        f"at the start of the table: {peak.source}; at the end: {peak_end.source}",
        f"- load average (1, 5, 15 min) at the start: {load0}; at the end: {load_end}; wall {time.time() - t_start:.0f} s",
        machine_note(loads, a.threads or _torch_threads(), os.cpu_count() or 0),
        CPU_TIME_NOTE,
        "",
    ]
    text = "\n".join(info + lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
