// Opening a store and recovering from whatever the last process left behind.
//
// Invariants the recovery relies on (see docs/storage-format.md, "Crash consistency"):
//  - An index entry is written only after its record was fdatasync'ed, so every entry the index
//    returns names bytes that reached the disk (a checksum still guards against later damage).
//  - A segment gets a "sealed" record only after all its writes were committed. Records past the
//    last indexed one in an unsealed segment were written but maybe not synced: they are
//    re-indexed when header and payload verify (and synced first), and cut off at the first
//    record that does not.
//  - Segment ids only grow, so a stale entry can never name bytes of a newer segment.
#include <algorithm>
#include <cstring>

#include "base/clock.h"
#include "storage/block_store_impl.h"

namespace kvstash::storage {

struct BlockStoreImpl::OpenState {
  bool rebuild_all = false;  // the block index was lost: re-index every segment from its records
  std::vector<std::pair<BlockKey, format::IndexEntry>> entries;
  std::vector<std::string> bad_entries;  // raw keys whose entries do not decode
  std::map<uint64_t, format::SegmentRecord> records;
  std::vector<uint64_t> bad_records;
};

Result<std::unique_ptr<BlockStore>> BlockStore::Open(const Options& options) {
  KV_RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<BlockStoreImpl>(options);
  KV_RETURN_IF_ERROR(impl->OpenImpl().WithContext("open block store " + options.path));
  return std::unique_ptr<BlockStore>(std::move(impl));
}

std::string BlockStoreImpl::SegmentPath(uint64_t id) const {
  return segment_dir_ + "/" + format::SegmentFileName(id);
}

Result<std::unique_ptr<File>> BlockStoreImpl::OpenSegmentFile(const std::string& path,
                                                              bool create) {
  if (use_direct_) {
    auto f = fs_->OpenFile(path, {.create = create, .read_only = false, .direct = true});
    if (f.ok() || f.status().code() != StatusCode::kInvalidArgument ||
        options_.io_mode == IoMode::kDirect) {
      return f;
    }
    // The probe at open said yes but this file says no (another filesystem mounted under us?).
    log_->warn("storage: {}: O_DIRECT refused, using buffered I/O for it", path);
  }
  return fs_->OpenFile(path, {.create = create, .read_only = false, .direct = false});
}

Status BlockStoreImpl::ProbeDirectIo() {
  use_direct_ = false;
  if (options_.io_mode == IoMode::kBuffered) return Status::Ok();
  const std::string probe = segment_dir_ + "/direct-io-probe";
  auto f = fs_->OpenFile(probe, {.create = true, .read_only = false, .direct = true});
  if (f.ok()) {
    f->reset();
    Status s = fs_->RemoveFile(probe);
    if (!s.ok()) log_->warn("storage: {}", s.ToString());
    use_direct_ = true;
    return Status::Ok();
  }
  if (f.status().code() != StatusCode::kInvalidArgument) return f.status();
  if (options_.io_mode == IoMode::kDirect) {
    return Status::InvalidArgument(segment_dir_ + ": the filesystem does not support O_DIRECT");
  }
  log_->warn("storage: {}: O_DIRECT unsupported here (tmpfs?), using buffered I/O", segment_dir_);
  return Status::Ok();
}

Status BlockStoreImpl::OpenImpl() {
  KV_ASSIGN_OR_RETURN(bool exists, fs_->Exists(options_.path));
  if (!exists) {
    if (!options_.create_if_missing) {
      return Status::NotFound(options_.path + " does not exist (create_if_missing is false)");
    }
    KV_RETURN_IF_ERROR(fs_->CreateDirIfMissing(options_.path));
  }
  KV_ASSIGN_OR_RETURN(lock_,
                      fs_->LockFile(options_.path + "/" + std::string(format::kLockFileName)));
  KV_RETURN_IF_ERROR(fs_->CreateDirIfMissing(segment_dir_));
  KV_RETURN_IF_ERROR(ProbeDirectIo());

  OpenState st;
  KV_RETURN_IF_ERROR(OpenIndex(st));
  KV_RETURN_IF_ERROR(LoadSegments(st));

  auto q = fs_->NewIoQueue(options_.write_queue_depth);
  write_io_ = q.ok() ? std::move(q).value() : NewSyncIoQueue(options_.write_queue_depth);
  io_uring_ = write_io_->name() == "io_uring";
  writer_running_ = true;
  // The preparer first: the writer hands it work as soon as it starts.
  if (options_.prepare_segments) preparer_ = std::thread([this] { PreparerLoop(); });
  writer_ = std::thread([this] { WriterLoop(); });
  committer_ = std::thread([this] { CommitLoop(); });
  opened_ = true;
  log_->info("storage: opened {}: {} blocks in {} segments, {} MiB of {} MiB ({}, {})",
             options_.path, index_.size(), segments_.size(), disk_bytes_ >> 20,
             options_.capacity_bytes >> 20, use_direct_ ? "O_DIRECT" : "buffered",
             write_io_->name());
  return Status::Ok();
}

Status BlockStoreImpl::MoveIndexAside() {
  const std::string dir = options_.path + "/" + std::string(format::kIndexDirName);
  const std::string aside = options_.path + "/" + std::string(format::kCorruptIndexDirName);
  KV_RETURN_IF_ERROR(fs_->RemoveAll(aside));
  KV_RETURN_IF_ERROR(fs_->Rename(dir, aside));
  return fs_->SyncDir(options_.path);
}

Status BlockStoreImpl::OpenIndex(OpenState& st) {
  const std::string dir = options_.path + "/" + std::string(format::kIndexDirName);
  IndexDb::Options io{.cache_bytes = options_.index_cache_bytes};
  const bool may_rebuild = options_.rebuild_index_on_corruption;

  auto db = IndexDb::Open(dir, io);
  if (!db.ok()) {
    if (db.status().code() != StatusCode::kCorruption || !may_rebuild) return db.status();
    log_->error("storage: {}; moving the index aside and rebuilding it from segment files",
                db.status().ToString());
    KV_RETURN_IF_ERROR(MoveIndexAside());
    db = IndexDb::Open(dir, io);
    if (!db.ok()) return db.status();
    st.rebuild_all = true;
  }
  db_ = std::move(db).value();

  Status s = LoadIndex(st);
  if (s.code() == StatusCode::kCorruption && may_rebuild) {
    // First try to keep sessions and meta by dropping only the block entries; if the damage is
    // elsewhere, start a fresh index.
    log_->error("storage: {}; rebuilding the block index from segment files", s.ToString());
    st = OpenState{};
    Status r = db_->ResetBlocks();
    if (r.ok()) r = LoadIndex(st);
    if (!r.ok()) {
      log_->error("storage: {}; starting a fresh index (sessions and meta are lost)", r.ToString());
      db_.reset();
      KV_RETURN_IF_ERROR(MoveIndexAside());
      KV_ASSIGN_OR_RETURN(db_, IndexDb::Open(dir, io));
      st = OpenState{};
      KV_RETURN_IF_ERROR(LoadIndex(st));
    }
    st.rebuild_all = true;
  } else if (!s.ok()) {
    return s;
  }
  if (st.rebuild_all) counters_.index_rebuilds++;
  return Status::Ok();
}

Status BlockStoreImpl::LoadIndex(OpenState& st) {
  bool had_version = false;
  auto v = db_->GetMeta(format::kMetaFormatVersionKey);
  if (v.ok()) {
    if (v->size() != 4) return Status::Corruption("format version value has the wrong size");
    uint32_t version;
    std::memcpy(&version, v->data(), 4);
    if (version > format::kFormatVersion) {
      return Status::Incompatible("store format version " + std::to_string(version) +
                                  " is newer than this build's " +
                                  std::to_string(format::kFormatVersion));
    }
    if (version < format::kFormatVersion) {
      return Status::Incompatible("store format version " + std::to_string(version) +
                                  " has no migration to " + std::to_string(format::kFormatVersion));
    }
    had_version = true;
  } else if (v.status().code() != StatusCode::kNotFound) {
    return v.status();
  }

  KV_RETURN_IF_ERROR(db_->ForEachSegmentRecord([&](uint64_t id, std::string_view value) {
    auto r = format::DecodeSegmentRecord(value);
    if (r.ok()) {
      st.records[id] = *r;
    } else {
      st.bad_records.push_back(id);
    }
  }));
  KV_RETURN_IF_ERROR(db_->ForEachBlock([&](std::string_view key, std::string_view value) {
    auto k = format::DecodeIndexKey(key);
    auto e = format::DecodeIndexValue(value);
    if (k && e.ok()) {
      st.entries.emplace_back(*k, *e);
    } else {
      st.bad_entries.emplace_back(key);
    }
  }));

  if (!had_version) {
    if (!st.entries.empty() || !st.records.empty()) {
      return Status::Incompatible("index holds blocks but no format version");
    }
    uint32_t version = format::kFormatVersion;
    KV_RETURN_IF_ERROR(
        db_->PutMeta(format::kMetaFormatVersionKey, {reinterpret_cast<const char*>(&version), 4}));
  }
  return Status::Ok();
}

uint64_t BlockStoreImpl::ScanSegment(Segment& seg, uint64_t offset, uint64_t limit,
                                     bool verify_payload, std::vector<ScannedRecord>* out) {
  AlignedBuffer header(format::kMaxHeaderAreaBytes);
  AlignedBuffer payload;
  while (offset + format::kIoAlignment <= limit) {
    auto n = seg.file->ReadAt(offset, {header.data(), format::kIoAlignment});
    if (!n.ok() || *n < format::kIoAlignment) break;
    auto peek = format::PeekRecordHeader({header.data(), format::kIoAlignment});
    if (!peek.ok()) break;
    const uint32_t area = peek->header_area_bytes;
    if (area > format::kIoAlignment) {
      n = seg.file->ReadAt(offset, {header.data(), area});
      if (!n.ok() || *n < area) break;
    }
    auto rh = format::DecodeRecordHeader({header.data(), area}, nullptr);
    if (!rh.ok()) break;
    const uint64_t record_bytes = format::RecordBytes(area, rh->payload_bytes);
    if (offset + record_bytes > limit) break;
    if (verify_payload && rh->payload_bytes > 0) {
      const uint64_t padded = format::AlignUp(rh->payload_bytes);
      if (payload.size() < padded) payload = AlignedBuffer(padded);
      n = seg.file->ReadAt(offset + area, {payload.data(), padded});
      if (!n.ok() || *n < rh->payload_bytes) break;
      if (format::Checksum({payload.data(), rh->payload_bytes}) != rh->payload_checksum) break;
    }
    format::IndexEntry e;
    e.segment_id = seg.id;
    e.offset = offset;
    e.header_area_bytes = area;
    e.payload_bytes = rh->payload_bytes;
    e.payload_checksum = rh->payload_checksum;
    e.header_checksum = rh->header_checksum;
    e.write_time_us = rh->write_time_us;
    out->push_back({rh->key, e});
    offset += record_bytes;
  }
  return offset;
}

Status BlockStoreImpl::LoadSegments(OpenState& st) {
  KV_ASSIGN_OR_RETURN(std::vector<std::string> names, fs_->ListDir(segment_dir_));
  IndexBatch batch(*db_);
  std::vector<std::string> doomed;
  uint64_t max_id = 0;
  AlignedBuffer header_buf(format::kSegmentHeaderBytes);

  for (const std::string& name : names) {
    auto id = format::ParseSegmentFileName(name);
    if (!id) continue;
    max_id = std::max(max_id, *id);
    const std::string path = segment_dir_ + "/" + name;
    auto f = OpenSegmentFile(path, /*create=*/false);
    if (!f.ok()) {
      // Left in place: its entries are dropped below, and a later open may read it again.
      log_->warn("storage: cannot open segment {}: {}", path, f.status().ToString());
      continue;
    }
    auto n = (*f)->ReadAt(0, header_buf.span());
    Result<format::SegmentHeader> h = Status::Corruption("segment header unreadable");
    if (n.ok() && *n == format::kSegmentHeaderBytes)
      h = format::DecodeSegmentHeader(header_buf.span());
    if (h.ok() && h->segment_id != *id) h = Status::Corruption("segment id disagrees with name");
    if (!h.ok()) {
      log_->warn("storage: dropping segment {}: {}", path, h.status().ToString());
      doomed.push_back(path);
      continue;
    }
    KV_ASSIGN_OR_RETURN(uint64_t size, (*f)->Size());
    auto seg = std::make_shared<Segment>();
    seg->id = *id;
    seg->path = path;
    seg->file = std::move(f).value();
    seg->created_us = h->created_us;
    seg->allocated_bytes = size;
    auto rec = st.records.find(*id);
    const bool sealed = !st.rebuild_all && rec != st.records.end() && rec->second.sealed;
    seg->state = sealed ? Segment::State::kSealed : Segment::State::kActive;
    seg->end_offset = sealed ? std::min(rec->second.end_offset, size) : size;
    seg->last_access_us = static_cast<int64_t>(
        rec != st.records.end() && rec->second.last_access_us != 0 ? rec->second.last_access_us
                                                                   : h->created_us);
    segments_[*id] = std::move(seg);
  }
  for (const auto& [id, rec] : st.records) {
    max_id = std::max(max_id, id);
    if (!segments_.contains(id)) batch.DeleteSegment(id);
  }
  for (uint64_t id : st.bad_records) batch.DeleteSegment(id);

  // Entries whose bytes cannot be where they say are dropped (a segment lost or cut short).
  std::unordered_map<uint64_t, uint64_t> indexed_end;
  uint64_t dropped = st.bad_entries.size();
  for (const std::string& raw : st.bad_entries) batch.DeleteRawBlock(raw);
  index_.reserve(st.entries.size());
  for (const auto& [key, e] : st.entries) {
    max_id = std::max(max_id, e.segment_id);
    auto it = segments_.find(e.segment_id);
    if (it == segments_.end() || e.offset + e.record_bytes() > it->second->end_offset) {
      batch.DeleteBlock(key);
      ++dropped;
      continue;
    }
    Segment& seg = *it->second;
    index_.emplace(key, e);
    seg.live_blocks++;
    seg.live_bytes += e.payload_bytes;
    seg.keys.push_back(key);
    uint64_t& end = indexed_end[seg.id];
    end = std::max(end, e.offset + e.record_bytes());
  }
  st.entries.clear();
  st.entries.shrink_to_fit();

  // Unsealed segments (the ones being written when the last process stopped, or all of them on
  // a rebuild): recover the records past the last indexed one, then seal.
  uint64_t recovered = 0;
  for (auto& [id, seg] : segments_) {
    if (seg->state == Segment::State::kSealed) continue;
    const uint64_t indexed = std::max<uint64_t>(indexed_end[id], format::kSegmentHeaderBytes);
    std::vector<ScannedRecord> found;
    uint64_t end = ScanSegment(*seg, indexed, seg->allocated_bytes,
                               /*verify_payload=*/!st.rebuild_all, &found);
    end = std::max(end, indexed);
    size_t added = 0;
    for (const ScannedRecord& r : found) {
      if (index_.contains(r.key)) continue;
      index_.emplace(r.key, r.entry);
      batch.PutBlock(r.key, r.entry);
      seg->live_blocks++;
      seg->live_bytes += r.entry.payload_bytes;
      seg->keys.push_back(r.key);
      ++added;
    }
    // Recovered bytes may still sit only in the page cache; make them durable before their
    // entries are.
    if (added > 0) KV_RETURN_IF_ERROR(seg->file->Sync());
    recovered += added;
    if (end < seg->allocated_bytes) {
      Status t = seg->file->Truncate(end);
      if (t.ok()) {
        seg->allocated_bytes = end;
      } else {
        log_->warn("storage: {}", t.ToString());
      }
    }
    seg->end_offset = end;
    seg->state = Segment::State::kSealed;
    batch.PutSegment(id, {.sealed = true,
                          .end_offset = end,
                          .last_access_us = static_cast<uint64_t>(seg->last_access_us.load())});
  }

  for (auto it = segments_.begin(); it != segments_.end();) {
    if (it->second->live_blocks == 0) {
      batch.DeleteSegment(it->first);
      doomed.push_back(it->second->path);
      it = segments_.erase(it);
    } else {
      disk_bytes_ += it->second->allocated_bytes;
      live_bytes_ += it->second->live_bytes;
      ++it;
    }
  }
  if (batch.count() > 0) KV_RETURN_IF_ERROR(db_->Write(batch, /*sync=*/true));
  // Files go only after the index stopped naming them.
  for (const std::string& path : doomed) {
    Status s = fs_->RemoveFile(path);
    if (!s.ok()) log_->warn("storage: {}", s.ToString());
  }
  if (!doomed.empty()) KV_RETURN_IF_ERROR(fs_->SyncDir(segment_dir_));

  next_segment_id_ = max_id + 1;
  counters_.recovered_records += recovered;
  counters_.dropped_index_entries += dropped;
  if (recovered > 0 || dropped > 0 || st.rebuild_all) {
    log_->warn("storage: recovery of {}: {} records re-indexed, {} index entries dropped{}",
               options_.path, recovered, dropped, st.rebuild_all ? " (index rebuilt)" : "");
  }
  return Status::Ok();
}

}  // namespace kvstash::storage
