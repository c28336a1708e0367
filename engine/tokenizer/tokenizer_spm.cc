#include "engine/tokenizer/tokenizer_spm.h"

#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/tokenizer/tokenizer_bpe.h"  // WordIdCache
#include "engine/tokenizer/unicode.h"
#include "engine/tokenizer/unicode_split.h"

// Merging follows llama.cpp's SPM session: one symbol per UTF-8 character, a max-heap of
// adjacent pairs whose concatenation is a token, keyed by that token's score (ties: leftmost).
// A popped pair is stale when either side has been merged since it was pushed; the size check
// detects that because merging only ever grows a symbol. Merged symbols are always tokens, so
// only never-merged characters can need the byte fallback.
//
// Speed: merging a whole 100 KiB fragment as one symbol list is slow (one big heap, a string
// hash per candidate pair). When no token has "▁" after a non-"▁" character (true of
// SentencePiece vocabs, whose pieces never straddle a word start), no token can span the point
// just before a "▁" that follows another character, so no merge crosses it: cutting the text
// there and merging the words separately gives the same tokens. Words are then memoized.

namespace kvstash::engine {
namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581 "▁"

// "<0x0A>" -> 10, else -1.
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

// Is the character before byte offset `pos` a "▁"?
bool FollowsSpaceMark(std::string_view s, size_t pos) {
  return pos >= kSpaceMark.size() &&
         s.substr(pos - kSpaceMark.size(), kSpaceMark.size()) == kSpaceMark;
}

std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size() + s.size() / 2);
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(Vocab vocab)
      : vocab_(std::move(vocab)), specials_(SpecialTokenMatcher::ForVocab(vocab_)) {
    const int32_t n = vocab_.size();
    text_to_id_.reserve(static_cast<size_t>(n) * 2);
    pieces_.resize(n);
    for (int32_t id = 0; id < n; ++id) {
      const std::string& text = vocab_.tokens[id];
      text_to_id_[text] = id;  // duplicates: the last id wins, as in llama.cpp
      switch (vocab_.types[id]) {
        case TokenType::kNormal:
          pieces_[id] = ReplaceAll(text, kSpaceMark, " ");
          break;
        case TokenType::kUserDefined:
        case TokenType::kControl:
        case TokenType::kUnknown:
          pieces_[id] = text;  // control/unknown only shown with render_special
          break;
        case TokenType::kByte: {
          const int b = ParseByteToken(text);
          if (b >= 0) pieces_[id] = std::string(1, static_cast<char>(b));
          break;
        }
        default:
          break;  // unused/undefined tokens render as nothing
      }
    }
    split_words_ = true;
    for (const std::string& t : vocab_.tokens) {
      for (size_t k = t.find(kSpaceMark, 1); k != std::string::npos;
           k = t.find(kSpaceMark, k + 1)) {
        if (!FollowsSpaceMark(t, k)) split_words_ = false;
      }
    }
    for (int b = 0; b < 256; ++b) {
      static constexpr char kHex[] = "0123456789ABCDEF";
      const std::string hex = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
      int32_t id = Find(hex);
      if (id < 0) id = Find(std::string(1, static_cast<char>(b)));
      byte_ids_[b] = id >= 0 ? id : vocab_.unk_id;
    }
  }

  std::vector<int32_t> Encode(std::string_view text, bool add_bos,
                              bool parse_special) const override {
    std::vector<int32_t> out;
    if (add_bos && vocab_.bos_id >= 0) out.push_back(vocab_.bos_id);
    std::vector<SpecialTokenMatcher::Fragment> fragments;
    specials_.Split(text, parse_special, &fragments);
    bool after_special = true;  // the input start counts as "after a special token"
    for (const auto& f : fragments) {
      if (f.id >= 0) {
        out.push_back(f.id);
        after_special = true;
        continue;
      }
      std::string s;
      if (vocab_.add_space_prefix && after_special) s = " ";
      s.append(f.text);
      EncodeFragment(ReplaceAll(s, " ", kSpaceMark), &out);
      after_special = false;
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
    // The space Encode prefixed to the first word is dropped again (a leading BOS is skipped
    // over first), so Decode(Encode(x)) == x.
    bool strip_space = vocab_.add_space_prefix;
    for (size_t i = 0; i < ids.size(); ++i) {
      std::string piece = TokenToPiece(ids[i], render_special);
      if (strip_space) {
        if (i == 0 && ids[i] == vocab_.bos_id) {
          out += piece;
          continue;
        }
        if (!piece.empty() && piece[0] == ' ') piece.erase(0, 1);
        strip_space = false;
      }
      out += piece;
    }
    return out;
  }

  const Vocab& vocab() const override { return vocab_; }

 private:
  struct Symbol {
    int32_t prev;
    int32_t next;
    uint32_t begin;  // byte offset in the escaped text
    uint32_t len;    // 0 once merged into its left neighbour
  };
  struct Bigram {
    float score;
    int32_t left;
    int32_t right;
    uint32_t len;
    bool operator<(const Bigram& o) const {  // std::priority_queue pops the greatest
      return score < o.score || (score == o.score && left > o.left);
    }
  };

  int32_t Find(std::string_view text) const {
    auto it = text_to_id_.find(text);
    return it == text_to_id_.end() ? -1 : it->second;
  }

  float Score(int32_t id) const { return vocab_.scores.empty() ? 0.0f : vocab_.scores[id]; }

  // Cuts before every "▁" that follows a non-"▁" character (when that is safe, see above).
  void EncodeFragment(std::string_view s, std::vector<int32_t>* out) const {
    if (!split_words_) {
      EncodeWord(s, out);
      return;
    }
    size_t begin = 0;
    size_t pos = s.find(kSpaceMark, 1);
    while (pos != std::string_view::npos) {
      if (!FollowsSpaceMark(s, pos)) {
        EncodeCachedWord(s.substr(begin, pos - begin), out);
        begin = pos;
      }
      pos = s.find(kSpaceMark, pos + kSpaceMark.size());
    }
    EncodeCachedWord(s.substr(begin), out);
  }

  void EncodeCachedWord(std::string_view word, std::vector<int32_t>* out) const {
    if (word.size() > WordIdCache::kMaxWordBytes) {
      EncodeWord(word, out);
      return;
    }
    if (cache_.Lookup(word, out)) return;
    const size_t first = out->size();
    EncodeWord(word, out);
    cache_.Insert(word, std::span<const int32_t>(*out).subspan(first));
  }

  void EncodeWord(std::string_view s, std::vector<int32_t>* out) const {
    if (s.empty()) return;
    std::vector<Symbol> sym;
    sym.reserve(s.size());
    for (size_t pos = 0; pos < s.size();) {
      const uint32_t len = unicode::DecodeUtf8(s, pos).len;
      const auto index = static_cast<int32_t>(sym.size());
      sym.push_back(
          {index - 1, pos + len < s.size() ? index + 1 : -1, static_cast<uint32_t>(pos), len});
      pos += len;
    }
    std::priority_queue<Bigram> queue;
    auto try_add = [&](int32_t left, int32_t right) {
      if (left < 0 || right < 0) return;
      const uint32_t len = sym[left].len + sym[right].len;
      const int32_t id = Find(s.substr(sym[left].begin, len));
      if (id >= 0) queue.push({Score(id), left, right, len});
    };
    for (int32_t i = 1; i < static_cast<int32_t>(sym.size()); ++i) try_add(i - 1, i);

    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Symbol& l = sym[b.left];
      Symbol& r = sym[b.right];
      if (l.len == 0 || r.len == 0 || l.len + r.len != b.len) continue;
      l.len += r.len;
      r.len = 0;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }

    for (int32_t i = 0; i >= 0; i = sym[i].next) {
      const std::string_view text = s.substr(sym[i].begin, sym[i].len);
      const int32_t id = Find(text);
      if (id >= 0) {
        out->push_back(id);
        continue;
      }
      for (char c : text) {
        const int32_t b = byte_ids_[static_cast<uint8_t>(c)];
        if (b >= 0) out->push_back(b);
      }
    }
  }

  Vocab vocab_;
  SpecialTokenMatcher specials_;
  // Keys view vocab_.tokens, which never changes after construction.
  std::unordered_map<std::string_view, int32_t> text_to_id_;
  std::vector<std::string> pieces_;
  int32_t byte_ids_[256];
  bool split_words_ = false;  // see the note at the top
  WordIdCache cache_;
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> CreateSpmTokenizer(Vocab vocab) {
  if (vocab.kind != TokenizerKind::kSpm) {
    return Status::InvalidArgument("CreateSpmTokenizer: vocab is not SentencePiece-style");
  }
  return std::unique_ptr<Tokenizer>(std::make_unique<SpmTokenizer>(std::move(vocab)));
}

}  // namespace kvstash::engine
