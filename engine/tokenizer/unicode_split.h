// Splitting text before subword merging: the byte-level BPE pre-tokenizers and the special-token
// partition shared by both tokenizers.
//
// Pre-tokenizers are the regexes of the Hugging Face tokenizer.json files (and llama.cpp's
// `tokenizer.ggml.pre` families) written out by hand as scanners over code point classes: no
// std::regex, linear time, and exact \p{L}/\p{N}/\s semantics from engine/unicode.h. A split
// never changes bytes; it returns [begin, end) byte ranges that tile the input.
//
// Thread safety: PreTokenize is a pure function. SpecialTokenMatcher is immutable after
// construction and safe to share.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"
#include "engine/tokenizer/vocab.h"

namespace kvstash::engine {

enum class PreTokenizer {
  // llama.cpp's fallback for BPE vocabs without a known `pre`: isolate runs of punctuation and
  // $+<=>^~|, then the GPT-2 regex, then isolate digit runs, then split digits in threes.
  kDefault,
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
  // \s*[\r\n]+|\s+(?!\S)|\s+   (Llama 3)
  kLlama3,
  // The Llama 3 regex with \p{N} (single digits) instead of \p{N}{1,3} (Qwen2/2.5/3).
  kQwen2,
  // Every digit isolated, then the GPT-2 regex (StarCoder, SmolLM, Command-R, ...).
  kStarCoder,
};

// Maps a `tokenizer.ggml.pre` value to its pre-tokenizer. "" and "default" give kDefault;
// unknown names are Incompatible (silently guessing would tokenize differently from the model's
// training).
Result<PreTokenizer> PreTokenizerFromName(std::string_view pre);

using ByteRange = std::pair<uint32_t, uint32_t>;  // [begin, end) byte offsets

// Appends the pre-tokens of `text` (at most 4 GiB) to `out`; empty text gives none.
void PreTokenize(PreTokenizer kind, std::string_view text, std::vector<ByteRange>* out);

// Finds special and added tokens in raw text before subword tokenization. Matching is
// leftmost-longest over all eligible strings (Hugging Face's added-token splitting): control and
// unknown-type tokens only with `parse_special`, user-defined tokens always (as in HF tokenizers
// and llama.cpp, they are part of the vocabulary's normal surface).
class SpecialTokenMatcher {
 public:
  struct Entry {
    std::string text;
    int32_t id = -1;
    bool needs_parse_special = true;  // control/unknown: only when parse_special
  };
  explicit SpecialTokenMatcher(std::vector<Entry> entries);
  // Every control, unknown and user-defined token of `vocab`, matched by its stored text.
  static SpecialTokenMatcher ForVocab(const Vocab& vocab);

  // One piece of the partition: a token id, or (id < 0) a run of plain text.
  struct Fragment {
    int32_t id;
    std::string_view text;
  };
  // Tiles `text` into plain-text fragments and matched tokens, in order. Plain fragments are
  // never empty.
  void Split(std::string_view text, bool parse_special, std::vector<Fragment>* out) const;

  bool empty() const { return entries_.empty(); }

 private:
  // A byte trie over the entry strings; node 0 is the root.
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
    int32_t entry = -1;                                 // index into entries_ ending here
  };
  int32_t Child(int32_t node, uint8_t b) const;

  std::vector<Entry> entries_;
  std::vector<Node> nodes_;
  bool any_always_ = false;  // some entry matches even without parse_special
};

}  // namespace kvstash::engine
