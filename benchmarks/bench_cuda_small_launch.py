"""Kernel launches of one small ``mmd`` forward + backward on the CUDA backend's sources: the
one-launch path (csrc/cuda/mmd_small.cu) against the tiled path (forced with SMALL_MAX_ROWS = 0).

    python -m benchmarks.bench_cuda_small_launch [--n 100] [--d 8] [--reps 3]

Without a GPU it runs ``cuda_emu`` (the same CUDA sources on the CPU emulator): launches are
counted through the emulator's launch shim, and the times are EMULATOR times (every GPU thread a
fiber), which say nothing about a GPU.  With a GPU it runs ``cuda`` and reports eager wall times
(host overhead included; no launch counts).  The graph-replayed GPU time is the ``gpu-small``
row set of benchmarks/rows.py (`bash benchmarks/gpu_validate.sh bench --rows gpu-small`).
About a minute on a CPU.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import wae_fast
from wae_fast import small_sets


def measure(backend: str, n: int, d: int, reps: int, one_launch: bool) -> dict:
    dev = "cuda" if backend == "cuda" else "cpu"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).to(dev).requires_grad_(True)
    y = torch.randn(n, d, generator=g).to(dev)
    saved = small_sets.SMALL_MAX_ROWS
    small_sets.SMALL_MAX_ROWS = saved if one_launch else 0
    try:
        def step():
            x.grad = None
            v = wae_fast.mmd(x, y, backend=backend)
            v.backward()
            return v

        step()  # builds / loads the extension, caches
        names = None
        if backend == "cuda_emu":
            from wae_fast import cuda_emu_backend
            ext = cuda_emu_backend.extension()
            ext.reset_launch_names()
            step()
            names = list(ext.launch_names())
        times = []
        for _ in range(reps):
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if dev == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    finally:
        small_sets.SMALL_MAX_ROWS = saved
    return {"names": names, "ms": 1e3 * statistics.median(times)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    backend = "cuda" if torch.cuda.is_available() else "cuda_emu"
    print(f"mmd fwd + bwd, {backend} backend, N = M = {a.n}, d = {a.d}, fp32, IMQ 7 scales, "
          f"x requires grad, y not\n")
    print("| path | kernel launches (fwd + bwd) | kernels | ms per call (median) |")
    print("|---|---|---|---|")
    for label, one in (("one launch", True), ("tiled", False)):
        r = measure(backend, a.n, a.d, a.reps, one)
        names = r["names"]
        count = "n/a (GPU)" if names is None else str(len(names))
        kinds = "" if names is None else ", ".join(sorted({s.strip("()").split("<")[0] for s in names}))
        print(f"| {label} | {count} | {kinds} | {r['ms']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
