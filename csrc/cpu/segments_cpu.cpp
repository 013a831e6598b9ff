// CPU backend ("cpp") of the mmd_segments family (wae_fast/contract.py: mmd_segments_fwd/bwd):
// many (weighted) MMDs in one call, every set with its own shift.  The formulas are those of
// wae_fast/segment_sums.py (the reference): per set, row passes
//   s_i = sum_j v_j k(a_i, b_j),  G_i = sum_j v_j W_ij (a_i - b_j)
// over its xx, yy and xy pair matrices (segments_cpu_kernel.h), then float64 reductions per set.
//
// One parallel pass over all sets: the sets' operands are packed first (shifted by the set's
// shift, columns transposed and padded, weight-0 columns zeroed: their coordinates never reach a
// sum), then at::parallel_for runs over (set, row tile) tasks of every term at once; each task
// writes its own rows of s / G (no races), and the per-set sums are reduced in a fixed order
// (results do not depend on the thread count).  A y shared by every set (y_offsets = [0, M]) with
// one shift for all sets is packed once and its yy pass runs once.  Memory: O((sum of points) d).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "wae_fast/tile_math.h"

#define WAE_SEG_NS wae_seg_generic
#include "segments_cpu_kernel.h"
#undef WAE_SEG_NS

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define WAE_SEG_NS wae_seg_avx2
#include "segments_cpu_kernel.h"
#undef WAE_SEG_NS
#pragma GCC pop_options
#define WAE_SEG_HAVE_AVX2 1
#endif

namespace {

constexpr int64_t kRowTile = 64;

bool seg_avx2() {
#ifdef WAE_SEG_HAVE_AVX2
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

template <class T>
using Cols = wae_seg_generic::SegCols<T>;

template <class T>
void seg_row_pass(const T* A, const T* na, int64_t i0, int64_t i1, const Cols<T>& C, int kind, const T* P, int S,
                  bool self_pass, bool exclude_diag, double* s, T* G, T* wbuf) {
#ifdef WAE_SEG_HAVE_AVX2
  if (seg_avx2()) {
    wae_seg_avx2::SegCols<T> c2{C.bt, C.nb, C.v, C.m, C.mp, C.d};
    wae_seg_avx2::row_pass<T>(A, na, i0, i1, c2, kind, P, S, self_pass, exclude_diag, s, G, wbuf);
    return;
  }
#endif
  wae_seg_generic::row_pass<T>(A, na, i0, i1, C, kind, P, S, self_pass, exclude_diag, s, G, wbuf);
}

// One side (x or y) of one set, packed: rows (n x d, shifted, unmasked), their norms, and the
// column operand (transposed, padded to mp, weight-0 columns zeroed), the column weights.
template <class T>
struct Side {
  std::vector<T> rows, na, bt, nb, v;
  int64_t n = 0, mp = 0, d = 0;
  Cols<T> cols() const { return Cols<T>{bt.data(), nb.data(), v.data(), n, mp, d}; }
};

template <class T>
void pack(Side<T>& s, const T* p, const T* w, int64_t n, int64_t d, const T* shift) {
  constexpr int64_t L = 32 / sizeof(T);
  s.n = n;
  s.d = d;
  s.mp = (n + L - 1) / L * L;
  s.rows.assign(n * d, T(0));
  s.na.assign(n, T(0));
  s.bt.assign(d * s.mp, T(0));
  s.nb.assign(s.mp, T(0));
  s.v.assign(s.mp, T(0));
  for (int64_t i = 0; i < n; ++i) {
    const T wi = w == nullptr ? T(1) : w[i];
    double nrm = 0;
    for (int64_t k = 0; k < d; ++k) {
      const T a = p[i * d + k] - shift[k];
      s.rows[i * d + k] = a;
      nrm += double(a) * double(a);
    }
    // outside the supported magnitude range (or NaN): NaN, so its pairs are NaN (tile_math.h)
    s.na[i] = nrm <= double(wae_fast::MaxSqNorm<T>::value) ? T(nrm) : std::numeric_limits<T>::quiet_NaN();
    s.v[i] = wi;
    if (wi != T(0)) {  // a weight-0 column is never read: zero coordinates, norm 0, weight 0
      for (int64_t k = 0; k < d; ++k) s.bt[k * s.mp + i] = s.rows[i * d + k];
      s.nb[i] = s.na[i];
    }
  }
}

struct Denoms {
  double sum, D;  // sum w and the self-term denominator (NaN for an invalid weight)
};

template <class T>
Denoms denoms(const T* w, int64_t n, bool unbiased) {
  double total = 0, pairs = 0;
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    const double wi = w == nullptr ? 1.0 : double(w[i]);
    if (!(wi >= 0) || !std::isfinite(wi)) bad = true;
    pairs += wi * total;  // sum_i w_i sum_{j<i} w_j: exact for tiny weights
    total += wi;
  }
  if (bad) return {NAN, NAN};
  return {total, unbiased ? 2.0 * pairs : total * total};
}

struct Problem {
  int64_t B;
  std::vector<int64_t> xo, yo;  // x offsets (B + 1), y row range per set (start, end)
  std::vector<int64_t> yop;     // which packed y side each set uses
  bool shared;
};

Problem make_problem(const at::Tensor& x_offsets, const at::Tensor& y_offsets, const at::Tensor& shifts, int64_t my) {
  Problem pb;
  auto xo = x_offsets.to(at::kLong).contiguous(), yo = y_offsets.to(at::kLong).contiguous();
  pb.B = xo.numel() - 1;
  TORCH_CHECK(pb.B >= 1, "wae_fast cpp backend: x_offsets must have B + 1 >= 2 entries");
  pb.xo.assign(xo.data_ptr<int64_t>(), xo.data_ptr<int64_t>() + xo.numel());
  const int64_t* yp = yo.data_ptr<int64_t>();
  pb.shared = yo.numel() == 2 && pb.B > 1;
  TORCH_CHECK(pb.shared || yo.numel() == pb.B + 1, "wae_fast cpp backend: y_offsets must have B + 1 or 2 entries");
  for (int64_t b = 0; b < pb.B; ++b) {
    pb.yo.push_back(pb.shared ? yp[0] : yp[b]);
    pb.yo.push_back(pb.shared ? yp[1] : yp[b + 1]);
  }
  for (int64_t b = 0; b <= pb.B; ++b)
    TORCH_CHECK(pb.xo[b] >= 0 && (b == 0 || pb.xo[b] >= pb.xo[b - 1]), "wae_fast cpp backend: bad x_offsets");
  for (int64_t b = 0; b < pb.B; ++b)
    TORCH_CHECK(pb.yo[2 * b] >= 0 && pb.yo[2 * b] <= pb.yo[2 * b + 1] && pb.yo[2 * b + 1] <= my,
                "wae_fast cpp backend: bad y_offsets");
  // a shared y with one shift for every set is packed once
  pb.yop.resize(pb.B);
  const auto sh = shifts.contiguous();
  const int64_t rowbytes = sh.size(1) * sh.element_size();
  const char* s0 = static_cast<const char*>(sh.data_ptr());
  for (int64_t b = 0; b < pb.B; ++b)
    pb.yop[b] = (pb.shared && b > 0 && std::memcmp(s0, s0 + b * rowbytes, rowbytes) == 0) ? 0 : b;
  return pb;
}

void check_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& xw, const at::Tensor& yw,
                  const at::Tensor& shifts, int64_t kind, at::ArrayRef<double> params) {
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu(), "wae_fast cpp backend: x and y must be CPU tensors");
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1),
              "wae_fast cpp backend: x (N, d) and y (M, d) must be 2-D with the same d");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "wae_fast cpp backend: x and y must have the same dtype");
  TORCH_CHECK(xw.numel() == 0 || xw.numel() == x.size(0), "wae_fast cpp backend: x_weights must be (N,) or empty");
  TORCH_CHECK(yw.numel() == 0 || yw.numel() == y.size(0), "wae_fast cpp backend: y_weights must be (M,) or empty");
  TORCH_CHECK(shifts.dim() == 2 && shifts.size(1) == x.size(1), "wae_fast cpp backend: shifts must be (B, d)");
  TORCH_CHECK(kind == wae_fast::KIND_IMQ || kind == wae_fast::KIND_RBF || kind == wae_fast::KIND_POLY,
              "wae_fast cpp backend: unknown kernel kind ", kind);
  if (kind == wae_fast::KIND_POLY) {
    TORCH_CHECK(params.size() == size_t(wae_fast::kPolyParams) && params[2] >= 1 &&
                    params[2] <= wae_fast::kMaxPolyDegree && params[2] == double(int64_t(params[2])),
                "wae_fast cpp backend: polynomial params must be [gamma, coef0, degree]");
  } else {
    TORCH_CHECK(!params.empty() && params.size() <= size_t(wae_fast::kMaxScales), "wae_fast cpp backend: between 1 and ",
                wae_fast::kMaxScales, " kernel scales supported, got ", params.size());
  }
}

// Everything a pass over all sets needs, packed once.
template <class T>
struct Packed {
  std::vector<Side<T>> xs, ys;  // per set (ys[b] empty when set b reuses ys[yop[b]])
  std::vector<Denoms> dx, dy;
};

template <class T>
Packed<T> pack_all(const Problem& pb, const T* X, const T* Y, const T* XW, const T* YW, const T* SH, int64_t d,
                   bool unbiased) {
  Packed<T> pk;
  pk.xs.resize(pb.B);
  pk.ys.resize(pb.B);
  pk.dx.resize(pb.B);
  pk.dy.resize(pb.B);
  at::parallel_for(0, pb.B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t xs = pb.xo[b], nx = pb.xo[b + 1] - xs, ys = pb.yo[2 * b], ny = pb.yo[2 * b + 1] - ys;
      const T* xw = XW == nullptr ? nullptr : XW + xs;
      const T* yw = YW == nullptr ? nullptr : YW + ys;
      pack(pk.xs[b], X + xs * d, xw, nx, d, SH + b * d);
      if (pb.yop[b] == b) pack(pk.ys[b], Y + ys * d, yw, ny, d, SH + b * d);
      pk.dx[b] = denoms(xw, nx, unbiased);
      pk.dy[b] = denoms(yw, ny, unbiased);
    }
  });
  return pk;
}

// A task: rows [i0, i1) of one side of one set against one column operand.
struct Task {
  int64_t set, i0, i1;
  int term;  // 0: xx, 1: yy, 2: xy (x rows vs y columns), 3: yx
};

std::vector<Task> make_tasks(const Problem& pb, const std::vector<int64_t>& nx, const std::vector<int64_t>& ny,
                             bool x_side, bool y_side, bool y_each_set) {
  std::vector<Task> t;
  for (int64_t b = 0; b < pb.B; ++b) {
    if (x_side)
      for (int64_t i0 = 0; i0 < nx[b]; i0 += kRowTile) {
        t.push_back({b, i0, std::min(nx[b], i0 + kRowTile), 0});
        t.push_back({b, i0, std::min(nx[b], i0 + kRowTile), 2});
      }
    if (y_side && (y_each_set || pb.yop[b] == b))
      for (int64_t i0 = 0; i0 < ny[b]; i0 += kRowTile) t.push_back({b, i0, std::min(ny[b], i0 + kRowTile), 1});
  }
  return t;
}

template <class T>
at::Tensor seg_fwd_t(const at::Tensor& x, const at::Tensor& y, const Problem& pb, const at::Tensor& xw,
                     const at::Tensor& yw, const at::Tensor& shifts, int kind, const std::vector<T>& P, bool unbiased) {
  const int64_t d = x.size(1);
  const int S = int(P.size());
  Packed<T> pk = pack_all<T>(pb, x.data_ptr<T>(), y.data_ptr<T>(), xw.numel() ? xw.data_ptr<T>() : nullptr,
                             yw.numel() ? yw.data_ptr<T>() : nullptr, shifts.data_ptr<T>(), d, unbiased);
  std::vector<int64_t> nx(pb.B), ny(pb.B), xbase(pb.B + 1, 0), ybase(pb.B + 1, 0);
  for (int64_t b = 0; b < pb.B; ++b) {
    nx[b] = pk.xs[b].n;
    ny[b] = pb.yo[2 * b + 1] - pb.yo[2 * b];
    xbase[b + 1] = xbase[b] + nx[b];
    ybase[b + 1] = ybase[b] + ny[b];
  }
  std::vector<double> sxx(xbase[pb.B]), sxy(xbase[pb.B]), syy(ybase[pb.B]);
  std::vector<Task> tasks = make_tasks(pb, nx, ny, true, true, false);
  at::parallel_for(0, int64_t(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const Task& k = tasks[t];
      const Side<T>& X = pk.xs[k.set];
      const Side<T>& Yc = pk.ys[pb.yop[k.set]];
      if (k.term == 0)
        seg_row_pass<T>(X.rows.data(), X.na.data(), k.i0, k.i1, X.cols(), kind, P.data(), S, true, unbiased,
                    sxx.data() + xbase[k.set] + k.i0, nullptr, nullptr);
      else if (k.term == 2)
        seg_row_pass<T>(X.rows.data(), X.na.data(), k.i0, k.i1, Yc.cols(), kind, P.data(), S, false, false,
                    sxy.data() + xbase[k.set] + k.i0, nullptr, nullptr);
      else
        seg_row_pass<T>(Yc.rows.data(), Yc.na.data(), k.i0, k.i1, Yc.cols(), kind, P.data(), S, true, unbiased,
                    syy.data() + ybase[k.set] + k.i0, nullptr, nullptr);
    }
  });
  at::Tensor terms = at::empty({pb.B, 3}, x.options().dtype(at::kDouble));
  double* out = terms.data_ptr<double>();
  for (int64_t b = 0; b < pb.B; ++b) {  // fixed-order float64 reductions per set
    const Side<T>& X = pk.xs[b];
    const Side<T>& Yc = pk.ys[pb.yop[b]];
    const int64_t yb = pb.yop[b];
    double txx = 0, txy = 0, tyy = 0;
    for (int64_t i = 0; i < nx[b]; ++i)
      if (X.v[i] != T(0)) {
        txx += double(X.v[i]) * sxx[xbase[b] + i];
        txy += double(X.v[i]) * sxy[xbase[b] + i];
      }
    for (int64_t i = 0; i < ny[b]; ++i)
      if (Yc.v[i] != T(0)) tyy += double(Yc.v[i]) * syy[ybase[yb] + i];
    out[3 * b] = txx / pk.dx[b].D;
    out[3 * b + 1] = tyy / pk.dy[b].D;
    out[3 * b + 2] = txy / (pk.dx[b].sum * pk.dy[b].sum);
  }
  return terms;
}

at::ScalarType compute_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor seg_fwd_cpp(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_offsets,
                       const at::Tensor& y_offsets, const at::Tensor& x_weights, const at::Tensor& y_weights,
                       const at::Tensor& shifts, int64_t kind, at::ArrayRef<double> params, bool unbiased,
                       c10::string_view precision) {
  check_inputs(x, y, x_weights, y_weights, shifts, kind, params);
  const auto ct = compute_type(x);
  at::Tensor X = x.to(ct).contiguous(), Y = y.to(ct).contiguous(), SH = shifts.to(ct).contiguous();
  at::Tensor XW = x_weights.to(ct).contiguous(), YW = y_weights.to(ct).contiguous();
  Problem pb = make_problem(x_offsets, y_offsets, SH, y.size(0));
  TORCH_CHECK(pb.xo[pb.B] <= x.size(0) && SH.size(0) == pb.B, "wae_fast cpp backend: x_offsets / shifts mismatch");
  if (ct == at::kDouble)
    return seg_fwd_t<double>(X, Y, pb, XW, YW, SH, int(kind), std::vector<double>(params.begin(), params.end()),
                             unbiased);
  return seg_fwd_t<float>(X, Y, pb, XW, YW, SH, int(kind), std::vector<float>(params.begin(), params.end()), unbiased);
}

// Gradients of sum_b grad_terms[b] . terms[b] (wae_fast/segment_sums.py):
//   d/dx_i = 4 g_xx w_i G^xx_i / D_x + 2 g_xy w_i G^xy_i / (sum w sum v)
//   d/dw_i = g_xx (2 s^xx_i - t_xx dD_x/dw_i) / D_x + g_xy (s^xy_i / sum v - t_xy) / sum w
// y alike.  Tasks: x rows of every set; y rows per set (a shared y: per row tile, looping over
// the sets, so that no two tasks write one row).
template <class T>
std::vector<at::Tensor> seg_bwd_t(const at::Tensor& gt, const at::Tensor& terms, const at::Tensor& x,
                                  const at::Tensor& y, const Problem& pb, const at::Tensor& xw, const at::Tensor& yw,
                                  const at::Tensor& shifts, int kind, const std::vector<T>& P, bool unbiased,
                                  bool grad_x, bool grad_y, bool grad_xw, bool grad_yw) {
  const int64_t d = x.size(1);
  const int S = int(P.size());
  Packed<T> pk = pack_all<T>(pb, x.data_ptr<T>(), y.data_ptr<T>(), xw.numel() ? xw.data_ptr<T>() : nullptr,
                             yw.numel() ? yw.data_ptr<T>() : nullptr, shifts.data_ptr<T>(), d, unbiased);
  const double* G = gt.data_ptr<double>();
  const double* TT = terms.data_ptr<double>();
  at::Tensor gx = at::zeros({grad_x ? x.size(0) : 0, d}, x.options());
  at::Tensor gy = at::zeros({grad_y ? y.size(0) : 0, d}, y.options());
  at::Tensor gxw = at::zeros({grad_xw ? x.size(0) : 0}, x.options().dtype(at::kDouble));
  at::Tensor gyw = at::zeros({grad_yw ? y.size(0) : 0}, x.options().dtype(at::kDouble));
  T* GX = gx.data_ptr<T>();
  T* GY = gy.data_ptr<T>();
  double* GXW = gxw.data_ptr<double>();
  double* GYW = gyw.data_ptr<double>();
  // one side's rows [i0, i1) of set b against its own columns (self) and the other side's
  // (cross); out rows start at row0 of the input tensor
  auto side = [&](const Side<T>& A, const Side<T>& Bc, const Denoms& da, const Denoms& db, double g_self,
                  double g_cross, double t_self, double t_cross, int64_t i0, int64_t i1, bool need_p, bool need_w,
                  T* gp, double* gw, int64_t row0) {
    const int64_t n = i1 - i0;
    std::vector<double> ss(n), sc(n);  // rows i0.. of this task only
    std::vector<T> Gs(need_p ? n * d : 0), Gc(need_p ? n * d : 0), wbuf(4 * std::max(A.mp, Bc.mp));
    seg_row_pass<T>(A.rows.data(), A.na.data(), i0, i1, A.cols(), kind, P.data(), S, true, unbiased, ss.data(),
                need_p ? Gs.data() : nullptr, wbuf.data());
    seg_row_pass<T>(A.rows.data(), A.na.data(), i0, i1, Bc.cols(), kind, P.data(), S, false, false, sc.data(),
                need_p ? Gc.data() : nullptr, wbuf.data());
    const double cs = 4.0 * g_self / da.D, cc = 2.0 * g_cross / (da.sum * db.sum);
    for (int64_t l = 0; l < n; ++l) {
      const int64_t i = i0 + l;
      const double wi = double(A.v[i]);
      if (need_p && wi != 0) {
        const T a = T(cs * wi), c = T(cc * wi);
        for (int64_t k = 0; k < d; ++k) gp[(row0 + i) * d + k] += a * Gs[l * d + k] + c * Gc[l * d + k];
      }
      if (need_w) {
        const double dd = unbiased ? 2.0 * (da.sum - wi) : 2.0 * da.sum;
        gw[row0 + i] += g_self * (2.0 * ss[l] - t_self * dd) / da.D + g_cross * (sc[l] / db.sum - t_cross) / da.sum;
      }
    }
  };
  if (grad_x || grad_xw) {
    std::vector<Task> tasks;
    for (int64_t b = 0; b < pb.B; ++b)
      for (int64_t i0 = 0; i0 < pk.xs[b].n; i0 += kRowTile) tasks.push_back({b, i0, std::min(pk.xs[b].n, i0 + kRowTile), 0});
    at::parallel_for(0, int64_t(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const Task& k = tasks[t];
        const int64_t b = k.set;
        side(pk.xs[b], pk.ys[pb.yop[b]], pk.dx[b], pk.dy[b], G[3 * b], G[3 * b + 2], TT[3 * b], TT[3 * b + 2], k.i0,
             k.i1, grad_x, grad_xw, GX, GXW, pb.xo[b]);
      }
    });
  }
  if (grad_y || grad_yw) {
    // y rows: per set, or (shared y) per row tile over every set in order
    const int64_t groups = pb.shared ? 1 : pb.B;
    std::vector<Task> tasks;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t ny = pb.yo[2 * g + 1] - pb.yo[2 * g];
      for (int64_t i0 = 0; i0 < ny; i0 += kRowTile) tasks.push_back({g, i0, std::min(ny, i0 + kRowTile), 1});
    }
    at::parallel_for(0, int64_t(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const Task& k = tasks[t];
        const int64_t b0 = pb.shared ? 0 : k.set, b1 = pb.shared ? pb.B : k.set + 1;
        for (int64_t b = b0; b < b1; ++b)
          side(pk.ys[pb.yop[b]], pk.xs[b], pk.dy[b], pk.dx[b], G[3 * b + 1], G[3 * b + 2], TT[3 * b + 1],
               TT[3 * b + 2], k.i0, k.i1, grad_y, grad_yw, GY, GYW, pb.yo[2 * b]);
      }
    });
  }
  return {gx, gy, gxw, gyw};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> seg_bwd_cpp(
    const at::Tensor& grad_terms, const at::Tensor& terms, const at::Tensor& x, const at::Tensor& y,
    const at::Tensor& x_offsets, const at::Tensor& y_offsets, const at::Tensor& x_weights,
    const at::Tensor& y_weights, const at::Tensor& shifts, int64_t kind, at::ArrayRef<double> params, bool unbiased,
    bool grad_x, bool grad_y, bool grad_xw, bool grad_yw, c10::string_view precision) {
  check_inputs(x, y, x_weights, y_weights, shifts, kind, params);
  const auto ct = compute_type(x);
  at::Tensor X = x.to(ct).contiguous(), Y = y.to(ct).contiguous(), SH = shifts.to(ct).contiguous();
  at::Tensor XW = x_weights.to(ct).contiguous(), YW = y_weights.to(ct).contiguous();
  at::Tensor GT = grad_terms.to(at::kDouble).contiguous(), TT = terms.to(at::kDouble).contiguous();
  Problem pb = make_problem(x_offsets, y_offsets, SH, y.size(0));
  TORCH_CHECK(GT.numel() == 3 * pb.B && TT.numel() == 3 * pb.B, "wae_fast cpp backend: grad_terms / terms must be (B, 3)");
  grad_xw = grad_xw && x_weights.numel() > 0;
  grad_yw = grad_yw && y_weights.numel() > 0;
  std::vector<at::Tensor> g =
      ct == at::kDouble
          ? seg_bwd_t<double>(GT, TT, X, Y, pb, XW, YW, SH, int(kind), std::vector<double>(params.begin(), params.end()),
                              unbiased, grad_x, grad_y, grad_xw, grad_yw)
          : seg_bwd_t<float>(GT, TT, X, Y, pb, XW, YW, SH, int(kind), std::vector<float>(params.begin(), params.end()),
                             unbiased, grad_x, grad_y, grad_xw, grad_yw);
  auto empty = at::empty({0}, x.options());
  return {grad_x ? g[0].to(x.scalar_type()) : empty, grad_y ? g[1].to(y.scalar_type()) : empty,
          grad_xw ? g[2].to(x_weights.scalar_type()) : empty, grad_yw ? g[3].to(y_weights.scalar_type()) : empty};
}

}  // namespace

TORCH_LIBRARY_IMPL(wae_fast, CPU, m) {
  m.impl("mmd_segments_fwd_cpp", &seg_fwd_cpp);
  m.impl("mmd_segments_bwd_cpp", &seg_bwd_cpp);
}
