// IndexDb: the block store's RocksDB, behind a narrow interface so no other file includes RocksDB
// headers. Column families: `blocks` (index key -> index value), `sessions` (name -> manifest),
// `meta` (format version, segment records, the caller's metadata). Encoding lives in format.h.
//
// Thread-safe (RocksDB is); an IndexBatch is not.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/logging.h"
#include "base/status.h"
#include "storage/block_key.h"
#include "storage/format.h"

namespace kvstash::storage {

class IndexDb;

// A set of index mutations applied atomically by IndexDb::Write.
class IndexBatch {
 public:
  explicit IndexBatch(const IndexDb& db);
  ~IndexBatch();
  IndexBatch(const IndexBatch&) = delete;
  IndexBatch& operator=(const IndexBatch&) = delete;

  void PutBlock(const BlockKey& key, const format::IndexEntry& entry);
  void DeleteBlock(const BlockKey& key);
  // Deletes an entry by its stored key bytes (for keys that do not decode).
  void DeleteRawBlock(std::string_view raw_key);
  void PutSegment(uint64_t segment_id, const format::SegmentRecord& record);
  void DeleteSegment(uint64_t segment_id);
  size_t count() const;

 private:
  friend class IndexDb;
  struct Rep;
  const IndexDb& db_;
  std::unique_ptr<Rep> rep_;
};

class IndexDb {
 public:
  struct Options {
    uint64_t cache_bytes = 8ull << 20;
  };

  // Opens or creates the database in `dir`. Corruption when RocksDB finds damage it cannot
  // open past (MANIFEST, CURRENT, ...).
  static Result<std::unique_ptr<IndexDb>> Open(const std::string& dir, const Options& options);
  ~IndexDb();

  // Visits every entry of `blocks` in key order. Returns the iterator's status: Corruption when
  // a damaged table is met (entries visited before stay visited).
  Status ForEachBlock(
      const std::function<void(std::string_view key, std::string_view value)>& fn) const;
  // Visits every segment record in `meta`.
  Status ForEachSegmentRecord(
      const std::function<void(uint64_t segment_id, std::string_view value)>& fn) const;

  Status Write(IndexBatch& batch, bool sync);
  // Makes every write so far durable.
  Status SyncWal();
  // Moves memtables into table files so reopening does not replay the WAL.
  Status FlushMemtables();
  // Drops every block entry and segment record (a rebuild starts from scratch).
  Status ResetBlocks();
  // Clears a latched background error (after ENOSPC) so writes can be retried.
  Status Resume();

  // Raw keys in `meta` (callers add the prefixes of format.h).
  Result<std::string> GetMeta(std::string_view key) const;
  Status PutMeta(std::string_view key, std::string_view value);  // synced
  Status DeleteMeta(std::string_view key);                       // synced

  Result<std::string> GetSession(std::string_view name) const;
  Status PutSession(std::string_view name, std::string_view manifest);  // synced
  Status DeleteSession(std::string_view name);                          // synced
  Result<std::vector<std::string>> ListSessions() const;

  // Table files plus memtables, approximately.
  uint64_t ApproximateBytes() const;

 private:
  friend class IndexBatch;
  struct Rep;
  IndexDb();
  std::unique_ptr<Rep> rep_;
};

}  // namespace kvstash::storage
