// Self-test of the CUDA emulator (csrc/cuda_emu), built with g++ by tests/test_cuda_emu_runtime.py
// together with csrc/cuda_emu/runtime.cpp: small kernels in the portable spelling
// (csrc/cuda/portable.h) check barriers, shared memory, warp collectives, wmma TF32, the PTX
// models, and that broken kernels give launch errors naming the kernel, block, thread and site.
// Prints "OK <name>" or "FAIL <name>: <why>" per check.
#include "prelude.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "portable.h"
#include "wae_fast/tile_math.h"

namespace {

int failures = 0;
void check(bool ok, const char* name, const std::string& why = "") {
  std::printf("%s %s%s%s\n", ok ? "OK" : "FAIL", name, ok ? "" : ": ", ok ? "" : why.c_str());
  if (ok && !why.empty() && std::getenv("WAE_SELFTEST_VERBOSE")) std::printf("    %s\n", why.c_str());  // the message
  failures += !ok;
}
std::string last_error() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e));
}

// --- correct kernels -------------------------------------------------------------------------
__global__ void reverse_block(const int* in, int* out) {
  WAE_SHARED(int, s, 256);
  const int t = threadIdx.x;
  s[t] = in[blockIdx.x * 256 + t];
  __syncthreads();
  out[blockIdx.x * 256 + t] = s[255 - t];
}

__global__ void warp_ops(int* out) {
  const int lane = threadIdx.x & 31;
  int v = lane + 1;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const unsigned odd = __ballot_sync(0xffffffffu, lane & 1);
  const int bc = __shfl_sync(0xffffffffu, lane * 10, 7);
  const int dn = __shfl_down_sync(0xffffffffu, lane, 1);
  __syncwarp();
  out[threadIdx.x * 4 + 0] = v;
  out[threadIdx.x * 4 + 1] = int(odd == 0xaaaaaaaau);
  out[threadIdx.x * 4 + 2] = bc;
  out[threadIdx.x * 4 + 3] = dn;
}

__global__ void wmma_tile(const float* A, const float* B, float* C, int convert) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> b;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
  wmma::fill_fragment(c, 0.5f);
  wmma::load_matrix_sync(a, A, 8);
  wmma::load_matrix_sync(b, B, 16);
  if (convert) {
    for (int t = 0; t < a.num_elements; ++t) a.x[t] = wmma::__float_to_tf32(a.x[t]);
    for (int t = 0; t < b.num_elements; ++t) b.x[t] = wmma::__float_to_tf32(b.x[t]);
  }
  wmma::mma_sync(c, a, b, c);
  wmma::store_matrix_sync(C, c, 16, wmma::mem_row_major);
}

__global__ void read_unwritten(float* out) {
  WAE_SHARED(float, s, 64);
  if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];  // threads 32..63 read words nobody wrote
}

__global__ void dyn_user(float* out) {
  WAE_DYN_SMEM(buf);
  reinterpret_cast<float*>(buf)[threadIdx.x] = 2.0f;
  __syncthreads();
  out[threadIdx.x] = reinterpret_cast<float*>(buf)[threadIdx.x];
}

// --- broken kernels -----------------------------------------------------------------------------
__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void exit_before_barrier(int* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void partial_warp_collective(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x != 3) v = __shfl_sync(0xffffffffu, v, 0);
  out[threadIdx.x] = v;
}

__global__ void off_by_one_shared(int* out) {
  WAE_SHARED(int, tile, 64);
  tile[threadIdx.x + 1] = 1;  // thread 63 writes tile[64]
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x];
}

__global__ void slice_overflow(float* out) {
  WAE_DYN_SMEM(buf);
  const wae_fast::smem_ptr<float> first = wae_fast::dyn_slice<float>(buf, 0, 32, "first");
  const wae_fast::smem_ptr<float> second = wae_fast::dyn_slice<float>(buf, 128, 32, "second");
  first[threadIdx.x + 8] = 1.0f;  // threads 24..31 run into "second"
  __syncthreads();
  out[threadIdx.x] = second[threadIdx.x];
}

// --- broken kernels for the sanitizer checks (WAE_CUDA_EMU_CHECKS) ---------------------------
__global__ void global_off_by_one(const float* in, float* out, int n) {
  const int t = threadIdx.x;
  out[t] = in[t + 1];  // thread n - 1 reads in[n]
  (void)n;
}

__global__ void raw_dynamic_overflow(float* out) {
  WAE_DYN_SMEM(buf);
  float* f = reinterpret_cast<float*>(buf);  // a raw pointer: no checked array, only memcheck
  f[threadIdx.x + 16] = 1.0f;                // 64 floats of dynamic memory: threads 48.. overflow
  __syncthreads();
  out[threadIdx.x] = f[threadIdx.x];
}

__global__ void read_before_write_barrier(float* out) {
  WAE_SHARED(float, s, 64);
  const int t = threadIdx.x;
  const float v = s[t];  // read before the barrier that follows the write
  s[t] = float(t);
  __syncthreads();
  out[t] = v + s[t];
}

__global__ void read_unwritten_scratch(const float* scratch, float* out) {
  out[threadIdx.x] = scratch[threadIdx.x];  // nobody wrote the scratch buffer
}

__global__ void missing_syncthreads(float* out) {
  WAE_SHARED(float, s, 64);
  const int t = threadIdx.x;
  s[t] = float(t);
  out[t] = s[63 - t];  // written by a thread of the other warp, no __syncthreads between
}

//! Warp-synchronous sum of 32 values: correct with __syncwarp between the steps, a lockstep
//! assumption without.
template <bool kSyncwarp>
__global__ void warp_tree_sum(int* out) {
  WAE_SHARED(int, s, 32);
  const int lane = threadIdx.x;
  s[lane] = lane + 1;
  __syncwarp();
  for (int o = 16; o > 0; o >>= 1) {
    int v = 0;
    if (lane < o) v = s[lane] + s[lane + o];
    if (kSyncwarp) __syncwarp();
    if (lane < o) s[lane] = v;
    if (kSyncwarp) __syncwarp();
  }
  if (lane == 0) out[0] = s[0];
}

//! One source line with a barrier (an inlined helper) reached from two call sites: the first
//! warp waits in the first call, the second warp in the second (one barrier on the GPU? no:
//! a barrier in a branch not every thread takes).
__device__ __forceinline__ void helper_barrier() { __syncthreads(); }
__global__ void barrier_call_sites(int* out) {
  if (threadIdx.x < 32) {
    helper_barrier();
    out[threadIdx.x] = 2;
  }
  helper_barrier();
  out[threadIdx.x] += 1;
}

//! Block sum in shared memory, barriers between the steps: clean under every check.
__global__ void block_tree_sum(const float* in, float* out) {
  WAE_SHARED(float, red, 128);
  const int t = threadIdx.x;
  red[t] = in[t];
  __syncthreads();
  for (int s = 64; s > 0; s >>= 1) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
  if (t == 0) out[0] = red[0];
}

__global__ void traps(int*) {
  if (blockIdx.x == 1 && threadIdx.x == 7) __trap();
}

// --- PTX models and the tile math's device branch ------------------------------------------
template <class T>
double ulp_err(T got, double exact) {
  const double u = std::nextafter(T(exact), T(INFINITY)) - T(exact);
  return std::fabs(double(got) - exact) / u;
}

//! ulp of 1/v in fp64
double ulp_of_recip(double v) { return std::nextafter(std::fabs(1.0 / v), INFINITY) - std::fabs(1.0 / v); }

void ptx_models() {
  double worst_rcp = 0, worst_newton32 = 0, worst_newton64 = 0, worst_sqrt = 0, worst_one_step = 0;
  uint32_t s = 12345;
  for (int i = 0; i < 20000; ++i) {
    s = s * 1664525u + 1013904223u;
    const float x = std::ldexp(1.0f + (s >> 8) * 0x1p-24f, int(s % 60) - 30);
    const double xd = std::ldexp(1.0 + (s >> 4) * 0x1p-28 + i * 0x1p-50, int(s % 80) - 40);
    worst_rcp = std::max(worst_rcp, ulp_err(wae_fast::ptx_rcp_approx_ftz_f32(x), 1.0 / double(x)));
    worst_sqrt = std::max(worst_sqrt, ulp_err(wae_fast::ptx_sqrt_approx_ftz_f32(x), std::sqrt(double(x))));
    worst_newton32 = std::max(worst_newton32, ulp_err(wae_fast::recip<float, float>(x), 1.0 / double(x)));
    const long double exact = 1.0L / (long double)xd;
    const double y3 = wae_fast::recip<double, double>(xd);
    worst_newton64 = std::max(worst_newton64, double(std::fabs((long double)y3 - exact) / (long double)ulp_of_recip(xd)));
    double y1 = wae_fast::ptx_rcp_approx_ftz_f64(xd);
    y1 = std::fma(y1, std::fma(-xd, y1, 1.0), y1);  // ONE Newton step: not enough
    worst_one_step = std::max(worst_one_step, double(std::fabs((long double)y1 - exact) / (long double)ulp_of_recip(xd)));
  }
  check(worst_rcp >= 0.99 && worst_rcp <= 1.5, "rcp.approx.ftz.f32 model at its 1-ulp bound",
        "worst " + std::to_string(worst_rcp));
  check(worst_sqrt >= 0.99 && worst_sqrt <= 1.5, "sqrt.approx.ftz.f32 model at its 1-ulp bound",
        "worst " + std::to_string(worst_sqrt));
  check(worst_newton32 <= 1.0, "fp32 reciprocal (rcp.approx + 1 Newton step) within 1 ulp",
        "worst " + std::to_string(worst_newton32));
  check(worst_newton64 <= 1.0, "fp64 reciprocal (rcp.approx.f64 + 3 Newton steps) within 1 ulp",
        "worst " + std::to_string(worst_newton64));
  check(worst_one_step > 4.0, "fp64 model: one Newton step is visibly short", "worst " + std::to_string(worst_one_step));
  // cvt.rna.tf32.f32: ties away from zero
  check(nvcuda::wmma::__float_to_tf32(1.0f + 0x1p-11f) == 1.0f + 0x1p-10f &&
            nvcuda::wmma::__float_to_tf32(-(1.0f + 0x1p-11f)) == -(1.0f + 0x1p-10f) &&
            nvcuda::wmma::__float_to_tf32(1.0f + 0x1p-12f) == 1.0f,
        "__float_to_tf32 rounds to nearest, ties away");
}

}  // namespace

int main() {
  unsetenv("WAE_CUDA_EMU_CHECKS");  // the emulator's own semantics first (NaN poison), checks below
  {  // barriers + static shared memory, 3 blocks
    std::vector<int> in(768), out(768, -1);
    for (int i = 0; i < 768; ++i) in[i] = i * 7;
    WAE_LAUNCH((reverse_block), 3, 256, 0, nullptr, in.data(), out.data());
    bool ok = last_error().empty();
    for (int b = 0; b < 3; ++b)
      for (int t = 0; t < 256; ++t) ok = ok && out[b * 256 + t] == in[b * 256 + 255 - t];
    check(ok, "barrier and static shared memory per block");
  }
  {  // warp collectives
    std::vector<int> out(64 * 4, -1);
    WAE_LAUNCH((warp_ops), 1, 64, 0, nullptr, out.data());
    bool ok = last_error().empty();
    for (int t = 0; t < 64; ++t) {
      const int lane = t & 31;
      ok = ok && out[t * 4] == 528 && out[t * 4 + 1] == 1 && out[t * 4 + 2] == 70 &&
           out[t * 4 + 3] == (lane == 31 ? 31 : lane + 1);
    }
    check(ok, "shfl_xor / ballot / shfl / shfl_down / syncwarp");
  }
  {  // wmma: products of TF32-truncated (unconverted) or rna-rounded inputs, fp32 sums in k order
    alignas(128) static float A[16 * 8], B[8 * 16];
    for (int i = 0; i < 128; ++i) {
      A[i] = 1.0f + float(i) * 0x1p-14f + 0x1p-20f;
      B[i] = 0.75f - float(i) * 0x1p-15f - 0x1p-21f;
    }
    for (int convert = 0; convert < 2; ++convert) {
      alignas(128) static float Cs[256];
      WAE_LAUNCH((wmma_tile), 1, 32, 0, nullptr, A, B, Cs, convert);
      bool ok = last_error().empty();
      for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 16; ++n) {
          float acc = 0.5f;
          for (int k = 0; k < 8; ++k) {
            const float a = convert ? nvcuda::wmma::__float_to_tf32(A[m * 8 + k])
                                    : nvcuda::wmma::detail::tf32_trunc(A[m * 8 + k]);
            const float b = convert ? nvcuda::wmma::__float_to_tf32(B[k * 16 + n])
                                    : nvcuda::wmma::detail::tf32_trunc(B[k * 16 + n]);
            acc += a * b;
          }
          ok = ok && Cs[m * 16 + n] == acc;
        }
      check(ok, convert ? "wmma tf32 mma (converted inputs)" : "wmma tf32 mma (truncated inputs)");
    }
  }
  {  // uninitialised shared memory reads NaN (poison)
    std::vector<float> out(64, 0.f);
    WAE_LAUNCH((read_unwritten), 1, 64, 0, nullptr, out.data());
    check(last_error().empty() && out[0] == 1.0f && std::isnan(out[40]), "unwritten shared memory reads NaN");
  }
  {  // dynamic shared memory: over 48 KB only after cudaFuncSetAttribute
    std::vector<float> out(64, 0.f);
    WAE_LAUNCH((dyn_user), 1, 64, 60 * 1024, nullptr, out.data());
    const std::string e = last_error();
    check(e.find("dynamic shared memory") != std::string::npos, "60 KB dynamic smem refused without opt-in", e);
    cudaFuncSetAttribute(dyn_user, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
    WAE_LAUNCH((dyn_user), 1, 64, 60 * 1024, nullptr, out.data());
    check(last_error().empty() && out[63] == 2.0f, "60 KB dynamic smem after opt-in");
  }
  {  // broken kernels: errors name kernel, block, thread, site
    std::vector<int> out(256, 0);
    WAE_LAUNCH((divergent_barrier), 2, 64, 0, nullptr, out.data());
    std::string e = last_error();
    check(e.find("divergent_barrier") != std::string::npos && e.find("different barriers") != std::string::npos &&
              e.find("cuda_emu_selftest.cpp:") != std::string::npos && e.find("block (0, 0, 0)") != std::string::npos,
          "barrier in a divergent branch", e);
    WAE_LAUNCH((exit_before_barrier), 1, 64, 0, nullptr, out.data());
    e = last_error();
    check(e.find("exit_before_barrier") != std::string::npos && e.find("thread (5, 0, 0) has exited") != std::string::npos,
          "thread exits while others wait at a barrier", e);
    WAE_LAUNCH((partial_warp_collective), 1, 32, 0, nullptr, out.data());
    e = last_error();
    check(e.find("warp collective never completed") != std::string::npos, "warp collective missing a lane", e);
    WAE_LAUNCH((off_by_one_shared), 1, 64, 0, nullptr, out.data());
    e = last_error();
    check(e.find("shared memory out of bounds: tile[64] of 64") != std::string::npos &&
              e.find("thread (63, 0, 0)") != std::string::npos,
          "off-by-one shared index", e);
    std::vector<float> fout(32, 0.f);
    WAE_LAUNCH((slice_overflow), 1, 32, 256, nullptr, fout.data());
    e = last_error();
    check(e.find("shared memory out of bounds: first[32] of 32") != std::string::npos &&
              e.find("thread (24, 0, 0)") != std::string::npos,
          "overflow of one dynamic shared slice into the next", e);
    WAE_LAUNCH((traps), 2, 32, 0, nullptr, out.data());
    e = last_error();
    check(e.find("__trap()") != std::string::npos && e.find("block (1, 0, 0) thread (7, 0, 0)") != std::string::npos,
          "__trap names block and thread", e);
    WAE_LAUNCH((traps), 1, 2048, 0, nullptr, out.data());
    check(last_error().find("invalid configuration") != std::string::npos, "2048 threads per block refused");
  }
  {  // sanitizer checks: correct kernels clean under all of them, each broken kernel caught
    setenv("WAE_CUDA_EMU_CHECKS", "all", 1);
    std::vector<int> in(768), out(768, -1);
    for (int i = 0; i < 768; ++i) in[i] = i * 7;
    std::vector<float> fin(128), fout(128, 0.f);
    for (int i = 0; i < 128; ++i) fin[i] = float(i);
    std::string e;
    {
      wae_emu::DeviceMemory m1(in.data(), in.size() * 4, "in", true), m2(out.data(), out.size() * 4, "out", false);
      WAE_LAUNCH((reverse_block), 3, 256, 0, nullptr, in.data(), out.data());
      e = last_error();
      std::vector<int> wout(64 * 4, -1);
      wae_emu::DeviceMemory m3(wout.data(), wout.size() * 4, "wout", false);
      WAE_LAUNCH((warp_ops), 1, 64, 0, nullptr, wout.data());
      e += last_error();
      WAE_LAUNCH((warp_tree_sum<true>), 1, 32, 0, nullptr, out.data());
      e += last_error();
      const bool sum_ok = out[0] == 528;
      wae_emu::DeviceMemory m4(fin.data(), fin.size() * 4, "fin", true), m5(fout.data(), 4, "fout", false);
      WAE_LAUNCH((block_tree_sum), 1, 128, 0, nullptr, fin.data(), fout.data());
      e += last_error();
      check(e.empty() && sum_ok && fout[0] == 8128.0f, "correct kernels clean under all checks", e);
      alignas(128) static float A[16 * 8], B[8 * 16], Cs[256];
      wae_emu::DeviceMemory ma(A, sizeof A, "A", true), mb(B, sizeof B, "B", true), mc(Cs, sizeof Cs, "C", false);
      WAE_LAUNCH((wmma_tile), 1, 32, 0, nullptr, A, B, Cs, 1);
      std::vector<float> dout(64, 0.f);
      wae_emu::DeviceMemory md(dout.data(), 256, "dout", false);
      WAE_LAUNCH((dyn_user), 1, 64, 256, nullptr, dout.data());
      e = last_error();
      check(e.empty(), "wmma and dynamic shared memory clean under all checks", e);
    }
    {  // memcheck: global memory
      wae_emu::DeviceMemory m1(fin.data(), 64 * 4, "in", true), m2(fout.data(), 64 * 4, "out", false);
      WAE_LAUNCH((global_off_by_one), 1, 64, 0, nullptr, fin.data(), fout.data(), 64);
      e = last_error();
      check(e.find("global_off_by_one") != std::string::npos &&
                e.find("global memory out of bounds: 4-byte read") != std::string::npos &&
                e.find("0 bytes past the end of 'in' (256 bytes)") != std::string::npos &&
                e.find("thread (63, 0, 0)") != std::string::npos && e.find("cuda_emu_selftest.cpp:") != std::string::npos,
            "memcheck: global read one past a buffer", e);
    }
    {  // memcheck: raw pointer past the dynamic buffer
      std::vector<float> dout(64, 0.f);
      WAE_LAUNCH((raw_dynamic_overflow), 1, 64, 256, nullptr, dout.data());
      e = last_error();
      check(e.find("shared memory out of bounds: 4-byte write of the dynamic shared buffer") == std::string::npos &&
                e.find("shared memory out of bounds: 4-byte write") != std::string::npos &&
                e.find("outside the dynamic buffer (256 bytes)") != std::string::npos &&
                e.find("thread (48, 0, 0)") != std::string::npos,
            "memcheck: raw pointer past the dynamic shared buffer", e);
    }
    setenv("WAE_CUDA_EMU_CHECKS", "initcheck", 1);
    {
      std::vector<float> o(64, 0.f);
      WAE_LAUNCH((read_before_write_barrier), 1, 64, 0, nullptr, o.data());
      e = last_error();
      check(e.find("uninitialised shared memory read: 4-byte read of s[0]") != std::string::npos &&
                e.find("read_before_write_barrier") != std::string::npos &&
                e.find("block (0, 0, 0) thread (0, 0, 0)") != std::string::npos &&
                e.find("cuda_emu_selftest.cpp:") != std::string::npos,
            "initcheck: shared read before the writing barrier", e);
      std::vector<float> scratch(64, 0.f);
      wae_emu::DeviceMemory ms(scratch.data(), 256, "scratch", false), mo(o.data(), 256, "out", false);
      WAE_LAUNCH((read_unwritten_scratch), 1, 64, 0, nullptr, scratch.data(), o.data());
      e = last_error();
      check(e.find("uninitialised global memory read: 4-byte read of 'scratch' at byte 0 of 256") != std::string::npos,
            "initcheck: unwritten scratch read", e);
      cudaMemsetAsync(scratch.data(), 0, 256);
      WAE_LAUNCH((read_unwritten_scratch), 1, 64, 0, nullptr, scratch.data(), o.data());
      e = last_error();
      check(e.empty(), "initcheck: scratch written by cudaMemsetAsync", e);
    }
    setenv("WAE_CUDA_EMU_CHECKS", "racecheck", 1);
    {
      std::vector<float> o(64, 0.f);
      WAE_LAUNCH((missing_syncthreads), 1, 64, 0, nullptr, o.data());
      e = last_error();
      check(e.find("shared memory race: thread (31, 0, 0) read and thread (32, 0, 0) writes s[32]") != std::string::npos &&
                e.find("since the block start") != std::string::npos &&
                e.find("missing_syncthreads") != std::string::npos,
            "racecheck: missing __syncthreads between a write and another thread's read", e);
      std::vector<int> io(4, 0);
      WAE_LAUNCH((warp_tree_sum<false>), 1, 32, 0, nullptr, io.data());
      e = last_error();
      check(e.find("warp-synchronous assumption: lanes") != std::string::npos &&
                e.find("of warp 0") != std::string::npos && e.find("no __syncwarp") != std::string::npos,
            "racecheck: lockstep assumption inside a warp", e);
    }
    unsetenv("WAE_CUDA_EMU_CHECKS");
    {  // synccheck (always on): a barrier's identity is its site and occurrence
      std::vector<int> o(64, 0);
      WAE_LAUNCH((barrier_call_sites), 1, 64, 0, nullptr, o.data());
      e = last_error();
      check(e.find("different barriers (one source line reached from two call sites") != std::string::npos &&
                e.find("thread (32, 0, 0) at cuda_emu_selftest.cpp:") != std::string::npos &&
                e.find("(its barrier #1)") != std::string::npos && e.find(" <- cuda_emu_selftest.cpp:") != std::string::npos,
            "barrier identity: one line, two call sites", e);
    }
    {  // the dynamic lockstep probe: a warp's lanes in a shuffled order
      setenv("WAE_CUDA_EMU_ORDER", "shuffle", 1);
      bool differs = false;
      for (int seed = 1; seed <= 8 && !differs; ++seed) {
        setenv("WAE_CUDA_EMU_SEED", std::to_string(seed).c_str(), 1);
        std::vector<int> io(4, 0);
        WAE_LAUNCH((warp_tree_sum<false>), 1, 32, 0, nullptr, io.data());
        differs = last_error().empty() && io[0] != 528;
      }
      std::vector<int> io(4, 0);
      WAE_LAUNCH((warp_tree_sum<true>), 1, 32, 0, nullptr, io.data());
      check(differs && io[0] == 528, "shuffled lanes change a lockstep sum, not a synced one");
      unsetenv("WAE_CUDA_EMU_ORDER");
      unsetenv("WAE_CUDA_EMU_SEED");
    }
  }
  ptx_models();
  return failures == 0 ? 0 : 1;
}
