// A persistent pool of worker threads for data-parallel kernels. ParallelFor(n, fn) runs
// fn(i) for i in [0, n) across the workers and the calling thread, and returns when all are done.
// Workers spin briefly between jobs (decode issues thousands of small jobs per second), then
// sleep. One job at a time: ParallelFor must be called from one thread (the engine thread).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvstash::engine::cpu {

class ThreadPool {
 public:
  // n_threads includes the calling thread; 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // fn(task_index, thread_index). Tasks are handed out dynamically.
  void ParallelFor(int64_t n_tasks, const std::function<void(int64_t, int)>& fn);
  // As ParallelFor, but thread i first runs the tasks of its own contiguous share
  // [i * n / size(), (i + 1) * n / size()) in order, then helps with what is left of the
  // others' shares. For tasks that walk one memory stream in order (the rows of a weight
  // matrix): each thread's prefetches land in the rows it reads next, not in rows another thread
  // reads, while a thread that fell behind (preempted) still gets help.
  void ParallelForContiguous(int64_t n_tasks, const std::function<void(int64_t, int)>& fn);

 private:
  void WorkerLoop(int thread_index);
  void RunTasks(int thread_index);
  void Run(int64_t n_tasks, const std::function<void(int64_t, int)>& fn, bool contiguous);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_task_{0};
  // Contiguous mode: share i is tasks [its first next, end); next is its cursor.
  struct alignas(64) Cursor {
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };
  std::vector<Cursor> shares_;
  bool contiguous_ = false;
  std::atomic<int> active_{0};
  std::atomic<bool> stop_{false};
  int64_t n_tasks_ = 0;
  const std::function<void(int64_t, int)>* fn_ = nullptr;
};

}  // namespace kvstash::engine::cpu
