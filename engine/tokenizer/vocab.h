// The tokenizer vocabulary as GGUF stores it (tokenizer.ggml.* keys), model-independent.
// Immutable value type; thread-safe to share once built.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace kvstash::engine {

class GgufFile;

// tokenizer.ggml.model
enum class TokenizerKind { kSpm /* "llama" */, kBpe /* "gpt2" */ };

// tokenizer.ggml.token_type values (llama.cpp numbering).
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct Vocab {
  TokenizerKind kind = TokenizerKind::kSpm;
  std::string pre;                  // tokenizer.ggml.pre ("llama-bpe", "qwen2", "gpt-2", ...)
  std::vector<std::string> tokens;  // tokenizer.ggml.tokens
  std::vector<float> scores;        // tokenizer.ggml.scores (may be empty for BPE)
  std::vector<TokenType> types;     // tokenizer.ggml.token_type (Normal when absent)
  std::vector<std::string> merges;  // tokenizer.ggml.merges, "left right" (BPE)
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t eot_id = -1;  // end of turn (<|eot_id|>, <|im_end|>) when known
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  bool add_bos = true;           // tokenizer.ggml.add_bos_token
  bool add_eos = false;          // tokenizer.ggml.add_eos_token
  bool add_space_prefix = true;  // tokenizer.ggml.add_space_prefix (SPM)
  bool ignore_merges = false;    // BPE: whole-word vocab hit skips merging (Llama 3)
  bool normalize_nfc = false;    // BPE: apply NFC before pre-tokenizing (Qwen2/3)
  std::string chat_template;     // tokenizer.chat_template, empty when absent

  int32_t size() const { return static_cast<int32_t>(tokens.size()); }

  // Reads the tokenizer.ggml.* keys; InvalidArgument/Corruption with the key name when
  // something is missing or inconsistent (e.g. scores and tokens of different lengths).
  static Result<Vocab> FromGguf(const GgufFile& file);
};

}  // namespace kvstash::engine
