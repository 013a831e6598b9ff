// wae_fast CUDA kernel for the MMD of small sets in ONE launch (issue 15, item 3): the per-term
// shifts, the three terms' per-block fp64 partials and the fused gradient parts, no workspace,
// no atomics, no host synchronisation (a CUDA graph can capture it).  The binding (binding.cpp)
// takes this path for an EMPTY offset (the contract's one_launch calls: N, M <= 1024, d <= 64 by
// default, wae_fast/small_sets.py) and finalises with one part.sum(0).
//
// Grid: one block per 32-row block of x, then one per 32-row block of y; 128 threads, 4 lanes per
// row.  A block
//  1. computes the contract's shifts itself (wae_fast.contract.term_shifts): the lower
//     coordinate-wise median of x and of y by rank counting (a column holding a NaN -> NaN), and
//     the xy shift torch.lerp(med_x, med_y, M / (N + M)) with torch.lerp's two branches, into
//     shared memory;
//  2. for each of its rows a_i, loops over every row b_j of its own set (self term, shifted by
//     its own median) and of the other set (cross term, xy shift; the y blocks only when the y
//     gradient is asked), lane l taking j = l, l + 4, ...: r = |a_i - b_j|^2 by direct
//     differences, k and w = dk/dr from tile_math.h (the tiles' eval_kernel), the k sum in fp64
//     and g_i = sum_j w_ij (a_i - b_j) in the compute dtype;
//  3. sums its 4 lanes with xor shuffles (the same order on every lane: deterministic), writes
//     its gradient rows c g_i (c = 4 / #pairs self, 2 / (N M) cross) to G[0] (self) and G[1]
//     (cross), and its partial terms, already divided by the pair counts, to part[block] (3).
// Cost: each block ranks both sets (O(d (N^2 + M^2)) compares), the price of having no second
// launch; the pair work of a block is O(32 (N + M) d).  Registers: a row and its gradient sum
// per thread, compiled for d <= 16, 32 and 64; the d <= 64 variants spill on sm_80/sm_90
// (python -m tests.test_csrc_compile).  Untuned, NOT yet run on a GPU.
#include "mmd_tiles.cuh"

namespace {

constexpr int kSmallThreads = 128;
constexpr int kSmallLanes = 4;                             // threads per row
constexpr int kSmallRows = kSmallThreads / kSmallLanes;   // rows per block
constexpr int kSmallMaxD = 64;

int64_t small_blocks(int64_t n, int64_t m) {
  return (n + kSmallRows - 1) / kSmallRows + (m + kSmallRows - 1) / kSmallRows;
}

//! med[k] = lower median (torch.median's) of column k of the (na, d) matrix A, NaN for a column
//! holding a NaN: the value v_i with #{v_j < v_i} <= (na - 1) / 2 < #{v_j <= v_i}, written only
//! by its first occurrence (one writer per column; for a NaN column its row-0 candidate writes).
template <class TI, class T>
__device__ void col_medians(const TI* __restrict__ A, int64_t na, int64_t d, const wae_fast::smem_ptr<T>& med) {
  const int64_t mid = (na - 1) / 2;
  for (int64_t e = threadIdx.x; e < na * d; e += blockDim.x) {
    const int64_t i = e / d, k = e % d;
    const T v = to_ct(A[i * d + k]);
    int64_t lt = 0, le = 0, before = 0;
    bool nan = false;
    for (int64_t j = 0; j < na; ++j) {
      const T u = to_ct(A[j * d + k]);
      lt += u < v ? 1 : 0;
      le += u <= v ? 1 : 0;
      before += (j < i && u == v) ? 1 : 0;
      nan = nan || u != u;
    }
    if (nan) {
      if (i == 0) med[k] = T(NAN);
    } else if (lt <= mid && le > mid && before == 0) {
      med[k] = v;
    }
  }
}

//! Row ``row`` of A (clamped into range: idle rows compute a valid row and drop it) against the
//! rows j = lane, lane + 4, ... of B, both shifted by s: returns this lane's k sum (the i == j
//! pair dropped when ``excl``) and adds sum_j w_ij (a_i - b_j) to g when ``grad``.
template <class TI, class T, int KIND, int DM>
__device__ double term_lane(const TI* __restrict__ A, const TI* __restrict__ B, int64_t na, int64_t nb, int64_t d,
                            int64_t row, int lane, const wae_fast::smem_ptr<T>& s, bool excl, bool grad,
                            const KParams<T>& P, T (&g)[DM]) {
  const int64_t ar = row < na ? row : na - 1;
  T a[DM];
  double nacc = 0.0;
#pragma unroll
  for (int k = 0; k < DM; ++k) {
    a[k] = k < d ? T(to_ct(A[ar * d + k])) - s[k] : T(0);
    nacc += double(a[k]) * double(a[k]);
    g[k] = T(0);
  }
  // the tiles' magnitude rule (tile_math.h norm_in_range on the fp64 squared norm of a shifted
  // row, rounded once): a row outside the supported range (or non-finite) makes its pairs NaN
  const T poison_a = T(0) * wae_fast::norm_in_range(T(nacc));
  double ksum = 0.0;
  for (int64_t j = lane; j < nb; j += kSmallLanes) {
    const TI* bj = B + j * d;
    T r = T(0);
    double nb_acc = 0.0;
#pragma unroll
    for (int k = 0; k < DM; ++k) {
      if (k < d) {
        const T b = T(to_ct(bj[k])) - s[k];
        nb_acc += double(b) * double(b);
        const T t = a[k] - b;
        r += t * t;
      }
    }
    r += poison_a + T(0) * wae_fast::norm_in_range(T(nb_acc));  // +0, or NaN out of range
    T kv, w;
    eval_kernel<T, KIND>(r, P, kv, w);
    if (!(excl && j == row)) ksum += double(kv);
    if (grad) {
#pragma unroll
      for (int k = 0; k < DM; ++k) {
        if (k < d) g[k] += w * (a[k] - (T(to_ct(bj[k])) - s[k]));
      }
    }
  }
  return ksum;
}

//! The sum over the 4 lanes of a row (xor shuffles: every lane gets the same, same-order sum).
template <class V>
__device__ __forceinline__ V lanes_sum(V v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

//! One term of a block's rows: the lane sums reduced, the gradient rows c g written to G (when
//! not null); returns the row's k sum (0 for an idle row).
template <class TI, class T, int KIND, int DM>
__device__ double block_term(const TI* __restrict__ A, const TI* __restrict__ B, int64_t na, int64_t nb, int64_t d,
                             int64_t row, int lane, const wae_fast::smem_ptr<T>& s, bool self, int unbiased,
                             const KParams<T>& P, T c, T* __restrict__ G) {
  T g[DM];
  const bool grad = G != nullptr;
  double ks = term_lane<TI, T, KIND, DM>(A, B, na, nb, d, row, lane, s, self && unbiased, grad, P, g);
  ks = lanes_sum(ks);
  if (grad) {
#pragma unroll
    for (int k = 0; k < DM; ++k) {
      if (k < d) {
        const T v = lanes_sum(g[k]);
        if (row < na && (k % kSmallLanes) == lane) G[row * d + k] = c * v;
      }
    }
  }
  return row < na ? ks : 0.0;
}

template <class TI, class T, int KIND, int DM>
__global__ void __launch_bounds__(kSmallThreads)
mmd_small_kernel(const TI* __restrict__ X, const TI* __restrict__ Y, int64_t n, int64_t m, int64_t d, KParams<T> P,
                 int unbiased, T wgt, int lerp_hi, double nxx, double nyy, double nxy, double* __restrict__ part,
                 T* __restrict__ gx, T* __restrict__ gy) {
  WAE_SHARED(T, shifts, 3 * kSmallMaxD);  // rows: median(x), median(y), the xy shift
  WAE_SHARED(double, rowsum, 2 * kSmallRows);
  const wae_fast::smem_ptr<T> sx = wae_fast::sub_slice(shifts, 0, kSmallMaxD, "shift_xx");
  const wae_fast::smem_ptr<T> sy = wae_fast::sub_slice(shifts, kSmallMaxD, kSmallMaxD, "shift_yy");
  const wae_fast::smem_ptr<T> sxy = wae_fast::sub_slice(shifts, 2 * kSmallMaxD, kSmallMaxD, "shift_xy");
  col_medians<TI, T>(X, n, d, sx);
  col_medians<TI, T>(Y, m, d, sy);
  __syncthreads();
  for (int k = threadIdx.x; k < d; k += blockDim.x) {  // torch.lerp's two branches
    const T mx = sx[k], my = sy[k];
    sxy[k] = lerp_hi ? my - (my - mx) * (T(1) - wgt) : mx + wgt * (my - mx);
  }
  __syncthreads();

  const int64_t nbx = (n + kSmallRows - 1) / kSmallRows;
  const bool is_x = int64_t(blockIdx.x) < nbx;  // block-uniform: no divergence at the shuffles
  const TI* A = is_x ? X : Y;
  const TI* B = is_x ? Y : X;
  const int64_t na = is_x ? n : m, nb = is_x ? m : n;
  T* G = is_x ? gx : gy;
  const int64_t blk = is_x ? int64_t(blockIdx.x) : int64_t(blockIdx.x) - nbx;
  const int rl = int(threadIdx.x) / kSmallLanes, lane = int(threadIdx.x) % kSmallLanes;
  const int64_t row = blk * kSmallRows + rl;
  const double nself = is_x ? nxx : nyy;
  const double s_self = block_term<TI, T, KIND, DM>(A, A, na, na, d, row, lane, is_x ? sx : sy, true, unbiased, P,
                                                    T(4.0 / nself), G);
  double s_cross = 0.0;
  if (is_x || G != nullptr)  // the y blocks need the cross loop only for the y gradient
    s_cross = block_term<TI, T, KIND, DM>(A, B, na, nb, d, row, lane, sxy, false, unbiased, P, T(2.0 / nxy),
                                          G != nullptr ? G + na * d : nullptr);
  if (lane == 0) {
    rowsum[2 * rl] = s_self;
    rowsum[2 * rl + 1] = s_cross;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // the block's partial terms, rows summed in order
    double ss = 0.0, sc = 0.0;
    for (int r = 0; r < kSmallRows; ++r) {
      ss += rowsum[2 * r];
      sc += rowsum[2 * r + 1];
    }
    double* out = part + int64_t(blockIdx.x) * 3;
    out[0] = is_x ? ss / nxx : 0.0;
    out[1] = is_x ? 0.0 : ss / nyy;
    out[2] = is_x ? sc / nxy : 0.0;
  }
}

template <class TI, class T, int KIND, int DM>
int launch_small(const void* x, const void* y, int64_t n, int64_t m, int64_t d, const double* params, int nparams,
                 int unbiased, double* part, void* gx, void* gy, cudaStream_t st) {
  const double nxx = wae_fast::pair_count_self(n, unbiased), nyy = wae_fast::pair_count_self(m, unbiased);
  const double w = double(m) / double(n + m);  // the glue's lerp weight, rounded to T as torch.lerp's scalar
  WAE_LAUNCH((mmd_small_kernel<TI, T, KIND, DM>), dim3(unsigned(small_blocks(n, m))), dim3(kSmallThreads), 0, st,
             static_cast<const TI*>(x), static_cast<const TI*>(y), n, m, d, make_params<T>(params, nparams),
             unbiased, T(w), 2 * m >= n + m ? 1 : 0, nxx, nyy, double(n) * double(m), part, static_cast<T*>(gx),
             static_cast<T*>(gy));
  return int(cudaGetLastError());
}

template <class TI, class T, int KIND>
int small_width(const void* x, const void* y, int64_t n, int64_t m, int64_t d, const double* params, int nparams,
                int unbiased, double* part, void* gx, void* gy, cudaStream_t st) {
  if (d <= 16) return launch_small<TI, T, KIND, 16>(x, y, n, m, d, params, nparams, unbiased, part, gx, gy, st);
  if (d <= 32) return launch_small<TI, T, KIND, 32>(x, y, n, m, d, params, nparams, unbiased, part, gx, gy, st);
  return launch_small<TI, T, KIND, 64>(x, y, n, m, d, params, nparams, unbiased, part, gx, gy, st);
}

template <class TI, class T>
int small_impl(const void* x, const void* y, int64_t n, int64_t m, int64_t d, int kind, const double* params,
               int nparams, int unbiased, double* part, void* gx, void* gy, cudaStream_t st) {
  // register arrays of 16, 32 or 64 coordinates (a and g per thread; 64 spills, see the header)
  if (kind == wae_fast::KIND_IMQ) return small_width<TI, T, wae_fast::KIND_IMQ>(x, y, n, m, d, params, nparams, unbiased, part, gx, gy, st);
  return small_width<TI, T, wae_fast::KIND_RBF>(x, y, n, m, d, params, nparams, unbiased, part, gx, gy, st);
}

}  // namespace

extern "C" int64_t wae_mmd_small_blocks(int64_t n, int64_t m) { return small_blocks(n, m); }

extern "C" int wae_mmd_small(int dtype, const void* x, const void* y, int64_t n, int64_t m, int64_t d, int kind,
                             const double* params, int nparams, int unbiased, double* part, void* gx_parts,
                             void* gy_parts, cudaStream_t st) {
  if (nparams < 1 || nparams > wae_fast::kMaxScales || d < 1 || d > kSmallMaxD || n < 1 || m < 1 ||
      (kind != wae_fast::KIND_IMQ && kind != wae_fast::KIND_RBF))
    return int(cudaErrorInvalidValue);
  switch (dtype) {
    case WAE_F32: return small_impl<float, float>(x, y, n, m, d, kind, params, nparams, unbiased, part, gx_parts, gy_parts, st);
    case WAE_F64: return small_impl<double, double>(x, y, n, m, d, kind, params, nparams, unbiased, part, gx_parts, gy_parts, st);
    case WAE_F16: return small_impl<__half, float>(x, y, n, m, d, kind, params, nparams, unbiased, part, gx_parts, gy_parts, st);
    case WAE_BF16: return small_impl<__nv_bfloat16, float>(x, y, n, m, d, kind, params, nparams, unbiased, part, gx_parts, gy_parts, st);
  }
  return int(cudaErrorInvalidValue);
}
