"""How slow the emulated CUDA backend is (a testing backend): forward + backward of the default
7-scale IMQ MMD, fp32, N = M, against the cpp backend, best of ``--reps`` calls.

    python -m benchmarks.bench_cuda_emu [--n 1024] [--d 64] [--reps 2]
"""
from __future__ import annotations

import argparse
import time

import torch

import wae_fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(a.n, a.d, generator=g), torch.randn(a.n, a.d, generator=g)
    rows = [("cpp", "ieee"), ("cuda_emu", "ieee"), ("cuda_emu", "tf32")]
    print(f"N = M = {a.n}, d = {a.d}, fp32, IMQ x7, forward + backward, best of {a.reps}, "
          f"torch threads {torch.get_num_threads()}")
    for backend, prec in rows:
        best = float("inf")
        for _ in range(a.reps):
            xa, ya = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
            t = time.perf_counter()
            wae_fast.mmd(xa, ya, backend=backend, precision=prec).backward()
            best = min(best, time.perf_counter() - t)
        print(f"| {backend} | {prec} | {best * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
