// RenderJinjaChat: the apply_chat_template variables it builds, and a rendering of a real tool-call
// conversation checked against jinja2 (tests/reference/jinja_reference.py, Debian's python3).
#include "engine/chat/jinja_chat.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace kvstash::engine {
namespace {

using ojson = nlohmann::ordered_json;

std::string SourceDir() {
#ifdef KVSTASH_SOURCE_DIR
  return KVSTASH_SOURCE_DIR;
#else
  return ".";
#endif
}

std::string ReadTemplate(const std::string& name) {
  std::ifstream f(SourceDir() + "/tests/engine/chat/templates/" + name, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

const ojson& Messages() {
  static const ojson m = ojson::parse(R"([
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Read main.cc"},
    {"role": "assistant", "content": "", "reasoning_content": "Need the file.",
     "tool_calls": [{"id": "abcdefghi", "type": "function",
                     "function": {"name": "read_file", "arguments": {"path": "main.cc"}}}]},
    {"role": "tool", "tool_call_id": "abcdefghi", "name": "read_file", "content": "int main() {}"},
    {"role": "user", "content": "Now explain it."}])");
  return m;
}

const ojson& Tools() {
  static const ojson t = ojson::parse(R"([{"type": "function", "function": {"name": "read_file",
      "description": "Read a file.", "parameters": {"type": "object",
      "properties": {"path": {"type": "string"}}, "required": ["path"]}}}])");
  return t;
}

TEST(JinjaChat, ContextHasApplyChatTemplateVariables) {
  JinjaChatOptions options;
  options.bos_token = "<s>";
  options.enable_thinking = false;
  options.extra_vars = {{"reasoning_effort", "low"}};
  const ojson c = MakeChatTemplateContext(Messages(), ojson::array(), options);
  EXPECT_TRUE(c["tools"].is_null());
  EXPECT_TRUE(c["documents"].is_null());
  EXPECT_EQ(c["add_generation_prompt"], true);
  EXPECT_EQ(c["bos_token"], "<s>");
  EXPECT_EQ(c["enable_thinking"], false);
  EXPECT_EQ(c["reasoning_effort"], "low");
  EXPECT_FALSE(MakeChatTemplateContext(Messages(), ojson::array(), JinjaChatOptions())
                   .contains("enable_thinking"));
}

TEST(JinjaChat, ErrorsAreStatuses) {
  EXPECT_FALSE(RenderJinjaChat("{% if %}", Messages(), nullptr, JinjaChatOptions()).ok());
  EXPECT_FALSE(RenderJinjaChat("x", ojson::object(), nullptr, JinjaChatOptions()).ok());
  auto r = RenderJinjaChat("{{ raise_exception('no') }}", Messages(), nullptr, JinjaChatOptions());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

TEST(JinjaChat, ToolConversationMatchesJinja2) {
  const char* python = "/usr/bin/python3";
  if (access(python, X_OK) != 0 ||
      std::system("/usr/bin/python3 -c 'import jinja2' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "jinja2 reference: /usr/bin/python3 with python3-jinja2 not available";
  }
  for (const char* name :
       {"Qwen-Qwen3-0.6B.jinja", "meta-llama-Llama-3.1-8B-Instruct.jinja", "Qwen3.5-4B.jinja"}) {
    const std::string source = ReadTemplate(name);
    ASSERT_FALSE(source.empty()) << name;
    JinjaChatOptions options;
    options.bos_token = "<|begin_of_text|>";
    const ojson context = MakeChatTemplateContext(Messages(), Tools(), options);
    char path[] = "/tmp/kvstash_jinja_chat_XXXXXX";
    const int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    {
      std::ofstream f(path, std::ios::binary);
      f << ojson{{"requests", {{{"template", source}, {"context", context}}}}}.dump();
    }
    close(fd);
    const std::string cmd = std::string(python) + " " + SourceDir() +
                            "/tests/reference/jinja_reference.py render < " + path;
    std::string out;
    if (FILE* p = popen(cmd.c_str(), "r")) {
      char buf[65536];
      size_t n;
      while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
      pclose(p);
    }
    unlink(path);
    const ojson ref = ojson::parse(out).at(0);
    ASSERT_TRUE(ref.at("ok").get<bool>()) << name << ": " << ref.dump();
    auto mine = RenderJinjaChat(source, Messages(), Tools(), options);
    ASSERT_TRUE(mine.ok()) << name << ": " << mine.status().message();
    EXPECT_EQ(*mine, ref.at("text").get<std::string>()) << name;
  }
}

}  // namespace
}  // namespace kvstash::engine
