// Snapshots that no cached chain reaches any more are evicted first (docs/cache.md "Hybrid
// models"): a resume needs the KV blocks up to a snapshot, so once the block it ends (or the one
// before) is gone from every KV tier the snapshot is dead weight, and it goes before any
// reachable one, however recently it was used: in the memory tier, and on disk before the
// store's segment eviction would drop a reachable one.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cache/hash.h"
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

class SnapshotEvictionTest : public ::testing::TestWithParam<std::string> {};

// Prefills `prompt` (a block multiple), publishes it and snapshots its end. The sequence is left
// holding its pages (the caller releases it).
void PrefillAndSnapshot(Stack& st, Sequence& seq, const std::vector<int32_t>& prompt) {
  std::vector<float> unused;
  ASSERT_TRUE(st.runner->Prefill(seq, prompt, LogitsMode::kNone, &unused).ok());
  st.cache->Publish(seq);
  ASSERT_TRUE(st.cache->SaveSnapshot(seq.tokens, seq.recurrent));
}

// The chained hash of the last full block of `tokens` in the cache's own namespace.
Hash128 LastBlockKey(const Stack& st, const std::vector<int32_t>& tokens, int bt = 16) {
  Hash128 h = st.cache->namespace_hash();
  for (size_t i = 0; i + bt <= tokens.size(); i += bt) {
    h = ChainHash(h, std::span<const int32_t>(tokens).subspan(i, bt));
  }
  return h;
}

size_t StateElems(const engine::Model& model, const std::string& path) {
  StackSetup probe;
  probe.cache.snapshot_bytes = 0;
  Stack st(model, path, probe);
  return st.runner->RecurrentStateElems();
}

TEST_P(SnapshotEvictionTest, UnreachableSnapshotGoesBeforeAnOlderReachableOneInMemory) {
  const std::string path = testutil::SyntheticModel(GetParam(), "q8_0");
  auto model = testutil::LoadOrDie(path);
  ASSERT_TRUE(model && model->config().is_hybrid());
  const int V = model->config().n_vocab;
  StackSetup setup;  // no host tier, no disk: a block evicted from the pool is gone
  setup.cache.snapshot_bytes = 2 * StateElems(*model, path) * sizeof(float);
  Stack st(*model, path, setup);
  const std::vector<int32_t> a = MakePrompt(32, V, 51), b = MakePrompt(32, V, 52),
                             c = MakePrompt(32, V, 53);
  Sequence sa, sb, sc;
  PrefillAndSnapshot(st, sa, a);  // the older snapshot
  PrefillAndSnapshot(st, sb, b);
  st.cache->Release(sb);
  // b's blocks leave every tier; a's are pinned by its live sequence and stay.
  st.cache->EvictDevice();
  st.cache->Release(sa);
  EXPECT_EQ(st.cache->Stats().snapshots, 2u);
  PrefillAndSnapshot(st, sc, c);  // no room: b (newer, unreachable) goes, not a (older)
  st.cache->Release(sc);
  const CacheStats cs = st.cache->Stats();
  EXPECT_EQ(cs.snapshots, 2u);
  EXPECT_EQ(cs.snapshot_evictions, 1u);
  EXPECT_EQ(cs.snapshot_unreachable_evictions, 1u);
  // a still resumes from its snapshot.
  std::vector<int32_t> a_longer = a;
  a_longer.push_back(7);
  Sequence s;
  auto got = st.cache->Acquire(s, a_longer);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->cached_tokens, 32);
  EXPECT_TRUE(got->from_snapshot);
  st.cache->Release(s);
  // With every snapshot reachable, eviction is plain LRU again: the next one evicts a or c.
  Sequence sd;
  PrefillAndSnapshot(st, sd, MakePrompt(32, V, 54));
  st.cache->Release(sd);
  EXPECT_EQ(st.cache->Stats().snapshot_evictions, 2u);
  EXPECT_EQ(st.cache->Stats().snapshot_unreachable_evictions, 1u);
}

// Disk tier: one snapshot per segment, a budget of four segments. When the next roll-over would
// evict, unreachable snapshots are erased first (their emptied segments freed), so the oldest,
// reachable one survives the writes that would otherwise have evicted its segment.
TEST_P(SnapshotEvictionTest, UnreachableDiskSnapshotIsErasedBeforeTheStoreEvictsAnOlderOne) {
  const std::string path = testutil::SyntheticModel(GetParam(), "q8_0");
  auto model = testutil::LoadOrDie(path);
  ASSERT_TRUE(model && model->config().is_hybrid());
  const int V = model->config().n_vocab;
  const uint64_t state_bytes = StateElems(*model, path) * sizeof(float);
  TempDir dir(RealDiskTestRoot(), "snapshot-eviction");
  StackSetup setup;
  setup.store_dir = dir.Sub("store");
  setup.snapshot_store = true;
  // A segment holds one snapshot (not two), at least 64 KiB.
  setup.snapshot_segment_bytes =
      std::max<uint64_t>(64 << 10, (state_bytes + 8192 + 4095) & ~uint64_t{4095});
  ASSERT_LT(setup.snapshot_segment_bytes, 2 * state_bytes);
  setup.snapshot_store_capacity = 4 * setup.snapshot_segment_bytes;
  setup.snapshot_prepare_segments = false;
  Stack st(*model, path, setup);
  std::vector<std::vector<int32_t>> prompts;
  for (uint32_t i = 0; i < 5; ++i) prompts.push_back(MakePrompt(32, V, 60 + i));
  auto save = [&](int i) {
    Sequence seq;
    PrefillAndSnapshot(st, seq, prompts[i]);
    st.cache->Release(seq);
    ASSERT_TRUE(st.cache->Flush().ok());
  };
  save(0);  // the oldest snapshot, reachable throughout
  save(1);
  // Prompt 1's last block leaves every KV tier: its snapshot is unreachable.
  const Hash128 b_block = LastBlockKey(st, prompts[1]);
  ASSERT_TRUE(st.store->Contains(b_block));
  st.cache->EvictDevice();
  ASSERT_TRUE(st.store->Erase(b_block).ok());
  for (int i = 2; i < 5; ++i) save(i);
  const CacheStats cs = st.cache->Stats();
  EXPECT_GE(cs.snapshot_disk_unreachable_erased, 1u);
  EXPECT_FALSE(st.snapshot_store->Contains(b_block));
  EXPECT_TRUE(st.snapshot_store->Contains(LastBlockKey(st, prompts[0])))
      << "the store evicted the oldest reachable snapshot although an unreachable one was there";
  for (int i = 2; i < 5; ++i)
    EXPECT_TRUE(st.snapshot_store->Contains(LastBlockKey(st, prompts[i])));
}

INSTANTIATE_TEST_SUITE_P(Models, SnapshotEvictionTest,
                         ::testing::Values("tiny-qwen35", "tiny-qwen35moe"));

}  // namespace
}  // namespace kvstash::cache
