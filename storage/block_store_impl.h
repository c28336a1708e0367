// BlockStoreImpl: the one BlockStore implementation. Private to storage/; split across
// block_store.cc (small calls, Close, metadata), block_store_open.cc (open and recovery),
// block_store_write.cc (Put, the writer and commit threads, eviction) and block_store_read.cc
// (GetMany).
//
// Threads and locks:
//  - Callers run Put/GetMany/Erase/... concurrently.
//  - The writer thread owns the active segment: it pulls Puts from queue_, places them in the
//    active segment, submits the writes on its io_uring, and hands completed writes, in
//    submission order, to the commit thread.
//  - The commit thread makes a batch durable (fdatasync of the segments it touched), then writes
//    its index entries in one RocksDB WriteBatch, publishes them in memory, and runs callbacks.
//    While the writer streams it lets a batch grow for up to Options::max_commit_delay_ms.
//  - mu_ (shared) guards the in-memory index, the pending map and the segment table. GetMany
//    holds it shared only long enough to look keys up.
//  - index_write_mu_ serializes every mutation of the index (commit, erase, eviction, dropping a
//    corrupt record) so RocksDB and memory change in the same order. Order: index_write_mu_
//    before mu_; queue_mu_ and commit_mu_ are leaves.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "storage/aligned_buffer.h"
#include "storage/block_store.h"
#include "storage/file.h"
#include "storage/format.h"
#include "storage/index_db.h"

namespace kvstash::storage {

struct Segment {
  enum class State : uint8_t { kActive, kSealing, kSealed };

  uint64_t id = 0;
  std::string path;
  std::unique_ptr<File> file;
  uint64_t created_us = 0;
  std::atomic<int64_t> last_access_us{0};
  std::atomic<bool> broken{false};  // a write or sync failed: no more appends here

  // Guarded by BlockStoreImpl::mu_.
  State state = State::kActive;
  uint64_t allocated_bytes = 0;  // counted against the budget
  uint64_t end_offset = 0;       // sealed: bytes holding records
  uint64_t live_blocks = 0;
  uint64_t live_bytes = 0;
  std::vector<BlockKey> keys;  // every key indexed here (erased ones too; checked on eviction)

  // Writer thread only.
  uint64_t write_offset = 0;
};

struct PendingWrite {
  BlockKey key;
  AlignedBuffer record;  // [header area][payload, zero-padded]
  uint64_t record_bytes = 0;
  format::IndexEntry entry;  // segment_id and offset set by the writer
  bool probe = false;        // let through while writes are paused, to test for space
  // Guarded by mu_ (and read by the committer under index_write_mu_).
  std::vector<PutCallback> callbacks;
  bool erased = false;
  // Writer / committer.
  std::shared_ptr<Segment> segment;
  bool io_done = false;
  Status status;
  // Writer thread only: a record may be cut across write requests (see WriteGroup).
  uint64_t issued_bytes = 0;  // bytes of the record handed to requests so far
  uint32_t parts_in_flight = 0;
};

// One write request of the writer: a contiguous byte range of one segment that never crosses a
// kWriteChunkBytes boundary of the file, made of whole records or pieces of them (one iovec
// each), back to back.
struct WriteGroup {
  Segment* segment = nullptr;
  uint64_t offset = 0;  // in the segment file
  uint64_t bytes = 0;
  std::vector<PendingWrite*> writes;  // every record with a piece in this request
  std::vector<iovec> iov;
};

// What flows from Put to the writer (and, in submission order, from the writer to the
// committer): a write, a flush waiter, or a segment to seal once its writes are committed.
struct WorkItem {
  std::unique_ptr<PendingWrite> write{};
  std::shared_ptr<std::promise<Status>> flush{};
  std::shared_ptr<Segment> seal{};

  bool ready() const { return !write || write->io_done; }
};

struct StoreCounters {
  std::atomic<uint64_t> puts{0}, puts_deduplicated{0}, puts_failed{0}, bytes_written{0};
  std::atomic<uint64_t> index_commits{0}, index_commit_cpu_ns{0};
  std::atomic<uint64_t> gets{0}, hits{0}, misses{0}, read_errors{0}, corrupt_records{0};
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<uint64_t> evicted_segments{0}, evicted_blocks{0};
  std::atomic<uint64_t> recovered_records{0}, dropped_index_entries{0}, index_rebuilds{0};
};

class BlockStoreImpl final : public BlockStore {
 public:
  explicit BlockStoreImpl(Options options);
  ~BlockStoreImpl() override;

  Status OpenImpl();

  Status GetMany(std::span<const BlockKey> keys, std::span<const std::span<std::byte>> destinations,
                 std::span<ReadResult> results) override;
  bool Contains(const BlockKey& key) const override;
  std::optional<uint64_t> PayloadBytes(const BlockKey& key) const override;
  std::vector<BlockKey> ListKeys() const override;
  Status Erase(const BlockKey& key) override;
  Status Flush() override;
  StoreStats Stats() const override;
  Status Close() override;

  Status PutMeta(std::string_view key, std::string_view value) override;
  Result<std::string> GetMeta(std::string_view key) const override;
  Status DeleteMeta(std::string_view key) override;
  Status PutSession(std::string_view name, std::string_view manifest) override;
  Result<std::string> GetSession(std::string_view name) const override;
  Result<std::vector<std::string>> ListSessions() const override;
  Status DeleteSession(std::string_view name) override;

 protected:
  void DoPut(const BlockKey& key, const BlockHeader& header, std::span<const std::byte> payload,
             PutCallback done) override;

 private:
  using IndexMap = std::unordered_map<BlockKey, format::IndexEntry, BlockKeyHash>;

  // ---- open (block_store_open.cc) ----
  struct OpenState;
  struct ScannedRecord {
    BlockKey key;
    format::IndexEntry entry;
  };
  Status OpenIndex(OpenState& st);
  // Reads the format version, segment records and block entries. Corruption when RocksDB finds
  // damage.
  Status LoadIndex(OpenState& st);
  Status MoveIndexAside();
  // Matches segment files with the loaded index, recovers unfinished tails, drops what does not
  // verify, and persists the result.
  Status LoadSegments(OpenState& st);
  // Reads records from `offset` on; stops at the first one that does not verify. Returns the
  // offset where the valid records end.
  uint64_t ScanSegment(Segment& seg, uint64_t offset, uint64_t limit, bool verify_payload,
                       std::vector<ScannedRecord>* out);
  // Decides use_direct_ from io_mode and what the filesystem accepts.
  Status ProbeDirectIo();
  Result<std::unique_ptr<File>> OpenSegmentFile(const std::string& path, bool create);
  std::string SegmentPath(uint64_t id) const;

  // ---- write path (block_store_write.cc) ----
  void WriterLoop();
  void CommitLoop();
  void CommitBatch(std::vector<WorkItem>& batch);
  // Makes room in the active segment for `w`, rolling over (and evicting) as needed.
  Status PlaceWrite(PendingWrite& w, std::deque<WorkItem>& order);
  bool NeedsRoll(const PendingWrite& w) const;
  void Roll(std::deque<WorkItem>& order);
  Status CreateSegment();
  // A new segment file, ready for records: created, reserved (fallocate), header written, extents
  // pinned, directory synced. On failure the file is removed.
  struct NewSegmentFile {
    uint64_t id = 0;
    std::string path;
    std::unique_ptr<File> file;
    uint64_t created_us = 0;
  };
  // `sync_dir`: also make the file's name durable (a batch of prepared segments shares one
  // directory sync instead).
  Result<NewSegmentFile> MakeSegmentFile(uint64_t id, bool sync_dir);
  // Closes and removes a prepared segment that will not be used.
  void DiscardSegmentFile(NewSegmentFile& f);
  // Writer thread: asks the preparer for the next segment once the active one is half full.
  void MaybePrepareNextSegment();
  void PreparerLoop();
  // Keeps a new segment's extent tree from collapsing and regrowing under the writes (see the
  // definition).
  Status PinExtents(File& file);
  void EnsureBudget(uint64_t incoming_bytes);
  // Requires index_write_mu_. Drops the segment's index entries and record in one batch, then
  // its file.
  Status RemoveSegmentLocked(const std::shared_ptr<Segment>& seg, bool evicted);
  void PauseWrites(const Status& cause);
  void ResumeWrites();
  void SyncPoint(std::string_view point) const {
    if (options_.test_sync_point) options_.test_sync_point(point);
  }

  // ---- read path (block_store_read.cc) ----
  std::unique_ptr<IoQueue> AcquireReadQueue();
  void ReleaseReadQueue(std::unique_ptr<IoQueue> q);
  void DropCorrupt(const BlockKey& key, const format::IndexEntry& entry);

  Options options_;
  std::shared_ptr<FileSystem> fs_;
  std::shared_ptr<Logger> log_;
  std::string segment_dir_;
  std::unique_ptr<FileLock> lock_;
  std::unique_ptr<IndexDb> db_;
  BufferPool pool_;
  StoreCounters counters_;
  std::atomic<bool> closed_{false};
  bool use_direct_ = false;  // set once at open by ProbeDirectIo
  bool opened_ = false;

  mutable std::shared_mutex mu_;
  IndexMap index_;
  std::unordered_map<BlockKey, PendingWrite*, BlockKeyHash> pending_;
  std::map<uint64_t, std::shared_ptr<Segment>> segments_;
  uint64_t disk_bytes_ = 0;
  uint64_t live_bytes_ = 0;

  std::mutex index_write_mu_;

  // Put -> writer.
  mutable std::mutex queue_mu_;
  std::condition_variable queue_cv_;  // work for the writer
  std::condition_variable space_cv_;  // queued bytes dropped (back-pressure)
  std::deque<WorkItem> queue_;
  uint64_t queued_bytes_ = 0;
  bool stop_writer_ = false;
  bool writer_running_ = false;

  // Writer -> committer.
  std::mutex commit_mu_;
  std::condition_variable commit_cv_;
  std::vector<WorkItem> commit_queue_;
  bool commit_now_ = false;  // commit what is queued without waiting out max_commit_delay_ms
  bool stop_committer_ = false;

  // Segments rolled over but not yet sealed by the commit thread. The writer waits before rolling
  // past kMaxSealingSegments: it bounds how far writes run ahead of durability, hence the tail a
  // recovery must scan and how far the budget can be overshot. Changed under queue_mu_.
  static constexpr int kMaxSealingSegments = 2;
  std::atomic<int> sealing_segments_{0};

  // Writer thread state.
  std::unique_ptr<IoQueue> write_io_;
  std::shared_ptr<Segment> active_;
  uint64_t next_segment_id_ = 1;

  // Paused writes (ENOSPC, index write failures).
  std::atomic<bool> paused_{false};
  std::atomic<int64_t> next_probe_ns_{0};
  bool index_write_failed_ = false;  // commit thread: call IndexDb::Resume before the next write
  mutable std::mutex error_mu_;
  std::string last_error_;
  StatusCode pause_code_ = StatusCode::kOk;

  std::mutex read_queues_mu_;
  std::vector<std::unique_ptr<IoQueue>> read_queues_;
  std::atomic<bool> io_uring_{false};

  // Background preparation of the next segments (Options::prepare_segments): opening a segment
  // (fallocate, header, directory sync) on the writer thread stalled the writes in flight at
  // every roll-over, and every directory sync is a device cache flush, so segments are prepared
  // in batches of up to kMaxPreparedSegments that share one. Guarded by prep_mu_.
  static constexpr int kMaxPreparedSegments = 4;
  std::mutex prep_mu_;
  std::condition_variable prep_cv_;
  uint64_t prep_first_id_ = 0;  // first id of the batch asked for
  int prep_count_ = 0;          // segments asked for and not yet delivered (0: no request)
  std::deque<Result<NewSegmentFile>> prepared_;  // delivered, in id order
  bool stop_preparer_ = false;

  std::thread writer_;
  std::thread committer_;
  std::thread preparer_;
};

}  // namespace kvstash::storage
