// wae_fast CUDA kernels of the kernel-matrix product family (kernel_matmul): out = K(A, B) @ V and
// the gradient of <U, K(A, B) @ V> to A, never forming K.  No torch headers; extern "C" launchers
// in wae_cuda.h.  The binding passes the operands already shifted and in the compute dtype T.
//
//  * kmm_fwd_tiles: block (I: 64 rows of A, c: 64 output columns), walks the 64-row tiles of B:
//    the pair tile through the MMD tiles' exact FMA dot products (tile_sqdist, mmd_tiles.cuh;
//    the dot products themselves for the polynomial), the kernel (eval_kernel: tile_math.h) into
//    shared memory, then out[i][c] += sum_j K_ij V[j][c] from shared memory (4 x 4 per thread).
//  * kmm_grad_tiles: block (I, c: 64 gradient columns), per tile of B: w of the pairs, then
//    U_blk V_blk^T by the same dot routine (over the P columns), W = w * (U V^T) into shared
//    memory, and g[i][k] += sum_j W_ij (a_ik - b_jk) (direct differences, no rowsum(W) a - W b
//    cancellation; polynomial: -b_jk); out = 2 g.  gy is the same launch with (B, A, V, U).
// Every output element is written by one thread: no atomics; deterministic.
#include "mmd_tiles.cuh"

namespace {

constexpr int kPC = 64;  // output / gradient columns per block (4 x 16 per thread row)

template <class T>
struct KmmLayout {
  static constexpr int DK = TileCfg<T>::DK;
  static constexpr size_t As = 0;
  static constexpr size_t Bs = As + size_t(DK) * kLD * sizeof(T);
  static constexpr size_t nrm = Bs + size_t(DK) * kLD * sizeof(T);
  static constexpr size_t Ks = (nrm + 2 * kBM * sizeof(T) + 127) / 128 * 128;
  static constexpr size_t Vs = Ks + size_t(kBM) * kWLD * sizeof(T);
  static constexpr size_t bytes = Vs + size_t(kBN) * kPC * sizeof(T);  // fp32 ~41 KB, fp64 ~74 KB
};

template <class T, int KIND>
__global__ void __launch_bounds__(kThreads, 1)
    kmm_fwd_tiles(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ V, int64_t nA, int64_t nB,
                  int64_t d, int64_t pv, KParams<T> P, T* __restrict__ out) {
  using L = KmmLayout<T>;
  constexpr bool kDot = KIND == wae_fast::KIND_POLY;
  extern __shared__ __align__(128) unsigned char dsmem[];
  T* Ks = reinterpret_cast<T*>(dsmem + L::Ks);
  T* Vs = reinterpret_cast<T*>(dsmem + L::Vs);
  const DotSmem<T> sm{reinterpret_cast<T*>(dsmem + L::As), reinterpret_cast<T*>(dsmem + L::Bs),
                      reinterpret_cast<T*>(dsmem + L::nrm), nullptr};
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t i0 = int64_t(blockIdx.x) * kBM, c0 = int64_t(blockIdx.y) * kPC;
  const LoadSrc<T> sa{A}, sb{B};
  T acc[4][4];
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int p = 0; p < 4; ++p) acc[q][p] = T(0);
  for (int64_t j0 = 0; j0 < nB; j0 += kBN) {
    T r[4][4];
    tile_sqdist<T, PREC_IEEE, kDot>(sa, sb, nA, nB, d, i0, j0, sm, r);
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        T k, w;
        eval_kernel<T, KIND>(r[q][p], P, k, w);
        Ks[(ty + 16 * q) * kWLD + tx + 16 * p] = (j0 + tx + 16 * p < nB) ? k : T(0);
      }
    for (int e = tid; e < kBN * kPC; e += kThreads) {
      const int j = e / kPC, c = e % kPC;
      Vs[e] = (j0 + j < nB && c0 + c < pv) ? V[(j0 + j) * pv + c0 + c] : T(0);
    }
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < kBN; ++j) {
      T kv[4], vv[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) kv[q] = Ks[(ty + 16 * q) * kWLD + j];
#pragma unroll
      for (int p = 0; p < 4; ++p) vv[p] = Vs[j * kPC + tx + 16 * p];
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int p = 0; p < 4; ++p) acc[q][p] = fma(kv[q], vv[p], acc[q][p]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const int64_t i = i0 + ty + 16 * q, c = c0 + tx + 16 * p;
      if (i < nA && c < pv) out[i * pv + c] = acc[q][p];
    }
}

template <class T, int KIND>
__global__ void __launch_bounds__(kThreads, 1)
    kmm_grad_tiles(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ U,
                   const T* __restrict__ V, int64_t nA, int64_t nB, int64_t d, int64_t pv, KParams<T> P,
                   T* __restrict__ out) {
  using L = KmmLayout<T>;
  constexpr bool kDot = KIND == wae_fast::KIND_POLY;
  extern __shared__ __align__(128) unsigned char dsmem[];
  T* Ws = reinterpret_cast<T*>(dsmem + L::Ks);
  T* Bc = reinterpret_cast<T*>(dsmem + L::Vs);
  const DotSmem<T> sm{reinterpret_cast<T*>(dsmem + L::As), reinterpret_cast<T*>(dsmem + L::Bs),
                      reinterpret_cast<T*>(dsmem + L::nrm), nullptr};
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t i0 = int64_t(blockIdx.x) * kBM, c0 = int64_t(blockIdx.y) * kPC;
  const LoadSrc<T> sa{A}, sb{B}, su{U}, sv{V};
  T acc[4][4];
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int p = 0; p < 4; ++p) acc[q][p] = T(0);
  for (int64_t j0 = 0; j0 < nB; j0 += kBN) {
    T r[4][4], uv[4][4];
    tile_sqdist<T, PREC_IEEE, kDot>(sa, sb, nA, nB, d, i0, j0, sm, r);
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        T k, w;
        eval_kernel<T, KIND>(r[q][p], P, k, w);
        r[q][p] = (j0 + tx + 16 * p < nB) ? w : T(0);
      }
    __syncthreads();  // the staging buffers and nrm are reused by the (U, V) dot products
    tile_sqdist<T, PREC_IEEE, true>(su, sv, nA, nB, pv, i0, j0, sm, uv);
#pragma unroll
    for (int q = 0; q < 4; ++q)
#pragma unroll
      for (int p = 0; p < 4; ++p) Ws[(ty + 16 * q) * kWLD + tx + 16 * p] = r[q][p] * uv[q][p];
    for (int e = tid; e < kBN * kPC; e += kThreads) {
      const int j = e / kPC, c = e % kPC;
      Bc[e] = (j0 + j < nB && c0 + c < d) ? B[(j0 + j) * d + c0 + c] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int row = ty + 16 * q;
      const int64_t i = i0 + row;
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const int col = tx + 16 * p;
        const T a = (kDot || i >= nA || c0 + col >= d) ? T(0) : A[i * d + c0 + col];
        T s = T(0);
#pragma unroll 8
        for (int j = 0; j < kBN; ++j) s = fma(Ws[row * kWLD + j], a - Bc[j * kPC + col], s);
        acc[q][p] += s;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const int64_t i = i0 + ty + 16 * q, c = c0 + tx + 16 * p;
      if (i < nA && c < d) out[i * d + c] = T(2) * acc[q][p];
    }
}

template <class T, int KIND>
cudaError_t launch_kmm_k(bool grad, const T* A, const T* B, const T* U, const T* V, int64_t nA, int64_t nB, int64_t d,
                         int64_t pv, const KParams<T>& P, T* out, cudaStream_t st) {
  constexpr size_t smem = KmmLayout<T>::bytes;
  const int64_t cols = grad ? d : pv;
  dim3 grid(unsigned(ceil_div(nA, kBM)), unsigned(ceil_div(cols, kPC)));
  if (grad) {
    auto kern = kmm_grad_tiles<T, KIND>;
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
    kern<<<grid, kThreads, smem, st>>>(A, B, U, V, nA, nB, d, pv, P, out);
  } else {
    auto kern = kmm_fwd_tiles<T, KIND>;
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return e;
    kern<<<grid, kThreads, smem, st>>>(A, B, V, nA, nB, d, pv, P, out);
  }
  return cudaGetLastError();
}

template <class T>
int kmm_impl(bool grad, const void* A, const void* B, const void* U, const void* V, int64_t nA, int64_t nB, int64_t d,
             int64_t pv, int kind, const double* params, int nparams, void* out, cudaStream_t st) {
  if (nA <= 0 || nB <= 0 || d <= 0 || pv <= 0) return int(cudaErrorInvalidValue);
  if (!grid_ok(nA, ceil_div(grad ? d : pv, kPC))) return int(cudaErrorInvalidConfiguration);
  const KParams<T> P = make_params<T>(params, nparams);
  const T* a = static_cast<const T*>(A);
  const T* b = static_cast<const T*>(B);
  const T* u = static_cast<const T*>(U);
  const T* v = static_cast<const T*>(V);
  T* o = static_cast<T*>(out);
  switch (kind) {
    case wae_fast::KIND_IMQ: return int(launch_kmm_k<T, wae_fast::KIND_IMQ>(grad, a, b, u, v, nA, nB, d, pv, P, o, st));
    case wae_fast::KIND_RBF: return int(launch_kmm_k<T, wae_fast::KIND_RBF>(grad, a, b, u, v, nA, nB, d, pv, P, o, st));
    case wae_fast::KIND_POLY: return int(launch_kmm_k<T, wae_fast::KIND_POLY>(grad, a, b, u, v, nA, nB, d, pv, P, o, st));
  }
  return int(cudaErrorInvalidValue);
}

}  // namespace

extern "C" int wae_kmm_fwd(int ct, const void* A, const void* B, const void* V, int64_t nA, int64_t nB, int64_t d,
                           int64_t pv, int kind, const double* params, int nparams, void* out, cudaStream_t st) {
  if (nparams < 1 || nparams > wae_fast::kMaxScales) return int(cudaErrorInvalidValue);
  if (ct == WAE_F64) return kmm_impl<double>(false, A, B, nullptr, V, nA, nB, d, pv, kind, params, nparams, out, st);
  if (ct == WAE_F32) return kmm_impl<float>(false, A, B, nullptr, V, nA, nB, d, pv, kind, params, nparams, out, st);
  return int(cudaErrorInvalidValue);
}

extern "C" int wae_kmm_grad(int ct, const void* A, const void* B, const void* U, const void* V, int64_t nA, int64_t nB,
                            int64_t d, int64_t pv, int kind, const double* params, int nparams, void* out,
                            cudaStream_t st) {
  if (nparams < 1 || nparams > wae_fast::kMaxScales) return int(cudaErrorInvalidValue);
  if (ct == WAE_F64) return kmm_impl<double>(true, A, B, U, V, nA, nB, d, pv, kind, params, nparams, out, st);
  if (ct == WAE_F32) return kmm_impl<float>(true, A, B, U, V, nA, nB, d, pv, kind, params, nparams, out, st);
  return int(cudaErrorInvalidValue);
}
