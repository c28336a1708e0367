// ResponseBuilder (openai.h): serve::Events -> chat.completion / text_completion bodies and SSE
// chunks.
//
// Streamed and non-streamed chat replies go through the same StructuredReply (the output
// parser), so the deltas of a stream concatenate to exactly the fields of the non-streamed
// message: content, reasoning_content and tool_calls. Logprobs ride on the next chunk that is sent,
// so a token whose text is held back still has its entry delivered, at the latest on the finish
// chunk.
#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "daemon/kvstashd/api/openai.h"
#include "daemon/kvstashd/api/openai_json.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvstash::daemon::api {
namespace {

using internal::Dump;
using Json = internal::OrderedJson;

// Bytes of a token piece as JSON numbers (OpenAI's `bytes`), which stay exact when the piece
// splits a UTF-8 character.
Json Bytes(std::string_view piece) {
  Json a = Json::array();
  for (unsigned char c : piece) a.push_back(static_cast<int>(c));
  return a;
}

}  // namespace

struct ResponseBuilder::State {
  // The request, as far as the reply needs it.
  bool chat = false;
  bool include_usage = false;
  bool echo = false;
  int logprobs = -1;
  std::string prompt_text;
  std::string model_name;
  std::string id;
  int64_t created = 0;
  const engine::Tokenizer* tok = nullptr;

  std::unique_ptr<StructuredReply> reply;  // chat: the parsed reply
  std::string content;                     // completions: text released so far
  Json logprobs_acc;       // entries not yet sent (streamed) or all of them (non-streamed)
  size_t text_offset = 0;  // completions: offset of the next token's text in the reply
  bool started = false;    // streamed: the opening chunk went out
  bool done = false;       // kDone seen
  std::optional<ApiError> error;
  serve::Usage usage;

  std::string Piece(int32_t id) const {
    return tok != nullptr && id >= 0 && id < tok->vocab().size() ? tok->TokenToPiece(id, true)
                                                                 : std::string();
  }

  void ResetLogprobs() {
    if (chat) {
      logprobs_acc = Json::array();
    } else {
      logprobs_acc = {{"tokens", Json::array()},
                      {"token_logprobs", Json::array()},
                      {"top_logprobs", Json::array()},
                      {"text_offset", Json::array()}};
    }
  }
  bool HaveLogprobs() const {
    return chat ? !logprobs_acc.empty() : !logprobs_acc["tokens"].empty();
  }
  void AddLogprob(const serve::Event& e) {
    if (logprobs < 0) return;
    const std::string piece = Piece(e.token);
    if (chat) {
      Json top = Json::array();
      for (const serve::TokenLogprob& t : e.top) {
        const std::string p = Piece(t.id);
        top.push_back({{"token", p}, {"logprob", t.logprob}, {"bytes", Bytes(p)}});
      }
      logprobs_acc.push_back({{"token", piece},
                              {"logprob", e.logprob},
                              {"bytes", Bytes(piece)},
                              {"top_logprobs", std::move(top)}});
      return;
    }
    Json top = Json::object();
    for (const serve::TokenLogprob& t : e.top) top[Piece(t.id)] = t.logprob;
    logprobs_acc["tokens"].push_back(piece);
    logprobs_acc["token_logprobs"].push_back(e.logprob);
    logprobs_acc["top_logprobs"].push_back(std::move(top));
    logprobs_acc["text_offset"].push_back(text_offset);
    text_offset += piece.size();
  }
  // The logprobs object of a choice: null when not asked for.
  Json LogprobsValue(const Json& acc) const {
    if (logprobs < 0) return nullptr;
    return chat ? Json{{"content", acc}} : acc;
  }
  // Streamed: the entries gathered since the last chunk, which this chunk carries (null when
  // there are none, as on the opening chunk).
  Json TakeLogprobs() {
    if (logprobs < 0 || !HaveLogprobs()) return nullptr;
    Json v = LogprobsValue(logprobs_acc);
    ResetLogprobs();
    return v;
  }

  Json Base(bool chunk) const {
    return {{"id", id},
            {"object",
             chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
            {"created", created},
            {"model", model_name},
            {"system_fingerprint", "kvstash"}};
  }
  // One streamed chunk of a single choice. `delta_or_text`: the chat delta object or the
  // completion's text.
  std::string Chunk(Json delta_or_text, Json finish_reason) {
    Json c = Base(/*chunk=*/true);
    Json choice = {{"index", 0}};
    choice[chat ? "delta" : "text"] = std::move(delta_or_text);
    choice["logprobs"] = TakeLogprobs();
    choice["finish_reason"] = std::move(finish_reason);
    c["choices"] = Json::array({std::move(choice)});
    return "data: " + Dump(c) + "\n\n";
  }
  // The opening chunk: the assistant role (chat) or the echoed prompt (completions).
  std::string Start() {
    if (started) return {};
    started = true;
    if (chat) return Chunk({{"role", "assistant"}, {"content", ""}}, nullptr);
    if (echo && !prompt_text.empty()) return Chunk(prompt_text, nullptr);
    return {};
  }
  // Chat: the chunks for the parser's events.
  std::string ChatChunks(const std::vector<engine::OutputEvent>& events) {
    using K = engine::OutputEvent::Kind;
    std::string out;
    for (const engine::OutputEvent& ev : events) {
      switch (ev.kind) {
        case K::kText:
          if (!ev.text.empty()) out += Chunk({{"content", ev.text}}, nullptr);
          break;
        case K::kReasoning:
          if (!ev.text.empty()) out += Chunk({{"reasoning_content", ev.text}}, nullptr);
          break;
        case K::kToolCallBegin: {
          const ReplyCall& c = reply->calls().back();
          Json call = {{"index", ev.tool_index},
                       {"id", c.id},
                       {"type", "function"},
                       {"function", {{"name", c.name}, {"arguments", ""}}}};
          out += Chunk({{"tool_calls", Json::array({std::move(call)})}}, nullptr);
          break;
        }
        case K::kToolCallArgs:
          if (!ev.text.empty()) {
            Json call = {{"index", ev.tool_index}, {"function", {{"arguments", ev.text}}}};
            out += Chunk({{"tool_calls", Json::array({std::move(call)})}}, nullptr);
          }
          break;
        case K::kToolCallEnd:
          break;
      }
    }
    return out;
  }
  std::string StreamText(int32_t token, std::string_view text) {
    if (!chat) return text.empty() ? std::string() : Chunk(std::string(text), nullptr);
    std::vector<engine::OutputEvent> events;
    reply->Feed(token, text, &events);
    return ChatChunks(events);
  }
  std::string FinishReason() const {
    if (chat && !reply->calls().empty() &&
        (usage.finish == serve::FinishReason::kEndOfGeneration ||
         usage.finish == serve::FinishReason::kStopString)) {
      return "tool_calls";
    }
    return std::string(FinishReasonString(usage.finish));
  }

  std::string StreamEvent(const serve::Event& e) {
    if (done || error.has_value()) return {};
    switch (e.kind) {
      case serve::Event::Kind::kPrefillProgress:
        return {};
      case serve::Event::Kind::kError:
        error = ErrorFromStatus(e.status);
        return "data: " + Dump(internal::ErrorObject(*error)) + "\n\n";
      case serve::Event::Kind::kToken: {
        std::string out = Start();
        AddLogprob(e);
        return out + StreamText(e.token, e.text);
      }
      case serve::Event::Kind::kDone: {
        done = true;
        usage = e.usage;
        std::string out = Start();
        if (chat) {
          std::vector<engine::OutputEvent> events;
          reply->Finish(e.text, &events);
          out += ChatChunks(events);
        } else {
          out += StreamText(-1, e.text);
        }
        const std::string finish = FinishReason();
        out += chat ? Chunk(Json::object(), finish) : Chunk("", finish);
        if (include_usage) {
          Json c = Base(/*chunk=*/true);
          c["choices"] = Json::array();
          c["usage"] = internal::UsageObject(usage);
          out += "data: " + Dump(c) + "\n\n";
        }
        return out + "data: [DONE]\n\n";
      }
    }
    return {};
  }

  void Add(const serve::Event& e) {
    if (done || error.has_value()) return;
    switch (e.kind) {
      case serve::Event::Kind::kPrefillProgress:
        return;
      case serve::Event::Kind::kError:
        error = ErrorFromStatus(e.status);
        return;
      case serve::Event::Kind::kToken:
        AddLogprob(e);
        if (chat) {
          std::vector<engine::OutputEvent> events;
          reply->Feed(e.token, e.text, &events);
        } else {
          content += e.text;
        }
        return;
      case serve::Event::Kind::kDone:
        done = true;
        usage = e.usage;
        if (chat) {
          std::vector<engine::OutputEvent> events;
          reply->Finish(e.text, &events);
        } else {
          content += e.text;
        }
        return;
    }
  }

  std::string Finish() const {
    if (error.has_value()) return error->ToJson();
    Json choice = {{"index", 0}};
    if (chat) {
      const bool calls = !reply->calls().empty();
      Json message = {{"role", "assistant"}};
      message["content"] =
          calls && reply->content().empty() ? Json(nullptr) : Json(reply->content());
      if (!reply->reasoning().empty()) message["reasoning_content"] = reply->reasoning();
      if (calls) {
        Json tc = Json::array();
        for (const ReplyCall& c : reply->calls()) {
          tc.push_back({{"id", c.id},
                        {"type", "function"},
                        {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
        }
        message["tool_calls"] = std::move(tc);
      }
      choice["message"] = std::move(message);
    } else {
      choice["text"] = echo ? prompt_text + content : content;
    }
    choice["logprobs"] = LogprobsValue(logprobs_acc);
    choice["finish_reason"] = done ? Json(FinishReason()) : Json(nullptr);
    Json body = Base(/*chunk=*/false);
    body["choices"] = Json::array({std::move(choice)});
    body["usage"] = internal::UsageObject(usage);
    return Dump(body);
  }
};

ResponseBuilder::ResponseBuilder(const ParsedRequest& req, std::string id, int64_t created_unix,
                                 const ModelContext& model)
    : s_(std::make_shared<State>()) {
  State& s = *s_;
  s.chat = req.chat;
  s.include_usage = req.include_usage;
  if (s.chat) {
    s.reply = std::make_unique<StructuredReply>(req, "call_");
  }
  s.echo = req.echo && !req.chat;
  s.logprobs = req.request.logprobs;
  s.prompt_text = s.echo ? req.prompt_text : std::string();
  s.model_name = req.model.empty() ? model.model_id : req.model;
  s.id = std::move(id);
  s.created = created_unix;
  s.tok = model.tokenizer;
  s.text_offset = s.prompt_text.size();
  s.ResetLogprobs();
}

// The public methods catch what JSON building may throw (std::bad_alloc in practice): a stream
// then ends with an error frame, a body becomes a 500 error object.
std::string ResponseBuilder::StreamEvent(const serve::Event& e) {
  try {
    return s_->StreamEvent(e);
  } catch (...) {
    s_->error =
        ApiError{500, "internal error while formatting the response", "server_error", "", ""};
    return "data: {\"error\":{\"message\":\"internal error while formatting the response\","
           "\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";
  }
}

void ResponseBuilder::Add(const serve::Event& e) {
  try {
    s_->Add(e);
  } catch (...) {
    s_->error =
        ApiError{500, "internal error while formatting the response", "server_error", "", ""};
  }
}

std::string ResponseBuilder::Finish() const {
  try {
    return s_->Finish();
  } catch (...) {
    return "{\"error\":{\"message\":\"internal error while formatting the response\","
           "\"type\":\"server_error\",\"param\":null,\"code\":null}}";
  }
}

std::optional<ApiError> ResponseBuilder::error() const { return s_->error; }

std::optional<std::pair<Message, ReplayEntry>> ResponseBuilder::ReplyRecord() const {
  if (!s_->chat || !s_->done) return std::nullopt;
  return std::make_pair(s_->reply->AsMessage(), ReplayEntry{"", s_->reply->ids(), {}});
}

bool ResponseBuilder::finished() const { return s_->done || s_->error.has_value(); }

}  // namespace kvstash::daemon::api
