// Every inline PTX instruction of the wae_fast kernels, one wrapper each, with its host model.
//
// nvcc (device code): the wrapper is the instruction.  The emulated build (cuda_emu: the same
// sources compiled by g++ with __CUDA_ARCH__ = 900, csrc/cuda_emu) runs the host model instead:
//   * exact where the PTX ISA specifies the result exactly;
//   * approximate instructions return the correctly rounded value MOVED BY THE DOCUMENTED
//     WORST-CASE ERROR, in a direction chosen by a hash of the input bits (so both signs occur,
//     deterministically).  An exact model would hide a missing Newton step.
//       rcp.approx.ftz.f32   1 ulp (PTX ISA: max 1 ulp over the full range)
//       sqrt.approx.ftz.f32  1 ulp (PTX ISA: max relative error 2^-23)
//       ex2.approx.ftz.f32   2 ulp (PTX ISA: max 2 ulp; used by the emulated __expf)
//       rcp.approx.ftz.f64   the reciprocal of the input truncated to its upper 32 bits (the
//                            hardware's MUFU.RCP64H works on them: 20 mantissa bits), then
//                            moved by a relative 2^-22: ~2^-19.5 in all (conservative).
//   .ftz: subnormal inputs and results flush to sign-preserving zero.
// Nothing here is used by the CPU backend (its tile math takes the host branch of tile_math.h).
#pragma once

#include <cstdint>
#include <cstring>
#include <cmath>

#if defined(__CUDACC__)
#define WAE_PTX_FN __device__ __forceinline__
#else
#define WAE_PTX_FN inline
#endif

namespace wae_fast {
namespace ptx_model {

#if !defined(__CUDACC__)
inline uint32_t bits(float v) { uint32_t u; std::memcpy(&u, &v, 4); return u; }
inline uint64_t bits(double v) { uint64_t u; std::memcpy(&u, &v, 8); return u; }
inline float f32(uint32_t u) { float v; std::memcpy(&v, &u, 4); return v; }
inline double f64(uint64_t u) { double v; std::memcpy(&v, &u, 8); return v; }

//! +1 or -1 from the input bits (a mixing hash: both directions occur).
inline int dir(uint64_t b) {
  b ^= b >> 33; b *= 0xff51afd7ed558ccdull; b ^= b >> 33;
  return (b & 1) ? 1 : -1;
}
inline float ftz(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v; }
inline double ftz(double v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0, v) : v; }

//! v moved by n ulps (toward +inf for s > 0); zero, inf and nan unchanged.
inline float ulps(float v, int n, int s) {
  if (v == 0.0f || !std::isfinite(v)) return v;
  for (int i = 0; i < n; ++i) v = std::nextafter(v, s > 0 ? INFINITY : -INFINITY);
  return v;
}

inline float rcp_approx_ftz_f32(float x) {
  x = ftz(x);
  return ftz(ulps(1.0f / x, 1, dir(bits(x))));
}
inline float sqrt_approx_ftz_f32(float x) {
  x = ftz(x);
  return ulps(std::sqrt(x), 1, dir(bits(x)));
}
inline float ex2_approx_ftz_f32(float x) {
  x = ftz(x);
  return ftz(ulps(static_cast<float>(std::exp2(static_cast<double>(x))), 2, dir(bits(x))));
}
inline double rcp_approx_ftz_f64(double x) {
  x = ftz(x);
  if (x == 0.0 || !std::isfinite(x)) return 1.0 / x;
  const double hi = f64(bits(x) & 0xFFFFFFFF00000000ull);  // sign, exponent, 20 mantissa bits
  return ftz((1.0 / hi) * (1.0 + dir(bits(x)) * 0x1p-22));
}
#endif

}  // namespace ptx_model

#if defined(__CUDACC__)
WAE_PTX_FN float ptx_rcp_approx_ftz_f32(float x) { float y; asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
WAE_PTX_FN double ptx_rcp_approx_ftz_f64(double x) { double y; asm("rcp.approx.ftz.f64 %0, %1;" : "=d"(y) : "d"(x)); return y; }
WAE_PTX_FN float ptx_sqrt_approx_ftz_f32(float x) { float y; asm("sqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
WAE_PTX_FN float ptx_ex2_approx_ftz_f32(float x) { float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y; }
#else
WAE_PTX_FN float ptx_rcp_approx_ftz_f32(float x) { return ptx_model::rcp_approx_ftz_f32(x); }
WAE_PTX_FN double ptx_rcp_approx_ftz_f64(double x) { return ptx_model::rcp_approx_ftz_f64(x); }
WAE_PTX_FN float ptx_sqrt_approx_ftz_f32(float x) { return ptx_model::sqrt_approx_ftz_f32(x); }
WAE_PTX_FN float ptx_ex2_approx_ftz_f32(float x) { return ptx_model::ex2_approx_ftz_f32(x); }
#endif

}  // namespace wae_fast
