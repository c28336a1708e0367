// ThreadPool (engine/cpu/thread_pool.h): ParallelFor and ParallelForContiguous run every task
// exactly once whatever the task and thread counts, one after the other on the same pool, and a
// thread that is held up has its share finished by the others (the contiguous mode's stealing).
#include "engine/cpu/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace kvstash::engine::cpu {
namespace {

TEST(ThreadPoolTest, EveryTaskRunsExactlyOnceInBothModes) {
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 2, 3, 5, 17, 1000}) {
      for (int mode = 0; mode < 4; ++mode) {  // alternate the modes on one pool
        std::vector<std::atomic<int>> runs(n);
        std::atomic<int> bad_thread{0};
        const auto fn = [&](int64_t i, int t) {
          runs[i].fetch_add(1);
          if (t < 0 || t >= threads) bad_thread.fetch_add(1);
        };
        if (mode % 2 == 0) {
          pool.ParallelForContiguous(n, fn);
        } else {
          pool.ParallelFor(n, fn);
        }
        for (int64_t i = 0; i < n; ++i) {
          ASSERT_EQ(runs[i].load(), 1)
              << "threads " << threads << " n " << n << " mode " << mode << " task " << i;
        }
        EXPECT_EQ(bad_thread.load(), 0);
      }
    }
  }
}

// Each thread takes its own share's tasks in increasing order: per thread, the tasks it ran
// from share s are increasing (what keeps a weight-row stream in order).
TEST(ThreadPoolTest, ContiguousSharesAreWalkedInOrder) {
  constexpr int kThreads = 3;
  constexpr int64_t kTasks = 300;
  ThreadPool pool(kThreads);
  std::vector<std::vector<int64_t>> seen(kThreads);
  pool.ParallelForContiguous(kTasks, [&](int64_t i, int t) {
    seen[t].push_back(i);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  });
  int64_t total = 0;
  for (int t = 0; t < kThreads; ++t) {
    total += static_cast<int64_t>(seen[t].size());
    std::vector<int64_t> last(kThreads, -1);
    for (int64_t i : seen[t]) {
      const int share = static_cast<int>(i * kThreads / kTasks);
      // Share boundaries are n * s / kThreads; 300 / 3 divides evenly.
      EXPECT_GT(i, last[share]) << "thread " << t;
      last[share] = i;
    }
  }
  EXPECT_EQ(total, kTasks);
}

// A thread held up in its first task: the other threads finish the rest of its share.
TEST(ThreadPoolTest, ContiguousModeStealsFromAThreadThatFellBehind) {
  ThreadPool pool(2);
  constexpr int64_t kTasks = 40;
  std::vector<int> by(kTasks, -1);
  pool.ParallelForContiguous(kTasks, [&](int64_t i, int t) {
    by[i] = t;
    if (t == 0 && i == 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  });
  // Thread 0 (the caller) owns tasks 0-19 and sleeps in task 0; the worker finishes its own
  // share and then most of thread 0's.
  int stolen = 0;
  for (int64_t i = 1; i < kTasks / 2; ++i) stolen += by[i] == 1;
  EXPECT_GT(stolen, 10);
  for (int64_t i = 0; i < kTasks; ++i) EXPECT_NE(by[i], -1);
}

}  // namespace
}  // namespace kvstash::engine::cpu
