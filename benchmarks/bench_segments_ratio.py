"""Per-pair cost of B sets of N points in one ``mmd_batched`` call against one N' = M' = S
``mmd`` call, the two finely interleaved (issue 16's ratio, steadier than separate runs on a
shared machine whose speed moves from minute to minute).

    python -m benchmarks.bench_segments_ratio [--d 8] [--grad] [--rounds 12] [--tiny]

Each round runs 16 batched calls (B = 256 sets of 64 points) then one single call (S = 4096),
process CPU time per call, gc off, one thread; prints both medians and the per-pair ratio
(batched median x 16 / single median: 16 batched calls hold the pairs of one single call,
256 x 64^2 x 16 = 4096^2).  ``--grad``: x requires grad, ``f().sum().backward()``.  ``--tiny``:
B = 16 sets of 16 points against S = 256 (a smoke run, the same pair counts).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

import wae_fast


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--grad", action="store_true", help="forward + backward")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    B, N, S = (16, 16, 256) if a.tiny else (256, 64, 4096)
    assert B * N * N * 16 == S * S  # 16 batched calls hold the pairs of one single call
    g = torch.Generator().manual_seed(0)
    xb = torch.randn(B, N, a.d, generator=g).requires_grad_(a.grad)
    yb = torch.randn(B, N, a.d, generator=g)
    xs = torch.randn(S, a.d, generator=g).requires_grad_(a.grad)
    ys = torch.randn(S, a.d, generator=g)

    def call(f, x):
        if a.grad:
            x.grad = None
            f().sum().backward()
        else:
            with torch.no_grad():
                f()

    def batched():
        call(lambda: wae_fast.mmd_batched(xb, yb), xb)

    def single():
        call(lambda: wae_fast.mmd(xs, ys), xs)

    batched()
    single()
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    tb, ts = [], []
    try:
        for _ in range(a.rounds):
            for _ in range(16):
                t0 = time.process_time()
                batched()
                tb.append(time.process_time() - t0)
            t0 = time.process_time()
            single()
            ts.append(time.process_time() - t0)
    finally:
        if enabled:
            gc.enable()
    mb, ms = statistics.median(tb), statistics.median(ts)
    ratio = mb * 16 / ms
    print(f"d={a.d} {'fwd+bwd' if a.grad else 'fwd'}: batched B={B} N={N} {mb * 1e3:.3f} ms, "
          f"single N=M={S} {ms * 1e3:.2f} ms, per-pair ratio {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
