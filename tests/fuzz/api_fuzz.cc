// libFuzzer target: arbitrary request bodies through the API layer's parsers
// (daemon/kvstashd/api/: OpenAI chat/completions, Anthropic Messages, OpenAI Responses), and what
// they accept through the response builders. Any crash, sanitizer report, escaped exception or
// reply that is not valid JSON is a bug; 4xx errors are fine.
//
// Input: one control byte, then the body. Without bit 0x40 the control byte picks the endpoint
// (chat, completions, tokenize, detokenize), the built-in chat template family, and the model:
// none has no vocabulary (only the parsers' checks run), the other a byte-level fake tokenizer.
// With bit 0x40 it is an agent request (chat, messages, responses, count_tokens) rendered through
// a Jinja template with tools and reasoning, replies parsed as Hermes JSON tool calls, scripted
// replies allowed. The build needs the api sources, engine/chat/ (templates, output parser, Jinja
// interpreter) and base/, plus ICU. Seeds in tests/fuzz/corpus/api/ are such inputs (e.g. 0x0c:
// chat, fake tokenizer, Qwen3 template).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/kvstashd/api/anthropic.h"
#include "daemon/kvstashd/api/openai.h"
#include "daemon/kvstashd/api/responses.h"
#include "engine/chat/jinja/template.h"
#include "engine/tokenizer/tokenizer.h"

namespace {

using kvstash::daemon::api::ApiError;
using kvstash::daemon::api::ModelContext;
using kvstash::daemon::api::ParsedRequest;
using kvstash::daemon::api::ResponseBuilder;
namespace engine = kvstash::engine;
namespace serve = kvstash::serve;

// Ids 0 <unk>, 1 <s>, 2 </s>, then 3 + b for byte b. "<s>" and "</s>" in text are the control
// tokens when parse_special.
class ByteTokenizer final : public engine::Tokenizer {
 public:
  ByteTokenizer() {
    v_.tokens = {"<unk>", "<s>", "</s>"};
    for (int b = 0; b < 256; ++b) v_.tokens.push_back(std::string(1, static_cast<char>(b)));
    v_.types.assign(v_.tokens.size(), engine::TokenType::kByte);
    v_.bos_id = 1;
    v_.eos_id = 2;
    v_.unk_id = 0;
    v_.add_bos = true;
  }
  std::vector<int32_t> Encode(std::string_view text, bool add_bos,
                              bool parse_special) const override {
    std::vector<int32_t> ids;
    if (add_bos) ids.push_back(1);
    for (size_t i = 0; i < text.size();) {
      if (parse_special && text.substr(i).starts_with("<s>")) {
        ids.push_back(1);
        i += 3;
      } else if (parse_special && text.substr(i).starts_with("</s>")) {
        ids.push_back(2);
        i += 4;
      } else {
        ids.push_back(3 + static_cast<unsigned char>(text[i++]));
      }
    }
    return ids;
  }
  std::string TokenToPiece(int32_t id, bool render_special) const override {
    if (id < 0 || id >= v_.size()) return {};
    if (id < 3) return render_special ? v_.tokens[id] : std::string();
    return v_.tokens[id];
  }
  std::string Decode(std::span<const int32_t> ids, bool render_special) const override {
    std::string out;
    for (int32_t id : ids) out += TokenToPiece(id, render_special);
    return out;
  }
  const engine::Vocab& vocab() const override { return v_; }

 private:
  engine::Vocab v_;
};

void MustBeJson(std::string_view s) {
  if (!nlohmann::json::accept(s)) std::abort();
}

// Every "data: ..." frame (after an optional "event: NAME" line) must be valid JSON or [DONE].
void MustBeSse(std::string_view sse) {
  while (!sse.empty()) {
    if (sse.starts_with("event: ")) {
      const size_t eol = sse.find('\n');
      if (eol == std::string_view::npos) std::abort();
      sse.remove_prefix(eol + 1);
    }
    const size_t end = sse.find("\n\n");
    if (end == std::string_view::npos || !sse.starts_with("data: ")) std::abort();
    const std::string_view payload = sse.substr(6, end - 6);
    if (payload != "[DONE]") MustBeJson(payload);
    sse.remove_prefix(end + 2);
  }
}

// A template in the shape of Qwen3's: system, tools, tool calls and results, reasoning.
constexpr const char* kAgentTemplate =
    "{%- if tools %}<|im_start|>system\n{{ messages[0].content if messages[0].role == 'system' "
    "}}# Tools\n{%- for t in tools %}\n{{ t | tojson }}{%- endfor %}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}{%- if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n"
    "{{ m.content }}\n</tool_response><|im_end|>\n{%- elif m.role == 'assistant' %}"
    "<|im_start|>assistant\n{%- if m.reasoning_content %}<think>\n{{ m.reasoning_content }}"
    "\n</think>\n\n{%- endif %}{{ m.content }}{%- for c in m.tool_calls or [] %}\n<tool_call>\n"
    "{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}"
    "\n</tool_call>{%- endfor %}<|im_end|>\n{%- elif not (tools and loop.first and m.role == "
    "'system') %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- if enable_thinking is defined and "
    "not enable_thinking %}<think>\n\n</think>\n\n{%- endif %}{%- endif %}";

// Replays the tail of the body as generated text through both builders of `make`.
template <typename Make>
void RespondWith(const ParsedRequest& req, std::string_view text, Make make) {
  ParsedRequest streamed = req;
  streamed.stream = true;
  std::unique_ptr<kvstash::daemon::api::ReplyBuilder> sb = make(streamed);
  std::unique_ptr<kvstash::daemon::api::ReplyBuilder> nb = make(req);
  MustBeSse(sb->StreamOpen());
  for (size_t i = 0; i < text.size(); i += 3) {
    serve::Event e;
    e.kind = serve::Event::Kind::kToken;
    e.token = static_cast<unsigned char>(text[i]);
    e.text = std::string(text.substr(i, 3));
    e.logprob = -1.0f;
    e.top = {{e.token, -1.0f}, {e.token + 1, -2.0f}};
    MustBeSse(sb->StreamEvent(e));
    nb->Add(e);
  }
  serve::Event done;
  done.kind = serve::Event::Kind::kDone;
  done.text = std::string(text.substr(0, 5));
  done.usage.finish = static_cast<serve::FinishReason>(text.size() % 5);
  MustBeSse(sb->StreamEvent(done));
  nb->Add(done);
  MustBeJson(nb->Finish());
  (void)nb->ReplyRecord();
}

void Respond(const ParsedRequest& req, const ModelContext& model, std::string_view text) {
  RespondWith(req, text, [&](const ParsedRequest& r) {
    return std::make_unique<ResponseBuilder>(r, "chatcmpl-fuzz", 1, model);
  });
}

void CheckParsed(const ParsedRequest& r) {
  if (r.request.prompt.empty() && r.request.restore_session.empty()) std::abort();
  if (r.request.limits.max_tokens < 1 ||
      r.request.prompt.size() + r.request.limits.max_tokens > 512u) {
    std::abort();
  }
}

// Agent requests: the three chat APIs over a Jinja template with tools.
void Agent(uint8_t control, std::string_view body, const ModelContext& base) {
  namespace api = kvstash::daemon::api;
  static const auto tmpl = [] {
    auto t = engine::jinja::Template::Parse(kAgentTemplate);
    if (!t.ok()) std::abort();
    return std::make_shared<const engine::jinja::Template>(std::move(*t));
  }();
  static const auto replay = std::make_shared<api::TokenReplay>(1 << 20);
  ModelContext model = base;
  model.jinja = tmpl;
  model.tool_format = engine::ToolCallFormat::kHermesJson;
  model.reasoning = true;
  model.allow_scripted_replies = (control & 0x20) != 0;
  model.replay = replay;
  ApiError error;
  switch (control & 0x03) {
    case 0: {
      auto r = api::ParseChatCompletion(body, model, &error);
      if (!r.ok()) return MustBeJson(error.ToJson());
      CheckParsed(*r);
      Respond(*r, model, body);
      return;
    }
    case 1: {
      auto r = api::ParseAnthropicMessages(body, model, &error);
      if (!r.ok()) return MustBeJson(api::AnthropicErrorBody(error));
      CheckParsed(*r);
      RespondWith(*r, body, [&](const ParsedRequest& p) {
        return api::MakeAnthropicBuilder(p, "msg_fuzz", model);
      });
      return;
    }
    case 2: {
      auto r = api::ParseResponsesRequest(body, model, &error);
      if (!r.ok()) return MustBeJson(error.ToJson());
      CheckParsed(*r);
      RespondWith(*r, body, [&](const ParsedRequest& p) {
        return api::MakeResponsesBuilder(p, "resp_fuzz", 1, model);
      });
      return;
    }
    default: {
      auto r = api::HandleAnthropicCountTokens(body, model, &error);
      r.ok() ? MustBeJson(*r) : MustBeJson(api::AnthropicErrorBody(error));
      return;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const ByteTokenizer tokenizer;
  const uint8_t control = data[0];
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);

  ModelContext model;
  model.model_id = "fuzz";
  model.n_ctx = 512;
  model.default_max_tokens = 16;
  model.tokenizer = (control & 0x04) != 0 ? &tokenizer : nullptr;
  model.chat_template.kind = static_cast<engine::ChatTemplateKind>((control >> 3) % 6);

  if ((control & 0x40) != 0) {
    model.tokenizer = &tokenizer;
    Agent(control, body, model);
    return 0;
  }
  ApiError error;
  switch (control & 0x03) {
    case 0:
    case 1: {
      auto r = (control & 0x03) == 0
                   ? kvstash::daemon::api::ParseChatCompletion(body, model, &error)
                   : kvstash::daemon::api::ParseCompletion(body, model, &error);
      if (r.ok()) {
        CheckParsed(*r);
        Respond(*r, model, body);
      } else {
        MustBeJson(error.ToJson());
      }
      break;
    }
    case 2: {
      auto r = kvstash::daemon::api::HandleTokenize(body, model, &error);
      r.ok() ? MustBeJson(*r) : MustBeJson(error.ToJson());
      break;
    }
    default: {
      auto r = kvstash::daemon::api::HandleDetokenize(body, model, &error);
      r.ok() ? MustBeJson(*r) : MustBeJson(error.ToJson());
      break;
    }
  }
  return 0;
}
