"""Hardware-floor arithmetic for a benchmark row (DESIGN.md section 6).

The floor of a row is the LARGEST of three times:

* ``t_flop``: the dot-product FLOPs at the peak rate of the precision used (FP32 FMA pipe for
  fp32 inputs with ``precision="ieee"``; TF32 tensor cores for ``"tf32"``, three TF32 products for
  ``"tf32x3"``; BF16 tensor cores for bf16/fp16 inputs);
* ``t_sfu``: ONE special-function op (rcp / ex2) per pair, all kernel scales combined;
* ``t_mem``: the compulsory bytes (each input read once, each output written once) over the
  memory bandwidth.

What is counted (MMD op; x has N points, y has M points, both of dimension d)
-----------------------------------------------------------------------------
Pairs, using symmetry: the xx and yy matrices are visited on and above the diagonal, the
diagonal included (that is what a tiled kernel visits; dropping it for the unbiased estimator
changes the count by N + M, negligible)::

    P_xx = N (N + 1) / 2,   P_yy = M (M + 1) / 2,   P_xy = N M,   P = P_xx + P_yy + P_xy

Forward FLOPs: ``2 d`` per pair (the dot product a.b; the norms are O((N + M) d))::

    F_fwd = 2 d P

Forward+backward (the WAE case: x requires grad, the prior samples y do not). The gradient of
one pair is one more product per direction that receives it: an xx pair feeds x_i and x_j
(W x and W^T x: 4 d), an xy pair feeds x_i only (W y: 2 d), yy pairs feed nothing::

    F_fwdbwd = 2 d P + 4 d P_xx + 2 d P_xy

(a kernel that recomputes the distances in its backward pays 2 d P more: that is its choice,
not the floor). Special-function ops: one per pair for the forward; the derivative of the
combined kernel reuses the same reciprocal / exponential, so fwd+bwd is still one per pair.
Bytes: fwd reads x and y (``(N + M) d b``, b the element size) and writes a scalar; fwd+bwd
also writes dx (``N d b``); the scalar gradient read is ignored.

Reparameterize (z = mu + exp(logvar / 2) eps on an (N, d) tensor, eps regenerated from a seed):
bytes fwd ``3 N d b`` (read mu, logvar, write z); fwd+bwd ``7 N d b`` (plus read dz and logvar,
write dmu and dlogvar); special ops 3 per element forward (exp, and log + sqrt + sin/cos of the
Box-Muller pair shared by two elements), 3 more per element backward (eps regenerated and exp);
FLOPs ignored (a few per element). It is bandwidth bound.

Machine numbers
---------------
See :data:`MACHINES`. Per-SM-per-clock rates are DESIGN.md section 6 (H100: FP32 FMA 256 FLOP,
TF32 tensor 2048 FLOP, BF16 tensor 4096 FLOP, special functions 16 ops); the SM count and clock
come from the device when it is there (``torch.cuda.get_device_properties``, ``nvidia-smi
--query-gpu=clocks.max.sm``), otherwise from the table. On a CPU, the floor uses rates measured on
the machine itself (:func:`measure_cpu_machine`: fp32 GEMM throughput for the FLOPs, an
elementwise reciprocal for the special ops, a large copy for the bandwidth).

The honest CPU floor (:func:`cpu_floor`, ``python -m benchmarks.floor --cpu``)
------------------------------------------------------------------------------
torch's GEMM rate is below the cores' FMA peak, and the dot product is not the only work per
pair: at small d the kernel evaluation and the gradient accumulation dominate.  So the CPU
floor counts, per pair, the MINIMUM number of vector lane-operations of the evaluation the cpp
backend uses (:func:`cpu_pair_ops`: dot product, distance, every kernel scale's value and dk/dr,
the kernel-sum and gradient accumulation; no masking, no loads) and prices them at rates
measured on this machine by a microbenchmark at the widest vector width it runs
(:func:`measure_cpu_peak`, benchmarks/cpu_peak.cpp compiled with g++: independent FMA chains,
IEEE divisions, the kernels' own vectorised exp), on as many threads as torch uses::

    t_pipe = ops / fma_rate + exps / exp_rate      (the FP pipes: one lane-op per add/mul/FMA)
    t_div  = divs / div_rate                        (the divider runs beside the FP pipes)
    t_mem  = compulsory bytes / copy bandwidth
    floor  = max(t_pipe, t_div, t_mem)

benchmarks/README.md writes the per-pair counts out.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

# ---------------------------------------------------------------------------------------------
# Machines


@dataclasses.dataclass
class Machine:
    name: str
    sms: int                     # streaming multiprocessors (GPU); 1 for a CPU (rates are totals)
    clock_hz: float              # SM clock used for the peak rates (GPU); 1.0 for a CPU
    fp32_fma_per_sm_clk: float   # FLOP per SM per clock on the FP32 FMA pipe
    tf32_per_sm_clk: float       # FLOP per SM per clock on TF32 tensor cores (dense)
    bf16_per_sm_clk: float       # FLOP per SM per clock on BF16 tensor cores (dense)
    sfu_per_sm_clk: float        # special-function ops per SM per clock
    mem_bw: float                # bytes per second
    source: str = ""

    def rate(self, per_sm_clk: float) -> float:
        return per_sm_clk * self.sms * self.clock_hz

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


#: H100 SXM5 80GB. 132 SMs and a 1.98 GHz max boost SM clock (NVIDIA H100 Tensor Core GPU
#: datasheet / Hopper architecture whitepaper: 67 TFLOP/s FP32 = 132 x 128 FP32 lanes x 2 x
#: 1.98 GHz; nvidia-smi reports clocks.max.sm = 1980 MHz); HBM3 3.35 TB/s (datasheet).
#: Per-SM rates: DESIGN.md section 6. This workplace measured a device copy at about 3.0 TB/s
#: (bytes read + written) and a bf16 8192^3 product at 798 TFLOP/s on one (KINDS.md, 2026-11-13).
H100_SXM = Machine(
    name="H100-SXM", sms=132, clock_hz=1.98e9, fp32_fma_per_sm_clk=256.0, tf32_per_sm_clk=2048.0,
    bf16_per_sm_clk=4096.0, sfu_per_sm_clk=16.0, mem_bw=3.35e12,
    source="132 SMs, 1.98 GHz boost (H100 datasheet/whitepaper), HBM3 3.35 TB/s (datasheet), "
           "per-SM-per-clock rates DESIGN.md s.6")

#: H200 SXM: the H100's SMs and clocks, HBM3e 4.8 TB/s (NVIDIA H200 datasheet).
H200_SXM = dataclasses.replace(
    H100_SXM, name="H200-SXM", mem_bw=4.8e12,
    source="as H100 SXM with HBM3e 4.8 TB/s (H200 datasheet)")

MACHINES = {"h100": H100_SXM, "h200": H200_SXM}


def machine_for_gpu_name(name: str) -> Machine:
    n = name.lower()
    if "h200" in n:
        return dataclasses.replace(H200_SXM)
    return dataclasses.replace(H100_SXM)  # the target; other GPUs get H100 rates, labelled so


def nvidia_smi_max_sm_clock_hz() -> Optional[float]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        return float(out[0]) * 1e6 if out else None
    except Exception:
        return None


def gpu_machine(device_index: int = 0) -> Machine:
    """The table's machine for the GPU present, with SM count and max SM clock read off it."""
    import torch

    props = torch.cuda.get_device_properties(device_index)
    m = machine_for_gpu_name(props.name)
    src = [m.source]
    m.sms = int(props.multi_processor_count)
    src.append(f"SMs read from device: {m.sms}")
    clk = nvidia_smi_max_sm_clock_hz()
    if clk is None:
        khz = getattr(props, "clock_rate", None)  # not exposed by every torch version
        clk = float(khz) * 1e3 if khz else None
    if clk:
        m.clock_hz = clk
        src.append(f"max SM clock read from device: {clk / 1e6:.0f} MHz")
    if "h100" not in props.name.lower() and "h200" not in props.name.lower():
        src.append(f"WARNING: {props.name} is not an H100/H200; per-SM rates are Hopper's")
    m.name = props.name
    m.source = "; ".join(src)
    return m


def measure_cpu_machine(seconds: float = 0.6) -> Machine:
    """CPU rates measured here (totals over all threads torch uses): fp32 GEMM FLOP/s (n = 1024),
    elementwise reciprocal ops/s (the 'special function' stand-in) and copy bandwidth."""
    import torch

    def best(fn, budget):
        fn()
        t_best, t_end = math.inf, time.perf_counter() + budget
        while True:
            t0 = time.perf_counter()
            fn()
            t_best = min(t_best, time.perf_counter() - t0)
            if time.perf_counter() > t_end:
                return t_best

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm = 2.0 * n ** 3 / best(lambda: a @ b, seconds)
    v = torch.rand(1 << 22) + 1.0
    out = torch.empty_like(v)
    rcp = v.numel() / best(lambda: torch.reciprocal(v, out=out), seconds / 2)
    big = torch.empty(1 << 25)  # 128 MiB
    dst = torch.empty_like(big)
    bw = 2.0 * big.numel() * 4 / best(lambda: dst.copy_(big), seconds / 2)
    return Machine(
        name=f"cpu-{torch.get_num_threads()}t", sms=1, clock_hz=1.0, fp32_fma_per_sm_clk=gemm,
        tf32_per_sm_clk=gemm, bf16_per_sm_clk=gemm, sfu_per_sm_clk=rcp, mem_bw=bw,
        source=f"measured here with {torch.get_num_threads()} threads: fp32 GEMM {gemm / 1e9:.1f} GFLOP/s, "
               f"reciprocal {rcp / 1e9:.2f} Gop/s, copy {bw / 1e9:.1f} GB/s (read+write)")


# ---------------------------------------------------------------------------------------------
# Counting

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}


def pair_counts(n: int, m: int) -> dict:
    pxx = n * (n + 1) // 2
    pyy = m * (m + 1) // 2
    pxy = n * m
    return {"xx": pxx, "yy": pyy, "xy": pxy, "total": pxx + pyy + pxy}


def mmd_work(n: int, m: int, d: int, dtype: str, passes: str) -> dict:
    """FLOPs, special-function ops and compulsory bytes of one MMD row (see module docstring)."""
    p = pair_counts(n, m)
    b = DTYPE_BYTES[dtype]
    flops = 2 * d * p["total"]
    nbytes = (n + m) * d * b
    if passes == "fwdbwd":
        flops += 4 * d * p["xx"] + 2 * d * p["xy"]
        nbytes += n * d * b
    return {"pairs": p["total"], "flops": flops, "sfu": p["total"], "bytes": nbytes}


def reparam_work(n: int, d: int, dtype: str, passes: str) -> dict:
    e = n * d
    b = DTYPE_BYTES[dtype]
    if passes == "fwdbwd":
        return {"pairs": 0, "flops": 0, "sfu": 6 * e, "bytes": 7 * e * b}
    return {"pairs": 0, "flops": 0, "sfu": 3 * e, "bytes": 3 * e * b}


def flop_rate(machine: Machine, dtype: str, precision: str) -> tuple[float, str]:
    """Peak FLOP/s for the dot products of a row, and the pipe's name."""
    if dtype in ("bf16", "fp16"):
        return machine.rate(machine.bf16_per_sm_clk), "bf16-tensor"
    if dtype == "fp64":
        return machine.rate(machine.fp32_fma_per_sm_clk) / 2, "fp64-fma"
    if precision == "tf32":
        return machine.rate(machine.tf32_per_sm_clk), "tf32-tensor"
    if precision == "tf32x3":
        return machine.rate(machine.tf32_per_sm_clk) / 3, "tf32x3-tensor"
    return machine.rate(machine.fp32_fma_per_sm_clk), "fp32-fma"


def floor_seconds(work: dict, machine: Machine, dtype: str, precision: str = "ieee") -> dict:
    """The three times and the floor (their max) for a row's work on a machine."""
    rate, pipe = flop_rate(machine, dtype, precision)
    t_flop = work["flops"] / rate if work["flops"] else 0.0
    t_sfu = work["sfu"] / machine.rate(machine.sfu_per_sm_clk) if work["sfu"] else 0.0
    t_mem = work["bytes"] / machine.mem_bw
    terms = {pipe: t_flop, "sfu": t_sfu, "mem": t_mem}
    bound = max(terms, key=terms.get)
    return {"t_flop": t_flop, "t_sfu": t_sfu, "t_mem": t_mem, "floor_s": terms[bound], "bound": bound,
            "pipe": pipe}


def row_floor(op: str, n: int, m: int, d: int, dtype: str, passes: str, precision: str,
              machine: Machine) -> dict:
    work = mmd_work(n, m, d, dtype, passes) if op == "mmd" else reparam_work(n, d, dtype, passes)
    out = floor_seconds(work, machine, dtype, precision)
    out.update(work)
    return out


def explain(op: str, n: int, m: int, d: int, dtype: str, passes: str, precision: str,
            machine: Machine) -> str:
    """The floor of one row written out, for the report."""
    f = row_floor(op, n, m, d, dtype, passes, precision, machine)
    rate, pipe = flop_rate(machine, dtype, precision)
    sfu_rate = machine.rate(machine.sfu_per_sm_clk)
    lines = [f"Floor for {op} N={n} M={m} d={d} {dtype} {passes} precision={precision} on {machine.name}",
             f"  machine: {machine.source}"]
    if op == "mmd":
        p = pair_counts(n, m)
        lines.append(f"  pairs P = N(N+1)/2 + M(M+1)/2 + NM = {p['xx']:,} + {p['yy']:,} + {p['xy']:,} = {p['total']:,}")
        if passes == "fwdbwd":
            lines.append(f"  FLOPs = 2d*P + 4d*P_xx + 2d*P_xy = {f['flops']:.4e}")
        else:
            lines.append(f"  FLOPs = 2d*P = {f['flops']:.4e}")
    lines += [
        f"  t_flop = {f['flops']:.4e} / {rate:.4e} FLOP/s ({pipe}) = {f['t_flop'] * 1e3:.3f} ms",
        f"  t_sfu  = {f['sfu']:.4e} ops / {sfu_rate:.4e} op/s = {f['t_sfu'] * 1e3:.3f} ms",
        f"  t_mem  = {f['bytes']:.4e} B / {machine.mem_bw:.4e} B/s = {f['t_mem'] * 1e3:.6f} ms",
        f"  floor  = max = {f['floor_s'] * 1e3:.3f} ms ({f['bound']} bound)",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The honest CPU floor: per-pair operation counts priced at microbenchmarked peak rates

_ISA_FLAGS = {  # vector bytes, g++ flags
    "avx512": (64, ("-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma")),
    "avx2": (32, ("-mavx2", "-mfma")),
    "baseline": (16, ()),
}


def cpu_vector_isa() -> str:
    """The widest vector ISA of this CPU the microbenchmark uses (from /proc/cpuinfo flags)."""
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return "baseline"
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    return "baseline"


def _peak_library(isa: str) -> ctypes.CDLL:
    """benchmarks/cpu_peak.cpp compiled for ``isa`` (cached by source hash under $WAE_FAST_CACHE)."""
    src = Path(__file__).with_name("cpu_peak.cpp")
    vb, flags = _ISA_FLAGS[isa]
    tag = hashlib.sha256(src.read_bytes() + repr((vb, flags)).encode()).hexdigest()[:12]
    root = Path(os.environ.get("WAE_FAST_CACHE") or Path.home() / ".cache" / "wae_fast") / "bench"
    lib = root / f"cpu_peak-{isa}-{tag}.so"
    if not lib.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cxx = os.environ.get("CXX", "g++")
        subprocess.run([cxx, "-O2", "-fPIC", "-shared", f"-DVB={vb}", *flags, "-o", str(tmp), str(src)],
                       check=True, capture_output=True, text=True)
        os.replace(tmp, lib)
    dll = ctypes.CDLL(str(lib))
    for fn in ("peak_fma", "peak_div", "peak_exp"):
        getattr(dll, fn).restype = ctypes.c_double
        getattr(dll, fn).argtypes = [ctypes.c_long]
    dll.lanes.restype = ctypes.c_int
    return dll


#: lane-ops per iteration of each microbenchmark loop (benchmarks/cpu_peak.cpp)
_CHAINS = {"peak_fma": 12, "peak_div": 8, "peak_exp": 4}


def _rate(dll, fn: str, threads: int, seconds: float) -> float:
    """Best aggregate lane-op rate of ``fn`` run on ``threads`` threads at once (ctypes releases
    the GIL), with the iteration count sized to take about ``seconds`` per call."""
    f = getattr(dll, fn)
    per_iter = _CHAINS[fn] * dll.lanes()
    iters = 1000
    while True:  # size the loop on one thread
        t0 = time.perf_counter()
        f(iters)
        dt = time.perf_counter() - t0
        if dt > seconds / 4:
            break
        iters *= 4
    iters = max(1, int(iters * seconds / max(dt, 1e-9)))
    best = 0.0
    for _ in range(3):
        barrier = threading.Barrier(threads + 1)
        spans = [0.0] * threads

        def work(k):
            barrier.wait()
            t = time.perf_counter()
            f(iters)
            spans[k] = time.perf_counter() - t

        ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        barrier.wait()
        for t in ts:
            t.join()
        best = max(best, threads * iters * per_iter / max(spans))
    return best


@dataclasses.dataclass
class CpuPeak:
    """Aggregate lane-op rates over ``threads`` threads at vector width ``lanes`` (fp32)."""
    isa: str
    lanes: int
    threads: int
    fma_rate: float      # FMA lane-ops per second (FLOP/s = 2x)
    div_rate: float      # IEEE divisions per second
    exp_rate: float      # the kernels' vectorised exps per second
    mem_bw: float        # copy bandwidth, bytes read + written per second

    @property
    def source(self) -> str:
        return (f"measured here ({self.isa}, {self.lanes} fp32 lanes, {self.threads} threads, "
                f"benchmarks/cpu_peak.cpp): FMA {2 * self.fma_rate / 1e9:.1f} GFLOP/s "
                f"({self.fma_rate / 1e9:.1f} G lane-op/s), division {self.div_rate / 1e9:.2f} G/s, "
                f"exp {self.exp_rate / 1e9:.2f} G/s, copy {self.mem_bw / 1e9:.1f} GB/s")


def measure_cpu_peak(threads: Optional[int] = None, seconds: float = 0.2, isa: Optional[str] = None) -> CpuPeak:
    """Peak rates of this CPU at its widest vector width (see the module docstring)."""
    import torch

    threads = threads or torch.get_num_threads()
    isa = isa or cpu_vector_isa()
    dll = _peak_library(isa)
    big = torch.empty(1 << 25)  # 128 MiB
    dst = torch.empty_like(big)
    dst.copy_(big)
    t_best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(big)
        t_best = min(t_best, time.perf_counter() - t0)
    return CpuPeak(isa=isa, lanes=dll.lanes(), threads=threads,
                   fma_rate=_rate(dll, "peak_fma", threads, seconds),
                   div_rate=_rate(dll, "peak_div", threads, seconds),
                   exp_rate=_rate(dll, "peak_exp", threads, seconds),
                   mem_bw=2.0 * big.numel() * 4 / t_best)


def rbf_exp_plan(gammas: Sequence[float]) -> list[int]:
    """Per RBF scale in ascending order of gamma: 0 where the backend evaluates an exp, else the
    number of squarings that derive it from the previous scale's value (gamma ratio 2 or 4:
    exp(-4 g r) = exp(-g r)^4).  Mirrors wae_fast::rbf_eval (csrc/include/wae_fast/tile_math.h)."""
    g = sorted(float(v) for v in gammas)
    plan = [0]
    for a, b in zip(g, g[1:]):
        plan.append(1 if b == 2.0 * a else 2 if b == 4.0 * a else 0)
    return plan


def kernel_eval_ops(kind: str, params: Sequence[float], want_w: bool, imq_form: str = "pairdiv") -> dict:
    """Lane-ops of one pair's kernel evaluation from r (as the cpp backend evaluates it):
    ``{"ops": FP-pipe ops, "div": divisions, "exp": exps}``.

    * IMQ, scales two at a time with one division (tile_math.h imq_pair): a = r + C1,
      b = r + C2, inv = 1/(a b), t1 = b inv, t2 = a inv, k1 = C1 t1, k2 = C2 t2, k += k1 + k2
      (9 ops, 1 div) and w -= k1 t1 + k2 t2 (2 FMAs); an odd last scale: t = 1/(r + C),
      k += C t (3 ops, 1 div), w -= (C t) t (1 FMA); 1 op to map r = inf to the largest float.
      ``imq_form="rcp"`` (the fp32 AVX-512 tiles, tile_math.h imq_eval_rcp): per scale
      t = rcp14(r + C) refined by one Newton step y + y (1 - x y), k += C t (6 ops: add, rcp,
      2 FMAs, mul, add) and w -= (C t) t (1 FMA); no division.
    * RBF per scale: e = exp(-g r) (1 mul + 1 exp), or e = e_prev^2 / ^4 where the gamma ratio
      is 2 or 4 (:func:`rbf_exp_plan`): per squaring 1 mul and a compare + select that flushes a
      value whose square would be subnormal (3 ops); k += e (1 add); w -= g e (1 FMA).
    """
    if kind == "imq" and imq_form == "rcp":
        return {"ops": 1 + len(params) * (6 + (1 if want_w else 0)), "div": 0, "exp": 0}
    if kind == "imq":
        s = len(params)
        pairs, odd = divmod(s, 2)
        ops = 1 + pairs * (9 + (2 if want_w else 0)) + odd * (3 + (1 if want_w else 0))
        return {"ops": ops, "div": pairs + odd, "exp": 0}
    if kind == "rbf":
        plan = rbf_exp_plan(params)
        ops = sum(1 if q == 0 else 3 * q for q in plan) + len(plan) * (1 + (1 if want_w else 0))
        return {"ops": ops, "div": 0, "exp": sum(1 for q in plan if q == 0)}
    raise ValueError(f"kind must be 'imq' or 'rbf', got {kind!r}")


def cpu_pair_ops(kind: str, params: Sequence[float], d: int, grad_sides: int, imq_form: str = "pairdiv") -> dict:
    """Minimum lane-ops of one pair: dot product (d FMAs), distance from the norms and clamp
    (r = na + nb - 2 dot, max(r, 0): 3), the kernel evaluation (:func:`kernel_eval_ops`, with
    dk/dr when a gradient is wanted), the kernel-sum accumulation (1 add) and, per gradient side
    (0, 1 or 2 rows receiving it), the W b product (d FMAs) and the row sum of W (1 add)."""
    ev = kernel_eval_ops(kind, params, grad_sides > 0, imq_form)
    ops = d + 3 + ev["ops"] + 1 + grad_sides * (d + 1)
    return {"ops": ops, "div": ev["div"], "exp": ev["exp"]}


def cpu_floor(n: int, m: int, d: int, kind: str, params: Sequence[float], passes: str, peak: CpuPeak,
              dtype_bytes: int = 4) -> dict:
    """The honest CPU floor of one MMD row (fwd, or fwd+bwd with x requiring grad): per-term pair
    counts (with symmetry) times :func:`cpu_pair_ops` (the IMQ form of the tiles for ``peak.isa``:
    per-scale reciprocal estimates on AVX-512 in fp32, paired divisions otherwise), priced at
    ``peak``'s rates."""
    p = pair_counts(n, m)
    g = passes == "fwdbwd"
    form = "rcp" if peak.isa == "avx512" and dtype_bytes <= 4 else "pairdiv"  # what the cpp tiles use
    per = {"xx": cpu_pair_ops(kind, params, d, 2 if g else 0, form),
           "yy": cpu_pair_ops(kind, params, d, 0, form),
           "xy": cpu_pair_ops(kind, params, d, 1 if g else 0, form)}
    tot = {k: sum(p[t] * per[t][k] for t in per) for k in ("ops", "div", "exp")}
    nbytes = (n + m) * d * dtype_bytes + (n * d * dtype_bytes if g else 0)
    t_pipe = tot["ops"] / peak.fma_rate + tot["exp"] / peak.exp_rate
    t_div = tot["div"] / peak.div_rate
    t_mem = nbytes / peak.mem_bw
    terms = {"pipe": t_pipe, "div": t_div, "mem": t_mem}
    bound = max(terms, key=terms.get)
    return {"pairs": p["total"], "per_pair": per, "ops": tot["ops"], "div": tot["div"], "exp": tot["exp"],
            "bytes": nbytes, "t_pipe": t_pipe, "t_div": t_div, "t_mem": t_mem, "floor_s": terms[bound],
            "bound": bound}


def explain_cpu(n: int, m: int, d: int, kind: str, params: Sequence[float], passes: str, peak: CpuPeak) -> str:
    """The honest CPU floor of one row written out."""
    f = cpu_floor(n, m, d, kind, params, passes, peak)
    p = pair_counts(n, m)
    lines = [f"Honest CPU floor for mmd N={n} M={m} d={d} {kind}{len(params)} fp32 {passes}",
             f"  machine: {peak.source}",
             f"  pairs: xx {p['xx']:,}, yy {p['yy']:,}, xy {p['xy']:,}"]
    for t in ("xx", "yy", "xy"):
        q = f["per_pair"][t]
        lines.append(f"  per {t} pair: {q['ops']} lane-ops, {q['div']} div, {q['exp']} exp")
    lines += [f"  t_pipe = {f['ops']:.4e} / {peak.fma_rate:.4e} + {f['exp']:.4e} / {peak.exp_rate:.4e} "
              f"= {f['t_pipe'] * 1e3:.2f} ms",
              f"  t_div  = {f['div']:.4e} / {peak.div_rate:.4e} = {f['t_div'] * 1e3:.2f} ms",
              f"  t_mem  = {f['bytes']:.4e} / {peak.mem_bw:.4e} = {f['t_mem'] * 1e3:.4f} ms",
              f"  floor  = {f['floor_s'] * 1e3:.2f} ms ({f['bound']} bound)"]
    return "\n".join(lines)


if __name__ == "__main__" and "--cpu" in sys.argv:  # python -m benchmarks.floor --cpu
    from wae_fast.kernel_specs import IMQ, RBF

    pk = measure_cpu_peak()
    for dd in (2, 8, 16, 64):
        for kern, kname in ((IMQ(), "imq"), (RBF(bandwidth=(0.5, 1.0, 2.0)), "rbf"),
                            (RBF(bandwidth=(0.3, 1.0, 3.7)), "rbf")):
            print(explain_cpu(16384, 16384, dd, kname, kern.lower(dd)[1], "fwdbwd", pk))
    sys.exit(0)

if __name__ == "__main__":  # python -m benchmarks.floor: the headline H100 row
    print(explain("mmd", 65536, 65536, 64, "fp32", "fwdbwd", "ieee", H100_SXM))
    print(explain("mmd", 65536, 65536, 64, "fp32", "fwd", "ieee", H100_SXM))
    print(explain("mmd", 65536, 65536, 64, "fp32", "fwdbwd", "tf32", H100_SXM))
    print(explain("mmd", 1 << 20, 1 << 20, 64, "fp32", "fwdbwd", "ieee", H100_SXM))
