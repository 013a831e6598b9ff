"""Build script: the pure-Python package, the Triton kernels (kernels/ installed as
``wae_fast.kernels``), the C++ sources (csrc/ installed as ``wae_fast._csrc``, so that any
installation can compile them on first use) and, when torch is importable here, the C++
extensions.

Extensions (torch.utils.cpp_extension; how each is compiled is in wae_fast/build.py ``SPECS``):

* ``wae_fast._C``      CPU backend (CppExtension) from csrc/cpu/*.cpp, wherever a C++ compiler exists.
* ``wae_fast._C_cuda`` CUDA backend (CUDAExtension) from csrc/cuda/*, only when nvcc and a CUDA
  build of torch are present.
* ``wae_fast._C_cuda_emu`` the SAME csrc/cuda sources compiled by the host C++ compiler against the
  emulator in csrc/cuda_emu (threads of a block as fibers on the CPU): the slow testing backend
  "cuda_emu", wherever a C++ compiler exists on x86-64 Linux.

Each is installed with its build key (torch version, C++ ABI, source hash) in
``wae_fast/<name>.buildkey.json``; at run time an extension whose key does not match the running
torch is not used, and wae_fast.build compiles a matching one on first use instead.

torch is importable here with ``pip install --no-build-isolation`` (torch installed first), not
in pip's default isolated build (torch is deliberately not a build requirement): then no
extension is built at install and the first use compiles them (``python -m wae_fast.build``
does it ahead of time).

Switches: WAE_FAST_BUILD_CPP=0/1, WAE_FAST_BUILD_CUDA=0/1 and WAE_FAST_BUILD_CUDA_EMU=0/1 skip or
force a part (unset: auto);
WAE_FAST_CUDA_ARCHS lists the SM architectures of the CUDA build; when it is unset, a set
TORCH_CUDA_ARCH_LIST is honoured (torch's BuildExtension turns it into -gencode flags, e.g.
"9.0a" or "8.0;9.0+PTX"), and otherwise the default is sm_80 and sm_90.
"""
import importlib.util
import os
import platform
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")


def _load_build_module():
    """wae_fast/build.py by path (importing the package would need torch)."""
    spec = importlib.util.spec_from_file_location("_wae_fast_build", os.path.join(HERE, "wae_fast", "build.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


build = _load_build_module()


def _switch(name):
    v = os.environ.get(name, "").strip().lower()
    return None if v == "" else v not in ("0", "false", "no", "off")


def _rel(paths):
    return [os.path.relpath(str(p), HERE) for p in paths]


def _extensions():
    want_cpp, want_cuda = _switch("WAE_FAST_BUILD_CPP"), _switch("WAE_FAST_BUILD_CUDA")
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except ImportError:
        if want_cpp or want_cuda:
            raise RuntimeError("building the wae_fast extensions at install needs torch installed first "
                               "(pip install torch, then pip install --no-build-isolation .)")
        return [], {}
    from pathlib import Path
    root = Path(CSRC)
    exts, keys = [], {}
    cpp = build.SPECS["cpp"]
    cpp_src = build.source_files(cpp, root, cpp.sources)
    if cpp_src and want_cpp is not False:
        exts.append(cpp_extension.CppExtension(
            cpp.module, _rel(cpp_src), include_dirs=[str(root / i) for i in cpp.include_dirs],
            depends=_rel(build.source_files(cpp, root)),
            extra_compile_args=list(cpp.cflags), extra_link_args=list(cpp.ldflags)))
        keys[cpp.module] = build.build_key(cpp, root)
    emu = build.SPECS["cuda_emu"]
    emu_src = build.source_files(emu, root, emu.sources)
    want_emu = _switch("WAE_FAST_BUILD_CUDA_EMU")
    emu_ok = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
    if emu_src and (want_emu or (want_emu is None and emu_ok and want_cpp is not False)):
        if not emu_ok:
            raise RuntimeError("WAE_FAST_BUILD_CUDA_EMU=1 but the emulator's fiber switch needs x86-64 Linux")
        exts.append(cpp_extension.CppExtension(
            emu.module, _rel(emu_src), include_dirs=[str(root / i) for i in emu.include_dirs],
            depends=_rel(build.source_files(emu, root)),
            extra_compile_args=list(emu.cflags), extra_link_args=list(emu.ldflags)))
        keys[emu.module] = build.build_key(emu, root)
    cuda = build.SPECS["cuda"]
    cuda_src = build.source_files(cuda, root, cuda.sources)
    has_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if cuda_src and (want_cuda or (want_cuda is None and has_cuda)):
        if not has_cuda:
            raise RuntimeError("WAE_FAST_BUILD_CUDA=1 but torch is not a CUDA build or nvcc/CUDA_HOME is missing")
        gencode = []
        archs = os.environ.get("WAE_FAST_CUDA_ARCHS")
        if archs is None and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            archs = "80;90"
        # archs None here: no -gencode of ours, so cpp_extension applies TORCH_CUDA_ARCH_LIST
        for a in (a.strip() for a in (archs or "").replace(",", ";").split(";") if a.strip()):
            gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        exts.append(cpp_extension.CUDAExtension(
            cuda.module, _rel(cuda_src), include_dirs=[str(root / i) for i in cuda.include_dirs],
            depends=_rel(build.source_files(cuda, root)),
            extra_compile_args={"cxx": list(cuda.cflags), "nvcc": list(cuda.cflags) + gencode}))
        keys[cuda.module] = build.build_key(cuda, root)
    if not exts:
        return [], {}

    base = cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)

    class BuildExtWithKeys(base):
        """Write each extension's build key beside its library (and beside the in-place copy
        of an editable install)."""

        def build_extension(self, ext):
            super().build_extension(ext)
            build.write_sidecar(self.get_ext_fullpath(ext.name), keys[ext.name])

        def copy_extensions_to_source(self):
            super().copy_extensions_to_source()
            for ext in self.extensions:
                inplace = self.inplace
                try:
                    self.inplace = True
                    dest = self.get_ext_fullpath(ext.name)
                finally:
                    self.inplace = inplace
                build.write_sidecar(dest, keys[ext.name])

    return exts, {"build_ext": BuildExtWithKeys}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["wae_fast", "wae_fast.*"]) + ["wae_fast.kernels", "wae_fast._csrc"],
    package_dir={"wae_fast.kernels": "kernels", "wae_fast._csrc": "csrc"},
    # the sources a first-use build compiles (wae_fast/build.py hashes the same files)
    package_data={"wae_fast._csrc": ["cpu/*.cpp", "cpu/*.h", "cuda/*.cu", "cuda/*.cuh", "cuda/*.h",
                                     "cuda/*.cpp", "cuda_emu/*.cpp", "cuda_emu/*.h",
                                     "cuda_emu/shim/*.h", "include/wae_fast/*.h"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
