"""Compile every CUDA source in csrc/ with nvcc for sm_80 and sm_90 (no GPU needed).

Fails on any compiler error, and on local-memory spills ("bytes spill stores/loads" > 0) in the
hot kernels (MMD tiles, gradients, reductions, shifts, sampling).  A stack frame WITHOUT spills is
printed but allowed: the tensor-core prior kernels keep cosf's 32-byte local array of its
huge-argument reduction (never taken: the argument is 2 pi u, u in [0, 1)).  Skipped when nvcc
is absent.
Run as a script to print the ptxas register / spill table:

    python tests/test_csrc_compile.py
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc").rglob("*.cu"))
ARCHS = ("80", "90")
HOT = ("mmd_fwd_tiles", "mmd_grad_rows", "reduce_partials", "grad_combine", "shift_kernel",
       "reparam_fwd_kernel", "reparam_bwd_kernel", "kmm_fwd_tiles", "kmm_grad_tiles")


def _nvcc():
    exe = shutil.which("nvcc")
    if exe:
        return exe
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    cand = Path(home) / "bin" / "nvcc"
    return str(cand) if cand.exists() else None


NVCC = _nvcc()


def _demangle(names):
    cf = shutil.which("c++filt")
    if not cf or not names:
        return names
    out = subprocess.run([cf], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def compile_report(src: Path, tmpdir: Path, archs=ARCHS):
    """Compile ``src`` for every sm_<arch> in one nvcc call; returns
    (returncode, output, [(arch, kernel, regs, stack, spill_st, spill_ld)])."""
    gencode = []
    for a in archs:
        gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    cmd = [NVCC, "-std=c++17", "-O3", *gencode, "-c", str(src), "-o",
           str(tmpdir / f"{src.stem}.o"), "-Xptxas", "-v",
           "-I", str(ROOT / "csrc" / "include"), "-I", str(src.parent)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    rows, cur, stack, sst, sld = [], None, 0, 0, 0
    for line in out.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for 'sm_(\d+)'", line)
        if m:
            cur, arch = m.group(1), m.group(2)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur:
            stack, sst, sld = map(int, m.groups())
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and cur:
            rows.append([arch, cur, int(m.group(1)), stack, sst, sld])
            cur = None
    names = _demangle([r[1] for r in rows])
    for r, n in zip(rows, names):
        r[1] = n
    return p.returncode, out, [tuple(r) for r in rows]


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
@pytest.mark.skipif(not CUDA_SOURCES, reason="no .cu sources in csrc/")
def test_cuda_sources_compile_without_spills(tmp_path):
    with ThreadPoolExecutor(max_workers=2) as ex:
        results = list(ex.map(lambda s: (s, compile_report(s, tmp_path)), CUDA_SOURCES))
    problems = []
    for src, (rc, out, rows) in results:
        assert rc == 0, f"nvcc failed on {src.name}:\n{out[-4000:]}"
        assert {r[0] for r in rows} == set(ARCHS), f"no ptxas report for every arch for {src.name}"
        for arch, name, regs, stack, sst, sld in rows:
            if any(h in name for h in HOT) and (sst > 0 or sld > 0):
                problems.append(f"{src.name} sm_{arch}: {name}: {regs} regs, {stack} B stack, "
                                f"{sst} B spill stores, {sld} B spill loads")
    assert not problems, "local-memory spills in hot kernels:\n" + "\n".join(problems)


def main() -> int:
    import tempfile
    if NVCC is None:
        print("nvcc not found")
        return 1
    with tempfile.TemporaryDirectory() as td:
        for src in CUDA_SOURCES:
            rc, out, rows = compile_report(src, Path(td))
            if rc:
                print(out)
                return rc
            for arch, name, regs, stack, sst, sld in sorted(rows):
                if True:
                    short = re.sub(r"\(anonymous namespace\)::", "", name)
                    short = re.sub(r"\(.*\)$", "", short)
                    print(f"sm_{arch} | {src.name} | {short} | {regs} regs | stack {stack} | spill st {sst} / ld {sld}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
