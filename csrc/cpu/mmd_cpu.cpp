// CPU backend of wae_fast ("cpp"): fused, memory-flat squared MMD with fused gradient parts.
//
// Schemas are defined in Python (wae_fast/contract.py, define_backend_ops("cpp", fuses_grad=True));
// this file only registers CPU implementations of wae_fast::mmd_fwd_cpp / mmd_bwd_cpp.
// The tile kernels (mmd_cpu_kernel.h) are compiled twice: for the baseline ISA and for AVX2+FMA,
// selected at run time with __builtin_cpu_supports (override: WAE_FAST_CPU_ISA=generic|avx2).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "wae_fast/tile_math.h"


#define WAE_CPU_NS wae_cpu_generic
#include "mmd_cpu_kernel.h"
#undef WAE_CPU_NS

#if defined(__x86_64__) && defined(__GNUC__)
#define WAE_HAVE_AVX2_VARIANT 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define WAE_CPU_NS wae_cpu_avx2
#include "mmd_cpu_kernel.h"
#undef WAE_CPU_NS
#pragma GCC pop_options
#endif

namespace {

using wae_fast::kMaxScales;
constexpr int64_t kTile = wae_cpu_generic::kTile;

bool use_avx2() {
#ifdef WAE_HAVE_AVX2_VARIANT
  const char* env = std::getenv("WAE_FAST_CPU_ISA");
  if (env && std::string(env) == "generic") return false;
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

std::string isa_name() { return use_avx2() ? "avx2+fma" : "generic"; }

// Shifted, padded copies of one point set.
template <class T>
struct Prepared {
  at::Tensor rows, cols, nrm;
  int64_t n = 0, n_pad = 0, dp = 0;
};

template <class T>
Prepared<T> prepare(const at::Tensor& pts, const at::Tensor& offset, int64_t dp) {
  constexpr auto st = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
  Prepared<T> p;
  p.n = pts.size(0);
  p.n_pad = std::max<int64_t>(kTile, (p.n + kTile - 1) / kTile * kTile);
  p.dp = dp;
  const int64_t d = pts.size(1);
  at::Tensor rows = at::zeros({p.n_pad, dp}, pts.options().dtype(st));
  rows.narrow(0, 0, p.n).narrow(1, 0, d).copy_(pts.to(st) - offset.to(st));
  p.rows = rows;
  p.cols = rows.view({p.n_pad / kTile, kTile, dp}).transpose(1, 2).contiguous();  // per-tile transpose
  // squared norms accumulated in fp64, rounded once to the compute type
  p.nrm = rows.to(at::kDouble).pow(2).sum(1).to(st).contiguous();
  return p;
}

template <class T>
wae_cpu_generic::Operand<T> as_operand(const Prepared<T>& p) {
  return {p.rows.template data_ptr<T>(), p.cols.template data_ptr<T>(), p.nrm.template data_ptr<T>(), p.n,
          p.n_pad};
}

template <class T>
double run_stripe_dispatch(const wae_cpu_generic::Problem<T>& pb, int64_t s, int64_t ns, double* gr, double* gc,
                           bool avx2) {
#ifdef WAE_HAVE_AVX2_VARIANT
  if (avx2) {
    // The two namespaces hold layout-identical structs; reinterpret the problem description.
    static_assert(sizeof(wae_cpu_generic::Problem<T>) == sizeof(wae_cpu_avx2::Problem<T>), "layout");
    wae_cpu_avx2::Problem<T> q;
    std::memcpy(static_cast<void*>(&q), static_cast<const void*>(&pb), sizeof(q));
    return wae_cpu_avx2::run_stripe<T>(q, s, ns, gr, gc);
  }
#endif
  return wae_cpu_generic::run_stripe<T>(pb, s, ns, gr, gc);
}

// Number of stripes: a function of the problem size only (never of the thread count), so the
// fixed-order reduction is bit-identical on any machine.  Per-stripe fp64 gradient buffers are
// capped at ~256 MiB in total (at least 2 stripes).
int64_t num_stripes(int64_t row_blocks, int64_t partial_bytes) {
  int64_t ns = 16;
  if (partial_bytes > 0) ns = std::min<int64_t>(ns, std::max<int64_t>(2, (int64_t(256) << 20) / partial_bytes));
  return std::max<int64_t>(1, std::min<int64_t>(ns, row_blocks));
}

// One term: sum of k over the pairs (self term: symmetric, tiles visited once).  g_a/g_b
// (fp64, n_pad x dp, zero-initialised) receive sum_j W_ij (a_i - b_j) and sum_i W_ij (b_j - a_i)
// when non-null.  For a self term pass g_b == nullptr; g_a gets the full-row sums.
template <class T>
double run_term(const Prepared<T>& a, const Prepared<T>& b, bool symmetric, int kind, const std::vector<double>& P,
                bool unbiased, double* g_a, double* g_b) {
  wae_cpu_generic::Problem<T> pb;
  pb.a = as_operand(a);
  pb.b = as_operand(b);
  pb.dp = a.dp;
  pb.kind = kind;
  pb.S = static_cast<int>(P.size());
  for (int s = 0; s < pb.S; ++s) pb.P[s] = static_cast<T>(P[s]);
  pb.symmetric = symmetric;
  pb.unbiased = unbiased;
  const int64_t nbi = (a.n + kTile - 1) / kTile;
  // Which buffers need per-stripe copies: the column side of any term (several stripes write the
  // same columns), and the row side of a symmetric term (its columns are also rows).
  const bool grad = g_a || g_b;
  const bool cols_needed = symmetric ? (g_a != nullptr) : (g_b != nullptr);
  const int64_t part_rows = symmetric ? a.n_pad : b.n_pad;
  const int64_t part_bytes = cols_needed ? part_rows * a.dp * int64_t(sizeof(double)) : 0;
  const int64_t ns = num_stripes(nbi, part_bytes);
  std::vector<double> sums(ns, 0.0);
  std::vector<at::Tensor> partials;
  if (cols_needed)
    for (int64_t s = 0; s < ns; ++s) partials.push_back(at::zeros({part_rows, a.dp}, at::kDouble));
  const bool avx2 = use_avx2();  // decided once, outside the parallel region
  at::parallel_for(0, ns, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      double* gr = nullptr;
      double* gc = nullptr;
      if (grad) {
        if (symmetric) {
          gr = gc = partials[s].data_ptr<double>();
        } else {
          gr = g_a;  // rows of a are owned by exactly one stripe
          gc = cols_needed ? partials[s].data_ptr<double>() : nullptr;
        }
      }
      sums[s] = run_stripe_dispatch<T>(pb, s, ns, gr, gc, avx2);
    }
  });
  double total = 0.0;
  for (int64_t s = 0; s < ns; ++s) total += sums[s];  // fixed order
  if (cols_needed) {
    at::Tensor acc = partials[0];
    for (int64_t s = 1; s < ns; ++s) acc.add_(partials[s]);  // fixed order
    double* dst = symmetric ? g_a : g_b;
    std::memcpy(dst, acc.data_ptr<double>(), sizeof(double) * part_rows * a.dp);
  }
  return total;
}

void check_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& offset, int64_t kind,
                  const std::vector<double>& params) {
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu(), "wae_fast cpp backend: inputs must be CPU tensors");
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
              "wae_fast cpp backend: x (N, d) and y (M, d) must be 2-D with the same d");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "wae_fast cpp backend: x and y must have the same dtype");
  auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "wae_fast cpp backend: dtype must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK(offset.numel() == x.size(1), "wae_fast cpp backend: offset must have d elements");
  TORCH_CHECK(kind == wae_fast::KIND_IMQ || kind == wae_fast::KIND_RBF, "wae_fast cpp backend: unknown kernel kind ", kind);
  TORCH_CHECK(!params.empty() && params.size() <= size_t(kMaxScales),
              "wae_fast cpp backend: between 1 and ", kMaxScales, " kernel scales supported, got ", params.size());
}

template <class T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd_impl(const at::Tensor& x_, const at::Tensor& y_,
                                                        const at::Tensor& offset, int64_t kind,
                                                        const std::vector<double>& params, bool unbiased,
                                                        bool grad_x, bool grad_y) {
  constexpr auto st = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
  constexpr int64_t L = 32 / sizeof(T);
  at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  const int64_t dp = std::max<int64_t>(L, (d + L - 1) / L * L);
  Prepared<T> px = prepare<T>(x, offset, dp);
  Prepared<T> py = prepare<T>(y, offset, dp);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor gxx, gxy_x, gyy, gxy_y;
  if (grad_x) {
    gxx = at::zeros({px.n_pad, dp}, f64);
    gxy_x = at::zeros({px.n_pad, dp}, f64);
  }
  if (grad_y) {
    gyy = at::zeros({py.n_pad, dp}, f64);
    gxy_y = at::zeros({py.n_pad, dp}, f64);
  }
  auto ptr = [](at::Tensor& t) { return t.defined() ? t.data_ptr<double>() : nullptr; };
  double sxx = n > 0 ? run_term<T>(px, px, true, int(kind), params, unbiased, ptr(gxx), nullptr) : 0.0;
  double syy = m > 0 ? run_term<T>(py, py, true, int(kind), params, unbiased, ptr(gyy), nullptr) : 0.0;
  double sxy = 0.0;
  if (n > 0 && m > 0) {
    if (grad_y && !grad_x)  // rows = y: its gradient needs no per-stripe copies
      sxy = run_term<T>(py, px, false, int(kind), params, unbiased, ptr(gxy_y), nullptr);
    else
      sxy = run_term<T>(px, py, false, int(kind), params, unbiased, ptr(gxy_x), ptr(gxy_y));
  }
  const double nxx = wae_fast::pair_count_self(n, unbiased);
  const double nyy = wae_fast::pair_count_self(m, unbiased);
  const double nxy = double(n) * double(m);
  at::Tensor terms = at::empty({3}, f64);
  double* tp = terms.data_ptr<double>();
  tp[0] = sxx / nxx;
  tp[1] = syy / nyy;
  tp[2] = sxy / nxy;
  auto ct = x.options().dtype(st);
  at::Tensor gx = at::empty({0}, ct), gy = at::empty({0}, ct);
  if (grad_x)
    gx = at::stack({gxx.narrow(0, 0, n).narrow(1, 0, d) * (4.0 / nxx),
                    gxy_x.narrow(0, 0, n).narrow(1, 0, d) * (2.0 / nxy)}).to(st).contiguous();
  if (grad_y)
    gy = at::stack({gyy.narrow(0, 0, m).narrow(1, 0, d) * (4.0 / nyy),
                    gxy_y.narrow(0, 0, m).narrow(1, 0, d) * (2.0 / nxy)}).to(st).contiguous();
  return {terms, gx, gy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mmd_fwd_cpp(const at::Tensor& x, const at::Tensor& y,
                                                           const at::Tensor& offset, int64_t kind,
                                                           at::ArrayRef<double> params, bool unbiased, bool grad_x,
                                                           bool grad_y, c10::string_view precision) {
  std::vector<double> P(params.begin(), params.end());
  check_inputs(x, y, offset, kind, P);
  if (x.scalar_type() == at::kDouble) return fwd_impl<double>(x, y, offset, kind, P, unbiased, grad_x, grad_y);
  return fwd_impl<float>(x, y, offset, kind, P, unbiased, grad_x, grad_y);
}

std::tuple<at::Tensor, at::Tensor> mmd_bwd_cpp(const at::Tensor& grad_terms, const at::Tensor& x,
                                               const at::Tensor& y, const at::Tensor& offset, int64_t kind,
                                               at::ArrayRef<double> params, bool unbiased, bool grad_x, bool grad_y,
                                               c10::string_view precision) {
  // Only reached when the forward ran without gradient flags: recompute with them.
  auto res = mmd_fwd_cpp(x, y, offset, kind, params, unbiased, grad_x, grad_y, precision);
  at::Tensor gt = grad_terms.to(at::kDouble).cpu();
  const double* g = gt.data_ptr<double>();
  at::Tensor gx = at::empty({0}, x.options()), gy = at::empty({0}, y.options());
  if (grad_x) {
    at::Tensor p = std::get<1>(res);
    gx = (p[0] * g[0] + p[1] * g[2]).to(x.scalar_type());
  }
  if (grad_y) {
    at::Tensor p = std::get<2>(res);
    gy = (p[0] * g[1] + p[1] * g[2]).to(y.scalar_type());
  }
  return {gx, gy};
}

// Test hook: single-pair kernel value and derivative through the shared tile math (fp32 and
// fp64), used by tests/test_tile_math_host.py.
std::vector<double> tile_math_eval(int64_t kind, const std::vector<double>& params, double r, bool fp32) {
  double k, w;
  if (fp32) {
    std::vector<float> P(params.begin(), params.end());
    float kf, wf;
    wae_fast::kernel_eval_scalar<float>(int(kind), float(r), P.data(), int(P.size()), kf, wf,
                                        [](float v) { return std::exp(v); });
    k = kf;
    w = wf;
  } else {
    wae_fast::kernel_eval_scalar<double>(int(kind), r, params.data(), int(params.size()), k, w,
                                         [](double v) { return std::exp(v); });
  }
  return {k, w};
}

at::Tensor philox_randn_host(int64_t seed, at::Tensor offsets) {
  at::Tensor off = offsets.to(at::kLong).contiguous();
  at::Tensor out = at::empty(off.sizes(), at::kFloat);
  const int64_t* o = off.data_ptr<int64_t>();
  float* p = out.data_ptr<float>();
  for (int64_t i = 0; i < off.numel(); ++i)
    p[i] = wae_fast::philox_randn(uint64_t(seed), uint64_t(o[i]));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wae_fast, CPU, m) {
  m.impl("mmd_fwd_cpp", &mmd_fwd_cpp);
  m.impl("mmd_bwd_cpp", &mmd_bwd_cpp);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "wae_fast C++ CPU backend (registers wae_fast::mmd_fwd_cpp / mmd_bwd_cpp for CPU)";
  m.def("isa", &isa_name, "instruction set of the tile kernels selected at run time");
  m.def("tile_math_eval", &tile_math_eval, "test hook: (k, dk/dr) of one pair via csrc/include tile math");
  m.def("philox_randn_host", &philox_randn_host, "test hook: Triton-compatible tl.randn(seed, offsets) on the host");
}
