// The Anthropic Messages API (docs/agents.md): POST /v1/messages, streamed and not, and
// POST /v1/messages/count_tokens, for Claude-Code-style agents pointed at ANTHROPIC_BASE_URL.
//
// Requests become a Conversation (conversation.h): `system` (a string or text blocks) is the
// system message; user turns' `tool_result` blocks become tool messages (before the turn's
// text); assistant turns' `thinking`, `text` and `tool_use` blocks become reasoning, content and
// tool calls. `cache_control` is accepted anywhere and ignored (everything is cached anyway);
// `metadata.user_id` picks the session the request continues; any `model` name is served by the
// loaded model and echoed back.
//
// Replies follow the API's event sequence: message_start, ping, then per content block
// content_block_start -> text_delta / thinking_delta / input_json_delta ... -> content_block_stop
// (each block closed before the next opens), message_delta (stop_reason, usage), message_stop; an
// error mid-stream is an `error` event. Usage: input_tokens excludes cached tokens,
// cache_read_input_tokens are the prompt tokens loaded from the cache, cache_creation_input_tokens
// those computed into full blocks that the cache now holds.
//
// Thread safety: pure functions; one builder per request.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "base/status.h"
#include "daemon/kvstashd/api/openai.h"

namespace kvstash::daemon::api {

// Parses a /v1/messages body. Errors fill *error (Anthropic shape via AnthropicErrorBody).
Result<ParsedRequest> ParseAnthropicMessages(std::string_view body, const ModelContext& model,
                                             ApiError* error);

// /v1/messages/count_tokens: {"input_tokens": N} for the same body (max_tokens optional).
Result<std::string> HandleAnthropicCountTokens(std::string_view body, const ModelContext& model,
                                               ApiError* error);

// {"type": "error", "error": {"type", "message"}}, the type from the HTTP status
// (invalid_request_error, authentication_error, not_found_error, request_too_large,
// rate_limit_error, overloaded_error, api_error).
std::string AnthropicErrorBody(const ApiError& e);

std::unique_ptr<ReplyBuilder> MakeAnthropicBuilder(const ParsedRequest& req, std::string id,
                                                   const ModelContext& model);

}  // namespace kvstash::daemon::api
