"""Ahead-of-time compile of every Triton kernel for sm_90 (no GPU needed).

The interpreter accepts code the GPU compiler rejects (K < 16 dots, ``break``, ...), so each
distinct code path (kernel function x kernel kind x dtype x estimator/symmetry; see
``wae_fast.kernels.aot.mmd_variants``) is compiled with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32))`` in a subprocess with TRITON_INTERPRET unset (the test
process itself runs the kernels under the interpreter).  Registers and spills per kernel are
printed (run pytest with ``-s`` to see the table).  Set WAE_FAST_AOT_SET=all to also compile
the extra variants (other d, tiles and dot precisions; a few more minutes).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

triton = pytest.importorskip("triton")


def test_aot_compile_sm90():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    which = os.environ.get("WAE_FAST_AOT_SET", "core")
    with tempfile.TemporaryDirectory() as tmp:
        env["TRITON_CACHE_DIR"] = os.path.join(tmp, "cache")   # really compile, no cache hits
        out = os.path.join(tmp, "aot.json")
        res = subprocess.run(
            [sys.executable, "-m", "wae_fast.kernels.aot", "--arch", "90", "--set", which, "--json", out],
            env=env, capture_output=True, text=True, timeout=900)
        print(res.stdout)
        print(res.stderr[-4000:])
        assert os.path.exists(out), f"aot did not run (rc {res.returncode}):\n{res.stderr[-4000:]}"
        with open(out) as f:
            rows = json.load(f)
    failed = [r for r in rows if not r["ok"]]
    assert not failed, "AOT compile failures:\n" + "\n".join(f"{r['name']}: {r['error']}" for r in failed)
    assert res.returncode == 0
    names = {r["name"].split()[0] for r in rows}
    assert {"mmd_fwd", "mmd_bwd", "reparam_fwd", "reparam_bwd"} <= names
    for r in rows:
        assert r["regs"] > 0, r          # ptxas -v was parsed
