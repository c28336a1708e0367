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
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.snapshot_puts;
  }
  SyncSnapshotStats();
  return kept;
}

bool PrefixCache::Impl::LoadSnapshot(const Hash128& key, const Hash128& parent,
                                     std::span<const int32_t> toks, std::vector<float>& state) {
  const std::vector<float>* found = snapshots_.Find(key, parent, toks);
  bool ok = found != nullptr && found->size() == options_.recurrent_state_elems;
  if (ok) state.assign(found->begin(), found->end());
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    if (ok) ++stats_.snapshot_hits;
  }
  SyncSnapshotStats();
  return ok;
}

}  // namespace kvstash::cache
