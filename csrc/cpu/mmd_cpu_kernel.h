// Fused, memory-flat MMD tile kernels for the CPU backend.
//
// This file is compiled once per instruction set, inside a namespace named WAE_CPU_NS with
// vectors of WAE_CPU_VBYTES bytes: by mmd_cpu.cpp for the baseline x86-64 ISA (32-byte GCC
// vectors, lowered to SSE pairs), and as its own translation unit by tiles_avx2.cpp (AVX2+FMA,
// 32 bytes) and tiles_avx512.cpp (AVX-512 F/BW/VL/DQ, 64 bytes), whose target options cover the
// whole file; mmd_cpu.cpp picks one at run time (cpu_isa(): CPU and OS support, or
// WAE_FAST_CPU_ISA).  With WAE_CPU_DECL_ONLY defined only the types and the declarations of
// run_block / run_stripe are emitted (mmd_cpu.cpp calls the variants compiled elsewhere).
//
// Layout (prepared by mmd_cpu.cpp):
//   A  (nA_pad x dp) row-major shifted points, rows padded to a multiple of kTile, columns
//      padded to dp (a multiple of the vector length) with zeros;
//   At (nA_pad / kTile, dp, kTile) the same, transposed per tile of kTile points (used when A is
//      the column operand);
//   nrmA (nA_pad) squared norms.
// The pair matrix is cut into kTile x kTile tiles.  Per tile: dot products by a 4 x 2L register
// micro-kernel, the squared distance, clamp, exact r_ii = 0, all kernel scales and dk/dr are
// evaluated in registers (epilogue), the kernel sum accumulated in a vector, and (only if a
// gradient is wanted) W = dk/dr stored into a tile buffer that two small matmuls consume:
//   row side  g_i += rowsum(W)_i a_i - (W b)_i,   column side g_j += colsum(W)_j b_j - (W^T a)_j.
// Symmetric (self) terms visit tiles J >= I only, off-diagonal tiles count twice.
// Work is split into a FIXED decomposition (a function of the problem size only) with fp64
// partial sums per task, combined in a fixed order.  Every gradient row is written by exactly one
// task at a time: row stripes when only the row side needs a gradient; otherwise groups of row
// blocks scheduled in rounds (a round-robin tournament over the groups for a self term, a Latin
// square for a cross term) in which the tasks of one round write disjoint rows.  No per-task
// gradient copies exist, and results are bit-identical whatever the thread count or scheduling.

#ifndef WAE_CPU_NS
#error "define WAE_CPU_NS before including mmd_cpu_kernel.h"
#endif
#ifndef WAE_CPU_VBYTES
#define WAE_CPU_VBYTES 32
#endif

namespace WAE_CPU_NS {

using wae_fast::kMaxScales;
constexpr int64_t kTile = 64;  // rows and columns of a pair tile
constexpr int64_t kRotChunk = 32;  // coordinates per chunk of a rotated diagonal block (tile_forward)

//! Vectors of WAE_CPU_VBYTES bytes: L lanes of T, and the same-width integer vector.
template <class T> struct Vec;
template <> struct Vec<float> {
  typedef float V __attribute__((vector_size(WAE_CPU_VBYTES)));
  typedef int32_t I __attribute__((vector_size(WAE_CPU_VBYTES)));
  typedef int32_t IS;
  static constexpr int L = WAE_CPU_VBYTES / 4;
  static I iota() {
    I v;
    for (int l = 0; l < L; ++l) v[l] = l;
    return v;
  }
};
template <> struct Vec<double> {
  typedef double V __attribute__((vector_size(WAE_CPU_VBYTES)));
  typedef int64_t I __attribute__((vector_size(WAE_CPU_VBYTES)));
  typedef int64_t IS;
  static constexpr int L = WAE_CPU_VBYTES / 8;
  static I iota() {
    I v;
    for (int l = 0; l < L; ++l) v[l] = l;
    return v;
  }
};

template <class T>
struct Operand {
  const T* rows;   // (n_pad x dp)
  const T* cols;   // (n_pad / kTile, dp, kTile): transposed per tile
  const T* nrm;    // (n_pad)
  int64_t n;       // valid points
  int64_t n_pad;   // multiple of kTile
};

template <class T>
struct Problem {
  Operand<T> a, b;  // rows from a, columns from b (a == b for a self term)
  int64_t dp;
  int64_t d;        // true dimension: the dot products stop there (the padding columns are 0)
  int kind;
  int S;
  T P[kMaxScales];
  bool symmetric;
  bool unbiased;
  // Optional weights (the mmd_segments family, segments_cpu.cpp): with wa (row weights, n_pad of
  // a) and wb (column weights, n_pad of b, 0 on padding) every pair counts w_i v_j k_ij and its
  // gradient weight is w_i v_j W_ij; null: the unweighted tiles (the code compiled before them).
  // ks_rows / ks_cols (fp64, rows of a / of b, may be null; weighted only) receive the per-row
  // sums sum_j v_j k_ij and per-column sums sum_i w_i k_ij (the weights' gradients), written by
  // the task that owns those rows as g_rows / g_cols.
  const T* wa = nullptr;
  const T* wb = nullptr;
  double* ks_rows = nullptr;
  double* ks_cols = nullptr;
  // Value-only diagonal tiles evaluate their diagonal L x L blocks by lane rotations (pairs
  // (i, i + s mod L), s = 1..L/2: the L(L-1)/2 pairs of a block in L/2 vectors instead of L):
  // a 64-point tile then evaluates half its pairs, as the big tiles do.  The sum is added in
  // another order than with gradients (the same value up to rounding), so the single mmd call,
  // whose value is the same bit for bit with or without gradients, leaves it off.
  bool rotate_diag = false;
  // Direct row output (segments_cpu.cpp: a set term of one row block against one column block,
  // whose row sums no other tile adds to): the row side's result v of row i goes straight to
  // out_rows[out_src[i] * d + k] = T(out_scale * double(v)), what the caller's pass over the
  // fp64 g_rows would write (0 + v, scaled, rounded once: the same bits) without their
  // zeroing, adds and read-back.  g_rows is then not written (padding rows: out_src -1).
  // out_add: out_rows[...] = T(double(out_rows[...]) + out_scale * double(v)) instead (a second
  // term's part added to the first's: the mmd_segments value parts, one per input).
  T* out_rows = nullptr;
  const int64_t* out_src = nullptr;
  double out_scale = 0.0;
  bool out_add = false;
  // Software prefetch (segments_cpu.cpp's per-set tasks: the next set's input rows, which the
  // task reads right after this set's tiles): row block I's first tile (its diagonal tile for a
  // symmetric term, column block 0 otherwise) prefetches chunk I of [prefetch, + prefetch_bytes)
  // cut into a.n_pad / kTile chunks, a few lines per group of 4 rows, into L2.  All at once (up
  // to 512 lines before a set's tiles) it changed nothing: the loads miss as often as without.
  const char* prefetch = nullptr;
  int64_t prefetch_bytes = 0;
};

template <class T>
double run_block(const Problem<T>& pb, int64_t I0, int64_t I1, int64_t J0, int64_t J1, bool tri, double* g_rows,
                 double* g_cols);
template <class T>
double run_stripe(const Problem<T>& pb, int64_t s, int64_t nstripes, double* g_rows, double* g_cols);

#ifndef WAE_CPU_DECL_ONLY

template <class V, class T>
static inline __attribute__((always_inline)) V vload(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <class V, class T>
static inline __attribute__((always_inline)) void vstore(T* p, V v) {
  __builtin_memcpy(p, &v, sizeof(V));
}
template <class T, class V>
static inline __attribute__((always_inline)) double hsum(V v) {
  double s = 0;
  for (int l = 0; l < Vec<T>::L; ++l) s += double(v[l]);
  return s;
}

//! The lane sums of four vectors (a micro-tile's four rows), as trees: two-source shuffles fold
//! the four into one vector of L/4 partial sums per row, then L/4 -> 1 within it (the chain of
//! L - 1 dependent scalar adds per row: ~4% of the samples in the tiles with gradients, B = 256
//! sets of 64 points, d = 8, forward + backward).
template <class T, class V>
static inline __attribute__((always_inline)) void hsum4(const V (&v)[4], T* out) {
  typedef typename Vec<T>::I I;
  constexpr int L = Vec<T>::L, Q = L / 4;
  I lo, hi, lo2, hi2;
  for (int l = 0; l < L; ++l) {
    lo[l] = l < L / 2 ? l : L + (l - L / 2);  // [a's low half | b's low half]
    hi[l] = lo[l] + L / 2;
    const int q = l / Q;  // quarter q: row q's partials, from t0 (rows 0, 1) or t1 (rows 2, 3)
    lo2[l] = (q < 2 ? 0 : L) + (q % 2) * (L / 2) + l % Q;
    hi2[l] = lo2[l] + Q;
  }
  const V t0 = __builtin_shuffle(v[0], v[1], lo) + __builtin_shuffle(v[0], v[1], hi);
  const V t1 = __builtin_shuffle(v[2], v[3], lo) + __builtin_shuffle(v[2], v[3], hi);
  V u = __builtin_shuffle(t0, t1, lo2) + __builtin_shuffle(t0, t1, hi2);
  for (int w = Q / 2; w >= 1; w /= 2) {
    I p;
    for (int l = 0; l < L; ++l) p[l] = l % Q < w ? l + w : l;
    u += __builtin_shuffle(u, p);
  }
  for (int r = 0; r < 4; ++r) out[r] = u[r * Q];
}

// Vectorised exp for x <= 0 (Cephes expf polynomial, ~1 ulp), flushing to 0 below -87.3.
static inline __attribute__((always_inline)) Vec<float>::V vexp_neg(Vec<float>::V x) {
  typedef Vec<float>::V V;
  typedef Vec<float>::I I;
  const V zero = V{} + 0.0f;
  I under = x < -87.3f;
  x = under ? zero - 87.3f : x;
  V t = x * 1.44269504088896341f;
  I ti = __builtin_convertvector(t, I);
  V tf = __builtin_convertvector(ti, V);
  I adj = tf > t;  // -1 where truncation rounded up (t < 0)
  ti = ti + adj;
  tf = __builtin_convertvector(ti, V);
  V f = x - tf * 0.693359375f - tf * (-2.12194440e-4f);
  V z = f * f;
  V y = ((((1.9875691500e-4f * f + 1.3981999507e-3f) * f + 8.3334519073e-3f) * f + 4.1665795894e-2f) * f +
         1.6666665459e-1f) * f + 5.0000001201e-1f;
  y = y * z + f + 1.0f;
  I e = (ti + 127) << 23;
  V p2;
  __builtin_memcpy(&p2, &e, sizeof(V));
  y = y * p2;
  return under ? zero : y;
}
static inline __attribute__((always_inline)) Vec<double>::V vexp_neg(Vec<double>::V x) {
  Vec<double>::V y;
  for (int l = 0; l < Vec<double>::L; ++l) y[l] = std::exp(x[l]);
  return y;
}

// The per-pair kernel math is wae_fast::imq_eval / rbf_eval (csrc/include/wae_fast/tile_math.h,
// shared with the CUDA tiles and the host tests) evaluated on vectors of L pairs: IMQ with one
// IEEE division per pair of scales (a vrcpps + Newton variant was measured on AVX2: no faster,
// and its 12-bit estimate biased the fp32 sums by ~1e-8 relative), except fp32 on AVX-512
// (WAE_CPU_RCP14, tiles_avx512.cpp): imq_eval_rcp with vrcp14ps + one Newton step per scale,
// measured faster (benchmarks/cpu_peak.cpp imq_forms); RBF with the vectorised exp above, one
// per pair where the gamma ratios are 2 or 4 (run_term sorts the gammas ascending).
template <class V>
struct VExpNeg {
  V operator()(V x) const { return vexp_neg(x); }
};

#ifdef WAE_CPU_RCP14
//! 1/x from vrcp14ps (relative error < 2^-14) and one Newton step (~2^-28 + rounding: ~1 ulp).
//! A result below the normal range is flushed to 0 by the estimate: the Newton step keeps 0
//! (1 - x * 0 = 1), so x = FLT_MAX (imq_eval_rcp's r = inf) gives 0.
struct VRcp14 {
  Vec<float>::V operator()(Vec<float>::V x) const {
    typedef Vec<float>::V V;
    static_assert(sizeof(V) == sizeof(__m512), "64-byte vectors");
    __m512 xm;
    __builtin_memcpy(&xm, &x, sizeof(V));
    const __m512 ym = _mm512_rcp14_ps(xm);
    V y;
    __builtin_memcpy(&y, &ym, sizeof(V));
    return y + y * (1.0f - x * y);
  }
};
#endif

#if WAE_CPU_VBYTES == 64
//! v with its lanes rotated by K (lane l holds v[(l + K) mod L]): valignd / valignq, one
//! in-lane-order shuffle of the register with itself.
template <class T, int K>
static inline __attribute__((always_inline)) typename Vec<T>::V lane_rot(typename Vec<T>::V v) {
  __m512i m;
  __builtin_memcpy(&m, &v, 64);
  if constexpr (sizeof(T) == 4)
    m = _mm512_alignr_epi32(m, m, K);
  else
    m = _mm512_alignr_epi64(m, m, K);
  __builtin_memcpy(&v, &m, 64);
  return v;
}
template <class T, int... S>
static inline __attribute__((always_inline)) void lane_rot_dots_seq(typename Vec<T>::V* dots, typename Vec<T>::V v,
                                                                    std::integer_sequence<int, S...>) {
  ((dots[S] += v * lane_rot<T, S + 1>(v)), ...);
}
//! dots[s - 1] += v * (v rotated by s), s = 1 .. L/2: one coordinate of the rotations' dot products.
template <class T>
static inline __attribute__((always_inline)) void lane_rot_dots(typename Vec<T>::V* dots, typename Vec<T>::V v) {
  lane_rot_dots_seq<T>(dots, v, std::make_integer_sequence<int, Vec<T>::L / 2>{});
}
#endif

// One kTile x kTile tile: returns the kernel sum over valid pairs (in fp64, from a compute-type
// vector accumulator); with GRAD, stores W (kTile x kTile), row sums RS and column sums CS (CS
// null: no column side reads them, a diagonal tile's or one without g_cols; not accumulated).
// WT (weighted, pb.wa / pb.wb): pairs count w_i v_j k_ij, W holds w_i v_j W_ij, and with
// KR != nullptr, KR / KC receive the tile's sum_j v_j k_ij per row and sum_i w_i k_ij per column.
template <class T, int KIND, bool GRAD, bool WT = false>
static double tile_forward(const Problem<T>& pb, int64_t i0, int64_t j0, bool diag, T* __restrict W,
                           T* __restrict RS, T* __restrict CS, T* __restrict KR = nullptr,
                           T* __restrict KC = nullptr) {
  typedef typename Vec<T>::V V;
  typedef typename Vec<T>::I I;
  constexpr int L = Vec<T>::L;
  const int64_t dp = pb.dp;
  // the row operand: its row-major copy, or (null rows: segments_cpu.cpp packs none for a pass
  // without gradients to the points) its per-tile transpose (coordinate k of row i0 + i at
  // At[k * kTile + i]); the values are the same
  const T* __restrict A = pb.a.rows;
  const T* __restrict At = pb.a.cols + (i0 / kTile) * dp * kTile;
  // column operand packed per tile: (n_pad / kTile) blocks of (dp x kTile), contiguous, so the
  // k-rows of a tile do not alias in L1 (a plain (dp x n_pad) transpose has a 4 KiB-multiple stride)
  const T* __restrict Bt = pb.b.cols + (j0 / kTile) * dp * kTile;
  constexpr int64_t ldb = kTile;
  const T* __restrict na = pb.a.nrm;
  const T* __restrict nb = pb.b.nrm;
  const int S = pb.S;
  T P[kMaxScales];
  for (int s = 0; s < S; ++s) P[s] = pb.P[s];
  const V zero = V{} + T(0);
  const I izero = I{} + 0;
  const I iota = Vec<T>::iota();
  V ksum = zero;
  const bool want_cs = GRAD && CS != nullptr;
  if (want_cs)
    for (int j = 0; j < kTile; ++j) CS[j] = T(0);
  const bool want_ks = WT && KR != nullptr;
  if (want_ks)
    for (int j = 0; j < kTile; ++j) KR[j] = KC[j] = T(0);
  // columns up to the last valid one, in whole micro-tiles (a set's last tile, small sets):
  // the others are padding; with GRAD their W entries are zeroed below (the gradient matmuls
  // read whole tile rows, and a stale W could be NaN)
  const int jlim = int(std::min<int64_t>(kTile, (pb.b.n - j0 + 2 * L - 1) / (2 * L) * (2 * L)));
  // a diagonal tile without row / column outputs skips the vectors of columns wholly below the
  // diagonal (3/8 of a 64-point tile with 16 lanes; its sum counts j > i twice, see smask below)
  const bool tri = diag && !GRAD && !want_ks;
  const bool rot = tri && pb.rotate_diag;  // the diagonal blocks by rotations, after the loop
  // a diagonal tile with GRAD evaluates the vectors on and above its diagonal L x L blocks only,
  // and fills the blocks below by mirroring (W is symmetric bit for bit: the same products in the
  // same order), their row sums from the mirrored blocks' column sums: after the loop (at every
  // d: B = 256 sets of 64 points, forward + backward, 2-5% faster at d = 64, 8-12% at d = 8)
  const bool mirror = diag && GRAD && !want_ks;
  // this tile's chunk of the prefetch range (Problem::prefetch), pf_per bytes per row group
  int64_t pf0 = 0, pf1 = 0, pf_per = 0;
  if (pb.prefetch != nullptr && (pb.symmetric ? diag : j0 == 0)) {
    const int64_t chunk = (pb.prefetch_bytes + pb.a.n_pad / kTile * 64 - 1) / (pb.a.n_pad / kTile * 64) * 64;
    pf0 = std::min(pb.prefetch_bytes, i0 / kTile * chunk);
    pf1 = std::min(pb.prefetch_bytes, pf0 + chunk);
    const int64_t groups = (std::min<int64_t>(kTile, pb.a.n - i0) + 3) / 4;  // up to the padding's break
    pf_per = (chunk + 64 * groups - 1) / (64 * groups) * 64;
  }
  for (int ib = 0; ib < kTile; ib += 4) {
    const int64_t ibase = i0 + ib;
    // into L2 (prefetcht1): into L1 measured the same, and would evict this tile's operands
    for (int64_t o = pf0 + (ib / 4) * pf_per, o1 = std::min(pf1, o + pf_per); o < o1; o += 64)
      __builtin_prefetch(pb.prefetch + o, 0, 2);
    if (ibase >= pb.a.n) {  // whole group of rows is padding
      if (GRAD) {
        for (int r = ib; r < kTile; ++r) {
          RS[r] = T(0);
          for (int j = 0; j < kTile; ++j) W[r * kTile + j] = T(0);
        }
      }
      break;
    }
    V rs[4] = {zero, zero, zero, zero};
    V rk[4] = {zero, zero, zero, zero};  // WT: per-row sum_j v_j k_ij
    for (int jb = 0; jb < jlim; jb += 2 * L) {
      // tri: the vectors h < h0 hold columns below every row of the group (they would add
      // zeros), or (rot) the group's diagonal block; mirror: the blocks below the diagonal
      // (their sums add zeros too: the value is the same bit for bit)
      const int h0 = tri || mirror ? std::max(0, std::min(2, ((ib / L + (rot ? 1 : 0)) * L - jb) / L)) : 0;
      if (h0 == 2) continue;
      V acc[4][2];
      for (int r = 0; r < 4; ++r) acc[r][0] = acc[r][1] = zero;
      const T* bp = Bt + jb;
      // row (ib + r, k) at a0[r RS + k KS]: the row-major copy when there is one (4% faster at
      // d = 8 for the big tiles), else the per-tile transpose
      auto dot = [&](const T* a0, auto rs, auto ks) {
        constexpr int64_t RS = decltype(rs)::value, KS = decltype(ks)::value;
        const int64_t lda = RS == 0 ? dp : RS;  // RS == 0: the row stride is dp
        if (h0 == 0) {
          for (int64_t k = 0; k < pb.d; ++k) {
            V b0 = vload<V>(bp + k * ldb), b1 = vload<V>(bp + k * ldb + L);
            for (int r = 0; r < 4; ++r) {
              T av = a0[r * lda + k * KS];
              acc[r][0] += av * b0;
              acc[r][1] += av * b1;
            }
          }
        } else {
          for (int64_t k = 0; k < pb.d; ++k) {
            V b1 = vload<V>(bp + k * ldb + L);
            for (int r = 0; r < 4; ++r) acc[r][1] += a0[r * lda + k * KS] * b1;
          }
        }
      };
      if (A != nullptr)
        dot(A + ibase * dp, std::integral_constant<int64_t, 0>{}, std::integral_constant<int64_t, 1>{});
      else
        dot(At + ib, std::integral_constant<int64_t, 1>{}, std::integral_constant<int64_t, kTile>{});
      V csacc[2] = {zero, zero};  // column sums of these 4 rows (one RMW of CS per vector)
      V ckacc[2] = {zero, zero};  // WT: column sums of w_i k_ij
      for (int r = 0; r < 4; ++r) {
        const int64_t i = ibase + r;
        const I rowvalid = izero + (i < pb.a.n ? -1 : 0);
        const T nai = na[i];
        const T wi = WT ? pb.wa[i] : T(1);
        for (int h = h0; h < 2; ++h) {
          const int64_t jbase = j0 + jb + h * L;
          V nbv = vload<V>(nb + jbase);
          V rr = nai + nbv - T(2) * acc[r][h];
          rr = rr < zero ? zero : rr;  // keeps NaN (a NaN distance is not r = 0)
          I jidx = iota + (typename Vec<T>::IS)(jbase);
          I valid = (jidx < (typename Vec<T>::IS)(pb.b.n)) & rowvalid;
          // a diagonal tile's vector wholly above row i (every j > i: no j == i to exclude, every
          // pair counted twice) skips the masks of the diagonal, the same values (B = 256 sets of
          // 64 points, forward: 0-4% faster)
          const bool above = diag && jbase > i;
          const bool dg = diag && !above;
          I dmask = izero;
          if (dg) {
            dmask = jidx == (typename Vec<T>::IS)(i);
            rr = dmask ? zero : rr;
          }
          V kv = zero, wv = zero;
          if (KIND == wae_fast::KIND_IMQ) {
#ifdef WAE_CPU_RCP14
            if constexpr (std::is_same<T, float>::value)
              wae_fast::imq_eval_rcp<V, T>(rr, P, S, kv, wv, VRcp14());
            else
#endif
              wae_fast::imq_eval<V, T>(rr, P, S, kv, wv);
          } else if (KIND == wae_fast::KIND_RBF) {
            wae_fast::rbf_eval<V, T>(rr, P, S, kv, wv, VExpNeg<V>());
          } else {  // polynomial: from the dot product (unshifted points), no row-sum term
            wae_fast::poly_eval<V, T>(acc[r][h], P, kv, wv);
          }
          I kmask = pb.unbiased ? (valid & ~dmask) : valid;
          // the tile sum of a diagonal tile counts j > i twice, j == i once (when counted) and
          // j < i not at all, with or without GRAD (the same value either way, bit for bit:
          // the micro-tiles a value-only pass skips would add zeros)
          I smask = kmask;
          V ks = above ? kv + kv : kv;
          if (dg) {
            smask = kmask & (jidx >= (typename Vec<T>::IS)(i));
            ks = (jidx > (typename Vec<T>::IS)(i)) ? kv + kv : kv;
          }
          V vw = zero;
          if (WT) {
            vw = vload<V>(pb.wb + jbase);
            ksum += wi * ((smask ? ks : zero) * vw);
            if (want_ks) {
              const V km = kmask ? kv : zero;
              rk[r] += km * vw;
              ckacc[h] += wi * km;
            }
          } else {
            ksum += smask ? ks : zero;
          }
          if (GRAD) {
            // r-kernels: W_ii multiplies a_i - a_i = 0; the polynomial's k(a_i, a_i) counts
            // unless the estimator excludes it
            wv = (KIND == wae_fast::KIND_POLY ? kmask : (valid & ~dmask)) ? wv : zero;
            if (WT) wv = wv * (vw * wi);
            vstore(W + (ib + r) * kTile + jb + h * L, wv);
            if (KIND != wae_fast::KIND_POLY) {
              rs[r] += wv;
              if (want_cs) csacc[h] += wv;
            }
          }
        }
      }
      if (want_cs) {
        vstore(CS + jb, vload<V>(CS + jb) + csacc[0]);
        vstore(CS + jb + L, vload<V>(CS + jb + L) + csacc[1]);
      }
      if (want_ks) {
        vstore(KC + jb, vload<V>(KC + jb) + ckacc[0]);
        vstore(KC + jb + L, vload<V>(KC + jb + L) + ckacc[1]);
      }
    }
    if (GRAD) {
      // a diagonal tile's row sums as trees: its short rows (the blocks below the diagonal
      // skipped) leave little work to hide the scalar chain behind (B = 256 sets of 64 points,
      // d = 8, forward + backward: 2-4% faster with it, near this host's noise); the big
      // tiles keep the chain (with trees an N = M = 4096 call at d = 8 measured ~2% slower)
      if (diag) {
        hsum4<T>(rs, RS + ib);
      } else {
        for (int r = 0; r < 4; ++r) {
          T s = T(0);
          for (int l = 0; l < L; ++l) s += rs[r][l];
          RS[ib + r] = s;
        }
      }
      for (int r = 0; r < 4; ++r)
        for (int j = jlim; j < kTile; ++j) W[(ib + r) * kTile + j] = T(0);
    }
    if (want_ks)
      for (int r = 0; r < 4; ++r) {
        T s = T(0);
        for (int l = 0; l < L; ++l) s += rk[r][l];
        KR[ib + r] = s;
      }
  }
  if (mirror) {
    // block (q, p) below the diagonal = the transpose of block (p, q) above it; the row sums of
    // its rows are the column sums of block (p, q).  Padding rows and columns of W are 0 in
    // both (rows past the last valid group were zeroed above, columns by the valid mask).
    // The transpose by 4 x 4 sub-blocks in registers (two rounds of two-source shuffles): one
    // scalar store per element was ~6% of the samples in the tiles with gradients (B = 256
    // sets of 64 points, d = 8, forward + backward; ~4% of the call faster without it)
    typedef T V4 __attribute__((vector_size(4 * sizeof(T))));
    typedef typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type E4;
    typedef E4 I4 __attribute__((vector_size(4 * sizeof(T))));
    const I4 lo = {0, 4, 1, 5}, hi = {2, 6, 3, 7}, lo2 = {0, 1, 4, 5}, hi2 = {2, 3, 6, 7};
    for (int q = 1; q * L < kTile; ++q)
      for (int p = 0; p < q; ++p) {
        V cs = zero;
        for (int jj = 0; jj < L; ++jj) cs += vload<V>(W + (p * L + jj) * kTile + q * L);
        for (int a = 0; a < L; a += 4)
          for (int b = 0; b < L; b += 4) {
            const T* src = W + (p * L + a) * kTile + q * L + b;
            const V4 r0 = vload<V4>(src), r1 = vload<V4>(src + kTile), r2 = vload<V4>(src + 2 * kTile),
                     r3 = vload<V4>(src + 3 * kTile);
            const V4 t0 = __builtin_shuffle(r0, r1, lo), t1 = __builtin_shuffle(r0, r1, hi),
                     t2 = __builtin_shuffle(r2, r3, lo), t3 = __builtin_shuffle(r2, r3, hi);
            T* dst = W + (q * L + b) * kTile + p * L + a;
            vstore(dst, __builtin_shuffle(t0, t2, lo2));
            vstore(dst + kTile, __builtin_shuffle(t0, t2, hi2));
            vstore(dst + 2 * kTile, __builtin_shuffle(t1, t3, lo2));
            vstore(dst + 3 * kTile, __builtin_shuffle(t1, t3, hi2));
          }
        if (KIND != wae_fast::KIND_POLY)
          for (int ii = 0; ii < L; ++ii) RS[q * L + ii] += cs[ii];
      }
  }
  if (rot) {
    // diagonal block q: its points p0 + l in the lanes (coordinate k at Bt[k kTile + q L]); the
    // pair (l, l + s mod L) of rotation s counts twice, except s = L/2, where lanes l and
    // l + L/2 hold the same pair (once each); j == i (r = 0, as above) once, when counted
    typedef typename Vec<T>::IS IS;
    for (int q = 0; q * L < kTile; ++q) {
      const int64_t p0 = j0 + q * L;
      if (p0 >= pb.b.n) break;
      const T* cb = Bt + q * L;
      const V nv = vload<V>(nb + p0);
      const I valid = (iota + IS(p0)) < IS(pb.b.n);
      const V wv = WT ? vload<V>(pb.wb + p0) : zero;
      auto eval = [&](V rr, V dot) {
        V kv = zero, wd = zero;
        if (KIND == wae_fast::KIND_IMQ) {
#ifdef WAE_CPU_RCP14
          if constexpr (std::is_same<T, float>::value)
            wae_fast::imq_eval_rcp<V, T>(rr, P, S, kv, wd, VRcp14());
          else
#endif
            wae_fast::imq_eval<V, T>(rr, P, S, kv, wd);
        } else if (KIND == wae_fast::KIND_RBF) {
          wae_fast::rbf_eval<V, T>(rr, P, S, kv, wd, VExpNeg<V>());
        } else {
          wae_fast::poly_eval<V, T>(dot, P, kv, wd);
        }
        return kv;
      };
      if (!pb.unbiased) {
        V dot = zero;
        if (KIND == wae_fast::KIND_POLY)
          for (int64_t k = 0; k < pb.d; ++k) {
            const V v = vload<V>(cb + k * kTile);
            dot += v * v;
          }
        const V kv = eval(zero, dot);
        ksum += valid ? (WT ? wv * (kv * wv) : kv) : zero;
      }
      // the dot products of the rotations, the sums over k in the same order (the same bits
      // either way).  64-byte vectors: rotation s of the block's coordinates in the register
      // (valignd, lane_rot): per coordinate one aligned load, L/2 shuffles and L/2 FMAs; the
      // unaligned loads below split across cache lines at that width (two loads each): B = 256
      // sets of 64 points, forward, the tiles' samples 3-8% fewer at d = 8, 5-10% at d = 32 and
      // 64, 6-12% at d = 128 and 256 (perf, fixed calls).  32-byte vectors: from a copy of the
      // block's coordinates with every point twice (lanes l and l + L: point l), where rotation
      // s is the (unaligned) vector at lane s: loads instead of general lane shuffles (vpermps:
      // 3-4% slower at d = 32 and 64, the same at 8 and 16)
      V dots[L / 2];
      for (int sr = 0; sr < L / 2; ++sr) dots[sr] = zero;
#if WAE_CPU_VBYTES == 64
      for (int64_t k = 0; k < pb.d; ++k) lane_rot_dots<T>(dots, vload<V>(cb + k * kTile));
#else
      alignas(64) T dbl[kRotChunk * 2 * L];
      for (int64_t k0 = 0; k0 < pb.d; k0 += kRotChunk) {
        const int64_t kn = std::min<int64_t>(kRotChunk, pb.d - k0);
        for (int64_t k = 0; k < kn; ++k) {
          const V v = vload<V>(cb + (k0 + k) * kTile);
          vstore(dbl + k * 2 * L, v);
          vstore(dbl + k * 2 * L + L, v);
        }
        for (int64_t k = 0; k < kn; ++k) {
          const V v = vload<V>(dbl + k * 2 * L);
          for (int sr = 1; sr <= L / 2; ++sr) dots[sr - 1] += v * vload<V>(dbl + k * 2 * L + sr);
        }
      }
#endif
      for (int sr = 1; sr <= L / 2; ++sr) {
        const I perm = (iota + IS(sr)) & IS(L - 1);
        const V acc = dots[sr - 1];
        V rr = nv + __builtin_shuffle(nv, perm) - T(2) * acc;
        rr = rr < zero ? zero : rr;  // keeps NaN
        const I ok = valid & __builtin_shuffle(valid, perm);
        const V kv = eval(rr, acc);
        const V ks = 2 * sr < L ? kv + kv : kv;
        ksum += ok ? (WT ? wv * (ks * __builtin_shuffle(wv, perm)) : ks) : zero;
      }
    }
  }
  return hsum<T>(ksum);
}

//! One coordinate v of a direct row output at op (Problem::out_rows): written, or added (out_add).
template <class T>
static inline __attribute__((always_inline)) void put_direct(const Problem<T>& pb, T* op, T v) {
  const double s = pb.out_scale * (0.0 + double(v));  // 0 + v: -0 as g gives
  *op = pb.out_add ? T(double(*op) + s) : T(s);
}

//! Row i's coordinates k0 .. k0 + n - 1 of a row-side result: added to the fp64 g, or written
//! to pb.out_rows (see Problem::out_rows; coordinates >= d and padding rows are not written).
template <bool DIRECT, class T, class V>
static inline __attribute__((always_inline)) void put_row(const Problem<T>& pb, double* __restrict g, int64_t i,
                                                          int64_t k0, const V& out, int n) {
  if constexpr (!DIRECT) {
    double* gp = g + i * pb.dp + k0;
    for (int l = 0; l < n; ++l) gp[l] += double(out[l]);
    return;
  }
  if (i >= pb.a.n) return;
  T* op = pb.out_rows + pb.out_src[i] * pb.d + k0;
  constexpr int L = Vec<T>::L;
  if (n == L && k0 + L <= pb.d) {  // a whole vector: converted, scaled and stored as one
    typedef double VD __attribute__((vector_size(sizeof(double) * L)));
    VD s = pb.out_scale * (__builtin_convertvector(out, VD) + 0.0);
    if (pb.out_add) s = __builtin_convertvector(vload<V>(op), VD) + s;
    vstore(op, __builtin_convertvector(s, V));
    return;
  }
  const int m = int(std::min<int64_t>(n, pb.d - k0));
  for (int l = 0; l < m; ++l) put_direct(pb, op + l, out[l]);
}

// Row side: g[i0 + i] += RS_i a_i - (W b)_i   (g: fp64, n_pad x dp)
template <class T, bool DIRECT = false>
static void tile_grad_rows(const Problem<T>& pb, int64_t i0, int64_t j0, const T* __restrict W,
                           const T* __restrict RS, double* __restrict g) {
  typedef typename Vec<T>::V V;
  constexpr int L = Vec<T>::L;
  const int64_t dp = pb.dp;
  const T* __restrict A = pb.a.rows;
  const T* __restrict B = pb.b.rows;
  const int64_t jn = std::min<int64_t>(kTile, pb.b.n - j0);
  const int64_t in = std::min<int64_t>(kTile, pb.a.n - i0);
  const V zero = V{} + T(0);
  for (int64_t ib = 0; ib < in; ib += 4) {
    int64_t kc = 0;
    for (; kc + 2 * L <= dp; kc += 2 * L) {  // 4 rows x 2 vectors: 8 FMAs per 2 loads + 4 broadcasts
      V acc[4][2] = {{zero, zero}, {zero, zero}, {zero, zero}, {zero, zero}};
      for (int64_t j = 0; j < jn; ++j) {
        const T* bp = B + (j0 + j) * dp + kc;
        V b0 = vload<V>(bp), b1 = vload<V>(bp + L);
        for (int r = 0; r < 4; ++r) {
          const T wv = W[(ib + r) * kTile + j];
          acc[r][0] += wv * b0;
          acc[r][1] += wv * b1;
        }
      }
      for (int r = 0; r < 4; ++r) {
        const int64_t i = i0 + ib + r;
        for (int h = 0; h < 2; ++h) {
          V out = RS[ib + r] * vload<V>(A + i * dp + kc + h * L) - acc[r][h];
          put_row<DIRECT>(pb, g, i, kc + h * L, out, L);
        }
      }
    }
    for (; kc < dp; kc += L) {
      V acc[4] = {zero, zero, zero, zero};
      for (int64_t j = 0; j < jn; ++j) {
        V bv = vload<V>(B + (j0 + j) * dp + kc);
        for (int r = 0; r < 4; ++r) acc[r] += W[(ib + r) * kTile + j] * bv;
      }
      for (int r = 0; r < 4; ++r) {
        const int64_t i = i0 + ib + r;
        V out = RS[ib + r] * vload<V>(A + i * dp + kc) - acc[r];
        put_row<DIRECT>(pb, g, i, kc, out, L);
      }
    }
  }
}

// Column side: g[j0 + j] += CS_j b_j - (W^T a)_j
template <class T>
static void tile_grad_cols(const Problem<T>& pb, int64_t i0, int64_t j0, const T* __restrict W,
                           const T* __restrict CS, double* __restrict g) {
  typedef typename Vec<T>::V V;
  constexpr int L = Vec<T>::L;
  const int64_t dp = pb.dp;
  const T* __restrict A = pb.a.rows;
  const T* __restrict B = pb.b.rows;
  const int64_t jn = std::min<int64_t>(kTile, pb.b.n - j0);
  const int64_t in = std::min<int64_t>(kTile, pb.a.n - i0);
  const V zero = V{} + T(0);
  for (int64_t jb = 0; jb < jn; jb += 4) {
    int64_t kc = 0;
    for (; kc + 2 * L <= dp; kc += 2 * L) {
      V acc[4][2] = {{zero, zero}, {zero, zero}, {zero, zero}, {zero, zero}};
      for (int64_t i = 0; i < in; ++i) {
        const T* ap = A + (i0 + i) * dp + kc;
        V a0 = vload<V>(ap), a1 = vload<V>(ap + L);
        const T* wr = W + i * kTile + jb;
        for (int c = 0; c < 4; ++c) {
          acc[c][0] += wr[c] * a0;
          acc[c][1] += wr[c] * a1;
        }
      }
      for (int c = 0; c < 4; ++c) {
        const int64_t j = j0 + jb + c;
        for (int h = 0; h < 2; ++h) {
          V out = CS[jb + c] * vload<V>(B + j * dp + kc + h * L) - acc[c][h];
          double* gp = g + j * dp + kc + h * L;
          for (int l = 0; l < L; ++l) gp[l] += double(out[l]);
        }
      }
    }
    for (; kc < dp; kc += L) {
      V acc[4] = {zero, zero, zero, zero};
      for (int64_t i = 0; i < in; ++i) {
        V av = vload<V>(A + (i0 + i) * dp + kc);
        const T* wr = W + i * kTile + jb;
        for (int c = 0; c < 4; ++c) acc[c] += wr[c] * av;
      }
      for (int c = 0; c < 4; ++c) {
        const int64_t j = j0 + jb + c;
        V out = CS[jb + c] * vload<V>(B + j * dp + kc) - acc[c];
        double* gp = g + j * dp + kc;
        for (int l = 0; l < L; ++l) gp[l] += double(out[l]);
      }
    }
  }
}

// Small d (4 d <= L: most lanes of a vector over the coordinates would be padding): the same two
// products vectorised over the tile's 64 columns j instead.  Row side: (W b)_ik is the dot
// product of row i of W with row k of the per-tile transposed column operand Bt (both
// j-contiguous); column side: (W^T a)_jk accumulates W[i, j..] * a_ik over the rows i.  W is 0
// at padding rows and columns, and the padding points are 0, so no masks are needed.
// (The row side pays one horizontal sum per row and coordinate per tile: by op count that costs
// about what the saved lanes gain once 4 d > L, and the one d = 8 AVX-512 row measured with
// 2 d <= L on the shared machine showed no clear gain.)
template <class T>
static inline bool small_d_grad(const Problem<T>& pb) {
  return 4 * pb.d <= Vec<T>::L;
}

//! Sum of the lanes of v, as a tree (depth log2 L instead of a chain of L - 1 adds).
template <class T, class V>
static inline __attribute__((always_inline)) T hsum_tree(V v) {
  constexpr int L = Vec<T>::L;
  alignas(64) T t[L];
  vstore(t, v);
  for (int w = L / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) t[l] += t[l + w];
  return t[0];
}

template <class T, bool DIRECT = false>
static void tile_grad_rows_small(const Problem<T>& pb, int64_t i0, int64_t j0, const T* __restrict W,
                                 const T* __restrict RS, double* __restrict g) {
  typedef typename Vec<T>::V V;
  constexpr int L = Vec<T>::L;
  const int64_t dp = pb.dp, d = pb.d;
  const T* __restrict A = pb.a.rows;
  const T* __restrict Bt = pb.b.cols + (j0 / kTile) * dp * kTile;
  const int64_t in = std::min<int64_t>(kTile, pb.a.n - i0);
  for (int64_t i = 0; i < in; ++i) {
    const T* wr = W + i * kTile;
    for (int64_t k = 0; k < d; ++k) {
      V acc = V{};
      for (int jb = 0; jb < kTile; jb += L) acc += vload<V>(wr + jb) * vload<V>(Bt + k * kTile + jb);
      const T wb = hsum_tree<T>(acc);
      const T v = RS[i] * A[(i0 + i) * dp + k] - wb;
      if constexpr (!DIRECT)
        g[(i0 + i) * dp + k] += double(v);
      else
        put_direct(pb, pb.out_rows + pb.out_src[i0 + i] * d + k, v);
    }
  }
}

template <class T>
static void tile_grad_cols_small(const Problem<T>& pb, int64_t i0, int64_t j0, const T* __restrict W,
                                 const T* __restrict CS, double* __restrict g) {
  typedef typename Vec<T>::V V;
  constexpr int L = Vec<T>::L;
  constexpr int NV = kTile / L;
  const int64_t dp = pb.dp, d = pb.d;
  const T* __restrict A = pb.a.rows;
  const T* __restrict B = pb.b.rows;
  const int64_t jn = std::min<int64_t>(kTile, pb.b.n - j0);
  const int64_t in = std::min<int64_t>(kTile, pb.a.n - i0);
  for (int64_t k = 0; k < d; ++k) {
    V acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = V{};
    for (int64_t i = 0; i < in; ++i) {
      const T av = A[(i0 + i) * dp + k];
      for (int v = 0; v < NV; ++v) acc[v] += av * vload<V>(W + i * kTile + v * L);
    }
    alignas(64) T wa[kTile];
    for (int v = 0; v < NV; ++v) vstore(wa + v * L, acc[v]);
    for (int64_t j = 0; j < jn; ++j) g[(j0 + j) * dp + k] += double(CS[j] * B[(j0 + j) * dp + k] - wa[j]);
  }
}

// Middle d (fp32, 4 d > L >= 2 d: d = 5..8 with 16 lanes, 3..4 with 8 on AVX2): a vector over the
// coordinates would be half padding, and the small-d path's horizontal sums cost about what the
// saved lanes gain.  Instead each vector holds TWO points' coordinates, interleaved (lane 2k + e:
// coordinate k of point e), and W is read two adjacent entries at a time (one 64-bit broadcast):
// half the FMAs of tile_grad_rows / tile_grad_cols, no padding lanes.  Row side: the two
// interleaved points are columns 2q, 2q + 1 (both partial sums of row i; one swap + add at the
// end); column side: they are the output columns 2q, 2q + 1 against row i's coordinates
// duplicated.  W is 0 at padding rows and columns and the padding points are 0.
// Only where the vectors are native (WAE_CPU_PAIR_GRAD: tiles_avx2.cpp, tiles_avx512.cpp): the
// baseline's 32-byte vectors are SSE pairs, whose two-source shuffles made it ~20% slower at d = 4.
template <class T>
static inline bool pair_d_grad(const Problem<T>& pb) {
#ifdef WAE_CPU_PAIR_GRAD
  return std::is_same<T, float>::value && 2 * pb.d <= Vec<T>::L && !small_d_grad(pb);
#else
  (void)pb;
  return false;
#endif
}

//! (W[p], W[p + 1]) repeated over the vector: one 64-bit broadcast (integer lanes: the bits are
//! copied, never rounded).
static inline __attribute__((always_inline)) Vec<float>::V bcast_pair(const float* p) {
  typedef int64_t Q __attribute__((vector_size(WAE_CPU_VBYTES)));
  int64_t bits;
  __builtin_memcpy(&bits, p, sizeof(bits));
  const Q q = Q{} + bits;
  Vec<float>::V v;
  __builtin_memcpy(&v, &q, sizeof(v));
  return v;
}
//! The fp64 form exists for the templates only (pair_d_grad is false for fp64).
static inline Vec<double>::V bcast_pair(const double* p) {
  Vec<double>::V v;
  for (int l = 0; l < Vec<double>::L; ++l) v[l] = p[l & 1];
  return v;
}

template <class T, bool DIRECT = false>
static void tile_grad_rows_pair(const Problem<T>& pb, int64_t i0, int64_t j0, const T* __restrict W,
                                const T* __restrict RS, double* __restrict g) {
  typedef typename Vec<T>::V V;
  typedef typename Vec<T>::I I;
  constexpr int L = Vec<T>::L, H = L / 2, R = 8;
  const int64_t dp = pb.dp;
  const T* __restrict A = pb.a.rows;
  const T* __restrict B = pb.b.rows;
  const int64_t in = std::min<int64_t>(kTile, pb.a.n - i0);
  const int np = int((std::min<int64_t>(kTile, pb.b.n - j0) + 1) / 2);
  I ilv, swap, evens;
  for (int l = 0; l < L; ++l) {
    ilv[l] = (l & 1) * L + (l >> 1);           // (b_2q, b_2q+1) -> interleaved coordinates
    swap[l] = l ^ 1;                           // partner lane
    evens[l] = l < H ? 2 * l : 2 * (l - H) + 1;  // even lanes first
  }
  alignas(64) T bp[(kTile / 2) * L];
  for (int q = 0; q < np; ++q)
    vstore(bp + q * L, __builtin_shuffle(vload<V>(B + (j0 + 2 * q) * dp), vload<V>(B + (j0 + 2 * q + 1) * dp), ilv));
  for (int64_t ib = 0; ib < in; ib += R) {
    V acc[R];
    for (int r = 0; r < R; ++r) acc[r] = V{};
    for (int q = 0; q < np; ++q) {
      const V b = vload<V>(bp + q * L);
      for (int r = 0; r < R; ++r) acc[r] += bcast_pair(W + (ib + r) * kTile + 2 * q) * b;
    }
    for (int r = 0; r < R; ++r) {
      const int64_t i = i0 + ib + r;
      const V s = __builtin_shuffle(acc[r] + __builtin_shuffle(acc[r], swap), evens);  // lane k < H: (W b)_ik
      const V out = RS[ib + r] * vload<V>(A + i * dp) - s;
      put_row<DIRECT>(pb, g, i, 0, out, H);
    }
  }
}

template <class T>
static void tile_grad_cols_pair(const Problem<T>& pb, int64_t i0, int64_t j0, const T* __restrict W,
                                const T* __restrict CS, double* __restrict g) {
  typedef typename Vec<T>::V V;
  typedef typename Vec<T>::I I;
  constexpr int L = Vec<T>::L, H = L / 2, Q = 8;
  const int64_t dp = pb.dp;
  const T* __restrict A = pb.a.rows;
  const T* __restrict B = pb.b.rows;
  const int64_t in = std::min<int64_t>(kTile, pb.a.n - i0);
  const int64_t jn = std::min<int64_t>(kTile, pb.b.n - j0);
  const int np = int((jn + 1) / 2);
  I dup, deint, halves;
  for (int l = 0; l < L; ++l) {
    dup[l] = l >> 1;                                  // a_ik in lanes 2k and 2k + 1
    deint[l] = l < H ? 2 * l : 2 * (l - H) + 1;       // column 2q in the low half, 2q + 1 high
    halves[l] = l < H ? l : L + (l - H);              // (b_2q low half, b_2q+1 low half)
  }
  const I lo = Vec<T>::iota() < H;
  alignas(64) T ad[kTile * L];
  for (int64_t i = 0; i < in; ++i) vstore(ad + i * L, __builtin_shuffle(vload<V>(A + (i0 + i) * dp), dup));
  for (int q0 = 0; q0 < np; q0 += Q) {
    V acc[Q];
    for (int c = 0; c < Q; ++c) acc[c] = V{};
    for (int64_t i = 0; i < in; ++i) {
      const V a = vload<V>(ad + i * L);
      for (int c = 0; c < Q; ++c) acc[c] += bcast_pair(W + i * kTile + 2 * (q0 + c)) * a;
    }
    for (int c = 0; c < Q && q0 + c < np; ++c) {
      const int64_t j = 2 * (q0 + c);
      const V s = __builtin_shuffle(acc[c], deint);
      const V bb = __builtin_shuffle(vload<V>(B + (j0 + j) * dp), vload<V>(B + (j0 + j + 1) * dp), halves);
      const V cs = lo ? V{} + CS[j] : V{} + CS[j + 1];
      const V out = cs * bb - s;
      double* gp = g + (j0 + j) * dp;
      for (int l = 0; l < H; ++l) gp[l] += double(out[l]);
      if (j + 1 < jn)
        for (int l = 0; l < H; ++l) gp[dp + l] += double(out[H + l]);
    }
  }
}

// The gradient sides of one tile (after tile_forward<GRAD>): the row side into g_rows (or, with
// Problem::out_rows, straight to the caller's output, in its own instantiation: a test per row
// in the shared one cost the single call 4% at d = 64), the column side into g_cols unless the
// tile is diagonal (its mirrored W already holds both); the variant by d (small, paired, plain).
template <class T, int KIND>
static inline void tile_grad(const Problem<T>& pb, int64_t i0, int64_t j0, bool diag, const T* W, const T* RS,
                             const T* CS, double* g_rows, double* g_cols) {
  const bool direct = pb.out_rows != nullptr;
  if (KIND != wae_fast::KIND_POLY && small_d_grad(pb)) {
    if (g_rows && direct) tile_grad_rows_small<T, true>(pb, i0, j0, W, RS, g_rows);
    if (g_rows && !direct) tile_grad_rows_small<T>(pb, i0, j0, W, RS, g_rows);
    if (g_cols && !diag) tile_grad_cols_small<T>(pb, i0, j0, W, CS, g_cols);
  } else if (KIND != wae_fast::KIND_POLY && pair_d_grad(pb)) {
    if (g_rows && direct) tile_grad_rows_pair<T, true>(pb, i0, j0, W, RS, g_rows);
    if (g_rows && !direct) tile_grad_rows_pair<T>(pb, i0, j0, W, RS, g_rows);
    if (g_cols && !diag) tile_grad_cols_pair<T>(pb, i0, j0, W, CS, g_cols);
  } else {
    if (g_rows && direct) tile_grad_rows<T, true>(pb, i0, j0, W, RS, g_rows);
    if (g_rows && !direct) tile_grad_rows<T>(pb, i0, j0, W, RS, g_rows);
    if (g_cols && !diag) tile_grad_cols<T>(pb, i0, j0, W, CS, g_cols);
  }
}

// Runs stripe `s` of `nstripes`: row blocks I = s, s + nstripes, ...; returns the stripe's
// kernel sum (off-diagonal tiles of a symmetric term doubled).  g_rows / g_cols (fp64, may be
// null) receive the row-side / column-side gradient sums.
template <class T, int KIND, bool GRAD>
static double run_stripe_k(const Problem<T>& pb, int64_t s, int64_t nstripes, double* g_rows, double* g_cols) {
  alignas(64) T W[kTile * kTile];
  alignas(64) T RS[kTile];
  alignas(64) T CS[kTile];
  const int64_t nbi = (pb.a.n + kTile - 1) / kTile;
  const int64_t nbj = (pb.b.n + kTile - 1) / kTile;
  double total = 0.0;
  for (int64_t I = s; I < nbi; I += nstripes) {
    const int64_t i0 = I * kTile;
    double row_total = 0.0;
    for (int64_t J = pb.symmetric ? I : 0; J < nbj; ++J) {
      const int64_t j0 = J * kTile;
      const bool diag = pb.symmetric && I == J;
      double ks = tile_forward<T, KIND, GRAD>(pb, i0, j0, diag, W, RS, g_cols && !diag ? CS : nullptr);
      row_total += (pb.symmetric && !diag) ? 2.0 * ks : ks;
      if (GRAD) tile_grad<T, KIND>(pb, i0, j0, diag, W, RS, CS, g_rows, g_cols);
    }
    total += row_total;
  }
  return total;
}

// Runs the tiles (I, J) with I in [I0, I1), J in [J0, J1) (and J >= I when `tri`); returns their
// kernel sum (off-diagonal tiles of a symmetric term doubled).  Row-side gradient sums go to
// g_rows (rows of block I), column-side sums to g_cols (rows of block J; skipped on diagonal
// tiles).  The caller guarantees that no other concurrent task writes the same gradient rows.
// WT: weighted pairs (Problem::wa / wb); pb.ks_rows / ks_cols receive the per-row / per-column
// kernel sums alongside g_rows / g_cols (ks_cols skipped on diagonal tiles, as g_cols).
template <class T, int KIND, bool GRAD, bool WT = false>
static double run_block_k(const Problem<T>& pb, int64_t I0, int64_t I1, int64_t J0, int64_t J1, bool tri,
                          double* g_rows, double* g_cols) {
  alignas(64) T W[kTile * kTile];
  alignas(64) T RS[kTile];
  alignas(64) T CS[kTile];
  alignas(64) T KR[kTile];
  alignas(64) T KC[kTile];
  const bool want_ks = WT && (pb.ks_rows != nullptr || pb.ks_cols != nullptr);
  double total = 0.0;
  for (int64_t I = I0; I < I1; ++I) {
    const int64_t i0 = I * kTile;
    double row_total = 0.0;
    for (int64_t J = tri ? std::max(I, J0) : J0; J < J1; ++J) {
      const int64_t j0 = J * kTile;
      const bool diag = pb.symmetric && I == J;
      double ks = tile_forward<T, KIND, GRAD, WT>(pb, i0, j0, diag, W, RS, g_cols && !diag ? CS : nullptr,
                                                  want_ks ? KR : nullptr,
                                                  want_ks ? KC : nullptr);
      row_total += (pb.symmetric && !diag) ? 2.0 * ks : ks;
      if (want_ks) {
        const int64_t in = std::min<int64_t>(kTile, pb.a.n - i0), jn = std::min<int64_t>(kTile, pb.b.n - j0);
        if (pb.ks_rows != nullptr)
          for (int64_t r = 0; r < in; ++r) pb.ks_rows[i0 + r] += double(KR[r]);
        if (pb.ks_cols != nullptr && !diag)
          for (int64_t c = 0; c < jn; ++c) pb.ks_cols[j0 + c] += double(KC[c]);
      }
      if (GRAD) tile_grad<T, KIND>(pb, i0, j0, diag, W, RS, CS, g_rows, g_cols);
    }
    total += row_total;
  }
  return total;
}

template <class T, bool GRAD, bool WT>
static double run_block_w(const Problem<T>& pb, int64_t I0, int64_t I1, int64_t J0, int64_t J1, bool tri,
                          double* g_rows, double* g_cols) {
  if (pb.kind == wae_fast::KIND_IMQ)
    return run_block_k<T, wae_fast::KIND_IMQ, GRAD, WT>(pb, I0, I1, J0, J1, tri, g_rows, g_cols);
  if (pb.kind == wae_fast::KIND_POLY)
    return run_block_k<T, wae_fast::KIND_POLY, GRAD, WT>(pb, I0, I1, J0, J1, tri, g_rows, g_cols);
  return run_block_k<T, wae_fast::KIND_RBF, GRAD, WT>(pb, I0, I1, J0, J1, tri, g_rows, g_cols);
}

template <class T>
double run_block(const Problem<T>& pb, int64_t I0, int64_t I1, int64_t J0, int64_t J1, bool tri, double* g_rows,
                 double* g_cols) {
  const bool grad = g_rows != nullptr || g_cols != nullptr;
  if (pb.wa != nullptr)  // weighted (mmd_segments): its own instantiation, the unweighted one unchanged
    return grad ? run_block_w<T, true, true>(pb, I0, I1, J0, J1, tri, g_rows, g_cols)
                : run_block_w<T, false, true>(pb, I0, I1, J0, J1, tri, g_rows, g_cols);
  if (pb.kind == wae_fast::KIND_IMQ)
    return grad ? run_block_k<T, wae_fast::KIND_IMQ, true>(pb, I0, I1, J0, J1, tri, g_rows, g_cols)
                : run_block_k<T, wae_fast::KIND_IMQ, false>(pb, I0, I1, J0, J1, tri, g_rows, g_cols);
  if (pb.kind == wae_fast::KIND_POLY)
    return grad ? run_block_k<T, wae_fast::KIND_POLY, true>(pb, I0, I1, J0, J1, tri, g_rows, g_cols)
                : run_block_k<T, wae_fast::KIND_POLY, false>(pb, I0, I1, J0, J1, tri, g_rows, g_cols);
  return grad ? run_block_k<T, wae_fast::KIND_RBF, true>(pb, I0, I1, J0, J1, tri, g_rows, g_cols)
              : run_block_k<T, wae_fast::KIND_RBF, false>(pb, I0, I1, J0, J1, tri, g_rows, g_cols);
}

template double run_block<float>(const Problem<float>&, int64_t, int64_t, int64_t, int64_t, bool, double*, double*);
template double run_block<double>(const Problem<double>&, int64_t, int64_t, int64_t, int64_t, bool, double*,
                                  double*);

// Unweighted only (Problem::wa / wb are read by run_block alone).
template <class T>
double run_stripe(const Problem<T>& pb, int64_t s, int64_t nstripes, double* g_rows, double* g_cols) {
  const bool grad = g_rows != nullptr || g_cols != nullptr;
  if (pb.kind == wae_fast::KIND_IMQ)
    return grad ? run_stripe_k<T, wae_fast::KIND_IMQ, true>(pb, s, nstripes, g_rows, g_cols)
                : run_stripe_k<T, wae_fast::KIND_IMQ, false>(pb, s, nstripes, g_rows, g_cols);
  if (pb.kind == wae_fast::KIND_POLY)
    return grad ? run_stripe_k<T, wae_fast::KIND_POLY, true>(pb, s, nstripes, g_rows, g_cols)
                : run_stripe_k<T, wae_fast::KIND_POLY, false>(pb, s, nstripes, g_rows, g_cols);
  return grad ? run_stripe_k<T, wae_fast::KIND_RBF, true>(pb, s, nstripes, g_rows, g_cols)
              : run_stripe_k<T, wae_fast::KIND_RBF, false>(pb, s, nstripes, g_rows, g_cols);
}

template double run_stripe<float>(const Problem<float>&, int64_t, int64_t, double*, double*);
template double run_stripe<double>(const Problem<double>&, int64_t, int64_t, double*, double*);

#endif  // WAE_CPU_DECL_ONLY

}  // namespace WAE_CPU_NS
