// Torch binding of the wae_fast CUDA kernels (extension wae_fast._C_cuda).
//
// The kernels (mmd_kernels.cu, reparam_kernels.cu) include no torch headers and expose
// extern "C" launchers (wae_cuda.h).  This file registers them for the CUDA dispatch key:
//   TORCH_LIBRARY_IMPL(wae_fast, CUDA, m): mmd_fwd_cuda, mmd_bwd_cuda, reparam_fwd_cuda, reparam_bwd_cuda
// (schemas defined in Python by wae_fast.contract.define_backend_ops("cuda")), launching on the
// current CUDA stream under a device guard.  With a CPU-only torch (no c10/cuda headers) it
// still compiles and links against -lcudart, using the legacy default stream and cudaSetDevice.
#include <torch/extension.h>

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
  const size_t wsb = wae_mmd_workspace_bytes(dt, n, m, d, 0);
  at::Tensor ws = at::empty({int64_t(wsb)}, x.options().dtype(at::kByte));
  at::Tensor terms = at::empty({3}, x.options().dtype(at::kDouble));
  check_rc(wae_mmd_fwd(dt, x.data_ptr(), y.data_ptr(), offset.data_ptr(), n, m, d, int(kind), P.data(), int(P.size()),
                       unbiased ? 1 : 0, terms.data_ptr<double>(), ws.data_ptr(), wsb, scope.stream()),
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
  const size_t wsb = wae_mmd_workspace_bytes(dt, n, m, d, 1);
  at::Tensor ws = at::empty({int64_t(wsb)}, x.options().dtype(at::kByte));
  check_rc(wae_mmd_bwd(dt, x.data_ptr(), y.data_ptr(), offset.data_ptr(), n, m, d, int(kind), P.data(), int(P.size()),
                       unbiased ? 1 : 0, gt.data_ptr<double>(), grad_x ? gx.data_ptr() : nullptr,
                       grad_y ? gy.data_ptr() : nullptr, ws.data_ptr(), wsb, scope.stream()),
           "mmd backward launch");
  return {gx, gy};
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
