// PrefixCache::Impl, the one PrefixCache implementation. Private to cache/: included only by
// prefix_cache.cc (construction, tiers, eviction, Acquire, Publish, the public forwarders) and
// session.cc (SaveSession, RestoreSession and the session manifest); nothing outside cache/ may
// include it. Engine thread only, except Stats(), which takes stats_mu_.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/logging.h"
#include "cache/prefix_cache.h"
#include "cache/state_snapshots.h"
#include "cache/write_behind.h"
#include "storage/block_store.h"

namespace kvstash::cache {

inline constexpr double kDefaultDiskBytesPerS = 1e9;
inline constexpr double kHostCopyBytesPerS = 8e9;  // memcpy estimate for host-tier loads
inline constexpr double kDiskBatchOverheadMs = 0.2;
inline constexpr double kEwmaWeight = 0.3;
inline constexpr std::string_view kRateMetaPrefix = "planner/v1/";
inline constexpr size_t kSnapshotQueueItems = 16;

struct Freer {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBytes = std::unique_ptr<std::byte[], Freer>;

inline AlignedBytes AllocAligned(size_t n) {
  const size_t rounded = (n + 4095) & ~size_t{4095};
  return AlignedBytes(static_cast<std::byte*>(std::aligned_alloc(4096, rounded)));
}

inline std::string HashHex(const Hash128& h) { return h.ToHex(); }

class PrefixCache::Impl {
 public:
  Impl(engine::KvPool& pool, storage::BlockStore* store, const NamespaceParams& ns,
       const CacheOptions& options, std::string model_path, std::string model_description,
       storage::BlockStore* snapshot_store)
      : pool_(pool),
        store_(store),
        snap_store_(snapshot_store),
        ns_params_(ns),
        ns_(NamespaceHash(ns)),
        options_(options),
        layout_(pool.layout()),
        block_bytes_(layout_.block_bytes()),
        bt_(layout_.block_tokens),
        layout_tag_(ns_.lo ^ ns_.hi),
        model_path_(std::move(model_path)),
        model_description_(std::move(model_description)),
        snapshots_(options.recurrent_state_elems > 0 ? options.snapshot_bytes : 0) {
    page_cached_.assign(pool.n_pages(), false);
    disk_bps_ = options.disk_read_bytes_per_s;
    prefill_tps_ = options.prefill_tokens_per_s;
    if (store_ != nullptr) {
      if (disk_bps_ <= 0) disk_bps_ = ReadRateMeta("disk_read_bytes_per_s");
      if (prefill_tps_ <= 0) prefill_tps_ = ReadRateMeta("prefill_tokens_per_s/" + HashHex(ns_));
      if (options.write_policy != WritePolicy::kNever) {
        writer_ = std::make_unique<WriteBehind>(*store_, options.write_queue_blocks,
                                                options.write_queue_bytes);
      }
    }
    if (snap_store_ != nullptr && snapshots_enabled() &&
        options.write_policy != WritePolicy::kNever) {
      // Snapshots are few and large: a short queue, bounded by bytes.
      snap_writer_ = std::make_unique<WriteBehind>(*snap_store_, kSnapshotQueueItems,
                                                   options.write_queue_bytes);
    }
    if (disk_bps_ <= 0) disk_bps_ = kDefaultDiskBytesPerS;
    snapshots_.SetReachable(
        [this](const Hash128& key, const Hash128& parent) { return Reachable(key, parent); });
    pool_.SetReclaimer([this] { return EvictOneDevicePage(); });
  }

  ~Impl() {
    pool_.SetReclaimer(nullptr);
    // Under on-evict, blocks still in memory are persisted now (the process is going away).
    if (options_.write_policy == WritePolicy::kOnEvict) {
      EvictDevice();
      DropHost();
    }
    writer_.reset();  // drains the queue
    snap_writer_.reset();
    if (store_ != nullptr) {
      WriteRateMeta("disk_read_bytes_per_s", disk_bps_);
      if (prefill_tps_ > 0) WriteRateMeta("prefill_tokens_per_s/" + HashHex(ns_), prefill_tps_);
    }
    for (auto& [key, e] : device_) pool_.Unref(e.page);
    device_.clear();
  }

  const Hash128& ns() const { return ns_; }
  int ReclaimablePages() const {
    int n = 0;
    for (const auto& [key, e] : device_) n += pool_.refcount(e.page) == 1;
    return n;
  }

  // The namespace a request's salt selects: "" is the cache's own; any other salt joins the
  // cache's (ARCHITECTURE.md §3), so tenants never share blocks. Memoized; engine thread only.
  struct Root {
    Hash128 hash;
    NamespaceParams params;
  };
  const Root& RootFor(const std::string& salt) {
    auto it = roots_.find(salt);
    if (it != roots_.end()) return it->second;
    Root r;
    r.params = ns_params_;
    if (!salt.empty()) {
      r.params.cache_salt =
          ns_params_.cache_salt.empty() ? salt : ns_params_.cache_salt + "/" + salt;
    }
    r.hash = salt.empty() ? ns_ : NamespaceHash(r.params);
    return roots_.emplace(salt, std::move(r)).first->second;
  }

  Result<AcquireResult> Acquire(engine::Sequence& seq, std::span<const int32_t> tokens,
                                int max_positions, const Hash128* tail_key,
                                const std::string& salt);
  bool SaveSnapshot(std::span<const int32_t> tokens, std::span<const float> state,
                    const std::string& salt);
  bool resumes() const { return options_.recurrent_state_elems == 0 || snapshots_enabled(); }
  void Publish(const engine::Sequence& seq, const std::string& salt);
  void Release(engine::Sequence& seq) {
    for (int32_t p : seq.block_table) pool_.Unref(p);
    seq.block_table.clear();
    seq.tokens.clear();
    seq.recurrent.clear();
    EnforceDeviceBudget();
  }
  void ObservePrefill(int tokens, double ms) {
    if (tokens < bt_ || ms <= 0) return;
    const double tps = tokens / ms * 1e3;
    std::lock_guard<std::mutex> lock(stats_mu_);
    prefill_tps_ = prefill_tps_ <= 0 ? tps : (1 - kEwmaWeight) * prefill_tps_ + kEwmaWeight * tps;
  }
  Status SaveSession(const std::string& name, const engine::Sequence& seq, const std::string& salt);
  Result<Restored> RestoreSession(const std::string& name, engine::Sequence& seq, int leave_tokens,
                                  const std::string& salt,
                                  const std::vector<int32_t>* only_if_prefix_of);
  Status Flush() {
    Status s = writer_ == nullptr ? Status::Ok() : writer_->Flush();
    if (snap_writer_ != nullptr) {
      Status t = snap_writer_->Flush();
      if (s.ok()) s = t;
    }
    return s;
  }
  void EvictDevice() {
    std::vector<Hash128> victims;
    for (const Hash128& k : device_lru_) {
      if (pool_.refcount(device_.at(k).page) == 1) victims.push_back(k);
    }
    for (const Hash128& k : victims) EvictDeviceEntry(k);
  }
  void DropHost() {
    while (!host_lru_.empty()) EvictHostEntry(host_lru_.back());
  }
  CacheStats Stats() const {
    std::lock_guard<std::mutex> lock(stats_mu_);
    CacheStats s = stats_;
    s.device.blocks = device_count_.load();
    s.device.bytes = s.device.blocks * block_bytes_;
    s.host.blocks = host_count_.load();
    s.host.bytes = s.host.blocks * block_bytes_;
    if (store_ != nullptr) {
      const storage::StoreStats st = store_->Stats();
      s.disk.blocks = st.blocks;
      s.disk.bytes = st.live_bytes;
      s.disk.evictions = st.evicted_blocks;
    }
    if (writer_ != nullptr) {
      const WriteBehind::Counters c = writer_->counters();
      s.write_queue_depth = c.depth;
      s.write_queue_bytes = c.bytes;
      s.write_queued = c.queued;
      s.write_dropped = c.dropped;
      s.written_blocks = c.written;
      s.write_failed = c.failed;
    }
    s.disk_read_bytes_per_s = disk_bps_;
    s.prefill_tokens_per_s = prefill_tps_;
    if (snap_writer_ != nullptr) s.snapshot_written = snap_writer_->counters().written;
    s.snapshots = snap_stats_.entries;
    s.snapshot_bytes = snap_stats_.bytes;
    s.snapshot_evictions = snap_stats_.evictions;
    s.snapshot_unreachable_evictions = snap_stats_.unreachable_evictions;
    return s;
  }

 private:
  struct DeviceEntry {
    int page = -1;
    Hash128 parent;
    std::vector<int32_t> tokens;
    std::list<Hash128>::iterator lru;
  };
  struct HostEntry {
    Hash128 parent;
    std::vector<int32_t> tokens;
    AlignedBytes bytes;
    std::list<Hash128>::iterator lru;
  };
  enum class Tier : uint8_t { kDevice, kHost, kDisk };
  struct PlanBlock {
    Hash128 key;
    Hash128 parent;
    Tier tier;
    int page = -1;  // destination page in the sequence
  };

  // Store errors the cache absorbs (they degrade to misses, recomputation or a lost update): each
  // is counted in `counter` (when there is one) and the first of each cause is logged with its
  // text, so a failing disk shows up without one line per block.
  enum Cause : uint8_t {
    kDiskRead,
    kCorruptBlock,
    kErase,
    kMetaWrite,
    kMetaRead,
    kReplacedManifest,
    kNumCauses
  };
  void Absorb(Cause cause, uint64_t CacheStats::*counter, uint64_t n, const std::string& what,
              const Status& s) {
    bool first;
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      if (counter != nullptr) stats_.*counter += n;
      first = !logged_[cause];
      logged_[cause] = true;
    }
    if (first) {
      DefaultLogger()->warn("cache: {}: {} (the first of its kind; later ones are only counted)",
                            what, s.ToString());
    }
  }
  void EraseOrCount(const Hash128& key, const char* why) {
    Status s = store_->Erase(key);
    if (!s.ok()) {
      Absorb(kErase, &CacheStats::erase_errors, 1,
             std::string("erasing ") + why + " block " + HashHex(key), s);
    }
  }

  double ReadRateMeta(const std::string& name) {
    Result<std::string> v = store_->GetMeta(std::string(kRateMetaPrefix) + name);
    if (!v.ok()) {
      if (v.status().code() != StatusCode::kNotFound) {
        Absorb(kMetaRead, nullptr, 0, "reading planner estimate " + name, v.status());
      }
      return 0;
    }
    const double d = std::strtod(v->c_str(), nullptr);
    return d > 0 && d < 1e15 ? d : 0;
  }
  void WriteRateMeta(const std::string& name, double value) {
    Status s = store_->PutMeta(std::string(kRateMetaPrefix) + name, std::to_string(value));
    if (!s.ok()) {
      Absorb(kMetaWrite, &CacheStats::meta_write_errors, 1, "saving planner estimate " + name, s);
    }
  }

  storage::BlockHeader HeaderFor(const Hash128& parent, std::span<const int32_t> toks) const {
    storage::BlockHeader h;
    h.parent = parent;
    h.layout_tag = layout_tag_;
    h.token_ids.assign(toks.begin(), toks.end());
    return h;
  }
  std::span<const std::byte> PageBytes(int page) const {
    return {reinterpret_cast<const std::byte*>(pool_.page(page)), block_bytes_};
  }

  void WriteToDisk(const Hash128& key, const Hash128& parent, std::span<const int32_t> toks,
                   std::span<const std::byte> bytes) {
    if (writer_ == nullptr || store_->Contains(key)) return;
    writer_->Enqueue(key, HeaderFor(parent, toks), bytes);
  }

  void InsertDevice(const Hash128& key, const Hash128& parent, std::span<const int32_t> toks,
                    int page) {
    pool_.Ref(page);
    device_lru_.push_front(key);
    device_.emplace(key,
                    DeviceEntry{page, parent, {toks.begin(), toks.end()}, device_lru_.begin()});
    page_cached_[page] = true;
    device_count_.store(device_.size());
    EnforceDeviceBudget();
  }

  // Evicts unpinned pages from the cold end while more than max_device_pages are cached. Pages of
  // live sequences may keep the tier above its budget until they are released.
  void EnforceDeviceBudget() {
    if (options_.max_device_pages <= 0) return;
    auto it = device_lru_.end();  // candidates are the elements before `it`
    while (static_cast<int>(device_.size()) > options_.max_device_pages &&
           it != device_lru_.begin()) {
      const auto cur = std::prev(it);
      if (pool_.refcount(device_.at(*cur).page) == 1) {
        EvictDeviceEntry(*cur);  // erases cur; `it` stays valid
      } else {
        it = cur;
      }
    }
  }

  void EvictDeviceEntry(const Hash128& key) {
    auto it = device_.find(key);
    DeviceEntry& e = it->second;
    const int page = e.page;
    if (options_.host_bytes >= block_bytes_) {
      InsertHost(key, e.parent, e.tokens, PageBytes(page));
    } else if (options_.write_policy == WritePolicy::kOnEvict) {
      WriteToDisk(key, e.parent, e.tokens, PageBytes(page));
    }
    device_lru_.erase(e.lru);
    page_cached_[page] = false;
    device_.erase(it);
    device_count_.store(device_.size());
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.device.evictions;
    }
    pool_.Unref(page);
  }

  bool EvictOneDevicePage() {
    for (auto it = device_lru_.rbegin(); it != device_lru_.rend(); ++it) {
      if (pool_.refcount(device_.at(*it).page) == 1) {
        EvictDeviceEntry(*it);
        return true;
      }
    }
    return false;
  }

  void InsertHost(const Hash128& key, const Hash128& parent, std::span<const int32_t> toks,
                  std::span<const std::byte> bytes) {
    if (options_.host_bytes < block_bytes_) return;
    if (auto it = host_.find(key); it != host_.end()) {
      host_lru_.splice(host_lru_.begin(), host_lru_, it->second.lru);
      return;
    }
    while ((host_.size() + 1) * block_bytes_ > options_.host_bytes)
      EvictHostEntry(host_lru_.back());
    AlignedBytes buf = AllocAligned(block_bytes_);
    if (buf == nullptr) return;
    std::memcpy(buf.get(), bytes.data(), block_bytes_);
    host_lru_.push_front(key);
    host_.emplace(key,
                  HostEntry{parent, {toks.begin(), toks.end()}, std::move(buf), host_lru_.begin()});
    host_count_.store(host_.size());
  }

  void EvictHostEntry(const Hash128& key) {
    auto it = host_.find(key);
    HostEntry& e = it->second;
    if (options_.write_policy == WritePolicy::kOnEvict) {
      WriteToDisk(key, e.parent, e.tokens, {e.bytes.get(), block_bytes_});
    }
    host_lru_.erase(e.lru);
    host_.erase(it);
    host_count_.store(host_.size());
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.host.evictions;
  }

  // A disk block the store did not return. NotFound is an ordinary miss (evicted since the lookup).
  void NoteReadFailure(const Status& s) {
    if (s.code() == StatusCode::kNotFound) return;
    if (s.code() == StatusCode::kCorruption) {
      Absorb(kCorruptBlock, &CacheStats::corrupt_blocks, 1, "recomputing a disk block", s);
    } else {
      Absorb(kDiskRead, &CacheStats::disk_read_errors, 1, "recomputing a disk block", s);
    }
  }

  // ---- Recurrent-state snapshots (hybrid models; prefix_cache_snapshots.cc) ----
  bool snapshots_enabled() const { return snapshots_.budget_bytes() > 0; }
  // Whether a snapshot may exist after block `key` (by key; LoadSnapshot verifies).
  bool HasSnapshot(const Hash128& key) const {
    return snapshots_.Contains(key) || (snap_store_ != nullptr && snap_store_->Contains(key));
  }
  // Snapshot records carry a tag of their own (the blocks' layout tag mixed with the state
  // size), so a snapshot can never verify as a block of the same key or as another model's state.
  uint64_t SnapshotTag() const {
    return layout_tag_ ^ 0x736e617073686f74ull ^
           (options_.recurrent_state_elems * 0x9e3779b97f4a7c15ull);
  }
  // Whether a resume can still reach the snapshot after block `key`: that block is cached in some
  // tier, and so is its parent (or the parent is a namespace root). Two index lookups, not a walk
  // of the chain: a chain with a hole further back is not detected (it then resumes earlier, at
  // the hole). A block still on the write-behind queue after leaving the memory tiers counts as
  // gone. Engine thread only.
  bool BlockCached(const Hash128& key) const {
    return device_.contains(key) || host_.contains(key) ||
           (store_ != nullptr && store_->Contains(key));
  }
  bool Reachable(const Hash128& key, const Hash128& parent) const {
    if (!BlockCached(key)) return false;
    if (BlockCached(parent)) return true;
    for (const auto& [salt, root] : roots_) {
      if (root.hash == parent) return true;
    }
    return parent == ns_;
  }
  // Disk tier: when the next segment roll-over would make the store evict, erases every stored
  // snapshot no chain reaches (an emptied segment is freed at once), so that eviction falls on
  // reachable ones only when nothing else is left. O(snapshots on disk), only near the budget.
  void EraseUnreachableDiskSnapshots();
  // The disk-tier half of LoadSnapshot.
  bool LoadDiskSnapshot(const Hash128& key, const Hash128& parent, std::span<const int32_t> toks,
                        std::vector<float>& state);
  // The verified snapshot after block `key` (parent, tokens, size) into `state`; false on a miss.
  bool LoadSnapshot(const Hash128& key, const Hash128& parent, std::span<const int32_t> toks,
                    std::vector<float>& state);
  // Mirrors the snapshot tier's counters for Stats() readers.
  void SyncSnapshotStats() {
    std::lock_guard<std::mutex> lock(stats_mu_);
    snap_stats_ = snapshots_.stats();
  }

  // Reads the disk blocks of `plan` (indices `idx`) into their pages in one batch. Returns the
  // index into `idx` of the first block that failed (idx.size() when all verified).
  size_t LoadDisk(const std::vector<PlanBlock>& plan, const std::vector<size_t>& idx,
                  std::span<const int32_t> tokens, const std::vector<int>& n_tokens_of);

  engine::KvPool& pool_;
  storage::BlockStore* store_;
  storage::BlockStore* snap_store_;  // disk tier of snapshots; may be null
  NamespaceParams ns_params_;
  Hash128 ns_;
  std::map<std::string, Root> roots_;
  CacheOptions options_;
  engine::KvLayout layout_;
  size_t block_bytes_;
  int bt_;
  uint64_t layout_tag_;
  std::string model_path_, model_description_;

  std::unordered_map<Hash128, DeviceEntry, storage::BlockKeyHash> device_;
  std::list<Hash128> device_lru_;  // front = most recently used
  std::vector<bool> page_cached_;
  std::unordered_map<Hash128, HostEntry, storage::BlockKeyHash> host_;
  std::list<Hash128> host_lru_;
  std::unique_ptr<WriteBehind> writer_;
  // Sizes of device_ and host_, readable by Stats() from other threads.
  std::atomic<uint64_t> device_count_{0}, host_count_{0};
  // Hybrid models: the in-memory snapshot tier (budget 0 when the model is not hybrid).
  StateSnapshots snapshots_;
  std::unique_ptr<WriteBehind> snap_writer_;  // to snap_store_
  AlignedBytes snap_buf_;                     // disk-read staging, ReadBufferBytes(state)
  // Parents of the disk snapshots this process wrote or read (those of earlier processes are
  // checked by their own block only). Pruned to the stored keys by EraseUnreachableDiskSnapshots.
  std::unordered_map<Hash128, Hash128, storage::BlockKeyHash> disk_snap_parent_;

  mutable std::mutex stats_mu_;  // guards stats_, logged_ and the estimates for Stats() readers
  CacheStats stats_;
  SnapshotStats snap_stats_;               // copy of snapshots_.stats() for Stats()
  std::array<bool, kNumCauses> logged_{};  // causes Absorb has logged
  double disk_bps_ = 0;
  double prefill_tps_ = 0;
};

}  // namespace kvstash::cache
