// Hybrid models (qwen35, qwen35moe) resume from recurrent-state snapshots (docs/cache.md "Hybrid
// models"): a prompt restarts at the end of the last cached block that has a snapshot, with the
// KV blocks up to there loaded and the state restored, and everything it computes after that is
// bit-identical to the cold run: logits of every position, the recurrent state and the KV bytes.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "tests/cache/cache_test_util.h"

namespace kvstash::cache {
namespace {

using engine::LogitsMode;
using engine::Sequence;
using storage::testing::RealDiskTestRoot;
using storage::testing::TempDir;
using testutil::MakePrompt;
using testutil::Stack;
using testutil::StackSetup;

struct Cold {
  std::vector<float> logits;  // [n][n_vocab]
  std::vector<float> state;
};

Cold RunCold(const engine::Model& model, const std::string& path, const std::vector<int32_t>& p) {
  StackSetup s;
  s.cache.snapshot_bytes = 0;
  Stack st(model, path, s);
  Sequence seq;
  Cold c;
  Status ok = st.runner->Prefill(seq, p, LogitsMode::kAll, &c.logits);
  EXPECT_TRUE(ok.ok()) << ok.ToString();
  c.state = seq.recurrent;
  st.runner->Release(seq);
  return c;
}

class HybridResumeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HybridResumeTest, ResumedFromASnapshotEqualsColdBitForBit) {
  const std::string path = testutil::SyntheticModel(GetParam(), "q8_0");
  auto model = testutil::LoadOrDie(path);
  ASSERT_TRUE(model && model->config().is_hybrid());
  const int V = model->config().n_vocab;
  const std::vector<int32_t> prompt = MakePrompt(100, V, 31);
  const Cold cold = RunCold(*model, path, prompt);

  Stack st(*model, path, StackSetup{});
  ASSERT_TRUE(st.cache->resumes());
  {
    // The first 64 positions, with snapshots at 32 and 64.
    Sequence seq;
    std::vector<float> unused;
    for (int end : {32, 64}) {
      const std::span<const int32_t> chunk(prompt.data() + seq.n_past(), end - seq.n_past());
      ASSERT_TRUE(st.runner->Prefill(seq, chunk, LogitsMode::kNone, &unused).ok());
      st.cache->Publish(seq);
      ASSERT_TRUE(st.cache->SaveSnapshot(seq.tokens, seq.recurrent));
    }
    st.cache->Release(seq);
  }
  EXPECT_EQ(st.cache->Stats().snapshots, 2u);
  // Resume at 64: the state and the KV of 4 blocks come from the cache.
  Sequence seq;
  auto got = st.cache->Acquire(seq, prompt);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->cached_tokens, 64);
  EXPECT_TRUE(got->from_snapshot);
  std::vector<float> logits;
  const std::span<const int32_t> rest(prompt.data() + 64, prompt.size() - 64);
  ASSERT_TRUE(st.runner->Prefill(seq, rest, LogitsMode::kAll, &logits).ok());
  ASSERT_EQ(logits.size(), rest.size() * V);
  EXPECT_EQ(0,
            std::memcmp(logits.data(), cold.logits.data() + 64 * V, logits.size() * sizeof(float)))
      << "logits after a resume differ from the cold run";
  ASSERT_EQ(seq.recurrent.size(), cold.state.size());
  EXPECT_EQ(
      0, std::memcmp(seq.recurrent.data(), cold.state.data(), cold.state.size() * sizeof(float)));
  st.cache->Release(seq);
  EXPECT_EQ(st.cache->Stats().snapshot_hits, 1u);

  // A prompt that differs inside block 3 (positions 48..63) resumes at the snapshot at 32 (the
  // blocks up to 48 are cached, but no state is known there).
  std::vector<int32_t> other = prompt;
  other[50] = other[50] == 5 ? 6 : 5;
  got = st.cache->Acquire(seq, other);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->cached_tokens, 32);
  st.cache->Release(seq);
  // A prompt shorter than 65 positions cannot use the snapshot at 64 (its last token is
  // computed for logits): it resumes at 32.
  got = st.cache->Acquire(seq, std::span<const int32_t>(prompt).first(64));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->cached_tokens, 32);
  st.cache->Release(seq);
}

TEST_P(HybridResumeTest, NoSnapshotMeansNoResumeEvenWithEveryBlockCached) {
  const std::string path = testutil::SyntheticModel(GetParam(), "q8_0");
  auto model = testutil::LoadOrDie(path);
  ASSERT_TRUE(model);
  const std::vector<int32_t> prompt = MakePrompt(80, model->config().n_vocab, 32);
  Stack st(*model, path, StackSetup{});
  Sequence seq;
  std::vector<float> unused;
  ASSERT_TRUE(st.runner->Prefill(seq, prompt, LogitsMode::kNone, &unused).ok());
  st.cache->Publish(seq);
  st.cache->Release(seq);
  auto got = st.cache->Acquire(seq, prompt);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->cached_tokens, 0);
  EXPECT_FALSE(got->from_snapshot);
  EXPECT_TRUE(seq.recurrent.empty());
  // A snapshot of the wrong size is refused.
  std::vector<float> wrong(7, 0.0f);
  EXPECT_FALSE(st.cache->SaveSnapshot(std::span<const int32_t>(prompt).first(16), wrong));
  // Not on a block boundary: refused.
  ASSERT_TRUE(
      st.runner
          ->Prefill(seq, std::span<const int32_t>(prompt).first(20), LogitsMode::kNone, &unused)
          .ok());
  EXPECT_FALSE(st.cache->SaveSnapshot(seq.tokens, seq.recurrent));
  st.cache->Release(seq);
}

// Through the scheduler (the path of kvstashd and `kvstash run`): the policy takes the snapshots,
// and repeated prompts give the cold greedy ids.
TEST_P(HybridResumeTest, RepeatedPromptsResumeAndGiveTheColdGreedyIds) {
  const std::string path = testutil::SyntheticModel(GetParam(), "q8_0");
  auto model = testutil::LoadOrDie(path);
  ASSERT_TRUE(model);
  const int V = model->config().n_vocab;
  StackSetup off;
  off.cache.snapshot_bytes = 0;
  Stack cold(*model, path, off);
  EXPECT_FALSE(cold.cache->resumes());
  Stack warm(*model, path, StackSetup{});
  for (int n : {40, 64, 77}) {
    SCOPED_TRACE("prompt of " + std::to_string(n));
    const std::vector<int32_t> prompt = MakePrompt(n, V, 40 + n);
    const auto ref = testutil::Generate(*cold.runner, cold.cache.get(), prompt, 12);
    const auto first = testutil::Generate(*warm.runner, warm.cache.get(), prompt, 12);
    const auto second = testutil::Generate(*warm.runner, warm.cache.get(), prompt, 12);
    EXPECT_EQ(ref.acquired.cached_tokens, 0);
    EXPECT_EQ(first.tokens, ref.tokens);
    EXPECT_EQ(second.tokens, ref.tokens);
    EXPECT_EQ(second.acquired.cached_tokens, (n - 1) / 16 * 16);
  }
}

// Writes prompt[0..64) with snapshots at 32 and 64 through a stack on `dir` and closes it (the
// write-behind drains); returns the state at 64.
std::vector<float> WarmAndClose(const engine::Model& model, const std::string& path,
                                const StackSetup& setup, const std::vector<int32_t>& prompt) {
  Stack st(model, path, setup);
  Sequence seq;
  std::vector<float> unused;
  for (int end : {32, 64}) {
    const std::span<const int32_t> chunk(prompt.data() + seq.n_past(), end - seq.n_past());
    EXPECT_TRUE(st.runner->Prefill(seq, chunk, LogitsMode::kNone, &unused).ok());
    st.cache->Publish(seq);
    EXPECT_TRUE(st.cache->SaveSnapshot(seq.tokens, seq.recurrent));
  }
  std::vector<float> state = seq.recurrent;
  st.cache->Release(seq);
  EXPECT_TRUE(st.cache->Flush().ok());
  EXPECT_EQ(st.cache->Stats().snapshot_written, 2u);
  return state;
}

// Resumes `prompt` on a fresh stack over the same directory and checks it against the cold run.
void ResumeAndCompare(const engine::Model& model, const std::string& path, const StackSetup& setup,
                      const std::vector<int32_t>& prompt, const Cold& cold, int want_cached,
                      uint64_t want_corrupt) {
  const int V = model.config().n_vocab;
  Stack st(model, path, setup);
  EXPECT_EQ(st.cache->Stats().snapshots, 0u);  // nothing in memory after the "restart"
  Sequence seq;
  auto got = st.cache->Acquire(seq, prompt);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->cached_tokens, want_cached);
  EXPECT_EQ(got->disk_tokens, want_cached);
  EXPECT_TRUE(got->from_snapshot);
  const CacheStats cs = st.cache->Stats();
  EXPECT_EQ(cs.snapshot_disk_hits, 1u);
  EXPECT_EQ(cs.snapshot_disk_bytes_read, st.runner->RecurrentStateElems() * sizeof(float));
  EXPECT_EQ(cs.snapshot_corrupt, want_corrupt);
  std::vector<float> logits;
  const std::span<const int32_t> rest(prompt.data() + want_cached, prompt.size() - want_cached);
  ASSERT_TRUE(st.runner->Prefill(seq, rest, LogitsMode::kAll, &logits).ok());
  ASSERT_EQ(logits.size(), rest.size() * V);
  EXPECT_EQ(0, std::memcmp(logits.data(), cold.logits.data() + want_cached * V,
                           logits.size() * sizeof(float)))
      << "logits after a disk resume differ from the cold run";
  EXPECT_EQ(
      0, std::memcmp(seq.recurrent.data(), cold.state.data(), cold.state.size() * sizeof(float)));
  st.cache->Release(seq);
}

TEST_P(HybridResumeTest, ResumedFromADiskSnapshotAfterARestartEqualsCold) {
  const std::string path = testutil::SyntheticModel(GetParam(), "q8_0");
  auto model = testutil::LoadOrDie(path);
  ASSERT_TRUE(model);
  const std::vector<int32_t> prompt = MakePrompt(100, model->config().n_vocab, 33);
  const Cold cold = RunCold(*model, path, prompt);
  TempDir dir(RealDiskTestRoot(), "hybrid-disk");
  StackSetup setup;
  setup.store_dir = dir.Sub("store");
  setup.snapshot_store = true;
  WarmAndClose(*model, path, setup, prompt);
  ResumeAndCompare(*model, path, setup, prompt, cold, 64, 0);
}

// A flipped byte in a snapshot's payload on disk fails its checksum: that snapshot is a miss,
// the prompt resumes at the previous one (32) and the output is still the cold one.
TEST_P(HybridResumeTest, CorruptedDiskSnapshotIsDetectedAndRecomputed) {
  const std::string path = testutil::SyntheticModel(GetParam(), "q8_0");
  auto model = testutil::LoadOrDie(path);
  ASSERT_TRUE(model);
  const std::vector<int32_t> prompt = MakePrompt(100, model->config().n_vocab, 34);
  const Cold cold = RunCold(*model, path, prompt);
  TempDir dir(RealDiskTestRoot(), "hybrid-corrupt");
  StackSetup setup;
  setup.store_dir = dir.Sub("store");
  setup.snapshot_store = true;
  const std::vector<float> state64 = WarmAndClose(*model, path, setup, prompt);
  // Find the state at 64 in the snapshot store's segment files and flip one byte of it.
  const auto* needle = reinterpret_cast<const char*>(state64.data());
  const size_t needle_bytes = state64.size() * sizeof(float);
  bool flipped = false;
  for (const auto& f :
       std::filesystem::recursive_directory_iterator(setup.store_dir + "/snapshots")) {
    if (!f.is_regular_file() || f.path().string().find("seg") == std::string::npos) continue;
    std::fstream io(f.path(), std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(io)), std::istreambuf_iterator<char>());
    const size_t at = bytes.find(std::string_view(needle, needle_bytes));
    if (at == std::string::npos) continue;
    io.clear();
    io.seekp(static_cast<std::streamoff>(at + needle_bytes / 2));
    io.put(static_cast<char>(bytes[at + needle_bytes / 2] ^ 0x40));
    flipped = true;
  }
  ASSERT_TRUE(flipped) << "the snapshot's payload was not found on disk";
  ResumeAndCompare(*model, path, setup, prompt, cold, 32, 1);
}

// The chunked DeltaNet prefill rounds differently: its blocks and snapshots live in a namespace
// of their own; the default (token by token) keeps the namespace it always had.
TEST(HybridNamespaceTest, ChunkedDeltaNetPrefillHasItsOwnNamespace) {
  const std::string path = testutil::SyntheticModel("tiny-qwen35", "q8_0");
  auto model = testutil::LoadOrDie(path);
  ASSERT_TRUE(model);
  engine::KvLayout layout{engine::KvDtype::kF16, model->config().n_kv_layers,
                          model->config().n_head_kv, model->config().head_dim, 16};
  NamespaceParams p = NamespaceFor(*model, Hash128{1, 2}, layout, "");
  const std::string plain = NamespaceString(p);
  EXPECT_EQ(plain.find("deltanet_chunk"), std::string::npos);
  const Hash128 h0 = NamespaceHash(p);
  p.deltanet_chunk_tokens = 64;
  EXPECT_NE(NamespaceString(p).find(";deltanet_chunk=64"), std::string::npos);
  EXPECT_NE(NamespaceHash(p), h0);
}

INSTANTIATE_TEST_SUITE_P(Models, HybridResumeTest,
                         ::testing::Values("tiny-qwen35", "tiny-qwen35moe"));

}  // namespace
}  // namespace kvstash::cache
