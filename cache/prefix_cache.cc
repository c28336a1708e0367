#include "cache/prefix_cache.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <utility>

#include "base/clock.h"
#include "cache/prefix_cache_impl.h"
#include "storage/block_store.h"

namespace kvstash::cache {

const char* WritePolicyName(WritePolicy p) {
  switch (p) {
    case WritePolicy::kAlways:
      return "always";
    case WritePolicy::kOnEvict:
      return "on-evict";
    case WritePolicy::kNever:
      return "never";
  }
  return "?";
}

Result<WritePolicy> ParseWritePolicy(const std::string& name) {
  if (name == "always") return WritePolicy::kAlways;
  if (name == "on-evict") return WritePolicy::kOnEvict;
  if (name == "never") return WritePolicy::kNever;
  return Status::InvalidArgument("unknown write policy '" + name +
                                 "' (expected always, on-evict or never)");
}

// ---------------------------------------------------------------------------------------------

size_t PrefixCache::Impl::LoadDisk(const std::vector<PlanBlock>& plan,
                                   const std::vector<size_t>& idx, std::span<const int32_t> tokens,
                                   const std::vector<int>& n_tokens_of) {
  if (idx.empty()) return 0;
  std::vector<storage::BlockKey> keys;
  std::vector<std::span<std::byte>> dest;
  std::vector<storage::ReadResult> results(idx.size());
  for (size_t j : idx) {
    keys.push_back(plan[j].key);
    dest.emplace_back(reinterpret_cast<std::byte*>(pool_.page(plan[j].page)), block_bytes_);
  }
  const int64_t t0 = MonotonicNowNs();
  Status s = store_->GetMany(keys, dest, results);
  const double secs = (MonotonicNowNs() - t0) / 1e9;
  if (!s.ok()) {
    Absorb(kDiskRead, &CacheStats::disk_read_errors, idx.size(), "batched disk read failed", s);
    return 0;
  }
  uint64_t bytes = 0;
  size_t first_bad = idx.size();
  for (size_t r = 0; r < idx.size(); ++r) {
    const PlanBlock& b = plan[idx[r]];
    const storage::ReadResult& rr = results[r];
    if (!rr.hit()) {
      NoteReadFailure(rr.status);
      first_bad = std::min(first_bad, r);
      continue;
    }
    bytes += rr.payload_bytes;
    const size_t first_tok = idx[r] * static_cast<size_t>(bt_);
    const auto want = tokens.subspan(first_tok, n_tokens_of[idx[r]]);
    const bool verified = rr.payload_bytes == block_bytes_ && rr.header.parent == b.parent &&
                          rr.header.layout_tag == layout_tag_ &&
                          std::equal(want.begin(), want.end(), rr.header.token_ids.begin(),
                                     rr.header.token_ids.end());
    if (!verified) {
      // A stale or colliding entry: never used, and removed so it is not read again.
      Absorb(kCorruptBlock, &CacheStats::corrupt_blocks, 1, "recomputing a disk block",
             Status::Corruption("block " + HashHex(b.key) +
                                " does not match its parent, tokens, layout or size"));
      EraseOrCount(b.key, "unverified");
      first_bad = std::min(first_bad, r);
    }
  }
  if (secs > 0 && bytes >= (1u << 20)) {
    std::lock_guard<std::mutex> lock(stats_mu_);
    disk_bps_ = (1 - kEwmaWeight) * disk_bps_ + kEwmaWeight * (bytes / secs);
  }
  return first_bad;
}

Result<AcquireResult> PrefixCache::Impl::Acquire(engine::Sequence& seq,
                                                 std::span<const int32_t> tokens, int max_positions,
                                                 const Hash128* tail_key, const std::string& salt) {
  if (!seq.tokens.empty() || !seq.block_table.empty()) {
    return Status::InvalidArgument("Acquire needs an empty sequence");
  }
  Stopwatch watch;
  AcquireResult out;
  const int n = static_cast<int>(tokens.size());
  if (max_positions < 0) max_positions = n - 1;
  max_positions = std::clamp(max_positions, 0, n);
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.lookups;
    stats_.lookup_tokens += n;
  }
  if (max_positions == 0) return out;

  // 1. The plan: consecutive blocks found in some tier, each covering >= 1 loadable position.
  const int n_full = n / bt_;
  std::vector<PlanBlock> plan;
  std::vector<int> n_tokens_of;  // tokens each plan block covers (bt, or the tail's count)
  Hash128 parent = RootFor(salt).hash;
  for (int i = 0; i < n_full && i * bt_ < max_positions; ++i) {
    const auto toks = tokens.subspan(static_cast<size_t>(i) * bt_, bt_);
    const Hash128 key = ChainHash(parent, toks);
    PlanBlock b{key, parent, Tier::kDevice};
    bool found = false;
    if (auto it = device_.find(key); it != device_.end()) {
      found =
          it->second.parent == parent &&
          std::equal(toks.begin(), toks.end(), it->second.tokens.begin(), it->second.tokens.end());
    }
    std::lock_guard<std::mutex> lock(stats_mu_);
    if (found) {
      ++stats_.device.hits;
    } else {
      ++stats_.device.misses;
      b.tier = Tier::kHost;
      if (auto it = host_.find(key); it != host_.end() && it->second.parent == parent &&
                                     std::equal(toks.begin(), toks.end(), it->second.tokens.begin(),
                                                it->second.tokens.end())) {
        found = true;
        ++stats_.host.hits;
      } else {
        if (options_.host_bytes > 0) ++stats_.host.misses;
        b.tier = Tier::kDisk;
        if (store_ != nullptr && store_->Contains(key)) {
          found = true;
          ++stats_.disk.hits;
        } else if (store_ != nullptr) {
          ++stats_.disk.misses;
        }
      }
    }
    if (!found) break;
    plan.push_back(b);
    n_tokens_of.push_back(bt_);
    parent = key;
  }
  // A session's partial tail follows its last full block.
  const int tail_tokens = n - n_full * bt_;
  if (tail_key != nullptr && static_cast<int>(plan.size()) == n_full && tail_tokens > 0 &&
      max_positions > n_full * bt_ && store_ != nullptr && store_->Contains(*tail_key)) {
    plan.push_back(PlanBlock{*tail_key, parent, Tier::kDisk});
    n_tokens_of.push_back(tail_tokens);
  }
  // Hybrid models resume only where the recurrent state is known: at the end of the last full
  // block (within max_positions) that has a snapshot. The KV blocks past it are recomputed with
  // the tokens that rebuild the state (docs/cache.md "Hybrid models").
  const bool hybrid = options_.recurrent_state_elems > 0;
  if (hybrid) {
    size_t keep = 0;
    for (size_t j = 0; j < plan.size(); ++j) {
      if (n_tokens_of[j] == bt_ && static_cast<int>(j + 1) * bt_ <= max_positions &&
          HasSnapshot(plan[j].key)) {
        keep = j + 1;
      }
    }
    if (keep < plan.size()) out.recomputed_blocks += static_cast<int>(plan.size() - keep);
    plan.resize(keep);
    n_tokens_of.resize(keep);
  }

  // 2. Load or recompute: from the first disk block on, is reading cheaper than prefilling?
  if (options_.cost_model && prefill_tps_ > 0) {
    for (size_t a = 0; a < plan.size(); ++a) {
      if (plan[a].tier != Tier::kDisk || (a > 0 && plan[a - 1].tier == Tier::kDisk)) continue;
      double disk_bytes = 0, host_bytes = 0, toks = 0;
      for (size_t j = a; j < plan.size(); ++j) {
        (plan[j].tier == Tier::kDisk ? disk_bytes : host_bytes) += block_bytes_;
        toks += n_tokens_of[j];
      }
      const double load_ms = kDiskBatchOverheadMs + disk_bytes / disk_bps_ * 1e3 +
                             host_bytes / kHostCopyBytesPerS * 1e3;
      const double recompute_ms = toks / prefill_tps_ * 1e3;
      std::lock_guard<std::mutex> lock(stats_mu_);
      if (recompute_ms < load_ms) {
        ++stats_.recompute_decisions;
        out.recomputed_blocks += static_cast<int>(plan.size() - a);
        plan.resize(a);
        n_tokens_of.resize(a);
        break;
      }
      ++stats_.load_decisions;
    }
  }

  // 3. Pin device blocks first (so allocating pages below cannot evict them), then allocate.
  const int loadable = std::min(max_positions, [&] {
    int t = 0;
    for (int c : n_tokens_of) t += c;
    return t;
  }());
  auto is_private = [&](size_t j) {
    // Partly covered by the loaded positions, or a session tail: the sequence will write into
    // it, so it gets its own page.
    return n_tokens_of[j] < bt_ || static_cast<int>(j + 1) * bt_ > loadable;
  };
  // Every device block is pinned (a private copy's source only until it is copied), so the
  // reclaimer cannot evict it while pages are allocated below. Host entries can still be evicted
  // by that reclaimer (device pages demoted into a full host tier); they are looked up again.
  size_t usable = plan.size();
  for (size_t j = 0; j < plan.size(); ++j) {
    if (plan[j].tier != Tier::kDevice) continue;
    DeviceEntry& e = device_.at(plan[j].key);
    pool_.Ref(e.page);
    device_lru_.splice(device_lru_.begin(), device_lru_, e.lru);
    if (!is_private(j)) plan[j].page = e.page;  // the pin becomes the sequence's reference
  }
  std::vector<int> private_src(plan.size(), -1);
  for (size_t j = 0; j < plan.size(); ++j) {
    if (plan[j].tier == Tier::kDevice && is_private(j))
      private_src[j] = device_.at(plan[j].key).page;
  }
  for (size_t j = 0; j < plan.size(); ++j) {
    if (plan[j].page >= 0) continue;
    const int p = pool_.Allocate();
    if (p < 0) {
      usable = j;
      break;
    }
    plan[j].page = p;
  }
  for (size_t j = 0; j < usable; ++j) {
    if (private_src[j] >= 0) {
      std::memcpy(pool_.page(plan[j].page), pool_.page(private_src[j]), block_bytes_);
    } else if (plan[j].tier == Tier::kHost) {
      auto it = host_.find(plan[j].key);
      if (it == host_.end()) {
        usable = j;
        break;
      }
      std::memcpy(pool_.page(plan[j].page), it->second.bytes.get(), block_bytes_);
      host_lru_.splice(host_lru_.begin(), host_lru_, it->second.lru);
    }
  }
  for (int src : private_src) {
    if (src >= 0) pool_.Unref(src);
  }
  // 4. One batched read for every disk block.
  std::vector<size_t> disk_idx;
  for (size_t j = 0; j < usable; ++j) {
    if (plan[j].tier == Tier::kDisk) disk_idx.push_back(j);
  }
  const size_t bad = LoadDisk(plan, disk_idx, tokens, n_tokens_of);
  if (bad < disk_idx.size()) usable = std::min(usable, disk_idx[bad]);
  // Hybrid: the state at the end of the usable prefix, or at the last earlier block whose
  // snapshot verifies; none = start from position 0.
  std::vector<float> state;
  if (hybrid) {
    size_t keep = 0;
    for (size_t j = usable; j-- > 0;) {
      const auto toks = tokens.subspan(j * static_cast<size_t>(bt_), bt_);
      if (HasSnapshot(plan[j].key) && LoadSnapshot(plan[j].key, plan[j].parent, toks, state)) {
        keep = j + 1;
        break;
      }
    }
    usable = keep;
  }
  // Blocks past the usable prefix go back.
  for (size_t j = usable; j < plan.size(); ++j) {
    if (plan[j].page >= 0) pool_.Unref(plan[j].page);
  }
  if (usable < plan.size()) out.recomputed_blocks += static_cast<int>(plan.size() - usable);
  plan.resize(usable);

  // 5. The sequence, and loaded full blocks join the device tier.
  int positions = 0;
  for (size_t j = 0; j < plan.size(); ++j) {
    const int cover = std::min(n_tokens_of[j], max_positions - positions);
    positions += cover;
    seq.block_table.push_back(plan[j].page);
    const size_t bytes = block_bytes_;
    std::lock_guard<std::mutex> lock(stats_mu_);
    switch (plan[j].tier) {
      case Tier::kDevice:
        out.device_tokens += cover;
        break;
      case Tier::kHost:
        out.host_tokens += cover;
        stats_.host.bytes_in += bytes;
        break;
      case Tier::kDisk:
        out.disk_tokens += cover;
        stats_.disk.bytes_in += bytes;
        break;
    }
  }
  seq.tokens.assign(tokens.begin(), tokens.begin() + positions);
  if (hybrid && positions > 0) {
    seq.recurrent = std::move(state);
    out.from_snapshot = true;
  }
  for (size_t j = 0; j < plan.size(); ++j) {
    if (plan[j].tier != Tier::kDevice && !is_private(j) && !device_.count(plan[j].key)) {
      const auto toks = tokens.subspan(j * static_cast<size_t>(bt_), bt_);
      InsertDevice(plan[j].key, plan[j].parent, toks, plan[j].page);
    }
  }
  out.cached_tokens = positions;
  out.load_ms = watch.ElapsedMs();
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.cached_tokens += positions;
  return out;
}

void PrefixCache::Impl::Publish(const engine::Sequence& seq, const std::string& salt) {
  const int n_full = seq.n_past() / bt_;
  Hash128 parent = RootFor(salt).hash;
  for (int i = 0; i < n_full && i < static_cast<int>(seq.block_table.size()); ++i) {
    const auto toks =
        std::span<const int32_t>(seq.tokens).subspan(static_cast<size_t>(i) * bt_, bt_);
    const Hash128 key = ChainHash(parent, toks);
    const int page = seq.block_table[i];
    if (auto it = device_.find(key); it != device_.end()) {
      device_lru_.splice(device_lru_.begin(), device_lru_, it->second.lru);
    } else if (!page_cached_[page]) {
      InsertDevice(key, parent, toks, page);
      {
        std::lock_guard<std::mutex> lock(stats_mu_);
        ++stats_.published_blocks;
      }
      if (options_.write_policy == WritePolicy::kAlways) {
        WriteToDisk(key, parent, toks, PageBytes(page));
      }
    }
    parent = key;
  }
}

// ---------------------------------------------------------------------------------------------

PrefixCache::PrefixCache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PrefixCache::~PrefixCache() = default;

Result<std::unique_ptr<PrefixCache>> PrefixCache::Create(
    engine::KvPool& pool, storage::BlockStore* store, const NamespaceParams& ns,
    const CacheOptions& options, std::string model_path, std::string model_description,
    storage::BlockStore* snapshot_store) {
  if (!(ns.layout == pool.layout())) {
    return Status::InvalidArgument("cache namespace layout differs from the KV pool's");
  }
  if (options.write_queue_blocks == 0 || options.write_queue_bytes == 0) {
    return Status::InvalidArgument("write-behind queue bounds must be > 0");
  }
  if (options.max_device_pages < 0) return Status::InvalidArgument("max_device_pages must be >= 0");
  return std::unique_ptr<PrefixCache>(
      new PrefixCache(std::make_unique<Impl>(pool, store, ns, options, std::move(model_path),
                                             std::move(model_description), snapshot_store)));
}

const Hash128& PrefixCache::namespace_hash() const { return impl_->ns(); }
Result<AcquireResult> PrefixCache::Acquire(engine::Sequence& seq, std::span<const int32_t> tokens,
                                           int max_positions, const std::string& salt) {
  return impl_->Acquire(seq, tokens, max_positions, nullptr, salt);
}
void PrefixCache::Publish(const engine::Sequence& seq, const std::string& salt) {
  impl_->Publish(seq, salt);
}
void PrefixCache::Release(engine::Sequence& seq) { impl_->Release(seq); }
bool PrefixCache::SaveSnapshot(std::span<const int32_t> tokens, std::span<const float> state,
                               const std::string& salt) {
  return impl_->SaveSnapshot(tokens, state, salt);
}
bool PrefixCache::resumes() const { return impl_->resumes(); }
void PrefixCache::ObservePrefill(int tokens, double ms) { impl_->ObservePrefill(tokens, ms); }
Status PrefixCache::SaveSession(const std::string& name, const engine::Sequence& seq,
                                const std::string& salt) {
  return impl_->SaveSession(name, seq, salt);
}
Result<PrefixCache::Restored> PrefixCache::RestoreSession(
    const std::string& name, engine::Sequence& seq, int leave_tokens, const std::string& salt,
    const std::vector<int32_t>* only_if_prefix_of) {
  return impl_->RestoreSession(name, seq, leave_tokens, salt, only_if_prefix_of);
}
Status PrefixCache::Flush() { return impl_->Flush(); }
void PrefixCache::EvictDevice() { impl_->EvictDevice(); }
void PrefixCache::DropHost() { impl_->DropHost(); }
CacheStats PrefixCache::Stats() const { return impl_->Stats(); }
int PrefixCache::ReclaimablePages() const { return impl_->ReclaimablePages(); }

}  // namespace kvstash::cache
