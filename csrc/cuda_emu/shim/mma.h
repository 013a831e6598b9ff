// cuda_emu shim of <mma.h>: nvcuda::wmma with TF32 inputs and fp32 accumulators (the m16n16k8
// shape the kernels use; any shape works).
//
// Model (documented in README and mmd_tiles.cuh):
//  * a fragment holds num_elements = rows * cols / 32 values per lane; lane l, element t is the
//    matrix entry of linear (row-major) index l + 32 t.  The mapping of the hardware is
//    unspecified by CUDA; code that only applies the same elementwise operation to every
//    element (what CUDA allows) gives the same result under any mapping;
//  * load/store/mma are warp collectives: the 32 lanes rendezvous (a lane missing is a launch
//    error); pointers must be 256-bit aligned and ldm a multiple of 4 (16 bytes) as CUDA requires;
//  * __float_to_tf32 is cvt.rna.tf32.f32 exactly: round to nearest, ties away from zero, to
//    10 mantissa bits;
//  * mma_sync: inputs not already converted are TRUNCATED to TF32 (their low 13 mantissa bits
//    ignored), each product is exact (11 x 11 significant bits fit in fp32), and the products
//    are added to the fp32 accumulator one at a time in k order, each sum rounded to nearest.
//    The hardware's internal accumulation order and rounding may differ within the TF32 error
//    bound; the emulator cannot reproduce it.
#pragma once

#include <cstdint>
#include <cstring>

#include "wae_emu.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
inline uint32_t bits(float v) { uint32_t u; std::memcpy(&u, &v, 4); return u; }
inline float from_bits(uint32_t u) { float v; std::memcpy(&v, &u, 4); return v; }
//! The operand as the tensor core reads it: low 13 mantissa bits dropped (non-finite kept).
inline float tf32_trunc(float v) {
  const uint32_t u = bits(v);
  return (u & 0x7f800000u) == 0x7f800000u ? v : from_bits(u & 0xffffe000u);
}
template <class Use, int M, int N, int K> struct Shape;
template <int M, int N, int K> struct Shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct Shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct Shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };
}  // namespace detail

//! cvt.rna.tf32.f32 (exact model): nearest, ties away from zero; inf/nan unchanged.
inline float __float_to_tf32(float v) {
  const uint32_t u = detail::bits(v);
  if ((u & 0x7f800000u) == 0x7f800000u) return v;
  return detail::from_bits((u + 0x1000u) & 0xffffe000u);
}

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = detail::Shape<Use, M, N, K>::rows, cols = detail::Shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols / 32;
  static_assert(rows * cols % 32 == 0, "fragment size");
  using storage_element_type = float;
  float x[num_elements];
  //! (row, col) of this lane's element t
  static int row_of(int lane, int t) { return (lane + 32 * t) / cols; }
  static int col_of(int lane, int t) { return (lane + 32 * t) % cols; }
};

namespace detail {
inline void check_ptr(const void* p, unsigned ldm, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) ::wae_emu::fail(what, "pointer not 256-bit aligned", 0);
  if (ldm % 4 != 0) ::wae_emu::fail(what, "ldm not a multiple of 16 bytes", 0);
}
template <class L> constexpr bool is_col() { return std::is_same<L, col_major>::value; }
}  // namespace detail

template <class Use, int M, int N, int K, class T, class L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, float v) {
  for (int t = 0; t < f.num_elements; ++t) f.x[t] = v;
}

#define WAE_WMMA_SYNC(what) \
  ::wae_emu::warp_collective(what, 0xffffffffu, nullptr, &::wae_emu::nop_op, nullptr, __FILE__, __LINE__)

template <class Use, int M, int N, int K, class T, class L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const float* p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "accumulator loads take a layout_t");
  detail::check_ptr(p, ldm, "wmma::load_matrix_sync");
  WAE_WMMA_SYNC("wmma::load_matrix_sync");
  const int lane = int(::wae_emu::lane_id());
  for (int t = 0; t < f.num_elements; ++t) {
    const int r = f.row_of(lane, t), c = f.col_of(lane, t);
    f.x[t] = detail::is_col<L>() ? p[size_t(c) * ldm + r] : p[size_t(r) * ldm + c];
  }
}

template <int M, int N, int K, class T>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  detail::check_ptr(p, ldm, "wmma::store_matrix_sync");
  WAE_WMMA_SYNC("wmma::store_matrix_sync");
  const int lane = int(::wae_emu::lane_id());
  for (int t = 0; t < f.num_elements; ++t) {
    const int r = f.row_of(lane, t), c = f.col_of(lane, t);
    (layout == mem_col_major ? p[size_t(c) * ldm + r] : p[size_t(r) * ldm + c]) = f.x[t];
  }
}

//! Shared-memory operands (checked pointers, portable.h): the whole footprint must lie inside
//! the array the pointer belongs to.
template <class Use, int M, int N, int K, class T, class L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const ::wae_emu::checked_ptr<float>& p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, L>;
  const int64_t last = detail::is_col<L>() ? int64_t(F::cols - 1) * ldm + F::rows - 1 : int64_t(F::rows - 1) * ldm + F::cols - 1;
  if (!p.fits(last)) ::wae_emu::shared_out_of_bounds(p.name, (long long)(p.p - p.lo + last), (long long)(p.hi - p.lo));
  load_matrix_sync(f, static_cast<const float*>(p.p), ldm);
}
template <int M, int N, int K, class T>
inline void store_matrix_sync(const ::wae_emu::checked_ptr<float>& p, const fragment<accumulator, M, N, K, T>& f,
                              unsigned ldm, layout_t layout) {
  using F = fragment<accumulator, M, N, K, T>;
  const int64_t last = layout == mem_col_major ? int64_t(F::cols - 1) * ldm + F::rows - 1 : int64_t(F::rows - 1) * ldm + F::cols - 1;
  if (!p.fits(last)) ::wae_emu::shared_out_of_bounds(p.name, (long long)(p.p - p.lo + last), (long long)(p.hi - p.lo));
  store_matrix_sync(p.p, f, ldm, layout);
}

namespace detail {
template <class FD, class FA, class FB, class FC>
struct MmaArg {
  FD* d;
  const FA* a;
  const FB* b;
  const FC* c;
};
template <class FD, class FA, class FB, class FC, int M, int N, int K>
void mma_op(void* const* lanes, unsigned, const void*) {
  float A[M][K], B[K][N], C[M][N];
  for (int l = 0; l < 32; ++l) {
    const auto* g = static_cast<const MmaArg<FD, FA, FB, FC>*>(lanes[l]);
    for (int t = 0; t < FA::num_elements; ++t) A[FA::row_of(l, t)][FA::col_of(l, t)] = tf32_trunc(g->a->x[t]);
    for (int t = 0; t < FB::num_elements; ++t) B[FB::row_of(l, t)][FB::col_of(l, t)] = tf32_trunc(g->b->x[t]);
    for (int t = 0; t < FC::num_elements; ++t) C[FC::row_of(l, t)][FC::col_of(l, t)] = g->c->x[t];
  }
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float acc = C[m][n];
      for (int k = 0; k < K; ++k) acc = acc + A[m][k] * B[k][n];  // exact product, fp32 sum
      C[m][n] = acc;
    }
  for (int l = 0; l < 32; ++l) {
    auto* g = static_cast<const MmaArg<FD, FA, FB, FC>*>(lanes[l]);
    for (int t = 0; t < FD::num_elements; ++t) g->d->x[t] = C[FD::row_of(l, t)][FD::col_of(l, t)];
  }
}
}  // namespace detail

template <int M, int N, int K, class LA, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, precision::tf32, LA>& a,
                     const fragment<matrix_b, M, N, K, precision::tf32, LB>& b,
                     const fragment<accumulator, M, N, K, TC>& c) {
  using FD = fragment<accumulator, M, N, K, TC>;
  using FA = fragment<matrix_a, M, N, K, precision::tf32, LA>;
  using FB = fragment<matrix_b, M, N, K, precision::tf32, LB>;
  detail::MmaArg<FD, FA, FB, FD> arg{&d, &a, &b, &c};
  ::wae_emu::warp_collective("wmma::mma_sync", 0xffffffffu, &arg, &detail::mma_op<FD, FA, FB, FD, M, N, K>, nullptr,
                             __FILE__, __LINE__);
}

#undef WAE_WMMA_SYNC

}  // namespace wmma
}  // namespace nvcuda
