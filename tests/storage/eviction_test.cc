// The byte budget: eviction frees whole segments, least recently used first (reads count as use),
// removes their index entries, and the result survives a reopen.
#include <gtest/gtest.h>

#include <filesystem>

#include "storage/aligned_buffer.h"
#include "storage/block_store.h"
#include "storage/testing/test_blocks.h"

namespace kvstash::storage {
namespace {

using storage::testing::KeyFor;
using storage::testing::MakeHeader;
using storage::testing::MakePayload;
using storage::testing::PayloadMatches;
using storage::testing::TempDir;

// 7 records of 128 KiB (4 KiB header + 124 KiB payload) fill a 1 MiB segment.
constexpr size_t kPayload = 124 << 10;
constexpr uint64_t kPerSegment = 7;

class EvictionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempDir>(storage::testing::RealDiskTestRoot(), "evict");
    ASSERT_TRUE(dir_->ok());
  }
  Options MakeOptions() const {
    Options o;
    o.path = dir_->Sub("cache");
    o.segment_bytes = 1 << 20;
    o.capacity_bytes = 4 << 20;
    o.logger = NullLogger();
    return o;
  }
  std::unique_ptr<BlockStore> Open() {
    auto r = BlockStore::Open(MakeOptions());
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : nullptr;
  }
  void PutRange(BlockStore& s, uint64_t from, uint64_t to) {
    for (uint64_t i = from; i < to; ++i) {
      auto p = MakePayload(KeyFor(i), kPayload);
      ASSERT_TRUE(s.Put(KeyFor(i), MakeHeader(KeyFor(i)), p).get().ok()) << i;
    }
  }
  bool Verifies(BlockStore& s, uint64_t i) {
    AlignedBuffer buf(kPayload);
    ReadResult r = s.Get(KeyFor(i), buf.span());
    return r.hit() && PayloadMatches(KeyFor(i), {buf.data(), kPayload});
  }
  size_t SegmentFiles() const {
    size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir_->Sub("cache/segments"))) {
      n += e.path().extension() == ".seg";
    }
    return n;
  }
  std::unique_ptr<TempDir> dir_;
};

TEST_F(EvictionTest, BudgetIsKeptByEvictingWholeOldestSegments) {
  auto store = Open();
  ASSERT_TRUE(store);
  PutRange(*store, 0, 100);
  StoreStats st = store->Stats();
  EXPECT_LE(st.disk_bytes, st.capacity_bytes);
  EXPECT_GT(st.evicted_segments, 0u);
  EXPECT_EQ(st.evicted_blocks, st.evicted_segments * kPerSegment);
  EXPECT_EQ(st.blocks, 100 - st.evicted_blocks);
  EXPECT_EQ(SegmentFiles(), st.segments);
  // The survivors are exactly the newest blocks, all intact.
  for (uint64_t i = 0; i < 100; ++i) {
    const bool expect_present = i >= st.evicted_blocks;
    EXPECT_EQ(store->Contains(KeyFor(i)), expect_present) << i;
    if (expect_present) {
      EXPECT_TRUE(Verifies(*store, i)) << i;
    }
  }
  ASSERT_TRUE(store->Close().ok());
  store = Open();
  ASSERT_TRUE(store);
  EXPECT_EQ(store->Stats().blocks, 100 - st.evicted_blocks);
  EXPECT_FALSE(store->Contains(KeyFor(0)));
  EXPECT_TRUE(Verifies(*store, 99));
}

TEST_F(EvictionTest, ReadsKeepASegmentFromEviction) {
  auto store = Open();
  ASSERT_TRUE(store);
  PutRange(*store, 0, 3 * kPerSegment);                    // segments A, B, C
  ASSERT_TRUE(Verifies(*store, 0));                        // A is now the most recently used
  PutRange(*store, 3 * kPerSegment, 4 * kPerSegment + 1);  // D, then E forces one eviction
  EXPECT_EQ(store->Stats().evicted_segments, 1u);
  for (uint64_t i = 0; i < kPerSegment; ++i) EXPECT_TRUE(Verifies(*store, i)) << i;  // A kept
  for (uint64_t i = kPerSegment; i < 2 * kPerSegment; ++i) {
    EXPECT_FALSE(store->Contains(KeyFor(i))) << i;  // B, the least recently used, went
  }
}

TEST_F(EvictionTest, RecencySurvivesAReopen) {
  {
    auto store = Open();
    ASSERT_TRUE(store);
    PutRange(*store, 0, 3 * kPerSegment);
    ASSERT_TRUE(Verifies(*store, 0));
    ASSERT_TRUE(store->Close().ok());
  }
  auto store = Open();
  ASSERT_TRUE(store);
  PutRange(*store, 3 * kPerSegment, 4 * kPerSegment + 1);
  EXPECT_EQ(store->Stats().evicted_segments, 1u);
  EXPECT_TRUE(store->Contains(KeyFor(0)));
  EXPECT_FALSE(store->Contains(KeyFor(kPerSegment)));
}

TEST_F(EvictionTest, ErasingEveryBlockOfASegmentFreesIt) {
  auto store = Open();
  ASSERT_TRUE(store);
  PutRange(*store, 0, 2 * kPerSegment + 1);  // A and B sealed, C active
  const uint64_t disk_before = store->Stats().disk_bytes;
  EXPECT_EQ(store->Stats().segments, 3u);
  for (uint64_t i = 0; i < kPerSegment; ++i) ASSERT_TRUE(store->Erase(KeyFor(i)).ok());
  StoreStats st = store->Stats();
  EXPECT_EQ(st.segments, 2u);
  EXPECT_LT(st.disk_bytes, disk_before);
  EXPECT_EQ(SegmentFiles(), 2u);
  EXPECT_EQ(st.evicted_segments, 0u);
  EXPECT_TRUE(Verifies(*store, kPerSegment));
}

}  // namespace
}  // namespace kvstash::storage
