"""Where a call of many small MMDs spends its time: the no-grad forward, the forward with
gradients to x (which computes the fused gradient parts) and the forward + backward, for
``mmd_batched`` on B sets of N points and for one ``mmd`` call on N = M = 4096 points.

    python -m benchmarks.bench_segments_split [--d 8 64] [--reps 41] [--single-reps 11] [--tiny]

7-scale IMQ, unbiased, fp32, x requires grad, y does not (as ``bench_segments``).  Time: process
CPU time (``time.process_time``), median of ``--reps`` calls after one warm-up; run it with one
thread (it sets ``torch.set_num_threads(1)``).  "per pair vs single": each column's time over
B * 3 N^2 pairs against the single call's over 3 * 4096^2.  Output: a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import time

import torch

import wae_fast


def _median_cpu(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        ts.append(time.process_time() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def _three(x: torch.Tensor, y: torch.Tensor, call, reps: int) -> list[float]:
    """No-grad forward, grad forward (no backward), forward + backward of ``call(x, y)``."""

    def nograd():
        with torch.no_grad():
            call(x, y)

    def gradfwd():
        call(x, y)

    def both():
        x.grad = None
        call(x, y).sum().backward()

    return [_median_cpu(f, reps) for f in (nograd, gradfwd, both)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--reps", type=int, default=41)
    ap.add_argument("--single-reps", type=int, default=11)
    ap.add_argument("--tiny", action="store_true", help="B = 4 sets of 16 points, single N = 64 (smoke)")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _table(args)
    finally:  # a caller in the same process (the smoke test) keeps its thread count
        torch.set_num_threads(threads)


def _table(args) -> None:
    B, N, S = (4, 16, 64) if args.tiny else (256, 64, 4096)
    print(f"# mmd_batched B={B} N=M={N} against one mmd call N=M={S}: {torch.__version__}, one thread, "
          f"process CPU time, medians of {args.reps} / {args.single_reps} calls\n")
    print("| d | sets: no-grad fwd | grad fwd | fwd+bwd | single: no-grad fwd | grad fwd | fwd+bwd "
          "| per pair vs single: no-grad fwd | grad fwd | fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for d in args.d:
        x = torch.randn(B, N, d, generator=g).requires_grad_(True)
        y = torch.randn(B, N, d, generator=g)
        xs = torch.randn(S, d, generator=g).requires_grad_(True)
        ys = torch.randn(S, d, generator=g)
        sets = _three(x, y, wae_fast.mmd_batched, args.reps)
        single = _three(xs, ys, wae_fast.mmd, args.single_reps)
        ratios = [(a / (B * 3 * N * N)) / (b / (3 * S * S)) for a, b in zip(sets, single)]
        ms = " | ".join(f"{t * 1e3:.3f} ms" for t in sets + single)
        print(f"| {d} | {ms} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")


if __name__ == "__main__":
    main()
