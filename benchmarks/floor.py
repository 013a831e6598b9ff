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
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import time
from typing import Optional

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


if __name__ == "__main__":  # python -m benchmarks.floor: the headline H100 row
    print(explain("mmd", 65536, 65536, 64, "fp32", "fwdbwd", "ieee", H100_SXM))
    print(explain("mmd", 65536, 65536, 64, "fp32", "fwd", "ieee", H100_SXM))
    print(explain("mmd", 65536, 65536, 64, "fp32", "fwdbwd", "tf32", H100_SXM))
    print(explain("mmd", 1 << 20, 1 << 20, 64, "fp32", "fwdbwd", "ieee", H100_SXM))
