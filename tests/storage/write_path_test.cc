// The write path's throughput machinery: the buffer pool's huge-page slabs, group commit (which
// must not delay an idle store, nor a Flush), records coalesced into one write request and cut
// across requests at 4 MiB-aligned offsets (which must read back intact, survive a reopen, and fail
// together and cleanly when their request fails).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <vector>

#include "storage/aligned_buffer.h"
#include "storage/block_store.h"
#include "storage/format.h"
#include "storage/testing/fault_injection_file_system.h"
#include "storage/testing/test_blocks.h"

namespace kvstash::storage {
namespace {

using storage::testing::KeyFor;
using storage::testing::MakeHeader;
using storage::testing::MakePayload;
using storage::testing::PayloadMatches;
using storage::testing::TempDir;

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % format::kIoAlignment == 0; }

TEST(BufferPoolTest, MediumBuffersAreCarvedAlignedDisjointAndOutliveThePool) {
  constexpr size_t kSize = 260 << 10;
  std::vector<AlignedBuffer> bufs;
  {
    BufferPool pool(64 << 20);
    // More than one slab's worth.
    for (size_t i = 0; i < 2 * BufferPool::kSlabBytes / kSize + 3; ++i) {
      bufs.push_back(pool.Get(kSize));
    }
  }  // the pool is gone; each buffer keeps its slab alive
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  for (size_t i = 0; i < bufs.size(); ++i) {
    ASSERT_EQ(bufs[i].size(), kSize);
    EXPECT_TRUE(Aligned(bufs[i].data()));
    std::memset(bufs[i].data(), static_cast<int>(i & 0xff), kSize);
    const auto a = reinterpret_cast<uintptr_t>(bufs[i].data());
    ranges.emplace_back(a, a + kSize);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) EXPECT_LE(ranges[i - 1].second, ranges[i].first);
  for (size_t i = 0; i < bufs.size(); ++i) {
    const auto* p = reinterpret_cast<const unsigned char*>(bufs[i].data());
    EXPECT_EQ(p[0], i & 0xff);
    EXPECT_EQ(p[kSize - 1], i & 0xff);
  }
}

TEST(BufferPoolTest, ReleasedBuffersAreReusedAndMovesCarryTheirSlab) {
  BufferPool pool(64 << 20);
  AlignedBuffer a = pool.Get(300 << 10);
  std::byte* p = a.data();
  AlignedBuffer moved = std::move(a);
  EXPECT_EQ(moved.data(), p);
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): a moved-from buffer is empty
  AlignedBuffer assigned;
  assigned = std::move(moved);
  EXPECT_EQ(assigned.data(), p);
  pool.Release(std::move(assigned));
  AlignedBuffer again = pool.Get(300 << 10);
  EXPECT_EQ(again.data(), p);
  // Small and large buffers are allocations of their own, aligned all the same.
  AlignedBuffer small = pool.Get(8 << 10);
  AlignedBuffer large = pool.Get(3 << 20);
  EXPECT_TRUE(Aligned(small.data()));
  EXPECT_TRUE(Aligned(large.data()));
  EXPECT_EQ(small.size(), 8u << 10);
  EXPECT_EQ(large.size(), 3u << 20);
}

class WritePathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempDir>(storage::testing::RealDiskTestRoot(), "write_path");
    ASSERT_TRUE(dir_->ok());
  }
  Options MakeOptions() const {
    Options o;
    o.path = dir_->Sub("cache");
    o.segment_bytes = 4 << 20;  // large enough for PinExtents
    o.capacity_bytes = 256 << 20;
    o.logger = std::getenv("STORAGE_TEST_LOG") ? DefaultLogger() : NullLogger();
    return o;
  }
  std::unique_ptr<BlockStore> Open(const Options& o) {
    auto r = BlockStore::Open(o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : nullptr;
  }
  // Block i's payload size: a spread of sizes, so groups mix record lengths.
  static size_t SizeOf(uint64_t i) { return (4 << 10) + (i * 37 % 64) * (5 << 10) + i % 3; }
  static bool Verifies(BlockStore& s, uint64_t i) {
    const size_t n = SizeOf(i);
    AlignedBuffer buf(BlockStore::ReadBufferBytes(n));
    ReadResult r = s.Get(KeyFor(i), buf.span());
    return r.hit() && r.payload_bytes == n && PayloadMatches(KeyFor(i), {buf.data(), n}) &&
           r.header == MakeHeader(KeyFor(i));
  }
  // Faults through `fs`, one write request in flight, quick retries after a failure.
  static Options FaultOptions(Options o, std::shared_ptr<FaultInjectionFileSystem> fs) {
    o.file_system = std::move(fs);
    o.write_queue_depth = 1;
    o.write_retry_interval_ms = 20;
    return o;
  }
  // A new store over o.path holds exactly blocks 0..n-1, all intact.
  template <typename VerifyFn>
  void ExpectAllAfterReopen(const Options& o, uint64_t n, VerifyFn verifies) {
    auto store = Open(o);
    ASSERT_TRUE(store);
    EXPECT_EQ(store->Stats().blocks, n);
    for (uint64_t i = 0; i < n; ++i) EXPECT_TRUE(verifies(*store, i)) << i;
  }
  // With one write request made to fail: Puts first..end-1 each either succeed and read back or
  // fail and are absent; at least one fails, not all; a reopen finds exactly the blocks below
  // `end` that succeeded (the ones below `first` were stored before and must all be there).
  template <typename PutFn, typename VerifyFn>
  void ExpectOneRequestFailed(const Options& o, std::unique_ptr<BlockStore>& store, uint64_t first,
                              uint64_t end, PutFn put, VerifyFn verifies) {
    std::vector<std::future<Status>> done;
    for (uint64_t i = first; i < end; ++i) done.push_back(put(*store, i));
    uint64_t failed = 0;
    for (uint64_t i = first; i < end; ++i) {
      if (done[i - first].get().ok()) {
        EXPECT_TRUE(verifies(*store, i)) << i;
      } else {
        ++failed;
        EXPECT_FALSE(store->Contains(KeyFor(i))) << i;
      }
    }
    EXPECT_GE(failed, 1u);
    EXPECT_LT(failed, end - first);
    ASSERT_TRUE(store->Close().ok());
    store = Open(o);
    ASSERT_TRUE(store);
    uint64_t present = 0;
    for (uint64_t i = 0; i < end; ++i) {
      if (store->Contains(KeyFor(i))) {
        ++present;
        EXPECT_TRUE(verifies(*store, i)) << i;
      }
    }
    EXPECT_EQ(present, end - failed);
  }

  std::unique_ptr<TempDir> dir_;
};

TEST_F(WritePathTest, OptionsRejectACommitDelayOutOfRange) {
  Options o = MakeOptions();
  o.max_commit_delay_ms = -1;
  EXPECT_EQ(BlockStore::Open(o).status().code(), StatusCode::kInvalidArgument);
  o.max_commit_delay_ms = 10001;
  EXPECT_EQ(BlockStore::Open(o).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(WritePathTest, AnIdleStoreCommitsAtOnceDespiteALongCommitDelay) {
  Options o = MakeOptions();
  o.max_commit_delay_ms = 10000;
  auto store = Open(o);
  ASSERT_TRUE(store);
  for (uint64_t i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto payload = MakePayload(KeyFor(i), SizeOf(i));
    ASSERT_TRUE(store->Put(KeyFor(i), MakeHeader(KeyFor(i)), payload).get().ok());
    // The writer ran dry, so the commit did not wait out the 10 s delay.
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5)) << i;
    EXPECT_TRUE(store->Contains(KeyFor(i)));
  }
}

TEST_F(WritePathTest, StreamedPutsAreCoalescedReadBackIntactAndSurviveAReopen) {
  Options o = MakeOptions();
  o.max_commit_delay_ms = 10000;     // a Flush must not wait it out either
  o.write_queue_depth = 2;           // records pile up behind two requests and get grouped
  constexpr uint64_t kBlocks = 400;  // ~50 MiB: several segments
  {
    auto store = Open(o);
    ASSERT_TRUE(store);
    std::atomic<uint64_t> ok{0}, failed{0};
    for (uint64_t i = 0; i < kBlocks; ++i) {
      auto payload = MakePayload(KeyFor(i), SizeOf(i));
      store->Put(KeyFor(i), MakeHeader(KeyFor(i)), payload,
                 [&](Status s) { (s.ok() ? ok : failed)++; });
    }
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(store->Flush().ok());
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(8));
    EXPECT_EQ(ok.load(), kBlocks);
    EXPECT_EQ(failed.load(), 0u);
    EXPECT_EQ(store->Stats().blocks, kBlocks);
    for (uint64_t i = 0; i < kBlocks; ++i) EXPECT_TRUE(Verifies(*store, i)) << i;
    ASSERT_TRUE(store->Close().ok());
  }
  ExpectAllAfterReopen(o, kBlocks, Verifies);
}

TEST_F(WritePathTest, AFailedGroupedWriteFailsItsRecordsAndNothingElse) {
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  Options o = FaultOptions(MakeOptions(), fs);
  auto store = Open(o);
  ASSERT_TRUE(store);
  // One failed request, whichever records it carries; the others go to a fresh segment.
  fs->InjectFault(FaultOp::kWrite, EIO, 1, ".seg");
  ExpectOneRequestFailed(
      o, store, 0, 64,
      [](BlockStore& s, uint64_t i) {
        auto payload = MakePayload(KeyFor(i), SizeOf(i));
        return s.Put(KeyFor(i), MakeHeader(KeyFor(i)), payload);
      },
      [this](BlockStore& s, uint64_t i) { return Verifies(s, i); });
}

// Records of 1-2 MiB in 32 MiB segments: many straddle a 4 MiB boundary of the file, so the writer
// cuts them into pieces that travel in different requests.
class SplitRecordTest : public WritePathTest {
 protected:
  Options MakeOptions() const {
    Options o = WritePathTest::MakeOptions();
    o.segment_bytes = 32 << 20;
    return o;
  }
  static size_t BigSizeOf(uint64_t i) { return (1 << 20) + (i * 97 % 13) * (75 << 10) + i % 5; }
  static std::future<Status> PutBig(BlockStore& s, uint64_t i) {
    auto payload = MakePayload(KeyFor(i), BigSizeOf(i));
    return s.Put(KeyFor(i), MakeHeader(KeyFor(i)), payload);
  }
  static bool VerifiesBig(BlockStore& s, uint64_t i) {
    const size_t n = BigSizeOf(i);
    AlignedBuffer buf(BlockStore::ReadBufferBytes(n));
    ReadResult r = s.Get(KeyFor(i), buf.span());
    return r.hit() && r.payload_bytes == n && PayloadMatches(KeyFor(i), {buf.data(), n}) &&
           r.header == MakeHeader(KeyFor(i));
  }
};

TEST_F(SplitRecordTest, RecordsCutAcrossRequestsReadBackIntactAndSurviveAReopen) {
  // Depth 1: a record's second piece waits for a free slot after its first piece is in flight.
  for (unsigned depth : {1u, 3u, 32u}) {
    SCOPED_TRACE(depth);
    Options o = MakeOptions();
    o.path = dir_->Sub("cache-" + std::to_string(depth));
    o.write_queue_depth = depth;
    constexpr uint64_t kBlocks = 60;  // ~100 MiB: several segments
    {
      auto store = Open(o);
      ASSERT_TRUE(store);
      std::vector<std::future<Status>> done;
      for (uint64_t i = 0; i < kBlocks; ++i) done.push_back(PutBig(*store, i));
      for (auto& f : done) EXPECT_TRUE(f.get().ok());
      ASSERT_TRUE(store->Flush().ok());
      for (uint64_t i = 0; i < kBlocks; ++i) EXPECT_TRUE(VerifiesBig(*store, i)) << i;
      ASSERT_TRUE(store->Close().ok());
    }
    ExpectAllAfterReopen(o, kBlocks, VerifiesBig);
  }
}

TEST_F(SplitRecordTest, AFailedPieceFailsItsRecordAndLeavesTheOthersReadable) {
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  Options o = FaultOptions(MakeOptions(), fs);
  auto store = Open(o);
  ASSERT_TRUE(store);
  ASSERT_TRUE(PutBig(*store, 0).get().ok());  // the segment exists: the fault hits a record
  // The next write request fails. With records of 1-2 MiB cut at 4 MiB boundaries and one
  // request in flight, records have pieces in more than one request.
  fs->InjectFault(FaultOp::kWrite, EIO, 1, ".seg");
  ExpectOneRequestFailed(o, store, 1, 24, PutBig, VerifiesBig);
}

}  // namespace
}  // namespace kvstash::storage
