// The in-memory recurrent-state snapshot tier: keyed by block hash, verified by parent and tokens
// (a mismatch is a miss, never a wrong state), LRU within its byte budget.
#include "cache/state_snapshots.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace kvstash::cache {
namespace {

using Key = StateSnapshots::Key;

Key K(uint64_t v) { return Key{v, v * 7 + 1}; }

TEST(StateSnapshotsTest, HitRequiresMatchingParentAndTokens) {
  StateSnapshots s(1 << 20);
  const std::vector<int32_t> toks = {1, 2, 3, 4};
  const std::vector<float> state = {0.5f, -1.0f, 2.0f};
  ASSERT_TRUE(s.Put(K(2), K(1), toks, state));
  const std::vector<float>* got = s.Find(K(2), K(1), toks);
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(*got, state);
  EXPECT_EQ(s.Find(K(2), K(9), toks), nullptr) << "other parent";
  EXPECT_EQ(s.Find(K(2), K(1), std::vector<int32_t>{1, 2, 3, 5}), nullptr) << "other tokens";
  EXPECT_EQ(s.Find(K(2), K(1), std::vector<int32_t>{1, 2, 3}), nullptr) << "fewer tokens";
  EXPECT_EQ(s.Find(K(3), K(1), toks), nullptr) << "absent";
  EXPECT_EQ(s.stats().hits, 1u);
  EXPECT_EQ(s.stats().misses, 4u);
}

TEST(StateSnapshotsTest, BudgetEvictsLeastRecentlyUsedAndRejectsOversize) {
  const std::vector<float> state(256, 1.0f);  // 1 KiB
  StateSnapshots s(3 * 1024);
  const std::vector<int32_t> toks = {7};
  for (uint64_t i = 1; i <= 3; ++i) ASSERT_TRUE(s.Put(K(i), K(0), toks, state));
  ASSERT_NE(s.Find(K(1), K(0), toks), nullptr);  // 1 is now the most recent
  ASSERT_TRUE(s.Put(K(4), K(0), toks, state));   // evicts 2
  EXPECT_EQ(s.Find(K(2), K(0), toks), nullptr);
  EXPECT_NE(s.Find(K(1), K(0), toks), nullptr);
  EXPECT_EQ(s.stats().entries, 3u);
  EXPECT_EQ(s.stats().bytes, 3u * 1024);
  EXPECT_EQ(s.stats().evictions, 1u);
  EXPECT_FALSE(s.Put(K(5), K(0), toks, std::vector<float>(1024, 0.0f)));
  EXPECT_EQ(s.stats().rejected, 1u);
  EXPECT_EQ(s.stats().bytes, 3u * 1024);
  // Replacing a key does not double-count it.
  ASSERT_TRUE(s.Put(K(4), K(0), toks, std::vector<float>(128, 2.0f)));
  EXPECT_EQ(s.stats().bytes, 2u * 1024 + 512);
  s.Clear();
  EXPECT_EQ(s.stats().bytes, 0u);
  EXPECT_EQ(s.Find(K(4), K(0), toks), nullptr);
}

TEST(StateSnapshotsTest, UnreachableSnapshotIsEvictedBeforeAnOlderReachableOne) {
  const std::vector<float> state(256, 1.0f);  // 1 KiB
  StateSnapshots s(3 * 1024);
  std::vector<Key> gone;  // blocks no tier holds any more
  s.SetReachable([&](const Key& key, const Key&) {
    return std::find(gone.begin(), gone.end(), key) == gone.end();
  });
  const std::vector<int32_t> toks = {7};
  for (uint64_t i = 1; i <= 3; ++i) ASSERT_TRUE(s.Put(K(i), K(0), toks, state));
  // 3 is the most recent, but its block is gone: it goes before 1, the least recently used.
  gone.push_back(K(3));
  ASSERT_TRUE(s.Put(K(4), K(0), toks, state));
  EXPECT_EQ(s.Find(K(3), K(0), toks), nullptr);
  EXPECT_NE(s.Find(K(1), K(0), toks), nullptr);
  EXPECT_NE(s.Find(K(2), K(0), toks), nullptr);
  EXPECT_EQ(s.stats().evictions, 1u);
  EXPECT_EQ(s.stats().unreachable_evictions, 1u);
  // With nothing unreachable, plain LRU: 4 (1 and 2 were just found).
  ASSERT_TRUE(s.Put(K(5), K(0), toks, state));
  EXPECT_EQ(s.Find(K(4), K(0), toks), nullptr);
  EXPECT_EQ(s.stats().evictions, 2u);
  EXPECT_EQ(s.stats().unreachable_evictions, 1u);
}

TEST(StateSnapshotsTest, LastWithSnapshotFindsTheLongestResumablePrefix) {
  StateSnapshots s(1 << 20);
  const std::vector<Key> chain = {K(10), K(11), K(12), K(13), K(14)};
  EXPECT_EQ(s.LastWithSnapshot(chain), -1);
  ASSERT_TRUE(s.Put(chain[1], chain[0], std::vector<int32_t>{1}, std::vector<float>{1}));
  ASSERT_TRUE(s.Put(chain[3], chain[2], std::vector<int32_t>{3}, std::vector<float>{3}));
  EXPECT_EQ(s.LastWithSnapshot(chain), 3);
  EXPECT_EQ(s.LastWithSnapshot(std::span<const Key>(chain).first(3)), 1);
}

// A full tier recycles the evicted snapshot's buffer for the next Put (no fresh pages to fault
// in), and the recycled buffer holds exactly the new state.
TEST(StateSnapshotsTest, PutIntoAFullTierReusesTheEvictedBufferWithTheNewContents) {
  StateSnapshots s(2 * 1024 * sizeof(float));
  const std::vector<int32_t> toks = {1, 2};
  ASSERT_TRUE(s.Put(K(1), K(0), toks, std::vector<float>(1024, 1.0f)));
  ASSERT_TRUE(s.Put(K(2), K(0), toks, std::vector<float>(1024, 2.0f)));
  const float* old1 = s.Find(K(1), K(0), toks)->data();  // then 2: 1 is the LRU one
  const float* old2 = s.Find(K(2), K(0), toks)->data();
  ASSERT_TRUE(s.Put(K(3), K(0), toks, std::vector<float>(1024, 3.0f)));  // evicts 1
  const std::vector<float>* got = s.Find(K(3), K(0), toks);
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(got->data(), old1);
  EXPECT_EQ(*got, std::vector<float>(1024, 3.0f));
  EXPECT_EQ(s.Find(K(1), K(0), toks), nullptr);
  EXPECT_EQ(s.Find(K(2), K(0), toks)->data(), old2);
  EXPECT_EQ(s.stats().bytes, 2u * 1024 * sizeof(float));
}

}  // namespace
}  // namespace kvstash::cache
