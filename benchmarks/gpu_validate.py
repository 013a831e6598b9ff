"""One-command GPU validation (called by benchmarks/gpu_validate.sh).

    bash benchmarks/gpu_validate.sh [--dry-run] STAGE [STAGE ...] [--rows SETS] [--budget S]

Stages (each fits one device call of 10 minutes, under 8 by design; a stage that needs the
package installed installs it first when ``pip show wae_fast`` says it is not):

    env       GPU name, driver, clocks, torch / triton / nvcc / compute-sanitizer versions, and two
              measured ceilings (device copy bandwidth, fp32/tf32/bf16 GEMM rates)
    build     optional peers from .whl/ (pip install --no-index), then
              WAE_FAST_BUILD_CUDA=1 pip install --no-deps --no-build-isolation -e .
    test      python -m pytest -q tests   (the CUDA tests run wherever a GPU is visible);
              --pytest-args gpu: only what runs on the GPU, file by file, failures logged as they
              happen (WAE_FAST_FAILLOG), within --test-budget seconds
    sanitize  benchmarks/sanitize_cases.py under compute-sanitizer memcheck and racecheck
    bench     the core matrix (benchmarks.rows.gpu_core, or --rows gpu-headline,gpu-nsweep,...)
    prior     MMD to the prior at scale (benchmarks/bench_prior.py --set gpu: N = 10M codes, M up
              to 2^20 in-kernel prior samples, time and peak memory), report <stem>-prior.md
    all       env build test sanitize bench prior (longer than one device call: for a machine you hold)

Every stage appends to benchmarks/results/<gpu>-<date>.md (and .csv, .log, -env.json, -time.png,
-mem.png) as it goes and copies them to $OUT when it is set. ``--dry-run`` (or
WAE_FAST_DRY_RUN=1) runs every stage at tiny sizes on a CPU-only machine, says that no GPU was
found, skips the pip install, runs only tests/test_benchmarks.py, and writes
benchmarks/results/dryrun-nogpu-<date>.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
STAGES = ("env", "build", "test", "sanitize", "bench", "prior", "kid")


class Ctx:
    def __init__(self, dry_run: bool, out_dir, rows: str, budget: float):
        import torch

        self.dry_run = dry_run
        self.has_gpu = torch.cuda.is_available()
        self.out_dir = out_dir
        self.rows = rows
        self.budget = budget
        date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
        if dry_run or not self.has_gpu:
            self.stem = f"dryrun-nogpu-{date}"
        else:
            from .bench_mmd import default_stem

            self.stem = default_stem("gpu", False)
        os.makedirs(RESULTS, exist_ok=True)
        self.md = os.path.join(RESULTS, self.stem + ".md")
        self.csv = os.path.join(RESULTS, self.stem + ".csv")
        self.log = os.path.join(RESULTS, self.stem + ".log")
        self.envjson = os.path.join(RESULTS, self.stem + "-env.json")
        self.python = sys.executable
        self.pytest_args = ""
        self.test_budget = 430.0

    def files(self):
        return [self.md, self.csv, self.log, self.envjson,
                os.path.join(RESULTS, self.stem + "-time.png"), os.path.join(RESULTS, self.stem + "-mem.png"),
                os.path.join(RESULTS, self.stem + "-prior.md")]

    def mirror(self):
        from .report import mirror

        mirror(self.files(), self.out_dir)

    def say(self, text: str, md: bool = True):
        print(text, flush=True)
        with open(self.log, "a") as fh:
            fh.write(text + "\n")
        if md:
            with open(self.md, "a") as fh:
                fh.write(text + "\n")

    def sh(self, cmd, timeout: float, env=None, md_tail: int = 15, shell=False) -> int:
        """Run a command, streaming its output to stdout and the log; the last lines go to the
        report inside a code block. Kills the process group at the timeout (exit 124)."""
        shown = cmd if isinstance(cmd, str) else " ".join(cmd)
        self.say(f"\n$ {shown}", md=True)
        e = dict(os.environ)
        e.update(env or {})
        e["PYTHONUNBUFFERED"] = "1"
        lines = []
        t0 = time.time()
        p = subprocess.Popen(cmd, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             shell=shell, start_new_session=True, errors="replace")
        deadline = t0 + timeout
        rc = None
        with open(self.log, "a") as log:
            import selectors

            sel = selectors.DefaultSelector()
            sel.register(p.stdout, selectors.EVENT_READ)
            while True:
                if time.time() > deadline:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except OSError:
                        pass
                    p.wait()
                    rc = 124
                    break
                if sel.select(timeout=1.0):
                    line = p.stdout.readline()
                    if line == "":
                        if p.poll() is not None:
                            rc = p.returncode
                            break
                        continue
                    sys.stdout.write(line)
                    log.write(line)
                    lines.append(line.rstrip("\n"))
                    lines = lines[-200:]
                elif p.poll() is not None:
                    rest = p.stdout.read()
                    for line in rest.splitlines():
                        sys.stdout.write(line + "\n")
                        log.write(line + "\n")
                        lines.append(line)
                    rc = p.returncode
                    break
        sys.stdout.flush()
        tail = lines[-md_tail:] if md_tail else []
        with open(self.md, "a") as fh:
            if tail:
                fh.write("```\n" + "\n".join(tail) + "\n```\n")
            fh.write(f"exit {rc}{' (TIMEOUT after %.0f s)' % timeout if rc == 124 else ''}, {time.time() - t0:.0f} s\n")
        return rc


def _header(ctx: Ctx):
    if os.path.exists(ctx.md):
        return
    import torch

    with open(ctx.md, "w") as fh:
        fh.write(f"# wae_fast GPU validation: {ctx.stem}\n\n")
        if ctx.dry_run or not ctx.has_gpu:
            fh.write("**DRY RUN: no GPU was found on this machine.** Every stage ran at tiny sizes on the CPU to "
                     "check the script; none of the numbers below says anything about GPU performance.\n\n")
        else:
            fh.write(f"GPU: {torch.cuda.get_device_name(0)}. Stages append below as they run.\n\n")


# ---------------------------------------------------------------------------------------------

def stage_env(ctx: Ctx):
    import platform

    import torch

    info = {"date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(), "host": platform.node(),
            "python": sys.version.split()[0], "python_exe": sys.executable, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "cpus": os.cpu_count()}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:
        info["triton"] = f"not importable ({exc})"
    for tool, args in (("nvcc", ["--version"]), ("compute-sanitizer", ["--version"]), ("gcc", ["--version"])):
        exe = shutil.which(tool)
        if exe:
            try:
                out = subprocess.run([exe] + args, capture_output=True, text=True, timeout=30).stdout.strip()
                info[tool] = out.splitlines()[-1] if tool != "gcc" else out.splitlines()[0]
            except Exception as exc:
                info[tool] = f"error {exc}"
        else:
            info[tool] = "not found"
    smi = shutil.which("nvidia-smi")
    if smi:
        q = ("name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,"
             "power.limit,temperature.gpu,persistence_mode")
        try:
            out = subprocess.run([smi, f"--query-gpu={q}", "--format=csv"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
            info["nvidia_smi"] = out
        except Exception as exc:
            info["nvidia_smi"] = f"error {exc}"
    else:
        info["nvidia_smi"] = "nvidia-smi not found"
    for pkg in ("pykeops", "geomloss", "keopscore"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg)
        except Exception:
            info[pkg] = "not installed"
    ctx.say(f"\n## Stage env ({_dt.datetime.now(_dt.timezone.utc).strftime('%H:%M:%S UTC')})\n")
    if not info["cuda_available"]:
        ctx.say("**NO GPU FOUND** (torch.cuda.is_available() is False): dry run, no GPU numbers.\n")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "sms": p.multi_processor_count, "total_memory_gb": p.total_memory / 1e9,
                       "cc": f"{p.major}.{p.minor}", "l2_mb": getattr(p, "L2_cache_size", 0) / 2**20,
                       "clock_rate_khz": getattr(p, "clock_rate", None)}
        info["ceilings"] = measure_ceilings()
        if smi:  # the SM clock right after the GEMMs (under load), read only: clocks are never set
            try:
                info["clocks_sm_after_gemm"] = subprocess.run(
                    [smi, "--query-gpu=clocks.sm,clocks.max.sm,power.draw", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=30).stdout.strip()
            except Exception as exc:
                info["clocks_sm_after_gemm"] = f"error {exc}"
    from .floor import gpu_machine

    if torch.cuda.is_available():
        m = gpu_machine()
        info["floor_machine"] = m.as_dict()
    sys.path.insert(0, REPO)
    try:
        import wae_fast

        for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            info[f"backends_{dev}"] = {k: (v or "available") for k, v in wae_fast.available_backends(dev).items()}
    except Exception as exc:
        info["backends"] = f"wae_fast not importable: {exc}"
    with open(ctx.envjson, "w") as fh:
        json.dump(info, fh, indent=1, default=str)
    for k, v in info.items():
        if isinstance(v, str) and "\n" in v:
            ctx.say(f"- {k}:\n```\n{v}\n```")
        else:
            ctx.say(f"- {k}: {v}")
    if info.get("floor_machine"):
        from .floor import Machine, explain

        m = Machine(**info["floor_machine"])
        ctx.say("\nHeadline row floor with this device's SM count and max clock:\n```\n"
                + explain("mmd", 65536, 65536, 64, "fp32", "fwdbwd", "ieee", m) + "\n```")


def measure_ceilings() -> dict:
    """Device copy bandwidth (bytes read + written) and GEMM rates, each the best of a few."""
    import torch

    def best_ms(fn, reps=5):
        fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        return min(ts)

    out = {}
    try:
        src = torch.randn(1 << 28, device="cuda")  # 1 GiB
        dst = torch.empty_like(src)
        ms = best_ms(lambda: dst.copy_(src))
        out["copy_TBps_read_plus_write"] = 2 * src.numel() * 4 / ms / 1e9
        del src, dst
        n = 8192
        for name, dt, tf32 in (("fp32_simt", torch.float32, False), ("tf32", torch.float32, True),
                               ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device="cuda", dtype=dt)
            b = torch.randn(n, n, device="cuda", dtype=dt)
            ms = best_ms(lambda: a @ b, reps=3)
            out[f"gemm_{name}_TFLOPs"] = 2 * n ** 3 / ms / 1e9
            del a, b
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.cuda.empty_cache()
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _installed() -> bool:
    r = subprocess.run([sys.executable, "-m", "pip", "show", "-q", "wae_fast"], capture_output=True, text=True)
    return r.returncode == 0


def stage_build(ctx: Ctx):
    ctx.say(f"\n## Stage build ({_dt.datetime.now(_dt.timezone.utc).strftime('%H:%M:%S UTC')})\n")
    whl = os.path.join(REPO, ".whl")
    wheels = sorted(f for f in os.listdir(whl) if f.endswith(".whl")) if os.path.isdir(whl) else []
    if wheels and not ctx.dry_run:
        ctx.sh([ctx.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir"]
               + [os.path.join(".whl", w) for w in wheels], timeout=120)
    elif wheels:
        ctx.say(f"dry run: would install {len(wheels)} wheel(s) from .whl/: {', '.join(wheels)}")
    else:
        ctx.say("no .whl/ folder with wheels: optional peers (pykeops, geomloss) are used only if already "
                "installed (benchmarks/fetch_wheels.sh fetches them on a machine with a network)")
    if ctx.dry_run or not ctx.has_gpu:
        ctx.say("DRY RUN (no GPU): skipping `WAE_FAST_BUILD_CUDA=1 pip install --no-deps --no-build-isolation -e .`; "
                "checking the tools and importing the source tree instead")
        for tool in ("nvcc", "gcc", "ninja"):
            ctx.say(f"- {tool}: {shutil.which(tool) or 'not found'}")
        ctx.sh([ctx.python, "-c", "import torch, wae_fast; print('torch', torch.__version__, 'cuda', torch.version.cuda); "
                "print({k: v or 'available' for k, v in wae_fast.available_backends('cpu').items()})"],
               timeout=120, env={"PYTHONPATH": REPO})
        return
    import torch

    # Only this GPU's architecture, and no cuda_emu (the CPU emulation is tested off-GPU): the
    # build is device time.
    cc = "%d%d" % torch.cuda.get_device_capability(0)
    rc = ctx.sh([ctx.python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."],
                timeout=420, env={"WAE_FAST_BUILD_CUDA": "1", "WAE_FAST_BUILD_CUDA_EMU": "0",
                                  "WAE_FAST_CUDA_ARCHS": os.environ.get("WAE_FAST_CUDA_ARCHS", cc),
                                  "MAX_JOBS": str(os.cpu_count() or 8)}, md_tail=25)
    if rc != 0:
        ctx.say("**build with WAE_FAST_BUILD_CUDA=1 failed**; retrying without forcing the CUDA extension")
        ctx.sh([ctx.python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."],
               timeout=300, md_tail=10)
    ctx.sh([ctx.python, "-c", "import wae_fast; print('cuda:', wae_fast.available_backends('cuda')); "
            "print('cpu:', wae_fast.available_backends('cpu'))"], timeout=120)


def _ensure_built(ctx: Ctx):
    if ctx.dry_run or not ctx.has_gpu:
        return
    if not _installed():
        ctx.say("(wae_fast is not installed on this machine: running the build stage first)")
        stage_build(ctx)


def stage_test(ctx: Ctx):
    ctx.say(f"\n## Stage test ({_dt.datetime.now(_dt.timezone.utc).strftime('%H:%M:%S UTC')})\n")
    _ensure_built(ctx)
    if ctx.dry_run or not ctx.has_gpu:
        ctx.say("DRY RUN (no GPU): running tests/test_benchmarks.py only (the full suite on CUDA is `python -m "
                "pytest -q tests`)")
        cmd = [ctx.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_benchmarks.py"]
        env = {"PYTHONPATH": REPO}
    else:
        import importlib.util
        import shlex

        cmd = [ctx.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--durations=10"]
        if importlib.util.find_spec("xdist") and ctx.pytest_args != "serial":
            cmd += ["-n", str(min(12, max(1, (os.cpu_count() or 2) - 2)))]
        if importlib.util.find_spec("pytest_timeout"):
            cmd += ["--timeout", "120"]
        env = {}
        if ctx.pytest_args and ctx.pytest_args not in ("gpu", "serial"):
            runs = [shlex.split(ctx.pytest_args)]
        elif ctx.pytest_args == "serial" or not ctx.pytest_args:
            runs = [["tests"]]
        else:  # "gpu": every test that runs on the GPU, file by file (a crash or a sticky CUDA
            # error stays in its file), the files most likely to find kernel bugs first
            runs = [["-m", "not cuda_emu" if "triton" in f else "cuda", f] for f in GPU_TEST_FILES]
        # each failure is logged as it happens: a run killed at its budget still says what failed
        faillog = os.path.join(ctx.out_dir or RESULTS, ctx.stem + "-fails.txt")
        env["WAE_FAST_FAILLOG"] = faillog
        t0 = time.time()
        for args in runs:
            left = ctx.test_budget - (time.time() - t0)
            if left < 30:
                ctx.say(f"test budget spent: not run: {' '.join(args)}")
                continue
            ctx.sh(cmd + args, timeout=left, env=env, md_tail=6)
        _summarise_failures(ctx, faillog)
        return
    ctx.sh(cmd, timeout=430, env=env, md_tail=40)


GPU_TEST_FILES = ["tests/test_triton_launch_rules.py", "tests/test_kernel_matmul.py", "tests/test_cuda_backend.py",
                  "tests/test_backends.py", "tests/test_triton_backend.py", "tests/test_triton_prior.py",
                  "tests/test_prior_backends.py", "tests/test_sampling.py", "tests/test_two_sample.py",
                  "tests/test_kid.py", "tests/test_hostile.py", "tests/test_triton_one_launch.py"]


def _summarise_failures(ctx: Ctx, faillog: str):
    """Failed tests per test function and the first error line of each, counted (the report's
    short form of the failure log, which is kept beside it)."""
    import collections
    import re

    if not os.path.exists(faillog):
        ctx.say("no failure logged")
        return
    text = open(faillog, errors="replace").read()
    blocks = text.split("=== ")[1:]
    tests = collections.Counter(re.sub(r"\[.*", "", b.split("\n", 1)[0]) for b in blocks)
    errors = collections.Counter(next((ln.strip()[:200] for ln in b.splitlines() if ln.startswith("E ")), "?")
                                 for b in blocks)
    ctx.say(f"\n{len(blocks)} failure(s) logged in {os.path.basename(faillog)}:\n```")
    for name, n in tests.most_common(30):
        ctx.say(f"{n:4d}  {name}")
    ctx.say("--")
    for line, n in errors.most_common(20):
        ctx.say(f"{n:4d}  {line}")
    ctx.say("```")


def stage_sanitize(ctx: Ctx):
    ctx.say(f"\n## Stage sanitize ({_dt.datetime.now(_dt.timezone.utc).strftime('%H:%M:%S UTC')})\n")
    _ensure_built(ctx)
    script = os.path.join("benchmarks", "sanitize_cases.py")
    env = {"PYTHONPATH": REPO}
    cs = shutil.which("compute-sanitizer")
    if not ctx.has_gpu or ctx.dry_run:
        ctx.say("DRY RUN (no GPU): compute-sanitizer not run" + ("" if cs else " (and not found)")
                + "; running the cases plainly on CPU")
        ctx.sh([ctx.python, script], timeout=300, env=env, md_tail=8)
        return
    if not cs:
        ctx.say("compute-sanitizer not found on this machine: running the small cases without it")
        ctx.sh([ctx.python, script], timeout=300, env=env, md_tail=30)
        return
    # warm the Triton cache outside the sanitizer (JIT compilation under it is slow)
    ctx.sh([ctx.python, script], timeout=90, env=env, md_tail=5)
    for tool in ("memcheck", "racecheck"):
        extra = ["--leak-check", "no"] if tool == "memcheck" else ["--racecheck-report", "analysis"]
        ctx.sh([cs, "--tool", tool, "--print-limit", "20"] + extra + [ctx.python, script], timeout=170, env=env,
               md_tail=12)


def stage_bench(ctx: Ctx):
    t_stage = time.time()
    ctx.say(f"\n## Stage bench ({_dt.datetime.now(_dt.timezone.utc).strftime('%H:%M:%S UTC')})\n")
    _ensure_built(ctx)
    budget = max(60.0, ctx.budget - (time.time() - t_stage))  # a build done here counts against it
    from .bench_mmd import run_rows
    from .rows import get_rows

    dry = ctx.dry_run or not ctx.has_gpu
    rows = get_rows(ctx.rows, dry_run=dry)
    ctx.say(f"{len(rows)} rows from {ctx.rows}{' (dry run: tiny sizes on CPU)' if dry else ''}, "
            f"stage budget {budget:.0f} s (rows left when it is spent are listed as skipped: run them with "
            f"`bench --rows <set>` in another call)")
    run_rows(rows, device="cpu" if dry else "cuda", stem=ctx.stem, out_dir=ctx.out_dir,
             row_timeout=60.0 if dry else 150.0, row_budget=0.5 if dry else 2.0, max_reps=3 if dry else 30,
             budget=budget, dry_run=dry, title=f"bench rows {ctx.rows}",
             log=lambda s: ctx.say(s, md=False))


def _bench_script_stage(ctx: Ctx, name: str, module: str, md_tail: int):
    """Run ``python -m benchmarks.<module> --set gpu`` (``tiny`` on a dry run) within the budget,
    its report written beside the others as ``<stem>-<name>.md``."""
    t_stage = time.time()
    ctx.say(f"\n## Stage {name} ({_dt.datetime.now(_dt.timezone.utc).strftime('%H:%M:%S UTC')})\n")
    _ensure_built(ctx)
    dry = ctx.dry_run or not ctx.has_gpu
    budget = max(60.0, ctx.budget - (time.time() - t_stage))
    out = os.path.join(RESULTS, f"{ctx.stem}-{name}.md")
    ctx.say(f"benchmarks/{module}.py --set {'tiny' if dry else 'gpu'} (report {os.path.basename(out)})")
    ctx.sh([ctx.python, "-m", f"benchmarks.{module}", "--set", "tiny" if dry else "gpu", "--timeout",
            "240", "--budget", f"{budget:.0f}", "--out", out], timeout=budget + 260,
           env={"PYTHONPATH": REPO}, md_tail=md_tail)
    ctx.mirror()


def stage_prior(ctx: Ctx):
    """N = 10M codes against in-kernel prior samples (benchmarks/bench_prior.py --set gpu)."""
    _bench_script_stage(ctx, "prior", "bench_prior", md_tail=20)


def stage_kid(ctx: Ctx):
    """kernel_matmul, KID and mmd_test rows (benchmarks/bench_kid.py --set gpu: the full
    U-statistic at N = M = 10k and 50k, kernel_matmul vs peers, the permutation test)."""
    _bench_script_stage(ctx, "kid", "bench_kid", md_tail=30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="+", choices=STAGES + ("all",))
    ap.add_argument("--dry-run", action="store_true", default=os.environ.get("WAE_FAST_DRY_RUN", "") not in ("", "0"))
    ap.add_argument("--rows", default="gpu-core", help="row sets for the bench stage (comma-separated)")
    ap.add_argument("--budget", type=float, default=400.0, help="bench stage: start no row after this many s")
    ap.add_argument("--out-dir", default=os.environ.get("OUT") or None)
    ap.add_argument("--pytest-args", default="", help='test stage: instead of "tests", e.g. "tests/test_mmd.py -k cuda"; '
                    '"gpu": only the tests that run on the GPU (-m cuda, and the Triton files); "serial": no xdist')
    ap.add_argument("--test-budget", type=float, default=430.0, help="test stage: seconds for all its pytest runs")
    a = ap.parse_args(argv)
    import torch

    ctx = Ctx(a.dry_run or not torch.cuda.is_available(), a.out_dir, a.rows, a.budget)
    ctx.pytest_args = a.pytest_args
    ctx.test_budget = a.test_budget
    if not torch.cuda.is_available():
        print("NO GPU FOUND (torch.cuda.is_available() is False): running as a DRY RUN at tiny sizes on CPU", flush=True)
    _header(ctx)
    stages = list(STAGES) if "all" in a.stages else a.stages
    fns = {"env": stage_env, "build": stage_build, "test": stage_test, "sanitize": stage_sanitize,
           "bench": stage_bench, "prior": stage_prior, "kid": stage_kid}
    for s in stages:
        t0 = time.time()
        try:
            fns[s](ctx)
        except Exception as exc:  # one stage failing must not lose the others' rows
            ctx.say(f"**stage {s} raised {type(exc).__name__}: {exc}**")
        ctx.say(f"\n_stage {s}: {time.time() - t0:.0f} s_")
        ctx.mirror()
    print(f"report: {ctx.md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
