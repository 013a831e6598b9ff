// wae_fast CUDA kernels: fused, memory-flat squared MMD (forward terms and input gradients).
// No torch headers; extern "C" launchers in wae_cuda.h.
//
// Exact FP32-FMA (or FP64) path:
//  * shift_kernel: p - offset in the compute dtype (fp16/bf16/fp32 -> fp32, fp64 -> fp64), squared norms.
//  * mmd_fwd_tiles: one 64 x 64 pair tile per block (256 threads, 4 x 4 pairs each); dot products
//    through shared memory, r = |a|^2 + |b|^2 - 2 a.b clamped at 0, r_ii = 0 exactly on diagonal
//    tiles, all kernel scales in registers (IMQ: one reciprocal per PAIR of scales), the tile sum
//    reduced in a fixed tree order in fp64 into one partial per block.  Self terms: tiles with
//    J < I exit at once, off-diagonal tiles count twice (symmetric tiles computed once).
//  * reduce_partials: one block sums the partials in a fixed order -> bit-identical reruns.
//  * mmd_grad_rows: block (I, split) walks the column tiles J = split, split + S, ... of the row
//    block I, builds W = dk/dr in shared memory and accumulates sum_j W_ij (a_i - b_j) (direct
//    differences: no rowsum(W) a - W b cancellation, and the i == j term is exactly 0) into a
//    per-split fp64 buffer; grad_combine adds the splits in order and writes the input dtype.
//    No N x M buffer, no atomics.  (The backward does not exploit symmetry: each xx pair is
//    evaluated twice, once per row side.)
// Indexing is int64 throughout; grid.y (row blocks) limits N to 65535 * 64 points per launch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "wae_cuda.h"
#include "wae_fast/tile_math.h"

namespace {

constexpr int kBM = 64;       // tile rows
constexpr int kBN = 64;       // tile cols
constexpr int kThreads = 256;  // 16 x 16 threads, 4 x 4 pairs each

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

template <class TI, class T>
__global__ void shift_kernel(const TI* __restrict__ in, const T* __restrict__ offset, T* __restrict__ out,
                             T* __restrict__ nrm, int64_t n, int64_t d) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  double s = 0.0;  // fixed order, fp64, rounded once
  for (int64_t k = 0; k < d; ++k) {
    T v = T(to_ct(in[i * d + k])) - offset[k];
    out[i * d + k] = v;
    s += double(v) * double(v);
  }
  nrm[i] = T(s);
}

__device__ __forceinline__ float dev_exp(float x) { return __expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }

template <class T, int KIND>
__device__ __forceinline__ void eval_kernel(T r, const KParams<T>& P, T& k, T& w) {
  k = T(0);
  w = T(0);
  if (KIND == wae_fast::KIND_IMQ) {
    wae_fast::imq_eval(r, P.p, P.S, k, w);
  } else {
    wae_fast::rbf_eval(r, P.p, P.S, k, w, [](T v) { return dev_exp(v); });
  }
}

template <class T>
struct TileCfg {
  static constexpr int DK = sizeof(T) == 8 ? 8 : 16;   // k-chunk of the dot products
  static constexpr int KC = sizeof(T) == 8 ? 16 : 64;  // k-chunk of the gradient phase
};

// Squared distances of the 4 x 4 pairs owned by this thread (rows ty + 16 q, cols tx + 16 p).
template <class T>
__device__ __forceinline__ void tile_sqdist(const T* __restrict__ A, const T* __restrict__ B,
                                            const T* __restrict__ na, const T* __restrict__ nb, int64_t nA,
                                            int64_t nB, int64_t d, int64_t i0, int64_t j0, T* As, T* Bs,
                                            T r[4][4]) {
  constexpr int DK = TileCfg<T>::DK;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  T acc[4][4];
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int p = 0; p < 4; ++p) acc[q][p] = T(0);
  for (int64_t k0 = 0; k0 < d; k0 += DK) {
    for (int e = tid; e < kBM * DK; e += kThreads) {
      const int row = e / DK, kk = e % DK;
      const int64_t gk = k0 + kk;
      const int64_t gi = i0 + row, gj = j0 + row;
      As[kk * (kBM + 1) + row] = (gi < nA && gk < d) ? A[gi * d + gk] : T(0);
      Bs[kk * (kBN + 1) + row] = (gj < nB && gk < d) ? B[gj * d + gk] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < DK; ++kk) {
      T a[4], b[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) a[q] = As[kk * (kBM + 1) + ty + 16 * q];
#pragma unroll
      for (int p = 0; p < 4; ++p) b[p] = Bs[kk * (kBN + 1) + tx + 16 * p];
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int p = 0; p < 4; ++p) acc[q][p] = fma(a[q], b[p], acc[q][p]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int64_t i = i0 + ty + 16 * q;
    const T nai = i < nA ? na[i] : T(0);
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const int64_t j = j0 + tx + 16 * p;
      const T nbj = j < nB ? nb[j] : T(0);
      r[q][p] = wae_fast::sq_dist_from_dot(acc[q][p], nai, nbj);
    }
  }
}

// Fixed-order block reduction of one double per thread (result valid in thread 0).
__device__ __forceinline__ double block_sum(double v, double* red) {
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

template <class T, int KIND>
__global__ void __launch_bounds__(kThreads) mmd_fwd_tiles(const T* __restrict__ A, const T* __restrict__ B,
                                                          const T* __restrict__ na, const T* __restrict__ nb,
                                                          int64_t nA, int64_t nB, int64_t d, KParams<T> P,
                                                          int symmetric, int unbiased, double* __restrict__ partials) {
  constexpr int DK = TileCfg<T>::DK;
  __shared__ T As[DK * (kBM + 1)];
  __shared__ T Bs[DK * (kBN + 1)];
  __shared__ double red[kThreads];
  const int64_t I = blockIdx.y, J = blockIdx.x;
  const int64_t pid = I * int64_t(gridDim.x) + J;
  if (symmetric && J < I) {
    if (threadIdx.x == 0) partials[pid] = 0.0;
    return;
  }
  const int64_t i0 = I * kBM, j0 = J * kBN;
  T r[4][4];
  tile_sqdist<T>(A, B, na, nb, nA, nB, d, i0, j0, As, Bs, r);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const bool diag_tile = symmetric && I == J;
  T s = T(0);
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const int64_t i = i0 + ty + 16 * q, j = j0 + tx + 16 * p;
      const bool dg = diag_tile && i == j;
      T rr = dg ? T(0) : r[q][p];
      T k, w;
      eval_kernel<T, KIND>(rr, P, k, w);
      if (i < nA && j < nB && !(unbiased && dg)) s += k;
    }
  const double tot = block_sum(double(s), red);
  if (threadIdx.x == 0) partials[pid] = (symmetric && I != J) ? 2.0 * tot : tot;
}

__global__ void reduce_partials(const double* __restrict__ partials, int64_t count, double scale,
                                double* __restrict__ out) {
  __shared__ double red[kThreads];
  double s = 0.0;
  for (int64_t e = threadIdx.x; e < count; e += kThreads) s += partials[e];
  const double tot = block_sum(s, red);
  if (threadIdx.x == 0) *out = tot * scale;
}

// gacc[split][i][k] += coef * sum_{j in this split's column tiles} W_ij (a_ik - b_jk)
template <class T, int KIND>
__global__ void __launch_bounds__(kThreads, 2) mmd_grad_rows(const T* __restrict__ A, const T* __restrict__ B,
                                                          const T* __restrict__ na, const T* __restrict__ nb,
                                                          int64_t nA, int64_t nB, int64_t d, KParams<T> P,
                                                          int symmetric, double coef, double* __restrict__ gacc) {
  constexpr int DK = TileCfg<T>::DK;
  constexpr int KC = TileCfg<T>::KC;
  constexpr int kDotSmem = 2 * DK * (kBM + 1);
  constexpr int kGradSmem = kBN * (KC + 1);
  __shared__ T scratch[kDotSmem > kGradSmem ? kDotSmem : kGradSmem];  // dot phase / gradient phase
  __shared__ T W[kBM * (kBN + 1)];
  T* As = scratch;
  T* Bs = scratch + DK * (kBM + 1);
  T* Bc = scratch;
  const int64_t I = blockIdx.y;
  const int64_t split = blockIdx.x, nsplit = gridDim.x;
  const int64_t i0 = I * kBM;
  const int64_t nbj = (nB + kBN - 1) / kBN;
  double* __restrict__ g = gacc + split * nA * d;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int kk = tid % KC;
  const int rbase = tid / KC;
  constexpr int kRowStep = kThreads / KC;
  for (int64_t J = split; J < nbj; J += nsplit) {
    const int64_t j0 = J * kBN;
    T r[4][4];
    tile_sqdist<T>(A, B, na, nb, nA, nB, d, i0, j0, As, Bs, r);
    const bool diag_tile = symmetric && I == J;
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const int64_t i = i0 + ty + 16 * q, j = j0 + tx + 16 * p;
        const bool dg = diag_tile && i == j;
        T k, w;
        eval_kernel<T, KIND>(dg ? T(0) : r[q][p], P, k, w);
        W[(ty + 16 * q) * (kBN + 1) + tx + 16 * p] = (i < nA && j < nB && !dg) ? w : T(0);
      }
    // (tile_sqdist ended with __syncthreads, so scratch is free; W is published below)
    for (int64_t kc = 0; kc < d; kc += KC) {
      __syncthreads();
      for (int e = tid; e < kBN * KC; e += kThreads) {
        const int row = e / KC, c = e % KC;
        const int64_t gj = j0 + row, gk = kc + c;
        Bc[row * (KC + 1) + c] = (gj < nB && gk < d) ? B[gj * d + gk] : T(0);
      }
      __syncthreads();
      const int64_t gk = kc + kk;
      if (gk < d) {
        for (int row = rbase; row < kBM; row += kRowStep) {
          const int64_t i = i0 + row;
          if (i >= nA) break;
          const T a = A[i * d + gk];
          T acc = T(0);
#pragma unroll 8
          for (int j = 0; j < kBN; ++j) acc = fma(W[row * (kBN + 1) + j], a - Bc[j * (KC + 1) + kk], acc);
          g[i * d + gk] += coef * double(acc);
        }
      }
    }
    __syncthreads();
  }
}

// out[e] = c_self * gt[side] * sum_s gself[s][e] + c_cross * gt[2] * sum_s gcross[s][e]
// (grad_terms read on the device: no host synchronisation in the backward).
template <class O>
__global__ void grad_combine(const double* __restrict__ gself, const double* __restrict__ gcross, int64_t nsplit,
                             int64_t count, const double* __restrict__ gt, int side, double c_self, double c_cross,
                             O* __restrict__ out) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= count) return;
  double s1 = 0.0, s2 = 0.0;
  for (int64_t sp = 0; sp < nsplit; ++sp) {
    s1 += gself[sp * count + e];
    s2 += gcross[sp * count + e];
  }
  out[e] = from_double<O>(c_self * gt[side] * s1 + c_cross * gt[2] * s2);
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

struct Layout {
  size_t xs, ys, nx, ny, part, gacc, total;
  int64_t nsplit;
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

Layout layout(int dtype, int64_t n, int64_t m, int64_t d, int for_backward) {
  const size_t es = dtype == WAE_F64 ? 8 : 4;
  Layout L{};
  const int64_t nbx = ceil_div(n, kBM), nby = ceil_div(m, kBM);
  L.xs = align256(es * n * d);
  L.ys = align256(es * m * d);
  L.nx = align256(es * n);
  L.ny = align256(es * m);
  const int64_t tiles = std::max(nbx * nbx, std::max(nby * nby, nbx * nby));
  L.part = for_backward ? 0 : align256(8 * size_t(tiles));
  // Column splits of the backward: enough blocks to fill a large GPU (~4 per SM on 132 SMs),
  // a function of the sizes only (determinism), at most 32.
  const int64_t rows = std::max<int64_t>(1, std::min(nbx, nby));
  L.nsplit = for_backward ? std::max<int64_t>(1, std::min<int64_t>(32, ceil_div(528, rows))) : 0;
  L.gacc = for_backward ? align256(2 * 8 * size_t(L.nsplit) * size_t(std::max(n, m)) * d) : 0;  // self + cross
  L.total = L.xs + L.ys + L.nx + L.ny + L.part + L.gacc;
  return L;
}

template <class TI, class T>
cudaError_t prep(const void* x, const void* y, const void* offset, int64_t n, int64_t m, int64_t d, char* ws,
                 const Layout& L, T*& xs, T*& ys, T*& nx, T*& ny, cudaStream_t st) {
  xs = reinterpret_cast<T*>(ws);
  ys = reinterpret_cast<T*>(ws + L.xs);
  nx = reinterpret_cast<T*>(ws + L.xs + L.ys);
  ny = reinterpret_cast<T*>(ws + L.xs + L.ys + L.nx);
  const T* off = static_cast<const T*>(offset);
  if (n > 0)
    shift_kernel<TI, T><<<unsigned(ceil_div(n, 256)), 256, 0, st>>>(static_cast<const TI*>(x), off, xs, nx, n, d);
  if (m > 0)
    shift_kernel<TI, T><<<unsigned(ceil_div(m, 256)), 256, 0, st>>>(static_cast<const TI*>(y), off, ys, ny, m, d);
  return cudaGetLastError();
}

template <class T>
KParams<T> make_params(const double* params, int nparams) {
  KParams<T> P{};
  P.S = nparams;
  for (int s = 0; s < nparams; ++s) P.p[s] = T(params[s]);
  return P;
}

template <class T>
void launch_fwd_term(const T* A, const T* B, const T* na, const T* nb, int64_t nA, int64_t nB, int64_t d, int kind,
                     const KParams<T>& P, int symmetric, int unbiased, double* part, double scale, double* out,
                     cudaStream_t st) {
  dim3 grid(unsigned(ceil_div(nB, kBN)), unsigned(ceil_div(nA, kBM)));
  if (kind == wae_fast::KIND_IMQ)
    mmd_fwd_tiles<T, wae_fast::KIND_IMQ><<<grid, kThreads, 0, st>>>(A, B, na, nb, nA, nB, d, P, symmetric, unbiased, part);
  else
    mmd_fwd_tiles<T, wae_fast::KIND_RBF><<<grid, kThreads, 0, st>>>(A, B, na, nb, nA, nB, d, P, symmetric, unbiased, part);
  reduce_partials<<<1, kThreads, 0, st>>>(part, int64_t(grid.x) * grid.y, scale, out);
}

template <class TI, class T>
int fwd_impl(const void* x, const void* y, const void* offset, int64_t n, int64_t m, int64_t d, int kind,
             const double* params, int nparams, int unbiased, double* terms, void* workspace, size_t wsb,
             cudaStream_t st) {
  const Layout L = layout(std::is_same<T, double>::value ? WAE_F64 : WAE_F32, n, m, d, 0);
  if (wsb < L.total) return int(cudaErrorInvalidValue);
  char* ws = static_cast<char*>(workspace);
  T *xs, *ys, *nx, *ny;
  cudaError_t e = prep<TI, T>(x, y, offset, n, m, d, ws, L, xs, ys, nx, ny, st);
  if (e != cudaSuccess) return int(e);
  double* part = reinterpret_cast<double*>(ws + L.xs + L.ys + L.nx + L.ny);
  const KParams<T> P = make_params<T>(params, nparams);
  const double nxx = wae_fast::pair_count_self(n, unbiased), nyy = wae_fast::pair_count_self(m, unbiased);
  // the three terms run one after the other on the stream, sharing the partials buffer
  launch_fwd_term<T>(xs, xs, nx, nx, n, n, d, kind, P, 1, unbiased, part, 1.0 / nxx, terms + 0, st);
  launch_fwd_term<T>(ys, ys, ny, ny, m, m, d, kind, P, 1, unbiased, part, 1.0 / nyy, terms + 1, st);
  launch_fwd_term<T>(xs, ys, nx, ny, n, m, d, kind, P, 0, unbiased, part, 1.0 / (double(n) * double(m)), terms + 2, st);
  return int(cudaGetLastError());
}

template <class T>
void launch_grad(const T* A, const T* B, const T* na, const T* nb, int64_t nA, int64_t nB, int64_t d, int kind,
                 const KParams<T>& P, int symmetric, double coef, double* gacc, int64_t nsplit, cudaStream_t st) {
  const int64_t nbj = ceil_div(nB, kBN);
  dim3 grid(unsigned(std::min<int64_t>(nsplit, nbj)), unsigned(ceil_div(nA, kBM)));
  if (kind == wae_fast::KIND_IMQ)
    mmd_grad_rows<T, wae_fast::KIND_IMQ><<<grid, kThreads, 0, st>>>(A, B, na, nb, nA, nB, d, P, symmetric, coef, gacc);
  else
    mmd_grad_rows<T, wae_fast::KIND_RBF><<<grid, kThreads, 0, st>>>(A, B, na, nb, nA, nB, d, P, symmetric, coef, gacc);
}

template <class TI, class T>
int bwd_impl(const void* x, const void* y, const void* offset, int64_t n, int64_t m, int64_t d, int kind,
             const double* params, int nparams, int unbiased, const double* gt, void* gx, void* gy,
             void* workspace, size_t wsb, cudaStream_t st) {
  const Layout L = layout(std::is_same<T, double>::value ? WAE_F64 : WAE_F32, n, m, d, 1);
  if (wsb < L.total) return int(cudaErrorInvalidValue);
  char* ws = static_cast<char*>(workspace);
  T *xs, *ys, *nx, *ny;
  cudaError_t e = prep<TI, T>(x, y, offset, n, m, d, ws, L, xs, ys, nx, ny, st);
  if (e != cudaSuccess) return int(e);
  double* gacc = reinterpret_cast<double*>(ws + L.xs + L.ys + L.nx + L.ny + L.part);
  const KParams<T> P = make_params<T>(params, nparams);
  const double nxx = wae_fast::pair_count_self(n, unbiased), nyy = wae_fast::pair_count_self(m, unbiased);
  const double nxy = double(n) * double(m);
  // d r_ij / d a_i = 2 (a_i - b_j); each unordered self pair appears twice in the sum.
  for (int side = 0; side < 2; ++side) {
    void* out = side == 0 ? gx : gy;
    if (out == nullptr) continue;
    const T* A = side == 0 ? xs : ys;
    const T* B = side == 0 ? ys : xs;
    const T* na = side == 0 ? nx : ny;
    const T* nb = side == 0 ? ny : nx;
    const int64_t nA = side == 0 ? n : m, nB = side == 0 ? m : n;
    const double cself = 4.0 / (side == 0 ? nxx : nyy);  // times grad_terms[side]
    const double cx = 2.0 / nxy;                          // times grad_terms[2]
    const int64_t nsplit = L.nsplit;
    const int64_t count = nA * d;
    if (count == 0) continue;
    double* gself = gacc;
    double* gcross = gacc + nsplit * count;
    e = cudaMemsetAsync(gacc, 0, 2 * sizeof(double) * size_t(nsplit) * size_t(count), st);
    if (e != cudaSuccess) return int(e);
    if (nA > 0) launch_grad<T>(A, A, na, na, nA, nA, d, kind, P, 1, 1.0, gself, nsplit, st);
    if (nA > 0 && nB > 0) launch_grad<T>(A, B, na, nb, nA, nB, d, kind, P, 0, 1.0, gcross, nsplit, st);
    grad_combine<TI><<<unsigned(ceil_div(count, 256)), 256, 0, st>>>(gself, gcross, nsplit, count, gt, side, cself,
                                                                     cx, static_cast<TI*>(out));
  }
  return int(cudaGetLastError());
}

}  // namespace

extern "C" size_t wae_mmd_workspace_bytes(int dtype, int64_t n, int64_t m, int64_t d, int for_backward) {
  return layout(dtype, n, m, d, for_backward).total;
}

extern "C" int wae_mmd_fwd(int dtype, const void* x, const void* y, const void* offset, int64_t n, int64_t m,
                           int64_t d, int kind, const double* params, int nparams, int unbiased, double* terms,
                           void* workspace, size_t wsb, cudaStream_t st) {
  if (nparams < 1 || nparams > wae_fast::kMaxScales) return int(cudaErrorInvalidValue);
  if (ceil_div(std::max(n, m), kBM) > 65535) return int(cudaErrorInvalidConfiguration);
  switch (dtype) {
    case WAE_F32: return fwd_impl<float, float>(x, y, offset, n, m, d, kind, params, nparams, unbiased, terms, workspace, wsb, st);
    case WAE_F64: return fwd_impl<double, double>(x, y, offset, n, m, d, kind, params, nparams, unbiased, terms, workspace, wsb, st);
    case WAE_F16: return fwd_impl<__half, float>(x, y, offset, n, m, d, kind, params, nparams, unbiased, terms, workspace, wsb, st);
    case WAE_BF16: return fwd_impl<__nv_bfloat16, float>(x, y, offset, n, m, d, kind, params, nparams, unbiased, terms, workspace, wsb, st);
  }
  return int(cudaErrorInvalidValue);
}

extern "C" int wae_mmd_bwd(int dtype, const void* x, const void* y, const void* offset, int64_t n, int64_t m,
                           int64_t d, int kind, const double* params, int nparams, int unbiased,
                           const double* grad_terms, void* gx, void* gy, void* workspace, size_t wsb,
                           cudaStream_t st) {
  if (nparams < 1 || nparams > wae_fast::kMaxScales) return int(cudaErrorInvalidValue);
  if (ceil_div(std::max(n, m), kBM) > 65535) return int(cudaErrorInvalidConfiguration);
  switch (dtype) {
    case WAE_F32: return bwd_impl<float, float>(x, y, offset, n, m, d, kind, params, nparams, unbiased, grad_terms, gx, gy, workspace, wsb, st);
    case WAE_F64: return bwd_impl<double, double>(x, y, offset, n, m, d, kind, params, nparams, unbiased, grad_terms, gx, gy, workspace, wsb, st);
    case WAE_F16: return bwd_impl<__half, float>(x, y, offset, n, m, d, kind, params, nparams, unbiased, grad_terms, gx, gy, workspace, wsb, st);
    case WAE_BF16: return bwd_impl<__nv_bfloat16, float>(x, y, offset, n, m, d, kind, params, nparams, unbiased, grad_terms, gx, gy, workspace, wsb, st);
  }
  return int(cudaErrorInvalidValue);
}
