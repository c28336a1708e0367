// PrefixCache::Impl, recurrent-state snapshots of hybrid models (docs/cache.md "Hybrid models"):
// taking a snapshot (SaveSnapshot) and finding a verified one for Acquire (LoadSnapshot).
//
// A snapshot is keyed by the chained hash of the block it follows and carries that block's parent
// hash and token ids, so like a block it is used only for exactly the tokens it was computed
// from. Its size must be the model's recurrent state size: anything else is a miss.
#include <algorithm>

#include "cache/prefix_cache_impl.h"

namespace kvstash::cache {

bool PrefixCache::Impl::SaveSnapshot(std::span<const int32_t> tokens, std::span<const float> state,
                                     const std::string& salt) {
  const size_t n = tokens.size();
  if (!snapshots_enabled() || n == 0 || n % bt_ != 0 ||
      state.size() != options_.recurrent_state_elems) {
    return false;
  }
  Hash128 parent = RootFor(salt).hash;
  Hash128 key = parent;
  for (size_t i = 0; i < n / bt_; ++i) {
    parent = key;
    key = ChainHash(parent, tokens.subspan(i * bt_, bt_));
  }
  const auto last = tokens.subspan(n - bt_, bt_);
  const bool kept = snapshots_.Put(key, parent, last, state);
  if (snap_writer_ != nullptr && !snap_store_->Contains(key)) {
    EraseUnreachableDiskSnapshots();
    disk_snap_parent_[key] = parent;
    storage::BlockHeader h;
    h.parent = parent;
    h.layout_tag = SnapshotTag();
    h.token_ids.assign(last.begin(), last.end());
    snap_writer_->Enqueue(key, h, std::as_bytes(state));
  }
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.snapshot_puts;
  }
  SyncSnapshotStats();
  return kept;
}

void PrefixCache::Impl::EraseUnreachableDiskSnapshots() {
  const storage::StoreStats st = snap_store_->Stats();
  // The store evicts its least recently used segment when a new one (plus a prepared spare) would
  // not fit: act just before that.
  if (st.disk_bytes + 2 * st.segment_bytes <= st.capacity_bytes) return;
  std::unordered_map<Hash128, Hash128, storage::BlockKeyHash> kept;
  uint64_t erased = 0;
  for (const Hash128& key : snap_store_->ListKeys()) {
    const auto p = disk_snap_parent_.find(key);
    const bool reachable =
        p == disk_snap_parent_.end() ? BlockCached(key) : Reachable(key, p->second);
    if (reachable) {
      if (p != disk_snap_parent_.end()) kept.emplace(key, p->second);
      continue;
    }
    Status s = snap_store_->Erase(key);
    if (!s.ok()) {
      Absorb(kErase, &CacheStats::erase_errors, 1, "erasing unreachable snapshot " + HashHex(key),
             s);
      continue;
    }
    ++erased;
  }
  // Snapshots still queued are not listed: their parents are forgotten (checked by key only).
  disk_snap_parent_ = std::move(kept);
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.snapshot_disk_unreachable_erased += erased;
}

bool PrefixCache::Impl::LoadSnapshot(const Hash128& key, const Hash128& parent,
                                     std::span<const int32_t> toks, std::vector<float>& state) {
  const std::vector<float>* found =
      snapshots_.Contains(key) ? snapshots_.Find(key, parent, toks) : nullptr;
  bool ok = found != nullptr && found->size() == options_.recurrent_state_elems;
  if (ok) {
    state.assign(found->begin(), found->end());
  } else if (snap_store_ != nullptr && snap_store_->Contains(key)) {
    ok = LoadDiskSnapshot(key, parent, toks, state);
  }
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    if (ok) ++stats_.snapshot_hits;
  }
  SyncSnapshotStats();
  return ok;
}

bool PrefixCache::Impl::LoadDiskSnapshot(const Hash128& key, const Hash128& parent,
                                         std::span<const int32_t> toks, std::vector<float>& state) {
  const size_t bytes = options_.recurrent_state_elems * sizeof(float);
  const size_t buf_bytes = storage::BlockStore::ReadBufferBytes(bytes);
  if (snap_buf_ == nullptr) snap_buf_ = AllocAligned(buf_bytes);
  if (snap_buf_ == nullptr) return false;
  const storage::ReadResult rr = snap_store_->Get(key, {snap_buf_.get(), buf_bytes});
  if (!rr.hit()) {
    if (rr.status.code() == StatusCode::kCorruption) {
      // The store dropped the record (checksum): recomputed, like a corrupt block.
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.snapshot_corrupt;
    } else if (rr.status.code() != StatusCode::kNotFound) {
      Absorb(kDiskRead, &CacheStats::disk_read_errors, 1, "recomputing past a disk snapshot",
             rr.status);
    }
    return false;
  }
  const bool verified =
      rr.payload_bytes == bytes && rr.header.parent == parent &&
      rr.header.layout_tag == SnapshotTag() &&
      std::equal(toks.begin(), toks.end(), rr.header.token_ids.begin(), rr.header.token_ids.end());
  if (!verified) {
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.snapshot_corrupt;
    }
    Status s = snap_store_->Erase(key);
    if (!s.ok()) {
      Absorb(kErase, &CacheStats::erase_errors, 1, "erasing unverified snapshot " + HashHex(key),
             s);
    }
    return false;
  }
  state.resize(options_.recurrent_state_elems);
  std::memcpy(state.data(), snap_buf_.get(), bytes);
  disk_snap_parent_[key] = parent;
  // Promoted to the memory tier: the next resume from it is a copy.
  snapshots_.Put(key, parent, toks, state);
  std::lock_guard<std::mutex> lock(stats_mu_);
  ++stats_.snapshot_disk_hits;
  stats_.snapshot_disk_bytes_read += bytes;
  return true;
}

}  // namespace kvstash::cache
