// The OpenAI-compatible API's wire format (ARCHITECTURE.md §7, docs/daemon.md): request bodies of
// /v1/chat/completions, /v1/completions, /tokenize and /detokenize parsed into serve::Request, and
// the JSON (non-streamed) and SSE chunks (streamed) that answer them. Pure functions over strings:
// no sockets, no engine thread; the HTTP layer (daemon/kvstashd/http/) calls them.
//
// Thread safety: every function is pure; ModelContext is read-only after startup and may be
// shared by all threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "daemon/kvstashd/api/conversation.h"
#include "daemon/kvstashd/api/reply.h"
#include "engine/chat/chat_template.h"
#include "engine/sampling/sampler.h"
#include "serve/request.h"

namespace kvstash::engine {
class Tokenizer;
namespace jinja {
class Template;
}
}  // namespace kvstash::engine

namespace kvstash::daemon::api {

// Limits of the request fields (OpenAI's, where it has one).
inline constexpr int kMaxStopStrings = 4;   // `stop`: a string or up to 4 strings
inline constexpr int kMaxTopLogprobs = 20;  // `top_logprobs` (chat), `logprobs` (completions)
inline constexpr size_t kMaxCacheSaltBytes = 256;  // `cache_salt`
inline constexpr int kMaxJsonDepth = 128;          // nesting of arrays/objects in a body

// Sampling for the fields a request leaves out: OpenAI's temperature 1.0 and top_p 1.0 (the two
// knobs its API documents), llama.cpp's top_k 40 and min_p 0.05 (OpenAI has neither), no
// penalties, a 64-token penalty window. The seed is drawn per request unless `seed` is given.
inline engine::SamplerOptions DefaultApiSampling() {
  engine::SamplerOptions o;
  o.temperature = 1.0f;
  o.top_p = 1.0f;
  o.top_k = 40;
  o.min_p = 0.05f;
  return o;
}

// What request parsing needs to know about the loaded model. Filled once at startup.
struct ModelContext {
  std::string model_id;              // the id /v1/models reports (file name without .gguf)
  std::vector<std::string> aliases;  // other names requests may use (any name is accepted)
  const engine::Tokenizer* tokenizer = nullptr;  // null: the model has no vocabulary
  engine::ChatTemplate chat_template;            // detected, named by --chat-template, or chatml
  // The GGUF's Jinja template, when kvstash's interpreter accepts it (preferred over
  // chat_template); jinja_error says why not otherwise.
  std::shared_ptr<const engine::jinja::Template> jinja;
  std::string jinja_error;
  // How the model writes tool calls and reasoning (from the template text).
  engine::ToolCallFormat tool_format = engine::ToolCallFormat::kNone;
  bool reasoning = false;  // the template has <think> blocks
  // The template prints tool-call arguments given as a string verbatim (`arguments is string`,
  // Qwen/Hermes/Granite): replayed replies then pass their original argument bytes.
  bool template_prints_string_arguments = false;
  // Strip known per-request volatile fragments from system prompts (conversation.h).
  bool strip_volatile = true;
  // Remembered reply token ids (conversation.h); null: off.
  std::shared_ptr<TokenReplay> replay;
  int block_tokens = 16;  // the prefix cache's block size (for cache_creation_input_tokens)
  // Find where the last messages start (RenderedPrompt::message_starts, the scheduler's snapshot
  // hints): on for hybrid models with a cache, whose prompts resume only at state snapshots; off
  // elsewhere (it costs extra template renders, and other models resume at any block).
  bool message_starts = false;
  // Accept {"kvstash": {"script": TEXT}} in chat requests: the reply is TEXT, forced token by
  // token through the model (serve::Request::end_after_forced). Tests and transcript replays.
  bool allow_scripted_replies = false;
  int n_ctx = 4096;              // context size of one sequence
  int default_max_tokens = 512;  // when a request gives none
  int max_tokens_limit = 0;      // hard cap on max_tokens; 0 = n_ctx
  // Defaults for the sampling fields a request omits (DefaultApiSampling(); `seed` unused).
  engine::SamplerOptions default_sampling = DefaultApiSampling();
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
// Maps an engine/scheduler Status to the right API error: a message about the context or KV
// pages (a request too large for this server) -> 422 "context_length_exceeded"; otherwise
// InvalidArgument -> 400, ResourceExhausted (the queue is full; the caller adds Retry-After),
// Busy and Cancelled (shutting down) -> 503 unavailable_error, NotFound -> 404 not_found_error,
// Incompatible -> 409, anything else -> 500 server_error.
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
  // Chat APIs: the conversation, its rendered prompt and how to parse the reply.
  Conversation conversation;
  RenderedPrompt rendered;
  engine::OutputParserOptions parser;
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
//
// Details. `null` counts as absent for every optional field. Integer fields also take integral
// floats (3.0). max_completion_tokens wins over max_tokens; the budget (default
// model.default_max_tokens, or the whole remaining context when that is <= 0) is clamped, never
// refused, to max_tokens_limit and to what is left of n_ctx after the prompt, so a huge value
// costs nothing. `session` sets both Request::restore_session and save_session (the caller sets
// Request::session_is_prefix, under which a missing session is not an error). Chat: `developer` is
// a system message, `tool` messages are 400 until tool calls are supported, text parts of a content
// array are concatenated, chat_template_kwargs.enable_thinking switches Qwen3 thinking, and the
// rendered text is tokenized with special tokens parsed and a BOS added only when the vocab asks
// for one and the template did not write it. Completions: the prompt is tokenized as plain text
// with the vocab's BOS. Needs model.tokenizer for text (400 otherwise; token-id prompts work
// without). On failure returns InvalidArgument (Internal for a bug caught on the way) and fills
// *error (when not null); never throws.
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

// Accumulates one request's events into response text. Feed every event in order. `model`
// (its tokenizer, for logprob token texts) must outlive the builder. Not thread-safe: one per
// request, used by one thread at a time.
//
// With req.split_reasoning the generated text is split: a reply opening with "<think>" is
// reasoning up to "</think>" (newlines around it trimmed, as the Qwen3 template does when the
// turn is sent back), the rest is content; a reply that does not open with "<think>" is all
// content. Streamed deltas concatenate to exactly the non-streamed fields.
class ResponseBuilder final : public ReplyBuilder {
 public:
  ResponseBuilder(const ParsedRequest& req, std::string id, int64_t created_unix,
                  const ModelContext& model);
  // Streaming: the SSE frames ("data: {...}\n\n") to send for this event, possibly none (e.g.
  // progress events, text held back). The first token or kDone event is preceded by the
  // {"role":"assistant","content":""} chunk (chat; completions echo the prompt instead when
  // asked). The final kDone event yields the finish chunk, the usage chunk when include_usage,
  // and "data: [DONE]\n\n". A kError event yields `data: {"error": {...}}\n\n` and ends the
  // stream. Nothing after the final event.
  std::string StreamEvent(const serve::Event& e) override;
  // Non-streaming: call Add for every event, then Finish for the whole JSON body (the error
  // object when a kError event came: see error()).
  void Add(const serve::Event& e) override;
  std::string Finish() const override;
  // The API error of a kError event seen so far (its HTTP status for a non-streamed reply).
  std::optional<ApiError> error() const override;
  std::string ErrorBody(const ApiError& e) const override { return e.ToJson(); }
  std::optional<std::pair<Message, ReplayEntry>> ReplyRecord() const override;
  // A kDone or kError event has been seen.
  bool finished() const;

 private:
  // implementation-defined state
  struct State;
  std::shared_ptr<State> s_;
};

// /tokenize {"content": "...", "add_special": bool, "with_pieces": bool} -> {"tokens": [...]}
// (with_pieces: [{"id", "piece"}]); /detokenize {"tokens": [...]} -> {"content": "..."}.
// llama.cpp's shapes and defaults: add_special false, parse_special true, with_pieces false; a
// piece that is not valid UTF-8 on its own is given as an array of its bytes. Special tokens are
// rendered by /detokenize. 400 (InvalidArgument, *error filled) for a bad body, an id out of
// range, or a model without a vocabulary.
Result<std::string> HandleTokenize(std::string_view body, const ModelContext& model,
                                   ApiError* error);
Result<std::string> HandleDetokenize(std::string_view body, const ModelContext& model,
                                     ApiError* error);

// GET /v1/models body.
std::string ModelsJson(const ModelContext& model, int64_t created_unix);

}  // namespace kvstash::daemon::api
