// CPU backend of wae_fast ("cpp"): fused, memory-flat squared MMD with fused gradient parts.
//
// Schemas are defined in Python (wae_fast/contract.py, define_backend_ops("cpp", fuses_grad=True));
// this file only registers CPU implementations of wae_fast::mmd_fwd_cpp / mmd_bwd_cpp,
// reparam_fwd_cpp / reparam_bwd_cpp and prior_fwd_cpp / prior_bwd_cpp.
// The tile kernels (mmd_cpu_kernel.h) are compiled three times: here for the baseline ISA, and in
// tiles_avx2.cpp (AVX2+FMA) and tiles_avx512.cpp (AVX-512, 64-byte vectors); cpu_isa() picks the
// widest one the CPU and the OS support (override: WAE_FAST_CPU_ISA=avx512|avx2|baseline).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "wae_fast/tile_math.h"
#include "tile_dispatch.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <cpuid.h>
#define WAE_HAVE_X86_VARIANTS 1
#endif

#define WAE_CPU_NS wae_cpu_generic
#define WAE_CPU_VBYTES 32
#include "mmd_cpu_kernel.h"
#undef WAE_CPU_NS
#undef WAE_CPU_VBYTES
#include "pack_rows.h"

#ifdef WAE_HAVE_X86_VARIANTS  // compiled in tiles_avx2.cpp / tiles_avx512.cpp; declarations only
#define WAE_CPU_DECL_ONLY 1
#define WAE_CPU_NS wae_cpu_avx2
#define WAE_CPU_VBYTES 32
#include "mmd_cpu_kernel.h"
#undef WAE_CPU_NS
#undef WAE_CPU_VBYTES
#define WAE_CPU_NS wae_cpu_avx512
#define WAE_CPU_VBYTES 64
#include "mmd_cpu_kernel.h"
#undef WAE_CPU_NS
#undef WAE_CPU_VBYTES
#undef WAE_CPU_DECL_ONLY
#endif

namespace {

using wae_fast::kMaxScales;
constexpr int64_t kTile = wae_cpu_generic::kTile;

// ---------------------------------------------------------------------------------------------
// Instruction set of the tile kernels: the widest variant the CPU and the OS support, or the one
// WAE_FAST_CPU_ISA names (read on every call, so tests can switch; an unknown name or a variant
// this machine cannot run is a ValueError, never a silent fallback).
// ---------------------------------------------------------------------------------------------
enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_str(Isa i) { return i == Isa::kAvx512 ? "avx512" : i == Isa::kAvx2 ? "avx2" : "baseline"; }

//! Vector bytes of a variant's tiles (the column padding dp is a multiple of its lanes).
int64_t isa_vbytes(Isa i) { return i == Isa::kAvx512 ? 64 : 32; }

#ifdef WAE_HAVE_X86_VARIANTS
//! XCR0 (the register state the OS saves on context switches), 0 without OSXSAVE.
uint64_t os_xcr0() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return 0;
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}
#endif

//! Whether this CPU and OS run a variant: the instructions (__builtin_cpu_supports) and the
//! saved state (XCR0: SSE+AVX bits 1-2, and for AVX-512 the opmask and ZMM bits 5-7).
bool isa_supported(Isa i) {
  if (i == Isa::kBaseline) return true;
#ifdef WAE_HAVE_X86_VARIANTS
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           (os_xcr0() & 0x6) == 0x6;
  static const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                             (os_xcr0() & 0xe6) == 0xe6;
  return i == Isa::kAvx2 ? avx2 : avx512;
#else
  return false;
#endif
}

Isa cpu_isa() {
  const char* env = std::getenv("WAE_FAST_CPU_ISA");
  if (env == nullptr || env[0] == '\0')
    return isa_supported(Isa::kAvx512) ? Isa::kAvx512 : isa_supported(Isa::kAvx2) ? Isa::kAvx2 : Isa::kBaseline;
  const std::string v(env);
  Isa want;
  if (v == "avx512") want = Isa::kAvx512;
  else if (v == "avx2") want = Isa::kAvx2;
  else if (v == "baseline" || v == "generic") want = Isa::kBaseline;  // "generic": the former name
  else
    TORCH_CHECK_VALUE(false, "wae_fast cpp backend: WAE_FAST_CPU_ISA must be one of avx512, avx2, baseline "
                      "(or unset: the widest this CPU runs), got '", v, "'");
  TORCH_CHECK_VALUE(isa_supported(want), "wae_fast cpp backend: WAE_FAST_CPU_ISA=", v,
                    " but this CPU or OS does not support it (or this build lacks it: x86-64 GCC only)");
  return want;
}

std::string isa_name() { return isa_str(cpu_isa()); }

//! The variants this machine runs, baseline first (tests parametrise over them).
std::vector<std::string> isa_list() {
  std::vector<std::string> out;
  for (Isa i : {Isa::kBaseline, Isa::kAvx2, Isa::kAvx512})
    if (isa_supported(i)) out.push_back(isa_str(i));
  return out;
}

// Shifted, padded copies of one point set: one buffer holding the rows (n_pad x dp), the
// per-tile transposed columns and the squared norms, filled by plain loops (a small call used to
// pay ~10 ATen ops per operand here: zeros, narrow, copy, sub, view, transpose, pow, sum, where).
template <class T>
struct Prepared {
  at::Tensor buf;
  const T* rows = nullptr;
  const T* cols = nullptr;
  const T* nrm = nullptr;
  int64_t n = 0, n_pad = 0, dp = 0, d = 0;
};

//! Rows of a prepared operand: n rounded up to whole tiles (at least one).
int64_t padded_rows(int64_t n) { return std::max<int64_t>(kTile, (n + kTile - 1) / kTile * kTile); }

//! Points pts (n x d, row-major, compute type) minus off (d values; null: no shift), padded:
//! the rows, their per-tile transpose and the squared norms of a tile at once, sixteen rows at a
//! time in registers of `isa` (pack_rows.h; the norms k ascending in fp64, the bits of a scalar
//! loop).  A scalar loop with one chain of d dependent fp64 adds per row, then a strided
//! transpose, was a quarter of a one-set call at N = 64, d = 64.
template <class T>
Prepared<T> prepare_raw(const T* pts, int64_t n, int64_t d, const T* off, int64_t dp, Isa isa) {
  constexpr auto st = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
  Prepared<T> p;
  p.n = n;
  p.n_pad = padded_rows(n);
  p.dp = dp;
  p.d = d;
  const int64_t sz = p.n_pad * dp;
  p.buf = at::empty({2 * sz + p.n_pad}, at::TensorOptions().dtype(st));
  T* rows = p.buf.template data_ptr<T>();
  T* cols = rows + sz;
  T* nrm = cols + sz;
  const double lim = double(wae_fast::MaxSqNorm<T>::value);
  // squared norms accumulated in fp64, rounded once to the compute type; a row outside the
  // supported magnitude range (or holding NaN/Inf) gets a NaN norm, so its pairs are NaN
  // (tile_math.h: MaxSqNorm, the hostile-input contract)
  at::parallel_for(0, p.n_pad / kTile, 64, [&](int64_t tb, int64_t te) {
    const T* q[kTile];
    double acc[kTile];
    for (int64_t t = tb; t < te; ++t) {
      const int64_t i0 = t * kTile, nn = std::max<int64_t>(0, std::min<int64_t>(kTile, n - i0));
      T* ct = cols + t * dp * kTile;  // the per-tile transpose: (dp x kTile) block t
      T* rt = rows + i0 * dp;
      std::fill(acc, acc + kTile, 0.0);
      for (int64_t c = 0; c < nn; ++c) q[c] = pts + (i0 + c) * d;
      wae_cpu_pack::pack_tile<T>(q, off, d, nn, ct, acc, int(isa), rt, dp);
      // zeros: coordinates d .. dp - 1, padding rows, and their places in the transpose
      for (int64_t r = 0; r < nn; ++r) std::fill(rt + r * dp + d, rt + (r + 1) * dp, T(0));
      std::fill(rt + nn * dp, rt + kTile * dp, T(0));
      for (int64_t k = 0; k < d; ++k) std::fill(ct + k * kTile + nn, ct + (k + 1) * kTile, T(0));
      std::fill(ct + d * kTile, ct + dp * kTile, T(0));
      for (int64_t r = 0; r < kTile; ++r)
        nrm[i0 + r] = acc[r] <= lim ? T(acc[r]) : std::numeric_limits<T>::quiet_NaN();
    }
  });
  p.rows = rows;
  p.cols = cols;
  p.nrm = nrm;
  return p;
}

template <class T>
Prepared<T> prepare(const at::Tensor& pts, const at::Tensor& offset, int64_t dp) {
  constexpr auto st = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
  at::Tensor q = pts.to(st).contiguous(), o = offset.to(st).contiguous();
  return prepare_raw<T>(q.template data_ptr<T>(), q.size(0), q.size(1), o.template data_ptr<T>(), dp, cpu_isa());
}

template <class T>
wae_cpu_generic::Operand<T> as_operand(const Prepared<T>& p) {
  return {p.rows, p.cols, p.nrm, p.n, p.n_pad};
}

//! The same problem description in another variant's namespace (layout-identical structs).
template <class Q, class P>
Q as_variant(const P& pb) {
  static_assert(sizeof(Q) == sizeof(P), "layout");
  Q q;
  std::memcpy(static_cast<void*>(&q), static_cast<const void*>(&pb), sizeof(q));
  return q;
}

template <class T>
double run_stripe_dispatch(const wae_cpu_generic::Problem<T>& pb, int64_t s, int64_t ns, double* gr, double* gc,
                           Isa isa) {
#ifdef WAE_HAVE_X86_VARIANTS
  if (isa == Isa::kAvx512)
    return wae_cpu_avx512::run_stripe<T>(as_variant<wae_cpu_avx512::Problem<T>>(pb), s, ns, gr, gc);
  if (isa == Isa::kAvx2)
    return wae_cpu_avx2::run_stripe<T>(as_variant<wae_cpu_avx2::Problem<T>>(pb), s, ns, gr, gc);
#endif
  return wae_cpu_generic::run_stripe<T>(pb, s, ns, gr, gc);
}

template <class T>
double run_block_dispatch(const wae_cpu_generic::Problem<T>& pb, int64_t I0, int64_t I1, int64_t J0, int64_t J1,
                          bool tri, double* gr, double* gc, Isa isa) {
#ifdef WAE_HAVE_X86_VARIANTS
  if (isa == Isa::kAvx512)
    return wae_cpu_avx512::run_block<T>(as_variant<wae_cpu_avx512::Problem<T>>(pb), I0, I1, J0, J1, tri, gr, gc);
  if (isa == Isa::kAvx2)
    return wae_cpu_avx2::run_block<T>(as_variant<wae_cpu_avx2::Problem<T>>(pb), I0, I1, J0, J1, tri, gr, gc);
#endif
  return wae_cpu_generic::run_block<T>(pb, I0, I1, J0, J1, tri, gr, gc);
}

//! Column padding: d rounded up to a whole number of the variant's vectors.
template <class T>
int64_t padded_dim(int64_t d, Isa isa) {
  const int64_t L = isa_vbytes(isa) / int64_t(sizeof(T));
  return std::max<int64_t>(L, (d + L - 1) / L * L);
}

// Number of row stripes / block groups: functions of the problem size only (never of the thread
// count), so the fixed-order reductions are bit-identical on any machine.
constexpr int64_t kMaxStripes = 16;
constexpr int64_t kMaxGroups = 32;
//! Terms with fewer pair tiles than this run on the calling thread (no parallel region).
constexpr int64_t kSerialTiles = 4;

int64_t num_stripes(int64_t row_blocks) { return std::max<int64_t>(1, std::min<int64_t>(kMaxStripes, row_blocks)); }

// First block of group g when nb blocks are cut into G contiguous groups.
inline int64_t group_begin(int64_t g, int64_t nb, int64_t G) { return g * nb / G; }

// One term: sum of k over the pairs (self term: symmetric, tiles visited once).  g_a/g_b
// (fp64, n_pad x dp, zero-initialised) receive sum_j W_ij (a_i - b_j) and sum_i W_ij (b_j - a_i)
// when non-null.  For a self term pass g_b == nullptr; g_a gets the full-row sums.
//
// Memory: no per-task gradient copies.  When only the row side needs a gradient, row stripes
// own their rows.  When the column side needs one too (self term with gradient, cross term with
// both gradients), the row blocks are cut into G groups and the group pairs are run in rounds
// whose tasks write disjoint gradient rows:
//   self term:  one round of diagonal groups (P, P) (upper-triangle tiles), then the G - 1 rounds
//               of a round-robin tournament (circle method) over the G groups, pairs (P < Q);
//   cross term: Gl rounds of a Latin square, task t pairs small-side group t with large-side
//               group (t + r) mod Gl.
// Each gradient row thus receives its contributions in a fixed order; the kernel sums of the
// tasks are combined in a fixed order.
template <class T>
double run_term(const Prepared<T>& a, const Prepared<T>& b, bool symmetric, int kind, const std::vector<double>& P,
                bool unbiased, double* g_a, double* g_b, Isa isa) {
  wae_cpu_generic::Problem<T> pb;
  pb.a = as_operand(a);
  pb.b = as_operand(b);
  pb.dp = a.dp;
  pb.d = a.d;
  pb.kind = kind;
  pb.S = static_cast<int>(P.size());
  for (int s = 0; s < pb.S; ++s) pb.P[s] = static_cast<T>(P[s]);
  // RBF: gammas ascending, so that ratios of 2 or 4 become squarings (tile_math.h rbf_eval); the
  // sum over scales is the same
  if (kind == wae_fast::KIND_RBF) std::sort(pb.P, pb.P + pb.S);
  pb.symmetric = symmetric;
  pb.unbiased = unbiased;
  const int64_t nbi = (a.n + kTile - 1) / kTile;
  const int64_t nbj = (b.n + kTile - 1) / kTile;
  const bool cols_needed = symmetric ? (g_a != nullptr) : (g_b != nullptr);
  // A term of a few tiles costs microseconds: run its tasks on this thread (same fixed
  // decomposition and order, so the same bits) rather than enter a parallel region for them.
  const bool serial = nbi * nbj < kSerialTiles;
  auto grain = [serial](int64_t ntasks) { return serial ? std::max<int64_t>(ntasks, 1) : int64_t(1); };
  if (!cols_needed) {  // row stripes: rows of a are owned by exactly one stripe
    const int64_t ns = num_stripes(nbi);
    std::vector<double> sums(ns, 0.0);
    at::parallel_for(0, ns, grain(ns), [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) sums[s] = run_stripe_dispatch<T>(pb, s, ns, g_a, nullptr, isa);
    });
    double total = 0.0;
    for (int64_t s = 0; s < ns; ++s) total += sums[s];  // fixed order
    return total;
  }
  std::vector<double> sums;
  auto run_round = [&](int64_t ntasks, const std::function<double(int64_t)>& task) {
    const size_t base = sums.size();
    sums.resize(base + ntasks, 0.0);
    at::parallel_for(0, ntasks, grain(ntasks), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) sums[base + t] = task(t);
    });
  };
  if (symmetric) {
    double* g = g_a;
    int64_t G = std::min<int64_t>(kMaxGroups, nbi);
    G += G & 1;  // even number of groups (one may be empty)
    run_round(G, [&](int64_t p) {
      const int64_t b0 = group_begin(p, nbi, G), b1 = group_begin(p + 1, nbi, G);
      return run_block_dispatch<T>(pb, b0, b1, b0, b1, true, g, g, isa);
    });
    for (int64_t r = 0; r + 1 < G; ++r) {
      run_round(G / 2, [&](int64_t t) {
        int64_t p, q;
        if (t == 0) {
          p = r;
          q = G - 1;
        } else {
          p = (r + t) % (G - 1);
          q = (r - t + (G - 1)) % (G - 1);
        }
        if (p > q) std::swap(p, q);
        return run_block_dispatch<T>(pb, group_begin(p, nbi, G), group_begin(p + 1, nbi, G),
                                     group_begin(q, nbi, G), group_begin(q + 1, nbi, G), false, g, g, isa);
      });
    }
  } else {
    const int64_t Gi = std::min<int64_t>(kMaxGroups, nbi), Gj = std::min<int64_t>(kMaxGroups, nbj);
    const int64_t Gs = std::min(Gi, Gj), Gl = std::max(Gi, Gj);
    for (int64_t r = 0; r < Gl; ++r) {
      run_round(Gs, [&](int64_t t) {
        const int64_t l = (t + r) % Gl;
        const int64_t gi = Gi <= Gj ? t : l, gj = Gi <= Gj ? l : t;
        return run_block_dispatch<T>(pb, group_begin(gi, nbi, Gi), group_begin(gi + 1, nbi, Gi),
                                     group_begin(gj, nbj, Gj), group_begin(gj + 1, nbj, Gj), false, g_a, g_b,
                                     isa);
      });
    }
  }
  double total = 0.0;
  for (double v : sums) total += v;  // fixed order
  return total;
}

void check_kernel(int64_t kind, const std::vector<double>& params) {
  TORCH_CHECK(kind == wae_fast::KIND_IMQ || kind == wae_fast::KIND_RBF || kind == wae_fast::KIND_POLY,
              "wae_fast cpp backend: unknown kernel kind ", kind);
  if (kind == wae_fast::KIND_POLY) {
    TORCH_CHECK(params.size() == size_t(wae_fast::kPolyParams) && params[2] >= 1 &&
                    params[2] <= wae_fast::kMaxPolyDegree && params[2] == double(int64_t(params[2])),
                "wae_fast cpp backend: polynomial params must be [gamma, coef0, degree] with an integer degree in [1, ",
                wae_fast::kMaxPolyDegree, "]");
    return;
  }
  TORCH_CHECK(!params.empty() && params.size() <= size_t(kMaxScales),
              "wae_fast cpp backend: between 1 and ", kMaxScales, " kernel scales supported, got ", params.size());
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
  TORCH_CHECK((offset.dim() == 1 && (offset.size(0) == x.size(1) || offset.size(0) == 0)) ||
                  (offset.dim() == 2 && offset.size(0) == 3 && offset.size(1) == x.size(1)),
              "wae_fast cpp backend: offset must be (d,), (3, d) or (0,) (the term shifts computed here)");
  check_kernel(kind, params);
}

//! Lower median (sorted index (n - 1) / 2, torch.median's convention) of column k of the
//! row-major (n x d) p; NaN when the column holds a NaN (torch.median propagates it).
template <class T>
T column_median(const T* p, int64_t n, int64_t d, int64_t k, std::vector<T>& scratch) {
  scratch.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    const T v = p[i * d + k];
    if (std::isnan(v)) return v;
    scratch[i] = v;
  }
  auto mid = scratch.begin() + (n - 1) / 2;
  std::nth_element(scratch.begin(), mid, scratch.end());
  return *mid;
}

//! The lower medians of every column of the row-major (n x d) p into out (d values), NaN where a
//! column holds a NaN.  For d >= 4 all columns at once: the rows padded to a power of two with
//! +inf and sorted by a bitonic network whose compare-exchanges are min / max over the d
//! coordinates of two rows (branch free, vectorised over the columns): O(n log^2 n d) without a
//! branch misprediction, measured several times faster than one nth_element per column at
//! n = 128..256, d = 64 (the medians then cost more than the pair tiles).
//! Sorts every column of a (np x d, np a power of two, row-major) ascending at once: a bitonic
//! network over the rows, each compare-exchange over the d columns (min / max: exact).
template <class T>
inline __attribute__((always_inline)) void bitonic_columns(T* a, int64_t np, int64_t d) {
  for (int64_t k = 2; k <= np; k <<= 1)
    for (int64_t j = k >> 1; j > 0; j >>= 1)
      for (int64_t i = 0; i < np; ++i) {
        const int64_t l = i ^ j;
        if (l <= i) continue;
        T* __restrict u = a + i * d;
        T* __restrict w = a + l * d;
        if ((i & k) == 0)  // ascending pair
          for (int64_t c = 0; c < d; ++c) {
            const T lo = std::min(u[c], w[c]), hi = std::max(u[c], w[c]);
            u[c] = lo;
            w[c] = hi;
          }
        else
          for (int64_t c = 0; c < d; ++c) {
            const T lo = std::min(u[c], w[c]), hi = std::max(u[c], w[c]);
            u[c] = hi;
            w[c] = lo;
          }
      }
}

#ifdef WAE_HAVE_X86_VARIANTS
// bitonic_columns compiled for AVX2 / AVX-512 (this file's default target is baseline x86-64:
// SSE, 4 floats a vector): the medians of the single call's term shifts, N = 64 and d = 64,
// were an eighth of its forward + backward.  Callers check the CPU (cpu_isa()).
template <class T>
__attribute__((target("avx2"), noinline)) void bitonic_columns_avx2(T* a, int64_t np, int64_t d) {
  bitonic_columns(a, np, d);
}
template <class T>
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2"), noinline)) void bitonic_columns_avx512(
    T* a, int64_t np, int64_t d) {
  bitonic_columns(a, np, d);
}
#endif

template <class T>
void column_medians(const T* p, int64_t n, int64_t d, T* out) {
  if (d < 4) {  // too few lanes to vectorise over: one selection per column
    std::vector<T> scratch;
    for (int64_t k = 0; k < d; ++k) out[k] = column_median(p, n, d, k, scratch);
    return;
  }
  int64_t np = 1;
  while (np < n) np <<= 1;
  const T inf = std::numeric_limits<T>::infinity();
  std::vector<T> s(np * d, inf);
  std::vector<unsigned char> nan(d, 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < d; ++c) {
      const T v = p[i * d + c];
      const bool isn = v != v;
      nan[c] |= isn;
      s[i * d + c] = isn ? inf : v;  // NaN sorted as +inf; its column's median is NaN below
    }
  T* a = s.data();
  bool done = false;
#ifdef WAE_HAVE_X86_VARIANTS
  if (d >= 8) {  // the compare-exchanges in the widest vectors this CPU runs
    const Isa isa = cpu_isa();
    if (isa == Isa::kAvx512) {
      bitonic_columns_avx512(a, np, d);
      done = true;
    } else if (isa == Isa::kAvx2) {
      bitonic_columns_avx2(a, np, d);
      done = true;
    }
  }
#endif
  if (!done) bitonic_columns(a, np, d);
  const T* mid = a + (n - 1) / 2 * d;
  for (int64_t c = 0; c < d; ++c) out[c] = nan[c] ? std::numeric_limits<T>::quiet_NaN() : mid[c];
}

//! The glue's per-term shifts (wae_fast.contract.term_shifts), computed here when the glue passes
//! an empty offset: rows xx = median(x), yy = median(y), xy = lerp(median(x), median(y),
//! m / (n + m)) (torch.lerp's formula, in the compute type), 3 x d values.
template <class T>
std::vector<T> host_term_shifts(const T* x, int64_t n, const T* y, int64_t m, int64_t d) {
  std::vector<T> sh(3 * d);
  column_medians(x, n, d, sh.data());
  column_medians(y, m, d, sh.data() + d);
  const T w = T(double(m) / double(n + m));
  for (int64_t k = 0; k < d; ++k) {
    const T a = sh[k], b = sh[d + k];
    sh[2 * d + k] = std::abs(w) < T(0.5) ? std::fma(w, b - a, a) : std::fma(-(b - a), T(1) - w, b);
  }
  return sh;
}

//! The (3 x d) shifts of one call in the compute type: the given offset ((d,): one shift for
//! every term; (3, d): xx, yy, xy rows), or, for an empty offset, the glue's term shifts computed
//! here (zeros for the polynomial, which is not translation invariant).
template <class T>
std::vector<T> call_shifts(const at::Tensor& offset, const T* x, int64_t n, const T* y, int64_t m, int64_t d,
                           int64_t kind) {
  constexpr auto st = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
  if (offset.numel() == 0)
    return kind == wae_fast::KIND_POLY ? std::vector<T>(3 * d, T(0)) : host_term_shifts<T>(x, n, y, m, d);
  at::Tensor o = offset.to(st).contiguous();
  const T* op = o.data_ptr<T>();
  std::vector<T> sh(3 * d);
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t k = 0; k < d; ++k) sh[t * d + k] = op[(offset.dim() == 1 ? 0 : t * d) + k];
  return sh;
}

template <class T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd_impl(const at::Tensor& x_, const at::Tensor& y_,
                                                        const at::Tensor& offset, int64_t kind,
                                                        const std::vector<double>& params, bool unbiased,
                                                        bool grad_x, bool grad_y) {
  constexpr auto st = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
  // converted once to the compute type (a no-op for fp32 / fp64 inputs)
  const at::Tensor x = x_.to(st).contiguous(), y = y_.to(st).contiguous();
  const int64_t n = x.size(0), m = y.size(0), d = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  const Isa isa = cpu_isa();  // decided once per call, outside the parallel regions
  const int64_t dp = padded_dim<T>(d, isa);
  const std::vector<T> sh = call_shifts<T>(offset, xp, n, yp, m, d, kind);
  // gradient accumulators (fp64, n_pad x dp each): one zeroed buffer for the four
  const int64_t szx = grad_x ? padded_rows(n) * dp : 0, szy = grad_y ? padded_rows(m) * dp : 0;
  at::Tensor gbuf;
  double *gxx = nullptr, *gxy_x = nullptr, *gyy = nullptr, *gxy_y = nullptr;
  if (grad_x || grad_y) {
    gbuf = at::zeros({2 * (szx + szy)}, at::TensorOptions().dtype(at::kDouble));
    double* g = gbuf.data_ptr<double>();
    if (grad_x) {
      gxx = g;
      gxy_x = g + szx;
    }
    if (grad_y) {
      gyy = g + 2 * szx;
      gxy_y = gyy + szy;
    }
  }
  // Each term on its own shifted copies (contract: xx by offset[0], yy by offset[1], xy by
  // offset[2]), prepared one term at a time: at most two copies alive, as with one shift.
  double sxx = 0.0, syy = 0.0, sxy = 0.0;
  if (n > 0) {
    Prepared<T> p = prepare_raw<T>(xp, n, d, sh.data(), dp, isa);
    sxx = run_term<T>(p, p, true, int(kind), params, unbiased, gxx, nullptr, isa);
  }
  if (m > 0) {
    Prepared<T> p = prepare_raw<T>(yp, m, d, sh.data() + d, dp, isa);
    syy = run_term<T>(p, p, true, int(kind), params, unbiased, gyy, nullptr, isa);
  }
  if (n > 0 && m > 0) {
    Prepared<T> px = prepare_raw<T>(xp, n, d, sh.data() + 2 * d, dp, isa);
    Prepared<T> py = prepare_raw<T>(yp, m, d, sh.data() + 2 * d, dp, isa);
    if (grad_y && !grad_x)  // rows = y: its gradient needs no per-stripe copies
      sxy = run_term<T>(py, px, false, int(kind), params, unbiased, gxy_y, nullptr, isa);
    else
      sxy = run_term<T>(px, py, false, int(kind), params, unbiased, gxy_x, gxy_y, isa);
  }
  const double nxx = wae_fast::pair_count_self(n, unbiased);
  const double nyy = wae_fast::pair_count_self(m, unbiased);
  const double nxy = double(n) * double(m);
  at::Tensor terms = at::empty({3}, at::TensorOptions().dtype(at::kDouble));
  double* tp = terms.data_ptr<double>();
  tp[0] = sxx / nxx;
  tp[1] = syy / nyy;
  tp[2] = sxy / nxy;
  auto ct = at::TensorOptions().dtype(st);
  // the parts (2, rows, d): each accumulator scaled in fp64 and rounded once to the compute type
  auto parts = [&](const double* g0, double c0, const double* g1, double c1, int64_t rows) {
    at::Tensor out = at::empty({2, rows, d}, ct);
    T* o = out.data_ptr<T>();
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t k = 0; k < d; ++k) {
        o[i * d + k] = T(g0[i * dp + k] * c0);
        o[(rows + i) * d + k] = T(g1[i * dp + k] * c1);
      }
    return out;
  };
  at::Tensor gx = grad_x ? parts(gxx, 4.0 / nxx, gxy_x, 2.0 / nxy, n) : at::empty({0}, ct);
  at::Tensor gy = grad_y ? parts(gyy, 4.0 / nyy, gxy_y, 2.0 / nxy, m) : at::empty({0}, ct);
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

// ---------------------------------------------------------------------------------------------
// MMD to the prior N(0, sigma2 I) with the M prior samples generated on the fly (ops
// prior_fwd_cpp / prior_bwd_cpp, the contract's prior family): sample j is
// y_j[k] = T(philox_randn(seed, j * d + k)) * T(sqrt(sigma2)), the Philox stream of the Triton and
// CUDA kernels (tile_math.h; host log/cos/sqrt, so a draw may differ from the GPU's by an ulp).
// The samples are generated in chunks of kPriorChunk rows, shifted and padded like any operand,
// used and dropped: the yy term visits chunk pairs (a <= b, the chunk b regenerated for every a),
// the xy term streams the chunks past x.  Nothing of size M * d is allocated.
// Shifts: xx by median(x), yy by 0, xy by n / (n + m) * median(x) (as kernels/prior.py).
// ---------------------------------------------------------------------------------------------
constexpr int64_t kPriorChunk = 4096;  // rows of generated samples live at a time (a multiple of kTile)

//! Rows [j0, j0 + rows) of the virtual (m, d) prior sample matrix, compute dtype T.
template <class T>
at::Tensor prior_chunk(int64_t j0, int64_t rows, int64_t d, uint64_t seed, T sig) {
  constexpr auto st = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
  at::Tensor y = at::empty({rows, d}, at::TensorOptions().dtype(st));
  T* p = y.data_ptr<T>();
  at::parallel_for(0, rows * d, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) p[i] = T(wae_fast::philox_randn(seed, uint64_t(j0 * d + i))) * sig;
  });
  return y;
}

struct PriorArgs {
  int kind;
  std::vector<double> P;
  double sigma2;
  bool unbiased;
  int64_t m;
  uint64_t seed;
};

void check_prior(const at::Tensor& x, int64_t kind, at::ArrayRef<double> params, double sigma2, bool unbiased,
                 int64_t m, int64_t seed) {
  TORCH_CHECK(x.device().is_cpu(), "wae_fast cpp backend: x must be a CPU tensor");
  TORCH_CHECK(x.dim() == 2 && x.size(0) >= 1 && x.size(1) >= 1, "wae_fast cpp backend: x must be a non-empty (N, d) tensor");
  auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "wae_fast cpp backend: dtype must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK(kind == wae_fast::KIND_IMQ || kind == wae_fast::KIND_RBF, "wae_fast cpp backend: unknown kernel kind ", kind);
  TORCH_CHECK(!params.empty() && params.size() <= size_t(kMaxScales),
              "wae_fast cpp backend: between 1 and ", kMaxScales, " kernel scales supported, got ", params.size());
  TORCH_CHECK(std::isfinite(sigma2) && sigma2 > 0.0, "wae_fast cpp backend: sigma2 must be finite and > 0, got ", sigma2);
  TORCH_CHECK(seed >= 0, "wae_fast cpp backend: seed must be in [0, 2^63), got ", seed);
  TORCH_CHECK(m >= (unbiased ? 2 : 1), "wae_fast cpp backend: num_samples must be >= ", unbiased ? 2 : 1, ", got ", m);
  TORCH_CHECK(!unbiased || x.size(0) >= 2, "wae_fast cpp backend: the unbiased estimator needs at least 2 points");
}

struct PriorSums {
  std::array<double, 3> s{0.0, 0.0, 0.0};  // kernel sums xx, yy, xy
  at::Tensor g_xx, g_xy;                    // (n_pad, dp) fp64: d sum_xx / dx = 4 g_xx, d sum_xy / dx = 2 g_xy
};

//! Kernel sums (xx, yy unless want_grad: the backward does not need it, xy) and, with want_grad,
//! the row-side gradient accumulators of the xx and xy terms.
template <class T>
PriorSums prior_sums(const at::Tensor& x, const PriorArgs& a, bool want_grad) {
  constexpr auto st = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
  const int64_t n = x.size(0), d = x.size(1), m = a.m;
  const Isa isa = cpu_isa();
  const int64_t dp = padded_dim<T>(d, isa);
  const T sig = T(std::sqrt(a.sigma2));
  at::Tensor xm = std::get<0>(x.to(st).median(0));  // the contract's prior shift: median(x)
  PriorSums r;
  std::array<double, 3>& s = r.s;
  double* g_xx = nullptr;
  double* g_xy = nullptr;
  {  // xx
    Prepared<T> px = prepare<T>(x, xm, dp);
    if (want_grad) {
      auto f64 = at::TensorOptions().dtype(at::kDouble);
      r.g_xx = at::zeros({px.n_pad, dp}, f64);
      r.g_xy = at::zeros({px.n_pad, dp}, f64);
      g_xx = r.g_xx.data_ptr<double>();
      g_xy = r.g_xy.data_ptr<double>();
    }
    s[0] = run_term<T>(px, px, true, a.kind, a.P, a.unbiased, g_xx, nullptr, isa);
  }
  const int64_t nch = (m + kPriorChunk - 1) / kPriorChunk;
  auto rows_of = [&](int64_t c) { return std::min(kPriorChunk, m - c * kPriorChunk); };
  if (!want_grad) {
    at::Tensor zero = at::zeros({d}, at::TensorOptions().dtype(st));
    for (int64_t ca = 0; ca < nch; ++ca) {
      Prepared<T> pa = prepare<T>(prior_chunk<T>(ca * kPriorChunk, rows_of(ca), d, a.seed, sig), zero, dp);
      s[1] += run_term<T>(pa, pa, true, a.kind, a.P, a.unbiased, nullptr, nullptr, isa);
      for (int64_t cb = ca + 1; cb < nch; ++cb) {
        Prepared<T> pb = prepare<T>(prior_chunk<T>(cb * kPriorChunk, rows_of(cb), d, a.seed, sig), zero, dp);
        s[1] += 2.0 * run_term<T>(pa, pb, false, a.kind, a.P, a.unbiased, nullptr, nullptr, isa);
      }
    }
  }
  {  // xy: x rows against the streamed sample chunks
    at::Tensor off = xm * (double(n) / double(n + m));
    Prepared<T> px = prepare<T>(x, off, dp);
    for (int64_t cb = 0; cb < nch; ++cb) {
      Prepared<T> pb = prepare<T>(prior_chunk<T>(cb * kPriorChunk, rows_of(cb), d, a.seed, sig), off, dp);
      s[2] += run_term<T>(px, pb, false, a.kind, a.P, a.unbiased, g_xy, nullptr, isa);
    }
  }
  return r;
}

PriorArgs prior_args(int64_t kind, at::ArrayRef<double> params, double sigma2, bool unbiased, int64_t m, int64_t seed) {
  return {int(kind), std::vector<double>(params.begin(), params.end()), sigma2, unbiased, m, uint64_t(seed)};
}

at::Tensor prior_fwd_cpp(const at::Tensor& x_, int64_t kind, at::ArrayRef<double> params, double sigma2, bool unbiased,
                         int64_t num_samples, int64_t seed, c10::string_view precision) {
  check_prior(x_, kind, params, sigma2, unbiased, num_samples, seed);
  const PriorArgs a = prior_args(kind, params, sigma2, unbiased, num_samples, seed);
  at::Tensor x = x_.contiguous();
  const auto s = (x.scalar_type() == at::kDouble ? prior_sums<double>(x, a, false) : prior_sums<float>(x, a, false)).s;
  const int64_t n = x.size(0), m = num_samples;
  at::Tensor terms = at::empty({3}, at::TensorOptions().dtype(at::kDouble));
  double* tp = terms.data_ptr<double>();
  tp[0] = s[0] / wae_fast::pair_count_self(n, unbiased);
  tp[1] = s[1] / wae_fast::pair_count_self(m, unbiased);
  tp[2] = s[2] / (double(n) * double(m));
  return terms;
}

at::Tensor prior_bwd_cpp(const at::Tensor& grad_terms, const at::Tensor& x_, int64_t kind, at::ArrayRef<double> params,
                         double sigma2, bool unbiased, int64_t num_samples, int64_t seed, c10::string_view precision) {
  check_prior(x_, kind, params, sigma2, unbiased, num_samples, seed);
  const PriorArgs a = prior_args(kind, params, sigma2, unbiased, num_samples, seed);
  at::Tensor x = x_.contiguous();
  const int64_t n = x.size(0), d = x.size(1), m = num_samples;
  PriorSums r = x.scalar_type() == at::kDouble ? prior_sums<double>(x, a, true) : prior_sums<float>(x, a, true);
  at::Tensor gt = grad_terms.to(at::kDouble).cpu();
  const double* g = gt.data_ptr<double>();
  const double cxx = g[0] * 4.0 / wae_fast::pair_count_self(n, unbiased);
  const double cxy = g[2] * 2.0 / (double(n) * double(m));
  r.g_xx.mul_(cxx).add_(r.g_xy, cxy);  // fp64, rounded once to x's dtype
  return r.g_xx.narrow(0, 0, n).narrow(1, 0, d).to(x.scalar_type()).contiguous();
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

// Reparameterised sampling, z = mu + exp(logvar / 2) * eps, eps[i] = tl.randn(seed, i) (the Philox
// stream of the Triton and CUDA kernels: the same seed gives the same eps on every backend, up to
// the rounding of exp).  Computed in the compute dtype (fp32, fp64 for fp64), stored in the input
// dtype; the backward regenerates eps: grad_logvar = grad_z * eps * exp(logvar / 2) / 2.
template <class TI, class T, bool kForward>
void reparam_loop(const at::Tensor& a_, const at::Tensor& lv_, at::Tensor& out, uint64_t seed) {
  const TI* a = a_.data_ptr<TI>();
  const TI* lv = lv_.data_ptr<TI>();
  TI* o = out.data_ptr<TI>();
  at::parallel_for(0, out.numel(), 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T eps = T(wae_fast::philox_randn(seed, uint64_t(i)));
      const T ai = T(a[i]), l = T(lv[i]);
      const T v = kForward ? ai + std::exp(l * T(0.5)) * eps : ai * eps * std::exp(l * T(0.5)) * T(0.5);
      // non-finite mu or logvar (forward) / logvar (backward) -> NaN
      o[i] = TI(kForward ? wae_fast::nan_unless_finite(v, ai, l) : wae_fast::nan_unless_finite(v, l));
    }
  });
}

template <bool kForward>
at::Tensor reparam_cpp(const at::Tensor& a_, const at::Tensor& logvar_, int64_t seed, const char* aname) {
  TORCH_CHECK(a_.device().is_cpu() && logvar_.device().is_cpu(), "wae_fast cpp backend: ", aname,
              " and logvar must be CPU tensors");
  TORCH_CHECK(a_.sizes() == logvar_.sizes(), "wae_fast cpp backend: ", aname, " and logvar must have the same shape");
  TORCH_CHECK(seed >= 0, "wae_fast cpp backend: seed must be >= 0, got ", seed);
  at::Tensor lv = logvar_.contiguous();
  at::Tensor a = a_.to(lv.scalar_type()).contiguous();
  at::Tensor out = at::empty_like(lv);
  switch (lv.scalar_type()) {
    case at::kFloat: reparam_loop<float, float, kForward>(a, lv, out, uint64_t(seed)); break;
    case at::kDouble: reparam_loop<double, double, kForward>(a, lv, out, uint64_t(seed)); break;
    case at::kHalf: reparam_loop<at::Half, float, kForward>(a, lv, out, uint64_t(seed)); break;
    case at::kBFloat16: reparam_loop<at::BFloat16, float, kForward>(a, lv, out, uint64_t(seed)); break;
    default: TORCH_CHECK(false, "wae_fast cpp backend: logvar must be float16, bfloat16, float32 or float64, got ",
                         lv.scalar_type());
  }
  return out;
}

at::Tensor reparam_fwd_cpp(const at::Tensor& mu, const at::Tensor& logvar, int64_t seed) {
  return reparam_cpp<true>(mu, logvar, seed, "mu");
}

at::Tensor reparam_bwd_cpp(const at::Tensor& grad_z, const at::Tensor& logvar, int64_t seed) {
  return reparam_cpp<false>(grad_z, logvar, seed, "grad_z");
}

}  // namespace

// The tile engine for the other translation units of this backend (tile_dispatch.h).
namespace wae_cpu_tiles {
int current_isa() { return int(cpu_isa()); }
int64_t isa_vector_bytes(int isa) { return isa_vbytes(Isa(isa)); }
template <class T>
double run_block(const wae_cpu_generic::Problem<T>& pb, int64_t I0, int64_t I1, int64_t J0, int64_t J1, bool tri,
                 double* g_rows, double* g_cols, int isa) {
  return run_block_dispatch<T>(pb, I0, I1, J0, J1, tri, g_rows, g_cols, Isa(isa));
}
template double run_block<float>(const wae_cpu_generic::Problem<float>&, int64_t, int64_t, int64_t, int64_t, bool,
                                 double*, double*, int);
template double run_block<double>(const wae_cpu_generic::Problem<double>&, int64_t, int64_t, int64_t, int64_t, bool,
                                  double*, double*, int);
}  // namespace wae_cpu_tiles

TORCH_LIBRARY_IMPL(wae_fast, CPU, m) {
  m.impl("mmd_fwd_cpp", &mmd_fwd_cpp);
  m.impl("mmd_bwd_cpp", &mmd_bwd_cpp);
  m.impl("reparam_fwd_cpp", &reparam_fwd_cpp);
  m.impl("reparam_bwd_cpp", &reparam_bwd_cpp);
  m.impl("prior_fwd_cpp", &prior_fwd_cpp);
  m.impl("prior_bwd_cpp", &prior_bwd_cpp);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "wae_fast C++ CPU backend (registers wae_fast::mmd_fwd_cpp / mmd_bwd_cpp for CPU)";
  m.def("isa", &isa_name, "instruction set of the tile kernels used now: avx512, avx2 or baseline (WAE_FAST_CPU_ISA)");
  m.def("isas", &isa_list, "the tile-kernel variants this machine runs, baseline first");
  m.def("tile_math_eval", &tile_math_eval, "test hook: (k, dk/dr) of one pair via csrc/include tile math");
  m.def("philox_randn_host", &philox_randn_host, "test hook: Triton-compatible tl.randn(seed, offsets) on the host");
}
