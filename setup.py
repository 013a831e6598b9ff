"""Build script: the pure-Python package, the Triton kernels (kernels/ installed as
``wae_fast.kernels``) and, where possible, the C++ extensions from csrc/.

Extensions (torch.utils.cpp_extension; needs torch importable at build time, so install with
``--no-build-isolation``):

* ``wae_fast._C``      CPU backend (CppExtension) from csrc/cpu/*.cpp, wherever a C++ compiler exists.
* ``wae_fast._C_cuda`` CUDA backend (CUDAExtension) from csrc/cuda/*, only when nvcc and a CUDA
  build of torch are present.

Switches: WAE_FAST_BUILD_CPP=0/1 and WAE_FAST_BUILD_CUDA=0/1 skip or force a part (unset: auto).
Neither part is needed to import wae_fast; a missing one is JIT-built on first use or skipped.
"""
import glob
import os

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
    cpp_src = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if cpp_src and want_cpp is not False:
        exts.append(cpp_extension.CppExtension(
            "wae_fast._C", cpp_src, include_dirs=include,
            extra_compile_args=["-O3", "-fopenmp", "-std=c++17"], extra_link_args=["-fopenmp"]))
    cuda_src = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    has_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if cuda_src and (want_cuda or (want_cuda is None and has_cuda)):
        if not has_cuda:
            raise RuntimeError("WAE_FAST_BUILD_CUDA=1 but torch is not a CUDA build or nvcc/CUDA_HOME is missing")
        exts.append(cpp_extension.CUDAExtension(
            "wae_fast._C_cuda", cuda_src, include_dirs=include,
            extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]}))
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
