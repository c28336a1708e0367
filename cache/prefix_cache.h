// PrefixCache: what lets kvstash skip prefill (ARCHITECTURE.md §3-§4, docs/cache.md).
//
// Three tiers hold KV blocks (one block = block_tokens positions, all layers, one contiguous
// page of the engine's KvPool layout):
//   device  the engine's paged pool itself: cached pages stay in the pool after their sequence
//           is released, are shared by reference count, and are evicted LRU (through the pool's
//           reclaimer) when the engine needs pages. Pages referenced by a live sequence are pinned.
//   host    an LRU of block copies in host memory under a byte budget (on the CPU backend the
//           device pool already is host RAM, so it defaults to 0 there: see docs/cache.md).
//   disk    a storage::BlockStore; blocks are written behind on a bounded queue and survive
//           restarts.
// Acquire() finds the longest cached prefix of a prompt in any tier, checks each block's parent
// hash and token ids, loads it into pool pages (disk blocks in one batched read) and leaves the
// rest to the runner; Publish() registers the full blocks a sequence has computed; sessions save
// a whole sequence (partial tail block included) durably under a name.
//
// Thread safety: one engine thread drives a PrefixCache (like the Runner it wraps); Stats() may be
// called from any thread. The write-behind thread is internal. Destroy the cache before the Runner.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "cache/hash.h"
#include "engine/kv_pool.h"

namespace kvstash::storage {
class BlockStore;
}

namespace kvstash::cache {

// When published blocks are written to the disk tier.
enum class WritePolicy : uint8_t {
  kAlways,   // queued for disk as soon as they are published (default)
  kOnEvict,  // written when they leave the memory tiers
  kNever,    // never written behind (sessions still write their blocks)
};
const char* WritePolicyName(WritePolicy p);
Result<WritePolicy> ParseWritePolicy(const std::string& name);  // always | on-evict | never

struct CacheOptions {
  // Joins the namespace: different salts never share blocks. Default "".
  std::string cache_salt;
  // Most pool pages the device tier keeps cached (unreferenced); 0 = as many as the pool holds.
  int max_device_pages = 0;
  // Byte budget of the host tier; 0 disables it. Default 0 (CPU backend; see docs/cache.md).
  uint64_t host_bytes = 0;
  // Disk tier write-behind.
  WritePolicy write_policy = WritePolicy::kAlways;
  // Bound of the write-behind queue; a block published while it is full is not persisted
  // (counted in CacheStats::write_dropped). Defaults 1024 blocks / 1 GiB.
  size_t write_queue_blocks = 1024;
  uint64_t write_queue_bytes = 1ull << 30;
  // Load-or-recompute planning. A run of disk blocks is loaded only when reading it is estimated
  // to beat recomputing it. Estimates start from these (0 = the last measured values remembered
  // in the store, else 1 GB/s and "prefill rate unknown", which always loads) and follow
  // measurements (GetMany bandwidth, ObservePrefill).
  bool cost_model = true;
  double disk_read_bytes_per_s = 0;
  double prefill_tokens_per_s = 0;
  // Hybrid models (qwen35, qwen35moe): f32 elements of one sequence's recurrent state
  // (engine::Runner::RecurrentStateElems). 0 = not hybrid (default). When > 0, Acquire resumes a
  // prompt only at the end of a block that has a state snapshot (docs/cache.md "Hybrid models").
  size_t recurrent_state_elems = 0;
  // Byte budget of the in-memory snapshot tier (host RAM), LRU. Default 2 GiB (32 snapshots of
  // Qwen3.6-35B-A3B, 13 of Qwen3.6-27B). 0 disables it.
  uint64_t snapshot_bytes = 2ull << 30;
};

struct TierStats {
  uint64_t hits = 0;      // blocks served from this tier
  uint64_t misses = 0;    // block lookups that fell through this tier
  uint64_t bytes_in = 0;  // bytes copied out of this tier into device pages (device: 0)
  uint64_t evictions = 0;
  uint64_t blocks = 0;  // resident blocks (disk: blocks in the store)
  uint64_t bytes = 0;   // resident bytes
};

struct CacheStats {
  TierStats device, host, disk;
  uint64_t lookups = 0;        // Acquire calls
  uint64_t lookup_tokens = 0;  // prompt tokens looked up
  uint64_t cached_tokens = 0;  // positions served from the cache
  uint64_t published_blocks = 0;
  uint64_t corrupt_blocks = 0;  // failed verification (checksum, parent, tokens, size): recomputed
  // Store errors the cache absorbs: each degrades to a miss (recomputation) or a lost update, is
  // counted here, and the first of each kind is logged (DefaultLogger, warn) with its error text.
  uint64_t disk_read_errors = 0;   // disk blocks not loaded because the read failed (a failed
                                   // GetMany counts each of its blocks): recomputed
  uint64_t erase_errors = 0;       // failed Erase of an unverified block or a replaced session tail
  uint64_t meta_write_errors = 0;  // failed metadata writes: planner estimates, a restored
                                   // session's last_used_us
  uint64_t load_decisions = 0;     // disk runs the planner chose to load
  uint64_t recompute_decisions = 0;  // disk runs it chose to recompute (faster than loading)
  // Write-behind.
  uint64_t write_queue_depth = 0;  // blocks waiting now
  uint64_t write_queue_bytes = 0;
  uint64_t write_queued = 0;    // blocks accepted into the queue
  uint64_t write_dropped = 0;   // blocks not persisted because the queue was full
  uint64_t written_blocks = 0;  // made durable (or already stored)
  uint64_t write_failed = 0;    // the store refused or failed them (e.g. disk full)
  // Recurrent-state snapshots (hybrid models).
  uint64_t snapshots = 0;  // in memory
  uint64_t snapshot_bytes = 0;
  uint64_t snapshot_puts = 0;             // taken
  uint64_t snapshot_hits = 0;             // resumes from a snapshot (memory or disk)
  uint64_t snapshot_disk_hits = 0;        // of which read from the disk tier
  uint64_t snapshot_disk_bytes_read = 0;  // payload bytes of those reads
  uint64_t snapshot_evictions = 0;        // memory tier
  // Of those, evicted first because no cached chain reaches them any more (their block, or the
  // block before it, is gone from every KV tier: a resume needs the KV up to the snapshot).
  uint64_t snapshot_unreachable_evictions = 0;
  // Unreachable snapshots erased from the disk tier when it neared its budget (before the
  // store's segment eviction would drop reachable ones).
  uint64_t snapshot_disk_unreachable_erased = 0;
  uint64_t snapshot_corrupt = 0;  // failed verification (checksum, parent, tokens, size)
  uint64_t snapshot_written = 0;  // made durable on the disk tier
  // Planner estimates.
  double disk_read_bytes_per_s = 0;
  double prefill_tokens_per_s = 0;
};

// Where the positions Acquire put into a sequence came from.
struct AcquireResult {
  int cached_tokens = 0;  // positions loaded (== seq.n_past() after Acquire)
  int device_tokens = 0;
  int host_tokens = 0;
  int disk_tokens = 0;
  int recomputed_blocks = 0;   // cached blocks not used (planner, failed verification, no pages,
                               // hybrid: past the last snapshot)
  bool from_snapshot = false;  // hybrid: the recurrent state came from a snapshot
  double load_ms = 0;          // lookup + copies + disk reads
};

struct SessionInfo {
  std::string name;
  std::string model_path;
  std::string model_description;
  std::string model_fingerprint;  // 32 hex digits
  int64_t tokens = 0;
  uint64_t bytes = 0;      // KV bytes the session names (full blocks + tail)
  int64_t created_us = 0;  // Unix microseconds
  int64_t last_used_us = 0;
};

// Session manifests are read defensively (they are bytes on disk): a manifest that is not a JSON
// object, or has a field of the wrong type or out of range (tokens not an array of ids in
// [0, 2^31), blocks/tail not hashes, model not an object, created_us not an integer, n_tokens not
// the number of tokens, ...), is Corruption naming the session and the field, never an exception.
// Absent fields take their defaults, except `format` and `tokens`.

// Session names: 1-128 of [A-Za-z0-9._-], not starting with '.' or '-'.
Status ValidateSessionName(const std::string& name);
// Sessions of a store, without a model (for `kvstash session list|rm`). A session whose manifest
// cannot be read is listed, not skipped or failed: only its name is set, with the error
// (e.g. "Corruption: session 'x' manifest: field 'tokens' is not ...") as its model_description
// and zeros elsewhere, so the user sees it and can remove it.
Result<std::vector<SessionInfo>> ListSessions(storage::BlockStore& store);
// Removes the manifest and the session's tail block (its full blocks stay as cache entries).
// NotFound for an unknown name. A session whose manifest cannot be read is removed too (a broken
// session must not become undeletable): its tail block, when the manifest does not name it
// readably, stays until its segment is evicted, and a warning is logged.
Status DeleteSession(storage::BlockStore& store, const std::string& name);

class PrefixCache {
 public:
  // `pool` is the runner's KV pool (its layout must match `ns.layout`); `store` may be null (no
  // disk tier; sessions then fail with InvalidArgument). Both must outlive the cache.
  // `model_path` and `model_description` are recorded in session manifests.
  // `snapshot_store` (may be null) is the disk tier of recurrent-state snapshots (hybrid models),
  // a BlockStore of its own so snapshots have their own budget and eviction.
  static Result<std::unique_ptr<PrefixCache>> Create(
      engine::KvPool& pool, storage::BlockStore* store, const NamespaceParams& ns,
      const CacheOptions& options, std::string model_path = "", std::string model_description = "",
      storage::BlockStore* snapshot_store = nullptr);
  // Drains the write-behind queue (everything queued becomes durable), remembers the planner's
  // estimates in the store, and returns cached pages to the pool.
  ~PrefixCache();
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  const Hash128& namespace_hash() const;

  // Loads the longest usable cached prefix of `tokens` into `seq`, which must be empty: at most
  // `max_positions` positions (default: tokens.size() - 1, so the caller always prefills at least
  // the last token and gets its logits). The caller then prefills tokens[seq.n_past()..].
  // Fails only on misuse (non-empty sequence); cache trouble degrades to fewer cached tokens.
  //
  // `salt` (all of the methods that name blocks take one) selects a tenant's namespace: "" is the
  // cache's own (CacheOptions::cache_salt); another salt joins it, so its blocks, sessions and
  // lookups never meet those of other salts.
  Result<AcquireResult> Acquire(engine::Sequence& seq, std::span<const int32_t> tokens,
                                int max_positions = -1, const std::string& salt = "");
  // Registers every full block of `seq` that is not cached yet (device tier, and the disk tier
  // per the write policy). Call after prefill and as generation fills blocks. Never blocks.
  void Publish(const engine::Sequence& seq, const std::string& salt = "");
  // Hybrid models: keeps `state` (Sequence::recurrent after the last of `tokens`) as the snapshot
  // after the block that ends at tokens.size(), which must be a positive multiple of
  // block_tokens, in memory and (per the write policy) on the disk snapshot tier. False when
  // snapshots are off, the size is wrong, or the budget is too small for it.
  bool SaveSnapshot(std::span<const int32_t> tokens, std::span<const float> state,
                    const std::string& salt = "");
  // Whether Acquire can resume this model's sequences (non-hybrid, or hybrid with a snapshot
  // tier).
  bool resumes() const;
  // Returns the sequence's pages; cached ones stay in the device tier.
  void Release(engine::Sequence& seq);
  // Tells the planner how fast prefill ran (tokens computed in `ms`).
  void ObservePrefill(int tokens, double ms);

  // Saves `seq` (tokens and KV, partial tail included) as `name`, replacing a session of that
  // name. Durable when it returns. InvalidArgument without a disk tier.
  Status SaveSession(const std::string& name, const engine::Sequence& seq,
                     const std::string& salt = "");
  struct Restored {
    std::vector<int32_t> tokens;  // the session's tokens (seq holds a prefix of them)
    AcquireResult acquired;
    // Set when `only_if_prefix_of` was given and the session's tokens are not a prefix of it:
    // nothing was read (no KV block, no snapshot) and `seq` is untouched.
    bool not_a_prefix = false;
  };
  // Loads session `name` into the empty `seq`: all its tokens but the last `leave_tokens` (pass 1
  // when nothing will be appended, so the last token is recomputed for its logits). Blocks missing
  // from every tier are left for the caller to prefill from tokens[seq.n_past()..]. NotFound for an
  // unknown name; Incompatible when it was saved under another model, KV type, block size or salt;
  // Corruption (naming the field) for a manifest that cannot be read. With `only_if_prefix_of`,
  // a session whose tokens are not a prefix of those tokens is only reported (`not_a_prefix`):
  // for callers that could not use it (a hybrid model's snapshot is that of the session's end).
  Result<Restored> RestoreSession(const std::string& name, engine::Sequence& seq,
                                  int leave_tokens = 0, const std::string& salt = "",
                                  const std::vector<int32_t>* only_if_prefix_of = nullptr);

  // Everything queued for disk is durable when it returns.
  Status Flush();
  // Testing and benchmarks: moves every unpinned device block out of the device tier (into the
  // host tier when it has room, to disk under on-evict), then (DropHost) empties the host tier.
  void EvictDevice();
  void DropHost();

  CacheStats Stats() const;
  // Device-tier pages no live sequence references: the pool's reclaimer can free them on demand.
  // Engine thread only.
  int ReclaimablePages() const;

  class Impl;

 private:
  explicit PrefixCache(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvstash::cache
