// The conversation layer shared by the chat APIs (daemon/kvstashd/api/conversation.h): the
// volatile-fragment normalization, the token-replay store and splicing, on the real Qwen3
// tokenizer and chat template (../shared/models/tokenizers/qwen3).
#include "daemon/kvstashd/api/conversation.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <span>
#include <string>

#include "daemon/kvstashd/api/openai.h"
#include "engine/chat/jinja/template.h"
#include "engine/tokenizer/hf_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/fixtures.h"

namespace kvstash::daemon::api {
namespace {

constexpr const char* kTokenizer = "tokenizers/qwen3/tokenizer.json";

TEST(ConversationTest, StripVolatileRemovesOnlyTheBillingHeaderLines) {
  std::string s =
      "x-anthropic-billing-header: cc_version=2.0.14; cc_entrypoint=cli; cch=1a2b3;\n"
      "You are Claude Code.\nmention x-anthropic-billing-header: inside a line stays\n";
  EXPECT_EQ(StripVolatile(&s), 77);
  EXPECT_EQ(s, "You are Claude Code.\nmention x-anthropic-billing-header: inside a line stays\n");
  std::string last = "intro\nx-anthropic-billing-header: cch=9;";
  StripVolatile(&last);
  EXPECT_EQ(last, "intro\n");
  std::string none = "nothing volatile";
  EXPECT_EQ(StripVolatile(&none), 0);
}

TEST(ConversationTest, ReplayKeyIgnoresArgumentSpacingKeyOrderAndEdgeWhitespace) {
  Message a{"assistant", "\nDone.\n", "thinking", {{"c1", "f", R"({"b": 1, "a": [1, 2]})"}},
            "",          ""};
  Message b{"assistant", "Done.", "", {{"other-id", "f", R"({"a":[1,2],"b":1})"}}, "", ""};
  EXPECT_EQ(TokenReplay::KeyOf(a), TokenReplay::KeyOf(b));
  b.tool_calls[0].arguments = R"({"a":[1,2],"b":2})";
  EXPECT_NE(TokenReplay::KeyOf(a), TokenReplay::KeyOf(b));
  b.tool_calls[0].arguments = R"({"a":[1,2],"b":1})";
  b.content = "Done!";
  EXPECT_NE(TokenReplay::KeyOf(a), TokenReplay::KeyOf(b));
  // Arguments with a NUL after the object (a "\u0000" in the request) are not that object.
  b.content = "Done.";
  b.tool_calls[0].arguments = R"({"a":[1,2],"b":1})" + std::string(1, '\0') + "junk";
  EXPECT_NE(TokenReplay::KeyOf(a), TokenReplay::KeyOf(b));
}

TEST(ConversationTest, ReplayStoreIsABoundedLru) {
  TokenReplay r(/*capacity_bytes=*/200);
  r.Remember("k1", {"text one", {1, 2, 3}, {}});
  r.Remember("k2", {"text two", {4, 5}, {}});
  ASSERT_TRUE(r.Find("k1").has_value());  // k1 is now the most recent
  r.Remember("k3", {std::string(170, 'x'), {6}, {}});
  EXPECT_TRUE(r.Find("k1").has_value());
  EXPECT_FALSE(r.Find("k2").has_value()) << "the least recently used entry goes first";
  EXPECT_TRUE(r.Find("k3").has_value());
  r.Remember("huge", {std::string(1000, 'y'), {7}, {}});
  EXPECT_FALSE(r.Find("huge").has_value()) << "an entry larger than the store is not kept";
}

class ConversationQwenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KV_REQUIRE_FIXTURE(kTokenizer);
    auto vocab = engine::LoadHfVocab(testing::FixturePath(kTokenizer));
    ASSERT_TRUE(vocab.ok()) << vocab.status().ToString();
    source_ = vocab->chat_template;
    ASSERT_FALSE(source_.empty());
    auto tok = engine::Tokenizer::Create(std::move(*vocab));
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tok_ = std::move(*tok);
    auto t = engine::jinja::Template::Parse(source_);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    model_.tokenizer = tok_.get();
    model_.jinja = std::make_shared<const engine::jinja::Template>(std::move(*t));
    model_.tool_format = engine::DetectToolCallFormat(source_);
    model_.reasoning = true;
    model_.template_prints_string_arguments =
        source_.find("arguments is string") != std::string::npos;
    model_.replay = std::make_shared<TokenReplay>();
    model_.n_ctx = 8192;
  }

  Conversation Conv(const std::string& args) const {
    Conversation c;
    c.messages = {{"system", "You are a coding agent.", "", {}, "", ""},
                  {"user", "Read the main file.", "", {}, "", ""},
                  {"assistant", "", "I should read it.", {{"call_1", "read_file", args}}, "", ""},
                  {"tool", "int main() { return 0; }", "", {}, "call_1", "read_file"}};
    c.tools = nlohmann::ordered_json::parse(
        R"([{"type":"function","function":{"name":"read_file","parameters":{"type":"object",
        "properties":{"path":{"type":"string"},"max_lines":{"type":"integer"}}}}}])");
    return c;
  }

  std::string source_;
  std::unique_ptr<engine::Tokenizer> tok_;
  ModelContext model_;
};

// The ids a model generated for a turn need not be the canonical tokenization of its text: the
// prompt must reuse them (so the cache, which holds their KV, keeps matching), and still decode
// to exactly the rendered text. A client that re-serializes the arguments still matches.
TEST_F(ConversationQwenTest, ReplaySplicesTheGeneratedIdsAndTheOriginalArguments) {
  ASSERT_EQ(model_.tool_format, engine::ToolCallFormat::kHermesJson);
  ASSERT_TRUE(model_.template_prints_string_arguments);
  // Compact JSON, as some models write it: tojson would print it with spaces.
  const std::string generated_args = R"({"path":"src/main.cc","max_lines":40})";
  const std::string generated =
      "<think>\nI should read it.\n</think>\n\n<tool_call>\n"
      "{\"name\": \"read_file\", \"arguments\": " +
      generated_args + "}\n</tool_call>";
  // A non-canonical tokenization: the text encoded in small pieces.
  std::vector<int32_t> ids;
  for (size_t i = 0; i < generated.size(); i += 3) {
    auto part = tok_->Encode(generated.substr(i, 3), false, /*parse_special=*/true);
    ids.insert(ids.end(), part.begin(), part.end());
  }
  std::string text;
  for (int32_t id : ids) text += tok_->TokenToPiece(id, true);
  ASSERT_EQ(text, generated);

  // Without a remembered reply: canonical tokenization.
  auto plain = RenderConversation(Conv(R"({"max_lines":40,"path":"src/main.cc"})"), model_);
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_EQ(plain->replayed_tokens, 0);

  Message reply = Conv(generated_args).messages[2];
  model_.replay->Remember(TokenReplay::KeyOf(reply), {generated, ids, {generated_args}});
  // The client sends the call back with other key order and spacing.
  auto spliced = RenderConversation(Conv(R"({"max_lines": 40, "path": "src/main.cc"})"), model_);
  ASSERT_TRUE(spliced.ok()) << spliced.status().ToString();
  EXPECT_EQ(spliced->replayed_tokens, static_cast<int>(ids.size()));
  EXPECT_NE(spliced->text.find(generated), std::string::npos)
      << spliced->text << "the template printed the original argument bytes";
  EXPECT_EQ(tok_->Decode(spliced->tokens, /*render_special=*/true), spliced->text);
  // The ids appear verbatim in the prompt.
  auto it = std::search(spliced->tokens.begin(), spliced->tokens.end(), ids.begin(), ids.end());
  EXPECT_NE(it, spliced->tokens.end());
  // Everything before the spliced turn is tokenized as without replay.
  const size_t before = static_cast<size_t>(it - spliced->tokens.begin());
  ASSERT_LE(before, plain->tokens.size());
  EXPECT_TRUE(std::equal(spliced->tokens.begin(), it, plain->tokens.begin()));
}

// Message starts (RenderedPrompt::message_starts, the scheduler's snapshot hints for hybrid
// models): in Qwen3's template every message opens with "<|im_start|>ROLE\n", and each start is
// right after that header of the 2nd, 3rd and 4th message (Qwen3 renders the assistant turn
// differently when it is last, so a prefix rendering would put the last start inside it). A
// conversation whose last message is replaced has the same starts and the same tokens up to the
// last one.
TEST_F(ConversationQwenTest, MessageStartsAreWhereEachLaterMessageOpens) {
  Conversation c;
  c.messages = {{"system", "You are helpful.", "", {}, "", ""},
                {"user", "Hello there, how are you today?", "", {}, "", ""},
                {"assistant", "Fine, thanks. How can I help?", "", {}, "", ""},
                {"user", "Tell me a joke about compilers.", "", {}, "", ""}};
  EXPECT_TRUE(RenderConversation(c, model_)->message_starts.empty()) << "off unless asked for";
  model_.message_starts = true;  // a hybrid model's daemon
  auto r = RenderConversation(c, model_);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->message_starts.size(), 3u);
  const std::vector<int32_t> im_start = tok_->Encode("<|im_start|>", false, /*parse_special=*/true);
  ASSERT_EQ(im_start.size(), 1u);
  for (size_t k = 0; k < 3; ++k) {
    const int s = r->message_starts[k];
    const std::string before =
        tok_->Decode(std::span<const int32_t>(r->tokens.data(), static_cast<size_t>(s)),
                     /*render_special=*/true);
    const std::string& role = c.messages[k + 1].role;
    EXPECT_TRUE(before.ends_with("<|im_start|>" + role + "\n")) << k << ": " << before;
    EXPECT_EQ(std::count(r->tokens.begin(), r->tokens.begin() + s, im_start[0]),
              static_cast<long>(k + 2));
  }

  Conversation other = c;
  other.messages[3].content = "Summarize the last message instead, please.";
  auto r2 = RenderConversation(other, model_);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->message_starts, r->message_starts);
  const int last = r->message_starts.back();
  const auto diff =
      std::mismatch(r->tokens.begin(), r->tokens.end(), r2->tokens.begin(), r2->tokens.end());
  EXPECT_EQ(diff.first - r->tokens.begin(), last) << "they differ from the last message's content";

  // Only the last kMaxMessageStarts messages get a start.
  for (int i = 0; i < 6; ++i) {
    c.messages.push_back(
        {i % 2 ? "user" : "assistant", "turn " + std::to_string(i), "", {}, "", ""});
  }
  auto many = RenderConversation(c, model_);
  ASSERT_TRUE(many.ok());
  EXPECT_EQ(many->message_starts.size(), kMaxMessageStarts);
}

TEST_F(ConversationQwenTest, ToolChoiceRequiredAndNamedForceTheCallOpening) {
  Conversation c = Conv("{}");
  c.tool_choice = ToolChoice::kNamed;
  c.tool_choice_name = "read_file";
  auto r = RenderConversation(c, model_);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->forced_text, "<tool_call>\n{\"name\": \"read_file\", \"arguments\": ");
  EXPECT_EQ(tok_->Decode(r->forced, true), r->forced_text);
  c.tool_choice = ToolChoice::kNone;
  r = RenderConversation(c, model_);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->forced.empty());
  EXPECT_EQ(ParserOptionsFor(c, model_, *r).format, engine::ToolCallFormat::kNone);
}

}  // namespace
}  // namespace kvstash::daemon::api
