"""Launches and torch ops of one small ``mmd`` forward + backward on the Triton backend: the
one-launch path (kernels/mmd_small.py) against the tiled path (forced with SMALL_MAX_ROWS = 0).

    python -m benchmarks.bench_small_launch [--n 100] [--d 8] [--reps 5]

Counts every Triton launch (the innermost ``run`` of Triton's kernel objects) and every aten op
the call dispatches (outside the launches), then times fwd + bwd (median of ``--reps``; on a CPU
this is the Triton interpreter: launch counts matter there, not times).  On a GPU the times are
eager wall times with host overhead; the graph-replayed device time is the ``gpu-small`` row set
of benchmarks/rows.py.  Under a minute on a CPU with TRITON_INTERPRET=1 (set here when no GPU).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@contextlib.contextmanager
def _counting():
    import triton.runtime.jit as jit
    from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

    classes = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    except ImportError:
        pass
    launches, ops = [], []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    saved = [(c, c.run) for c in classes]

    def wrap(orig):
        def run(self, *a, **k):
            launches.append(getattr(self, "__name__", "?"))
            with _disable_current_modes():  # the interpreter's own host copies are not ours
                return orig(self, *a, **k)
        return run

    for c, orig in saved:
        c.run = wrap(orig)
    try:
        with Log():
            yield launches, ops
    finally:
        for c, orig in saved:
            c.run = orig


def measure(n: int, d: int, reps: int, one_launch: bool) -> dict:
    import wae_fast
    from wae_fast.kernels import mmd_small

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(n, d, generator=g) * 1.1 + 0.3).to(dev).requires_grad_(True)
    y = torch.randn(n, d, generator=g).to(dev)
    saved = mmd_small.SMALL_MAX_ROWS
    mmd_small.SMALL_MAX_ROWS = saved if one_launch else 0
    try:
        def step():
            x.grad = None
            v = wae_fast.mmd(x, y, backend="triton")
            v.backward()
            return v

        step()  # warm-up (compilation / autotuning on a GPU)
        with _counting() as (launches, ops):
            step()
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
        mmd_small.SMALL_MAX_ROWS = saved
    compute = [o for o in ops if o not in ("aten.empty", "aten.new_empty", "aten.detach", "aten.view")]
    return dict(path="one launch" if one_launch else "tiled", launches=len(launches),
                kernels=",".join(sorted(set(launches))), aten_ops=len(compute),
                ms=1e3 * statistics.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args(argv)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (Triton interpreter)"
    print(f"mmd fwd + bwd, triton backend, N = M = {a.n}, d = {a.d}, fp32, IMQ 7 scales, on {dev}\n")
    print("| path | Triton launches | kernels | aten ops (not counting empty/view) | ms per call (median) |")
    print("|---|---|---|---|---|")
    for one in (True, False):
        r = measure(a.n, a.d, a.reps, one)
        print(f"| {r['path']} | {r['launches']} | {r['kernels']} | {r['aten_ops']} | {r['ms']:.3g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
