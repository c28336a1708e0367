// The hand-written pre-tokenizer scanners: each regex family splits as its regex would, and every
// split tiles its input exactly.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "engine/tokenizer/unicode.h"
#include "engine/tokenizer/unicode_split.h"

namespace kvstash::engine {
namespace {

using Pieces = std::vector<std::string>;

Pieces Split(PreTokenizer kind, std::string_view text) {
  std::vector<ByteRange> ranges;
  PreTokenize(kind, text, &ranges);
  Pieces out;
  for (const auto& [b, e] : ranges) out.emplace_back(text.substr(b, e - b));
  return out;
}

TEST(PreTokenizerTest, Gpt2) {
  const auto k = PreTokenizer::kGpt2;
  EXPECT_EQ(Split(k, "Hello world"), (Pieces{"Hello", " world"}));
  EXPECT_EQ(Split(k, "I've 'RE"), (Pieces{"I", "'ve", " '", "RE"}));  // case-sensitive
  EXPECT_EQ(Split(k, "  x"), (Pieces{" ", " x"}));                    // \s+(?!\S)
  EXPECT_EQ(Split(k, "a  "), (Pieces{"a", "  "}));                    // trailing run stays whole
  EXPECT_EQ(Split(k, "12345 67"), (Pieces{"12345", " 67"}));
  EXPECT_EQ(Split(k, "a+=b;\n"), (Pieces{"a", "+=", "b", ";", "\n"}));
  EXPECT_EQ(Split(k, "\xFF\xFE!"), (Pieces{"\xFF\xFE!"}));  // invalid bytes are "other"
  EXPECT_TRUE(Split(k, "").empty());
}

TEST(PreTokenizerTest, Llama3) {
  const auto k = PreTokenizer::kLlama3;
  EXPECT_EQ(Split(k, "12345"), (Pieces{"123", "45"}));
  EXPECT_EQ(Split(k, "We'RE a'lL"), (Pieces{"We", "'RE", " a", "'lL"}));  // case-insensitive
  EXPECT_EQ(Split(k, "\n\n  x"), (Pieces{"\n\n", " ", " x"}));
  EXPECT_EQ(Split(k, "(hello"), (Pieces{"(hello"}));  // [^\r\n\p{L}\p{N}]?\p{L}+
  EXPECT_EQ(Split(k, " {}\n\nx"), (Pieces{" {}\n\n", "x"}));
  EXPECT_EQ(Split(k, "\t\tif"), (Pieces{"\t", "\tif"}));
  EXPECT_EQ(Split(k, "x  \n y"), (Pieces{"x", "  \n", " y"}));
}

TEST(PreTokenizerTest, Qwen2SplitsDigitsOneByOne) {
  EXPECT_EQ(Split(PreTokenizer::kQwen2, "a123"), (Pieces{"a", "1", "2", "3"}));
  EXPECT_EQ(Split(PreTokenizer::kQwen2, "x=42;"), (Pieces{"x", "=", "4", "2", ";"}));
}

TEST(PreTokenizerTest, StarCoderIsolatesDigitsThenGpt2) {
  EXPECT_EQ(Split(PreTokenizer::kStarCoder, "abc 123"), (Pieces{"abc", " ", "1", "2", "3"}));
}

TEST(PreTokenizerTest, DefaultIsolatesPunctuationAndDigitTriples) {
  EXPECT_EQ(Split(PreTokenizer::kDefault, "a+b=30000"), (Pieces{"a", "+", "b", "=", "300", "00"}));
}

TEST(PreTokenizerTest, PiecesTileTheInput) {
  std::mt19937 rng(3);
  const std::string alphabet[] = {"a",
                                  "Z",
                                  "7",
                                  " ",
                                  "  ",
                                  "\n",
                                  "\r\n",
                                  "\t",
                                  "'",
                                  "'s",
                                  "!",
                                  "\xC3\xA9",
                                  "\xE4\xBD\xA0",
                                  "\xF0\x9F\xA6\x99",
                                  "\xCC\x81",
                                  "\xC2\xA0",
                                  "\xFF",
                                  "\xE2\x80\x8D",
                                  "\xD9\xA3"};
  for (int i = 0; i < 500; ++i) {
    std::string text;
    const int n = static_cast<int>(rng() % 30);
    for (int j = 0; j < n; ++j) text += alphabet[rng() % std::size(alphabet)];
    for (auto kind : {PreTokenizer::kDefault, PreTokenizer::kGpt2, PreTokenizer::kLlama3,
                      PreTokenizer::kQwen2, PreTokenizer::kStarCoder}) {
      std::vector<ByteRange> ranges;
      PreTokenize(kind, text, &ranges);
      uint32_t at = 0;
      for (const auto& [b, e] : ranges) {
        ASSERT_EQ(b, at) << "gap or overlap in '" << text << "'";
        ASSERT_LT(b, e) << "empty piece in '" << text << "'";
        at = e;
      }
      ASSERT_EQ(at, text.size());
    }
  }
}

TEST(PreTokenizerTest, NamesMapToFamiliesAndUnknownNamesAreRefused) {
  EXPECT_EQ(*PreTokenizerFromName("llama-bpe"), PreTokenizer::kLlama3);
  EXPECT_EQ(*PreTokenizerFromName("qwen2"), PreTokenizer::kQwen2);
  EXPECT_EQ(*PreTokenizerFromName("gpt-2"), PreTokenizer::kGpt2);
  EXPECT_EQ(*PreTokenizerFromName("smollm"), PreTokenizer::kStarCoder);
  EXPECT_EQ(*PreTokenizerFromName(""), PreTokenizer::kDefault);
  EXPECT_EQ(PreTokenizerFromName("deepseek-llm").status().code(), StatusCode::kIncompatible);
}

TEST(PreTokenizerTest, CodepointClasses) {
  using namespace unicode;
  EXPECT_TRUE(ClassOf('a') & kLetter);
  EXPECT_TRUE(ClassOf(0x4F60) & kLetter);  // 你
  EXPECT_TRUE(ClassOf(0x0663) & kNumber);  // Arabic-Indic three
  EXPECT_TRUE(ClassOf(0x00BD) & kNumber);  // ½ (No)
  EXPECT_TRUE(ClassOf(0x00A0) & kWhitespace);
  EXPECT_TRUE(ClassOf(0x3000) & kWhitespace);
  EXPECT_FALSE(ClassOf(0x200D) & kWhitespace);  // ZWJ is not \s
  EXPECT_TRUE(ClassOf(0x0301) & kOther);        // combining mark
  EXPECT_TRUE(ClassOf('!') & kPunctuation);
  EXPECT_FALSE(ClassOf('+') & kPunctuation);  // Sm
  EXPECT_TRUE(ClassOf(0x1F999) & kOther);     // 🦙 (So)
  EXPECT_EQ(DecodeUtf8("\xE2\x82", 0).cp, kInvalidCodepoint);
  EXPECT_EQ(DecodeUtf8("\xC0\x80", 0).cp, kInvalidCodepoint);  // overlong
  EXPECT_EQ(DecodeUtf8("\xF0\x9F\xA6\x99", 0).len, 4u);
  for (int b = 0; b < 256; ++b) {
    ASSERT_EQ(CodepointToByte(ByteToCodepoint(static_cast<uint8_t>(b))), b);
  }
  EXPECT_EQ(ByteToCodepoint(' '), 0x120u);  // 'Ġ'
}

}  // namespace
}  // namespace kvstash::engine
