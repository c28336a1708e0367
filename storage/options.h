// Options for storage::BlockStore: one struct, every field with its default, validated by Open.
// A plain value; copy it freely.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "base/logging.h"
#include "base/status.h"

namespace kvstash::storage {

class FileSystem;

enum class IoMode : uint8_t {
  kAuto,      // O_DIRECT where the filesystem supports it, buffered I/O where it does not (tmpfs)
  kDirect,    // O_DIRECT or fail Open with InvalidArgument
  kBuffered,  // always through the page cache
};

struct Options {
  // Cache directory; created when missing (its parent must exist). Required.
  std::string path;
  // Default true. When false, Open fails with NotFound if `path` holds no store.
  bool create_if_missing = true;

  // Byte budget for segment files. When a new segment would exceed it, whole segments are
  // evicted, least recently used first. Must be at least 4 * segment_bytes (one segment being
  // written, up to two being sealed, one to evict). Default 64 GiB.
  uint64_t capacity_bytes = 64ull << 30;
  // Size of one append-only segment file; a multiple of 4 KiB, at least 64 KiB. A payload plus
  // its header must fit in one segment. Default 256 MiB.
  uint64_t segment_bytes = 256ull << 20;

  // Default kAuto.
  IoMode io_mode = IoMode::kAuto;
  // Reads in flight per GetMany call (1..4096). Default 64.
  unsigned read_queue_depth = 64;
  // Write requests in flight in the writer (1..4096). Records placed back to back share a
  // request (one writev); requests are cut at 4 MiB-aligned offsets of the segment file, so a
  // record may travel in two or more of them. Default 32.
  unsigned write_queue_depth = 32;
  // Bytes of staging memory: payloads accepted by Put whose write has not completed yet. Put
  // blocks while the total is above this (back-pressure); idle staging buffers up to this size
  // are kept for reuse. At least 1 MiB. Default 256 MiB.
  uint64_t max_queued_write_bytes = 256ull << 20;
  // Group commit: while writes keep completing, the commit thread waits up to this long for more
  // before it makes them durable (one fdatasync per segment) and indexes them in one batch. Each
  // fdatasync flushes the device's write cache, which stalls the writes behind it (badly so on
  // virtual disks), so fewer of them means more throughput; the cost is Put completion latency
  // while the store is busy (records written but not yet committed are recovered from the segment
  // tail after a crash, as before). A Flush, a segment roll-over or the writer running out of work
  // commits at once, so an idle store adds no delay, and a streaming one commits at least once per
  // segment. 0: commit whatever has completed at once. 0..10000. Default 500 ms.
  int64_t max_commit_delay_ms = 500;
  // Prepare the next segment files (create, reserve, header) on a background thread once the
  // active segment is half full, up to 3 at a time sharing one directory sync, so a roll-over
  // neither stalls the writes in flight nor costs a device cache flush of its own. Only within
  // capacity_bytes (one segment of room is kept spare); otherwise, or when a preparation failed,
  // the segment is made at the roll-over as without it. Default true.
  bool prepare_segments = true;
  // After a write fails for lack of space (or the index cannot be written), Put fails fast with
  // ResourceExhausted; one Put per interval is let through to probe whether space has returned.
  // Default 1000 ms.
  int64_t write_retry_interval_ms = 1000;

  // When RocksDB reports corruption on open, move the index aside to `index.corrupt` and
  // rebuild the block index by scanning segment files (sessions and meta are lost). When false,
  // Open fails with Corruption instead. Default true.
  bool rebuild_index_on_corruption = true;
  // RocksDB block cache for the index. Default 8 MiB.
  uint64_t index_cache_bytes = 8ull << 20;

  // File layer for segment files and the lock file. Default FileSystem::Posix().
  std::shared_ptr<FileSystem> file_system;
  // Default DefaultLogger().
  std::shared_ptr<Logger> logger;

  // Testing only: called at named points of the write path ("segment_synced" after a batch's
  // payloads are durable and before its index entries are written; "index_committed" after).
  // Crash tests kill the process there.
  std::function<void(std::string_view point)> test_sync_point;

  Status Validate() const;
};

}  // namespace kvstash::storage
