// Internal to the output parser (engine/chat/output_parser.h): the grammar of each tool-call
// format, as prefix matchers over a buffered call, plus the JSON scanning they share.
//
// Every matcher is *monotone*: given a prefix of the output that starts at a call opener it
// answers kNeedMore, kInvalid or kComplete, and once it answers kInvalid or kComplete(n) every
// longer prefix gets the same answer. The streaming parser relies on this to call it at any
// subset of chunk boundaries and still reach the decision an unsplit parse reaches, which is what
// makes the parsed result independent of how the output was chunked.
//
// Thread safety: pure functions; ToolSchemas is immutable after FromJson().
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "engine/chat/output_parser.h"

namespace kvstash::engine::tool_syntax {

enum class Scan : uint8_t { kNeedMore, kInvalid, kComplete };

struct ToolCall {
  std::string name;
  std::string id;
  std::string arguments;  // JSON text (as written by the model for the JSON formats)
  std::string error;      // non-empty: `arguments` is not valid JSON / does not fit the schema
};

// The JSON types each parameter of each tool accepts, from OpenAI-style tool definitions.
class ToolSchemas {
 public:
  // Tolerates any JSON: entries that are not function definitions are skipped. `tools` may be
  // null (no schemas).
  static ToolSchemas FromJson(const nlohmann::json* tools);
  // "string", "integer", "number", "boolean", "object", "array", "null" (several for a union
  // type or anyOf); null when the tool or parameter is unknown or its schema gives no type.
  const std::vector<std::string>* ParamTypes(std::string_view function,
                                             std::string_view param) const;

 private:
  std::map<std::string, std::map<std::string, std::vector<std::string>, std::less<>>, std::less<>>
      types_;
};

struct CallMatch {
  Scan scan = Scan::kNeedMore;
  size_t consumed = 0;          // kComplete: bytes of the call markup, from the opener on
  std::vector<ToolCall> calls;  // kComplete: one or more (Mistral Nemo lists several)
};

// `s` starts with one of the format's call openers (see CallOpeners()). Matches one call block.
CallMatch MatchToolCalls(ToolCallFormat format, std::string_view s, const ToolSchemas& schemas);

// Openers recognised anywhere in the answer text (e.g. "<tool_call>").
std::vector<std::string_view> CallOpeners(ToolCallFormat format);
// Openers recognised only where the answer starts or right after a call (Llama 3's bare "{").
std::vector<std::string_view> PositionalCallOpeners(ToolCallFormat format);

// --- JSON scanning helpers, exposed for tests ---

inline bool IsJsonWs(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Structural scan of the JSON object or array starting at s[pos] ('{' or '['): honours strings
// and escapes and checks that brackets pair up, but not the tokens between them. kComplete sets
// *end one past the closing bracket.
Scan ScanBalanced(std::string_view s, size_t pos, size_t* end);

// A JSON string token (with quotes) decoded; false when it is not a valid JSON string.
bool DecodeJsonString(std::string_view token, std::string* out);

// `text` as a JSON string token; invalid UTF-8 becomes U+FFFD.
std::string QuoteJson(std::string_view text);

}  // namespace kvstash::engine::tool_syntax
