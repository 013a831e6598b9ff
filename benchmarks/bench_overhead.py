"""Host overhead of one small MMD call (issue 15): forward + backward of ``wae_fast.mmd`` against
``F.mse_loss`` forward + backward on the same tensors, N = M = 64, d = 8, one thread.

Method: x requires grad, y does not, both refilled in place before each call; medians of 7
runs of 1,000 calls, mmd and mse alternated in one process (no cache keyed on tensor identity).

    python -m benchmarks.bench_overhead [--n 64] [--d 8] [--backend auto] [--runs 7] [--calls 1000]
                                        [--vs-dense | --sets | --weights]

``--vs-dense`` instead times mmd against the dense formula as published WAE code writes it
(:func:`benchmarks.bench_train_step.dense_wae_mmd`), forward + backward, N = M in {64, 128, 256,
1024}, d in {8, 64} (same method, fewer calls for the large sets; target: mmd >= 4x faster).

``--sets`` times many small MMDs per call (the training regime of per-class / per-group MMD):
``mmd_batched`` of B sets of N points (and with ``x_weights``), a Python loop of B ``mmd``
calls, and ``F.mse_loss`` on the same (B N, d) tensors, forward + backward of the sum,
B in {1, 8, 32} (same method, 200 calls per run unless ``--calls``).

``--weights`` times a weighted ``mmd`` (``x_weights``, and both weights) against the unweighted
call, forward + backward, N = M in {64, 256, 1024} at ``--d`` (same method, fewer calls for the
larger sets; issue 16's target: weighted <= 1.2x unweighted).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import wae_fast


def _run(fn, x, y, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        with torch.no_grad():
            x.normal_()
            y.normal_()
        x.grad = None
        fn(x, y).backward()
    return (time.perf_counter() - t0) / calls


def _medians(fns: dict, x, y, runs: int, calls: int, warm: int) -> dict:
    """Median seconds per call of each of ``fns`` over ``runs`` runs of ``calls`` calls, the
    methods alternated run by run, after ``warm`` warm-up calls of each."""
    times = {k: [] for k in fns}
    for f in fns.values():
        _run(f, x, y, warm)
    for _ in range(runs):
        for k, f in fns.items():
            times[k].append(_run(f, x, y, calls))
    return {k: statistics.median(v) for k, v in times.items()}


def vs_dense(backend: str, runs: int) -> None:
    from .bench_train_step import dense_wae_mmd

    print(f"backend={wae_fast.which_backend('cpu', backend)} threads=1 runs={runs}, fwd+bwd, fp32")
    print("| N = M | d | mmd (us) | dense WAE formula (us) | dense / mmd (target >= 4) |")
    print("|---|---|---|---|---|")
    for n in (64, 128, 256, 1024):
        calls = {64: 300, 128: 100, 256: 30, 1024: 3}[n]
        for d in (8, 64):
            x = torch.randn(n, d, requires_grad=True)
            y = torch.randn(n, d)
            fns = {"mmd": lambda u, v: wae_fast.mmd(u, v, backend=backend), "dense": dense_wae_mmd}
            med = _medians(fns, x, y, runs, calls, 2)
            print(f"| {n} | {d} | {med['mmd'] * 1e6:.0f} | {med['dense'] * 1e6:.0f} | "
                  f"{med['dense'] / med['mmd']:.2f} |")


def sets(backend: str, runs: int, n: int, d: int, calls: int) -> None:
    print(f"backend={wae_fast.which_backend('cpu', backend)} N=M={n} d={d} threads=1 runs={runs}x{calls}, "
          "fwd+bwd of the sum, fp32, us per call")
    print("| B | mmd_batched | mmd_batched, x_weights | loop of B mmd | mse_loss |")
    print("|---|---|---|---|---|")
    for nsets in (1, 8, 32):
        x = torch.randn(nsets * n, d, requires_grad=True)
        y = torch.randn(nsets * n, d)
        w = torch.rand(nsets, n) + 0.5
        fns = {
            "batched": lambda u, v: wae_fast.mmd_batched(u.view(nsets, n, d), v.view(nsets, n, d),
                                                         backend=backend).sum(),
            "weighted": lambda u, v: wae_fast.mmd_batched(u.view(nsets, n, d), v.view(nsets, n, d),
                                                          x_weights=w, backend=backend).sum(),
            "loop": lambda u, v: sum(wae_fast.mmd(a, b, backend=backend)
                                     for a, b in zip(u.split(n), v.split(n))),
            "mse": lambda u, v: F.mse_loss(u, v),
        }
        med = {k: t * 1e6 for k, t in _medians(fns, x, y, runs, calls, min(calls, 20)).items()}
        print(f"| {nsets} | {med['batched']:.0f} | {med['weighted']:.0f} | {med['loop']:.0f} | "
              f"{med['mse']:.0f} |")


def weights(backend: str, runs: int, d: int, calls: int) -> None:
    print(f"backend={wae_fast.which_backend('cpu', backend)} d={d} threads=1 runs={runs}, fwd+bwd, fp32, "
          "w, v = rand + 0.5, us per call")
    print("| N = M | mmd | mmd, x_weights | mmd, x_weights and y_weights | x_weights / mmd | both / mmd |")
    print("|---|---|---|---|---|---|")
    for n in (64, 256, 1024):
        x = torch.randn(n, d, requires_grad=True)
        y = torch.randn(n, d)
        w, v = torch.rand(n) + 0.5, torch.rand(n) + 0.5
        fns = {
            "mmd": lambda a, b: wae_fast.mmd(a, b, backend=backend),
            "xw": lambda a, b: wae_fast.mmd(a, b, backend=backend, x_weights=w),
            "both": lambda a, b: wae_fast.mmd(a, b, backend=backend, x_weights=w, y_weights=v),
        }
        k_calls = max(2, calls * 64 // n if n <= 256 else calls // 100)
        med = {k: t * 1e6 for k, t in _medians(fns, x, y, runs, k_calls, 2).items()}
        print(f"| {n} | {med['mmd']:.1f} | {med['xw']:.1f} | {med['both']:.1f} | "
              f"{med['xw'] / med['mmd']:.2f} | {med['both'] / med['mmd']:.2f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--calls", type=int, default=None, help="calls per run (1000; --sets: 200)")
    ap.add_argument("--vs-dense", action="store_true")
    ap.add_argument("--sets", action="store_true")
    ap.add_argument("--weights", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if a.vs_dense:
        vs_dense(a.backend, a.runs)
        return
    if a.sets:
        sets(a.backend, a.runs, a.n, a.d, a.calls or 200)
        return
    if a.weights:
        weights(a.backend, a.runs, a.d, a.calls or 1000)
        return
    x = torch.randn(a.n, a.d, requires_grad=True)
    y = torch.randn(a.n, a.d)
    fns = {"mmd": lambda u, v: wae_fast.mmd(u, v, backend=a.backend),
           "mse": lambda u, v: F.mse_loss(u, v)}
    med = _medians(fns, x, y, a.runs, a.calls or 1000, 50)  # warm-up: backend import, allocator
    print(f"backend={wae_fast.which_backend(x, a.backend)} N=M={a.n} d={a.d} threads=1 "
          f"runs={a.runs}x{a.calls or 1000}")
    print(f"mmd fwd+bwd {med['mmd'] * 1e6:.1f} us | mse_loss fwd+bwd {med['mse'] * 1e6:.1f} us | "
          f"ratio {med['mmd'] / med['mse']:.2f} (target <= 3)")


if __name__ == "__main__":
    main()
