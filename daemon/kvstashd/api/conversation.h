// The conversation every chat API turns into a prompt (docs/agents.md): OpenAI chat completions,
// Anthropic Messages and OpenAI Responses each parse their request into a Conversation
// (messages with reasoning, tool calls and tool results, the tool list, the tool choice), and
// RenderConversation() turns it into the prompt's token ids the same way for all three, so an
// agent that switches API keeps its cache.
//
// Rendering goes through the GGUF's own Jinja chat template when kvstash's interpreter accepts it
// (engine/chat/jinja/), with the variables Hugging Face transformers passes (messages, tools,
// add_generation_prompt, bos_token, eos_token, enable_thinking); otherwise through the built-in
// family renderer (engine/chat/chat_template.h), which knows no tools.
//
// Cache stability (docs/agents.md):
// - volatile fragments that some agents put into the system prompt on every request (Claude
//   Code's `x-anthropic-billing-header: ... cch=...;` line) are stripped before rendering when the
//   model context asks for it (ModelContext::strip_volatile);
// - the token ids of replies the daemon generated are spliced back when those turns return
//   (TokenReplay), so BPE re-tokenization cannot change the prefix the cache holds.
//
// Thread safety: pure functions over their arguments; TokenReplay is internally synchronized.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "engine/chat/output_parser.h"

namespace kvstash::daemon::api {

struct ModelContext;

struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // JSON text, as the client sent it or the model generated it
};

struct Message {
  std::string role;                  // "system", "user", "assistant" or "tool"
  std::string content;               // UTF-8
  std::string reasoning;             // assistant: reasoning_content / thinking blocks
  std::vector<ToolCall> tool_calls;  // assistant
  std::string tool_call_id;          // tool: the call this answers
  std::string name;                  // tool: the function's name, when known
};

enum class ToolChoice : uint8_t { kAuto, kNone, kRequired, kNamed };

struct Conversation {
  std::vector<Message> messages;
  // OpenAI chat format: [{"type": "function", "function": {"name", "description",
  // "parameters"}}], in the client's order.
  nlohmann::ordered_json tools = nlohmann::ordered_json::array();
  ToolChoice tool_choice = ToolChoice::kAuto;
  std::string tool_choice_name;  // kNamed
  bool parallel_tool_calls = true;
  std::optional<bool> enable_thinking;  // chat_template_kwargs / Anthropic `thinking`
  // The last message is an assistant message the reply continues (Anthropic's prefill): no
  // generation prompt, and the template's end-of-turn after it is cut off.
  bool continue_final = false;
};

// One remembered reply: the token ids the model generated and the text they decode to.
struct ReplayEntry {
  std::string text;
  std::vector<int32_t> ids;
  // The tool calls' arguments exactly as generated: a client may send them back re-serialized
  // (another key order or spacing) and the template must print the original bytes again.
  std::vector<std::string> arguments;
};

// The token ids of recent replies, keyed by what a client sends back for them (content,
// reasoning, and each tool call's name and *parsed* arguments, so a client that re-serializes the
// arguments JSON still matches). Bounded LRU by bytes. Thread-safe.
class TokenReplay {
 public:
  explicit TokenReplay(size_t capacity_bytes = size_t{64} << 20) : capacity_(capacity_bytes) {}
  // Key of an assistant turn: its content (whitespace at either end ignored) and its tool calls'
  // names and parsed arguments. Reasoning is not part of it (clients often drop it).
  static std::string KeyOf(const Message& assistant);
  void Remember(const std::string& key, ReplayEntry entry);
  std::optional<ReplayEntry> Find(const std::string& key);
  size_t entries() const;
  uint64_t hits() const;

 private:
  struct Slot {
    std::string key;
    ReplayEntry entry;
  };
  mutable std::mutex mu_;
  size_t capacity_;
  size_t bytes_ = 0;
  uint64_t hits_ = 0;
  std::list<Slot> lru_;  // front: most recent
  std::unordered_map<std::string, std::list<Slot>::iterator> index_;
};

struct RenderedPrompt {
  std::vector<int32_t> tokens;
  std::string text;                  // the rendered template output
  bool starts_in_reasoning = false;  // the prompt opened a think block the reply continues
  std::vector<int32_t> forced;       // reply opening forced by tool_choice required / named
  std::string forced_text;           // ... as text (the output parser sees it first)
  int replayed_tokens = 0;           // prompt tokens spliced from remembered replies
  int volatile_bytes_stripped = 0;   // bytes removed by the volatile-fragment normalization
  // Token positions where the last kMaxMessageStarts messages start (ascending; the first
  // message's start, 0, is left out): serve::Request::snapshot_hints, so a hybrid model resumes a
  // conversation whose later messages change at the end of the last unchanged one. Found by
  // rendering the conversation's prefixes (one extra template render per message counted). Only
  // when ModelContext::message_starts asks for it (hybrid models); empty otherwise.
  std::vector<int> message_starts;
};
inline constexpr size_t kMaxMessageStarts = 4;

// Removes the known volatile fragments from `text` (see the header comment); returns the number
// of bytes removed. Exposed for tests.
int StripVolatile(std::string* text);

// Renders and tokenizes `conv` for `model`. Fails (InvalidArgument naming the problem; the
// caller reports it in its API's error shape) when the model has no tokenizer, the template
// raises, or the conversation needs tools the built-in renderer cannot express.
Result<RenderedPrompt> RenderConversation(const Conversation& conv, const ModelContext& model);

// Output-parser options for a reply to `conv` (tool-call format of the template, the tool list
// for argument types, whether the reply starts inside a think block).
engine::OutputParserOptions ParserOptionsFor(const Conversation& conv, const ModelContext& model,
                                             const RenderedPrompt& prompt);

}  // namespace kvstash::daemon::api
