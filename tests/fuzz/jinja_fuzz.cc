// libFuzzer target for the Jinja interpreter (engine/chat/jinja): the input bytes are a template,
// parsed and rendered against a fixed chat context (system/user/assistant/tool messages, a tool
// call, tools, add_generation_prompt, enable_thinking). Whatever the bytes, Parse() and Render()
// return a Status instead of crashing, hanging or exhausting memory; the small limits below keep
// each run bounded (the sanitizers catch memory errors, leaks and undefined behaviour).
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "engine/chat/jinja/template.h"

namespace {

const nlohmann::ordered_json& Context() {
  static const nlohmann::ordered_json context = nlohmann::ordered_json::parse(R"({
    "messages": [
      {"role": "system", "content": "You are helpful. 你好 😀"},
      {"role": "user", "content": "What is the weather in Paris?"},
      {"role": "assistant", "content": "<think>\nlookup\n</think>\n\nLet me check.",
       "reasoning_content": "lookup",
       "tool_calls": [{"id": "call12345", "type": "function",
                       "function": {"name": "get_weather",
                                    "arguments": {"city": "Paris", "days": 3, "hourly": false,
                                                  "ratio": 0.5, "tags": ["a", "b"]}}}]},
      {"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
       "content": "{\"temperature\": 21.5}"},
      {"role": "assistant", "content": "It is 21.5 °C."},
      {"role": "user", "content": ["part", {"type": "text", "text": "list content"}]}
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather",
               "description": "Weather for a city.",
               "parameters": {"type": "object",
                              "properties": {"city": {"type": "string"},
                                             "days": {"type": "integer"}},
                              "required": ["city"]}}}],
    "documents": null,
    "add_generation_prompt": true,
    "enable_thinking": false,
    "bos_token": "<s>",
    "eos_token": "</s>"
  })");
  return context;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using kvstash::engine::jinja::RenderOptions;
  using kvstash::engine::jinja::Template;
  const std::string_view source(reinterpret_cast<const char*>(data), size);
  auto t = Template::Parse(source);
  if (!t.ok()) return 0;
  RenderOptions options;
  options.max_output_bytes = 1 << 20;
  options.max_loop_iterations = 100'000;
  options.max_call_depth = 40;
  auto r = t->Render(Context(), options);
  (void)r;
  return 0;
}
