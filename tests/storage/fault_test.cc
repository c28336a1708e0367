// The store under injected faults: ENOSPC pauses writes (and only writes), EIO on a read is a
// miss, a failed fdatasync never yields an index entry, and a power cut (unsynced writes dropped)
// loses only blocks that were never acknowledged.
#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <thread>

#include "storage/aligned_buffer.h"
#include "storage/block_store.h"
#include "storage/testing/fault_injection_file_system.h"
#include "storage/testing/test_blocks.h"

namespace kvstash::storage {
namespace {

using storage::testing::KeyFor;
using storage::testing::MakeHeader;
using storage::testing::MakePayload;
using storage::testing::PayloadMatches;
using storage::testing::TempDir;

constexpr size_t kBlock = 120 << 10;  // 8 records (124 KiB each) per 1 MiB segment

class StoreFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempDir>(storage::testing::RealDiskTestRoot(), "faults");
    ASSERT_TRUE(dir_->ok());
    fs_ = std::make_shared<FaultInjectionFileSystem>();
  }
  Options MakeOptions() const {
    Options o;
    o.path = dir_->Sub("cache");
    o.segment_bytes = 1 << 20;
    o.capacity_bytes = 64 << 20;
    o.file_system = fs_;
    o.logger = std::getenv("STORAGE_TEST_LOG") ? DefaultLogger() : NullLogger();
    o.write_retry_interval_ms = 20;
    // These tests inject faults into the writer's own segment creation at chosen moments; the
    // background preparation of the next segment has tests of its own below.
    o.prepare_segments = prepare_segments_;
    return o;
  }
  std::unique_ptr<BlockStore> Open() {
    auto r = BlockStore::Open(MakeOptions());
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : nullptr;
  }
  Status Put(BlockStore& s, uint64_t i) {
    auto p = MakePayload(KeyFor(i), kBlock);
    return s.Put(KeyFor(i), MakeHeader(KeyFor(i)), p).get();
  }
  ReadResult Get(BlockStore& s, uint64_t i, AlignedBuffer& buf) {
    return s.Get(KeyFor(i), buf.span());
  }
  // Writes resume at the first probe after the retry interval. The probe time is set by the
  // write thread, which a loaded CI machine may deschedule, so retry for up to 3 s instead of
  // assuming one fixed sleep covers it.
  bool PutOnceResumed(BlockStore& s, uint64_t i) {
    for (int attempt = 0; attempt < 100; ++attempt) {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      if (Put(s, i).ok()) return true;
    }
    return false;
  }

  bool Verifies(BlockStore& s, uint64_t i) {
    AlignedBuffer buf(BlockStore::ReadBufferBytes(kBlock));
    ReadResult r = s.Get(KeyFor(i), buf.span());
    return r.hit() && r.payload_bytes == kBlock &&
           PayloadMatches(KeyFor(i), {buf.data(), kBlock}) && r.header == MakeHeader(KeyFor(i));
  }

  size_t SegmentFiles() const {
    size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir_->Sub("cache/segments"))) {
      n += e.path().extension() == ".seg";
    }
    return n;
  }

  std::unique_ptr<TempDir> dir_;
  std::shared_ptr<FaultInjectionFileSystem> fs_;
  bool prepare_segments_ = false;
};

// The next segment is made in the background once the active one is half full; roll-overs use
// it, and a segment prepared but never used leaves no file behind after Close.
TEST_F(StoreFaultTest, PreparedSegmentsAreUsedAndNoneOutlivesClose) {
  prepare_segments_ = true;
  {
    auto store = Open();
    ASSERT_TRUE(store);
    for (uint64_t i = 0; i < 8 * 5 + 5; ++i) ASSERT_TRUE(Put(*store, i).ok()) << i;
    ASSERT_TRUE(store->Flush().ok());
    EXPECT_EQ(store->Stats().segments, 6u);
    // The sixth segment is past half full: a seventh is prepared (or being prepared) beside it.
    ASSERT_TRUE(store->Close().ok());
    EXPECT_EQ(SegmentFiles(), 6u);
  }
  auto store = Open();
  ASSERT_TRUE(store);
  for (uint64_t i = 0; i < 45; ++i) EXPECT_TRUE(Verifies(*store, i)) << i;
  EXPECT_EQ(store->Stats().segments, 6u);
}

// A failed preparation (no space) is not the end: the writer makes the segment itself at the
// roll-over, so the error, when it persists, pauses writes as usual while reads continue.
TEST_F(StoreFaultTest, FailedPreparationFallsBackToTheWriter) {
  prepare_segments_ = true;
  auto store = Open();
  ASSERT_TRUE(store);
  for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(Put(*store, i).ok());
  fs_->InjectFault(FaultOp::kAllocate, ENOSPC, 1);  // the preparer's fallocate fails once
  for (uint64_t i = 4; i < 12; ++i) ASSERT_TRUE(Put(*store, i).ok()) << i;  // rolls over
  EXPECT_EQ(store->Stats().segments, 2u);
  fs_->InjectFault(FaultOp::kAllocate, ENOSPC, -1);  // now the disk stays full
  Status s;
  for (uint64_t i = 12; i < 40 && s.ok(); ++i) s = Put(*store, i);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("No space left"), std::string::npos) << s.ToString();
  EXPECT_TRUE(store->Stats().writes_paused);
  for (uint64_t i = 0; i < 12; ++i) EXPECT_TRUE(Verifies(*store, i)) << i;
  fs_->ClearFaults();
  EXPECT_TRUE(PutOnceResumed(*store, 100));
  EXPECT_TRUE(Verifies(*store, 100));
}

TEST_F(StoreFaultTest, NoSpaceForANewSegmentPausesWritesWhileReadsContinue) {
  auto store = Open();
  ASSERT_TRUE(store);
  for (uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(Put(*store, i).ok());  // fills segment 1
  fs_->InjectFault(FaultOp::kAllocate, ENOSPC);
  Status s = Put(*store, 8);  // needs segment 2
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("No space left"), std::string::npos) << s.ToString();
  StoreStats st = store->Stats();
  EXPECT_TRUE(st.writes_paused);
  EXPECT_NE(st.last_error.find("No space left"), std::string::npos);
  // Fails fast (no I/O) until the retry interval passes.
  const uint64_t injected = fs_->injected_faults();
  EXPECT_EQ(Put(*store, 9).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(fs_->injected_faults(), injected);
  for (uint64_t i = 0; i < 8; ++i) EXPECT_TRUE(Verifies(*store, i)) << i;
  EXPECT_FALSE(store->Contains(KeyFor(8)));

  // Still no space at the next probe: still paused.
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_EQ(Put(*store, 10).code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(store->Stats().writes_paused);

  fs_->ClearFaults();  // space returns
  EXPECT_TRUE(PutOnceResumed(*store, 11));
  EXPECT_FALSE(store->Stats().writes_paused);
  EXPECT_TRUE(store->Stats().last_error.empty());
  for (uint64_t i = 12; i < 30; ++i) EXPECT_TRUE(Put(*store, i).ok());
  for (uint64_t i : {0, 7, 11, 29}) EXPECT_TRUE(Verifies(*store, i)) << i;
}

TEST_F(StoreFaultTest, NoSpaceOnAWriteFailsThatPutAndPausesWrites) {
  auto store = Open();
  ASSERT_TRUE(store);
  ASSERT_TRUE(Put(*store, 0).ok());
  fs_->InjectFault(FaultOp::kWrite, ENOSPC, 1, ".seg");
  EXPECT_EQ(Put(*store, 1).code(), StatusCode::kResourceExhausted);
  StoreStats st = store->Stats();
  EXPECT_TRUE(st.writes_paused) << st.last_error;
  EXPECT_FALSE(store->Contains(KeyFor(1)));
  EXPECT_TRUE(Verifies(*store, 0));
  EXPECT_TRUE(PutOnceResumed(*store, 1));  // next segment; the failed write left a hole behind
  EXPECT_TRUE(Verifies(*store, 1));
  ASSERT_TRUE(store->Close().ok());
  store = Open();
  ASSERT_TRUE(store);
  EXPECT_TRUE(Verifies(*store, 0));
  EXPECT_TRUE(Verifies(*store, 1));
}

TEST_F(StoreFaultTest, ReadErrorIsAMissAndKeepsTheBlock) {
  auto store = Open();
  ASSERT_TRUE(store);
  ASSERT_TRUE(Put(*store, 0).ok());
  fs_->InjectFault(FaultOp::kRead, EIO, 1, ".seg");
  AlignedBuffer buf(BlockStore::ReadBufferBytes(kBlock));
  ReadResult r = Get(*store, 0, buf);
  EXPECT_FALSE(r.hit());
  EXPECT_EQ(r.status.code(), StatusCode::kIOError) << r.status.ToString();
  EXPECT_EQ(store->Stats().read_errors, 1u);
  EXPECT_TRUE(store->Contains(KeyFor(0)));
  EXPECT_TRUE(Verifies(*store, 0));  // the error was transient
}

TEST_F(StoreFaultTest, FailedSyncNeverIndexesTheBlock) {
  auto store = Open();
  ASSERT_TRUE(store);
  ASSERT_TRUE(Put(*store, 0).ok());
  fs_->InjectFault(FaultOp::kSync, EIO, 1, ".seg");
  Status s = Put(*store, 1);
  EXPECT_EQ(s.code(), StatusCode::kIOError) << s.ToString();
  EXPECT_FALSE(store->Contains(KeyFor(1)));
  EXPECT_EQ(store->Stats().puts_failed, 1u);
  // The segment whose sync failed takes no more appends; the next Put goes elsewhere.
  EXPECT_TRUE(Put(*store, 1).ok());
  EXPECT_TRUE(Verifies(*store, 1));
  EXPECT_TRUE(Verifies(*store, 0));
}

TEST_F(StoreFaultTest, PowerCutLosesOnlyUnacknowledgedBlocks) {
  {
    auto store = Open();
    ASSERT_TRUE(store);
    for (uint64_t i = 0; i < 10; ++i) ASSERT_TRUE(Put(*store, i).ok());
    ASSERT_TRUE(store->Flush().ok());
    // From now on nothing reaches the platter: writes land in "cache", syncs fail.
    fs_->InjectFault(FaultOp::kSync, EIO, -1, ".seg");
    for (uint64_t i = 10; i < 20; ++i) EXPECT_FALSE(Put(*store, i).ok());
    EXPECT_GT(fs_->unsynced_bytes(), 0u);
    store.reset();
  }
  ASSERT_TRUE(fs_->DropUnsyncedWrites().ok());
  fs_->ClearFaults();
  auto store = Open();
  ASSERT_TRUE(store);
  for (uint64_t i = 0; i < 10; ++i) EXPECT_TRUE(Verifies(*store, i)) << i;
  for (uint64_t i = 10; i < 20; ++i) EXPECT_FALSE(store->Contains(KeyFor(i))) << i;
  EXPECT_EQ(store->Stats().blocks, 10u);
  EXPECT_EQ(store->Stats().corrupt_records, 0u);
  EXPECT_TRUE(Put(*store, 30).ok());
  EXPECT_TRUE(Verifies(*store, 30));
}

TEST_F(StoreFaultTest, PowerCutRightAfterSegmentCreationLeavesNoTrace) {
  {
    auto store = Open();
    ASSERT_TRUE(store);
    for (uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(Put(*store, i).ok());
    fs_->InjectFault(FaultOp::kSyncDir, EIO, -1);  // a new segment's name never becomes durable
    EXPECT_FALSE(Put(*store, 8).ok());
    store.reset();
  }
  ASSERT_TRUE(fs_->DropUnsyncedWrites().ok());
  fs_->ClearFaults();
  auto store = Open();
  ASSERT_TRUE(store);
  for (uint64_t i = 0; i < 8; ++i) EXPECT_TRUE(Verifies(*store, i)) << i;
  EXPECT_FALSE(store->Contains(KeyFor(8)));
  EXPECT_EQ(store->Stats().segments, 1u);
}

TEST_F(StoreFaultTest, FailingToOpenTheLockIsReported) {
  fs_->InjectFault(FaultOp::kLock, EACCES, 1);
  auto r = BlockStore::Open(MakeOptions());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("LOCK"), std::string::npos) << r.status().ToString();
}

}  // namespace
}  // namespace kvstash::storage
