// The OpenAI Responses API (docs/agents.md): POST /v1/responses, streamed and not, enough for a
// Codex-style agent loop that resends its whole input every turn (store=false;
// previous_response_id is refused with a clear error, since kvstash keeps no response store).
//
// `instructions` is the system message; `input` is a string (one user message) or items:
// messages (input_text / output_text parts), `function_call` items (an assistant turn's tool
// calls), `function_call_output` items (tool results) and `reasoning` items (the next assistant
// turn's reasoning). `prompt_cache_key` picks the session the request continues.
//
// Streams emit response.created, response.in_progress, per output item
// response.output_item.added -> (response.content_part.added, response.output_text.delta ...,
// response.output_text.done, response.content_part.done | response.reasoning_text.delta ...,
// response.reasoning_text.done | response.function_call_arguments.delta ...,
// response.function_call_arguments.done) -> response.output_item.done, and finally
// response.completed (status "incomplete" with incomplete_details when the token budget ran out)
// or response.failed. Every event carries `type` and a `sequence_number`.
//
// Thread safety: pure functions; one builder per request.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "base/status.h"
#include "daemon/kvstashd/api/openai.h"

namespace kvstash::daemon::api {

Result<ParsedRequest> ParseResponsesRequest(std::string_view body, const ModelContext& model,
                                            ApiError* error);

std::unique_ptr<ReplyBuilder> MakeResponsesBuilder(const ParsedRequest& req, std::string id,
                                                   int64_t created_unix, const ModelContext& model);

}  // namespace kvstash::daemon::api
