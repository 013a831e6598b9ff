"""CPU speed-up of :func:`wae_fast.mmd_distributed` over several gloo ranks.

    python -m benchmarks.bench_distributed            # N=M in {4096, 8192}, d=16; writes the report
    python -m benchmarks.bench_distributed --quick --out /tmp/x.md   # N=M=256 smoke run

In one run, for each size: 7-scale IMQ, unbiased, forward + backward (x requires grad, y does not),
one call = ``mmd(...).backward()``:

* ``reference``: the single-process reference backend, ``torch.set_num_threads(1)``, in this
  process;
* ``distributed K=1`` and ``K=2``: :func:`wae_fast.mmd_distributed` on K spawned gloo processes
  (file:// rendezvous), each with ``torch.set_num_threads(1)`` (K=2 uses both cores of a 2-core
  machine), the points sharded evenly. A call is timed on rank 0 between two barriers, so it is
  the slowest rank's time (the collectives included).

One warm-up call, then the median (and min) of ``--reps`` calls. The speed-up is the reference
median over the row's median; ``pairs/rank`` is the number of kernel pairs each rank evaluated
(``return_pairs``). The report (markdown) goes to ``benchmarks/results/distributed-cpu-<date>.md``
unless ``--out`` says otherwise, and is printed.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")


def _data(n: int, d: int):
    g = torch.Generator().manual_seed(n * 31 + d)
    x = torch.randn(n, d, generator=g) * 1.1 + 0.1
    y = torch.randn(n, d, generator=g)
    return x, y


def _time_reference(n: int, d: int, reps: int) -> dict:
    import wae_fast

    torch.set_num_threads(1)
    x, y = _data(n, d)
    times, val = [], None
    for i in range(reps + 1):
        xr = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        v = wae_fast.mmd(xr, y, wae_fast.IMQ(), backend="reference")
        v.backward()
        dt = time.perf_counter() - t0
        if i:
            times.append(dt)
        val = float(v.detach())
    from wae_fast.distributed import assign_blocks
    from wae_fast.pairsum import BLOCK_SIZE

    pairs = assign_blocks(n, n, BLOCK_SIZE, 1, 0)[3]  # one process's work, counted as mmd_distributed does
    return {"times": times, "own": [times], "value": val, "pairs": [pairs]}


def _rank_worker(rank, world, sizes, d, reps):
    """One rank's timings (run under wae_fast.distributed.run_local_ranks: gloo, 1 thread)."""
    import torch.distributed as dist

    import wae_fast
    from wae_fast.distributed import mmd_distributed

    res = {}
    for n in sizes:
        x, y = _data(n, d)
        lo, hi = rank * n // world, (rank + 1) * n // world
        times, own, val, pairs = [], [], None, 0
        for i in range(reps + 1):
            xl = x[lo:hi].clone().requires_grad_(True)
            yl = y[lo:hi]
            dist.barrier()
            t0 = time.perf_counter()
            v, pairs = mmd_distributed(xl, yl, wae_fast.IMQ(), return_pairs=True)
            v.backward()
            t_own = time.perf_counter() - t0
            dist.barrier()
            dt = time.perf_counter() - t0
            if i:
                times.append(dt)
                own.append(t_own)
            val = float(v.detach())
        res[n] = {"times": times, "own": own, "value": val, "pairs": pairs}
    return res


def _time_distributed(world: int, sizes, d: int, reps: int, timeout: float) -> dict:
    from wae_fast.distributed import run_local_ranks

    out = run_local_ranks(_rank_worker, world, list(sizes), d, reps, timeout=timeout)
    return {n: {"times": out[0][n]["times"], "value": out[0][n]["value"],
                "pairs": [o[n]["pairs"] for o in out], "own": [o[n]["own"] for o in out]} for n in sizes}


def run(sizes, d: int = 16, reps: int = 3, worlds=(1, 2), timeout: float = 600.0) -> tuple[str, list]:
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    t_start = time.perf_counter()
    rows = []
    ref = {n: _time_reference(n, d, reps) for n in sizes}
    dist_res = {k: _time_distributed(k, sizes, d, reps, timeout) for k in worlds}
    for n in sizes:
        base = statistics.median(ref[n]["times"])
        rows.append(dict(n=n, what="reference backend, 1 process", k=1, res=ref[n], base=base))
        for k in worlds:
            rows.append(dict(n=n, what="mmd_distributed (gloo)", k=k, res=dist_res[k][n], base=base))
    load1 = os.getloadavg() if hasattr(os, "getloadavg") else None
    date = _dt.datetime.now(_dt.timezone.utc)
    lines = [
        f"# mmd_distributed on CPU: speed-up over ranks ({date:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python -m benchmarks.bench_distributed{' --quick' if max(sizes) <= 256 else ''}`; "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"gloo on 127.0.0.1 (file:// rendezvous).",
        "",
        f"Workload: N = M points, d = {d}, float32, 7-scale IMQ (WAE scales), unbiased MMD^2, forward + backward "
        "(x requires grad). Every process runs `torch.set_num_threads(1)`; K=2 uses two cores. "
        f"One warm-up call, then median (min) of {reps} calls; distributed calls timed on rank 0 between two "
        "barriers (= the slowest rank, collectives included). Speed-up = reference median / row median.",
        "",
        "| N = M | what | ranks K | median s | min s | speed-up vs reference | pairs per rank | own time per rank s | MMD^2 |",
        "|---:|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        t = r["res"]["times"]
        med = statistics.median(t)
        lines.append(f"| {r['n']} | {r['what']} | {r['k']} | {med:.3f} | {min(t):.3f} | {r['base'] / med:.2f}x | "
                     f"{', '.join(f'{p:,}' for p in r['res']['pairs'])} | "
                     f"{', '.join(f'{statistics.median(o):.3f}' for o in r['res']['own'])} | {r['res']['value']:.6g} |")
    lines += [
        "",
        "Pairs: kernel pairs evaluated, counted as `mmd_distributed(..., return_pairs=True)` does (a symmetric "
        "XX/YY block once, the XY grid in full; the reference row: the same count for one process, "
        "`assign_blocks(N, M, BLOCK_SIZE, 1)`). The ranks' counts sum to the one-process count, each about 1/K "
        "of it (whole blocks are assigned, so tiny N splits unevenly).",
        "",
        "Own time per rank: the median time from the first barrier to the end of that rank's backward (before "
        "the closing barrier): its share of the pairs plus the collectives, without waiting for the slower rank.",
        "",
        f"Machine load (1-min load average) before / after: "
        f"{load0[0] if load0 else 'n/a'} / {load1[0] if load1 else 'n/a'}. The machine is shared with other "
        "jobs: a single run, the timings are indicative (the K=2 speed-up needs two idle cores).",
        f"Total benchmark wall time {time.perf_counter() - t_start:.0f} s.",
    ]
    return "\n".join(lines) + "\n", rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="N=M=256, 1 rep: a smoke run")
    p.add_argument("--sizes", default="4096,8192", help="comma-separated N=M values")
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", help="markdown report path (default benchmarks/results/distributed-cpu-<date>.md)")
    args = p.parse_args(argv)
    sizes = [256] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    reps = 1 if args.quick else args.reps
    text, _ = run(sizes, args.d, reps, timeout=120.0 if args.quick else 1800.0)
    out = args.out or os.path.join(RESULTS, f"distributed-cpu-{_dt.date.today():%Y-%m-%d}.md")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        fh.write(text)
    print(text)
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
