#include "engine/tokenizer/vocab.h"

#include <cstring>
#include <string>
#include <string_view>

#include "engine/gguf/gguf.h"

// Defaults follow llama.cpp's loader where a key is absent: SPM vocabs get bos 1 / eos 2 / unk 0,
// add_bos and add_space_prefix; BPE vocabs get neither prefix space nor BOS, except the Llama 3
// family (add_bos, ignore_merges). Qwen2 vocabs are NFC-normalized as their tokenizer.json asks
// (llama.cpp skips that step; Hugging Face does not).

namespace kvstash::engine {
namespace {

constexpr std::string_view kModelKey = "tokenizer.ggml.model";
constexpr std::string_view kTokensKey = "tokenizer.ggml.tokens";
constexpr std::string_view kScoresKey = "tokenizer.ggml.scores";
constexpr std::string_view kTypesKey = "tokenizer.ggml.token_type";
constexpr std::string_view kMergesKey = "tokenizer.ggml.merges";

// Element i of a scalar array as int64; false for non-integer element types.
bool IntElement(const GgufArray& a, uint64_t i, int64_t* out) {
  auto load = [&](auto tag) {
    decltype(tag) v;
    std::memcpy(&v, a.data + i * sizeof(v), sizeof(v));
    *out = static_cast<int64_t>(v);
    return true;
  };
  switch (a.elem_type) {
    case GgufValueType::kInt8:
      return load(int8_t{});
    case GgufValueType::kUint8:
      return load(uint8_t{});
    case GgufValueType::kInt16:
      return load(int16_t{});
    case GgufValueType::kUint16:
      return load(uint16_t{});
    case GgufValueType::kInt32:
      return load(int32_t{});
    case GgufValueType::kUint32:
      return load(uint32_t{});
    case GgufValueType::kInt64:
      return load(int64_t{});
    case GgufValueType::kUint64:
      return load(uint64_t{});
    default:
      return false;
  }
}

// Absent keys keep the default. -1 written as an unsigned sentinel (0xFFFFFFFF, as some
// converters do for "no such token") or as a negative integer also means "none".
Status ReadTokenId(const GgufFile& file, std::string_view key, int32_t n, int32_t* id) {
  const GgufValue* value = file.Find(key);
  if (value == nullptr) return Status::Ok();
  if (const auto* s = std::get_if<int64_t>(&value->v); s != nullptr && *s < 0) {
    *id = -1;
    return Status::Ok();
  }
  KV_ASSIGN_OR_RETURN(const uint64_t v, file.GetUint(key));
  if (v == UINT32_MAX || v == UINT64_MAX) {
    *id = -1;
    return Status::Ok();
  }
  if (v >= static_cast<uint64_t>(n)) {
    return Status::Corruption(std::string(key) + " = " + std::to_string(v) + " is outside the " +
                              std::to_string(n) + "-token vocabulary");
  }
  *id = static_cast<int32_t>(v);
  return Status::Ok();
}

Status ReadFlag(const GgufFile& file, std::string_view key, bool* flag) {
  if (file.Find(key) == nullptr) return Status::Ok();
  KV_ASSIGN_OR_RETURN(*flag, file.GetBool(key));
  return Status::Ok();
}

int32_t FindToken(const Vocab& v, std::string_view text) {
  for (int32_t id = v.size() - 1; id >= 0; --id) {
    if (v.tokens[id] == text) return id;
  }
  return -1;
}

Result<Vocab> ReadVocab(const GgufFile& file) {
  Vocab v;
  KV_ASSIGN_OR_RETURN(const std::string model, file.GetString(kModelKey));
  if (model == "llama") {
    v.kind = TokenizerKind::kSpm;
  } else if (model == "gpt2") {
    v.kind = TokenizerKind::kBpe;
  } else {
    return Status::Incompatible(std::string(kModelKey) + " = '" + model +
                                "' is not supported (only 'llama' and 'gpt2')");
  }
  if (file.Find("tokenizer.ggml.pre") != nullptr) {
    KV_ASSIGN_OR_RETURN(v.pre, file.GetString("tokenizer.ggml.pre"));
  }

  KV_ASSIGN_OR_RETURN(const GgufArray* tokens, file.GetArray(kTokensKey));
  if (tokens->elem_type != GgufValueType::kString) {
    return Status::InvalidArgument(std::string(kTokensKey) + " is not a string array");
  }
  if (tokens->count == 0 || tokens->count > (uint64_t{1} << 30)) {
    return Status::Corruption(std::string(kTokensKey) + " has " + std::to_string(tokens->count) +
                              " entries");
  }
  const auto n = static_cast<int32_t>(tokens->count);
  v.tokens.reserve(n);
  for (std::string_view t : tokens->strings) v.tokens.emplace_back(t);

  if (file.Find(kScoresKey) != nullptr) {
    KV_ASSIGN_OR_RETURN(const GgufArray* scores, file.GetArray(kScoresKey));
    if (scores->elem_type != GgufValueType::kFloat32) {
      return Status::InvalidArgument(std::string(kScoresKey) + " is not a float32 array");
    }
    if (scores->count != tokens->count) {
      return Status::Corruption(std::string(kScoresKey) + " has " + std::to_string(scores->count) +
                                " entries for " + std::to_string(n) + " tokens");
    }
    v.scores.resize(n);
    std::memcpy(v.scores.data(), scores->data, sizeof(float) * static_cast<size_t>(n));
  }

  v.types.assign(n, TokenType::kNormal);
  if (file.Find(kTypesKey) != nullptr) {
    KV_ASSIGN_OR_RETURN(const GgufArray* types, file.GetArray(kTypesKey));
    if (types->count != tokens->count) {
      return Status::Corruption(std::string(kTypesKey) + " has " + std::to_string(types->count) +
                                " entries for " + std::to_string(n) + " tokens");
    }
    for (int32_t i = 0; i < n; ++i) {
      int64_t t = 0;
      if (!IntElement(*types, static_cast<uint64_t>(i), &t)) {
        return Status::InvalidArgument(std::string(kTypesKey) + " is not an integer array");
      }
      if (t < 0 || t > static_cast<int64_t>(TokenType::kByte)) {
        return Status::Corruption(std::string(kTypesKey) + "[" + std::to_string(i) +
                                  "] = " + std::to_string(t) + " is not a token type");
      }
      v.types[i] = static_cast<TokenType>(t);
    }
  }

  if (v.kind == TokenizerKind::kBpe) {
    KV_ASSIGN_OR_RETURN(const GgufArray* merges, file.GetArray(kMergesKey));
    if (merges->elem_type != GgufValueType::kString) {
      return Status::InvalidArgument(std::string(kMergesKey) + " is not a string array");
    }
    v.merges.reserve(merges->strings.size());
    for (std::string_view m : merges->strings) v.merges.emplace_back(m);
  }

  // Per-kind defaults, then the file's explicit keys.
  if (v.kind == TokenizerKind::kSpm) {
    v.bos_id = n > 1 ? 1 : -1;
    v.eos_id = n > 2 ? 2 : -1;
    v.unk_id = 0;
    v.add_bos = true;
    v.add_space_prefix = true;
  } else {
    const bool llama3 = v.pre == "llama-bpe" || v.pre == "llama3" || v.pre == "llama-v3";
    v.add_bos = llama3;
    v.ignore_merges = llama3;
    v.normalize_nfc = v.pre == "qwen2";
    v.add_space_prefix = false;
  }
  KV_RETURN_IF_ERROR(ReadTokenId(file, "tokenizer.ggml.bos_token_id", n, &v.bos_id));
  KV_RETURN_IF_ERROR(ReadTokenId(file, "tokenizer.ggml.eos_token_id", n, &v.eos_id));
  KV_RETURN_IF_ERROR(ReadTokenId(file, "tokenizer.ggml.eot_token_id", n, &v.eot_id));
  KV_RETURN_IF_ERROR(ReadTokenId(file, "tokenizer.ggml.unknown_token_id", n, &v.unk_id));
  KV_RETURN_IF_ERROR(ReadTokenId(file, "tokenizer.ggml.padding_token_id", n, &v.pad_id));
  KV_RETURN_IF_ERROR(ReadFlag(file, "tokenizer.ggml.add_bos_token", &v.add_bos));
  KV_RETURN_IF_ERROR(ReadFlag(file, "tokenizer.ggml.add_eos_token", &v.add_eos));
  KV_RETURN_IF_ERROR(ReadFlag(file, "tokenizer.ggml.add_space_prefix", &v.add_space_prefix));
  if (v.add_bos && v.bos_id < 0) {
    return Status::Corruption("tokenizer.ggml.add_bos_token is set but there is no BOS token");
  }
  if (v.eot_id < 0) {
    // Chat models whose converter did not record EOT: find it by its text.
    for (std::string_view t : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<EOT>"}) {
      const int32_t id = FindToken(v, t);
      if (id >= 0) {
        v.eot_id = id;
        break;
      }
    }
  }
  if (file.Find("tokenizer.chat_template") != nullptr) {
    KV_ASSIGN_OR_RETURN(v.chat_template, file.GetString("tokenizer.chat_template"));
  }
  return v;
}

}  // namespace

Result<Vocab> Vocab::FromGguf(const GgufFile& file) {
  Result<Vocab> v = ReadVocab(file);
  if (!v.ok()) return v.status().WithContext(file.path());
  return v;
}

}  // namespace kvstash::engine
