// The CPU tile kernels (mmd_cpu_kernel.h) for AVX-512 F/BW/VL/DQ with 64-byte vectors, in their
// own translation unit.  The target options below are this file's compile flags (the same code
// generation as -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma for everything after them;
// neither setuptools nor torch's ninja build has per-file flags, so setup.py, the first-use build
// and `pip install .` compile it alike).  The headers come first: shared inline code keeps the
// default target (the tile math is always_inline, so it is generated inside these kernels with
// their options), and every kernel lives in namespace wae_cpu_avx512, so no symbol compiled for
// AVX-512 can be picked by the linker for another file.  mmd_cpu.cpp calls these only after
// checking CPU and OS support (cpu_isa()).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "wae_fast/tile_math.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2")
#define WAE_CPU_NS wae_cpu_avx512
#define WAE_CPU_VBYTES 64
#define WAE_CPU_PAIR_GRAD 1  // fp32 middle-d gradient path (mmd_cpu_kernel.h pair_d_grad)
#define WAE_CPU_RCP14 1  // fp32 IMQ: vrcp14ps + Newton (mmd_cpu_kernel.h VRcp14)
#include "mmd_cpu_kernel.h"
#endif
