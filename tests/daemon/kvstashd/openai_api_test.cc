// The OpenAI wire-format layer (daemon/kvstashd/api/openai.h): request validation, prompt
// rendering and tokenization against a real (synthetic) vocabulary, and the exact shapes of the
// non-streamed bodies and SSE streams.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cache/prefix_cache.h"
#include "daemon/kvstashd/api/openai.h"
#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/engine/engine_test_util.h"

namespace kvstash::daemon::api {
namespace {

using Json = nlohmann::json;

// The tiny synthetic Qwen3's built-in SentencePiece vocabulary (bos <s>, eos </s>, add_bos).
const engine::Tokenizer& Tok() {
  static const std::unique_ptr<engine::Tokenizer> tok = [] {
    auto file = engine::GgufFile::Open(engine::testutil::SyntheticModel("tiny-qwen3", "f16"));
    EXPECT_TRUE(file.ok()) << file.status().ToString();
    auto vocab = engine::Vocab::FromGguf(**file);
    EXPECT_TRUE(vocab.ok()) << vocab.status().ToString();
    auto t = engine::Tokenizer::Create(std::move(*vocab));
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return std::move(*t);
  }();
  return *tok;
}

ModelContext Qwen3Model() {
  ModelContext m;
  m.model_id = "tiny-qwen3";
  m.aliases = {"qwen3", "default"};
  m.tokenizer = &Tok();
  m.chat_template.kind = engine::ChatTemplateKind::kQwen3;
  m.reasoning = true;
  m.n_ctx = 256;
  m.default_max_tokens = 32;
  return m;
}

ModelContext ChatMlModel() {
  ModelContext m = Qwen3Model();
  m.chat_template.kind = engine::ChatTemplateKind::kChatMl;
  m.reasoning = false;
  return m;
}

ParsedRequest ParseChatOk(const std::string& body, const ModelContext& m = Qwen3Model()) {
  ApiError err;
  auto r = ParseChatCompletion(body, m, &err);
  EXPECT_TRUE(r.ok()) << body << " -> " << err.ToJson();
  return r.ok() ? std::move(*r) : ParsedRequest{};
}

ParsedRequest ParseCompletionOk(const std::string& body, const ModelContext& m = Qwen3Model()) {
  ApiError err;
  auto r = ParseCompletion(body, m, &err);
  EXPECT_TRUE(r.ok()) << body << " -> " << err.ToJson();
  return r.ok() ? std::move(*r) : ParsedRequest{};
}

ApiError ChatError(const std::string& body, const ModelContext& m = Qwen3Model()) {
  ApiError err;
  auto r = ParseChatCompletion(body, m, &err);
  EXPECT_FALSE(r.ok()) << body;
  return err;
}

ApiError CompletionError(const std::string& body, const ModelContext& m = Qwen3Model()) {
  ApiError err;
  auto r = ParseCompletion(body, m, &err);
  EXPECT_FALSE(r.ok()) << body;
  return err;
}

// A chat body with one user message and `extra` fields (",\"k\":v" form).
std::string Chat(const std::string& extra = "") {
  return R"({"model":"m","messages":[{"role":"user","content":"hello there"}])" + extra + "}";
}

std::vector<int32_t> Render(const ModelContext& m, const std::vector<engine::ChatMessage>& msgs,
                            std::optional<bool> thinking = std::nullopt) {
  engine::ChatOptions o;
  o.enable_thinking = thinking;
  o.bos_token = "<s>";
  o.eos_token = "</s>";
  auto text = engine::RenderChat(m.chat_template, msgs, o);
  EXPECT_TRUE(text.ok());
  const bool add_bos = !text->starts_with("<s>");
  return Tok().Encode(*text, add_bos, /*parse_special=*/true);
}

// ---- Request parsing --------------------------------------------------------------------------

TEST(OpenAiChatParse, RendersTheTemplateAndAddsTheVocabBos) {
  const ParsedRequest p = ParseChatOk(
      R"({"model":"my-model","messages":[{"role":"system","content":"Be brief."},
          {"role":"user","content":"hello there"}]})");
  EXPECT_TRUE(p.chat);
  EXPECT_EQ(p.model, "my-model");
  EXPECT_TRUE(p.parser.reasoning);  // Qwen3
  EXPECT_EQ(p.request.prompt,
            Render(Qwen3Model(), {{"system", "Be brief."}, {"user", "hello there"}}));
  ASSERT_FALSE(p.request.prompt.empty());
  EXPECT_EQ(p.request.prompt[0], Tok().vocab().bos_id);
  EXPECT_EQ(p.request.limits.max_tokens, 32);  // default_max_tokens
  EXPECT_FALSE(p.stream);
  EXPECT_EQ(p.request.logprobs, -1);
  EXPECT_FALSE(ParseChatOk(Chat(), ChatMlModel()).parser.reasoning);
}

TEST(OpenAiChatParse, TemplateThatWritesBosGetsNoSecondBos) {
  ModelContext m = Qwen3Model();
  m.chat_template.kind = engine::ChatTemplateKind::kLlama2;
  const ParsedRequest p = ParseChatOk(Chat(), m);
  ASSERT_GE(p.request.prompt.size(), 2u);
  EXPECT_EQ(p.request.prompt[0], Tok().vocab().bos_id);
  EXPECT_NE(p.request.prompt[1], Tok().vocab().bos_id);
  EXPECT_EQ(p.request.prompt, Render(m, {{"user", "hello there"}}));
}

TEST(OpenAiChatParse, ContentPartsAreConcatenatedAndDeveloperIsSystem) {
  const ParsedRequest p = ParseChatOk(
      R"({"messages":[{"role":"developer","content":"Rules."},
          {"role":"user","content":[{"type":"text","text":"hello "},{"type":"text","text":"there"}]}]})");
  EXPECT_EQ(p.request.prompt,
            Render(Qwen3Model(), {{"system", "Rules."}, {"user", "hello there"}}));
  EXPECT_EQ(p.model, "tiny-qwen3");  // no model given: the loaded one
}

TEST(OpenAiChatParse, EnableThinkingFalseClosesTheThinkBlock) {
  const ParsedRequest p = ParseChatOk(Chat(R"(,"chat_template_kwargs":{"enable_thinking":false})"));
  EXPECT_EQ(p.request.prompt, Render(Qwen3Model(), {{"user", "hello there"}}, false));
  EXPECT_NE(p.request.prompt, Render(Qwen3Model(), {{"user", "hello there"}}));
  EXPECT_TRUE(Tok().Decode(p.request.prompt, true).ends_with("<think>\n\n</think>\n\n"));
}

TEST(OpenAiChatParse, AssistantMessageMayHaveNullContent) {
  const ParsedRequest p = ParseChatOk(
      R"({"messages":[{"role":"user","content":"a"},{"role":"assistant","content":null},
          {"role":"user","content":"b"}]})");
  EXPECT_EQ(p.request.prompt,
            Render(Qwen3Model(), {{"user", "a"}, {"assistant", ""}, {"user", "b"}}));
}

struct BadField {
  std::string extra;  // appended to a valid chat body
  std::string param;
};

TEST(OpenAiChatParse, FieldErrorsAre400AndNameTheField) {
  const std::string salt(300, 'x');
  const std::vector<BadField> cases = {
      {R"(,"temperature":2.5)", "temperature"},
      {R"(,"temperature":-0.1)", "temperature"},
      {R"(,"temperature":"hot")", "temperature"},
      {R"(,"top_p":0)", "top_p"},
      {R"(,"top_p":1.01)", "top_p"},
      {R"(,"top_k":-1)", "top_k"},
      {R"(,"top_k":1.5)", "top_k"},
      {R"(,"min_p":1.5)", "min_p"},
      {R"(,"min_p":-0.01)", "min_p"},
      {R"(,"presence_penalty":2.5)", "presence_penalty"},
      {R"(,"frequency_penalty":-3)", "frequency_penalty"},
      {R"(,"repetition_penalty":0)", "repetition_penalty"},
      {R"(,"repetition_penalty":-1)", "repetition_penalty"},
      {R"(,"seed":"42")", "seed"},
      {R"(,"seed":0.5)", "seed"},
      {R"(,"max_tokens":0)", "max_tokens"},
      {R"(,"max_tokens":-5)", "max_tokens"},
      {R"(,"max_tokens":"10")", "max_tokens"},
      {R"(,"max_tokens":[10])", "max_tokens"},
      {R"(,"max_completion_tokens":0)", "max_completion_tokens"},
      {R"(,"stop":5)", "stop"},
      {R"(,"stop":["a","b","c","d","e"])", "stop"},
      {R"(,"stop":["a",1])", "stop[1]"},
      {R"(,"n":2)", "n"},
      {R"(,"stream":"yes")", "stream"},
      {R"(,"stream_options":true)", "stream_options"},
      {R"(,"stream_options":{"include_usage":1})", "stream_options.include_usage"},
      {R"(,"logprobs":1)", "logprobs"},
      {R"(,"logprobs":true,"top_logprobs":21)", "top_logprobs"},
      {R"(,"logprobs":true,"top_logprobs":-1)", "top_logprobs"},
      {R"(,"top_logprobs":2)", "top_logprobs"},
      {R"(,"session":"../etc")", "session"},
      {R"(,"session":"")", "session"},
      {R"(,"session":".hidden")", "session"},
      {R"(,"session":7)", "session"},
      {R"(,"cache_salt":")" + salt + "\"", "cache_salt"},
      {R"(,"cache_salt":{})", "cache_salt"},
      {R"(,"model":5)", "model"},
      {R"(,"chat_template_kwargs":[])", "chat_template_kwargs"},
      {R"(,"chat_template_kwargs":{"enable_thinking":"no"})",
       "chat_template_kwargs.enable_thinking"},
  };
  for (const BadField& c : cases) {
    const ApiError e = ChatError(Chat(c.extra));
    EXPECT_EQ(e.http_status, 400) << c.extra;
    EXPECT_EQ(e.type, "invalid_request_error") << c.extra;
    EXPECT_EQ(e.param, c.param) << c.extra;
    EXPECT_NE(e.message.find(c.param), std::string::npos) << c.extra << ": " << e.message;
    const Json j = Json::parse(e.ToJson());
    EXPECT_EQ(j["error"]["param"], c.param);
    EXPECT_TRUE(j["error"]["code"].is_null());
  }
}

TEST(OpenAiChatParse, MessageErrorsNameThePath) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"model":"m"})", "messages"},
      {R"({"messages":{}})", "messages"},
      {R"({"messages":[]})", "messages"},
      {R"({"messages":["hi"]})", "messages[0]"},
      {R"({"messages":[{"content":"hi"}]})", "messages[0].role"},
      {R"({"messages":[{"role":"wizard","content":"hi"}]})", "messages[0].role"},
      {R"({"messages":[{"role":"user","content":"a"},{"role":"tool","content":"r"}]})",
       "messages[1].tool_call_id"},
      {R"({"messages":[{"role":"user"}]})", "messages[0].content"},
      {R"({"messages":[{"role":"user","content":5}]})", "messages[0].content"},
      {R"({"messages":[{"role":"user","content":[{"type":"text","text":"a"},
          {"type":"image_url","image_url":{"url":"x"}}]}]})",
       "messages[0].content[1].type"},
      {R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})",
       "messages[0].content[0].text"},
      {R"({"messages":[{"role":"user","content":[7]}]})", "messages[0].content[0]"},
      {R"({"messages":[{"role":"assistant","content":"x","tool_calls":[{"id":"1"}]}]})",
       "messages[0].tool_calls[0].function"},
  };
  for (const auto& [body, param] : cases) {
    const ApiError e = ChatError(body);
    EXPECT_EQ(e.http_status, 400) << body;
    EXPECT_EQ(e.param, param) << body << ": " << e.message;
  }
  // The renderer's own refusals (Mistral has no system role) are 400 on `messages`.
  ModelContext m = Qwen3Model();
  m.chat_template.kind = engine::ChatTemplateKind::kMistral;
  const ApiError e = ChatError(R"({"messages":[{"role":"system","content":"s"},
                                   {"role":"user","content":"u"}]})",
                               m);
  EXPECT_EQ(e.http_status, 400);
  EXPECT_EQ(e.param, "messages");
}

TEST(OpenAiChatParse, MalformedBodiesAre400NotCrashes) {
  const std::vector<std::string> bodies = {
      "",
      "   ",
      "null",
      "[]",
      "\"text\"",
      "42",
      "{",
      R"({"messages":[)",
      R"({"messages":[{"role":"user","content":"hi"}]} trailing)",
      std::string(200, '[') + std::string(200, ']'),
      "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}",
      R"({"temperature":1e400,"messages":[{"role":"user","content":"x"}]})",
      R"({"temperature":NaN,"messages":[{"role":"user","content":"x"}]})",
      R"({"messages":[{"role":"user","content":"a)" + std::string(1, '\0') + R"(b"}]})",
      // A whole object, then a NUL and junk: nlohmann alone stops at the NUL and accepts it.
      R"({"messages":[{"role":"user","content":"ab"}]})" + std::string(1, '\0') + "junk",
  };
  for (const std::string& b : bodies) {
    const ApiError e = ChatError(b);
    EXPECT_EQ(e.http_status, 400) << b.substr(0, 80);
    EXPECT_FALSE(e.message.empty());
  }
}

TEST(OpenAiChatParse, InvalidUtf8AnywhereIs400) {
  const std::vector<std::string> bodies = {
      "{\"messages\":[{\"role\":\"user\",\"content\":\"caf\xC3\"}]}",           // truncated
      "{\"messages\":[{\"role\":\"user\",\"content\":\"\xC0\xAF\"}]}",          // overlong
      "{\"messages\":[{\"role\":\"user\",\"content\":\"\xED\xA0\x80\"}]}",      // surrogate
      "{\"messages\":[{\"role\":\"user\",\"content\":\"\xF4\x90\x80\x80\"}]}",  // > U+10FFFF
      "{\"user\":\"\xFF\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
      R"({"messages":[{"role":"user","content":"\ud800"}]})",  // lone surrogate escape
  };
  for (const std::string& b : bodies) {
    const ApiError e = ChatError(b);
    EXPECT_EQ(e.http_status, 400);
    EXPECT_TRUE(e.message.find("UTF-8") != std::string::npos ||
                e.message.find("surrogate") != std::string::npos)
        << e.message;
  }
  // Valid multi-byte text passes.
  ParseChatOk("{\"messages\":[{\"role\":\"user\",\"content\":\"caf\xC3\xA9 \xF0\x9F\x98\x80\"}]}");
}

TEST(OpenAiChatParse, SamplingFieldsAndDefaults) {
  ParsedRequest p = ParseChatOk(Chat());
  EXPECT_FLOAT_EQ(p.request.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(p.request.sampling.top_p, 1.0f);
  EXPECT_EQ(p.request.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(p.request.sampling.min_p, 0.05f);
  p = ParseChatOk(Chat(R"(,"temperature":0,"top_p":0.5,"top_k":0,"min_p":0,"seed":1234,
      "presence_penalty":-2,"frequency_penalty":2,"repetition_penalty":1.1,"user":"u1",
      "unknown_field":{"x":[1,2]},"tools":null,"stop":null)"));
  EXPECT_FLOAT_EQ(p.request.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(p.request.sampling.top_p, 0.5f);
  EXPECT_EQ(p.request.sampling.top_k, 0);
  EXPECT_FLOAT_EQ(p.request.sampling.min_p, 0.0f);
  EXPECT_EQ(p.request.sampling.seed, 1234u);
  EXPECT_FLOAT_EQ(p.request.sampling.presence_penalty, -2.0f);
  EXPECT_FLOAT_EQ(p.request.sampling.frequency_penalty, 2.0f);
  EXPECT_FLOAT_EQ(p.request.sampling.repeat_penalty, 1.1f);
  EXPECT_TRUE(p.request.limits.stop_strings.empty());
  EXPECT_EQ(ParseChatOk(Chat(R"(,"seed":-1)")).request.sampling.seed, UINT64_MAX);
  EXPECT_EQ(ParseChatOk(Chat(R"(,"seed":18446744073709551615)")).request.sampling.seed, UINT64_MAX);
  EXPECT_EQ(ParseChatOk(Chat(R"(,"top_k":1e12)")).request.sampling.top_k, INT32_MAX);
  // No seed: one drawn per request.
  std::set<uint64_t> seeds;
  for (int i = 0; i < 4; ++i) seeds.insert(ParseChatOk(Chat()).request.sampling.seed);
  EXPECT_GT(seeds.size(), 1u);
  // The daemon's configured defaults replace the built-in ones.
  ModelContext m = Qwen3Model();
  m.default_sampling.temperature = 0.3f;
  EXPECT_FLOAT_EQ(ParseChatOk(Chat(), m).request.sampling.temperature, 0.3f);
}

TEST(OpenAiChatParse, MaxTokensIsClampedToWhatFits) {
  const ModelContext m = Qwen3Model();  // n_ctx 256
  const int n_prompt = static_cast<int>(ParseChatOk(Chat()).request.prompt.size());
  const int room = m.n_ctx - n_prompt;
  ASSERT_GT(room, 10);
  EXPECT_EQ(ParseChatOk(Chat(R"(,"max_tokens":7)")).request.limits.max_tokens, 7);
  EXPECT_EQ(ParseChatOk(Chat(R"(,"max_tokens":7.0)")).request.limits.max_tokens, 7);
  for (const char* huge :
       {"100000", "2147483648", "9223372036854775807", "18446744073709551615", "1e30", "1e308"}) {
    EXPECT_EQ(ParseChatOk(Chat(std::string(",\"max_tokens\":") + huge)).request.limits.max_tokens,
              room)
        << huge;
  }
  // max_completion_tokens wins over max_tokens.
  EXPECT_EQ(
      ParseChatOk(Chat(R"(,"max_tokens":5,"max_completion_tokens":9)")).request.limits.max_tokens,
      9);
  // The server's cap.
  ModelContext capped = m;
  capped.max_tokens_limit = 12;
  EXPECT_EQ(ParseChatOk(Chat(R"(,"max_tokens":100)"), capped).request.limits.max_tokens, 12);
  EXPECT_EQ(ParseChatOk(Chat(R"(,"max_tokens":3)"), capped).request.limits.max_tokens, 3);
  // default_max_tokens <= 0: the rest of the context.
  ModelContext open = m;
  open.default_max_tokens = 0;
  EXPECT_EQ(ParseChatOk(Chat(), open).request.limits.max_tokens, room);
}

TEST(OpenAiChatParse, PromptThatFillsTheContextIs422) {
  ModelContext m = Qwen3Model();
  const int n_prompt = static_cast<int>(ParseChatOk(Chat()).request.prompt.size());
  m.n_ctx = n_prompt;  // no room to generate
  const ApiError e = ChatError(Chat(), m);
  EXPECT_EQ(e.http_status, 422);
  EXPECT_EQ(e.code, "context_length_exceeded");
  EXPECT_EQ(e.param, "messages");
  EXPECT_NE(e.message.find(std::to_string(n_prompt) + " tokens"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("context of " + std::to_string(m.n_ctx)), std::string::npos);
  EXPECT_EQ(Json::parse(e.ToJson())["error"]["code"], "context_length_exceeded");
  m.n_ctx = n_prompt + 1;  // exactly one token of room
  EXPECT_EQ(ParseChatOk(Chat(R"(,"max_tokens":50)"), m).request.limits.max_tokens, 1);
}

TEST(OpenAiChatParse, StopStreamSessionSaltLogprobs) {
  EXPECT_EQ(ParseChatOk(Chat(R"(,"stop":"\n\n")")).request.limits.stop_strings,
            std::vector<std::string>{"\n\n"});
  EXPECT_EQ(ParseChatOk(Chat(R"(,"stop":["END","###","x","y"])")).request.limits.stop_strings,
            (std::vector<std::string>{"END", "###", "x", "y"}));
  ParsedRequest p = ParseChatOk(Chat(
      R"(,"stream":true,"stream_options":{"include_usage":true},"session":"agent_1.turn-2",
        "cache_salt":"tenant-a","logprobs":true,"top_logprobs":3,"n":1)"));
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
  EXPECT_EQ(p.request.restore_session, "agent_1.turn-2");
  EXPECT_EQ(p.request.save_session, "agent_1.turn-2");
  EXPECT_EQ(p.request.cache_salt, "tenant-a");
  EXPECT_EQ(p.request.logprobs, 3);
  EXPECT_EQ(ParseChatOk(Chat(R"(,"logprobs":true)")).request.logprobs, 0);
  EXPECT_EQ(ParseChatOk(Chat(R"(,"logprobs":false)")).request.logprobs, -1);
  EXPECT_FALSE(ParseChatOk(Chat(R"(,"stream":true)")).include_usage);
}

TEST(OpenAiChatParse, SessionNamesAgreeWithTheCache) {
  const std::vector<std::string> names = {"a",
                                          "agent_1.turn-2",
                                          "A.B-C_d",
                                          ".x",
                                          "-x",
                                          "x/y",
                                          "x y",
                                          "é",
                                          std::string(128, 'n'),
                                          std::string(129, 'n'),
                                          "x\\y",
                                          "x:y",
                                          "_x",
                                          "9"};
  for (const std::string& n : names) {
    ApiError e;
    const Json body = {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"session", n}};
    const bool ok = ParseChatCompletion(body.dump(), Qwen3Model(), &e).ok();
    EXPECT_EQ(ok, cache::ValidateSessionName(n).ok()) << n;
  }
}

TEST(OpenAiChatParse, NoTokenizerIsAClearErrorNotACrash) {
  ModelContext m = Qwen3Model();
  m.tokenizer = nullptr;
  const ApiError e = ChatError(Chat(), m);
  EXPECT_EQ(e.http_status, 400);
  EXPECT_NE(e.message.find("tokenizer"), std::string::npos);
  // Field errors still come first and name their field.
  EXPECT_EQ(ChatError(Chat(R"(,"top_p":7)"), m).param, "top_p");
}

TEST(OpenAiCompletionParse, PromptForms) {
  const ModelContext m = Qwen3Model();
  const std::vector<int32_t> want = Tok().Encode("The cat <s> sat", true, false);
  ParsedRequest p = ParseCompletionOk(R"({"model":"x","prompt":"The cat <s> sat","echo":true})");
  EXPECT_FALSE(p.chat);
  EXPECT_FALSE(p.parser.reasoning);
  EXPECT_EQ(p.request.prompt, want);  // plain text: "<s>" is not the BOS token
  EXPECT_EQ(p.request.prompt[0], Tok().vocab().bos_id);
  EXPECT_EQ(p.prompt_text, "The cat <s> sat");
  EXPECT_TRUE(p.echo);
  EXPECT_EQ(ParseCompletionOk(R"({"prompt":["The cat <s> sat"]})").request.prompt, want);
  p = ParseCompletionOk(R"({"prompt":[1,300,301]})");
  EXPECT_EQ(p.request.prompt, (std::vector<int32_t>{1, 300, 301}));
  EXPECT_EQ(p.prompt_text, Tok().Decode(p.request.prompt, false));
  EXPECT_EQ(ParseCompletionOk(R"({"prompt":[[5,6]]})").request.prompt,
            (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(ParseCompletionOk(R"({"prompt":"hi","logprobs":2})").request.logprobs, 2);
  EXPECT_EQ(ParseCompletionOk(R"({"prompt":"hi"})").request.logprobs, -1);
  // An empty string is the BOS token alone.
  EXPECT_EQ(ParseCompletionOk(R"({"prompt":""})").request.prompt,
            std::vector<int32_t>{Tok().vocab().bos_id});
}

TEST(OpenAiCompletionParse, PromptErrors) {
  const int n_vocab = Tok().vocab().size();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({})", "prompt"},
      {R"({"prompt":5})", "prompt"},
      {R"({"prompt":[]})", "prompt"},
      {R"({"prompt":["a","b"]})", "prompt"},
      {R"({"prompt":[1,-2]})", "prompt[1]"},
      {"{\"prompt\":[1," + std::to_string(n_vocab) + "]}", "prompt[1]"},
      {R"({"prompt":[1,"a"]})", "prompt[1]"},
      {R"({"prompt":[1,2.5]})", "prompt[1]"},
      {R"({"prompt":[[1],[2]]})", "prompt"},
      {R"({"prompt":[[1,"x"]]})", "prompt[0][1]"},
      {R"({"prompt":"hi","logprobs":21})", "logprobs"},
      {R"({"prompt":"hi","logprobs":"2"})", "logprobs"},
      {R"({"prompt":"hi","echo":1})", "echo"},
      {R"({"prompt":"hi","max_tokens":0})", "max_tokens"},
  };
  for (const auto& [body, param] : cases) {
    const ApiError e = CompletionError(body);
    EXPECT_EQ(e.http_status, 400) << body;
    EXPECT_EQ(e.param, param) << body << ": " << e.message;
  }
  ModelContext small = Qwen3Model();
  small.n_ctx = 3;
  const ApiError e = CompletionError(R"({"prompt":[1,2,3]})", small);
  EXPECT_EQ(e.http_status, 422);
  EXPECT_EQ(e.code, "context_length_exceeded");
  EXPECT_EQ(e.param, "prompt");
}

TEST(OpenAiCompletionParse, TokenIdsWorkWithoutATokenizer) {
  ModelContext m = Qwen3Model();
  m.tokenizer = nullptr;
  EXPECT_EQ(ParseCompletionOk(R"({"prompt":[1,2,3]})", m).request.prompt,
            (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(CompletionError(R"({"prompt":"text"})", m).param, "prompt");
}

// ---- Responses ----------------------------------------------------------------------------------

serve::Event Token(int32_t id, std::string text) {
  serve::Event e;
  e.kind = serve::Event::Kind::kToken;
  e.token = id;
  e.text = std::move(text);
  return e;
}

serve::Event Done(std::string tail, serve::FinishReason why = serve::FinishReason::kStopString,
                  int generated = 3) {
  serve::Event e;
  e.kind = serve::Event::Kind::kDone;
  e.text = std::move(tail);
  e.usage.prompt_tokens = 20;
  e.usage.generated_tokens = generated;
  e.usage.prefilled_tokens = 20;
  e.usage.finish = why;
  e.usage.ttft_ms = 12.5;
  return e;
}

// The JSON payloads of an SSE stream; checks the framing and that it ends with [DONE].
std::vector<Json> Frames(const std::string& sse, bool expect_done = true) {
  std::vector<Json> out;
  size_t pos = 0;
  bool saw_done = false;
  while (pos < sse.size()) {
    const size_t end = sse.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated frame";
    if (end == std::string::npos) break;
    const std::string frame = sse.substr(pos, end - pos);
    pos = end + 2;
    EXPECT_TRUE(frame.starts_with("data: ")) << frame;
    EXPECT_FALSE(saw_done) << "frame after [DONE]";
    if (frame == "data: [DONE]") {
      saw_done = true;
      continue;
    }
    out.push_back(Json::parse(frame.substr(6)));
  }
  EXPECT_EQ(saw_done, expect_done);
  return out;
}

std::string StreamAll(ResponseBuilder& b, const std::vector<serve::Event>& events) {
  std::string sse;
  for (const serve::Event& e : events) sse += b.StreamEvent(e);
  return sse;
}

TEST(OpenAiResponse, NonStreamedChatHasUsageWithCachedTokensZero) {
  const ModelContext m = ChatMlModel();
  const ParsedRequest req = ParseChatOk(Chat(), m);
  ResponseBuilder b(req, "chatcmpl-1", 1700000000, m);
  serve::Event progress;
  progress.kind = serve::Event::Kind::kPrefillProgress;
  b.Add(progress);
  b.Add(Token(300, "Hel"));
  b.Add(Token(301, ""));  // held back
  b.Add(Token(302, "lo"));
  b.Add(Done(" world"));
  EXPECT_TRUE(b.finished());
  EXPECT_FALSE(b.error().has_value());
  const Json j = Json::parse(b.Finish());
  EXPECT_EQ(j["id"], "chatcmpl-1");
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["created"], 1700000000);
  EXPECT_EQ(j["model"], "m");
  EXPECT_EQ(j["system_fingerprint"], "kvstash");
  ASSERT_EQ(j["choices"].size(), 1u);
  const Json& c = j["choices"][0];
  EXPECT_EQ(c["index"], 0);
  EXPECT_EQ(c["message"]["role"], "assistant");
  EXPECT_EQ(c["message"]["content"], "Hello world");
  EXPECT_FALSE(c["message"].contains("reasoning_content"));
  EXPECT_EQ(c["finish_reason"], "stop");
  EXPECT_TRUE(c["logprobs"].is_null());
  const Json& u = j["usage"];
  EXPECT_EQ(u["prompt_tokens"], 20);
  EXPECT_EQ(u["completion_tokens"], 3);
  EXPECT_EQ(u["total_tokens"], 23);
  ASSERT_TRUE(u["prompt_tokens_details"].contains("cached_tokens"));
  EXPECT_EQ(u["prompt_tokens_details"]["cached_tokens"], 0);
  for (const char* k : {"cached_tokens", "device_tokens", "host_tokens", "disk_tokens",
                        "prefilled_tokens", "load_ms", "prefill_ms", "ttft_ms", "preemptions"}) {
    EXPECT_TRUE(u["kvstash"].contains(k)) << k;
  }
  EXPECT_EQ(u["kvstash"]["prefilled_tokens"], 20);
  EXPECT_DOUBLE_EQ(u["kvstash"]["ttft_ms"].get<double>(), 12.5);
  // UsageJson is the same object.
  serve::Usage zero;
  const Json z = Json::parse(UsageJson(zero));
  EXPECT_EQ(z["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_EQ(z["kvstash"]["cached_tokens"], 0);
  EXPECT_EQ(z["total_tokens"], 0);
}

TEST(OpenAiResponse, FinishReasons) {
  EXPECT_EQ(FinishReasonString(serve::FinishReason::kEndOfGeneration), "stop");
  EXPECT_EQ(FinishReasonString(serve::FinishReason::kStopString), "stop");
  EXPECT_EQ(FinishReasonString(serve::FinishReason::kMaxTokens), "length");
  EXPECT_EQ(FinishReasonString(serve::FinishReason::kContextFull), "length");
  const ModelContext m = ChatMlModel();
  ResponseBuilder b(ParseChatOk(Chat(), m), "id", 1, m);
  b.Add(Done("x", serve::FinishReason::kMaxTokens));
  EXPECT_EQ(Json::parse(b.Finish())["choices"][0]["finish_reason"], "length");
}

TEST(OpenAiResponse, StreamSequenceEndsWithDone) {
  const ModelContext m = ChatMlModel();
  const ParsedRequest req = ParseChatOk(Chat(R"(,"stream":true)"), m);
  ResponseBuilder b(req, "chatcmpl-2", 5, m);
  serve::Event progress;
  progress.kind = serve::Event::Kind::kPrefillProgress;
  EXPECT_EQ(b.StreamEvent(progress), "");  // nothing before the first token
  const std::string sse =
      StreamAll(b, {Token(300, "Hel"), Token(301, ""), Token(302, "lo"), Done("!")});
  EXPECT_TRUE(sse.ends_with("data: [DONE]\n\n"));
  const std::vector<Json> f = Frames(sse);
  ASSERT_EQ(f.size(), 5u);  // role, "Hel", "lo", "!", finish
  for (const Json& c : f) {
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    EXPECT_EQ(c["id"], "chatcmpl-2");
    EXPECT_EQ(c["model"], "m");
    EXPECT_EQ(c["created"], 5);
    EXPECT_FALSE(c.contains("usage"));
  }
  EXPECT_EQ(f[0]["choices"][0]["delta"], (Json{{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(f[0]["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(f[1]["choices"][0]["delta"], (Json{{"content", "Hel"}}));
  EXPECT_EQ(f[2]["choices"][0]["delta"], (Json{{"content", "lo"}}));
  EXPECT_EQ(f[3]["choices"][0]["delta"], (Json{{"content", "!"}}));
  EXPECT_EQ(f[4]["choices"][0]["delta"], Json::object());
  EXPECT_EQ(f[4]["choices"][0]["finish_reason"], "stop");
  // Nothing after the end.
  EXPECT_EQ(b.StreamEvent(Token(1, "late")), "");
}

TEST(OpenAiResponse, IncludeUsageAddsAChunkWithEmptyChoices) {
  const ModelContext m = ChatMlModel();
  const ParsedRequest req =
      ParseChatOk(Chat(R"(,"stream":true,"stream_options":{"include_usage":true})"), m);
  ResponseBuilder b(req, "c", 1, m);
  const std::vector<Json> f = Frames(StreamAll(b, {Done("", serve::FinishReason::kMaxTokens, 0)}));
  ASSERT_EQ(f.size(), 3u);  // role, finish, usage
  EXPECT_EQ(f[1]["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(f[2]["choices"].is_array());
  EXPECT_TRUE(f[2]["choices"].empty());
  EXPECT_EQ(f[2]["usage"]["prompt_tokens"], 20);
  EXPECT_EQ(f[2]["usage"]["completion_tokens"], 0);
  EXPECT_EQ(f[2]["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_TRUE(f[2]["usage"].contains("kvstash"));
}

TEST(OpenAiResponse, ErrorEventEndsTheStreamWithAnErrorFrame) {
  const ModelContext m = ChatMlModel();
  ResponseBuilder b(ParseChatOk(Chat(R"(,"stream":true)"), m), "c", 1, m);
  std::string sse = b.StreamEvent(Token(300, "Hi"));
  serve::Event err;
  err.kind = serve::Event::Kind::kError;
  err.status = Status::ResourceExhausted("KV pool exhausted with no other sequence to preempt");
  sse += b.StreamEvent(err);
  EXPECT_EQ(b.StreamEvent(Done("x")), "");
  const std::vector<Json> f = Frames(sse, /*expect_done=*/false);
  ASSERT_EQ(f.size(), 3u);
  EXPECT_EQ(f[2]["error"]["code"], "context_length_exceeded");
  EXPECT_NE(f[2]["error"]["message"].get<std::string>().find("KV pool"), std::string::npos);
  ASSERT_TRUE(b.error().has_value());
  EXPECT_EQ(b.error()->http_status, 422);

  // Non-streamed: the body is the error object.
  ResponseBuilder nb(ParseChatOk(Chat(), m), "c", 1, m);
  err.status = Status::Internal("backend failed");
  nb.Add(Token(300, "Hi"));
  nb.Add(err);
  const Json j = Json::parse(nb.Finish());
  EXPECT_EQ(j["error"]["type"], "server_error");
  EXPECT_EQ(nb.error()->http_status, 500);
}

// The text a reply's stream splits into, fed at every split position; the streamed deltas
// must concatenate to the non-streamed fields.
struct SplitCase {
  std::string text;
  std::string reasoning;
  std::string content;
};

void CheckSplit(const SplitCase& c, const std::vector<std::string>& pieces) {
  const ModelContext m = Qwen3Model();
  ParsedRequest req = ParseChatOk(Chat());
  ASSERT_TRUE(req.parser.reasoning);
  ResponseBuilder nb(req, "c", 1, m);
  for (size_t i = 0; i + 1 < pieces.size(); ++i) nb.Add(Token(300, pieces[i]));
  nb.Add(Done(pieces.back()));
  const Json msg = Json::parse(nb.Finish())["choices"][0]["message"];
  EXPECT_EQ(msg["content"], c.content) << c.text;
  if (c.reasoning.empty()) {
    EXPECT_FALSE(msg.contains("reasoning_content")) << c.text;
  } else {
    EXPECT_EQ(msg["reasoning_content"], c.reasoning) << c.text;
  }

  req.stream = true;
  ResponseBuilder sb(req, "c", 1, m);
  std::vector<serve::Event> events;
  for (size_t i = 0; i + 1 < pieces.size(); ++i) events.push_back(Token(300, pieces[i]));
  events.push_back(Done(pieces.back()));
  std::string reasoning, content;
  for (const Json& f : Frames(StreamAll(sb, events))) {
    const Json& d = f["choices"][0]["delta"];
    EXPECT_FALSE(d.contains("reasoning_content") && d.contains("content")) << d;
    if (d.contains("reasoning_content")) reasoning += d["reasoning_content"].get<std::string>();
    if (d.contains("content")) content += d["content"].get<std::string>();
  }
  EXPECT_EQ(reasoning, c.reasoning) << c.text;
  EXPECT_EQ(content, c.content) << c.text;
}

TEST(OpenAiResponse, Qwen3ReasoningIsSplitAtThinkInBothModes) {
  const std::vector<SplitCase> cases = {
      {"<think>\nLet me see.\n</think>\n\nThe answer is 4.", "Let me see.", "The answer is 4."},
      {"<think>\n\n</think>\n\nHi", "", "Hi"},
      {"Plain reply, no thinking.", "", "Plain reply, no thinking."},
      {"<thin", "", "<thin"},                                   // never became a think block
      {"<think>\nstill thinking\n\n", "still thinking", ""},    // cut off by max_tokens
      {"<think>a</thinx> b</think>c\n", "a</thinx> b", "c\n"},  // near-miss close tag
      {"<think>x\n</think>", "x", ""},
      {"Hello <think>not at the start</think> ok", "", "Hello <think>not at the start</think> ok"},
  };
  for (const SplitCase& c : cases) {
    CheckSplit(c, {c.text, ""});  // all at once
    CheckSplit(c, {"", c.text});  // all in the tail
    for (size_t i = 0; i <= c.text.size(); ++i) {
      CheckSplit(c, {c.text.substr(0, i), c.text.substr(i)});
    }
    std::vector<std::string> bytes;
    for (char ch : c.text) bytes.emplace_back(1, ch);
    bytes.emplace_back();
    CheckSplit(c, bytes);
  }
}

TEST(OpenAiResponse, ChatLogprobsShape) {
  const ModelContext m = ChatMlModel();
  ParsedRequest req = ParseChatOk(Chat(R"(,"logprobs":true,"top_logprobs":2)"), m);
  serve::Event t = Token(300, Tok().TokenToPiece(300, true));
  t.logprob = -0.25f;
  t.top = {{300, -0.25f}, {301, -1.5f}};
  ResponseBuilder nb(req, "c", 1, m);
  nb.Add(t);
  nb.Add(Done(""));
  const Json lp = Json::parse(nb.Finish())["choices"][0]["logprobs"];
  ASSERT_TRUE(lp.contains("content"));
  ASSERT_EQ(lp["content"].size(), 1u);
  const Json& e = lp["content"][0];
  const std::string piece = Tok().TokenToPiece(300, true);
  EXPECT_EQ(e["token"], piece);
  EXPECT_DOUBLE_EQ(e["logprob"].get<double>(), -0.25);
  ASSERT_EQ(e["bytes"].size(), piece.size());
  for (size_t i = 0; i < piece.size(); ++i) {
    EXPECT_EQ(e["bytes"][i], static_cast<unsigned char>(piece[i]));
  }
  ASSERT_EQ(e["top_logprobs"].size(), 2u);
  EXPECT_EQ(e["top_logprobs"][1]["token"], Tok().TokenToPiece(301, true));
  EXPECT_DOUBLE_EQ(e["top_logprobs"][1]["logprob"].get<double>(), -1.5);
  EXPECT_TRUE(e["top_logprobs"][1]["bytes"].is_array());

  // Streamed: each entry rides on the next chunk sent, a held-back token's on a later one.
  req.stream = true;
  ResponseBuilder sb(req, "c", 1, m);
  serve::Event held = t;
  held.text = "";
  const std::vector<Json> f = Frames(StreamAll(sb, {held, t, Done("")}));
  ASSERT_EQ(f.size(), 3u);  // role, content, finish
  EXPECT_TRUE(f[0]["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(f[1]["choices"][0]["logprobs"]["content"].size(), 2u);
  EXPECT_TRUE(f[2]["choices"][0]["logprobs"].is_null());
}

TEST(OpenAiResponse, TokenPiecesThatSplitACharacterStayValidJson) {
  const ModelContext m = ChatMlModel();
  ParsedRequest req = ParseChatOk(Chat(R"(,"logprobs":true)"), m);
  // Byte-fallback token <0xC3> (id 3 + 0xC3): half of "é".
  const int32_t half = 3 + 0xC3;
  ASSERT_EQ(Tok().TokenToPiece(half, true), "\xC3");
  serve::Event t = Token(half, "");
  ResponseBuilder b(req, "c", 1, m);
  b.Add(t);
  b.Add(Done("\xC3\xA9"));
  const Json j = Json::parse(b.Finish());
  EXPECT_EQ(j["choices"][0]["message"]["content"], "\xC3\xA9");
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"][0]["bytes"], Json::array({0xC3}));
}

TEST(OpenAiResponse, CompletionShapesStreamedAndNot) {
  const ModelContext m = Qwen3Model();
  ParsedRequest req = ParseCompletionOk(R"({"model":"c1","prompt":"Once","echo":true,
                                           "logprobs":1})");
  serve::Event t = Token(300, Tok().TokenToPiece(300, true));
  t.logprob = -0.5f;
  t.top = {{300, -0.5f}};
  ResponseBuilder nb(req, "cmpl-1", 9, m);
  nb.Add(t);
  nb.Add(Done(" end", serve::FinishReason::kEndOfGeneration));
  const Json j = Json::parse(nb.Finish());
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["id"], "cmpl-1");
  EXPECT_EQ(j["model"], "c1");
  const Json& c = j["choices"][0];
  EXPECT_EQ(c["text"], "Once" + t.text + " end");
  EXPECT_EQ(c["finish_reason"], "stop");
  EXPECT_EQ(c["logprobs"]["tokens"], Json::array({t.text}));
  EXPECT_EQ(c["logprobs"]["token_logprobs"].size(), 1u);
  EXPECT_EQ(c["logprobs"]["text_offset"], Json::array({4}));
  EXPECT_TRUE(c["logprobs"]["top_logprobs"][0].is_object());
  EXPECT_EQ(j["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

  req.stream = true;
  req.include_usage = true;
  ResponseBuilder sb(req, "cmpl-1", 9, m);
  const std::vector<Json> f = Frames(StreamAll(sb, {t, Done(" end")}));
  ASSERT_EQ(f.size(), 5u);  // echo, token, tail, finish, usage
  EXPECT_EQ(f[0]["choices"][0]["text"], "Once");
  EXPECT_EQ(f[1]["choices"][0]["text"], t.text);
  EXPECT_EQ(f[1]["choices"][0]["logprobs"]["tokens"], Json::array({t.text}));
  EXPECT_EQ(f[2]["choices"][0]["text"], " end");
  EXPECT_EQ(f[3]["choices"][0]["text"], "");
  EXPECT_EQ(f[3]["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(f[4]["choices"].empty());
  for (const Json& x : f) EXPECT_EQ(x["object"], "text_completion");
}

TEST(OpenAiErrors, StatusMapping) {
  struct Case {
    Status s;
    int http;
    std::string type;
    std::string code;
  };
  const std::vector<Case> cases = {
      {Status::InvalidArgument("empty prompt"), 400, "invalid_request_error", ""},
      {Status::InvalidArgument("context (300 tokens) does not fit the context size 256"), 422,
       "invalid_request_error", "context_length_exceeded"},
      {Status::ResourceExhausted("too many requests waiting (64; --max-queue): try again later"),
       503, "unavailable_error", ""},
      {Status::ResourceExhausted("the context needs 40 KV pages, the pool has 32"), 422,
       "invalid_request_error", "context_length_exceeded"},
      {Status::Cancelled("the engine is shutting down"), 503, "unavailable_error", ""},
      {Status::NotFound("no session named 'x'"), 404, "not_found_error", ""},
      {Status::Incompatible("session 'x' was saved with another model"), 409,
       "invalid_request_error", ""},
      {Status::Internal("boom"), 500, "server_error", ""},
      {Status::IOError("disk"), 500, "server_error", ""},
  };
  for (const Case& c : cases) {
    const ApiError e = ErrorFromStatus(c.s);
    EXPECT_EQ(e.http_status, c.http) << c.s.ToString();
    EXPECT_EQ(e.type, c.type) << c.s.ToString();
    EXPECT_EQ(e.code, c.code) << c.s.ToString();
    EXPECT_EQ(e.message, c.s.message());
    const Json j = Json::parse(e.ToJson());
    EXPECT_EQ(j["error"]["message"], c.s.message());
    EXPECT_TRUE(j["error"]["param"].is_null());
  }
}

TEST(OpenAiTokenize, RoundTripPiecesAndErrors) {
  const ModelContext m = Qwen3Model();
  ApiError err;
  auto r = HandleTokenize(R"({"content":"hello there"})", m, &err);
  ASSERT_TRUE(r.ok()) << err.ToJson();
  const Json ids = Json::parse(*r)["tokens"];
  EXPECT_EQ(ids.get<std::vector<int32_t>>(), Tok().Encode("hello there", false, true));
  r = HandleTokenize(R"({"content":"hello","add_special":true})", m, &err);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(Json::parse(*r)["tokens"][0], Tok().vocab().bos_id);
  r = HandleTokenize("{\"content\":\"h\xC3\xA9\",\"with_pieces\":true}", m, &err);
  ASSERT_TRUE(r.ok());
  std::string joined;
  const Json pieces = Json::parse(*r)["tokens"];
  for (const Json& t : pieces) {
    ASSERT_TRUE(t.contains("id"));
    if (t["piece"].is_string()) {
      joined += t["piece"].get<std::string>();
    } else {
      for (const Json& b : t["piece"]) joined += static_cast<char>(b.get<int>());
    }
  }
  EXPECT_EQ(joined, " h\xC3\xA9");  // SPM's leading space

  auto d = HandleDetokenize("{\"tokens\":" + ids.dump() + "}", m, &err);
  ASSERT_TRUE(d.ok()) << err.ToJson();
  EXPECT_EQ(Json::parse(*d)["content"], Tok().Decode(ids.get<std::vector<int32_t>>(), true));

  EXPECT_FALSE(HandleTokenize(R"({"content":5})", m, &err).ok());
  EXPECT_EQ(err.param, "content");
  EXPECT_FALSE(HandleTokenize(R"({})", m, &err).ok());
  EXPECT_EQ(err.param, "content");
  EXPECT_FALSE(HandleDetokenize(R"({"tokens":[1,-1]})", m, &err).ok());
  EXPECT_EQ(err.param, "tokens[1]");
  EXPECT_FALSE(HandleDetokenize(R"({"tokens":"1"})", m, &err).ok());
  EXPECT_EQ(err.param, "tokens");
  EXPECT_FALSE(HandleDetokenize("not json", m, &err).ok());
  EXPECT_EQ(err.http_status, 400);
  ModelContext none = m;
  none.tokenizer = nullptr;
  EXPECT_FALSE(HandleTokenize(R"({"content":"x"})", none, &err).ok());
  EXPECT_EQ(err.http_status, 400);
}

TEST(OpenAiModels, ListShape) {
  const Json j = Json::parse(ModelsJson(Qwen3Model(), 1234));
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], "tiny-qwen3");
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["created"], 1234);
  EXPECT_EQ(j["data"][0]["owned_by"], "kvstash");
  EXPECT_EQ(j["data"][0]["aliases"], Json::array({"qwen3", "default"}));
}

// Random bodies built from valid pieces and garbage never crash and always answer 4xx/5xx or OK.
TEST(OpenAiChatParse, RandomMutationsNeverThrow) {
  const std::string base = Chat(
      R"(,"temperature":0.7,"stop":["a"],"max_tokens":5,"stream":true,"logprobs":true,"top_logprobs":2)");
  std::mt19937 rng(1);
  for (int i = 0; i < 3000; ++i) {
    std::string b = base;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits; ++k) {
      const size_t pos = rng() % b.size();
      switch (rng() % 3) {
        case 0:
          b[pos] = static_cast<char>(rng() % 256);
          break;
        case 1:
          b.erase(pos, 1 + rng() % 3);
          break;
        default:
          b.insert(pos, 1, "{}[]\",:0-e.\\"[rng() % 13]);
          break;
      }
      if (b.empty()) b = "{";
    }
    ApiError e;
    auto r = ParseChatCompletion(b, Qwen3Model(), &e);
    if (!r.ok()) {
      EXPECT_GE(e.http_status, 400);
      EXPECT_FALSE(e.message.empty());
    }
  }
}

}  // namespace
}  // namespace kvstash::daemon::api
