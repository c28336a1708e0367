// Chat templates: turning a conversation (system/user/assistant messages) into the exact prompt
// text a chat model was trained on.
//
// GGUF files carry the model's Hugging Face Jinja template in `tokenizer.chat_template`. kvstash
// does not interpret Jinja: DetectChatTemplate() recognises the family from the template text and
// RenderChat() runs a hand-written renderer for it that reproduces the Jinja output byte for byte
// (checked against jinja2 by tests/engine/chat_template_test.cc). Families: ChatML (incl. the
// Qwen2/Qwen2.5 default system prompt), Qwen3 (thinking switch and <think> rewriting), Llama 3,
// Llama 2 `[INST] <<SYS>>`, Mistral `[INST]` (v0.1/v0.2) and Zephyr. A template that matches none
// of them is an InvalidArgument error, never a silent guess; an explicit name overrides detection.
// docs/chat-templates.md gives each family's format and where re-rendering a longer conversation
// does not extend the shorter one's text (this matters for prefix caching).
//
// Thread safety: all functions are pure; ChatTemplate is an immutable-by-convention value type.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace kvstash::engine {

enum class ChatTemplateKind : uint8_t {
  kChatMl,   // <|im_start|>role\n...<|im_end|>\n (Qwen2/2.5, OpenHermes, ...)
  kQwen3,    // ChatML + Qwen3 <think> handling and enable_thinking
  kLlama3,   // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
  kLlama2,   // <s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] ... </s>
  kMistral,  // <s>[INST] ... [/INST]...</s>  (no system role)
  kZephyr,   // <|user|>\n...</s>\n  (Zephyr, TinyLlama-Chat)
};

// A detected or named template: the family plus the few per-model details the renderers need.
struct ChatTemplate {
  ChatTemplateKind kind = ChatTemplateKind::kChatMl;
  // kChatMl only: system message inserted when the conversation does not start with one (Qwen2:
  // "You are a helpful assistant.", Qwen2.5: "You are Qwen, created by Alibaba Cloud. ...").
  // Empty: none.
  std::string default_system_prompt;
  // kLlama3 only: the original Llama 3 template appends the assistant header even when
  // add_generation_prompt is false (it has no `if add_generation_prompt`).
  bool always_add_generation_prompt = false;
};

struct ChatMessage {
  std::string role;     // "system", "user" or "assistant"; anything else is InvalidArgument
  std::string content;  // UTF-8
};

struct ChatOptions {
  // Append the header that opens the assistant's reply. Default true. Llama 2 and Mistral
  // templates have no such header and ignore it.
  bool add_generation_prompt = true;
  // Qwen3 only. Unset: the template's default (the model decides whether to think). false: an
  // empty <think></think> block follows the generation prompt. true: same text as unset.
  std::optional<bool> enable_thinking;
  // Special-token texts the template splices in (Jinja `bos_token`/`eos_token`). Take them from
  // the vocab (e.g. "<|begin_of_text|>", "<s>", "</s>"); Llama 3 uses bos_token, Llama 2 both,
  // Mistral both, Zephyr eos_token, ChatML/Qwen3 neither. Default empty.
  std::string bos_token;
  std::string eos_token;
};

// Recognises the family of a Jinja chat template (the GGUF's tokenizer.chat_template).
// InvalidArgument naming the problem when the text is empty, belongs to no supported family, or
// is a known variant whose output these renderers would not reproduce (e.g. Llama 3.1's dated
// system header, Mistral v3 [SYSTEM_PROMPT]/[AVAILABLE_TOOLS]).
[[nodiscard]] Result<ChatTemplate> DetectChatTemplate(std::string_view jinja_source);

// An explicit choice: "chatml", "qwen3", "llama3", "llama2", "mistral" or "zephyr"
// (case-sensitive). Named templates have no default system prompt and Llama 3's generation
// prompt follows add_generation_prompt. InvalidArgument listing the names otherwise.
[[nodiscard]] Result<ChatTemplate> ChatTemplateFromName(std::string_view name);

// The name ChatTemplateFromName() accepts for `kind`.
std::string_view ChatTemplateKindName(ChatTemplateKind kind);

// Renders `messages` exactly as the family's Jinja template would. InvalidArgument when the
// conversation is empty, a role is not system/user/assistant, or the template itself would raise
// (Llama 2/Mistral require user/assistant alternation; Mistral has no system role).
[[nodiscard]] Result<std::string> RenderChat(const ChatTemplate& tmpl,
                                             const std::vector<ChatMessage>& messages,
                                             const ChatOptions& options);

// Python's str.strip() with no argument (Jinja's `trim` filter): removes leading and trailing
// Unicode whitespace (str.isspace) from UTF-8 text. Exposed for tests.
std::string_view PyStripWhitespace(std::string_view text);

}  // namespace kvstash::engine
