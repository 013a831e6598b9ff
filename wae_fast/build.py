"""Build the compiled backends (``cpp``: ``wae_fast._C``; ``cuda``: ``wae_fast._C_cuda``) for the
running torch: at install time when torch is importable (setup.py), otherwise on first use.

An extension only works with the torch it was compiled against, so every build carries a
*build key*: the torch version (with its CUDA version), the C++ ABI flag
(``torch._C._GLIBCXX_USE_CXX11_ABI``) and a hash of the C++ sources it was compiled from.
setup.py writes the key beside the installed library (``wae_fast/_C.buildkey.json``). When a
backend module is imported, :func:`load_prebuilt` uses, without compiling anything:

1. the extension built at install time, if its key matches the running torch and sources;
2. else a build cached by an earlier first use, in ``$WAE_FAST_CACHE/<backend>/<key>/``
   (default ``~/.cache/wae_fast``), if one exists for this key.

Otherwise the backend's ops get a placeholder kernel (:func:`build_on_first_use`) that compiles
the extension on the first eager call (:func:`ensure`: ``torch.utils.cpp_extension.load`` and
ninja into the cache, one line printed, under a file lock so that two processes never compile
at once: the second waits and reuses the first one's build) and then runs the real kernel.
Nothing compiles inside a ``torch.compile`` trace or when someone asks which backends are
available. ``python -m wae_fast.build`` prebuilds every backend this machine can build.

The C++ sources travel inside the wheel as ``wae_fast/_csrc`` (setup.py maps ``csrc/`` there);
a source checkout or an editable install uses ``csrc/`` itself.

Switches: ``WAE_FAST_CACHE`` (cache root), ``WAE_FAST_FORCE_JIT=1`` (ignore the extension built
at install, as if its key did not match: tests and debugging), ``CXX`` (the C++ compiler).

This module imports torch only inside functions: setup.py loads it by path, with or without torch.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

SIDECAR_SUFFIX = ".buildkey.json"
_MARKER = "buildkey.json"          # written into a cache directory once its build loaded


class BuildError(RuntimeError):
    """A compiled backend could not be built (no compiler, no ninja, or a compile error)."""


@dataclass(frozen=True)
class ExtSpec:
    """How one compiled backend is built (shared by setup.py and the first-use build)."""

    backend: str                      # "cpp" / "cuda"
    module: str                       # the module setup.py installs
    jit_name: str                     # the module name of a first-use build
    device_type: str                  # the tensors its kernels take
    sources: tuple[str, ...]          # globs relative to csrc/, compiled
    hashed: tuple[str, ...]           # globs relative to csrc/, everything compiled in
    include_dirs: tuple[str, ...]     # relative to csrc/
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...] = ()
    jit_cuda_cflags: tuple[str, ...] = ()
    build_seconds: int = 0            # a first-use build on 2 cores (measured, see README;
                                      # cuda: sm_90 only, tests/test_cuda_build.py)


#: cuda_emu: GCC's ThreadSanitizer instrumentation WITHOUT its runtime library: every load and
#: store of the compiled code becomes a call to __tsan_{read,write}N, which the emulator's
#: runtime defines (csrc/cuda_emu/runtime.cpp: the memcheck, initcheck and racecheck of the
#: kernels under WAE_CUDA_EMU_CHECKS; one global test per access when they are off).  TSan's
#: rather than ASan's instrumentation: it tells reads from writes and keeps every access (ASan
#: drops the check of a store to an address it just checked for a load).  -g1: line tables, so
#: that a finding names its source line (addr2line).
CUDA_EMU_SANITIZE = ("-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0", "-g1")

SPECS: dict[str, ExtSpec] = {
    # No -march flags: the tiles are compiled for baseline x86-64 (mmd_cpu.cpp), AVX2+FMA
    # (tiles_avx2.cpp) and AVX-512 (tiles_avx512.cpp), each file's target options written in it
    # (#pragma GCC target), and picked at run time, so one build runs on any x86-64 machine.
    "cpp": ExtSpec(
        backend="cpp", module="wae_fast._C", jit_name="wae_fast_C", device_type="cpu",
        sources=("cpu/*.cpp",), hashed=("cpu/*.cpp", "cpu/*.h", "include/wae_fast/*.h"),
        include_dirs=("include", "cpu"), cflags=("-O3", "-fopenmp", "-Wno-psabi"),
        ldflags=("-fopenmp",), build_seconds=30),
    # Kernels in .cu (no torch headers) + binding.cpp.  A first-use build compiles for the
    # architectures torch picks (TORCH_CUDA_ARCH_LIST, else the visible GPU).
    "cuda": ExtSpec(
        backend="cuda", module="wae_fast._C_cuda", jit_name="wae_fast_C_cuda", device_type="cuda",
        sources=("cuda/*.cu", "cuda/*.cpp"),
        hashed=("cuda/*.cu", "cuda/*.cuh", "cuda/*.h", "cuda/*.cpp", "include/wae_fast/*.h"),
        include_dirs=("include", "cuda"), cflags=("-O3",), jit_cuda_cflags=("-O3", "-std=c++17"),
        build_seconds=180),
    # The SAME csrc/cuda sources compiled by the host C++ compiler against the CUDA emulator
    # (CUDA_EMU_SANITIZE: every load and store calls the emulator's checks, runtime.cpp)
    # (csrc/cuda_emu: the threads of a block as fibers; x86-64 Linux): the testing backend
    # "cuda_emu".  -ffp-contract=off: no FMA the source does not spell (nvcc may contract).
    "cuda_emu": ExtSpec(
        backend="cuda_emu", module="wae_fast._C_cuda_emu", jit_name="wae_fast_C_cuda_emu",
        device_type="cpu", sources=("cuda_emu/*.cpp",),
        hashed=("cuda/*.cu", "cuda/*.cuh", "cuda/*.h", "cuda/*.cpp", "cuda_emu/*.cpp", "cuda_emu/*.h",
                "cuda_emu/shim/*.h", "include/wae_fast/*.h"),
        include_dirs=("include", "cuda", "cuda_emu", "cuda_emu/shim"),
        cflags=("-O2", "-ffp-contract=off", "-fno-fast-math", "-Wno-unknown-pragmas", "-DWAE_CUDA_EMU=1",
                *CUDA_EMU_SANITIZE),
        build_seconds=120),
}


# ---------------------------------------------------------------------------------------------
# Sources and build keys (no torch needed except in build_key)

def csrc_root() -> Optional[Path]:
    """The C++ sources: ``wae_fast/_csrc`` in an installed wheel, ``csrc/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "_csrc", here.parent / "csrc"):
        if (cand / "include").is_dir():
            return cand
    return None


def source_files(spec: ExtSpec, root: Path, patterns: Optional[tuple[str, ...]] = None) -> list[Path]:
    files: set[Path] = set()
    for pat in patterns if patterns is not None else spec.hashed:
        files.update(Path(p) for p in glob.glob(str(root / pat)))
    return sorted(files)


def source_hash(spec: ExtSpec, root: Path) -> str:
    """sha256 (16 hex digits) over the relative paths and bytes of everything compiled in."""
    h = hashlib.sha256()
    for f in source_files(spec, root):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_key(spec: ExtSpec, root: Optional[Path] = None) -> dict[str, Any]:
    """The key of a build for the running torch: torch version (and its CUDA), C++ ABI, sources."""
    import torch
    root = root if root is not None else csrc_root()
    return {
        "backend": spec.backend,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "sources": source_hash(spec, root) if root is not None else None,
    }


def key_mismatch(found: Optional[dict], want: dict) -> Optional[str]:
    """None when a build with key ``found`` suits the running torch (key ``want``), else why not.
    Sources that cannot be hashed (``want["sources"]`` None: not shipped) are not compared."""
    if not found:
        return "it carries no build key"
    for field, what in (("torch", "torch"), ("torch_cuda", "CUDA version of torch"),
                        ("cxx11_abi", "C++ ABI flag"), ("sources", "C++ sources (hash)")):
        if field == "sources" and want.get("sources") is None:
            continue
        if found.get(field) != want.get(field):
            return f"it was built for {what} {found.get(field)}, this is {want.get(field)}"
    return None


def key_tag(key: dict) -> str:
    """Directory name of a key: ``torch2.13.0_cpu-cudanone-abi1-src<hash>``."""
    tag = (f"torch{key['torch']}-cuda{key['torch_cuda'] or 'none'}-abi{int(key['cxx11_abi'])}"
           f"-src{key['sources']}")
    return re.sub(r"[^A-Za-z0-9._-]", "_", tag)


def sidecar_path(library: str) -> Path:
    """``.../wae_fast/_C.buildkey.json`` for the library ``.../wae_fast/_C.so``."""
    p = Path(library)
    return p.with_name(p.name.split(".", 1)[0] + SIDECAR_SUFFIX)


def write_sidecar(library: str, key: dict) -> Path:
    """Record ``key`` beside an installed extension (setup.py's build_ext)."""
    path = sidecar_path(library)
    path.write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("WAE_FAST_CACHE") or Path.home() / ".cache" / "wae_fast").expanduser()


def cache_dir(spec: ExtSpec, key: dict) -> Path:
    return cache_root() / spec.backend / key_tag(key)


# ---------------------------------------------------------------------------------------------
# Run-time state: which build each backend uses (no compiling here)

@dataclass
class _State:
    module: Any = None
    how: str = ""              # "built at install", "cached build", "built on first use ..."
    path: str = ""
    skipped: str = ""          # why the extension built at install is not used
    error: str = ""            # the last failed build


_STATES: dict[str, _State] = {}
_THREAD_LOCK = threading.Lock()


def _state(backend: str) -> _State:
    return _STATES.setdefault(backend, _State())


def loaded(backend: str):
    """The backend's extension module if it is loaded, else None (never builds)."""
    return _state(backend).module


def _forced_jit() -> bool:
    return os.environ.get("WAE_FAST_FORCE_JIT", "").strip().lower() not in ("", "0", "false", "no", "off")


def _import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod
    return mod


def _library_name(jit_name: str) -> str:
    from torch.utils import cpp_extension
    return jit_name + cpp_extension.LIB_EXT


def _load_cached(spec: ExtSpec, key: dict):
    """Import the cached first-use build for ``key`` if one is complete (its marker written)."""
    d = cache_dir(spec, key)
    lib = d / _library_name(spec.jit_name)
    if not (d / _MARKER).is_file() or not lib.is_file():
        return None
    try:
        if json.loads((d / _MARKER).read_text()) != key:
            return None
    except (OSError, ValueError):
        return None
    try:
        return _import_file(spec.jit_name, lib)
    except ImportError:        # a broken cache entry: build again over it
        return None


def load_prebuilt(backend: str):
    """The backend's extension built at install (if its key matches) or cached (if present), or
    None.  Never compiles; called when the backend module is imported."""
    spec, st = SPECS[backend], _state(backend)
    if st.module is not None:
        return st.module
    want = build_key(spec)
    if _forced_jit():
        st.skipped = "WAE_FAST_FORCE_JIT is set"
    else:
        found = importlib.util.find_spec(spec.module)
        if found is None or not found.origin:
            st.skipped = "it is not installed"
        else:
            try:
                sidecar = json.loads(sidecar_path(found.origin).read_text())
            except (OSError, ValueError):
                sidecar = None
            st.skipped = key_mismatch(sidecar, want) or ""
            if not st.skipped:
                try:
                    st.module = importlib.import_module(spec.module)
                    st.how, st.path = "built at install", found.origin
                    return st.module
                except ImportError as exc:
                    st.skipped = f"it does not import ({exc})"
    if want["sources"] is not None:
        st.module = _load_cached(spec, want)
        if st.module is not None:
            st.how, st.path = "cached build", str(cache_dir(spec, want))
    return st.module


def _compiler() -> str:
    from torch.utils import cpp_extension
    return cpp_extension.get_cxx_compiler() if hasattr(cpp_extension, "get_cxx_compiler") \
        else os.environ.get("CXX", "c++")


def _ninja_dir() -> Optional[str]:
    """Directory holding ninja: on PATH, or the ``ninja`` pip package (not on PATH when the
    venv is not activated)."""
    found = shutil.which("ninja")
    if found:
        return str(Path(found).parent)
    try:
        import ninja  # the pip package
        return str(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        return None


def cannot_build(backend: str) -> Optional[str]:
    """Why the backend cannot be compiled here (no sources, compiler, ninja or CUDA), else None.
    Cheap: looks for programs, runs none."""
    spec = SPECS[backend]
    root = csrc_root()
    if root is None or not source_files(spec, root, spec.sources):
        return "the C++ sources (wae_fast/_csrc) are not part of this installation"
    cxx = _compiler()
    if not shutil.which(shlex.split(cxx)[0] if cxx.strip() else "c++"):
        return (f"no C++ compiler: CXX={cxx!r} is not an executable on PATH "
                "(install g++ or clang++, or point CXX at one)")
    if _ninja_dir() is None:
        return "ninja is missing (pip install ninja)"
    if backend == "cuda_emu" and not (sys.platform.startswith("linux")
                                      and platform.machine() in ("x86_64", "AMD64")):
        return "the CUDA emulator's fiber switch needs x86-64 Linux"
    if spec.device_type == "cuda":
        import torch
        from torch.utils import cpp_extension
        if torch.version.cuda is None:
            return "torch is a CPU build (torch.version.cuda is None)"
        if cpp_extension.CUDA_HOME is None:
            return "nvcc / CUDA_HOME not found"
    return None


def unavailable_reason(backend: str) -> Optional[str]:
    """None when the backend's extension is loaded or can be built on first use, else why not."""
    st = _state(backend)
    if st.module is not None:
        return None
    if st.error:
        return f"the {backend} extension failed to build: {st.error}"
    why = cannot_build(backend)
    if why is None:
        return None
    return (f"the {backend} extension is not usable here ({_skipped_text(backend)}) and cannot be "
            f"built on first use: {why}")


def _skipped_text(backend: str) -> str:
    spec, st = SPECS[backend], _state(backend)
    if st.skipped == "it is not installed":
        return f"{spec.module} was not built at install"
    return f"{spec.module} built at install is not used: {st.skipped}" if st.skipped else ""


def status(backend: str) -> str:
    """How the backend's extension is provided: "built at install (path)", "cached build
    (path)", "built on first use in N s (path)" or "needs a build on first use (about N s ...)"."""
    st, spec = _state(backend), SPECS[backend]
    if st.module is not None:
        return f"{st.how} ({st.path})"
    why = unavailable_reason(backend)
    if why is not None:
        return why
    return (f"needs a build on first use (about {spec.build_seconds} s, once per torch version; "
            f"`python -m wae_fast.build` prebuilds it; {_skipped_text(backend)})")


# ---------------------------------------------------------------------------------------------
# Building

@contextlib.contextmanager
def _file_lock(path: Path, waiting_line: str):
    """Exclusive lock on ``path`` (released by the OS if the process dies); prints
    ``waiting_line`` once when another process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): torch's own lock file still serialises builds
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(waiting_line, file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _compiler_message(cxx: str) -> str:
    try:
        r = subprocess.run(shlex.split(cxx) + ["--version"], capture_output=True, text=True, timeout=30)
        return (r.stdout + r.stderr).strip().splitlines()[0] if (r.stdout + r.stderr).strip() else f"exit {r.returncode}"
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)


def _compile(spec: ExtSpec, key: dict, root: Path, d: Path):
    from torch.utils import cpp_extension
    srcs = [str(p) for p in source_files(spec, root, spec.sources)]
    # torch's own lock file is stale if a build was killed; we hold the real lock
    with contextlib.suppress(FileNotFoundError):
        (d / "lock").unlink()
    old_path = os.environ.get("PATH", "")
    ninja_dir = _ninja_dir()
    if ninja_dir and shutil.which("ninja") is None:
        os.environ["PATH"] = ninja_dir + os.pathsep + old_path
    try:
        kw: dict[str, Any] = dict(
            name=spec.jit_name, sources=srcs, build_directory=str(d),
            extra_include_paths=[str(root / i) for i in spec.include_dirs],
            extra_cflags=list(spec.cflags), extra_ldflags=list(spec.ldflags), verbose=False)
        if spec.jit_cuda_cflags:
            kw["extra_cuda_cflags"] = list(spec.jit_cuda_cflags)
        mod = cpp_extension.load(**kw)
    finally:
        os.environ["PATH"] = old_path
    sys.modules[spec.jit_name] = mod
    (d / _MARKER).write_text(json.dumps(key, sort_keys=True))
    return mod


def _error_text(exc: BaseException) -> str:
    """The message of a failed build with what the compiler printed (torch puts the ninja
    output in the message; a failed compiler probe keeps it on the CalledProcessError)."""
    parts, seen = [], set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(str(e).strip())
        for out in (getattr(e, "output", None), getattr(e, "stderr", None)):
            if out:
                parts.append((out.decode(errors="replace") if isinstance(out, bytes) else str(out)).strip())
        e = e.__cause__ or e.__context__
    out: list[str] = []
    for p in parts:
        if p and not any(p in q for q in out):
            out.append(p)
    return "\n".join(out)


def ensure(backend: str):
    """The backend's extension module, compiling it first if needed (see the module docstring).

    Raises BuildError when it cannot be built (with the compiler's message), RuntimeError when
    called inside a torch.compile trace."""
    spec, st = SPECS[backend], _state(backend)
    if st.module is not None:
        return st.module
    import torch
    if torch.compiler.is_compiling():
        raise RuntimeError(
            f"wae_fast: the {backend} backend is not built yet and is never compiled inside a "
            "torch.compile trace: call it once eagerly first, or run `python -m wae_fast.build`")
    with _THREAD_LOCK:
        if st.module is not None:
            return st.module
        why = cannot_build(backend)
        if why is not None:
            if why.startswith("no C++ compiler"):
                why += f"; running it says: {_compiler_message(_compiler())}"
            st.error = why
            raise BuildError(f"wae_fast: cannot build the {backend} backend: {why}")
        root = csrc_root()
        key = build_key(spec, root)
        d = cache_dir(spec, key)
        waiting = f"wae_fast: waiting for another process that is compiling the {backend} backend into {d}"
        with _file_lock(d.with_name(d.name + ".lock"), waiting):
            mod = _load_cached(spec, key)          # another process may have built it meanwhile
            if mod is not None:
                st.module, st.how, st.path, st.error = mod, "cached build", str(d), ""
                return mod
            d.mkdir(parents=True, exist_ok=True)
            print(f"wae_fast: compiling the {backend} backend for torch {key['torch']} into {d} "
                  f"(first use; about {spec.build_seconds} s, once per torch version)",
                  file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                mod = _compile(spec, key, root, d)
            except Exception as exc:  # compile error, broken compiler, ninja failure
                tail = "\n".join(_error_text(exc).splitlines()[-40:])
                errs = [ln for ln in tail.splitlines() if "error:" in ln.lower()] or tail.splitlines() or [str(exc)]
                st.error = f"compiling with {_compiler()!r} in {d} failed: {errs[0].strip()}"
                raise BuildError(f"wae_fast: compiling the {backend} backend failed "
                                 f"(compiler {_compiler()!r}, build directory {d}):\n{tail}") from exc
        st.module, st.path, st.error = mod, str(d), ""
        st.how = f"built on first use in {time.perf_counter() - t0:.0f} s"
        return mod


def prepare(backend: str) -> Optional[str]:
    """Build the backend's extension if needed (dispatch's one-time hook before a real call):
    None when it is loaded, else the reason it cannot be (the build error, compiler output
    included).  Inside a torch.compile trace it never compiles: the reason says so."""
    try:
        ensure(backend)
    except (BuildError, RuntimeError) as exc:
        return str(exc)
    return None


def build_on_first_use(backend: str, families: tuple[str, ...]) -> None:
    """Give the backend's ops a placeholder kernel that builds the extension on the first eager
    call and then runs the real one.  The placeholder is registered for
    CompositeExplicitAutograd, so the extension's device kernel (CPU/CUDA), once loaded, takes
    precedence; torch.compile traces use the ops' fake implementations and never reach it."""
    import torch

    from wae_fast.contract import define_backend_ops, op

    spec = SPECS[backend]
    active: set[str] = set()

    def placeholder(opname: str):
        def kernel(*args):
            dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), None)
            if dev != spec.device_type:
                raise RuntimeError(f"wae_fast::{opname}: the {backend} backend runs on "
                                   f"{spec.device_type} tensors only (got {dev} tensors)")
            if opname in active:   # the extension loaded but did not register this op
                raise RuntimeError(f"wae_fast::{opname}: {spec.module} has no {spec.device_type} kernel for it")
            ensure(backend)
            active.add(opname)
            try:
                return op(opname)(*args)
            finally:
                active.discard(opname)
        return kernel

    impls = {f"{fam}_{d}": placeholder(f"{fam}_{d}_{backend}") for fam in families for d in ("fwd", "bwd")}
    define_backend_ops(backend, dispatch_key="CompositeExplicitAutograd", **impls)


# ---------------------------------------------------------------------------------------------
# python -m wae_fast.build

def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m wae_fast.build",
                                description="Build the compiled wae_fast backends for this torch and machine.")
    p.add_argument("--backend", choices=sorted(SPECS), action="append",
                   help="only this backend (repeatable; default: every one this machine can build)")
    p.add_argument("--status", action="store_true", help="only say how each backend is provided")
    a = p.parse_args(argv)
    failed = 0
    for name in a.backend or list(SPECS):
        importlib.import_module(f"wae_fast.{name}_backend")      # loads what exists, compiles nothing
        if a.status or loaded(name) is not None:
            print(f"{name}: {status(name)}")
            continue
        why = cannot_build(name)
        if why is not None:
            print(f"{name}: skipped: {why}")
            failed += bool(a.backend)          # asked for explicitly: a failure
            continue
        try:
            ensure(name)
            print(f"{name}: {status(name)}")
        except BuildError as exc:
            print(f"{name}: FAILED: {exc}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    # run the package's module, not this __main__ copy: the backends record their state there
    from wae_fast.build import main as _main
    sys.exit(_main())
