// wae_fast CUDA kernels: fused, memory-flat squared MMD between two stored point sets
// (forward terms and input gradients).  No torch headers; extern "C" launchers in wae_cuda.h.
// The tile kernels, source policies and launch helpers are in mmd_tiles.cuh (design notes there):
//  * shift_kernel: p - offset in the compute dtype (fp16/bf16/fp32 -> fp32, fp64 -> fp64), each
//    term with its own row of the (3, d) offset (xx, yy, xy; the contract), the shifted copies
//    rewritten between terms in stream order;
//  * mmd_fwd_tiles<LoadSrc, LoadSrc>: xx, yy (symmetric: J >= I tiles only) and xy terms, one
//    fp64 partial per (row block, column split), reduce_partials in a fixed order;
//  * mmd_grad_rows<LoadSrc>: gx = self(x) + cross(x vs y), gy = self(y) + cross(y vs x), one
//    launch per side, fp64 register accumulation across the column loop, direct output (or
//    bounded per-split fp64 slices + grad_combine for small N).
// Memory: the shifted copies of x and y (compute dtype; the backward one more copy of a side, its
// rows in the self term's shift), the partials
// (ceil(n / 64) * splits doubles) and, for small N only, the split buffers (<= 1 GiB).
#include "mmd_tiles.cuh"

namespace {

using Layout = WsLayout;

Layout layout(int dtype, int64_t n, int64_t m, int64_t d, int for_backward) {
  return mmd_layout(dtype, n, m, d, for_backward);
}

template <class TI, class T>
int fwd_impl(const void* x, const void* y, const void* offset, int64_t n, int64_t m, int64_t d, int kind,
             const double* params, int nparams, int unbiased, int prec, double* terms, void* workspace, size_t wsb,
             cudaStream_t st) {
  constexpr bool kF64 = std::is_same<T, double>::value;
  const Layout L = layout(kF64 ? WAE_F64 : WAE_F32, n, m, d, 0);
  if (wsb < L.total) return int(cudaErrorInvalidValue);
  char* ws = static_cast<char*>(workspace);
  T* xs = reinterpret_cast<T*>(ws);
  T* ys = reinterpret_cast<T*>(ws + L.xs);
  double* part = reinterpret_cast<double*>(ws + L.xs + L.ys);
  const T* off = static_cast<const T*>(offset);  // (3, d): xx, yy, xy shifts
  const KParams<T> P = make_params<T>(params, nparams);
  const int pr = effective_prec(kF64, prec, d);
  const double nxx = wae_fast::pair_count_self(n, unbiased), nyy = wae_fast::pair_count_self(m, unbiased);
  const LoadSrc<T> sx{xs}, sy{ys};
  // the three terms run one after the other on the stream, sharing the partials buffer; xs and
  // ys are rewritten with the xy shift after the self terms have read them (stream order)
  cudaError_t e = shift_into<TI, T>(x, off, n, d, xs, st);
  if (e == cudaSuccess) e = launch_fwd_term<T>(sx, sx, n, n, d, kind, pr, P, 1, unbiased, part, 1.0 / nxx, terms + 0, st);
  if (e == cudaSuccess) e = shift_into<TI, T>(y, off + d, m, d, ys, st);
  if (e == cudaSuccess) e = launch_fwd_term<T>(sy, sy, m, m, d, kind, pr, P, 1, unbiased, part, 1.0 / nyy, terms + 1, st);
  if (e == cudaSuccess) e = shift_into<TI, T>(x, off + 2 * d, n, d, xs, st);
  if (e == cudaSuccess) e = shift_into<TI, T>(y, off + 2 * d, m, d, ys, st);
  if (e == cudaSuccess)
    e = launch_fwd_term<T>(sx, sy, n, m, d, kind, pr, P, 0, unbiased, part, 1.0 / (double(n) * double(m)), terms + 2, st);
  return int(e);
}

template <class TI, class T>
int bwd_impl(int dtype, const void* x, const void* y, const void* offset, int64_t n, int64_t m, int64_t d, int kind,
             const double* params, int nparams, int unbiased, int prec, const double* gt, void* gx, void* gy,
             void* workspace, size_t wsb, cudaStream_t st) {
  constexpr bool kF64 = std::is_same<T, double>::value;
  const Layout L = layout(kF64 ? WAE_F64 : WAE_F32, n, m, d, 1);
  if (wsb < L.total) return int(cudaErrorInvalidValue);
  char* ws = static_cast<char*>(workspace);
  T* xs = reinterpret_cast<T*>(ws);
  T* ys = reinterpret_cast<T*>(ws + L.xs);
  T* self = reinterpret_cast<T*>(ws + L.xs + L.ys);
  double* gacc = L.gacc ? reinterpret_cast<double*>(ws + L.xs + L.ys + L.self) : nullptr;
  const T* off = static_cast<const T*>(offset);  // (3, d): xx, yy, xy shifts
  // xs, ys: both sets in the xy shift (the cross parts); self: the side's rows in its own shift
  cudaError_t e = shift_into<TI, T>(x, off + 2 * d, n, d, xs, st);
  if (e == cudaSuccess) e = shift_into<TI, T>(y, off + 2 * d, m, d, ys, st);
  if (e != cudaSuccess) return int(e);
  const KParams<T> P = make_params<T>(params, nparams);
  const int pr = effective_prec(kF64, prec, d);
  const double nxx = wae_fast::pair_count_self(n, unbiased), nyy = wae_fast::pair_count_self(m, unbiased);
  const double nxy = double(n) * double(m);
  // d r_ij / d a_i = 2 (a_i - b_j); each unordered self pair appears twice in the sum.
  for (int side = 0; side < 2 && e == cudaSuccess; ++side) {
    void* out = side == 0 ? gx : gy;
    if (out == nullptr) continue;
    const T* AX = side == 0 ? xs : ys;
    const LoadSrc<T> sb{side == 0 ? ys : xs};
    e = shift_into<TI, T>(side == 0 ? x : y, off + side * d, side == 0 ? n : m, d, self, st);  // after the last reader (stream order)
    if (e != cudaSuccess) break;
    const int64_t nA = side == 0 ? n : m, nB = side == 0 ? m : n;
    const double cself = 4.0 / (side == 0 ? nxx : nyy);  // times grad_terms[side]
    const double cx = 2.0 / nxy;                          // times grad_terms[2]
    e = launch_grad<T>(self, AX, sb, nA, nB, d, kind, pr, P, gt, side, cself, cx, gacc, out, dtype, st, unbiased);
  }
  return int(e);
}

}  // namespace

int wae_detail_fwd_self(int ct_code, const void* xs, int64_t n, int64_t d, int kind, int prec, const double* params,
                        int nparams, int unbiased, double* part, double scale, double* out, cudaStream_t st) {
  if (ct_code == WAE_F64) {
    const LoadSrc<double> s{static_cast<const double*>(xs)};
    return int(launch_fwd_term<double>(s, s, n, n, d, kind, PREC_IEEE, make_params<double>(params, nparams), 1,
                                       unbiased, part, scale, out, st));
  }
  const LoadSrc<float> s{static_cast<const float*>(xs)};
  return int(launch_fwd_term<float>(s, s, n, n, d, kind, prec, make_params<float>(params, nparams), 1, unbiased, part,
                                    scale, out, st));
}

extern "C" size_t wae_mmd_workspace_bytes(int dtype, int64_t n, int64_t m, int64_t d, int for_backward) {
  return layout(dtype, n, m, d, for_backward).total;
}

extern "C" int wae_mmd_fwd(int dtype, const void* x, const void* y, const void* offset, int64_t n, int64_t m,
                           int64_t d, int kind, const double* params, int nparams, int unbiased, int precision,
                           double* terms, void* workspace, size_t wsb, cudaStream_t st) {
  if (nparams < 1 || nparams > wae_fast::kMaxScales || d < 1 || n < 0 || m < 0) return int(cudaErrorInvalidValue);
  switch (dtype) {
    case WAE_F32: return fwd_impl<float, float>(x, y, offset, n, m, d, kind, params, nparams, unbiased, precision, terms, workspace, wsb, st);
    case WAE_F64: return fwd_impl<double, double>(x, y, offset, n, m, d, kind, params, nparams, unbiased, precision, terms, workspace, wsb, st);
    case WAE_F16: return fwd_impl<__half, float>(x, y, offset, n, m, d, kind, params, nparams, unbiased, precision, terms, workspace, wsb, st);
    case WAE_BF16: return fwd_impl<__nv_bfloat16, float>(x, y, offset, n, m, d, kind, params, nparams, unbiased, precision, terms, workspace, wsb, st);
  }
  return int(cudaErrorInvalidValue);
}

extern "C" int wae_mmd_bwd(int dtype, const void* x, const void* y, const void* offset, int64_t n, int64_t m,
                           int64_t d, int kind, const double* params, int nparams, int unbiased, int precision,
                           const double* grad_terms, void* gx, void* gy, void* workspace, size_t wsb,
                           cudaStream_t st) {
  if (nparams < 1 || nparams > wae_fast::kMaxScales || d < 1 || n < 0 || m < 0) return int(cudaErrorInvalidValue);
  switch (dtype) {
    case WAE_F32: return bwd_impl<float, float>(dtype, x, y, offset, n, m, d, kind, params, nparams, unbiased, precision, grad_terms, gx, gy, workspace, wsb, st);
    case WAE_F64: return bwd_impl<double, double>(dtype, x, y, offset, n, m, d, kind, params, nparams, unbiased, precision, grad_terms, gx, gy, workspace, wsb, st);
    case WAE_F16: return bwd_impl<__half, float>(dtype, x, y, offset, n, m, d, kind, params, nparams, unbiased, precision, grad_terms, gx, gy, workspace, wsb, st);
    case WAE_BF16: return bwd_impl<__nv_bfloat16, float>(dtype, x, y, offset, n, m, d, kind, params, nparams, unbiased, precision, grad_terms, gx, gy, workspace, wsb, st);
  }
  return int(cudaErrorInvalidValue);
}
