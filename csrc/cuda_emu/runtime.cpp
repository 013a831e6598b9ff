// cuda_emu runtime: fibers, barriers, warp rendezvous, shared memory and the runtime API shim
// (execution model: wae_emu.h).  x86-64 System V only.
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "wae_emu.h"
#include "cuda_runtime.h"

#if !defined(__x86_64__)
#error "cuda_emu: the fiber switch is written for x86-64"
#endif

// switch(save, to): push the callee-saved registers, save rsp to *save, load rsp = to, pop, ret.
extern "C" void wae_emu_switch(void** save, void* to);
asm(R"(
.text
.p2align 4
.globl wae_emu_switch
.hidden wae_emu_switch
.type wae_emu_switch,@function
wae_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size wae_emu_switch,.-wae_emu_switch
)");

namespace wae_emu {

thread_local Ctx g_ctx;  // default TLS model: the extension is dlopen()ed

namespace {

enum State : int { RUNNABLE, AT_BARRIER, AT_WARP, DONE, FAILED };

constexpr size_t kStack = 256 * 1024;  // per thread: the kernels keep small frames
constexpr size_t kGuard = 4096;        // PROT_NONE page under each stack: overflow faults
constexpr size_t kArena = kSmemOptinLimit + kStaticSmemLimit + 4096;

struct Fiber {
  void* sp = nullptr;
  State state = DONE;
  uint3 tid{0, 0, 0};
  const char* site_file = nullptr;  // barrier / collective the thread waits at
  int site_line = 0;
  size_t smem_cursor = 0;  // next static shared array of this thread (same order in every thread)
};

struct Warp {
  unsigned arrived = 0;
  unsigned mask = 0;
  const char* what = nullptr;
  void* args[32] = {};
};

struct Emu {
  char* stacks = nullptr;
  int nstacks = 0;
  std::vector<Fiber> fib;
  std::vector<Warp> warps;
  void* sched_sp = nullptr;
  int cur = -1;
  int nthreads = 0;
  Body body = nullptr;
  void* body_arg = nullptr;
  unsigned char* arena = nullptr;
  size_t dyn_bytes = 0;
  size_t static_hw = kStaticSmemLimit;  // static bytes to poison at the next block start
  bool reverse = false;                 // run the threads between barriers in reverse order
  std::string error;                    // first failure of the running launch
  const char* kernel = "";
  cudaError_t last = cudaSuccess;
  cudaError_t msg_code = cudaSuccess;  // the error last_msg describes (kept after cudaGetLastError)
  std::string last_msg;
};

Emu& emu() {
  static thread_local Emu e;
  return e;
}

[[noreturn]] void fiber_main() {
  Emu& e = emu();
  e.body(e.body_arg);
  Fiber& f = e.fib[e.cur];
  f.state = DONE;
  wae_emu_switch(&f.sp, e.sched_sp);
  std::abort();  // a finished fiber is never resumed
}

void ensure_stacks(Emu& e, int n) {
  if (e.nstacks >= n) return;
  if (e.stacks) munmap(e.stacks, size_t(e.nstacks) * (kStack + kGuard));
  const size_t total = size_t(n) * (kStack + kGuard);
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    e.stacks = nullptr;
    e.nstacks = 0;
    return;
  }
  e.stacks = static_cast<char*>(p);
  for (int i = 0; i < n; ++i) mprotect(e.stacks + size_t(i) * (kStack + kGuard), kGuard, PROT_NONE);
  e.nstacks = n;
}

void init_fiber(Emu& e, int t) {
  char* top = e.stacks + size_t(t) * (kStack + kGuard) + kGuard + kStack;  // 16-aligned
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                                         // fake return address of fiber_main
  *--sp = reinterpret_cast<void*>(&fiber_main);            // popped by the switch's ret
  for (int i = 0; i < 6; ++i) *--sp = nullptr;             // rbp rbx r12 r13 r14 r15
  e.fib[t].sp = sp;
  e.fib[t].state = RUNNABLE;
  e.fib[t].site_file = nullptr;
  e.fib[t].site_line = 0;
  e.fib[t].smem_cursor = 0;
}

std::string where(const Emu& e, int t) {
  char buf[256];
  const Fiber& f = e.fib[t];
  std::snprintf(buf, sizeof buf, "block (%u, %u, %u) thread (%u, %u, %u)", g_ctx.block_idx.x, g_ctx.block_idx.y,
                g_ctx.block_idx.z, f.tid.x, f.tid.y, f.tid.z);
  return buf;
}

std::string site(const char* file, int line) {
  if (!file) return "?";
  const char* s = std::strrchr(file, '/');
  return std::string(s ? s + 1 : file) + ":" + std::to_string(line);
}

//! Suspend the running fiber in ``st`` and return to the scheduler.
void yield(State st) {
  Emu& e = emu();
  Fiber& f = e.fib[e.cur];
  f.state = st;
  wae_emu_switch(&f.sp, e.sched_sp);
  // resumed by the scheduler (which set g_ctx.thread_idx)
}

//! Runs one block; false (with e.error set) on a launch error.
bool run_block(Emu& e) {
  const int n = e.nthreads;
  for (int t = 0; t < n; ++t) init_fiber(e, t);
  for (auto& w : e.warps) w = Warp{};
  std::memset(e.arena, 0xFF, (e.dyn_bytes + 127) / 128 * 128 + e.static_hw);  // poison: unwritten words read as NaN
  for (;;) {
    bool ran = false;
    for (int i = 0; i < n; ++i) {
      const int t = e.reverse ? n - 1 - i : i;
      if (e.fib[t].state != RUNNABLE) continue;
      e.cur = t;
      g_ctx.thread_idx = e.fib[t].tid;
      wae_emu_switch(&e.sched_sp, e.fib[t].sp);
      ran = true;
      if (e.fib[t].state == FAILED) return false;
    }
    if (ran) continue;
    // nobody runnable: a released barrier, the end of the block, or a deadlock
    int done = 0, bar = 0, first_bar = -1, first_done = -1, first_warp = -1;
    for (int t = 0; t < n; ++t) {
      const State s = e.fib[t].state;
      if (s == DONE) { ++done; if (first_done < 0) first_done = t; }
      else if (s == AT_BARRIER) { ++bar; if (first_bar < 0) first_bar = t; }
      else if (s == AT_WARP && first_warp < 0) first_warp = t;
    }
    if (done == n) return true;
    if (bar == n) {
      const Fiber& f0 = e.fib[first_bar];
      for (int t = 0; t < n; ++t) {
        const Fiber& f = e.fib[t];
        if (f.site_line != f0.site_line || std::strcmp(f.site_file, f0.site_file) != 0) {
          e.error = "threads of one block wait at different barriers: " + where(e, first_bar) + " at " +
                    site(f0.site_file, f0.site_line) + ", " + where(e, t) + " at " + site(f.site_file, f.site_line);
          return false;
        }
      }
      for (int t = 0; t < n; ++t) e.fib[t].state = RUNNABLE;
      continue;
    }
    if (first_warp >= 0) {
      const Fiber& f = e.fib[first_warp];
      e.error = "warp collective never completed (a lane of its mask exited or waits elsewhere): " +
                where(e, first_warp) + " waits at " + site(f.site_file, f.site_line);
    } else {
      const Fiber& f = e.fib[first_bar];
      e.error = "__syncthreads with exited threads: " + where(e, first_bar) + " waits at " +
                site(f.site_file, f.site_line) + " but " + where(e, first_done) + " has exited";
    }
    return false;
  }
}

struct KernelAttr {
  int max_dyn = int(kStaticSmemLimit);
};
std::unordered_map<const void*, KernelAttr>& attrs() {
  static std::unordered_map<const void*, KernelAttr> m;  // set once per kernel, read at launch
  return m;
}

}  // namespace

void syncthreads(const char* file, int line) {
  Emu& e = emu();
  Fiber& f = e.fib[e.cur];
  f.site_file = file;
  f.site_line = line;
  yield(AT_BARRIER);
}

void fail(const char* what, const char* file, int line) {
  Emu& e = emu();
  if (e.error.empty())
    e.error = std::string(what) + (line > 0 ? " at " + site(file, line) : std::string(": ") + (file ? file : "")) +
              " in " + where(e, e.cur);
  yield(FAILED);
  std::abort();  // a failed fiber is never resumed
}

void* shared_alloc(size_t bytes, size_t align, const char* name) {
  Emu& e = emu();
  Fiber& f = e.fib[e.cur];
  size_t off = (f.smem_cursor + align - 1) / align * align;
  if (off + bytes > kStaticSmemLimit) {
    std::string msg = std::string("static shared memory over 48 KB at array '") + name + "'";
    fail(msg.c_str(), nullptr, 0);
  }
  f.smem_cursor = off + bytes;
  if (f.smem_cursor > e.static_hw) e.static_hw = f.smem_cursor;
  const size_t base = (e.dyn_bytes + 127) / 128 * 128;
  return e.arena + base + off;
}

unsigned char* dynamic_shared() { return emu().arena; }
const unsigned char* dynamic_shared_end() { return emu().arena + emu().dyn_bytes; }

void shared_out_of_bounds(const char* name, long long index, long long size) {
  const std::string msg = std::string("shared memory out of bounds: ") + name + "[" + std::to_string(index) +
                          "] of " + std::to_string(size) + " elements";
  fail(msg.c_str(), nullptr, 0);
}

void warp_collective(const char* what, unsigned mask, void* arg, WarpOp op, const void* ctx, const char* file,
                     int line) {
  Emu& e = emu();
  const int t = e.cur;
  const unsigned lane = unsigned(t) & 31u;
  Warp& w = e.warps[size_t(t) / 32];
  if (!(mask >> lane & 1u)) fail((std::string(what) + ": calling lane not in the mask").c_str(), file, line);
  if (w.arrived == 0) {
    w.mask = mask;
    w.what = what;
  } else if (w.mask != mask || std::strcmp(w.what, what) != 0) {
    fail((std::string("divergent warp collectives: ") + what + " while lanes wait at " + w.what).c_str(), file, line);
  }
  w.args[lane] = arg;
  w.arrived |= 1u << lane;
  if (w.arrived == mask) {  // the last lane performs the operation for all
    void* args[32];
    for (int l = 0; l < 32; ++l) args[l] = (mask >> l & 1u) ? w.args[l] : nullptr;
    w.arrived = 0;
    op(args, mask, ctx);
    const size_t base = size_t(t) & ~size_t(31);
    for (int l = 0; l < 32; ++l)
      if ((mask >> l & 1u) && base + l != size_t(t)) e.fib[base + l].state = RUNNABLE;
    return;
  }
  Fiber& f = e.fib[t];
  f.site_file = file;
  f.site_line = line;
  yield(AT_WARP);
}

cudaError_t record(cudaError_t err, const char* msg) {
  Emu& e = emu();
  if (err != cudaSuccess) {
    e.last = err;
    e.msg_code = err;
    e.last_msg = msg ? msg : "";
  }
  return err;
}

long long env_int(const char* name, long long def) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == 0) return def;
  char* end = nullptr;
  const long long r = std::strtoll(v, &end, 10);
  return (end && *end == 0 && r > 0) ? r : def;
}

cudaError_t set_max_dynamic_smem(const void* kern, int bytes) {
  if (bytes < 0 || size_t(bytes) > kSmemOptinLimit)
    return record(cudaErrorInvalidValue, "cudaFuncSetAttribute: MaxDynamicSharedMemorySize over the sm_90 limit (227 KB)");
  attrs()[kern].max_dyn = bytes;
  return cudaSuccess;
}

cudaError_t launch_raw(const char* name, const void* kern, dim3 grid, dim3 block, size_t smem, Body body, void* arg) {
  Emu& e = emu();
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  char buf[512];
  if (nthreads == 0 || nthreads > uint64_t(kMaxThreadsPerBlock) || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) {
    std::snprintf(buf, sizeof buf, "cuda_emu: launch of %s: invalid configuration grid (%u, %u, %u) block (%u, %u, %u)",
                  name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
    return record(cudaErrorInvalidConfiguration, buf);
  }
  const auto it = attrs().find(kern);
  const size_t max_dyn = it == attrs().end() ? kStaticSmemLimit : size_t(it->second.max_dyn);
  if (smem > max_dyn) {
    std::snprintf(buf, sizeof buf,
                  "cuda_emu: launch of %s: %zu bytes of dynamic shared memory over the kernel's limit of %zu "
                  "(cudaFuncAttributeMaxDynamicSharedMemorySize)",
                  name, smem, max_dyn);
    return record(cudaErrorInvalidValue, buf);
  }
  if (e.arena == nullptr) e.arena = static_cast<unsigned char*>(std::aligned_alloc(128, kArena));
  ensure_stacks(e, int(nthreads));
  if (e.arena == nullptr || e.stacks == nullptr) return record(cudaErrorMemoryAllocation, "cuda_emu: out of memory");
  e.nthreads = int(nthreads);
  e.fib.assign(size_t(nthreads), Fiber{});
  e.warps.assign(size_t((nthreads + 31) / 32), Warp{});
  for (unsigned z = 0, t = 0; z < block.z; ++z)
    for (unsigned y = 0; y < block.y; ++y)
      for (unsigned x = 0; x < block.x; ++x, ++t) e.fib[t].tid = uint3{x, y, z};
  e.body = body;
  e.body_arg = arg;
  e.dyn_bytes = smem;
  e.static_hw = kStaticSmemLimit;
  e.kernel = name;
  e.error.clear();
  // WAE_CUDA_EMU_ORDER=reverse: the threads of a block run between two barriers from the last
  // to the first; a kernel whose result depends on that order has a race inside a block.
  const char* order = std::getenv("WAE_CUDA_EMU_ORDER");
  e.reverse = order != nullptr && std::strcmp(order, "reverse") == 0;
  g_ctx.block_dim = block;
  g_ctx.grid_dim = grid;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        g_ctx.block_idx = uint3{bx, by, bz};
        if (!run_block(e)) {
          const std::string msg = std::string("cuda_emu: kernel ") + name + ": " + e.error;
          return record(cudaErrorLaunchFailure, msg.c_str());
        }
        if (e.static_hw + ((smem + 127) / 128 * 128) > kSmemOptinLimit) {
          std::snprintf(buf, sizeof buf, "cuda_emu: kernel %s: static + dynamic shared memory over 227 KB", name);
          return record(cudaErrorLaunchOutOfResources, buf);
        }
      }
  return cudaSuccess;
}

}  // namespace wae_emu

// ------------------------------------------------------------------------------------------------
// runtime API shim
// ------------------------------------------------------------------------------------------------
const char* cudaGetErrorString(cudaError_t err) {
  auto& e = wae_emu::emu();
  if (err == e.msg_code && !e.last_msg.empty()) return e.last_msg.c_str();
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "cuda_emu error";
  }
}

cudaError_t cudaGetLastError() {
  auto& e = wae_emu::emu();
  const cudaError_t r = e.last;
  e.last = cudaSuccess;  // the message stays for cudaGetErrorString
  return r;
}

cudaError_t cudaPeekAtLastError() { return wae_emu::emu().last; }

cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int dev) {
  return dev == 0 ? cudaSuccess : wae_emu::record(cudaErrorInvalidValue, "cuda_emu: one device (0)");
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = wae_emu::kArch / 100; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = (wae_emu::kArch / 10) % 10; return cudaSuccess;
  }
  return wae_emu::record(cudaErrorInvalidValue, "cuda_emu: device attribute not emulated");
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
