// Rendering a model's own chat template (GGUF `tokenizer.chat_template`) with the general Jinja
// interpreter (engine/chat/jinja/template.h), given an OpenAI-style conversation: this builds the
// variables transformers' apply_chat_template passes to the template (messages, tools,
// documents, add_generation_prompt, the special-token texts and extra kwargs such as
// enable_thinking) and renders.
//
// Unlike RenderChat() (chat_template.h), which covers a few families with hand-written
// renderers, this handles any template the interpreter supports, including tool calls, tool
// results and reasoning content. Not yet wired into the daemon.
//
// Thread safety: pure functions; a jinja::Template may be shared across threads.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"
#include "engine/chat/jinja/template.h"

namespace kvstash::engine {

struct JinjaChatOptions {
  // Append the header that opens the assistant's reply. Default true.
  bool add_generation_prompt = true;
  // Special-token texts (`bos_token`, `eos_token` in the template), from the vocab. Default empty.
  std::string bos_token;
  std::string eos_token;
  // Passed as `enable_thinking` when set (Qwen3-style switches); absent (undefined) otherwise.
  std::optional<bool> enable_thinking;
  // Further template variables (apply_chat_template's **kwargs, e.g. "reasoning_effort",
  // "builtin_tools"); must be a JSON object or null. They override the ones above.
  nlohmann::ordered_json extra_vars;
  // Limits and clock for the render.
  jinja::RenderOptions render;
};

// The template variables transformers would pass: {"messages": messages, "tools": tools or null,
// "documents": null, "add_generation_prompt": ..., "bos_token": ..., "eos_token": ...,
// ["enable_thinking": ...], extra_vars...}. `tools` null or an empty array becomes null, as
// apply_chat_template passes tools=None when there are none.
nlohmann::ordered_json MakeChatTemplateContext(const nlohmann::ordered_json& messages,
                                               const nlohmann::ordered_json& tools,
                                               const JinjaChatOptions& options);

// Renders `messages` (an array of {"role", "content", ["tool_calls", "reasoning_content",
// "tool_call_id", "name", ...]}) with `tmpl`. InvalidArgument when messages is not an array, or
// with the template's own error (raise_exception, type errors) as jinja::Template::Render gives it.
[[nodiscard]] Result<std::string> RenderJinjaChat(const jinja::Template& tmpl,
                                                  const nlohmann::ordered_json& messages,
                                                  const nlohmann::ordered_json& tools,
                                                  const JinjaChatOptions& options);

// Parses `template_source` and renders; parse errors are InvalidArgument "jinja: line L col C:
// ...". Parse once with jinja::Template::Parse when rendering many conversations.
[[nodiscard]] Result<std::string> RenderJinjaChat(std::string_view template_source,
                                                  const nlohmann::ordered_json& messages,
                                                  const nlohmann::ordered_json& tools,
                                                  const JinjaChatOptions& options);

}  // namespace kvstash::engine
