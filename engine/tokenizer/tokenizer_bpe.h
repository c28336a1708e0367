// Byte-level BPE tokenizer for `tokenizer.ggml.model = "gpt2"` vocabs (GPT-2, Llama 3, Qwen2/3,
// SmolLM). Encoding: split out added/special tokens, NFC-normalize when the vocab asks (Qwen),
// pre-tokenize with the vocab's `pre` regex family (engine/unicode_split.h), then merge each
// pre-token's bytes by merge rank (lowest first, leftmost on ties) over a linked list with a
// priority queue, so a word costs O(n log n). With `ignore_merges` (Llama 3) a pre-token that is
// itself a token is emitted whole. Decoding maps GPT-2's printable byte stand-ins back to bytes,
// so Decode(Encode(x)) == x for any byte string x.
//
// Pre-token results are memoized in a bounded, sharded, mutex-guarded cache (cleared shard by
// shard when full); source code repeats its words, so most pre-tokens hit it.
//
// Thread safety: Encode/Decode are const and may run concurrently.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"

namespace kvstash::engine {

// `vocab.kind` must be kBpe; the vocab is assumed validated by Tokenizer::Create. Fails with
// Incompatible for an unknown `vocab.pre`.
Result<std::unique_ptr<Tokenizer>> CreateBpeTokenizer(Vocab vocab);

// Bounded memo of word -> token ids, shared by the BPE and SPM encoders. Sharded by hash, each
// shard behind its own mutex and cleared wholesale when full (no LRU bookkeeping on the hot
// path). Thread-safe.
class WordIdCache {
 public:
  static constexpr size_t kMaxWordBytes = 256;  // longer words are not cached
  // Appends the ids cached for `word` to `out` and returns true; false on a miss.
  bool Lookup(std::string_view word, std::vector<int32_t>* out) const;
  void Insert(std::string_view word, std::span<const int32_t> ids) const;

 private:
  static constexpr size_t kShards = 16;
  static constexpr size_t kEntriesPerShard = 8192;
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> map;
  };
  mutable std::array<Shard, kShards> shards_;
};

}  // namespace kvstash::engine
