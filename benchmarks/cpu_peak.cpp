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

// ---------------------------------------------------------------------------------------------
// Forms of the 7-scale IMQ value and dk/dr (C = 0.1 .. 10 times a base), returns a checksum; the caller counts
// 8 * lanes pair-evaluations per iteration  form 0: scales two at a time with one IEEE division (tile_math.h imq_pair);
// form 1: one division for all 7 scales (prefix/suffix products of u_s = C_s + r scaled by
// 2^-e, e the exponent of r + C_max, so the product stays in range); form 2 (AVX-512 only):
// per scale vrcp14ps + one Newton step.
#if VB == 64
#include <immintrin.h>
#endif
static const float kC7[7] = {0.4f, 0.8f, 2.0f, 4.0f, 8.0f, 20.0f, 40.0f};

static inline void imq_pairwise(V r, V& k, V& w) {
  for (int s = 0; s + 1 < 7; s += 2) {
    V a = r + kC7[s], b = r + kC7[s + 1];
    V inv = 1.0f / (a * b);
    V t1 = b * inv, t2 = a * inv;
    V k1 = kC7[s] * t1, k2 = kC7[s + 1] * t2;
    k += k1 + k2;
    w -= k1 * t1 + k2 * t2;
  }
  V t = 1.0f / (r + kC7[6]);
  V kk = kC7[6] * t;
  k += kk;
  w -= kk * t;
}

static inline void imq_onediv(V r, V& k, V& w) {
  // sc = 2^-e with 2^e <= r + C_max < 2^(e+1): every scaled u_s is in (C_min/C_max/2, 2)
  V top = r + kC7[6];
  I bits;
  __builtin_memcpy(&bits, &top, sizeof(V));
  I sbits = (I{} + (254 << 23)) - (bits & 0x7f800000);
  V sc;
  __builtin_memcpy(&sc, &sbits, sizeof(V));
  V rs = r * sc;
  V cs[7], u[7], pre[7];
  V p = V{} + 1.0f;
  for (int s = 0; s < 7; ++s) {
    cs[s] = kC7[s] * sc;
    u[s] = cs[s] + rs;
    pre[s] = p;
    p = p * u[s];
  }
  V inv = 1.0f / p;
  V suf = V{} + 1.0f, kk = V{}, ww = V{};
  for (int s = 6; s >= 0; --s) {
    V t = pre[s] * suf * inv;  // sc / u_s
    suf = suf * u[s];
    V ks = cs[s] * t;
    kk += ks;
    ww += ks * t;
  }
  k += kk;
  w -= ww * sc;
}

#if VB == 64
static inline V rcp_newton(V x) {
  __m512 xm;
  __builtin_memcpy(&xm, &x, sizeof(V));
  __m512 y0m = _mm512_rcp14_ps(xm);
  V y0;
  __builtin_memcpy(&y0, &y0m, sizeof(V));
  V e = 1.0f - x * y0;
  return y0 + y0 * e;
}
static inline void imq_rcp(V r, V& k, V& w) {
  for (int s = 0; s < 7; ++s) {
    V t = rcp_newton(r + kC7[s]);
    V ks = kC7[s] * t;
    k += ks;
    w -= ks * t;
  }
}
#endif

extern "C" double imq_forms(long iters, int form) {
  const V dr = V{} + 1e-6f;
  V r0 = V{} + 0.1f, r1 = V{} + 1.3f, r2 = V{} + 2.7f, r3 = V{} + 5.1f;
  V k0 = V{}, k1 = V{}, k2 = V{}, k3 = V{}, w0 = V{}, w1 = V{}, w2 = V{}, w3 = V{};
  for (int l = 0; l < L; ++l) {
    r0[l] += 0.01f * l;
    r1[l] += 0.02f * l;
    r2[l] += 0.03f * l;
    r3[l] += 0.05f * l;
  }
  // 8 independent evaluations per iteration, each from k = w = 0 (as the tiles evaluate them),
  // accumulated once: the loop-carried chains are one add each
#define EVAL(fn)                                                                       \
  {                                                                                    \
    V ka = V{}, kb = V{}, kc = V{}, kd = V{}, wa = V{}, wb = V{}, wc = V{}, wd = V{};   \
    V ke = V{}, kf = V{}, kg = V{}, kh = V{}, we = V{}, wf = V{}, wg = V{}, wh = V{};   \
    fn(r0, ka, wa); fn(r1, kb, wb); fn(r2, kc, wc); fn(r3, kd, wd);                    \
    fn(r0 + 0.5f, ke, we); fn(r1 + 0.5f, kf, wf); fn(r2 + 0.5f, kg, wg); fn(r3 + 0.5f, kh, wh); \
    k0 += ka + ke; k1 += kb + kf; k2 += kc + kg; k3 += kd + kh;                         \
    w0 += wa + we; w1 += wb + wf; w2 += wc + wg; w3 += wd + wh;                         \
  }
  for (long it = 0; it < iters; ++it) {
    if (form == 0) EVAL(imq_pairwise)
    else if (form == 1) EVAL(imq_onediv)
#if VB == 64
    else EVAL(imq_rcp)
#endif
    r0 += dr; r1 += dr; r2 += dr; r3 += dr;
  }
  return hs(k0 + k1 + k2 + k3) + hs(w0 + w1 + w2 + w3);
}
