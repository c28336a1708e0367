// The OpenAI Responses API (responses.h).
#include "daemon/kvstashd/api/responses.h"

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
using internal::OptString;
using OJson = internal::OrderedJson;

std::string PartsText(const Json& v, const std::string& param) {
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) Fail(param, "'" + param + "' must be a string or an array of content parts");
  std::string out;
  for (size_t k = 0; k < v.size(); ++k) {
    const Json& part = v[k];
    const std::string pp = param + "[" + std::to_string(k) + "]";
    if (!part.is_object()) Fail(pp, "'" + pp + "' must be an object");
    const std::string type = OptString(part, "type", pp + ".type").value_or("");
    if (type != "input_text" && type != "output_text" && type != "text" && type != "summary_text" &&
        type != "reasoning_text") {
      Fail(pp + ".type", "content part type '" + type + "' is not supported (text parts only)");
    }
    out += OptString(part, "text", pp + ".text").value_or("");
  }
  return out;
}

// The assistant message function calls and reasoning attach to: the last message when it is an
// assistant turn that no tool result has followed, else a new one.
Message& AssistantTurn(std::vector<Message>* msgs) {
  if (msgs->empty() || msgs->back().role != "assistant") {
    Message m;
    m.role = "assistant";
    msgs->push_back(std::move(m));
  }
  return msgs->back();
}

void ParseInput(const Json& j, Conversation* conv) {
  const Json* input = FindField(j, "input");
  if (input == nullptr) Fail("input", "'input' is required");
  if (input->is_string()) {
    conv->messages.push_back({"user", input->get<std::string>(), "", {}, "", ""});
    return;
  }
  if (!input->is_array() || input->empty()) {
    Fail("input", "'input' must be a string or a non-empty array of items");
  }
  std::string pending_reasoning;
  for (size_t i = 0; i < input->size(); ++i) {
    const Json& it = (*input)[i];
    const std::string ip = "input[" + std::to_string(i) + "]";
    if (!it.is_object()) Fail(ip, "'" + ip + "' must be an object");
    const std::string type = OptString(it, "type", ip + ".type").value_or("message");
    if (type == "message") {
      Message m;
      m.role = OptString(it, "role", ip + ".role").value_or("");
      if (m.role == "developer") m.role = "system";
      if (m.role != "system" && m.role != "user" && m.role != "assistant") {
        Fail(ip + ".role", "'" + ip + ".role' must be user, assistant, system or developer");
      }
      const Json* c = FindField(it, "content");
      if (c == nullptr) Fail(ip + ".content", "'" + ip + ".content' is required");
      m.content = PartsText(*c, ip + ".content");
      if (m.role == "assistant") {
        // Consecutive assistant items (reasoning, text, calls) are one turn.
        Message& a = AssistantTurn(&conv->messages);
        if (!a.content.empty()) a.content += "\n";
        a.content += m.content;
        if (!pending_reasoning.empty()) a.reasoning += std::exchange(pending_reasoning, "");
        continue;
      }
      conv->messages.push_back(std::move(m));
    } else if (type == "function_call") {
      ToolCall call;
      call.id = OptString(it, "call_id", ip + ".call_id").value_or("");
      call.name = OptString(it, "name", ip + ".name").value_or("");
      if (call.id.empty() || call.name.empty()) {
        Fail(ip, "'" + ip + "' needs 'call_id' and 'name'");
      }
      call.arguments = OptString(it, "arguments", ip + ".arguments").value_or("{}");
      Message& a = AssistantTurn(&conv->messages);
      if (!pending_reasoning.empty()) a.reasoning += std::exchange(pending_reasoning, "");
      a.tool_calls.push_back(std::move(call));
    } else if (type == "function_call_output") {
      Message t;
      t.role = "tool";
      t.tool_call_id = OptString(it, "call_id", ip + ".call_id").value_or("");
      if (t.tool_call_id.empty()) Fail(ip + ".call_id", "'" + ip + ".call_id' is required");
      if (const Json* o = FindField(it, "output")) t.content = PartsText(*o, ip + ".output");
      for (const Message& a : conv->messages) {
        for (const ToolCall& c : a.tool_calls) {
          if (c.id == t.tool_call_id) t.name = c.name;
        }
      }
      conv->messages.push_back(std::move(t));
    } else if (type == "reasoning") {
      if (const Json* c = FindField(it, "content")) {
        pending_reasoning += PartsText(*c, ip + ".content");
      } else if (const Json* s = FindField(it, "summary")) {
        pending_reasoning += PartsText(*s, ip + ".summary");
      }
    } else {
      Fail(ip + ".type", "input item type '" + type +
                             "' is not supported (message, function_call, function_call_output, "
                             "reasoning)");
    }
  }
}

ParsedRequest ParseBody(std::string_view body, const ModelContext& model) {
  const Json j = internal::ParseBodyObject(body);
  ParsedRequest p;
  p.chat = true;
  p.model = OptString(j, "model").value_or(model.model_id);
  if (FindField(j, "previous_response_id") != nullptr) {
    Fail("previous_response_id",
         "'previous_response_id' is not supported: kvstash stores no responses; send the whole "
         "input (store: false) — the prefix cache makes resending it cheap");
  }
  Conversation& conv = p.conversation;
  if (auto ins = OptString(j, "instructions"); ins.has_value() && !ins->empty()) {
    conv.messages.push_back({"system", *ins, "", {}, "", ""});
  }
  ParseInput(j, &conv);
  internal::ParseFlatTools(j, "function", "", "parameters", &conv.tools);
  if (const Json* tc = FindField(j, "tool_choice")) {
    const std::string s = tc->is_string() ? tc->get<std::string>() : "";
    if (s == "auto") {
      conv.tool_choice = ToolChoice::kAuto;
    } else if (s == "none") {
      conv.tool_choice = ToolChoice::kNone;
    } else if (s == "required") {
      conv.tool_choice = ToolChoice::kRequired;
    } else if (tc->is_object() && OptString(*tc, "name", "tool_choice.name").has_value()) {
      conv.tool_choice = ToolChoice::kNamed;
      conv.tool_choice_name = *OptString(*tc, "name", "tool_choice.name");
    } else {
      Fail("tool_choice", "'tool_choice' must be auto, none, required or {type: function, name}");
    }
  }
  conv.parallel_tool_calls = OptBool(j, "parallel_tool_calls").value_or(true);
  internal::ParseSampling(j, model, &p.request.sampling);
  std::optional<int64_t> max_tokens = OptInteger(j, "max_output_tokens");
  if (max_tokens && *max_tokens < 1) Fail("max_output_tokens", "'max_output_tokens' must be >= 1");
  p.stream = OptBool(j, "stream").value_or(false);
  internal::SetSessionHint(OptString(j, "prompt_cache_key").value_or(""), &p);
  if (auto salt = OptString(j, "cache_salt")) p.request.cache_salt = *salt;
  internal::RenderInto(j, model, "input", &p);
  internal::SetBudget(model, max_tokens, "input", &p);
  return p;
}

class ResponsesBuilder final : public ReplyBuilder {
 public:
  ResponsesBuilder(const ParsedRequest& req, std::string id, int64_t created,
                   const ModelContext& model)
      : reply_(req, "call_"),
        id_(std::move(id)),
        created_(created),
        model_name_(req.model),
        max_tokens_(req.request.limits.max_tokens) {}

  std::string StreamOpen() override {
    OJson r = Response("in_progress");
    std::string out = Event("response.created", {{"response", r}});
    return out + Event("response.in_progress", {{"response", std::move(r)}});
  }

  std::string StreamEvent(const serve::Event& e) override {
    if (finished_) return {};
    std::vector<engine::OutputEvent> events;
    switch (e.kind) {
      case serve::Event::Kind::kPrefillProgress:
        return {};
      case serve::Event::Kind::kError: {
        finished_ = true;
        error_ = ErrorFromStatus(e.status);
        OJson r = Response("failed");
        r["error"] = {{"code", error_->code.empty() ? error_->type : error_->code},
                      {"message", error_->message}};
        return Event("response.failed", {{"response", std::move(r)}});
      }
      case serve::Event::Kind::kToken:
        reply_.Feed(e.token, e.text, &events);
        return Items(events, true);
      case serve::Event::Kind::kDone: {
        finished_ = true;
        usage_ = e.usage;
        reply_.Finish(e.text, &events);
        std::string out = Items(events, true) + CloseItem(true);
        return out + Event("response.completed", {{"response", Response(Status())}});
      }
    }
    return {};
  }

  void Add(const serve::Event& e) override {
    if (finished_) return;
    std::vector<engine::OutputEvent> events;
    if (e.kind == serve::Event::Kind::kToken) {
      reply_.Feed(e.token, e.text, &events);
      Items(events, false);
    } else if (e.kind == serve::Event::Kind::kDone) {
      finished_ = true;
      usage_ = e.usage;
      reply_.Finish(e.text, &events);
      Items(events, false);
      CloseItem(false);
    } else if (e.kind == serve::Event::Kind::kError) {
      finished_ = true;
      error_ = ErrorFromStatus(e.status);
    }
  }

  std::string Finish() const override {
    if (error_) return error_->ToJson();
    return internal::Dump(Response(Status()));
  }
  std::optional<ApiError> error() const override { return error_; }
  std::string ErrorBody(const ApiError& e) const override { return e.ToJson(); }
  std::optional<std::pair<Message, ReplayEntry>> ReplyRecord() const override {
    if (!finished_ || error_) return std::nullopt;
    return std::make_pair(reply_.AsMessage(), ReplayEntry{"", reply_.ids(), {}});
  }

 private:
  enum class Open { kNone, kMessage, kReasoning, kCall };

  std::string Status() const {
    return usage_.finish == serve::FinishReason::kMaxTokens ||
                   usage_.finish == serve::FinishReason::kContextFull
               ? "incomplete"
               : "completed";
  }
  OJson Response(const std::string& status) const {
    OJson r = {{"id", id_},
               {"object", "response"},
               {"created_at", created_},
               {"status", status},
               {"error", nullptr},
               {"incomplete_details", nullptr},
               {"instructions", nullptr},
               {"max_output_tokens", max_tokens_},
               {"model", model_name_},
               {"output", status == "in_progress" ? OJson::array() : output_},
               {"parallel_tool_calls", true},
               {"previous_response_id", nullptr},
               {"reasoning", {{"effort", nullptr}, {"summary", nullptr}}},
               {"store", false},
               {"text", {{"format", {{"type", "text"}}}}},
               {"tool_choice", "auto"},
               {"tools", OJson::array()},
               {"truncation", "disabled"},
               {"metadata", OJson::object()}};
    if (status == "incomplete") r["incomplete_details"] = {{"reason", "max_output_tokens"}};
    if (status != "in_progress") {
      const int cached = usage_.cached_tokens;
      r["usage"] = {{"input_tokens", usage_.prompt_tokens},
                    {"input_tokens_details", {{"cached_tokens", cached}}},
                    {"output_tokens", usage_.generated_tokens},
                    {"output_tokens_details", {{"reasoning_tokens", 0}}},
                    {"total_tokens", usage_.prompt_tokens + usage_.generated_tokens}};
    } else {
      r["usage"] = nullptr;
    }
    return r;
  }
  std::string Event(const std::string& type, OJson fields) {
    OJson e = {{"type", type}, {"sequence_number", seq_++}};
    for (auto& [k, v] : fields.items()) e[k] = v;
    return "event: " + type + "\ndata: " + internal::Dump(e) + "\n\n";
  }
  OJson Where(int content_index = -1) const {
    OJson f = {{"item_id", output_.back()["id"]}, {"output_index", output_.size() - 1}};
    if (content_index >= 0) f["content_index"] = content_index;
    return f;
  }
  static OJson Merge(OJson a, const OJson& b) {
    for (auto& [k, v] : b.items()) a[k] = v;
    return a;
  }

  std::string OpenItem(Open kind, OJson item, bool stream) {
    std::string out = CloseItem(stream);
    open_ = kind;
    text_.clear();
    output_.push_back(item);
    if (!stream) return out;
    out += Event("response.output_item.added",
                 {{"output_index", output_.size() - 1}, {"item", std::move(item)}});
    if (kind == Open::kMessage) {
      out += Event(
          "response.content_part.added",
          Merge(Where(0),
                {{"part",
                  {{"type", "output_text"}, {"text", ""}, {"annotations", OJson::array()}}}}));
    }
    return out;
  }
  std::string CloseItem(bool stream) {
    if (open_ == Open::kNone) return {};
    OJson& item = output_.back();
    std::string out;
    const OJson part = {{"type", "output_text"}, {"text", text_}, {"annotations", OJson::array()}};
    switch (open_) {
      case Open::kMessage:
        item["status"] = "completed";
        item["content"] = OJson::array({part});
        if (stream) {
          out += Event("response.output_text.done", Merge(Where(0), {{"text", text_}}));
          out += Event("response.content_part.done", Merge(Where(0), {{"part", part}}));
        }
        break;
      case Open::kReasoning:
        item["content"] = OJson::array({{{"type", "reasoning_text"}, {"text", text_}}});
        if (stream)
          out += Event("response.reasoning_text.done", Merge(Where(0), {{"text", text_}}));
        break;
      case Open::kCall:
        item["status"] = "completed";
        item["arguments"] = text_;
        if (stream) {
          out += Event("response.function_call_arguments.done",
                       Merge(Where(), {{"arguments", text_}}));
        }
        break;
      case Open::kNone:
        break;
    }
    if (stream) {
      out += Event("response.output_item.done",
                   {{"output_index", output_.size() - 1}, {"item", output_.back()}});
    }
    open_ = Open::kNone;
    return out;
  }

  std::string Items(const std::vector<engine::OutputEvent>& events, bool stream) {
    using K = engine::OutputEvent::Kind;
    std::string out;
    for (const engine::OutputEvent& ev : events) {
      switch (ev.kind) {
        case K::kText: {
          if (ev.text.empty()) break;
          std::string text = ev.text;
          if (open_ != Open::kMessage) {
            pending_ws_ += text;
            if (pending_ws_.find_first_not_of(" \t\r\n") == std::string::npos) break;
            text = std::exchange(pending_ws_, "");
            text.erase(0, text.find_first_not_of(" \t\r\n"));
            out += OpenItem(Open::kMessage,
                            {{"id", RandomId("msg_")},
                             {"type", "message"},
                             {"status", "in_progress"},
                             {"role", "assistant"},
                             {"content", OJson::array()}},
                            stream);
          }
          text_ += text;
          if (stream)
            out += Event("response.output_text.delta", Merge(Where(0), {{"delta", text}}));
          break;
        }
        case K::kReasoning:
          if (ev.text.empty()) break;
          if (open_ != Open::kReasoning) {
            out += OpenItem(
                Open::kReasoning,
                {{"id", RandomId("rs_")}, {"type", "reasoning"}, {"summary", OJson::array()}},
                stream);
          }
          text_ += ev.text;
          if (stream) {
            out += Event("response.reasoning_text.delta", Merge(Where(0), {{"delta", ev.text}}));
          }
          break;
        case K::kToolCallBegin: {
          pending_ws_.clear();
          const ReplyCall& c = reply_.calls().back();
          out += OpenItem(Open::kCall,
                          {{"id", RandomId("fc_")},
                           {"type", "function_call"},
                           {"status", "in_progress"},
                           {"call_id", c.id},
                           {"name", c.name},
                           {"arguments", ""}},
                          stream);
          break;
        }
        case K::kToolCallArgs:
          if (ev.text.empty() || open_ != Open::kCall) break;
          text_ += ev.text;
          if (stream) {
            out += Event("response.function_call_arguments.delta",
                         Merge(Where(), {{"delta", ev.text}}));
          }
          break;
        case K::kToolCallEnd:
          out += CloseItem(stream);
          break;
      }
    }
    return out;
  }

  StructuredReply reply_;
  std::string id_;
  int64_t created_;
  std::string model_name_;
  int max_tokens_;
  OJson output_ = OJson::array();
  Open open_ = Open::kNone;
  std::string text_;  // the open item's text / arguments
  std::string pending_ws_;
  int64_t seq_ = 0;
  bool finished_ = false;
  std::optional<ApiError> error_;
  serve::Usage usage_;
};

}  // namespace

Result<ParsedRequest> ParseResponsesRequest(std::string_view body, const ModelContext& model,
                                            ApiError* error) {
  return internal::Guard<ParsedRequest>(error, [&] { return ParseBody(body, model); });
}

std::unique_ptr<ReplyBuilder> MakeResponsesBuilder(const ParsedRequest& req, std::string id,
                                                   int64_t created_unix,
                                                   const ModelContext& model) {
  return std::make_unique<ResponsesBuilder>(req, std::move(id), created_unix, model);
}

}  // namespace kvstash::daemon::api
