// A general Jinja2 interpreter for Hugging Face chat templates (the GGUF's
// `tokenizer.chat_template`), for the subset of Jinja that real chat templates use.
//
// Semantics follow how transformers renders chat templates: jinja2's
// ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]),
// transformers' `tojson` filter (json.dumps with ensure_ascii=False), the globals
// raise_exception(msg), strftime_now(fmt), namespace(...), range(...), dict(...), and the
// `{% generation %}` block. Values behave as in Python (truthiness, repr of lists/dicts/None,
// float formatting, integer division, undefined variables printing as ""). The output is checked
// byte for byte against Debian's python3-jinja2 (tests/engine/chat/jinja_test.cc) and
// docs/chat-templates.md lists the supported subset.
//
// Not supported, and rejected at Parse() with an error naming the construct: include, import,
// extends, block, recursive for loops, *args/**kwargs in calls. Integers are 64-bit (Python's
// are unbounded): overflow is an error rather than a wrong number.
//
// Thread safety: a Template is immutable after Parse(); Render() is const and may be called
// concurrently from many threads. Copying a Template shares the parsed tree.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "base/status.h"

namespace kvstash::engine::jinja {

struct Stmt;

struct RenderOptions {
  // Output larger than this (or an intermediate string/list built by `*`) is an error.
  // Default 64 MiB.
  size_t max_output_bytes = size_t{64} << 20;
  // Total for-loop iterations over the whole render (nested loops count each inner iteration).
  // Default 10,000,000.
  size_t max_loop_iterations = 10'000'000;
  // Macro/caller nesting (recursive macros). Default 100; jinja2 itself fails near 200 levels
  // (Python's recursion limit).
  int max_call_depth = 100;
  // Clock for strftime_now(); local time zone, like Python's datetime.now(). Default: the
  // system clock. Tests inject a fixed time.
  std::function<std::chrono::system_clock::time_point()> now;
};

class Template {
 public:
  // Parses `source`; InvalidArgument "jinja: line L col C: <what>" on syntax errors and on
  // constructs this interpreter does not support (naming the construct).
  [[nodiscard]] static Result<Template> Parse(std::string_view source);

  // Renders with `context` as the template's variables (a JSON object: messages, tools,
  // add_generation_prompt, bos_token, eos_token, enable_thinking, ...). Errors (raise_exception,
  // type errors, undefined attribute of undefined, runaway loops/recursion) -> InvalidArgument
  // "jinja: line L: <message>". Thread-safe: const, may be called concurrently.
  // nlohmann::json keeps object keys sorted, so `tojson` of a context object prints its keys in
  // sorted order; pass an ordered_json (below) to keep the caller's key order as Python does.
  [[nodiscard]] Result<std::string> Render(const nlohmann::json& context) const;
  [[nodiscard]] Result<std::string> Render(const nlohmann::ordered_json& context) const;
  [[nodiscard]] Result<std::string> Render(const nlohmann::ordered_json& context,
                                           const RenderOptions& options) const;

 private:
  struct Parsed;
  std::shared_ptr<const Parsed> parsed_;
};

}  // namespace kvstash::engine::jinja
