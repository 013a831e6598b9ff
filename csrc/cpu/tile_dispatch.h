// The CPU tile engine (mmd_cpu_kernel.h) as other translation units of the cpp backend call it
// (segments_cpu.cpp): the instruction-set choice of mmd_cpu.cpp (cpu_isa(): CPU and OS support,
// or WAE_FAST_CPU_ISA) and run_block of the chosen variant.  Defined in mmd_cpu.cpp.
#pragma once

#include <cstdint>

namespace wae_cpu_generic {
template <class T> struct Problem;
}

namespace wae_cpu_tiles {

//! The variant used now: 0 baseline, 1 AVX2, 2 AVX-512 (read once per call, outside parallel regions).
int current_isa();
//! Vector bytes of a variant's tiles (its column padding dp is a multiple of its lanes).
int64_t isa_vector_bytes(int isa);
//! run_block (mmd_cpu_kernel.h) of variant `isa`.
template <class T>
double run_block(const wae_cpu_generic::Problem<T>& pb, int64_t I0, int64_t I1, int64_t J0, int64_t J1, bool tri,
                 double* g_rows, double* g_cols, int isa);

}  // namespace wae_cpu_tiles
