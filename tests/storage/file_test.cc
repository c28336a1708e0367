// The file layer: POSIX files, the io_uring and synchronous queues, and the fault-injecting
// wrapper the other storage tests rely on.
#include "storage/file.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>

#include "storage/aligned_buffer.h"
#include "storage/testing/fault_injection_file_system.h"
#include "storage/testing/test_blocks.h"
#include "storage/uring/io_uring_queue.h"

namespace kvstash::storage {
namespace {

using storage::testing::TempDir;

class FileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempDir>(storage::testing::RealDiskTestRoot(), "file");
    ASSERT_TRUE(dir_->ok());
  }
  std::unique_ptr<TempDir> dir_;
};

// Writes `n` 64 KiB blocks through `q` and reads them back in reverse, all batched.
void RoundTripThroughQueue(IoQueue& q, File& f, unsigned n) {
  const size_t kBlock = 64 << 10;
  std::vector<AlignedBuffer> out, in;
  std::vector<iovec> iov_out(n), iov_in(n);
  std::vector<IoOp> ops;
  for (unsigned i = 0; i < n; ++i) {
    out.emplace_back(kBlock);
    std::memset(out[i].data(), static_cast<int>(i + 1), kBlock);
    iov_out[i] = {out[i].data(), kBlock};
    ops.push_back({IoOp::Kind::kWrite, &f, i * kBlock, &iov_out[i], 1, i});
  }
  ASSERT_TRUE(q.Submit(ops).ok());
  std::vector<IoCompletion> done;
  while (done.size() < n) ASSERT_TRUE(q.Reap(1, &done).ok());
  for (const auto& c : done) EXPECT_EQ(c.result, static_cast<int64_t>(kBlock));
  IoOp sync{IoOp::Kind::kSync, &f, 0, nullptr, 0, 99};
  ASSERT_TRUE(q.Submit({&sync, 1}).ok());
  done.clear();
  ASSERT_TRUE(q.Reap(1, &done).ok());
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].result, 0);

  ops.clear();
  for (unsigned i = 0; i < n; ++i) {
    in.emplace_back(kBlock);
    iov_in[i] = {in[i].data(), kBlock};
    ops.push_back({IoOp::Kind::kRead, &f, (n - 1 - i) * kBlock, &iov_in[i], 1, i});
  }
  ASSERT_TRUE(q.Submit(ops).ok());
  done.clear();
  while (done.size() < n) ASSERT_TRUE(q.Reap(n, &done).ok());
  for (unsigned i = 0; i < n; ++i) {
    EXPECT_EQ(in[i].data()[0], std::byte(n - i)) << i;
    EXPECT_EQ(in[i].data()[kBlock - 1], std::byte(n - i)) << i;
  }
  EXPECT_EQ(q.in_flight(), 0u);
}

TEST_F(FileTest, IoUringQueueRoundTripsWithODirect) {
  auto fs = FileSystem::Posix();
  auto f = fs->OpenFile(dir_->Sub("a"), {.create = true, .read_only = false, .direct = true});
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  auto q = NewIoUringQueue(16);
  if (!q.ok()) GTEST_SKIP() << "io_uring unavailable: " << q.status().ToString();
  RoundTripThroughQueue(**q, **f, 16);
  IoOp too_many[17];
  for (auto& op : too_many) op = {IoOp::Kind::kSync, f->get(), 0, nullptr, 0, 0};
  EXPECT_FALSE((*q)->Submit(too_many).ok());
}

TEST_F(FileTest, SyncQueueRoundTrips) {
  auto fs = FileSystem::Posix(/*use_io_uring=*/false);
  auto f = fs->OpenFile(dir_->Sub("b"), {.create = true, .read_only = false, .direct = false});
  ASSERT_TRUE(f.ok());
  auto q = fs->NewIoQueue(8);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ((*q)->name(), "sync");
  RoundTripThroughQueue(**q, **f, 8);
}

TEST_F(FileTest, PosixFileBasics) {
  auto fs = FileSystem::Posix();
  const std::string path = dir_->Sub("c");
  EXPECT_EQ(fs->OpenFile(path, {}).status().code(), StatusCode::kNotFound);
  auto f = fs->OpenFile(path, {.create = true, .read_only = false, .direct = false});
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE((*f)->Allocate(0, 1 << 20).ok());
  EXPECT_EQ(*(*f)->Size(), 1u << 20);
  std::vector<std::byte> data(100, std::byte{5});
  ASSERT_TRUE((*f)->WriteAt(10, data).ok());
  ASSERT_TRUE((*f)->Truncate(50).ok());
  std::vector<std::byte> back(100);
  auto n = (*f)->ReadAt(0, back);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 50u);  // short at end of file
  EXPECT_EQ(back[10], std::byte{5});
  auto names = fs->ListDir(dir_->path());
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"c"});
  EXPECT_TRUE(fs->SyncDir(dir_->path()).ok());
  EXPECT_TRUE(fs->RemoveFile(path).ok());
  EXPECT_FALSE(*fs->Exists(path));
}

TEST_F(FileTest, LockFileIsExclusiveEvenWithinAProcess) {
  auto fs = FileSystem::Posix();
  auto a = fs->LockFile(dir_->Sub("LOCK"));
  ASSERT_TRUE(a.ok());
  auto b = fs->LockFile(dir_->Sub("LOCK"));
  EXPECT_EQ(b.status().code(), StatusCode::kBusy);
  a->reset();
  EXPECT_TRUE(fs->LockFile(dir_->Sub("LOCK")).ok());
}

TEST_F(FileTest, FaultInjectionFailsChosenCallsThroughTheQueueToo) {
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  auto f = fs->OpenFile(dir_->Sub("d"), {.create = true, .read_only = false, .direct = true});
  ASSERT_TRUE(f.ok());
  auto q = fs->NewIoQueue(4);
  ASSERT_TRUE(q.ok());
  AlignedBuffer buf(4096);
  std::memset(buf.data(), 1, 4096);
  iovec iov{buf.data(), 4096};
  fs->InjectFault(FaultOp::kWrite, ENOSPC, 1, "/d");
  IoOp w{IoOp::Kind::kWrite, f->get(), 0, &iov, 1, 1};
  ASSERT_TRUE((*q)->Submit({&w, 1}).ok());
  std::vector<IoCompletion> done;
  ASSERT_TRUE((*q)->Reap(1, &done).ok());
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].result, -ENOSPC);
  // The rule was for one call: the next write goes through.
  done.clear();
  ASSERT_TRUE((*q)->Submit({&w, 1}).ok());
  ASSERT_TRUE((*q)->Reap(1, &done).ok());
  EXPECT_EQ(done[0].result, 4096);
  EXPECT_EQ(fs->injected_faults(), 1u);

  fs->InjectFault(FaultOp::kRead, EIO, -1);
  EXPECT_EQ((*f)->ReadAt(0, buf.span()).status().code(), StatusCode::kIOError);
  fs->ClearFaults();
  EXPECT_TRUE((*f)->ReadAt(0, buf.span()).ok());
  fs->InjectFault(FaultOp::kAllocate, ENOSPC, 1);
  EXPECT_EQ((*f)->Allocate(0, 1 << 20).code(), StatusCode::kResourceExhausted);
}

TEST_F(FileTest, DroppingUnsyncedWritesZeroesThemAndForgetsUnsyncedFiles) {
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  const std::string synced_path = dir_->Sub("synced"), fresh_path = dir_->Sub("fresh");
  auto f = fs->OpenFile(synced_path, {.create = true, .read_only = false, .direct = false});
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(fs->SyncDir(dir_->path()).ok());
  std::vector<std::byte> ones(8192, std::byte{1}), twos(4096, std::byte{2});
  ASSERT_TRUE((*f)->WriteAt(0, ones).ok());
  ASSERT_TRUE((*f)->Sync().ok());
  ASSERT_TRUE((*f)->WriteAt(4096, twos).ok());  // never synced
  auto g = fs->OpenFile(fresh_path, {.create = true, .read_only = false, .direct = false});
  ASSERT_TRUE(g.ok());
  ASSERT_TRUE((*g)->WriteAt(0, ones).ok());
  ASSERT_TRUE((*g)->Sync().ok());  // synced data, but the directory entry is not
  EXPECT_EQ(fs->unsynced_bytes(), 4096u);

  ASSERT_TRUE(fs->DropUnsyncedWrites().ok());
  std::vector<std::byte> back(8192);
  ASSERT_TRUE((*f)->ReadAt(0, back).ok());
  EXPECT_EQ(back[0], std::byte{1});
  EXPECT_EQ(back[4096], std::byte{0});  // the unsynced write is gone, not half there
  EXPECT_FALSE(*fs->Exists(fresh_path));
}

}  // namespace
}  // namespace kvstash::storage
