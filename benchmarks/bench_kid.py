"""kernel_matmul and KID at scale: time and peak memory against the usual alternatives.

    python -m benchmarks.bench_kid --set cpu      # this machine (about 15-30 minutes on 2 cores)
    python -m benchmarks.bench_kid --set gpu      # a CUDA GPU (adds N = M = 50,000 KID rows)
    python -m benchmarks.bench_kid --set tiny     # smoke run (seconds; what the tests run)
    (--only kmm|kid_subsets|kid_full keeps those rows; --budget S starts no row after S seconds)

Rows (each in a fresh process: inputs made first, one warm-up call on a small slice, then one
timed call; peak memory is what the call added: CUDA max_memory_allocated, CPU the growth of
the peak RSS, allocator slack included):

* ``kmm``: K(x, y) @ v, N = M = 16384, d in {8, 64}, P in {1, 64}, Gaussian kernel
  exp(-||a - b||^2 / (2 d)) (bandwidth sqrt(d): O(1) values for standard normal points): ``wae_fast`` (kernel_matmul, backend auto), ``chunked`` (torch: 1024 rows
  of K at a time from one addmm, exp, matmul), ``pykeops`` (LazyTensor reduction, when installed;
  its one-off compilation is in the warm-up).
* ``kid_subsets``: KID with 100 subsets of 1000 at d = 2048 from N = M = 10,000 features:
  ``wae_fast`` (kid) against ``dense_loop`` (torchmetrics' formula: three dense 1000 x 1000
  kernel matrices per subset, the same subsets).
* ``kid_full``: the full U-statistic over N = M features (d = 2048): ``wae_fast``
  (kid(subset_size=None), memory-flat) against ``chunked`` (dense blocks of 2048 rows).
* ``mmd_test``: permutation test, N = M = 5000, d = 64, P = 1000 permutations, IMQ: ``wae_fast``
  (mmd_test: one kernel_matmul pass), ``dense_KS`` (the pooled 10,000 x 10,000 kernel matrix once,
  then one K @ S product with the indicator matrix), ``perm_loop`` (one mmd call per permutation;
  ``p`` in the table is the number of permutations actually timed).

The report goes to ``benchmarks/results/kid-<device>-<date>.md`` unless ``--out``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")


@dataclass(frozen=True)
class Row:
    bench: str      # kmm | kid_subsets | kid_full
    method: str     # wae_fast | chunked | pykeops | dense_loop
    n: int
    d: int
    p: int = 0      # columns of v (kmm)
    device: str = "cpu"


def rows_for(name: str) -> list[Row]:
    if name == "tiny":
        return [Row("kmm", m, 512, 8, 4) for m in ("wae_fast", "chunked")] + [
            Row("mmd_test", m, 200, 8, 20) for m in ("wae_fast", "dense_KS", "perm_loop")] + [
            Row("kid_subsets", m, 300, 64) for m in ("wae_fast", "dense_loop")] + [
            Row("kid_full", m, 300, 64) for m in ("wae_fast", "chunked")]
    if name == "cpu-large":  # the full U-statistic at 50k on this CPU (minutes; never in CI)
        return [Row("kid_full", m, 50_000, 2048) for m in ("wae_fast", "chunked")]
    dev = "cuda" if name == "gpu" else "cpu"
    rows = [Row("kmm", m, 16384, d, p, dev) for d in (8, 64) for p in (1, 64)
            for m in ("wae_fast", "chunked", "pykeops")]
    rows += [Row("kid_subsets", m, 10_000, 2048, 0, dev) for m in ("wae_fast", "dense_loop")]
    sizes = (10_000, 50_000) if name == "gpu" else (10_000,)
    rows += [Row("kid_full", m, n, 2048, 0, dev) for n in sizes for m in ("wae_fast", "chunked")]
    rows += [Row("mmd_test", "wae_fast", 5000, 64, 1000, dev), Row("mmd_test", "dense_KS", 5000, 64, 1000, dev),
             Row("mmd_test", "perm_loop", 5000, 64, 1000 if name == "gpu" else 20, dev)]
    return rows


_CHILD = r"""
import json, resource, sys, time
import torch
import wae_fast
row = json.loads(sys.argv[1])
dev = row["device"]
g = torch.Generator().manual_seed(0)
n, d, p = row["n"], row["d"], row["p"]


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


GK = 1.0 / (2.0 * d)  # kmm rows: Gaussian with 2 bw^2 = 2 d, so k is O(1) (not underflowing) at any d


def chunked_kmm(x, y, v, rows=1024):
    out = torch.empty(x.shape[0], v.shape[1], dtype=x.dtype, device=x.device)
    ny = (y * y).sum(1)
    for i in range(0, x.shape[0], rows):
        a = x[i:i + rows]
        r = torch.addmm((a * a).sum(1)[:, None] + ny[None, :], a, y.T, alpha=-2.0).clamp_(min=0)
        out[i:i + rows] = torch.exp(r.mul_(-GK)) @ v
    return out


def keops_kmm(x, y, v):
    from pykeops.torch import LazyTensor
    X, Y = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
    return (-((X - Y) ** 2).sum(-1) * GK).exp() @ v


def poly_mmd_dense(a, b):  # torchmetrics' poly_mmd (three dense matrices)
    k = lambda s, t: (s @ t.T / s.shape[1] + 1.0) ** 3
    m = a.shape[0]
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    return ((kxx.sum() - kxx.diag().sum() + kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
            - 2 * kxy.sum() / m**2)


def dense_loop(r, f, m, subsets, gen):
    vals = []
    for _ in range(subsets):
        ir = torch.randperm(r.shape[0], generator=gen)[:m].to(r.device)
        jf = torch.randperm(f.shape[0], generator=gen)[:m].to(f.device)
        vals.append(poly_mmd_dense(r[ir], f[jf]))
    s = torch.stack(vals)
    return s.mean(), s.std(unbiased=False)


def chunked_full(r, f, rows=2048):
    k = lambda s, t: (s @ t.T / s.shape[1] + 1.0) ** 3
    def tot(a, b, diag):
        s = 0.0
        for i in range(0, a.shape[0], rows):
            blk = k(a[i:i + rows], b)
            s += float(blk.sum(dtype=torch.float64))
            if diag:
                s -= float(blk.diagonal(i).sum(dtype=torch.float64))
        return s
    n, m = r.shape[0], f.shape[0]
    return tot(r, r, True) / (n * (n - 1)) + tot(f, f, True) / (m * (m - 1)) - 2 * tot(r, f, False) / (n * m)


if row["bench"] == "kmm":
    x = torch.randn(n, d, generator=g).to(dev)
    y = torch.randn(n, d, generator=g).to(dev)
    v = torch.randn(n, p, generator=g).to(dev)
    spec = wae_fast.RBF(bandwidth=float(d) ** 0.5)
    fn = {"wae_fast": lambda a, b, c: wae_fast.kernel_matmul(a, b, c, spec),
          "chunked": chunked_kmm, "pykeops": keops_kmm}[row["method"]]
    fn(x[:256], y[:256], v[:256]); sync()
    call = lambda: fn(x, y, v)
    value = lambda o: float(o.double().abs().mean())
elif row["bench"] == "mmd_test":
    x = torch.randn(n, d, generator=g).to(dev)
    y = (torch.randn(n, d, generator=g) + 0.02).to(dev)
    spec = wae_fast.IMQ()
    kind, params = spec.lower(d)

    def dense_ks(x, y, P, gen):
        z = torch.cat([x, y]); L = z.shape[0]; nx = x.shape[0]
        r = torch.cdist(z, z).square_()
        K = sum(c / (c + r) for c in params)
        K.fill_diagonal_(0.0)
        U = torch.zeros(L, P + 2, device=z.device)
        for p in range(P):
            U[torch.randperm(L, generator=gen)[:nx].to(z.device), p] = 1.0
        U[:nx, P] = 1.0
        U[:, P + 1] = 1.0
        KU = K @ U
        uKu = (U * KU).sum(0); uK1 = U.T @ KU[:, -1]; tot = KU[:, -1].sum()
        m = L - nx
        s = uKu / (nx * (nx - 1)) + (tot - 2 * uK1 + uKu) / (m * (m - 1)) - 2 * (uK1 - uKu) / (nx * m)
        return (1 + (s[:P] >= s[P]).sum()) / (1 + P)

    def perm_loop(x, y, P, gen):
        z = torch.cat([x, y]); L = z.shape[0]; nx = x.shape[0]
        obs = wae_fast.mmd(x, y, spec)
        cnt = 0
        for _ in range(P):
            pi = torch.randperm(L, generator=gen).to(z.device)
            cnt += int(wae_fast.mmd(z[pi[:nx]], z[pi[nx:]], spec) >= obs)
        return (1 + cnt) / (1 + P)

    meth = row["method"]
    if meth == "wae_fast":
        fn = lambda a, b: wae_fast.mmd_test(a, b, spec, num_permutations=p, generator=torch.Generator().manual_seed(1)).p_value
    elif meth == "dense_KS":
        fn = lambda a, b: dense_ks(a, b, p, torch.Generator().manual_seed(1))
    else:
        fn = lambda a, b: perm_loop(a, b, p, torch.Generator().manual_seed(1))
    fn(x[:100], y[:100]); sync()
    call = lambda: fn(x, y)
    value = lambda o: float(o)
else:
    r = torch.randn(n, d, generator=g).abs_().to(dev)
    f = (torch.randn(n, d, generator=g).abs_() * 1.05).to(dev)
    if row["bench"] == "kid_subsets":
        m, subsets = min(1000, n // 2), (100 if n >= 10_000 else 5)
        if row["method"] == "wae_fast":
            fn = lambda mm=m, ss=subsets: wae_fast.kid(r, f, subset_size=mm, num_subsets=ss,
                                                        generator=torch.Generator().manual_seed(1))
        else:
            fn = lambda mm=m, ss=subsets: dense_loop(r, f, mm, ss, torch.Generator().manual_seed(1))
        value = lambda o: float(o[0])
    else:
        if row["method"] == "wae_fast":
            fn = lambda: wae_fast.kid(r, f, subset_size=None)[0]
        else:
            fn = lambda: chunked_full(r, f)
        value = lambda o: float(o)
    small = (r, f)
    r, f = r[:200], f[:200]
    fn(mm=50, ss=2) if row["bench"] == "kid_subsets" else fn()  # warm-up on a slice
    sync()
    r, f = small
    call = fn

if dev == "cuda":
    sync(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
with torch.no_grad():
    while True:  # one call; rows under 5 s: the median of 5 (every method alike)
        t0 = time.perf_counter()
        o = call()
        sync()
        times.append(time.perf_counter() - t0)
        if times[0] >= 5.0 or len(times) == 5:
            break
out = {"time_s": sorted(times)[len(times) // 2], "calls": len(times), "value": value(o)}
if dev == "cuda":
    out["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
else:
    out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
print("RESULT " + json.dumps(out))
"""


def run_row(row: Row, timeout: float) -> dict:
    try:
        p = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(asdict(row))], capture_output=True,
                           text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": tail[0][:200]}


def report(results, title: str, command: str) -> str:
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             f"Machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), "
             f"python {platform.python_version()}", "",
             "time s: one call, or the median of 5 calls for a row whose first call took under 5 s.", "",
             "| bench | method | device | N = M | d | P | time s | peak extra MB | value |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row, r in results:
        if "error" in r:
            lines.append(f"| {row.bench} | {row.method} | {row.device} | {row.n} | {row.d} | {row.p or '-'} "
                         f"| - | - | {r['error']} |")
        else:
            lines.append(f"| {row.bench} | {row.method} | {row.device} | {row.n} | {row.d} | {row.p or '-'} "
                         f"| {r['time_s']:.3g} | {r['peak_mb']:.1f} | {r['value']:.6g} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="tiny", choices=("tiny", "cpu", "cpu-large", "gpu"))
    ap.add_argument("--only", default=None, help="comma-separated benches to keep")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = rows_for(args.set)
    if args.only:
        keep = set(args.only.split(","))
        rows = [r for r in rows if r.bench in keep]
    t0 = time.time()
    results = []
    for row in rows:
        if args.budget is not None and time.time() - t0 > args.budget:
            results.append((row, {"error": "skipped (budget)"}))
            continue
        r = run_row(row, args.timeout)
        print(row, r, flush=True)
        results.append((row, r))
    device = "gpu" if args.set == "gpu" else args.set
    date = _dt.date.today().isoformat()
    command = "python -m benchmarks.bench_kid " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, f"kernel_matmul and KID ({device}, {date})", command)
    out = args.out or os.path.join(RESULTS, f"kid-{device}-{date}.md")
    if out != "-":
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as fh:
            fh.write(text)
    print(text)
    return 0 if all("error" not in r for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
