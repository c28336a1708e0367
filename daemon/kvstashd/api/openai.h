// The OpenAI-compatible API's wire format (ARCHITECTURE.md §7, docs/daemon.md): request bodies of
// /v1/chat/completions, /v1/completions, /tokenize and /detokenize parsed into serve::Request, and
// the JSON (non-streamed) and SSE chunks (streamed) that answer them. Pure functions over strings:
// no sockets, no engine thread; the HTTP layer (daemon/kvstashd/http/) calls them.
//
// Thread safety: every function is pure; ModelContext is read-only after startup and may be
// shared by all threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "engine/chat/chat_template.h"
#include "serve/request.h"

namespace kvstash::engine {
class Tokenizer;
}

namespace kvstash::daemon::api {

// What request parsing needs to know about the loaded model. Filled once at startup.
struct ModelContext {
  std::string model_id;              // the id /v1/models reports (file name without .gguf)
  std::vector<std::string> aliases;  // other names requests may use (any name is accepted)
  const engine::Tokenizer* tokenizer = nullptr;  // null: the model has no vocabulary
  engine::ChatTemplate chat_template;            // detected, named by --chat-template, or chatml
  int n_ctx = 4096;                              // context size of one sequence
  int default_max_tokens = 512;                  // when a request gives none
  int max_tokens_limit = 0;                      // hard cap on max_tokens; 0 = n_ctx
};

// An API error: HTTP status + OpenAI's error object
// {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";  // invalid_request_error, authentication_error,
                                               // not_found_error, server_error, unavailable_error
  std::string param;                           // the offending field, "" when none
  std::string code;                            // e.g. "context_length_exceeded", "" when none
  std::string ToJson() const;
};
// Maps an engine/scheduler Status to the right API error (InvalidArgument -> 400,
// ResourceExhausted from a full queue -> 503, context too long -> 422, ...).
ApiError ErrorFromStatus(const Status& s);

// A parsed /v1/chat/completions or /v1/completions request.
struct ParsedRequest {
  serve::Request request;  // prompt tokenized (chat rendered through the template), sampling,
                           // limits (max_tokens/max_completion_tokens, stop), session, cache_salt,
                           // logprobs/top_logprobs
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::string model;           // as the client sent it (echoed back in responses)
  bool chat = false;           // chat.completion vs text_completion shapes
  bool echo = false;           // /v1/completions echo (prompt text prepended)
  std::string prompt_text;     // completions: the prompt text (for echo)
  // The template has a thinking section (Qwen3): the generated text is split into
  // reasoning_content and content at </think>.
  bool split_reasoning = false;
};

// Parses and validates a request body. Every field error names the field (`param`). Accepted
// fields: model, messages (chat: role system/user/assistant/tool... string or text-part arrays),
// prompt (completions: string, or an array of one string, or token ids), max_tokens,
// max_completion_tokens, temperature, top_p, top_k, min_p, seed, stop (string or array),
// presence_penalty, frequency_penalty, repetition_penalty, logprobs, top_logprobs, stream,
// stream_options.include_usage, n (only 1), user, and the kvstash extras `session` and
// `cache_salt`. Unknown fields are ignored (clients send many). NaN/negative/out-of-range values,
// wrong types, invalid UTF-8 are 400. A prompt longer than the context is 422
// (code "context_length_exceeded").
Result<ParsedRequest> ParseChatCompletion(std::string_view body, const ModelContext& model,
                                          ApiError* error);
Result<ParsedRequest> ParseCompletion(std::string_view body, const ModelContext& model,
                                      ApiError* error);

// The usage object of every response: prompt_tokens, completion_tokens, total_tokens,
// prompt_tokens_details.cached_tokens (always present, 0 included), and a "kvstash" object with
// cached tokens per tier (device/host/disk), prefilled_tokens, load_ms, prefill_ms, ttft_ms.
std::string UsageJson(const serve::Usage& usage);

// finish_reason for a serve::FinishReason: "stop" (eog, stop string), "length" (max tokens,
// context full), "cancelled" never reaches a client.
std::string_view FinishReasonString(serve::FinishReason r);

// Accumulates one request's events into response text. Feed every event in order.
class ResponseBuilder {
 public:
  ResponseBuilder(const ParsedRequest& req, std::string id, int64_t created_unix,
                  const ModelContext& model);
  // Streaming: the SSE frames ("data: {...}\n\n") to send for this event, possibly none (e.g.
  // progress events, text held back). The final kDone event yields the finish chunk, the usage
  // chunk when include_usage, and "data: [DONE]\n\n".
  std::string StreamEvent(const serve::Event& e);
  // Non-streaming: call Add for every event, then Finish for the whole JSON body.
  void Add(const serve::Event& e);
  std::string Finish() const;

 private:
  // implementation-defined state
  struct State;
  std::shared_ptr<State> s_;
};

// /tokenize {"content": "...", "add_special": bool, "with_pieces": bool} -> {"tokens": [...]}
// (with_pieces: [{"id", "piece"}]); /detokenize {"tokens": [...]} -> {"content": "..."}.
// llama.cpp's shapes.
Result<std::string> HandleTokenize(std::string_view body, const ModelContext& model,
                                   ApiError* error);
Result<std::string> HandleDetokenize(std::string_view body, const ModelContext& model,
                                     ApiError* error);

// GET /v1/models body.
std::string ModelsJson(const ModelContext& model, int64_t created_unix);

}  // namespace kvstash::daemon::api
