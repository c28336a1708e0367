// SIGKILL while hybrid-model snapshots are being written behind: a forked child generates one
// prompt after another through the scheduler (so snapshots and blocks are written behind to their
// stores) and is killed at a random moment; the stores reopened here must give every prompt the
// cold output, resuming from whatever snapshots survived (a torn one is a miss, never a wrong
// state).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include "tests/cache/cache_test_util.h"

namespace kvstash::cache {
namespace {

using storage::testing::RealDiskTestRoot;
using storage::testing::TempDir;
using testutil::MakePrompt;
using testutil::Stack;
using testutil::StackSetup;

constexpr int kPromptTokens = 70;
constexpr int kGenerated = 4;

std::vector<int32_t> PromptFor(int i, int vocab) {
  return MakePrompt(kPromptTokens, vocab, 7000 + i);
}

// The child: prompts first.. one after another; writes each finished index to `fd`.
[[noreturn]] void ChildLoop(const std::string& path, const StackSetup& setup, int first, int fd) {
  auto model = engine::Model::Load(path);
  if (!model.ok()) ::_exit(2);
  Stack st(**model, path, setup);
  for (int i = first; i < first + 1000; ++i) {
    testutil::Generate(*st.runner, st.cache.get(), PromptFor(i, (*model)->config().n_vocab),
                       kGenerated);
    const int32_t done = i;
    if (::write(fd, &done, sizeof(done)) != sizeof(done)) ::_exit(3);
  }
  ::_exit(0);
}

TEST(HybridCrashTest, SigkillDuringSnapshotWriteBehindLeavesAConsistentStore) {
  const std::string path = testutil::SyntheticModel("tiny-qwen35", "q8_0");
  TempDir dir(RealDiskTestRoot(), "hybrid-crash");
  StackSetup setup;
  setup.store_dir = dir.Sub("store");
  setup.snapshot_store = true;
  std::mt19937 rng(1234);
  int next = 0;
  int resumed = 0;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      ChildLoop(path, setup, next, fds[1]);
    }
    ::close(fds[1]);
    // Let it finish 2-4 prompts, then kill it somewhere inside the next one (or its write-behind).
    const int want = 2 + static_cast<int>(rng() % 3);
    int last = next - 1;
    for (int k = 0; k < want; ++k) {
      int32_t done = -1;
      ASSERT_EQ(::read(fds[0], &done, sizeof(done)), static_cast<ssize_t>(sizeof(done)))
          << "the child died early";
      last = done;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 40));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ::close(fds[0]);
    ASSERT_TRUE(WIFSIGNALED(status));
    next = last + 2;  // the one in flight when killed may be half-written: skip past it too

    // Reopen: every prompt so far (the in-flight one included) gives the cold output.
    auto model = testutil::LoadOrDie(path);
    ASSERT_TRUE(model);
    StackSetup off;
    off.cache.snapshot_bytes = 0;
    Stack cold(*model, path, off);
    Stack warm(*model, path, setup);
    for (int i = 0; i < next; ++i) {
      const auto prompt = PromptFor(i, model->config().n_vocab);
      const auto ref = testutil::Generate(*cold.runner, cold.cache.get(), prompt, kGenerated);
      const auto got = testutil::Generate(*warm.runner, warm.cache.get(), prompt, kGenerated);
      EXPECT_EQ(got.tokens, ref.tokens) << "prompt " << i;
      if (round == 0) resumed += got.acquired.cached_tokens > 0;  // the child's snapshots
    }
    EXPECT_EQ(warm.cache->Stats().snapshot_corrupt, 0u);
  }
  EXPECT_GT(resumed, 0) << "no snapshot of the first child survived its kill";
}

}  // namespace
}  // namespace kvstash::cache
