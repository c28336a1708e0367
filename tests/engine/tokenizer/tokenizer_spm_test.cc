// SentencePiece-style tokenizer: merge order by score, byte fallback, the "▁" space prefix,
// special tokens and decoding, on a small hand-built vocab and on the Llama 2 vocab fixture.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "engine/gguf/gguf.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"
#include "tests/fixtures.h"

namespace kvstash::engine {
namespace {

using Ids = std::vector<int32_t>;
constexpr int32_t kFirstPiece = 3 + 256;  // after <unk>, <s>, </s> and the byte tokens

// <unk> <s> </s> <0x00>..<0xFF>, then `pieces` (text, score) as normal tokens.
Vocab MakeSpmVocab(const std::vector<std::pair<std::string, float>>& pieces) {
  Vocab v;
  v.kind = TokenizerKind::kSpm;
  auto add = [&](std::string text, float score, TokenType type) {
    v.tokens.push_back(std::move(text));
    v.scores.push_back(score);
    v.types.push_back(type);
  };
  add("<unk>", 0, TokenType::kUnknown);
  add("<s>", 0, TokenType::kControl);
  add("</s>", 0, TokenType::kControl);
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    add(buf, 0, TokenType::kByte);
  }
  for (const auto& [text, score] : pieces) add(text, score, TokenType::kNormal);
  v.bos_id = 1;
  v.eos_id = 2;
  v.unk_id = 0;
  v.add_space_prefix = false;
  return v;
}

std::unique_ptr<Tokenizer> MustCreate(Vocab v) {
  auto t = Tokenizer::Create(std::move(v));
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

TEST(TokenizerSpmTest, HigherScorePairMergesFirst) {
  // "abc": "bc" (-1) outranks "ab" (-5); once "bc" is taken, "a"+"bc" is no token.
  auto tok = MustCreate(MakeSpmVocab({{"a", -10}, {"b", -10}, {"c", -10}, {"ab", -5}, {"bc", -1}}));
  EXPECT_EQ(tok->Encode("abc", false, false), (Ids{kFirstPiece + 0, kFirstPiece + 4}));
  auto tok2 =
      MustCreate(MakeSpmVocab({{"a", -10}, {"b", -10}, {"c", -10}, {"ab", -1}, {"bc", -5}}));
  EXPECT_EQ(tok2->Encode("abc", false, false), (Ids{kFirstPiece + 3, kFirstPiece + 2}));
}

TEST(TokenizerSpmTest, EqualScoresMergeLeftmostFirst) {
  auto tok = MustCreate(MakeSpmVocab({{"a", -10}, {"aa", -1}}));
  EXPECT_EQ(tok->Encode("aaa", false, false), (Ids{kFirstPiece + 1, kFirstPiece + 0}));
  EXPECT_EQ(tok->Encode("aaaa", false, false), (Ids{kFirstPiece + 1, kFirstPiece + 1}));
}

TEST(TokenizerSpmTest, CharactersWithoutTokensFallBackToTheirBytes) {
  auto tok = MustCreate(MakeSpmVocab({{"a", -10}}));
  // U+00E9 is C3 A9 in UTF-8; byte token <0xXX> has id 3 + XX.
  EXPECT_EQ(tok->Encode("a\xC3\xA9", false, false), (Ids{kFirstPiece, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(tok->Decode(Ids{3 + 0xC3, 3 + 0xA9}, false), "\xC3\xA9");
}

TEST(TokenizerSpmTest, SpacesBecomeSpaceMarksAndAPrefixIsAdded) {
  Vocab v = MakeSpmVocab({{"\xE2\x96\x81", -10},
                          {"a", -10},
                          {"\xE2\x96\x81"
                           "a",
                           -1}});
  v.add_space_prefix = true;
  auto tok = MustCreate(std::move(v));
  const int32_t mark_a = kFirstPiece + 2;
  EXPECT_EQ(tok->Encode("a a", false, false), (Ids{mark_a, mark_a}));
  EXPECT_EQ(tok->Encode("a", true, false), (Ids{1, mark_a}));
  EXPECT_TRUE(tok->Encode("", false, false).empty());
  // After a special token the prefix is added again, as llama.cpp does.
  EXPECT_EQ(tok->Encode("<s>a", false, true), (Ids{1, mark_a}));
  // Decode drops the prefix space again, also right after a leading BOS.
  EXPECT_EQ(tok->Decode(Ids{mark_a, mark_a}, false), "a a");
  EXPECT_EQ(tok->Decode(Ids{1, mark_a, mark_a}, false), "a a");
  EXPECT_EQ(tok->Decode(Ids{1, mark_a}, true), "<s>a");
}

TEST(TokenizerSpmTest, ControlTokenTextIsPlainTextUnlessParseSpecial) {
  auto tok = MustCreate(MakeSpmVocab({{"a", -10}}));
  EXPECT_EQ(tok->Encode("</s>", false, true), (Ids{2}));
  const Ids plain = tok->Encode("</s>", false, false);
  EXPECT_EQ(plain, (Ids{3 + '<', 3 + '/', 3 + 's', 3 + '>'}));
  EXPECT_EQ(tok->Encode("<unk>", false, true), (Ids{0}));
  EXPECT_NE(tok->Encode("<unk>", false, false), (Ids{0}));
  EXPECT_EQ(tok->TokenToPiece(2, false), "");
  EXPECT_EQ(tok->TokenToPiece(2, true), "</s>");
  EXPECT_EQ(tok->Decode(Ids{kFirstPiece, 2}, false), "a");
  EXPECT_EQ(tok->Decode(Ids{kFirstPiece, 2}, true), "a</s>");
}

TEST(TokenizerSpmTest, CreateRejectsInconsistentVocab) {
  Vocab v = MakeSpmVocab({{"a", -1}});
  v.scores.pop_back();
  EXPECT_EQ(Tokenizer::Create(v).status().code(), StatusCode::kInvalidArgument);
  Vocab w = MakeSpmVocab({{"a", -1}});
  w.bos_id = w.size();
  EXPECT_EQ(Tokenizer::Create(w).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Tokenizer::Create(Vocab{}).status().code(), StatusCode::kInvalidArgument);
}

// --- the Llama 2 vocab ---

constexpr char kLlamaSpm[] = "vocab/ggml-vocab-llama-spm.gguf";

Vocab LoadLlamaSpmVocab() {
  auto file = GgufFile::Open(testing::FixturePath(kLlamaSpm));
  EXPECT_TRUE(file.ok()) << file.status().ToString();
  auto v = Vocab::FromGguf(**file);
  EXPECT_TRUE(v.ok()) << v.status().ToString();
  return std::move(v).value();
}

TEST(TokenizerSpmTest, Llama2EncodesWithBosAndDecodesBack) {
  KV_REQUIRE_FIXTURE(kLlamaSpm);
  auto tok = MustCreate(LoadLlamaSpmVocab());
  const Ids ids = tok->Encode("Hello world", true, false);
  EXPECT_EQ(ids, (Ids{1, 15043, 3186}));
  EXPECT_EQ(tok->Decode(ids, false), "Hello world");
  EXPECT_EQ(tok->Decode(ids, true), "<s>Hello world");
  EXPECT_EQ(tok->TokenToPiece(15043, false), " Hello");
  EXPECT_EQ(tok->TokenToPiece(13, false), "\n");  // <0x0A>
  EXPECT_EQ(tok->Encode("<s>Hello</s>", false, true), (Ids{1, 15043, 2}));
  EXPECT_TRUE(tok->IsEog(2));
  EXPECT_FALSE(tok->IsEog(1));
}

TEST(TokenizerSpmTest, Llama2RoundTripsVariedUnicode) {
  KV_REQUIRE_FIXTURE(kLlamaSpm);
  auto tok = MustCreate(LoadLlamaSpmVocab());
  const std::vector<std::string> texts = {
      "plain ASCII, with punctuation!?",
      "  leading and trailing spaces  ",
      "tabs\tand\nnew\r\nlines\n\n",
      "Grüße, naïve café — ½ €",
      "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C",  // 你好，世界
      "emoji \xF0\x9F\xA6\x99\xF0\x9F\x9A\x80 and ZWJ \xF0\x9F\x98\xB6\xE2\x80\x8D\xF0\x9F\x8C\xAB",
      "int main() { return 0x1F; }  // comment",
  };
  for (const std::string& t : texts) {
    EXPECT_EQ(tok->Decode(tok->Encode(t, true, false), false), t) << t;
  }
}

// The word splitting shortcut (see tokenizer_spm.cc) must not change any token. A token with
// "▁" after another character disables it; compare against that on long mixed text.
TEST(TokenizerSpmTest, WordSplittingGivesTheSameTokensAsWholeFragmentMerging) {
  KV_REQUIRE_FIXTURE(kLlamaSpm);
  Vocab split = LoadLlamaSpmVocab();
  Vocab whole = split;
  whole.tokens.push_back("\x01\xE2\x96\x81\x01");  // never occurs in the text below
  whole.scores.push_back(-1e9f);
  whole.types.push_back(TokenType::kNormal);
  auto a = MustCreate(std::move(split));
  auto b = MustCreate(std::move(whole));
  std::string text;
  for (int i = 0; i < 40; ++i) {
    text += "The quick brown fox  jumps   over " + std::to_string(i * 7919) +
            " lazy dogs;\n\tfoo_bar(baz, \"qu ux\") -> naïve résumé 你好 \xF0\x9F\xA6\x99   ";
  }
  EXPECT_EQ(a->Encode(text, true, false), b->Encode(text, true, false));
}

TEST(TokenizerSpmTest, Stories260kVocabRoundTrips) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  auto file = GgufFile::Open(testing::FixturePath("stories260K.gguf"));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto v = Vocab::FromGguf(**file);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->size(), 512);
  auto tok = MustCreate(std::move(v).value());
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  const Ids ids = tok->Encode(text, true, false);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(tok->Decode(ids, false), text);
}

}  // namespace
}  // namespace kvstash::engine
