// Prompt building shared by every front end of kvstashd (the OpenAI HTTP API in openai*.cc and
// the local socket in ../socket/): chat messages rendered with the model's template into token
// ids (the BOS rule included), the continuation of a conversation kept in a session, and session
// names.
//
// Thread safety: pure functions over a read-only ModelContext.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "daemon/kvstashd/api/openai.h"
#include "engine/chat/chat_template.h"

namespace kvstash::daemon::api {

// Mirrors cache::ValidateSessionName (1-128 of [A-Za-z0-9._-], not starting with '.' or '-'),
// which lives in the cache library this one does not link; openai_api_test checks that the two
// agree.
bool ValidSessionName(std::string_view name);

// The token budget of a request whose context has `n_prompt` tokens (which must leave room):
// `requested`, else model.default_max_tokens (else the whole remaining context), clamped, never
// refused, to model.max_tokens_limit (n_ctx when 0) and to what is left of n_ctx; at least 1.
int32_t TokenBudget(const ModelContext& model, int64_t n_prompt, std::optional<int64_t> requested);

// `messages` rendered with model.chat_template (bos/eos texts taken from the vocabulary) and
// tokenized with special tokens parsed; a BOS is added only when the vocabulary asks for one and
// the template did not write it. InvalidArgument (the renderer's message) for a conversation the
// template refuses, or a model without a vocabulary.
Result<std::vector<int32_t>> RenderChatTokens(const ModelContext& model,
                                              const std::vector<engine::ChatMessage>& messages,
                                              engine::ChatOptions options);

// The tokens that continue a conversation whose tokens end with the assistant's last reply (a
// session): the template's end of that reply, then `messages` and the generation prompt. The
// template renders [user, assistant MARK] + messages and the text after MARK is kept, so every
// family's turn markup comes out as it would in the whole conversation. No BOS.
Result<std::vector<int32_t>> RenderChatContinuation(
    const ModelContext& model, const std::vector<engine::ChatMessage>& messages,
    engine::ChatOptions options);

}  // namespace kvstash::daemon::api
