"""Rules of the compiled Triton launch path that the interpreter cannot show (both were found on
an H200, see benchmarks/results/h200-2026-11-29.md), checked here on the kernel objects:

* no global a kernel reads may be NaN: compiled Triton re-checks each global at every launch with
  ``!=``, and NaN != NaN raises "Global variable ... has changed since we compiled this kernel";
* an autotuned kernel whose output buffer has a slot per smallest block (``PART``) restores it
  after each benchmarked config, otherwise slots written while tuning leak into the first result.
"""
from __future__ import annotations

import importlib
import math

import pytest

triton = pytest.importorskip("triton")

from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import KernelInterface  # noqa: E402  (JIT and interpreted kernels)

MODULES = ["mmd", "mmd_small", "prior", "reparam", "kmm", "segments"]


def _kernel_modules():
    return [importlib.import_module(f"wae_fast.kernels.{m}") for m in MODULES]


def _value(v):
    return getattr(v, "value", v)


@pytest.mark.parametrize("mod", MODULES)
def test_no_nan_global_read_by_a_kernel(mod):
    m = importlib.import_module(f"wae_fast.kernels.{mod}")
    jits = [v for v in vars(m).values() if isinstance(v, KernelInterface)]
    assert jits, f"no Triton kernels found in wae_fast.kernels.{mod}"
    bad = []
    for name, v in vars(m).items():
        val = _value(v)
        if isinstance(val, float) and math.isnan(val):
            bad.append(name)
    assert not bad, f"NaN-valued globals in wae_fast.kernels.{mod}: {bad} (use INF - INF inside the kernel)"


def _autotuners():
    out = []
    for m in _kernel_modules():
        for name, v in vars(m).items():
            if isinstance(v, Autotuner):
                out.append((f"{m.__name__}.{name}", v))
    return out


def test_partial_buffers_restored_after_tuning():
    tuners = _autotuners()
    assert tuners, "no autotuned kernels found"
    checked = 0
    for name, t in tuners:
        if "PART" in t.arg_names:
            assert "PART" in t.restore_value, f"{name}: PART is not in restore_value"
            checked += 1
    assert checked >= 2, "expected the MMD and prior forwards to have PART buffers"
