"""Build script: the pure-Python package, the Triton kernels (kernels/ installed as
``wae_fast.kernels``) and, where possible, the C++ extensions from csrc/.

Extensions (torch.utils.cpp_extension; needs torch importable at build time, so install with
``--no-build-isolation``):

* ``wae_fast._C``      CPU backend (CppExtension) from csrc/cpu/*.cpp, wherever a C++ compiler exists.
* ``wae_fast._C_cuda`` CUDA backend (CUDAExtension) from csrc/cuda/*, only when nvcc and a CUDA
  build of torch are present.
* ``wae_fast._C_cuda_emu`` the SAME csrc/cuda sources compiled by the host C++ compiler against the
  emulator in csrc/cuda_emu (threads of a block as fibers on the CPU): the slow testing backend
  "cuda_emu", wherever a C++ compiler exists (x86-64 Linux).

Switches: WAE_FAST_BUILD_CPP=0/1, WAE_FAST_BUILD_CUDA=0/1 and WAE_FAST_BUILD_CUDA_EMU=0/1 skip or
force a part (unset: auto);
WAE_FAST_CUDA_ARCHS lists the SM architectures of the CUDA build; when it is unset, a set
TORCH_CUDA_ARCH_LIST is honoured (torch's BuildExtension turns it into -gencode flags, e.g.
"9.0a" or "8.0;9.0+PTX"), and otherwise the default is sm_80 and sm_90.
Neither part is needed to import wae_fast; a missing one is JIT-built on first use or skipped.
"""
import glob
import os
import platform
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _switch(name):
    v = os.environ.get(name, "").strip().lower()
    return None if v == "" else v not in ("0", "false", "no", "off")


def _extensions():
    want_cpp, want_cuda = _switch("WAE_FAST_BUILD_CPP"), _switch("WAE_FAST_BUILD_CUDA")
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except ImportError:
        if want_cpp or want_cuda:
            raise RuntimeError("building the wae_fast extensions needs torch installed first "
                               "(pip install torch, then pip install --no-build-isolation .)")
        return [], {}
    exts = []
    include = [os.path.join(HERE, "csrc", "include")]
    # CPU backend.  No -march flags: the tile kernels are compiled for the baseline x86-64 ISA
    # and for AVX2+FMA inside mmd_cpu.cpp (#pragma GCC target) and chosen at run time, so the
    # wheel runs on any x86-64 machine.  torch's cpp_extension picks the C++ standard.
    cpp_src = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if cpp_src and want_cpp is not False:
        exts.append(cpp_extension.CppExtension(
            "wae_fast._C", cpp_src, include_dirs=include + [os.path.join(HERE, "csrc", "cpu")],
            depends=sorted(glob.glob(os.path.join("csrc", "cpu", "*.h")) + glob.glob(os.path.join("csrc", "include", "wae_fast", "*.h"))),
            extra_compile_args=["-O3", "-fopenmp", "-Wno-psabi"], extra_link_args=["-fopenmp"]))
    # Emulated CUDA backend: csrc/cuda_emu/*.cpp include the csrc/cuda sources unchanged.
    # -ffp-contract=off: no FMA the source does not spell (nvcc may contract; see README).
    want_emu = _switch("WAE_FAST_BUILD_CUDA_EMU")
    emu_src = sorted(glob.glob(os.path.join("csrc", "cuda_emu", "*.cpp")))
    emu_ok = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
    if emu_src and (want_emu or (want_emu is None and emu_ok)):
        if not emu_ok:
            raise RuntimeError("WAE_FAST_BUILD_CUDA_EMU=1 but the emulator's fiber switch needs x86-64 Linux")
        emu_dir = os.path.join(HERE, "csrc", "cuda_emu")
        exts.append(cpp_extension.CppExtension(
            "wae_fast._C_cuda_emu", emu_src,
            include_dirs=include + [os.path.join(HERE, "csrc", "cuda"), emu_dir, os.path.join(emu_dir, "shim")],
            depends=sorted(glob.glob(os.path.join("csrc", "cuda", "*")) + glob.glob(os.path.join("csrc", "cuda_emu", "*.h"))
                           + glob.glob(os.path.join("csrc", "cuda_emu", "shim", "*.h"))
                           + glob.glob(os.path.join("csrc", "include", "wae_fast", "*.h"))),
            define_macros=[("WAE_CUDA_EMU", "1")],
            extra_compile_args=["-O2", "-ffp-contract=off", "-fno-fast-math", "-Wno-unknown-pragmas"]))
    # CUDA backend: kernels in .cu (no torch headers) + binding.cpp.
    cuda_src = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
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
            "wae_fast._C_cuda", cuda_src, include_dirs=include + [os.path.join(HERE, "csrc", "cuda")],
            depends=sorted(glob.glob(os.path.join("csrc", "cuda", "*.cuh")) + glob.glob(os.path.join("csrc", "cuda", "*.h"))
                           + glob.glob(os.path.join("csrc", "include", "wae_fast", "*.h"))),
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"] + gencode}))
    if not exts:
        return [], {}
    return exts, {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["wae_fast", "wae_fast.*"]) + ["wae_fast.kernels"],
    package_dir={"wae_fast.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
