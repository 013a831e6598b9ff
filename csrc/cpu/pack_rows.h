// Row packing for the CPU tile engine (mmd_cpu_kernel.h Operand): a tile's points shifted, their
// per-tile transpose (coordinate k of row r at ct[k kTile + r]) and, optionally, the shifted
// rows, with the squared norms accumulated in fp64 from the same registers (k ascending, each
// product exact, rounded at every add: the bits of a plain scalar loop).  Shared by the single
// call's operands (mmd_cpu.cpp prepare_raw) and the sets' packs (segments_cpu.cpp pack_set).
// Include after mmd_cpu_kernel.h with WAE_CPU_NS wae_cpu_generic (kTile).
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) || defined(__SSE2__)
#include <immintrin.h>
#endif

namespace wae_cpu_pack {

using wae_cpu_generic::kTile;

//! Rows 0 .. rows - 1 of q, coordinates k0 .. d - 1, one value at a time: the tails of the
//! register transposes below and a tile's last rows (the same stores and norms, k ascending).
template <class T>
inline __attribute__((always_inline)) void pack_scalar(const T* const* q, const T* sh, int64_t k0, int64_t d,
                                                       int64_t rows, T* ct, double* nrm, T* ro, int64_t ldr) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = k0; k < d; ++k) {
      const T v = sh != nullptr ? T(q[r][k] - sh[k]) : q[r][k];
      ct[k * kTile + r] = v;
      if (ro != nullptr) ro[r * ldr + k] = v;
      nrm[r] += double(v) * double(v);
    }
}

//! ct[k kTile + r] = q[r][k] - sh[k] (sh null: no shift) for the four rows r and k < d: the
//! per-tile transpose of four points, by 4 x 4 blocks of SSE registers in fp32 (scalar copies
//! were 25% of a B = 256, N = 64, d = 64 forward); nrm[r] += sum_k ct[k kTile + r]^2 in fp64, k
//! ascending (the squared norms from the registers: a separate loop over the tile cost as much
//! as the transpose).
template <class T>
inline void transpose4(const T* const* q, const T* sh, int64_t d, T* ct, double* nrm, T* ro = nullptr,
                       int64_t ldr = 0) {
  int64_t k = 0;
#if defined(__SSE2__)
  if constexpr (std::is_same<T, float>::value) {
    __m128d n01 = _mm_loadu_pd(nrm), n23 = _mm_loadu_pd(nrm + 2);
    auto acc = [&](__m128 v) {
      const __m128d lo = _mm_cvtps_pd(v), hi = _mm_cvtps_pd(_mm_movehl_ps(v, v));
      n01 = _mm_add_pd(n01, _mm_mul_pd(lo, lo));
      n23 = _mm_add_pd(n23, _mm_mul_pd(hi, hi));
    };
    for (; k + 4 <= d; k += 4) {
      __m128 a0 = _mm_loadu_ps(q[0] + k), a1 = _mm_loadu_ps(q[1] + k), a2 = _mm_loadu_ps(q[2] + k),
             a3 = _mm_loadu_ps(q[3] + k);
      if (sh != nullptr) {
        const __m128 v = _mm_loadu_ps(sh + k);
        a0 = _mm_sub_ps(a0, v);
        a1 = _mm_sub_ps(a1, v);
        a2 = _mm_sub_ps(a2, v);
        a3 = _mm_sub_ps(a3, v);
      }
      if (ro != nullptr) {
        _mm_storeu_ps(ro + k, a0);
        _mm_storeu_ps(ro + ldr + k, a1);
        _mm_storeu_ps(ro + 2 * ldr + k, a2);
        _mm_storeu_ps(ro + 3 * ldr + k, a3);
      }
      _MM_TRANSPOSE4_PS(a0, a1, a2, a3);
      _mm_storeu_ps(ct + k * kTile, a0);
      _mm_storeu_ps(ct + (k + 1) * kTile, a1);
      _mm_storeu_ps(ct + (k + 2) * kTile, a2);
      _mm_storeu_ps(ct + (k + 3) * kTile, a3);
      acc(a0);
      acc(a1);
      acc(a2);
      acc(a3);
    }
    _mm_storeu_pd(nrm, n01);
    _mm_storeu_pd(nrm + 2, n23);
  }
#endif
  pack_scalar<T>(q, sh, k, d, 4, ct, nrm, ro, ldr);
}

// GCC on x86-64 only (function targets); WAE_NO_X86_PACK: the portable path on any compiler
// (tests/test_build.py compiles it so, as an ARM or clang build would)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(WAE_NO_X86_PACK)
#define WAE_PACK_AVX2 1
//! transpose4 for sixteen rows at once, by 8 x 8 blocks of AVX2 registers (fp32; the caller
//! checked the CPU's AVX2 and FMA): the same stores and the same squared norms, bit for bit (k
//! ascending, one rounding per add: a float's square is exact in fp64, 24-bit significands, so
//! the FMA n + v v rounds once, as the add of the exact product does; one instruction instead of
//! two, the norms were most of this function's instructions at d = 8).  Four rows' norms were two
//! chains of d dependent adds each, the pack's bound.
static __attribute__((target("avx2,fma"), noinline)) void transpose16_avx2(const float* const* q, const float* sh, int64_t d,
                                                               float* ct, double* nrm, float* ro, int64_t ldr,
                                                               int64_t k0 = 0) {
  // coordinates k0 .. k0 + d - 1 (from k0 > 0: transpose16_avx512's last ones)
  const float* qq[16];
  for (int i = 0; i < 16; ++i) qq[i] = q[i] + k0;
  q = qq;
  if (sh != nullptr) sh += k0;
  if (ro != nullptr) ro += k0;
  ct += k0 * kTile;
  int64_t k = 0;
  __m256d n[4] = {_mm256_loadu_pd(nrm), _mm256_loadu_pd(nrm + 4), _mm256_loadu_pd(nrm + 8),
                  _mm256_loadu_pd(nrm + 12)};
  for (; k + 8 <= d; k += 8) {
    const __m256 v = sh != nullptr ? _mm256_loadu_ps(sh + k) : _mm256_setzero_ps();
    for (int g = 0; g < 2; ++g) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) {
        r[i] = _mm256_loadu_ps(q[8 * g + i] + k);
        if (sh != nullptr) r[i] = _mm256_sub_ps(r[i], v);
        if (ro != nullptr) _mm256_storeu_ps(ro + (8 * g + i) * ldr + k, r[i]);
      }
      __m256 t[8], u[8];
      for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
      }
      for (int h = 0; h < 2; ++h) {  // rows 4h..4h+3
        u[4 * h] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
        u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
        u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
        u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
      }
      for (int j = 0; j < 4; ++j) {  // coordinates k + j and k + 4 + j of the eight rows
        r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
        r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
      }
      for (int j = 0; j < 8; ++j) {
        _mm256_storeu_ps(ct + (k + j) * kTile + 8 * g, r[j]);
        const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(r[j]));
        // the upper four from the store just made (a load port, not the shuffle unit that the
        // transpose keeps busy)
        const __m256d hi = _mm256_cvtps_pd(_mm_loadu_ps(ct + (k + j) * kTile + 8 * g + 4));
        n[2 * g] = _mm256_fmadd_pd(lo, lo, n[2 * g]);  // exact product: the add's rounding
        n[2 * g + 1] = _mm256_fmadd_pd(hi, hi, n[2 * g + 1]);
      }
    }
  }
  for (int i = 0; i < 4; ++i) _mm256_storeu_pd(nrm + 4 * i, n[i]);
  pack_scalar<float>(q, sh, k, d, 16, ct, nrm, ro, ldr);
}
//! transpose16_avx2 by 16 x 16 blocks of AVX-512 registers (the caller checked the CPU's AVX-512
//! F): half the instructions per element.  The norms by FMAs, the same bits as transpose16_avx2's
//! (a float's square is exact in fp64).
static __attribute__((target("avx512f"), noinline)) void transpose16_avx512(const float* const* q, const float* sh,
                                                                     int64_t d, float* ct, double* nrm, float* ro,
                                                                     int64_t ldr) {
  int64_t k = 0;
  __m512d n0 = _mm512_loadu_pd(nrm), n1 = _mm512_loadu_pd(nrm + 8);
  for (; k + 16 <= d; k += 16) {
    const __m512 v = sh != nullptr ? _mm512_loadu_ps(sh + k) : _mm512_setzero_ps();
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) {
      r[i] = _mm512_loadu_ps(q[i] + k);
      if (sh != nullptr) r[i] = _mm512_sub_ps(r[i], v);
      if (ro != nullptr) _mm512_storeu_ps(ro + i * ldr + k, r[i]);
    }
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 4; ++h) {  // rows 4h..4h+3 in each 128-bit lane
      r[4 * h] = _mm512_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
      r[4 * h + 1] = _mm512_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
      r[4 * h + 2] = _mm512_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
      r[4 * h + 3] = _mm512_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
    }
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 4; ++j) {
        t[8 * h + j] = _mm512_shuffle_f32x4(r[8 * h + j], r[8 * h + 4 + j], 0x88);
        t[8 * h + 4 + j] = _mm512_shuffle_f32x4(r[8 * h + j], r[8 * h + 4 + j], 0xDD);
      }
    for (int j = 0; j < 8; ++j) {
      r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
      r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
    }
    for (int j = 0; j < 16; ++j) {  // r[j]: coordinate k + j of the sixteen rows
      _mm512_storeu_ps(ct + (k + j) * kTile, r[j]);
      const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(r[j]));
      // the upper eight from the store just made (a load port, not the shuffle unit that the
      // transpose keeps busy)
      const __m512d hi = _mm512_cvtps_pd(_mm256_loadu_ps(ct + (k + j) * kTile + 8));
      n0 = _mm512_fmadd_pd(lo, lo, n0);
      n1 = _mm512_fmadd_pd(hi, hi, n1);
    }
  }
  _mm512_storeu_pd(nrm, n0);
  _mm512_storeu_pd(nrm + 8, n1);
  if (k < d) transpose16_avx2(q, sh, d - k, ct, nrm, ro, ldr, k);
}

#endif

//! Rows c..c+15 (isa >= 1: AVX2) or c..c+3 of a tile by transpose16_avx2 / transpose4; returns
//! the rows done.
template <class T>
inline int64_t transpose_rows(const T* const* q, const T* sh, int64_t d, T* ct, double* nrm, int isa, int64_t left,
                              T* ro, int64_t ldr) {
#ifdef WAE_PACK_AVX2
  if constexpr (std::is_same<T, float>::value)
    if (isa >= 1 && left >= 16) {
      if (isa >= 2 && d >= 16)  // (below 16 coordinates it would hand them all to the AVX2 form)
        transpose16_avx512(q, sh, d, ct, nrm, ro, ldr);
      else
        transpose16_avx2(q, sh, d, ct, nrm, ro, ldr);
      return 16;
    }
#endif
  transpose4<T>(q, sh, d, ct, nrm, ro, ldr);
  return 4;
}

//! The nn rows of one tile (row c at q[c]; ro null: no row copy): sixteen (isa >= 1) or four at
//! a time in registers, the last ones by pack_scalar; nrm[c] += their squared norms.
template <class T>
inline void pack_tile(const T* const* q, const T* sh, int64_t d, int64_t nn, T* ct, double* nrm, int isa, T* ro,
                      int64_t ldr) {
  int64_t c = 0;
  while (c + 4 <= nn)
    c += transpose_rows<T>(q + c, sh, d, ct + c, nrm + c, isa, nn - c, ro ? ro + c * ldr : nullptr, ldr);
  pack_scalar<T>(q + c, sh, 0, d, nn - c, ct + c, nrm + c, ro ? ro + c * ldr : nullptr, ldr);
}

}  // namespace wae_cpu_pack
