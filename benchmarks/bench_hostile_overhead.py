"""Time of the cpp backend (fp32, forward + backward) in whatever wae_fast this interpreter
imports: run it alternately from two checkouts' virtual environments to compare them (the
hostile-input changes: NaN-keeping clamp, per-row range check, r = inf guard in the IMQ pairs).

    python benchmarks/bench_hostile_overhead.py THREADS N D
"""
import sys, time, torch, wae_fast, statistics
torch.set_num_threads(int(sys.argv[1]))
n, d = int(sys.argv[2]), int(sys.argv[3])
g = torch.Generator().manual_seed(0)
x = torch.randn(n, d, generator=g); y = torch.randn(n, d, generator=g)
for kname, spec in (("imq7", wae_fast.IMQ()), ("rbf1", wae_fast.RBF())):
    ts = []
    for it in range(8):
        xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
        t0 = time.perf_counter(); v = wae_fast.mmd(xa, ya, spec, backend="cpp"); v.backward(); ts.append(time.perf_counter() - t0)
    print(wae_fast.__file__.split('/')[2], kname, n, d, "%.1f" % (1e3 * statistics.median(ts[1:])))
