// C ABI of the wae_fast CUDA kernels (csrc/cuda/*.cu, compiled by nvcc with NO torch headers).
// The binding (binding.cpp) allocates memory with torch and passes raw pointers and the stream.
//
// dtype codes: 0 = float32, 1 = float64, 2 = float16, 3 = bfloat16.  The compute dtype is
// float64 for float64 inputs, float32 otherwise.  All launchers return a cudaError_t as int
// (0 = success) and never synchronise.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { WAE_F32 = 0, WAE_F64 = 1, WAE_F16 = 2, WAE_BF16 = 3 };

//! precision codes of the dot products (fp32 compute only; fp64 ignores them): "ieee" exact FMAs,
//! "tf32" one tensor-core product, "tf32x3" split hi/lo tensor-core products.  The tensor-core
//! paths are used only for d >= 16 on sm_80+ (the exact path otherwise).
enum { WAE_PREC_IEEE = 0, WAE_PREC_TF32 = 1, WAE_PREC_TF32X3 = 2 };

//! Bytes of scratch memory mmd_fwd / mmd_bwd need (256-byte aligned pieces).
size_t wae_mmd_workspace_bytes(int dtype, int64_t n, int64_t m, int64_t d, int for_backward);

//! terms (device, float64, 3) = (mean k(x,x'), mean k(y,y'), mean k(x,y)) under the estimator.
//! offset: device, compute dtype, (3, d) contiguous: the shifts of the xx, yy and xy terms (rows
//! 0, 1, 2; the xy row also shifts the cross part of the gradients).  params: HOST array of
//! nparams (<= 16) doubles.
int wae_mmd_fwd(int dtype, const void* x, const void* y, const void* offset, int64_t n, int64_t m, int64_t d,
                int kind, const double* params, int nparams, int unbiased, int precision, double* terms,
                void* workspace, size_t workspace_bytes, cudaStream_t stream);

//! gx (n, d) and/or gy (m, d) in the INPUT dtype (null to skip) = sum_t grad_terms[t] d terms[t]/d.
//! grad_terms: DEVICE array of 3 doubles (read by the kernels: no host synchronisation).
int wae_mmd_bwd(int dtype, const void* x, const void* y, const void* offset, int64_t n, int64_t m, int64_t d,
                int kind, const double* params, int nparams, int unbiased, int precision, const double* grad_terms,
                void* gx, void* gy, void* workspace, size_t workspace_bytes, cudaStream_t stream);

//! One launch for small sets (mmd_small.cu; IMQ or RBF, 1 <= n, m, d <= 64): the per-term shifts
//! of the contract (lower medians of x and y, their torch.lerp with weight m / (n + m)) computed
//! in the kernel, part (device, float64, (wae_mmd_small_blocks(n, m), 3)): per-block partial
//! terms (their sum over blocks is wae_mmd_fwd's terms), and, unless null, the fused gradient
//! parts gx_parts (2, n, d) = d terms[0]/dx, d terms[2]/dx and gy_parts (2, m, d) = d terms[1]/dy,
//! d terms[2]/dy in the compute dtype.  No workspace, no atomics, no host synchronisation.
int64_t wae_mmd_small_blocks(int64_t n, int64_t m);
int wae_mmd_small(int dtype, const void* x, const void* y, int64_t n, int64_t m, int64_t d, int kind,
                  const double* params, int nparams, int unbiased, double* part, void* gx_parts, void* gy_parts,
                  cudaStream_t stream);

//! Bytes of scratch memory prior_fwd / prior_bwd need: O(n d) plus O(row blocks) partials,
//! nothing of size m * d or n * m.
size_t wae_prior_workspace_bytes(int dtype, int64_t n, int64_t m, int64_t d, int for_backward);

//! MMD terms between x (n, d) and m prior samples y_j[k] = sqrt(sigma2) * randn(seed, j * d + k)
//! generated in the kernels (never stored).  off_xx / off_xy: device, compute dtype, d elements:
//! the shifts of the xx term (mean(x)) and of the xy term (n / (n + m) * mean(x)); yy uses 0.
//! terms (device, float64, 3) as for wae_mmd_fwd.  seed < 2^63.
int wae_prior_fwd(int dtype, const void* x, const void* off_xx, const void* off_xy, int64_t n, int64_t m, int64_t d,
                  int kind, const double* params, int nparams, double sigma2, int unbiased, uint64_t seed,
                  int precision, double* terms, void* workspace, size_t workspace_bytes, cudaStream_t stream);

//! gx (n, d, input dtype) = d/dx sum_t grad_terms[t] terms[t] (grad_terms: DEVICE, 3 doubles);
//! the self part shifted by off_xx (mean(x)), the cross part by off_xy (n / (n + m) * mean(x)).
int wae_prior_bwd(int dtype, const void* x, const void* off_xx, const void* off_xy, int64_t n, int64_t m, int64_t d,
                  int kind, const double* params, int nparams, double sigma2, int unbiased, uint64_t seed, int precision,
                  const double* grad_terms, void* gx, void* workspace, size_t workspace_bytes, cudaStream_t stream);

//! kernel_matmul (kmm_kernels.cu), operands already shifted, contiguous, in the compute dtype
//! ct (WAE_F32 or WAE_F64): out (nA, pv) = K(A, B) @ V for A (nA, d), B (nB, d), V (nB, pv).
int wae_kmm_fwd(int ct, const void* A, const void* B, const void* V, int64_t nA, int64_t nB, int64_t d, int64_t pv,
                int kind, const double* params, int nparams, void* out, cudaStream_t stream);

//! out (nA, d) = 2 sum_j w(A_i, B_j) (U_i . V_j) (A_i - B_j) (polynomial: -B_j), U (nA, pv):
//! the gradient of <U, K(A, B) @ V> to A (tile_math.h: w).
int wae_kmm_grad(int ct, const void* A, const void* B, const void* U, const void* V, int64_t nA, int64_t nB, int64_t d,
                 int64_t pv, int kind, const double* params, int nparams, void* out, cudaStream_t stream);

//! mmd_segments (segments_kernels.cu), points and weights contiguous in the compute dtype ct
//! (weights null: unit), offsets xo (B + 1,) and yo ((B + 1,), or [0, M] with shared_y) int64,
//! shifts SH (B, d), all DEVICE pointers, as the host task tables of
//! wae_fast.segment_sums.Plan (block 64).  Forward: one launch of the (ntasks, 4) table
//! [set, term, r0, r1] writing part (ntasks,) doubles, then one finalize writing out (B, 3)
//! float64 terms.  Backward: one launch of the (ntasks, 6) table [side, b0, b1, r0, r1, o0]
//! writing, at output rows o0 + i - r0, the coordinate gradients gx / gy (rows, d) in ct and the
//! weight gradients gxw / gyw (rows,) in double (any of them null: not wanted) of
//! sum_b grad_terms[b] . terms[b] (a shared y: one slice per chunk of sets).  d <= 256.
int wae_seg_fwd(int ct, const void* X, const void* Y, const void* XW, const void* YW, const int64_t* xo,
                const int64_t* yo, int shared_y, int64_t nsets, const void* SH, const int64_t* tasks, int64_t ntasks,
                const int64_t* set_tasks, int64_t d, int kind, const double* params, int nparams, int unbiased,
                double* part, double* out, cudaStream_t stream);
int wae_seg_bwd(int ct, const void* X, const void* Y, const void* XW, const void* YW, const int64_t* xo,
                const int64_t* yo, int shared_y, const void* SH, const int64_t* tasks, int64_t ntasks,
                const double* grad_terms, const double* terms, int64_t d, int kind, const double* params, int nparams,
                int unbiased, void* gx, void* gy, double* gxw, double* gyw, cudaStream_t stream);

//! z = mu + exp(logvar / 2) * eps, eps[i] = tl.randn(seed, i) (flat int64 index), input dtype.
int wae_reparam_fwd(int dtype, const void* mu, const void* logvar, void* z, int64_t numel, uint64_t seed,
                    cudaStream_t stream);

//! grad_logvar = grad_z * eps * exp(logvar / 2) / 2, eps regenerated from seed.
int wae_reparam_bwd(int dtype, const void* grad_z, const void* logvar, void* grad_logvar, int64_t numel,
                    uint64_t seed, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
