// cuda_emu runtime: fibers, barriers, warp rendezvous, shared memory and the runtime API shim
// (execution model: wae_emu.h).  x86-64 System V only.
#include <dlfcn.h>
#include <link.h>
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
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
  const void* site_pc = nullptr;    // code address of that call (the call site in the kernel)
  unsigned barriers = 0;            // __syncthreads reached so far (the barrier's occurrence)
  size_t smem_cursor = 0;  // next static shared array of this thread (same order in every thread)
};

//! Shadow of one 4-byte word of shared memory (checks): the block that last wrote it
//! (initcheck) and, for the current barrier interval, its writer and up to two readers with the
//! count of completed collectives of their warp at the access (racecheck).
struct Word {
  uint32_t valid = 0;  // block generation in which the word belongs to an array or the dynamic buffer
  uint32_t gen = 0;    // block generation of the last write (0: never)
  uint32_t epoch = 0;  // barrier interval of the thread records below
  int16_t w = -1, r1 = -1, r2 = -1;
  uint32_t wc_w = 0, wc_r1 = 0, wc_r2 = 0;
  const void* pc_w = nullptr;
  const void* pc_r = nullptr;
};

struct Named {  // a named range of shared memory (static array or slice), for messages
  size_t off, bytes;
  const char* name;
  bool is_static;
};

struct Region {  // registered device memory
  uintptr_t lo, hi;
  const char* name;
  bool initialised;
  std::vector<uint8_t> written;  // per byte, when !initialised
  int id;
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
  enum Order { FORWARD, REVERSE, SHUFFLE } order = FORWARD;  // thread order between barriers
  uint64_t rng = 0;                     // SHUFFLE: xorshift state
  std::vector<int> perm;
  std::string error;                    // first failure of the running launch
  std::vector<const void*> error_pcs;   // code addresses the error names (symbolised at the end)
  // --- checks (WAE_CUDA_EMU_CHECKS) ---
  unsigned checks = 0;
  bool in_kernel = false;               // the running fiber executes kernel code (accesses checked)
  std::vector<Word> shadow;             // one per 4-byte word of the arena
  uint32_t gen = 0, epoch = 0;          // block generation, barrier interval (never reset)
  const char* last_bar_file = nullptr;  // the barrier that opened the current interval
  int last_bar_line = 0;
  std::vector<uint32_t> wsync;          // completed collectives per warp
  std::vector<Named> named;             // shared arrays and slices of the running block
  size_t static_used = 0;               // end of the static arrays of the running block
  std::vector<Region> regions;
  int next_region = 1;
  uintptr_t pack_lo = 0, pack_hi = 0, ctx_lo = 0, ctx_hi = 0;
  uintptr_t cur_stack = 0;              // lowest address of the running fiber's stack (and guard)
  Word* shadow_p = nullptr;             // shadow.data(), wsync.data(): the callbacks' hot path
  uint32_t* wsync_p = nullptr;          // reads raw fields only (no calls into instrumented code)
  const char* kernel = "";
  cudaError_t last = cudaSuccess;
  cudaError_t msg_code = cudaSuccess;  // the error last_msg describes (kept after cudaGetLastError)
  std::string last_msg;
};

thread_local Emu* t_emu = nullptr;  // read by the access callbacks without a call

Emu& emu() {
  static thread_local Emu e;
  t_emu = &e;
  return e;
}

#define WAE_NOSAN __attribute__((no_sanitize_thread, no_sanitize_address, noinline))

//! Kernel code calling into the runtime: its accesses are not the kernel's (checks off inside).
struct Pause {
  Emu& e;
  bool was;
  __attribute__((no_sanitize_thread, no_sanitize_address, always_inline)) explicit Pause(Emu& em) : e(em), was(em.in_kernel) {
    em.in_kernel = false;
  }
  __attribute__((no_sanitize_thread, no_sanitize_address, always_inline)) ~Pause() { e.in_kernel = was; }
};

WAE_NOSAN [[noreturn]] void fiber_main() {
  Emu& e = *t_emu;
  e.in_kernel = e.checks != 0;
  e.body(e.body_arg);
  e.in_kernel = false;
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
  e.fib[t].site_pc = nullptr;
  e.fib[t].barriers = 0;
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

std::string thread_str(const Emu& e, int t) {
  char buf[64];
  const Fiber& f = e.fib[t];
  std::snprintf(buf, sizeof buf, "thread (%u, %u, %u)", f.tid.x, f.tid.y, f.tid.z);
  return buf;
}

std::string barrier_str(const Fiber& f) {
  return site(f.site_file, f.site_line) + " (its barrier #" + std::to_string(f.barriers) + ")";
}

//! Order of the threads in one scheduling round (WAE_CUDA_EMU_ORDER).
void next_order(Emu& e) {
  const int n = e.nthreads;
  e.perm.resize(size_t(n));
  for (int i = 0; i < n; ++i) e.perm[size_t(i)] = e.order == Emu::REVERSE ? n - 1 - i : i;
  if (e.order != Emu::SHUFFLE) return;
  for (int i = n - 1; i > 0; --i) {  // Fisher-Yates with xorshift64
    e.rng ^= e.rng << 13;
    e.rng ^= e.rng >> 7;
    e.rng ^= e.rng << 17;
    std::swap(e.perm[size_t(i)], e.perm[size_t(e.rng % uint64_t(i + 1))]);
  }
}

//! Runs one block; false (with e.error set) on a launch error.
bool run_block(Emu& e) {
  const int n = e.nthreads;
  for (int t = 0; t < n; ++t) init_fiber(e, t);
  for (auto& w : e.warps) w = Warp{};
  std::memset(e.arena, 0xFF, (e.dyn_bytes + 127) / 128 * 128 + e.static_hw);  // poison: unwritten words read as NaN
  ++e.gen;  // shared memory is fresh: nothing written, no interval open
  ++e.epoch;
  if (e.checks & CHECK_MEM)
    for (size_t w = 0; w < e.dyn_bytes / 4; ++w) e.shadow[w].valid = e.gen;
  e.last_bar_file = nullptr;
  e.named.clear();
  e.static_used = 0;
  for (;;) {
    bool ran = false;
    next_order(e);
    for (int i = 0; i < n; ++i) {
      const int t = e.perm[size_t(i)];
      if (e.fib[t].state != RUNNABLE) continue;
      e.cur = t;
      e.cur_stack = reinterpret_cast<uintptr_t>(e.stacks) + size_t(t) * (kStack + kGuard);
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
      // one barrier = one call site (file:line) reached for the same time by every thread
      const Fiber& f0 = e.fib[first_bar];
      for (int t = 0; t < n; ++t) {
        const Fiber& f = e.fib[t];
        const bool same_line = f.site_line == f0.site_line && std::strcmp(f.site_file, f0.site_file) == 0;
        if (!same_line || f.site_pc != f0.site_pc || f.barriers != f0.barriers) {
          e.error = "threads of one block wait at different barriers" +
                    std::string(same_line && f.site_pc != f0.site_pc
                                    ? " (one source line reached from two call sites: an inlined function's barrier)"
                                    : "") +
                    ": " + where(e, first_bar) + " at " + barrier_str(f0) + ", " + thread_str(e, t) + " at " +
                    barrier_str(f);
          e.error_pcs = {f0.site_pc, f.site_pc};
          return false;
        }
      }
      for (int t = 0; t < n; ++t) e.fib[t].state = RUNNABLE;
      ++e.epoch;  // a new barrier interval
      e.last_bar_file = f0.site_file;
      e.last_bar_line = f0.site_line;
      continue;
    }
    if (first_warp >= 0) {
      const Fiber& f = e.fib[first_warp];
      e.error = "warp collective never completed (a lane of its mask exited or waits elsewhere): " +
                where(e, first_warp) + " waits at " + site(f.site_file, f.site_line);
    } else {
      const Fiber& f = e.fib[first_bar];
      e.error = "__syncthreads with exited threads (a barrier in a branch not every thread takes): " +
                where(e, first_bar) + " waits at " + barrier_str(f) + " but " + thread_str(e, first_done) +
                " has exited";
      e.error_pcs = {f.site_pc};
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

WAE_NOSAN void syncthreads(const char* file, int line) {
  Emu& e = *t_emu;
  Pause p(e);
  Fiber& f = e.fib[e.cur];
  f.site_file = file;
  f.site_line = line;
  f.site_pc = __builtin_return_address(0);
  ++f.barriers;
  yield(AT_BARRIER);
}

WAE_NOSAN void fail(const char* what, const char* file, int line) {
  Emu& e = *t_emu;
  Pause p(e);
  if (e.error.empty())
    e.error = std::string(what) +
              (line > 0 ? " at " + site(file, line) : file && *file ? std::string(": ") + file : std::string()) +
              " in " + where(e, e.cur);
  if (e.error_pcs.empty()) e.error_pcs = {__builtin_return_address(0)};
  yield(FAILED);
  std::abort();  // a failed fiber is never resumed
}

namespace {
void add_named(Emu& e, size_t off, size_t bytes, const char* name, bool is_static) {
  for (const Named& m : e.named)
    if (m.off == off && m.bytes == bytes && m.name == name) return;
  e.named.push_back(Named{off, bytes, name, is_static});
}
}  // namespace

WAE_NOSAN void* shared_alloc(size_t bytes, size_t align, const char* name) {
  Emu& e = *t_emu;
  Pause p(e);
  Fiber& f = e.fib[e.cur];
  size_t off = (f.smem_cursor + align - 1) / align * align;
  if (off + bytes > kStaticSmemLimit) {
    std::string msg = std::string("static shared memory over 48 KB at array '") + name + "'";
    fail(msg.c_str(), nullptr, 0);
  }
  f.smem_cursor = off + bytes;
  if (f.smem_cursor > e.static_hw) e.static_hw = f.smem_cursor;
  const size_t base = (e.dyn_bytes + 127) / 128 * 128;
  if (off + bytes > e.static_used) {  // the first thread to reach this array
    e.static_used = off + bytes;
    add_named(e, base + off, bytes, name, true);
    if (e.checks & CHECK_MEM)
      for (size_t w = (base + off) / 4; w < (base + off + bytes) / 4; ++w) e.shadow[w].valid = e.gen;
  }
  return e.arena + base + off;
}

WAE_NOSAN unsigned char* dynamic_shared() { return t_emu->arena; }
WAE_NOSAN const unsigned char* dynamic_shared_end() { return t_emu->arena + t_emu->dyn_bytes; }

WAE_NOSAN void name_shared(const void* ptr, size_t bytes, const char* name) {
  Emu& e = *t_emu;
  Pause p(e);
  const auto* q = static_cast<const unsigned char*>(ptr);
  if (q >= e.arena && q < e.arena + kArena) add_named(e, size_t(q - e.arena), bytes, name, false);
}

WAE_NOSAN void shared_out_of_bounds(const char* name, long long index, long long size) {
  Emu& e = *t_emu;
  Pause p(e);
  const std::string msg = std::string("shared memory out of bounds: ") + name + "[" + std::to_string(index) +
                          "] of " + std::to_string(size) + " elements";
  if (e.error_pcs.empty()) e.error_pcs = {__builtin_return_address(0)};
  fail(msg.c_str(), nullptr, 0);
}

WAE_NOSAN void warp_collective(const char* what, unsigned mask, void* arg, WarpOp op, const void* ctx,
                               const char* file, int line) {
  Emu& e = *t_emu;
  Pause p(e);
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
    ++e.wsync[size_t(t) / 32];  // the lanes' shared accesses before and after are ordered (racecheck)
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

// ------------------------------------------------------------------------------------------------
// checks: every load and store of kernel code (the kernel translation units are compiled with
// GCC's -fsanitize=thread instrumentation, no libtsan) lands in on_access while a checked launch
// runs (hot path: shared_fast; anything unusual: check_access, which reports).
// ------------------------------------------------------------------------------------------------
namespace {

//! The emulator whose launch is being checked (one thread at a time; a launch in another thread
//! meanwhile runs unchecked): the callbacks' fast path is one load of it.
Emu* g_checked = nullptr;

struct Image {  // the loaded segments of the module holding the runtime (its static data)
  std::vector<std::pair<uintptr_t, uintptr_t>> seg;
};
Image& image() {
  static Image img = [] {
    Image m;
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&image), &info) == 0) return m;
    struct Q { const void* base; Image* m; } q{info.dli_fbase, &m};
    dl_iterate_phdr([](dl_phdr_info* i, size_t, void* qp) -> int {
      auto* q = static_cast<Q*>(qp);
      bool mine = false;
      for (int k = 0; k < i->dlpi_phnum; ++k)
        if (i->dlpi_phdr[k].p_type == PT_LOAD && i->dlpi_addr + i->dlpi_phdr[k].p_vaddr - i->dlpi_phdr[k].p_offset ==
                                                     reinterpret_cast<uintptr_t>(q->base))
          mine = true;
      if (!mine) return 0;
      for (int k = 0; k < i->dlpi_phnum; ++k)
        if (i->dlpi_phdr[k].p_type == PT_LOAD) {
          const uintptr_t lo = i->dlpi_addr + i->dlpi_phdr[k].p_vaddr;
          q->m->seg.emplace_back(lo, lo + i->dlpi_phdr[k].p_memsz);
        }
      return 1;
    }, &q);
    return m;
  }();
  return img;
}

//! "W[12] (+48 bytes of W)": the innermost named range of shared memory holding byte off.
std::string shared_name(const Emu& e, size_t off, size_t elem) {
  const Named* best = nullptr;
  for (const Named& m : e.named)
    if (off >= m.off && off < m.off + m.bytes && (!best || m.bytes < best->bytes)) best = &m;
  char buf[160];
  if (best)
    std::snprintf(buf, sizeof buf, "%s[%zu] (shared byte offset %zu)", best->name, (off - best->off) / elem, off);
  else if (off < e.dyn_bytes)
    std::snprintf(buf, sizeof buf, "the dynamic shared buffer at byte %zu", off);
  else
    std::snprintf(buf, sizeof buf, "shared byte offset %zu", off);
  return buf;
}

[[noreturn]] void check_failed(Emu& e, const std::string& what, std::vector<const void*> pcs) {
  e.error_pcs = std::move(pcs);
  fail(what.c_str(), nullptr, 0);
}

std::string access_str(size_t size, bool write) {
  return std::to_string(size) + "-byte " + (write ? "write" : "read");
}

std::string interval_str(const Emu& e) {
  return e.last_bar_file ? "after the barrier at " + site(e.last_bar_file, e.last_bar_line) : "since the block start";
}

void check_shared(Emu& e, size_t off, size_t size, bool write, const void* pc) {
  const int t = e.cur;
  if (e.checks & CHECK_MEM) {  // inside the dynamic buffer or one static array
    const size_t dyn_al = (e.dyn_bytes + 127) / 128 * 128;
    bool ok = off + size <= e.dyn_bytes;
    if (!ok && off >= dyn_al)
      for (const Named& m : e.named)
        if (m.is_static && off >= m.off && off + size <= m.off + m.bytes) { ok = true; break; }
    if (!ok)
      check_failed(e, "shared memory out of bounds: " + access_str(size, write) + " of " + shared_name(e, off, 4) +
                          ", outside the dynamic buffer (" + std::to_string(e.dyn_bytes) +
                          " bytes) and every static array", {pc});
  }
  const uint32_t wc = e.wsync[size_t(t) / 32];
  for (size_t wi = off / 4; wi <= (off + size - 1) / 4; ++wi) {
    Word& W = e.shadow[wi];
    if (e.checks & CHECK_INIT) {
      if (write) W.gen = e.gen;
      else if (W.gen != e.gen)
        check_failed(e, "uninitialised shared memory read: " + access_str(size, false) + " of " +
                            shared_name(e, wi * 4, 4) + ", a word no thread wrote since the block start", {pc});
    }
    if (!(e.checks & CHECK_RACE)) continue;
    if (W.epoch != e.epoch) {
      W.epoch = e.epoch;
      W.w = W.r1 = W.r2 = -1;
    }
    auto conflict = [&](int u, uint32_t uwc, bool u_wrote, const void* upc) {
      if (u < 0 || u == t) return;
      const bool same_warp = u / 32 == t / 32;
      if (same_warp && uwc != wc) return;  // a warp collective between: ordered within the warp
      const std::string what =
          thread_str(e, u) + " " + (u_wrote ? "wrote" : "read") + " and " + thread_str(e, t) + " " +
          (write ? "writes" : "reads") + " " + shared_name(e, wi * 4, 4) + " in one barrier interval (" +
          interval_str(e) + ")";
      if (same_warp)
        check_failed(e, "warp-synchronous assumption: lanes " + std::to_string(u & 31) + " and " +
                            std::to_string(t & 31) + " of warp " + std::to_string(t / 32) + ": " + what +
                            " with no __syncwarp or warp collective between (a warp is not in lockstep)",
                     {upc, pc});
      check_failed(e, "shared memory race: " + what + " with no __syncthreads between", {upc, pc});
    };
    conflict(W.w, W.wc_w, true, W.pc_w);
    if (write) {
      conflict(W.r1, W.wc_r1, false, W.pc_r);
      conflict(W.r2, W.wc_r2, false, W.pc_r);
      W.w = int16_t(t);
      W.wc_w = wc;
      W.pc_w = pc;
    } else if (W.r1 < 0 || W.r1 == t) {
      W.r1 = int16_t(t);
      W.wc_r1 = wc;
      W.pc_r = pc;
    } else {
      W.r2 = int16_t(t);
      W.wc_r2 = wc;
    }
  }
}

void check_access(Emu& e, uintptr_t a, size_t size, bool write, const void* pc) {
  const uintptr_t arena = reinterpret_cast<uintptr_t>(e.arena);
  if (a >= arena && a < arena + kArena) return check_shared(e, size_t(a - arena), size, write, pc);
  const uintptr_t st = reinterpret_cast<uintptr_t>(e.stacks);
  if (a >= st && a < st + size_t(e.nstacks) * (kStack + kGuard)) {
    const size_t owner = (a - st) / (kStack + kGuard);
    if (owner == size_t(e.cur) || !(e.checks & CHECK_MEM)) return;
    check_failed(e, "local memory of another thread: " + access_str(size, write) + " on the stack of " +
                        (owner < e.fib.size() ? thread_str(e, int(owner)) : std::string("an idle fiber")), {pc});
  }
  if ((a >= e.pack_lo && a + size <= e.pack_hi) || (a >= e.ctx_lo && a + size <= e.ctx_hi)) return;
  if (e.regions.empty()) return;  // nothing registered: no global checks
  for (Region& r : e.regions) {
    if (a < r.lo || a + size > r.hi) continue;
    if (!r.initialised && (e.checks & CHECK_INIT)) {
      uint8_t* w = r.written.data() + (a - r.lo);
      if (write) {
        std::memset(w, 1, size);
      } else {
        for (size_t k = 0; k < size; ++k)
          if (!w[k])
            check_failed(e, "uninitialised global memory read: " + access_str(size, false) + " of '" + r.name +
                                "' at byte " + std::to_string(a - r.lo) + " of " + std::to_string(r.hi - r.lo) +
                                ", written by no kernel since the buffer was handed over", {pc});
      }
    }
    return;
  }
  for (const auto& sg : image().seg)
    if (a >= sg.first && a + size <= sg.second) return;  // the module's static data
  if (!(e.checks & CHECK_MEM)) return;
  // the nearest registered range, for the message
  const Region* near = nullptr;
  uintptr_t dist = ~uintptr_t(0);
  for (const Region& r : e.regions) {
    const uintptr_t dd = a >= r.hi ? a - r.hi : (a + size <= r.lo ? r.lo - a : 0);
    if (dd < dist) { dist = dd; near = &r; }
  }
  char buf[256];
  if (near && a + size > near->lo && a < near->hi)
    std::snprintf(buf, sizeof buf, "straddles the end of '%s' (%zu bytes) at byte %lld", near->name,
                  size_t(near->hi - near->lo), (long long)(a - near->lo));
  else if (near && a >= near->hi)
    std::snprintf(buf, sizeof buf, "%zu bytes past the end of '%s' (%zu bytes)", size_t(a - near->hi), near->name,
                  size_t(near->hi - near->lo));
  else if (near)
    std::snprintf(buf, sizeof buf, "%zu bytes before '%s' (%zu bytes)", size_t(near->lo - a), near->name,
                  size_t(near->hi - near->lo));
  else
    buf[0] = 0;
  char addr[32];
  std::snprintf(addr, sizeof addr, "0x%llx", (unsigned long long)a);
  check_failed(e, "global memory out of bounds: " + access_str(size, write) + " at " + addr +
                      " outside every tensor and scratch buffer of the launch" +
                      (buf[0] ? std::string(": ") + buf : std::string()), {pc});
}

//! The common shared-memory access: inside an array, no uninitialised read, no conflict; it
//! updates the shadow and returns true.  Anything else returns false before changing the word
//! concerned, and check_shared redoes the access and reports.  Raw fields only: this runs before
//! the Pause, where a call into instrumented code would be checked as a kernel access.
__attribute__((no_sanitize_thread, no_sanitize_address, always_inline)) inline bool other_thread(int u, uint32_t uwc,
                                                                                               int t, uint32_t wc) {
  return u >= 0 && u != t && !((u >> 5) == (t >> 5) && uwc != wc);
}

__attribute__((no_sanitize_thread, no_sanitize_address, always_inline)) inline bool shared_fast(
    Emu& e, size_t off, size_t size, bool write, const void* pc) {
  const int t = e.cur;
  const uint32_t wc = e.wsync_p[t >> 5];
  const unsigned c = e.checks;
  for (size_t wi = off >> 2, last = (off + size - 1) >> 2; wi <= last; ++wi) {
    Word& W = e.shadow_p[wi];
    if ((c & CHECK_MEM) && W.valid != e.gen) return false;
    if ((c & CHECK_INIT) && !write && W.gen != e.gen) return false;
    if (c & CHECK_RACE) {
      if (W.epoch != e.epoch) {
        W.epoch = e.epoch;
        W.w = W.r1 = W.r2 = -1;
      }
      // a recorded access of another thread conflicts unless it is of the same warp with a
      // collective since (then check_shared decides and reports)
      if (other_thread(W.w, W.wc_w, t, wc)) return false;
      if (write && (other_thread(W.r1, W.wc_r1, t, wc) || other_thread(W.r2, W.wc_r2, t, wc))) return false;
      if (write) {
        W.w = int16_t(t);
        W.wc_w = wc;
        W.pc_w = pc;
      } else if (W.r1 < 0 || W.r1 == t) {
        W.r1 = int16_t(t);
        W.wc_r1 = wc;
        W.pc_r = pc;
      } else {
        W.r2 = int16_t(t);
        W.wc_r2 = wc;
      }
    }
    if ((c & CHECK_INIT) && write) W.gen = e.gen;
  }
  return true;
}

WAE_NOSAN void on_access(Emu* e, uintptr_t a, size_t size, bool write, const void* pc) {
  // kernel code runs on the fiber stacks of the checked emulator, and only there
  const uintptr_t sp = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  const uintptr_t st = reinterpret_cast<uintptr_t>(e->stacks);
  if (sp - st >= size_t(e->nstacks) * (kStack + kGuard) || !e->in_kernel) return;
  if (a - e->cur_stack < kStack + kGuard) return;  // the thread's own stack: the most frequent case
  if (a - reinterpret_cast<uintptr_t>(e->arena) < kArena && shared_fast(*e, a - reinterpret_cast<uintptr_t>(e->arena), size, write, pc))
    return;
  Pause p(*e);
  check_access(*e, a, size, write, pc);
}

}  // namespace

DeviceMemory::DeviceMemory(const void* p, size_t bytes, const char* name, bool initialised) : id_(0) {
  if (p == nullptr || bytes == 0) return;
  Emu& e = emu();
  id_ = e.next_region++;
  Region r{reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(p) + bytes, name, initialised, {}, id_};
  if (!initialised) r.written.assign(bytes, 0);
  e.regions.push_back(std::move(r));
}

DeviceMemory::~DeviceMemory() {
  if (id_ == 0) return;
  auto& v = emu().regions;
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i].id == id_) {
      v.erase(v.begin() + long(i));
      break;
    }
}

unsigned checks_from_env() {
  const char* v = std::getenv("WAE_CUDA_EMU_CHECKS");
  if (v == nullptr || *v == 0) return 0;
  std::string s(v);
  if (s == "all" || s == "1") return CHECK_MEM | CHECK_INIT | CHECK_RACE;
  unsigned c = 0;
  size_t i = 0;
  while (i <= s.size()) {
    const size_t j = std::min(s.find(',', i), s.size());
    const std::string w = s.substr(i, j - i);
    if (w == "memcheck") c |= CHECK_MEM;
    else if (w == "initcheck") c |= CHECK_INIT;
    else if (w == "racecheck") c |= CHECK_RACE;
    i = j + 1;
  }
  return c;
}

cudaError_t record(cudaError_t err, const char* msg) {
  Emu& e = emu();
  // the first error until cudaGetLastError reads it (a later launch's error, often a consequence
  // of the first, must not hide it)
  if (err != cudaSuccess && e.last == cudaSuccess) {
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

namespace {
//! " [sites: ...]": the code addresses of an error as function and line (addr2line, when
//! installed; else module+offset).
std::string symbolise(const std::vector<const void*>& pcs) {
  std::string out;
  for (const void* pc : pcs) {
    if (pc == nullptr) continue;
    Dl_info info{};
    if (dladdr(pc, &info) == 0 || info.dli_fname == nullptr) continue;
    // the call's own address (the return address points after it)
    const uintptr_t off = reinterpret_cast<uintptr_t>(pc) - reinterpret_cast<uintptr_t>(info.dli_fbase) - 1;
    char cmd[1200];
    std::snprintf(cmd, sizeof cmd, "addr2line -C -f -i -e '%s' 0x%lx 2>/dev/null", info.dli_fname, (unsigned long)off);
    std::string sym;
    if (std::strchr(info.dli_fname, '\'') == nullptr)
      if (FILE* f = popen(cmd, "r")) {
        char line[2048];
        std::vector<std::string> lines;
        while (std::fgets(line, sizeof line, f)) {
          std::string l(line);
          while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
          lines.push_back(l);
        }
        pclose(f);
        // pairs (function, file:line), innermost first: "line <- caller's line ... in outermost function"
        if (lines.size() >= 2) {
          const std::string& fn = lines[lines.size() - 2];
          std::string chain;
          for (size_t k = 1; k < lines.size(); k += 2) {
            const std::string& loc = lines[k];
            if (loc.compare(0, 2, "??") == 0) continue;
            const size_t slash = loc.rfind('/');
            std::string l = loc.substr(slash == std::string::npos ? 0 : slash + 1);
            const size_t disc = l.find(" (discriminator");
            if (disc != std::string::npos) l = l.substr(0, disc);
            chain += (chain.empty() ? "" : " <- ") + l;
          }
          sym = (chain.empty() ? std::string() : chain + " in ") + fn;
        }
      }
    const char* base = std::strrchr(info.dli_fname, '/');
    char hex[64];
    std::snprintf(hex, sizeof hex, "%s+0x%lx", base ? base + 1 : info.dli_fname, (unsigned long)off);
    out += (out.empty() ? "" : "; ") + (sym.empty() ? std::string(hex) : sym + " (" + hex + ")");
  }
  return out.empty() ? out : " [sites: " + out + "]";
}
}  // namespace

namespace {
std::mutex g_launch_mu;
unsigned long long g_launches = 0;
std::vector<std::string> g_launch_names;
}  // namespace

unsigned long long launch_count() {
  std::lock_guard<std::mutex> lk(g_launch_mu);
  return g_launches;
}

std::vector<std::string> launch_names() {
  std::lock_guard<std::mutex> lk(g_launch_mu);
  return g_launch_names;
}

void reset_launch_names() {
  std::lock_guard<std::mutex> lk(g_launch_mu);
  g_launch_names.clear();
}

cudaError_t launch_raw(const char* name, const void* kern, dim3 grid, dim3 block, size_t smem, Body body, void* arg,
                       size_t arg_bytes) {
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
  {
    std::lock_guard<std::mutex> lk(g_launch_mu);
    ++g_launches;
    if (g_launch_names.size() < 100000) g_launch_names.emplace_back(name);
  }
  e.static_hw = kStaticSmemLimit;
  e.kernel = name;
  e.error.clear();
  e.error_pcs.clear();
  // WAE_CUDA_EMU_ORDER=reverse: the threads of a block run between two barriers from the last
  // to the first; shuffle: in a random order per round (seed WAE_CUDA_EMU_SEED), lanes of one
  // warp included; a kernel whose result depends on the order has a race inside a block or
  // assumes a warp runs in lockstep.
  const char* order = std::getenv("WAE_CUDA_EMU_ORDER");
  e.order = order == nullptr ? Emu::FORWARD
            : std::strcmp(order, "reverse") == 0 ? Emu::REVERSE
            : std::strcmp(order, "shuffle") == 0 ? Emu::SHUFFLE : Emu::FORWARD;
  e.rng = 0x9E3779B97F4A7C15ull ^ uint64_t(env_int("WAE_CUDA_EMU_SEED", 1));
  e.checks = checks_from_env();
  e.in_kernel = false;
  if (e.checks) {
    if (e.shadow.empty()) e.shadow.assign(kArena / 4 + 1, Word{});
    e.wsync.assign(e.warps.size(), 0);
    e.shadow_p = e.shadow.data();
    e.wsync_p = e.wsync.data();
    e.pack_lo = reinterpret_cast<uintptr_t>(arg);
    e.pack_hi = e.pack_lo + arg_bytes;
    e.ctx_lo = reinterpret_cast<uintptr_t>(&g_ctx);
    e.ctx_hi = e.ctx_lo + sizeof g_ctx;
    (void)image();
    Emu* none = nullptr;
    if (!__atomic_compare_exchange_n(&g_checked, &none, &e, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
      e.checks = 0;  // another thread's launch is being checked
  } else {
    e.wsync.assign(e.warps.size(), 0);
  }
  struct Done {  // the callbacks check only while a checked launch runs
    bool on;
    ~Done() { if (on) __atomic_store_n(&g_checked, nullptr, __ATOMIC_SEQ_CST); }
  } done{e.checks != 0};
  g_ctx.block_dim = block;
  g_ctx.grid_dim = grid;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        g_ctx.block_idx = uint3{bx, by, bz};
        if (!run_block(e)) {
          e.in_kernel = false;
          const std::string msg = std::string("cuda_emu: kernel ") + name + ": " + e.error + symbolise(e.error_pcs);
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
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (auto& r : wae_emu::emu().regions)  // initcheck: these bytes are written
    if (!r.initialised && a < r.hi && a + bytes > r.lo) {
      const uintptr_t lo = std::max(a, r.lo), hi = std::min(a + bytes, r.hi);
      std::memset(r.written.data() + (lo - r.lo), 1, hi - lo);
    }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

// ------------------------------------------------------------------------------------------------
// -fsanitize=thread callbacks (wae_fast/build.py CUDA_EMU_SANITIZE): every load and store of the
// instrumented code, read and write told apart and none merged away (unlike ASan's checks).
// Hidden: they bind inside this module only (a libtsan in the process keeps its own).  The
// atomics the instrumentation routes here (the binding's torch headers use them) are performed
// as sequentially consistent operations, unchecked.
// ------------------------------------------------------------------------------------------------
#define WAE_CB extern "C" __attribute__((visibility("hidden"), no_sanitize_thread, no_sanitize_address, used))
#define WAE_HOOK(a, n, w)                                                                   \
  if (auto* wae_e = __atomic_load_n(&wae_emu::g_checked, __ATOMIC_RELAXED))                 \
    wae_emu::on_access(wae_e, reinterpret_cast<uintptr_t>(a), n, w, __builtin_return_address(0));
#define WAE_ACCESS(n)                                                                          \
  WAE_CB void __tsan_read##n(void* a) { WAE_HOOK(a, n, false) }                                \
  WAE_CB void __tsan_write##n(void* a) { WAE_HOOK(a, n, true) }                                \
  WAE_CB void __tsan_unaligned_read##n(void* a) { WAE_HOOK(a, n, false) }                      \
  WAE_CB void __tsan_unaligned_write##n(void* a) { WAE_HOOK(a, n, true) }                      \
  WAE_CB void __tsan_volatile_read##n(void* a) { WAE_HOOK(a, n, false) }                       \
  WAE_CB void __tsan_volatile_write##n(void* a) { WAE_HOOK(a, n, true) }
WAE_ACCESS(1)
WAE_ACCESS(2)
WAE_ACCESS(4)
WAE_ACCESS(8)
WAE_ACCESS(16)
#undef WAE_ACCESS
WAE_CB void __tsan_read_range(void* a, size_t n) { if (n) { WAE_HOOK(a, n, false) } }
WAE_CB void __tsan_write_range(void* a, size_t n) { if (n) { WAE_HOOK(a, n, true) } }
WAE_CB void __tsan_init() {}
WAE_CB void __tsan_func_entry(void*) {}
WAE_CB void __tsan_func_exit() {}
WAE_CB void __tsan_vptr_update(void** p, void*) { WAE_HOOK(p, sizeof(void*), true) }
WAE_CB void __tsan_vptr_read(void** p) { WAE_HOOK(p, sizeof(void*), false) }
#undef WAE_HOOK

#define WAE_ATOMIC(n, T)                                                                                       \
  WAE_CB T __tsan_atomic##n##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  WAE_CB void __tsan_atomic##n##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
  WAE_CB T __tsan_atomic##n##_exchange(volatile T* a, T v, int) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); } \
  WAE_CB T __tsan_atomic##n##_fetch_add(volatile T* a, T v, int) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); } \
  WAE_CB T __tsan_atomic##n##_fetch_sub(volatile T* a, T v, int) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); } \
  WAE_CB T __tsan_atomic##n##_fetch_and(volatile T* a, T v, int) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); } \
  WAE_CB T __tsan_atomic##n##_fetch_or(volatile T* a, T v, int) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); } \
  WAE_CB T __tsan_atomic##n##_fetch_xor(volatile T* a, T v, int) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); } \
  WAE_CB T __tsan_atomic##n##_fetch_nand(volatile T* a, T v, int) { return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST); } \
  WAE_CB int __tsan_atomic##n##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                     \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                        \
  }                                                                                                                \
  WAE_CB int __tsan_atomic##n##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                       \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                         \
  }                                                                                                                \
  WAE_CB T __tsan_atomic##n##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                           \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                              \
    return c;                                                                                                      \
  }
WAE_ATOMIC(8, uint8_t)
WAE_ATOMIC(16, uint16_t)
WAE_ATOMIC(32, uint32_t)
WAE_ATOMIC(64, uint64_t)
#undef WAE_ATOMIC
WAE_CB void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
WAE_CB void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
