// Row pass of the mmd_segments family for the CPU backend (segments_cpu.cpp), included once per
// instruction set inside a namespace named WAE_SEG_NS (as mmd_cpu_kernel.h: baseline x86-64 and
// AVX2+FMA under `#pragma GCC target`), GCC vector extensions of 32 bytes.
//
// For rows i in [i0, i1) of a shifted row operand A (n x d, norms na) and one set's column
// operand (transposed: bt (d x mp), norms nb, column weights v, zero on padding and on weight-0
// columns, whose coordinates are zeroed before packing):
//   s_i = sum_j v_j k(a_i, b_j)                       (float64)
//   G_i = sum_j v_j W_ij (a_i - b_j)                  (polynomial: -sum_j v_j W_ij b_j)
// with r_ii = 0 on a self pass (A and the columns are the same rows) and the j == i terms
// skipped when exclude_diag (U-statistic).  The pair math is tile_math.h's.  4 rows at a time
// share each column vector load; W v of a row is staged in wbuf (mp) for the gradient.

#ifndef WAE_SEG_NS
#error "define WAE_SEG_NS before including segments_cpu_kernel.h"
#endif

namespace WAE_SEG_NS {

template <class T> struct SV;
template <> struct SV<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
  typedef int32_t IS;
  static constexpr int L = 8;
  static I iota() { return I{0, 1, 2, 3, 4, 5, 6, 7}; }
};
template <> struct SV<double> {
  typedef double V __attribute__((vector_size(32)));
  typedef int64_t I __attribute__((vector_size(32)));
  typedef int64_t IS;
  static constexpr int L = 4;
  static I iota() { return I{0, 1, 2, 3}; }
};

template <class V, class T>
static inline __attribute__((always_inline)) V ld(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <class V, class T>
static inline __attribute__((always_inline)) void st(T* p, V v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

// exp per lane (the RBF path; IMQ, the default, needs no transcendental)
template <class V>
struct LaneExp {
  V operator()(V x) const {
    V y = x;
    for (int l = 0; l < int(sizeof(V) / sizeof(x[0])); ++l) y[l] = std::exp(x[l]);
    return y;
  }
};

template <class T>
struct SegCols {
  const T* bt;  // d x mp
  const T* nb;  // mp
  const T* v;   // mp
  int64_t m, mp, d;
};

template <class T, int KIND, int R>
static void rows_k(const T* __restrict A, const T* __restrict na, int64_t i, const SegCols<T>& C,
                   const T* P, int S, bool self_pass, bool exclude_diag, int64_t out0, double* s, T* G,
                   T* __restrict wbuf) {
  typedef typename SV<T>::V V;
  typedef typename SV<T>::I I;
  constexpr int L = SV<T>::L;
  const int64_t d = C.d, mp = C.mp;
  const V zero = V{} + T(0);
  const I izero = I{} + 0;
  const I iota = SV<T>::iota();
  V ks[R];
  double sd[R];
  for (int r = 0; r < R; ++r) {
    ks[r] = zero;
    sd[r] = 0.0;
  }
  for (int64_t j0 = 0; j0 < mp; j0 += L) {
    V acc[R];
    for (int r = 0; r < R; ++r) acc[r] = zero;
    for (int64_t k = 0; k < d; ++k) {
      V b = ld<V>(C.bt + k * mp + j0);
      for (int r = 0; r < R; ++r) acc[r] += A[(i + r) * d + k] * b;
    }
    const V vv = ld<V>(C.v + j0), nbv = ld<V>(C.nb + j0);
    const I jidx = iota + (typename SV<T>::IS)(j0);
    for (int r = 0; r < R; ++r) {
      V kv = zero, wv = zero;
      I dmask = izero;
      if (self_pass) dmask = jidx == (typename SV<T>::IS)(i + r);
      if (KIND == wae_fast::KIND_POLY) {
        wae_fast::poly_eval<V, T>(acc[r], P, kv, wv);
      } else {
        V rr = na[i + r] + nbv - T(2) * acc[r];
        rr = rr < zero ? zero : rr;  // keeps NaN
        rr = dmask ? zero : rr;
        if (KIND == wae_fast::KIND_IMQ) wae_fast::imq_eval<V, T>(rr, P, S, kv, wv);
        else wae_fast::rbf_eval<V, T>(rr, P, S, kv, wv, LaneExp<V>());
      }
      if (exclude_diag) {
        kv = dmask ? zero : kv;
        wv = dmask ? zero : wv;
      }
      ks[r] += kv * vv;
      if (G != nullptr) st(wbuf + r * mp + j0, wv * vv);
    }
    if (((j0 / L) & 31) == 31)  // fp64 partial sums every 32 vectors (DESIGN.md 5b)
      for (int r = 0; r < R; ++r) {
        for (int l = 0; l < L; ++l) sd[r] += double(ks[r][l]);
        ks[r] = zero;
      }
  }
  for (int r = 0; r < R; ++r) {
    for (int l = 0; l < L; ++l) sd[r] += double(ks[r][l]);
    s[i + r - out0] = sd[r];
  }
  if (G == nullptr) return;
  for (int r = 0; r < R; ++r) {
    const T* w = wbuf + r * mp;
    const T* a = A + (i + r) * d;
    T* g = G + (i + r - out0) * d;
    V rs = zero;
    for (int64_t j0 = 0; j0 < mp; j0 += L) rs += ld<V>(w + j0);
    T rsum = T(0);
    for (int l = 0; l < L; ++l) rsum += rs[l];
    for (int64_t k = 0; k < d; ++k) {
      V t = zero;
      for (int64_t j0 = 0; j0 < mp; j0 += L) t += ld<V>(w + j0) * ld<V>(C.bt + k * mp + j0);
      T tb = T(0);
      for (int l = 0; l < L; ++l) tb += t[l];
      g[k] = (KIND == wae_fast::KIND_POLY ? T(0) : rsum * a[k]) - tb;
    }
  }
}

template <class T, int KIND>
static void row_pass_k(const T* A, const T* na, int64_t i0, int64_t i1, const SegCols<T>& C, const T* P,
                       int S, bool self_pass, bool exclude_diag, double* s, T* G, T* wbuf) {
  int64_t i = i0;
  for (; i + 4 <= i1; i += 4) rows_k<T, KIND, 4>(A, na, i, C, P, S, self_pass, exclude_diag, i0, s, G, wbuf);
  for (; i < i1; ++i) rows_k<T, KIND, 1>(A, na, i, C, P, S, self_pass, exclude_diag, i0, s, G, wbuf);
}

//! s and G of rows [i0, i1) against the columns C (see the file comment), written from s[0] and
//! G[0] (row i0); wbuf: 4 * C.mp values.
template <class T>
void row_pass(const T* A, const T* na, int64_t i0, int64_t i1, const SegCols<T>& C, int kind, const T* P,
              int S, bool self_pass, bool exclude_diag, double* s, T* G, T* wbuf) {
  if (kind == wae_fast::KIND_IMQ)
    row_pass_k<T, wae_fast::KIND_IMQ>(A, na, i0, i1, C, P, S, self_pass, exclude_diag, s, G, wbuf);
  else if (kind == wae_fast::KIND_RBF)
    row_pass_k<T, wae_fast::KIND_RBF>(A, na, i0, i1, C, P, S, self_pass, exclude_diag, s, G, wbuf);
  else
    row_pass_k<T, wae_fast::KIND_POLY>(A, na, i0, i1, C, P, S, self_pass, exclude_diag, s, G, wbuf);
}

template void row_pass<float>(const float*, const float*, int64_t, int64_t, const SegCols<float>&, int,
                              const float*, int, bool, bool, double*, float*, float*);
template void row_pass<double>(const double*, const double*, int64_t, int64_t, const SegCols<double>&, int,
                               const double*, int, bool, bool, double*, double*, double*);

}  // namespace WAE_SEG_NS
