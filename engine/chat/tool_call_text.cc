// The template side of tool calls: recognising a family's markup in its chat template, and
// writing calls back in that markup.
#include <nlohmann/json.hpp>

#include "engine/chat/output_parser.h"
#include "engine/chat/tool_call_syntax.h"

namespace kvstash::engine {
namespace {

bool Has(std::string_view s, std::string_view needle) {
  return s.find(needle) != std::string_view::npos;
}

}  // namespace

std::string_view ToolCallFormatName(ToolCallFormat format) {
  switch (format) {
    case ToolCallFormat::kNone:
      return "none";
    case ToolCallFormat::kHermesJson:
      return "hermes";
    case ToolCallFormat::kQwenXml:
      return "qwen-xml";
    case ToolCallFormat::kLlama3Json:
      return "llama3";
    case ToolCallFormat::kMistral:
      return "mistral";
  }
  return "none";
}

ToolCallFormat DetectToolCallFormat(std::string_view t) {
  // Most specific first: Qwen3.5/Qwen3-Coder templates also contain <tool_call>. Seed-OSS
  // writes the same body inside <seed:tool_call>, which this parser does not read.
  if (Has(t, "<tool_call>") && Has(t, "<function=") && Has(t, "<parameter="))
    return ToolCallFormat::kQwenXml;
  // Excluded lookalikes that mention <tool_call>: GLM-4.x (<arg_key> bodies), MiniMax
  // (<invoke name=…>), Apriel (<tool_calls>[…] lists).
  if (Has(t, "<tool_call>") && Has(t, "arguments") && !Has(t, "<arg_key>") && !Has(t, "<invoke") &&
      !Has(t, "<tool_calls>"))
    return ToolCallFormat::kHermesJson;
  if (Has(t, "[TOOL_CALLS]")) return ToolCallFormat::kMistral;
  // Functionary v3.1 is Llama 3 based but writes <function=NAME>{…}</function>.
  if (Has(t, "<|start_header_id|>") && (Has(t, "<|python_tag|>") || Has(t, "ipython")) &&
      Has(t, "parameters") && !Has(t, "<function="))
    return ToolCallFormat::kLlama3Json;
  return ToolCallFormat::kNone;
}

bool PromptOpensReasoning(std::string_view prompt) {
  while (!prompt.empty() && tool_syntax::IsJsonWs(prompt.back())) prompt.remove_suffix(1);
  return prompt.ends_with("<think>") || prompt.ends_with("[THINK]");
}

std::string FormatToolCalls(ToolCallFormat format, std::span<const ParsedOutput::Call> calls) {
  using tool_syntax::QuoteJson;
  std::string out;
  for (size_t i = 0; i < calls.size(); ++i) {
    const ParsedOutput::Call& c = calls[i];
    const std::string& args = c.arguments_json.empty() ? std::string("{}") : c.arguments_json;
    switch (format) {
      case ToolCallFormat::kNone:
        return "";
      case ToolCallFormat::kHermesJson:
        if (i > 0) out += '\n';
        out += "<tool_call>\n{\"name\": " + QuoteJson(c.name) + ", \"arguments\": " + args +
               "}\n</tool_call>";
        break;
      case ToolCallFormat::kQwenXml: {
        auto obj = nlohmann::ordered_json::parse(args, nullptr, /*allow_exceptions=*/false);
        if (!obj.is_object()) return "";
        if (i > 0) out += '\n';
        out += "<tool_call>\n<function=" + c.name + ">\n";
        for (auto it = obj.begin(); it != obj.end(); ++it) {
          out += "<parameter=" + it.key() + ">\n";
          out += it.value().is_string()
                     ? it.value().get<std::string>()
                     : it.value().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
          out += "\n</parameter>\n";
        }
        out += "</function>\n</tool_call>";
        break;
      }
      case ToolCallFormat::kLlama3Json:
        if (i > 0) out += "; ";
        out += "{\"name\": " + QuoteJson(c.name) + ", \"parameters\": " + args + "}";
        break;
      case ToolCallFormat::kMistral:
        out += "[TOOL_CALLS]" + c.name + (c.id.empty() ? "" : "[CALL_ID]" + c.id) + "[ARGS]" + args;
        break;
    }
  }
  return out;
}

}  // namespace kvstash::engine
