// Peak rates of one CPU core at the widest vector width it runs (benchmarks/floor.py compiles
// this file with g++ for the ISA it detects and calls it through ctypes, one call per thread).
// Each loop runs many INDEPENDENT chains, so it measures throughput, not latency.  GCC vector
// extensions (VB bytes per vector); no torch, no intrinsics.  Every function returns a checksum
// (so nothing is optimised away); the caller counts lane-ops = iters * chains * lanes.
#include <cstdint>
#ifndef VB
#define VB 64
#endif
typedef float V __attribute__((vector_size(VB)));
typedef int32_t I __attribute__((vector_size(VB)));
constexpr int L = VB / 4;
static inline float hs(V v) {
  float s = 0;
  for (int l = 0; l < L; ++l) s += v[l];
  return s;
}
#define R12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define X4(X) X(0) X(1) X(2) X(3)
#define R8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

extern "C" int lanes() { return L; }

// 12 chains of a = a * b + c: 12 FMAs (24 FLOP per lane) per iteration.
extern "C" double peak_fma(long iters) {
  const V b = V{} + 0.9999999f, c = V{} + 1e-7f;
#define DECL(k) V a##k = V{} + 1e-3f * k;
  R12(DECL)
  for (long it = 0; it < iters; ++it) {
#define FMA(k) a##k = a##k * b + c;
    R12(FMA)
  }
  float s = 0;
#define SUM(k) s += hs(a##k);
  R12(SUM)
  return s;
}

// 8 chains of acc += c / x; x += dx: 8 IEEE divisions per iteration (the adds run beside them).
extern "C" double peak_div(long iters) {
  const V c = V{} + 1.5f, dx = V{} + 1e-7f;
#define DECL2(k) V x##k = V{} + (1.0f + 0.1f * k); V s##k = V{};
  R8(DECL2)
  for (long it = 0; it < iters; ++it) {
#define DIV(k) s##k += c / x##k; x##k += dx;
    R8(DIV)
  }
  float s = 0;
#define SUM2(k) s += hs(s##k);
  R8(SUM2)
  return s;
}

// The tile kernels' vectorised exp for x <= 0 (csrc/cpu/mmd_cpu_kernel.h vexp_neg, the same
// Cephes polynomial and range reduction), 4 chains per iteration.
static inline V vexp_neg(V x) {
  const V zero = V{} + 0.0f;
  I under = x < -87.3f;
  x = under ? zero - 87.3f : x;
  V t = x * 1.44269504088896341f;
  I ti = __builtin_convertvector(t, I);
  V tf = __builtin_convertvector(ti, V);
  I adj = tf > t;
  ti = ti + adj;
  tf = __builtin_convertvector(ti, V);
  V f = x - tf * 0.693359375f - tf * (-2.12194440e-4f);
  V z = f * f;
  V y = ((((1.9875691500e-4f * f + 1.3981999507e-3f) * f + 8.3334519073e-3f) * f + 4.1665795894e-2f) * f +
         1.6666665459e-1f) * f + 5.0000001201e-1f;
  y = y * z + f + 1.0f;
  I e = (ti + 127) << 23;
  V p2;
  __builtin_memcpy(&p2, &e, sizeof(V));
  y = y * p2;
  return under ? zero : y;
}

extern "C" double peak_exp(long iters) {
  const V dx = V{} + 1e-6f;
#define DECL3(k) V x##k = V{} - 0.5f * k; V s##k = V{};
  R8(DECL3)
  for (long it = 0; it < iters; ++it) {
#define EXP(k) s##k += vexp_neg(x##k); x##k -= dx;
    X4(EXP)
  }
  float s = 0;
#define SUM3(k) s += hs(s##k);
  R8(SUM3)
  return s;
}
