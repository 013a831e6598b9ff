// wae_fast CUDA MMD to the prior N(0, sigma2 I_d) with the M prior samples generated inside the
// kernels (ops wae_fast::prior_fwd_cuda / prior_bwd_cuda; the CUDA twin of kernels/prior.py).
// No torch headers; extern "C" launchers in wae_cuda.h; tile kernels in mmd_tiles.cuh.
//
// Sample j: y_j[k] = T(philox_randn_tl(seed, j * d + k)) * T(sqrt(sigma2)) (tl.randn's stream,
// tile_math.h; T = fp32, or fp64 for fp64 codes: the fp32 draw cast to fp64, then the fp64
// product).  The samples are regenerated wherever a tile needs them (GenSrc policy), never
// stored; their squared norms are computed in the tile routine from the staged chunks.
//  * xx term: the self term of mmd_kernels.cu on x shifted by median(x) (wae_detail_fwd_self);
//  * yy term: mmd_fwd_tiles<GenSrc, GenSrc>, symmetric (J >= I tiles), shift 0;
//  * xy term: mmd_fwd_tiles<LoadSrc, GenSrc>, x and y shifted by n / (n + m) * median(x);
//  * backward: mmd_grad_rows<GenSrc>: self (x vs x, x shifted by median(x)) + cross (x vs
//    generated y, both shifted by n / (n + m) * median(x)) in one launch.
// Workspace: the shifted x (n * d, compute dtype), ceil(max(n, m) / 64) * splits fp64 partials,
// and for small n only the split buffers of the backward; nothing of size m * d or n * m.
#include <cmath>

#include "mmd_tiles.cuh"

namespace {

using PLayout = WsLayout;

PLayout playout(int dtype, int64_t n, int64_t m, int64_t d, int for_backward) {
  return prior_layout(dtype, n, m, d, for_backward);
}

bool bad_args(int64_t n, int64_t m, int64_t d, int nparams, double sigma2, int unbiased, uint64_t seed) {
  if (nparams < 1 || nparams > wae_fast::kMaxScales || d < 1 || n < 1 || m < 1) return true;
  if (unbiased && (n < 2 || m < 2)) return true;
  if (!(sigma2 > 0.0) || !std::isfinite(sigma2)) return true;
  return seed >= (uint64_t(1) << 63);
}

template <class TI, class T>
int prior_fwd_impl(const void* x, const void* off_xx, const void* off_xy, int64_t n, int64_t m, int64_t d, int kind,
                   const double* params, int nparams, double sigma2, int unbiased, uint64_t seed, int prec,
                   double* terms, void* workspace, size_t wsb, cudaStream_t st) {
  constexpr bool kF64 = std::is_same<T, double>::value;
  const int ct = kF64 ? WAE_F64 : WAE_F32;
  const PLayout L = playout(ct, n, m, d, 0);
  if (wsb < L.total) return int(cudaErrorInvalidValue);
  char* ws = static_cast<char*>(workspace);
  T* xs = reinterpret_cast<T*>(ws);
  double* part = reinterpret_cast<double*>(ws + L.xs);
  const KParams<T> P = make_params<T>(params, nparams);
  const int pr = effective_prec(kF64, prec, d);
  const T sig = T(std::sqrt(sigma2));
  const double nxx = wae_fast::pair_count_self(n, unbiased), nyy = wae_fast::pair_count_self(m, unbiased);
  // xx: x - median(x)
  cudaError_t e = shift_into<TI, T>(x, off_xx, n, d, xs, st);
  if (e != cudaSuccess) return int(e);
  int rc = wae_detail_fwd_self(ct, xs, n, d, kind, pr, params, nparams, unbiased, part, 1.0 / nxx, terms + 0, st);
  if (rc != 0) return rc;
  // yy: generated against generated, no shift (the prior mean)
  const GenSrc<T> gy{nullptr, (unsigned long long)seed, sig};
  e = launch_fwd_term<T>(gy, gy, m, m, d, kind, pr, P, 1, unbiased, part, 1.0 / nyy, terms + 1, st);
  if (e != cudaSuccess) return int(e);
  // xy: x and y shifted by n / (n + m) * median(x) (xs is rewritten after the xx term, stream order)
  e = shift_into<TI, T>(x, off_xy, n, d, xs, st);
  if (e != cudaSuccess) return int(e);
  const LoadSrc<T> sx{xs};
  const GenSrc<T> gxy{static_cast<const T*>(off_xy), (unsigned long long)seed, sig};
  e = launch_fwd_term<T>(sx, gxy, n, m, d, kind, pr, P, 0, unbiased, part, 1.0 / (double(n) * double(m)), terms + 2, st);
  return int(e);
}

template <class TI, class T>
int prior_bwd_impl(int dtype, const void* x, const void* off_xx, const void* off_xy, int64_t n, int64_t m, int64_t d, int kind,
                   const double* params, int nparams, double sigma2, int unbiased, uint64_t seed, int prec,
                   const double* gt, void* gx, void* workspace, size_t wsb, cudaStream_t st) {
  constexpr bool kF64 = std::is_same<T, double>::value;
  const int ct = kF64 ? WAE_F64 : WAE_F32;
  const PLayout L = playout(ct, n, m, d, 1);
  if (wsb < L.total) return int(cudaErrorInvalidValue);
  char* ws = static_cast<char*>(workspace);
  T* xs = reinterpret_cast<T*>(ws);
  T* xself = reinterpret_cast<T*>(ws + L.xs);
  double* gacc = L.gacc ? reinterpret_cast<double*>(ws + L.xs + L.self) : nullptr;
  const KParams<T> P = make_params<T>(params, nparams);
  const int pr = effective_prec(kF64, prec, d);
  const T sig = T(std::sqrt(sigma2));
  cudaError_t e = shift_into<TI, T>(x, off_xy, n, d, xs, st);
  if (e == cudaSuccess) e = shift_into<TI, T>(x, off_xx, n, d, xself, st);
  if (e != cudaSuccess) return int(e);
  const double nxx = wae_fast::pair_count_self(n, unbiased);
  const GenSrc<T> gy{static_cast<const T*>(off_xy), (unsigned long long)seed, sig};
  // d terms[0] / dx_i = 4 / nxx sum_j W_ij (x_i - x_j); d terms[2] / dx_i = 2 / (n m) sum_j W_ij (x_i - y_j)
  e = launch_grad<T>(xself, xs, gy, n, m, d, kind, pr, P, gt, 0, 4.0 / nxx, 2.0 / (double(n) * double(m)), gacc, gx, dtype,
                     st);
  return int(e);
}

}  // namespace

extern "C" size_t wae_prior_workspace_bytes(int dtype, int64_t n, int64_t m, int64_t d, int for_backward) {
  return playout(dtype, n, m, d, for_backward).total;
}

extern "C" int wae_prior_fwd(int dtype, const void* x, const void* off_xx, const void* off_xy, int64_t n, int64_t m,
                             int64_t d, int kind, const double* params, int nparams, double sigma2, int unbiased,
                             uint64_t seed, int precision, double* terms, void* workspace, size_t wsb,
                             cudaStream_t st) {
  if (bad_args(n, m, d, nparams, sigma2, unbiased, seed)) return int(cudaErrorInvalidValue);
  switch (dtype) {
    case WAE_F32: return prior_fwd_impl<float, float>(x, off_xx, off_xy, n, m, d, kind, params, nparams, sigma2, unbiased, seed, precision, terms, workspace, wsb, st);
    case WAE_F64: return prior_fwd_impl<double, double>(x, off_xx, off_xy, n, m, d, kind, params, nparams, sigma2, unbiased, seed, precision, terms, workspace, wsb, st);
    case WAE_F16: return prior_fwd_impl<__half, float>(x, off_xx, off_xy, n, m, d, kind, params, nparams, sigma2, unbiased, seed, precision, terms, workspace, wsb, st);
    case WAE_BF16: return prior_fwd_impl<__nv_bfloat16, float>(x, off_xx, off_xy, n, m, d, kind, params, nparams, sigma2, unbiased, seed, precision, terms, workspace, wsb, st);
  }
  return int(cudaErrorInvalidValue);
}

extern "C" int wae_prior_bwd(int dtype, const void* x, const void* off_xx, const void* off_xy, int64_t n, int64_t m, int64_t d, int kind,
                             const double* params, int nparams, double sigma2, int unbiased, uint64_t seed,
                             int precision, const double* grad_terms, void* gx, void* workspace, size_t wsb,
                             cudaStream_t st) {
  if (bad_args(n, m, d, nparams, sigma2, unbiased, seed)) return int(cudaErrorInvalidValue);
  switch (dtype) {
    case WAE_F32: return prior_bwd_impl<float, float>(dtype, x, off_xx, off_xy, n, m, d, kind, params, nparams, sigma2, unbiased, seed, precision, grad_terms, gx, workspace, wsb, st);
    case WAE_F64: return prior_bwd_impl<double, double>(dtype, x, off_xx, off_xy, n, m, d, kind, params, nparams, sigma2, unbiased, seed, precision, grad_terms, gx, workspace, wsb, st);
    case WAE_F16: return prior_bwd_impl<__half, float>(dtype, x, off_xx, off_xy, n, m, d, kind, params, nparams, sigma2, unbiased, seed, precision, grad_terms, gx, workspace, wsb, st);
    case WAE_BF16: return prior_bwd_impl<__nv_bfloat16, float>(dtype, x, off_xx, off_xy, n, m, d, kind, params, nparams, sigma2, unbiased, seed, precision, grad_terms, gx, workspace, wsb, st);
  }
  return int(cudaErrorInvalidValue);
}
