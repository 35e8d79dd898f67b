// The CUDA emulator's scheduler: runs a launch's blocks one after another on the calling thread,
// and a block's threads as cooperative fibers (one stack each, reused), round-robin. A fiber runs
// until it reaches a barrier (__syncthreads, a warp operation) or returns, so every interleaving
// it produces is one the GPU could produce too, and the barriers' rules are checked as it goes.
//
// Context switches use a few lines of x86-64 assembly (ucontext's swapcontext makes a system call
// per switch, ~50x slower); other machines, and processes with shadow stacks on, use ucontext.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_emu.h"

// Under AddressSanitizer, stack switches must be announced, or it takes fiber stacks for garbage.
#if defined(__SANITIZE_ADDRESS__)
#define LA_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LA_EMU_ASAN 1
#endif
#endif
#if defined(LA_EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__) && defined(__ELF__)
#define LA_EMU_ASM_SWITCH 1
extern "C" {
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save_sp,
// then resumes the context saved at load_sp. (The FP control words are not switched: all fibers
// run on one OS thread and kernels never change them.)
__attribute__((visibility("hidden"))) void la_emu_switch(void** save_sp, void* load_sp);
// A new fiber's first "return address": calls r13(r12) and never returns.
__attribute__((visibility("hidden"))) void la_emu_fiber_start();
}
asm(R"(
  .pushsection .text
  .p2align 4
  .globl la_emu_switch
  .hidden la_emu_switch
  .type la_emu_switch,@function
la_emu_switch:
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
  .size la_emu_switch,.-la_emu_switch

  .p2align 4
  .globl la_emu_fiber_start
  .hidden la_emu_fiber_start
  .type la_emu_fiber_start,@function
la_emu_fiber_start:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size la_emu_fiber_start,.-la_emu_fiber_start
  .popsection
)");
#endif

// The linker's bounds of the section every static __shared__ variable is in (cuda_emu.h); weak,
// as a binary without one has no such section.
extern "C" {
extern char __start_la_emu_shared[] __attribute__((weak, visibility("hidden")));
extern char __stop_la_emu_shared[] __attribute__((weak, visibility("hidden")));
}

namespace la::emu {
namespace detail {

Thread* g_thread = nullptr;
uint3 g_block_idx{0, 0, 0};
dim3 g_block_dim;
dim3 g_grid_dim;

// runtime_emu.cpp: checks the guard bytes around every device buffer after a launch.
void check_device_buffers(const char* kernel);

namespace {

constexpr size_t kMaxShared = 227 * 1024;
constexpr unsigned char kSharedPoison = 0xff;  // NaN as float and bf16, -1 as int
constexpr unsigned char kGuard = 0xa5;
constexpr size_t kSharedGuard = 64;

// Thrown into a fiber that is still waiting when its block failed, to unwind its stack.
struct Cancelled {};

enum class State : unsigned char { runnable, at_block_barrier, at_warp_op, done };

struct Fiber {
  Thread thread;
  unsigned linear = 0;
  State state = State::done;
  bool started = false;
  bool cancel = false;
  char* stack = nullptr;  // lowest usable byte (a guard page lies below)
  size_t stack_size = 0;
  void* sp = nullptr;                // saved stack pointer (assembly switch)
  std::unique_ptr<ucontext_t> uc;    // saved context (ucontext switch); apart, to keep Fiber small
  void* asan_fake_stack = nullptr;   // AddressSanitizer's state while switched away
};

struct Warp {
  unsigned lanes = 0;  // threads this warp has (32 unless it is the block's partial last warp)
  unsigned lane_mask = 0;
  unsigned arrived = 0, exited = 0, at_block = 0;
  unsigned generation = 0;
  WarpOp op = WarpOp::syncwarp;
  int width = 32;
  // Values posted for a shuffle; double-buffered by generation, since a lane cannot get two
  // operations ahead of a lane that has not yet read the previous one.
  uint64_t slot[2][32];
};

struct Block {
  unsigned n = 0;
  unsigned arrived = 0, exited = 0, done = 0;
  const char* file = nullptr;  // the __syncthreads() being gathered
  int line = 0;
  std::vector<Warp> warps;
  bool failed = false;
  std::exception_ptr error;
};

struct Launch {
  const char* name = "";
  Body body = nullptr;
  void* ctx = nullptr;
  std::vector<std::unique_ptr<Fiber>> fibers;  // reused across launches; stacks are kept
  Block block;
  Fiber* current = nullptr;
  void* sched_sp = nullptr;
  ucontext_t sched_uc;
  unsigned char* shared = nullptr;
  size_t shared_bytes = 0;
  void* asan_fake_stack = nullptr;  // the scheduler's, for AddressSanitizer
  const void* asan_stack_bottom = nullptr;
  size_t asan_stack_size = 0;
};

std::mutex g_launch_mutex;
thread_local bool t_in_launch = false;
Launch g;

bool use_ucontext() {
  static const bool uc = [] {
#if defined(LA_EMU_ASM_SWITCH)
    if (const char* e = std::getenv("LA_EMU_UCONTEXT"); e && *e && std::strcmp(e, "0") != 0) return true;
    // With CET shadow stacks on, a switch that is not the kernel's own breaks them; glibc's
    // swapcontext knows how to switch shadow stacks too.
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
      if (line.rfind("x86_Thread_features:", 0) == 0 && line.find("shstk") != std::string::npos) return true;
    return false;
#else
    return true;
#endif
  }();
  return uc;
}

size_t stack_bytes() {
  static const size_t bytes = [] {
    size_t kb = 256;
    if (const char* e = std::getenv("LA_EMU_STACK_KB"); e && std::atol(e) >= 16) kb = size_t(std::atol(e));
    return kb * 1024;
  }();
  return bytes;
}

std::string dim_str(unsigned x, unsigned y, unsigned z) {
  std::ostringstream s;
  s << "(" << x << "," << y << "," << z << ")";
  return s.str();
}

std::string where() {
  std::string s = std::string("CUDA emulator: kernel ") + g.name + ", block " +
                  dim_str(g_block_idx.x, g_block_idx.y, g_block_idx.z);
  if (g.current)
    s += ", thread " + dim_str(g.current->thread.idx.x, g.current->thread.idx.y, g.current->thread.idx.z);
  return s;
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::shfl_idx: return "__shfl_sync";
    case WarpOp::shfl_up: return "__shfl_up_sync";
    case WarpOp::shfl_down: return "__shfl_down_sync";
    case WarpOp::shfl_xor: return "__shfl_xor_sync";
    case WarpOp::syncwarp: return "__syncwarp";
    case WarpOp::ballot: return "__ballot_sync/__any_sync/__all_sync";
    case WarpOp::wmma_load: return "wmma::load_matrix_sync";
    case WarpOp::wmma_store: return "wmma::store_matrix_sync";
    case WarpOp::wmma_mma: return "wmma::mma_sync";
  }
  return "?";
}

std::string site(const char* file, int line) { return std::string(file ? file : "?") + ":" + std::to_string(line); }

// ---- context switching ------------------------------------------------------------------------

[[noreturn]] void fiber_main(Fiber* f);
void uc_entry() { fiber_main(g.current); }

void switch_to_fiber(Fiber* f) {
  g.current = f;
  g_thread = &f->thread;
#if defined(LA_EMU_ASAN)
  __sanitizer_start_switch_fiber(&g.asan_fake_stack, f->stack, f->stack_size);
#endif
#if defined(LA_EMU_ASM_SWITCH)
  if (!use_ucontext()) la_emu_switch(&g.sched_sp, f->sp);
  else
#endif
    swapcontext(&g.sched_uc, f->uc.get());
#if defined(LA_EMU_ASAN)
  __sanitizer_finish_switch_fiber(g.asan_fake_stack, nullptr, nullptr);
#endif
}

void switch_to_scheduler(Fiber* f) {
#if defined(LA_EMU_ASAN)
  // a finished fiber's stack is dead: nothing to keep for it
  __sanitizer_start_switch_fiber(f->state == State::done ? nullptr : &f->asan_fake_stack, g.asan_stack_bottom,
                                 g.asan_stack_size);
#endif
#if defined(LA_EMU_ASM_SWITCH)
  if (!use_ucontext()) la_emu_switch(&f->sp, g.sched_sp);
  else
#endif
    swapcontext(f->uc.get(), &g.sched_uc);
#if defined(LA_EMU_ASAN)
  __sanitizer_finish_switch_fiber(f->asan_fake_stack, &g.asan_stack_bottom, &g.asan_stack_size);
#endif
}

void prepare(Fiber* f) {
#if defined(LA_EMU_ASM_SWITCH)
  if (!use_ucontext()) {
    // Stagger the tops by cache lines: equally aligned stacks would all compete for the same
    // few L1 sets.
    uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack) + f->stack_size - (f->linear % 61) * 64) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top - 16 - 56);
    // What la_emu_switch pops, lowest first: r15, r14, r13, r12, rbx, rbp and the return address.
    sp[0] = sp[1] = nullptr;
    sp[2] = reinterpret_cast<void*>(&fiber_main);
    sp[3] = f;
    sp[4] = sp[5] = nullptr;
    sp[6] = reinterpret_cast<void*>(&la_emu_fiber_start);
    sp[7] = sp[8] = nullptr;
    f->sp = sp;
    return;
  }
#endif
  if (!f->uc) f->uc = std::make_unique<ucontext_t>();
  getcontext(f->uc.get());
  f->uc->uc_stack.ss_sp = f->stack;
  f->uc->uc_stack.ss_size = f->stack_size;
  f->uc->uc_link = nullptr;
  makecontext(f->uc.get(), &uc_entry, 0);
}

void ensure_fibers(unsigned n) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  while (g.fibers.size() < n) {
    auto f = std::make_unique<Fiber>();
    f->stack_size = stack_bytes();
    // a guard page below the stack turns an overflow into a fault rather than silent corruption
    void* m = mmap(nullptr, f->stack_size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    LA_CHECK(m != MAP_FAILED, "CUDA emulator: could not map a fiber stack of ", f->stack_size, " bytes");
    mprotect(m, page, PROT_NONE);
    f->stack = static_cast<char*>(m) + page;
    g.fibers.push_back(std::move(f));
  }
}

// ---- barriers ---------------------------------------------------------------------------------

[[noreturn, gnu::noinline, gnu::cold]] void outside_kernel(const char* what) {
  fail("CUDA emulator: ", what, " called outside a kernel");
}

inline Fiber* current_fiber(const char* what) {
  if (!g.current) outside_kernel(what);
  return g.current;
}

// Parks the calling fiber until a barrier releases it.
void park(Fiber* f, State s) {
  f->state = s;
  switch_to_scheduler(f);
  if (f->cancel) throw Cancelled{};
}

void record_error(std::exception_ptr e) {
  Block& b = g.block;
  if (b.failed) return;
  b.failed = true;
  try {
    std::rethrow_exception(e);
  } catch (const Error&) {
    b.error = e;  // the emulator's own errors already say where
  } catch (const std::exception& x) {
    b.error = std::make_exception_ptr(Error(where() + ": " + x.what()));
  } catch (...) {
    b.error = std::make_exception_ptr(Error(where() + ": a non-standard exception"));
  }
}

void on_thread_exit(Fiber* f) {
  Block& b = g.block;
  Warp& w = b.warps[f->linear / 32];
  b.exited++;
  w.exited++;
  if (b.arrived > 0)
    device_fail("divergent __syncthreads: this thread returned while " + std::to_string(b.arrived) +
                " thread(s) of its block wait at __syncthreads() at " + site(b.file, b.line) +
                " (every thread of the block must reach each __syncthreads)");
  if (w.arrived > 0)
    device_fail(std::string("this lane returned while ") + std::to_string(w.arrived) + " lane(s) of its warp wait at " +
                op_name(w.op) + " (every lane of the warp must take part)");
}

[[noreturn]] void fiber_main(Fiber* f) {
#if defined(LA_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &g.asan_stack_bottom, &g.asan_stack_size);
#endif
  try {
    g.body(g.ctx);
    on_thread_exit(f);
  } catch (const Cancelled&) {
  } catch (...) {
    record_error(std::current_exception());
  }
  f->state = State::done;
  g.block.done++;
  switch_to_scheduler(f);
  std::abort();  // a finished fiber is never resumed
}

std::string deadlock_report() {
  Block& b = g.block;
  std::ostringstream s;
  s << "CUDA emulator: kernel " << g.name << ", block " << dim_str(g_block_idx.x, g_block_idx.y, g_block_idx.z)
    << ": deadlock (divergent __syncthreads or warp operation):";
  if (b.arrived) s << " " << b.arrived << " thread(s) wait at __syncthreads() at " << site(b.file, b.line) << ";";
  for (size_t i = 0; i < b.warps.size(); i++)
    if (b.warps[i].arrived) s << " " << b.warps[i].arrived << " lane(s) of warp " << i << " wait at " << op_name(b.warps[i].op) << ";";
  s << " " << b.exited << " thread(s) returned";
  return s.str();
}

void cancel_all() {
  for (unsigned i = 0; i < g.block.n; i++) {
    Fiber* f = g.fibers[i].get();
    if (f->state == State::done) continue;
    if (!f->started) {
      f->state = State::done;
      continue;
    }
    f->cancel = true;
    switch_to_fiber(f);
  }
  g.current = nullptr;
  g_thread = nullptr;
}

void run_block(unsigned block_linear) {
  Block& b = g.block;
  const unsigned bx = g_block_dim.x, by = g_block_dim.y, n = b.n;
  for (unsigned i = 0; i < n; i++) {
    Fiber* f = g.fibers[i].get();
    f->thread.idx = uint3{i % bx, (i / bx) % by, i / (bx * by)};
    f->linear = i;
    f->state = State::runnable;
    f->started = f->cancel = false;
  }
  b.arrived = b.exited = b.done = 0;
  b.file = nullptr;
  b.failed = false;
  b.error = nullptr;
  for (size_t w = 0; w < b.warps.size(); w++) {
    Warp& wp = b.warps[w];
    wp.lanes = std::min(32u, n - unsigned(w) * 32);
    wp.lane_mask = wp.lanes == 32 ? 0xffffffffu : (1u << wp.lanes) - 1;
    wp.arrived = wp.exited = wp.at_block = wp.generation = 0;
  }
  // Odd blocks run their threads in reverse order, so that a missing barrier shows up whichever
  // of two threads was meant to go first.
  const bool forward = block_linear % 2 == 0;
  while (b.done < n) {
    bool ran = false;
    for (unsigned k = 0; k < n && !b.failed; k++) {
      Fiber* f = g.fibers[forward ? k : n - 1 - k].get();
      if (f->state != State::runnable) continue;
      if (!f->started) {
        prepare(f);
        f->started = true;
      }
      switch_to_fiber(f);
      ran = true;
    }
    if (!b.failed && !ran) {
      b.failed = true;
      b.error = std::make_exception_ptr(Error(deadlock_report()));
    }
    if (b.failed) {
      cancel_all();
      std::rethrow_exception(b.error);
    }
  }
  g.current = nullptr;
  g_thread = nullptr;
}

}  // namespace

[[noreturn]] void device_fail(const std::string& what) { throw Error(where() + ": " + what); }

unsigned lane_id() { return current_fiber("lane_id")->linear % 32; }

unsigned warp_lanes() {
  Fiber* f = current_fiber("a warp vote");
  return g.block.warps[f->linear / 32].lane_mask;
}

namespace {

[[noreturn, gnu::noinline, gnu::cold]] void syncthreads_fail(const Warp& w, const char* file, int line) {
  const Block& b = g.block;
  if (b.exited > 0)
    device_fail("divergent __syncthreads: waits at " + site(file, line) + " but " + std::to_string(b.exited) +
                " thread(s) of its block already returned (every thread of the block must reach each __syncthreads)");
  if (w.arrived > 0)
    device_fail("divergent __syncthreads: waits at " + site(file, line) + " while " + std::to_string(w.arrived) +
                " lane(s) of its warp wait at " + op_name(w.op));
  device_fail("divergent __syncthreads: waits at " + site(file, line) + " while " + std::to_string(b.arrived) +
              " thread(s) of its block wait at " + site(b.file, b.line));
}

}  // namespace

void syncthreads(const char* file, int line) {
  Fiber* f = current_fiber("__syncthreads()");
  Block& b = g.block;
  Warp& w = b.warps[f->linear / 32];
  if (b.exited > 0 || w.arrived > 0 ||
      (b.arrived > 0 && (line != b.line || (file != b.file && std::strcmp(file, b.file) != 0))))
    syncthreads_fail(w, file, line);
  if (b.arrived == 0) {
    b.file = file;
    b.line = line;
  }
  if (++b.arrived == b.n) {
    b.arrived = 0;
    for (unsigned i = 0; i < b.n; i++)
      if (g.fibers[i]->state == State::at_block_barrier) g.fibers[i]->state = State::runnable;
    for (Warp& x : b.warps) x.at_block = 0;
    return;
  }
  w.at_block++;
  park(f, State::at_block_barrier);
}

namespace {

// The rule a warp operation broke (kept out of warp_op, whose frame every parked lane carries).
[[noreturn, gnu::noinline, gnu::cold]] void warp_op_fail(const Warp& w, WarpOp op, unsigned mask, int width) {
  const Block& b = g.block;
  if (mask != 0xffffffffu && mask != w.lane_mask) {
    std::ostringstream s;
    s << op_name(op) << " with mask 0x" << std::hex << mask
      << ": the emulator supports only whole-warp masks (0xffffffff)";
    device_fail(s.str());
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    device_fail(std::string(op_name(op)) + ": width " + std::to_string(width) + " is not a power of two up to 32");
  if (w.lanes != 32)
    device_fail(std::string(op_name(op)) + " needs a whole warp, but this block's last warp has " +
                std::to_string(w.lanes) + " threads");
  if (w.exited > 0)
    device_fail(std::string(op_name(op)) + ": " + std::to_string(w.exited) +
                " lane(s) of this warp already returned (every lane of the warp must take part)");
  if (w.at_block > 0)
    device_fail(std::string("divergent warp: this lane is at ") + op_name(op) + " while " + std::to_string(w.at_block) +
                " lane(s) of its warp wait at __syncthreads() at " + site(b.file, b.line));
  device_fail(std::string("divergent warp: this lane is at ") + op_name(op) + " (width " + std::to_string(width) +
              ") while " + std::to_string(w.arrived) + " lane(s) of its warp wait at " + op_name(w.op) + " (width " +
              std::to_string(w.width) + ")");
}

[[noreturn, gnu::noinline, gnu::cold]] void missing_lane_fail(const Warp& w, WarpOp op, unsigned src) {
  device_fail(std::string(op_name(op)) + " reads lane " + std::to_string(src) + ", which this warp does not have (" +
              std::to_string(w.lanes) + " threads; use whole warps)");
}

}  // namespace

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width) {
  Fiber* f = current_fiber("a warp operation");
  Block& b = g.block;
  Warp& w = b.warps[f->linear / 32];
  const unsigned lane = f->linear % 32;
  const bool wmma = op == WarpOp::wmma_load || op == WarpOp::wmma_store || op == WarpOp::wmma_mma;
  if ((mask != 0xffffffffu && mask != w.lane_mask) || width < 1 || width > 32 || (width & (width - 1)) != 0 ||
      (wmma && w.lanes != 32) || w.exited > 0 || w.at_block > 0 || (w.arrived > 0 && (w.op != op || w.width != width)))
    warp_op_fail(w, op, mask, width);
  if (w.arrived == 0) {
    w.op = op;
    w.width = width;
  }
  const unsigned buf = w.generation & 1;
  w.slot[buf][lane] = value;
  if (++w.arrived == w.lanes) {
    w.arrived = 0;
    w.generation++;
    const unsigned first = f->linear / 32 * 32;
    for (unsigned i = first; i < first + w.lanes; i++)
      if (g.fibers[i]->state == State::at_warp_op) g.fibers[i]->state = State::runnable;
  } else {
    park(f, State::at_warp_op);
  }

  const unsigned seg = lane & ~unsigned(width - 1), in_seg = lane & unsigned(width - 1);
  unsigned src = lane;
  switch (op) {
    case WarpOp::shfl_idx: src = seg + (unsigned(arg) & unsigned(width - 1)); break;
    case WarpOp::shfl_up:
      if (arg >= 0 && in_seg >= unsigned(arg)) src = lane - unsigned(arg);
      break;
    case WarpOp::shfl_down:
      if (arg >= 0 && in_seg + unsigned(arg) < unsigned(width)) src = lane + unsigned(arg);
      break;
    case WarpOp::shfl_xor: {
      unsigned x = lane ^ (unsigned(arg) & 31u);
      if (x < seg + unsigned(width)) src = x;  // later groups give the lane's own value back
      break;
    }
    case WarpOp::ballot: {
      uint64_t bits = 0;
      for (unsigned i = 0; i < w.lanes; i++)
        if (w.slot[buf][i]) bits |= uint64_t(1) << i;
      return bits;
    }
    default: return 0;
  }
  if (src >= w.lanes) missing_lane_fail(w, op, src);
  return w.slot[buf][src];
}

void run_launch(dim3 grid, dim3 block, size_t shared_bytes, const char* name, Body body, void* ctx) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  LA_CHECK(threads >= 1 && threads <= 1024 && block.z <= 64, "CUDA emulator: kernel ", name, ": block ",
           dim_str(block.x, block.y, block.z), " is invalid (1 to 1024 threads, z at most 64)");
  LA_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffu && grid.y <= 65535 && grid.z <= 65535,
           "CUDA emulator: kernel ", name, ": grid ", dim_str(grid.x, grid.y, grid.z),
           " is invalid (each dimension at least 1; y and z at most 65535)");
  LA_CHECK(shared_bytes <= kMaxShared, "CUDA emulator: kernel ", name, ": ", shared_bytes,
           " bytes of dynamic shared memory is more than a block may have (", kMaxShared, ")");
  LA_CHECK(!t_in_launch, "CUDA emulator: kernel ", name, " launched from inside a kernel");

  std::lock_guard<std::mutex> lock(g_launch_mutex);
  t_in_launch = true;
  struct Reset {
    ~Reset() {
      t_in_launch = false;
      g.current = nullptr;
      g_thread = nullptr;
      std::free(g.shared);
      g.shared = nullptr;
      g.shared_bytes = 0;
    }
  } reset;
  const unsigned n = unsigned(threads);
  ensure_fibers(n);
  g.name = name;
  g.body = body;
  g.ctx = ctx;
  g.block.n = n;
  g.block.warps.assign((n + 31) / 32, Warp{});
  g_grid_dim = grid;
  g_block_dim = block;
  if (shared_bytes) {
    g.shared = static_cast<unsigned char*>(std::aligned_alloc(128, (shared_bytes + kSharedGuard + 127) / 128 * 128));
    LA_CHECK(g.shared, "CUDA emulator: out of memory for ", shared_bytes, " bytes of shared memory");
    g.shared_bytes = shared_bytes;
  }

  const auto lo = reinterpret_cast<uintptr_t>(__start_la_emu_shared), hi = reinterpret_cast<uintptr_t>(__stop_la_emu_shared);
  const size_t static_shared_bytes = lo && hi > lo ? size_t(hi - lo) : 0;
  uint64_t linear = 0;
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++, linear++) {
        g_block_idx = uint3{x, y, z};
        if (static_shared_bytes) std::memset(__start_la_emu_shared, kSharedPoison, static_shared_bytes);
        if (g.shared) {
          std::memset(g.shared, kSharedPoison, shared_bytes);
          std::memset(g.shared + shared_bytes, kGuard, kSharedGuard);
        }
        run_block(unsigned(linear));
        if (g.shared)
          for (size_t i = 0; i < kSharedGuard; i++)
            LA_CHECK(g.shared[shared_bytes + i] == kGuard, "CUDA emulator: kernel ", name, ", block ",
                     dim_str(x, y, z), ": wrote past the end of its ", shared_bytes,
                     " bytes of dynamic shared memory");
      }
  check_device_buffers(name);
}

}  // namespace detail

void* dynamic_shared() { return detail::g.shared; }

}  // namespace la::emu
