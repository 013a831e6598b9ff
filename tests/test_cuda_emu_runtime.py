"""Self-test of the CUDA emulator itself (csrc/cuda_emu): tests/cuda_emu_selftest.cpp, small
kernels in the portable spelling of csrc/cuda, built with g++ against csrc/cuda_emu/runtime.cpp
(no torch): barriers and shared memory per block, warp shuffles/votes/__syncwarp, wmma TF32
against the documented model, unwritten shared memory reading NaN, the dynamic shared-memory
opt-in, the PTX models at their documented worst-case error (and the Newton steps of
tile_math.h's device reciprocal correcting it), and launch errors that name the kernel, block,
thread and source line for a barrier in a divergent branch, a thread exiting while others wait,
a warp collective missing a lane, an off-by-one shared index, a dynamic shared-memory slice
overflowing into the next, and __trap.  The sanitizer checks (WAE_CUDA_EMU_CHECKS; built with
the extension's instrumentation flags, wae_fast.build.CUDA_EMU_SANITIZE): correct kernels
(barriers, warp collectives, a __syncwarp tree sum, a block tree sum, wmma, dynamic shared
memory) run clean under all of them, and one broken kernel per check is caught with its message:
a global read one past a buffer and a raw pointer past the dynamic buffer (memcheck), a shared
read before the writing barrier and an unwritten scratch read (initcheck), a missing
__syncthreads and a warp sum without __syncwarp (racecheck), an inlined helper's barrier reached
from two call sites (barrier identity), and a shuffled lane order changing a lockstep sum.
Skipped without g++ or off x86-64 Linux.
"""
from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++")

pytestmark = [pytest.mark.cuda_emu, pytest.mark.skipif(
    CXX is None or not sys.platform.startswith("linux") or platform.machine() != "x86_64",
    reason="needs g++ on x86-64 Linux (the emulator's fiber switch)")]


@pytest.fixture(scope="module")
def selftest_output(tmp_path_factory):
    exe = tmp_path_factory.mktemp("cuda_emu") / "selftest"
    from wae_fast.build import CUDA_EMU_SANITIZE  # the flags of the extension: every access checked
    cmd = [CXX, "-std=c++17", "-O1", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas", "-DWAE_CUDA_EMU",
           *CUDA_EMU_SANITIZE,
           "-I", str(ROOT / "csrc" / "include"), "-I", str(ROOT / "csrc" / "cuda"),
           "-I", str(ROOT / "csrc" / "cuda_emu"), "-I", str(ROOT / "csrc" / "cuda_emu" / "shim"),
           str(ROOT / "tests" / "cuda_emu_selftest.cpp"), str(ROOT / "csrc" / "cuda_emu" / "runtime.cpp"),
           "-o", str(exe), "-ldl"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout + out.stderr


CHECKS = [
    "barrier and static shared memory per block",
    "shfl_xor / ballot / shfl / shfl_down / syncwarp",
    "wmma tf32 mma (truncated inputs)",
    "wmma tf32 mma (converted inputs)",
    "unwritten shared memory reads NaN",
    "60 KB dynamic smem refused without opt-in",
    "60 KB dynamic smem after opt-in",
    "barrier in a divergent branch",
    "thread exits while others wait at a barrier",
    "warp collective missing a lane",
    "off-by-one shared index",
    "overflow of one dynamic shared slice into the next",
    "__trap names block and thread",
    "2048 threads per block refused",
    "rcp.approx.ftz.f32 model at its 1-ulp bound",
    "sqrt.approx.ftz.f32 model at its 1-ulp bound",
    "fp32 reciprocal (rcp.approx + 1 Newton step) within 1 ulp",
    "fp64 reciprocal (rcp.approx.f64 + 3 Newton steps) within 1 ulp",
    "fp64 model: one Newton step is visibly short",
    "__float_to_tf32 rounds to nearest, ties away",
    "correct kernels clean under all checks",
    "wmma and dynamic shared memory clean under all checks",
    "memcheck: global read one past a buffer",
    "memcheck: raw pointer past the dynamic shared buffer",
    "initcheck: shared read before the writing barrier",
    "initcheck: unwritten scratch read",
    "initcheck: scratch written by cudaMemsetAsync",
    "racecheck: missing __syncthreads between a write and another thread's read",
    "racecheck: lockstep assumption inside a warp",
    "barrier identity: one line, two call sites",
    "shuffled lanes change a lockstep sum, not a synced one",
]


@pytest.mark.parametrize("name", CHECKS)
def test_emulator_selftest(selftest_output, name):
    rc, out = selftest_output
    lines = out.splitlines()
    assert "OK " + name in lines, next((ln for ln in lines if ln.startswith("FAIL " + name)),
                                      f"check {name!r} did not run:\n{out}")


def test_selftest_exit_status(selftest_output):
    rc, out = selftest_output
    assert rc == 0, out
