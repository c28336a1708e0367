#include "engine/tokenizer/tokenizer.h"

#include <string>
#include <string_view>

#include "engine/tokenizer/tokenizer_bpe.h"
#include "engine/tokenizer/tokenizer_spm.h"

namespace kvstash::engine {
namespace {

Status CheckId(int32_t id, int32_t n, const char* what) {
  if (id < -1 || id >= n) {
    return Status::InvalidArgument(std::string("vocab: ") + what + " id " + std::to_string(id) +
                                   " outside [0, " + std::to_string(n) + ")");
  }
  return Status::Ok();
}

// Control tokens that end a generation although the vocab names neither as EOS nor EOT
// (llama.cpp keeps the same list by token text: Qwen's <|endoftext|> next to <|im_end|>, ...).
bool IsEndOfGenerationText(std::string_view text) {
  static constexpr std::string_view kTexts[] = {
      "<|eot_id|>",    "<|im_end|>", "<|end|>",         "<end_of_turn>",
      "<|endoftext|>", "<|eom_id|>", "<|end_of_text|>", "<EOT>",
  };
  for (std::string_view t : kTexts) {
    if (t == text) return true;
  }
  return false;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> Tokenizer::Create(Vocab vocab) {
  const int32_t n = vocab.size();
  if (n == 0) return Status::InvalidArgument("vocab: no tokens");
  if (vocab.types.empty()) vocab.types.assign(n, TokenType::kNormal);
  if (static_cast<int32_t>(vocab.types.size()) != n) {
    return Status::InvalidArgument("vocab: " + std::to_string(vocab.types.size()) +
                                   " token types for " + std::to_string(n) + " tokens");
  }
  if (!vocab.scores.empty() && static_cast<int32_t>(vocab.scores.size()) != n) {
    return Status::InvalidArgument("vocab: " + std::to_string(vocab.scores.size()) +
                                   " scores for " + std::to_string(n) + " tokens");
  }
  KV_RETURN_IF_ERROR(CheckId(vocab.bos_id, n, "bos"));
  KV_RETURN_IF_ERROR(CheckId(vocab.eos_id, n, "eos"));
  KV_RETURN_IF_ERROR(CheckId(vocab.eot_id, n, "eot"));
  KV_RETURN_IF_ERROR(CheckId(vocab.unk_id, n, "unk"));
  KV_RETURN_IF_ERROR(CheckId(vocab.pad_id, n, "pad"));
  switch (vocab.kind) {
    case TokenizerKind::kSpm:
      return CreateSpmTokenizer(std::move(vocab));
    case TokenizerKind::kBpe:
      return CreateBpeTokenizer(std::move(vocab));
  }
  return Status::InvalidArgument("vocab: unknown tokenizer kind");
}

bool Tokenizer::IsEog(int32_t id) const {
  const Vocab& v = vocab();
  if (id < 0 || id >= v.size()) return false;
  if (id == v.eos_id || id == v.eot_id) return true;
  return v.types[id] == TokenType::kControl && IsEndOfGenerationText(v.tokens[id]);
}

}  // namespace kvstash::engine
