// CPU backend ("cpp") of the mmd_segments family (wae_fast/contract.py: mmd_segments_fwd/bwd):
// many (weighted) MMDs in one call, every set with its own shift, every set run through the
// tile engine of the single mmd call (mmd_cpu_kernel.h run_block, the ISA variant that
// mmd_cpu.cpp picks: tile_dispatch.h): 4 x 2L register micro-kernel, symmetric xx / yy tiles
// (J >= I, off-diagonal tiles counted twice) with the diagonal excluded per set under the
// U-statistic, weights multiplied into the tiles (Problem::wa / wb: pairs count w_i v_j k_ij,
// gradient weights w_i v_j W_ij; per-row sums sum_j v_j k_ij for the weights' gradients).
// Formulas: wae_fast/segment_sums.py (the reference).
//
// Layout: every set of a side is packed into whole tiles of one buffer (shifted by the set's
// shift, columns padded to dp, the per-tile transpose and squared norms as mmd_cpu.cpp's
// prepare()), so a set is an Operand at its first tile.  Weighted: only the rows with a non-zero
// weight are packed, so a weight-0 row's coordinates never reach a tile (padding may hold NaN);
// the weights' gradient at such a row (the true derivative, which reads it) comes from a separate
// row pass of those rows only, when that gradient is asked for.  A y shared by every set is
// packed once (one shift for all sets: the glue's) and its yy term runs once.
//
// Gradients: the forward, asked for them by its flags, returns the contract's fused parts (the
// derivatives of each set's two terms per row, wae_fast/contract.py) from the same tile pass as
// the terms, so a training step runs the tiles once; the backward op (recomputing the tiles)
// serves what the forward did not fuse (a y shared by B > 1 sets).  With value_parts, one part
// per input, MMD^2's (the first minus twice the second), half the parts' stores and memory, and
// MMD^2 of every set (the value output).
//
// Scheduling: one list of (set, term, row/column block range) tasks over all sets, run by
// at::parallel_for (small sets grouped by the loop's chunking, big sets split into row blocks).
// Without a column-side output (values only) every task is one row block of one set and term.
// With one (gradients, and the weights' per-column sums), a set's blocks are grouped and run in
// rounds as mmd_cpu.cpp run_term does (diagonal groups, then a round-robin tournament for a
// self term; a Latin square for the cross term), round r of every set in one parallel phase, so
// that no two concurrent tasks write one row.  The per-task sums are combined in a fixed order:
// results do not depend on the thread count.  Memory: O((total points) dp).
// Per-set tasks (fuse_values: many small sets, a choice of the shapes only): one task per set
// computes the set's shift (empty shifts, a y per set), packs the set right before its tiles and
// runs its three terms (with gradients to the points: their row and column sides, then the set's
// parts), in buffers of the task reused set after set (pack_window: every set at row 0), so the
// packed tiles and the row sums are read from the cache; the planned passes above serve the
// other calls (few or big sets, the weights' gradients, a y shared by several sets).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "wae_fast/tile_math.h"

// the engine's types (the kernels are compiled in mmd_cpu.cpp / tiles_avx2.cpp / tiles_avx512.cpp)
#define WAE_CPU_DECL_ONLY 1
#define WAE_CPU_NS wae_cpu_generic
#define WAE_CPU_VBYTES 32
#include "mmd_cpu_kernel.h"
#undef WAE_CPU_NS
#undef WAE_CPU_VBYTES
#undef WAE_CPU_DECL_ONLY
#include "tile_dispatch.h"
#include "pack_rows.h"

namespace {

using wae_cpu_generic::kTile;
template <class T>
using TileProblem = wae_cpu_generic::Problem<T>;
template <class T>
using Operand = wae_cpu_generic::Operand<T>;

// Value-only diagonal tiles by lane rotations (mmd_cpu_kernel.h Problem::rotate_diag): with
// AVX-512 (isa 2: rotations in the register, valignd) at every d (B = 256 sets of 64 points, one
// thread, forward: the tiles' samples 6-12% fewer than without rotations at d = 128 and 256);
// with 32-byte vectors up to this d: each rotation recomputes its dot products (2 d loads and d
// FMAs per L pairs), which the saved kernel evaluations and the skipped half of each diagonal
// block repay up to d = 64 (3-4% faster at d = 32 and 64; d = 128 within the host's noise)
constexpr int64_t kRotateMaxD = 64;
constexpr int64_t kMaxGroups = 32;  // as mmd_cpu.cpp: groups of row blocks per set in the rounds

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
  TORCH_CHECK(shifts.numel() == 0 || (shifts.dim() == 2 && shifts.size(1) == x.size(1)),
              "wae_fast cpp backend: shifts must be (B, d), or empty (computed here)");
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

// Grow-only scratch buffers reused by the later calls of the same thread: fresh pages (faults,
// the kernel's zeroing, then ours) cost more than the tiles of sets of 64 points at small d
// (measured: 17 ms of 25 ms for 1024 sets of 64 points at d = 8).  A thread keeps at most
// kKeepBuffers buffers of kKeepBytes in all per element type; the others are freed when
// released.  Not cleared: every user writes what it reads (zero=true clears).
// 64-byte aligned storage: the tiles are read with full-vector loads, and a buffer whose rows
// straddle cache lines (malloc's 16-byte alignment, varying with the pooled buffer a call gets)
// ran the tile loops up to 3x slower, alternating between calls (measured at B = 256, N = 64, d = 8).
template <class E>
struct AlignedAlloc {
  using value_type = E;
  static constexpr std::align_val_t kAlign{64};
  AlignedAlloc() = default;
  template <class U>
  AlignedAlloc(const AlignedAlloc<U>&) noexcept {}
  E* allocate(size_t n) { return static_cast<E*>(::operator new(n * sizeof(E), kAlign)); }
  void deallocate(E* p, size_t) noexcept { ::operator delete(p, kAlign); }
  template <class U>
  bool operator==(const AlignedAlloc<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const AlignedAlloc<U>&) const noexcept { return false; }
};

template <class E>
class Scratch {
 public:
  using Buf = std::vector<E, AlignedAlloc<E>>;
  static constexpr size_t kKeepBytes = size_t(128) << 20;
  static constexpr size_t kKeepBuffers = 24;
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  Scratch(Scratch&& o) noexcept : v_(std::move(o.v_)), n_(o.n_) { o.n_ = 0; }
  Scratch& operator=(Scratch&& o) noexcept {
    release();
    v_ = std::move(o.v_);
    n_ = o.n_;
    o.n_ = 0;
    return *this;
  }
  ~Scratch() { release(); }
  //! n elements (zeroed when `zero`).
  void reset(size_t n, bool zero) {
    release();
    std::vector<Buf>& pool = free_list();
    size_t best = pool.size();
    for (size_t i = 0; i < pool.size(); ++i) {  // the smallest that fits, else the largest
      if (best == pool.size()) {
        best = i;
        continue;
      }
      const bool fits = pool[i].size() >= n, bfits = pool[best].size() >= n;
      if (fits ? (!bfits || pool[i].size() < pool[best].size()) : (!bfits && pool[i].size() > pool[best].size()))
        best = i;
    }
    if (best < pool.size()) {
      v_ = std::move(pool[best]);
      pool.erase(pool.begin() + best);
      kept_bytes() -= v_.size() * sizeof(E);
    }
    if (v_.size() < n) {
      v_.clear();
      v_.shrink_to_fit();
      v_.resize(n);
    } else if (zero) {
      std::fill(v_.begin(), v_.begin() + n, E(0));
    }
    n_ = n;
  }
  E* data() { return v_.data(); }
  const E* data() const { return v_.data(); }
  E& operator[](size_t i) { return v_[i]; }
  const E& operator[](size_t i) const { return v_[i]; }
  bool empty() const { return n_ == 0; }
  size_t size() const { return n_; }

 private:
  static std::vector<Buf>& free_list() {
    static thread_local std::vector<Buf> pool;
    return pool;
  }
  static size_t& kept_bytes() {
    static thread_local size_t bytes = 0;
    return bytes;
  }
  void release() {
    const size_t b = v_.size() * sizeof(E);
    if (b > 0 && kept_bytes() + b <= kKeepBytes && free_list().size() < kKeepBuffers) {
      kept_bytes() += b;
      free_list().push_back(std::move(v_));
    }
    v_ = Buf();
    n_ = 0;
  }
  Buf v_;
  size_t n_ = 0;
};

// One side (x or y) of every set, packed into whole tiles (see the file comment).
template <class T>
struct Pack {
  int64_t dp = 0, ntiles = 0;
  std::vector<int64_t> tile0, n;  // per set: first tile, packed rows
  Scratch<int64_t> src;  // packed row -> input row (-1 on padding)
  Scratch<T> rows, cols, nrm, w;  // rows: only for the gradients to the points (the tiles read cols)
  // a window (pack_window: every set at tile 0): its tiles [0, zeroed) hold zeros in columns
  // d .. dp - 1 from an earlier set (nothing else writes there), which pack_set then skips
  bool window = false;
  int64_t zeroed = 0;
  int64_t blocks(int64_t s) const { return (n[s] + kTile - 1) / kTile; }
  int64_t row0(int64_t s) const { return tile0[s] * kTile; }
  //! Set s as an operand; from its block I on when I > 0 (one block: a sub-operand of rows).
  Operand<T> operand(int64_t s, int64_t I = -1) const {
    const int64_t r0 = row0(s) + (I > 0 ? I * kTile : 0);
    const int64_t nn = I >= 0 ? std::min<int64_t>(kTile, n[s] - I * kTile) : n[s];
    const int64_t np = I >= 0 ? kTile : std::max<int64_t>(1, blocks(s)) * kTile;
    return {rows.empty() ? nullptr : rows.data() + r0 * dp, cols.data() + (r0 / kTile) * dp * kTile,
            nrm.data() + r0, nn, np};
  }
  const T* weights(int64_t s, int64_t I = -1) const { return w.data() + row0(s) + (I > 0 ? I * kTile : 0); }
  void alloc(int64_t tiles, bool with_rows) {
    ntiles = tiles;
    const int64_t nrows = tiles * kTile;
    src.reset(nrows, false);
    rows.reset(with_rows ? nrows * dp : 0, false);
    cols.reset(nrows * dp, false);
    nrm.reset(nrows, false);
    w.reset(nrows, false);
  }
};

enum class Keep { kAll, kNonZero, kZero };

// Where a pack's rows come from: rows [r0[s], r1[s]) of P (compute type, (rows, d)) of every set
// s, shifted by SH + sh_row[s] * d: all rows, or those whose weight is (non-)zero.
template <class T>
struct PackSource {
  const T* P = nullptr;
  const T* W = nullptr;
  std::vector<int64_t> r0, r1, sh_row;
  const T* SH = nullptr;
  int64_t d = 0;
  Keep keep = Keep::kAll;
  bool with_rows = false;
  int isa = 0;  // wae_cpu_tiles::current_isa() of the call (>= 1: AVX2 transposes)
  bool kept(int64_t i) const { return W == nullptr || keep == Keep::kAll || (keep == Keep::kZero) == (W[i] == T(0)); }
};

#ifdef WAE_PACK_AVX2
//! nr[c] = float(acc[c]), NaN where acc[c] > lim or is NaN, for c < n, four at a time: the pack's
//! 256-bit stores just wrote acc, and scalar loads of it waited for them (~10% of pack_set)
__attribute__((target("avx2"), noinline)) void norms_avx2(const double* acc, float* nr, int64_t n, double lim) {
  const __m256d l = _mm256_set1_pd(lim), nan = _mm256_set1_pd(std::numeric_limits<double>::quiet_NaN());
  int64_t c = 0;
  for (; c + 4 <= n; c += 4) {
    const __m256d a = _mm256_loadu_pd(acc + c);
    _mm_storeu_ps(nr + c, _mm256_cvtpd_ps(_mm256_blendv_pd(nan, a, _mm256_cmp_pd(a, l, _CMP_LE_OQ))));
  }
  for (; c < n; ++c) nr[c] = acc[c] <= lim ? float(acc[c]) : std::numeric_limits<float>::quiet_NaN();
}
#endif

//! Packs set s of `src` into its tiles of pk (planned by build_pack): one tile at a time, every
//! element of it written (padding rows and columns 0, src -1): the shifted rows (with_rows),
//! their per-tile transpose (mmd_cpu_kernel.h Operand::cols), and the squared norms in fp64, k
//! ascending, summed four rows at a time from the transpose's registers (a chain of d dependent
//! adds per row cost as much as the tiles at d = 64, N = 64).
//! Packed weights: the row's weight (1 when W is null or keep == kZero: the rows of a
//! weight-gradient pass), 0 on padding.
template <class T>
void pack_set(Pack<T>& pk, const PackSource<T>& src, int64_t s) {
  const int64_t d = src.d, dp = pk.dp;
  const bool with_rows = src.with_rows;
  const double lim = double(wae_fast::MaxSqNorm<T>::value);
  // every row kept (unweighted, or a pass over all rows): set s's rows in order, no index list
  const bool all = src.W == nullptr || src.keep == Keep::kAll;
  int64_t srcs[kTile];
  double acc[kTile];
  const T* sh = src.SH + src.sh_row[s] * d;
  int64_t i = src.r0[s];
  for (int64_t t = pk.tile0[s]; t < pk.tile0[s] + pk.blocks(s); ++t) {
    int64_t nn = 0;
    const int64_t i0 = i;
    const T* q[kTile];
    if (all) {
      nn = std::min<int64_t>(kTile, src.r1[s] - i);
      for (int64_t c = 0; c < nn; ++c) q[c] = src.P + (i0 + c) * d;
      i += nn;
    } else {
      for (; i < src.r1[s] && nn < kTile; ++i)
        if (src.kept(i)) srcs[nn++] = i;
      for (int64_t c = 0; c < nn; ++c) q[c] = src.P + srcs[c] * d;
    }
    T* ctile = pk.cols.data() + t * dp * kTile;
    for (int64_t c = 0; c < kTile; ++c) acc[c] = 0.0;  // squared norms, fp64 (padding rows: 0)
    // the transpose straight from the input, the shifted rows written on the way (with_rows)
    T* rt = with_rows ? pk.rows.data() + t * kTile * dp : nullptr;
    wae_cpu_pack::pack_tile<T>(q, sh, d, nn, ctile, acc, src.isa, rt, dp);
    for (int64_t k = 0; k < d; ++k) std::fill(ctile + k * kTile + nn, ctile + (k + 1) * kTile, T(0));
    // zeros: coordinates d .. dp - 1 (once per window tile: rewriting them for every set cost
    // ~3% of a B = 256 sets of 64 points, d = 8 forward + backward), padding rows
    const bool pad = d < dp && !(pk.window && t < pk.zeroed);
    if (rt != nullptr) {
      if (pad)
        for (int64_t r = 0; r < nn; ++r) std::fill(rt + r * dp + d, rt + (r + 1) * dp, T(0));
      std::fill(rt + nn * dp, rt + kTile * dp, T(0));
    }
    if (pad) std::fill(ctile + d * kTile, ctile + dp * kTile, T(0));
    T* nr = pk.nrm.data() + t * kTile;
    T* wt = pk.w.data() + t * kTile;
    int64_t* st = pk.src.data() + t * kTile;
    // outside the supported magnitude range (or NaN): NaN, so its pairs are NaN (tile_math.h).
    // Plain loops, not one with the weight's branch inside (that one ran ~24 cycles a row, ~6% of
    // a B = 256 sets of 64 points, d = 8 forward + backward)
    bool done = false;
#ifdef WAE_PACK_AVX2
    if constexpr (std::is_same<T, float>::value)
      if (src.isa >= 1) {
        norms_avx2(acc, nr, nn, lim);
        done = true;
      }
#endif
    if (!done)
      for (int64_t c = 0; c < nn; ++c) nr[c] = acc[c] <= lim ? T(acc[c]) : std::numeric_limits<T>::quiet_NaN();
    if (src.W == nullptr || src.keep == Keep::kZero)
      std::fill(wt, wt + nn, T(1));
    else if (all)
      std::copy(src.W + i0, src.W + i0 + nn, wt);
    else
      for (int64_t c = 0; c < nn; ++c) wt[c] = src.W[srcs[c]];
    if (all)
      for (int64_t c = 0; c < nn; ++c) st[c] = i0 + c;
    else
      for (int64_t c = 0; c < nn; ++c) st[c] = srcs[c];
    std::fill(nr + nn, nr + kTile, T(0));
    std::fill(wt + nn, wt + kTile, T(0));
    std::fill(st + nn, st + kTile, int64_t(-1));
  }
  if (pk.window) pk.zeroed = std::max(pk.zeroed, pk.tile0[s] + pk.blocks(s));
}

//! Plans the pack of every set of `src` (rows kept, tiles, buffers) and, unless `defer` (the
//! caller packs each set with pack_set right before its tiles), packs them.
template <class T>
Pack<T> build_pack(const PackSource<T>& src, int64_t dp, bool defer = false) {
  Pack<T> pk;
  const int64_t ns = int64_t(src.r0.size());
  pk.dp = dp;
  pk.tile0.resize(ns);
  pk.n.resize(ns);
  const bool all = src.W == nullptr || src.keep == Keep::kAll;
  for (int64_t s = 0; s < ns; ++s) {
    int64_t c = 0;
    if (all) {
      c = src.r1[s] - src.r0[s];
    } else {
      for (int64_t i = src.r0[s]; i < src.r1[s]; ++i) c += src.kept(i);
    }
    pk.tile0[s] = pk.ntiles;
    pk.n[s] = c;
    pk.ntiles += (c + kTile - 1) / kTile;
  }
  if (defer) return pk;  // a plan: each task packs into a window (pack_window)
  pk.alloc(pk.ntiles, src.with_rows);
  at::parallel_for(0, ns, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) pack_set<T>(pk, src, s);
  });
  return pk;
}

//! A task's pack for one set at a time, on a deferred plan: every set maps to tile 0 and the
//! buffers fit the plan's largest set, so the set packed last is read (and its row sums written)
//! from the cache.  With the plan's buffers for every set (16 MB of packs and 32 MB of fp64 row
//! sums at B = 256, N = 64, d = 64), each set's stores went to cold memory: the pack, the zeroed
//! row sums and the parts read back from them were a third of that forward + backward.
template <class T>
Pack<T> pack_window(const Pack<T>& plan, bool with_rows) {
  Pack<T> pk;
  pk.dp = plan.dp;
  pk.n = plan.n;
  pk.tile0.assign(plan.n.size(), 0);
  pk.window = true;
  int64_t most = 0;
  for (size_t s = 0; s < plan.n.size(); ++s) most = std::max(most, plan.blocks(int64_t(s)));
  pk.alloc(most, with_rows);
  return pk;
}

//! The PackSource of rows [r0[s], r1[s]) of P of every set s.
template <class T>
PackSource<T> pack_source(const T* P, const T* W, const std::vector<int64_t>& r0, const std::vector<int64_t>& r1,
                          const T* SH, const std::vector<int64_t>& sh_row, int64_t d, Keep keep, bool with_rows) {
  PackSource<T> src;
  src.P = P;
  src.W = W;
  src.r0 = r0;
  src.r1 = r1;
  src.SH = SH;
  src.sh_row = sh_row;
  src.d = d;
  src.keep = keep;
  src.with_rows = with_rows;
  return src;
}

//! sum w and the self-term denominator of one set, in fp64; NaN for a negative or non-finite
//! weight.  Unbiased: sum_{i != j} w_i w_j = 2 sum_i w_i (sum_{j<i} w_j), a sum of non-negative
//! terms (no cancellation, unlike (sum w)^2 - sum w^2 when one weight dominates), each running
//! sum compensated (Neumaier), so the relative error stays a few ulp whatever the weights.
struct Denoms {
  double sum, D;
};

struct Compensated {
  double s = 0, c = 0;
  void add(double v) {
    const double t = s + v;
    c += std::fabs(s) >= std::fabs(v) ? (s - t) + v : (v - t) + s;
    s = t;
  }
  double value() const { return s + c; }
};

template <class T>
Denoms denoms(const T* w, int64_t n, bool unbiased) {
  if (w == nullptr) {  // unit weights: n and n (n - 1) or n^2, exact in fp64 (what the sums give)
    const double dn = double(n);
    return {dn, unbiased ? dn * (dn - 1.0) : dn * dn};
  }
  Compensated total, pairs;
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    const double wi = w == nullptr ? 1.0 : double(w[i]);
    if (!(wi >= 0) || !std::isfinite(wi)) bad = true;
    pairs.add(wi * total.value());
    total.add(wi);
  }
  if (bad) return {NAN, NAN};
  const double sw = total.value();
  return {sw, unbiased ? 2.0 * pairs.value() : sw * sw};
}

// A task: tiles (I in [I0, I1), J in [J0, J1), J >= I when tri) of one term of one set; `grad`:
// it writes the term's gradient / kernel row sums (else only its kernel sum is taken).
enum Term : int { kXX = 0, kYY = 1, kXY = 2 };
struct Task {
  int term;
  int64_t set;  // x set (kXX, kXY) or y pack set (kYY)
  int64_t I0, I1, J0, J1;
  bool tri;
  bool grad;
};

inline int64_t group_begin(int64_t g, int64_t nb, int64_t G) { return g * nb / G; }

//! Appends the tasks of one term of one set (nbi x nbj blocks) to phases[round]: row blocks
//! when no column-side output is written (`cols` false: a value-only or row-side-only task),
//! else mmd_cpu.cpp run_term's rounds.  Value-only tasks write nothing: any phase takes them.
void schedule(std::vector<std::vector<Task>>& phases, int term, int64_t set, int64_t nbi, int64_t nbj,
              bool symmetric, bool cols, bool grad) {
  auto add = [&](size_t ph, const Task& t) {
    if (phases.size() <= ph) phases.resize(ph + 1);
    phases[ph].push_back(t);
  };
  if (nbi == 0 || nbj == 0) return;
  if (!cols) {
    for (int64_t I = 0; I < nbi; ++I) add(0, {term, set, I, I + 1, symmetric ? I : 0, nbj, symmetric, grad});
    return;
  }
  if (symmetric) {
    int64_t G = std::min<int64_t>(kMaxGroups, nbi);
    G += G & 1;
    for (int64_t p = 0; p < G; ++p) {
      const int64_t b0 = group_begin(p, nbi, G), b1 = group_begin(p + 1, nbi, G);
      if (b1 > b0) add(0, {term, set, b0, b1, b0, b1, true, grad});
    }
    for (int64_t r = 0; r + 1 < G; ++r)
      for (int64_t t = 0; t < G / 2; ++t) {
        int64_t p = t == 0 ? r : (r + t) % (G - 1), q = t == 0 ? G - 1 : (r - t + (G - 1)) % (G - 1);
        if (p > q) std::swap(p, q);
        const int64_t i0 = group_begin(p, nbi, G), i1 = group_begin(p + 1, nbi, G);
        const int64_t j0 = group_begin(q, nbi, G), j1 = group_begin(q + 1, nbi, G);
        if (i1 > i0 && j1 > j0) add(size_t(r + 1), {term, set, i0, i1, j0, j1, false, grad});
      }
    return;
  }
  const int64_t Gi = std::min<int64_t>(kMaxGroups, nbi), Gj = std::min<int64_t>(kMaxGroups, nbj);
  const int64_t Gs = std::min(Gi, Gj), Gl = std::max(Gi, Gj);
  for (int64_t r = 0; r < Gl; ++r)
    for (int64_t t = 0; t < Gs; ++t) {
      const int64_t l = (t + r) % Gl;
      const int64_t gi = Gi <= Gj ? t : l, gj = Gi <= Gj ? l : t;
      add(size_t(r), {term, set, group_begin(gi, nbi, Gi), group_begin(gi + 1, nbi, Gi), group_begin(gj, nbj, Gj),
                      group_begin(gj + 1, nbj, Gj), false, grad});
    }
}

#ifdef WAE_PACK_AVX2
//! acc[k] += y[i][k] in fp64 over rows i in [r0, r1) with a non-zero weight (w null: all), rows
//! ascending for every k as set_shift's loop (the same sums, bit for bit), 32 coordinates at a
//! time in eight AVX2 accumulators (the caller checked the CPU's AVX2); returns the rows summed.
//! The loop with acc in memory was 6% of a B = 256, N = 64, d = 64 forward.
__attribute__((target("avx2"), noinline)) int64_t column_sums_avx2(const float* y, const float* w, int64_t r0,
                                                                   int64_t r1, int64_t d, double* acc) {
  int64_t n = 0;
  for (int64_t i = r0; i < r1; ++i) n += (w == nullptr || w[i] != 0.0f);
  int64_t k = 0;
  for (; k + 32 <= d; k += 32) {
    __m256d a[8];
    for (int j = 0; j < 8; ++j) a[j] = _mm256_loadu_pd(acc + k + 4 * j);
    for (int64_t i = r0; i < r1; ++i) {
      if (w != nullptr && w[i] == 0.0f) continue;
      const float* row = y + i * d + k;
      for (int j = 0; j < 8; ++j) a[j] = _mm256_add_pd(a[j], _mm256_cvtps_pd(_mm_loadu_ps(row + 4 * j)));
    }
    for (int j = 0; j < 8; ++j) _mm256_storeu_pd(acc + k + 4 * j, a[j]);
  }
  for (; k + 4 <= d; k += 4) {
    __m256d a = _mm256_loadu_pd(acc + k);
    for (int64_t i = r0; i < r1; ++i)
      if (w == nullptr || w[i] != 0.0f) a = _mm256_add_pd(a, _mm256_cvtps_pd(_mm_loadu_ps(y + i * d + k)));
    _mm256_storeu_pd(acc + k, a);
  }
  for (; k < d; ++k)
    for (int64_t i = r0; i < r1; ++i)
      if (w == nullptr || w[i] != 0.0f) acc[k] += double(y[i * d + k]);
  return n;
}
#endif

//! One set's shift (wae_fast.contract.segment_shifts): the mean of rows [r0, r1) of y (n, d) with
//! a non-zero weight (w null: all), accumulated in fp64 (acc: d doubles).  A weight-0 row is not
//! read.  isa >= 1 (wae_cpu_tiles::current_isa()): the sums by column_sums_avx2 (fp32).
template <class T>
void set_shift(const T* y, const T* w, int64_t r0, int64_t r1, int64_t d, double* acc, T* out, int isa = 0) {
  std::fill(acc, acc + d, 0.0);
  int64_t n = -1;
#ifdef WAE_PACK_AVX2
  if constexpr (std::is_same<T, float>::value)
    if (isa >= 1) n = column_sums_avx2(y, w, r0, r1, d, acc);
#endif
  if (n < 0) {
    n = 0;
    for (int64_t i = r0; i < r1; ++i) {
      if (w != nullptr && w[i] == T(0)) continue;
      for (int64_t k = 0; k < d; ++k) acc[k] += double(y[i * d + k]);
      ++n;
    }
  }
  for (int64_t k = 0; k < d; ++k) out[k] = T(acc[k] / double(std::max<int64_t>(n, 1)));
}

//! set_shift of sets 0 .. nsets - 1 into out (nsets x d), set b's rows range(b) = {r0, r1}, in
//! one parallel loop.
template <class T, class Range>
void set_shifts_into(T* out, const T* y, const T* w, int64_t nsets, int64_t d, int isa, const Range& range) {
  at::parallel_for(0, nsets, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> acc(d);
    for (int64_t b = b0; b < b1; ++b) {
      const std::pair<int64_t, int64_t> r = range(b);
      set_shift<T>(y, w, r.first, r.second, d, acc.data(), out + b * d, isa);
    }
  });
}

// Everything both passes share: the packed sides, the y pack set of every x set, the kernel.
template <class T>
struct Setup {
  int64_t B = 0, d = 0, dp = 0;
  int isa = 0;
  bool weighted = false, shared = false;
  Pack<T> px, py;
  PackSource<T> sx, sy;        // what px / py pack (deferred: fill_x / fill_y)
  bool fill_x = false, fill_y = false;  // px / py planned, each set packed by run_values_fused
  std::vector<int64_t> ysi;    // x set b -> y pack set
  std::vector<int64_t> yset;   // y pack set -> the first x set using it
  std::vector<int64_t> yr0, yr1;
  std::vector<Denoms> dx, dy;  // per x set / per y pack set
  T* shift_out = nullptr;      // the shifts, each computed by its set's task (seg_fwd_t)
  int kind = 0, S = 0;
  T P[wae_fast::kMaxScales];
  bool unbiased = false;

  TileProblem<T> problem(const Operand<T>& a, const T* wa, const Operand<T>& b, const T* wb, bool sym) const {
    TileProblem<T> pb;
    pb.a = a;
    pb.b = b;
    pb.dp = dp;
    pb.d = d;
    pb.kind = kind;
    pb.S = S;
    for (int s = 0; s < S; ++s) pb.P[s] = P[s];
    pb.symmetric = sym;
    pb.unbiased = unbiased;
    pb.rotate_diag = d <= kRotateMaxD || isa >= 2;
    if (weighted) {
      pb.wa = wa;
      pb.wb = wb;
    }
    return pb;
  }
  //! Term `term` of x set / y pack set `s` (kXY: x set s against its y pack set), from the packs
  //! x and y (px / py or a task's windows).
  TileProblem<T> term_problem(int term, int64_t s, const Pack<T>& x, const Pack<T>& y) const {
    if (term == kXX) return problem(x.operand(s), x.weights(s), x.operand(s), x.weights(s), true);
    if (term == kYY) return problem(y.operand(s), y.weights(s), y.operand(s), y.weights(s), true);
    const int64_t t = ysi[s];
    return problem(x.operand(s), x.weights(s), y.operand(t), y.weights(t), false);
  }
  TileProblem<T> term_problem(int term, int64_t s) const { return term_problem(term, s, px, py); }
  //! Set b's shift when its task computes it (a fused task, y not shared: y pack set b), before
  //! it packs the set (its y rows are then read from the cache); acc: d doubles.
  void shift_set(int64_t b, double* acc) const {
    if (shift_out != nullptr) set_shift<T>(sy.P, sy.W, sy.r0[b], sy.r1[b], d, acc, shift_out + b * d, isa);
  }
};

template <class T>
Setup<T> make_setup(const Problem& pb, const at::Tensor& X, const at::Tensor& Y, const at::Tensor& XW,
                    const at::Tensor& YW, const at::Tensor& SH, int kind, const std::vector<double>& params,
                    bool unbiased, bool with_rows, bool defer = false) {
  Setup<T> st;
  st.B = pb.B;
  st.d = X.size(1);
  st.isa = wae_cpu_tiles::current_isa();  // once per call, outside the parallel regions
  const int64_t L = wae_cpu_tiles::isa_vector_bytes(st.isa) / int64_t(sizeof(T));
  st.dp = std::max<int64_t>(L, (st.d + L - 1) / L * L);
  st.weighted = XW.numel() > 0 || YW.numel() > 0;
  st.shared = pb.shared;
  st.kind = kind;
  st.S = int(params.size());
  for (int s = 0; s < st.S; ++s) st.P[s] = T(params[s]);
  // RBF: gammas ascending (tile_math.h rbf_eval squarings), as mmd_cpu.cpp run_term
  if (kind == wae_fast::KIND_RBF) std::sort(st.P, st.P + st.S);
  st.unbiased = unbiased;
  const T* xw = XW.numel() ? XW.data_ptr<T>() : nullptr;
  const T* yw = YW.numel() ? YW.data_ptr<T>() : nullptr;
  std::vector<int64_t> xr0(pb.B), xr1(pb.B), xsh(pb.B);
  st.ysi.resize(pb.B);
  for (int64_t b = 0; b < pb.B; ++b) {
    xr0[b] = pb.xo[b];
    xr1[b] = pb.xo[b + 1];
    xsh[b] = b;
    if (pb.yop[b] == b) {
      st.ysi[b] = int64_t(st.yset.size());
      st.yset.push_back(b);
      st.yr0.push_back(pb.yo[2 * b]);
      st.yr1.push_back(pb.yo[2 * b + 1]);
    } else {
      st.ysi[b] = st.ysi[pb.yop[b]];
    }
  }
  const Keep keep = st.weighted ? Keep::kNonZero : Keep::kAll;
  st.sx = pack_source<T>(X.data_ptr<T>(), xw, xr0, xr1, SH.data_ptr<T>(), xsh, st.d, keep, with_rows);
  st.sy = pack_source<T>(Y.data_ptr<T>(), yw, st.yr0, st.yr1, SH.data_ptr<T>(), st.yset, st.d, keep, with_rows);
  st.sx.isa = st.sy.isa = st.isa;
  // deferred packs (run_values_fused): a y pack set used by several x sets is packed here
  st.fill_x = defer;
  st.fill_y = defer && st.yset.size() == size_t(st.B);
  st.px = build_pack<T>(st.sx, st.dp, st.fill_x);
  st.py = build_pack<T>(st.sy, st.dp, st.fill_y);
  for (int64_t b = 0; b < pb.B; ++b) st.dx.push_back(denoms(xw ? xw + xr0[b] : nullptr, xr1[b] - xr0[b], unbiased));
  for (size_t s = 0; s < st.yset.size(); ++s)
    st.dy.push_back(denoms(yw ? yw + st.yr0[s] : nullptr, st.yr1[s] - st.yr0[s], unbiased));
  return st;
}

// The engine's per-row sums of one pass, fp64, in packed row order: weighted gradient sums
// g_i = w_i sum_j v_j W_ij (a_i - b_j) and kernel sums s_i = sum_j v_j k_ij, per term and side
// (xy_y: the cross term's y side; empty when not asked for).
struct RowSums {
  Scratch<double> gxx, gxy_x, gyy, gxy_y, ksxx, ksxy_x, ksyy, ksxy_y;
};

// What one pass computes: which row sums, and whether every term's value.
struct PassSpec {
  bool gx = false, gy = false, kx = false, ky = false;  // g / s sums of x rows, of y rows
  bool y_cross = true;   // y rows get the cross term's sums here (false: a shared y, summed per set)
  bool values = false;   // every term's kernel sum (tasks without row sums: value-only)
};

//! One tile pass over every set and term (see the file comment's scheduling); returns the kernel
//! sums per x set (xx, xy) and y pack set (yy), combined in a fixed order, when spec.values.
template <class T>
void run_pass(const Setup<T>& st, const PassSpec& spec, RowSums& rs, std::vector<double>& sxx,
              std::vector<double>& sxy, std::vector<double>& syy) {
  const int64_t dp = st.dp, NY = int64_t(st.yset.size());
  const int64_t nxr = st.px.ntiles * kTile, nyr = st.py.ntiles * kTile;
  const bool need_x = spec.gx || spec.kx, need_y = spec.gy || spec.ky;
  const bool xy_cols = need_y && spec.y_cross;
  if (spec.gx) rs.gxx.reset(nxr * dp, true), rs.gxy_x.reset(nxr * dp, true);
  if (spec.gy) rs.gyy.reset(nyr * dp, true), rs.gxy_y.reset(spec.y_cross ? nyr * dp : 0, true);
  if (spec.kx) rs.ksxx.reset(nxr, true), rs.ksxy_x.reset(nxr, true);
  if (spec.ky) rs.ksyy.reset(nyr, true), rs.ksxy_y.reset(spec.y_cross ? nyr : 0, true);
  auto ptr = [](Scratch<double>& v, int64_t off) -> double* { return v.empty() ? nullptr : v.data() + off; };

  std::vector<std::vector<Task>> phases;
  for (int64_t b = 0; b < st.B; ++b) {
    const int64_t nbx = st.px.blocks(b), nby = st.py.blocks(st.ysi[b]);
    if (need_x || spec.values) schedule(phases, kXX, b, nbx, nbx, true, need_x, need_x);
    if (need_x || xy_cols || spec.values) schedule(phases, kXY, b, nbx, nby, false, xy_cols, need_x || xy_cols);
  }
  if (need_y || spec.values)
    for (int64_t s = 0; s < NY; ++s) schedule(phases, kYY, s, st.py.blocks(s), st.py.blocks(s), true, need_y, need_y);
  std::vector<std::vector<double>> sums(phases.size());
  for (size_t ph = 0; ph < phases.size(); ++ph) {
    const std::vector<Task>& tasks = phases[ph];
    sums[ph].assign(tasks.size(), 0.0);
    at::parallel_for(0, int64_t(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const Task& k = tasks[t];
        TileProblem<T> tp = st.term_problem(k.term, k.set);
        double *gr = nullptr, *gc = nullptr;
        if (k.grad && k.term == kXX) {
          const int64_t o = st.px.row0(k.set);
          gr = gc = ptr(rs.gxx, o * dp);
          tp.ks_rows = tp.ks_cols = ptr(rs.ksxx, o);
        } else if (k.grad && k.term == kYY) {
          const int64_t o = st.py.row0(k.set);
          gr = gc = ptr(rs.gyy, o * dp);
          tp.ks_rows = tp.ks_cols = ptr(rs.ksyy, o);
        } else if (k.grad) {
          const int64_t ox = st.px.row0(k.set), oy = st.py.row0(st.ysi[k.set]);
          gr = ptr(rs.gxy_x, ox * dp);
          gc = ptr(rs.gxy_y, oy * dp);
          tp.ks_rows = ptr(rs.ksxy_x, ox);
          tp.ks_cols = ptr(rs.ksxy_y, oy);
        }
        sums[ph][t] = wae_cpu_tiles::run_block<T>(tp, k.I0, k.I1, k.J0, k.J1, k.tri, gr, gc, st.isa);
      }
    });
  }
  if (!spec.values) return;
  sxx.assign(st.B, 0.0);
  sxy.assign(st.B, 0.0);
  syy.assign(NY, 0.0);
  for (size_t ph = 0; ph < phases.size(); ++ph)  // fixed order
    for (size_t t = 0; t < phases[ph].size(); ++t) {
      const Task& k = phases[ph][t];
      (k.term == kXX ? sxx : k.term == kXY ? sxy : syy)[k.set] += sums[ph][t];
    }
}

//! One task per set (the set packed right before its tiles: run_values_fused, and seg_fwd_t's
//! gradients to the points) when every set has at most kFuseMaxBlocks row blocks on each side and
//! there are at least kFuseMinSets sets (or none has more than one block), so that the sets keep
//! the threads busy.  A choice of the shapes only, never of the thread count: the results stay
//! the same bit for bit at any thread count.  Measured at one thread: ragged sets of 16 to 512
//! points at d = 64, forward + backward 35 -> 28 ms with up to 8 blocks instead of 4.
constexpr int64_t kFuseMaxBlocks = 8;
constexpr int64_t kFuseMinSets = 16;

template <class T>
bool fuse_values(const Problem& pb) {
  int64_t most = 0;
  for (int64_t b = 0; b < pb.B; ++b)
    most = std::max({most, pb.xo[b + 1] - pb.xo[b], pb.yo[2 * b + 1] - pb.yo[2 * b]});
  const int64_t blocks = (most + kTile - 1) / kTile;
  return blocks <= 1 || (blocks <= kFuseMaxBlocks && pb.B >= kFuseMinSets);
}

//! Has the tiles of `tp` prefetch the input rows that packing set b (the next of the task) will
//! read: `side` 0 its x rows, 1 its y rows (when this task packs them).  They come in while this
//! set's tiles run: B = 256 sets of 64 points at d = 64, forward, 25.5 -> 22.3 us per set, the
//! packs and the shift's column sums 21% -> 7% of the call (perf).
template <class T>
void prefetch_next(const Setup<T>& st, int64_t b, int side, TileProblem<T>& tp) {
  const int64_t s = st.ysi[b];
  const PackSource<T>& src = side == 0 ? st.sx : st.sy;
  const int64_t r = side == 0 ? b : s;
  if (side == 0 ? !st.fill_x : !(st.fill_y && st.yset[s] == b)) return;
  tp.prefetch = reinterpret_cast<const char*>(src.P + src.r0[r] * st.d);
  tp.prefetch_bytes = (src.r1[r] - src.r0[r]) * st.d * int64_t(sizeof(T));
}

//! The kernel sums of every term without gradients (run_pass's value-only tasks, the same sums
//! in the same order), one task per set that first packs the set's x rows (and its y rows, when
//! no other set uses them): the packed tiles are read from the cache right after they are
//! written (packing every set first, then the tiles, sent them through memory: at d = 64 the
//! pack was a quarter of a B = 256, N = 64 forward).
template <class T>
void run_values_fused(Setup<T>& st, std::vector<double>& sxx, std::vector<double>& sxy, std::vector<double>& syy) {
  const int64_t NY = int64_t(st.yset.size());
  sxx.assign(st.B, 0.0);
  sxy.assign(st.B, 0.0);
  syy.assign(NY, 0.0);
  at::parallel_for(0, st.B, 1, [&](int64_t b0, int64_t b1) {
    Pack<T> wx, wy;
    if (st.fill_x) wx = pack_window(st.px, st.sx.with_rows);
    if (st.fill_y) wy = pack_window(st.py, st.sy.with_rows);
    const Pack<T>& px = st.fill_x ? wx : st.px;
    const Pack<T>& py = st.fill_y ? wy : st.py;
    std::vector<double> acc(st.d);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t s = st.ysi[b];
      const bool own_y = st.yset[s] == b;  // this task takes the y pack set's yy term
      st.shift_set(b, acc.data());
      if (st.fill_x) pack_set<T>(wx, st.sx, b);
      if (st.fill_y && own_y) pack_set<T>(wy, st.sy, s);
      const int64_t nbx = px.blocks(b), nby = py.blocks(s);
      if (nbx > 0) {
        TileProblem<T> txx = st.term_problem(kXX, b, px, py);
        if (b + 1 < b1) prefetch_next(st, b + 1, 0, txx);
        for (int64_t I = 0; I < nbx; ++I) sxx[b] += wae_cpu_tiles::run_block<T>(txx, I, I + 1, I, nbx, true, nullptr, nullptr, st.isa);
        if (nby > 0) {
          TileProblem<T> txy = st.term_problem(kXY, b, px, py);
          if (b + 1 < b1) prefetch_next(st, b + 1, 1, txy);
          for (int64_t I = 0; I < nbx; ++I) sxy[b] += wae_cpu_tiles::run_block<T>(txy, I, I + 1, 0, nby, false, nullptr, nullptr, st.isa);
        }
      }
      if (own_y && nby > 0) {
        const TileProblem<T> tyy = st.term_problem(kYY, s, px, py);
        for (int64_t I = 0; I < nby; ++I) syy[s] += wae_cpu_tiles::run_block<T>(tyy, I, I + 1, I, nby, true, nullptr, nullptr, st.isa);
      }
    }
  });
}

// Rows of pack `rows` (pack set s, blocks) against the x sets b using y pack set s, one block per
// task, each set's row sums (into tg / tk: kTile rows, nn of them valid) handed to
// `take(b, row, nn, tg, tk)`.
using TakeRows = std::function<void(int64_t, int64_t, int64_t, const double*, const double*)>;
template <class T>
void cross_rows(const Setup<T>& st, const Pack<T>& rows, bool with_g, bool with_k, const TakeRows& take) {
  struct RowBlock {
    int64_t s, I;
  };
  std::vector<RowBlock> blocks;
  for (int64_t s = 0; s < int64_t(st.yset.size()); ++s)
    for (int64_t I = 0; I < rows.blocks(s); ++I) blocks.push_back({s, I});
  at::parallel_for(0, int64_t(blocks.size()), 1, [&](int64_t t0, int64_t t1) {
    std::vector<double> tg(with_g ? kTile * st.dp : 0), tk(with_k ? kTile : 0);
    for (int64_t t = t0; t < t1; ++t) {
      const RowBlock& rb = blocks[t];
      for (int64_t b = 0; b < st.B; ++b) {
        if (st.ysi[b] != rb.s || st.px.blocks(b) == 0) continue;
        std::fill(tg.begin(), tg.end(), 0.0);
        std::fill(tk.begin(), tk.end(), 0.0);
        TileProblem<T> tp = st.problem(rows.operand(rb.s, rb.I), rows.weights(rb.s, rb.I), st.px.operand(b),
                                       st.px.weights(b), false);
        tp.ks_rows = with_k ? tk.data() : nullptr;
        wae_cpu_tiles::run_block<T>(tp, 0, 1, 0, st.px.blocks(b), false, with_g ? tg.data() : nullptr, nullptr,
                                    st.isa);
        const int64_t r0 = rows.row0(rb.s) + rb.I * kTile;
        take(b, r0, std::min<int64_t>(kTile, rows.row0(rb.s) + rows.n[rb.s] - r0), tg.data(), tk.data());
      }
    }
  });
}

// Weight-0 rows (only for the weights' gradient, the true derivative, which reads them): their
// kernel row sums against the set's packed columns.
template <class T>
struct ZeroRows {
  Pack<T> pk;
  std::vector<double> self, cross;  // per packed row: vs its own side's set, vs the other side
};

//! x's weight-0 rows: self = sum_j w_j k(x_i, x_j) over set b, cross = sum_j v_j k(x_i, y_j).
template <class T>
ZeroRows<T> zero_rows_x(const Setup<T>& st, const Problem& pb, const at::Tensor& X, const T* xw, const at::Tensor& SH) {
  ZeroRows<T> z;
  const int64_t B = st.B;
  std::vector<int64_t> r0(pb.xo.begin(), pb.xo.end() - 1), r1(pb.xo.begin() + 1, pb.xo.end()), sh(B);
  for (int64_t b = 0; b < B; ++b) sh[b] = b;
  z.pk = build_pack<T>(pack_source<T>(X.data_ptr<T>(), xw, r0, r1, SH.data_ptr<T>(), sh, st.d, Keep::kZero, false),
                       st.dp);
  z.self.assign(z.pk.ntiles * kTile, 0.0);
  z.cross.assign(z.pk.ntiles * kTile, 0.0);
  std::vector<std::pair<int64_t, int64_t>> blocks;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t I = 0; I < z.pk.blocks(b); ++I) blocks.push_back({b, I});
  at::parallel_for(0, int64_t(blocks.size()), 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = blocks[t].first, I = blocks[t].second, ys = st.ysi[b], o = z.pk.row0(b);
      TileProblem<T> tp = st.problem(z.pk.operand(b), z.pk.weights(b), st.px.operand(b), st.px.weights(b), false);
      tp.ks_rows = z.self.data() + o;
      if (st.px.blocks(b) > 0) wae_cpu_tiles::run_block<T>(tp, I, I + 1, 0, st.px.blocks(b), false, nullptr, nullptr, st.isa);
      tp = st.problem(z.pk.operand(b), z.pk.weights(b), st.py.operand(ys), st.py.weights(ys), false);
      tp.ks_rows = z.cross.data() + o;
      if (st.py.blocks(ys) > 0) wae_cpu_tiles::run_block<T>(tp, I, I + 1, 0, st.py.blocks(ys), false, nullptr, nullptr, st.isa);
    }
  });
  return z;
}

//! y's weight-0 rows: self = sum_j v_j k(y_i, y_j) over the pack set; cross = the sum over the
//! x sets b using the pack set of term(b, sum_j w_j k(y_i, x_j)).
template <class T>
ZeroRows<T> zero_rows_y(const Setup<T>& st, const at::Tensor& Y, const T* yw, const at::Tensor& SH,
                        const std::function<double(int64_t, double)>& term) {
  ZeroRows<T> z;
  const int64_t NY = int64_t(st.yset.size());
  z.pk = build_pack<T>(
      pack_source<T>(Y.data_ptr<T>(), yw, st.yr0, st.yr1, SH.data_ptr<T>(), st.yset, st.d, Keep::kZero, false), st.dp);
  z.self.assign(z.pk.ntiles * kTile, 0.0);
  std::vector<std::pair<int64_t, int64_t>> blocks;
  for (int64_t s = 0; s < NY; ++s)
    for (int64_t I = 0; I < z.pk.blocks(s); ++I) blocks.push_back({s, I});
  at::parallel_for(0, int64_t(blocks.size()), 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t s = blocks[t].first, I = blocks[t].second;
      TileProblem<T> tp = st.problem(z.pk.operand(s), z.pk.weights(s), st.py.operand(s), st.py.weights(s), false);
      tp.ks_rows = z.self.data() + z.pk.row0(s);
      if (st.py.blocks(s) > 0) wae_cpu_tiles::run_block<T>(tp, I, I + 1, 0, st.py.blocks(s), false, nullptr, nullptr, st.isa);
    }
  });
  z.cross.assign(z.pk.ntiles * kTile, 0.0);
  cross_rows<T>(st, z.pk, false, true, [&](int64_t b, int64_t r0, int64_t nn, const double*, const double* tk) {
    for (int64_t r = 0; r < nn; ++r) z.cross[r0 + r] += term(b, tk[r]);
  });
  return z;
}

at::ScalarType compute_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// The forward: the (B, 3) terms, and, for the flags set (x, y, x's weights, y's weights; the y
// ones never for a y shared by B > 1 sets), the fused parts of the contract, from one pass that
// computes the terms and the row sums together (the backward then only scales them):
//   x rows of set b:  d t_xx/dx_i = 4 g^xx_i / D_x,  d t_xy/dx_i = 2 g^xy_i / (sum w sum v)
//   x weights:        d t_xx/dw_i = (2 s^xx_i - t_xx dD_x/dw_i) / D_x,  d t_xy/dw_i = (s^xy_i / sum v - t_xy) / sum w
// y alike (wae_fast/segment_sums.py: the reference's formulas).  vp (value_parts): one part per
// input instead, the derivative of MMD^2_b = t_xx + t_yy - 2 t_xy: x's part = the xx part - 2 the
// xy part (the tiles' row sides add the second into the first, Problem::out_add).
template <class T>
std::vector<at::Tensor> seg_fwd_t(const at::Tensor& X, const at::Tensor& Y, const Problem& pb, const at::Tensor& XW,
                                  const at::Tensor& YW, const at::Tensor& SH, bool defer_shifts, int kind,
                                  const std::vector<double>& params, bool unbiased, bool fx, bool fy, bool fxw,
                                  bool fyw, bool vp) {
  // sets within kFuseMaxBlocks row blocks: one task per set packs it right before its tiles
  // (without gradients; with gradients to the points, also the row sums and the parts, all in
  // the cache: not for the weights' gradients, whose weight-0 rows take passes of their own, nor
  // for a y shared by several sets)
  const bool small = fuse_values<T>(pb);
  const bool fuse_grad = (fx || fy) && !fxw && !fyw && !pb.shared && small;
  const bool fused = (!(fx || fy || fxw || fyw) && small) || fuse_grad;
  T* shp = SH.data_ptr<T>();
  if (defer_shifts && !fused)  // every set's shift before the packs
    set_shifts_into<T>(shp, Y.data_ptr<T>(), YW.numel() ? YW.data_ptr<T>() : nullptr, pb.B, X.size(1),
                       wae_cpu_tiles::current_isa(),
                       [&](int64_t b) { return std::make_pair(pb.yo[2 * b], pb.yo[2 * b + 1]); });
  Setup<T> st = make_setup<T>(pb, X, Y, XW, YW, SH, kind, params, unbiased, fx || fy, fused);
  if (defer_shifts && fused) st.shift_out = shp;
  const int64_t B = st.B, d = st.d, dp = st.dp;
  at::Tensor terms = at::empty({B, 3}, X.options().dtype(at::kDouble));
  double* out = terms.data_ptr<double>();
  auto set_terms = [&](int64_t b, double sxx, double sxy, double syy) {
    const int64_t s = st.ysi[b];
    out[3 * b] = sxx / st.dx[b].D;
    out[3 * b + 1] = syy / st.dy[s].D;
    out[3 * b + 2] = sxy / (st.dx[b].sum * st.dy[s].sum);
  };
  const auto ct = X.scalar_type();
  auto none = [&](at::ScalarType t) { return at::empty({0}, X.options().dtype(t)); };
  // every row is written below: the packed ones from the sums, the weight-0 ones zero
  const int64_t np = vp ? 1 : 2;  // parts per input
  at::Tensor gxp = fx ? at::empty({np, X.size(0), d}, X.options()) : none(ct);
  at::Tensor gyp = fy ? at::empty({np, Y.size(0), d}, Y.options()) : none(ct);
  at::Tensor gxwp = fxw ? at::empty({np, X.size(0)}, X.options().dtype(at::kDouble)) : none(at::kDouble);
  at::Tensor gywp = fyw ? at::empty({np, Y.size(0)}, Y.options().dtype(at::kDouble)) : none(at::kDouble);
  RowSums rs;
  std::vector<double> sxx, sxy, syy;
  if (!(fx || fy || fxw || fyw)) {
    if (fused) {
      run_values_fused<T>(st, sxx, sxy, syy);
    } else {
      PassSpec spec;
      spec.values = true;
      run_pass<T>(st, spec, rs, sxx, sxy, syy);
    }
    for (int64_t b = 0; b < B; ++b) set_terms(b, sxx[b], sxy[b], syy[st.ysi[b]]);
    return {terms, gxp, gyp, gxwp, gywp};
  }

  const T* xw = XW.numel() ? XW.data_ptr<T>() : nullptr;
  const T* yw = YW.numel() ? YW.data_ptr<T>() : nullptr;
  const int64_t nx = X.size(0), ny = Y.size(0);
  T* GX = fx ? gxp.data_ptr<T>() : nullptr;
  T* GY = fy ? gyp.data_ptr<T>() : nullptr;
  double* GXW = fxw ? gxwp.data_ptr<double>() : nullptr;
  double* GYW = fyw ? gywp.data_ptr<double>() : nullptr;
  // rows outside every set (offsets that do not span the rows: only a direct op call): zero
  auto zero_outside = [d, np](T* g, double* gw, int64_t n, int64_t r0, int64_t r1) {
    for (int64_t h = 0; h < np; ++h) {
      if (g != nullptr) {
        std::fill(g + h * n * d, g + (h * n + r0) * d, T(0));
        std::fill(g + (h * n + r1) * d, g + (h + 1) * n * d, T(0));
      }
      if (gw != nullptr) {
        std::fill(gw + h * n, gw + h * n + r0, 0.0);
        std::fill(gw + h * n + r1, gw + (h + 1) * n, 0.0);
      }
    }
  };
  zero_outside(GX, GXW, nx, pb.xo[0], pb.xo[B]);
  if (fy || fyw) zero_outside(GY, GYW, ny, pb.yo[0], pb.yo[2 * B - 1]);
  // One side's parts for set b: rows of pack set ps (self sums gs / ks, cross sums gc / kc), its
  // weight-0 rows (z), D its self denominator, own / other the two weight sums.
  auto side = [&](const Pack<T>& pk, int64_t ps, const Scratch<double>& gs, const Scratch<double>& gc,
                  const Scratch<double>& ks, const Scratch<double>& kc, const ZeroRows<T>& z, const T* w,
                  int64_t r0, int64_t r1, T* G, double* GW, int64_t n, double D, double own, double other,
                  double ts, double tc, bool direct_s = false, bool direct_c = false) {
    const double cs = 4.0 / D, cc = 2.0 / (own * other);
    // vp: the cross part enters MMD^2 with -2, added to the self part (one rounding when neither
    // came from the tiles; direct_c implies direct_s: a direct self part, then the cross part)
    auto put2 = [&](int64_t i, double a, double c) {
      if (vp) {
        GW[i] = a - 2.0 * c;
      } else {
        GW[i] = a;
        GW[n + i] = c;
      }
    };
    for (int64_t p = pk.row0(ps); p < pk.row0(ps) + pk.n[ps]; ++p) {
      const int64_t i = pk.src[p];
      if (G != nullptr && vp) {
        T* gi = G + i * d;
        if (!direct_s)
          for (int64_t k = 0; k < d; ++k) gi[k] = T(cs * gs[p * dp + k] - 2.0 * cc * gc[p * dp + k]);
        else if (!direct_c)
          for (int64_t k = 0; k < d; ++k) gi[k] = T(double(gi[k]) - 2.0 * cc * gc[p * dp + k]);
      } else if (G != nullptr) {
        if (!direct_s)  // direct_s / _c: the tiles wrote that part (Problem::out_rows)
          for (int64_t k = 0; k < d; ++k) G[i * d + k] = T(cs * gs[p * dp + k]);
        if (!direct_c)
          for (int64_t k = 0; k < d; ++k) G[(n + i) * d + k] = T(cc * gc[p * dp + k]);
      }
      if (GW != nullptr) {
        const double wi = double(pk.w[p]), dD = unbiased ? 2.0 * (own - wi) : 2.0 * own;
        put2(i, (2.0 * ks[p] - ts * dD) / D, (kc[p] / other - tc) / own);
      }
    }
    if (G != nullptr && w != nullptr)  // weight-0 rows: no contribution
      for (int64_t i = r0; i < r1; ++i)
        if (w[i] == T(0))
          for (int64_t h = 0; h < np; ++h) std::fill(G + (h * n + i) * d, G + (h * n + i + 1) * d, T(0));
    if (!z.self.empty())
      for (int64_t p = z.pk.row0(ps); p < z.pk.row0(ps) + z.pk.n[ps]; ++p)
        put2(z.pk.src[p], (2.0 * z.self[p] - ts * 2.0 * own) / D, (z.cross[p] / other - tc) / own);
  };
  ZeroRows<T> zx, zy;
  if (fuse_grad) {
    // one task per set (its own x and y rows: no other task writes them): pack, the three terms
    // (the symmetric ones with row and column sides, as one big call), the parts
    // (the packs and row sums in windows of the task, every set at row 0: see pack_window)
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      Pack<T> px = pack_window(st.px, st.sx.with_rows), py = pack_window(st.py, st.sy.with_rows);
      RowSums ws;
      if (fx) ws.gxx.reset(px.ntiles * kTile * dp, false), ws.gxy_x.reset(px.ntiles * kTile * dp, false);
      if (fy) ws.gyy.reset(py.ntiles * kTile * dp, false), ws.gxy_y.reset(py.ntiles * kTile * dp, false);
      std::vector<double> acc(d);
      for (int64_t b = b0; b < b1; ++b) {
        st.shift_set(b, acc.data());
        pack_set<T>(px, st.sx, b);
        pack_set<T>(py, st.sy, b);  // not shared: y pack set b is set b's alone
        const int64_t nbx = px.blocks(b), nby = py.blocks(b);
        // sets of one row block each (up to kTile points): x's two parts and y's self part come
        // straight from the tiles' row sides (Problem::out_rows), not through fp64 row sums
        // zeroed, added to and read back (B = 256 sets of 64 points, forward + backward, medians
        // of 101: d = 64 7.9-8.4 -> 7.1-7.4 ms, d = 8 2.44-2.68 -> 2.28-2.41 ms); y's cross part is
        // a column side, summed in fp64
        const bool dx = fx && nbx == 1 && nby == 1, dy = fy && nby == 1;
        auto rows = [&](Scratch<double>& v, int64_t nb, bool direct) -> double* {
          if (v.empty()) return nullptr;
          if (!direct) std::fill(v.data(), v.data() + nb * kTile * dp, 0.0);
          return v.data();  // direct: only selects the gradient tiles, never written
        };
        double* gxx = rows(ws.gxx, nbx, dx);
        double* gxy_x = rows(ws.gxy_x, nbx, dx);
        double* gyy = rows(ws.gyy, nby, dy);
        double* gxy_y = rows(ws.gxy_y, nby, false);
        const double sw = st.dx[b].sum, sv = st.dy[b].sum;
        auto direct = [](TileProblem<T> tp, T* G, const Pack<T>& pk, double scale) {
          tp.out_rows = G;
          tp.out_src = pk.src.data();  // the window: the set at tile 0
          tp.out_scale = scale;
          return tp;
        };
        double vxx = 0.0, vxy = 0.0, vyy = 0.0;
        if (nbx > 0) {
          TileProblem<T> tp = st.term_problem(kXX, b, px, py);
          if (b + 1 < b1) prefetch_next(st, b + 1, 0, tp);
          if (dx) tp = direct(tp, GX, px, 4.0 / st.dx[b].D);
          vxx = wae_cpu_tiles::run_block<T>(tp, 0, nbx, 0, nbx, true, gxx, gxx, st.isa);
        }
        if (nbx > 0 && nby > 0) {
          TileProblem<T> tp = st.term_problem(kXY, b, px, py);
          if (b + 1 < b1) prefetch_next(st, b + 1, 1, tp);
          if (dx && vp) {  // added to the xx part the tiles just wrote, with -2
            tp = direct(tp, GX, px, -4.0 / (sw * sv));
            tp.out_add = true;
          } else if (dx) {
            tp = direct(tp, GX + nx * d, px, 2.0 / (sw * sv));
          }
          vxy = wae_cpu_tiles::run_block<T>(tp, 0, nbx, 0, nby, false, gxy_x, gxy_y, st.isa);
        }
        if (nby > 0) {
          TileProblem<T> tp = st.term_problem(kYY, b, px, py);
          if (dy) tp = direct(tp, GY, py, 4.0 / st.dy[b].D);
          vyy = wae_cpu_tiles::run_block<T>(tp, 0, nby, 0, nby, true, gyy, gyy, st.isa);
        }
        set_terms(b, vxx, vxy, vyy);
        if (fx)
          side(px, b, ws.gxx, ws.gxy_x, ws.ksxx, ws.ksxy_x, zx, xw, pb.xo[b], pb.xo[b + 1], GX, GXW, nx, st.dx[b].D,
               sw, sv, out[3 * b], out[3 * b + 2], dx, dx);
        if (fy)
          side(py, b, ws.gyy, ws.gxy_y, ws.ksyy, ws.ksxy_y, zy, yw, st.yr0[b], st.yr1[b], GY, GYW, ny, st.dy[b].D,
               sv, sw, out[3 * b + 1], out[3 * b + 2], dy, false);
      }
    });
    return {terms, gxp, gyp, gxwp, gywp};
  }
  PassSpec spec;
  spec.gx = fx;
  spec.gy = fy;
  spec.kx = fxw;
  spec.ky = fyw;
  spec.values = true;
  run_pass<T>(st, spec, rs, sxx, sxy, syy);
  for (int64_t b = 0; b < B; ++b) set_terms(b, sxx[b], sxy[b], syy[st.ysi[b]]);
  if (fxw && xw != nullptr) zx = zero_rows_x<T>(st, pb, X, xw, SH);
  if (fyw && yw != nullptr)  // fyw: y not shared, one x set per pack set
    zy = zero_rows_y<T>(st, Y, yw, SH, [](int64_t, double v) { return v; });
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t s = st.ysi[b];
      const double sw = st.dx[b].sum, sv = st.dy[s].sum;
      if (fx || fxw)
        side(st.px, b, rs.gxx, rs.gxy_x, rs.ksxx, rs.ksxy_x, zx, xw, pb.xo[b], pb.xo[b + 1], GX, GXW, nx,
             st.dx[b].D, sw, sv, out[3 * b], out[3 * b + 2]);
      if (fy || fyw)  // not shared: y pack set s is set b's alone
        side(st.py, s, rs.gyy, rs.gxy_y, rs.ksyy, rs.ksxy_y, zy, yw, st.yr0[s], st.yr1[s], GY, GYW, ny,
             st.dy[s].D, sv, sw, out[3 * b + 1], out[3 * b + 2]);
    }
  });
  return {terms, gxp, gyp, gxwp, gywp};
}

at::Tensor to_ct(const at::Tensor& t, at::ScalarType ct) { return t.to(ct).contiguous(); }

//! The glue's per-set shifts, for an empty `shifts`: set_shift of each set's y rows (a y shared
//! by every set: one mean); zeros for the polynomial.  Y, YW in the compute dtype.
template <class T>
at::Tensor set_shifts_t(const at::Tensor& Y, const at::Tensor& YW, const at::Tensor& y_offsets, int64_t B,
                        int64_t kind) {
  const int64_t d = Y.size(1);
  at::Tensor SH = at::zeros({B, d}, Y.options());
  if (kind == wae_fast::KIND_POLY) return SH;
  const auto yo = y_offsets.to(at::kLong).contiguous();
  const int64_t* o = yo.data_ptr<int64_t>();
  const bool shared = yo.numel() == 2;
  TORCH_CHECK(shared || yo.numel() == B + 1, "wae_fast cpp backend: y_offsets must have B + 1 or 2 entries");
  T* out = SH.data_ptr<T>();
  set_shifts_into<T>(out, Y.data_ptr<T>(), YW.numel() ? YW.data_ptr<T>() : nullptr, shared ? 1 : B, d,
                     wae_cpu_tiles::current_isa(), [&](int64_t b) {
                       const int64_t r0 = o[shared ? 0 : b], r1 = o[shared ? 1 : b + 1];
                       TORCH_CHECK(0 <= r0 && r0 <= r1 && r1 <= Y.size(0), "wae_fast cpp backend: bad y_offsets");
                       return std::make_pair(r0, r1);
                     });
  if (shared)
    for (int64_t b = 1; b < B; ++b) std::copy(out, out + d, out + b * d);
  return SH;
}

at::Tensor call_shifts(const at::Tensor& shifts, const at::Tensor& Y, const at::Tensor& YW,
                       const at::Tensor& y_offsets, const at::Tensor& x_offsets, int64_t kind, at::ScalarType ct) {
  if (shifts.numel() > 0) return to_ct(shifts, ct);
  const int64_t B = x_offsets.numel() - 1;
  return ct == at::kDouble ? set_shifts_t<double>(Y, YW, y_offsets, B, kind) : set_shifts_t<float>(Y, YW, y_offsets, B, kind);
}

using FwdOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

FwdOut seg_fwd_cpp(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_offsets, const at::Tensor& y_offsets,
                   const at::Tensor& x_weights, const at::Tensor& y_weights, const at::Tensor& shifts, int64_t kind,
                   at::ArrayRef<double> params, bool unbiased, bool grad_x, bool grad_y, bool grad_xw, bool grad_yw,
                   c10::string_view precision, bool value_parts) {
  check_inputs(x, y, x_weights, y_weights, shifts, kind, params);
  const auto ct = compute_type(x);
  at::Tensor X = to_ct(x, ct), Y = to_ct(y, ct);
  at::Tensor XW = to_ct(x_weights, ct), YW = to_ct(y_weights, ct);
  // per-set y, shifts to compute: seg_fwd_t computes each set's (in its task, when fused: the
  // y rows are then packed from the cache; computing them first read all of y from memory twice)
  const bool defer_shifts =
      shifts.numel() == 0 && kind != wae_fast::KIND_POLY && y_offsets.numel() == x_offsets.numel();
  at::Tensor SH = defer_shifts ? at::empty({x_offsets.numel() - 1, y.size(1)}, Y.options())
                               : call_shifts(shifts, Y, YW, y_offsets, x_offsets, kind, ct);
  Problem pb = make_problem(x_offsets, y_offsets, SH, y.size(0));  // (SH read only for a shared y)
  TORCH_CHECK(pb.xo[pb.B] <= x.size(0) && SH.size(0) == pb.B, "wae_fast cpp backend: x_offsets / shifts mismatch");
  // the parts of wae_fast.contract.segments_fused_flags (a y shared by B > 1 sets: none)
  const bool shared = pb.shared && pb.B > 1;
  const bool fx = grad_x, fy = grad_y && !shared, fxw = grad_xw && x_weights.numel() > 0,
             fyw = grad_yw && !shared && y_weights.numel() > 0;
  const std::vector<double> P(params.begin(), params.end());
  std::vector<at::Tensor> o = ct == at::kDouble
                                  ? seg_fwd_t<double>(X, Y, pb, XW, YW, SH, defer_shifts, int(kind), P, unbiased,
                                                      fx, fy, fxw, fyw, value_parts)
                                  : seg_fwd_t<float>(X, Y, pb, XW, YW, SH, defer_shifts, int(kind), P, unbiased,
                                                     fx, fy, fxw, fyw, value_parts);
  // value_parts: MMD^2 of every set as well (wae_fast.contract: the value output), formed as
  // (t_xx + t_yy) - 2 t_xy in fp64 and rounded once, so the eager path runs no product and cast
  // ops after the tiles; float64 for fp64 points, else float32 (segments_value_dtype)
  const auto vt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor value = at::empty({value_parts ? pb.B : 0}, x.options().dtype(vt));
  if (value_parts) {
    const double* t = o[0].data_ptr<double>();
    for (int64_t b = 0; b < pb.B; ++b) {
      const double v = (t[3 * b] + t[3 * b + 1]) - 2.0 * t[3 * b + 2];
      if (vt == at::kDouble)
        value.data_ptr<double>()[b] = v;
      else
        value.data_ptr<float>()[b] = float(v);
    }
  }
  return {o[0], o[1], o[2], o[3], o[4], value};
}

// Gradients of sum_b grad_terms[b] . terms[b] (wae_fast/segment_sums.py), with the row sums of
// run_pass (RowSums):
//   d/dx_i = 4 g_xx g^xx_i / D_x + 2 g_xy g^xy_i / (sum w sum v)
//   d/dw_i = g_xx (2 s^xx_i - t_xx dD_x/dw_i) / D_x + g_xy (s^xy_i / sum v - t_xy) / sum w
// y alike.  Called for what the forward did not fuse: a y shared by every set (its xy-side sums
// come from y row blocks looping over the sets, each set's contribution scaled as it is added,
// so no two tasks write one y row), and calls whose forward ran without the flags.
template <class T>
std::vector<at::Tensor> seg_bwd_t(const at::Tensor& GTt, const at::Tensor& TTt, const at::Tensor& X,
                                  const at::Tensor& Y, const Problem& pb, const at::Tensor& XW, const at::Tensor& YW,
                                  const at::Tensor& SH, int kind, const std::vector<double>& params, bool unbiased,
                                  bool grad_x, bool grad_y, bool grad_xw, bool grad_yw) {
  const Setup<T> st = make_setup<T>(pb, X, Y, XW, YW, SH, kind, params, unbiased, grad_x || grad_y);
  const double* G = GTt.data_ptr<double>();
  const double* TT = TTt.data_ptr<double>();
  const int64_t d = st.d, dp = st.dp, B = st.B, NY = int64_t(st.yset.size());
  const int64_t nyr = st.py.ntiles * kTile;
  const bool need_y = grad_y || grad_yw;
  const bool ytrans = st.shared && B > 1;
  PassSpec spec;
  spec.gx = grad_x;
  spec.gy = grad_y;
  spec.kx = grad_xw;
  spec.ky = grad_yw;
  spec.y_cross = !ytrans;
  RowSums rs;
  std::vector<double> unused_xx, unused_xy, unused_yy;
  run_pass<T>(st, spec, rs, unused_xx, unused_xy, unused_yy);

  // shared y: the xy term's y side, scaled per set as it is added
  Scratch<double> gyacc, gywacc;
  if (ytrans && need_y) {
    if (grad_y) gyacc.reset(nyr * dp, true);
    if (grad_yw) gywacc.reset(nyr, true);
    cross_rows<T>(st, st.py, grad_y, grad_yw, [&](int64_t b, int64_t r0, int64_t nn, const double* tg, const double* tk) {
      const int64_t s = st.ysi[b];
      const double cxy = 2.0 * G[3 * b + 2] / (st.dx[b].sum * st.dy[s].sum);
      for (int64_t r = 0; r < nn; ++r) {
        if (grad_y)
          for (int64_t k = 0; k < d; ++k) gyacc[(r0 + r) * dp + k] += cxy * tg[r * dp + k];
        if (grad_yw) gywacc[r0 + r] += G[3 * b + 2] * (tk[r] / st.dx[b].sum - TT[3 * b + 2]) / st.dy[s].sum;
      }
    });
  }
  // weight-0 rows: their weights' gradient (the row sums against the set's packed columns)
  const T* xw = XW.numel() ? XW.data_ptr<T>() : nullptr;
  const T* yw = YW.numel() ? YW.data_ptr<T>() : nullptr;
  ZeroRows<T> zx, zy;
  if (grad_xw && xw != nullptr) zx = zero_rows_x<T>(st, pb, X, xw, SH);
  if (grad_yw && yw != nullptr)
    zy = zero_rows_y<T>(st, Y, yw, SH, [&](int64_t b, double v) {
      return G[3 * b + 2] * (v / st.dx[b].sum - TT[3 * b + 2]) / st.dy[st.ysi[b]].sum;
    });

  // combine per row (fp64), rounded once to the compute type
  at::Tensor gx = at::zeros({grad_x ? X.size(0) : 0, d}, X.options());
  at::Tensor gy = at::zeros({grad_y ? Y.size(0) : 0, d}, Y.options());
  at::Tensor gxw = at::zeros({grad_xw ? X.size(0) : 0}, X.options().dtype(at::kDouble));
  at::Tensor gyw = at::zeros({grad_yw ? Y.size(0) : 0}, X.options().dtype(at::kDouble));
  T* GX = gx.data_ptr<T>();
  T* GY = gy.data_ptr<T>();
  double* GXW = gxw.data_ptr<double>();
  double* GYW = gyw.data_ptr<double>();
  if (grad_x || grad_xw)
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t s = st.ysi[b];
        const double sw = st.dx[b].sum, sv = st.dy[s].sum, D = st.dx[b].D;
        const double cxx = 4.0 * G[3 * b] / D, cxy = 2.0 * G[3 * b + 2] / (sw * sv);
        for (int64_t p = st.px.row0(b); p < st.px.row0(b) + st.px.n[b]; ++p) {
          const int64_t i = st.px.src[p];
          if (grad_x)
            for (int64_t k = 0; k < d; ++k) GX[i * d + k] = T(cxx * rs.gxx[p * dp + k] + cxy * rs.gxy_x[p * dp + k]);
          if (grad_xw) {
            const double wi = double(st.px.w[p]), dD = unbiased ? 2.0 * (sw - wi) : 2.0 * sw;
            GXW[i] = G[3 * b] * (2.0 * rs.ksxx[p] - TT[3 * b] * dD) / D +
                     G[3 * b + 2] * (rs.ksxy_x[p] / sv - TT[3 * b + 2]) / sw;
          }
        }
        if (!zx.self.empty())
          for (int64_t p = zx.pk.row0(b); p < zx.pk.row0(b) + zx.pk.n[b]; ++p)
            GXW[zx.pk.src[p]] = G[3 * b] * (2.0 * zx.self[p] - TT[3 * b] * 2.0 * sw) / D +
                                G[3 * b + 2] * (zx.cross[p] / sv - TT[3 * b + 2]) / sw;
      }
    });
  if (need_y)
    for (int64_t s = 0; s < NY; ++s) {  // a shared y's pack sets may map to the same rows: serial
      double A = 0, C = 0;              // sum_b g_yy and sum_b g_yy t_yy over the sets using s
      for (int64_t b = 0; b < B; ++b)
        if (st.ysi[b] == s) {
          A += G[3 * b + 1];
          C += G[3 * b + 1] * TT[3 * b + 1];
        }
      const int64_t b = st.yset[s];  // not shared: the one set using s
      const double sv = st.dy[s].sum, D = st.dy[s].D;
      const double cyy = 4.0 * A / D, cxy = ytrans ? 0.0 : 2.0 * G[3 * b + 2] / (st.dx[b].sum * sv);
      for (int64_t p = st.py.row0(s); p < st.py.row0(s) + st.py.n[s]; ++p) {
        const int64_t i = st.py.src[p];
        if (grad_y)
          for (int64_t k = 0; k < d; ++k)
            GY[i * d + k] += T(cyy * rs.gyy[p * dp + k] + (ytrans ? gyacc[p * dp + k] : cxy * rs.gxy_y[p * dp + k]));
        if (grad_yw) {
          const double vi = double(st.py.w[p]), dD = unbiased ? 2.0 * (sv - vi) : 2.0 * sv;
          GYW[i] += (2.0 * A * rs.ksyy[p] - C * dD) / D +
                    (ytrans ? gywacc[p] : G[3 * b + 2] * (rs.ksxy_y[p] / st.dx[b].sum - TT[3 * b + 2]) / sv);
        }
      }
      if (!zy.self.empty())
        for (int64_t p = zy.pk.row0(s); p < zy.pk.row0(s) + zy.pk.n[s]; ++p)
          GYW[zy.pk.src[p]] += (2.0 * A * zy.self[p] - C * 2.0 * sv) / D + zy.cross[p];
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
  at::Tensor X = to_ct(x, ct), Y = to_ct(y, ct);
  at::Tensor XW = to_ct(x_weights, ct), YW = to_ct(y_weights, ct);
  at::Tensor SH = call_shifts(shifts, Y, YW, y_offsets, x_offsets, kind, ct);
  at::Tensor GT = grad_terms.to(at::kDouble).contiguous(), TT = terms.to(at::kDouble).contiguous();
  Problem pb = make_problem(x_offsets, y_offsets, SH, y.size(0));
  TORCH_CHECK(GT.numel() == 3 * pb.B && TT.numel() == 3 * pb.B, "wae_fast cpp backend: grad_terms / terms must be (B, 3)");
  grad_xw = grad_xw && x_weights.numel() > 0;
  grad_yw = grad_yw && y_weights.numel() > 0;
  const std::vector<double> P(params.begin(), params.end());
  std::vector<at::Tensor> g =
      ct == at::kDouble
          ? seg_bwd_t<double>(GT, TT, X, Y, pb, XW, YW, SH, int(kind), P, unbiased, grad_x, grad_y, grad_xw, grad_yw)
          : seg_bwd_t<float>(GT, TT, X, Y, pb, XW, YW, SH, int(kind), P, unbiased, grad_x, grad_y, grad_xw, grad_yw);
  auto empty = at::empty({0}, x.options());
  return {grad_x ? g[0].to(x.scalar_type()) : empty, grad_y ? g[1].to(y.scalar_type()) : empty,
          grad_xw ? g[2].to(x_weights.scalar_type()) : empty, grad_yw ? g[3].to(y_weights.scalar_type()) : empty};
}

}  // namespace

TORCH_LIBRARY_IMPL(wae_fast, CPU, m) {
  m.impl("mmd_segments_fwd_cpp", &seg_fwd_cpp);
  m.impl("mmd_segments_bwd_cpp", &seg_bwd_cpp);
}
