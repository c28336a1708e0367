// WriteBehind: the bounded queue between the engine thread and the disk tier. Enqueue copies the
// block and returns at once; a background thread hands queued blocks to BlockStore::Put (which
// may block on the store's own back-pressure without holding up the engine). When the queue is
// full the block is dropped from persistence and counted: persistence never blocks generation.
// A Put the store fails is counted too; the first failure is logged (DefaultLogger, warn).
// Thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "base/status.h"
#include "storage/block_key.h"

namespace kvstash::storage {
class BlockStore;
}

namespace kvstash::cache {

class WriteBehind {
 public:
  struct Counters {
    uint64_t depth = 0, bytes = 0, queued = 0, dropped = 0, written = 0, failed = 0;
  };

  WriteBehind(storage::BlockStore& store, size_t max_blocks, uint64_t max_bytes);
  // Drains the queue first.
  ~WriteBehind();
  WriteBehind(const WriteBehind&) = delete;
  WriteBehind& operator=(const WriteBehind&) = delete;

  // Copies the block into the queue; false (and counted) when the queue is full.
  bool Enqueue(const storage::BlockKey& key, const storage::BlockHeader& header,
               std::span<const std::byte> payload);
  // Waits until every block enqueued before the call has been stored (or failed), then flushes
  // the store.
  Status Flush();
  Counters counters() const;

 private:
  struct Item {
    storage::BlockKey key;
    storage::BlockHeader header;
    std::vector<std::byte> payload;
  };
  void Loop();

  storage::BlockStore& store_;
  const size_t max_blocks_;
  const uint64_t max_bytes_;
  mutable std::mutex mu_;
  std::condition_variable cv_;       // work for the thread / stop
  std::condition_variable idle_cv_;  // queue drained and no Put outstanding
  std::deque<Item> queue_;
  std::vector<std::vector<std::byte>> spare_;  // recycled payload buffers
  uint64_t queued_bytes_ = 0;
  uint64_t outstanding_ = 0;  // taken from the queue, Put not completed yet
  bool stop_ = false;
  Counters counters_;
  std::thread thread_;
};

}  // namespace kvstash::cache
