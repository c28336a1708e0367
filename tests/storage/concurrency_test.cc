// Several threads putting and batch-reading at once, with eviction running underneath: every hit
// must carry exactly the bytes that were put, and nothing may be reported corrupt.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <random>
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
using storage::testing::TempDir;

size_t SizeOf(uint64_t i) { return 4096 + (i * 7919) % (300 << 10); }

TEST(ConcurrencyTest, ParallelPutsAndGetManyUnderEvictionNeverReturnWrongBytes) {
  TempDir dir(storage::testing::RealDiskTestRoot(), "concurrency");
  ASSERT_TRUE(dir.ok());
  Options o;
  o.path = dir.Sub("cache");
  o.segment_bytes = 2 << 20;
  o.capacity_bytes = 12 << 20;  // far less than is written: eviction runs throughout
  o.read_queue_depth = 16;
  o.logger = NullLogger();
  auto opened = BlockStore::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  BlockStore& store = **opened;

  constexpr int kWriters = 3, kReaders = 3, kPerWriter = 150;
  std::atomic<uint64_t> acked{0};
  std::mutex acked_mu;
  std::vector<uint64_t> acked_ids;
  std::atomic<bool> writers_done{false};
  std::atomic<uint64_t> hits{0}, wrong{0}, reads{0};

  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int j = 0; j < kPerWriter; ++j) {
        const uint64_t id = static_cast<uint64_t>(w) * 100000 + static_cast<uint64_t>(j);
        auto payload = MakePayload(KeyFor(id), SizeOf(id));
        store.Put(KeyFor(id), MakeHeader(KeyFor(id)), payload, [&, id](Status s) {
          if (!s.ok()) return;
          acked++;
          std::lock_guard lock(acked_mu);
          acked_ids.push_back(id);
        });
      }
    });
  }
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&, r] {
      std::mt19937_64 rng(static_cast<uint64_t>(r));
      while (!writers_done || reads < 2000) {
        std::vector<uint64_t> ids;
        {
          std::lock_guard lock(acked_mu);
          if (acked_ids.empty()) continue;
          for (int k = 0; k < 8; ++k) ids.push_back(acked_ids[rng() % acked_ids.size()]);
        }
        std::vector<BlockKey> keys;
        std::vector<AlignedBuffer> bufs;
        std::vector<std::span<std::byte>> dsts;
        for (uint64_t id : ids) {
          keys.push_back(KeyFor(id));
          bufs.emplace_back(BlockStore::ReadBufferBytes(SizeOf(id)));
        }
        for (auto& b : bufs) dsts.push_back(b.span());
        std::vector<ReadResult> results(keys.size());
        if (!store.GetMany(keys, dsts, results).ok()) {
          wrong++;
          continue;
        }
        for (size_t k = 0; k < keys.size(); ++k) {
          reads++;
          if (!results[k].hit()) {
            // Only eviction may take an acknowledged block away.
            if (results[k].status.code() != StatusCode::kNotFound) wrong++;
            continue;
          }
          hits++;
          if (results[k].payload_bytes != SizeOf(ids[k]) ||
              !PayloadMatches(keys[k], {bufs[k].data(), results[k].payload_bytes}) ||
              results[k].header != MakeHeader(keys[k])) {
            wrong++;
          }
        }
      }
    });
  }
  for (int w = 0; w < kWriters; ++w) threads[static_cast<size_t>(w)].join();
  ASSERT_TRUE(store.Flush().ok());
  writers_done = true;
  for (size_t t = kWriters; t < threads.size(); ++t) threads[t].join();

  StoreStats st = store.Stats();
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_GT(hits.load(), 0u);
  EXPECT_EQ(acked.load(), static_cast<uint64_t>(kWriters * kPerWriter));
  EXPECT_GT(st.evicted_segments, 0u);
  EXPECT_EQ(st.corrupt_records, 0u);
  EXPECT_EQ(st.read_errors, 0u);
  EXPECT_LE(st.disk_bytes, st.capacity_bytes);
  ASSERT_TRUE(store.Close().ok());
}

}  // namespace
}  // namespace kvstash::storage
