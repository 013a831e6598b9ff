"""MMD / reparameterize benchmark harness.

    python -m benchmarks.bench_mmd --mode cpu                  # the CPU foundation targets (+ sweep)
    python -m benchmarks.bench_mmd --mode cpu --rows cpu-targets
    python -m benchmarks.bench_mmd --mode gpu --rows gpu-core  # on a CUDA machine
    python -m benchmarks.bench_mmd --mode gpu --dry-run        # GPU row sets at tiny sizes on CPU
    python -m benchmarks.bench_mmd --list                      # the row sets

Every row runs in its own subprocess (``--worker``), with a timeout: a crash, a hang, an OOM or a
missing backend becomes a line in the report, never the end of the run. In the worker:

* time: CPU ``time.perf_counter`` around each call after one warm-up call (which includes any
  compilation: reported as ``first_call_s``); GPU CUDA events around each call, synchronised.
  The median over an adaptive number of repetitions (about ``--row-budget`` seconds, at least
  one, at most ``max_reps``); min and max are kept too.
* memory: GPU ``torch.cuda.max_memory_allocated`` over one call after the warm-up, minus what was
  allocated before it (inputs excluded). CPU: the peak RSS of the row's own process (Linux
  ``VmHWM`` of /proc/self/status, i.e. getrusage's ru_maxrss for this process image; the
  ru_maxrss that getrusage returns inherits the PARENT's RSS across fork+exec, so it is not used
  on Linux) at the end minus the RSS just before the first call: ``peak_mem_mb`` (inputs
  excluded; warm-up and, for torch.compile, the compiler included). ``timed_peak_mem_mb``: the
  peak is reset (``echo 5 > /proc/self/clear_refs``) after the warm-up, so it is the peak of the
  timed calls alone over the RSS before them (compilation excluded). Where neither file exists,
  ru_maxrss and a 0.5 ms RSS sampler stand in. Rows marked ``mem_probe`` also run one call in a
  second process with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc then unmaps every freed block above
  64 KiB at once instead of caching it): ``mmap_peak_mem_mb`` is the peak of live allocations.
* fwd+bwd: x requires grad (the encoder's codes), y (prior samples) does not; one call is
  ``mmd(x, y).backward()``.

Rows that cannot fit are not run: dense peers whose predicted memory
(:func:`benchmarks.peers.dense_memory_bytes`) exceeds ``--dense-limit-gb`` (CPU, default 6) or the
GPU's memory are recorded as ``oom-predicted``; a real ``torch.cuda.OutOfMemoryError`` / CPU
``MemoryError`` is recorded as ``oom``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")


# =============================================================================================
# worker: one row, in its own process


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _maxrss_bytes() -> int:
    """Peak RSS of this process image (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return v if sys.platform == "darwin" else v * 1024


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _RssSampler:
    def __init__(self, period=0.0005):
        self.period, self.peak, self._stop = period, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.period)

    def __enter__(self):
        self.peak = _rss_bytes()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, MemoryError):
        return True
    if hasattr(torch.cuda, "OutOfMemoryError") and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg


def _build(row: dict, device: str):
    """Inputs and the callable of one row."""
    import torch

    import wae_fast

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}[row["dtype"]]
    gen = torch.Generator(device="cpu").manual_seed(1234)
    n, m, d = row["n"], row["m"], row["d"]
    backend = row["backend"]
    want_grad = row["passes"] == "fwdbwd"

    if row["op"] == "reparam":
        mu = (torch.randn(n, d, generator=gen) * 0.5).to(device=device, dtype=dt).requires_grad_(want_grad)
        logvar = (torch.randn(n, d, generator=gen) * 0.3 - 1.0).to(device=device, dtype=dt).requires_grad_(want_grad)
        if backend == "naive":
            from .peers import naive_reparam

            fn = lambda: naive_reparam(mu, logvar)  # noqa: E731
        else:
            rg = torch.Generator(device=device).manual_seed(7)
            fn = lambda: wae_fast.reparameterize(mu, logvar, generator=rg, backend=backend)  # noqa: E731
        leaves = [mu, logvar]

        def step():
            z = fn()
            if want_grad:
                z.backward(torch.ones_like(z))
            return z

        return step, leaves

    if row["op"].startswith("seg_"):
        return _build_segments(row, device, dt, gen, want_grad)

    # codes: a shifted, slightly wider cloud than the prior, as an encoder's would be
    x = (torch.randn(n, d, generator=gen) * 1.1 + 0.3).to(device=device, dtype=dt).requires_grad_(want_grad)
    y = torch.randn(m, d, generator=gen).to(device=device, dtype=dt)
    from wae_fast.kernel_specs import IMQ, RBF

    spec = IMQ() if row["kernel"] == "imq7" else RBF()
    unbiased = row["estimator"] == "unbiased"
    if backend in ("reference", "cpp", "triton", "cuda"):
        fn = lambda: wae_fast.mmd(x, y, spec, estimator=row["estimator"], backend=backend,  # noqa: E731
                                  precision=row["precision"])
    else:
        from .peers import make_peer

        kind, params = spec.lower(d)
        fn = make_peer(backend, kind, params, unbiased)
        fn = (lambda f: (lambda: f(x, y)))(fn)

    def step():
        out = fn()
        if want_grad:
            out.backward()
        return out

    return step, [x]


def segment_sizes(op: str, n: int) -> list[tuple[int, int]]:
    """(N_b, M_b) of every set of a ``seg_*`` row (benchmarks.rows.SEG_OPS)."""
    import torch

    from .rows import SEG_RAGGED_MIN, SEG_RAGGED_SETS, SEG_SETS

    if op.startswith("seg_ragged"):
        g = torch.Generator().manual_seed(0)
        nx = torch.randint(SEG_RAGGED_MIN, n + 1, (SEG_RAGGED_SETS,), generator=g).tolist()
        ny = torch.randint(SEG_RAGGED_MIN, n + 1, (SEG_RAGGED_SETS,), generator=g).tolist()
        return list(zip(nx, ny))
    return [(n, n)] * SEG_SETS


def _build_segments(row: dict, device: str, dt, gen, want_grad: bool):
    """Inputs and the callable of a ``seg_*`` row: one mmd_batched / mmd_varlen call, a Python
    loop of single mmd calls over the same sets, or (backend "naive") the dense batched formula."""
    import torch

    import wae_fast

    op, d, backend = row["op"], row["d"], row["backend"]
    sizes = segment_sizes(op, row["n"])
    xo, yo = [0], [0]
    for nb, mb in sizes:
        xo.append(xo[-1] + nb)
        yo.append(yo[-1] + mb)
    x = (torch.randn(xo[-1], d, generator=gen) * 1.1 + 0.3).to(device=device, dtype=dt).requires_grad_(want_grad)
    y = torch.randn(yo[-1], d, generator=gen).to(device=device, dtype=dt)
    xw = (torch.rand(xo[-1], generator=gen) + 0.5).to(device=device, dtype=dt)
    yw = (torch.rand(yo[-1], generator=gen) + 0.5).to(device=device, dtype=dt)
    est = row["estimator"]
    B, n = len(sizes), row["n"]
    if backend == "naive":  # dense batched (B, N, N) matrices (equal sizes only)
        from .bench_segments import imq_dense

        fn = lambda: imq_dense(x.view(B, n, d), y.view(B, n, d))  # noqa: E731
    elif op in ("seg_loop", "seg_ragged_loop"):
        fn = lambda: torch.stack([wae_fast.mmd(x[xo[b]:xo[b + 1]], y[yo[b]:yo[b + 1]], estimator=est,  # noqa: E731
                                               backend=backend) for b in range(B)])
    elif op == "seg_ragged":
        fn = lambda: wae_fast.mmd_varlen(x, y, xo, yo, estimator=est, backend=backend)  # noqa: E731
    else:
        kw = dict(x_weights=xw.view(B, n), y_weights=yw.view(B, n)) if op == "seg_batched_w" else {}
        fn = lambda: wae_fast.mmd_batched(x.view(B, n, d), y.view(B, n, d), estimator=est,  # noqa: E731
                                          backend=backend, **kw)

    def step():
        out = fn()
        if want_grad:
            out.sum().backward()
        return out

    return step, [x]


def segment_floor(row, machine) -> dict:
    """Floor of a ``seg_*`` row: the sum of the MMD floors of its sets (independent problems)."""
    from . import floor as floormod

    per = [floormod.row_floor("mmd", nb, mb, row.d, row.dtype, row.passes, row.precision, machine)
           for nb, mb in segment_sizes(row.op, row.n)]
    bounds = [f["bound"] for f in per]
    return {"floor_s": sum(f["floor_s"] for f in per), "bound": max(set(bounds), key=bounds.count)}


def run_mem_probe(row: dict) -> dict:
    """CPU only: one call's peak RSS growth in a process whose glibc malloc returns every
    allocation above 64 KiB to the OS at once (MALLOC_MMAP_THRESHOLD_=65536, set by the driver),
    so that the peak counts live allocations, not blocks the allocator keeps cached."""
    try:
        if row["backend"] == "compiled":  # compile first: the compiler's memory is not the op's
            step, leaves = _build(row, "cpu")
            step()
            for t in leaves:
                t.grad = None
        else:  # one call on tiny inputs first: thread pools and one-time buffers are not the op's
            tiny_step, _ = _build(dict(row, n=min(row["n"], 64), m=min(row["m"], 64)), "cpu")
            tiny_step()
            del tiny_step
            step, leaves = _build(row, "cpu")
        _reset_peak_rss()
        rss0 = _rss_bytes()
        step()
        return {"mmap_peak_mem_mb": max(0, _maxrss_bytes() - rss0) / 2**20}
    except Exception as exc:
        return {"mmap_peak_mem_mb": None, "reason": f"mem probe: {type(exc).__name__}: {exc}"[:300]}


def run_paired(rows: list, device: str, budget: float, max_reps: int) -> dict:
    """Interleaved timing of several rows in ONE process (A B A B ...): on a shared machine the
    load changes between processes, so a ratio is taken from calls made side by side.
    Returns {backend: median_ms} (or {backend: "error: ..."})."""
    import torch

    steps, out = {}, {}
    for row in rows:
        try:
            step, leaves = _build(row, device)
            step()  # warm-up / compile
            for t in leaves:
                t.grad = None
            steps[row["backend"]] = (step, leaves)
        except Exception as exc:
            out[row["backend"]] = f"error: {type(exc).__name__}: {exc}"[:200]
    if not steps:
        return out
    t0 = time.perf_counter()
    for step, leaves in steps.values():
        step()
        for t in leaves:
            t.grad = None
    est = time.perf_counter() - t0
    reps = int(max(3, min(max_reps, budget / max(est, 1e-6))))
    times = {b: [] for b in steps}
    for _ in range(reps):
        for b, (step, leaves) in steps.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[b].append(time.perf_counter() - t1)
            for t in leaves:
                t.grad = None
    for b, ts in times.items():
        ts.sort()
        out[b] = 1e3 * ts[len(ts) // 2]
        out["_min_" + b] = 1e3 * ts[0]
    out["_reps"] = reps
    return out


#: Replays per timed repetition of a graph row (one replay is ~10 us: too short to time alone).
GRAPH_CALLS = 100


def _graph_step(step, leaves):
    """(step, clear) replaying ``step`` (fwd + bwd, warmed up) captured in a CUDA graph
    GRAPH_CALLS times; the gradients stay in the graph's tensors (clear is a no-op)."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graph asks
            for t in leaves:
                t.grad = None
            step()
    torch.cuda.current_stream().wait_stream(s)
    for t in leaves:
        t.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    def replay():
        for _ in range(GRAPH_CALLS):
            graph.replay()
        return out

    return replay, (lambda: None)


def run_worker(row: dict, device: str, row_budget: float, max_reps: int) -> dict:
    import torch

    res = {"status": "error", "reason": ""}
    cuda = device.startswith("cuda")
    try:
        step, leaves = _build(row, device)
    except Exception as exc:  # a backend that fails to build/import
        return {"status": "oom" if _is_oom(exc) else "error", "reason": f"setup: {type(exc).__name__}: {exc}"[:400]}

    def clear():
        for t in leaves:
            t.grad = None

    def sync():
        if cuda:
            torch.cuda.synchronize()

    try:
        sync()
        _reset_peak_rss()
        rss0 = _rss_bytes()
        if cuda:
            mem0 = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = step()
        sync()
        res["first_call_s"] = time.perf_counter() - t0
        clear()
        # peak memory of one call (after the warm-up: compilation/autotuning excluded on the GPU)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            out = step()
            sync()
            res["peak_mem_mb"] = (torch.cuda.max_memory_allocated() - mem0) / 2**20
            clear()
        if cuda and row.get("graph"):
            step, clear = _graph_step(step, leaves)
            res["graph_calls_per_rep"] = GRAPH_CALLS
        # estimate (a slow row takes its first call as the estimate), then repeat
        est = res["first_call_s"]
        if est < 2 * row_budget:
            t0 = time.perf_counter()
            out = step()
            sync()
            est = max(time.perf_counter() - t0, 1e-6)
            clear()
        reps = int(max(1, min(max_reps, row_budget / est)))
        times = []
        peak_so_far = _maxrss_bytes()  # includes the warm-up (and any compilation)
        can_reset = _reset_peak_rss()
        rss_before = _rss_bytes()
        with _RssSampler() as sampler:
            for _ in range(reps):
                if cuda:
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    out = step()
                    e1.record()
                    e1.synchronize()
                    times.append(e0.elapsed_time(e1) / 1e3 / (GRAPH_CALLS if row.get("graph") else 1))
                else:
                    t0 = time.perf_counter()
                    out = step()
                    times.append(time.perf_counter() - t0)
                clear()
        if not cuda:
            timed_peak = max(_maxrss_bytes(), sampler.peak) if can_reset else sampler.peak
            res["peak_mem_mb"] = max(0, max(peak_so_far, timed_peak) - rss0) / 2**20
            res["timed_peak_mem_mb"] = max(0, timed_peak - rss_before) / 2**20
        times.sort()
        res.update(status="ok", time_ms=1e3 * times[len(times) // 2] if len(times) % 2 else
                   1e3 * 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2]),
                   time_min_ms=1e3 * times[0], time_max_ms=1e3 * times[-1], reps=len(times))
        if row["op"] == "mmd":
            v = float(out.detach().float().cpu())
            res["value"] = v
            if v != v:
                res["status"], res["reason"] = "error", "result is NaN"
    except Exception as exc:
        res["status"] = "oom" if _is_oom(exc) else "error"
        res["reason"] = f"{type(exc).__name__}: {exc}"[:400]
    res["threads"] = torch.get_num_threads()
    return res


# =============================================================================================
# driver


def _env_for_worker() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("TRITON_INTERPRET", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _precheck(row, device: str, dense_limit: float, gpu_mem: Optional[float], dry_run: bool,
              seen_compiled: list) -> Optional[tuple[str, str]]:
    """(status, reason) when the row is not to be run, else None."""
    from . import peers
    from .rows import WAE_BACKENDS

    family = "reparam" if row.op == "reparam" else "mmd_segments" if row.op.startswith("seg_") else "mmd"
    if row.backend in WAE_BACKENDS:
        from wae_fast.dispatch import unavailable_reason

        why = unavailable_reason(row.backend, device, family)
        if why:
            return "skip", why
        return None
    if row.op == "reparam":
        return None if row.backend == "naive" else ("skip", f"peer {row.backend} has no reparameterize")
    if row.op.startswith("seg_"):
        return None if (row.backend, row.op) == ("naive", "seg_batched") else (
            "skip", f"peer {row.backend} has no {row.op} row")
    from wae_fast.kernel_specs import IMQ, RBF

    kind, params = (IMQ() if row.kernel == "imq7" else RBF()).lower(row.d)
    why = peers.peer_unavailable(row.backend, kind, params, row.estimator == "unbiased", device)
    if why:
        return "skip", why
    if row.backend in ("naive", "compiled"):
        need = peers.dense_memory_bytes(row.backend, row.n, row.mm, len(params), row.passes,
                                        2 if row.dtype in ("bf16", "fp16") else 4)
        limit = gpu_mem if device.startswith("cuda") else dense_limit
        if limit and need > limit:
            return "oom-predicted", f"dense peer needs ~{need / 1e9:.1f} GB > limit {limit / 1e9:.1f} GB"
    if row.backend == "compiled" and dry_run:
        if seen_compiled:
            return "skip", "dry run: the torch.compile peer runs once (compiling costs tens of seconds)"
        seen_compiled.append(True)
    return None


def _machine(device: str, dry_run: bool):
    from . import floor

    if device.startswith("cuda"):
        return floor.gpu_machine()
    if dry_run:
        m = floor.H100_SXM
        m = floor.dataclasses.replace(m, source=m.source + " (DRY RUN: no GPU; floors are the H100's for the tiny rows)")
        return m
    return floor.measure_cpu_machine()


def default_stem(mode: str, dry_run: bool) -> str:
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    if dry_run:
        return f"dryrun-nogpu-{date}"
    if mode == "gpu":
        try:
            import torch

            name = torch.cuda.get_device_name(0)
        except Exception:
            name = "gpu"
        slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
        slug = slug.replace("nvidia-", "")
        while "--" in slug:
            slug = slug.replace("--", "-")
        return f"{slug}-{date}"
    return f"cpu-{date}"


def run_rows(rows, *, device: str, stem: str, out_dir: Optional[str] = None, results_dir: str = RESULTS,
             row_timeout: float = 240.0, row_budget: float = 4.0, max_reps: int = 15, budget: float = 0.0,
             dense_limit_gb: float = 6.0, dry_run: bool = False, title: Optional[str] = None,
             plots: bool = True, log=print) -> list[dict]:
    """Run rows one subprocess each; append every result to <stem>.csv/.md as it finishes."""
    from . import floor as floormod
    from . import report

    os.makedirs(results_dir, exist_ok=True)
    csv_path = os.path.join(results_dir, stem + ".csv")
    md_path = os.path.join(results_dir, stem + ".md")
    png_stem = os.path.join(results_dir, stem)
    machine = _machine(device, dry_run)
    gpu_mem = None
    if device.startswith("cuda"):
        import torch

        gpu_mem = float(torch.cuda.get_device_properties(0).total_memory)
    import torch

    start = time.time()
    if not os.path.exists(md_path):
        report.append_md(md_path, f"# wae_fast benchmark report: {stem}\n")
    report.append_md(md_path, "\n".join([
        "",
        f"## {title or 'Benchmark rows'} ({_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')})",
        "",
        f"- device: {device}{' (DRY RUN: no GPU found; tiny sizes on CPU)' if dry_run else ''}; host {platform.node()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"- floor machine: {machine.name}: {machine.source}",
        "- time: median of the timed calls (warm-up and compilation excluded); peak extra MB: "
        + ("torch.cuda.max_memory_allocated over one call minus the inputs" if device.startswith("cuda")
           else "peak RSS (VmHWM) growth of the row's own process over its RSS before the first call (warm-up and "
                "compiler included; the timed calls alone are in the CSV's timed_peak_mem_mb)"),
        "- % of floor: floor time / measured time (100 = at the hardware floor); see benchmarks/floor.py for "
        "what is counted",
        "",
        report.MD_HEADER,
        report.MD_RULE,
    ]))
    results = []
    seen_compiled: list = []
    for i, row in enumerate(rows):
        rd = row.as_dict()
        rd["device"] = device
        t_row = time.time()
        elapsed = t_row - start
        pre = None
        if budget and elapsed > budget:
            pre = ("skip", f"stage budget of {budget:.0f} s spent")
        if pre is None:
            pre = _precheck(row, device, dense_limit_gb * 1e9, gpu_mem, dry_run, seen_compiled)
        if pre is not None:
            res = {"status": pre[0], "reason": pre[1]}
        else:
            timeout = row_timeout
            if budget:
                timeout = min(timeout, max(30.0, budget - elapsed + 30.0))
            cmd = [sys.executable, "-m", "benchmarks.bench_mmd", "--worker", json.dumps(rd), "--device", device,
                   "--row-budget", str(row_budget), "--max-reps", str(row.max_reps or max_reps)]
            try:
                p = subprocess.run(cmd, cwd=REPO, env=_env_for_worker(), capture_output=True, text=True,
                                   timeout=timeout)
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                if line:
                    res = json.loads(line[-1][7:])
                else:
                    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
                    res = {"status": "oom" if p.returncode in (-9, 137) else "error",
                           "reason": f"worker exit {p.returncode}: " + " / ".join(tail)[-300:]}
            except subprocess.TimeoutExpired:
                res = {"status": "timeout", "reason": f"row took more than {timeout:.0f} s"}
            if row.mem_probe and not device.startswith("cuda") and res.get("status") == "ok":
                env = _env_for_worker()
                env["MALLOC_MMAP_THRESHOLD_"] = "65536"
                try:
                    p = subprocess.run(cmd + ["--mem-probe"], cwd=REPO, env=env, capture_output=True, text=True,
                                       timeout=timeout)
                    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                    if line:
                        res["mmap_peak_mem_mb"] = json.loads(line[-1][7:]).get("mmap_peak_mem_mb")
                except subprocess.TimeoutExpired:
                    pass
        rd.update(res)
        fl = (segment_floor(row, machine) if row.op.startswith("seg_") else
              floormod.row_floor(row.op, row.n, row.mm, row.d, row.dtype, row.passes, row.precision, machine))
        rd["floor_ms"] = fl["floor_s"] * 1e3
        rd["bound"] = fl["bound"]
        if rd.get("status") == "ok" and rd.get("time_ms"):
            rd["frac_floor"] = rd["floor_ms"] / rd["time_ms"]
        rd["machine"] = machine.name
        rd["wall_s"] = round(time.time() - t_row, 2)
        rd["timestamp"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        report.append_csv(csv_path, rd)
        report.append_md(md_path, report.md_row(rd))
        report.mirror([csv_path, md_path], out_dir)
        t = rd.get("time_ms")
        log(f"[{i + 1}/{len(rows)}] {row.backend:9s} {row.op:7s} N={row.n:<8d} d={row.d:<3d} {rd['kernel']:4s} "
            f"{row.dtype} {row.passes:6s} {rd['estimator'][:3]} {rd['precision']}: {rd['status']}"
            + (f" {t:.4g} ms, {rd.get('peak_mem_mb', 0):.4g} MB, {100 * rd.get('frac_floor', 0):.3g}% of floor"
               if rd["status"] == "ok" else f" ({rd.get('reason', '')})") + f" [{rd['wall_s']} s]")
        results.append(rd)
    if plots:
        pngs = report.plot(csv_path, png_stem)
        if pngs:
            report.append_md(md_path, "\n" + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs))
        report.mirror(pngs, out_dir)
    report.mirror([csv_path, md_path], out_dir)
    return results


# ---- answering the foundation targets ----------------------------------------------------------

#: (target, slower peer, wae_fast backend, N, d, goal ratio): the CPU target comparisons.
PAIRED_TARGETS = [
    ("T1", "naive", "reference", 4096, 64, 4.0),
    ("T3", "compiled", "cpp", 4096, 64, 1.0),
    ("T4", "pykeops", "cpp", 16384, 8, 5.0),
]


def run_paired_targets(device: str = "cpu", timeout: float = 300.0, log=print) -> list[dict]:
    """Each target's two backends timed interleaved in one subprocess (see :func:`run_paired`)."""
    from wae_fast.dispatch import unavailable_reason

    from . import peers
    from .rows import Row

    out = []
    for tag, peer, mine, n, d, goal in PAIRED_TARGETS:
        rec = {"target": tag, "peer": peer, "backend": mine, "n": n, "d": d, "goal": goal}
        why = unavailable_reason(mine, device, "mmd") or peers.peer_unavailable(peer, 0, [1.0] * 7, True, device)
        if why:
            rec["status"] = f"skip: {why}"
            out.append(rec)
            log(f"paired {tag}: skip ({why})")
            continue
        rows = [Row(peer, n, d).as_dict(), Row(mine, n, d).as_dict()]
        cmd = [sys.executable, "-m", "benchmarks.bench_mmd", "--worker", json.dumps(rows), "--paired",
               "--device", device, "--row-budget", "20", "--max-reps", "9"]
        try:
            p = subprocess.run(cmd, cwd=REPO, env=_env_for_worker(), capture_output=True, text=True, timeout=timeout)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            res = json.loads(line[-1][7:]) if line else {"error": (p.stderr or "")[-300:]}
        except subprocess.TimeoutExpired:
            res = {"error": f"timeout after {timeout:.0f} s"}
        tp, tm = res.get(peer), res.get(mine)
        if isinstance(tp, float) and isinstance(tm, float):
            mp, mm = res.get("_min_" + peer, tp), res.get("_min_" + mine, tm)
            rec.update(status="ok", peer_ms=tp, backend_ms=tm, ratio=tp / tm, reps=res.get("_reps"),
                       peer_min_ms=mp, backend_min_ms=mm, ratio_min=mp / mm)
            log(f"paired {tag}: {peer} {tp:.4g} ms vs {mine} {tm:.4g} ms: {tp / tm:.2f}x by medians, "
                f"{mp / mm:.2f}x by minima (goal {goal}x)")
        else:
            rec["status"] = f"error: {res}"[:300]
            log(f"paired {tag}: {rec['status']}")
        out.append(rec)
    return out


def paired_summary(recs: list[dict]) -> str:
    lines = ["", "### Interleaved ratios (both backends in one process, calls alternated: robust to the shared "
                 "CPU's load changing between rows)", "",
             "Medians, and minima (contention on a shared machine only adds time, so the ratio of minima is "
             "the closer estimate of the unloaded ratio).", "",
             "| target | N=M | d | peer | peer ms (median / min) | wae_fast backend | its ms (median / min) | "
             "ratio by medians | ratio by minima | goal | verdict (minima) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if r.get("status") == "ok":
            rm = r.get("ratio_min", r["ratio"])
            lines.append(f"| {r['target']} | {r['n']} | {r['d']} | {r['peer']} | {r['peer_ms']:.4g} / "
                         f"{r.get('peer_min_ms', r['peer_ms']):.4g} | {r['backend']} | {r['backend_ms']:.4g} / "
                         f"{r.get('backend_min_ms', r['backend_ms']):.4g} | {r['ratio']:.2f}x | {rm:.2f}x | "
                         f">= {r['goal']:g}x | {'MET' if rm >= r['goal'] else 'NOT MET'} ({r['reps']} alternations) |")
        else:
            lines.append(f"| {r['target']} | {r['n']} | {r['d']} | {r['peer']} | | {r['backend']} | | | | "
                         f">= {r['goal']:g}x | {str(r.get('status')).replace('|', '/')} |")
    return "\n".join(lines) + "\n"

def _find(results, **kw) -> Optional[dict]:
    for r in results:
        if all(str(r.get(k)) == str(v) for k, v in kw.items()):
            return r
    return None


def cpu_targets_summary(results: list[dict]) -> str:
    """Markdown lines answering the CPU targets from the rows just measured."""
    common = dict(op="mmd", kernel="imq7", dtype="fp32", estimator="unbiased", precision="ieee")
    out = ["", "## CPU targets (ratios from this one run; the CPU was shared, so absolute times are pessimistic)", ""]

    def t(backend, n, d, passes="fwdbwd"):
        r = _find(results, backend=backend, n=n, d=d, passes=passes, **common)
        ok = r is not None and r.get("status") == "ok" and r.get("time_ms") not in (None, "")
        return (float(r["time_ms"]) if ok else None), r

    def status_of(r):
        return "not measured" if r is None else f"{r.get('status')}: {r.get('reason', '')}"

    ref, r_ref = t("reference", 4096, 64)
    nai, r_nai = t("naive", 4096, 64)
    if ref and nai:
        ratio = nai / ref
        out.append(f"- T1 reference vs naive dense, N=M=4096 d=64 IMQ7 unbiased fp32 fwd+bwd: naive {nai:.4g} ms, "
                   f"reference {ref:.4g} ms: reference **{ratio:.2f}x** faster (target >= 4x: "
                   f"{'MET' if ratio >= 4 else 'NOT MET'})")
    else:
        out.append(f"- T1: missing rows (reference {status_of(r_ref)}; naive {status_of(r_nai)})")
    r16 = _find(results, backend="reference", n=16384, d=64, passes="fwdbwd", **common)
    if r16 and r16.get("status") == "ok":
        mb = float(r16["peak_mem_mb"])
        live = r16.get("mmap_peak_mem_mb")
        live_s = f"{float(live):.1f} MB" if live not in (None, "") else "not measured"
        verdict = "MET" if mb < 64 else ("MET for live allocations only" if live not in (None, "") and float(live) < 64
                                         else "NOT MET")
        out.append(f"- T2 reference peak extra memory, N=M=16384 d=64 fwd+bwd: **{mb:.1f} MB** peak RSS growth with "
                   f"the default allocator (timed calls alone {float(r16.get('timed_peak_mem_mb') or 0):.1f} MB); "
                   f"**{live_s}** of live allocations (MALLOC_MMAP_THRESHOLD_=65536) (target < 64 MB: {verdict})")
        rb = _find(results, backend="cpp", n=16384, d=64, passes="fwdbwd", **common)
        if rb and rb.get("status") == "ok":
            lv = rb.get("mmap_peak_mem_mb")
            out.append(f"  - cpp at the same size: {float(rb['peak_mem_mb']):.1f} MB RSS growth, "
                       + (f"{float(lv):.1f} MB live" if lv not in (None, "") else "live not measured"))
    else:
        out.append(f"- T2: reference N=16384 row {status_of(r16)}")
    n16 = _find(results, backend="naive", n=16384, d=64, passes="fwdbwd", **common)
    if n16:
        out.append(f"  - naive dense at the same size: {n16.get('status')} ({n16.get('reason', '')})")
    cpp, r_cpp = t("cpp", 4096, 64)
    comp, r_comp = t("compiled", 4096, 64)
    if cpp and comp:
        out.append(f"- T3 cpp vs torch.compile dense, N=M=4096 d=64 fwd+bwd: compiled {comp:.4g} ms, cpp {cpp:.4g} ms: "
                   f"cpp **{comp / cpp:.2f}x** (target >= 1x: {'MET' if comp / cpp >= 1 else 'NOT MET'})")
    else:
        out.append(f"- T3: cpp {status_of(r_cpp)}; compiled {status_of(r_comp)}")
    cpp8, r_cpp8 = t("cpp", 16384, 8)
    pk8, r_pk8 = t("pykeops", 16384, 8)
    if cpp8 and pk8:
        out.append(f"- T4 cpp vs pykeops, N=M=16384 d=8 fwd+bwd: pykeops {pk8:.4g} ms, cpp {cpp8:.4g} ms: cpp "
                   f"**{pk8 / cpp8:.2f}x** (target >= 5x: {'MET' if pk8 / cpp8 >= 5 else 'NOT MET'})")
    elif cpp8:
        out.append(f"- T4 cpp N=M=16384 d=8 fwd+bwd: {cpp8:.4g} ms; pykeops {status_of(r_pk8)}: against the "
                   f"KERNEL_NOTES.md pykeops 2.3 CPU figure (4.57 s fwd+bwd, another day's load) that is "
                   f"{4570 / cpp8:.2f}x (target >= 5x)")
    else:
        out.append(f"- T4: cpp {status_of(r_cpp8)}; pykeops {status_of(r_pk8)}")
    ref8, _ = t("reference", 16384, 8)
    if ref8:
        out.append(f"  - reference at N=M=16384 d=8 fwd+bwd: {ref8:.4g} ms")
    return "\n".join(out) + "\n"


def mem_only(rows, a) -> int:
    """One probe call per mem_probe row (CPU), appended to <stem>.md as a table."""
    from . import report

    stem = a.stem or default_stem("cpu", False)
    md = os.path.join(a.results_dir, stem + ".md")
    lines = ["", "### Live-allocation peak (one call after a tiny warm-up, MALLOC_MMAP_THRESHOLD_=65536; "
                 "`--mem-only`)", "", "| backend | N=M | d | pass | peak extra MB |", "|---|---|---|---|---|"]
    for row in rows:
        if not row.mem_probe:
            continue
        pre = _precheck(row, "cpu", a.dense_limit_gb * 1e9, None, False, [])
        if pre is not None:
            lines.append(f"| {row.backend} | {row.n} | {row.d} | {row.passes} | {pre[0]}: {pre[1]} |")
            print(lines[-1], flush=True)
            continue
        env = _env_for_worker()
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        cmd = [sys.executable, "-m", "benchmarks.bench_mmd", "--worker", json.dumps(row.as_dict()), "--mem-probe"]
        try:
            p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=a.row_timeout or 400)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            r = json.loads(line[-1][7:]) if line else {"reason": (p.stderr or "")[-200:]}
        except subprocess.TimeoutExpired:
            r = {"reason": "timeout"}
        v = r.get("mmap_peak_mem_mb")
        lines.append(f"| {row.backend} | {row.n} | {row.d} | {row.passes} | "
                     + (f"{v:.1f}" if isinstance(v, (int, float)) else str(r.get("reason", "")).replace("|", "/")) + " |")
        print(lines[-1], flush=True)
    report.append_md(md, "\n".join(lines) + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--rows", default=None, help="comma-separated row sets (default: cpu / gpu-core)")
    ap.add_argument("--dry-run", action="store_true", default=os.environ.get("WAE_FAST_DRY_RUN", "") not in ("", "0"))
    ap.add_argument("--stem", default=None, help="report file stem under benchmarks/results/")
    ap.add_argument("--results-dir", default=RESULTS)
    ap.add_argument("--out-dir", default=os.environ.get("OUT") or None, help="mirror results here ($OUT)")
    ap.add_argument("--row-timeout", type=float, default=None)
    ap.add_argument("--row-budget", type=float, default=None, help="seconds of timed repetitions per row")
    ap.add_argument("--max-reps", type=int, default=None)
    ap.add_argument("--budget", type=float, default=0.0, help="stop starting rows after this many seconds")
    ap.add_argument("--dense-limit-gb", type=float, default=6.0)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mem-probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--paired", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-paired", action="store_true", help="CPU mode: skip the interleaved target ratios")
    ap.add_argument("--paired-only", action="store_true", help="CPU: only the interleaved target ratios")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads in the workers (default: torch's; 1 is steadier on a shared machine)")
    ap.add_argument("--mem-only", action="store_true",
                    help="CPU: only the live-allocation memory probe of the rows marked mem_probe (one call each, "
                         "after a tiny warm-up), appended to the report as its own table")
    a = ap.parse_args(argv)
    if a.threads:  # workers inherit it through the environment
        os.environ["WAE_BENCH_THREADS"] = str(a.threads)
    if a.worker and os.environ.get("WAE_BENCH_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["WAE_BENCH_THREADS"]))

    if a.worker and a.paired:
        res = run_paired(json.loads(a.worker), a.device or "cpu", a.row_budget or 10.0, a.max_reps or 7)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    if a.worker and a.mem_probe:
        print("RESULT " + json.dumps(run_mem_probe(json.loads(a.worker))), flush=True)
        return 0
    if a.worker:
        res = run_worker(json.loads(a.worker), a.device or "cpu", a.row_budget or 4.0, a.max_reps or 15)
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    from .rows import ROW_SETS, get_rows

    if a.list:
        for name, fn in ROW_SETS.items():
            print(f"{name}: {len(fn())} rows")
        return 0
    import torch

    if a.mem_only:
        return mem_only(get_rows(a.rows or "cpu-targets"), a)
    if a.paired_only:
        from . import report

        md = os.path.join(a.results_dir, (a.stem or default_stem("cpu", False)) + ".md")
        os.makedirs(a.results_dir, exist_ok=True)
        t0 = time.time()
        report.append_md(md, paired_summary(run_paired_targets("cpu", log=lambda s: print(s, flush=True)))
                         + "\n(`python -m benchmarks.bench_mmd " + " ".join(argv if argv is not None else sys.argv[1:])
                         + f"`, {time.time() - t0:.0f} s, "
                         f"{_dt.datetime.now(_dt.timezone.utc).strftime('%H:%M UTC')})\n")
        return 0
    if a.mode == "gpu" and not a.dry_run and not torch.cuda.is_available():
        print("no GPU found: use --dry-run (or WAE_FAST_DRY_RUN=1) to run the GPU row sets at tiny sizes on CPU")
        return 2
    device = "cuda" if (a.mode == "gpu" and not a.dry_run) else "cpu"
    rows = get_rows(a.rows or ("cpu" if a.mode == "cpu" else "gpu-core"), dry_run=a.dry_run)
    gpu = device == "cuda"
    stem = a.stem or default_stem(a.mode, a.dry_run)
    t0 = time.time()
    print(f"{len(rows)} rows on {device}{' (DRY RUN, no GPU)' if a.dry_run else ''} -> "
          f"{os.path.join(a.results_dir, stem)}.{{md,csv,png}}", flush=True)
    results = run_rows(
        rows, device=device, stem=stem, out_dir=a.out_dir, results_dir=a.results_dir,
        row_timeout=a.row_timeout or (60.0 if a.dry_run else (150.0 if gpu else 240.0)),
        row_budget=a.row_budget or (0.5 if a.dry_run else (2.0 if gpu else 3.0)),
        max_reps=a.max_reps or (3 if a.dry_run else (30 if gpu else 7)), budget=a.budget,
        dense_limit_gb=a.dense_limit_gb, dry_run=a.dry_run,
        title=f"{a.mode} rows {a.rows or 'default'}" + (" (dry run)" if a.dry_run else ""),
        log=lambda s: print(s, flush=True))
    from . import report

    md = os.path.join(a.results_dir, stem + ".md")
    if a.mode == "cpu" and not a.dry_run:
        report.append_md(md, cpu_targets_summary(results))
        if not a.no_paired:
            report.append_md(md, paired_summary(run_paired_targets("cpu", log=lambda s: print(s, flush=True))))
    report.append_md(md, f"\nRun wall time: {time.time() - t0:.0f} s; command: `python -m benchmarks.bench_mmd "
                         + " ".join(argv if argv is not None else sys.argv[1:]) + "`\n")
    report.mirror([md], a.out_dir)
    print(f"done in {time.time() - t0:.0f} s: {md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
