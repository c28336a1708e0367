// Byte-level BPE: merge order by rank, ignore_merges, added/special tokens, NFC, byte-exact
// round trips, thread safety, on a hand-built vocab and on the GPT-2 / Llama 3 / Qwen3 fixtures.
#include <gtest/gtest.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/gguf/gguf.h"
#include "engine/tokenizer/hf_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/unicode.h"
#include "engine/tokenizer/vocab.h"
#include "tests/fixtures.h"

namespace kvstash::engine {
namespace {

using Ids = std::vector<int32_t>;

// Ids 0..255: the byte stand-ins in byte order; then `extra` (byte-level text) as normal tokens.
Vocab MakeByteLevelVocab(const std::vector<std::string>& extra,
                         const std::vector<std::string>& merges) {
  Vocab v;
  v.kind = TokenizerKind::kBpe;
  v.pre = "gpt-2";
  v.add_bos = false;
  v.add_space_prefix = false;
  for (int b = 0; b < 256; ++b) {
    v.tokens.push_back(unicode::ByteLevelEncode(std::string(1, static_cast<char>(b))));
  }
  for (const std::string& t : extra) v.tokens.push_back(t);
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  v.merges = merges;
  return v;
}

std::unique_ptr<Tokenizer> MustCreate(Vocab v) {
  auto t = Tokenizer::Create(std::move(v));
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(t).value() : nullptr;
}

TEST(TokenizerBpeTest, LowerRankMergesFirst) {
  // "abc": "b c" has rank 0, so "bc" forms first and "a b" never applies.
  auto tok = MustCreate(MakeByteLevelVocab({"bc", "ab"}, {"b c", "a b"}));
  EXPECT_EQ(tok->Encode("abc", false, false), (Ids{'a', 256}));
  auto tok2 = MustCreate(MakeByteLevelVocab({"bc", "ab"}, {"a b", "b c"}));
  EXPECT_EQ(tok2->Encode("abc", false, false), (Ids{257, 'c'}));
}

TEST(TokenizerBpeTest, RepeatedPairMergesLeftmostFirst) {
  auto tok = MustCreate(MakeByteLevelVocab({"aa", "aaaa"}, {"a a", "aa aa"}));
  EXPECT_EQ(tok->Encode("aaa", false, false), (Ids{256, 'a'}));
  EXPECT_EQ(tok->Encode("aaaaa", false, false), (Ids{257, 'a'}));
}

TEST(TokenizerBpeTest, IgnoreMergesEmitsAWholeWordThatIsAToken) {
  // "abc" is a token but no merge sequence reaches it.
  Vocab v = MakeByteLevelVocab({"ab", "abc"}, {"a b"});
  auto merged = MustCreate(v);
  EXPECT_EQ(merged->Encode("abc", false, false), (Ids{256, 'c'}));
  v.ignore_merges = true;
  auto whole = MustCreate(std::move(v));
  EXPECT_EQ(whole->Encode("abc", false, false), (Ids{257}));
  // " abc" is no token, so it is merged normally (id 32 is the stand-in of ' ').
  EXPECT_EQ(whole->Encode("abc abc", false, false), (Ids{257, 32, 256, 'c'}));
}

TEST(TokenizerBpeTest, SpecialTokensNeedParseSpecialButUserDefinedAlwaysMatch) {
  Vocab v = MakeByteLevelVocab({"<|end|>", "<tool>"}, {});
  v.types[256] = TokenType::kControl;
  v.types[257] = TokenType::kUserDefined;
  v.eos_id = 256;
  auto tok = MustCreate(std::move(v));
  EXPECT_EQ(tok->Encode("x<|end|>", false, true), (Ids{'x', 256}));
  const Ids plain = tok->Encode("x<|end|>", false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 256), 0);
  EXPECT_EQ(tok->Decode(plain, false), "x<|end|>");
  // User-defined tokens are part of the vocabulary's surface (HF tokenizers, llama.cpp).
  EXPECT_EQ(tok->Encode("<tool>", false, false), (Ids{257}));
  EXPECT_EQ(tok->TokenToPiece(256, false), "");
  EXPECT_EQ(tok->TokenToPiece(256, true), "<|end|>");
  EXPECT_EQ(tok->TokenToPiece(257, false), "<tool>");
  EXPECT_EQ(tok->Decode(Ids{'x', 256}, true), "x<|end|>");
  EXPECT_TRUE(tok->IsEog(256));
}

TEST(TokenizerBpeTest, NfcNormalizationWhenTheVocabAsksForIt) {
  const std::string decomposed = "e\xCC\x81";  // e + U+0301
  const std::string composed = "\xC3\xA9";     // U+00E9
  Vocab v = MakeByteLevelVocab({}, {});
  auto plain = MustCreate(v);
  EXPECT_NE(plain->Encode(decomposed, false, false), plain->Encode(composed, false, false));
  v.normalize_nfc = true;
  auto nfc = MustCreate(std::move(v));
  EXPECT_EQ(nfc->Encode(decomposed, false, false), nfc->Encode(composed, false, false));
  EXPECT_EQ(unicode::Nfc("A\xCC\x8A \xE1\x84\x80\xE1\x85\xA1"), "\xC3\x85 \xEA\xB0\x80");
  EXPECT_EQ(unicode::Nfc("bad \xFF byte e\xCC\x81"), "bad \xFF byte \xC3\xA9");
}

// unicode::Nfc normalizes only the runs that can change; it must agree with ICU normalizing the
// whole string.
TEST(TokenizerBpeTest, PiecewiseNfcMatchesWholeStringNormalization) {
  auto whole = [](const std::string& s) {
    UErrorCode err = U_ZERO_ERROR;
    const UNormalizer2* nfc = unorm2_getNFCInstance(&err);
    std::vector<UChar> u16(s.size() + 1), out(s.size() * 3 + 16);
    int32_t n16 = 0;
    u_strFromUTF8(u16.data(), static_cast<int32_t>(u16.size()), &n16, s.data(),
                  static_cast<int32_t>(s.size()), &err);
    const int32_t n =
        unorm2_normalize(nfc, u16.data(), n16, out.data(), static_cast<int32_t>(out.size()), &err);
    std::string utf8(static_cast<size_t>(n) * 3 + 4, '\0');
    int32_t n8 = 0;
    u_strToUTF8(utf8.data(), static_cast<int32_t>(utf8.size()), &n8, out.data(), n, &err);
    EXPECT_TRUE(U_SUCCESS(err));
    utf8.resize(static_cast<size_t>(n8));
    return utf8;
  };
  // Starters, combining marks (in and out of canonical order), Hangul jamo, singletons.
  const std::string alphabet[] = {"a",
                                  "e",
                                  "A",
                                  " ",
                                  "\xC3\xA9",
                                  "\xCC\x81",
                                  "\xCC\xA3",
                                  "\xCC\x8A",
                                  "\xE1\x84\x80",
                                  "\xE1\x85\xA1",
                                  "\xE1\x86\xA8",
                                  "\xEA\xB0\x80",
                                  "\xE2\x84\xAB",
                                  "\xE0\xA6\xBE",
                                  "\xE0\xA7\x87",
                                  "\xE4\xBD\xA0"};
  std::mt19937 rng(11);
  for (int i = 0; i < 2000; ++i) {
    std::string s;
    const int n = static_cast<int>(rng() % 12);
    for (int j = 0; j < n; ++j) s += alphabet[rng() % std::size(alphabet)];
    ASSERT_EQ(unicode::Nfc(s), whole(s)) << "input '" << s << "'";
  }
}

TEST(TokenizerBpeTest, UnknownPreTokenizerIsIncompatible) {
  Vocab v = MakeByteLevelVocab({}, {});
  v.pre = "no-such-pre";
  EXPECT_EQ(Tokenizer::Create(std::move(v)).status().code(), StatusCode::kIncompatible);
}

// --- fixtures ---

struct Source {
  const char* name;
  const char* path;
  bool hf_json;
};
const Source kGpt2{"gpt-2", "vocab/ggml-vocab-gpt-2.gguf", false};
const Source kLlama3{"llama3", "tokenizers/llama3/tokenizer.json", true};
const Source kQwen3{"qwen3", "tokenizers/qwen3/tokenizer.json", true};

const Tokenizer* Load(const Source& s) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  if (auto it = cache.find(s.name); it != cache.end()) return it->second.get();
  Result<Vocab> v = Status::NotFound("");
  if (s.hf_json) {
    v = LoadHfVocab(testing::FixturePath(s.path));
  } else {
    auto file = GgufFile::Open(testing::FixturePath(s.path));
    if (!file.ok()) return nullptr;
    v = Vocab::FromGguf(**file);
  }
  EXPECT_TRUE(v.ok()) << v.status().ToString();
  if (!v.ok()) return nullptr;
  return (cache[s.name] = MustCreate(std::move(v).value())).get();
}

std::vector<std::string> VariedTexts() {
  std::vector<std::string> t = {
      "",
      " ",
      "Hello, World! It's 2024 and we'RE testing 12345678 digits.",
      "Grüße aus Köln — naïve café, ½ €, ﬁ ligature, Ω",
      "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\xE3\x80\x82 "
      "\xE3\x81\x93\xE3\x82\x93\xE3\x81\xAB\xE3\x81\xA1\xE3\x81\xAF",
      "\xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7 "
      "\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87",
      "emoji \xF0\x9F\xA6\x99\xF0\x9F\x9A\x80 "
      "\xF0\x9F\x98\xB6\xE2\x80\x8D\xF0\x9F\x8C\xAB\xEF\xB8\x8F",
      "e\xCC\x81 decomposed, \xE1\x84\x80\xE1\x85\xA1 jamo",
      "tabs\t\tnew\n\n\nlines\r\n  indented\n    deeper   \n",
      "int main(void) { return a->b[3] << 2 || c != d; }  // ok?",
      "invalid \xFF\xFE bytes \xC3 truncated \xE2\x82 and \xED\xA0\x80 surrogate",
      std::string("nul \0 inside", 12),
  };
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    std::string s(rng() % 48, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    t.push_back(s);
  }
  return t;
}

TEST(TokenizerBpeTest, DecodeOfEncodeIsTheInputForArbitraryBytes) {
  for (const Source& s : {kGpt2, kLlama3, kQwen3}) {
    if (!testing::HaveFixture(s.path)) continue;
    const Tokenizer* tok = Load(s);
    ASSERT_NE(tok, nullptr);
    for (const std::string& text : VariedTexts()) {
      const Ids ids = tok->Encode(text, false, false);
      std::string expected = text;
      if (s.hf_json && tok->vocab().normalize_nfc) expected = unicode::Nfc(text);
      EXPECT_EQ(tok->Decode(ids, false), expected) << s.name << ": '" << text << "'";
      EXPECT_EQ(tok->Encode(text, false, false), ids) << "second encode (cached) differs";
    }
  }
}

TEST(TokenizerBpeTest, ConcurrentEncodesAgreeWithSequentialOnes) {
  KV_REQUIRE_FIXTURE(kLlama3.path);
  const Tokenizer* tok = Load(kLlama3);
  ASSERT_NE(tok, nullptr);
  const std::vector<std::string> texts = VariedTexts();
  std::vector<Ids> expected;
  for (const auto& t : texts) expected.push_back(tok->Encode(t, true, false));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int rep = 0; rep < 5; ++rep) {
        for (size_t i = 0; i < texts.size(); ++i) {
          if (tok->Encode(texts[i], true, false) != expected[i]) ++mismatches[k];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST(TokenizerBpeTest, Llama3SpecialTokensBosAndEndOfGeneration) {
  KV_REQUIRE_FIXTURE(kLlama3.path);
  const Tokenizer* tok = Load(kLlama3);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("Hello", true, false), (Ids{128000, 9906}));
  EXPECT_EQ(tok->Encode("<|start_header_id|>user<|end_header_id|>", false, true),
            (Ids{128006, 882, 128007}));
  const Ids plain = tok->Encode("<|eot_id|>", false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 128009), 0);
  EXPECT_EQ(tok->Decode(plain, false), "<|eot_id|>");
  EXPECT_TRUE(tok->IsEog(128001));   // <|end_of_text|> (eos)
  EXPECT_TRUE(tok->IsEog(128009));   // <|eot_id|> (eot)
  EXPECT_FALSE(tok->IsEog(128000));  // <|begin_of_text|>
  EXPECT_FALSE(tok->IsEog(9906));
}

// Regression: the llama-bpe vector "Cửa Việt" needs ignore_merges (" Việt" is one token that
// the merges alone do not reach).
TEST(TokenizerBpeTest, Llama3IgnoreMergesKeepsWholeWordTokens) {
  KV_REQUIRE_FIXTURE(kLlama3.path);
  auto v = LoadHfVocab(testing::FixturePath(kLlama3.path));
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_TRUE(v->ignore_merges);
  Vocab without = *v;
  without.ignore_merges = false;
  auto with_tok = MustCreate(std::move(v).value());
  auto without_tok = MustCreate(std::move(without));
  EXPECT_EQ(with_tok->Encode("C\xE1\xBB\xAD"
                             "a Vi\xE1\xBB\x87t",
                             false, false),
            (Ids{34, 91163, 101798}));
  EXPECT_NE(without_tok->Encode("C\xE1\xBB\xAD"
                                "a Vi\xE1\xBB\x87t",
                                false, false),
            (Ids{34, 91163, 101798}));
}

TEST(TokenizerBpeTest, Qwen3AddedTokensAndNfc) {
  KV_REQUIRE_FIXTURE(kQwen3.path);
  const Tokenizer* tok = Load(kQwen3);
  ASSERT_NE(tok, nullptr);
  // <think> is a non-special added token: matched even without parse_special.
  EXPECT_EQ(tok->Encode("<think>", false, false), (Ids{151667}));
  EXPECT_EQ(tok->Encode("<|im_start|>", false, true), (Ids{151644}));
  EXPECT_NE(tok->Encode("<|im_start|>", false, false), (Ids{151644}));
  EXPECT_EQ(tok->Encode("caf"
                        "e\xCC\x81",
                        false, false),
            tok->Encode("caf\xC3\xA9", false, false));
  EXPECT_TRUE(tok->IsEog(151645));   // <|im_end|>
  EXPECT_TRUE(tok->IsEog(151643));   // <|endoftext|>
  EXPECT_FALSE(tok->IsEog(151644));  // <|im_start|>
  EXPECT_TRUE(tok->Encode("hi", true, false) == tok->Encode("hi", false, false))
      << "Qwen has no BOS";
}

}  // namespace
}  // namespace kvstash::engine
