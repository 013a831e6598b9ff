// Per-pair / per-tile math shared by the CPU backend (csrc/cpu) and the CUDA kernels
// (csrc/cuda).  No torch headers: this file must compile under g++ and nvcc alike.
//
// Conventions (DESIGN.md, wae_fast/contract.py), r = ||a - b||^2 of SHIFTED points:
//   IMQ  params C_s:     k = sum_s C_s / (C_s + r),   dk/dr = -sum_s C_s / (C_s + r)^2
//   RBF  params gamma_s: k = sum_s exp(-gamma_s r),   dk/dr = -sum_s gamma_s exp(-gamma_s r)
//   POLY params [gamma, coef0, degree], from the dot product t = a.b of UNSHIFTED points:
//        k = (gamma t + coef0)^degree, w = -(gamma / 2) dk/dt (see poly_eval)
//
// The functions are templates on the value type V, which may be a scalar (float, double) or a
// GCC vector-extension type (the CPU backend evaluates 8 pairs at once with them): they use
// only + - * / and the helpers below, never branches on values.
#pragma once

#include <cstdint>
#include <cmath>

#include "wae_fast/ptx.h"

#if defined(__CUDACC__)
#define WAE_HD __host__ __device__ __forceinline__
#else
#define WAE_HD inline __attribute__((always_inline))
#endif

namespace wae_fast {

enum KernelKind : int { KIND_IMQ = 0, KIND_RBF = 1, KIND_POLY = 2 };

//! Number of params of the polynomial kind: gamma, coef0, degree.
constexpr int kPolyParams = 3;
//! Largest polynomial degree the kernels accept (kernel_specs.Polynomial enforces it too).
constexpr int kMaxPolyDegree = 64;

//! Maximum number of kernel scales the compiled kernels accept (params beyond it are rejected
//! by the bindings with a clear error).
constexpr int kMaxScales = 16;

// ---------------------------------------------------------------------------------------------
// Hostile input (the contract in wae_fast/contract.py): a non-finite coordinate makes every value
// it touches NaN, and so does a point outside the supported magnitude range.  The range bounds the
// squared norm of a SHIFTED point: |a|^2 <= MaxSqNorm<T> (fp32 compute: 2^60, |a| <= 2^30 ~ 1.1e9;
// fp64: 2^496, |a| <= 2^248 ~ 4.5e74).  Inside it r <= 4 MaxSqNorm, so with the kernel constants
// validated by kernel_specs (fp32: [1e-18, 1e18], fp64: [1e-150, 1e150]) the paired reciprocal's
// (C1 + r)(C2 + r) and g r stay finite and normal: no overflow, no inf * 0.  Every backend maps a
// squared norm outside the range (or NaN) to NaN once per row, so the pairs of that row are NaN
// from the arithmetic itself (no host synchronisation); wae_fast/kernel_specs.py holds the same
// numbers (MAX_SQ_NORM).
// ---------------------------------------------------------------------------------------------
template <class T> struct MaxSqNorm;
template <> struct MaxSqNorm<float> { static constexpr float value = 1152921504606846976.0f; };     // 2^60
template <> struct MaxSqNorm<double> {  // 2^496 = (2^62)^8 2^0: a constant expression without hex floats
  static constexpr double value = 4611686018427387904.0 * 4611686018427387904.0 * 4611686018427387904.0 *
                                  4611686018427387904.0 * 4611686018427387904.0 * 4611686018427387904.0 *
                                  4611686018427387904.0 * 4611686018427387904.0;
};

//! A shifted point's squared norm, or NaN when it is outside the range (or NaN itself).
template <class T>
WAE_HD T norm_in_range(T n) { return n <= MaxSqNorm<T>::value ? n : T(NAN); }

//! v where every one of the finite-checked values is finite, else NaN (hostile-input contract:
//! reparameterize's z = mu + exp(logvar / 2) eps and its logvar gradient are NaN where mu or
//! logvar is not finite; logvar = -inf would otherwise give a finite z = mu).  a - a is 0 exactly
//! for finite a and NaN for inf/NaN (no fast-math anywhere in the build).
template <class T>
WAE_HD T nan_unless_finite(T v, T a, T b = T(0)) { return (a - a) + (b - b) == T(0) ? v : T(NAN); }

// ---------------------------------------------------------------------------------------------
// Squared distance from a dot product and the two squared norms, clamped at 0.  The clamp keeps
// NaN: a NaN distance must never count as r = 0 (a full kernel value; "r > 0 ? r : 0" did,
// found by the cuda_emu backend and by the hostile-input review).
// ---------------------------------------------------------------------------------------------
template <class T>
WAE_HD T clamp0(T r) { return r < T(0) ? T(0) : r; }

template <class T>
WAE_HD T sq_dist_from_dot(T dot, T na, T nb) { return clamp0(na + nb - T(2) * dot); }

// ---------------------------------------------------------------------------------------------
// IMQ: two scales with ONE division.  With a = C1 + r, b = C2 + r, inv = 1/(a b):
// 1/a = b inv, 1/b = a inv.  a b overflows fp32 only for r > ~1.8e19 (points ~4e9 apart), far
// beyond the 7-scale product's limit of r ~ 3.5e5 (DESIGN.md 5b); there, both terms flush to 0
// (their true values are < C / 1e19); r = max (clamp0 of an infinite r) gives inv = 0 and
// t1 = t2 = 0 with a, b finite: k = 0, dk/dr = 0.  Accuracy: ~2 ulp per reciprocal.
// k += C1/a + C2/b ; w -= C1/a^2 + C2/b^2
// ---------------------------------------------------------------------------------------------
//! 1/x.  Host (scalars, CPU vectors): an IEEE division.  GPU: the hardware approximation plus
//! Newton steps (fp32: one step, within ~1 ulp of 1/x; fp64: three steps from rcp.approx.ftz.f64)
//! instead of rcp.rn / __frcp_rn, whose IEEE slow path is a subroutine CALL that makes ptxas
//! spill inside the tile loops.  The IMQ arguments are positive; x = inf (the two-scale product
//! overflows, r > ~1.8e19) gives 0 as the correctly rounded reciprocal would.  x must not be 0
//! or subnormal (C_s >= ~1e-19): kernel_specs validates the constants.
template <class V, class S>
struct Recip {
  static WAE_HD V f(V x) { return S(1) / x; }
};
template <>
struct Recip<float, float> {
  static WAE_HD float f(float x) {
#if defined(__CUDA_ARCH__)
    const float y0 = ptx_rcp_approx_ftz_f32(x);
    const float y = fmaf(y0, fmaf(-x, y0, 1.0f), y0);
    return y0 == 0.0f ? y0 : y;
#else
    return 1.0f / x;
#endif
  }
};
template <>
struct Recip<double, double> {
  static WAE_HD double f(double x) {
#if defined(__CUDA_ARCH__)
    const double y0 = ptx_rcp_approx_ftz_f64(x);
    double y = y0;
#pragma unroll
    for (int it = 0; it < 3; ++it) y = fma(y, fma(-x, y, 1.0), y);
    return y0 == 0.0 ? y0 : y;
#else
    return 1.0 / x;
#endif
  }
};
template <class V, class S>
WAE_HD V recip(V x) { return Recip<V, S>::f(x); }

template <class V, class S>
WAE_HD void imq_pair(V r, S c1, S c2, V& k, V& w) {
  V a = r + c1, b = r + c2;
  V inv = recip<V, S>(a * b);
  V t1 = b * inv, t2 = a * inv;
  V k1 = c1 * t1, k2 = c2 * t2;
  k += k1 + k2;
  w -= k1 * t1 + k2 * t2;
}

template <class V, class S>
WAE_HD void imq_one(V r, S c, V& k, V& w) {
  V t = recip<V, S>(r + c);
  V kk = c * t;
  k += kk;
  w -= kk * t;
}

//! Multi-scale IMQ value and derivative dk/dr (sum over nscales <= kMaxScales constants in C),
//! ADDED to k and w.  Used by the CUDA tiles, the CPU tiles (V = 8 or 4 pairs in a GCC vector)
//! and the host tests alike.  On the GPU the loop runs to the compile-time bound with predicates
//! and no break, so it unrolls fully and C[] is indexed statically (kernel-parameter space; a
//! partly unrolled loop copies the params to local memory); the host stops at nscales.
template <class T> struct Finite;
template <> struct Finite<float> { static constexpr float max = 3.40282346638528859812e+38f; };
template <> struct Finite<double> { static constexpr double max = 1.79769313486231570815e+308; };

template <class V, class S>
WAE_HD void imq_eval(V r, const S* C, int nscales, V& k, V& w) {
  // The pairs see r = inf as the largest finite value (NaN kept): C + r stays finite, the paired
  // product overflows, inv = 0, and k = dk/dr = 0 instead of inf * 0 = NaN.  A single scale
  // keeps r itself: 1/(C + inf) = 0.
  const V rmax = V{} + Finite<S>::max;
  const V rp = r > rmax ? rmax : r;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int s = 0; s < kMaxScales; s += 2) {
    if (s + 1 < nscales) {
      imq_pair(rp, C[s], C[s + 1], k, w);
    } else if (s < nscales) {
      imq_one(r, C[s], k, w);
    }
#if !defined(__CUDA_ARCH__)
    else {
      break;
    }
#endif
  }
}

//! Multi-scale IMQ with one reciprocal per scale from a functor rcp(x) ~ 1/x, ADDED to k and w:
//! t = rcp(r + C_s), k += C_s t, w -= (C_s t) t.  For instruction sets with a fast reciprocal
//! estimate whose Newton step costs less than a division (the AVX-512 CPU tiles: vrcp14ps and
//! one Newton step, ~1 ulp; measured against imq_eval in benchmarks/cpu_peak.cpp imq_forms).
//! r = inf is mapped to the largest finite value as in imq_eval: rcp must give 0 (or a tiny
//! value) for it, never inf * 0.
template <class V, class S, class Rcp>
WAE_HD void imq_eval_rcp(V r, const S* C, int nscales, V& k, V& w, Rcp rcp) {
  const V rmax = V{} + Finite<S>::max;
  const V rp = r > rmax ? rmax : r;
  for (int s = 0; s < nscales; ++s) {
    const V t = rcp(rp + C[s]);
    const V kk = C[s] * t;
    k += kk;
    w -= kk * t;
  }
}

//! Below this a value's square is not a normal number (2^-63 in fp32, 2^-511 in fp64).
template <class T> struct SqrtMinNormal;
template <> struct SqrtMinNormal<float> { static constexpr float value = 1.08420217248550443401e-19f; };
template <> struct SqrtMinNormal<double> { static constexpr double value = 1.49166814624004134866e-154; };

//! Squarings that give exp(-g r) from the previous scale's exp(-gprev r): 1 where g = 2 gprev,
//! 2 where g = 4 gprev (exactly: a power-of-two ratio of the constants), else 0 (an exp).
template <class S>
WAE_HD int rbf_squarings(S gprev, S g) { return g == S(2) * gprev ? 1 : g == S(4) * gprev ? 2 : 0; }

//! Multi-scale RBF given an exp functor: k += sum exp(-g r), w -= sum g exp(-g r) (unrolled
//! without a break on the GPU, as imq_eval).  One exp per pair where the bandwidths allow: a
//! scale whose gamma is 2x or 4x the previous one's is the previous value squared once or twice
//! (exp(-4 g r) = exp(-g r)^4; the hosts sort the gammas ascending so that ratios show up; any
//! order is correct).  The argument's rounding is the same as a direct exp's; the exp's own error
//! is multiplied by the ratio (4 ulp of a ~1 ulp exp for a ratio of 4, 16 for two steps).
//! r = inf gives 0 and NaN stays NaN, as a direct exp.  A value whose square would leave the
//! normal range is flushed to 0 first (a direct exp of the CPU tiles flushes below ~FLT_MIN too):
//! products that underflow to subnormals cost a microcode assist each on x86 (measured: the
//! d = 16, 64 rows of bench_cpu_floor lost the squarings' gain without the flush).
template <class V, class S, class Exp>
WAE_HD void rbf_eval(V r, const S* G, int nscales, V& k, V& w, Exp expf_) {
  const V zero = V{};
  V e = zero;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int s = 0; s < kMaxScales; ++s) {
    if (s < nscales) {
      const int sq = s == 0 ? 0 : rbf_squarings(G[s - 1], G[s]);
      if (sq == 0) {
        e = expf_(-(G[s] * r));
      } else {
        e = e < SqrtMinNormal<S>::value ? zero : e;
        e = e * e;
        if (sq == 2) {
          e = e < SqrtMinNormal<S>::value ? zero : e;
          e = e * e;
        }
      }
      k += e;
      w -= G[s] * e;
    }
#if !defined(__CUDA_ARCH__)
    else {
      break;
    }
#endif
  }
}

//! Polynomial kernel from the dot product t: k += (gamma t + c)^p and w -= (gamma p / 2)
//! (gamma t + c)^(p - 1), with P = [gamma, c, p] (p an integer >= 1 stored as a float).  w is
//! the weight the tile gradients use in place of dk/dr: for the r-kernels the row gradient is
//! 2 sum_j W_ij (a_i - b_j); for the polynomial it is -2 sum_j W_ij b_j = gamma sum_j dk/dt b_j
//! (no a_i term).  The power is a product of p - 1 multiplications; one that overflows gives NaN
//! (outside the supported range: never inf, never a finite wrong value); the loop bound is the
//! runtime degree (at most kMaxPolyDegree).
template <class V, class S>
WAE_HD void poly_eval(V t, const S* P, V& k, V& w) {
  const S gamma = P[0], c = P[1];
  const int p = int(P[2]);
  const V base = gamma * t + c;
  V pm1 = base * S(0) + S(1);
  for (int e = 1; e < p; ++e) pm1 = pm1 * base;
  const V kp = pm1 * base, wp = (S(0.5) * gamma * S(p)) * pm1;
  k += kp + (kp - kp);  // v - v: 0 if finite, NaN if inf: an overflowed power reads NaN
  w -= wp + (wp - wp);
}

//! Reference single-pair evaluation in any scalar type (used by host tests).
template <class T>
WAE_HD void kernel_eval_scalar(int kind, T r, const T* P, int nscales, T& k, T& w, T (*expfn)(T)) {
  k = T(0);
  w = T(0);
  if (kind == KIND_IMQ) imq_eval(r, P, nscales, k, w);
  else rbf_eval(r, P, nscales, k, w, expfn);
}

// ---------------------------------------------------------------------------------------------
// Accumulation helpers.
// ---------------------------------------------------------------------------------------------
//! Kahan-free fixed-order accumulation of fp32 partials into fp64 (tile -> block -> total).
template <class T>
WAE_HD void acc64(double& acc, T v) { acc += static_cast<double>(v); }

//! Number of (ordered) pairs each term is normalised by.
WAE_HD double pair_count_self(int64_t n, bool unbiased) {
  return unbiased ? double(n) * double(n - 1) : double(n) * double(n);
}

// ---------------------------------------------------------------------------------------------
// Philox 4x32-10 and randn, reproducing Triton's tl.randn(seed, offset) (triton/language/random.py):
//   seed (uint64) -> keys k0 = low 32 bits, k1 = high 32 bits; counters (c0,c1,c2,c3) =
//   (offset low 32, offset high 32 [0 for int32 offsets], 0, 0); randn uses the first two
//   outputs: u1 = max(uint_to_uniform(r0), 1e-7), u2 = uint_to_uniform(r1),
//   randn = sqrt(-2 log u1) * cos(2 pi u2).
// ---------------------------------------------------------------------------------------------
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;

WAE_HD void umulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

WAE_HD void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int i = 0; i < 10; ++i) {
    uint32_t _c0 = c0, _c2 = c2;
    uint32_t hi_b, lo_b, hi_a, lo_a;
    umulhilo32(kPhiloxRoundB, _c2, hi_b, lo_b);  // c0 = umulhi(B, _c2) ^ c1 ^ k0
    umulhilo32(kPhiloxRoundA, _c0, hi_a, lo_a);  // c2 = umulhi(A, _c0) ^ c3 ^ k1
    c0 = hi_b ^ c1 ^ k0;
    c2 = hi_a ^ c3 ^ k1;
    c1 = lo_b;                                   // c1 = B * _c2
    c3 = lo_a;                                   // c3 = A * _c0
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
}

//! Triton's uint_to_uniform_float for 32-bit ints: x < 0 (as int32) -> -x - 1, times 2^-31 (fp32).
WAE_HD float uint_to_uniform_float(uint32_t u) {
  int32_t x = static_cast<int32_t>(u);
  x = x < 0 ? ~x : x;  // == -x - 1 in two's complement, without the INT_MIN overflow
  return static_cast<float>(x) * 4.6566127342e-10f;
}

//! The two uniforms tl.randn uses for (seed, offset); u1 already clamped to >= 1e-7.
WAE_HD void philox_uniform_pair(uint64_t seed, uint64_t offset, float& u1, float& u2) {
  uint32_t c0 = uint32_t(offset), c1 = uint32_t(offset >> 32), c2 = 0, c3 = 0;
  philox4x32_10(c0, c1, c2, c3, uint32_t(seed), uint32_t(seed >> 32));
  u1 = uint_to_uniform_float(c0);
  u2 = uint_to_uniform_float(c1);
  u1 = u1 < 1.0e-7f ? 1.0e-7f : u1;
}

//! tl.randn(seed, offset): Box-Muller (first output) of the Philox uniform pair, in fp32.
WAE_HD float philox_randn(uint64_t seed, uint64_t offset) {
  float u1, u2;
  philox_uniform_pair(seed, offset, u1, u2);
  const float th = 6.283185307179586f * u2;
#if defined(__CUDA_ARCH__)
  return sqrtf(-2.0f * logf(u1)) * cosf(th);
#else
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(th);
#endif
}

//! tl.randn(seed, offset) as Triton LOWERS it on NVIDIA GPUs (checked in the PTX of Triton 3.7's
//! AOT compile of kernels/prior.py's sampler for sm_90): log and cos are libdevice's __nv_logf /
//! __nv_cosf (what nvcc's logf / cosf compile to as well), but the square root is
//! sqrt.approx.ftz.f32, not the IEEE sqrt.rn of sqrtf: one ulp apart for some draws.  On the
//! device this returns Triton's value; on the host it is philox_randn (Triton's interpreter takes
//! numpy's correctly rounded sqrt).  The CUDA kernels (prior samples, reparam eps) use this one.
WAE_HD float philox_randn_tl(uint64_t seed, uint64_t offset) {
#if defined(__CUDA_ARCH__)
  float u1, u2;
  philox_uniform_pair(seed, offset, u1, u2);
  const float th = 6.283185307179586f * u2;
  const float t = -2.0f * logf(u1);
  return ptx_sqrt_approx_ftz_f32(t) * cosf(th);
#else
  return philox_randn(seed, offset);
#endif
}

}  // namespace wae_fast
