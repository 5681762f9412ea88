// Thread-local built-ins and the fibers that give launch_blocks its barriers (cuda_emu.h).
// A fiber is entered once through swapcontext (to start it on its own stack) and from then on
// switched with _setjmp / _longjmp, which save no signal mask: swapcontext's sigprocmask system
// call on every barrier would make the emulation several times slower.
#undef _FORTIFY_SOURCE  // its longjmp check refuses jumps between stacks, which is all a fiber does
#include "cuda_emu.h"

#include <setjmp.h>
#include <ucontext.h>

#include <exception>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace fd {
namespace emu {
thread_local dim3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;

namespace {

std::mutex g_log_mutex;
std::vector<LaunchRecord> g_planned, g_launched;  // the last emulated op call's (begin_op)

constexpr size_t kFiberStack = 64 << 10;  // bytes: kernels keep a few words and counters on theirs

struct Fiber {
  ucontext_t start;  // where it begins, on its own stack
  jmp_buf resume;    // where it waits at a barrier
  std::vector<char> stack;
  bool started = false, done = false;
};

// This OS thread's block in flight: where a fiber returns to at a barrier or its end, and what it runs.
thread_local jmp_buf t_scheduler;
thread_local bool t_in_block = false;
thread_local Fiber* t_fiber = nullptr;
thread_local const std::function<void()>* t_body = nullptr;
thread_local std::exception_ptr t_error;

void fiber_main() {
  try {
    (*t_body)();
  } catch (...) {  // an exception cannot cross stacks: carried to the scheduler
    if (!t_error) t_error = std::current_exception();
  }
  t_fiber->done = true;
  _longjmp(t_scheduler, 1);  // never returns: the fiber's stack is simply left
}

}  // namespace

void begin_op(std::vector<LaunchRecord> planned) {
  std::lock_guard<std::mutex> lock(g_log_mutex);
  g_planned = std::move(planned);
  g_launched.clear();
}

void record_launch(LaunchRecord launched) {
  std::lock_guard<std::mutex> lock(g_log_mutex);
  g_launched.push_back(std::move(launched));
}

void syncthreads() {
  if (!t_in_block) throw std::logic_error("fastdissect internal error: __syncthreads in a kernel run by emu::launch");
  if (_setjmp(t_fiber->resume) == 0) _longjmp(t_scheduler, 1);
}

void run_block_fibers(dim3 block, const std::function<void()>& body) {
  const unsigned threads = block.x * block.y * block.z;
  thread_local std::vector<Fiber> fibers;  // stacks allocated once per OS thread
  if (fibers.size() < threads) fibers.resize(threads);
  t_body = &body;
  t_error = nullptr;
  t_in_block = true;
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = fibers[t];
    if (f.stack.empty()) f.stack.resize(kFiberStack);
    getcontext(&f.start);
    f.start.uc_stack.ss_sp = f.stack.data();
    f.start.uc_stack.ss_size = f.stack.size();
    f.start.uc_link = nullptr;  // fiber_main leaves by _longjmp, never by returning
    makecontext(&f.start, fiber_main, 0);
    f.started = f.done = false;
  }
  // Rounds: each unfinished thread runs to its next barrier or its end; after a round every thread
  // is at the same barrier (or done), so the next round passes it.
  for (bool pending = true; pending;) {
    pending = false;
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& f = fibers[t];
      if (f.done) continue;
      threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      t_fiber = &f;
      if (_setjmp(t_scheduler) == 0) {
        if (f.started) _longjmp(f.resume, 1);
        f.started = true;
        ucontext_t here;  // saved but never resumed: the fiber comes back through t_scheduler
        swapcontext(&here, &f.start);
      }
      pending |= !f.done;
    }
  }
  t_in_block = false;
  if (t_error) std::rethrow_exception(t_error);
}

}  // namespace emu

void emu_last_launches(std::vector<EmuLaunchRecord>* planned, std::vector<EmuLaunchRecord>* launched) {
  std::lock_guard<std::mutex> lock(emu::g_log_mutex);
  *planned = emu::g_planned;
  *launched = emu::g_launched;
}

}  // namespace fd
