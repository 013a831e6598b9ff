"""The build of the compiled backends (wae_fast/build.py): build keys, the first-use build into a
cache under a file lock, the mismatch of an installed extension, the errors without a compiler,
and that asking for availability or tracing never compiles.

Each scenario runs in a fresh interpreter (the build state is per process) with
WAE_FAST_FORCE_JIT=1 (the extension built at install is ignored, as on a key mismatch) and an
empty WAE_FAST_CACHE under tmp.  One first-use compile of the cpp backend is shared by the module
(about 25 s on 2 cores); the rest adds about 20 s of interpreter starts.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from torch.utils.cpp_extension import include_paths

import wae_fast
from wae_fast import build

pytestmark = pytest.mark.skipif(build.cannot_build("cpp") is not None,
                                reason=f"cpp backend cannot be built here: {build.cannot_build('cpp')}")

COMPILING = "wae_fast: compiling the cpp backend"
WAITING = "wae_fast: waiting for another process"

# A process using the cpp backend: what it reports before and after, and the basic check of
# tests/test_cpp_backend.py (value and gradients against the float64 oracle) on a ragged shape.
_USE = r"""
import json, sys
import torch
import wae_fast
from wae_fast import build
from wae_fast.kernel_specs import IMQ
sys.path.insert(0, sys.argv[1])
from tests import oracle
out = {"before": wae_fast.available_backends("cpu", detail=True)["cpp"], "file": wae_fast.__file__}
g = torch.Generator().manual_seed(0)
x = torch.randn(37, 5, generator=g, dtype=torch.float64).requires_grad_(True)
y = (torch.randn(29, 5, generator=g, dtype=torch.float64) + 0.3).requires_grad_(True)
val = wae_fast.mmd(x, y, IMQ(), backend="cpp")
val.backward()
kind, params = IMQ().lower(5)
ref, gx, gy, scale = oracle.mmd_and_grads(x.detach(), y.detach(), kind, params, True, 1.0)
out["err"] = abs(val.item() - ref.item()) / scale
out["gerr"] = max(float((x.grad - gx).norm() / gx.norm()), float((y.grad - gy).norm() / gy.norm()))
out["after"] = build.status("cpp")
out["isa"] = wae_fast.cpp_backend.isa()
print("RESULT " + json.dumps(out))
"""


def _env(cache: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update(WAE_FAST_FORCE_JIT="1", WAE_FAST_CACHE=str(cache), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _result(proc: subprocess.CompletedProcess | tuple) -> dict:
    out, err, rc = proc if isinstance(proc, tuple) else (proc.stdout, proc.stderr, proc.returncode)
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert rc == 0 and line, f"rc={rc}\n{out}\n{err[-4000:]}"
    res = json.loads(line[0][len("RESULT "):])
    res["stderr"] = err
    return res


def _root() -> str:
    return str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def first_use(tmp_path_factory):
    """Two processes needing the cpp backend at once, with an empty cache: the build they share."""
    cache = tmp_path_factory.mktemp("cache")
    procs = []
    for _ in range(2):
        procs.append(subprocess.Popen([sys.executable, "-c", _USE, _root()], env=_env(cache), cwd=cache,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    t0 = time.perf_counter()
    results = [_result(p.communicate(timeout=900) + (p.returncode,)) for p in procs]
    return cache, results, time.perf_counter() - t0


def test_build_key_mismatch_says_what_differs(tmp_path):
    want = build.build_key(build.SPECS["cpp"])
    assert want["torch"] and want["sources"] and isinstance(want["cxx11_abi"], bool)
    assert build.key_mismatch(dict(want), want) is None
    assert "carries no build key" in build.key_mismatch(None, want)
    for field, value, text in (("torch", "2.0.0", "torch 2.0.0"), ("cxx11_abi", not want["cxx11_abi"], "ABI"),
                               ("sources", "0" * 16, "sources")):
        why = build.key_mismatch(dict(want, **{field: value}), want)
        assert why is not None and text in why, why
    # sources not shipped: the rest of the key still decides
    assert build.key_mismatch(dict(want, sources="x"), dict(want, sources=None)) is None
    side = build.write_sidecar(str(tmp_path / "_C.so"), want)
    assert side.name == "_C.buildkey.json" and json.loads(side.read_text()) == want
    # the key names a cache directory per torch version, ABI and sources
    assert build.key_tag(want) != build.key_tag(dict(want, torch="2.12.0"))


def test_two_processes_one_compiles_the_other_waits_and_reuses(first_use):
    cache, results, wall = first_use
    compiled = [r for r in results if COMPILING in r["stderr"]]
    assert len(compiled) == 1, [r["stderr"] for r in results]
    assert compiled[0]["stderr"].count(COMPILING) == 1          # one line while it compiles
    other = [r for r in results if r is not compiled[0]][0]
    assert WAITING in other["stderr"] and COMPILING not in other["stderr"], other["stderr"]
    assert other["after"].startswith("cached build"), other["after"]
    assert compiled[0]["after"].startswith("built on first use"), compiled[0]["after"]
    for r in results:
        assert r["before"].startswith("available: needs a build on first use"), r["before"]
        assert "WAE_FAST_FORCE_JIT" in r["before"]
        assert r["err"] < 1e-11 and r["gerr"] < 1e-10, r
        assert r["isa"] in ("avx512", "avx2", "baseline")
    builds = list((cache / "cpp").glob("*/wae_fast_C*.so"))
    assert len(builds) == 1, builds
    print(f"first-use build shared by two processes: {wall:.1f} s wall")


def test_installed_extension_with_another_key_is_not_imported(first_use, tmp_path):
    """An installed wae_fast/_C.so whose key names another torch is skipped without importing it
    (here it is not even a library) and the cached build for this torch is used instead."""
    cache = first_use[0]
    pkg = tmp_path / "site" / "wae_fast"
    src = Path(wae_fast.__file__).resolve().parent
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.buildkey.json"))
    if not (pkg / "_csrc").is_dir():          # a checkout: lay the sources out as a wheel does
        shutil.copytree(build.csrc_root(), pkg / "_csrc")
    (pkg / "_C.so").write_bytes(b"not a library: importing it would fail")
    build.write_sidecar(str(pkg / "_C.so"), dict(build.build_key(build.SPECS["cpp"]), torch="2.0.0"))
    env = _env(cache, PYTHONPATH=str(tmp_path / "site"))
    env.pop("WAE_FAST_FORCE_JIT")
    r = _result(subprocess.run([sys.executable, "-c", _USE, _root()], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=600))
    assert r["file"].startswith(str(pkg)), r["file"]
    assert r["before"].startswith("available: cached build"), r["before"]
    assert COMPILING not in r["stderr"]
    assert r["err"] < 1e-11 and r["gerr"] < 1e-10, r
    env = dict(env, WAE_FAST_CACHE=str(tmp_path / "empty"))
    p = subprocess.run([sys.executable, "-c", "import wae_fast; print(wae_fast.available_backends(detail=True)['cpp'])"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "needs a build on first use" in p.stdout and "built for torch 2.0.0" in p.stdout, p.stdout


_NO_BUILD = r"""
import json, sys
import torch
import wae_fast
from wae_fast import build
out = {}
out["avail"] = {d: wae_fast.available_backends(d, detail=True) for d in ("cpu", "cuda")}
out["plain"] = wae_fast.available_backends("cpu")["cpp"]
out["which"] = wae_fast.which_backend("cpu")
build.main(["--status"])

class M(torch.nn.Module):
    def forward(self, x, y):
        return wae_fast.mmd(x, y, backend="cpp")

ep = torch.export.export(M(), (torch.randn(8, 3), torch.randn(9, 3)))
out["traced_op"] = any("mmd_fwd_cpp" in str(n.target) for n in ep.graph.nodes)
torch.compiler.is_compiling = lambda: True          # as inside a trace
try:
    build.ensure("cpp")
    out["in_trace"] = "built"
except RuntimeError as exc:
    out["in_trace"] = str(exc)
out["after"] = build.status("cpp")
print("RESULT " + json.dumps(out))
"""


def test_asking_and_tracing_never_compile(tmp_path):
    cache = tmp_path / "cache"
    r = _result(subprocess.run([sys.executable, "-c", _NO_BUILD], env=_env(cache), cwd=tmp_path,
                               capture_output=True, text=True, timeout=600))
    assert r["avail"]["cpu"]["cpp"].startswith("available: needs a build on first use (about"), r["avail"]
    assert r["avail"]["cpu"]["reference"] == "available"
    assert r["avail"]["cuda"]["cpp"].startswith("unavailable: ")
    assert r["plain"] is None and r["which"] == "cpp"
    assert r["traced_op"] is True
    assert "never compiled inside a torch.compile trace" in r["in_trace"], r["in_trace"]
    assert r["after"].startswith("needs a build on first use"), r["after"]
    assert COMPILING not in r["stderr"]
    assert not list(cache.rglob("*.so")) and not list(cache.rglob("*.o")), list(cache.rglob("*"))


_NO_COMPILER = r"""
import json, os, sys
import torch
import wae_fast
from wae_fast import build
out = {"reason": wae_fast.available_backends("cpu")["cpp"], "which": wae_fast.which_backend("cpu")}
x = torch.randn(20, 3)
out["auto"] = wae_fast.mmd(x, x + 1).item() > 0
try:
    wae_fast.mmd(x, x + 1, backend="cpp")
except RuntimeError as exc:
    out["explicit"] = str(exc)
try:
    build.ensure("cpp")
except build.BuildError as exc:
    out["missing"] = str(exc)
os.environ["CXX"] = sys.argv[1]                      # a compiler that fails every compile
try:
    build.ensure("cpp")
except build.BuildError as exc:
    out["failing"] = str(exc)
out["after"] = wae_fast.available_backends("cpu")["cpp"]
print("RESULT " + json.dumps(out))
"""


def test_no_compiler_is_a_clear_error(tmp_path):
    fake = tmp_path / "fake-g++"
    fake.write_text('#!/bin/sh\ncase "$1" in --version|-v|-dumpversion) echo "g++ (GCC) 12.2.0"; exit 0;; esac\n'
                    'echo "fake-g++: fatal error: out of coffee" >&2\nexit 1\n')
    fake.chmod(0o755)
    env = _env(tmp_path / "cache", CXX="/nonexistent/bin/c++")
    r = _result(subprocess.run([sys.executable, "-c", _NO_COMPILER, str(fake)], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=600))
    assert "no C++ compiler" in r["reason"] and "/nonexistent/bin/c++" in r["reason"], r["reason"]
    assert r["which"] == "reference" and r["auto"] is True
    assert "backend='cpp' is not available" in r["explicit"] and "no C++ compiler" in r["explicit"]
    assert "/nonexistent/bin/c++" in r["missing"] and "No such file" in r["missing"], r["missing"]
    assert "out of coffee" in r["failing"] and "compiling the cpp backend failed" in r["failing"], r["failing"]
    assert "failed to build" in r["after"] and "out of coffee" in r["after"], r["after"]


def test_segments_source_compiles_without_its_x86_paths(tmp_path):
    """csrc/cpu/segments_cpu.cpp's pack and shift helpers with GCC x86-64 function targets are
    guarded; with the guard off (WAE_NO_X86_PACK, as on ARM or clang) the file still compiles
    (a helper outside the guard once broke that build, which this x86 CI never compiles)."""
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    root = Path(__file__).resolve().parents[1]
    cmd = [cxx, "-std=c++17", "-fsyntax-only", "-DWAE_NO_X86_PACK", f"-I{root / 'csrc' / 'include'}",
           f"-I{root / 'csrc' / 'cpu'}", f"-I{sysconfig.get_paths()['include']}",
           *[f"-I{p}" for p in include_paths()], str(root / "csrc" / "cpu" / "segments_cpu.cpp")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
