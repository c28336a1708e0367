#include "engine/tokenizer/unicode_split.h"

#include <algorithm>

#include "engine/tokenizer/unicode.h"

// The scanners below follow the regexes alternative by alternative, in order, at each position,
// the way a backtracking engine (Oniguruma in HF tokenizers) settles them. Each regex alternative
// used here is a run over one class with at most one optional leading character and no nested
// backtracking, so a single forward scan decides which alternative wins and where it ends.
// Passes compose: a later pass re-splits each range the previous one produced (llama.cpp applies
// its regex lists the same way).

namespace kvstash::engine {
namespace {

using unicode::ClassOf;
using unicode::kLetter;
using unicode::kNumber;
using unicode::kPunctuation;
using unicode::kWhitespace;

// The decoded input: code points with their class and byte offset (offset[n] = input size).
struct Codepoints {
  std::vector<uint32_t> cp;
  std::vector<uint8_t> cls;
  std::vector<uint32_t> offset;
  uint32_t size() const { return static_cast<uint32_t>(cp.size()); }
};

Codepoints Decode(std::string_view text) {
  Codepoints c;
  c.cp.reserve(text.size());
  c.cls.reserve(text.size());
  c.offset.reserve(text.size() + 1);
  size_t pos = 0;
  while (pos < text.size()) {
    const auto d = unicode::DecodeUtf8(text, pos);
    c.cp.push_back(d.cp);
    c.cls.push_back(ClassOf(d.cp));
    c.offset.push_back(static_cast<uint32_t>(pos));
    pos += d.len;
  }
  c.offset.push_back(static_cast<uint32_t>(text.size()));
  return c;
}

using Ranges = std::vector<ByteRange>;  // here: code point index ranges

bool IsLetter(uint8_t k) { return k & kLetter; }
bool IsNumber(uint8_t k) { return k & kNumber; }
bool IsSpace(uint8_t k) { return k & kWhitespace; }
// [^\s\p{L}\p{N}]
bool IsOther(uint8_t k) { return !(k & (kLetter | kNumber | kWhitespace)); }
bool IsNewline(uint32_t cp) { return cp == '\r' || cp == '\n'; }
uint32_t AsciiLower(uint32_t cp) { return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp; }

// Length of the contraction ('s 't 'm 'd 're 've 'll) at `pos`, or 0.
uint32_t Contraction(const Codepoints& c, uint32_t pos, uint32_t end, bool ignore_case) {
  if (c.cp[pos] != '\'' || pos + 1 >= end) return 0;
  auto at = [&](uint32_t i) { return ignore_case ? AsciiLower(c.cp[i]) : c.cp[i]; };
  const uint32_t a = at(pos + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (pos + 2 >= end) return 0;
  const uint32_t b = at(pos + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// \s+(?!\S)|\s+ at `pos` (a whitespace run of length `n` that ends at `pos + n`): a run that is
// followed by more text leaves its last character to prefix the next pre-token.
uint32_t WhitespaceTail(uint32_t pos, uint32_t n, uint32_t end) {
  if (n > 1 && pos + n < end) return n - 1;
  return n;
}

void SplitGpt2(const Codepoints& c, uint32_t begin, uint32_t end, Ranges* out) {
  uint32_t pos = begin;
  while (pos < end) {
    uint32_t len = Contraction(c, pos, end, /*ignore_case=*/false);
    if (len == 0) {
      // ' ?\p{L}+' | ' ?\p{N}+' | ' ?[^\s\p{L}\p{N}]+'
      const uint32_t q = pos + (c.cp[pos] == ' ' ? 1 : 0);
      if (q < end) {
        const uint8_t k = c.cls[q];
        bool (*same)(uint8_t) = IsLetter(k)   ? IsLetter
                                : IsNumber(k) ? IsNumber
                                : IsOther(k)  ? IsOther
                                              : nullptr;
        if (same != nullptr) {
          uint32_t r = q + 1;
          while (r < end && same(c.cls[r])) ++r;
          len = r - pos;
        }
      }
    }
    if (len == 0) {
      uint32_t n = 0;
      while (pos + n < end && IsSpace(c.cls[pos + n])) ++n;
      len = n > 0 ? WhitespaceTail(pos, n, end) : 1;
    }
    out->emplace_back(pos, pos + len);
    pos += len;
  }
}

void SplitLlama3(const Codepoints& c, uint32_t begin, uint32_t end, uint32_t max_digits,
                 Ranges* out) {
  uint32_t pos = begin;
  while (pos < end) {
    const uint32_t cp = c.cp[pos];
    const uint8_t k = c.cls[pos];
    uint32_t len = Contraction(c, pos, end, /*ignore_case=*/true);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (len == 0 && !IsNewline(cp) && !IsNumber(k) &&
        (IsLetter(k) || (pos + 1 < end && IsLetter(c.cls[pos + 1])))) {
      uint32_t r = pos + 1;
      while (r < end && IsLetter(c.cls[r])) ++r;
      len = r - pos;
    }
    // \p{N}{1,max_digits}
    if (len == 0 && IsNumber(k)) {
      uint32_t r = pos + 1;
      while (r < end && r - pos < max_digits && IsNumber(c.cls[r])) ++r;
      len = r - pos;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    if (len == 0) {
      uint32_t r = pos + (cp == ' ' ? 1 : 0);
      if (r < end && IsOther(c.cls[r])) {
        while (r < end && IsOther(c.cls[r])) ++r;
        while (r < end && IsNewline(c.cp[r])) ++r;
        len = r - pos;
      }
    }
    if (len == 0) {
      // \s*[\r\n]+ takes the run up to its last line break; else \s+(?!\S)|\s+.
      uint32_t n = 0;
      uint32_t after_newline = 0;
      while (pos + n < end && IsSpace(c.cls[pos + n])) {
        if (IsNewline(c.cp[pos + n])) after_newline = n + 1;
        ++n;
      }
      if (after_newline > 0) {
        len = after_newline;
      } else {
        len = n > 0 ? WhitespaceTail(pos, n, end) : 1;
      }
    }
    out->emplace_back(pos, pos + len);
    pos += len;
  }
}

// Isolated split on maximal runs of `pred` (or single characters when `singles`): matches and
// the gaps between them both become ranges.
template <typename Pred>
void IsolateRuns(const Codepoints& c, uint32_t begin, uint32_t end, bool singles, Pred pred,
                 Ranges* out) {
  uint32_t gap = begin;
  uint32_t pos = begin;
  while (pos < end) {
    if (!pred(pos)) {
      ++pos;
      continue;
    }
    if (gap < pos) out->emplace_back(gap, pos);
    uint32_t r = pos + 1;
    if (!singles) {
      while (r < end && pred(r)) ++r;
    }
    out->emplace_back(pos, r);
    pos = gap = r;
  }
  if (gap < end) out->emplace_back(gap, end);
}

// [0-9][0-9][0-9], isolated.
void SplitDigitTriples(const Codepoints& c, uint32_t begin, uint32_t end, Ranges* out) {
  auto digit = [&](uint32_t i) { return c.cp[i] >= '0' && c.cp[i] <= '9'; };
  uint32_t gap = begin;
  uint32_t pos = begin;
  while (pos < end) {
    if (pos + 3 <= end && digit(pos) && digit(pos + 1) && digit(pos + 2)) {
      if (gap < pos) out->emplace_back(gap, pos);
      out->emplace_back(pos, pos + 3);
      pos = gap = pos + 3;
    } else {
      ++pos;
    }
  }
  if (gap < end) out->emplace_back(gap, end);
}

template <typename Fn>
Ranges Refine(const Ranges& in, Fn fn) {
  Ranges out;
  out.reserve(in.size() * 2);
  for (const auto& [b, e] : in) fn(b, e, &out);
  return out;
}

}  // namespace

Result<PreTokenizer> PreTokenizerFromName(std::string_view pre) {
  struct Alias {
    std::string_view name;
    PreTokenizer kind;
  };
  static constexpr Alias kAliases[] = {
      {"", PreTokenizer::kDefault},
      {"default", PreTokenizer::kDefault},
      {"gpt-2", PreTokenizer::kGpt2},
      {"gpt2", PreTokenizer::kGpt2},
      {"phi-2", PreTokenizer::kGpt2},
      {"mpt", PreTokenizer::kGpt2},
      {"olmo", PreTokenizer::kGpt2},
      {"jina-es", PreTokenizer::kGpt2},
      {"jina-de", PreTokenizer::kGpt2},
      {"roberta-bpe", PreTokenizer::kGpt2},
      {"llama-bpe", PreTokenizer::kLlama3},
      {"llama3", PreTokenizer::kLlama3},
      {"llama-v3", PreTokenizer::kLlama3},
      {"falcon3", PreTokenizer::kLlama3},
      {"dbrx", PreTokenizer::kLlama3},
      {"smaug-bpe", PreTokenizer::kLlama3},
      {"qwen2", PreTokenizer::kQwen2},
      {"stablelm2", PreTokenizer::kQwen2},
      {"starcoder", PreTokenizer::kStarCoder},
      {"smollm", PreTokenizer::kStarCoder},
      {"refact", PreTokenizer::kStarCoder},
      {"command-r", PreTokenizer::kStarCoder},
      {"codeshell", PreTokenizer::kStarCoder},
      {"exaone", PreTokenizer::kStarCoder},
  };
  for (const Alias& a : kAliases) {
    if (a.name == pre) return a.kind;
  }
  return Status::Incompatible("unsupported pre-tokenizer '" + std::string(pre) +
                              "' (tokenizer.ggml.pre)");
}

void PreTokenize(PreTokenizer kind, std::string_view text, std::vector<ByteRange>* out) {
  if (text.empty()) return;
  const Codepoints c = Decode(text);
  Ranges ranges{{0, c.size()}};
  auto gpt2 = [&](uint32_t b, uint32_t e, Ranges* o) { SplitGpt2(c, b, e, o); };
  auto number = [&](uint32_t i) { return IsNumber(c.cls[i]); };
  switch (kind) {
    case PreTokenizer::kGpt2:
      ranges = Refine(ranges, gpt2);
      break;
    case PreTokenizer::kLlama3:
    case PreTokenizer::kQwen2: {
      const uint32_t max_digits = kind == PreTokenizer::kLlama3 ? 3 : 1;
      ranges = Refine(
          ranges, [&](uint32_t b, uint32_t e, Ranges* o) { SplitLlama3(c, b, e, max_digits, o); });
      break;
    }
    case PreTokenizer::kStarCoder:
      ranges = Refine(ranges, [&](uint32_t b, uint32_t e, Ranges* o) {
        IsolateRuns(c, b, e, /*singles=*/true, number, o);
      });
      ranges = Refine(ranges, gpt2);
      break;
    case PreTokenizer::kDefault: {
      // [\p{P}\$\+<=>\^~\|]+
      auto punct = [&](uint32_t i) {
        const uint32_t cp = c.cp[i];
        return (c.cls[i] & kPunctuation) || cp == '$' || cp == '+' || cp == '<' || cp == '=' ||
               cp == '>' || cp == '^' || cp == '~' || cp == '|';
      };
      ranges = Refine(ranges, [&](uint32_t b, uint32_t e, Ranges* o) {
        IsolateRuns(c, b, e, /*singles=*/false, punct, o);
      });
      ranges = Refine(ranges, gpt2);
      ranges = Refine(ranges, [&](uint32_t b, uint32_t e, Ranges* o) {
        IsolateRuns(c, b, e, /*singles=*/false, number, o);
      });
      ranges =
          Refine(ranges, [&](uint32_t b, uint32_t e, Ranges* o) { SplitDigitTriples(c, b, e, o); });
      break;
    }
  }
  out->reserve(out->size() + ranges.size());
  for (const auto& [b, e] : ranges) out->emplace_back(c.offset[b], c.offset[e]);
}

// --- SpecialTokenMatcher ---

SpecialTokenMatcher::SpecialTokenMatcher(std::vector<Entry> entries) {
  nodes_.emplace_back();
  for (Entry& e : entries) {
    if (e.text.empty() || e.id < 0) continue;
    const auto index = static_cast<int32_t>(entries_.size());
    int32_t node = 0;
    for (char ch : e.text) {
      const auto b = static_cast<uint8_t>(ch);
      int32_t next = Child(node, b);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_.emplace_back();
        auto& kids = nodes_[node].children;
        kids.insert(std::upper_bound(kids.begin(), kids.end(), std::make_pair(b, int32_t{-1})),
                    {b, next});
      }
      node = next;
    }
    // The same string twice (it happens in converted vocabs): the first id wins.
    if (nodes_[node].entry >= 0) continue;
    nodes_[node].entry = index;
    any_always_ = any_always_ || !e.needs_parse_special;
    entries_.push_back(std::move(e));
  }
}

SpecialTokenMatcher SpecialTokenMatcher::ForVocab(const Vocab& vocab) {
  std::vector<Entry> entries;
  for (int32_t id = 0; id < vocab.size() && id < static_cast<int32_t>(vocab.types.size()); ++id) {
    const TokenType t = vocab.types[id];
    if (t == TokenType::kControl || t == TokenType::kUnknown) {
      entries.push_back({vocab.tokens[id], id, true});
    } else if (t == TokenType::kUserDefined) {
      entries.push_back({vocab.tokens[id], id, false});
    }
  }
  return SpecialTokenMatcher(std::move(entries));
}

int32_t SpecialTokenMatcher::Child(int32_t node, uint8_t b) const {
  const auto& kids = nodes_[node].children;
  auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(b, int32_t{-1}));
  return (it != kids.end() && it->first == b) ? it->second : -1;
}

void SpecialTokenMatcher::Split(std::string_view text, bool parse_special,
                                std::vector<Fragment>* out) const {
  if (text.empty()) return;
  if (entries_.empty() || (!parse_special && !any_always_)) {
    out->push_back({-1, text});
    return;
  }
  size_t plain_begin = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    int32_t node = Child(0, static_cast<uint8_t>(text[pos]));
    int32_t best = -1;
    size_t best_len = 0;
    size_t len = 1;
    while (node >= 0) {
      const int32_t e = nodes_[node].entry;
      if (e >= 0 && (parse_special || !entries_[e].needs_parse_special)) {
        best = e;
        best_len = len;
      }
      if (pos + len >= text.size()) break;
      node = Child(node, static_cast<uint8_t>(text[pos + len]));
      ++len;
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    if (plain_begin < pos) out->push_back({-1, text.substr(plain_begin, pos - plain_begin)});
    out->push_back({entries_[best].id, text.substr(pos, best_len)});
    pos += best_len;
    plain_begin = pos;
  }
  if (plain_begin < text.size()) out->push_back({-1, text.substr(plain_begin)});
}

}  // namespace kvstash::engine
