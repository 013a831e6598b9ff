// CPU backend ("cpp") of the kernel-matrix product family (wae_fast/contract.py, kernel_matmul_fwd/bwd):
//   out = K(x, y) @ v, and the gradients of <grad_out, out> to x and y, never forming K.
//
// Work is cut into row blocks of kRows rows of A (x for the output and gx, y for gy) that run in
// parallel (at::parallel_for; each row of the result is written by one task).  A task walks the
// column blocks of B (kCols rows each): the dot products of the block are one GEMM (at::mm: the
// fast matrix path, which matters at d = 2048), the kernel (and its weight w, tile_math.h) by
// ATen's vectorised element-wise ops on the cached block, and a second GEMM applies the block:
//   forward: acc += K_blk @ V_blk;
//   gradient: W = w * (U_blk @ V_blk^T), rs += rowsum(W), acc += W @ B_blk, and at the end
//             g = 2 (rs a - acc) (polynomial: -2 acc; its weight has no a term).
// gy is the gradient pass with the roles swapped (A = y, B = x, U = v, V = grad_out): k is
// symmetric.  Inside at::parallel_for the GEMMs run single-threaded (no nested parallelism).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "wae_fast/tile_math.h"

namespace {

constexpr int64_t kRows = 128;  // rows of A per task
constexpr int64_t kCols = 512;  // rows of B per block

struct KParamsHost {
  int kind;
  std::vector<double> p;
};

void check_kmm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v, const at::Tensor& offset, int64_t kind,
               at::ArrayRef<double> params) {
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu() && v.device().is_cpu(),
              "wae_fast cpp backend: x, y and v must be CPU tensors");
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
              "wae_fast cpp backend: x (N, d) and y (M, d) must be 2-D with the same d");
  TORCH_CHECK(v.dim() == 2 && v.size(0) == y.size(0), "wae_fast cpp backend: v must be (M, P)");
  TORCH_CHECK(x.scalar_type() == y.scalar_type() && x.scalar_type() == v.scalar_type(),
              "wae_fast cpp backend: x, y and v must have the same dtype");
  auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "wae_fast cpp backend: dtype must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK((offset.dim() == 1 && offset.size(0) == x.size(1)) ||
                  (offset.dim() == 2 && offset.size(0) == 3 && offset.size(1) == x.size(1)),
              "wae_fast cpp backend: offset must be (d,) or (3, d)");
  TORCH_CHECK(kind == wae_fast::KIND_IMQ || kind == wae_fast::KIND_RBF || kind == wae_fast::KIND_POLY,
              "wae_fast cpp backend: unknown kernel kind ", kind);
  if (kind == wae_fast::KIND_POLY) {
    TORCH_CHECK(params.size() == size_t(wae_fast::kPolyParams) && params[2] >= 1 &&
                    params[2] <= wae_fast::kMaxPolyDegree && params[2] == double(int64_t(params[2])),
                "wae_fast cpp backend: polynomial params must be [gamma, coef0, degree], integer degree in [1, ",
                wae_fast::kMaxPolyDegree, "]");
  } else {
    TORCH_CHECK(!params.empty() && params.size() <= size_t(wae_fast::kMaxScales),
                "wae_fast cpp backend: between 1 and ", wae_fast::kMaxScales, " kernel scales supported, got ",
                params.size());
  }
}

//! k (and, with need_w, the weight w of tile_math.h: dk/dr for IMQ/RBF, -(gamma/2) dk/dt for the
//! polynomial) of the pair block (a, b) with ATen's vectorised element-wise ops: one GEMM for
//! the dot products, then a few passes over the block (it stays in cache: kRows x kCols).
//! r-kernels: a and b are the AUGMENTED rows [a, |a|^2, 1] and [-2 b, 1, |b|^2], so that one GEMM
//! gives r = |a|^2 + |b|^2 - 2 a.b (no broadcast pass), clamped at 0 (the clamp keeps NaN).  One
//! scale (the common case) is evaluated in place on r.
std::pair<at::Tensor, at::Tensor> eval_block(const at::Tensor& a, const at::Tensor& b, int kind,
                                             const std::vector<double>& P, bool need_w) {
  if (kind == wae_fast::KIND_POLY) {
    const double gamma = P[0], c = P[1];
    const int64_t deg = int64_t(P[2]);
    at::Tensor base = at::mm(a, b.t()).mul_(gamma).add_(c);
    // an overflowed power reads NaN, not inf (v + (v - v), as tile_math.h poly_eval)
    auto nan_if_inf = [](at::Tensor v) { return v.add_(v - v); };
    if (!need_w) return {nan_if_inf(deg == 1 ? base : base.pow(deg)), at::Tensor()};
    at::Tensor pm1 = deg == 1 ? at::ones_like(base) : base.pow(deg - 1);
    at::Tensor k = nan_if_inf(pm1 * base);
    return {k, nan_if_inf(pm1.mul_(-0.5 * gamma * double(deg)))};
  }
  at::Tensor r = at::mm(a, b.t()).clamp_min_(0.0);
  if (P.size() == 1) {
    const double p = P[0];
    if (kind == wae_fast::KIND_IMQ) {
      at::Tensor t = r.add_(p).reciprocal_();  // 1/(C + r)
      at::Tensor w = need_w ? (t * t).mul_(-p) : at::Tensor();
      return {t.mul_(p), w};
    }
    at::Tensor e = r.mul_(-p).exp_();  // exp(-g r)
    return {e, need_w ? e * (-p) : at::Tensor()};
  }
  at::Tensor k = at::zeros_like(r), w = need_w ? at::zeros_like(r) : at::Tensor(), t = at::empty_like(r);
  for (double p : P) {
    if (kind == wae_fast::KIND_IMQ) {
      at::add_out(t, r, p).reciprocal_();  // 1/(C + r)
      k.add_(t, p);
      if (need_w) w.addcmul_(t, t, -p);
    } else {
      at::mul_out(t, r, -p).exp_();  // exp(-g r)
      k.add_(t);
      if (need_w) w.add_(t, -p);
    }
  }
  return {k, w};
}

//! Squared row norms accumulated in fp64, rounded once (as the MMD tiles); NaN for a row outside
//! the supported magnitude range (or NaN/Inf), so its pairs are NaN (tile_math.h MaxSqNorm).
template <class T>
at::Tensor in_range_norms(const at::Tensor& A) {
  at::Tensor n64 = A.to(at::kDouble).pow(2).sum(1);
  const double lim = double(wae_fast::MaxSqNorm<T>::value);
  return at::where(n64 <= lim, n64, std::numeric_limits<double>::quiet_NaN()).to(A.scalar_type()).contiguous();
}

//! FWD (U undefined): out = K(A, B) @ V, (nA, P).  GRAD: out = 2 sum_j W_ij (A_i - B_j) with
//! W_ij = w_ij (U_i . V_j), (nA, d) (polynomial: -2 sum_j W_ij B_j).  Compute dtype T.
template <class T>
at::Tensor kmm_pass(const at::Tensor& A, const at::Tensor& B, const at::Tensor& U, const at::Tensor& V, int kind,
                    const std::vector<double>& params) {
  const bool grad = U.defined();
  const int64_t nA = A.size(0), nB = B.size(0), d = A.size(1), P = V.size(1);
  const bool poly = kind == wae_fast::KIND_POLY;
  // squared norms accumulated in fp64, rounded once (as the MMD tiles)
  at::Tensor na = in_range_norms<T>(A), nb = in_range_norms<T>(B);
  at::Tensor out = at::empty({nA, grad ? d : P}, A.options());
  // r-kernels: augmented operands for the one-GEMM squared distances (see eval_block)
  at::Tensor Ae = A, Be = B;
  if (!poly) {
    at::Tensor one_a = at::ones({nA, 1}, A.options()), one_b = at::ones({nB, 1}, B.options());
    Ae = at::cat({A, na.unsqueeze(1), one_a}, 1).contiguous();
    Be = at::cat({B * -2.0, one_b, nb.unsqueeze(1)}, 1).contiguous();
  }
  const int64_t nblk = (nA + kRows - 1) / kRows;
  at::parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * kRows, ri = std::min(kRows, nA - i0);
      at::Tensor a = A.narrow(0, i0, ri);
      at::Tensor acc = at::zeros({ri, grad ? d : P}, A.options());
      at::Tensor rs = grad ? at::zeros({ri}, A.options()) : at::Tensor();
      at::Tensor u = grad ? U.narrow(0, i0, ri) : at::Tensor();
      for (int64_t j0 = 0; j0 < nB; j0 += kCols) {
        const int64_t cj = std::min(kCols, nB - j0);
        at::Tensor b = B.narrow(0, j0, cj);
        auto kw = eval_block(Ae.narrow(0, i0, ri), Be.narrow(0, j0, cj), kind, params, grad);
        at::Tensor& W = kw.second;
        if (!grad) {
          acc.addmm_(kw.first, V.narrow(0, j0, cj));
        } else {
          W.mul_(at::mm(u, V.narrow(0, j0, cj).t()));
          if (!poly) rs.add_(W.sum(1));
          acc.addmm_(W, b);
        }
      }
      at::Tensor o = out.narrow(0, i0, ri);
      if (!grad) o.copy_(acc);
      else if (poly) o.copy_(acc.mul_(-2.0));
      else o.copy_((rs.unsqueeze(1) * a - acc).mul_(2.0));
    }
  });
  return out;
}

at::Tensor compute_operand(const at::Tensor& t, const at::Tensor& offset, at::ScalarType ct, bool shift) {
  at::Tensor c = t.to(ct);
  // a (3, d) offset holds the mmd op's per-term shifts: K(x, y) is a cross term (row 2)
  if (shift) c = c - (offset.dim() == 2 ? offset.select(0, 2) : offset).to(ct);
  return c.contiguous();
}

at::Tensor kmm_fwd_cpp(const at::Tensor& x, const at::Tensor& y, const at::Tensor& v, const at::Tensor& offset,
                       int64_t kind, at::ArrayRef<double> params, c10::string_view precision) {
  check_kmm(x, y, v, offset, kind, params);
  const auto ct = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<double> P(params.begin(), params.end());
  at::Tensor A = compute_operand(x, offset, ct, true), B = compute_operand(y, offset, ct, true);
  at::Tensor V = v.to(ct).contiguous();
  at::Tensor out = ct == at::kDouble ? kmm_pass<double>(A, B, at::Tensor(), V, int(kind), P)
                                     : kmm_pass<float>(A, B, at::Tensor(), V, int(kind), P);
  return out.to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> kmm_bwd_cpp(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& y,
                                               const at::Tensor& v, const at::Tensor& offset, int64_t kind,
                                               at::ArrayRef<double> params, bool grad_x, bool grad_y,
                                               c10::string_view precision) {
  check_kmm(x, y, v, offset, kind, params);
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == x.size(0) && grad_out.size(1) == v.size(1),
              "wae_fast cpp backend: grad_out must be (N, P)");
  const auto ct = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<double> P(params.begin(), params.end());
  at::Tensor A = compute_operand(x, offset, ct, true), B = compute_operand(y, offset, ct, true);
  at::Tensor V = v.to(ct).contiguous(), G = grad_out.to(ct).contiguous();
  at::Tensor gx = at::empty({0}, x.options()), gy = at::empty({0}, y.options());
  const bool f64 = ct == at::kDouble;
  if (grad_x)
    gx = (f64 ? kmm_pass<double>(A, B, G, V, int(kind), P) : kmm_pass<float>(A, B, G, V, int(kind), P))
             .to(x.scalar_type());
  if (grad_y)
    gy = (f64 ? kmm_pass<double>(B, A, V, G, int(kind), P) : kmm_pass<float>(B, A, V, G, int(kind), P))
             .to(y.scalar_type());
  return {gx, gy};
}

}  // namespace

TORCH_LIBRARY_IMPL(wae_fast, CPU, m) {
  m.impl("kernel_matmul_fwd_cpp", &kmm_fwd_cpp);
  m.impl("kernel_matmul_bwd_cpp", &kmm_bwd_cpp);
}
