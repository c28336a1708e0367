// BlockStore's small calls: options, wrappers, lookups, Erase, Stats, Close, and the metadata and
// session API (thin and synchronous over IndexDb).
#include <algorithm>

#include "base/clock.h"
#include "storage/block_store_impl.h"

namespace kvstash::storage {

Status Options::Validate() const {
  auto bad = [](std::string m) { return Status::InvalidArgument("storage options: " + m); };
  if (path.empty()) return bad("path is empty");
  if (segment_bytes < (64u << 10) || segment_bytes % format::kIoAlignment != 0) {
    return bad("segment_bytes must be a multiple of 4 KiB and at least 64 KiB");
  }
  if (capacity_bytes < 4 * segment_bytes) return bad("capacity_bytes must be >= 4 * segment_bytes");
  if (read_queue_depth < 1 || read_queue_depth > 4096)
    return bad("read_queue_depth not in 1..4096");
  if (write_queue_depth < 1 || write_queue_depth > 4096) {
    return bad("write_queue_depth not in 1..4096");
  }
  if (max_queued_write_bytes < (1u << 20)) return bad("max_queued_write_bytes below 1 MiB");
  if (write_retry_interval_ms < 0) return bad("write_retry_interval_ms is negative");
  if (max_commit_delay_ms < 0 || max_commit_delay_ms > 10000) {
    return bad("max_commit_delay_ms not in 0..10000");
  }
  return Status::Ok();
}

size_t BlockStore::ReadBufferBytes(uint64_t payload_bytes) {
  return static_cast<size_t>(format::AlignUp(payload_bytes));
}

std::future<Status> BlockStore::Put(const BlockKey& key, const BlockHeader& header,
                                    std::span<const std::byte> payload) {
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> f = promise->get_future();
  DoPut(key, header, payload, [promise](Status s) { promise->set_value(std::move(s)); });
  return f;
}

ReadResult BlockStore::Get(const BlockKey& key, std::span<std::byte> destination) {
  ReadResult result;
  Status s = GetMany({&key, 1}, {&destination, 1}, {&result, 1});
  if (!s.ok()) result.status = s;
  return result;
}

BlockStoreImpl::BlockStoreImpl(Options options)
    : options_(std::move(options)),
      fs_(options_.file_system ? options_.file_system : FileSystem::Posix()),
      log_(options_.logger ? options_.logger : DefaultLogger()),
      segment_dir_(options_.path + "/" + std::string(format::kSegmentDirName)),
      // Room for every staging buffer that can be in use at once, so steady writing never
      // frees and re-faults one.
      pool_(options_.max_queued_write_bytes + options_.max_queued_write_bytes / 4 + (16u << 20)) {}

BlockStoreImpl::~BlockStoreImpl() {
  if (opened_) {
    Status s = Close();
    if (!s.ok()) log_->error("storage: closing {}: {}", options_.path, s.ToString());
  }
}

bool BlockStoreImpl::Contains(const BlockKey& key) const {
  std::shared_lock lock(mu_);
  return index_.contains(key);
}

std::optional<uint64_t> BlockStoreImpl::PayloadBytes(const BlockKey& key) const {
  std::shared_lock lock(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  return it->second.payload_bytes;
}

std::vector<BlockKey> BlockStoreImpl::ListKeys() const {
  std::shared_lock lock(mu_);
  std::vector<BlockKey> keys;
  keys.reserve(index_.size());
  for (const auto& [key, entry] : index_) keys.push_back(key);
  return keys;
}

Status BlockStoreImpl::Erase(const BlockKey& key) {
  if (closed_) return Status::Cancelled("store is closed");
  std::lock_guard index_lock(index_write_mu_);
  std::optional<format::IndexEntry> entry;
  std::shared_ptr<Segment> seg;
  {
    std::unique_lock lock(mu_);
    if (auto p = pending_.find(key); p != pending_.end()) p->second->erased = true;
    auto it = index_.find(key);
    if (it == index_.end()) return Status::Ok();
    entry = it->second;
    auto s = segments_.find(entry->segment_id);
    if (s != segments_.end()) seg = s->second;
  }
  IndexBatch batch(*db_);
  batch.DeleteBlock(key);
  KV_RETURN_IF_ERROR(db_->Write(batch, /*sync=*/false));
  bool empty = false;
  {
    std::unique_lock lock(mu_);
    index_.erase(key);
    live_bytes_ -= entry->payload_bytes;
    if (seg) {
      seg->live_blocks--;
      seg->live_bytes -= entry->payload_bytes;
      empty = seg->live_blocks == 0 && seg->state == Segment::State::kSealed;
    }
  }
  // A sealed segment with nothing left in it is freed now rather than waiting for eviction.
  if (empty) KV_RETURN_IF_ERROR(RemoveSegmentLocked(seg, /*evicted=*/false));
  return Status::Ok();
}

StoreStats BlockStoreImpl::Stats() const {
  StoreStats st;
  {
    std::shared_lock lock(mu_);
    st.blocks = index_.size();
    st.live_bytes = live_bytes_;
    st.disk_bytes = disk_bytes_;
    st.segments = segments_.size();
  }
  st.capacity_bytes = options_.capacity_bytes;
  st.segment_bytes = options_.segment_bytes;
  if (db_ && !closed_) st.index_bytes = db_->ApproximateBytes();
  const StoreCounters& c = counters_;
  st.puts = c.puts;
  st.puts_deduplicated = c.puts_deduplicated;
  st.puts_failed = c.puts_failed;
  st.bytes_written = c.bytes_written;
  st.index_commits = c.index_commits;
  st.index_commit_cpu_ns = c.index_commit_cpu_ns;
  st.gets = c.gets;
  st.hits = c.hits;
  st.misses = c.misses;
  st.read_errors = c.read_errors;
  st.corrupt_records = c.corrupt_records;
  st.bytes_read = c.bytes_read;
  st.evicted_segments = c.evicted_segments;
  st.evicted_blocks = c.evicted_blocks;
  st.recovered_records = c.recovered_records;
  st.dropped_index_entries = c.dropped_index_entries;
  st.index_rebuilds = c.index_rebuilds;
  st.direct_io = use_direct_;
  st.io_uring = io_uring_;
  st.writes_paused = paused_;
  {
    std::lock_guard lock(queue_mu_);
    st.queued_write_bytes = queued_bytes_;
  }
  {
    std::lock_guard lock(error_mu_);
    st.last_error = last_error_;
  }
  return st;
}

Status BlockStoreImpl::Close() {
  if (!opened_ || closed_.exchange(true)) return Status::Ok();
  Status result = Flush();
  {
    std::lock_guard lock(queue_mu_);
    stop_writer_ = true;
  }
  queue_cv_.notify_all();
  space_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  if (committer_.joinable()) committer_.join();
  if (preparer_.joinable()) {
    {
      std::unique_lock lock(prep_mu_);
      prep_cv_.wait(lock, [&] { return prep_count_ == 0; });
      stop_preparer_ = true;
    }
    prep_cv_.notify_all();
    preparer_.join();
    // Segments prepared but never used hold no records: remove them (a crash instead leaves
    // header-only files, which the next open drops as empty segments).
    bool removed = false;
    for (auto& r : prepared_) {
      if (r.ok()) DiscardSegmentFile(*r), removed = true;
    }
    prepared_.clear();
    if (removed) {
      Status r = fs_->SyncDir(segment_dir_);
      if (!r.ok()) log_->warn("storage: {}", r.ToString());
    }
  }
  {
    std::lock_guard lock(queue_mu_);
    writer_running_ = false;
  }

  // Persist segment recency so eviction order survives the restart, then fold the WAL into
  // tables so the next open does not replay it.
  IndexBatch batch(*db_);
  {
    std::shared_lock lock(mu_);
    for (const auto& [id, seg] : segments_) {
      if (seg->state != Segment::State::kSealed) continue;
      batch.PutSegment(id, {.sealed = true,
                            .end_offset = seg->end_offset,
                            .last_access_us = static_cast<uint64_t>(seg->last_access_us.load())});
    }
  }
  Status s = batch.count() > 0 ? db_->Write(batch, /*sync=*/true) : db_->SyncWal();
  if (result.ok()) result = s;
  s = db_->FlushMemtables();
  if (result.ok()) result = s;
  {
    std::lock_guard lock(read_queues_mu_);
    read_queues_.clear();
  }
  write_io_.reset();
  db_.reset();
  lock_.reset();
  opened_ = false;
  return result;
}

// ---- metadata and sessions ----

Status BlockStoreImpl::PutMeta(std::string_view key, std::string_view value) {
  if (closed_) return Status::Cancelled("store is closed");
  return db_->PutMeta(std::string(format::kMetaUserPrefix) + std::string(key), value);
}

Result<std::string> BlockStoreImpl::GetMeta(std::string_view key) const {
  if (closed_) return Status::Cancelled("store is closed");
  return db_->GetMeta(std::string(format::kMetaUserPrefix) + std::string(key));
}

Status BlockStoreImpl::DeleteMeta(std::string_view key) {
  if (closed_) return Status::Cancelled("store is closed");
  return db_->DeleteMeta(std::string(format::kMetaUserPrefix) + std::string(key));
}

Status BlockStoreImpl::PutSession(std::string_view name, std::string_view manifest) {
  if (closed_) return Status::Cancelled("store is closed");
  if (name.empty()) return Status::InvalidArgument("session name is empty");
  return db_->PutSession(name, manifest);
}

Result<std::string> BlockStoreImpl::GetSession(std::string_view name) const {
  if (closed_) return Status::Cancelled("store is closed");
  return db_->GetSession(name);
}

Result<std::vector<std::string>> BlockStoreImpl::ListSessions() const {
  if (closed_) return Status::Cancelled("store is closed");
  return db_->ListSessions();
}

Status BlockStoreImpl::DeleteSession(std::string_view name) {
  if (closed_) return Status::Cancelled("store is closed");
  return db_->DeleteSession(name);
}

}  // namespace kvstash::storage
