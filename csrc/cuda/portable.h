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
//   dyn_slice<T>(buf, byte_off, n, "name")  a T array inside the dynamic buffer
//   sub_slice(p, off, n, "name")       a sub-array of a shared array
//   smem_ptr<T>                        pointer into shared memory: T* under nvcc; in the
//                                      emulator a checked pointer that knows its array (name,
//                                      bounds): every access is bounds-checked, slices of the
//                                      dynamic buffer included (overflowing one slice into the
//                                      next is an error)
//   gmem_ptr<T>                        pointer into global memory: T* in both builds today (the
//                                      emulator may check it against the launch's tensors).
#pragma once

#define WAE_UNPAREN(...) __VA_ARGS__

#if defined(WAE_CUDA_EMU)
#include "wae_emu.h"
#define WAE_LAUNCH(kern, grid, block, smem, stream, ...) \
  ::wae_emu::launch(#kern, WAE_UNPAREN kern, grid, block, smem, stream, __VA_ARGS__)
#define WAE_SHARED(T, name, count) const ::wae_fast::smem_ptr<T> name = ::wae_emu::shared_array<T>(count, #name)
#define WAE_DYN_SMEM(name) unsigned char* const name = ::wae_emu::dynamic_shared()
namespace wae_fast {
template <class T> using smem_ptr = ::wae_emu::checked_ptr<T>;
template <class T> using gmem_ptr = T*;
template <class T>
smem_ptr<T> dyn_slice(unsigned char* base, size_t byte_off, size_t count, const char* name) {
  return ::wae_emu::dyn_slice<T>(base, byte_off, count, name);
}
template <class T>
smem_ptr<T> sub_slice(const smem_ptr<T>& p, int64_t off, int64_t count, const char* name) {
  return p.slice(off, count, name);
}
}  // namespace wae_fast
#else
#define WAE_LAUNCH(kern, grid, block, smem, stream, ...) WAE_UNPAREN kern<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define WAE_SHARED(T, name, count) __shared__ __align__(128) T name[count]
#define WAE_DYN_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
namespace wae_fast {
template <class T> using smem_ptr = T*;
template <class T> using gmem_ptr = T*;
//! T array at byte offset byte_off of the dynamic shared buffer (count elements: checked by the
//! emulator only)
template <class T>
__device__ __forceinline__ T* dyn_slice(unsigned char* base, size_t byte_off, size_t, const char*) {
  return reinterpret_cast<T*>(base + byte_off);
}
//! p + off as a sub-array of count elements (checked by the emulator only)
template <class T>
__device__ __forceinline__ T* sub_slice(T* p, int64_t off, int64_t, const char*) {
  return p + off;
}
}  // namespace wae_fast
#endif
