// Torch binding of the wae_fast CUDA kernels (extension wae_fast._C_cuda).
//
// The kernels (mmd_kernels.cu, prior_kernels.cu, reparam_kernels.cu) include no torch headers and
// expose extern "C" launchers (wae_cuda.h).  This file registers them for the CUDA dispatch key:
//   TORCH_LIBRARY_IMPL(wae_fast, CUDA, m): mmd_fwd_cuda, mmd_bwd_cuda, prior_fwd_cuda, prior_bwd_cuda,
//   reparam_fwd_cuda, reparam_bwd_cuda
// (schemas defined in Python by wae_fast.contract.define_backend_ops("cuda")), launching on the
// current CUDA stream under a device guard.  With a CPU-only torch (no c10/cuda headers) it
// still compiles and links against -lcudart, using the legacy default stream and cudaSetDevice.
//
// The emulated build (WAE_CUDA_EMU, extension wae_fast._C_cuda_emu, csrc/cuda_emu) compiles THIS
// file with g++ against the emulator's runtime shim: the same host code registers
// wae_fast::*_cuda_emu for the CPU dispatch key and drives the same launchers on CPU tensors.
#include <algorithm>
#include <torch/extension.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "wae_cuda.h"

#if !defined(WAE_CUDA_EMU) && __has_include(<c10/cuda/CUDAStream.h>) && __has_include(<c10/cuda/CUDAGuard.h>) && \
    __has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define WAE_HAVE_C10_CUDA 1
#endif

#if defined(WAE_CUDA_EMU)
#define WAE_BACKEND "cuda_emu"
#define WAE_DEVICE_NAME "CPU"
#define WAE_OP(name) name "_emu"
#define WAE_DISPATCH_KEY CPU
#define WAE_ON_DEVICE(t) ((t).device().is_cpu())
#else
#define WAE_BACKEND "cuda"
#define WAE_DEVICE_NAME "CUDA"
#define WAE_OP(name) name
#define WAE_DISPATCH_KEY CUDA
#define WAE_ON_DEVICE(t) ((t).is_cuda())
#endif
#define WAE_MSG "wae_fast " WAE_BACKEND " backend: "

#if defined(WAE_CUDA_EMU)
int wae_emu_selftest_launch(const char* which, const float* buf, float* out);  // csrc/cuda_emu/selftest_kernels_emu.cpp
#endif

namespace {

#if defined(WAE_CUDA_EMU)
struct DeviceScope {  // one emulated device; launches run synchronously on the calling thread
  explicit DeviceScope(const at::Tensor&) {}
  cudaStream_t stream() const { return nullptr; }
};
//! One tensor handed to the launchers: its name in the emulator's messages, and whether its
//! contents are defined (inputs) or not yet (outputs, scratch: initcheck tracks their writes).
struct DeviceArg {
  const char* name;
  const at::Tensor& t;
  bool initialised;
};
//! The tensors the next launches may touch (the emulator's global memcheck / initcheck).
class DeviceMemory {
 public:
  DeviceMemory(std::initializer_list<DeviceArg> args) {
    for (const DeviceArg& a : args)
      if (a.t.defined() && a.t.numel() > 0)
        mem_.emplace_back(new wae_emu::DeviceMemory(a.t.data_ptr(), size_t(a.t.numel()) * a.t.element_size(), a.name,
                                                    a.initialised));
  }

 private:
  std::vector<std::unique_ptr<wae_emu::DeviceMemory>> mem_;
};
#define WAE_DEVICE_MEMORY(...) DeviceMemory wae_device_memory_{__VA_ARGS__}
#elif defined(WAE_HAVE_C10_CUDA)
#define WAE_DEVICE_MEMORY(...)
struct DeviceScope {
  c10::cuda::CUDAGuard guard;
  explicit DeviceScope(const at::Tensor& t) : guard(t.device()) {}
  cudaStream_t stream() const { return c10::cuda::getCurrentCUDAStream().stream(); }
};
#else
#define WAE_DEVICE_MEMORY(...)
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

//! Scratch memory of a launch.  The emulated build fills it with 0xFF bytes (NaN in every float
//! type), so a kernel reading scratch it never wrote gives NaN instead of a plausible value.
at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  at::Tensor ws = at::empty({int64_t(bytes)}, like.options().dtype(at::kByte));
#if defined(WAE_CUDA_EMU)
  ws.fill_(255);
#endif
  return ws;
}

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return WAE_F32;
    case at::kDouble: return WAE_F64;
    case at::kHalf: return WAE_F16;
    case at::kBFloat16: return WAE_BF16;
    default: TORCH_CHECK(false, WAE_MSG "dtype must be float16, bfloat16, float32 or float64, got ", t);
  }
  return -1;
}

void check_rc(int rc, const char* what) {
  TORCH_CHECK(rc == 0, WAE_MSG "", what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(rc)));
}

//! "ieee" / "tf32" / "tf32x3" -> WAE_PREC_* (the kernels ignore it for fp64 and use the exact
//! path for d < 16 or below sm_80).
int prec_code(c10::string_view precision) {
  const std::string p(precision.data(), precision.size());
  if (p == "ieee") return WAE_PREC_IEEE;
  if (p == "tf32") return WAE_PREC_TF32;
  if (p == "tf32x3") return WAE_PREC_TF32X3;
  TORCH_CHECK(false, WAE_MSG "precision must be 'ieee', 'tf32x3' or 'tf32', got '", p, "'");
  return WAE_PREC_IEEE;
}

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

//! The kernel params as the tiles take them: RBF gammas ascending, so that ratios of 2 or 4 become
//! squarings instead of exps (tile_math.h rbf_eval; the sum over scales is the same).
std::vector<double> kernel_params(int64_t kind, at::ArrayRef<double> params) {
  std::vector<double> P(params.begin(), params.end());
  if (kind == 1) std::sort(P.begin(), P.end());
  return P;
}

void check_mmd(const at::Tensor& x, const at::Tensor& y, const at::Tensor& offset, int64_t kind,
               at::ArrayRef<double> params, bool allow_empty = false) {
  TORCH_CHECK(WAE_ON_DEVICE(x) && offset.device() == x.device() && y.device() == x.device(),
              WAE_MSG "x, y and offset must be " WAE_DEVICE_NAME " tensors on one device");
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
              WAE_MSG "x (N, d) and y (M, d) must be 2-D with the same d");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), WAE_MSG "x and y must have the same dtype");
  TORCH_CHECK((offset.dim() == 1 && offset.size(0) == x.size(1)) ||
                  (offset.dim() == 2 && offset.size(0) == 3 && offset.size(1) == x.size(1)) ||
                  (allow_empty && offset.dim() == 1 && offset.size(0) == 0),
              WAE_MSG "offset must be (d,) or (3, d)");
  TORCH_CHECK(kind == 0 || kind == 1 || kind == 2, WAE_MSG "unknown kernel kind ", kind);
  if (kind == 2) {
    TORCH_CHECK(params.size() == 3 && params[2] >= 1 && params[2] <= 64 && params[2] == double(int64_t(params[2])),
                WAE_MSG "polynomial params must be [gamma, coef0, degree] with an integer degree in [1, 64]");
    return;
  }
  TORCH_CHECK(!params.empty() && params.size() <= 16, WAE_MSG "between 1 and 16 kernel scales supported");
}

//! The (3, d) per-term shifts (xx, yy, xy rows; a (d,) offset is one shift for every term),
//! contiguous in the compute dtype: the launchers read row t at offset + t * d.
at::Tensor term_shifts(const at::Tensor& offset, at::ScalarType ct) {
  at::Tensor o = offset.to(ct);
  return (o.dim() == 1 ? o.unsqueeze(0).expand({3, o.size(0)}) : o).contiguous();
}

//! The glue's (3, d) shifts (wae_fast.contract.term_shifts) for an empty offset the one-launch
//! kernel does not take (the polynomial, d > 64, an empty set; or a backward without fused parts).
at::Tensor glue_shifts(const at::Tensor& x, const at::Tensor& y, int64_t kind) {
  const auto ct = compute_type(x.scalar_type());
  if (kind == 2 || x.size(0) == 0 || y.size(0) == 0) return at::zeros({3, x.size(1)}, x.options().dtype(ct));
  at::Tensor mx = std::get<0>(x.to(ct).median(0)), my = std::get<0>(y.to(ct).median(0));
  const double w = double(y.size(0)) / double(x.size(0) + y.size(0));
  return at::stack({mx, my, at::lerp(mx, my, w)});
}

//! The one-launch forward (mmd_small.cu): shifts, per-block partial terms and the fused gradient
//! parts in one kernel, terms = part.sum(0) (the one finalize); no host synchronisation.
std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_fwd_small(const at::Tensor& x_, const at::Tensor& y_, int64_t kind,
                                                             at::ArrayRef<double> params, bool unbiased, bool grad_x,
                                                             bool grad_y) {
  DeviceScope scope(x_);
  at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const auto ct = compute_type(x.scalar_type());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  const std::vector<double> P = kernel_params(kind, params);
  at::Tensor part = at::empty({wae_mmd_small_blocks(n, m), 3}, x.options().dtype(at::kDouble));
  at::Tensor gx = grad_x ? at::empty({2, n, d}, x.options().dtype(ct)) : at::empty({0}, x.options().dtype(ct));
  at::Tensor gy = grad_y ? at::empty({2, m, d}, y.options().dtype(ct)) : at::empty({0}, y.options().dtype(ct));
  WAE_DEVICE_MEMORY({"x", x, true}, {"y", y, true}, {"part", part, false}, {"gx_parts", gx, false},
                    {"gy_parts", gy, false});
  check_rc(wae_mmd_small(dtype_code(x.scalar_type()), x.data_ptr(), y.data_ptr(), n, m, d, int(kind), P.data(),
                         int(P.size()), unbiased ? 1 : 0, part.data_ptr<double>(), grad_x ? gx.data_ptr() : nullptr,
                         grad_y ? gy.data_ptr() : nullptr, scope.stream()),
           "mmd one-launch forward");
  return {part.sum(0), gx, gy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_fwd_cuda(const at::Tensor& x_, const at::Tensor& y_,
                                                            const at::Tensor& offset_, int64_t kind,
                                                            at::ArrayRef<double> params, bool unbiased, bool grad_x,
                                                            bool grad_y, c10::string_view precision);
std::tuple<at::Tensor, at::Tensor> mmd_bwd_cuda(const at::Tensor& grad_terms, const at::Tensor& x_,
                                                const at::Tensor& y_, const at::Tensor& offset_, int64_t kind,
                                                at::ArrayRef<double> params, bool unbiased, bool grad_x, bool grad_y,
                                                c10::string_view precision);

//! An empty offset the one-launch kernel does not take (a tensor-core precision, the polynomial,
//! d > 64, an empty set): the tiled kernels on the glue's shifts, and, as the contract's one-launch
//! form promises (its fake reports them), the fused parts in the compute dtype from two tiled
//! backward passes: grad_terms (1, 1, 0) gives d t0/dx and d t1/dy, (0, 0, 1) d t2/dx and d t2/dy.
std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_fwd_parts(const at::Tensor& x_, const at::Tensor& y_, int64_t kind,
                                                             at::ArrayRef<double> params, bool unbiased, bool grad_x,
                                                             bool grad_y, c10::string_view precision) {
  const auto ct = compute_type(x_.scalar_type());
  const at::Tensor off = glue_shifts(x_, y_, kind);
  at::Tensor terms = std::get<0>(mmd_fwd_cuda(x_, y_, off, kind, params, unbiased, false, false, precision));
  at::Tensor gx = at::empty({0}, x_.options().dtype(ct)), gy = at::empty({0}, y_.options().dtype(ct));
  if (grad_x || grad_y) {
    const at::Tensor xc = x_.to(ct), yc = y_.to(ct);  // parts in the compute dtype (exact for fp16/bf16)
    const auto opts = x_.options().dtype(at::kDouble);
    auto self = mmd_bwd_cuda(at::tensor({1.0, 1.0, 0.0}, opts), xc, yc, off, kind, params, unbiased, grad_x, grad_y,
                             precision);
    auto cross = mmd_bwd_cuda(at::tensor({0.0, 0.0, 1.0}, opts), xc, yc, off, kind, params, unbiased, grad_x, grad_y,
                              precision);
    if (grad_x) gx = at::stack({std::get<0>(self), std::get<0>(cross)});
    if (grad_y) gy = at::stack({std::get<1>(self), std::get<1>(cross)});
  }
  return {terms, gx, gy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_fwd_cuda(const at::Tensor& x_, const at::Tensor& y_,
                                                            const at::Tensor& offset_, int64_t kind,
                                                            at::ArrayRef<double> params, bool unbiased, bool grad_x,
                                                            bool grad_y, c10::string_view precision) {
  check_mmd(x_, y_, offset_, kind, params, true);
  if (offset_.numel() == 0) {  // the contract's one_launch calls (wae_fast/small_sets.py)
    // exact FMAs only: a tensor-core precision (fp32, d >= 16) keeps the tiled kernels
    const bool exact = prec_code(precision) == WAE_PREC_IEEE || x_.scalar_type() == at::kDouble || x_.size(1) < 16;
    if (kind != 2 && exact && x_.size(0) >= 1 && y_.size(0) >= 1 && x_.size(1) <= 64)
      return mmd_fwd_small(x_, y_, kind, params, unbiased, grad_x, grad_y);
    return mmd_fwd_parts(x_, y_, kind, params, unbiased, grad_x, grad_y, precision);
  }
  DeviceScope scope(x_);
  at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const auto ct = compute_type(x.scalar_type());
  at::Tensor offset = term_shifts(offset_, ct);
  const int dt = dtype_code(x.scalar_type());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  const std::vector<double> P = kernel_params(kind, params);
  const int pc = prec_code(precision);
  const size_t wsb = wae_mmd_workspace_bytes(dt, n, m, d, 0);
  at::Tensor ws = workspace(wsb, x);
  at::Tensor terms = at::empty({3}, x.options().dtype(at::kDouble));
  WAE_DEVICE_MEMORY({"x", x, true}, {"y", y, true}, {"offset", offset, true}, {"terms", terms, false},
                    {"workspace", ws, false});
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
  check_mmd(x_, y_, offset_, kind, params, true);
  if (offset_.numel() == 0)  // a one-launch forward that returned no parts for this input
    return mmd_bwd_cuda(grad_terms, x_, y_, glue_shifts(x_, y_, kind), kind, params, unbiased, grad_x, grad_y,
                        precision);
  DeviceScope scope(x_);
  at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const auto ct = compute_type(x.scalar_type());
  at::Tensor offset = term_shifts(offset_, ct);
  at::Tensor gt = grad_terms.to(x.device(), at::kDouble).contiguous();
  TORCH_CHECK(gt.numel() == 3, WAE_MSG "grad_terms must have 3 elements");
  const int dt = dtype_code(x.scalar_type());
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  const std::vector<double> P = kernel_params(kind, params);
  at::Tensor gx = grad_x ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor gy = grad_y ? at::empty_like(y) : at::empty({0}, y.options());
  if (!grad_x && !grad_y) return {gx, gy};
  const int pc = prec_code(precision);
  const size_t wsb = wae_mmd_workspace_bytes(dt, n, m, d, 1);
  at::Tensor ws = workspace(wsb, x);
  WAE_DEVICE_MEMORY({"x", x, true}, {"y", y, true}, {"offset", offset, true}, {"grad_terms", gt, true},
                    {"gx", gx, false}, {"gy", gy, false}, {"workspace", ws, false});
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
  TORCH_CHECK(WAE_ON_DEVICE(x), WAE_MSG "x must be a " WAE_DEVICE_NAME " tensor");
  TORCH_CHECK(x.dim() == 2 && x.size(0) >= 1 && x.size(1) >= 1, WAE_MSG "x must be a non-empty (N, d) tensor, got ",
              x.sizes());
  TORCH_CHECK(kind == 0 || kind == 1, WAE_MSG "unknown kernel kind ", kind);
  TORCH_CHECK(!params.empty() && params.size() <= 16, WAE_MSG "between 1 and 16 kernel scales supported");
  TORCH_CHECK(std::isfinite(sigma2) && sigma2 > 0.0, WAE_MSG "sigma2 must be finite and > 0, got ", sigma2);
  TORCH_CHECK(seed >= 0, WAE_MSG "seed must be in [0, 2^63), got ", seed);
  TORCH_CHECK(num_samples >= (unbiased ? 2 : 1), WAE_MSG "num_samples must be >= ", unbiased ? 2 : 1,
              (unbiased ? " for the unbiased estimator" : ""), ", got ", num_samples);
  TORCH_CHECK(!unbiased || x.size(0) >= 2, WAE_MSG "the unbiased estimator needs at least 2 points, got ",
              x.size(0));
}

//! (median(x), n / (n + m) * median(x)) in the compute dtype (the shifts of kernels/prior.py).
std::pair<at::Tensor, at::Tensor> prior_offsets(const at::Tensor& x, int64_t m) {
  const int64_t n = x.size(0);
  at::Tensor xm = std::get<0>(x.to(compute_type(x.scalar_type())).median(0)).contiguous();
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
  const std::vector<double> P = kernel_params(kind, params);
  auto offs = prior_offsets(x, m);
  const size_t wsb = wae_prior_workspace_bytes(dt, n, m, d, 0);
  at::Tensor ws = workspace(wsb, x);
  at::Tensor terms = at::empty({3}, x.options().dtype(at::kDouble));
  WAE_DEVICE_MEMORY({"x", x, true}, {"off_xx", offs.first, true}, {"off_xy", offs.second, true},
                    {"terms", terms, false}, {"workspace", ws, false});
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
  TORCH_CHECK(gt.numel() == 3, WAE_MSG "grad_terms must have 3 elements");
  const int dt = dtype_code(x.scalar_type());
  const int pc = prec_code(precision);
  const int64_t n = x.size(0), d = x.size(1), m = num_samples;
  const std::vector<double> P = kernel_params(kind, params);
  auto offs = prior_offsets(x, m);
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const size_t wsb = wae_prior_workspace_bytes(dt, n, m, d, 1);
  at::Tensor ws = workspace(wsb, x);
  WAE_DEVICE_MEMORY({"x", x, true}, {"off_xx", offs.first, true}, {"off_xy", offs.second, true},
                    {"grad_terms", gt, true}, {"gx", gx, false}, {"workspace", ws, false});
  check_rc(wae_prior_bwd(dt, x.data_ptr(), offs.first.data_ptr(), offs.second.data_ptr(), n, m, d, int(kind), P.data(),
                         int(P.size()), sigma2, unbiased ? 1 : 0, uint64_t(seed), pc, gt.data_ptr<double>(), gx.data_ptr(),
                         ws.data_ptr(), wsb, scope.stream()),
           "prior backward launch");
  return gx;
}

#ifndef WAE_CUDA_EMU
// kernel_matmul: the shift and the compute dtype are applied here with torch ops; the kernels
// take contiguous compute-dtype operands.
at::Tensor kmm_fwd_cuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v, const at::Tensor& offset,
                        int64_t kind, at::ArrayRef<double> params, c10::string_view precision) {
  check_mmd(x, y, offset, kind, params);
  TORCH_CHECK(v.is_cuda() && v.device() == x.device() && v.dim() == 2 && v.size(0) == y.size(0),
              "wae_fast cuda backend: v must be an (M, P) CUDA tensor on the device of x");
  DeviceScope scope(x);
  const auto ct = compute_type(x.scalar_type());
  at::Tensor off = term_shifts(offset, ct).select(0, 2);  // K(x, y) is a cross term
  at::Tensor A = (x.to(ct) - off).contiguous(), B = (y.to(ct) - off).contiguous(), V = v.to(ct).contiguous();
  at::Tensor out = at::empty({x.size(0), v.size(1)}, A.options());
  const std::vector<double> P = kernel_params(kind, params);
  check_rc(wae_kmm_fwd(dtype_code(ct), A.data_ptr(), B.data_ptr(), V.data_ptr(), A.size(0), B.size(0), A.size(1),
                       V.size(1), int(kind), P.data(), int(P.size()), out.data_ptr(), scope.stream()),
           "kernel_matmul forward launch");
  return out.to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> kmm_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& y,
                                                const at::Tensor& v, const at::Tensor& offset, int64_t kind,
                                                at::ArrayRef<double> params, bool grad_x, bool grad_y,
                                                c10::string_view precision) {
  check_mmd(x, y, offset, kind, params);
  DeviceScope scope(x);
  const auto ct = compute_type(x.scalar_type());
  at::Tensor off = term_shifts(offset, ct).select(0, 2);  // K(x, y) is a cross term
  at::Tensor A = (x.to(ct) - off).contiguous(), B = (y.to(ct) - off).contiguous(), V = v.to(ct).contiguous();
  at::Tensor G = grad_out.to(ct).contiguous();
  const std::vector<double> P = kernel_params(kind, params);
  at::Tensor gx = at::empty({0}, x.options()), gy = at::empty({0}, y.options());
  if (grad_x) {
    at::Tensor o = at::empty_like(A);
    check_rc(wae_kmm_grad(dtype_code(ct), A.data_ptr(), B.data_ptr(), G.data_ptr(), V.data_ptr(), A.size(0), B.size(0),
                          A.size(1), V.size(1), int(kind), P.data(), int(P.size()), o.data_ptr(), scope.stream()),
             "kernel_matmul backward launch");
    gx = o.to(x.scalar_type());
  }
  if (grad_y) {
    at::Tensor o = at::empty_like(B);
    check_rc(wae_kmm_grad(dtype_code(ct), B.data_ptr(), A.data_ptr(), V.data_ptr(), G.data_ptr(), B.size(0), A.size(0),
                          B.size(1), V.size(1), int(kind), P.data(), int(P.size()), o.data_ptr(), scope.stream()),
             "kernel_matmul backward launch");
    gy = o.to(y.scalar_type());
  }
  return {gx, gy};
}
#endif  // WAE_CUDA_EMU

at::Tensor reparam_fwd_cuda(const at::Tensor& mu_, const at::Tensor& logvar_, int64_t seed) {
  TORCH_CHECK(WAE_ON_DEVICE(mu_) && logvar_.device() == mu_.device(), WAE_MSG "mu/logvar must be " WAE_DEVICE_NAME " tensors on one device");
  TORCH_CHECK(mu_.sizes() == logvar_.sizes() && mu_.scalar_type() == logvar_.scalar_type(),
              WAE_MSG "mu and logvar must have the same shape and dtype");
  DeviceScope scope(mu_);
  at::Tensor mu = mu_.contiguous(), lv = logvar_.contiguous();
  at::Tensor z = at::empty_like(mu);
  WAE_DEVICE_MEMORY({"mu", mu, true}, {"logvar", lv, true}, {"z", z, false});
  check_rc(wae_reparam_fwd(dtype_code(mu.scalar_type()), mu.data_ptr(), lv.data_ptr(), z.data_ptr(), mu.numel(),
                           uint64_t(seed), scope.stream()),
           "reparam forward launch");
  return z;
}

at::Tensor reparam_bwd_cuda(const at::Tensor& gz_, const at::Tensor& logvar_, int64_t seed) {
  TORCH_CHECK(WAE_ON_DEVICE(gz_) && logvar_.device() == gz_.device(), WAE_MSG "grad_z/logvar must be " WAE_DEVICE_NAME " tensors on one device");
  DeviceScope scope(logvar_);
  at::Tensor lv = logvar_.contiguous();
  at::Tensor gz = gz_.to(lv.scalar_type()).contiguous();
  at::Tensor g = at::empty_like(lv);
  WAE_DEVICE_MEMORY({"grad_z", gz, true}, {"logvar", lv, true}, {"grad_logvar", g, false});
  check_rc(wae_reparam_bwd(dtype_code(lv.scalar_type()), gz.data_ptr(), lv.data_ptr(), g.data_ptr(), lv.numel(),
                           uint64_t(seed), scope.stream()),
           "reparam backward launch");
  return g;
}

// mmd_segments: every term of every set in one launch + one finalize, every gradient in one
// launch (segments_kernels.cu), over the task tables of wae_fast.segment_sums.Plan, which
// registers the ops with these two functions (wae_fast.cuda_backend).
void seg_check(const at::Tensor& x, std::initializer_list<at::Tensor> same, std::initializer_list<at::Tensor> idx) {
  TORCH_CHECK(WAE_ON_DEVICE(x), WAE_MSG "segment operands must be " WAE_DEVICE_NAME " tensors");
  const auto ct = x.scalar_type();
  TORCH_CHECK(ct == at::kFloat || ct == at::kDouble, WAE_MSG "segment operands must be float32 or float64");
  for (const auto& t : same)
    TORCH_CHECK(t.device() == x.device() && t.scalar_type() == ct && t.is_contiguous(),
                WAE_MSG "segment operands must be contiguous, of one dtype, on one device");
  for (const auto& t : idx)
    TORCH_CHECK(t.device() == x.device() && t.scalar_type() == at::kLong && t.is_contiguous(),
                WAE_MSG "segment offsets and task tables must be contiguous int64 on the points' device");
}

const void* seg_ptr(const at::Tensor& t) { return t.numel() ? t.data_ptr() : nullptr; }

at::Tensor seg_fwd(const at::Tensor& X, const at::Tensor& Y, const at::Tensor& xw, const at::Tensor& yw,
                   const at::Tensor& xo, const at::Tensor& yo, bool shared_y, const at::Tensor& shifts,
                   std::vector<double> params, const at::Tensor& tasks, const at::Tensor& set_tasks, int64_t kind,
                   bool unbiased) {
  seg_check(X, {Y, shifts}, {xo, yo, tasks, set_tasks});
  TORCH_CHECK(X.dim() == 2 && Y.dim() == 2 && X.size(1) == Y.size(1) && tasks.dim() == 2 && tasks.size(1) == 4 &&
                  (xw.numel() == 0 || (xw.numel() == X.size(0) && xw.scalar_type() == X.scalar_type())) &&
                  (yw.numel() == 0 || (yw.numel() == Y.size(0) && yw.scalar_type() == X.scalar_type())),
              WAE_MSG "bad segment operands");
  DeviceScope scope(X);
  const int64_t nsets = set_tasks.numel() - 1;
  at::Tensor part = at::empty({tasks.size(0)}, X.options().dtype(at::kDouble));
  at::Tensor out = at::empty({nsets, 3}, X.options().dtype(at::kDouble));
  WAE_DEVICE_MEMORY({"x", X, true}, {"y", Y, true}, {"x_weights", xw, true}, {"y_weights", yw, true},
                    {"x_offsets", xo, true}, {"y_offsets", yo, true}, {"shifts", shifts, true}, {"tasks", tasks, true},
                    {"set_tasks", set_tasks, true}, {"partials", part, false}, {"terms", out, false});
  check_rc(wae_seg_fwd(dtype_code(X.scalar_type()), X.data_ptr(), Y.data_ptr(), seg_ptr(xw), seg_ptr(yw),
                       xo.data_ptr<int64_t>(), yo.data_ptr<int64_t>(), shared_y, nsets, shifts.data_ptr(),
                       tasks.data_ptr<int64_t>(), tasks.size(0), set_tasks.data_ptr<int64_t>(), X.size(1), int(kind),
                       params.data(), int(params.size()), unbiased, part.data_ptr<double>(), out.data_ptr<double>(),
                       scope.stream()),
           "segment forward launch");
  return out;
}

std::vector<at::Tensor> seg_bwd(const at::Tensor& grad_terms, const at::Tensor& terms, const at::Tensor& X,
                                const at::Tensor& Y, const at::Tensor& xw, const at::Tensor& yw, const at::Tensor& xo,
                                const at::Tensor& yo, bool shared_y, const at::Tensor& shifts,
                                std::vector<double> params, const at::Tensor& tasks, int64_t kind, bool unbiased,
                                bool need_gx, bool need_gy, bool need_gxw, bool need_gyw, int64_t ny_out) {
  seg_check(X, {Y, shifts}, {xo, yo, tasks});
  TORCH_CHECK(X.dim() == 2 && Y.dim() == 2 && X.size(1) == Y.size(1) && tasks.dim() == 2 && tasks.size(1) == 6 &&
                  ny_out >= Y.size(0) && ny_out % (Y.size(0) > 0 ? Y.size(0) : 1) == 0 &&
                  grad_terms.scalar_type() == at::kDouble && terms.scalar_type() == at::kDouble &&
                  grad_terms.is_contiguous() && terms.is_contiguous() && grad_terms.device() == X.device() &&
                  terms.device() == X.device(),
              WAE_MSG "bad segment operands");
  DeviceScope scope(X);
  const auto dopt = X.options().dtype(at::kDouble);
  at::Tensor gx = need_gx ? at::empty_like(X) : at::empty({0}, X.options());
  // ny_out rows: a shared y's gradient has one slice of Y's rows per chunk of sets
  at::Tensor gy = need_gy ? at::empty({ny_out, Y.size(1)}, Y.options()) : at::empty({0}, X.options());
  at::Tensor gxw = need_gxw ? at::empty({X.size(0)}, dopt) : at::empty({0}, dopt);
  at::Tensor gyw = need_gyw ? at::empty({ny_out}, dopt) : at::empty({0}, dopt);
  WAE_DEVICE_MEMORY({"x", X, true}, {"y", Y, true}, {"x_weights", xw, true}, {"y_weights", yw, true},
                    {"x_offsets", xo, true}, {"y_offsets", yo, true}, {"shifts", shifts, true}, {"tasks", tasks, true},
                    {"grad_terms", grad_terms, true}, {"terms", terms, true}, {"grad_x", gx, false},
                    {"grad_y", gy, false}, {"grad_x_weights", gxw, false}, {"grad_y_weights", gyw, false});
  check_rc(wae_seg_bwd(dtype_code(X.scalar_type()), X.data_ptr(), Y.data_ptr(), seg_ptr(xw), seg_ptr(yw),
                       xo.data_ptr<int64_t>(), yo.data_ptr<int64_t>(), shared_y, shifts.data_ptr(),
                       tasks.data_ptr<int64_t>(), tasks.size(0), grad_terms.data_ptr<double>(),
                       terms.data_ptr<double>(), X.size(1), int(kind), params.data(), int(params.size()), unbiased,
                       need_gx ? gx.data_ptr() : nullptr, need_gy ? gy.data_ptr() : nullptr,
                       need_gxw ? gxw.data_ptr<double>() : nullptr, need_gyw ? gyw.data_ptr<double>() : nullptr,
                       scope.stream()),
           "segment backward launch");
  return {gx, gy, gxw, gyw};
}

}  // namespace

TORCH_LIBRARY_IMPL(wae_fast, WAE_DISPATCH_KEY, m) {
  m.impl(WAE_OP("mmd_fwd_cuda"), &mmd_fwd_cuda);
  m.impl(WAE_OP("mmd_bwd_cuda"), &mmd_bwd_cuda);
  m.impl(WAE_OP("prior_fwd_cuda"), &prior_fwd_cuda);
  m.impl(WAE_OP("prior_bwd_cuda"), &prior_bwd_cuda);
  m.impl(WAE_OP("reparam_fwd_cuda"), &reparam_fwd_cuda);
  m.impl(WAE_OP("reparam_bwd_cuda"), &reparam_bwd_cuda);
#ifndef WAE_CUDA_EMU  // kmm_kernels.cu is built by nvcc only (no cuda_emu translation unit yet)
  m.impl("kernel_matmul_fwd_cuda", &kmm_fwd_cuda);
  m.impl("kernel_matmul_bwd_cuda", &kmm_bwd_cuda);
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "wae_fast CUDA kernels (registers wae_fast::*_" WAE_BACKEND " for the " WAE_DEVICE_NAME " dispatch key)";
  m.def("seg_fwd", &seg_fwd, "mmd_segments forward: one launch + one finalize (segments_kernels.cu)");
  m.def("seg_bwd", &seg_bwd, "mmd_segments backward: one launch (segments_kernels.cu)");
#if defined(WAE_CUDA_EMU)
  m.def("checks", [] {
    const unsigned c = wae_emu::checks_from_env();
    std::string s;
    if (c & wae_emu::CHECK_MEM) s += "memcheck,";
    if (c & wae_emu::CHECK_INIT) s += "initcheck,";
    if (c & wae_emu::CHECK_RACE) s += "racecheck,";
    if (!s.empty()) s.pop_back();
    return s;
  }, "The sanitizer checks the next launch runs (WAE_CUDA_EMU_CHECKS), comma-separated; '' for none.");
  m.def("launch_count", [] { return wae_emu::launch_count(); },
        "Kernel launches of this process through the emulator's launch shim.");
  m.def("launch_names", [] { return wae_emu::launch_names(); },
        "Names of the kernels launched since reset_launch_names() (at most 100000).");
  m.def("reset_launch_names", [] { wae_emu::reset_launch_names(); }, "Forget the recorded launch names.");
  m.def("selftest_launch", [](const std::string& which, const at::Tensor& in) {
    TORCH_CHECK(in.device().is_cpu() && in.scalar_type() == at::kFloat && in.is_contiguous() && in.numel() == 64,
                WAE_MSG "selftest_launch needs 64 contiguous float32 CPU values");
    at::Tensor out = at::empty({64}, in.options());
    check_rc(wae_emu_selftest_launch(which.c_str(), in.data_ptr<float>(), out.data_ptr<float>()),
             ("self-test kernel '" + which + "'").c_str());
    return out;
  }, "Launches one of the emulator's self-test kernels (clean, memcheck, initcheck, racecheck, lockstep: "
     "csrc/cuda_emu/selftest_kernels_emu.cpp) on 64 floats; a finding raises RuntimeError.");
#endif
#ifdef WAE_HAVE_C10_CUDA
  m.attr("has_c10_cuda") = true;
#else
  m.attr("has_c10_cuda") = false;
#endif
}
