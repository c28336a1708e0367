// Running out of space for real: the store lives on a small size-limited tmpfs mounted for the
// test. Writes must stop with a clear error, reads must keep being served, and writes must resume
// once space returns. Needs the privilege to mount (root / CAP_SYS_ADMIN); skips with the reason
// otherwise. (The same behaviour is covered without privileges by fault_test.cc.)
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "storage/aligned_buffer.h"
#include "storage/block_store.h"
#include "storage/testing/test_blocks.h"

namespace kvstash::storage {
namespace {

using storage::testing::KeyFor;
using storage::testing::MakeHeader;
using storage::testing::MakePayload;
using storage::testing::PayloadMatches;

constexpr size_t kBlock = 256 << 10;

bool Verifies(BlockStore& s, uint64_t i) {
  AlignedBuffer buf(kBlock);
  ReadResult r = s.Get(KeyFor(i), buf.span());
  return r.hit() && PayloadMatches(KeyFor(i), {buf.data(), kBlock});
}

Status Put(BlockStore& s, uint64_t i) {
  auto p = MakePayload(KeyFor(i), kBlock);
  return s.Put(KeyFor(i), MakeHeader(KeyFor(i)), p).get();
}

TEST(RealEnospcTest, FullFilesystemPausesWritesAndTheyResumeWhenSpaceReturns) {
  storage::testing::TempDir dir(storage::testing::RealDiskTestRoot(), "enospc");
  ASSERT_TRUE(dir.ok());
  const std::string mnt = dir.Sub("mnt");
  std::filesystem::create_directories(mnt);
  if (::mount("kvstash-enospc", mnt.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=64m") != 0) {
    GTEST_SKIP() << "cannot mount a 64 MiB tmpfs at " << mnt << " (" << std::strerror(errno)
                 << "); needs root or CAP_SYS_ADMIN";
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};

  // Something else on the filesystem that will give its space back later.
  const std::string filler = mnt + "/filler";
  {
    std::ofstream f(filler, std::ios::binary);
    std::vector<char> chunk(1 << 20, 'x');
    for (int i = 0; i < 24; ++i) f.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
  }

  Options o;
  o.path = mnt + "/cache";
  o.segment_bytes = 2 << 20;
  o.capacity_bytes = 1ull << 30;  // the budget is not what stops us: the filesystem is
  o.write_retry_interval_ms = 200;
  o.logger = NullLogger();
  auto opened = BlockStore::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  BlockStore& store = **opened;

  uint64_t stored = 0;
  Status failure;
  for (; stored < 400; ++stored) {
    failure = Put(store, stored);
    if (!failure.ok()) break;
  }
  ASSERT_FALSE(failure.ok()) << "the filesystem never filled up";
  // Writes fail fast while paused (checked at once: after write_retry_interval_ms one Put is let
  // through as a probe, and a seal truncating the last segment's unused tail may have freed
  // enough for it).
  EXPECT_EQ(Put(store, 1000).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(failure.code(), StatusCode::kResourceExhausted) << failure.ToString();
  EXPECT_NE(failure.message().find("No space left"), std::string::npos) << failure.ToString();
  EXPECT_GT(stored, 10u);
  EXPECT_TRUE(store.Stats().writes_paused);
  std::printf("[ enospc   ] full after %llu blocks: %s\n", static_cast<unsigned long long>(stored),
              failure.ToString().c_str());

  // Reads keep being served.
  for (uint64_t i = 0; i < stored; ++i) EXPECT_TRUE(Verifies(store, i)) << i;

  std::filesystem::remove(filler);  // space returns
  Status resumed;
  for (int attempt = 0; attempt < 20; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    resumed = Put(store, 2000);
    if (resumed.ok()) break;
  }
  ASSERT_TRUE(resumed.ok()) << resumed.ToString();
  EXPECT_FALSE(store.Stats().writes_paused);
  for (uint64_t i = 2001; i < 2020; ++i) EXPECT_TRUE(Put(store, i).ok()) << i;
  ASSERT_TRUE(store.Close().ok());

  auto reopened = BlockStore::Open(o);
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  for (uint64_t i = 0; i < stored; ++i) EXPECT_TRUE(Verifies(**reopened, i)) << i;
  for (uint64_t i = 2000; i < 2020; ++i) EXPECT_TRUE(Verifies(**reopened, i)) << i;
  EXPECT_TRUE((*reopened)->Close().ok());
}

}  // namespace
}  // namespace kvstash::storage
