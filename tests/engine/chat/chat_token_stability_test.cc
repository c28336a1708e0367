// Prefix stability in tokens, the property the prefix cache depends on: the tokens of the prompt
// sent at turn N are a prefix of the tokens of the prompt at turn N+1 (after the assistant's answer
// and a new user message are appended), for the real Llama 3 and Qwen3 tokenizers and templates.
// The documented exception (docs/chat-templates.md): Qwen3 with enable_thinking=false adds an
// empty <think></think> block to the generation prompt that later turns do not repeat.
#include <gtest/gtest.h>

#include "engine/chat/chat_template.h"
#include "engine/tokenizer/hf_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/fixtures.h"

namespace kvstash::engine {
namespace {

struct ChatSetup {
  std::unique_ptr<Tokenizer> tok;
  ChatTemplate tmpl;
};

ChatSetup Load(const std::string& family) {
  ChatSetup s;
  auto vocab = LoadHfVocab(testing::FixturePath("tokenizers/" + family + "/tokenizer.json"));
  EXPECT_TRUE(vocab.ok()) << vocab.status().ToString();
  auto tmpl = DetectChatTemplate(vocab->chat_template);
  EXPECT_TRUE(tmpl.ok()) << tmpl.status().ToString();
  s.tmpl = *tmpl;
  auto tok = Tokenizer::Create(std::move(*vocab));
  EXPECT_TRUE(tok.ok());
  s.tok = std::move(*tok);
  return s;
}

std::vector<int32_t> PromptTokens(const ChatSetup& s, const std::vector<ChatMessage>& msgs,
                                  std::optional<bool> thinking) {
  ChatOptions o;
  o.add_generation_prompt = true;
  o.enable_thinking = thinking;
  const Vocab& v = s.tok->vocab();
  if (v.bos_id >= 0) o.bos_token = s.tok->TokenToPiece(v.bos_id, true);
  if (v.eos_id >= 0) o.eos_token = s.tok->TokenToPiece(v.eos_id, true);
  auto text = RenderChat(s.tmpl, msgs, o);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return s.tok->Encode(*text, /*add_bos=*/false, /*parse_special=*/true);
}

bool IsPrefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  return a.size() <= b.size() && std::equal(a.begin(), a.end(), b.begin());
}

const std::vector<ChatMessage> kConversation = {
    {"system",
     "You are a careful coding assistant. The repository is below.\n```cpp\nint main() {}\n```"},
    {"user", "What does main do?"},
    {"assistant", "It returns 0 immediately."},
    {"user", "Add a log line, please. Use spdlog::info(\"start\");"},
    {"assistant", "```cpp\nint main() {\n  spdlog::info(\"start\");\n}\n```"},
    {"user", "Thanks! Now explain   whitespace\t\tand ünïcödé 日本語."},
    {"assistant", "Sure."},
    {"user", "Last question?"},
};

void CheckEveryTurn(const ChatSetup& s, std::optional<bool> thinking, bool expect_stable) {
  int breaks = 0;
  for (size_t n = 2; n + 2 <= kConversation.size(); n += 2) {
    std::vector<ChatMessage> turn(kConversation.begin(), kConversation.begin() + n);
    std::vector<ChatMessage> next(kConversation.begin(), kConversation.begin() + n + 2);
    const bool prefix = IsPrefix(PromptTokens(s, turn, thinking), PromptTokens(s, next, thinking));
    if (expect_stable) {
      EXPECT_TRUE(prefix) << "turn of " << n << " messages";
    }
    breaks += !prefix;
  }
  if (!expect_stable) {
    EXPECT_GT(breaks, 0);
  }
}

TEST(ChatTokenStabilityTest, Llama3PromptOfTurnNPrefixesTurnNPlus1) {
  KV_REQUIRE_FIXTURE("tokenizers/llama3/tokenizer.json");
  CheckEveryTurn(Load("llama3"), std::nullopt, true);
}

TEST(ChatTokenStabilityTest, Qwen3PromptOfTurnNPrefixesTurnNPlus1) {
  KV_REQUIRE_FIXTURE("tokenizers/qwen3/tokenizer.json");
  ChatSetup s = Load("qwen3");
  CheckEveryTurn(s, std::nullopt, true);
  CheckEveryTurn(s, true, true);
}

TEST(ChatTokenStabilityTest, Qwen3ThinkingOffIsTheDocumentedException) {
  KV_REQUIRE_FIXTURE("tokenizers/qwen3/tokenizer.json");
  CheckEveryTurn(Load("qwen3"), false, false);
}

}  // namespace
}  // namespace kvstash::engine
