"""The cuda_emu sanitizer checks (csrc/cuda_emu/runtime.cpp; switch WAE_CUDA_EMU_CHECKS, set to
"all" for the whole suite by tests/conftest.py, off in a plain call) reach Python: each
deliberately broken kernel of csrc/cuda_emu/selftest_kernels_emu.cpp, launched through the
extension's ``selftest_launch`` hook, raises a RuntimeError naming the check, the kernel, the
block and thread, the array or buffer and the source line; a correct kernel runs clean.

The real kernels (mmd forward/backward in every precision and dtype, prior, reparameterize) run
under all checks in tests/test_cuda_emu.py (over 20 shapes covering their paths) and the shared
suite; the emulator's own broken-kernel cases (one per check, with the exact messages) are in
tests/cuda_emu_selftest.cpp.
"""
from __future__ import annotations

import os
import re

import pytest
import torch

from wae_fast.dispatch import unavailable_reason

_REASON = unavailable_reason("cuda_emu", "cpu", "mmd")
pytestmark = [pytest.mark.cuda_emu, pytest.mark.skipif(_REASON is not None, reason=str(_REASON))]

ALL = "memcheck,initcheck,racecheck"


@pytest.fixture(scope="module")
def ext():
    from wae_fast import cuda_emu_backend
    return cuda_emu_backend.extension()


def test_the_suite_runs_every_check(ext):
    assert os.environ.get("WAE_CUDA_EMU_CHECKS") == "all"
    assert ext.checks() == ALL


def test_clean_kernel(ext):
    out = ext.selftest_launch("clean", torch.arange(64.0))
    assert out[0].item() == 2016.0


# (kernel, checks on, the message in parts: check, details, kernel, block and thread, source line)
BROKEN = [
    ("memcheck", "memcheck", [r"global memory out of bounds: 4-byte read at 0x[0-9a-f]+ outside every tensor",
                              r"0 bytes past the end of 'in' \(256 bytes\)", r"kernel \(global_read_past_end\)",
                              r"block \(0, 0, 0\) thread \(63, 0, 0\)", r"selftest_kernels_emu\.cpp:\d+"]),
    ("initcheck", "initcheck", [r"uninitialised shared memory read: 4-byte read of tile\[0\]",
                                r"no thread wrote since the block start", r"kernel \(shared_read_before_write\)",
                                r"block \(0, 0, 0\) thread \(0, 0, 0\)", r"selftest_kernels_emu\.cpp:\d+"]),
    ("racecheck", "racecheck", [r"shared memory race: thread \(31, 0, 0\) read and thread \(32, 0, 0\) writes tile\[32\]",
                                r"no __syncthreads between", r"kernel \(missing_barrier\)",
                                r"block \(0, 0, 0\) thread \(32, 0, 0\)", r"selftest_kernels_emu\.cpp:\d+"]),
    ("lockstep", "racecheck", [r"warp-synchronous assumption: lanes 0 and 1 of warp 0",
                               r"no __syncwarp or warp collective between", r"kernel \(lockstep_sum\)",
                               r"block \(0, 0, 0\) thread \(1, 0, 0\)", r"selftest_kernels_emu\.cpp:\d+"]),
]


@pytest.mark.parametrize("which,checks,parts", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_kernel_raises(ext, monkeypatch, which, checks, parts):
    monkeypatch.setenv("WAE_CUDA_EMU_CHECKS", checks)
    with pytest.raises(RuntimeError) as info:
        ext.selftest_launch(which, torch.arange(64.0))
    msg = str(info.value)
    for p in parts:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"


@pytest.mark.parametrize("value", ["", "none"])
def test_checks_off_in_a_plain_call(ext, monkeypatch, value):
    """Without the switch a racy kernel runs (and reads what the order of the fibers gives)."""
    monkeypatch.setenv("WAE_CUDA_EMU_CHECKS", value)
    assert ext.checks() == ""
    ext.selftest_launch("racecheck", torch.arange(64.0))
