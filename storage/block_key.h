// BlockKey and BlockHeader: what the block store is keyed by and what it keeps beside each payload.
//
// A BlockKey is an opaque 128-bit identifier (the cache layer uses a chained XXH3-128 hash); the
// store never interprets it. A BlockHeader is the small, caller-defined description stored with
// each payload and returned on every read so the caller can rule out false hits (parent hash,
// token ids, layout tag). Both are plain values: thread-safe to share when not mutated.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvstash::storage {

struct BlockKey {
  uint64_t hi = 0;
  uint64_t lo = 0;

  friend bool operator==(const BlockKey&, const BlockKey&) = default;
  friend auto operator<=>(const BlockKey&, const BlockKey&) = default;

  // 32 lowercase hex digits, `hi` first.
  std::string ToHex() const;
};

// Keys are hashes already; mixing both halves keeps a hand-made key (tests) well spread too.
struct BlockKeyHash {
  size_t operator()(const BlockKey& k) const noexcept {
    return static_cast<size_t>(k.lo ^ (k.hi * 0x9E3779B97F4A7C15ull) ^ (k.hi >> 29));
  }
};

// Stored verbatim next to the payload; the store only checks that it fits (see
// format::kMaxBlockHeaderBytes) and returns it with each hit.
struct BlockHeader {
  BlockKey parent;                 // key of the previous block in the chain; zero for the first
  uint64_t layout_tag = 0;         // opaque to storage: identifies how the payload is laid out
  std::vector<int32_t> token_ids;  // the tokens this block covers

  friend bool operator==(const BlockHeader&, const BlockHeader&) = default;
};

}  // namespace kvstash::storage
