// cuda_emu: what the wae_fast CUDA sources (csrc/cuda) need to compile with g++ for the host and
// run on the CPU, thread by thread.  The kernel translation units (csrc/cuda_emu/*_emu.cpp)
// include this header, define __CUDA_ARCH__ = 900 (every device branch is the code that runs)
// and include the UNCHANGED .cu file; the CUDA headers they include (cuda_runtime.h, mma.h,
// cuda_fp16.h, cuda_bf16.h) resolve to the shims in csrc/cuda_emu/shim.
//
// Execution model (runtime.cpp):
//  * a launch runs its blocks one after another on the calling thread; the threads of a block
//    are fibers (own stacks, a context switch of ours: callee-saved registers + rsp), scheduled
//    cooperatively in thread-index order (reversed with WAE_CUDA_EMU_ORDER=reverse: a result
//    that changes with the order reveals a race inside a block); a thread runs until it
//    reaches a barrier, a warp collective, or its end;
//  * __syncthreads releases when EVERY thread of the block waits at the SAME barrier (call
//    site); a thread that exits while others wait, or threads waiting at different barriers,
//    is a launch error naming the kernel, block, thread and site;
//  * warp collectives (__syncwarp, shuffles, votes, wmma load/store/mma) rendezvous: the lanes
//    of the mask deposit their operands, the last one to arrive performs the operation for all;
//  * shared memory: one arena per block (dynamic buffer first, then the static WAE_SHARED
//    arrays), filled with 0xFF bytes (NaN) at every block start, so a read of a word no thread
//    wrote shows up as NaN; every access through a checked_ptr (wae_fast::smem_ptr) is
//    bounds-checked against its array (dyn_slice / sub_slice make arrays of parts of a buffer);
//    limits of sm_90 (48 KB static, the dynamic size opted in with cudaFuncSetAttribute,
//    227 KB in all) are enforced;
//  * kernel arguments are copied per launch and passed by value to every thread, as on the GPU;
//  * sanitizer checks (the counterparts of compute-sanitizer's memcheck, initcheck, racecheck;
//    switch WAE_CUDA_EMU_CHECKS, runtime.cpp "checks"): the kernel translation units are compiled
//    with GCC's -fsanitize=thread instrumentation but without its library, so EVERY load and
//    store of kernel code calls the runtime (__tsan_readN / __tsan_writeN), which checks it
//    against the launch's memory:
//    shared memory (bounds of the arrays and dynamic buffer, a written-bit per word since the
//    block start, the reading/writing threads per word and barrier interval), the device memory
//    the caller registered (DeviceMemory: tensors, scratch; a written-bit per byte of the
//    uninitialised ones), the thread's own stack, the kernel parameters and the module's
//    static data.  Barriers are identified by call site and occurrence.
// What it cannot show: timing, memory ordering between blocks (blocks never overlap here),
// races between blocks or through global memory, accesses g++'s code makes differently from
// nvcc's (a value kept in a register by one and reloaded from shared memory by the other),
// occupancy and register use (tests/test_csrc_compile.py checks ptxas for that), and the exact
// accumulation order of the hardware's tensor-core units (mma.h documents the model).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>
#include <string>
#include <type_traits>
#include <utility>

#include <math.h>  // float overloads of exp/fma/... in the global namespace, as CUDA has them

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
// Static shared arrays must be spelled WAE_SHARED (csrc/cuda/portable.h) so the emulator can
// give every block its own copy: a bare __shared__ does not compile here.
#define __shared__ __shared___is_not_emulated_use_WAE_SHARED

struct uint3 {  // default member initialisers: g_ctx is constant-initialised (no TLS init call)
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
  cudaErrorAssert = 710,
};
typedef struct wae_emu_stream* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrComputeCapabilityMajor = 75, cudaDevAttrComputeCapabilityMinor = 76 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace wae_emu {

//! Index state of the running fiber (set by the scheduler at every switch).
struct Ctx {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
extern thread_local Ctx g_ctx;

constexpr int kArch = 900;
constexpr size_t kStaticSmemLimit = 48 * 1024;
constexpr size_t kSmemOptinLimit = 227 * 1024;
constexpr int kMaxThreadsPerBlock = 1024;

// --- called by the kernels (through the macros of portable.h and the shims) -----------------
void syncthreads(const char* file, int line);
[[noreturn]] void fail(const char* what, const char* file, int line);
void* shared_alloc(size_t bytes, size_t align, const char* name);
unsigned char* dynamic_shared();

[[noreturn]] void shared_out_of_bounds(const char* name, long long index, long long size);
const unsigned char* dynamic_shared_end();
//! Names [p, p + bytes) of shared memory (a slice) for the messages of the checks.
void name_shared(const void* p, size_t bytes, const char* name);

//! Pointer into shared memory that knows the array it belongs to (its name and bounds): every
//! element access is bounds-checked and a launch error names the array, the index, the block
//! and the thread.  Arithmetic keeps the array; slice() narrows it to a sub-array.  Under nvcc
//! the same spelling (wae_fast::smem_ptr, portable.h) is a raw pointer.
template <class T>
struct checked_ptr {
  T* p = nullptr;
  T* lo = nullptr;
  T* hi = nullptr;
  const char* name = "?";

  T& operator[](int64_t i) const {
    T* q = p + i;
    if (q < lo || q >= hi) shared_out_of_bounds(name, (long long)(q - lo), (long long)(hi - lo));
    return *q;
  }
  T& operator*() const { return (*this)[0]; }
  checked_ptr operator+(int64_t i) const { return checked_ptr{p + i, lo, hi, name}; }
  checked_ptr operator-(int64_t i) const { return checked_ptr{p - i, lo, hi, name}; }
  //! the elements [off, off + count) as an array of their own, named ``sub``
  checked_ptr slice(int64_t off, int64_t count, const char* sub) const {
    if (p + off < lo || p + off + count > hi) shared_out_of_bounds(name, (long long)(p + off + count - lo), (long long)(hi - lo));
    name_shared(p + off, size_t(count) * sizeof(T), sub);
    return checked_ptr{p + off, p + off, p + off + count, sub};
  }
  //! the largest index i with p[0..i) inside the array (for footprint checks of wmma)
  bool fits(int64_t last) const { return p >= lo && p + last < hi; }
  operator T*() const { return p; }  // unchecked raw access (the CUDA API calls)
};

template <class T>
checked_ptr<T> shared_array(size_t count, const char* name) {
  T* p = static_cast<T*>(shared_alloc(count * sizeof(T), 128, name));
  return checked_ptr<T>{p, p, p + count, name};
}

//! The slice [byte_off, byte_off + count * sizeof(T)) of the dynamic shared buffer as an array.
template <class T>
checked_ptr<T> dyn_slice(unsigned char* base, size_t byte_off, size_t count, const char* name) {
  T* p = reinterpret_cast<T*>(base + byte_off);
  if (reinterpret_cast<const unsigned char*>(p + count) > dynamic_shared_end())
    shared_out_of_bounds(name, (long long)(byte_off + count * sizeof(T)),
                         (long long)(dynamic_shared_end() - base));
  name_shared(p, count * sizeof(T), name);
  return checked_ptr<T>{p, p, p + count, name};
}

//! Warp rendezvous: the calling lane deposits ``arg``; when every lane of ``mask`` has arrived
//! at a collective of the same ``what``, the last one calls op(args of lanes 0..31, mask, ctx)
//! (args of lanes outside the mask are null) and all continue.  Mismatched collectives or masks
//! are launch errors.
using WarpOp = void (*)(void* const* lane_args, unsigned mask, const void* ctx);
void warp_collective(const char* what, unsigned mask, void* arg, WarpOp op, const void* ctx, const char* file,
                     int line);
inline unsigned lane_id() { return (g_ctx.thread_idx.x + g_ctx.block_dim.x * (g_ctx.thread_idx.y + g_ctx.block_dim.y * g_ctx.thread_idx.z)) & 31u; }

// --- host side: launches and the runtime API ----------------------------------------------
using Body = void (*)(void*);
cudaError_t launch_raw(const char* name, const void* kern, dim3 grid, dim3 block, size_t smem, Body body, void* arg,
                       size_t arg_bytes);
cudaError_t set_max_dynamic_smem(const void* kern, int bytes);
cudaError_t record(cudaError_t e, const char* msg);
//! Integer from the environment (test knobs of the host launch geometry), else ``def``.
long long env_int(const char* name, long long def);

template <class... P, class... A>
void launch(const char* name, void (*kern)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t, A&&... args) {
  // the arguments converted to the parameter types once, as the CUDA runtime copies them
  struct Pack {
    void (*k)(P...);
    std::tuple<std::decay_t<P>...> a;
  } pack{kern, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  static_assert(sizeof(std::tuple<std::decay_t<P>...>) <= 4096, "kernel parameters over CUDA's 4 KB");
  launch_raw(name, reinterpret_cast<const void*>(kern), grid, block, smem,
             [](void* p) {
               auto* pk = static_cast<Pack*>(p);
               std::apply(pk->k, pk->a);  // every thread gets its own copies of the by-value params
             },
             &pack, sizeof pack);
}

//! Device memory of the launches that follow, until destroyed (the tensors and scratch buffers
//! handed to the kernels): with WAE_CUDA_EMU_CHECKS memcheck, a kernel access outside every
//! registered range (and outside shared memory, its own stack, the kernel parameters and the
//! module's static data) is an error; with initcheck, a read of a byte of an ``initialised ==
//! false`` range (outputs, scratch) that no kernel (or cudaMemsetAsync) wrote since it was
//! registered is an error.  Launches while nothing is registered skip both global checks.
class DeviceMemory {
 public:
  DeviceMemory(const void* p, size_t bytes, const char* name, bool initialised);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

 private:
  int id_;
};

//! Kernel launches of this process (valid configurations; counted before the kernel runs),
//! and the names of the launches since the last reset (at most 100000 kept): tests count
//! launches, not op calls (issue 15).
unsigned long long launch_count();
std::vector<std::string> launch_names();
void reset_launch_names();

enum : unsigned { CHECK_MEM = 1, CHECK_INIT = 2, CHECK_RACE = 4 };
//! The checks the next launch runs (WAE_CUDA_EMU_CHECKS: "all", "none", or a comma list of
//! memcheck, initcheck, racecheck; unset: none), as CHECK_* bits.
unsigned checks_from_env();

}  // namespace wae_emu

#define threadIdx (::wae_emu::g_ctx.thread_idx)
#define blockIdx (::wae_emu::g_ctx.block_idx)
#define blockDim (::wae_emu::g_ctx.block_dim)
#define gridDim (::wae_emu::g_ctx.grid_dim)
#define warpSize 32
#define __syncthreads() ::wae_emu::syncthreads(__FILE__, __LINE__)
#define __trap() ::wae_emu::fail("__trap()", __FILE__, __LINE__)

// --- warp collectives (full semantics of the mask; the kernels use none today) -----------------
namespace wae_emu {
template <class T>
struct ShflArg {
  T v;
  int src;  // source lane (absolute) computed by the caller's flavour
  T out;
};
template <class T>
void shfl_op(void* const* a, unsigned mask, const void*) {
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    auto* me = static_cast<ShflArg<T>*>(a[l]);
    const int s = me->src;
    me->out = (s >= 0 && s < 32 && (mask >> s & 1u)) ? static_cast<ShflArg<T>*>(a[s])->v : me->v;
  }
}
template <class T>
T shfl_impl(unsigned mask, T v, int src, const char* file, int line) {
  ShflArg<T> arg{v, src, v};
  warp_collective("shfl", mask, &arg, &shfl_op<T>, nullptr, file, line);
  return arg.out;
}
struct VoteArg {
  int pred;
  unsigned out;
};
inline void ballot_op(void* const* a, unsigned mask, const void*) {
  unsigned b = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && static_cast<VoteArg*>(a[l])->pred) b |= 1u << l;
  for (int l = 0; l < 32; ++l)
    if (mask >> l & 1u) static_cast<VoteArg*>(a[l])->out = b;
}
inline unsigned ballot_impl(unsigned mask, int pred, const char* file, int line) {
  VoteArg arg{pred != 0, 0};
  warp_collective("vote", mask, &arg, &ballot_op, nullptr, file, line);
  return arg.out;
}
inline void nop_op(void* const*, unsigned, const void*) {}
//! srcLane of __shfl_sync within segments of ``width`` lanes
inline int shfl_src_idx(int src, int width) { return int(lane_id() & ~unsigned(width - 1)) + (src & (width - 1)); }
inline int shfl_src_down(unsigned d, int width) {
  const int l = int(lane_id()), s = l + int(d);
  return (s & ~(width - 1)) == (l & ~(width - 1)) ? s : l;
}
inline int shfl_src_up(unsigned d, int width) {
  const int l = int(lane_id()), s = l - int(d);
  return s >= 0 && (s & ~(width - 1)) == (l & ~(width - 1)) ? s : l;
}
inline int shfl_src_xor(int m, int width) {
  const int l = int(lane_id()), s = l ^ m;
  return (s & ~(width - 1)) == (l & ~(width - 1)) ? s : l;
}
}  // namespace wae_emu

#define __syncwarp(...) ::wae_emu::warp_collective("syncwarp", (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 0xffffffffu, nullptr, &::wae_emu::nop_op, nullptr, __FILE__, __LINE__)
#define __shfl_sync(mask, v, src, ...) ::wae_emu::shfl_impl(mask, v, ::wae_emu::shfl_src_idx(src, (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 32), __FILE__, __LINE__)
#define __shfl_down_sync(mask, v, d, ...) ::wae_emu::shfl_impl(mask, v, ::wae_emu::shfl_src_down(d, (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 32), __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, d, ...) ::wae_emu::shfl_impl(mask, v, ::wae_emu::shfl_src_up(d, (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 32), __FILE__, __LINE__)
#define __shfl_xor_sync(mask, v, m, ...) ::wae_emu::shfl_impl(mask, v, ::wae_emu::shfl_src_xor(m, (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 32), __FILE__, __LINE__)
#define __ballot_sync(mask, pred) ::wae_emu::ballot_impl(mask, pred, __FILE__, __LINE__)
#define __any_sync(mask, pred) (::wae_emu::ballot_impl(mask, pred, __FILE__, __LINE__) != 0u)
#define __all_sync(mask, pred) (::wae_emu::ballot_impl(mask, pred, __FILE__, __LINE__) == (mask))

// --- float intrinsics ----------------------------------------------------------------------
#include "wae_fast/ptx.h"
//! __expf: ex2.approx.ftz.f32 of x * log2(e) rounded to fp32 (what nvcc emits), with the ptx.h
//! model of ex2.approx (2 ulp).
inline float __expf(float x) { return ::wae_fast::ptx_ex2_approx_ftz_f32(x * 1.4426950408889634f); }
inline float __fdividef(float a, float b) { return a * ::wae_fast::ptx_rcp_approx_ftz_f32(b); }
