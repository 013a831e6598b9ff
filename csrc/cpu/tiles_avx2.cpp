// The CPU tile kernels (mmd_cpu_kernel.h) for AVX2+FMA with 32-byte vectors, in their own
// translation unit: the target options below are this file's compile flags (see tiles_avx512.cpp
// for why they are written here and why the headers come first).  mmd_cpu.cpp calls these only
// after checking CPU and OS support (cpu_isa()).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "wae_fast/tile_math.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma")
#define WAE_CPU_NS wae_cpu_avx2
#define WAE_CPU_VBYTES 32
#define WAE_CPU_PAIR_GRAD 1  // fp32 middle-d gradient path (mmd_cpu_kernel.h pair_d_grad)
#include "mmd_cpu_kernel.h"
#endif
