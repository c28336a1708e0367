// Hand-written renderers for the chat-template families in chat_template.h.
//
// Each renderer is a transcription of one Jinja template (the text is quoted in
// docs/chat-templates.md and tested against jinja2 in tests/engine/chat_template_test.cc). The
// transcription follows the template's control flow literally, including its odd corners:
// Llama 3 trims content with Python's Unicode-aware str.strip(); Llama 2 strips the *combined*
// <<SYS>> + first-user text; Qwen3 decides per assistant turn whether to keep its <think> block by
// comparing against the index of the last real user query. Where Jinja would raise
// (raise_exception), we return InvalidArgument with the template's own message.
#include "engine/chat/chat_template.h"

#include <array>
#include <cstddef>
#include <string>

namespace kvstash::engine {
namespace {

bool Has(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// Python's str.isspace() code points (Unicode White_Space minus ZWSP-like + the C0 separators).
bool IsPyWhitespace(uint32_t cp) {
  if (cp >= 0x09 && cp <= 0x0D) return true;
  if (cp >= 0x1C && cp <= 0x20) return true;
  if (cp == 0x85 || cp == 0xA0 || cp == 0x1680) return true;
  if (cp >= 0x2000 && cp <= 0x200A) return true;
  return cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Decodes the UTF-8 sequence starting at s[i]. Returns its length, or 0 when s[i] does not start a
// well-formed sequence (such bytes are never whitespace, so stripping stops there).
size_t DecodeUtf8(std::string_view s, size_t i, uint32_t* cp) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  size_t len;
  uint32_t v;
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  } else if ((b0 & 0xE0) == 0xC0) {
    len = 2;
    v = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3;
    v = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4;
    v = b0 & 0x07;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b & 0x3F);
  }
  *cp = v;
  return len;
}

std::string_view LStripChar(std::string_view s, char c) {
  while (!s.empty() && s.front() == c) s.remove_prefix(1);
  return s;
}

std::string_view RStripChar(std::string_view s, char c) {
  while (!s.empty() && s.back() == c) s.remove_suffix(1);
  return s;
}

std::string_view StripChar(std::string_view s, char c) { return RStripChar(LStripChar(s, c), c); }

Status RoleError(const ChatMessage& m, size_t index) {
  return Status::InvalidArgument("chat message " + std::to_string(index) + ": role \"" + m.role +
                                 "\" is not one of system, user, assistant");
}

Status ValidateMessages(const std::vector<ChatMessage>& messages) {
  if (messages.empty()) return Status::InvalidArgument("chat conversation has no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant") return RoleError(messages[i], i);
  }
  return Status::Ok();
}

// Finds a literal default system prompt in a ChatML template: the text between
// "<|im_start|>system\n" and "<|im_end|>" inside one string literal (Qwen2, Qwen2.5). The newline
// may be a real one or the Jinja escape "\n". A quote, brace or '+' before <|im_end|> means the
// system text is spliced in from a variable, which is not a default.
std::string ExtractDefaultSystemPrompt(std::string_view src) {
  constexpr std::string_view kOpen = "<|im_start|>system";
  constexpr std::string_view kClose = "<|im_end|>";
  for (size_t pos = src.find(kOpen); pos != std::string_view::npos;
       pos = src.find(kOpen, pos + 1)) {
    std::string_view rest = src.substr(pos + kOpen.size());
    if (rest.starts_with("\\n")) {
      rest.remove_prefix(2);
    } else if (rest.starts_with("\n")) {
      rest.remove_prefix(1);
    } else {
      continue;
    }
    const size_t end = rest.find(kClose);
    if (end == std::string_view::npos || end == 0) continue;
    std::string text;
    bool literal = true;
    for (size_t i = 0; i < end && literal; ++i) {
      char c = rest[i];
      if (c == '\\' && i + 1 < end) {
        char e = rest[++i];
        text.push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e);
      } else if (c == '\'' || c == '"' || c == '{' || c == '}' || c == '+') {
        literal = false;
      } else {
        text.push_back(c);
      }
    }
    if (literal) return text;
  }
  return {};
}

std::string Snippet(std::string_view src) {
  std::string s(src.substr(0, 80));
  for (char& c : s) {
    if (c == '\n') c = ' ';
  }
  return src.size() > 80 ? s + "..." : s;
}

ChatTemplate OfKind(ChatTemplateKind kind) {
  ChatTemplate t;
  t.kind = kind;
  return t;
}

constexpr std::string_view kNameList = "chatml, qwen3, llama3, llama2, mistral, zephyr";

// ---- Renderers --------------------------------------------------------------------------------

std::string RenderChatMl(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                         const ChatOptions& options) {
  std::string out;
  if (!tmpl.default_system_prompt.empty() && messages.front().role != "system") {
    out += "<|im_start|>system\n" + tmpl.default_system_prompt + "<|im_end|>\n";
  }
  for (const ChatMessage& m : messages) {
    out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  }
  if (options.add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

// Qwen3 (hybrid thinking). Assistant turns after the last real user query keep (or gain) a
// <think> block; earlier ones lose theirs. A user message that is exactly a wrapped
// <tool_response> does not count as a query.
std::string RenderQwen3(const std::vector<ChatMessage>& messages, const ChatOptions& options) {
  std::string out;
  const size_t n = messages.size();
  if (messages[0].role == "system") {
    out += "<|im_start|>system\n" + messages[0].content + "<|im_end|>\n";
  }
  size_t last_query_index = n - 1;
  for (size_t i = n; i-- > 0;) {
    const ChatMessage& m = messages[i];
    std::string_view c = m.content;
    if (m.role == "user" &&
        !(c.starts_with("<tool_response>") && c.ends_with("</tool_response>"))) {
      last_query_index = i;
      break;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      continue;
    }
    if (m.role != "assistant") continue;  // the leading system message went into the header
    std::string_view content = m.content;
    std::string_view reasoning;
    constexpr std::string_view kClose = "</think>";
    if (const size_t last_close = content.rfind(kClose); last_close != std::string_view::npos) {
      // content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
      std::string_view before = RStripChar(content.substr(0, content.find(kClose)), '\n');
      if (const size_t open = before.rfind("<think>"); open != std::string_view::npos) {
        before.remove_prefix(open + 7);
      }
      reasoning = LStripChar(before, '\n');
      // content.split('</think>')[-1].lstrip('\n')
      content = LStripChar(content.substr(last_close + kClose.size()), '\n');
    }
    out += "<|im_start|>assistant\n";
    if (i > last_query_index && (i + 1 == n || !reasoning.empty())) {
      out += "<think>\n";
      out += StripChar(reasoning, '\n');
      out += "\n</think>\n\n";
      out += LStripChar(content, '\n');
    } else {
      out += content;
    }
    out += "<|im_end|>\n";
  }
  if (options.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (options.enable_thinking.has_value() && !*options.enable_thinking) {
      out += "<think>\n\n</think>\n\n";
    }
  }
  return out;
}

std::string RenderLlama3(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                         const ChatOptions& options) {
  std::string out = options.bos_token;
  for (const ChatMessage& m : messages) {
    out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n";
    out += PyStripWhitespace(m.content);
    out += "<|eot_id|>";
  }
  if (options.add_generation_prompt || tmpl.always_add_generation_prompt) {
    out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  }
  return out;
}

constexpr std::string_view kAlternateError =
    "Conversation roles must alternate user/assistant/user/assistant/...";

Result<std::string> RenderLlama2(const std::vector<ChatMessage>& messages,
                                 const ChatOptions& options) {
  size_t first = 0;
  const std::string* system = nullptr;
  if (messages[0].role == "system") {
    system = &messages[0].content;
    first = 1;
  }
  std::string out;
  for (size_t i = first; i < messages.size(); ++i) {
    const size_t index0 = i - first;
    const ChatMessage& m = messages[i];
    if ((m.role == "user") != (index0 % 2 == 0)) {
      return Status::InvalidArgument("llama2 chat template: message " + std::to_string(i) + ": " +
                                     std::string(kAlternateError));
    }
    std::string content = m.content;
    if (index0 == 0 && system != nullptr) {
      content = "<<SYS>>\n" + *system + "\n<</SYS>>\n\n" + m.content;
    }
    if (m.role == "user") {
      out += options.bos_token + "[INST] ";
      out += PyStripWhitespace(content);
      out += " [/INST]";
    } else if (m.role == "assistant") {
      out += " ";
      out += PyStripWhitespace(content);
      out += " " + options.eos_token;
    }
    // A later system message at an odd position passes the alternation check and renders nothing.
  }
  return out;
}

Result<std::string> RenderMistral(const std::vector<ChatMessage>& messages,
                                  const ChatOptions& options) {
  std::string out = options.bos_token;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if ((m.role == "user") != (i % 2 == 0)) {
      return Status::InvalidArgument("mistral chat template: message " + std::to_string(i) + ": " +
                                     std::string(kAlternateError));
    }
    if (m.role == "user") {
      out += "[INST] " + m.content + " [/INST]";
    } else if (m.role == "assistant") {
      out += m.content + options.eos_token;
    } else {
      return Status::InvalidArgument("mistral chat template: message " + std::to_string(i) +
                                     ": Only user and assistant roles are supported!");
    }
  }
  return out;
}

std::string RenderZephyr(const std::vector<ChatMessage>& messages, const ChatOptions& options) {
  std::string out;
  for (const ChatMessage& m : messages) {
    out += "<|" + m.role + "|>\n" + m.content + options.eos_token + "\n";
  }
  if (options.add_generation_prompt) out += "<|assistant|>\n";
  return out;
}

}  // namespace

std::string_view PyStripWhitespace(std::string_view text) {
  // Leading.
  while (!text.empty()) {
    uint32_t cp = 0;
    const size_t len = DecodeUtf8(text, 0, &cp);
    if (len == 0 || !IsPyWhitespace(cp)) break;
    text.remove_prefix(len);
  }
  // Trailing: back up over at most three continuation bytes to the start of the last code point.
  while (!text.empty()) {
    size_t start = text.size() - 1;
    while (start > 0 && text.size() - start < 4 &&
           (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) {
      --start;
    }
    uint32_t cp = 0;
    const size_t len = DecodeUtf8(text, start, &cp);
    if (len == 0 || start + len != text.size() || !IsPyWhitespace(cp)) break;
    text.remove_suffix(len);
  }
  return text;
}

std::string_view ChatTemplateKindName(ChatTemplateKind kind) {
  switch (kind) {
    case ChatTemplateKind::kChatMl:
      return "chatml";
    case ChatTemplateKind::kQwen3:
      return "qwen3";
    case ChatTemplateKind::kLlama3:
      return "llama3";
    case ChatTemplateKind::kLlama2:
      return "llama2";
    case ChatTemplateKind::kMistral:
      return "mistral";
    case ChatTemplateKind::kZephyr:
      return "zephyr";
  }
  return "unknown";
}

Result<ChatTemplate> ChatTemplateFromName(std::string_view name) {
  static constexpr std::array<ChatTemplateKind, 6> kAll = {
      ChatTemplateKind::kChatMl, ChatTemplateKind::kQwen3,   ChatTemplateKind::kLlama3,
      ChatTemplateKind::kLlama2, ChatTemplateKind::kMistral, ChatTemplateKind::kZephyr};
  for (ChatTemplateKind kind : kAll) {
    if (ChatTemplateKindName(kind) == name) return OfKind(kind);
  }
  return Status::InvalidArgument("unknown chat template name \"" + std::string(name) +
                                 "\" (known: " + std::string(kNameList) + ")");
}

Result<ChatTemplate> DetectChatTemplate(std::string_view src) {
  const std::string hint = "; pass an explicit chat template name (" + std::string(kNameList) + ")";
  if (src.empty()) {
    return Status::InvalidArgument("model has no chat template (tokenizer.chat_template empty)" +
                                   hint);
  }
  if (Has(src, "<|im_start|>") && Has(src, "<|im_end|>")) {
    if (Has(src, "<think>") || Has(src, "enable_thinking")) {
      if (!Has(src, "enable_thinking")) {
        return Status::InvalidArgument(
            "chat template: ChatML with <think> handling but no enable_thinking switch (a Qwen3 "
            "variant such as 2507 or QwQ) is not supported" +
            hint);
      }
      return OfKind(ChatTemplateKind::kQwen3);
    }
    ChatTemplate t = OfKind(ChatTemplateKind::kChatMl);
    t.default_system_prompt = ExtractDefaultSystemPrompt(src);
    return t;
  }
  if (Has(src, "<|start_header_id|>") && Has(src, "<|eot_id|>")) {
    if (Has(src, "Cutting Knowledge Date") || Has(src, "date_string")) {
      return Status::InvalidArgument(
          "chat template: Llama 3.1+ template (dated system header, tools) is not supported" +
          hint);
    }
    ChatTemplate t = OfKind(ChatTemplateKind::kLlama3);
    t.always_add_generation_prompt = !Has(src, "add_generation_prompt");
    return t;
  }
  if (Has(src, "[INST]")) {
    if (Has(src, "<<SYS>>")) {
      if (Has(src, "set system_message = '") || Has(src, "set system_message = \"")) {
        return Status::InvalidArgument(
            "chat template: Llama 2 variant with a built-in default system message is not "
            "supported" +
            hint);
      }
      return OfKind(ChatTemplateKind::kLlama2);
    }
    if (Has(src, "[SYSTEM_PROMPT]") || Has(src, "[AVAILABLE_TOOLS]") || Has(src, "[TOOL_CALLS]") ||
        Has(src, "system_message")) {
      return Status::InvalidArgument(
          "chat template: Mistral variant with system prompt or tool handling (v0.3+/v7) is not "
          "supported" +
          hint);
    }
    return OfKind(ChatTemplateKind::kMistral);
  }
  if (Has(src, "<|user|>") && Has(src, "<|assistant|>") && Has(src, "<|system|>") &&
      Has(src, "eos_token") && !Has(src, "<|end|>")) {
    return OfKind(ChatTemplateKind::kZephyr);
  }
  return Status::InvalidArgument("unrecognized chat template \"" + Snippet(src) + "\"" + hint);
}

Result<std::string> RenderChat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                               const ChatOptions& options) {
  KV_RETURN_IF_ERROR(ValidateMessages(messages));
  switch (tmpl.kind) {
    case ChatTemplateKind::kChatMl:
      return RenderChatMl(tmpl, messages, options);
    case ChatTemplateKind::kQwen3:
      return RenderQwen3(messages, options);
    case ChatTemplateKind::kLlama3:
      return RenderLlama3(tmpl, messages, options);
    case ChatTemplateKind::kLlama2:
      return RenderLlama2(messages, options);
    case ChatTemplateKind::kMistral:
      return RenderMistral(messages, options);
    case ChatTemplateKind::kZephyr:
      return RenderZephyr(messages, options);
  }
  return Status::Internal("RenderChat: bad ChatTemplateKind");
}

}  // namespace kvstash::engine
