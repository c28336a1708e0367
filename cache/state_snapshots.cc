#include "cache/state_snapshots.h"

#include <algorithm>
#include <iterator>

namespace kvstash::cache {

bool StateSnapshots::Put(const Key& block_hash, const Key& parent, std::span<const int32_t> tokens,
                         std::span<const float> state) {
  ++stats_.puts;
  const uint64_t bytes = state.size() * sizeof(float);
  Erase(block_hash);
  if (bytes > budget_bytes_) {
    ++stats_.rejected;
    return false;
  }
  EvictToFit(bytes);
  // Reuse an evicted entry's buffer when it is big enough: a large fresh allocation is fresh
  // pages, and faulting them in costs ~10x the copy (bench/snapshot_bench, docs/cache.md).
  std::vector<float> copy;
  if (spare_.capacity() >= state.size()) copy = std::move(spare_);
  spare_ = {};
  copy.assign(state.begin(), state.end());
  lru_.push_front(Entry{block_hash, parent, std::vector<int32_t>(tokens.begin(), tokens.end()),
                        std::move(copy)});
  index_[block_hash] = lru_.begin();
  stats_.bytes += bytes;
  stats_.entries = index_.size();
  return true;
}

const std::vector<float>* StateSnapshots::Find(const Key& block_hash, const Key& parent,
                                               std::span<const int32_t> tokens) {
  const auto it = index_.find(block_hash);
  if (it == index_.end() || it->second->parent != parent ||
      !std::equal(tokens.begin(), tokens.end(), it->second->tokens.begin(),
                  it->second->tokens.end())) {
    ++stats_.misses;
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second);
  ++stats_.hits;
  return &it->second->state;
}

int StateSnapshots::LastWithSnapshot(std::span<const Key> hashes) const {
  for (int i = static_cast<int>(hashes.size()) - 1; i >= 0; --i) {
    if (index_.contains(hashes[i])) return i;
  }
  return -1;
}

void StateSnapshots::Erase(const Key& block_hash) {
  const auto it = index_.find(block_hash);
  if (it == index_.end()) return;
  stats_.bytes -= Bytes(*it->second);
  lru_.erase(it->second);
  index_.erase(it);
  stats_.entries = index_.size();
}

void StateSnapshots::Clear() {
  lru_.clear();
  spare_ = {};
  index_.clear();
  stats_.bytes = 0;
  stats_.entries = 0;
}

void StateSnapshots::EvictToFit(uint64_t incoming_bytes) {
  while (!lru_.empty() && stats_.bytes + incoming_bytes > budget_bytes_) {
    // The coldest unreachable snapshot among the least recently used, else the coldest one.
    auto victim = std::prev(lru_.end());
    if (reachable_) {
      auto it = lru_.end();
      for (int scanned = 0; it != lru_.begin() && scanned < kUnreachableScan; ++scanned) {
        --it;
        if (!reachable_(it->key, it->parent)) {
          victim = it;
          ++stats_.unreachable_evictions;
          break;
        }
      }
    }
    stats_.bytes -= Bytes(*victim);
    if (victim->state.capacity() > spare_.capacity()) spare_ = std::move(victim->state);
    index_.erase(victim->key);
    lru_.erase(victim);
    ++stats_.evictions;
  }
  stats_.entries = index_.size();
}

}  // namespace kvstash::cache
