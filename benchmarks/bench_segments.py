"""Many MMDs in one call (mmd_batched / mmd_varlen, weighted or not) against a Python loop of
single ``mmd`` calls and the dense batched formula in plain PyTorch (``torch.cdist`` on (B, N, d)).

    python -m benchmarks.bench_segments [--device cpu|cuda] [--backend auto] [--reps 5] [--tiny]
                                        [--quick] [--threads T] [--clock wall|cpu] [--collect]
                                        [--interleave] [--warmup 8]

Rows (7-scale IMQ, unbiased, fp32; x requires grad for fwd+bwd):

* ``batched``: B = 256 sets of N = M = 64 points, d in {8, 64};
* ``ragged``: B = 64 sets of 16 to 512 points (x and y sizes drawn independently, seed 0), d in {8, 64};
* ``single``: one N = M = 4096 ``mmd`` call at the same d (the per-pair cost to compare with).

Methods: ``wae_fast`` (one call), ``wae_fast_w`` (the same with random weights in [0.5, 1.5] on
x and y), ``loop`` (one ``mmd`` call per set), ``dense`` (the (B, N, N) kernel matrices from
``torch.cdist``, equal-size sets only).  Time: median of ``--reps`` calls after ``--warmup``
calls (default 8), each method's calls back to back (``--interleave``: each rep runs every
method once), ``dense`` after the others (the memory it frees disturbed the calls that followed
it); see ``_run``.
``ns/pair``: time over the pairs of the estimator, counted as ordered pairs sum_b (N_b^2 + M_b^2 +
N_b M_b), the same count for every method and the single call.  Output: a markdown table on stdout.
``--clock cpu`` times the process CPU time (``time.process_time``) instead of the wall clock: with
``--threads 1`` on a shared, overloaded machine it is the steadier measure of the work done.
``--quick``: the same rows with 3 reps (about a minute on one CPU thread of a quiet machine).  After the table, a summary per d and pass: cost per pair
against the single call (target <= 1.25x on the CPU), weighted over unweighted (<= 1.2x), the
dense formula over one call (>= 3x) and the loop over one call.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

import wae_fast


def imq_dense(x, y):
    """Dense batched unbiased 7-scale IMQ MMD (what users write today)."""
    d = x.shape[-1]
    cb = 2.0 * d
    scales = wae_fast.WAE_SCALES

    def k(a, b):
        r = torch.cdist(a, b).square()
        return sum(s * cb / (s * cb + r) for s in scales)

    n, m = x.shape[1], y.shape[1]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    txx = (kxx.sum((1, 2)) - kxx.diagonal(dim1=1, dim2=2).sum(1)) / (n * (n - 1))
    tyy = (kyy.sum((1, 2)) - kyy.diagonal(dim1=1, dim2=2).sum(1)) / (m * (m - 1))
    return txx + tyy - 2 * kxy.mean((1, 2))


def _time(fn, reps):
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


_CLOCK = time.perf_counter
_COLLECT = False
_INTERLEAVE = False
# Warm-up calls per method: a process's first calls of a method run slower while glibc's
# malloc adapts its thresholds to the call's buffers (B = 256 sets of 64 points, d = 8, forward
# + backward, a fresh process: calls 2 to 8 took 4.0-4.3 ms, with 257, 128 and 256 page faults
# in calls 2, 5 and 8; calls 9 on 3.55-3.9 ms and no faults).  With one warm-up, in a fresh
# process, 7 of 21 timed calls would fall in that window.  A training loop runs in the steady state.
_WARMUP = 8


def _run(methods, reps, grad):
    """Median seconds per method over ``reps`` calls after ``_WARMUP`` calls: each method's calls back
    to back (as torch.utils.benchmark times a statement, and as a training loop calls the same
    function every step), every method measured the same way as the single call it is compared
    with.  ``--interleave``: each rep runs every method once instead (the earlier tables: on a
    shared machine the load then moves between methods alike; but a call right after the loop
    method's 256 calls finds its code and data evicted, measured 0.3-0.4 ms slower for a 1.5 ms
    mmd_batched call at B = 256, N = 64, d = 8).  Python's garbage collector is off while
    timing, as in timeit: the loop and dense methods create many objects, and a collection
    landing inside another method's call was measured adding 10-20 ms to a 8 ms call.  It runs
    once before the timed calls (``--collect``: before every call instead, which the earlier
    tables did; its walk over every Python object evicts the caches, and the call after it was
    measured 0.15-0.45 ms slower: a plain 10 us torch matmul took 0.15 ms, a tiny
    mmd_batched call 0.45 ms)."""
    if _INTERLEAVE:
        for _ in range(_WARMUP):
            for f in methods.values():
                f(grad)  # warm-up
    times = {k: [] for k in methods}
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    # back to back: the warm-up calls right before each method's timed calls (a warm-up at the
    # start, before the other methods ran, left the first two of 3 timed calls 0.3 ms slower)
    order = ([(k, f, False) for _ in range(reps) for k, f in methods.items()] if _INTERLEAVE
             else [(k, f, r < 0) for k, f in methods.items() for r in range(-_WARMUP, reps)])
    try:
        for k, f, warm_up in order:
            if _COLLECT:
                gc.collect()
            t0 = _CLOCK()
            f(grad)
            if not warm_up:
                times[k].append(_CLOCK() - t0)
    finally:
        if enabled:
            gc.enable()
    return {k: statistics.median(v) for k, v in times.items()}


def _call(fn, x, grad):
    if grad:
        x.grad = None
        fn().sum().backward()
    else:
        with torch.no_grad():
            fn()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="small shapes (a smoke run)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--quick", action="store_true", help="3 reps (unless --reps is given): under 3 minutes")
    ap.add_argument("--collect", action="store_true",
                    help="run the garbage collector before every timed call (cold caches)")
    ap.add_argument("--interleave", action="store_true",
                    help="each rep runs every method once (default: each method's reps back to back)")
    ap.add_argument("--warmup", type=int, default=8, help="untimed calls of each method before its reps")
    a = ap.parse_args(argv)
    if a.quick and "--reps" not in (argv if argv is not None else __import__("sys").argv[1:]):
        a.reps = 3
    global _CLOCK, _COLLECT, _INTERLEAVE, _WARMUP
    _CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    _COLLECT = a.collect
    _INTERLEAVE = a.interleave
    _WARMUP = max(1, a.warmup)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev, be = a.device, a.backend
    g = torch.Generator().manual_seed(0)
    B, N, single = (8, 16, 256) if a.tiny else (256, 64, 4096)
    lo, hi = (4, 32) if a.tiny else (16, 512)
    rb = 8 if a.tiny else 64
    print(f"# mmd_segments benchmark: device {dev}, backend {be} "
          f"({wae_fast.which_backend(dev, be, family='mmd_segments')}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, reps {a.reps} after {_WARMUP} warm-up calls, clock {a.clock}"
          f"{', gc before every call' if a.collect else ''}"
          f"{', methods interleaved' if a.interleave else ', each method back to back'}\n")
    print("| row | d | pass | method | median s | ns/pair | vs loop |")
    print("|---|---|---|---|---|---|---|")
    per_pair = {}  # (row, d, pass, method) -> ns/pair
    for d in (8, 64):
        # equal-size sets
        x = torch.randn(B, N, d, generator=g).to(dev).requires_grad_(True)
        y = torch.randn(B, N, d, generator=g).to(dev)
        xw = (torch.rand(B, N, generator=g) + 0.5).to(dev)
        yw = (torch.rand(B, N, generator=g) + 0.5).to(dev)
        pairs = B * 3 * N * N
        methods = {
            "wae_fast": lambda gr: _call(lambda: wae_fast.mmd_batched(x, y, backend=be), x, gr),
            "wae_fast_w": lambda gr: _call(lambda: wae_fast.mmd_batched(x, y, backend=be, x_weights=xw,
                                                                         y_weights=yw), x, gr),
            "loop": lambda gr: _call(lambda: torch.stack([wae_fast.mmd(x[b], y[b], backend=be)
                                                         for b in range(B)]), x, gr),
        }
        dense = {"dense": lambda gr: _call(lambda: imq_dense(x, y), x, gr)}
        for grad in (False, True):
            # the dense formula runs apart: freeing its (B, N, N) matrices (~300 MB a call) left
            # the kernel work (system time, 4-20 ms) that landed in the next calls of the others
            res = {**_run(methods, a.reps, grad), **_run(dense, a.reps, grad)}
            for k, s in res.items():
                per_pair[("batched", d, grad, k)] = s / pairs * 1e9
                print(f"| batched B={B} N=M={N} | {d} | {'fwd+bwd' if grad else 'fwd'} | {k} | {s:.4g} | "
                      f"{s / pairs * 1e9:.3g} | {res['loop'] / s:.2f}x |")
        # ragged sets
        nx = torch.randint(lo, hi + 1, (rb,), generator=g).tolist()
        ny = torch.randint(lo, hi + 1, (rb,), generator=g).tolist()
        xo = [0] + torch.tensor(nx).cumsum(0).tolist()
        yo = [0] + torch.tensor(ny).cumsum(0).tolist()
        xr = torch.randn(xo[-1], d, generator=g).to(dev).requires_grad_(True)
        yr = torch.randn(yo[-1], d, generator=g).to(dev)
        xrw = (torch.rand(xo[-1], generator=g) + 0.5).to(dev)
        yrw = (torch.rand(yo[-1], generator=g) + 0.5).to(dev)
        pairs = sum(n * n + m * m + n * m for n, m in zip(nx, ny))
        methods = {
            "wae_fast": lambda gr: _call(lambda: wae_fast.mmd_varlen(xr, yr, xo, yo, backend=be), xr, gr),
            "wae_fast_w": lambda gr: _call(lambda: wae_fast.mmd_varlen(xr, yr, xo, yo, backend=be,
                                                                        x_weights=xrw, y_weights=yrw), xr, gr),
            "loop": lambda gr: _call(lambda: torch.stack([
                wae_fast.mmd(xr[xo[b]:xo[b + 1]], yr[yo[b]:yo[b + 1]], backend=be) for b in range(rb)]), xr, gr),
        }
        for grad in (False, True):
            res = _run(methods, a.reps, grad)
            for k, s in res.items():
                per_pair[("ragged", d, grad, k)] = s / pairs * 1e9
                print(f"| ragged B={rb} N,M in [{lo},{hi}] | {d} | {'fwd+bwd' if grad else 'fwd'} | {k} | {s:.4g} | "
                      f"{s / pairs * 1e9:.3g} | {res['loop'] / s:.2f}x |")
        # one large call: the per-pair cost to compare with
        xs = torch.randn(single, d, generator=g).to(dev).requires_grad_(True)
        ys = torch.randn(single, d, generator=g).to(dev)
        pairs = 3 * single * single
        for grad in (False, True):
            res = _run({"mmd": lambda gr: _call(lambda: wae_fast.mmd(xs, ys, backend=be), xs, gr)}, a.reps, grad)
            per_pair[("single", d, grad, "mmd")] = res["mmd"] / pairs * 1e9
            print(f"| single N=M={single} | {d} | {'fwd+bwd' if grad else 'fwd'} | mmd | {res['mmd']:.4g} | "
                  f"{res['mmd'] / pairs * 1e9:.3g} | |")
    _summary(per_pair, B, N, rb, lo, hi, single)


def _summary(pp, B, N, rb, lo, hi, single) -> None:
    """Ratios of the per-pair costs of one run (the issue's targets)."""
    print("\n| rows | d | pass | per pair vs single | weighted / unweighted | dense / one call | loop / one call |")
    print("|---|---|---|---|---|---|---|")
    for row, label in (("batched", f"B={B} N=M={N}"), ("ragged", f"B={rb} N,M in [{lo},{hi}]")):
        for d in (8, 64):
            for grad in (False, True):
                one = pp.get((row, d, grad, "wae_fast"))
                if one is None:
                    continue
                ref = pp.get(("single", d, grad, "mmd"))
                w = pp.get((row, d, grad, "wae_fast_w"))
                dense = pp.get((row, d, grad, "dense"))
                loop = pp.get((row, d, grad, "loop"))
                cell = (lambda v: f"{v / one:.2f}x" if v is not None else "-")
                print(f"| {label} ({row}) vs single N=M={single} | {d} | {'fwd+bwd' if grad else 'fwd'} | "
                      f"{one / ref:.2f}x | {cell(w)} | {cell(dense)} | {cell(loop)} |")


if __name__ == "__main__":
    main()
