// The Anthropic Messages API (anthropic.h).
#include "daemon/kvstashd/api/anthropic.h"

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "daemon/kvstashd/api/openai_json.h"

namespace kvstash::daemon::api {
namespace {

using internal::Fail;
using internal::FindField;
using internal::Json;
using internal::OptBool;
using internal::OptInteger;
using internal::OptNumber;
using internal::OptString;
using OJson = internal::OrderedJson;

constexpr size_t kMaxStopSequences = 16;

std::string BlockType(const Json& b, const std::string& param) {
  if (!b.is_object()) Fail(param, "'" + param + "' must be an object, got " + b.type_name());
  auto t = OptString(b, "type", param + ".type");
  if (!t) Fail(param + ".type", "'" + param + ".type' is required");
  return *t;
}

std::string BlockText(const Json& b, const std::string& param) {
  auto t = OptString(b, "text", param + ".text");
  if (!t) Fail(param + ".text", "'" + param + ".text' is required");
  return *t;
}

void Unsupported(const std::string& param, const std::string& type) {
  Fail(param + ".type", "content block type '" + type +
                            "' is not supported (text, thinking, tool_use and tool_result are)");
}

// Text of a string or an array of text blocks (system prompts, tool results).
std::string TextOf(const Json& v, const std::string& param) {
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) {
    Fail(param, "'" + param + "' must be a string or an array of blocks, got " + v.type_name());
  }
  std::string out;
  for (size_t k = 0; k < v.size(); ++k) {
    const std::string bp = param + "[" + std::to_string(k) + "]";
    const std::string type = BlockType(v[k], bp);
    if (type != "text") Unsupported(bp, type);
    if (!out.empty()) out += "\n";
    out += BlockText(v[k], bp);
  }
  return out;
}

void ParseTurn(const Json& m, const std::string& param, std::vector<Message>* out) {
  if (!m.is_object()) Fail(param, "'" + param + "' must be an object, got " + m.type_name());
  const std::string role = OptString(m, "role", param + ".role").value_or("");
  if (role != "user" && role != "assistant") {
    Fail(param + ".role", "'" + param + ".role' must be 'user' or 'assistant', got '" + role + "'");
  }
  const Json* c = FindField(m, "content");
  if (c == nullptr) Fail(param + ".content", "'" + param + ".content' is required");
  Message msg;
  msg.role = role;
  if (c->is_string()) {
    msg.content = c->get<std::string>();
    out->push_back(std::move(msg));
    return;
  }
  if (!c->is_array()) {
    Fail(param + ".content", "'" + param + ".content' must be a string or an array of blocks");
  }
  const std::string cp = param + ".content";
  for (size_t k = 0; k < c->size(); ++k) {
    const Json& b = (*c)[k];
    const std::string bp = cp + "[" + std::to_string(k) + "]";
    const std::string type = BlockType(b, bp);
    if (type == "text") {
      if (!msg.content.empty()) msg.content += "\n";
      msg.content += BlockText(b, bp);
    } else if (type == "thinking" && role == "assistant") {
      msg.reasoning += OptString(b, "thinking", bp + ".thinking").value_or("");
    } else if (type == "redacted_thinking" && role == "assistant") {
      continue;  // opaque to a local model
    } else if (type == "tool_use" && role == "assistant") {
      ToolCall call;
      call.id = OptString(b, "id", bp + ".id").value_or("");
      call.name = OptString(b, "name", bp + ".name").value_or("");
      if (call.name.empty()) Fail(bp + ".name", "'" + bp + ".name' is required");
      const Json* input = FindField(b, "input");
      call.arguments = input != nullptr ? internal::Dump(*input) : "{}";
      msg.tool_calls.push_back(std::move(call));
    } else if (type == "tool_result" && role == "user") {
      Message tool;
      tool.role = "tool";
      tool.tool_call_id = OptString(b, "tool_use_id", bp + ".tool_use_id").value_or("");
      if (tool.tool_call_id.empty()) {
        Fail(bp + ".tool_use_id", "'" + bp + ".tool_use_id' is required");
      }
      if (const Json* rc = FindField(b, "content")) tool.content = TextOf(*rc, bp + ".content");
      if (OptBool(b, "is_error", bp + ".is_error").value_or(false)) {
        tool.content = "Error: " + tool.content;
      }
      out->push_back(std::move(tool));
    } else {
      Unsupported(bp, type);
    }
  }
  if (role == "assistant" || !msg.content.empty()) out->push_back(std::move(msg));
}

void ParseTools(const Json& j, Conversation* conv) {
  internal::ParseFlatTools(j, "custom", "custom", "input_schema", &conv->tools);
  if (const Json* tc = FindField(j, "tool_choice")) {
    if (!tc->is_object()) Fail("tool_choice", "'tool_choice' must be an object");
    const std::string type = OptString(*tc, "type", "tool_choice.type").value_or("auto");
    if (type == "auto") {
      conv->tool_choice = ToolChoice::kAuto;
    } else if (type == "any") {
      conv->tool_choice = ToolChoice::kRequired;
    } else if (type == "none") {
      conv->tool_choice = ToolChoice::kNone;
    } else if (type == "tool") {
      conv->tool_choice = ToolChoice::kNamed;
      conv->tool_choice_name = OptString(*tc, "name", "tool_choice.name").value_or("");
      if (conv->tool_choice_name.empty())
        Fail("tool_choice.name", "'tool_choice.name' is required");
    } else {
      Fail("tool_choice.type",
           "'tool_choice.type' must be auto, any, tool or none, got '" + type + "'");
    }
    conv->parallel_tool_calls =
        !OptBool(*tc, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use")
             .value_or(false);
  }
}

// Everything but the token budget; `count_only` (count_tokens) does not require max_tokens.
ParsedRequest ParseBody(std::string_view body, const ModelContext& model, bool count_only) {
  const Json j = internal::ParseBodyObject(body);
  ParsedRequest p;
  p.chat = true;
  p.model = OptString(j, "model").value_or(model.model_id);
  Conversation& conv = p.conversation;
  if (const Json* sys = FindField(j, "system")) {
    Message m;
    m.role = "system";
    m.content = TextOf(*sys, "system");
    conv.messages.push_back(std::move(m));
  }
  const Json* msgs = FindField(j, "messages");
  if (msgs == nullptr) Fail("messages", "'messages' is required");
  if (!msgs->is_array() || msgs->empty()) Fail("messages", "'messages' must be a non-empty array");
  for (size_t i = 0; i < msgs->size(); ++i) {
    ParseTurn((*msgs)[i], "messages[" + std::to_string(i) + "]", &conv.messages);
  }
  // A final assistant turn is a prefill the reply continues.
  conv.continue_final = conv.messages.back().role == "assistant";
  ParseTools(j, &conv);
  if (const Json* th = FindField(j, "thinking")) {
    if (!th->is_object()) Fail("thinking", "'thinking' must be an object");
    const std::string type = OptString(*th, "type", "thinking.type").value_or("");
    if (type == "enabled") {
      conv.enable_thinking = true;
    } else if (type == "disabled") {
      conv.enable_thinking = false;
    } else {
      Fail("thinking.type", "'thinking.type' must be 'enabled' or 'disabled'");
    }
  }
  if (count_only) {
    internal::RenderInto(j, model, "messages", &p);
    return p;
  }
  auto max_tokens = OptInteger(j, "max_tokens");
  if (!max_tokens) Fail("max_tokens", "'max_tokens' is required");
  if (*max_tokens < 1) Fail("max_tokens", "'max_tokens' must be at least 1");
  // Anthropic's temperature is 0..1; sampling otherwise as the OpenAI routes.
  if (auto t = OptNumber(j, "temperature")) internal::CheckRange("temperature", *t, 0, 1);
  internal::ParseSampling(j, model, &p.request.sampling);
  if (const Json* stop = FindField(j, "stop_sequences")) {
    if (!stop->is_array() || stop->size() > kMaxStopSequences) {
      Fail("stop_sequences", "'stop_sequences' must be an array of at most " +
                                 std::to_string(kMaxStopSequences) + " strings");
    }
    for (const Json& s : *stop) {
      if (!s.is_string()) Fail("stop_sequences", "'stop_sequences' must hold strings");
      p.request.limits.stop_strings.push_back(s.get<std::string>());
    }
  }
  p.stream = OptBool(j, "stream").value_or(false);
  if (const Json* md = FindField(j, "metadata"); md != nullptr && md->is_object()) {
    internal::SetSessionHint(OptString(*md, "user_id", "metadata.user_id").value_or(""), &p);
  }
  if (auto salt = OptString(j, "cache_salt")) p.request.cache_salt = *salt;
  internal::RenderInto(j, model, "messages", &p);
  internal::SetBudget(model, max_tokens, "messages", &p);
  return p;
}

std::string Sse(std::string_view event, const OJson& data) {
  return "event: " + std::string(event) + "\ndata: " + internal::Dump(data) + "\n\n";
}

std::string ErrorType(int status) {
  switch (status) {
    case 400:
    case 422:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    case 403:
      return "permission_error";
    case 404:
      return "not_found_error";
    case 413:
      return "request_too_large";
    case 429:
      return "rate_limit_error";
    case 503:
    case 529:
      return "overloaded_error";
    default:
      return "api_error";
  }
}

OJson ErrorJson(const ApiError& e) {
  return {{"type", "error"},
          {"error", {{"type", ErrorType(e.http_status)}, {"message", e.message}}}};
}

class AnthropicBuilder final : public ReplyBuilder {
 public:
  AnthropicBuilder(const ParsedRequest& req, std::string id, const ModelContext& model)
      : reply_(req, "toolu_"),
        id_(std::move(id)),
        model_name_(req.model),
        prompt_tokens_(static_cast<int>(req.request.prompt.size())),
        block_tokens_(std::max(1, model.block_tokens)),
        stops_(req.request.limits.stop_strings) {}

  std::string StreamOpen() override {
    OJson msg = {{"id", id_},
                 {"type", "message"},
                 {"role", "assistant"},
                 {"model", model_name_},
                 {"content", OJson::array()},
                 {"stop_reason", nullptr},
                 {"stop_sequence", nullptr},
                 {"usage", {{"input_tokens", prompt_tokens_}, {"output_tokens", 0}}}};
    return Sse("message_start", {{"type", "message_start"}, {"message", std::move(msg)}}) +
           Sse("ping", {{"type", "ping"}});
  }

  std::string StreamEvent(const serve::Event& e) override {
    if (finished_) return {};
    std::string out;
    switch (e.kind) {
      case serve::Event::Kind::kPrefillProgress:
        return {};
      case serve::Event::Kind::kError:
        finished_ = true;
        error_ = ErrorFromStatus(e.status);
        return Sse("error", ErrorJson(*error_));
      case serve::Event::Kind::kToken: {
        std::vector<engine::OutputEvent> events;
        reply_.Feed(e.token, e.text, &events);
        return Blocks(events, /*stream=*/true);
      }
      case serve::Event::Kind::kDone: {
        finished_ = true;
        usage_ = e.usage;
        std::vector<engine::OutputEvent> events;
        reply_.Finish(e.text, &events);
        out = Blocks(events, /*stream=*/true);
        out += CloseBlock(/*stream=*/true);
        OJson delta = {
            {"type", "message_delta"},
            {"delta", {{"stop_reason", StopReason()}, {"stop_sequence", StopSequence()}}},
            {"usage", Usage()}};
        out += Sse("message_delta", delta);
        out += Sse("message_stop", {{"type", "message_stop"}});
        return out;
      }
    }
    return out;
  }

  void Add(const serve::Event& e) override {
    if (finished_) return;
    std::vector<engine::OutputEvent> events;
    if (e.kind == serve::Event::Kind::kToken) {
      reply_.Feed(e.token, e.text, &events);
      Blocks(events, /*stream=*/false);
    } else if (e.kind == serve::Event::Kind::kDone) {
      finished_ = true;
      usage_ = e.usage;
      reply_.Finish(e.text, &events);
      Blocks(events, /*stream=*/false);
      CloseBlock(/*stream=*/false);
    } else if (e.kind == serve::Event::Kind::kError) {
      finished_ = true;
      error_ = ErrorFromStatus(e.status);
    }
  }

  std::string Finish() const override {
    if (error_) return AnthropicErrorBody(*error_);
    OJson body = {{"id", id_},
                  {"type", "message"},
                  {"role", "assistant"},
                  {"model", model_name_},
                  {"content", content_},
                  {"stop_reason", StopReason()},
                  {"stop_sequence", StopSequence()},
                  {"usage", Usage()}};
    return internal::Dump(body);
  }

  std::optional<ApiError> error() const override { return error_; }
  std::string ErrorBody(const ApiError& e) const override { return AnthropicErrorBody(e); }
  std::optional<std::pair<Message, ReplayEntry>> ReplyRecord() const override {
    if (!finished_ || error_) return std::nullopt;
    return std::make_pair(reply_.AsMessage(), ReplayEntry{"", reply_.ids(), {}});
  }

 private:
  enum class Open { kNone, kText, kThinking, kToolUse };

  OJson Usage() const {
    const int cached = usage_.cached_tokens;
    const int full = usage_.prompt_tokens / block_tokens_ * block_tokens_;
    const int created = std::max(0, full - cached);
    return {{"input_tokens", std::max(0, usage_.prompt_tokens - cached - created)},
            {"cache_creation_input_tokens", created},
            {"cache_read_input_tokens", cached},
            {"output_tokens", usage_.generated_tokens},
            {"kvstash", internal::KvstashUsageObject(usage_)}};
  }
  std::string StopReason() const {
    if (!reply_.calls().empty() && usage_.finish != serve::FinishReason::kMaxTokens) {
      return "tool_use";
    }
    switch (usage_.finish) {
      case serve::FinishReason::kStopString:
        return "stop_sequence";
      case serve::FinishReason::kMaxTokens:
      case serve::FinishReason::kContextFull:
        return "max_tokens";
      default:
        return "end_turn";
    }
  }
  OJson StopSequence() const {
    if (usage_.finish != serve::FinishReason::kStopString || stops_.size() != 1) return nullptr;
    return stops_[0];
  }

  // Opens a block of `kind` (closing the open one) and returns the frames.
  std::string OpenBlock(Open kind, OJson block, bool stream) {
    std::string out = CloseBlock(stream);
    open_ = kind;
    content_.push_back(block);
    if (stream) {
      out += Sse("content_block_start", {{"type", "content_block_start"},
                                         {"index", content_.size() - 1},
                                         {"content_block", std::move(block)}});
    }
    return out;
  }
  std::string CloseBlock(bool stream) {
    if (open_ == Open::kNone) return {};
    std::string out;
    OJson& b = content_.back();
    if (open_ == Open::kToolUse) {
      // The arguments streamed as text; the block's `input` is their parsed value.
      OJson input = OJson::parse(args_, nullptr, false);
      b["input"] = input.is_object() ? input : OJson::object();
      args_.clear();
    }
    if (stream) {
      if (open_ == Open::kThinking) {
        out += Sse("content_block_delta",
                   {{"type", "content_block_delta"},
                    {"index", content_.size() - 1},
                    {"delta", {{"type", "signature_delta"}, {"signature", ""}}}});
      }
      out += Sse("content_block_stop",
                 {{"type", "content_block_stop"}, {"index", content_.size() - 1}});
    }
    open_ = Open::kNone;
    return out;
  }
  std::string Delta(OJson delta, bool stream) {
    if (!stream) return {};
    return Sse("content_block_delta", {{"type", "content_block_delta"},
                                       {"index", content_.size() - 1},
                                       {"delta", std::move(delta)}});
  }

  std::string Blocks(const std::vector<engine::OutputEvent>& events, bool stream) {
    using K = engine::OutputEvent::Kind;
    std::string out;
    for (const engine::OutputEvent& ev : events) {
      switch (ev.kind) {
        case K::kText: {
          if (ev.text.empty()) break;
          if (open_ != Open::kText) {
            // Whitespace between tool calls does not open a text block of its own.
            pending_ws_ += ev.text;
            if (pending_ws_.find_first_not_of(" \t\r\n") == std::string::npos) break;
            out += OpenBlock(Open::kText, {{"type", "text"}, {"text", ""}}, stream);
            std::string text = std::move(pending_ws_);
            pending_ws_.clear();
            const size_t first = text.find_first_not_of(" \t\r\n");
            text.erase(0, first);
            content_.back()["text"] = content_.back()["text"].get<std::string>() + text;
            out += Delta({{"type", "text_delta"}, {"text", text}}, stream);
            break;
          }
          content_.back()["text"] = content_.back()["text"].get<std::string>() + ev.text;
          out += Delta({{"type", "text_delta"}, {"text", ev.text}}, stream);
          break;
        }
        case K::kReasoning:
          if (ev.text.empty()) break;
          if (open_ != Open::kThinking) {
            out += OpenBlock(Open::kThinking,
                             {{"type", "thinking"}, {"thinking", ""}, {"signature", ""}}, stream);
          }
          content_.back()["thinking"] = content_.back()["thinking"].get<std::string>() + ev.text;
          out += Delta({{"type", "thinking_delta"}, {"thinking", ev.text}}, stream);
          break;
        case K::kToolCallBegin: {
          pending_ws_.clear();
          const ReplyCall& c = reply_.calls().back();
          out += OpenBlock(
              Open::kToolUse,
              {{"type", "tool_use"}, {"id", c.id}, {"name", c.name}, {"input", OJson::object()}},
              stream);
          break;
        }
        case K::kToolCallArgs:
          if (ev.text.empty() || open_ != Open::kToolUse) break;
          args_ += ev.text;
          out += Delta({{"type", "input_json_delta"}, {"partial_json", ev.text}}, stream);
          break;
        case K::kToolCallEnd:
          out += CloseBlock(stream);
          break;
      }
    }
    return out;
  }

  StructuredReply reply_;
  std::string id_, model_name_;
  int prompt_tokens_;
  int block_tokens_;
  std::vector<std::string> stops_;
  OJson content_ = OJson::array();
  Open open_ = Open::kNone;
  std::string args_;        // the open tool_use block's arguments so far
  std::string pending_ws_;  // whitespace not yet in a text block
  bool finished_ = false;
  std::optional<ApiError> error_;
  serve::Usage usage_;
};

}  // namespace

Result<ParsedRequest> ParseAnthropicMessages(std::string_view body, const ModelContext& model,
                                             ApiError* error) {
  return internal::Guard<ParsedRequest>(error, [&] { return ParseBody(body, model, false); });
}

Result<std::string> HandleAnthropicCountTokens(std::string_view body, const ModelContext& model,
                                               ApiError* error) {
  return internal::Guard<std::string>(error, [&] {
    ParsedRequest p = ParseBody(body, model, true);
    return internal::Dump(OJson{{"input_tokens", p.request.prompt.size()}});
  });
}

std::string AnthropicErrorBody(const ApiError& e) { return internal::Dump(ErrorJson(e)); }

std::unique_ptr<ReplyBuilder> MakeAnthropicBuilder(const ParsedRequest& req, std::string id,
                                                   const ModelContext& model) {
  return std::make_unique<AnthropicBuilder>(req, std::move(id), model);
}

}  // namespace kvstash::daemon::api
