// Launch and memory-access spelling of the wae_fast CUDA kernels: ONE source, two builds.
//
//  * nvcc (the real GPU build): the macros below are exactly the CUDA spelling they replace
//    (<<<>>>, __shared__ arrays, extern __shared__), the pointer aliases are raw pointers.
//  * the emulated build (WAE_CUDA_EMU, csrc/cuda_emu: g++ with __CUDA_ARCH__ = 900, the threads
//    of a block run as fibers on the CPU) maps them onto the emulator's runtime (wae_emu.h).
//
//   WAE_LAUNCH((kernel<T, ...>), grid, block, smem_bytes, stream, args...)   kernel launch
//   WAE_SHARED(T, name, count)         static shared array (__shared__ __align__(128) T name[count])
//   WAE_DYN_SMEM(name)                 the dynamic shared buffer (unsigned char name[])
//   smem_ptr<T> / gmem_ptr<T>          pointers into shared / global memory: raw pointers in
//                                      both builds today; the emulator can make them checked
//                                      pointer types (bounds, initialisation, races) without
//                                      touching the kernels.
#pragma once

#define WAE_UNPAREN(...) __VA_ARGS__

#if defined(WAE_CUDA_EMU)
#include "wae_emu.h"
#define WAE_LAUNCH(kern, grid, block, smem, stream, ...) \
  ::wae_emu::launch(#kern, WAE_UNPAREN kern, grid, block, smem, stream, __VA_ARGS__)
#define WAE_SHARED(T, name, count) T* const name = ::wae_emu::shared_array<T>(count, #name)
#define WAE_DYN_SMEM(name) unsigned char* const name = ::wae_emu::dynamic_shared()
namespace wae_fast {
template <class T> using smem_ptr = T*;
template <class T> using gmem_ptr = T*;
}  // namespace wae_fast
#else
#define WAE_LAUNCH(kern, grid, block, smem, stream, ...) WAE_UNPAREN kern<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define WAE_SHARED(T, name, count) __shared__ __align__(128) T name[count]
#define WAE_DYN_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
namespace wae_fast {
template <class T> using smem_ptr = T*;
template <class T> using gmem_ptr = T*;
}  // namespace wae_fast
#endif
