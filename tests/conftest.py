"""Shared fixtures: the backends and devices the suite is parametrised over.

Without a GPU, Triton kernels run under the interpreter: TRITON_INTERPRET must be set before
any module defining them is imported, so it is set here, first.
"""
from __future__ import annotations

import os
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The cuda_emu backend's sanitizer checks (memcheck, initcheck, racecheck of the emulated CUDA
# kernels; off in a plain call, README "cuda_emu") run on every emulated launch of the suite.
os.environ.setdefault("WAE_CUDA_EMU_CHECKS", "all")
# the metric classifiers the training tests build (MNIST-like fixtures) are cached here, not in
# ~/.cache; the extension build cache ($WAE_FAST_CACHE) stays where it is (no rebuilds per session)
os.environ.setdefault("WAE_FAST_CLASSIFIER_CACHE", tempfile.mkdtemp(prefix="wae-fast-test-cache-"))

import wae_fast  # noqa: E402
from wae_fast.dispatch import BACKENDS, unavailable_reason  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_params(family: str = "mmd"):
    """(backend, device) pairs; unavailable ones are skipped with their reason."""
    params = []
    for dev in DEVICES:
        for name in BACKENDS:
            reason = unavailable_reason(name, dev, family)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            if dev == "cuda":
                marks.append(pytest.mark.cuda)
            if name == "cuda_emu":
                marks.append(pytest.mark.cuda_emu)
            params.append(pytest.param((name, dev), id=f"{name}-{dev}", marks=marks))
    return params


@pytest.fixture(autouse=True)
def _fresh_backend_selection():
    """Calls cache their backend choice per process; tests that patch availability need a fresh one."""
    wae_fast.dispatch.clear_selection_cache()
    yield


@pytest.fixture(params=backend_params("mmd"))
def mmd_backend(request):
    """(backend name, device) for every backend that implements MMD here."""
    return request.param


@pytest.fixture(params=backend_params("kernel_matmul"))
def kmm_backend(request):
    """(backend name, device) for every backend that implements kernel_matmul here."""
    return request.param


@pytest.fixture(params=backend_params("mmd_segments"))
def seg_backend(request):
    """(backend name, device) for every backend that implements the mmd_segments family here."""
    return request.param


@pytest.fixture(params=backend_params("reparam"))
def reparam_backend(request):
    return request.param


@pytest.fixture(params=backend_params("prior"))
def prior_backend(request):
    """(backend name, device) for every backend that implements the prior ops here."""
    return request.param


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def pytest_report_header(config):
    lines = []
    for dev in DEVICES:
        av = wae_fast.available_backends(dev)
        lines.append(f"wae_fast backends on {dev}: " + ", ".join(
            f"{k}={'yes' if v is None else 'no'}" for k, v in av.items()))
    # how the compiled CPU backend is provided (built at install, cached, first use)
    lines.append("wae_fast cpp: " + wae_fast.available_backends("cpu", detail=True)["cpp"])
    return lines


def pytest_runtest_logreport(report):
    """With WAE_FAST_FAILLOG set, each failure is appended to that file as it happens (under
    xdist too), so a run killed at a device-time limit still says what failed and why."""
    path = os.environ.get("WAE_FAST_FAILLOG")
    if not path or not report.failed:
        return
    text = getattr(report, "longreprtext", "") or str(report.longrepr)
    with open(path, "a") as fh:
        fh.write(f"=== {report.nodeid} ({report.when})\n{text[-4000:]}\n")
