// BlockStore: the persistent disk tier of the prefix cache. It stores opaque block payloads
// (KiB to MiB) under 128-bit keys, each with a small BlockHeader, and gives them back intact or
// not at all.
//
// Payloads live in large append-only segment files written and read through io_uring with
// O_DIRECT (buffered where the filesystem lacks it); the index (key -> segment, offset, length,
// checksum) and the store's metadata live in RocksDB. A payload is durable before its index entry
// is written and its checksum is verified on every read: torn writes, bit rot and crashes become
// misses, never wrong bytes. Space is bounded by a byte budget; eviction frees whole segments,
// least recently used first. The on-disk format is described in docs/storage-format.md.
//
// Memory: the block index is also kept in memory (about 120 bytes per block), so lookups,
// Contains and dedup never touch RocksDB; staging buffers for writes are pooled up to about
// Options::max_queued_write_bytes.
//
// Thread safety: every method may be called concurrently from any number of threads, except
// Close(), which must not race with other calls (and nothing may be called after it). Put
// completion callbacks run on the store's commit thread: they must be quick, must not block, and
// must not call Flush() or Close().
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "storage/block_key.h"
#include "storage/options.h"

namespace kvstash::storage {

// Called once per Put with OK (durable and indexed, or already stored) or the error.
using PutCallback = std::function<void(Status)>;

// Outcome of reading one key.
struct ReadResult {
  // OK: a hit, header and payload verified. NotFound: not stored. Corruption: the stored record
  // failed verification and was dropped. IOError: the read failed (the entry is kept).
  // InvalidArgument: the destination buffer is smaller than the payload.
  Status status = Status::NotFound("not read");
  BlockHeader header;          // valid on a hit
  uint64_t payload_bytes = 0;  // bytes written at the start of the destination on a hit

  bool hit() const { return status.ok(); }
};

struct StoreStats {
  // Contents.
  uint64_t blocks = 0;      // indexed blocks
  uint64_t live_bytes = 0;  // payload bytes of indexed blocks
  uint64_t disk_bytes = 0;  // bytes of segment files counted against the budget
  uint64_t capacity_bytes = 0;
  uint64_t segment_bytes = 0;  // Options::segment_bytes (what one roll-over adds to disk_bytes)
  uint64_t segments = 0;
  uint64_t index_bytes = 0;  // RocksDB SST + WAL + memtables (approximate)
  // Writes.
  uint64_t puts = 0;               // Put calls
  uint64_t puts_deduplicated = 0;  // Puts of a key already stored or queued (no I/O)
  uint64_t puts_failed = 0;
  uint64_t bytes_written = 0;  // payload bytes made durable
  uint64_t queued_write_bytes = 0;
  uint64_t index_commits = 0;        // RocksDB write batches for new blocks
  uint64_t index_commit_cpu_ns = 0;  // thread CPU time spent building and writing them
  // Reads.
  uint64_t gets = 0;  // keys asked for by GetMany
  uint64_t hits = 0;
  uint64_t misses = 0;           // not stored
  uint64_t read_errors = 0;      // EIO and short reads (served as misses)
  uint64_t corrupt_records = 0;  // failed verification on read; dropped
  uint64_t bytes_read = 0;
  // Maintenance.
  uint64_t evicted_segments = 0;
  uint64_t evicted_blocks = 0;
  uint64_t recovered_records = 0;      // unindexed but valid records re-indexed at open
  uint64_t dropped_index_entries = 0;  // entries dropped at open (missing segment, bad value)
  uint64_t index_rebuilds = 0;         // opens that rebuilt the index from segment files
  // State.
  bool direct_io = false;      // segment files use O_DIRECT
  bool io_uring = false;       // batched I/O goes through io_uring (else synchronous)
  bool writes_paused = false;  // writes are failing fast (no space / index error)
  std::string last_error;      // the latched error that paused writes, empty when none
};

class BlockStore {
 public:
  // Opens (or creates) the store in options.path. Fails with Busy when another store holds the
  // directory, Incompatible when its format version is unknown, InvalidArgument on bad options.
  // Recovers from a crash: blocks whose index entries were written are found again; an
  // unfinished segment tail is re-indexed where its records verify and dropped where not.
  static Result<std::unique_ptr<BlockStore>> Open(const Options& options);

  // The destination capacity GetMany needs for a zero-copy read of a payload of this size (a
  // 4 KiB multiple). Smaller (or unaligned) destinations still work through a bounce buffer.
  static size_t ReadBufferBytes(uint64_t payload_bytes);

  // Closes the store if Close() was not called (errors are logged).
  virtual ~BlockStore() = default;

  // Stores `payload` with `header` under `key`, asynchronously. The payload is copied before
  // Put returns. `done` runs once the block is durable and indexed (OK), or with the error:
  // ResourceExhausted when writes are paused for lack of space, InvalidArgument for a header or
  // payload that cannot fit a segment, Cancelled when erased or closed first. Putting a key that
  // is already stored is a no-op completing with OK; putting a key that is still queued
  // completes when the queued Put does. Blocks (back-pressure) while max_queued_write_bytes are
  // queued.
  void Put(const BlockKey& key, const BlockHeader& header, std::span<const std::byte> payload,
           PutCallback done) {
    DoPut(key, header, payload, std::move(done));
  }
  // The same, with a future instead of a callback.
  std::future<Status> Put(const BlockKey& key, const BlockHeader& header,
                          std::span<const std::byte> payload);

  // Reads many blocks in one batch: keys[i] into destinations[i], outcome in results[i]. All
  // three spans must have the same size (else InvalidArgument and nothing is read). Reads are
  // submitted together with up to read_queue_depth in flight. A destination aligned to 4 KiB with
  // at least ReadBufferBytes(payload) bytes is filled by the device directly. Updates the
  // recency of the segments hit (in memory; no index write).
  virtual Status GetMany(std::span<const BlockKey> keys,
                         std::span<const std::span<std::byte>> destinations,
                         std::span<ReadResult> results) = 0;
  // One key; a convenience over GetMany.
  ReadResult Get(const BlockKey& key, std::span<std::byte> destination);

  // Whether `key` is indexed (a Put that has not completed yet is not).
  virtual bool Contains(const BlockKey& key) const = 0;
  // The payload size of an indexed key.
  virtual std::optional<uint64_t> PayloadBytes(const BlockKey& key) const = 0;
  // Every indexed key (for tools and tests; O(blocks)).
  virtual std::vector<BlockKey> ListKeys() const = 0;
  // Removes `key` (OK when absent). A queued Put of the key completes with Cancelled.
  virtual Status Erase(const BlockKey& key) = 0;

  // Returns once every Put issued before the call has completed and everything it made durable
  // is indexed durably (RocksDB WAL synced).
  virtual Status Flush() = 0;
  virtual StoreStats Stats() const = 0;
  // Flushes, stops the I/O threads, persists segment recency, closes the index and releases the
  // directory lock. Idempotent.
  virtual Status Close() = 0;

  // Small durable metadata for the layers above (model fingerprints, settings). Values are
  // opaque bytes; writes are durable when they return. GetMeta: NotFound when absent.
  virtual Status PutMeta(std::string_view key, std::string_view value) = 0;
  virtual Result<std::string> GetMeta(std::string_view key) const = 0;
  virtual Status DeleteMeta(std::string_view key) = 0;

  // Session manifests by name, opaque bytes; durable when they return. Writing a manifest does
  // not make the blocks it names durable: call Flush() first.
  virtual Status PutSession(std::string_view name, std::string_view manifest) = 0;
  virtual Result<std::string> GetSession(std::string_view name) const = 0;
  virtual Result<std::vector<std::string>> ListSessions() const = 0;
  virtual Status DeleteSession(std::string_view name) = 0;

 protected:
  virtual void DoPut(const BlockKey& key, const BlockHeader& header,
                     std::span<const std::byte> payload, PutCallback done) = 0;
};

}  // namespace kvstash::storage
