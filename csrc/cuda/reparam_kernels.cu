// wae_fast CUDA reparameterised sampling: z = mu + exp(logvar / 2) * eps with
// eps[i] = tl.randn(seed, i) (Triton's Philox 4x32-10 + Box-Muller stream, flat int64 index),
// regenerated in the backward, never stored.  No torch headers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "portable.h"
#include "wae_cuda.h"
#include "wae_fast/tile_math.h"

namespace {

__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ double ld(double v) { return v; }
__device__ __forceinline__ float ld(__half v) { return __half2float(v); }
__device__ __forceinline__ float ld(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(double* p, double v) { *p = v; }
__device__ __forceinline__ void st(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <class TI>
struct CT { typedef float type; };
template <>
struct CT<double> { typedef double type; };

template <class TI>
__global__ void reparam_fwd_kernel(const TI* __restrict__ mu, const TI* __restrict__ logvar, TI* __restrict__ z,
                                   int64_t numel, uint64_t seed) {
  typedef typename CT<TI>::type T;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const T eps = T(wae_fast::philox_randn_tl(seed, uint64_t(i)));
    const T lv = T(ld(logvar[i]));
    const T m = T(ld(mu[i]));
    st(z + i, wae_fast::nan_unless_finite(m + exp(lv * T(0.5)) * eps, m, lv));  // hostile input -> NaN
  }
}

template <class TI>
__global__ void reparam_bwd_kernel(const TI* __restrict__ gz, const TI* __restrict__ logvar, TI* __restrict__ glv,
                                   int64_t numel, uint64_t seed) {
  typedef typename CT<TI>::type T;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const T eps = T(wae_fast::philox_randn_tl(seed, uint64_t(i)));
    const T lv = T(ld(logvar[i]));
    st(glv + i, wae_fast::nan_unless_finite(T(ld(gz[i])) * eps * exp(lv * T(0.5)) * T(0.5), lv));
  }
}

unsigned grid_for(int64_t numel) {
  int64_t b = (numel + 255) / 256;
  return unsigned(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

template <class TI>
int fwd(const void* mu, const void* lv, void* z, int64_t numel, uint64_t seed, cudaStream_t s) {
  if (numel > 0)
    WAE_LAUNCH((reparam_fwd_kernel<TI>), grid_for(numel), 256, 0, s, static_cast<const TI*>(mu),
               static_cast<const TI*>(lv), static_cast<TI*>(z), numel, seed);
  return int(cudaGetLastError());
}

template <class TI>
int bwd(const void* gz, const void* lv, void* g, int64_t numel, uint64_t seed, cudaStream_t s) {
  if (numel > 0)
    WAE_LAUNCH((reparam_bwd_kernel<TI>), grid_for(numel), 256, 0, s, static_cast<const TI*>(gz),
               static_cast<const TI*>(lv), static_cast<TI*>(g), numel, seed);
  return int(cudaGetLastError());
}

}  // namespace

extern "C" int wae_reparam_fwd(int dtype, const void* mu, const void* logvar, void* z, int64_t numel, uint64_t seed,
                               cudaStream_t s) {
  switch (dtype) {
    case WAE_F32: return fwd<float>(mu, logvar, z, numel, seed, s);
    case WAE_F64: return fwd<double>(mu, logvar, z, numel, seed, s);
    case WAE_F16: return fwd<__half>(mu, logvar, z, numel, seed, s);
    case WAE_BF16: return fwd<__nv_bfloat16>(mu, logvar, z, numel, seed, s);
  }
  return int(cudaErrorInvalidValue);
}

extern "C" int wae_reparam_bwd(int dtype, const void* gz, const void* logvar, void* glv, int64_t numel, uint64_t seed,
                               cudaStream_t s) {
  switch (dtype) {
    case WAE_F32: return bwd<float>(gz, logvar, glv, numel, seed, s);
    case WAE_F64: return bwd<double>(gz, logvar, glv, numel, seed, s);
    case WAE_F16: return bwd<__half>(gz, logvar, glv, numel, seed, s);
    case WAE_BF16: return bwd<__nv_bfloat16>(gz, logvar, glv, numel, seed, s);
  }
  return int(cudaErrorInvalidValue);
}
