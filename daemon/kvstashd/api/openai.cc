// Errors, usage, /v1/models and /tokenize + /detokenize (openai.h). Request parsing is in
// openai_request.cc, response building in openai_response.cc.
#include "daemon/kvstashd/api/openai.h"

#include <string>
#include <vector>

#include "daemon/kvstashd/api/openai_json.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvstash::daemon::api {

using internal::Dump;
using internal::Fail;
using internal::Json;
using internal::OrderedJson;

namespace internal {

OrderedJson ErrorObject(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? OrderedJson(nullptr) : OrderedJson(e.param)},
            {"code", e.code.empty() ? OrderedJson(nullptr) : OrderedJson(e.code)}}}};
}

OrderedJson KvstashUsageObject(const serve::Usage& u) {
  return {{"cached_tokens", u.cached_tokens},
          {"device_tokens", u.device_tokens},
          {"host_tokens", u.host_tokens},
          {"disk_tokens", u.disk_tokens},
          {"prefilled_tokens", u.prefilled_tokens},
          {"queue_ms", u.queue_ms},
          {"load_ms", u.load_ms},
          {"prefill_ms", u.prefill_ms},
          {"ttft_ms", u.ttft_ms},
          {"decode_ms", u.decode_ms},
          {"total_ms", u.total_ms},
          {"preemptions", u.preemptions}};
}

OrderedJson UsageObject(const serve::Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.generated_tokens},
          {"total_tokens", u.prompt_tokens + u.generated_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}},
          {"kvstash", KvstashUsageObject(u)}};
}

}  // namespace internal

std::string ApiError::ToJson() const {
  try {
    return Dump(internal::ErrorObject(*this));
  } catch (...) {
    return "{\"error\":{\"message\":\"internal error\",\"type\":\"server_error\",\"param\":null,"
           "\"code\":null}}";
  }
}

ApiError ErrorFromStatus(const Status& s) {
  ApiError e;
  e.message = s.message().empty() ? std::string(StatusCodeName(s.code())) : s.message();
  const std::string& m = s.message();
  const bool too_large = m.find("context") != std::string::npos ||
                         m.find("KV pages") != std::string::npos ||
                         m.find("KV pool") != std::string::npos;
  switch (s.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kResourceExhausted:
      if (too_large) {
        e.http_status = 422;
        e.code = "context_length_exceeded";
      } else if (s.code() == StatusCode::kResourceExhausted) {
        e.http_status = 503;
        e.type = "unavailable_error";
      }
      break;
    case StatusCode::kBusy:
    case StatusCode::kCancelled:
      e.http_status = 503;
      e.type = "unavailable_error";
      break;
    case StatusCode::kNotFound:
      e.http_status = 404;
      e.type = "not_found_error";
      break;
    case StatusCode::kIncompatible:
      e.http_status = 409;
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
      break;
  }
  return e;
}

std::string UsageJson(const serve::Usage& usage) {
  try {
    return Dump(internal::UsageObject(usage));
  } catch (...) {
    return "{}";
  }
}

std::string_view FinishReasonString(serve::FinishReason r) {
  switch (r) {
    case serve::FinishReason::kEndOfGeneration:
    case serve::FinishReason::kStopString:
      return "stop";
    case serve::FinishReason::kMaxTokens:
    case serve::FinishReason::kContextFull:
      return "length";
    case serve::FinishReason::kCancelled:
      return "cancelled";
  }
  return "stop";
}

namespace {

const engine::Tokenizer& NeedTokenizer(const ModelContext& model) {
  if (model.tokenizer == nullptr) Fail("", "the model has no tokenizer vocabulary");
  return *model.tokenizer;
}

std::string Tokenize(std::string_view body, const ModelContext& model) {
  const Json j = internal::ParseBodyObject(body);
  auto content = internal::OptString(j, "content");
  if (!content) Fail("content", "'content' is required");
  const bool add_special = internal::OptBool(j, "add_special").value_or(false);
  const bool parse_special = internal::OptBool(j, "parse_special").value_or(true);
  const bool with_pieces = internal::OptBool(j, "with_pieces").value_or(false);
  const engine::Tokenizer& tok = NeedTokenizer(model);
  const std::vector<int32_t> ids =
      tok.Encode(*content, add_special && tok.vocab().add_bos, parse_special);
  OrderedJson tokens = OrderedJson::array();
  for (int32_t id : ids) {
    if (!with_pieces) {
      tokens.push_back(id);
      continue;
    }
    // A piece that is not valid UTF-8 on its own (part of a character) goes out as its bytes.
    const std::string piece = tok.TokenToPiece(id, true);
    OrderedJson p = internal::FindInvalidUtf8(piece) == std::string_view::npos
                        ? OrderedJson(piece)
                        : OrderedJson::array();
    if (p.is_array()) {
      for (unsigned char c : piece) p.push_back(static_cast<int>(c));
    }
    tokens.push_back({{"id", id}, {"piece", std::move(p)}});
  }
  return Dump(OrderedJson{{"tokens", std::move(tokens)}});
}

std::string Detokenize(std::string_view body, const ModelContext& model) {
  const Json j = internal::ParseBodyObject(body);
  const Json* tokens = internal::FindField(j, "tokens");
  if (tokens == nullptr) Fail("tokens", "'tokens' is required");
  if (!tokens->is_array()) {
    Fail("tokens",
         std::string("'tokens' must be an array of token ids, got ") + tokens->type_name());
  }
  const engine::Tokenizer& tok = NeedTokenizer(model);
  const int64_t n_vocab = tok.vocab().size();
  std::vector<int32_t> ids;
  ids.reserve(tokens->size());
  for (size_t i = 0; i < tokens->size(); ++i) {
    const std::string p = "tokens[" + std::to_string(i) + "]";
    const int64_t id = internal::AsInteger((*tokens)[i], p);
    if (id < 0 || id >= n_vocab) {
      Fail(p, "token id " + std::to_string(id) + " is out of range [0, " + std::to_string(n_vocab) +
                  ")");
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  return Dump(OrderedJson{{"content", tok.Decode(ids, /*render_special=*/true)}});
}

}  // namespace

Result<std::string> HandleTokenize(std::string_view body, const ModelContext& model,
                                   ApiError* error) {
  return internal::Guard<std::string>(error, [&] { return Tokenize(body, model); });
}

Result<std::string> HandleDetokenize(std::string_view body, const ModelContext& model,
                                     ApiError* error) {
  return internal::Guard<std::string>(error, [&] { return Detokenize(body, model); });
}

std::string ModelsJson(const ModelContext& model, int64_t created_unix) {
  try {
    return Dump(OrderedJson{{"object", "list"},
                            {"data", OrderedJson::array({{{"id", model.model_id},
                                                          {"object", "model"},
                                                          {"created", created_unix},
                                                          {"owned_by", "kvstash"},
                                                          {"aliases", model.aliases}}})}});
  } catch (...) {
    return "{\"object\":\"list\",\"data\":[]}";
  }
}

}  // namespace kvstash::daemon::api
