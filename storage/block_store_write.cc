// The write path: Put -> writer thread -> commit thread.
//
// Put copies the payload into a pooled aligned buffer laid out as the on-disk record, so the
// writer can hand it to the kernel as is (O_DIRECT). The writer places records back to back in
// the active segment, cuts them into requests at 4 MiB-aligned file offsets, and keeps up to
// write_queue_depth requests in flight on its io_uring. The
// commit thread does group commit: whatever completed since its last round is made durable with
// one fdatasync per segment, then indexed with one RocksDB WriteBatch (WAL not synced: a lost WAL
// tail only loses entries that recovery re-indexes from the segment tail). Durable-before-indexed
// is what makes every index entry safe to serve after a crash. While the writer streams, a round
// waits up to Options::max_commit_delay_ms for more completions (every fdatasync is a device
// cache flush, which stalls a virtual disk's writes); a Flush, a segment to seal or the writer
// running out of work for a few milliseconds starts the round at once.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "base/check.h"
#include "base/clock.h"
#include "storage/block_store_impl.h"

namespace kvstash::storage {
namespace {

// The writer cuts the stream of records into requests at kWriteChunkBytes-aligned offsets of the
// segment file, whatever the record boundaries, so the device sees the aligned requests a plain
// sequential writer of large blocks issues, instead of groups of whole records (up to 8 MiB, what
// this replaced) that started wherever the previous group ended and were split by size. Measured
// on a virtio disk (max_sectors_kb 4096, storage_bench A/B): Put +5% at 256 KiB payloads, about
// +1% at 1 MiB, no change at 4 MiB. One request carries at most kMaxWriteIovecs pieces.
constexpr uint64_t kWriteChunkBytes = 4 << 20;
// How long the writer must have been out of work before the commit thread stops waiting for more
// completions (Options::max_commit_delay_ms) and commits at once.
constexpr std::chrono::milliseconds kIdleCommitDelay{5};
constexpr size_t kMaxWriteIovecs = 64;

int64_t ThreadCpuNs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace

void BlockStoreImpl::DoPut(const BlockKey& key, const BlockHeader& header,
                           std::span<const std::byte> payload, PutCallback done) {
  counters_.puts++;
  auto fail = [&](Status s) {
    counters_.puts_failed++;
    if (done) done(std::move(s));
  };
  if (closed_) return fail(Status::Cancelled("store is closed"));
  const size_t bh_bytes = format::BlockHeaderBytes(header);
  if (bh_bytes > format::kMaxBlockHeaderBytes) {
    return fail(Status::InvalidArgument("block header of " + std::to_string(bh_bytes) +
                                        " bytes exceeds " +
                                        std::to_string(format::kMaxBlockHeaderBytes)));
  }
  const uint32_t area = format::HeaderAreaBytes(header);
  const uint64_t record_bytes = format::RecordBytes(area, payload.size());
  if (payload.size() > format::kMaxPayloadBytes ||
      format::kSegmentHeaderBytes + record_bytes > options_.segment_bytes) {
    return fail(Status::InvalidArgument("record of " + std::to_string(record_bytes) +
                                        " bytes does not fit a segment of " +
                                        std::to_string(options_.segment_bytes)));
  }
  bool probe = false;
  if (paused_) {
    const int64_t now = MonotonicNowNs();
    int64_t next = next_probe_ns_.load();
    if (now < next || !next_probe_ns_.compare_exchange_strong(
                          next, now + options_.write_retry_interval_ms * 1'000'000)) {
      std::lock_guard lock(error_mu_);
      return fail(Status(pause_code_, "writes paused: " + last_error_));
    }
    probe = true;  // this one tests whether space has returned
  }

  auto w = std::make_unique<PendingWrite>();
  {
    std::unique_lock lock(mu_);
    if (index_.contains(key)) {
      lock.unlock();
      counters_.puts_deduplicated++;
      if (done) done(Status::Ok());
      return;
    }
    if (auto it = pending_.find(key); it != pending_.end()) {
      counters_.puts_deduplicated++;
      if (done) it->second->callbacks.push_back(std::move(done));
      return;
    }
    pending_.emplace(key, w.get());
    if (done) w->callbacks.push_back(std::move(done));
  }

  // [header area][payload][zero padding]: the record exactly as it goes to disk.
  w->key = key;
  w->probe = probe;
  w->record_bytes = record_bytes;
  w->record = pool_.Get(record_bytes);
  format::RecordHeader rh;
  rh.header_area_bytes = area;
  rh.key = key;
  rh.payload_bytes = payload.size();
  rh.payload_checksum = format::Checksum(payload);
  rh.write_time_us = static_cast<uint64_t>(WallNowUs());
  format::EncodeRecordHeader(rh, header, {w->record.data(), area});
  std::byte* body = w->record.data() + area;
  if (!payload.empty()) std::memcpy(body, payload.data(), payload.size());
  std::memset(body + payload.size(), 0, record_bytes - area - payload.size());
  w->entry.header_area_bytes = area;
  w->entry.payload_bytes = payload.size();
  w->entry.payload_checksum = rh.payload_checksum;
  w->entry.header_checksum = rh.header_checksum;
  w->entry.write_time_us = rh.write_time_us;

  {
    std::unique_lock lock(queue_mu_);
    // Back-pressure, except on the commit thread (a callback that puts must not wait for
    // itself).
    if (std::this_thread::get_id() != committer_.get_id()) {
      space_cv_.wait(
          lock, [&] { return queued_bytes_ < options_.max_queued_write_bytes || stop_writer_; });
    }
    if (!stop_writer_) {
      queued_bytes_ += w->record.size();
      queue_.push_back(WorkItem{.write = std::move(w)});
    }
  }
  if (w) {  // the writer stopped under us (Close)
    std::vector<PutCallback> callbacks;
    {
      std::unique_lock lock(mu_);
      pending_.erase(key);
      callbacks.swap(w->callbacks);
    }
    counters_.puts_failed++;
    for (auto& cb : callbacks) cb(Status::Cancelled("store is closing"));
    return;
  }
  queue_cv_.notify_one();
}

Status BlockStoreImpl::Flush() {
  auto waiter = std::make_shared<std::promise<Status>>();
  std::future<Status> result = waiter->get_future();
  {
    std::lock_guard lock(queue_mu_);
    if (stop_writer_ || !writer_running_) return Status::Ok();
    queue_.push_back(WorkItem{.flush = waiter});
  }
  queue_cv_.notify_one();
  return result.get();
}

void BlockStoreImpl::PauseWrites(const Status& cause) {
  {
    std::lock_guard lock(error_mu_);
    last_error_ = cause.ToString();
    pause_code_ = cause.code() == StatusCode::kOk ? StatusCode::kInternal : cause.code();
  }
  next_probe_ns_ = MonotonicNowNs() + options_.write_retry_interval_ms * 1'000'000;
  if (!paused_.exchange(true)) {
    log_->error("storage: {}: writes paused: {} (reads continue; retrying every {} ms)",
                options_.path, cause.ToString(), options_.write_retry_interval_ms);
  }
}

void BlockStoreImpl::ResumeWrites() {
  if (paused_.exchange(false)) {
    {
      std::lock_guard lock(error_mu_);
      last_error_.clear();
      pause_code_ = StatusCode::kOk;
    }
    log_->info("storage: {}: writes resumed", options_.path);
  }
}

// ---- writer thread ----

void BlockStoreImpl::WriterLoop() {
  std::deque<WorkItem> staged;         // taken from queue_, not yet placed
  std::deque<WorkItem> order;          // placed, in submission order, until ready for the committer
  std::deque<PendingWrite*> unissued;  // placed, with bytes not yet in a request (in file order)
  std::vector<std::unique_ptr<WriteGroup>> groups;  // this round's requests
  std::vector<IoOp> ops;
  std::vector<IoCompletion> completions;
  std::vector<WorkItem> ready;
  const unsigned depth = write_io_->depth();
  // A record's staging buffer is free as soon as its write completed (the bytes are in the file
  // or the device; durability is the commit thread's business). Releasing it here, not after the
  // fdatasync, keeps Put's back-pressure about memory only: a slow sync does not starve the
  // writer of work.
  uint64_t released = 0;
  auto release = [&](PendingWrite& w) {
    released += w.record.size();
    pool_.Release(std::move(w.record));
  };
  // One request carrying (a piece of) `w` ended with `status`. The record is done when every
  // piece was issued and has completed; the first error is the record's.
  auto piece_done = [&](PendingWrite& w, const Status& status) {
    if (!status.ok() && w.status.ok()) w.status = status;
    if (--w.parts_in_flight == 0 && w.issued_bytes == w.record_bytes) {
      w.io_done = true;
      release(w);
    }
  };
  // Cuts the placed, unissued bytes into requests: each a contiguous range of one segment that
  // ends at the next kWriteChunkBytes boundary of the file at the latest. Stops when the queue
  // depth is used up; returns whether everything placed is now in a request.
  auto issue = [&] {
    while (!unissued.empty()) {
      PendingWrite& w = *unissued.front();
      const uint64_t at = w.entry.offset + w.issued_bytes;
      WriteGroup* g = groups.empty() ? nullptr : groups.back().get();
      if (g == nullptr || g->segment != w.segment.get() || g->offset + g->bytes != at ||
          at % kWriteChunkBytes == 0 || g->iov.size() >= kMaxWriteIovecs) {
        if (write_io_->in_flight() + groups.size() >= depth) return false;
        groups.push_back(std::make_unique<WriteGroup>());
        g = groups.back().get();
        g->segment = w.segment.get();
        g->offset = at;
      }
      const uint64_t take =
          std::min(w.record_bytes - w.issued_bytes, kWriteChunkBytes - at % kWriteChunkBytes);
      g->iov.push_back({w.record.data() + w.issued_bytes, take});
      g->bytes += take;
      if (g->writes.empty() || g->writes.back() != &w) {
        g->writes.push_back(&w);
        w.parts_in_flight++;
      }
      w.issued_bytes += take;
      if (w.issued_bytes == w.record_bytes) unissued.pop_front();
    }
    return true;
  };

  bool blocked_on_seal = false;  // the next write needs a roll but too many segments are sealing
  bool commit_waits = false;     // the committer holds writes it may delay (no urgent item)
  for (;;) {
    bool idle = false;
    {
      std::unique_lock lock(queue_mu_);
      if (write_io_->in_flight() == 0 && unissued.empty() && (staged.empty() || blocked_on_seal)) {
        // Nothing in flight, so everything placed has been handed to the committer, including
        // the seal markers we may be waiting for: this wait always ends.
        auto wake = [&] {
          if (stop_writer_) return true;
          if (blocked_on_seal) return sealing_segments_ < kMaxSealingSegments;
          return !queue_.empty();
        };
        // Out of work: if no Put arrives for kIdleCommitDelay either, nothing more is coming
        // for now, so the committer need not wait out max_commit_delay_ms. Momentary gaps while
        // a caller streams (the disk took writes faster than Put copied them) do not count:
        // each commit is a device cache flush, which stalls the writes behind it.
        if (commit_waits && !blocked_on_seal) {
          idle = !queue_cv_.wait_for(lock, kIdleCommitDelay, wake);
        }
        if (!idle) {
          queue_cv_.wait(lock, wake);
          if (stop_writer_ && queue_.empty() && staged.empty()) break;
        }
      }
      while (!queue_.empty()) {
        staged.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    if (idle) {
      {
        std::lock_guard lock(commit_mu_);
        commit_now_ = !commit_queue_.empty();  // else the committer already took it all
      }
      commit_cv_.notify_one();
      commit_waits = false;
      continue;
    }

    groups.clear();
    blocked_on_seal = false;
    // Place records one at a time, each once everything placed before it is in a request, so
    // that placement (and a roll-over) never runs ahead of the queue depth.
    while (!staged.empty() && issue()) {
      WorkItem& front = staged.front();
      if (front.write && NeedsRoll(*front.write) && sealing_segments_ >= kMaxSealingSegments) {
        blocked_on_seal = true;
        break;
      }
      WorkItem item = std::move(staged.front());
      staged.pop_front();
      if (!item.write) {  // a flush marker
        order.push_back(std::move(item));
        continue;
      }
      PendingWrite& w = *item.write;
      Status s;
      if (paused_ && !w.probe) {
        std::lock_guard lock(error_mu_);
        s = Status(pause_code_, "writes paused: " + last_error_);
      } else {
        s = PlaceWrite(w, order);
        if (s.code() == StatusCode::kResourceExhausted) PauseWrites(s);
      }
      if (!s.ok()) {
        w.status = std::move(s);
        w.io_done = true;
        release(w);
      } else {
        unissued.push_back(&w);
      }
      order.push_back(std::move(item));
    }
    issue();
    if (!groups.empty()) {
      ops.clear();
      for (const auto& g : groups) {
        ops.push_back({.kind = IoOp::Kind::kWrite,
                       .file = g->segment->file.get(),
                       .offset = g->offset,
                       .iov = g->iov.data(),
                       .iov_count = static_cast<uint32_t>(g->iov.size()),
                       .tag = reinterpret_cast<uint64_t>(g.get())});
      }
      Status s = write_io_->Submit(ops);
      if (s.ok()) {
        for (auto& g : groups) g.release();  // owned by the ring until its completion is reaped
      } else {
        for (const auto& g : groups) {
          g->segment->broken = true;
          for (PendingWrite* w : g->writes) piece_done(*w, s);
        }
      }
      groups.clear();
    }

    if (write_io_->in_flight() > 0) {
      completions.clear();
      Status s = write_io_->Reap(1, &completions);
      if (!s.ok()) log_->error("storage: write queue: {}", s.ToString());
      for (const IoCompletion& c : completions) {
        std::unique_ptr<WriteGroup> g(reinterpret_cast<WriteGroup*>(c.tag));
        Status status;
        if (c.result < 0) {
          status = Status::FromErrno(
              "write " + g->segment->path + " offset " + std::to_string(g->offset),
              static_cast<int>(-c.result));
        } else if (static_cast<uint64_t>(c.result) != g->bytes) {
          status = Status::IOError("short write " + g->segment->path + " offset " +
                                   std::to_string(g->offset));
        }
        if (!status.ok()) {
          g->segment->broken = true;  // never append past a hole
          if (status.code() == StatusCode::kResourceExhausted) PauseWrites(status);
        }
        for (PendingWrite* w : g->writes) piece_done(*w, status);
      }
    }
    if (released > 0) {
      {
        std::lock_guard lock(queue_mu_);
        queued_bytes_ -= released;
      }
      released = 0;
      space_cv_.notify_all();
    }

    ready.clear();
    while (!order.empty() && order.front().ready()) {
      ready.push_back(std::move(order.front()));
      order.pop_front();
    }
    if (!ready.empty()) {
      // Commit without waiting for more when someone waits on it (a Flush, a seal the writer may
      // need before it can roll over); when the writer goes idle, see the wait above.
      bool urgent = false;
      for (const WorkItem& item : ready) urgent = urgent || item.flush || item.seal;
      commit_waits = !urgent;
      {
        std::lock_guard lock(commit_mu_);
        for (WorkItem& item : ready) commit_queue_.push_back(std::move(item));
        commit_now_ = commit_now_ || urgent;
      }
      commit_cv_.notify_one();
    }
  }

  // Closing: the active segment is sealed once its last writes are committed.
  std::lock_guard lock(commit_mu_);
  if (active_) {
    {
      std::unique_lock seg_lock(mu_);
      active_->state = Segment::State::kSealing;
    }
    sealing_segments_++;
    commit_queue_.push_back(WorkItem{.seal = std::move(active_)});
  }
  stop_committer_ = true;
  commit_cv_.notify_one();
}

bool BlockStoreImpl::NeedsRoll(const PendingWrite& w) const {
  return active_ &&
         (active_->broken || active_->write_offset + w.record_bytes > options_.segment_bytes);
}

void BlockStoreImpl::Roll(std::deque<WorkItem>& order) {
  {
    std::unique_lock lock(mu_);
    active_->state = Segment::State::kSealing;
  }
  sealing_segments_++;
  order.push_back(WorkItem{.seal = std::move(active_)});
  active_.reset();
}

Status BlockStoreImpl::PlaceWrite(PendingWrite& w, std::deque<WorkItem>& order) {
  if (NeedsRoll(w)) Roll(order);
  if (!active_) KV_RETURN_IF_ERROR(CreateSegment());
  w.segment = active_;
  w.entry.segment_id = active_->id;
  w.entry.offset = active_->write_offset;
  active_->write_offset += w.record_bytes;
  MaybePrepareNextSegment();
  return Status::Ok();
}

Result<BlockStoreImpl::NewSegmentFile> BlockStoreImpl::MakeSegmentFile(uint64_t id, bool sync_dir) {
  NewSegmentFile out;
  out.id = id;
  out.path = SegmentPath(id);
  KV_ASSIGN_OR_RETURN(out.file, OpenSegmentFile(out.path, /*create=*/true));
  // Reserving the whole segment up front turns running out of space into one clear error here
  // rather than a failed write in the middle of a batch.
  Status s = out.file->Allocate(0, options_.segment_bytes);
  if (s.ok()) {
    out.created_us = static_cast<uint64_t>(WallNowUs());
    AlignedBuffer header(format::kSegmentHeaderBytes);
    format::EncodeSegmentHeader({.format_version = format::kFormatVersion,
                                 .segment_id = id,
                                 .created_us = out.created_us,
                                 .capacity_bytes = options_.segment_bytes},
                                header.span());
    s = out.file->WriteAt(0, header.span());
  }
  if (s.ok()) s = PinExtents(*out.file);
  // The name must survive before index entries use it.
  if (s.ok() && sync_dir) s = fs_->SyncDir(segment_dir_);
  if (!s.ok()) {
    DiscardSegmentFile(out);
    return s;
  }
  return out;
}

void BlockStoreImpl::DiscardSegmentFile(NewSegmentFile& f) {
  f.file.reset();
  Status r = fs_->RemoveFile(f.path);
  if (!r.ok()) log_->warn("storage: {}", r.ToString());
}

Status BlockStoreImpl::CreateSegment() {
  std::optional<Result<NewSegmentFile>> ready;
  size_t spares = 0;  // prepared segments left after this one (on disk, not yet counted)
  {
    std::unique_lock lock(prep_mu_);
    // Asked for at half of a segment: usually delivered by now; if not, waiting for it is no
    // slower than making one here.
    prep_cv_.wait(lock, [&] { return !prepared_.empty() || prep_count_ == 0; });
    if (!prepared_.empty()) {
      ready = std::move(prepared_.front());
      prepared_.pop_front();
      if (!ready->ok()) {
        // Made again below, so the error (ENOSPC, say) is the writer's own and pauses writes as
        // usual; the rest of the batch goes too, so that segments are used in id order.
        log_->debug("storage: segment prepared ahead failed: {}", ready->status().ToString());
        for (auto& r : prepared_) {
          if (r.ok()) DiscardSegmentFile(*r);
        }
        prepared_.clear();
      }
      spares = prepared_.size();
    }
  }
  EnsureBudget(options_.segment_bytes * (1 + spares));
  NewSegmentFile made;
  if (ready && ready->ok()) {
    made = std::move(**ready);
  } else {
    KV_ASSIGN_OR_RETURN(made, MakeSegmentFile(next_segment_id_++, /*sync_dir=*/true));
  }
  auto seg = std::make_shared<Segment>();
  seg->id = made.id;
  seg->path = std::move(made.path);
  seg->file = std::move(made.file);
  seg->created_us = made.created_us;
  seg->last_access_us = static_cast<int64_t>(made.created_us);
  seg->allocated_bytes = options_.segment_bytes;
  seg->write_offset = format::kSegmentHeaderBytes;
  {
    std::unique_lock lock(mu_);
    segments_[seg->id] = seg;
    disk_bytes_ += seg->allocated_bytes;
  }
  active_ = std::move(seg);
  return Status::Ok();
}

void BlockStoreImpl::MaybePrepareNextSegment() {
  if (!options_.prepare_segments || !active_) return;  // the preparer runs iff the option is set
  if (active_->write_offset < options_.segment_bytes / 2) return;
  std::lock_guard lock(prep_mu_);
  if (prep_count_ != 0 || !prepared_.empty()) return;
  // Prepared files occupy disk space before they are counted: only within the budget.
  uint64_t room;
  {
    std::shared_lock mu_lock(mu_);
    room = options_.capacity_bytes > disk_bytes_ ? options_.capacity_bytes - disk_bytes_ : 0;
  }
  const int count =
      static_cast<int>(std::min<uint64_t>(kMaxPreparedSegments, room / options_.segment_bytes));
  if (count < 2) return;  // keeps one segment of room spare
  prep_first_id_ = next_segment_id_;
  prep_count_ = count - 1;
  next_segment_id_ += prep_count_;
  prep_cv_.notify_all();
}

void BlockStoreImpl::PreparerLoop() {
  std::unique_lock lock(prep_mu_);
  for (;;) {
    prep_cv_.wait(lock, [&] { return stop_preparer_ || prep_count_ != 0; });
    if (stop_preparer_) return;
    const uint64_t first = prep_first_id_;
    const int count = prep_count_;
    lock.unlock();
    std::vector<Result<NewSegmentFile>> made;
    bool any = false;
    for (int i = 0; i < count; ++i) {
      made.push_back(MakeSegmentFile(first + i, /*sync_dir=*/false));
      any = any || made.back().ok();
    }
    // One directory sync makes every name of the batch durable.
    Status synced = any ? fs_->SyncDir(segment_dir_) : Status::Ok();
    if (!synced.ok()) {
      for (auto& r : made) {
        if (r.ok()) DiscardSegmentFile(*r);
        r = synced;
      }
    }
    lock.lock();
    for (auto& r : made) prepared_.push_back(std::move(r));
    prep_count_ = 0;
    prep_cv_.notify_all();
  }
}

// ext4 keeps up to four extents in the inode and moves them to a tree block past that. A fresh
// segment is one or two unwritten extents, and every O_DIRECT write in flight into unwritten space
// is split off as an extent of its own until its completion converts it and merges it back. So as
// the number of writes in flight rises and falls, the tree block is allocated and freed again and
// again; on a filesystem mounted with `discard`, each free is a synchronous discard issued by the
// completion while it holds the inode's extent lock, and the writer's next submissions wait for it
// (measured on such a VM: ~30 discards per 256 MiB written, and Put at ~0.6x of a plain writer
// into one large file). Two zeroed blocks near the end of the reservation, with an unwritten block
// between them, keep the segment above four extents until the records reach them. Until then they
// lie beyond the last record (what a recovery scan reads there is zeros either way, which end the
// scan), later records overwrite them or the seal truncates them away. Elsewhere they cost two
// small writes per segment.
Status BlockStoreImpl::PinExtents(File& file) {
  constexpr uint64_t kBlock = format::kIoAlignment;
  if (options_.segment_bytes < 64 * kBlock) return Status::Ok();  // small segments: not worth it
  AlignedBuffer zero(kBlock);
  std::memset(zero.data(), 0, zero.size());
  KV_RETURN_IF_ERROR(file.WriteAt(options_.segment_bytes - 3 * kBlock, zero.span()));
  return file.WriteAt(options_.segment_bytes - kBlock, zero.span());
}

void BlockStoreImpl::EnsureBudget(uint64_t incoming_bytes) {
  for (;;) {
    std::shared_ptr<Segment> victim;
    {
      std::shared_lock lock(mu_);
      if (disk_bytes_ + incoming_bytes <= options_.capacity_bytes) return;
      for (const auto& [id, seg] : segments_) {
        if (seg->state != Segment::State::kSealed) continue;
        if (!victim || seg->last_access_us.load(std::memory_order_relaxed) <
                           victim->last_access_us.load(std::memory_order_relaxed)) {
          victim = seg;
        }
      }
    }
    if (!victim) return;  // only segments still being written: go over budget briefly
    std::lock_guard lock(index_write_mu_);
    Status s = RemoveSegmentLocked(victim, /*evicted=*/true);
    if (!s.ok()) {
      log_->error("storage: evicting segment {}: {}", victim->id, s.ToString());
      return;
    }
  }
}

Status BlockStoreImpl::RemoveSegmentLocked(const std::shared_ptr<Segment>& seg, bool evicted) {
  IndexBatch batch(*db_);
  std::vector<BlockKey> doomed;
  {
    std::shared_lock lock(mu_);
    if (!segments_.contains(seg->id)) return Status::Ok();
    for (const BlockKey& key : seg->keys) {
      auto it = index_.find(key);
      if (it != index_.end() && it->second.segment_id == seg->id) {
        doomed.push_back(key);
        batch.DeleteBlock(key);
      }
    }
  }
  batch.DeleteSegment(seg->id);
  KV_RETURN_IF_ERROR(db_->Write(batch, /*sync=*/false));
  {
    std::unique_lock lock(mu_);
    for (const BlockKey& key : doomed) index_.erase(key);
    live_bytes_ -= seg->live_bytes;
    disk_bytes_ -= seg->allocated_bytes;
    seg->live_blocks = 0;
    seg->live_bytes = 0;
    segments_.erase(seg->id);
  }
  // Readers still holding the segment keep its descriptor, so unlinking under them is safe.
  Status s = fs_->RemoveFile(seg->path);
  if (!s.ok()) log_->warn("storage: {}", s.ToString());
  if (evicted) {
    counters_.evicted_segments++;
    counters_.evicted_blocks += doomed.size();
  }
  return Status::Ok();
}

// ---- commit thread ----

void BlockStoreImpl::CommitLoop() {
  std::vector<WorkItem> batch;
  for (;;) {
    {
      std::unique_lock lock(commit_mu_);
      commit_cv_.wait(lock, [&] { return !commit_queue_.empty() || stop_committer_; });
      if (commit_queue_.empty()) break;
      // Group commit: while the writer is still streaming, let the round grow (fewer syncs).
      if (!commit_now_ && !stop_committer_ && options_.max_commit_delay_ms > 0) {
        commit_cv_.wait_for(lock, std::chrono::milliseconds(options_.max_commit_delay_ms),
                            [&] { return commit_now_ || stop_committer_; });
      }
      commit_now_ = false;
      batch.swap(commit_queue_);
    }
    CommitBatch(batch);
    batch.clear();
  }
}

void BlockStoreImpl::CommitBatch(std::vector<WorkItem>& batch) {
  // 1. Payloads durable: one fdatasync per segment written.
  std::vector<Segment*> written;
  for (WorkItem& item : batch) {
    if (item.write && item.write->status.ok() &&
        std::find(written.begin(), written.end(), item.write->segment.get()) == written.end()) {
      written.push_back(item.write->segment.get());
    }
  }
  for (Segment* seg : written) {
    Status s = seg->file->Sync();
    if (s.ok()) continue;
    log_->error("storage: {}", s.ToString());
    seg->broken = true;
    for (WorkItem& item : batch) {
      if (item.write && item.write->segment.get() == seg && item.write->status.ok()) {
        item.write->status = s;
      }
    }
  }
  if (!written.empty()) SyncPoint("segment_synced");

  // 2. Index entries, then memory, in the same order as every other index mutation.
  std::vector<std::pair<PendingWrite*, std::vector<PutCallback>>> callbacks;
  {
    std::lock_guard index_lock(index_write_mu_);
    const int64_t cpu_start = ThreadCpuNs();
    if (index_write_failed_) {
      Status r = db_->Resume();
      if (!r.ok()) log_->warn("storage: {}", r.ToString());
    }
    IndexBatch ib(*db_);
    size_t n_new = 0;
    for (WorkItem& item : batch) {
      if (item.write && item.write->status.ok()) {
        PendingWrite& w = *item.write;
        if (w.erased) {
          w.status = Status::Cancelled("block " + w.key.ToHex() + " was erased before stored");
          continue;
        }
        ib.PutBlock(w.key, w.entry);
        ++n_new;
      }
      if (item.seal) {
        Segment& seg = *item.seal;
        Status t = seg.file->Truncate(seg.write_offset);  // give back the unused reservation
        if (!t.ok()) log_->warn("storage: {}", t.ToString());
        ib.PutSegment(seg.id, {.sealed = true,
                               .end_offset = seg.write_offset,
                               .last_access_us = static_cast<uint64_t>(seg.last_access_us.load())});
      }
    }
    Status s = ib.count() > 0 ? db_->Write(ib, /*sync=*/false) : Status::Ok();
    index_write_failed_ = !s.ok();
    if (n_new > 0) {
      counters_.index_commits++;
      counters_.index_commit_cpu_ns += static_cast<uint64_t>(ThreadCpuNs() - cpu_start);
    }
    if (!s.ok()) {
      log_->error("storage: {}", s.ToString());
      PauseWrites(s);
      for (WorkItem& item : batch) {
        if (item.write && item.write->status.ok()) item.write->status = s;
      }
    } else if (n_new > 0) {
      SyncPoint("index_committed");
    }

    std::vector<std::shared_ptr<Segment>> emptied;
    {
      std::unique_lock lock(mu_);
      for (WorkItem& item : batch) {
        if (item.write) {
          PendingWrite& w = *item.write;
          auto it = pending_.find(w.key);
          if (it != pending_.end() && it->second == &w) pending_.erase(it);
          callbacks.emplace_back(&w, std::move(w.callbacks));
          if (!w.status.ok()) continue;
          index_.emplace(w.key, w.entry);
          Segment& seg = *w.segment;
          seg.live_blocks++;
          seg.live_bytes += w.entry.payload_bytes;
          seg.keys.push_back(w.key);
          live_bytes_ += w.entry.payload_bytes;
        }
        if (item.seal) {
          Segment& seg = *item.seal;
          seg.state = Segment::State::kSealed;
          seg.end_offset = seg.write_offset;
          if (segments_.contains(seg.id)) {
            disk_bytes_ -= seg.allocated_bytes;
            seg.allocated_bytes = std::min(seg.allocated_bytes, seg.write_offset);
            disk_bytes_ += seg.allocated_bytes;
            if (seg.live_blocks == 0) emptied.push_back(item.seal);
          }
        }
      }
    }
    for (const auto& seg : emptied) {
      Status r = RemoveSegmentLocked(seg, /*evicted=*/false);
      if (!r.ok()) log_->warn("storage: removing empty segment {}: {}", seg->id, r.ToString());
    }
  }
  int sealed = 0;
  for (const WorkItem& item : batch) sealed += item.seal != nullptr;
  if (sealed > 0) {
    {
      std::lock_guard lock(queue_mu_);
      sealing_segments_ -= sealed;
    }
    queue_cv_.notify_all();  // a writer waiting to roll over may go on
  }

  // 3. Callbacks, outside every lock. A successful probe resumes writes *before* any callback
  // runs, so a caller that sees its probe succeed can write again at once.
  bool probe_ok = false;
  for (auto& [w, cbs] : callbacks) {
    if (w->status.ok()) {
      // Only a write let through while paused proves space is back; an older write completing
      // now says nothing about it.
      probe_ok |= w->probe;
      counters_.bytes_written += w->entry.payload_bytes;
    } else {
      counters_.puts_failed++;
    }
  }
  if (probe_ok) ResumeWrites();
  for (auto& [w, cbs] : callbacks) {
    for (PutCallback& cb : cbs) {
      try {
        cb(w->status);
      } catch (...) {
        log_->error("storage: a Put callback threw; ignored");
      }
    }
  }

  // 4. Flush waiters: everything before them is committed; make the index durable too.
  for (WorkItem& item : batch) {
    if (item.flush) item.flush->set_value(db_->SyncWal());
  }
}

}  // namespace kvstash::storage
