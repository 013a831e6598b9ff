"""Host time of the one-launch mmd_segments schedule (triton / cuda): building the task tables
of :class:`wae_fast.segment_sums.Plan` for a set layout, and fetching them from the per-layout
cache (what every call after the first one pays).  CPU only, no kernel runs.

    python -m benchmarks.bench_segments_host [--reps 50]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from wae_fast.segment_sums import Plan, get_plan


def _median(fn, reps):
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=50)
    a = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    off = lambda sizes: torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(sizes).cumsum(0)])  # noqa: E731
    layouts = {
        "batched B=256 N=M=64": (off([64] * 256), off([64] * 256)),
        "shared y B=256 N=M=64": (off([64] * 256), torch.tensor([0, 64])),
        "ragged B=64 N,M in [16,512]": (off(torch.randint(16, 513, (64,), generator=g).tolist()),
                                        off(torch.randint(16, 513, (64,), generator=g).tolist())),
    }
    print(f"# mmd_segments host schedule, torch {torch.__version__}, reps {a.reps}, block 32 (triton on a GPU)\n")
    print("| layout | fwd tasks | bwd tasks | build fwd+bwd tables ms | cached ms |")
    print("|---|---|---|---|---|")
    for name, (xo, yo) in layouts.items():
        def build():
            p = Plan(xo, yo, 32, "cpu")
            return p, p.bwd_tasks(True, True)
        p, bt = build()
        tb = _median(build, a.reps)
        tc = _median(lambda: get_plan(xo, yo, 32, "cpu").bwd_tasks(True, True), a.reps)
        print(f"| {name} | {p.fwd_tasks.shape[0]} | {bt.shape[0]} | {tb * 1e3:.3f} | {tc * 1e3:.4f} |")


if __name__ == "__main__":
    main()
