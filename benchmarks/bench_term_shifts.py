"""Time of the default CPU path (backend "auto" -> cpp, fp32, unbiased, IMQ 7 scales, forward +
backward) in whatever wae_fast this interpreter imports: run it alternately from two checkouts'
virtual environments to compare them (issue 13: one shift per term instead of one shared shift).

    python benchmarks/bench_term_shifts.py THREADS N D CALLS
"""
import statistics
import sys
import time

import torch

import wae_fast

torch.set_num_threads(int(sys.argv[1]))
n, d, calls = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
g = torch.Generator().manual_seed(0)
x = torch.randn(n, d, generator=g)
y = torch.randn(n, d, generator=g)
ts = []
for _ in range(calls + 1):
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    t0 = time.perf_counter()
    v = wae_fast.mmd(xa, ya)
    v.backward()
    ts.append(time.perf_counter() - t0)
tag = wae_fast.__file__.split("/")[2]
print(f"{tag} N={n} d={d} {wae_fast.which_backend(x)} median {1e3 * statistics.median(ts[1:]):.3f} ms")
