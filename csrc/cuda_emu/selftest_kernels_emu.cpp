// Deliberately broken kernels inside the cuda_emu extension, launched by its Python hook
// selftest_launch (binding.cpp): tests/test_cuda_emu_checks.py checks that each sanitizer check
// of the emulator (runtime.cpp) reaches Python as a RuntimeError naming the kernel, the block,
// the thread, the array or buffer and the source line, and that a correct kernel runs clean.
// Only in the emulated build (never compiled by nvcc).
#include "prelude.h"

#include <cstring>

#include "portable.h"

namespace {

__global__ void clean_block_sum(const float* in, float* out) {
  WAE_SHARED(float, red, 64);
  const int t = threadIdx.x;
  red[t] = in[t];
  __syncthreads();
  for (int s = 32; s > 0; s >>= 1) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
  if (t == 0) out[0] = red[0];
}

__global__ void global_read_past_end(const float* in, float* out) {
  out[threadIdx.x] = in[threadIdx.x + 1];  // thread 63 reads in[64]
}

__global__ void shared_read_before_write(float* out) {
  WAE_SHARED(float, tile, 64);
  const float v = tile[threadIdx.x];  // before the write and its barrier
  tile[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void missing_barrier(float* out) {
  WAE_SHARED(float, tile, 64);
  tile[threadIdx.x] = float(threadIdx.x);
  out[threadIdx.x] = tile[63 - threadIdx.x];  // another warp's word, no __syncthreads
}

__global__ void lockstep_sum(float* out) {
  WAE_SHARED(float, part, 32);
  const int lane = threadIdx.x;
  part[lane] = float(lane);
  __syncwarp();
  for (int o = 16; o > 0; o >>= 1)
    if (lane < o) part[lane] += part[lane + o];  // no __syncwarp between the steps
  if (lane == 0) out[0] = part[0];
}

}  // namespace

//! Launches the named kernel on 64 floats of ``buf`` (in) and 64 of ``out``, both registered as
//! device memory (``out`` uninitialised); returns the launch's cudaError_t.
int wae_emu_selftest_launch(const char* which, const float* buf, float* out) {
  wae_emu::DeviceMemory in_mem(buf, 64 * sizeof(float), "in", true), out_mem(out, 64 * sizeof(float), "out", false);
  if (std::strcmp(which, "clean") == 0) WAE_LAUNCH((clean_block_sum), 1, 64, 0, nullptr, buf, out);
  else if (std::strcmp(which, "memcheck") == 0) WAE_LAUNCH((global_read_past_end), 1, 64, 0, nullptr, buf, out);
  else if (std::strcmp(which, "initcheck") == 0) WAE_LAUNCH((shared_read_before_write), 1, 64, 0, nullptr, out);
  else if (std::strcmp(which, "racecheck") == 0) WAE_LAUNCH((missing_barrier), 1, 64, 0, nullptr, out);
  else if (std::strcmp(which, "lockstep") == 0) WAE_LAUNCH((lockstep_sum), 1, 32, 0, nullptr, out);
  else return int(cudaErrorInvalidValue);
  return int(cudaGetLastError());
}
