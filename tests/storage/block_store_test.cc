// BlockStore behaviour on a real filesystem and on tmpfs, with O_DIRECT and buffered I/O: the
// round trip, batched reads, dedup, erase, persistence, the directory lock, meta and sessions.
#include "storage/block_store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "storage/aligned_buffer.h"
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

Status PutSync(BlockStore& store, const BlockKey& key, size_t size_bytes, size_t n_tokens = 16) {
  std::vector<std::byte> payload = MakePayload(key, size_bytes);
  return store.Put(key, MakeHeader(key, n_tokens), payload).get();
}

void ExpectBlock(BlockStore& store, const BlockKey& key, size_t size_bytes, size_t n_tokens = 16) {
  AlignedBuffer buf(BlockStore::ReadBufferBytes(size_bytes));
  ReadResult r = store.Get(key, buf.span());
  ASSERT_TRUE(r.hit()) << key.ToHex() << ": " << r.status.ToString();
  EXPECT_EQ(r.payload_bytes, size_bytes);
  EXPECT_TRUE(PayloadMatches(key, {buf.data(), size_bytes}));
  EXPECT_EQ(r.header, MakeHeader(key, n_tokens));
}

struct FsParam {
  const char* name;
  bool tmpfs;
  IoMode mode;
};
void PrintTo(const FsParam& p, std::ostream* os) { *os << p.name; }

class BlockStoreTest : public ::testing::TestWithParam<FsParam> {
 protected:
  void SetUp() override {
    std::string root = storage::testing::RealDiskTestRoot();
    if (GetParam().tmpfs) {
      auto r = storage::testing::TmpfsTestRoot();
      if (!r) GTEST_SKIP() << "no writable tmpfs at /dev/shm";
      root = *r;
    }
    dir_ = std::make_unique<TempDir>(root, "block_store");
    ASSERT_TRUE(dir_->ok());
  }

  Options MakeOptions() const {
    Options o;
    o.path = dir_->Sub("cache");
    o.segment_bytes = 4 << 20;
    o.capacity_bytes = 256 << 20;
    o.io_mode = GetParam().mode;
    o.logger = NullLogger();
    return o;
  }

  std::unique_ptr<BlockStore> Open(const Options& o) {
    auto r = BlockStore::Open(o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : nullptr;
  }

  std::unique_ptr<TempDir> dir_;
};

TEST_P(BlockStoreTest, PutThenGetReturnsTheSameBytesAndHeader) {
  auto store = Open(MakeOptions());
  ASSERT_TRUE(store);
  const size_t sizes[] = {0, 1, 4095, 4096, 4097, 100'000, 1 << 20, (3 << 20) + 17};
  for (size_t i = 0; i < std::size(sizes); ++i) {
    ASSERT_TRUE(PutSync(*store, KeyFor(i), sizes[i]).ok());
  }
  for (size_t i = 0; i < std::size(sizes); ++i) {
    EXPECT_TRUE(store->Contains(KeyFor(i)));
    EXPECT_EQ(store->PayloadBytes(KeyFor(i)), sizes[i]);
    ExpectBlock(*store, KeyFor(i), sizes[i]);
  }
  StoreStats st = store->Stats();
  EXPECT_EQ(st.blocks, std::size(sizes));
  EXPECT_EQ(st.corrupt_records, 0u);
  if (GetParam().mode == IoMode::kBuffered) {
    EXPECT_FALSE(st.direct_io);
  }
  if (GetParam().mode == IoMode::kDirect) {
    EXPECT_TRUE(st.direct_io);
  }
  EXPECT_TRUE(store->Close().ok());
}

TEST_P(BlockStoreTest, GetManyReportsEachKey) {
  auto store = Open(MakeOptions());
  ASSERT_TRUE(store);
  constexpr size_t kStored = 20, kAsked = 30, kSize = 64 << 10;
  for (size_t i = 0; i < kStored; ++i) ASSERT_TRUE(PutSync(*store, KeyFor(i), kSize).ok());
  std::vector<BlockKey> keys;
  std::vector<AlignedBuffer> bufs;
  std::vector<std::span<std::byte>> dsts;
  for (size_t i = 0; i < kAsked; ++i) {
    keys.push_back(KeyFor(kAsked - 1 - i));  // misses interleaved with hits, reverse order
    bufs.emplace_back(kSize);
  }
  for (auto& b : bufs) dsts.push_back(b.span());
  std::vector<ReadResult> results(kAsked);
  ASSERT_TRUE(store->GetMany(keys, dsts, results).ok());
  for (size_t i = 0; i < kAsked; ++i) {
    const size_t index = kAsked - 1 - i;
    if (index < kStored) {
      ASSERT_TRUE(results[i].hit()) << results[i].status.ToString();
      EXPECT_TRUE(PayloadMatches(keys[i], {bufs[i].data(), kSize}));
      EXPECT_EQ(results[i].header, MakeHeader(keys[i]));
    } else {
      EXPECT_EQ(results[i].status.code(), StatusCode::kNotFound);
    }
  }
  StoreStats st = store->Stats();
  EXPECT_EQ(st.hits, kStored);
  EXPECT_EQ(st.misses, kAsked - kStored);
  std::vector<ReadResult> two(2);
  EXPECT_EQ(store->GetMany(keys, dsts, two).code(), StatusCode::kInvalidArgument);
}

TEST_P(BlockStoreTest, UnalignedAndExactSizeDestinationsAreServedThroughABounceBuffer) {
  auto store = Open(MakeOptions());
  ASSERT_TRUE(store);
  const size_t size = 70'001;
  ASSERT_TRUE(PutSync(*store, KeyFor(1), size).ok());
  std::vector<std::byte> raw(size + 1);
  ReadResult r = store->Get(KeyFor(1), {raw.data() + 1, size});  // unaligned, exact size
  ASSERT_TRUE(r.hit()) << r.status.ToString();
  EXPECT_TRUE(PayloadMatches(KeyFor(1), {raw.data() + 1, size}));

  std::vector<std::byte> small(size - 1);
  r = store->Get(KeyFor(1), small);
  EXPECT_EQ(r.status.code(), StatusCode::kInvalidArgument);
}

TEST_P(BlockStoreTest, PuttingAStoredKeyIsANoOp) {
  auto store = Open(MakeOptions());
  ASSERT_TRUE(store);
  ASSERT_TRUE(PutSync(*store, KeyFor(7), 50'000).ok());
  const uint64_t written = store->Stats().bytes_written;
  ASSERT_TRUE(PutSync(*store, KeyFor(7), 50'000).ok());
  StoreStats st = store->Stats();
  EXPECT_EQ(st.bytes_written, written);
  EXPECT_EQ(st.puts_deduplicated, 1u);
  EXPECT_EQ(st.blocks, 1u);
}

TEST_P(BlockStoreTest, ConcurrentPutsOfOneKeyCompleteTogether) {
  auto store = Open(MakeOptions());
  ASSERT_TRUE(store);
  std::vector<std::byte> payload = MakePayload(KeyFor(3), 200'000);
  std::vector<std::future<Status>> futures;
  for (int i = 0; i < 8; ++i)
    futures.push_back(store->Put(KeyFor(3), MakeHeader(KeyFor(3)), payload));
  for (auto& f : futures) EXPECT_TRUE(f.get().ok());
  EXPECT_EQ(store->Stats().blocks, 1u);
  EXPECT_EQ(store->Stats().bytes_written, 200'000u);
  ExpectBlock(*store, KeyFor(3), 200'000);
}

TEST_P(BlockStoreTest, EraseRemovesTheBlockAndIsIdempotent) {
  auto store = Open(MakeOptions());
  ASSERT_TRUE(store);
  ASSERT_TRUE(PutSync(*store, KeyFor(1), 10'000).ok());
  ASSERT_TRUE(PutSync(*store, KeyFor(2), 10'000).ok());
  EXPECT_TRUE(store->Erase(KeyFor(1)).ok());
  EXPECT_TRUE(store->Erase(KeyFor(1)).ok());
  EXPECT_FALSE(store->Contains(KeyFor(1)));
  std::vector<std::byte> buf(10'000);
  EXPECT_EQ(store->Get(KeyFor(1), buf).status.code(), StatusCode::kNotFound);
  ExpectBlock(*store, KeyFor(2), 10'000);
  ASSERT_TRUE(store->Close().ok());
  store = Open(MakeOptions());
  ASSERT_TRUE(store);
  EXPECT_FALSE(store->Contains(KeyFor(1)));
  ExpectBlock(*store, KeyFor(2), 10'000);
}

TEST_P(BlockStoreTest, ReopenFindsEveryBlock) {
  Options o = MakeOptions();
  o.segment_bytes = 1 << 20;  // several segments
  std::vector<size_t> sizes;
  {
    auto store = Open(o);
    ASSERT_TRUE(store);
    std::vector<std::future<Status>> futures;
    std::vector<std::vector<std::byte>> payloads;
    for (size_t i = 0; i < 60; ++i) {
      sizes.push_back(1000 + i * 4001);
      payloads.push_back(MakePayload(KeyFor(i), sizes.back()));
      futures.push_back(store->Put(KeyFor(i), MakeHeader(KeyFor(i)), payloads.back()));
    }
    for (auto& f : futures) ASSERT_TRUE(f.get().ok());
    // No Close: the destructor closes.
  }
  auto store = Open(o);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->Stats().blocks, sizes.size());
  EXPECT_GT(store->Stats().segments, 1u);
  for (size_t i = 0; i < sizes.size(); ++i) ExpectBlock(*store, KeyFor(i), sizes[i]);
  // And it keeps taking writes after the reopen.
  ASSERT_TRUE(PutSync(*store, KeyFor(1000), 12345).ok());
  ExpectBlock(*store, KeyFor(1000), 12345);
}

TEST_P(BlockStoreTest, ASecondOpenOfTheDirectoryIsRefused) {
  auto store = Open(MakeOptions());
  ASSERT_TRUE(store);
  auto second = BlockStore::Open(MakeOptions());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kBusy) << second.status().ToString();
  ASSERT_TRUE(store->Close().ok());
  auto third = BlockStore::Open(MakeOptions());
  EXPECT_TRUE(third.ok()) << third.status().ToString();
}

TEST_P(BlockStoreTest, MetaAndSessionsAreDurableAndListed) {
  {
    auto store = Open(MakeOptions());
    ASSERT_TRUE(store);
    EXPECT_EQ(store->GetMeta("fingerprint").status().code(), StatusCode::kNotFound);
    ASSERT_TRUE(store->PutMeta("fingerprint", std::string("\0\1\2", 3)).ok());
    ASSERT_TRUE(store->PutMeta("gone", "x").ok());
    ASSERT_TRUE(store->DeleteMeta("gone").ok());
    ASSERT_TRUE(store->PutSession("beta", "manifest-b").ok());
    ASSERT_TRUE(store->PutSession("alpha", "manifest-a").ok());
    ASSERT_TRUE(store->PutSession("tmp", "x").ok());
    ASSERT_TRUE(store->DeleteSession("tmp").ok());
    EXPECT_EQ(store->PutSession("", "x").code(), StatusCode::kInvalidArgument);
    // Meta keys of the caller never collide with the store's own.
    ASSERT_TRUE(store->PutMeta(format::kMetaFormatVersionKey, "mine").ok());
  }
  auto store = Open(MakeOptions());
  ASSERT_TRUE(store);
  auto fp = store->GetMeta("fingerprint");
  ASSERT_TRUE(fp.ok());
  EXPECT_EQ(*fp, std::string("\0\1\2", 3));
  EXPECT_EQ(store->GetMeta("gone").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(*store->GetMeta(format::kMetaFormatVersionKey), "mine");
  auto names = store->ListSessions();
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, (std::vector<std::string>{"alpha", "beta"}));
  EXPECT_EQ(*store->GetSession("beta"), "manifest-b");
  EXPECT_EQ(store->GetSession("tmp").status().code(), StatusCode::kNotFound);
}

TEST_P(BlockStoreTest, LargeHeadersRoundTrip) {
  auto store = Open(MakeOptions());
  ASSERT_TRUE(store);
  ASSERT_TRUE(PutSync(*store, KeyFor(1), 30'000, /*n_tokens=*/3000).ok());  // 12 KiB header
  ExpectBlock(*store, KeyFor(1), 30'000, 3000);
  ASSERT_TRUE(store->Close().ok());
  store = Open(MakeOptions());
  ASSERT_TRUE(store);
  ExpectBlock(*store, KeyFor(1), 30'000, 3000);
}

TEST_P(BlockStoreTest, RecordsThatCannotFitAreRejected) {
  Options o = MakeOptions();
  o.segment_bytes = 1 << 20;
  auto store = Open(o);
  ASSERT_TRUE(store);
  EXPECT_EQ(PutSync(*store, KeyFor(1), 1 << 20).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PutSync(*store, KeyFor(2), 10, /*n_tokens=*/20'000).code(),
            StatusCode::kInvalidArgument);
  EXPECT_FALSE(store->Contains(KeyFor(1)));
  EXPECT_TRUE(PutSync(*store, KeyFor(3), 1000).ok());
}

TEST_P(BlockStoreTest, FlushCompletesEveryEarlierPut) {
  auto store = Open(MakeOptions());
  ASSERT_TRUE(store);
  std::atomic<int> ok{0};
  std::vector<std::byte> payload(20'000, std::byte{1});
  for (uint64_t i = 0; i < 200; ++i) {
    store->Put(KeyFor(i), {}, payload, [&](Status s) { ok += s.ok(); });
  }
  ASSERT_TRUE(store->Flush().ok());
  EXPECT_EQ(ok.load(), 200);
  EXPECT_EQ(store->Stats().blocks, 200u);
  EXPECT_EQ(store->Stats().queued_write_bytes, 0u);
}

TEST_P(BlockStoreTest, ACallbackMayPutAgain) {
  auto store = Open(MakeOptions());
  ASSERT_TRUE(store);
  std::vector<std::byte> payload(5000, std::byte{7});
  std::promise<Status> second;
  store->Put(KeyFor(1), {}, payload, [&](Status s) {
    EXPECT_TRUE(s.ok());
    store->Put(KeyFor(2), {}, payload, [&](Status s2) { second.set_value(s2); });
  });
  EXPECT_TRUE(second.get_future().get().ok());
  EXPECT_TRUE(store->Contains(KeyFor(2)));
}

TEST_P(BlockStoreTest, CallsAfterCloseAreRefused) {
  auto store = Open(MakeOptions());
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->Close().ok());
  EXPECT_TRUE(store->Close().ok());
  EXPECT_EQ(PutSync(*store, KeyFor(1), 100).code(), StatusCode::kCancelled);
  std::vector<std::byte> buf(100);
  EXPECT_EQ(store->Get(KeyFor(1), buf).status.code(), StatusCode::kCancelled);
}

INSTANTIATE_TEST_SUITE_P(Filesystems, BlockStoreTest,
                         ::testing::Values(FsParam{"DiskAuto", false, IoMode::kAuto},
                                           FsParam{"DiskDirect", false, IoMode::kDirect},
                                           FsParam{"DiskBuffered", false, IoMode::kBuffered},
                                           FsParam{"TmpfsAuto", true, IoMode::kAuto}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- not per filesystem ----

TEST(BlockStoreOptionsTest, BadOptionsAreInvalidArgument) {
  Options o;
  EXPECT_EQ(BlockStore::Open(o).status().code(), StatusCode::kInvalidArgument);  // no path
  o.path = "/nonexistent/x";
  o.segment_bytes = 1000;
  EXPECT_EQ(BlockStore::Open(o).status().code(), StatusCode::kInvalidArgument);
  o.segment_bytes = 1 << 20;
  o.capacity_bytes = 1 << 20;
  EXPECT_EQ(BlockStore::Open(o).status().code(), StatusCode::kInvalidArgument);
  o.capacity_bytes = 4 << 20;
  o.read_queue_depth = 0;
  EXPECT_EQ(BlockStore::Open(o).status().code(), StatusCode::kInvalidArgument);
}

TEST(BlockStoreOpenTest, MissingDirectoryWithoutCreateIsNotFound) {
  TempDir dir(storage::testing::RealDiskTestRoot(), "open");
  Options o;
  o.path = dir.Sub("absent");
  o.create_if_missing = false;
  o.logger = NullLogger();
  EXPECT_EQ(BlockStore::Open(o).status().code(), StatusCode::kNotFound);
}

TEST(BlockStoreOpenTest, FallsBackToBufferedIoWhereODirectIsRefused) {
  TempDir dir(storage::testing::RealDiskTestRoot(), "fallback");
  auto fs = std::make_shared<FaultInjectionFileSystem>();
  fs->InjectFault(FaultOp::kOpenDirect, EINVAL);  // as tmpfs before Linux 6.6 answers
  Options o;
  o.path = dir.Sub("cache");
  o.file_system = fs;
  o.logger = NullLogger();
  o.segment_bytes = 1 << 20;
  o.capacity_bytes = 8 << 20;
  auto store = BlockStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_FALSE((*store)->Stats().direct_io);
  ASSERT_TRUE(PutSync(**store, KeyFor(1), 300'000).ok());
  ExpectBlock(**store, KeyFor(1), 300'000);
  ASSERT_TRUE((*store)->Close().ok());

  o.io_mode = IoMode::kDirect;  // demanded but unavailable: a clear error
  auto direct = BlockStore::Open(o);
  EXPECT_EQ(direct.status().code(), StatusCode::kInvalidArgument) << direct.status().ToString();
}

}  // namespace
}  // namespace kvstash::storage
