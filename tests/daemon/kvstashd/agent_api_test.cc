// Coding-agent APIs end to end against a real kvstashd: tool calls and reasoning through OpenAI
// chat completions, Anthropic Messages and OpenAI Responses (streamed and not), and scripted
// 12-turn agent sessions whose prompts must stay cache-stable turn after turn.
//
// The model is a synthetic tiny-qwen3 with the real Qwen3 tokenizer and chat template
// (../shared/models/tokenizers/qwen3): its weights are random, so replies are scripted with the
// `kvstash.script` extra (--allow-scripted-replies): the daemon forces the script's tokens
// through the model (they are computed and cached like sampled ones) and parses them with the
// same output parser as any reply.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "tests/daemon/kvstashd/daemon_test_util.h"
#include "tests/fixtures.h"

namespace kvstash::daemon {
namespace {

using nlohmann::json;
using testing::FixturePath;
using testing::HaveFixture;
using testutil::Daemon;
using testutil::Http;
using testutil::HttpResult;
using testutil::Post;

constexpr int kBlockTokens = 16;
constexpr const char* kTokenizer = "tokenizers/qwen3/tokenizer.json";

// The Qwen3-tokenizer model, built once per test binary run.
std::string QwenModel() {
  static const std::string path = [] {
    const std::string out =
        (std::filesystem::temp_directory_path() / "kvstash-agent-tiny-qwen3-q8_0.gguf").string();
    if (std::filesystem::exists(out)) return out;
    const std::string tmp = out + "." + std::to_string(::getpid());
    const std::string cmd = std::string(KVSTASH_BIN_DIR) +
                            "/kvstash-mkmodel --preset tiny-qwen3 --type q8_0 --tokenizer " +
                            FixturePath(kTokenizer) + " -o " + tmp + " >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) return std::string();
    std::filesystem::rename(tmp, out);
    return out;
  }();
  return path;
}

class AgentApiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!HaveFixture(kTokenizer)) return;
    const std::string model = QwenModel();
    ASSERT_FALSE(model.empty()) << "kvstash-mkmodel failed";
    dir_ = new std::string(testutil::TestDir("agents"));
    daemon_ = new Daemon(*dir_);
    ASSERT_TRUE(daemon_->Start({"-m", model, "--cache-dir", *dir_ + "/cache", "-c", "16384",
                                "--allow-scripted-replies", "--block-tokens",
                                std::to_string(kBlockTokens)}))
        << daemon_->Log();
  }
  static void TearDownTestSuite() {
    if (daemon_ != nullptr) {
      EXPECT_EQ(daemon_->Stop(), 0);
      delete daemon_;
      delete dir_;
    }
    daemon_ = nullptr;
  }
  void SetUp() override {
    KV_REQUIRE_FIXTURE(kTokenizer);
    ASSERT_NE(daemon_, nullptr);
  }
  int port() const { return daemon_->port(); }

  static Daemon* daemon_;
  static std::string* dir_;
};
Daemon* AgentApiTest::daemon_ = nullptr;
std::string* AgentApiTest::dir_ = nullptr;

json Tools() {
  return json::array(
      {{{"type", "function"},
        {"function",
         {{"name", "read_file"},
          {"description", "Read a file of the repository"},
          {"parameters",
           {{"type", "object"},
            {"properties", {{"path", {{"type", "string"}}}, {"max_lines", {{"type", "integer"}}}}},
            {"required", {"path"}}}}}}},
       {{"type", "function"},
        {"function",
         {{"name", "grep"},
          {"description", "Search the repository"},
          {"parameters",
           {{"type", "object"},
            {"properties", {{"pattern", {{"type", "string"}}}}},
            {"required", {"pattern"}}}}}}}});
}

// Anthropic / Responses tool shapes from the OpenAI ones.
json AnthropicTools() {
  json out = json::array();
  for (const json& t : Tools()) {
    out.push_back({{"name", t["function"]["name"]},
                   {"description", t["function"]["description"]},
                   {"input_schema", t["function"]["parameters"]}});
  }
  return out;
}
json ResponsesTools() {
  json out = json::array();
  for (const json& t : Tools()) {
    out.push_back({{"type", "function"},
                   {"name", t["function"]["name"]},
                   {"description", t["function"]["description"]},
                   {"parameters", t["function"]["parameters"]}});
  }
  return out;
}

// A reply as Qwen3 writes it: reasoning, optional text, then one tool call.
std::string Script(const std::string& reasoning, const std::string& name, const json& args,
                   const std::string& text = "") {
  return "<think>\n" + reasoning + "\n</think>\n\n" + (text.empty() ? "" : text + "\n") +
         "<tool_call>\n{\"name\": \"" + name + "\", \"arguments\": " + args.dump() +
         "}\n</tool_call>";
}

TEST_F(AgentApiTest, ChatCompletionsToolCallsStreamedAndNotAgree) {
  const json args = {{"path", "src/main.cc"}, {"max_lines", 40}};
  json body = {
      {"model", "anything"},
      {"messages", {{{"role", "user"}, {"content", "Where is main? 你好 🚀"}}}},
      {"tools", Tools()},
      {"max_tokens", 200},
      {"kvstash", {{"script", Script("I need main.", "read_file", args, "Let me look.")}}}};
  HttpResult r = Post(port(), "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.Json();
  const json& msg = j["choices"][0]["message"];
  EXPECT_EQ(j["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(msg["reasoning_content"], "I need main.") << msg.dump();
  ASSERT_EQ(msg["tool_calls"].size(), 1u) << msg.dump();
  EXPECT_EQ(msg["tool_calls"][0]["function"]["name"], "read_file");
  EXPECT_EQ(json::parse(msg["tool_calls"][0]["function"]["arguments"].get<std::string>()), args);
  EXPECT_TRUE(msg["tool_calls"][0]["id"].get<std::string>().starts_with("call_"));

  body["stream"] = true;
  r = Post(port(), "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200);
  std::string reasoning, content, arguments, name, finish;
  for (const json& e : testutil::SseEvents(r.body)) {
    if (!e.is_object()) continue;
    const json& d = e["choices"][0]["delta"];
    if (d.contains("reasoning_content")) reasoning += d["reasoning_content"].get<std::string>();
    if (d.contains("content") && d["content"].is_string()) content += d["content"];
    if (d.contains("tool_calls")) {
      const json& c = d["tool_calls"][0];
      EXPECT_EQ(c["index"], 0);
      if (c["function"].contains("name")) name = c["function"]["name"];
      arguments += c["function"]["arguments"].get<std::string>();
    }
    if (e["choices"][0]["finish_reason"].is_string()) finish = e["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(reasoning, msg["reasoning_content"]);
  EXPECT_EQ(content, msg["content"].is_string() ? msg["content"].get<std::string>() : "");
  EXPECT_EQ(name, "read_file");
  EXPECT_EQ(json::parse(arguments), args);
  EXPECT_EQ(finish, "tool_calls");
}

TEST_F(AgentApiTest, ToolMessagesRenderAndToolChoiceRequiredForcesACall) {
  json body = {{"messages",
                {{{"role", "user"}, {"content", "grep for TODO"}},
                 {{"role", "assistant"},
                  {"content", nullptr},
                  {"tool_calls",
                   {{{"id", "call_1"},
                     {"type", "function"},
                     {"function", {{"name", "grep"}, {"arguments", "{\"pattern\": \"TODO\"}"}}}}}}},
                 {{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "src/a.cc:3: TODO"}}}},
               {"tools", Tools()},
               {"tool_choice", {{"type", "function"}, {"function", {{"name", "read_file"}}}}},
               {"max_tokens", 24},
               {"temperature", 0}};
  HttpResult r = Post(port(), "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body;
  // The reply opens with the forced call markup; the random model does not finish the call
  // within 24 tokens, so the unterminated call degrades to text that names read_file.
  const std::string content = r.Json()["choices"][0]["message"]["content"];
  EXPECT_NE(content.find("read_file"), std::string::npos) << r.body;
  // Unsupported role and malformed tool calls are 400 naming the field.
  json bad = body;
  bad["messages"][2].erase("tool_call_id");
  r = Post(port(), "/v1/chat/completions", bad);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.Json()["error"]["param"], "messages[2].tool_call_id") << r.body;
}

TEST_F(AgentApiTest, AnthropicMessagesFollowTheEventSequence) {
  EXPECT_EQ(Http(port(), "HEAD", "/").status, 200);
  EXPECT_EQ(Http(port(), "GET", "/").status, 200);
  const json args = {{"pattern", "main("}};
  json body = {{"model", "claude-sonnet-4-5"},
               {"max_tokens", 200},
               {"system",
                {{{"type", "text"},
                  {"text", "You are a coding agent."},
                  {"cache_control", {{"type", "ephemeral"}}}}}},
               {"messages", {{{"role", "user"}, {"content", "Find main"}}}},
               {"tools", AnthropicTools()},
               {"metadata", {{"user_id", "user_abc_session_1"}}},
               {"kvstash", {{"script", Script("Search first.", "grep", args, "I will search.")}}}};
  HttpResult r = Post(port(), "/v1/messages", body);
  ASSERT_EQ(r.status, 200) << r.body;
  json m = r.Json();
  EXPECT_EQ(m["type"], "message");
  EXPECT_EQ(m["model"], "claude-sonnet-4-5");
  EXPECT_EQ(m["stop_reason"], "tool_use");
  ASSERT_EQ(m["content"].size(), 3u) << m.dump();
  EXPECT_EQ(m["content"][0]["type"], "thinking");
  EXPECT_EQ(m["content"][0]["thinking"], "Search first.");
  EXPECT_EQ(m["content"][1]["type"], "text");
  EXPECT_EQ(m["content"][2]["type"], "tool_use");
  EXPECT_EQ(m["content"][2]["name"], "grep");
  EXPECT_EQ(m["content"][2]["input"], args);
  const json& u = m["usage"];
  EXPECT_EQ(u["input_tokens"].get<int>() + u["cache_read_input_tokens"].get<int>() +
                u["cache_creation_input_tokens"].get<int>(),
            Post(port(), "/v1/messages/count_tokens", body).Json()["input_tokens"].get<int>());

  body["stream"] = true;
  r = Post(port(), "/v1/messages", body);
  ASSERT_EQ(r.status, 200);
  std::vector<std::string> names;
  std::string line;
  std::istringstream in(r.body);
  while (std::getline(in, line)) {
    if (line.rfind("event: ", 0) == 0) names.push_back(line.substr(7));
  }
  const std::vector<json> data = testutil::SseEvents(r.body);
  ASSERT_EQ(names.size(), data.size());
  ASSERT_GE(names.size(), 5u);
  EXPECT_EQ(names.front(), "message_start");
  EXPECT_EQ(names[names.size() - 2], "message_delta");
  EXPECT_EQ(names.back(), "message_stop");
  // Blocks open and close in order, one at a time, and the deltas rebuild the non-streamed body.
  int open = -1, next = 0;
  json blocks = json::array();
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(data[i]["type"], names[i]);
    if (names[i] == "content_block_start") {
      EXPECT_EQ(open, -1) << "a block opened before the previous one closed";
      EXPECT_EQ(data[i]["index"], next);
      open = next++;
      blocks.push_back(data[i]["content_block"]);
    } else if (names[i] == "content_block_delta") {
      ASSERT_EQ(data[i]["index"], open);
      const json& d = data[i]["delta"];
      json& b = blocks[open];
      if (d["type"] == "text_delta")
        b["text"] = b["text"].get<std::string>() + d["text"].get<std::string>();
      if (d["type"] == "thinking_delta") {
        b["thinking"] = b["thinking"].get<std::string>() + d["thinking"].get<std::string>();
      }
      if (d["type"] == "input_json_delta") {
        b["partial"] = b.value("partial", "") + d["partial_json"].get<std::string>();
      }
    } else if (names[i] == "content_block_stop") {
      EXPECT_EQ(data[i]["index"], open);
      open = -1;
    } else if (names[i] == "message_delta") {
      EXPECT_EQ(data[i]["delta"]["stop_reason"], "tool_use");
      EXPECT_GT(data[i]["usage"]["output_tokens"].get<int>(), 0);
    }
  }
  EXPECT_EQ(open, -1);
  ASSERT_EQ(blocks.size(), 3u);
  EXPECT_EQ(blocks[0]["thinking"], m["content"][0]["thinking"]);
  EXPECT_EQ(blocks[1]["text"], m["content"][1]["text"]);
  EXPECT_EQ(json::parse(blocks[2]["partial"].get<std::string>()), args);

  // Errors in Anthropic's shape.
  r = Post(port(), "/v1/messages", json{{"model", "x"}, {"messages", json::array()}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.Json()["type"], "error");
  EXPECT_EQ(r.Json()["error"]["type"], "invalid_request_error") << r.body;
}

TEST_F(AgentApiTest, ResponsesStreamThroughCompletedWithFunctionCalls) {
  const json args = {{"path", "README.md"}};
  json body = {
      {"model", "gpt-5-codex"},
      {"instructions", "You are Codex."},
      {"input",
       {{{"role", "user"}, {"content", {{{"type", "input_text"}, {"text", "Read the README"}}}}},
        {{"type", "function_call"},
         {"call_id", "call_a"},
         {"name", "grep"},
         {"arguments", "{\"pattern\":\"x\"}"}},
        {{"type", "function_call_output"}, {"call_id", "call_a"}, {"output", "no match"}}}},
      {"tools", ResponsesTools()},
      {"prompt_cache_key", "codex-session-7"},
      {"max_output_tokens", 200},
      {"kvstash", {{"script", Script("Read it.", "read_file", args)}}}};
  HttpResult r = Post(port(), "/v1/responses", body);
  ASSERT_EQ(r.status, 200) << r.body;
  json resp = r.Json();
  EXPECT_EQ(resp["object"], "response");
  EXPECT_EQ(resp["status"], "completed");
  json call;
  for (const json& item : resp["output"]) {
    if (item["type"] == "function_call") call = item;
  }
  ASSERT_TRUE(call.is_object()) << resp.dump();
  EXPECT_EQ(call["name"], "read_file");
  EXPECT_EQ(json::parse(call["arguments"].get<std::string>()), args);

  body["stream"] = true;
  r = Post(port(), "/v1/responses", body);
  ASSERT_EQ(r.status, 200);
  const std::vector<json> events = testutil::SseEvents(r.body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.front()["type"], "response.created");
  EXPECT_EQ(events.back()["type"], "response.completed");
  std::string streamed_args;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i]["sequence_number"], i);
    if (events[i]["type"] == "response.function_call_arguments.delta") {
      streamed_args += events[i]["delta"].get<std::string>();
    }
  }
  EXPECT_EQ(json::parse(streamed_args), args);
  EXPECT_EQ(events.back()["response"]["output"].size(), resp["output"].size());

  body["previous_response_id"] = "resp_1";
  r = Post(port(), "/v1/responses", body);
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.Json()["error"]["param"], "previous_response_id");
}

// ---- cache stability over scripted agent sessions
// ------------------------------------------------

// A deterministic "repository" of about `n_lines` lines of C++-looking text.
std::string RepoContext(int n_lines) {
  std::mt19937 rng(1234);
  static const char* kWords[] = {"int",    "return", "auto",   "std::vector", "const",
                                 "if",     "for",    "buffer", "index",       "size_t",
                                 "status", "block",  "cache",  "page"};
  std::string s = "# Repository context\n";
  for (int i = 0; i < n_lines; ++i) {
    s += "src/file_" + std::to_string(i % 7) + ".cc:" + std::to_string(i) + ": ";
    for (int w = 0; w < 8; ++w) s += std::string(kWords[rng() % 14]) + " ";
    s += "\n";
  }
  return s;
}

struct Turn {
  int prompt = 0, cached = 0, generated = 0;
};

// One scripted session of `turns` turns: the agent calls a tool each turn (with reasoning) and
// answers in the last; `send` performs a turn through one API and returns its usage.
struct TraceStep {
  std::string script;
  std::string tool_name;
  json args;
  std::string result;
};

std::vector<TraceStep> MakeTrace(int turns) {
  std::vector<TraceStep> steps;
  for (int i = 0; i < turns; ++i) {
    TraceStep s;
    if (i + 1 == turns) {
      s.script = "<think>\nI have what I need.\n</think>\n\nThe bug is in src/file_3.cc line 42.";
    } else if (i % 3 == 2) {
      s.tool_name = "grep";
      s.args = {{"pattern", "cache_" + std::to_string(i)}};
    } else {
      s.tool_name = "read_file";
      s.args = {{"path", "src/file_" + std::to_string(i % 7) + ".cc"}, {"max_lines", 30 + i}};
    }
    if (!s.tool_name.empty()) {
      s.script = Script("Turn " + std::to_string(i) + ": check " + s.args.begin()->dump(),
                        s.tool_name, s.args);
      s.result = RepoContext(6 + i).substr(0, 300 + 20 * i);
    }
    steps.push_back(std::move(s));
  }
  return steps;
}

void CheckStable(const std::string& api, const std::vector<Turn>& t) {
  std::printf("%s: turn prompt cached prefilled generated new bound\n", api.c_str());
  for (size_t i = 0; i < t.size(); ++i) {
    const int prefilled = t[i].prompt - t[i].cached;
    const int fresh = i == 0 ? t[i].prompt : t[i].prompt - t[i - 1].prompt - t[i - 1].generated;
    const int bound = fresh + kBlockTokens + 8;
    std::printf("%s: %4zu %6d %6d %9d %9d %5d %5d\n", api.c_str(), i, t[i].prompt, t[i].cached,
                prefilled, t[i].generated, fresh, bound);
    if (i > 0) {
      EXPECT_LE(prefilled, bound) << api << " turn " << i;
    }
  }
}

const std::string kSystem = "You are a careful coding agent. Use the tools.\n\n";

TEST_F(AgentApiTest, AgentSessionsStayCacheStableThroughEveryApi) {
  const std::string repo = RepoContext(220);
  const std::vector<TraceStep> trace = MakeTrace(12);

  // OpenAI chat completions.
  {
    json messages = {{{"role", "system"}, {"content", kSystem + repo + "\n[chat]"}},
                     {{"role", "user"}, {"content", "Find the cache bug."}}};
    std::vector<Turn> turns;
    for (const TraceStep& s : trace) {
      HttpResult r = Post(port(), "/v1/chat/completions",
                          {{"messages", messages},
                           {"tools", Tools()},
                           {"max_tokens", 300},
                           {"kvstash", {{"script", s.script}}}});
      ASSERT_EQ(r.status, 200) << r.body;
      const json j = r.Json();
      turns.push_back({j["usage"]["prompt_tokens"],
                       j["usage"]["prompt_tokens_details"]["cached_tokens"],
                       j["usage"]["completion_tokens"]});
      json msg = j["choices"][0]["message"];
      messages.push_back(msg);
      if (!s.tool_name.empty()) {
        ASSERT_EQ(msg["tool_calls"][0]["function"]["name"], s.tool_name);
        messages.push_back({{"role", "tool"},
                            {"tool_call_id", msg["tool_calls"][0]["id"]},
                            {"content", s.result}});
      }
    }
    CheckStable("chat", turns);
  }
  // Anthropic Messages, with Claude Code's volatile billing header in the first system block.
  {
    json messages = {{{"role", "user"}, {"content", "Find the cache bug."}}};
    std::vector<Turn> turns;
    std::mt19937 rng(99);
    for (const TraceStep& s : trace) {
      char cch[16];
      std::snprintf(cch, sizeof(cch), "%05x", static_cast<unsigned>(rng() & 0xfffff));
      json system = {{{"type", "text"},
                      {"text", std::string("x-anthropic-billing-header: cc_version=2.0.14; "
                                           "cc_entrypoint=cli; cch=") +
                                   cch + ";"}},
                     {{"type", "text"}, {"text", kSystem + repo + "\n[messages]"}}};
      HttpResult r = Post(port(), "/v1/messages",
                          {{"model", "claude"},
                           {"max_tokens", 300},
                           {"system", system},
                           {"messages", messages},
                           {"tools", AnthropicTools()},
                           {"kvstash", {{"script", s.script}}}});
      ASSERT_EQ(r.status, 200) << r.body;
      const json j = r.Json();
      const json& u = j["usage"];
      turns.push_back({u["input_tokens"].get<int>() + u["cache_read_input_tokens"].get<int>() +
                           u["cache_creation_input_tokens"].get<int>(),
                       u["cache_read_input_tokens"], u["output_tokens"]});
      // kvstash's own figures ride beside Anthropic's: the same cached count, and prefilled =
      // the prompt positions not served from the cache.
      ASSERT_TRUE(u.contains("kvstash")) << u.dump();
      EXPECT_EQ(u["kvstash"]["cached_tokens"], u["cache_read_input_tokens"]);
      EXPECT_EQ(u["kvstash"]["prefilled_tokens"].get<int>(),
                u["input_tokens"].get<int>() + u["cache_creation_input_tokens"].get<int>());
      EXPECT_GE(u["kvstash"]["prefill_ms"].get<double>(), 0.0);
      messages.push_back({{"role", "assistant"}, {"content", j["content"]}});
      if (!s.tool_name.empty()) {
        std::string id;
        for (const json& b : j["content"]) {
          if (b["type"] == "tool_use") id = b["id"];
        }
        ASSERT_FALSE(id.empty()) << j.dump();
        messages.push_back(
            {{"role", "user"},
             {"content", {{{"type", "tool_result"}, {"tool_use_id", id}, {"content", s.result}}}}});
      }
    }
    CheckStable("messages", turns);
  }
  // OpenAI Responses.
  {
    json input = {{{"role", "user"}, {"content", "Find the cache bug."}}};
    std::vector<Turn> turns;
    for (const TraceStep& s : trace) {
      HttpResult r = Post(port(), "/v1/responses",
                          {{"instructions", kSystem + repo + "\n[responses]"},
                           {"input", input},
                           {"tools", ResponsesTools()},
                           {"max_output_tokens", 300},
                           {"kvstash", {{"script", s.script}}}});
      ASSERT_EQ(r.status, 200) << r.body;
      const json j = r.Json();
      turns.push_back({j["usage"]["input_tokens"],
                       j["usage"]["input_tokens_details"]["cached_tokens"],
                       j["usage"]["output_tokens"]});
      std::string call_id;
      for (const json& item : j["output"]) {
        json copy = item;
        if (item["type"] == "function_call") call_id = item["call_id"];
        input.push_back(copy);
      }
      if (!s.tool_name.empty()) {
        ASSERT_FALSE(call_id.empty()) << j.dump();
        input.push_back(
            {{"type", "function_call_output"}, {"call_id", call_id}, {"output", s.result}});
      }
    }
    CheckStable("responses", turns);
  }
}

}  // namespace
}  // namespace kvstash::daemon
