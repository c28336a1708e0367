#include "engine/cpu/thread_pool.h"

#include <immintrin.h>

namespace kvstash::engine::cpu {
namespace {
constexpr int kSpinIterations = 20000;
// The caller of ParallelFor waits for the workers' last tasks by spinning this many times, then
// yields the core between checks: when the machine has more runnable threads than cores (the
// daemon's HTTP and write-behind threads, clients, other programs), a worker that was preempted
// needs a core to finish its task, and an unbounded spin would hold the one it could use.
constexpr int kWaitSpins = 2000;
inline void CpuRelax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::thread::hardware_concurrency());
  if (n_threads <= 0) n_threads = 1;
  n_threads_ = n_threads;
  shares_ = std::vector<Cursor>(n_threads_);
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::RunTasks(int thread_index) {
  if (contiguous_) {
    // Own share first, then the others' in turn (fetch_add past the end is harmless: every
    // taker compares with the share's end).
    for (int k = 0; k < n_threads_; ++k) {
      Cursor& c = shares_[(thread_index + k) % n_threads_];
      for (;;) {
        const int64_t i = c.next.fetch_add(1, std::memory_order_relaxed);
        if (i >= c.end) break;
        (*fn_)(i, thread_index);
      }
    }
    return;
  }
  for (;;) {
    int64_t i = next_task_.fetch_add(1, std::memory_order_relaxed);
    if (i >= n_tasks_) break;
    (*fn_)(i, thread_index);
  }
}

void ThreadPool::ParallelFor(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  Run(n_tasks, fn, false);
}

void ThreadPool::ParallelForContiguous(int64_t n_tasks,
                                       const std::function<void(int64_t, int)>& fn) {
  Run(n_tasks, fn, true);
}

void ThreadPool::Run(int64_t n_tasks, const std::function<void(int64_t, int)>& fn,
                     bool contiguous) {
  if (n_tasks <= 0) return;
  if (n_threads_ == 1 || n_tasks == 1) {
    for (int64_t i = 0; i < n_tasks; ++i) fn(i, 0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    n_tasks_ = n_tasks;
    next_task_.store(0, std::memory_order_relaxed);
    contiguous_ = contiguous;
    if (contiguous) {
      for (int i = 0; i < n_threads_; ++i) {
        shares_[i].next.store(n_tasks * i / n_threads_, std::memory_order_relaxed);
        shares_[i].end = n_tasks * (i + 1) / n_threads_;
      }
    }
    active_.store(n_threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_all();
  RunTasks(0);
  for (int spins = 0; active_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < kWaitSpins) {
      CpuRelax();
    } else {
      std::this_thread::yield();
    }
  }
}

void ThreadPool::WorkerLoop(int thread_index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin first: consecutive kernels arrive microseconds apart during decode.
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen && spins < kSpinIterations) {
      CpuRelax();
      ++spins;
    }
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return generation_.load() != seen; });
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    RunTasks(thread_index);
    active_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace kvstash::engine::cpu
