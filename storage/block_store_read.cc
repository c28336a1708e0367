// The read path. GetMany resolves every key under one shared lock, then submits all reads on a
// pooled io_uring (up to read_queue_depth in flight) and verifies each record as it completes,
// while the rest are still in flight. Each read is one readv: the record header area into a
// scratch buffer and the payload straight into the caller's buffer when that is aligned and big
// enough (else into a bounce buffer that is copied out after verification).
//
// Verification: the record header must decode, name the requested key and match the index entry,
// and the payload must match its XXH3 checksum. A failure is a miss; the entry is dropped.
#include <cerrno>
#include <cstring>

#include "base/clock.h"
#include "storage/block_store_impl.h"

namespace kvstash::storage {
namespace {

bool IsAligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % format::kIoAlignment == 0; }

struct ReadSlot {
  size_t index = 0;  // into keys / destinations / results
  std::shared_ptr<Segment> segment{};
  format::IndexEntry entry{};
  std::byte* header = nullptr;  // into the scratch buffer
  AlignedBuffer bounce{};       // when the destination cannot take the read directly
  iovec iov[2]{};
  uint32_t iov_count = 0;
};

}  // namespace

std::unique_ptr<IoQueue> BlockStoreImpl::AcquireReadQueue() {
  {
    std::lock_guard lock(read_queues_mu_);
    if (!read_queues_.empty()) {
      auto q = std::move(read_queues_.back());
      read_queues_.pop_back();
      return q;
    }
  }
  auto q = fs_->NewIoQueue(options_.read_queue_depth);
  return q.ok() ? std::move(q).value() : NewSyncIoQueue(options_.read_queue_depth);
}

void BlockStoreImpl::ReleaseReadQueue(std::unique_ptr<IoQueue> q) {
  std::lock_guard lock(read_queues_mu_);
  if (read_queues_.size() < 16) read_queues_.push_back(std::move(q));
}

Status BlockStoreImpl::GetMany(std::span<const BlockKey> keys,
                               std::span<const std::span<std::byte>> destinations,
                               std::span<ReadResult> results) {
  if (keys.size() != destinations.size() || keys.size() != results.size()) {
    return Status::InvalidArgument("GetMany: keys, destinations and results differ in size");
  }
  if (closed_) return Status::Cancelled("store is closed");
  counters_.gets += keys.size();

  std::vector<ReadSlot> slots;
  slots.reserve(keys.size());
  uint64_t header_bytes = 0;
  {
    const int64_t now_us = WallNowUs();
    std::shared_lock lock(mu_);
    for (size_t i = 0; i < keys.size(); ++i) {
      results[i] = ReadResult{};
      auto it = index_.find(keys[i]);
      if (it == index_.end()) {
        results[i].status = Status::NotFound("block " + keys[i].ToHex() + " not stored");
        continue;
      }
      const format::IndexEntry& e = it->second;
      if (destinations[i].size() < e.payload_bytes) {
        results[i].status =
            Status::InvalidArgument("destination of " + std::to_string(destinations[i].size()) +
                                    " bytes for a payload of " + std::to_string(e.payload_bytes));
        continue;
      }
      auto seg = segments_.find(e.segment_id);
      if (seg == segments_.end()) {  // cannot happen: entries leave with their segment
        results[i].status = Status::Internal("segment of an indexed block is gone");
        continue;
      }
      // Recency is per segment and in memory: a hit costs a relaxed store, not an index write.
      seg->second->last_access_us.store(now_us, std::memory_order_relaxed);
      slots.push_back({.index = i, .segment = seg->second, .entry = e});
      header_bytes += e.header_area_bytes;
    }
  }
  uint64_t misses = keys.size() - slots.size();
  if (slots.empty()) {
    counters_.misses += misses;
    return Status::Ok();
  }

  AlignedBuffer headers = pool_.Get(header_bytes);
  std::byte* next_header = headers.data();
  for (ReadSlot& slot : slots) {
    slot.header = next_header;
    next_header += slot.entry.header_area_bytes;
    slot.iov[0] = {slot.header, slot.entry.header_area_bytes};
    const uint64_t padded = format::AlignUp(slot.entry.payload_bytes);
    std::span<std::byte> dst = destinations[slot.index];
    slot.iov_count = padded > 0 ? 2 : 1;
    if (padded == 0) continue;
    if (IsAligned(dst.data()) && dst.size() >= padded) {
      slot.iov[1] = {dst.data(), padded};
    } else {
      slot.bounce = pool_.Get(padded);
      slot.iov[1] = {slot.bounce.data(), padded};
    }
  }

  std::vector<std::pair<BlockKey, format::IndexEntry>> corrupt;
  uint64_t hits = 0, read_errors = 0, bytes = 0;
  auto finish = [&](ReadSlot& slot, int64_t res) {
    ReadResult& r = results[slot.index];
    const format::IndexEntry& e = slot.entry;
    const std::string where = "segment " + std::to_string(e.segment_id) + " offset " +
                              std::to_string(e.offset) + " (block " + keys[slot.index].ToHex() +
                              ")";
    if (res < 0) {
      r.status = Status::FromErrno("read " + where, static_cast<int>(-res));
      if (r.status.code() != StatusCode::kIOError) r.status = Status::IOError(r.status.message());
      ++read_errors;
      return;
    }
    if (static_cast<uint64_t>(res) < e.header_area_bytes + e.payload_bytes) {
      r.status = Status::Corruption("short read at " + where);
      corrupt.emplace_back(keys[slot.index], e);
      return;
    }
    auto rh = format::DecodeRecordHeader({slot.header, e.header_area_bytes}, &r.header);
    if (!rh.ok()) {
      r.status = rh.status().WithContext(where);
      corrupt.emplace_back(keys[slot.index], e);
      return;
    }
    if (rh->key != keys[slot.index] || rh->header_checksum != e.header_checksum ||
        rh->payload_bytes != e.payload_bytes || rh->payload_checksum != e.payload_checksum) {
      r.status = Status::Corruption("record at " + where + " does not match its index entry");
      corrupt.emplace_back(keys[slot.index], e);
      return;
    }
    const std::byte* payload =
        slot.iov_count == 2 ? static_cast<const std::byte*>(slot.iov[1].iov_base) : nullptr;
    if (e.payload_bytes > 0 && format::Checksum({payload, e.payload_bytes}) != e.payload_checksum) {
      r.status = Status::Corruption("payload checksum mismatch at " + where);
      corrupt.emplace_back(keys[slot.index], e);
      return;
    }
    if (!slot.bounce.empty()) {
      std::memcpy(destinations[slot.index].data(), slot.bounce.data(), e.payload_bytes);
    }
    r.status = Status::Ok();
    r.payload_bytes = e.payload_bytes;
    ++hits;
    bytes += e.payload_bytes;
  };

  std::unique_ptr<IoQueue> q = AcquireReadQueue();
  const unsigned depth = q->depth();
  std::vector<IoOp> ops;
  std::vector<IoCompletion> completions;
  size_t next = 0;
  bool queue_ok = true;
  // Keeps the queue full: refills as soon as completions are reaped, and only then verifies
  // them, so checksumming overlaps with the reads still in flight.
  auto refill = [&] {
    ops.clear();
    while (next < slots.size() && q->in_flight() + ops.size() < depth) {
      ReadSlot& slot = slots[next];
      ops.push_back({.kind = IoOp::Kind::kRead,
                     .file = slot.segment->file.get(),
                     .offset = slot.entry.offset,
                     .iov = slot.iov,
                     .iov_count = slot.iov_count,
                     .tag = next});
      ++next;
    }
    if (ops.empty()) return;
    Status s = q->Submit(ops);
    if (!s.ok()) {
      for (const IoOp& op : ops) finish(slots[op.tag], -EIO);
    }
  };
  for (;;) {
    if (q->in_flight() == 0) {
      if (next >= slots.size()) break;
      refill();  // the first round, or after a failed submission
      continue;
    }
    completions.clear();
    Status s = q->Reap(1, &completions);
    if (!s.ok()) {
      // The queue is unusable; its destructor waits out what is in flight. Fail the rest.
      log_->error("storage: read queue: {}", s.ToString());
      for (const IoCompletion& c : completions) finish(slots[c.tag], c.result);
      queue_ok = false;
      q.reset();
      for (; next < slots.size(); ++next) finish(slots[next], -EIO);
      break;
    }
    refill();
    for (const IoCompletion& c : completions) finish(slots[c.tag], c.result);
  }
  if (queue_ok) ReleaseReadQueue(std::move(q));

  pool_.Release(std::move(headers));
  for (ReadSlot& slot : slots) pool_.Release(std::move(slot.bounce));
  for (const auto& [key, entry] : corrupt) DropCorrupt(key, entry);

  counters_.hits += hits;
  counters_.misses += misses;
  counters_.read_errors += read_errors;
  counters_.corrupt_records += corrupt.size();
  counters_.bytes_read += bytes;
  return Status::Ok();
}

void BlockStoreImpl::DropCorrupt(const BlockKey& key, const format::IndexEntry& entry) {
  log_->warn("storage: dropping corrupt block {} (segment {} offset {})", key.ToHex(),
             entry.segment_id, entry.offset);
  std::lock_guard index_lock(index_write_mu_);
  std::shared_ptr<Segment> seg;
  {
    std::shared_lock lock(mu_);
    auto it = index_.find(key);
    if (it == index_.end() || it->second.segment_id != entry.segment_id ||
        it->second.offset != entry.offset) {
      return;  // already gone
    }
    auto s = segments_.find(entry.segment_id);
    if (s != segments_.end()) seg = s->second;
  }
  IndexBatch batch(*db_);
  batch.DeleteBlock(key);
  Status s = db_->Write(batch, /*sync=*/false);
  if (!s.ok()) {
    log_->error("storage: dropping corrupt block {}: {}", key.ToHex(), s.ToString());
    return;
  }
  bool empty = false;
  {
    std::unique_lock lock(mu_);
    index_.erase(key);
    live_bytes_ -= entry.payload_bytes;
    if (seg) {
      seg->live_blocks--;
      seg->live_bytes -= entry.payload_bytes;
      empty = seg->live_blocks == 0 && seg->state == Segment::State::kSealed;
    }
  }
  if (empty) {
    Status r = RemoveSegmentLocked(seg, /*evicted=*/false);
    if (!r.ok()) log_->warn("storage: {}", r.ToString());
  }
}

}  // namespace kvstash::storage
