// Vocab::FromGguf (tokenizer.ggml.* keys, defaults, malformed files) and the Hugging Face
// tokenizer.json converter (fields, pre-tokenizer detection, errors as Status).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/gguf/gguf.h"
#include "engine/gguf/gguf_writer.h"
#include "engine/tokenizer/hf_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"
#include "tests/fixtures.h"

namespace kvstash::engine {
namespace {

Result<Vocab> VocabFromWriter(const GgufWriter& w) {
  static std::vector<std::vector<uint8_t>> keep;  // GgufFile views the bytes
  keep.push_back(w.Serialize());
  KV_ASSIGN_OR_RETURN(auto file, GgufFile::OpenBytes(keep.back(), "test.gguf"));
  return Vocab::FromGguf(*file);
}

GgufWriter MinimalSpmWriter() {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetString("tokenizer.ggml.model", "llama");
  w.SetStringArray("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "a"});
  w.SetFloat32Array("tokenizer.ggml.scores", {0, 0, 0, -1});
  w.SetInt32Array("tokenizer.ggml.token_type", {2, 3, 3, 1});
  return w;
}

TEST(VocabFromGgufTest, SpmDefaultsApplyWhenKeysAreAbsent) {
  GgufWriter w = MinimalSpmWriter();
  w.SetUint32("tokenizer.ggml.padding_token_id", 0xFFFFFFFFu);  // "none", as stories260K has
  auto v = VocabFromWriter(w);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->kind, TokenizerKind::kSpm);
  EXPECT_EQ(v->bos_id, 1);
  EXPECT_EQ(v->eos_id, 2);
  EXPECT_EQ(v->unk_id, 0);
  EXPECT_TRUE(v->add_bos);
  EXPECT_TRUE(v->add_space_prefix);
  EXPECT_EQ(v->types[1], TokenType::kControl);
  EXPECT_EQ(v->pad_id, -1);
}

TEST(VocabFromGgufTest, MalformedTokenizerKeysAreErrorsNamingTheKey) {
  {
    GgufWriter w;
    w.SetString("tokenizer.ggml.model", "llama");
    w.SetStringArray("tokenizer.ggml.tokens", {"a", "b", "c"});
    w.SetFloat32Array("tokenizer.ggml.scores", {0, 0});
    auto v = VocabFromWriter(w);
    EXPECT_EQ(v.status().code(), StatusCode::kCorruption);
    EXPECT_NE(v.status().message().find("tokenizer.ggml.scores"), std::string::npos);
  }
  {
    GgufWriter w;
    w.SetString("tokenizer.ggml.model", "bert");
    w.SetStringArray("tokenizer.ggml.tokens", {"a"});
    EXPECT_EQ(VocabFromWriter(w).status().code(), StatusCode::kIncompatible);
  }
  {
    GgufWriter w;
    w.SetStringArray("tokenizer.ggml.tokens", {"a"});
    EXPECT_EQ(VocabFromWriter(w).status().code(), StatusCode::kNotFound);
  }
  {
    GgufWriter w;
    w.SetString("tokenizer.ggml.model", "llama");
    w.SetStringArray("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>"});
    w.SetUint32("tokenizer.ggml.eos_token_id", 7);
    auto v = VocabFromWriter(w);
    EXPECT_EQ(v.status().code(), StatusCode::kCorruption);
    EXPECT_NE(v.status().message().find("eos_token_id"), std::string::npos);
  }
  {
    GgufWriter w;
    w.SetString("tokenizer.ggml.model", "llama");
    w.SetStringArray("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>"});
    w.SetInt32Array("tokenizer.ggml.token_type", {2, 3, 9});
    EXPECT_EQ(VocabFromWriter(w).status().code(), StatusCode::kCorruption);
  }
  {
    GgufWriter w;  // BPE without merges
    w.SetString("tokenizer.ggml.model", "gpt2");
    w.SetStringArray("tokenizer.ggml.tokens", {"a"});
    EXPECT_FALSE(VocabFromWriter(w).ok());
  }
}

TEST(VocabFromGgufTest, Gpt2VocabFixture) {
  KV_REQUIRE_FIXTURE("vocab/ggml-vocab-gpt-2.gguf");
  auto file = GgufFile::Open(testing::FixturePath("vocab/ggml-vocab-gpt-2.gguf"));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto v = Vocab::FromGguf(**file);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->kind, TokenizerKind::kBpe);
  EXPECT_EQ(v->pre, "gpt-2");
  EXPECT_EQ(v->size(), 50257);
  EXPECT_EQ(v->merges.size(), 50000u);
  EXPECT_EQ(v->bos_id, 50256);
  EXPECT_EQ(v->eos_id, 50256);
  EXPECT_FALSE(v->add_bos);
  EXPECT_FALSE(v->add_space_prefix);
  EXPECT_EQ(v->types[50256], TokenType::kControl);
}

// --- Hugging Face converter ---

TEST(HfTokenizerVocabTest, Llama3Fields) {
  KV_REQUIRE_FIXTURE("tokenizers/llama3/tokenizer.json");
  auto v = LoadHfVocab(testing::FixturePath("tokenizers/llama3/tokenizer.json"));
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->kind, TokenizerKind::kBpe);
  EXPECT_EQ(v->pre, "llama-bpe");
  EXPECT_EQ(v->size(), 128256);
  EXPECT_TRUE(v->ignore_merges);
  EXPECT_FALSE(v->normalize_nfc);
  EXPECT_TRUE(v->add_bos);
  EXPECT_EQ(v->bos_id, 128000);
  EXPECT_EQ(v->eos_id, 128001);
  EXPECT_EQ(v->eot_id, 128009);
  EXPECT_EQ(v->types[128000], TokenType::kControl);
  EXPECT_EQ(v->types[9906], TokenType::kNormal);
  EXPECT_EQ(v->tokens[9906], "Hello");
  EXPECT_NE(v->chat_template.find("<|start_header_id|>"), std::string::npos);
  EXPECT_EQ(v->merges.size(), 280147u);
}

TEST(HfTokenizerVocabTest, Qwen3Fields) {
  KV_REQUIRE_FIXTURE("tokenizers/qwen3/tokenizer.json");
  auto v = LoadHfVocab(testing::FixturePath("tokenizers/qwen3/tokenizer.json"));
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->pre, "qwen2");
  EXPECT_EQ(v->size(), 151669);
  EXPECT_TRUE(v->normalize_nfc);
  EXPECT_FALSE(v->ignore_merges);
  EXPECT_FALSE(v->add_bos);
  EXPECT_EQ(v->bos_id, -1);
  EXPECT_EQ(v->eos_id, 151645);  // <|im_end|>
  EXPECT_EQ(v->eot_id, 151645);
  EXPECT_EQ(v->pad_id, 151643);                          // <|endoftext|>
  EXPECT_EQ(v->types[151644], TokenType::kControl);      // <|im_start|>, special
  EXPECT_EQ(v->types[151659], TokenType::kControl);      // <|fim_prefix|>, looks special
  EXPECT_EQ(v->types[151667], TokenType::kUserDefined);  // <think>
  EXPECT_NE(v->chat_template.find("<|im_start|>"), std::string::npos);
}

std::string MiniTokenizerJson(const std::string& pre_tokenizer, const std::string& model_type) {
  return R"({"normalizer": null, "pre_tokenizer": )" + pre_tokenizer +
         R"(, "added_tokens": [{"id": 4, "content": "<|end|>", "special": true},
             {"id": 6, "content": "<x>", "special": false}],
           "model": {"type": ")" +
         model_type + R"(", "vocab": {"a": 0, "b": 1, "ab": 2, "\u0120": 3},
             "merges": [["a", "b"]]}})";
}

TEST(HfTokenizerVocabTest, MinimalByteLevelTokenizer) {
  const std::string pre = R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})";
  auto v = VocabFromHfJson(MiniTokenizerJson(pre, "BPE"), R"({"eos_token": "<|end|>"})");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->pre, "gpt-2");
  EXPECT_EQ(v->size(), 7);
  EXPECT_EQ(v->tokens[5], "[PAD5]");  // id gap
  EXPECT_EQ(v->types[5], TokenType::kUnused);
  EXPECT_EQ(v->types[4], TokenType::kControl);
  EXPECT_EQ(v->types[6], TokenType::kUserDefined);
  EXPECT_EQ(v->merges, std::vector<std::string>{"a b"});
  EXPECT_EQ(v->eos_id, 4);
  EXPECT_FALSE(v->add_bos);
  auto tok = Tokenizer::Create(std::move(v).value());
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->Encode("ab<x>", false, false), (std::vector<int32_t>{2, 6}));
}

TEST(HfTokenizerVocabTest, ErrorsAreStatusesNotExceptions) {
  const std::string byte_level = R"({"type": "ByteLevel", "use_regex": true})";
  EXPECT_EQ(VocabFromHfJson("{not json", "").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(VocabFromHfJson(MiniTokenizerJson(byte_level, "BPE"), "[1,").status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(VocabFromHfJson(MiniTokenizerJson(byte_level, "Unigram"), "").status().code(),
            StatusCode::kIncompatible);
  EXPECT_EQ(VocabFromHfJson(R"({"model": {"type": "BPE", "vocab": [1, 2]}})", "").status().code(),
            StatusCode::kInvalidArgument);
  const std::string metaspace = R"({"type": "Metaspace", "replacement": "_"})";
  EXPECT_EQ(VocabFromHfJson(MiniTokenizerJson(metaspace, "BPE"), "").status().code(),
            StatusCode::kIncompatible);
  const std::string odd_regex = R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\d+"}, "behavior": "Isolated"},
      {"type": "ByteLevel", "use_regex": false}]})";
  auto v = VocabFromHfJson(MiniTokenizerJson(odd_regex, "BPE"), "");
  EXPECT_EQ(v.status().code(), StatusCode::kIncompatible);
  EXPECT_NE(v.status().message().find("\\d+"), std::string::npos);
  // A config naming a token the vocab lacks.
  EXPECT_EQ(VocabFromHfJson(MiniTokenizerJson(byte_level, "BPE"), R"({"bos_token": "<s>"})")
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  // The ids field of an added token with the wrong type.
  EXPECT_EQ(VocabFromHfJson(R"({"pre_tokenizer": )" + byte_level +
                                R"(, "added_tokens": [{"id": "x", "content": "y"}],
                               "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
                            "")
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadHfVocab("/nonexistent/tokenizer.json").status().code(), StatusCode::kIOError);
}

}  // namespace
}  // namespace kvstash::engine
