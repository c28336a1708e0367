// RenderConversation, the volatile-fragment normalization and TokenReplay (conversation.h).
#include "daemon/kvstashd/api/conversation.h"

#include <algorithm>
#include <cctype>
#include <functional>
#include <utility>

#include "daemon/kvstashd/api/openai.h"
#include "engine/chat/chat_template.h"
#include "engine/chat/jinja/template.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvstash::daemon::api {
namespace {

using OJson = nlohmann::ordered_json;

// `arguments` parsed as JSON, or a discarded value when it is not JSON. A NUL byte (from a
// "\u0000" in the request) makes it not JSON: nlohmann's lexer would stop there and accept
// '{"a": 1}\0junk' as {"a": 1}.
template <typename J>
J ParseArguments(const std::string& arguments) {
  if (arguments.find('\0') != std::string::npos) return J(J::value_t::discarded);
  return J::parse(arguments, nullptr, /*allow_exceptions=*/false);
}

// A tool call's arguments as the template sees them: the parsed object in the client's key
// order, or the text itself when it is not JSON (templates that print strings verbatim then
// still reproduce it).
OJson ArgumentsValue(const std::string& arguments) {
  OJson v = ParseArguments<OJson>(arguments);
  if (v.is_discarded()) return OJson(arguments);
  return v;
}

// Canonical text of a tool call's arguments for the replay key: parsed and re-serialized with
// sorted keys, so spacing and key order do not matter.
std::string CanonicalArguments(const std::string& arguments) {
  auto v = ParseArguments<nlohmann::json>(arguments);
  if (v.is_discarded()) return arguments;
  return v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// `raw_arguments`: give the template each tool call's arguments as the text itself (templates
// that test `arguments is string` print it verbatim), so a replayed reply's original bytes come
// back exactly; otherwise the parsed value, which the template re-serializes with tojson.
OJson MessageJson(const Message& m, bool raw_arguments) {
  OJson j = {{"role", m.role}, {"content", m.content}};
  if (m.role == "assistant") {
    if (!m.reasoning.empty()) j["reasoning_content"] = m.reasoning;
    if (!m.tool_calls.empty()) {
      OJson calls = OJson::array();
      for (const ToolCall& c : m.tool_calls) {
        calls.push_back(
            {{"id", c.id},
             {"type", "function"},
             {"function",
              {{"name", c.name},
               {"arguments", raw_arguments ? OJson(c.arguments) : ArgumentsValue(c.arguments)}}}});
      }
      j["tool_calls"] = std::move(calls);
    }
  } else if (m.role == "tool") {
    j["tool_call_id"] = m.tool_call_id;
    if (!m.name.empty()) j["name"] = m.name;
  }
  return j;
}

std::string SpecialText(const engine::Tokenizer& tok, int32_t id) {
  return id >= 0 && id < tok.vocab().size() ? tok.TokenToPiece(id, true) : std::string();
}

bool HasTools(const Conversation& conv) {
  if (!conv.tools.empty()) return true;
  return std::any_of(conv.messages.begin(), conv.messages.end(),
                     [](const Message& m) { return m.role == "tool" || !m.tool_calls.empty(); });
}

// The text a reply opens with when the tool choice forces a call, in the template's markup.
std::string ForcedOpening(const Conversation& conv, engine::ToolCallFormat format,
                          bool in_reasoning) {
  if (conv.tool_choice != ToolChoice::kRequired && conv.tool_choice != ToolChoice::kNamed) {
    return {};
  }
  const bool named = conv.tool_choice == ToolChoice::kNamed;
  std::string s = in_reasoning ? "</think>\n\n" : "";
  switch (format) {
    case engine::ToolCallFormat::kHermesJson:
      s += "<tool_call>\n{\"name\": \"";
      if (named) s += conv.tool_choice_name + "\", \"arguments\": ";
      return s;
    case engine::ToolCallFormat::kQwenXml:
      s += "<tool_call>\n<function=";
      if (named) s += conv.tool_choice_name + ">\n";
      return s;
    case engine::ToolCallFormat::kLlama3Json:
      s += "{\"name\": \"";
      if (named) s += conv.tool_choice_name + "\", \"parameters\": ";
      return s;
    case engine::ToolCallFormat::kMistral:
      s += "[TOOL_CALLS]";
      return s;
    case engine::ToolCallFormat::kNone:
      return {};
  }
  return {};
}

// Tokenizes `text`, splicing in remembered replies: each `splices` entry is found in the text
// (in order, after the previous one) and as much of its ids as decodes to a common prefix of the
// text there is used verbatim; the rest is tokenized normally. The result always decodes to
// `text` exactly.
std::vector<int32_t> TokenizeWithReplay(const engine::Tokenizer& tok, const std::string& text,
                                        bool add_bos, const std::vector<ReplayEntry>& splices,
                                        int* replayed) {
  std::vector<int32_t> out;
  size_t cursor = 0;
  bool first = true;
  auto encode = [&](std::string_view part) {
    std::vector<int32_t> ids = tok.Encode(part, first && add_bos, /*parse_special=*/true);
    out.insert(out.end(), ids.begin(), ids.end());
    first = false;
  };
  for (const ReplayEntry& e : splices) {
    if (e.text.empty() || e.ids.empty()) continue;
    const std::string_view head = std::string_view(e.text).substr(0, 32);
    const size_t pos = text.find(head, cursor);
    if (pos == std::string::npos) continue;
    size_t common = 0;
    const size_t limit = std::min(e.text.size(), text.size() - pos);
    while (common < limit && e.text[common] == text[pos + common]) ++common;
    // The longest run of ids whose pieces lie inside the common prefix.
    size_t bytes = 0, n = 0;
    while (n < e.ids.size()) {
      const size_t len = tok.TokenToPiece(e.ids[n], true).size();
      if (bytes + len > common) break;
      bytes += len;
      ++n;
    }
    if (n == 0) continue;
    if (pos > cursor || first) encode(std::string_view(text).substr(cursor, pos - cursor));
    out.insert(out.end(), e.ids.begin(), e.ids.begin() + static_cast<std::ptrdiff_t>(n));
    *replayed += static_cast<int>(n);
    cursor = pos + bytes;
    first = false;
  }
  if (cursor < text.size() || first) encode(std::string_view(text).substr(cursor));
  return out;
}

// Where the last kMaxMessageStarts messages start in `tokens` (the whole conversation rendered as
// `text`; `skip` leading tokens, a BOS, are not in the text). Message i's start is where the
// conversation rendered with message i's content replaced (render_altered(i)) stops agreeing with
// `text`: the first byte of its content, after the template's header for it. Rendering the
// altered whole rather than the prefix messages[0, i) keeps every other message where it is
// (templates render earlier turns differently by what follows them: Qwen3 gives the last
// assistant turn an empty think block only when no user message follows it). The byte is mapped
// to the number of whole tokens whose pieces lie before it. A conversation the template refuses
// gives no start. Only a hint for where the scheduler snapshots a hybrid model's state
// (serve::Request::snapshot_hints): a wrong one costs a chunk, never output.
std::vector<int> MessageStarts(const engine::Tokenizer& tok, const std::vector<int32_t>& tokens,
                               const std::string& text, size_t skip, size_t n_messages,
                               const std::function<Result<std::string>(size_t)>& render_altered) {
  std::vector<size_t> byte_starts;
  for (size_t i = n_messages; i-- > 1 && byte_starts.size() < kMaxMessageStarts;) {
    Result<std::string> r = render_altered(i);
    if (!r.ok()) continue;
    const auto diff = std::mismatch(r->begin(), r->end(), text.begin(), text.end());
    const size_t at = static_cast<size_t>(diff.first - r->begin());
    if (at > 0 && at < text.size()) byte_starts.push_back(at);
  }
  std::sort(byte_starts.begin(), byte_starts.end());
  std::vector<int> starts;
  size_t bytes = 0, k = 0;
  for (size_t t = skip; t < tokens.size() && k < byte_starts.size(); ++t) {
    const size_t next = bytes + tok.TokenToPiece(tokens[t], true).size();
    // Token t ends past the start: the tokens before it are the message's prefix.
    while (k < byte_starts.size() && next > byte_starts[k]) {
      const int pos = static_cast<int>(t);
      if (pos > 0 && (starts.empty() || starts.back() != pos)) starts.push_back(pos);
      ++k;
    }
    bytes = next;
  }
  return starts;
}

}  // namespace

int StripVolatile(std::string* text) {
  // Claude Code's first system block: "x-anthropic-billing-header: cc_version=...;
  // cc_entrypoint=...; cch=...;" — a per-request value that means nothing to a local model.
  static constexpr std::string_view kBilling = "x-anthropic-billing-header:";
  int removed = 0;
  size_t pos = 0;
  while ((pos = text->find(kBilling, pos)) != std::string::npos) {
    if (pos != 0 && (*text)[pos - 1] != '\n') {
      pos += kBilling.size();
      continue;
    }
    size_t end = text->find('\n', pos);
    end = end == std::string::npos ? text->size() : end + 1;
    removed += static_cast<int>(end - pos);
    text->erase(pos, end - pos);
  }
  return removed;
}

std::string TokenReplay::KeyOf(const Message& m) {
  std::string_view content = m.content;
  while (!content.empty() && std::isspace(static_cast<unsigned char>(content.front()))) {
    content.remove_prefix(1);
  }
  while (!content.empty() && std::isspace(static_cast<unsigned char>(content.back()))) {
    content.remove_suffix(1);
  }
  std::string key = "c:" + std::to_string(content.size()) + ":" + std::string(content);
  for (const ToolCall& c : m.tool_calls) {
    const std::string args = CanonicalArguments(c.arguments);
    key += "|t:" + std::to_string(c.name.size()) + ":" + c.name + ":" +
           std::to_string(args.size()) + ":" + args;
  }
  return key;
}

void TokenReplay::Remember(const std::string& key, ReplayEntry entry) {
  const size_t size = key.size() + entry.text.size() + entry.ids.size() * sizeof(int32_t);
  if (size > capacity_) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = index_.find(key); it != index_.end()) {
    bytes_ -= it->second->key.size() + it->second->entry.text.size() +
              it->second->entry.ids.size() * sizeof(int32_t);
    lru_.erase(it->second);
    index_.erase(it);
  }
  lru_.push_front({key, std::move(entry)});
  index_[key] = lru_.begin();
  bytes_ += size;
  while (bytes_ > capacity_ && !lru_.empty()) {
    const Slot& s = lru_.back();
    bytes_ -= s.key.size() + s.entry.text.size() + s.entry.ids.size() * sizeof(int32_t);
    index_.erase(s.key);
    lru_.pop_back();
  }
}

std::optional<ReplayEntry> TokenReplay::Find(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  lru_.splice(lru_.begin(), lru_, it->second);
  ++hits_;
  return it->second->entry;
}

size_t TokenReplay::entries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lru_.size();
}

uint64_t TokenReplay::hits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return hits_;
}

Result<RenderedPrompt> RenderConversation(const Conversation& conv, const ModelContext& model) {
  const engine::Tokenizer* tok = model.tokenizer;
  if (tok == nullptr) {
    return Status::InvalidArgument(
        "the model has no tokenizer vocabulary: chat requests need one (use /v1/completions with "
        "a prompt of token ids)");
  }
  if (conv.messages.empty()) return Status::InvalidArgument("the conversation is empty");
  RenderedPrompt out;
  Conversation c = conv;
  if (model.strip_volatile) {
    for (Message& m : c.messages) {
      if (m.role == "system") out.volatile_bytes_stripped += StripVolatile(&m.content);
    }
  }
  // Token replay: the remembered ids of assistant turns the daemon generated, and their tool
  // calls' arguments as generated.
  std::vector<ReplayEntry> splices;
  std::vector<bool> replayed(c.messages.size(), false);
  if (model.replay != nullptr) {
    for (size_t i = 0; i < c.messages.size(); ++i) {
      Message& m = c.messages[i];
      if (m.role != "assistant") continue;
      auto e = model.replay->Find(TokenReplay::KeyOf(m));
      if (!e) continue;
      if (e->arguments.size() == m.tool_calls.size()) {
        for (size_t k = 0; k < m.tool_calls.size(); ++k) {
          m.tool_calls[k].arguments = e->arguments[k];
        }
        replayed[i] = true;
      }
      splices.push_back(std::move(*e));
    }
  }
  const engine::Vocab& v = tok->vocab();
  const std::string bos = SpecialText(*tok, v.bos_id);
  const std::string eos = SpecialText(*tok, v.eos_id);
  const bool add_generation_prompt = !c.continue_final;
  // The conversation rendered, with message `altered` (when < size) given other content, for
  // message boundaries.
  auto render = [&](size_t altered) -> Result<std::string> {
    const bool add_gen = add_generation_prompt;
    const size_t n = c.messages.size();
    auto content_of = [&](size_t i) {
      const std::string& t = c.messages[i].content;
      if (i != altered) return t;
      return std::string(t.starts_with('\x1e') ? "\x1f" : "\x1e");
    };
    if (model.jinja != nullptr) {
      OJson ctx = {{"messages", OJson::array()},
                   {"add_generation_prompt", add_gen},
                   {"bos_token", bos},
                   {"eos_token", eos}};
      for (size_t i = 0; i < n; ++i) {
        OJson m = MessageJson(c.messages[i], replayed[i] && model.template_prints_string_arguments);
        if (i == altered) m["content"] = content_of(i);
        ctx["messages"].push_back(std::move(m));
      }
      if (!c.tools.empty()) ctx["tools"] = c.tools;
      if (c.enable_thinking.has_value()) ctx["enable_thinking"] = *c.enable_thinking;
      Result<std::string> r = model.jinja->Render(ctx);
      if (!r.ok()) return Status::InvalidArgument("chat template: " + r.status().message());
      return r;
    }
    std::vector<engine::ChatMessage> msgs;
    for (size_t i = 0; i < n; ++i) {
      const Message& m = c.messages[i];
      std::string content = content_of(i);
      if (m.role == "assistant" && !m.reasoning.empty() &&
          model.chat_template.kind == engine::ChatTemplateKind::kQwen3) {
        content = "<think>\n" + m.reasoning + "\n</think>\n\n" + content;
      }
      msgs.push_back({m.role, std::move(content)});
    }
    engine::ChatOptions opts;
    opts.add_generation_prompt = add_gen;
    opts.enable_thinking = c.enable_thinking;
    opts.bos_token = bos;
    opts.eos_token = eos;
    return engine::RenderChat(model.chat_template, msgs, opts);
  };
  if (model.jinja == nullptr && HasTools(c)) {
    return Status::InvalidArgument(
        "tools need the model's own chat template, and kvstash could not use it (" +
        model.jinja_error + "); the built-in '" +
        std::string(engine::ChatTemplateKindName(model.chat_template.kind)) +
        "' template has no tool syntax");
  }
  KV_ASSIGN_OR_RETURN(std::string text, render(c.messages.size()));
  if (c.continue_final) {
    // The template closed the final assistant turn; the reply continues its content instead.
    const std::string& last = c.messages.back().content;
    const size_t at = last.empty() ? std::string::npos : text.rfind(last);
    if (at != std::string::npos) text.resize(at + last.size());
  }
  out.starts_in_reasoning = !c.continue_final && engine::PromptOpensReasoning(text);
  const bool add_bos = v.add_bos && (bos.empty() || !text.starts_with(bos));
  out.tokens = TokenizeWithReplay(*tok, text, add_bos, splices, &out.replayed_tokens);
  if (model.message_starts) {
    out.message_starts =
        MessageStarts(*tok, out.tokens, text, add_bos ? 1 : 0, c.messages.size(), render);
  }
  out.text = std::move(text);
  if (c.tool_choice != ToolChoice::kNone && !c.tools.empty()) {
    out.forced_text = ForcedOpening(c, model.tool_format, out.starts_in_reasoning);
    if (!out.forced_text.empty()) {
      out.forced = tok->Encode(out.forced_text, /*add_bos=*/false, /*parse_special=*/true);
    }
  }
  return out;
}

engine::OutputParserOptions ParserOptionsFor(const Conversation& conv, const ModelContext& model,
                                             const RenderedPrompt& prompt) {
  engine::OutputParserOptions o;
  o.format = conv.tool_choice == ToolChoice::kNone || conv.tools.empty()
                 ? engine::ToolCallFormat::kNone
                 : model.tool_format;
  o.reasoning = model.reasoning;
  o.starts_in_reasoning = prompt.starts_in_reasoning;
  return o;
}

}  // namespace kvstash::daemon::api
