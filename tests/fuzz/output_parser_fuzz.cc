// libFuzzer target: arbitrary model output through the streaming output parser
// (engine/chat/output_parser.h), in every format. Aborts on a crash or sanitizer report and on a
// broken promise: the accumulated result must not depend on how the output is chunked (one split,
// random chunkings, 1-byte chunks for short inputs), events never split a UTF-8 character of a
// valid input, text and reasoning are made of input bytes only, arguments without an error are
// valid JSON, with no format and no reasoning the text is the input unchanged, and calls written
// back with FormatToolCalls() parse to the same calls.
//
// Input: two control bytes, then the output. Byte 0: bits 0-2 the format (mod 5), bit 3
// starts_in_reasoning, bit 4 reasoning off, bit 5 pass the tool schemas below. Byte 1 seeds the
// chunkings. Seeds: tests/fuzz/corpus/output_parser/.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "engine/chat/output_parser.h"

namespace {

namespace engine = kvstash::engine;

const nlohmann::json& Tools() {
  static const nlohmann::json tools = nlohmann::json::parse(R"([
    {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
      "s": {"type": "string"}, "i": {"type": "integer"}, "b": {"type": "boolean"},
      "n": {"type": "number"}, "o": {"type": "object"}, "a": {"type": "array"},
      "u": {"type": ["integer", "null"]}}}}}])");
  return tools;
}

bool IsUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

void Check(bool ok) {
  if (!ok) std::abort();
}

engine::ParsedOutput ParseChunks(std::string_view all, const std::vector<size_t>& cuts,
                                 const engine::OutputParserOptions& options, bool utf8) {
  engine::OutputParser parser(options);
  std::vector<engine::OutputEvent> events;
  size_t prev = 0;
  for (size_t cut : cuts) {
    parser.Feed(all.substr(prev, cut - prev), &events);
    prev = cut;
  }
  parser.Feed(all.substr(prev), &events);
  parser.Finish(&events);
  for (const engine::OutputEvent& e : events) {
    if (e.kind == engine::OutputEvent::kText || e.kind == engine::OutputEvent::kReasoning) {
      Check(!e.text.empty());
      if (utf8) Check(IsUtf8(e.text));
    }
  }
  engine::ParsedOutput result;
  engine::AccumulateEvents(events, &result);
  return result;
}

bool IsMistralName(std::string_view s) {
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.' || c == ':';
    if (!ok) return false;
  }
  return true;
}

bool IsXmlName(std::string_view s) {
  return !s.empty() && s.find_first_of("<>\r\n") == std::string_view::npos;
}

// Calls without an error, written back with FormatToolCalls() and parsed again, are the same
// calls — where the format can carry them (Mistral's NAME[ARGS] form needs plain names; the XML
// form needs names without markup characters and, without schemas, string values).
void CheckRoundTrip(const engine::ParsedOutput& parsed,
                    const engine::OutputParserOptions& options) {
  std::vector<engine::ParsedOutput::Call> calls;
  for (const auto& c : parsed.calls) {
    if (!c.error.empty()) return;
    if (options.format == engine::ToolCallFormat::kMistral &&
        (!IsMistralName(c.name) || !IsMistralName(c.id)))
      return;
    if (options.format == engine::ToolCallFormat::kQwenXml) {
      if (options.tools != nullptr || !IsXmlName(c.name)) return;
      auto args = nlohmann::json::parse(c.arguments_json, nullptr, false);
      if (!args.is_object()) return;
      for (auto it = args.begin(); it != args.end(); ++it) {
        if (!IsXmlName(it.key()) || !it.value().is_string() ||
            it.value().get<std::string>().find("</parameter>") != std::string::npos)
          return;
      }
    }
    calls.push_back(c);
  }
  if (calls.empty()) return;
  std::string text = engine::FormatToolCalls(options.format, calls);
  engine::OutputParserOptions plain = options;
  plain.starts_in_reasoning = false;
  engine::ParsedOutput again = engine::ParseOutput(text, plain);
  Check(again.text.empty() && again.calls.size() == calls.size());
  for (size_t i = 0; i < calls.size(); ++i) {
    Check(again.calls[i].name == calls[i].name && again.calls[i].error.empty());
    if (options.format == engine::ToolCallFormat::kMistral) Check(again.calls[i].id == calls[i].id);
    if (options.format == engine::ToolCallFormat::kQwenXml) {
      Check(nlohmann::json::parse(again.calls[i].arguments_json) ==
            nlohmann::json::parse(calls[i].arguments_json));
    } else {
      Check(again.calls[i].arguments_json == calls[i].arguments_json);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  engine::OutputParserOptions options;
  options.format = static_cast<engine::ToolCallFormat>((data[0] & 7) % 5);
  options.starts_in_reasoning = (data[0] & 8) != 0;
  options.reasoning = (data[0] & 16) == 0;
  options.tools = (data[0] & 32) ? &Tools() : nullptr;
  uint32_t rng = data[1] * 2654435761u + 1;
  std::string_view all(reinterpret_cast<const char*>(data + 2), size - 2);
  bool utf8 = IsUtf8(all);

  engine::ParsedOutput whole = engine::ParseOutput(all, options);
  Check(whole.text.size() + whole.reasoning.size() <= all.size());
  for (const auto& c : whole.calls) {
    Check(!c.name.empty());
    if (c.error.empty()) Check(nlohmann::json::accept(c.arguments_json));
  }
  if (options.format == engine::ToolCallFormat::kNone && !options.reasoning) {
    Check(whole.text == all && whole.reasoning.empty() && whole.calls.empty());
  }

  CheckRoundTrip(whole, options);

  auto next = [&rng]() {
    rng = rng * 1664525u + 1013904223u;
    return rng >> 8;
  };
  Check(ParseChunks(all, {all.size() == 0 ? 0 : next() % (all.size() + 1)}, options, utf8) ==
        whole);
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<size_t> cuts;
    size_t n_cuts = 1 + next() % 64;
    for (size_t k = 0; k < n_cuts && !all.empty(); ++k) cuts.push_back(next() % (all.size() + 1));
    std::sort(cuts.begin(), cuts.end());
    Check(ParseChunks(all, cuts, options, utf8) == whole);
  }
  if (all.size() <= 512) {
    std::vector<size_t> bytes;
    for (size_t k = 1; k < all.size(); ++k) bytes.push_back(k);
    Check(ParseChunks(all, bytes, options, utf8) == whole);
  }
  return 0;
}
