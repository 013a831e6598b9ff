// CUDA kernel of the mmd_segments family: the per-set row passes of wae_fast/segment_sums.py,
// every set's tiles in one launch per term (the task table of segment_sums.task_table).
//
// A block owns one task [set, r0, r1, c0, c1, o0]: up to kSegRows rows of A in set b against the
// set's columns [c0, c1) of C with column weights v.  Each thread owns one row; the block stages
// kSegCols shifted columns at a time in shared memory (weight-0 columns staged as zeros: their
// coordinates are never read) and every thread computes, for its row i,
//   s_i = sum_j v_j k(a_i, c_j)        (float64)
//   G_i = sum_j v_j W_ij (a_i - c_j)   (polynomial: -sum_j v_j W_ij c_j)
// with r_ii = 0 when A is C (self pass) and the j == i terms dropped when exclude_diag.  The pair
// math is tile_math.h's.  Each output row is written by one thread: no atomics.  Simple on
// purpose (a scalar FMA loop per pair, no tensor cores): correct first, tuned on a GPU later
// (no GPU in the session that wrote it: unmeasured).
#include <cuda_runtime.h>

#include <cstdint>

#include "portable.h"
#include "wae_cuda.h"
#include "wae_fast/tile_math.h"

namespace {

constexpr int kSegRows = 64;    // rows (threads) per block = task tile (segment_sums.task_table block)
constexpr int kSegCols = 32;    // columns staged per step
constexpr int kSegMaxD = 256;   // feature dimension bound (shared memory: kSegCols * d values)

template <class T>
struct SegParams {  // kernel params by value (IMQ C_s / RBF gamma_s, or [gamma, coef0, degree])
  T p[wae_fast::kMaxScales];
  int n;
};

template <class T>
struct SegExp {
  __device__ T operator()(T x) const { return exp(x); }
};

template <class T>
__global__ void seg_rows_kernel(const T* __restrict__ A, const T* __restrict__ C, const T* __restrict__ CW,
                                const T* __restrict__ SH, const int64_t* __restrict__ tasks, int64_t d, int kind,
                                SegParams<T> P, int self_pass, int excl, int grad,
                                double* __restrict__ s_out, T* __restrict__ g_out) {
  WAE_DYN_SMEM(seg_smem);
  const size_t ncs = size_t(kSegCols) * size_t(d);
  const wae_fast::smem_ptr<T> cs = wae_fast::dyn_slice<T>(seg_smem, 0, ncs, "cols");  // shifted columns
  const wae_fast::smem_ptr<T> cn = wae_fast::dyn_slice<T>(seg_smem, ncs * sizeof(T), kSegCols, "norms");
  const wae_fast::smem_ptr<T> cv = wae_fast::dyn_slice<T>(seg_smem, (ncs + kSegCols) * sizeof(T), kSegCols, "weights");
  const int64_t* tk = tasks + 6 * int64_t(blockIdx.x);
  const int64_t b = tk[0], r0 = tk[1], r1 = tk[2], c0 = tk[3], c1 = tk[4], o0 = tk[5];
  const T* sh = SH + b * d;
  const int64_t i = r0 + threadIdx.x;
  const bool live = i < r1;
  const T* a = A + (live ? i : r0) * d;
  T na = T(0);
  for (int64_t k = 0; k < d; ++k) {
    const T v = a[k] - sh[k];
    na += v * v;
  }
  na = wae_fast::norm_in_range(na);
  double s = 0.0;
  T rs = T(0);
  T* g = (grad && live) ? g_out + (o0 + (i - r0)) * d : nullptr;
  if (g != nullptr)
    for (int64_t k = 0; k < d; ++k) g[k] = T(0);
  for (int64_t j0 = c0; j0 < c1; j0 += kSegCols) {
    const int ncol = int(c1 - j0 < kSegCols ? c1 - j0 : kSegCols);
    __syncthreads();
    for (int e = threadIdx.x; e < kSegCols * d; e += blockDim.x) {
      const int jj = int(e / d);
      const int64_t k = e % d;
      T w = T(0), v = T(0);
      if (jj < ncol) {
        w = CW != nullptr ? CW[j0 + jj] : T(1);
        if (w != T(0)) v = C[(j0 + jj) * d + k] - sh[k];
      }
      cs[jj * d + k] = v;
      if (k == 0) cv[jj] = w;
    }
    __syncthreads();
    for (int jj = threadIdx.x; jj < kSegCols; jj += blockDim.x) {
      T n = T(0);
      for (int64_t k = 0; k < d; ++k) n += cs[jj * d + k] * cs[jj * d + k];
      cn[jj] = cv[jj] != T(0) ? wae_fast::norm_in_range(n) : T(0);
    }
    __syncthreads();
    if (!live) continue;
    for (int jj = 0; jj < ncol; ++jj) {
      const T v = cv[jj];
      if (v == T(0)) continue;
      const bool diag = self_pass && (j0 + jj == i);
      if (excl && diag) continue;
      const int64_t cb = int64_t(jj) * d;
      T dot = T(0);
      for (int64_t k = 0; k < d; ++k) dot += (a[k] - sh[k]) * cs[cb + k];
      T kv = T(0), wv = T(0);
      if (kind == wae_fast::KIND_POLY) {
        wae_fast::poly_eval<T, T>(dot, P.p, kv, wv);
      } else {
        const T r = diag ? T(0) : wae_fast::sq_dist_from_dot(dot, na, cn[jj]);
        if (kind == wae_fast::KIND_IMQ) wae_fast::imq_eval<T, T>(r, P.p, P.n, kv, wv);
        else wae_fast::rbf_eval<T, T>(r, P.p, P.n, kv, wv, SegExp<T>());
      }
      s += double(kv * v);
      if (g != nullptr) {
        const T ww = wv * v;
        rs += ww;
        for (int64_t k = 0; k < d; ++k) g[k] -= ww * cs[cb + k];
      }
    }
  }
  if (!live) return;
  s_out[o0 + (i - r0)] = s;
  if (g != nullptr && kind != wae_fast::KIND_POLY)
    for (int64_t k = 0; k < d; ++k) g[k] += rs * (a[k] - sh[k]);
}

template <class T>
int seg_rows_impl(const void* A, const void* C, const void* CW, const void* SH, const int64_t* tasks,
                  int64_t ntasks, int64_t d, int kind, const double* params, int nparams, int self_pass, int excl,
                  int grad, double* s_out, void* g_out, cudaStream_t st) {
  if (ntasks < 0 || d <= 0 || d > kSegMaxD) return int(cudaErrorInvalidValue);
  if (ntasks == 0) return int(cudaSuccess);
  if (ntasks > 2147483647LL) return int(cudaErrorInvalidConfiguration);
  SegParams<T> P;
  P.n = nparams;
  for (int s = 0; s < wae_fast::kMaxScales; ++s) P.p[s] = s < nparams ? T(params[s]) : T(0);
  const size_t smem = size_t(kSegCols) * size_t(d + 2) * sizeof(T);
  auto kern = seg_rows_kernel<T>;
  cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return int(e);
  WAE_LAUNCH((seg_rows_kernel<T>), dim3(unsigned(ntasks)), dim3(kSegRows), smem, st, static_cast<const T*>(A),
             static_cast<const T*>(C), static_cast<const T*>(CW), static_cast<const T*>(SH), tasks, d, kind, P,
             self_pass, excl, grad, s_out, static_cast<T*>(g_out));
  return int(cudaGetLastError());
}

}  // namespace

extern "C" int wae_seg_rows(int ct, const void* A, const void* C, const void* CW, const void* SH, const int64_t* tasks,
                            int64_t ntasks, int64_t d, int kind, const double* params, int nparams, int self_pass,
                            int excl, int grad, double* s_out, void* g_out, cudaStream_t st) {
  const bool poly = kind == wae_fast::KIND_POLY;
  if (poly ? nparams != wae_fast::kPolyParams : (nparams < 1 || nparams > wae_fast::kMaxScales))
    return int(cudaErrorInvalidValue);
  if (ct == WAE_F64)
    return seg_rows_impl<double>(A, C, CW, SH, tasks, ntasks, d, kind, params, nparams, self_pass, excl, grad, s_out,
                                 g_out, st);
  if (ct == WAE_F32)
    return seg_rows_impl<float>(A, C, CW, SH, tasks, ntasks, d, kind, params, nparams, self_pass, excl, grad, s_out,
                                g_out, st);
  return int(cudaErrorInvalidValue);
}
