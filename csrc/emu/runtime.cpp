// The emulator's runtime: runs a kernel launch block by block, the threads of
// a block as fibers, and checks what compute-sanitizer would (docs/dev/emulator.md).
//
// Why fibers and not OS threads: a block's threads only need to interleave at
// the points where CUDA makes them wait for each other (__syncthreads, warp
// shuffles), so cooperative fibers switched at exactly those points run every
// kernel as written, with a schedule that is deterministic and replayable, a
// barrier that costs a ~20 ns register switch instead of a futex round trip
// through the kernel of the OS (a block_reduce_sum is ~1300 rendezvous per
// block), and shadow state that needs no locking. Races are found by shadow
// state per shared byte (below), not by hoping an OS schedule exposes them,
// so nothing is lost by running one thread at a time. The switch is a few
// lines of x86-64 assembly (callee-saved registers, MXCSR and the x87 control
// word), not ucontext, whose swapcontext makes a sigprocmask syscall per switch.
//
// Memory accesses of the kernel code reach this file through GCC's
// ThreadSanitizer instrumentation (-fsanitize=thread on the kernel TUs only,
// without linking libtsan): the compiler calls __tsan_readN / __tsan_writeN
// before every load and store, and this file defines those entry points. Only
// accesses made while a kernel thread runs are checked: on the fiber's own
// stack (ignored), in this library's writable segment, where __shared__ arrays
// live (racecheck), or else global memory, which must lie inside a live CPU
// allocation (memcheck; every CPU allocation is tracked by a wrapping
// allocator installed when the library loads).
#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <dlfcn.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda_emu.h"

#if !defined(__x86_64__)
#error "the emulator's fiber switch is written for x86-64"
#endif

#define EMU_NOSAN __attribute__((no_sanitize("thread")))

// switch(from_sp_slot, to_sp): saves the callee-saved state on the current
// stack, stores the stack pointer in *from, continues on `to`.
asm(R"(
  .text
  .globl sslext_emu_switch
  .hidden sslext_emu_switch
  .type sslext_emu_switch,@function
sslext_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size sslext_emu_switch,.-sslext_emu_switch

  .globl sslext_emu_trampoline
  .hidden sslext_emu_trampoline
  .type sslext_emu_trampoline,@function
sslext_emu_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size sslext_emu_trampoline,.-sslext_emu_trampoline
)");

extern "C" void sslext_emu_switch(void** from, void* to);
extern "C" void sslext_emu_trampoline();

namespace sslext::emu {
namespace {

constexpr size_t kStackBytes = 128 * 1024;
constexpr int kMaxThreads = 1024;
constexpr size_t kMaxStaticSmem = 48 * 1024;

enum class St : uint8_t { Runnable, Barrier, Shuffle, Exited };

struct Fiber {
  void* sp = nullptr;
  char* lo = nullptr;  // usable stack [lo, lo + kStackBytes)
  St st = St::Runnable;
  // Where it waits: barrier or shuffle call site.
  const char* file = nullptr;
  int line = 0;
  // Shuffle operands and result.
  unsigned mask = 0;
  uint64_t val = 0, result = 0;
  int kind = 0, arg = 0, width = 32;
};

struct Shadow {
  int32_t writer = -1;  // last writer, -1 never written in this block
  uint32_t wepoch = 0;
  int32_t reader = -1;  // sole reader of this epoch, -2 several
  uint32_t repoch = 0;
};

struct Launch {
  LaunchSpec spec;
  ThreadBody body;
  void* ctx;
  uint3 block;
  int nthreads;
  int cur = 0;
  std::vector<Fiber>* fibers;
  void* sched_sp = nullptr;
  bool failed = false;
  std::string error;
  uint32_t epoch = 1;
  std::unordered_map<uintptr_t, Shadow> shadow;
  // Global ranges this launch already validated (lo, hi).
  std::vector<std::pair<uintptr_t, uintptr_t>> ok_ranges;
};

__attribute__((tls_model("initial-exec"))) thread_local Launch* t_launch = nullptr;
__attribute__((tls_model("initial-exec"))) thread_local int t_in_hook = 0;

std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

std::vector<Fiber>& fiber_pool() {
  static std::vector<Fiber> pool;
  return pool;
}

// ---- configuration and statistics -------------------------------------

std::atomic<uint64_t> g_seed{0};
std::atomic<bool> g_seed_set{false};
std::atomic<uint64_t> g_launches{0};

std::mutex& stats_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, uint64_t>& launch_counts() {
  static std::map<std::string, uint64_t> m;
  return m;
}
std::map<std::string, int>& bounds_registry() {
  static std::map<std::string, int> m;
  return m;
}

std::string base_name(const char* kernel) {
  std::string s(kernel);
  auto lt = s.find('<');
  if (lt != std::string::npos) s.resize(lt);
  while (!s.empty() && s.back() == ' ') s.pop_back();
  auto colon = s.rfind("::");
  if (colon != std::string::npos) s = s.substr(colon + 2);
  return s;
}

uint64_t current_seed() {
  if (!g_seed_set.load()) {
    static std::once_flag once;
    std::call_once(once, [] {
      uint64_t s;
      if (const char* e = std::getenv("SSLEXT_EMU_SEED"); e && *e) {
        s = std::strtoull(e, nullptr, 10);
      } else {
        std::random_device rd;
        s = (static_cast<uint64_t>(rd()) << 32) ^ rd();
        s %= 1000000007ULL;
      }
      g_seed.store(s);
      g_seed_set.store(true);
      std::fprintf(stderr, "sslext emu: block order seed %llu (SSLEXT_EMU_SEED=%llu replays it)\n",
                   static_cast<unsigned long long>(s), static_cast<unsigned long long>(s));
    });
  }
  return g_seed.load();
}

// ---- tracked CPU allocations (memcheck) --------------------------------

std::mutex& alloc_mutex() {
  static std::mutex m;
  return m;
}
std::map<uintptr_t, size_t>& live_allocs() {
  static std::map<uintptr_t, size_t> m;
  return m;
}

struct TrackedCtx {
  c10::DataPtr inner;
  uintptr_t addr;
};

void tracked_delete(void* p) {
  auto* c = static_cast<TrackedCtx*>(p);
  {
    std::lock_guard<std::mutex> g(alloc_mutex());
    live_allocs().erase(c->addr);
  }
  delete c;
}

struct TrackingAllocator final : c10::Allocator {
  c10::Allocator* base;
  explicit TrackingAllocator(c10::Allocator* b) : base(b) {}
  // Each allocation is followed by an unregistered redzone, so a read just
  // past a tensor's end never lands in a neighbouring live allocation.
  static constexpr size_t kRedzone = 256;
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base->allocate(n == 0 ? 0 : n + kRedzone);
    void* p = inner.get();
    if (p == nullptr || n == 0) return inner;
    auto* c = new TrackedCtx{std::move(inner), reinterpret_cast<uintptr_t>(p)};
    {
      std::lock_guard<std::mutex> g(alloc_mutex());
      live_allocs()[c->addr] = n;
    }
    return {p, c, &tracked_delete, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

// Ranges of this library's writable segment (.data/.bss): static locals,
// i.e. the __shared__ arrays, live there.
uintptr_t g_rw_lo = 0, g_rw_hi = 0;

int phdr_cb(dl_phdr_info* info, size_t, void* data) {
  auto self = reinterpret_cast<uintptr_t>(data);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    uintptr_t lo = info->dlpi_addr + ph.p_vaddr, hi = lo + ph.p_memsz;
    if (self >= lo && self < hi) {
      // Found our module: take its writable PT_LOAD segment.
      for (int j = 0; j < info->dlpi_phnum; ++j) {
        const auto& q = info->dlpi_phdr[j];
        if (q.p_type == PT_LOAD && (q.p_flags & PF_W)) {
          g_rw_lo = info->dlpi_addr + q.p_vaddr;
          g_rw_hi = g_rw_lo + q.p_memsz;
        }
      }
      return 1;
    }
  }
  return 0;
}

struct Init {
  Init() {
    dl_iterate_phdr(phdr_cb, reinterpret_cast<void*>(&phdr_cb));
    static TrackingAllocator tracker(c10::GetDefaultCPUAllocator());
    c10::SetCPUAllocator(&tracker, /*priority=*/200);
  }
} g_init;

// ---- reporting ---------------------------------------------------------

std::string where(const Launch& L, int tid) {
  const dim3 b = L.spec.block;
  std::ostringstream o;
  o << "kernel " << L.spec.kernel << " (launched at " << L.spec.file << ":" << L.spec.line
    << ") block (" << L.block.x << "," << L.block.y << "," << L.block.z << ")";
  if (tid >= 0)
    o << " thread (" << tid % b.x << "," << (tid / b.x) % b.y << "," << tid / (b.x * b.y) << ")";
  return o.str();
}

// Records the first error and, from a kernel thread, never returns: the
// thread's stack is abandoned and the launch ends (the access that triggered
// a memcheck error is therefore never performed).
[[noreturn]] EMU_NOSAN void fail_in_fiber(Launch& L, const char* check, const std::string& msg) {
  // The linker may have kept an instrumented copy of a library function the
  // report uses (COMDAT): no checks while reporting. launch() resets it.
  t_in_hook = 1;
  if (!L.failed) {
    L.failed = true;
    L.error = std::string("sslext emu ") + check + ": " + where(L, L.cur) + ": " + msg;
  }
  Fiber& f = (*L.fibers)[L.cur];
  f.st = St::Exited;
  sslext_emu_switch(&f.sp, L.sched_sp);
  __builtin_trap();
}

void fail_sched(Launch& L, const char* check, int tid, const std::string& msg) {
  if (L.failed) return;
  L.failed = true;
  L.error = std::string("sslext emu ") + check + ": " + where(L, tid) + ": " + msg;
}

std::string site(const char* file, int line) {
  return std::string(file) + ":" + std::to_string(line);
}

EMU_NOSAN void fiber_main(void*) {
  Launch& L = *t_launch;
  try {
    L.body(L.ctx);
  } catch (const std::exception& e) {
    fail_in_fiber(L, "exception", e.what());
  }
  Fiber& f = (*L.fibers)[L.cur];
  f.st = St::Exited;
  sslext_emu_switch(&f.sp, L.sched_sp);
  __builtin_trap();
}

void init_fiber(Fiber& f) {
  if (f.lo == nullptr) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    TORCH_CHECK(m != MAP_FAILED, "sslext emu: cannot map a fiber stack");
    mprotect(m, page, PROT_NONE);  // guard page: an overflow faults
    f.lo = static_cast<char*>(m) + page;
  }
  // Frame popped by the first switch into the fiber: control words, six
  // callee-saved registers (r12 = arg, r13 = entry), return address.
  auto* top = reinterpret_cast<uint64_t*>(f.lo + kStackBytes);
  uint64_t* sp = top - 10;  // keeps rsp 16-byte aligned at the trampoline
  uint32_t mxcsr;
  uint16_t fcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fcw));
  sp[0] = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fcw) << 32);
  sp[1] = 0;                                                   // r15
  sp[2] = 0;                                                   // r14
  sp[3] = reinterpret_cast<uint64_t>(&fiber_main);             // r13
  sp[4] = 0;                                                   // r12
  sp[5] = 0;                                                   // rbx
  sp[6] = 0;                                                   // rbp
  sp[7] = reinterpret_cast<uint64_t>(&sslext_emu_trampoline);  // ret
  f.sp = sp;
  f.st = St::Runnable;
  f.file = nullptr;
  f.line = 0;
}

// Completes the shuffle of the warp of `tid` if every lane its mask names has
// arrived at the same call site; reports a lane that cannot arrive.
// Returns true when resolved.
EMU_NOSAN bool try_resolve_shuffle(Launch& L, int tid, bool final) {
  auto& F = *L.fibers;
  Fiber& me = F[tid];
  const int base = tid - tid % 32;
  const int lane = tid % 32;
  for (int l = 0; l < 32; ++l) {
    if (!(me.mask >> l & 1u)) continue;
    const int t = base + l;
    const Fiber& o = F[t];
    if (o.st == St::Exited) {
      fail_sched(L, "synccheck", tid,
                 "shuffle at " + site(me.file, me.line) + " names lane " + std::to_string(l) +
                     " in its mask, which has exited");
      return false;
    }
    if (o.st == St::Barrier) {
      fail_sched(L, "synccheck", tid,
                 "shuffle at " + site(me.file, me.line) + " names lane " + std::to_string(l) +
                     ", which diverged to the barrier at " + site(o.file, o.line));
      return false;
    }
    if (o.st == St::Shuffle && (o.file != me.file || o.line != me.line)) {
      fail_sched(L, "synccheck", tid,
                 "shuffle at " + site(me.file, me.line) + " names lane " + std::to_string(l) +
                     ", which diverged to the shuffle at " + site(o.file, o.line));
      return false;
    }
    if (o.st == St::Runnable) {
      if (final)
        fail_sched(L, "synccheck", tid,
                   "shuffle at " + site(me.file, me.line) + " names lane " + std::to_string(l) +
                       ", which never reaches it");
      return false;
    }
    if (o.mask != me.mask) {
      fail_sched(L, "synccheck", tid,
                 "lanes " + std::to_string(lane) + " and " + std::to_string(l) +
                     " call the shuffle at " + site(me.file, me.line) + " with different masks");
      return false;
    }
  }
  // Every named lane is here: exchange.
  for (int l = 0; l < 32; ++l) {
    if (!(me.mask >> l & 1u)) continue;
    Fiber& o = F[base + l];
    const int w = o.width;
    const int seg = l & ~(w - 1);
    int src = l;
    switch (o.kind) {
      case 0:
        src = seg + (o.arg & (w - 1));
        break;
      case 1:
        src = (l & (w - 1)) + o.arg >= w ? l : l + o.arg;
        break;
      case 2:
        src = (l & (w - 1)) < o.arg ? l : l - o.arg;
        break;
      case 3: {
        const int s = l ^ o.arg;
        src = (s & ~(w - 1)) > seg ? l : s;
        break;
      }
    }
    if (!(me.mask >> src & 1u)) {
      fail_sched(L, "synccheck", base + l,
                 "shuffle at " + site(o.file, o.line) + " reads lane " + std::to_string(src) +
                     ", which is not in its mask (undefined value)");
      return false;
    }
    o.result = F[base + src].val;
  }
  for (int l = 0; l < 32; ++l)
    if (me.mask >> l & 1u) F[base + l].st = St::Runnable;
  return true;
}

// Scheduler code is not the kernel's: checks are off except while a fiber runs
// (a report may call an instrumented copy of a library function).
EMU_NOSAN void run_block_checked(Launch& L);
EMU_NOSAN void run_block(Launch& L) {
  ++t_in_hook;
  run_block_checked(L);
  --t_in_hook;
}
EMU_NOSAN void run_block_checked(Launch& L) {
  auto& F = *L.fibers;
  const int n = L.nthreads;
  for (int t = 0; t < n; ++t) init_fiber(F[t]);
  L.shadow.clear();
  L.epoch = 1;
  for (;;) {
    bool any_runnable = false;
    for (int t = 0; t < n; ++t) {
      if (F[t].st != St::Runnable) continue;
      any_runnable = true;
      L.cur = t;
      --t_in_hook;
      sslext_emu_switch(&L.sched_sp, F[t].sp);
      ++t_in_hook;
      if (L.failed) return;
    }
    if (any_runnable) continue;
    // Nobody can run: everyone exited, or waits at a barrier or a shuffle.
    int exited = 0, at_barrier = 0, first_barrier = -1, first_exited = -1;
    for (int t = 0; t < n; ++t) {
      if (F[t].st == St::Exited) {
        ++exited;
        if (first_exited < 0) first_exited = t;
      } else if (F[t].st == St::Barrier) {
        ++at_barrier;
        if (first_barrier < 0) first_barrier = t;
      }
    }
    if (exited == n) break;
    for (int t = 0; t < n; ++t) {
      if (F[t].st == St::Shuffle) {
        if (!try_resolve_shuffle(L, t, /*final=*/true) && !L.failed)
          fail_sched(L, "synccheck", t, "shuffle cannot complete");
        return;
      }
    }
    if (exited > 0) {
      const Fiber& b = F[first_barrier];
      fail_sched(L, "synccheck", first_exited,
                 "thread exited while other threads of its block wait at the barrier at " +
                     site(b.file, b.line) + " (divergent __syncthreads)");
      return;
    }
    const Fiber& b0 = F[first_barrier];
    for (int t = 0; t < n; ++t) {
      if (F[t].file != b0.file || F[t].line != b0.line) {
        fail_sched(L, "synccheck", t,
                   "waits at the barrier at " + site(F[t].file, F[t].line) + " while thread " +
                       std::to_string(first_barrier) + " waits at " + site(b0.file, b0.line) +
                       " (divergent __syncthreads)");
        return;
      }
    }
    ++L.epoch;
    for (int t = 0; t < n; ++t) F[t].st = St::Runnable;
  }
  // Static shared memory of the block: every byte it touched.
  if (L.shadow.size() > kMaxStaticSmem)
    fail_sched(L, "launch check", -1,
               "uses " + std::to_string(L.shadow.size()) +
                   " bytes of shared memory, more than the 48 KiB of static shared memory");
}

// ---- memory access checks ---------------------------------------------

EMU_NOSAN void check_shared(Launch& L, uintptr_t a, int size, bool write) {
  const int t = L.cur;
  for (int i = 0; i < size; ++i) {
    Shadow& s = L.shadow[a + i];
    if (write) {
      if (s.writer >= 0 && s.wepoch == L.epoch && s.writer != t)
        fail_in_fiber(
            L, "racecheck",
            "write-write hazard on shared byte 0x" +
                [&] {
                  std::ostringstream o;
                  o << std::hex << a + i;
                  return o.str();
                }() +
                ": also written by thread " + std::to_string(s.writer) +
                " since the last __syncthreads");
      if (s.repoch == L.epoch && s.reader != -1 && s.reader != t)
        fail_in_fiber(L, "racecheck",
                      "read-write hazard: writes a shared byte that " +
                          (s.reader == -2 ? std::string("other threads")
                                          : "thread " + std::to_string(s.reader)) +
                          " read since the last __syncthreads");
      s.writer = t;
      s.wepoch = L.epoch;
    } else {
      if (s.writer == -1)
        fail_in_fiber(L, "racecheck",
                      "reads shared memory that no thread of this block has written "
                      "(uninitialised __shared__)");
      if (s.wepoch == L.epoch && s.writer != t)
        fail_in_fiber(L, "racecheck",
                      "write-read hazard: reads a shared byte that thread " +
                          std::to_string(s.writer) + " wrote since the last __syncthreads");
      if (s.repoch != L.epoch) {
        s.reader = t;
        s.repoch = L.epoch;
      } else if (s.reader != t) {
        s.reader = -2;
      }
    }
  }
}

EMU_NOSAN void check_global(Launch& L, uintptr_t a, int size, bool write) {
  for (const auto& r : L.ok_ranges)
    if (a >= r.first && a + size <= r.second) return;
  std::pair<uintptr_t, uintptr_t> hit{0, 0};
  {
    std::lock_guard<std::mutex> g(alloc_mutex());
    auto& m = live_allocs();
    auto it = m.upper_bound(a);
    if (it != m.begin()) {
      --it;
      if (a >= it->first && a + size <= it->first + it->second)
        hit = {it->first, it->first + it->second};
    }
  }
  if (hit.second != 0) {
    L.ok_ranges.push_back(hit);
    return;
  }
  std::ostringstream o;
  o << "invalid global " << (write ? "write" : "read") << " of " << size << " bytes at 0x"
    << std::hex << a << ": outside every live allocation";
  {
    std::lock_guard<std::mutex> g(alloc_mutex());
    auto& m = live_allocs();
    auto it = m.upper_bound(a);
    if (it != m.begin()) {
      --it;
      o << std::dec << " (" << a - (it->first + it->second) << " bytes past the end of a "
        << it->second << "-byte allocation)";
    }
  }
  fail_in_fiber(L, "memcheck", o.str());
}

EMU_NOSAN inline void on_access(void* p, int size, bool write) {
  Launch* L = t_launch;
  if (L == nullptr || t_in_hook) return;
  const auto a = reinterpret_cast<uintptr_t>(p);
  const Fiber& f = (*L->fibers)[L->cur];
  if (a >= reinterpret_cast<uintptr_t>(f.lo) && a < reinterpret_cast<uintptr_t>(f.lo) + kStackBytes)
    return;
  ++t_in_hook;
  if (a >= g_rw_lo && a < g_rw_hi)
    check_shared(*L, a, size, write);
  else
    check_global(*L, a, size, write);
  --t_in_hook;
}

}  // namespace

// ---- the CUDA surface ----------------------------------------------------

EMU_NOSAN uint3 thread_idx() {
  const Launch& L = *t_launch;
  const dim3 b = L.spec.block;
  const unsigned t = static_cast<unsigned>(L.cur);
  return {t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
}
EMU_NOSAN uint3 block_idx() { return t_launch->block; }
EMU_NOSAN dim3 block_dim() { return t_launch->spec.block; }
EMU_NOSAN dim3 grid_dim() { return t_launch->spec.grid; }

EMU_NOSAN void syncthreads(const char* file, int line) {
  Launch& L = *t_launch;
  Fiber& f = (*L.fibers)[L.cur];
  f.st = St::Barrier;
  f.file = file;
  f.line = line;
  sslext_emu_switch(&f.sp, L.sched_sp);
}

EMU_NOSAN uint64_t shfl(const char* file, int line, unsigned mask, uint64_t bits, int kind, int arg,
                        int width) {
  Launch& L = *t_launch;
  const int tid = L.cur;
  Fiber& f = (*L.fibers)[tid];
  const int base = tid - tid % 32;
  // Reports built here may run instrumented library code (see fail_in_fiber):
  // checks off until this thread switches away or returns.
  ++t_in_hook;
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fail_in_fiber(L, "synccheck",
                  "shuffle width " + std::to_string(width) + " is not a power of two <= 32");
  if (kind == 3 && (arg < 0 || arg > 31))
    fail_in_fiber(L, "synccheck",
                  "__shfl_xor_sync lane mask " + std::to_string(arg) + " reaches past the warp");
  if (!(mask >> (tid % 32) & 1u))
    fail_in_fiber(L, "synccheck", "calls a shuffle whose mask does not name its own lane");
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && base + l >= L.nthreads)
      fail_in_fiber(L, "synccheck",
                    "shuffle at " + site(file, line) + " names lane " + std::to_string(l) +
                        ", past the last thread of the block (blockDim " +
                        std::to_string(L.nthreads) + ")");
  f.st = St::Shuffle;
  f.file = file;
  f.line = line;
  f.mask = mask;
  f.val = bits;
  f.kind = kind;
  f.arg = arg;
  f.width = width;
  const bool done = try_resolve_shuffle(L, tid, /*final=*/false);
  --t_in_hook;
  if (!done) {
    if (L.failed) {
      f.st = St::Exited;
      sslext_emu_switch(&f.sp, L.sched_sp);
      __builtin_trap();
    }
    sslext_emu_switch(&f.sp, L.sched_sp);
  }
  return f.result;
}

int launch_bounds_of(const char* kernel_name) {
  std::lock_guard<std::mutex> g(stats_mutex());
  auto it = bounds_registry().find(base_name(kernel_name));
  return it == bounds_registry().end() ? 0 : it->second;
}

BoundsRegistrar::BoundsRegistrar(const char* kernel_name, int bounds) {
  std::lock_guard<std::mutex> g(stats_mutex());
  bounds_registry()[kernel_name] = bounds;
}

void launch(const LaunchSpec& spec, ThreadBody body, void* ctx) {
  const dim3 g = spec.grid, b = spec.block;
  const uint64_t threads = static_cast<uint64_t>(b.x) * b.y * b.z;
  const std::string name = base_name(spec.kernel);
  auto bad = [&](const std::string& msg) {
    TORCH_CHECK(false, "sslext emu launch check: kernel ", spec.kernel, " (launched at ", spec.file,
                ":", spec.line, "): ", msg);
  };
  if (g.x == 0 || g.y == 0 || g.z == 0)
    bad("zero-sized grid (" + std::to_string(g.x) + "," + std::to_string(g.y) + "," +
        std::to_string(g.z) + ")");
  if (threads == 0) bad("zero-sized block");
  if (b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024)
    bad("block of " + std::to_string(threads) + " threads (" + std::to_string(b.x) + "," +
        std::to_string(b.y) + "," + std::to_string(b.z) +
        "): more than 1024 or a dimension past its limit");
  if (spec.bounds > 0 && threads > static_cast<uint64_t>(spec.bounds))
    bad("block of " + std::to_string(threads) + " threads exceeds __launch_bounds__(" +
        std::to_string(spec.bounds) + ")");
  if (g.x > 2147483647u) bad("gridDim.x " + std::to_string(g.x) + " exceeds 2^31 - 1");
  if (g.y > 65535 || g.z > 65535)
    bad("gridDim.y/z (" + std::to_string(g.y) + ", " + std::to_string(g.z) + ") exceeds 65535");
  if (spec.dynamic_smem > 0)
    bad("dynamic shared memory requested, but no kernel of csrc/cuda/ declares extern __shared__");

  const uint64_t seed = current_seed();
  std::lock_guard<std::mutex> lock(launch_mutex());
  const uint64_t launch_no = g_launches.fetch_add(1);
  {
    std::lock_guard<std::mutex> s(stats_mutex());
    ++launch_counts()[name];
  }
  auto& pool = fiber_pool();
  if (pool.size() < static_cast<size_t>(kMaxThreads)) pool.resize(kMaxThreads);
  Launch L{};
  L.spec = spec;
  L.body = body;
  L.ctx = ctx;
  L.nthreads = static_cast<int>(threads);
  L.fibers = &pool;
  // Blocks in a seeded random order: a result that depends on which block
  // runs first changes between runs (and seeds).
  const uint64_t nblocks = static_cast<uint64_t>(g.x) * g.y * g.z;
  std::vector<uint64_t> order(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + launch_no);
  std::shuffle(order.begin(), order.end(), rng);
  // A check that failed inside an access hook never returned from it.
  t_in_hook = 0;
  t_launch = &L;
  for (uint64_t k : order) {
    L.block = {static_cast<unsigned>(k % g.x), static_cast<unsigned>((k / g.x) % g.y),
               static_cast<unsigned>(k / (static_cast<uint64_t>(g.x) * g.y))};
    L.ok_ranges.clear();
    run_block(L);
    if (L.failed) break;
  }
  t_launch = nullptr;
  t_in_hook = 0;
  if (L.failed) {
    std::fprintf(stderr, "%s\n", L.error.c_str());
    TORCH_CHECK(false, L.error);
  }
}

// ---- introspection for the tests ----------------------------------------

uint64_t seed() { return current_seed(); }
void set_seed(uint64_t s) {
  current_seed();  // print the first one
  g_seed.store(s);
}
std::string launch_counts_text() {
  std::lock_guard<std::mutex> g(stats_mutex());
  std::string out;
  for (const auto& [k, v] : launch_counts()) out += k + "=" + std::to_string(v) + "\n";
  return out;
}
std::string bounds_text() {
  std::lock_guard<std::mutex> g(stats_mutex());
  std::string out;
  for (const auto& [k, v] : bounds_registry()) out += k + "=" + std::to_string(v) + "\n";
  return out;
}

}  // namespace sslext::emu

// ---- GCC ThreadSanitizer entry points --------------------------------------
// Plain loads/stores report to the checks; atomics (std::atomic in inlined
// ATen code, e.g. reference counts) are performed as requested.
extern "C" {
#define SSLEXT_EMU_RW(n)                                                                    \
  EMU_NOSAN void __tsan_read##n(void* p) { sslext::emu::on_access(p, n, false); }           \
  EMU_NOSAN void __tsan_write##n(void* p) { sslext::emu::on_access(p, n, true); }           \
  EMU_NOSAN void __tsan_unaligned_read##n(void* p) { sslext::emu::on_access(p, n, false); } \
  EMU_NOSAN void __tsan_unaligned_write##n(void* p) { sslext::emu::on_access(p, n, true); }
SSLEXT_EMU_RW(1)
SSLEXT_EMU_RW(2)
SSLEXT_EMU_RW(4)
SSLEXT_EMU_RW(8)
SSLEXT_EMU_RW(16)
#undef SSLEXT_EMU_RW
EMU_NOSAN void __tsan_read_range(void* p, unsigned long n) {
  sslext::emu::on_access(p, static_cast<int>(n), false);
}
EMU_NOSAN void __tsan_write_range(void* p, unsigned long n) {
  sslext::emu::on_access(p, static_cast<int>(n), true);
}
EMU_NOSAN void __tsan_init() {}
EMU_NOSAN void __tsan_func_entry(void*) {}
EMU_NOSAN void __tsan_func_exit() {}
EMU_NOSAN void __tsan_vptr_update(void**, void*) {}
EMU_NOSAN void __tsan_vptr_read(void**) {}
EMU_NOSAN void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
EMU_NOSAN void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

#define SSLEXT_EMU_ATOMIC(bits, T)                                                                \
  EMU_NOSAN T __tsan_atomic##bits##_load(const volatile T* a, int) {                              \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                  \
  }                                                                                               \
  EMU_NOSAN void __tsan_atomic##bits##_store(volatile T* a, T v, int) {                           \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                     \
  }                                                                                               \
  EMU_NOSAN T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) {                           \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                           \
  }                                                                                               \
  EMU_NOSAN T __tsan_atomic##bits##_fetch_add(volatile T* a, T v, int) {                          \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                            \
  }                                                                                               \
  EMU_NOSAN T __tsan_atomic##bits##_fetch_sub(volatile T* a, T v, int) {                          \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                            \
  }                                                                                               \
  EMU_NOSAN T __tsan_atomic##bits##_fetch_and(volatile T* a, T v, int) {                          \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                            \
  }                                                                                               \
  EMU_NOSAN T __tsan_atomic##bits##_fetch_or(volatile T* a, T v, int) {                           \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                             \
  }                                                                                               \
  EMU_NOSAN T __tsan_atomic##bits##_fetch_xor(volatile T* a, T v, int) {                          \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                            \
  }                                                                                               \
  EMU_NOSAN T __tsan_atomic##bits##_fetch_nand(volatile T* a, T v, int) {                         \
    return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                           \
  }                                                                                               \
  EMU_NOSAN int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int,      \
                                                              int) {                              \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);       \
  }                                                                                               \
  EMU_NOSAN int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) { \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);        \
  }                                                                                               \
  EMU_NOSAN T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {     \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);             \
    return c;                                                                                     \
  }
SSLEXT_EMU_ATOMIC(8, uint8_t)
SSLEXT_EMU_ATOMIC(16, uint16_t)
SSLEXT_EMU_ATOMIC(32, uint32_t)
SSLEXT_EMU_ATOMIC(64, uint64_t)
#undef SSLEXT_EMU_ATOMIC
}
