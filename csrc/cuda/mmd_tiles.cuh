// wae_fast CUDA tile machinery shared by mmd_kernels.cu (MMD between two stored point sets) and
// prior_kernels.cu (MMD to N(0, sigma2 I) with the prior samples generated in the kernels).
// No torch headers.  Everything lives in an anonymous namespace: each .cu instantiates what it
// launches (no duplicate kernel registrations across translation units).
//
// Tiles: 64 x 64 pairs per tile, 256 threads (16 x 16, 4 x 4 pairs each).  The operands of a
// tile come from a SOURCE POLICY:
//   LoadSrc<T>: rows of a stored, already shifted (n, d) matrix in the compute dtype;
//   GenSrc<T>:  rows of the virtual prior matrix y[j][k] = T(philox_randn_tl(seed, j*d + k)) * sig
//               (tl.randn's stream, tile_math.h), minus an optional shift off[k]: generated where
//               a LoadSrc would load, never stored.
// Squared row norms are computed INSIDE the tile routine from the staged shared-memory chunks
// (fp64 sum over k in increasing order, rounded once: bit-identical to a precomputed norm
// buffer, and no M-sized buffer for generated rows).
//
// Dot products of a tile (PREC):
//   0 "ieee": FP32 (or FP64) FMAs, 4 x 4 register tile per thread;
//   1 "tf32" / 2 "tf32x3" (fp32 compute dtype only; the host selects them only for d >= 16 on
//   sm_80+): nvcuda::wmma m16n16k8 tf32 fragments, 8 warps = 4 (rows) x 2 (32-column halves),
//   fp32 accumulators stored to shared memory, then the same per-thread epilogue.  tf32x3 splits
//   v = hi + lo (hi = tf32(v), lo = tf32(v - hi)) and accumulates lo_a hi_b + hi_a lo_b + hi_a hi_b.
//
// Forward (mmd_fwd_tiles): block (I = blockIdx.x: row block, s = blockIdx.y: column split) walks
// the column tiles J = J0 + s, J0 + s + S, ... (J0 = I for symmetric terms, else 0), accumulates
// per-thread fp64 tile sums (off-diagonal symmetric tiles x 2, diagonal r_ii = 0 exactly,
// unbiased excludes i == j) and writes ONE fp64 partial per (I, s); reduce_partials sums them in
// a fixed order.  S is a function of the sizes only: bit-identical reruns.
//
// Backward (mmd_grad_rows): block (I, chunk c of KC gradient columns, split s) walks its column
// tiles of the self term (A vs A) and then of the cross term (AX vs the B source; AX holds A's
// rows in the cross term's shift, A in the self term's: each term on its own coordinates), builds
// W = dk/dr in shared memory and accumulates sum_j W_ij (a_ik - b_jk) (direct differences: no
// rowsum(W) a - W b cancellation) in fp32 per tile, then coef * (that) into fp64 accumulators in
// SHARED memory (64 x KC, each entry owned by one thread) across the whole column loop
// (coef = c_self * grad_terms[side] or c_cross * grad_terms[2], read on the device).  Dynamic
// shared memory: 64 KB (fp32) / 49.5 KB (fp64), opted in by the launcher.  With one split the block writes its (64 x KC) output slice directly in
// the output dtype (no fp64 buffer); with S > 1 splits (small N only: S * N * d * 8 bytes is
// capped at 1 GiB) one fp64 slice per split, summed in split order by grad_combine.
// The distance work is repeated once per gradient-column chunk (ceil(d / KC) chunks; 1 for
// d <= 64 in fp32, d <= 16 in fp64), like the Triton backward's DP chunks.
//
// Indexing is int64; row blocks ride on grid.x (2^31 - 1 blocks).
//
// Launches and shared arrays are spelled through portable.h (WAE_LAUNCH, WAE_SHARED,
// WAE_DYN_SMEM): plain CUDA under nvcc, the CPU emulator in the cuda_emu build (csrc/cuda_emu),
// which runs THIS code on the CPU for the tests.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "portable.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "wae_cuda.h"
#include "wae_fast/tile_math.h"

//! Internal (mmd_kernels.cu, used by prior_kernels.cu): the symmetric self term of an already
//! shifted (n, d) matrix in the compute dtype ct_code (WAE_F32 / WAE_F64), prec already effective.
int wae_detail_fwd_self(int ct_code, const void* xs, int64_t n, int64_t d, int kind, int prec, const double* params,
                        int nparams, int unbiased, double* part, double scale, double* out, cudaStream_t st);

namespace {

constexpr int kBM = 64;        // tile rows
constexpr int kBN = 64;        // tile cols
constexpr int kThreads = 256;  // 16 x 16 threads, 4 x 4 pairs each
constexpr int kLD = 68;        // leading dimension of the staged k-chunks (multiple of 4 for wmma)
constexpr int kWLD = 64;       // leading dimension of the 64 x 64 tiles W / Ds (multiple of 4)
constexpr int kTargetBlocks = 528;                       // ~4 blocks per SM on 132 SMs
constexpr int kMaxSplits = 32;                         // backward splits at most
constexpr int64_t kGaccBudget = int64_t(1) << 30;        // bytes of fp64 split buffers at most

enum { PREC_IEEE = 0, PREC_TF32 = 1, PREC_TF32X3 = 2 };

template <class T>
struct KParams {
  T p[wae_fast::kMaxScales];
  int S;
};

__device__ __forceinline__ float to_ct(float v) { return v; }
__device__ __forceinline__ double to_ct(double v) { return v; }
__device__ __forceinline__ float to_ct(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_ct(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class O> __device__ __forceinline__ O from_double(double v);
template <> __device__ __forceinline__ float from_double<float>(double v) { return float(v); }
template <> __device__ __forceinline__ double from_double<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_double<__half>(double v) { return __float2half_rn(float(v)); }
template <> __device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double v) {
  return __float2bfloat16_rn(float(v));
}

//! out[e] = v rounded to the dtype code dt (uniform branch; used once per output element).
__device__ __forceinline__ void store_out(void* out, int dt, int64_t e, double v) {
  switch (dt) {
    case WAE_F32: static_cast<float*>(out)[e] = from_double<float>(v); break;
    case WAE_F64: static_cast<double*>(out)[e] = v; break;
    case WAE_F16: static_cast<__half*>(out)[e] = from_double<__half>(v); break;
    default: static_cast<__nv_bfloat16*>(out)[e] = from_double<__nv_bfloat16>(v); break;
  }
}

// ---------------------------------------------------------------------------------------------
// source policies
// ---------------------------------------------------------------------------------------------
template <class T>
struct LoadSrc {
  const T* __restrict__ p;  // (n, d) row-major, shifted, compute dtype
  __device__ __forceinline__ T get(int64_t row, int64_t k, int64_t d) const { return p[row * d + k]; }
};

template <class T>
struct GenSrc {
  const T* __restrict__ off;  // d shifts in the compute dtype, or nullptr (no shift)
  unsigned long long seed;
  T sig;                      // sqrt(sigma2) rounded to T
  __device__ __forceinline__ T get(int64_t row, int64_t k, int64_t d) const {
    const T v = T(wae_fast::philox_randn_tl(uint64_t(seed), uint64_t(row * d + k))) * sig;
    return off != nullptr ? v - off[k] : v;
  }
};

// ---------------------------------------------------------------------------------------------
// kernel evaluation
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float dev_exp(float x) { return __expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

template <class T, int KIND>
__device__ __forceinline__ void eval_kernel(T r, const KParams<T>& P, T& k, T& w) {
  k = T(0);
  w = T(0);
  if (KIND == wae_fast::KIND_IMQ) {
    wae_fast::imq_eval<T, T>(r, P.p, P.S, k, w);  // the host-tested tile math (tile_math.h)
  } else if (KIND == wae_fast::KIND_POLY) {
    wae_fast::poly_eval<T, T>(r, P.p, k, w);  // r is the dot product here (tile_sqdist<DOT>)
  } else {
    wae_fast::rbf_eval<T, T>(r, P.p, P.S, k, w, [](T v) { return dev_exp(v); });
  }
}

template <class T>
struct TileCfg {
  static constexpr int DK = sizeof(T) == 8 ? 8 : 16;   // k-chunk of the dot products
  static constexpr int KC = sizeof(T) == 8 ? 16 : 64;  // gradient columns per block
};

// ---------------------------------------------------------------------------------------------
// tile distance phase
// ---------------------------------------------------------------------------------------------
//! S[kk * kLD + row] = src row (r0 + row), column (k0 + kk); zeros outside (n, d).
template <class T, int DK, class Src>
__device__ __forceinline__ void stage_chunk(const Src& src, int64_t n, int64_t d, int64_t r0, int64_t k0,
                                            const wae_fast::smem_ptr<T>& S) {
  for (int e = threadIdx.x; e < kBM * DK; e += kThreads) {
    const int row = e / DK, kk = e % DK;
    const int64_t gi = r0 + row, gk = k0 + kk;
    S[kk * kLD + row] = (gi < n && gk < d) ? src.get(gi, gk, d) : T(0);
  }
}

//! Threads 0..63 add the squares of A row tid, threads 64..127 of B row tid - 64 (k ascending).
template <class T, int DK>
__device__ __forceinline__ void acc_norms(const wae_fast::smem_ptr<T>& As, const wae_fast::smem_ptr<T>& Bs,
                                          double& nacc) {
  const int tid = threadIdx.x;
  if (tid < 2 * kBM) {
    const wae_fast::smem_ptr<T> S = tid < kBM ? As : Bs;
    const int row = tid & (kBM - 1);
#pragma unroll
    for (int kk = 0; kk < DK; ++kk) {
      const double v = double(S[kk * kLD + row]);
      nacc += v * v;
    }
  }
}

//! Shared memory of the distance phase (As/Bs staging chunks, the 128 row norms).
template <class T>
struct DotSmem {
  wae_fast::smem_ptr<T> As;
  wae_fast::smem_ptr<T> Bs;
  wae_fast::smem_ptr<T> nrm;  // [0, 64): A rows, [64, 128): B rows
  wae_fast::smem_ptr<T> Ds;   // 64 x kWLD tile of dot products (tensor-core path only)
};

template <class T>
__device__ __forceinline__ void finish_norms(double nacc, const wae_fast::smem_ptr<T>& nrm) {
  // out of the supported magnitude range (or NaN/Inf) -> NaN: the row's pairs are NaN (tile_math.h)
  if (threadIdx.x < 2 * kBM) nrm[threadIdx.x] = wae_fast::norm_in_range(T(nacc));
  __syncthreads();
}

// Exact FMA path: squared distances of the 4 x 4 pairs owned by this thread
// (rows ty + 16 q, cols tx + 16 p of the tile).  Ends after a __syncthreads.
template <class T, bool DOT, class SA, class SB>
__device__ __forceinline__ void tile_sqdist_exact(const SA& sa, const SB& sb, int64_t nA, int64_t nB, int64_t d,
                                                  int64_t i0, int64_t j0, const DotSmem<T>& sm, T r[4][4]) {
  constexpr int DK = TileCfg<T>::DK;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  T acc[4][4];
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int p = 0; p < 4; ++p) acc[q][p] = T(0);
  double nacc = 0.0;
  for (int64_t k0 = 0; k0 < d; k0 += DK) {
    stage_chunk<T, DK>(sa, nA, d, i0, k0, sm.As);
    stage_chunk<T, DK>(sb, nB, d, j0, k0, sm.Bs);
    __syncthreads();
    acc_norms<T, DK>(sm.As, sm.Bs, nacc);
#pragma unroll
    for (int kk = 0; kk < DK; ++kk) {
      T a[4], b[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) a[q] = sm.As[kk * kLD + ty + 16 * q];
#pragma unroll
      for (int p = 0; p < 4; ++p) b[p] = sm.Bs[kk * kLD + tx + 16 * p];
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int p = 0; p < 4; ++p) acc[q][p] = fma(a[q], b[p], acc[q][p]);
    }
    __syncthreads();
  }
  finish_norms<T>(nacc, sm.nrm);
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int p = 0; p < 4; ++p)
      r[q][p] = DOT ? acc[q][p]
                    : wae_fast::sq_dist_from_dot(acc[q][p], sm.nrm[ty + 16 * q], sm.nrm[kBM + tx + 16 * p]);
}

// Tensor-core path (fp32 compute dtype, sm_80+): same contract as tile_sqdist_exact.
template <int PREC, bool DOT, class SA, class SB>
__device__ __forceinline__ void tile_sqdist_tc(const SA& sa, const SB& sb, int64_t nA, int64_t nB, int64_t d,
                                               int64_t i0, int64_t j0, const DotSmem<float>& sm, float r[4][4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  constexpr int DK = TileCfg<float>::DK;  // 16 = two k-steps of 8
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int warp = tid / 32;
  const int fr = (warp >> 1) * 16;   // fragment rows of this warp
  const int fc = (warp & 1) * 32;    // first of its two 16-column fragments
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> c0, c1;
  wmma::fill_fragment(c0, 0.0f);
  wmma::fill_fragment(c1, 0.0f);
  double nacc = 0.0;
  for (int64_t k0 = 0; k0 < d; k0 += DK) {
    stage_chunk<float, DK>(sa, nA, d, i0, k0, sm.As);
    stage_chunk<float, DK>(sb, nB, d, j0, k0, sm.Bs);
    __syncthreads();
    acc_norms<float, DK>(sm.As, sm.Bs, nacc);
#pragma unroll
    for (int ks = 0; ks < DK; ks += 8) {
      // A (16 x 8): element (m, k) at As[k * kLD + m] -> col_major; B (8 x 16): (k, n) at
      // Bs[k * kLD + n] -> row_major.
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> ah;
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> bh0, bh1;
      wmma::load_matrix_sync(ah, sm.As + ks * kLD + fr, kLD);
      wmma::load_matrix_sync(bh0, sm.Bs + ks * kLD + fc, kLD);
      wmma::load_matrix_sync(bh1, sm.Bs + ks * kLD + fc + 16, kLD);
      if (PREC == PREC_TF32X3) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> al;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> bl0, bl1;
#pragma unroll
        for (int t = 0; t < ah.num_elements; ++t) {
          const float v = ah.x[t];
          ah.x[t] = wmma::__float_to_tf32(v);
          al.x[t] = wmma::__float_to_tf32(v - ah.x[t]);
        }
#pragma unroll
        for (int t = 0; t < bh0.num_elements; ++t) {
          const float v0 = bh0.x[t], v1 = bh1.x[t];
          bh0.x[t] = wmma::__float_to_tf32(v0);
          bl0.x[t] = wmma::__float_to_tf32(v0 - bh0.x[t]);
          bh1.x[t] = wmma::__float_to_tf32(v1);
          bl1.x[t] = wmma::__float_to_tf32(v1 - bh1.x[t]);
        }
        // small products first
        wmma::mma_sync(c0, al, bh0, c0);
        wmma::mma_sync(c0, ah, bl0, c0);
        wmma::mma_sync(c0, ah, bh0, c0);
        wmma::mma_sync(c1, al, bh1, c1);
        wmma::mma_sync(c1, ah, bl1, c1);
        wmma::mma_sync(c1, ah, bh1, c1);
      } else {
#pragma unroll
        for (int t = 0; t < ah.num_elements; ++t) ah.x[t] = wmma::__float_to_tf32(ah.x[t]);
#pragma unroll
        for (int t = 0; t < bh0.num_elements; ++t) {
          bh0.x[t] = wmma::__float_to_tf32(bh0.x[t]);
          bh1.x[t] = wmma::__float_to_tf32(bh1.x[t]);
        }
        wmma::mma_sync(c0, ah, bh0, c0);
        wmma::mma_sync(c1, ah, bh1, c1);
      }
    }
    __syncthreads();
  }
  wmma::store_matrix_sync(sm.Ds + fr * kWLD + fc, c0, kWLD, wmma::mem_row_major);
  wmma::store_matrix_sync(sm.Ds + fr * kWLD + fc + 16, c1, kWLD, wmma::mem_row_major);
  finish_norms<float>(nacc, sm.nrm);  // its __syncthreads also publishes Ds
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int p = 0; p < 4; ++p)
      r[q][p] = DOT ? sm.Ds[(ty + 16 * q) * kWLD + tx + 16 * p]
                    : wae_fast::sq_dist_from_dot(sm.Ds[(ty + 16 * q) * kWLD + tx + 16 * p], sm.nrm[ty + 16 * q],
                                                 sm.nrm[kBM + tx + 16 * p]);
#else
  __trap();  // the host never selects the tensor-core path below sm_80
#endif
}

//! r = squared distances, or (DOT: the polynomial kernel) the dot products themselves.
template <class T, int PREC, bool DOT = false, class SA, class SB>
__device__ __forceinline__ void tile_sqdist(const SA& sa, const SB& sb, int64_t nA, int64_t nB, int64_t d,
                                            int64_t i0, int64_t j0, const DotSmem<T>& sm, T r[4][4]) {
  if constexpr (PREC == PREC_IEEE || !std::is_same<T, float>::value) {
    tile_sqdist_exact<T, DOT>(sa, sb, nA, nB, d, i0, j0, sm, r);
  } else {
    tile_sqdist_tc<PREC, DOT>(sa, sb, nA, nB, d, i0, j0, sm, r);
  }
}

// Fixed-order block reduction of one double per thread (result valid in thread 0).
__device__ __forceinline__ double block_sum(double v, const wae_fast::smem_ptr<double>& red) {
  const int tid = threadIdx.x;
  red[tid] = v;
  __syncthreads();
#pragma unroll
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) red[tid] += red[tid + s];
    __syncthreads();
  }
  return red[0];
}

// ---------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------
template <class T, int KIND, int PREC, class SA, class SB>
__global__ void __launch_bounds__(kThreads, 2) mmd_fwd_tiles(SA sa, SB sb, int64_t nA, int64_t nB, int64_t d,
                                                          KParams<T> P, int symmetric, int unbiased,
                                                          double* __restrict__ partials) {
  constexpr int DK = TileCfg<T>::DK;
  constexpr bool kTC = PREC != PREC_IEEE && std::is_same<T, float>::value;
  WAE_SHARED(T, As, DK * kLD);
  WAE_SHARED(T, Bs, DK * kLD);
  WAE_SHARED(T, Ds, kTC ? kBM * kWLD : 1);
  WAE_SHARED(T, nrm, 2 * kBM);
  WAE_SHARED(double, red, kThreads);
  const DotSmem<T> sm{As, Bs, nrm, Ds};
  const int64_t I = blockIdx.x;
  const int64_t split = blockIdx.y, nsplit = gridDim.y;
  const int64_t i0 = I * kBM;
  const int64_t nbj = (nB + kBN - 1) / kBN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  double acc = 0.0;
  for (int64_t J = (symmetric ? I : 0) + split; J < nbj; J += nsplit) {
    const int64_t j0 = J * kBN;
    constexpr bool kDot = KIND == wae_fast::KIND_POLY;
    T r[4][4];
    tile_sqdist<T, PREC, kDot>(sa, sb, nA, nB, d, i0, j0, sm, r);
    const bool diag_tile = symmetric && I == J;
    T s = T(0);
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const int64_t i = i0 + ty + 16 * q, j = j0 + tx + 16 * p;
        const bool dg = diag_tile && i == j;
        T k, w;
        eval_kernel<T, KIND>((dg && !kDot) ? T(0) : r[q][p], P, k, w);
        if (i < nA && j < nB && !(unbiased && dg)) s += k;
      }
    acc += (symmetric && !diag_tile) ? 2.0 * double(s) : double(s);
  }
  const double tot = block_sum(acc, red);
  if (threadIdx.x == 0) partials[I * nsplit + split] = tot;
}

__global__ void reduce_partials(const double* __restrict__ partials, int64_t count, double scale,
                                double* __restrict__ out) {
  WAE_SHARED(double, red, kThreads);
  double s = 0.0;
  for (int64_t e = threadIdx.x; e < count; e += kThreads) s += partials[e];
  const double tot = block_sum(s, red);
  if (threadIdx.x == 0) *out = tot * scale;
}

// ---------------------------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------------------------
//! Shared memory of the backward (dynamic: > 48 KB, opted in by the launcher).
template <class T>
struct GradSmem {
  DotSmem<T> dot;  // dot.Ds aliases W (each thread reads its Ds entries, then writes W there)
  wae_fast::smem_ptr<T> W;        // kBM x kWLD
  wae_fast::smem_ptr<T> Bc;       // kBN x KC: B rows of the gradient columns (aliases the staging chunks and nrm)
  wae_fast::smem_ptr<double> gs;  // kBM x KC fp64 gradient accumulators (entry (row, kk) owned by one thread)
};

template <class T>
struct GradLayout {
  static constexpr int DK = TileCfg<T>::DK;
  static constexpr int KC = TileCfg<T>::KC;
  // scratch: [As | Bs | nrm] during the distance phase, Bc during the gradient phase
  static constexpr int kDot = 2 * DK * kLD + 2 * kBM;
  static constexpr int kScratch = kDot > kBN * KC ? kDot : kBN * KC;
  static constexpr size_t gs = 0;
  static constexpr size_t W = gs + size_t(kBM) * KC * sizeof(double);
  static constexpr size_t scratch = W + (size_t(kBM) * kWLD * sizeof(T) + 127) / 128 * 128;
  static constexpr size_t bytes = scratch + size_t(kScratch) * sizeof(T);  // fp32: 64 KB, fp64: 49.5 KB
};

// gs[row][kk] += coef * sum_{j in the split's column tiles} W_ij (a_ik - b_jk) for this thread's
// rows row = rbase + kRowStep * t and column kk (gradient column kc0 + kk).
template <class T, int KIND, int PREC, class SB>
__device__ __forceinline__ void grad_pass(const T* __restrict__ A, const SB& sb, int64_t nA, int64_t nB, int64_t d,
                                          const KParams<T>& P, bool symmetric, bool unbiased, double coef,
                                          int64_t I, int64_t split, int64_t nsplit, int64_t kc0,
                                          const GradSmem<T>& sm) {
  // The polynomial works on dot products, keeps W_ii unless unbiased (k(a_i, a_i) depends on
  // a_i) and its gradient is -2 sum_j W_ij b_j (poly_eval in tile_math.h): no a_i term.
  constexpr bool kDot = KIND == wae_fast::KIND_POLY;
  const bool drop_diag = !kDot || unbiased;
  constexpr int KC = TileCfg<T>::KC;
  constexpr int kRowStep = kThreads / KC;
  constexpr int NR = kBM / kRowStep;
  const LoadSrc<T> sa{A};
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int kk = tid % KC, rbase = tid / KC;
  const int64_t i0 = I * kBM;
  const int64_t gk = kc0 + kk;
  const int64_t nbj = (nB + kBN - 1) / kBN;
  for (int64_t J = split; J < nbj; J += nsplit) {
    const int64_t j0 = J * kBN;
    T r[4][4];
    tile_sqdist<T, PREC, kDot>(sa, sb, nA, nB, d, i0, j0, sm.dot, r);
    const bool diag_tile = symmetric && I == J;
    // r goes through this thread's own W entries, then the kernel derivative is evaluated one
    // pair at a time (a rolled loop: fewer live registers than 16 interleaved evaluations).
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int p = 0; p < 4; ++p) sm.W[(ty + 16 * q) * kWLD + tx + 16 * p] = r[q][p];
#pragma unroll 1
    for (int e = 0; e < 16; ++e) {
      const int row = ty + 16 * (e >> 2), col = tx + 16 * (e & 3);
      const int64_t i = i0 + row, j = j0 + col;
      const bool dg = diag_tile && i == j;
      T k, w;
      eval_kernel<T, KIND>((dg && !kDot) ? T(0) : sm.W[row * kWLD + col], P, k, w);
      sm.W[row * kWLD + col] = (i < nA && j < nB && !(dg && drop_diag)) ? w : T(0);
    }
    // Bc aliases the staging chunks (free since tile_sqdist's last __syncthreads) AND nrm, which
    // other threads may still be reading in their epilogue: wait for them.
    __syncthreads();
    for (int e = tid; e < kBN * KC; e += kThreads) {
      const int row = e / KC, c = e % KC;
      const int64_t gj = j0 + row, gc = kc0 + c;
      sm.Bc[row * KC + c] = (gj < nB && gc < d) ? sb.get(gj, gc, d) : T(0);
    }
    __syncthreads();
    if (gk < d) {
#pragma unroll 1
      for (int t = 0; t < NR; ++t) {
        const int row = rbase + kRowStep * t;
        const int64_t i = i0 + row;
        if (i < nA) {
          const T a = kDot ? T(0) : A[i * d + gk];
          T acc = T(0);
#pragma unroll 8
          for (int j = 0; j < kBN; ++j) acc = fma(sm.W[row * kWLD + j], a - sm.Bc[j * KC + kk], acc);
          sm.gs[row * KC + kk] += coef * double(acc);
        }
      }
    }
    __syncthreads();
  }
}

// Gradient rows of A: self term (A vs A, coefficient c_self * gt[side]) + cross term (AX vs the
// B source, c_cross * gt[2]); A and AX hold the same points, shifted by the self and the cross
// term's shift (each term on its own coordinates).  blockIdx.x = row block, blockIdx.y =
// split * nchunk + chunk.
template <class T, int KIND, int PREC, class SB>
__global__ void __launch_bounds__(kThreads, 2)
    mmd_grad_rows(const T* __restrict__ A, const T* __restrict__ AX, SB sb, int64_t nA, int64_t nB, int64_t d, KParams<T> P,
                  const double* __restrict__ gt, int side, double c_self, double c_cross, unsigned nchunk,
                  double* __restrict__ gacc, void* __restrict__ out, int out_dt, int unbiased) {
  using L = GradLayout<T>;
  constexpr int DK = L::DK;
  constexpr int KC = L::KC;
  constexpr int kRowStep = kThreads / KC;
  constexpr int NR = kBM / kRowStep;
  WAE_DYN_SMEM(dsmem);
  const wae_fast::smem_ptr<T> W = wae_fast::dyn_slice<T>(dsmem, L::W, size_t(kBM) * kWLD, "W");
  const wae_fast::smem_ptr<T> scratch = wae_fast::dyn_slice<T>(dsmem, L::scratch, L::kScratch, "scratch");
  const wae_fast::smem_ptr<double> gs = wae_fast::dyn_slice<double>(dsmem, L::gs, size_t(kBM) * KC, "gs");
  // inside scratch (see GradLayout): the staging chunks and the norms of the distance phase
  const DotSmem<T> dot{wae_fast::sub_slice(scratch, 0, DK * kLD, "As"), wae_fast::sub_slice(scratch, DK * kLD, DK * kLD, "Bs"),
                       wae_fast::sub_slice(scratch, 2 * DK * kLD, 2 * kBM, "nrm"), W};
  const GradSmem<T> sm{dot, W, scratch, gs};
  const unsigned by = blockIdx.y;
  const int64_t I = blockIdx.x;
  const int64_t chunk = by % nchunk, split = by / nchunk;
  const int64_t nsplit = gridDim.y / nchunk;
  const int64_t kc0 = chunk * KC;
  const double cs = c_self * gt[side], cx = c_cross * gt[2];
  const int tid = threadIdx.x;
#pragma unroll
  for (int t = 0; t < NR; ++t) gs[(tid / KC + kRowStep * t) * KC + tid % KC] = 0.0;  // own entries
  grad_pass<T, KIND, PREC, LoadSrc<T>>(A, LoadSrc<T>{A}, nA, nA, d, P, true, unbiased != 0, cs, I, split, nsplit,
                                       kc0, sm);
  if (nB > 0) grad_pass<T, KIND, PREC, SB>(AX, sb, nA, nB, d, P, false, unbiased != 0, cx, I, split, nsplit, kc0, sm);
  const int64_t gk = kc0 + tid % KC;
  if (gk >= d) return;
#pragma unroll 1
  for (int t = 0; t < NR; ++t) {
    const int row = tid / KC + kRowStep * t;
    const int64_t i = I * kBM + row;
    if (i < nA) {
      const double v = gs[row * KC + tid % KC];
      if (gacc != nullptr) gacc[(split * nA + i) * d + gk] = v;
      else store_out(out, out_dt, i * d + gk, v);
    }
  }
}

// out[e] = sum_s gacc[s][e] (the splits already carry their coefficients), in split order.
template <class O>
__global__ void grad_combine(const double* __restrict__ gacc, int64_t nsplit, int64_t count, O* __restrict__ out) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= count) return;
  double s = 0.0;
  for (int64_t sp = 0; sp < nsplit; ++sp) s += gacc[sp * count + e];
  out[e] = from_double<O>(s);
}

template <class TI, class T>
__global__ void shift_kernel(const TI* __restrict__ in, const T* __restrict__ offset, T* __restrict__ out,
                             int64_t count, int64_t d) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= count) return;
  out[e] = T(to_ct(in[e])) - offset[e % d];
}

// ---------------------------------------------------------------------------------------------
// host helpers
// ---------------------------------------------------------------------------------------------
inline size_t align256(size_t b) { return (b + 255) / 256 * 256; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

//! Blocks the split heuristics aim for.  The emulated build lets a test lower it (environment
//! WAE_CUDA_EMU_TARGET_BLOCKS) to reach the one-split paths at sizes an emulator can run.
inline int64_t target_blocks() {
#if defined(WAE_CUDA_EMU)
  return ::wae_emu::env_int("WAE_CUDA_EMU_TARGET_BLOCKS", kTargetBlocks);
#else
  return kTargetBlocks;
#endif
}

//! Column splits of a forward term: enough blocks to fill a large GPU (a split costs one fp64
//! partial per row block, so up to kTargetBlocks of them: ceil(nA / 64) * splits <= ceil(nA / 64)
//! + kTargetBlocks partials), a function of the sizes only (determinism), at most the number of
//! column tiles.
inline int64_t fwd_nsplit(int64_t nA, int64_t nB) {
  const int64_t nbi = std::max<int64_t>(1, ceil_div(nA, kBM)), nbj = std::max<int64_t>(1, ceil_div(nB, kBN));
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(target_blocks(), nbi), nbj));
}

inline int64_t grad_chunks(int dtype, int64_t d) { return ceil_div(d, dtype == WAE_F64 ? 16 : 64); }

//! Column splits of a backward launch for nA gradient rows: parallelism for small N, bounded
//! fp64 buffers (nsplit * nA * d * 8 <= kGaccBudget); 1 (direct output, no buffer) for large N.
inline int64_t bwd_nsplit(int dtype, int64_t nA, int64_t d) {
  const int64_t blocks = std::max<int64_t>(1, ceil_div(nA, kBM) * grad_chunks(dtype, d));
  int64_t s = std::max<int64_t>(1, std::min<int64_t>(ceil_div(target_blocks(), blocks), kMaxSplits));
  const int64_t bytes = std::max<int64_t>(1, nA * d * 8);
  s = std::min<int64_t>(s, std::max<int64_t>(1, kGaccBudget / bytes));
  return s;
}

inline size_t gacc_bytes(int dtype, int64_t nA, int64_t d) {
  const int64_t s = bwd_nsplit(dtype, nA, d);
  return s > 1 ? align256(size_t(s) * size_t(nA) * size_t(d) * 8) : 0;
}

//! Workspace of one op (256-byte aligned pieces): shifted copies xs (n d) and ys (m d, mmd only)
//! in the compute dtype, reshifted between terms (stream order), and in the backward one more
//! copy self (max(n, m) d: the gradient rows in the self term's shift, while xs / ys hold the
//! cross term's), fp64 partials of the forward (one per row block and split, shared by the three
//! terms), fp64 split buffers of the backward (0 unless bwd_nsplit > 1).
struct WsLayout {
  size_t xs, ys, self, part, gacc, total;
};

inline size_t partial_bytes(int64_t n, int64_t m) {
  const int64_t nbx = ceil_div(n, kBM), nby = ceil_div(m, kBM);
  const int64_t cnt = std::max({nbx * fwd_nsplit(n, n), nby * fwd_nsplit(m, m), nbx * fwd_nsplit(n, m)});
  return align256(8 * size_t(std::max<int64_t>(cnt, 1)));
}

//! mmd ops: x (n, d) and y (m, d) stored.
inline WsLayout mmd_layout(int dtype, int64_t n, int64_t m, int64_t d, int for_backward) {
  const int ct = dtype == WAE_F64 ? WAE_F64 : WAE_F32;
  const size_t es = ct == WAE_F64 ? 8 : 4;
  WsLayout L{};
  L.xs = align256(es * size_t(n) * size_t(d));
  L.ys = align256(es * size_t(m) * size_t(d));
  if (!for_backward) {
    L.part = partial_bytes(n, m);
  } else {
    L.self = align256(es * size_t(std::max(n, m)) * size_t(d));
    L.gacc = std::max(gacc_bytes(ct, n, d), gacc_bytes(ct, m, d));
  }
  L.total = L.xs + L.ys + L.self + L.part + L.gacc;
  return L;
}

//! prior ops: x (n, d) stored, the m samples generated (nothing of size m d).
inline WsLayout prior_layout(int dtype, int64_t n, int64_t m, int64_t d, int for_backward) {
  const int ct = dtype == WAE_F64 ? WAE_F64 : WAE_F32;
  const size_t es = ct == WAE_F64 ? 8 : 4;
  WsLayout L{};
  L.xs = align256(es * size_t(n) * size_t(d));
  if (!for_backward) {
    L.part = partial_bytes(n, m);
  } else {
    L.self = L.xs;  // x in the xx shift (xs holds it in the xy shift)
    L.gacc = gacc_bytes(ct, n, d);
  }
  L.total = L.xs + L.self + L.part + L.gacc;
  return L;
}

//! Row blocks of one launch ride on grid.x; chunks x splits on grid.y.
inline bool grid_ok(int64_t rows, int64_t gy) {
  return ceil_div(rows, kBM) <= int64_t(2147483647) && gy <= 65535;
}

template <class T>
KParams<T> make_params(const double* params, int nparams) {
  KParams<T> P{};
  P.S = nparams;
  for (int s = 0; s < nparams; ++s) P.p[s] = T(params[s]);
  return P;
}

//! Tensor cores are used for fp32 compute, precision tf32/tf32x3, d >= 16, on sm_80+.
inline int effective_prec(bool is_double, int prec, int64_t d) {
  if (is_double || d < 16 || (prec != PREC_TF32 && prec != PREC_TF32X3)) return PREC_IEEE;
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return PREC_IEEE;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return PREC_IEEE;
  return major >= 8 ? prec : PREC_IEEE;
}

template <class TI, class T>
cudaError_t shift_into(const void* in, const void* offset, int64_t n, int64_t d, T* out, cudaStream_t st) {
  const int64_t count = n * d;
  if (count > 0)
    WAE_LAUNCH((shift_kernel<TI, T>), unsigned(ceil_div(count, 256)), 256, 0, st, static_cast<const TI*>(in),
               static_cast<const T*>(offset), out, count, d);
  return cudaGetLastError();
}

//! One forward term: partial sums (one per (row block, split)) and their fixed-order reduction
//! times scale into *out.  part holds >= ceil(nA / 64) * fwd_nsplit(nA, nB) doubles.
template <class T, int KIND, int PREC, class SA, class SB>
void launch_fwd_term_k(const SA& sa, const SB& sb, int64_t nA, int64_t nB, int64_t d, const KParams<T>& P,
                       int symmetric, int unbiased, double* part, double scale, double* out, cudaStream_t st) {
  const int64_t ns = fwd_nsplit(nA, nB);
  dim3 grid(unsigned(ceil_div(nA, kBM)), unsigned(ns));
  WAE_LAUNCH((mmd_fwd_tiles<T, KIND, PREC, SA, SB>), grid, kThreads, 0, st, sa, sb, nA, nB, d, P, symmetric, unbiased,
             part);
  WAE_LAUNCH((reduce_partials), 1, kThreads, 0, st, part, int64_t(grid.x) * ns, scale, out);
}

template <class T, class SA, class SB>
cudaError_t launch_fwd_term(const SA& sa, const SB& sb, int64_t nA, int64_t nB, int64_t d, int kind, int prec,
                            const KParams<T>& P, int symmetric, int unbiased, double* part, double scale, double* out,
                            cudaStream_t st) {
  if (nA <= 0 || nB <= 0) return cudaMemsetAsync(out, 0, sizeof(double), st);
  if (!grid_ok(nA, fwd_nsplit(nA, nB))) return cudaErrorInvalidConfiguration;
  constexpr bool kF32 = std::is_same<T, float>::value;
  const bool imq = kind == wae_fast::KIND_IMQ;
  if (kind == wae_fast::KIND_POLY) {  // exact FMA dot products only (KID needs "ieee", see README)
    launch_fwd_term_k<T, wae_fast::KIND_POLY, PREC_IEEE>(sa, sb, nA, nB, d, P, symmetric, unbiased, part, scale, out, st);
  } else if (kF32 && prec == PREC_TF32) {
    if (imq) launch_fwd_term_k<T, wae_fast::KIND_IMQ, (kF32 ? PREC_TF32 : 0)>(sa, sb, nA, nB, d, P, symmetric, unbiased, part, scale, out, st);
    else launch_fwd_term_k<T, wae_fast::KIND_RBF, (kF32 ? PREC_TF32 : 0)>(sa, sb, nA, nB, d, P, symmetric, unbiased, part, scale, out, st);
  } else if (kF32 && prec == PREC_TF32X3) {
    if (imq) launch_fwd_term_k<T, wae_fast::KIND_IMQ, (kF32 ? PREC_TF32X3 : 0)>(sa, sb, nA, nB, d, P, symmetric, unbiased, part, scale, out, st);
    else launch_fwd_term_k<T, wae_fast::KIND_RBF, (kF32 ? PREC_TF32X3 : 0)>(sa, sb, nA, nB, d, P, symmetric, unbiased, part, scale, out, st);
  } else {
    if (imq) launch_fwd_term_k<T, wae_fast::KIND_IMQ, PREC_IEEE>(sa, sb, nA, nB, d, P, symmetric, unbiased, part, scale, out, st);
    else launch_fwd_term_k<T, wae_fast::KIND_RBF, PREC_IEEE>(sa, sb, nA, nB, d, P, symmetric, unbiased, part, scale, out, st);
  }
  return cudaGetLastError();
}

template <class T, int KIND, int PREC, class SB>
void launch_grad_k(const T* A, const T* AX, const SB& sb, int64_t nA, int64_t nB, int64_t d, const KParams<T>& P, const double* gt,
                   int side, double c_self, double c_cross, double* gacc, int64_t nsplit, int64_t nchunk, void* out,
                   int out_dt, cudaStream_t st, int unbiased) {
  dim3 grid(unsigned(ceil_div(nA, kBM)), unsigned(nsplit * nchunk));
  constexpr size_t smem = GradLayout<T>::bytes;
  auto kern = mmd_grad_rows<T, KIND, PREC, SB>;
  if (cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) != cudaSuccess) return;
  WAE_LAUNCH((kern), grid, kThreads, smem, st, A, AX, sb, nA, nB, d, P, gt, side, c_self, c_cross, unsigned(nchunk),
             nsplit > 1 ? gacc : nullptr, out, out_dt, unbiased);
}

template <class O>
void launch_combine(const double* gacc, int64_t nsplit, int64_t count, void* out, cudaStream_t st) {
  WAE_LAUNCH((grad_combine<O>), unsigned(ceil_div(count, 256)), 256, 0, st, gacc, nsplit, count, static_cast<O*>(out));
}

//! Gradient of nA rows of A (out, dtype code out_dt, (nA, d)): self term (A, the rows in the
//! self term's shift) + cross term (AX, the same rows in the cross term's shift) vs sb.
//! gacc: gacc_bytes(ct_code, nA, d) bytes (may be null when that is 0).
template <class T, class SB>
cudaError_t launch_grad(const T* A, const T* AX, const SB& sb, int64_t nA, int64_t nB, int64_t d, int kind, int prec,
                        const KParams<T>& P, const double* gt, int side, double c_self, double c_cross, double* gacc,
                        void* out, int out_dt, cudaStream_t st, int unbiased = 1) {
  constexpr bool kF32 = std::is_same<T, float>::value;
  const int ct_code = kF32 ? WAE_F32 : WAE_F64;
  if (nA <= 0 || d <= 0) return cudaSuccess;
  const int64_t nsplit = bwd_nsplit(ct_code, nA, d), nchunk = grad_chunks(ct_code, d);
  if (!grid_ok(nA, nsplit * nchunk)) return cudaErrorInvalidConfiguration;
  const bool imq = kind == wae_fast::KIND_IMQ;
  if (kind == wae_fast::KIND_POLY) {  // exact FMA dot products only (KID needs "ieee", see README)
    launch_grad_k<T, wae_fast::KIND_POLY, PREC_IEEE, SB>(A, AX, sb, nA, nB, d, P, gt, side, c_self, c_cross, gacc, nsplit,
                                                         nchunk, out, out_dt, st, unbiased);
    prec = -1;  // skip the r-kernel dispatch below
  }
#define WAE_GRAD(KD, PR) \
  launch_grad_k<T, KD, PR, SB>(A, AX, sb, nA, nB, d, P, gt, side, c_self, c_cross, gacc, nsplit, nchunk, out, out_dt, st, \
                               unbiased)
  if (prec < 0) {
  } else if (kF32 && prec == PREC_TF32) {
    if (imq) WAE_GRAD(wae_fast::KIND_IMQ, (kF32 ? PREC_TF32 : 0));
    else WAE_GRAD(wae_fast::KIND_RBF, (kF32 ? PREC_TF32 : 0));
  } else if (kF32 && prec == PREC_TF32X3) {
    if (imq) WAE_GRAD(wae_fast::KIND_IMQ, (kF32 ? PREC_TF32X3 : 0));
    else WAE_GRAD(wae_fast::KIND_RBF, (kF32 ? PREC_TF32X3 : 0));
  } else {
    if (imq) WAE_GRAD(wae_fast::KIND_IMQ, PREC_IEEE);
    else WAE_GRAD(wae_fast::KIND_RBF, PREC_IEEE);
  }
#undef WAE_GRAD
  if (nsplit > 1) {
    const int64_t count = nA * d;
    switch (out_dt) {
      case WAE_F32: launch_combine<float>(gacc, nsplit, count, out, st); break;
      case WAE_F64: launch_combine<double>(gacc, nsplit, count, out, st); break;
      case WAE_F16: launch_combine<__half>(gacc, nsplit, count, out, st); break;
      default: launch_combine<__nv_bfloat16>(gacc, nsplit, count, out, st); break;
    }
  }
  return cudaGetLastError();
}

}  // namespace
