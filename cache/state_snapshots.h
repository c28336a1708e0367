// Recurrent-state snapshots of hybrid models (docs/cache.md "Hybrid models"): the state of a
// sequence's DeltaNet layers (engine/kv_pool.h Sequence::recurrent) after the last token of a full
// block, keyed by that block's chained hash (cache/hash.h). Like a block, a snapshot carries its
// parent hash and the block's token ids, and a lookup whose parent or tokens differ is a miss, so a
// hash collision or a stale entry can never resume a sequence from the wrong state.
//
// This is the in-memory tier with its own byte budget and LRU eviction; the prefix cache consults
// it in Acquire (resume at the longest cached prefix that ends at a snapshot) and the scheduler
// fills it at the block boundaries its policy picks (PrefixCache::SaveSnapshot).
//
// Eviction prefers unreachable snapshots: a resume needs the KV blocks up to the snapshot, so one
// whose block (or the block before it) is gone from every KV tier can never be used. The owner
// says what is reachable (SetReachable); when room is needed, the coldest unreachable snapshot
// among the kUnreachableScan least recently used goes first, and plain LRU only when there is
// none. The check runs only when something must be evicted, never on a hit or a Put that fits.
//
// Not thread-safe: owned by one PrefixCache and used on the engine thread.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "storage/block_key.h"

namespace kvstash::cache {

struct SnapshotStats {
  uint64_t entries = 0;
  uint64_t bytes = 0;  // state bytes held
  uint64_t puts = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;                 // absent, or present with a different parent / tokens
  uint64_t evictions = 0;              // dropped to fit the budget
  uint64_t unreachable_evictions = 0;  // of which chosen because no cached chain reaches them
  uint64_t rejected = 0;               // larger than the whole budget
};

class StateSnapshots {
 public:
  using Key = storage::BlockKey;
  // Whether the snapshot after block `key` (whose parent is `parent`) can still be resumed from.
  using ReachableFn = std::function<bool(const Key& key, const Key& parent)>;
  // How many of the least recently used snapshots an eviction examines for an unreachable one
  // (real models hold a few dozen snapshots, so all of them; tiny test models hold thousands).
  static constexpr int kUnreachableScan = 256;

  // budget_bytes: the most state bytes held (0 = none: every Put is rejected).
  explicit StateSnapshots(uint64_t budget_bytes) : budget_bytes_(budget_bytes) {}

  // Stores a copy of `state` as the snapshot after block `block_hash` (whose parent is `parent`
  // and whose tokens are `tokens`), replacing an older one, evicting least recently used
  // snapshots to fit. False when the state alone exceeds the budget.
  bool Put(const Key& block_hash, const Key& parent, std::span<const int32_t> tokens,
           std::span<const float> state);
  // The snapshot after `block_hash` if its parent and tokens match (then it becomes most recently
  // used), else nullptr. The span stays valid until the next Put/Erase/Clear.
  const std::vector<float>* Find(const Key& block_hash, const Key& parent,
                                 std::span<const int32_t> tokens);
  // Index of the last block among hashes[0..n) that has a snapshot (by key only; Find verifies),
  // or -1. Does not touch the LRU order.
  int LastWithSnapshot(std::span<const Key> hashes) const;
  // Whether a snapshot is stored under `block_hash` (by key only; Find verifies).
  bool Contains(const Key& block_hash) const { return index_.contains(block_hash); }
  void Erase(const Key& block_hash);
  void Clear();
  // Eviction asks `fn` which snapshots are unreachable and evicts those first (default: none is,
  // plain LRU). `fn` must not call back into this object.
  void SetReachable(ReachableFn fn) { reachable_ = std::move(fn); }

  uint64_t budget_bytes() const { return budget_bytes_; }
  const SnapshotStats& stats() const { return stats_; }

 private:
  struct Entry {
    Key key;
    Key parent;
    std::vector<int32_t> tokens;
    std::vector<float> state;  // [Sequence::recurrent elements] f32
  };
  void EvictToFit(uint64_t incoming_bytes);
  static uint64_t Bytes(const Entry& e) { return e.state.size() * sizeof(float); }

  uint64_t budget_bytes_;
  std::list<Entry> lru_;  // most recently used first
  std::unordered_map<Key, std::list<Entry>::iterator, storage::BlockKeyHash> index_;
  SnapshotStats stats_;
  std::vector<float> spare_;  // the last evicted entry's buffer, reused by the next Put
  ReachableFn reachable_;
};

}  // namespace kvstash::cache
