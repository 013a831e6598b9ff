// CUDA kernels of the mmd_segments family, the schedule of kernels/segments.py (Triton): every
// term of every set in ONE launch plus one tiny finalize (forward), every gradient in ONE launch
// (backward), over the host task tables of wae_fast.segment_sums.Plan.
//
// Set b owns x rows XO[b]:XO[b+1] and y rows YO[b]:YO[b+1] (a shared y: YO[0]:YO[1] for every
// set, read in place), both shifted by SH[b].  A block owns one task, each thread one row; the
// block stages kSegCols shifted columns at a time in shared memory (weight-0 columns staged as
// zeros: their coordinates are never read):
//   forward  [set, term, r0, r1] (term 0 xx, 1 yy, 2 xy): part[t] = sum_i w_i s_i with
//            s_i = sum_j v_j k(a_i, c_j) (j != i under the U-statistic), the block's rows summed
//            in row order (deterministic, no atomics); the finalize (one thread per set)
//            sums the set's partials in task order over the denominators of seg_stats.
//            A shared y's yy term is the same for every set: only set 0 has yy tasks (with
//            set 0's shift) and every set's finalize sums those (M^2 / 2 pairs, not B M^2 / 2).
//            A self task (xx, yy) sweeps only the columns j >= r0, each pair weighted 2 for
//            j > i, 1 for j == i (skipped under the U-statistic), skipped for j < i: the pair
//            term w_i w_j k_ij is symmetric, so the stripes cover the upper triangle once.
//   backward [side, b0, b1, r0, r1, o0] (side 0 x, 1 y): for each set b in [b0, b1) (a chunk of
//            sets for the rows of a shared y) the self then the cross columns; each gradient row
//            is written by one thread, at output row o0 + i - r0 (a shared y: its chunk's slice
//            of a buffer the host sums over the chunks).
// The pair math is tile_math.h's.  Simple on purpose (a scalar FMA loop per pair, no tensor
// cores): correct first, tuned on a GPU later (no GPU in the sessions that wrote it: unmeasured).
#include <cuda_runtime.h>

#include <cstdint>

#include "portable.h"
#include "wae_cuda.h"
#include "wae_fast/tile_math.h"

namespace {

constexpr int kSegRows = 64;    // rows (threads) per block = Plan block of this backend
constexpr int kSegCols = 32;    // columns staged per step
constexpr int kSegMaxD = 256;   // feature dimension bound (shared memory: kSegCols * d values)

template <class T>
struct SegParams {  // kernel params by value (IMQ C_s / RBF gamma_s, or [gamma, coef0, degree])
  T p[wae_fast::kMaxScales];
  int n;
};

template <class T>
struct SegExp {
  __device__ T operator()(T x) const { return exp(x); }
};

struct SegSets {  // the set layout, by value
  const int64_t* xo;
  const int64_t* yo;
  int shared_y;
  __device__ int64_t y0(int64_t b) const { return shared_y ? yo[0] : yo[b]; }
  __device__ int64_t y1(int64_t b) const { return shared_y ? yo[1] : yo[b + 1]; }
};

__device__ inline bool seg_bad_weight(double w) { return !(w >= 0.0) || w == double(INFINITY); }

// (sum w, D) of W[lo:hi] in double (unit weights when W is null): D = (sum w)^2 biased,
// D = sum_{i != j} w_i w_j = 2 sum_i w_i sum_{j<i} w_j unbiased (non-negative terms: no
// cancellation when one weight dominates, unlike (sum w)^2 - sum w^2); NaN for a negative or
// non-finite weight.  Sequential (per thread): the same formula as kernels/segments.py.
template <class T>
__device__ void seg_stats(const T* W, int64_t lo, int64_t hi, int unbiased, double& total, double& den) {
  double s = 0.0, d2 = 0.0;
  bool bad = false;
  for (int64_t i = lo; i < hi; ++i) {
    const double w = W != nullptr ? double(W[i]) : 1.0;
    bad = bad || seg_bad_weight(w);
    d2 += w * s;  // s = sum_{j<i} w_j
    s += w;
  }
  total = bad ? double(NAN) : s;
  den = bad ? double(NAN) : (unbiased ? 2.0 * d2 : s * s);
}

// Shared memory of one block: staged columns, their norms and weights, and kSegRows doubles.
template <class T>
struct SegSmem {
  wae_fast::smem_ptr<double> red;  // the forward's per-row partials
  wae_fast::smem_ptr<T> cs, cn, cv;
  static size_t bytes(int64_t d) {
    return size_t(kSegRows) * sizeof(double) + size_t(kSegCols) * size_t(d + 2) * sizeof(T);
  }
};

template <class T>
__device__ SegSmem<T> seg_smem(unsigned char* buf, int64_t d) {
  SegSmem<T> m;
  size_t off = 0;
  m.red = wae_fast::dyn_slice<double>(buf, off, kSegRows, "red");
  off += size_t(kSegRows) * sizeof(double);
  const size_t ncs = size_t(kSegCols) * size_t(d);
  m.cs = wae_fast::dyn_slice<T>(buf, off, ncs, "cols");
  m.cn = wae_fast::dyn_slice<T>(buf, off + ncs * sizeof(T), kSegCols, "norms");
  m.cv = wae_fast::dyn_slice<T>(buf, off + (ncs + kSegCols) * sizeof(T), kSegCols, "weights");
  return m;
}

// Stream the columns [c0, c1) of C (weights CW, null: unit) against this thread's row a_i
// (shifted by sh, squared norm na): s += sum_j v_j k_ij and, with g, rs += coef sum_j v_j W_ij,
// g -= coef sum_j v_j W_ij c_j.  Every thread of the block calls it (it synchronises); ``live``
// says whether the thread's row takes part.  ``sym`` (forward self pass only, c0 = the task's
// first row): pairs j < i are skipped and pairs j > i count twice (s_i is then row i's share of
// the upper triangle, not its full row sum).
template <class T>
__device__ void seg_sweep(const SegSmem<T>& m, const T* a, const T* sh, T na, int64_t i, bool live, const T* C,
                          const T* CW, int64_t c0, int64_t c1, int64_t d, int kind, const SegParams<T>& P,
                          bool self_pass, bool excl, bool sym, T coef, double& s, T& rs, T* g) {
  for (int64_t j0 = c0; j0 < c1; j0 += kSegCols) {
    const int ncol = int(c1 - j0 < kSegCols ? c1 - j0 : kSegCols);
    __syncthreads();
    for (int e = threadIdx.x; e < kSegCols * d; e += blockDim.x) {
      const int jj = int(e / d);
      const int64_t k = e % d;
      T w = T(0), v = T(0);
      if (jj < ncol) {
        w = CW != nullptr ? CW[j0 + jj] : T(1);
        if (w != T(0)) v = C[(j0 + jj) * d + k] - sh[k];
      }
      m.cs[jj * d + k] = v;
      if (k == 0) m.cv[jj] = w;
    }
    __syncthreads();
    for (int jj = threadIdx.x; jj < kSegCols; jj += blockDim.x) {
      T n = T(0);
      for (int64_t k = 0; k < d; ++k) n += m.cs[jj * d + k] * m.cs[jj * d + k];
      m.cn[jj] = m.cv[jj] != T(0) ? wae_fast::norm_in_range(n) : T(0);
    }
    __syncthreads();
    if (!live) continue;
    for (int jj = 0; jj < ncol; ++jj) {
      const T v = m.cv[jj];
      if (v == T(0)) continue;
      const bool diag = self_pass && (j0 + jj == i);
      if (excl && diag) continue;
      if (sym && j0 + jj < i) continue;  // the lower triangle: its mirror pair counts twice
      const int64_t cb = int64_t(jj) * d;
      T dot = T(0);
      for (int64_t k = 0; k < d; ++k) dot += (a[k] - sh[k]) * m.cs[cb + k];
      T kv = T(0), wv = T(0);
      if (kind == wae_fast::KIND_POLY) {
        wae_fast::poly_eval<T, T>(dot, P.p, kv, wv);
      } else {
        const T r = diag ? T(0) : wae_fast::sq_dist_from_dot(dot, na, m.cn[jj]);
        if (kind == wae_fast::KIND_IMQ) wae_fast::imq_eval<T, T>(r, P.p, P.n, kv, wv);
        else wae_fast::rbf_eval<T, T>(r, P.p, P.n, kv, wv, SegExp<T>());
      }
      s += double(sym && !diag ? T(2) * kv * v : kv * v);
      if (g != nullptr) {
        const T ww = wv * v * coef;
        rs += ww;
        for (int64_t k = 0; k < d; ++k) g[k] -= ww * m.cs[cb + k];
      }
    }
  }
}

template <class T>
__device__ T seg_row_norm(const T* a, const T* sh, int64_t d) {
  T na = T(0);
  for (int64_t k = 0; k < d; ++k) {
    const T v = a[k] - sh[k];
    na += v * v;
  }
  return wae_fast::norm_in_range(na);
}

template <class T>
__global__ void seg_fwd_kernel(const T* __restrict__ X, const T* __restrict__ Y, const T* __restrict__ XW,
                               const T* __restrict__ YW, SegSets sets, const T* __restrict__ SH,
                               const int64_t* __restrict__ tasks, int64_t d, int kind, SegParams<T> P, int unbiased,
                               double* __restrict__ part) {
  WAE_DYN_SMEM(seg_buf);
  const SegSmem<T> m = seg_smem<T>(seg_buf, d);
  const int64_t* tk = tasks + 4 * int64_t(blockIdx.x);
  const int64_t b = tk[0], term = tk[1], r0 = tk[2], r1 = tk[3];
  const T* A = term == 1 ? Y : X;  // rows: y for yy, x otherwise
  const T* RW = term == 1 ? YW : XW;
  const T* C = term == 0 ? X : Y;  // columns: x for xx, y otherwise
  const T* CW = term == 0 ? XW : YW;
  const int64_t c0 = term == 0 ? sets.xo[b] : sets.y0(b);
  const int64_t c1 = term == 0 ? sets.xo[b + 1] : sets.y1(b);
  const bool self_pass = term != 2;
  const T* sh = SH + b * d;
  const int64_t i = r0 + threadIdx.x;
  const T wi = i < r1 ? (RW != nullptr ? RW[i] : T(1)) : T(0);
  const bool live = wi != T(0);  // weight-0 rows are not read
  const T* a = A + (live ? i : r0) * d;
  const T na = live ? seg_row_norm(a, sh, d) : T(0);
  double s = 0.0;
  T rs = T(0);
  // a self term sweeps only the columns from the task's first row (r0 - c0 is a multiple of the
  // Plan block, kSegRows; the pair weights are seg_sweep's sym): kernel evaluations per self
  // term of n points n^2 -> n (n + 1) / 2 (n = 64: 4096 -> 2080, 100: 10000 -> 5050, 512:
  // 262144 -> 131328); in warp slots (a warp runs a column while one of its 32 rows needs it)
  // 32 n ceil(n / 32) -> 32 sum_w (n - 32 w): 4096 -> 3072, 12800 -> 6656, 262144 -> 139264.
  seg_sweep<T>(m, a, sh, na, i, live, C, CW, self_pass ? r0 : c0, c1, d, kind, P, self_pass,
               self_pass && unbiased, self_pass, T(1), s, rs, nullptr);
  m.red[threadIdx.x] = live ? double(wi) * s : 0.0;
  __syncthreads();
  if (threadIdx.x == 0) {  // the block's rows in row order (deterministic; 64 adds per task)
    double p = 0.0;
    for (int r = 0; r < kSegRows; ++r) p += m.red[r];
    part[blockIdx.x] = p;
  }
}

template <class T>
__global__ void seg_finalize_kernel(const T* __restrict__ XW, const T* __restrict__ YW, SegSets sets,
                                    const int64_t* __restrict__ tasks, const int64_t* __restrict__ set_tasks,
                                    const double* __restrict__ part, int64_t nsets, int unbiased,
                                    double* __restrict__ out) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= nsets) return;
  double acc[3] = {0.0, 0.0, 0.0};
  for (int64_t t = set_tasks[b]; t < set_tasks[b + 1]; ++t) acc[tasks[4 * t + 1]] += part[t];
  if (sets.shared_y) {  // a shared y's yy tasks are set 0's alone: every set sums them, in one order
    acc[1] = 0.0;
    for (int64_t t = set_tasks[0]; t < set_tasks[1]; ++t)
      if (tasks[4 * t + 1] == 1) acc[1] += part[t];
  }
  double sw, dx, sv, dy;
  seg_stats(XW, sets.xo[b], sets.xo[b + 1], unbiased, sw, dx);
  seg_stats(YW, sets.y0(b), sets.y1(b), unbiased, sv, dy);
  out[3 * b + 0] = acc[0] / dx;
  out[3 * b + 1] = acc[1] / dy;
  out[3 * b + 2] = acc[2] / (sw * sv);
}

// Gradients of sum_b GT[b] . terms[b] (TT: the forward's terms) for the rows of one task:
//   d/da_i = w_i sum_b [4 g_self/D_a G^self_i + 2 g_cross/(S_a S_b) G^cross_i]
//   d/dw_i = sum_b [g_self (2 s^self_i - t_self dD_a/dw_i) / D_a + g_cross (s^cross_i / S_b - t_cross) / S_a]
// with dD/dw_i = 2 (S_a - w_i) unbiased (double), 2 S_a biased.  gp (rows, d) is the
// coordinate gradient (null: not wanted), gw (rows,) the weights' (null: not wanted).
template <class T>
__global__ void seg_bwd_kernel(const T* __restrict__ X, const T* __restrict__ Y, const T* __restrict__ XW,
                               const T* __restrict__ YW, SegSets sets, const T* __restrict__ SH,
                               const int64_t* __restrict__ tasks, const double* __restrict__ GT,
                               const double* __restrict__ TT, int64_t d, int kind, SegParams<T> P, int unbiased,
                               T* __restrict__ gx, T* __restrict__ gy, double* __restrict__ gxw,
                               double* __restrict__ gyw) {
  WAE_DYN_SMEM(seg_buf);
  const SegSmem<T> m = seg_smem<T>(seg_buf, d);
  const int64_t* tk = tasks + 6 * int64_t(blockIdx.x);
  const int64_t side = tk[0], b0 = tk[1], b1 = tk[2], r0 = tk[3], r1 = tk[4];
  const int64_t o = tk[5] + int64_t(threadIdx.x);  // output row (a shared y: its chunk's slice)
  const T* A = side == 0 ? X : Y;
  const T* AW = side == 0 ? XW : YW;
  const T* B = side == 0 ? Y : X;
  const T* BW = side == 0 ? YW : XW;
  T* gp_out = side == 0 ? gx : gy;
  double* gw_out = side == 0 ? gxw : gyw;
  const int64_t i = r0 + threadIdx.x;
  const bool live = i < r1;  // weight-0 rows are read: the gradient to their weight needs them
  const T wi = live ? (AW != nullptr ? AW[i] : T(1)) : T(0);
  const T* a = A + (live ? i : r0) * d;
  T* g = (live && gp_out != nullptr) ? gp_out + o * d : nullptr;
  if (g != nullptr)
    for (int64_t k = 0; k < d; ++k) g[k] = T(0);
  double gw = 0.0;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t x0 = sets.xo[b], x1 = sets.xo[b + 1], y0 = sets.y0(b), y1 = sets.y1(b);
    const int64_t s0 = side == 0 ? x0 : y0, s1 = side == 0 ? x1 : y1;
    const int64_t o0 = side == 0 ? y0 : x0, o1 = side == 0 ? y1 : x1;
    // every thread computes the set's sums (O(N_b + M_b) broadcast reads against the sweep's
    // O((N_b + M_b) d) per row; no barrier in a thread-0 branch)
    double sa, da, sb, db;
    seg_stats(AW, s0, s1, unbiased, sa, da);
    seg_stats(BW, o0, o1, unbiased, sb, db);
    const double g_self = GT[3 * b + side], g_cross = GT[3 * b + 2];
    const double t_self = TT[3 * b + side], t_cross = TT[3 * b + 2];
    const T* sh = SH + b * d;
    const T na = live ? seg_row_norm(a, sh, d) : T(0);
    double s_self = 0.0, s_cross = 0.0;
    T rs = T(0);
    seg_sweep<T>(m, a, sh, na, i, live, A, AW, s0, s1, d, kind, P, true, unbiased != 0, false,
                 T(4.0 * g_self / da), s_self, rs, g);
    seg_sweep<T>(m, a, sh, na, i, live, B, BW, o0, o1, d, kind, P, false, false, false,
                 T(2.0 * g_cross / (sa * sb)), s_cross, rs, g);
    if (g != nullptr && kind != wae_fast::KIND_POLY)
      for (int64_t k = 0; k < d; ++k) g[k] += rs * (a[k] - sh[k]);
    const double dd = unbiased ? 2.0 * (sa - double(wi)) : 2.0 * sa;
    gw += g_self * (2.0 * s_self - t_self * dd) / da + g_cross * (s_cross / sb - t_cross) / sa;
  }
  if (!live) return;
  if (g != nullptr)
    for (int64_t k = 0; k < d; ++k) g[k] = wi != T(0) ? wi * g[k] : T(0);
  if (gw_out != nullptr) gw_out[o] = gw;
}

template <class T>
SegParams<T> seg_params(const double* params, int nparams) {
  SegParams<T> P;
  P.n = nparams;
  for (int s = 0; s < wae_fast::kMaxScales; ++s) P.p[s] = s < nparams ? T(params[s]) : T(0);
  return P;
}

bool seg_params_ok(int kind, int nparams) {
  const bool poly = kind == wae_fast::KIND_POLY;
  return poly ? nparams == wae_fast::kPolyParams : (nparams >= 1 && nparams <= wae_fast::kMaxScales);
}

template <class T>
int seg_fwd_impl(const void* X, const void* Y, const void* XW, const void* YW, const int64_t* xo, const int64_t* yo,
                 int shared_y, int64_t nsets, const void* SH, const int64_t* tasks, int64_t ntasks,
                 const int64_t* set_tasks, int64_t d, int kind, const double* params, int nparams, int unbiased,
                 double* part, double* out, cudaStream_t st) {
  if (ntasks < 0 || nsets <= 0 || d <= 0 || d > kSegMaxD) return int(cudaErrorInvalidValue);
  if (ntasks > 2147483647LL) return int(cudaErrorInvalidConfiguration);
  const SegSets sets{xo, yo, shared_y};
  const T* xw = static_cast<const T*>(XW);
  const T* yw = static_cast<const T*>(YW);
  if (ntasks > 0) {
    const size_t smem = SegSmem<T>::bytes(d);
    cudaError_t e = cudaFuncSetAttribute(seg_fwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return int(e);
    WAE_LAUNCH((seg_fwd_kernel<T>), dim3(unsigned(ntasks)), dim3(kSegRows), smem, st, static_cast<const T*>(X),
               static_cast<const T*>(Y), xw, yw, sets, static_cast<const T*>(SH), tasks, d, kind,
               seg_params<T>(params, nparams), unbiased, part);
    e = cudaGetLastError();
    if (e != cudaSuccess) return int(e);
  }
  const int threads = 128;
  WAE_LAUNCH((seg_finalize_kernel<T>), dim3(unsigned((nsets + threads - 1) / threads)), dim3(threads), 0, st, xw, yw,
             sets, tasks, set_tasks, static_cast<const double*>(part), nsets, unbiased, out);
  return int(cudaGetLastError());
}

template <class T>
int seg_bwd_impl(const void* X, const void* Y, const void* XW, const void* YW, const int64_t* xo, const int64_t* yo,
                 int shared_y, const void* SH, const int64_t* tasks, int64_t ntasks, const double* grad_terms,
                 const double* terms, int64_t d, int kind, const double* params, int nparams, int unbiased, void* gx,
                 void* gy, double* gxw, double* gyw, cudaStream_t st) {
  if (ntasks < 0 || d <= 0 || d > kSegMaxD) return int(cudaErrorInvalidValue);
  if (ntasks == 0) return int(cudaSuccess);
  if (ntasks > 2147483647LL) return int(cudaErrorInvalidConfiguration);
  const size_t smem = SegSmem<T>::bytes(d);
  cudaError_t e = cudaFuncSetAttribute(seg_bwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return int(e);
  WAE_LAUNCH((seg_bwd_kernel<T>), dim3(unsigned(ntasks)), dim3(kSegRows), smem, st, static_cast<const T*>(X),
             static_cast<const T*>(Y), static_cast<const T*>(XW), static_cast<const T*>(YW),
             SegSets{xo, yo, shared_y}, static_cast<const T*>(SH), tasks, grad_terms, terms, d, kind,
             seg_params<T>(params, nparams), unbiased, static_cast<T*>(gx), static_cast<T*>(gy), gxw, gyw);
  return int(cudaGetLastError());
}

}  // namespace

extern "C" int wae_seg_fwd(int ct, const void* X, const void* Y, const void* XW, const void* YW, const int64_t* xo,
                           const int64_t* yo, int shared_y, int64_t nsets, const void* SH, const int64_t* tasks,
                           int64_t ntasks, const int64_t* set_tasks, int64_t d, int kind, const double* params,
                           int nparams, int unbiased, double* part, double* out, cudaStream_t st) {
  if (!seg_params_ok(kind, nparams)) return int(cudaErrorInvalidValue);
  if (ct == WAE_F64)
    return seg_fwd_impl<double>(X, Y, XW, YW, xo, yo, shared_y, nsets, SH, tasks, ntasks, set_tasks, d, kind, params,
                                nparams, unbiased, part, out, st);
  if (ct == WAE_F32)
    return seg_fwd_impl<float>(X, Y, XW, YW, xo, yo, shared_y, nsets, SH, tasks, ntasks, set_tasks, d, kind, params,
                               nparams, unbiased, part, out, st);
  return int(cudaErrorInvalidValue);
}

extern "C" int wae_seg_bwd(int ct, const void* X, const void* Y, const void* XW, const void* YW, const int64_t* xo,
                           const int64_t* yo, int shared_y, const void* SH, const int64_t* tasks, int64_t ntasks,
                           const double* grad_terms, const double* terms, int64_t d, int kind, const double* params,
                           int nparams, int unbiased, void* gx, void* gy, double* gxw, double* gyw, cudaStream_t st) {
  if (!seg_params_ok(kind, nparams)) return int(cudaErrorInvalidValue);
  if (ct == WAE_F64)
    return seg_bwd_impl<double>(X, Y, XW, YW, xo, yo, shared_y, SH, tasks, ntasks, grad_terms, terms, d, kind, params,
                                nparams, unbiased, gx, gy, gxw, gyw, st);
  if (ct == WAE_F32)
    return seg_bwd_impl<float>(X, Y, XW, YW, xo, yo, shared_y, SH, tasks, ntasks, grad_terms, terms, d, kind, params,
                               nparams, unbiased, gx, gy, gxw, gyw, st);
  return int(cudaErrorInvalidValue);
}
