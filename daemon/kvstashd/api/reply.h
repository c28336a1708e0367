// What the chat APIs share on the way out: a ReplyBuilder interface the HTTP layer drives for
// every API (OpenAI chat/completions, Anthropic Messages, OpenAI Responses), and StructuredReply,
// which turns a request's token events into text, reasoning and tool calls through the output
// parser (engine/chat/output_parser.h) and remembers the reply's token ids for TokenReplay.
//
// Thread safety: one builder per request, used by one thread at a time.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/kvstashd/api/conversation.h"
#include "engine/chat/output_parser.h"
#include "serve/request.h"

namespace kvstash::daemon::api {

struct ApiError;
struct ParsedRequest;

class ReplyBuilder {
 public:
  virtual ~ReplyBuilder() = default;
  // Streaming: what opens the stream, sent as soon as the request is accepted (before prefill).
  virtual std::string StreamOpen() { return {}; }
  // Streaming: the SSE bytes to send for this event (possibly none). The final event (kDone or
  // kError) yields the closing frames; nothing after it.
  virtual std::string StreamEvent(const serve::Event& e) = 0;
  // Non-streaming: every event in order, then Finish() for the body.
  virtual void Add(const serve::Event& e) = 0;
  virtual std::string Finish() const = 0;
  // The error of a kError event seen so far.
  virtual std::optional<ApiError> error() const = 0;
  // `e` in this API's error shape (a whole body).
  virtual std::string ErrorBody(const ApiError& e) const = 0;
  // After kDone: the reply as the assistant message a client sends back (for TokenReplay), with
  // the ids and text the model generated; nullopt when the API keeps no such record.
  virtual std::optional<std::pair<Message, ReplayEntry>> ReplyRecord() const {
    return std::nullopt;
  }
};

// A tool call as the APIs report it.
struct ReplyCall {
  std::string id;  // "call_..." (OpenAI), "toolu_..." (Anthropic)
  std::string name;
  std::string arguments;  // JSON text, as generated
  std::string error;      // non-empty: the arguments are not valid JSON (reported, not repaired)
};

// Parses a reply as it streams. Feed() the text of each token event; the parser's events come
// back in order with tool calls numbered from 0. `calls()` holds every call begun so far.
class StructuredReply {
 public:
  // `tools`: the request's tool list (types XML parameter values); `id_prefix`: prefix of
  // generated tool-call ids ("call_", "toolu_"); with `parallel_tool_calls` false only the first
  // call is kept.
  StructuredReply(const engine::OutputParserOptions& options, const nlohmann::ordered_json& tools,
                  std::string id_prefix, bool parallel_tool_calls);
  // From a parsed chat request.
  StructuredReply(const ParsedRequest& req, std::string id_prefix);
  // `token`: the event's token id (-1: none, e.g. the final event's released tail).
  void Feed(int32_t token, std::string_view text, std::vector<engine::OutputEvent>* out);
  void Finish(std::string_view text, std::vector<engine::OutputEvent>* out);

  const std::string& content() const { return content_; }
  const std::string& reasoning() const { return reasoning_; }
  const std::vector<ReplyCall>& calls() const { return calls_; }
  // The assistant message a client sends back for this reply.
  Message AsMessage() const;
  // The generated token ids (an end-of-generation token excluded).
  const std::vector<int32_t>& ids() const { return ids_; }

 private:
  void Take(std::vector<engine::OutputEvent>* events, size_t from);

  static engine::OutputParserOptions WithTools(engine::OutputParserOptions o,
                                               const nlohmann::json* tools) {
    o.tools = tools;
    return o;
  }

  nlohmann::json tools_;  // before parser_, which reads it in its constructor
  engine::OutputParser parser_;
  std::string id_prefix_;
  bool parallel_;
  std::string content_, reasoning_;
  std::vector<ReplyCall> calls_;
  std::vector<int32_t> ids_;
  bool saw_reasoning_ = false;
  bool reasoning_started_ = false;  // leading newlines of the reasoning are dropped until then
  bool content_started_ = false;    // after reasoning, leading newlines are dropped until then
  std::string held_newlines_;       // trailing newlines of the reasoning so far
};

// A random id such as "call_3f9a..." (24 hex digits after the prefix).
std::string RandomId(std::string_view prefix);

}  // namespace kvstash::daemon::api
