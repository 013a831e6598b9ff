// Torch binding of the wae_fast CUDA kernels (extension wae_fast._C_cuda).
//
// The kernels (mmd_kernels.cu, prior_kernels.cu, reparam_kernels.cu) include no torch headers and
// expose extern "C" launchers (wae_cuda.h).  This file registers them for the CUDA dispatch key:
//   TORCH_LIBRARY_IMPL(wae_fast, CUDA, m): mmd_fwd_cuda, mmd_bwd_cuda, prior_fwd_cuda, prior_bwd_cuda,
//   reparam_fwd_cuda, reparam_bwd_cuda
// (schemas defined in Python by wae_fast.contract.define_backend_ops("cuda")), launching on the
// current CUDA stream under a device guard.  With a CPU-only torch (no c10/cuda headers) it
// still compiles and links against -lcudart, using the legacy default stream and cudaSetDevice.
#include <torch/extension.h>

#include <cmath>
#include <string>
#include <vector>

#include "wae_cuda.h"

#if __has_include(<c10/cuda/CUDAStream.h>) && __has_include(<c10/cuda/CUDAGuard.h>) && \
    __has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define WAE_HAVE_C10_CUDA 1
#endif

namespace {

#ifdef WAE_HAVE_C10_CUDA
struct DeviceScope {
  c10::cuda::CUDAGuard guard;
  explicit DeviceScope(const at::Tensor& t) : guard(t.device()) {}
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream().stream(); }
};
#else
struct DeviceScope {
  int prev = 0;
  explicit DeviceScope(const at::Tensor& t) {
    cudaGetDevice(&prev);
    cudaSetDevice(t.device().index() < 0 ? 0 : t.device().index());
  }
  ~DeviceScope() { cudaSetDevice(prev); }
  cudaStream_t stream() const { return nullptr; }
};
#endif

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return WAE_F32;
    case at::kDouble: return WAE_F64;
    case at::kHalf: return WAE_F16;
    case at::kBFloat16: return WAE_BF16;
    default: TORCH_CHECK(false, "wae_fast cuda backend: dtype must be float16, bfloat16, float32 or float64, got ", t);
  }
  return -1;
}

void check_rc(int rc, const char* what) {
  TORCH_CHECK(rc == 0, "wae_fast cuda backend: ", what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(rc)));
}

//! "ieee" / "tf32" / "tf32x3" -> WAE_PREC_* (the kernels ignore it for fp64 and use the exact
//! path for d < 16 or below sm_80).
int prec_code(c10::string_view precision) {
  const std::string p(precision.data(), precision.size());
  if (p == "ieee") return WAE_PREC_IEEE;
  if (p == "tf32") return WAE_PREC_TF32;
  if (p == "tf32x3") return WAE_PREC_TF32X3;
  TORCH_CHECK(false, "wae_fast cuda backend: precision must be 'ieee', 'tf32x3' or 'tf32', got '", p, "'");
  return WAE_PREC_IEEE;
}

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_mmd(const at::Tensor& x, const at::Tensor& y, const at::Tensor& offset, int64_t kind,
               at::ArrayRef<double> params) {
  TORCH_CHECK(x.is_cuda() && y.is_cuda() && offset.device() == x.device() && y.device() == x.device(),
              "wae_fast cuda backend: x, y and offset must be CUDA tensors on one device");
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
              "wae_fast cuda backend: x (N, d) and y (M, d) must be 2-D with the same d");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "wae_fast cuda backend: x and y must have the same dtype");
  TORCH_CHECK(offset.numel() == x.size(1), "wae_fast cuda backend: offset must have d elements");
  TORCH_CHECK(kind == 0 || kind == 1, "wae_fast cuda backend: unknown kernel kind ", kind);
  TORCH_CHECK(!params.empty() && params.size() <= 16, "wae_fast cuda backend: between 1 and 16 kernel scales supported");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_fwd_cuda(const at::Tensor& x_, const at::Tensor& y_,
                                                            const at::Tensor& offset_, int64_t kind,
                                                            at::ArrayRef<double> params, bool unbiased, bool grad_x,
                                                            bool grad_y, c10::string_view precision) {
  check_mmd(x_, y_, offset_, kind, params);
  DeviceScope scope(x_);
  at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const auto ct = compute_type(x.scalar_type());
  at::Tensor offset = offset_.to(ct).contiguous();
  const int dt = dtype_code(x.scalar_type());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  std::vector<double> P(params.begin(), params.end());
  const int pc = prec_code(precision);
  const size_t wsb = wae_mmd_workspace_bytes(dt, n, m, d, 0);
  at::Tensor ws = at::empty({int64_t(wsb)}, x.options().dtype(at::kByte));
  at::Tensor terms = at::empty({3}, x.options().dtype(at::kDouble));
  check_rc(wae_mmd_fwd(dt, x.data_ptr(), y.data_ptr(), offset.data_ptr(), n, m, d, int(kind), P.data(), int(P.size()),
                       unbiased ? 1 : 0, pc, terms.data_ptr<double>(), ws.data_ptr(), wsb, scope.stream()),
           "mmd forward launch");
  // the CUDA backend does not fuse the gradient: empty parts, mmd_bwd_cuda recomputes
  return {terms, at::empty({0}, x.options().dtype(ct)), at::empty({0}, y.options().dtype(ct))};
}

std::tuple<at::Tensor, at::Tensor> mmd_bwd_cuda(const at::Tensor& grad_terms, const at::Tensor& x_,
                                                const at::Tensor& y_, const at::Tensor& offset_, int64_t kind,
                                                at::ArrayRef<double> params, bool unbiased, bool grad_x, bool grad_y,
                                                c10::string_view precision) {
  check_mmd(x_, y_, offset_, kind, params);
  DeviceScope scope(x_);
  at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const auto ct = compute_type(x.scalar_type());
  at::Tensor offset = offset_.to(ct).contiguous();
  at::Tensor gt = grad_terms.to(x.device(), at::kDouble).contiguous();
  TORCH_CHECK(gt.numel() == 3, "wae_fast cuda backend: grad_terms must have 3 elements");
  const int dt = dtype_code(x.scalar_type());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  std::vector<double> P(params.begin(), params.end());
  at::Tensor gx = grad_x ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor gy = grad_y ? at::empty_like(y) : at::empty({0}, y.options());
  if (!grad_x && !grad_y) return {gx, gy};
  const int pc = prec_code(precision);
  const size_t wsb = wae_mmd_workspace_bytes(dt, n, m, d, 1);
  at::Tensor ws = at::empty({int64_t(wsb)}, x.options().dtype(at::kByte));
  check_rc(wae_mmd_bwd(dt, x.data_ptr(), y.data_ptr(), offset.data_ptr(), n, m, d, int(kind), P.data(), int(P.size()),
                       unbiased ? 1 : 0, pc, gt.data_ptr<double>(), grad_x ? gx.data_ptr() : nullptr,
                       grad_y ? gy.data_ptr() : nullptr, ws.data_ptr(), wsb, scope.stream()),
           "mmd backward launch");
  return {gx, gy};
}

// ---------------------------------------------------------------------------------------------
// MMD to the prior N(0, sigma2 I) with in-kernel samples (prior_kernels.cu)
// ---------------------------------------------------------------------------------------------
void check_prior(const at::Tensor& x, int64_t kind, at::ArrayRef<double> params, double sigma2, bool unbiased,
                 int64_t num_samples, int64_t seed) {
  TORCH_CHECK(x.is_cuda(), "wae_fast cuda backend: x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 2 && x.size(0) >= 1 && x.size(1) >= 1, "wae_fast cuda backend: x must be a non-empty (N, d) tensor, got ",
              x.sizes());
  TORCH_CHECK(kind == 0 || kind == 1, "wae_fast cuda backend: unknown kernel kind ", kind);
  TORCH_CHECK(!params.empty() && params.size() <= 16, "wae_fast cuda backend: between 1 and 16 kernel scales supported");
  TORCH_CHECK(std::isfinite(sigma2) && sigma2 > 0.0, "wae_fast cuda backend: sigma2 must be finite and > 0, got ", sigma2);
  TORCH_CHECK(seed >= 0, "wae_fast cuda backend: seed must be in [0, 2^63), got ", seed);
  TORCH_CHECK(num_samples >= (unbiased ? 2 : 1), "wae_fast cuda backend: num_samples must be >= ", unbiased ? 2 : 1,
              (unbiased ? " for the unbiased estimator" : ""), ", got ", num_samples);
  TORCH_CHECK(!unbiased || x.size(0) >= 2, "wae_fast cuda backend: the unbiased estimator needs at least 2 points, got ",
              x.size(0));
}

//! (mean(x), n / (n + m) * mean(x)) in the compute dtype (the shifts of kernels/prior.py).
std::pair<at::Tensor, at::Tensor> prior_offsets(const at::Tensor& x, int64_t m) {
  const int64_t n = x.size(0);
  at::Tensor xm = x.to(compute_type(x.scalar_type())).mean(0).contiguous();
  at::Tensor xy = (xm * (double(n) / double(n + m))).contiguous();
  return {xm, xy};
}

at::Tensor prior_fwd_cuda(const at::Tensor& x_, int64_t kind, at::ArrayRef<double> params, double sigma2, bool unbiased,
                          int64_t num_samples, int64_t seed, c10::string_view precision) {
  check_prior(x_, kind, params, sigma2, unbiased, num_samples, seed);
  DeviceScope scope(x_);
  at::Tensor x = x_.contiguous();
  const int dt = dtype_code(x.scalar_type());
  const int pc = prec_code(precision);
  const int64_t n = x.size(0), d = x.size(1), m = num_samples;
  std::vector<double> P(params.begin(), params.end());
  auto offs = prior_offsets(x, m);
  const size_t wsb = wae_prior_workspace_bytes(dt, n, m, d, 0);
  at::Tensor ws = at::empty({int64_t(wsb)}, x.options().dtype(at::kByte));
  at::Tensor terms = at::empty({3}, x.options().dtype(at::kDouble));
  check_rc(wae_prior_fwd(dt, x.data_ptr(), offs.first.data_ptr(), offs.second.data_ptr(), n, m, d, int(kind), P.data(),
                         int(P.size()), sigma2, unbiased ? 1 : 0, uint64_t(seed), pc, terms.data_ptr<double>(),
                         ws.data_ptr(), wsb, scope.stream()),
           "prior forward launch");
  return terms;
}

at::Tensor prior_bwd_cuda(const at::Tensor& grad_terms, const at::Tensor& x_, int64_t kind, at::ArrayRef<double> params,
                          double sigma2, bool unbiased, int64_t num_samples, int64_t seed, c10::string_view precision) {
  check_prior(x_, kind, params, sigma2, unbiased, num_samples, seed);
  DeviceScope scope(x_);
  at::Tensor x = x_.contiguous();
  at::Tensor gt = grad_terms.to(x.device(), at::kDouble).contiguous();
  TORCH_CHECK(gt.numel() == 3, "wae_fast cuda backend: grad_terms must have 3 elements");
  const int dt = dtype_code(x.scalar_type());
  const int pc = prec_code(precision);
  const int64_t n = x.size(0), d = x.size(1), m = num_samples;
  std::vector<double> P(params.begin(), params.end());
  auto offs = prior_offsets(x, m);
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const size_t wsb = wae_prior_workspace_bytes(dt, n, m, d, 1);
  at::Tensor ws = at::empty({int64_t(wsb)}, x.options().dtype(at::kByte));
  check_rc(wae_prior_bwd(dt, x.data_ptr(), offs.second.data_ptr(), n, m, d, int(kind), P.data(), int(P.size()), sigma2,
                         unbiased ? 1 : 0, uint64_t(seed), pc, gt.data_ptr<double>(), gx.data_ptr(), ws.data_ptr(), wsb,
                         scope.stream()),
           "prior backward launch");
  return gx;
}

at::Tensor reparam_fwd_cuda(const at::Tensor& mu_, const at::Tensor& logvar_, int64_t seed) {
  TORCH_CHECK(mu_.is_cuda() && logvar_.device() == mu_.device(), "wae_fast cuda backend: mu/logvar must be CUDA tensors on one device");
  TORCH_CHECK(mu_.sizes() == logvar_.sizes() && mu_.scalar_type() == logvar_.scalar_type(),
              "wae_fast cuda backend: mu and logvar must have the same shape and dtype");
  DeviceScope scope(mu_);
  at::Tensor mu = mu_.contiguous(), lv = logvar_.contiguous();
  at::Tensor z = at::empty_like(mu);
  check_rc(wae_reparam_fwd(dtype_code(mu.scalar_type()), mu.data_ptr(), lv.data_ptr(), z.data_ptr(), mu.numel(),
                           uint64_t(seed), scope.stream()),
           "reparam forward launch");
  return z;
}

at::Tensor reparam_bwd_cuda(const at::Tensor& gz_, const at::Tensor& logvar_, int64_t seed) {
  TORCH_CHECK(gz_.is_cuda() && logvar_.device() == gz_.device(), "wae_fast cuda backend: grad_z/logvar must be CUDA tensors on one device");
  DeviceScope scope(logvar_);
  at::Tensor lv = logvar_.contiguous();
  at::Tensor gz = gz_.to(lv.scalar_type()).contiguous();
  at::Tensor g = at::empty_like(lv);
  check_rc(wae_reparam_bwd(dtype_code(lv.scalar_type()), gz.data_ptr(), lv.data_ptr(), g.data_ptr(), lv.numel(),
                           uint64_t(seed), scope.stream()),
           "reparam backward launch");
  return g;
}

}  // namespace

TORCH_LIBRARY_IMPL(wae_fast, CUDA, m) {
  m.impl("mmd_fwd_cuda", &mmd_fwd_cuda);
  m.impl("mmd_bwd_cuda", &mmd_bwd_cuda);
  m.impl("prior_fwd_cuda", &prior_fwd_cuda);
  m.impl("prior_bwd_cuda", &prior_bwd_cuda);
  m.impl("reparam_fwd_cuda", &reparam_fwd_cuda);
  m.impl("reparam_bwd_cuda", &reparam_bwd_cuda);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "wae_fast CUDA kernels (registers wae_fast::*_cuda for the CUDA dispatch key)";
#ifdef WAE_HAVE_C10_CUDA
  m.attr("has_c10_cuda") = true;
#else
  m.attr("has_c10_cuda") = false;
#endif
}
