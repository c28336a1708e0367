// Request-body parsing for /v1/chat/completions and /v1/completions (openai.h).
//
// Every check throws internal::ApiFailure naming the field; Guard() at the two public entry
// points turns it into an ApiError. Fields are validated before the prompt is tokenized, so a
// bad field costs no tokenization and the fuzz target (tests/fuzz/api_fuzz.cc) reaches every
// check even with a model that has no vocabulary.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/kvstashd/api/openai.h"
#include "daemon/kvstashd/api/openai_json.h"
#include "daemon/kvstashd/api/prompt.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvstash::daemon::api {
namespace internal {

std::string Num(double v) {
  std::string s = Json(v).dump();
  if (s.size() > 2 && s.ends_with(".0")) s.resize(s.size() - 2);
  return s;
}

// lo <= v <= hi, or lo < v when `lo_open`.
void CheckRange(const std::string& param, double v, double lo, double hi, bool lo_open) {
  if ((lo_open ? v > lo : v >= lo) && v <= hi) return;
  Fail(param, "'" + param + "' must be " + (lo_open ? "greater than " : "between ") + Num(lo) +
                  (lo_open ? " and at most " : " and ") + Num(hi) + ", got " + Num(v));
}

void ParseSampling(const Json& j, const ModelContext& model, engine::SamplerOptions* s) {
  *s = model.default_sampling;
  if (auto v = OptNumber(j, "temperature")) {
    CheckRange("temperature", *v, 0, 2);
    s->temperature = static_cast<float>(*v);
  }
  if (auto v = OptNumber(j, "top_p")) {
    CheckRange("top_p", *v, 0, 1, /*lo_open=*/true);
    s->top_p = static_cast<float>(*v);
  }
  if (auto v = OptInteger(j, "top_k")) {
    if (*v < 0) Fail("top_k", "'top_k' must be >= 0 (0: off), got " + std::to_string(*v));
    s->top_k = static_cast<int32_t>(std::min<int64_t>(*v, std::numeric_limits<int32_t>::max()));
  }
  if (auto v = OptNumber(j, "min_p")) {
    CheckRange("min_p", *v, 0, 1);
    s->min_p = static_cast<float>(*v);
  }
  if (auto v = OptNumber(j, "presence_penalty")) {
    CheckRange("presence_penalty", *v, -2, 2);
    s->presence_penalty = static_cast<float>(*v);
  }
  if (auto v = OptNumber(j, "frequency_penalty")) {
    CheckRange("frequency_penalty", *v, -2, 2);
    s->frequency_penalty = static_cast<float>(*v);
  }
  if (auto v = OptNumber(j, "repetition_penalty")) {
    if (!(*v > 0) || *v > std::numeric_limits<float>::max()) {
      Fail("repetition_penalty",
           "'repetition_penalty' must be greater than 0 (1: off), got " + Num(*v));
    }
    s->repeat_penalty = static_cast<float>(*v);
  }
  // Any 64-bit value, negative ones as their two's complement; absent: a fresh one per request.
  if (const Json* v = FindField(j, "seed"); v != nullptr && v->is_number_unsigned()) {
    s->seed = v->get<uint64_t>();
  } else if (auto seed = OptInteger(j, "seed")) {
    s->seed = static_cast<uint64_t>(*seed);
  } else {
    std::random_device rd;
    s->seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
}

std::vector<std::string> ParseStop(const Json& j) {
  const Json* v = FindField(j, "stop");
  if (v == nullptr) return {};
  if (v->is_string()) return {v->get<std::string>()};
  if (!v->is_array()) {
    Fail("stop",
         std::string("'stop' must be a string or an array of strings, got ") + v->type_name());
  }
  if (v->size() > static_cast<size_t>(kMaxStopStrings)) {
    Fail("stop", "'stop' may hold at most " + std::to_string(kMaxStopStrings) + " strings, got " +
                     std::to_string(v->size()));
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const Json& s = (*v)[i];
    if (!s.is_string()) {
      const std::string p = "stop[" + std::to_string(i) + "]";
      Fail(p, "'" + p + "' must be a string, got " + s.type_name());
    }
    out.push_back(s.get<std::string>());
  }
  return out;
}

std::optional<int64_t> RequestedMaxTokens(const Json& j) {
  // max_completion_tokens supersedes max_tokens (OpenAI deprecated the latter).
  for (const char* key : {"max_completion_tokens", "max_tokens"}) {
    if (auto v = OptInteger(j, key)) {
      if (*v < 1)
        Fail(key, std::string("'") + key + "' must be at least 1, got " + std::to_string(*v));
      return v;
    }
  }
  return std::nullopt;
}

// Refuses a prompt that leaves no room in the context and sets the token budget.
void SetBudget(const ModelContext& model, std::optional<int64_t> requested,
               const std::string& prompt_param, ParsedRequest* p) {
  const int64_t n_prompt = static_cast<int64_t>(p->request.prompt.size());
  if (n_prompt == 0 && p->request.restore_session.empty())
    Fail(prompt_param, "the prompt is empty");
  const int64_t remaining = static_cast<int64_t>(model.n_ctx) - n_prompt;
  if (remaining <= 0) {
    Fail(prompt_param,
         "the prompt has " + std::to_string(n_prompt) + " tokens, which leaves no room to " +
             "generate in the model's context of " + std::to_string(model.n_ctx) + " tokens",
         422, "context_length_exceeded");
  }
  p->request.limits.max_tokens = TokenBudget(model, n_prompt, requested);
}

nlohmann::ordered_json MakeFunctionTool(const std::string& name,
                                        const std::optional<std::string>& description,
                                        const Json* parameters) {
  nlohmann::ordered_json fn = {{"name", name}};
  if (description.has_value()) fn["description"] = *description;
  if (parameters != nullptr) fn["parameters"] = nlohmann::ordered_json::parse(parameters->dump());
  return {{"type", "function"}, {"function", std::move(fn)}};
}

void ParseFlatTools(const Json& j, const std::string& type_name, const std::string& default_type,
                    const std::string& schema_key, nlohmann::ordered_json* out) {
  const Json* tools = FindField(j, "tools");
  if (tools == nullptr) return;
  if (!tools->is_array()) Fail("tools", "'tools' must be an array");
  for (size_t k = 0; k < tools->size(); ++k) {
    const Json& t = (*tools)[k];
    const std::string tp = "tools[" + std::to_string(k) + "]";
    if (!t.is_object()) Fail(tp, "'" + tp + "' must be an object");
    const std::string type = OptString(t, "type", tp + ".type").value_or(default_type);
    if (type != type_name) {
      Fail(tp + ".type", "tool type '" + type + "' is not supported (only '" + type_name + "')");
    }
    auto name = OptString(t, "name", tp + ".name");
    if (!name) Fail(tp + ".name", "'" + tp + ".name' is required");
    out->push_back(MakeFunctionTool(*name, OptString(t, "description", tp + ".description"),
                                    FindField(t, schema_key)));
  }
}

void RenderInto(const Json& j, const ModelContext& model, const std::string& param,
                ParsedRequest* p) {
  Result<RenderedPrompt> r = RenderConversation(p->conversation, model);
  if (!r.ok()) Fail(param, r.status().message());
  p->rendered = std::move(*r);
  p->request.prompt = p->rendered.tokens;
  p->request.snapshot_hints = p->rendered.message_starts;
  p->request.forced_tokens = p->rendered.forced;
  p->parser = ParserOptionsFor(p->conversation, model, p->rendered);
  const Json* extras = FindField(j, "kvstash");
  if (extras == nullptr) return;
  if (!extras->is_object()) Fail("kvstash", "'kvstash' must be an object");
  if (auto script = OptString(*extras, "script", "kvstash.script")) {
    if (!model.allow_scripted_replies) {
      Fail("kvstash.script",
           "scripted replies are off (start kvstashd with --allow-scripted-replies)");
    }
    // The prompt's opening (e.g. "<think>\n") is the model's: the script continues it.
    p->request.forced_tokens = model.tokenizer->Encode(*script, false, /*parse_special=*/true);
    p->request.end_after_forced = true;
    if (p->request.forced_tokens.empty()) Fail("kvstash.script", "'kvstash.script' is empty");
  }
}

void SetSessionHint(const std::string& hint, ParsedRequest* p) {
  if (hint.empty() || !p->request.restore_session.empty()) return;
  // Any string picks a session: its hash names it, so every client value is a valid name.
  uint64_t h = 1469598103934665603ull;  // FNV-1a 64
  for (unsigned char c : hint) h = (h ^ c) * 1099511628211ull;
  char name[32];
  std::snprintf(name, sizeof(name), "hint-%016llx", static_cast<unsigned long long>(h));
  p->request.restore_session = name;
  p->request.save_session = name;
}

}  // namespace internal

namespace {

using internal::AsInteger;
using internal::CheckRange;
using internal::Fail;
using internal::FindField;
using internal::Json;
using internal::MakeFunctionTool;
using internal::OptBool;
using internal::OptInteger;
using internal::OptNumber;
using internal::OptString;
using internal::ParseSampling;
using internal::ParseStop;
using internal::RenderInto;
using internal::RequestedMaxTokens;
using internal::SetBudget;

// The fields both endpoints share, except the prompt and the token budget.
void ParseCommon(const Json& j, const ModelContext& model, ParsedRequest* p) {
  p->model = OptString(j, "model").value_or(model.model_id);
  ParseSampling(j, model, &p->request.sampling);
  p->request.limits.stop_strings = ParseStop(j);
  if (auto n = OptInteger(j, "n"); n.has_value() && *n != 1) {
    Fail("n", "'n' must be 1 (one choice per request), got " + std::to_string(*n));
  }
  p->stream = OptBool(j, "stream").value_or(false);
  if (const Json* so = FindField(j, "stream_options")) {
    if (!so->is_object()) {
      Fail("stream_options",
           std::string("'stream_options' must be an object, got ") + so->type_name());
    }
    p->include_usage =
        OptBool(*so, "include_usage", "stream_options.include_usage").value_or(false);
  }
  if (auto session = OptString(j, "session")) {
    if (!ValidSessionName(*session)) {
      Fail("session",
           "'session' must be 1 to 128 of letters, digits, '.', '_' and '-', not starting with "
           "'.' or '-'");
    }
    p->request.restore_session = *session;
    p->request.save_session = *session;
  }
  if (auto salt = OptString(j, "cache_salt")) {
    if (salt->size() > kMaxCacheSaltBytes) {
      Fail("cache_salt", "'cache_salt' must be at most " + std::to_string(kMaxCacheSaltBytes) +
                             " bytes, got " + std::to_string(salt->size()));
    }
    p->request.cache_salt = *salt;
  }
}

std::string MessageContent(const Json& m, const std::string& param, bool may_be_null) {
  const std::string cparam = param + ".content";
  const Json* c = FindField(m, "content");
  if (c == nullptr) {
    if (may_be_null) return "";
    Fail(cparam, "'" + cparam + "' is required");
  }
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) {
    Fail(cparam,
         "'" + cparam + "' must be a string or an array of content parts, got " + c->type_name());
  }
  std::string text;
  for (size_t k = 0; k < c->size(); ++k) {
    const Json& part = (*c)[k];
    const std::string pp = cparam + "[" + std::to_string(k) + "]";
    if (!part.is_object()) Fail(pp, "'" + pp + "' must be an object, got " + part.type_name());
    const std::string type = OptString(part, "type", pp + ".type").value_or("");
    if (type != "text") {
      Fail(pp + ".type", "content part type '" + type + "' is not supported (only 'text')");
    }
    auto t = OptString(part, "text", pp + ".text");
    if (!t) Fail(pp + ".text", "'" + pp + ".text' is required");
    text += *t;
  }
  return text;
}

std::string RequiredString(const Json& o, std::string_view key, const std::string& param) {
  auto v = OptString(o, key, param);
  if (!v) Fail(param, "'" + param + "' is required");
  return *v;
}

// tool_calls of an assistant message: [{"id", "type": "function", "function": {"name",
// "arguments": JSON text}}].
std::vector<ToolCall> ParseToolCalls(const Json& calls, const std::string& param) {
  if (!calls.is_array()) Fail(param, "'" + param + "' must be an array, got " + calls.type_name());
  std::vector<ToolCall> out;
  for (size_t k = 0; k < calls.size(); ++k) {
    const Json& c = calls[k];
    const std::string cp = param + "[" + std::to_string(k) + "]";
    if (!c.is_object()) Fail(cp, "'" + cp + "' must be an object, got " + c.type_name());
    const Json* fn = FindField(c, "function");
    if (fn == nullptr || !fn->is_object())
      Fail(cp + ".function", "'" + cp + ".function' is required");
    ToolCall call;
    call.id = OptString(c, "id", cp + ".id").value_or("");
    call.name = RequiredString(*fn, "name", cp + ".function.name");
    if (const Json* a = FindField(*fn, "arguments")) {
      // OpenAI sends a JSON string; some clients send the object itself.
      call.arguments = a->is_string() ? a->get<std::string>() : internal::Dump(*a);
    } else {
      call.arguments = "{}";
    }
    out.push_back(std::move(call));
  }
  return out;
}

std::vector<Message> ParseMessages(const Json& j) {
  const Json* msgs = FindField(j, "messages");
  if (msgs == nullptr) Fail("messages", "'messages' is required");
  if (!msgs->is_array()) {
    Fail("messages", std::string("'messages' must be an array, got ") + msgs->type_name());
  }
  if (msgs->empty()) Fail("messages", "'messages' must not be empty");
  std::vector<Message> out;
  out.reserve(msgs->size());
  for (size_t i = 0; i < msgs->size(); ++i) {
    const Json& m = (*msgs)[i];
    const std::string param = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) Fail(param, "'" + param + "' must be an object, got " + m.type_name());
    Message msg;
    msg.role = OptString(m, "role", param + ".role").value_or("");
    if (msg.role.empty()) Fail(param + ".role", "'" + param + ".role' is required");
    if (msg.role == "developer") msg.role = "system";
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" &&
        msg.role != "tool") {
      Fail(param + ".role",
           "unknown role '" + msg.role + "' (system, developer, user, assistant or tool)");
    }
    const bool assistant = msg.role == "assistant";
    msg.content = MessageContent(m, param, /*may_be_null=*/assistant);
    if (assistant) {
      msg.reasoning = OptString(m, "reasoning_content", param + ".reasoning_content").value_or("");
      if (const Json* calls = FindField(m, "tool_calls")) {
        msg.tool_calls = ParseToolCalls(*calls, param + ".tool_calls");
      }
    } else if (msg.role == "tool") {
      msg.tool_call_id = RequiredString(m, "tool_call_id", param + ".tool_call_id");
      msg.name = OptString(m, "name", param + ".name").value_or("");
    }
    out.push_back(std::move(msg));
  }
  // A tool message without a name takes it from the call it answers.
  for (Message& msg : out) {
    if (msg.role != "tool" || !msg.name.empty()) continue;
    for (const Message& a : out) {
      for (const ToolCall& c : a.tool_calls) {
        if (c.id == msg.tool_call_id) msg.name = c.name;
      }
    }
  }
  return out;
}

// `tools`: [{"type": "function", "function": {"name", "description", "parameters"}}].
nlohmann::ordered_json ParseTools(const Json& j) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  const Json* tools = FindField(j, "tools");
  if (tools == nullptr) return out;
  if (!tools->is_array()) {
    Fail("tools", std::string("'tools' must be an array, got ") + tools->type_name());
  }
  for (size_t k = 0; k < tools->size(); ++k) {
    const Json& t = (*tools)[k];
    const std::string tp = "tools[" + std::to_string(k) + "]";
    if (!t.is_object()) Fail(tp, "'" + tp + "' must be an object, got " + t.type_name());
    const std::string type = OptString(t, "type", tp + ".type").value_or("function");
    if (type != "function") {
      Fail(tp + ".type", "tool type '" + type + "' is not supported (only 'function')");
    }
    const Json* fn = FindField(t, "function");
    if (fn == nullptr || !fn->is_object()) {
      Fail(tp + ".function", "'" + tp + ".function' is required");
    }
    out.push_back(MakeFunctionTool(RequiredString(*fn, "name", tp + ".function.name"),
                                   OptString(*fn, "description", tp + ".function.description"),
                                   FindField(*fn, "parameters")));
  }
  return out;
}

// `tool_choice`: "auto", "none", "required" or {"type": "function", "function": {"name"}}.
void ParseToolChoice(const Json& j, Conversation* conv) {
  const Json* v = FindField(j, "tool_choice");
  if (v == nullptr) return;
  if (v->is_string()) {
    const std::string s = v->get<std::string>();
    if (s == "auto") {
      conv->tool_choice = ToolChoice::kAuto;
    } else if (s == "none") {
      conv->tool_choice = ToolChoice::kNone;
    } else if (s == "required") {
      conv->tool_choice = ToolChoice::kRequired;
    } else {
      Fail("tool_choice",
           "'tool_choice' must be 'auto', 'none', 'required' or a function, got '" + s + "'");
    }
    return;
  }
  if (!v->is_object()) {
    Fail("tool_choice",
         std::string("'tool_choice' must be a string or an object, got ") + v->type_name());
  }
  const Json* fn = FindField(*v, "function");
  std::string name = fn != nullptr && fn->is_object()
                         ? RequiredString(*fn, "name", "tool_choice.function.name")
                         : RequiredString(*v, "name", "tool_choice.name");
  conv->tool_choice = ToolChoice::kNamed;
  conv->tool_choice_name = std::move(name);
}

ParsedRequest ParseChat(std::string_view body, const ModelContext& model) {
  const Json j = internal::ParseBodyObject(body);
  ParsedRequest p;
  p.chat = true;
  ParseCommon(j, model, &p);
  const std::optional<int64_t> max_tokens = RequestedMaxTokens(j);
  const bool logprobs = OptBool(j, "logprobs").value_or(false);
  if (auto top = OptInteger(j, "top_logprobs")) {
    CheckRange("top_logprobs", static_cast<double>(*top), 0, kMaxTopLogprobs);
    if (!logprobs) Fail("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
    p.request.logprobs = static_cast<int>(*top);
  } else {
    p.request.logprobs = logprobs ? 0 : -1;
  }
  Conversation& conv = p.conversation;
  if (const Json* kw = FindField(j, "chat_template_kwargs")) {
    if (!kw->is_object()) {
      Fail("chat_template_kwargs",
           std::string("'chat_template_kwargs' must be an object, got ") + kw->type_name());
    }
    conv.enable_thinking = OptBool(*kw, "enable_thinking", "chat_template_kwargs.enable_thinking");
  }
  conv.messages = ParseMessages(j);
  conv.tools = ParseTools(j);
  ParseToolChoice(j, &conv);
  conv.parallel_tool_calls = OptBool(j, "parallel_tool_calls").value_or(true);
  RenderInto(j, model, "messages", &p);
  SetBudget(model, max_tokens, "messages", &p);
  return p;
}

// `prompt`: a string, an array of one string, an array of token ids, or an array of one array
// of token ids. Text needs the tokenizer; ids are range-checked against the vocabulary.
void ParsePrompt(const Json& j, const ModelContext& model, ParsedRequest* p) {
  const Json* v = FindField(j, "prompt");
  if (v == nullptr) Fail("prompt", "'prompt' is required");
  const Json* text = nullptr;
  const Json* ids = nullptr;
  std::string ids_param = "prompt";
  if (v->is_string()) {
    text = v;
  } else if (v->is_array() && !v->empty()) {
    const Json& first = (*v)[0];
    if (first.is_string() || first.is_array()) {
      if (v->size() != 1) {
        Fail("prompt", "'prompt' must hold one prompt (batches are not supported), got " +
                           std::to_string(v->size()));
      }
      text = first.is_string() ? &first : nullptr;
      ids = first.is_array() ? &first : nullptr;
      ids_param = "prompt[0]";
    } else {
      ids = v;
    }
  } else {
    Fail("prompt", std::string("'prompt' must be a string, an array of one string or an array "
                               "of token ids, got ") +
                       (v->is_array() ? "an empty array" : v->type_name()));
  }
  const engine::Tokenizer* tok = model.tokenizer;
  if (ids != nullptr) {
    const int64_t n_vocab =
        tok != nullptr ? tok->vocab().size() : std::numeric_limits<int32_t>::max();
    p->request.prompt.reserve(ids->size());
    for (size_t i = 0; i < ids->size(); ++i) {
      const std::string ip = ids_param + "[" + std::to_string(i) + "]";
      const int64_t id = AsInteger((*ids)[i], ip);
      if (id < 0 || id >= n_vocab) {
        Fail(ip, "token id " + std::to_string(id) + " is out of range [0, " +
                     std::to_string(n_vocab) + ")");
      }
      p->request.prompt.push_back(static_cast<int32_t>(id));
    }
    if (tok != nullptr) p->prompt_text = tok->Decode(p->request.prompt, /*render_special=*/false);
    return;
  }
  p->prompt_text = text->get<std::string>();
  if (tok == nullptr) {
    Fail("prompt", "the model has no tokenizer vocabulary: give 'prompt' as token ids");
  }
  p->request.prompt = tok->Encode(p->prompt_text, tok->vocab().add_bos, /*parse_special=*/false);
}

ParsedRequest ParseCompletionBody(std::string_view body, const ModelContext& model) {
  const Json j = internal::ParseBodyObject(body);
  ParsedRequest p;
  p.chat = false;
  p.parser.reasoning = false;  // completions return the text as generated
  ParseCommon(j, model, &p);
  const std::optional<int64_t> max_tokens = RequestedMaxTokens(j);
  p.echo = OptBool(j, "echo").value_or(false);
  // Completions take an integer here (alternatives per token); true is taken as 0.
  if (const Json* lp = FindField(j, "logprobs"); lp != nullptr && lp->is_boolean()) {
    p.request.logprobs = lp->get<bool>() ? 0 : -1;
  } else if (auto n = OptInteger(j, "logprobs")) {
    CheckRange("logprobs", static_cast<double>(*n), 0, kMaxTopLogprobs);
    p.request.logprobs = static_cast<int>(*n);
  }
  ParsePrompt(j, model, &p);
  SetBudget(model, max_tokens, "prompt", &p);
  return p;
}

}  // namespace

Result<ParsedRequest> ParseChatCompletion(std::string_view body, const ModelContext& model,
                                          ApiError* error) {
  return internal::Guard<ParsedRequest>(error, [&] { return ParseChat(body, model); });
}

Result<ParsedRequest> ParseCompletion(std::string_view body, const ModelContext& model,
                                      ApiError* error) {
  return internal::Guard<ParsedRequest>(error, [&] { return ParseCompletionBody(body, model); });
}

}  // namespace kvstash::daemon::api
