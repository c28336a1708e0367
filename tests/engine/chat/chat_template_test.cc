// Chat templates: every renderer is compared byte for byte with the real Jinja template rendered
// by jinja2 (tests/reference/render_chat_template.py, run with Debian's /usr/bin/python3) over
// many conversations; plus detection, errors, and prefix stability for caching.
#include "engine/chat/chat_template.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tests/fixtures.h"

namespace kvstash::engine {
namespace {

using json = nlohmann::json;
using Conversation = std::vector<ChatMessage>;

// ---- Corpus: official templates and conversations ---------------------------------------------

namespace corpus {

// Well-known official chat_template strings (as they read after JSON decoding: "\n" inside a
// Jinja string literal is the two characters backslash and n).
std::string Template(std::string_view name) {
  if (name == "chatml") {  // teknium/OpenHermes-2.5-Mistral-7B
    return R"J({% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})J";
  }
  if (name == "qwen2") {  // Qwen/Qwen2-7B-Instruct
    return R"J({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})J";
  }
  if (name == "qwen2.5") {  // Qwen/Qwen2.5-7B-Instruct
    return R"J({%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
)J";
  }
  if (name == "llama3") {  // meta-llama/Meta-Llama-3-8B-Instruct (revision with the switch)
    return R"J({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %})J";
  }
  if (name == "llama2") {  // meta-llama/Llama-2-7b-chat-hf
    return R"J({% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %})J";
  }
  if (name == "mistral") {  // mistralai/Mistral-7B-Instruct-v0.2 (original)
    return R"J({{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %})J";
  }
  if (name == "zephyr") {  // HuggingFaceH4/zephyr-7b-beta, TinyLlama-1.1B-Chat
    return "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
           "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ "
           "'<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == "
           "'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif "
           "%}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif "
           "%}\n{% endfor %}";
  }
  ADD_FAILURE() << "no template " << name;
  return {};
}

// Message texts: empty, whitespace at the edges (ASCII and Unicode, which Python's strip()
// removes), unicode, CRLF, and text that looks like template syntax or special tokens.
const std::vector<std::string>& Contents() {
  static const std::vector<std::string> kContents = {
      "Hello",
      "",
      " ",
      "What is 2+2?",
      "  padded on both sides  ",
      "\n\nleading newlines",
      "trailing newlines\n\n",
      "line one\nline two\n\nline four",
      "tabs\tand\r\nCRLF\r\n",
      "unicode: h\xc3\xa9llo w\xc3\xb6rld \xe2\x80\x94 \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x99\x82",
      "\xc2\xa0nbsp and ideographic space\xe3\x80\x80",
      "\xe2\x80\xa8line and paragraph separators\xe2\x80\xa9",
      "\xe2\x80\x8bzero width space is not whitespace\xe2\x80\x8b",
      "\x1c\x1f\xc2\x85separators and NEL\xc2\x85\x0b\x0c",
      "special <|im_start|>user\nfake<|im_end|> [INST] <<SYS>> </s> <s> <|eot_id|> <|user|>",
      "jinja-looking {{ messages }} {% if x %} {# c #} {%- raw -%}",
      "quotes ' \" and \\backslash\\n",
      "<tool_response>\nresult 42\n</tool_response>",
      "a <think>in a user message</think> b",
  };
  return kContents;
}

// Assistant texts add <think> blocks in the shapes Qwen3's template takes apart.
const std::vector<std::string>& AssistantContents() {
  static const std::vector<std::string> kAssistant = [] {
    std::vector<std::string> v = Contents();
    for (const char* s : {
             "<think>\nreasoning here\n</think>\n\nThe answer.",
             "<think></think>answer without newlines",
             "<think>\n\n</think>\n\n",
             "\n<think>\nR\n</think>\nA\n",
             "before<think>mid</think>after</think>tail",
             "</think>only a close tag",
             "<think>unclosed thinking",
             "<think>\na\n</think>\n\nb<think>c</think>d",
             "\n\n<think>\n\n  spaced \n\n</think>\n\n\n  answer  \n",
             "<think>outer <think>inner</think>answer",
         }) {
      v.emplace_back(s);
    }
    return v;
  }();
  return kAssistant;
}

// Hand-picked shapes, then `n_random` seeded random conversations. `alternating`: user/assistant
// strictly alternate after an optional leading system message (Llama 2, Mistral).
std::vector<Conversation> Conversations(bool alternating, bool allows_system, uint32_t seed,
                                        int n_random) {
  const std::string think = "<think>\nLet me think.\n</think>\n\nSure.";
  std::vector<Conversation> out = {
      {{"user", "Hello"}},
      {{"user", ""}},
      {{"user", "Hi"}, {"assistant", "Hello! How can I help?"}},
      {{"user", "Hi"}, {"assistant", think}},
      {{"user", "Hi"}, {"assistant", think}, {"user", "Again"}},
      {{"user", "Hi"}, {"assistant", think}, {"user", "Again"}, {"assistant", think}},
      {{"user", "q"},
       {"assistant", "call"},
       {"user", "<tool_response>\nok\n</tool_response>"},
       {"assistant", think}},
      {{"user", "<tool_response>x</tool_response>"}, {"assistant", ""}},
      // Multi-step: assistant turns after the last real query keep their reasoning.
      {{"user", "q"},
       {"assistant", think},
       {"user", "<tool_response>\nok\n</tool_response>"},
       {"assistant", think}},
      {{"user", "q"}, {"assistant", think}, {"assistant", "final"}},
      {{"user", "q"}, {"assistant", "<think>\n\n</think>\n\nempty reasoning"}, {"assistant", "x"}},
      {{"user", "q"}, {"assistant", "<think>outer\n<think>\ninner\n</think>\nanswer"}},
  };
  if (allows_system) {
    out.push_back({{"system", "You are a helpful assistant."}, {"user", "Hello"}});
    out.push_back({{"system", ""}, {"user", ""}});
    out.push_back({{"system", "Only a system message."}});
    out.push_back({{"system", "  S  "}, {"user", "  u  "}, {"assistant", "  a  "}});
    out.push_back({{"system", "S"}, {"user", "Hi"}, {"assistant", think}, {"user", "More"}});
  }
  if (!alternating) {
    out.push_back({{"user", "one"}, {"user", "two"}});
    out.push_back({{"assistant", "I start"}, {"user", "ok"}});
    if (allows_system) {
      out.push_back({{"user", "u"}, {"system", "mid-conversation system"}, {"user", "v"}});
    }
  }
  std::mt19937 rng(seed);
  auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
  for (int i = 0; i < n_random; ++i) {
    Conversation c;
    if (allows_system && rng() % 2 == 0) c.push_back({"system", pick(Contents())});
    const int turns = 1 + static_cast<int>(rng() % 8);
    for (int t = 0; t < turns; ++t) {
      std::string role = t % 2 == 0 ? "user" : "assistant";
      if (!alternating && rng() % 7 == 0) {
        const char* roles[] = {"user", "assistant", "system"};
        role = roles[rng() % (allows_system ? 3 : 2)];
      }
      c.push_back({role, pick(role == "assistant" ? AssistantContents() : Contents())});
    }
    out.push_back(std::move(c));
  }
  return out;
}

// Conversations that break user/assistant alternation or put a system message where Llama 2 and
// Mistral do not expect one. Other families render them normally.
std::vector<Conversation> InvalidForAlternating() {
  return {
      {{"user", "a"}, {"user", "b"}},
      {{"assistant", "a"}, {"user", "b"}},
      {{"system", "s"}, {"assistant", "a"}},
      {{"system", "s"}, {"user", "u"}, {"user", "v"}},
      {{"user", "u"}, {"assistant", "a"}, {"assistant", "b"}},
      {{"system", "s"}, {"user", "u"}, {"system", "t"}, {"user", "v"}},
  };
}

}  // namespace corpus

// Debian's interpreter, which has python3-jinja2 (the `python3` on PATH may not). Overridable with
// $KVSTASH_JINJA_PYTHON, e.g. to check that the tests skip cleanly without jinja2.
std::string PythonPath() {
  const char* env = std::getenv("KVSTASH_JINJA_PYTHON");
  return env != nullptr ? env : "/usr/bin/python3";
}

std::string ScriptPath() {
#ifdef KVSTASH_SOURCE_DIR
  return std::string(KVSTASH_SOURCE_DIR) + "/tests/reference/render_chat_template.py";
#else
  return "tests/reference/render_chat_template.py";
#endif
}

// Empty when jinja2 can be run, else why not.
std::string JinjaUnavailableReason() {
  const std::string python = PythonPath();
  if (access(python.c_str(), X_OK) != 0) return python + " not found";
  const std::string cmd = python + " -c 'import jinja2' >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    return python + " has no jinja2 (apt install python3-jinja2)";
  }
  if (access(ScriptPath().c_str(), R_OK) != 0) return ScriptPath() + " not found";
  return {};
}

#define KV_REQUIRE_JINJA()                                               \
  do {                                                                   \
    const std::string reason = JinjaUnavailableReason();                 \
    if (!reason.empty()) GTEST_SKIP() << "jinja2 reference: " << reason; \
  } while (0)

struct Reference {
  bool ok = false;
  std::string text;  // the rendering, or the error
};

// Runs the reference script with `request` on stdin (via a temporary file); returns its stdout and
// exit status.
std::pair<std::string, int> RunScript(const json& request) {
  char path[] = "/tmp/kvstash_chat_template_XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return {"mkstemp failed", -1};
  {
    std::ofstream f(path, std::ios::binary);
    f << request.dump();
  }
  close(fd);
  const std::string cmd = PythonPath() + " " + ScriptPath() + " < " + path;
  std::string out;
  int status = -1;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    status = pclose(p);
  }
  unlink(path);
  return {out, status};
}

json MakeRequest(std::string_view tmpl, const Conversation& conv, const ChatOptions& options) {
  json messages = json::array();
  for (const ChatMessage& m : conv) messages.push_back({{"role", m.role}, {"content", m.content}});
  json vars = json::object();
  vars["bos_token"] = options.bos_token;
  vars["eos_token"] = options.eos_token;
  if (options.enable_thinking.has_value()) vars["enable_thinking"] = *options.enable_thinking;
  return {{"template", tmpl},
          {"messages", messages},
          {"add_generation_prompt", options.add_generation_prompt},
          {"vars", vars}};
}

// One interpreter start for a whole batch of requests.
std::vector<Reference> RenderBatchWithJinja(const std::vector<json>& requests) {
  auto [out, status] = RunScript(json{{"requests", requests}});
  std::vector<Reference> refs;
  if (status != 0) {
    ADD_FAILURE() << "reference script failed (status " << status << "): " << out;
    return refs;
  }
  for (const json& r : json::parse(out)) {
    refs.push_back({r.at("ok").get<bool>(), r.at(r.at("ok").get<bool>() ? "text" : "error")});
  }
  return refs;
}

// One interpreter start per conversation (the script's single-request mode).
Reference RenderOneWithJinja(const json& request) {
  auto [out, status] = RunScript(request);
  return {status == 0, out};
}

std::string Escaped(std::string_view s) { return json(std::string(s)).dump(); }

std::string Describe(const Conversation& conv, const ChatOptions& o) {
  std::ostringstream os;
  os << "add_generation_prompt=" << o.add_generation_prompt << " enable_thinking="
     << (o.enable_thinking ? (*o.enable_thinking ? "true" : "false") : "unset") << " messages=[";
  for (const ChatMessage& m : conv) os << m.role << ":" << Escaped(m.content) << " ";
  return os.str() + "]";
}

struct Family {
  std::string name;
  std::string jinja;
  ChatTemplateKind kind;
  ChatOptions base;      // bos/eos tokens the model's tokenizer_config would supply
  bool alternating;      // template requires user/assistant alternation
  bool allows_system;    // system role accepted
  bool thinking_switch;  // also vary enable_thinking
};

// Renders every conversation x option combination with both engines and compares them. Returns
// the number of comparisons.
int CompareWithJinja(const Family& f, const std::vector<Conversation>& convs) {
  const Result<ChatTemplate> tmpl = DetectChatTemplate(f.jinja);
  EXPECT_TRUE(tmpl.ok()) << f.name << ": " << tmpl.status().ToString();
  if (!tmpl.ok()) return 0;
  EXPECT_EQ(tmpl->kind, f.kind) << f.name;

  std::vector<std::optional<bool>> thinking = {std::nullopt};
  if (f.thinking_switch) thinking = {std::nullopt, true, false};
  std::vector<std::pair<const Conversation*, ChatOptions>> cases;
  std::vector<json> requests;
  for (const Conversation& conv : convs) {
    for (bool gen : {true, false}) {
      for (const std::optional<bool>& think : thinking) {
        ChatOptions o = f.base;
        o.add_generation_prompt = gen;
        o.enable_thinking = think;
        cases.emplace_back(&conv, o);
        requests.push_back(MakeRequest(f.jinja, conv, o));
      }
    }
  }
  const std::vector<Reference> refs = RenderBatchWithJinja(requests);
  EXPECT_EQ(refs.size(), cases.size()) << f.name;
  if (refs.size() != cases.size()) return 0;
  int mismatches = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& [conv, options] = cases[i];
    const Result<std::string> mine = RenderChat(*tmpl, *conv, options);
    const bool same = mine.ok() == refs[i].ok && (!mine.ok() || *mine == refs[i].text);
    if (!same && ++mismatches <= 5) {
      ADD_FAILURE() << f.name << " differs from jinja2 for " << Describe(*conv, options)
                    << "\n  jinja2: " << (refs[i].ok ? Escaped(refs[i].text) : refs[i].text)
                    << "\n  ours:   " << (mine.ok() ? Escaped(*mine) : mine.status().ToString());
    }
  }
  EXPECT_EQ(mismatches, 0) << f.name << ": " << mismatches << " of " << cases.size();
  std::printf("[ jinja2   ] %s: %zu renderings over %zu conversations identical\n", f.name.c_str(),
              cases.size(), convs.size());
  return static_cast<int>(cases.size());
}

std::optional<json> ReadTokenizerConfig(const std::string& model) {
  std::ifstream f(
      ::kvstash::testing::FixturePath("tokenizers/" + model + "/tokenizer_config.json"));
  if (!f) return std::nullopt;
  return json::parse(f);
}

std::string TokenField(const json& config, const char* key) {
  if (!config.contains(key) || config[key].is_null()) return {};
  const json& v = config[key];
  return v.is_string() ? v.get<std::string>() : v.value("content", "");
}

Family FixtureFamily(const std::string& model, ChatTemplateKind kind, bool thinking) {
  const json config = *ReadTokenizerConfig(model);
  Family f{model + " (tokenizer_config.json)",
           config.at("chat_template").get<std::string>(),
           kind,
           {},
           false,
           true,
           thinking};
  f.base.bos_token = TokenField(config, "bos_token");
  f.base.eos_token = TokenField(config, "eos_token");
  return f;
}

std::vector<Family> EmbeddedFamilies() {
  using corpus::Template;
  ChatOptions spm;
  spm.bos_token = "<s>";
  spm.eos_token = "</s>";
  ChatOptions llama3;
  llama3.bos_token = "<|begin_of_text|>";
  llama3.eos_token = "<|eot_id|>";
  return {
      {"chatml (OpenHermes)",
       Template("chatml"),
       ChatTemplateKind::kChatMl,
       {},
       false,
       true,
       false},
      {"qwen2", Template("qwen2"), ChatTemplateKind::kChatMl, {}, false, true, false},
      {"qwen2.5", Template("qwen2.5"), ChatTemplateKind::kChatMl, {}, false, true, false},
      {"llama3 (add_generation_prompt)", Template("llama3"), ChatTemplateKind::kLlama3, llama3,
       false, true, false},
      {"llama2", Template("llama2"), ChatTemplateKind::kLlama2, spm, true, true, false},
      {"mistral", Template("mistral"), ChatTemplateKind::kMistral, spm, true, false, false},
      {"zephyr", Template("zephyr"), ChatTemplateKind::kZephyr, spm, false, true, false},
  };
}

TEST(ChatTemplateTest, Llama3FixtureMatchesJinja) {
  KV_REQUIRE_FIXTURE("tokenizers/llama3/tokenizer_config.json");
  KV_REQUIRE_JINJA();
  const Family f = FixtureFamily("llama3", ChatTemplateKind::kLlama3, false);
  EXPECT_GT(CompareWithJinja(f, corpus::Conversations(false, true, 7, 160)), 300);
}

TEST(ChatTemplateTest, Qwen3FixtureMatchesJinja) {
  KV_REQUIRE_FIXTURE("tokenizers/qwen3/tokenizer_config.json");
  KV_REQUIRE_JINJA();
  const Family f = FixtureFamily("qwen3", ChatTemplateKind::kQwen3, true);
  EXPECT_GT(CompareWithJinja(f, corpus::Conversations(false, true, 3, 160)), 900);
}

TEST(ChatTemplateTest, EmbeddedOfficialTemplatesMatchJinja) {
  KV_REQUIRE_JINJA();
  for (const Family& f : EmbeddedFamilies()) {
    SCOPED_TRACE(f.name);
    std::vector<Conversation> convs =
        corpus::Conversations(f.alternating, f.allows_system, 11, 100);
    // Conversations the template rejects must be rejected by us too.
    for (Conversation& bad : corpus::InvalidForAlternating()) convs.push_back(bad);
    EXPECT_GT(CompareWithJinja(f, convs), 200);
  }
}

// The script's single-request mode, one interpreter per conversation, on a few conversations.
TEST(ChatTemplateTest, SingleRequestModeMatchesJinja) {
  KV_REQUIRE_FIXTURE("tokenizers/qwen3/tokenizer_config.json");
  KV_REQUIRE_JINJA();
  const Family f = FixtureFamily("qwen3", ChatTemplateKind::kQwen3, true);
  const ChatTemplate tmpl = *DetectChatTemplate(f.jinja);
  int n = 0;
  const std::vector<Conversation> convs = corpus::Conversations(false, true, 5, 0);
  for (const Conversation& conv : std::vector<Conversation>(convs.begin(), convs.begin() + 8)) {
    ChatOptions o = f.base;
    o.enable_thinking = (n % 2 == 0);
    const Reference ref = RenderOneWithJinja(MakeRequest(f.jinja, conv, o));
    ASSERT_TRUE(ref.ok) << Describe(conv, o);
    EXPECT_EQ(*RenderChat(tmpl, conv, o), ref.text) << Describe(conv, o);
    ++n;
  }
  EXPECT_GT(n, 0);
}

TEST(ChatTemplateTest, DetectsDefaultSystemPromptsAndVariants) {
  using corpus::Template;
  EXPECT_EQ(DetectChatTemplate(Template("chatml"))->default_system_prompt, "");
  EXPECT_EQ(DetectChatTemplate(Template("qwen2"))->default_system_prompt,
            "You are a helpful assistant.");
  EXPECT_EQ(DetectChatTemplate(Template("qwen2.5"))->default_system_prompt,
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_FALSE(DetectChatTemplate(Template("llama3"))->always_add_generation_prompt);
  if (std::optional<json> c = ReadTokenizerConfig("llama3")) {
    const Result<ChatTemplate> t = DetectChatTemplate(c->at("chat_template").get<std::string>());
    ASSERT_TRUE(t.ok());
    EXPECT_TRUE(t->always_add_generation_prompt);  // the original Llama 3 release
  }
}

TEST(ChatTemplateTest, UnknownTemplatesAreInvalidArgument) {
  const std::vector<std::string> unknown = {
      "",
      // google/gemma-7b-it
      "{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + "
      "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}",
      // Phi-3
      "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\\n' + message['content'] "
      "+ '<|end|>\\n' }}{% endfor %}",
      // Llama 3.1 (excerpt)
      "{{- bos_token }}{{- \"Cutting Knowledge Date: December 2023\\n\" }}<|start_header_id|>"
      "<|eot_id|>",
      // Mistral v0.3 (excerpt)
      "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] "
      "%}{% endif %}[AVAILABLE_TOOLS] [INST]",
      "just some text",
  };
  for (const std::string& t : unknown) {
    const Result<ChatTemplate> r = DetectChatTemplate(t);
    ASSERT_FALSE(r.ok()) << t;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("chat template"), std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find("chatml, qwen3"), std::string::npos)
        << r.status().message();
  }
}

TEST(ChatTemplateTest, NamesRoundTripAndUnknownNameIsInvalidArgument) {
  for (auto kind :
       {ChatTemplateKind::kChatMl, ChatTemplateKind::kQwen3, ChatTemplateKind::kLlama3,
        ChatTemplateKind::kLlama2, ChatTemplateKind::kMistral, ChatTemplateKind::kZephyr}) {
    const Result<ChatTemplate> t = ChatTemplateFromName(ChatTemplateKindName(kind));
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(t->kind, kind);
    EXPECT_TRUE(t->default_system_prompt.empty());
    EXPECT_FALSE(t->always_add_generation_prompt);
  }
  const Result<ChatTemplate> bad = ChatTemplateFromName("gemma");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("gemma"), std::string::npos);
}

TEST(ChatTemplateTest, RejectsEmptyConversationAndUnknownRoles) {
  const ChatTemplate t = *ChatTemplateFromName("chatml");
  EXPECT_EQ(RenderChat(t, {}, {}).status().code(), StatusCode::kInvalidArgument);
  const Result<std::string> r = RenderChat(t, {{"tool", "x"}}, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("\"tool\""), std::string::npos);
  const ChatTemplate mistral = *ChatTemplateFromName("mistral");
  EXPECT_EQ(RenderChat(mistral, {{"system", "s"}, {"user", "u"}}, {}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(RenderChat(mistral, {{"user", "a"}, {"user", "b"}}, {}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(ChatTemplateTest, PyStripWhitespaceMatchesPythonStrSplit) {
  EXPECT_EQ(PyStripWhitespace("  a b \n"), "a b");
  EXPECT_EQ(PyStripWhitespace("\xc2\xa0\xe3\x80\x80x\xe2\x80\xa8\x1f"), "x");  // NBSP, U+3000
  EXPECT_EQ(PyStripWhitespace("\xe2\x80\x8bx"), "\xe2\x80\x8bx");  // U+200B is not whitespace
  EXPECT_EQ(PyStripWhitespace(" \xff "), "\xff");                  // invalid byte: kept
  EXPECT_EQ(PyStripWhitespace(" \t\r\n"), "");
  EXPECT_EQ(PyStripWhitespace("\xc2\x85y\xc2\x85"), "y");  // U+0085 NEL
}

// ---- Prefix stability (text level) -----------------------------------------------------------

bool IsPrefix(const std::string& a, const std::string& b) { return b.compare(0, a.size(), a) == 0; }

std::string Render(const ChatTemplate& t, const Conversation& c, size_t n, ChatOptions o) {
  const Result<std::string> r = RenderChat(t, Conversation(c.begin(), c.begin() + n), o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : std::string();
}

// Appending a message never changes the text of the earlier ones, except where
// docs/chat-templates.md says the template rewrites: Qwen3 turns a final assistant message's
// <think> block (real or an empty one it adds) into plain content once a user message follows,
// and the original Llama 3 template always ends with an assistant header.
TEST(ChatTemplateTest, AppendingATurnExtendsTheRendering) {
  const Conversation conv = {
      {"system", "Be brief."},
      {"user", "Hi"},
      {"assistant", "<think>\nThe user greets.\n</think>\n\nHello!"},
      {"user", "2+2?"},
      {"assistant", "4"},
      {"user", "Thanks \xf0\x9f\x99\x82"},
      {"assistant", "  You're welcome.  "},
  };
  ChatOptions gen_off;
  gen_off.add_generation_prompt = false;
  gen_off.bos_token = "<s>";
  gen_off.eos_token = "</s>";
  ChatOptions gen_on = gen_off;
  gen_on.add_generation_prompt = true;

  std::vector<ChatTemplate> templates;
  for (const char* name : {"chatml", "qwen3", "llama3", "llama2", "zephyr"}) {
    templates.push_back(*ChatTemplateFromName(name));
  }
  templates.push_back(*DetectChatTemplate(corpus::Template("qwen2")));
  ChatTemplate llama3_always = *ChatTemplateFromName("llama3");
  llama3_always.always_add_generation_prompt = true;
  templates.push_back(llama3_always);

  for (const ChatTemplate& t : templates) {
    SCOPED_TRACE(std::string(ChatTemplateKindName(t.kind)) +
                 (t.always_add_generation_prompt ? " (always gen prompt)" : ""));
    for (size_t n = 1; n < conv.size(); ++n) {
      const bool next_is_assistant = conv[n].role == "assistant";
      const bool rewrites =
          (t.kind == ChatTemplateKind::kQwen3 && conv[n - 1].role == "assistant") ||
          (t.always_add_generation_prompt && !next_is_assistant);
      EXPECT_EQ(IsPrefix(Render(t, conv, n, gen_off), Render(t, conv, n + 1, gen_off)), !rewrites)
          << "n=" << n;
      if (next_is_assistant) {
        // The prompt the reply was generated from is a prefix of every later rendering.
        const std::string prompt = Render(t, conv, n, gen_on);
        EXPECT_TRUE(IsPrefix(prompt, Render(t, conv, n + 1, gen_off))) << "n=" << n;
        if (n + 2 <= conv.size()) {
          EXPECT_TRUE(IsPrefix(prompt, Render(t, conv, n + 2, gen_on))) << "n=" << n;
        }
      }
    }
  }
}

TEST(ChatTemplateTest, Qwen3ThinkingOffPromptIsNotAPrefixOfTheNextTurn) {
  const ChatTemplate t = *ChatTemplateFromName("qwen3");
  const Conversation conv = {{"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}};
  ChatOptions off;
  off.enable_thinking = false;
  const std::string prompt = Render(t, conv, 1, off);
  const std::string next = Render(t, conv, 3, off);
  EXPECT_EQ(prompt,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_FALSE(IsPrefix(prompt, next));
  // What survives is everything up to the assistant header.
  EXPECT_TRUE(
      IsPrefix("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n", next));
}

}  // namespace
}  // namespace kvstash::engine
