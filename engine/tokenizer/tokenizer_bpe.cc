#include "engine/tokenizer/tokenizer_bpe.h"

#include <array>
#include <functional>
#include <mutex>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/tokenizer/unicode.h"
#include "engine/tokenizer/unicode_split.h"

// Representation. Merging works on token ids, never on strings: a symbol starts as the id of
// its byte's stand-in character, and merges are a hash map (left id, right id) -> (rank, merged
// id) built once from `tokenizer.ggml.merges`. Token texts are looked up by their raw bytes
// (the byte-level decoding of the stored text), so pre-tokens never need to be byte-level
// encoded. A popped pair is stale when a side was merged away or no longer carries the id it
// had when the pair was pushed; equal ids mean equal text, which is llama.cpp's staleness test.

namespace kvstash::engine {
namespace {

int ParseByteToken(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(t[3]);
  const int lo = hex(t[4]);
  return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

// True when every code point of `text` is one of GPT-2's byte stand-ins.
bool IsByteLevelText(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    const auto d = unicode::DecodeUtf8(text, pos);
    if (d.cp == unicode::kInvalidCodepoint || unicode::CodepointToByte(d.cp) < 0) return false;
    pos += d.len;
  }
  return true;
}

struct Merge {
  int32_t rank;
  int32_t merged;
};

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// splitmix64 finalizer: ids are small and dense, std::hash<uint64_t> is the identity.
struct PairHash {
  size_t operator()(uint64_t x) const {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return static_cast<size_t>(x);
  }
};

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(Vocab vocab, PreTokenizer pre)
      : vocab_(std::move(vocab)), pre_(pre), specials_(SpecialTokenMatcher::ForVocab(vocab_)) {
    unicode::ClassOf(0);  // builds the class table now rather than in the first Encode
    const int32_t n = vocab_.size();
    pieces_.resize(n);
    raw_keys_.resize(n);
    text_to_id_.reserve(static_cast<size_t>(n) * 2);
    raw_to_id_.reserve(static_cast<size_t>(n) * 2);
    for (int32_t id = 0; id < n; ++id) {
      const std::string& text = vocab_.tokens[id];
      text_to_id_[text] = id;  // duplicates: the last id wins, as in llama.cpp
      switch (vocab_.types[id]) {
        case TokenType::kNormal:
          pieces_[id] = unicode::ByteLevelDecode(text);
          break;
        case TokenType::kUserDefined:
        case TokenType::kControl:
        case TokenType::kUnknown:
          pieces_[id] = text;  // stored raw; control/unknown only shown with render_special
          break;
        case TokenType::kByte: {
          const int b = ParseByteToken(text);
          if (b >= 0) pieces_[id] = std::string(1, static_cast<char>(b));
          break;
        }
        default:
          break;  // unused/undefined tokens render as nothing
      }
      // A pre-token equals this token's text exactly when its bytes equal the byte-level
      // decoding of that text, which requires the text to consist of stand-ins only. The
      // vector is sized up front, so the views taken here stay valid.
      if (IsByteLevelText(text)) {
        raw_keys_[id] = unicode::ByteLevelDecode(text);
        raw_to_id_[raw_keys_[id]] = id;
      }
    }
    for (int b = 0; b < 256; ++b) {
      byte_ids_[b] = FindText(unicode::ByteLevelEncode(std::string(1, static_cast<char>(b))));
    }
    merges_.reserve(vocab_.merges.size() * 2);
    for (size_t rank = 0; rank < vocab_.merges.size(); ++rank) {
      const std::string_view m = vocab_.merges[rank];
      const size_t space = m.find(' ', 1);
      if (space == std::string_view::npos) continue;
      const std::string_view a = m.substr(0, space);
      const std::string_view b = m.substr(space + 1);
      const int32_t left = FindText(a);
      const int32_t right = FindText(b);
      const int32_t merged = FindText(std::string(a) + std::string(b));
      if (left < 0 || right < 0 || merged < 0) continue;  // unusable merge
      merges_.emplace(PairKey(left, right), Merge{static_cast<int32_t>(rank), merged});
    }
  }

  std::vector<int32_t> Encode(std::string_view text, bool add_bos,
                              bool parse_special) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (add_bos && vocab_.bos_id >= 0) out.push_back(vocab_.bos_id);
    std::vector<SpecialTokenMatcher::Fragment> fragments;
    specials_.Split(text, parse_special, &fragments);
    std::vector<ByteRange> words;
    for (const auto& f : fragments) {
      if (f.id >= 0) {
        out.push_back(f.id);
        continue;
      }
      std::string normalized;
      std::string_view plain = f.text;
      if (vocab_.normalize_nfc) {
        normalized = unicode::Nfc(plain);
        plain = normalized;
      }
      words.clear();
      PreTokenize(pre_, plain, &words);
      for (const auto& [b, e] : words) EncodeWord(plain.substr(b, e - b), &out);
    }
    return out;
  }

  std::string TokenToPiece(int32_t id, bool render_special) const override {
    if (id < 0 || id >= vocab_.size()) return {};
    const TokenType t = vocab_.types[id];
    if (!render_special && (t == TokenType::kControl || t == TokenType::kUnknown)) return {};
    return pieces_[id];
  }

  std::string Decode(std::span<const int32_t> ids, bool render_special) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_.size()) continue;
      const TokenType t = vocab_.types[id];
      if (!render_special && (t == TokenType::kControl || t == TokenType::kUnknown)) continue;
      out += pieces_[id];
    }
    return out;
  }

  const Vocab& vocab() const override { return vocab_; }

 private:
  int32_t FindText(std::string_view text) const {
    auto it = text_to_id_.find(text);
    return it == text_to_id_.end() ? -1 : it->second;
  }
  int32_t FindRaw(std::string_view raw) const {
    auto it = raw_to_id_.find(raw);
    return it == raw_to_id_.end() ? -1 : it->second;
  }

  void EncodeWord(std::string_view word, std::vector<int32_t>* out) const {
    if (word.size() > WordIdCache::kMaxWordBytes) {
      MergeWord(word, out);
      return;
    }
    if (cache_.Lookup(word, out)) return;
    const size_t first = out->size();
    MergeWord(word, out);
    cache_.Insert(word, std::span<const int32_t>(*out).subspan(first));
  }

  void MergeWord(std::string_view word, std::vector<int32_t>* out) const {
    if (vocab_.ignore_merges) {
      const int32_t whole = FindRaw(word);
      if (whole >= 0) {
        out->push_back(whole);
        return;
      }
    }
    struct Symbol {
      int32_t id;  // -1: a byte with no token; such symbols never merge
      int32_t prev;
      int32_t next;
      uint32_t begin;
      uint32_t len;  // 0 once merged into its left neighbour
    };
    struct Pair {
      int32_t rank;
      int32_t left;
      int32_t left_id;
      int32_t right_id;
      int32_t merged;
      bool operator<(const Pair& o) const {  // std::priority_queue pops the greatest
        return rank > o.rank || (rank == o.rank && left > o.left);
      }
    };
    const auto n = static_cast<int32_t>(word.size());
    std::vector<Symbol> sym(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) {
      sym[i] = {byte_ids_[static_cast<uint8_t>(word[i])], i - 1, i + 1 < n ? i + 1 : -1,
                static_cast<uint32_t>(i), 1};
    }
    std::priority_queue<Pair> queue;
    auto try_add = [&](int32_t left, int32_t right) {
      if (left < 0 || right < 0 || sym[left].id < 0 || sym[right].id < 0) return;
      auto it = merges_.find(PairKey(sym[left].id, sym[right].id));
      if (it != merges_.end()) {
        queue.push({it->second.rank, left, sym[left].id, sym[right].id, it->second.merged});
      }
    };
    for (int32_t i = 1; i < n; ++i) try_add(i - 1, i);

    while (!queue.empty()) {
      const Pair p = queue.top();
      queue.pop();
      Symbol& l = sym[p.left];
      if (l.len == 0 || l.id != p.left_id || l.next < 0) continue;
      Symbol& r = sym[l.next];
      if (r.id != p.right_id) continue;
      l.id = p.merged;
      l.len += r.len;
      r.len = 0;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = p.left;
      try_add(l.prev, p.left);
      try_add(p.left, l.next);
    }

    for (int32_t i = 0; i >= 0; i = sym[i].next) {
      if (sym[i].id >= 0) {
        out->push_back(sym[i].id);
      } else if (vocab_.unk_id >= 0) {
        out->push_back(vocab_.unk_id);  // a byte the vocab cannot express
      }
    }
  }

  Vocab vocab_;
  PreTokenizer pre_;
  SpecialTokenMatcher specials_;
  // text_to_id_ keys view vocab_.tokens and raw_to_id_ keys view raw_keys_; neither changes
  // after construction.
  std::unordered_map<std::string_view, int32_t> text_to_id_;
  std::vector<std::string> raw_keys_;
  std::unordered_map<std::string_view, int32_t> raw_to_id_;
  std::vector<std::string> pieces_;
  std::unordered_map<uint64_t, Merge, PairHash> merges_;
  int32_t byte_ids_[256];
  WordIdCache cache_;
};

}  // namespace

bool WordIdCache::Lookup(std::string_view word, std::vector<int32_t>* out) const {
  Shard& shard = shards_[Hash{}(word) % kShards];
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.map.find(word);
  if (it == shard.map.end()) return false;
  out->insert(out->end(), it->second.begin(), it->second.end());
  return true;
}

void WordIdCache::Insert(std::string_view word, std::span<const int32_t> ids) const {
  Shard& shard = shards_[Hash{}(word) % kShards];
  std::lock_guard<std::mutex> lock(shard.mu);
  if (shard.map.size() >= kEntriesPerShard) shard.map.clear();
  shard.map.emplace(std::string(word), std::vector<int32_t>(ids.begin(), ids.end()));
}

Result<std::unique_ptr<Tokenizer>> CreateBpeTokenizer(Vocab vocab) {
  if (vocab.kind != TokenizerKind::kBpe) {
    return Status::InvalidArgument("CreateBpeTokenizer: vocab is not byte-level BPE");
  }
  KV_ASSIGN_OR_RETURN(const PreTokenizer pre, PreTokenizerFromName(vocab.pre));
  return std::unique_ptr<Tokenizer>(std::make_unique<BpeTokenizer>(std::move(vocab), pre));
}

}  // namespace kvstash::engine
