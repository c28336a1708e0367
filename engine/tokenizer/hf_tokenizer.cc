#include "engine/tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

// nlohmann::json throws on malformed input and on type mismatches; every entry point here runs
// the conversion inside one try block and turns exceptions into InvalidArgument, so callers see
// only Status. Field accessors check types first so the common mistakes get a precise message.

namespace kvstash::engine {
namespace {

using Json = nlohmann::json;

// The pre-tokenizer regexes exactly as they appear in tokenizer.json (after JSON unescaping).
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

bool LooksLikeControl(std::string_view t) {
  auto wrapped = [&](std::string_view open, std::string_view close) {
    return t.size() >= open.size() + close.size() && t.substr(0, open.size()) == open &&
           t.substr(t.size() - close.size()) == close;
  };
  return wrapped("<|", "|>") || wrapped("<\xEF\xBD\x9C", "\xEF\xBD\x9C>");  // <｜ ... ｜>
}

// A token field of tokenizer_config.json: "text", {"content": "text"}, or null.
std::optional<std::string> TokenField(const Json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return std::nullopt;
  const Json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return std::nullopt;
}

// The pre-tokenizer steps, flattening a Sequence.
std::vector<const Json*> PreTokenizerSteps(const Json& pre) {
  std::vector<const Json*> steps;
  if (pre.is_null()) return steps;
  if (pre.value("type", "") == "Sequence" && pre.contains("pretokenizers")) {
    for (const Json& p : pre["pretokenizers"]) steps.push_back(&p);
  } else {
    steps.push_back(&pre);
  }
  return steps;
}

Result<std::string> DetectPre(const Json& tok) {
  const Json& pre = tok.contains("pre_tokenizer") ? tok["pre_tokenizer"] : Json();
  std::optional<std::string> regex;
  bool byte_level = false;
  bool byte_level_regex = false;
  bool individual_digits = false;
  for (const Json* step : PreTokenizerSteps(pre)) {
    const std::string type = step->value("type", "");
    if (type == "Split") {
      if (regex.has_value()) return Status::Incompatible("pre_tokenizer has two Split steps");
      const Json& pattern = step->contains("pattern") ? (*step)["pattern"] : Json();
      if (!pattern.is_object() || !pattern.contains("Regex")) {
        return Status::Incompatible("pre_tokenizer Split without a Regex pattern");
      }
      regex = pattern["Regex"].get<std::string>();
    } else if (type == "ByteLevel") {
      byte_level = true;
      byte_level_regex = step->value("use_regex", true);
      if (step->value("add_prefix_space", false)) {
        return Status::Incompatible(
            "ByteLevel pre_tokenizer with add_prefix_space is not supported");
      }
    } else if (type == "Digits") {
      individual_digits = step->value("individual_digits", false);
      if (!individual_digits)
        return Status::Incompatible("Digits pre_tokenizer without individual_digits");
    } else {
      return Status::Incompatible("unsupported pre_tokenizer step '" + type + "'");
    }
  }
  if (!byte_level) {
    return Status::Incompatible("not a byte-level BPE tokenizer (no ByteLevel pre_tokenizer)");
  }
  if (regex.has_value()) {
    if (byte_level_regex || individual_digits) {
      return Status::Incompatible("Split regex combined with another splitting step");
    }
    if (*regex == kLlama3Regex) return std::string("llama-bpe");
    if (*regex == kQwen2Regex) return std::string("qwen2");
    if (*regex == kGpt2Regex) return std::string("gpt-2");
    return Status::Incompatible("unknown pre_tokenizer regex: " + *regex);
  }
  if (!byte_level_regex) return Status::Incompatible("ByteLevel pre_tokenizer without a regex");
  return std::string(individual_digits ? "smollm" : "gpt-2");
}

Result<bool> DetectNfc(const Json& tok) {
  if (!tok.contains("normalizer") || tok["normalizer"].is_null()) return false;
  const Json& n = tok["normalizer"];
  std::vector<const Json*> steps;
  if (n.value("type", "") == "Sequence") {
    for (const Json& s : n["normalizers"]) steps.push_back(&s);
  } else {
    steps.push_back(&n);
  }
  bool nfc = false;
  for (const Json* s : steps) {
    const std::string type = s->value("type", "");
    if (type != "NFC") return Status::Incompatible("unsupported normalizer '" + type + "'");
    nfc = true;
  }
  return nfc;
}

int32_t FindToken(const std::vector<std::string>& tokens, std::string_view text) {
  for (int32_t id = static_cast<int32_t>(tokens.size()) - 1; id >= 0; --id) {
    if (tokens[id] == text) return id;
  }
  return -1;
}

Result<int32_t> ConfigTokenId(const Json& config, const char* key, const Vocab& v) {
  const std::optional<std::string> text = TokenField(config, key);
  if (!text.has_value()) return -1;
  const int32_t id = FindToken(v.tokens, *text);
  if (id < 0) {
    return Status::InvalidArgument(std::string("tokenizer_config.json: ") + key + " '" + *text +
                                   "' is not in the vocabulary");
  }
  return id;
}

// Does the post_processor's single-sequence template start with `bos`?
bool TemplateAddsBos(const Json& tok, std::string_view bos) {
  if (!tok.contains("post_processor") || !tok["post_processor"].is_object()) return false;
  const Json* pp = &tok["post_processor"];
  if (pp->value("type", "") == "Sequence" && pp->contains("processors")) {
    for (const Json& p : (*pp)["processors"]) {
      if (p.value("type", "") == "TemplateProcessing") pp = &p;
    }
  }
  if (pp->value("type", "") != "TemplateProcessing" || !pp->contains("single")) return false;
  const Json& single = (*pp)["single"];
  if (!single.is_array() || single.empty()) return false;
  const Json& first = single[0];
  return first.contains("SpecialToken") && first["SpecialToken"].value("id", "") == bos;
}

Result<Vocab> Convert(const Json& tok, const Json& config) {
  Vocab v;
  v.kind = TokenizerKind::kBpe;
  if (!tok.is_object() || !tok.contains("model") || !tok["model"].is_object()) {
    return Status::InvalidArgument("tokenizer.json: no 'model' object");
  }
  const Json& model = tok["model"];
  const std::string type = model.value("type", "BPE");
  if (type != "BPE") return Status::Incompatible("tokenizer.json: model type '" + type + "'");
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return Status::InvalidArgument("tokenizer.json: model.vocab is not an object");
  }
  KV_ASSIGN_OR_RETURN(v.pre, DetectPre(tok));
  KV_ASSIGN_OR_RETURN(v.normalize_nfc, DetectNfc(tok));
  v.ignore_merges = model.value("ignore_merges", false);
  v.add_space_prefix = false;

  // Token table: model vocab, then added tokens (which may also re-type model vocab entries).
  const Json& vocab = model["vocab"];
  const Json added = tok.contains("added_tokens") ? tok["added_tokens"] : Json::array();
  int64_t max_id = -1;
  for (const auto& [text, id] : vocab.items())
    max_id = std::max<int64_t>(max_id, id.get<int64_t>());
  for (const Json& a : added) max_id = std::max<int64_t>(max_id, a.at("id").get<int64_t>());
  if (max_id < 0 || max_id >= (int64_t{1} << 24)) {
    return Status::InvalidArgument("tokenizer.json: token ids up to " + std::to_string(max_id));
  }
  const auto n = static_cast<int32_t>(max_id + 1);
  v.tokens.assign(n, std::string());
  v.types.assign(n, TokenType::kUnused);
  std::vector<bool> filled(n, false);
  for (const auto& [text, id_json] : vocab.items()) {
    const auto id = id_json.get<int64_t>();
    if (id < 0) return Status::InvalidArgument("tokenizer.json: negative id for '" + text + "'");
    v.tokens[id] = text;
    v.types[id] = TokenType::kNormal;
    filled[id] = true;
  }
  for (const Json& a : added) {
    const auto id = a.at("id").get<int64_t>();
    if (id < 0) return Status::InvalidArgument("tokenizer.json: negative added token id");
    const std::string content = a.at("content").get<std::string>();
    v.tokens[id] = content;
    v.types[id] = (a.value("special", false) || LooksLikeControl(content))
                      ? TokenType::kControl
                      : TokenType::kUserDefined;
    filled[id] = true;
  }
  for (int32_t id = 0; id < n; ++id) {
    if (!filled[id]) v.tokens[id] = "[PAD" + std::to_string(id) + "]";
  }

  if (model.contains("merges")) {
    const Json& merges = model["merges"];
    v.merges.reserve(merges.size());
    for (const Json& m : merges) {
      if (m.is_string()) {
        v.merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2) {
        v.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      } else {
        return Status::InvalidArgument("tokenizer.json: malformed merge " + m.dump());
      }
    }
  }

  KV_ASSIGN_OR_RETURN(v.bos_id, ConfigTokenId(config, "bos_token", v));
  KV_ASSIGN_OR_RETURN(v.eos_id, ConfigTokenId(config, "eos_token", v));
  KV_ASSIGN_OR_RETURN(v.pad_id, ConfigTokenId(config, "pad_token", v));
  KV_ASSIGN_OR_RETURN(v.unk_id, ConfigTokenId(config, "unk_token", v));
  if (v.unk_id < 0 && model.contains("unk_token") && model["unk_token"].is_string()) {
    v.unk_id = FindToken(v.tokens, model["unk_token"].get<std::string>());
  }
  for (std::string_view t : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<EOT>"}) {
    v.eot_id = FindToken(v.tokens, t);
    if (v.eot_id >= 0) break;
  }

  const bool config_has_bos_flag = config.is_object() && config.contains("add_bos_token") &&
                                   config["add_bos_token"].is_boolean();
  if (config_has_bos_flag) {
    v.add_bos = config["add_bos_token"].get<bool>();
  } else {
    v.add_bos = v.bos_id >= 0 && (v.pre == "llama-bpe" || TemplateAddsBos(tok, v.tokens[v.bos_id]));
  }
  v.add_eos = config.is_object() && config.value("add_eos_token", false);
  if (v.add_bos && v.bos_id < 0) {
    return Status::InvalidArgument("tokenizer_config.json: add_bos_token without a bos_token");
  }

  if (config.is_object() && config.contains("chat_template")) {
    const Json& ct = config["chat_template"];
    if (ct.is_string()) {
      v.chat_template = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const Json& t : ct) {
        if (t.value("name", "") == "default" || v.chat_template.empty()) {
          v.chat_template = t.value("template", "");
        }
      }
    }
  }
  return v;
}

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IOError("open " + path + ": cannot read");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return Status::IOError("read " + path + " failed");
  return ss.str();
}

}  // namespace

Result<Vocab> VocabFromHfJson(std::string_view tokenizer_json,
                              std::string_view tokenizer_config_json) {
  Json tok;
  Json config;
  try {
    tok = Json::parse(tokenizer_json);
  } catch (const std::exception& e) {
    return Status::InvalidArgument(std::string("tokenizer.json: ") + e.what());
  }
  try {
    if (!tokenizer_config_json.empty()) config = Json::parse(tokenizer_config_json);
  } catch (const std::exception& e) {
    return Status::InvalidArgument(std::string("tokenizer_config.json: ") + e.what());
  }
  try {
    return Convert(tok, config);
  } catch (const std::exception& e) {
    return Status::InvalidArgument(std::string("tokenizer.json: unexpected structure: ") +
                                   e.what());
  }
}

Result<Vocab> LoadHfVocab(const std::string& tokenizer_json_path) {
  KV_ASSIGN_OR_RETURN(const std::string tok, ReadFile(tokenizer_json_path));
  std::string config;
  const std::filesystem::path config_path =
      std::filesystem::path(tokenizer_json_path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::exists(config_path, ec)) {
    KV_ASSIGN_OR_RETURN(config, ReadFile(config_path.string()));
  }
  Result<Vocab> v = VocabFromHfJson(tok, config);
  if (!v.ok()) return v.status().WithContext(tokenizer_json_path);
  return v;
}

}  // namespace kvstash::engine
