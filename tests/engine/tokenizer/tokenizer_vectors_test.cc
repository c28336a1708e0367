// The llama.cpp tokenizer test vectors (vocab/*.inp -> *.out): every case must produce exactly
// the expected ids (encoded without BOS, special tokens not parsed) and decode back to its input.
// gpt-2 and llama-spm come from vocab-only GGUFs; llama-bpe and qwen2 from the Hugging Face
// tokenizer.json files through the converter.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/gguf/gguf.h"
#include "engine/tokenizer/hf_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"
#include "tests/fixtures.h"

namespace kvstash::engine {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Case {
  std::string text;
  std::vector<int32_t> ids;
};

// .inp: strings separated by "\n__ggml_vocab_test__\n" (the file ends with a separator);
// .out: one line of ids per string.
std::vector<Case> ReadCases(const std::string& inp_path, const std::string& out_path) {
  const std::string inp = ReadAll(inp_path);
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  size_t pos = 0;
  while (pos < inp.size()) {
    const size_t next = inp.find(sep, pos);
    if (next == std::string::npos) {
      texts.push_back(inp.substr(pos));
      break;
    }
    texts.push_back(inp.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::ifstream out(out_path);
  std::vector<Case> cases;
  std::string line;
  for (const std::string& t : texts) {
    if (!std::getline(out, line)) break;
    Case c{t, {}};
    std::istringstream ids(line);
    int32_t id;
    while (ids >> id) c.ids.push_back(id);
    cases.push_back(std::move(c));
  }
  return cases;
}

struct VectorFile {
  const char* name;     // vocab/ggml-vocab-<name>.gguf.{inp,out}
  const char* gguf;     // vocab GGUF, or nullptr
  const char* hf_json;  // tokenizer.json, or nullptr
};

const VectorFile kFiles[] = {
    {"gpt-2", "vocab/ggml-vocab-gpt-2.gguf", nullptr},
    {"llama-spm", "vocab/ggml-vocab-llama-spm.gguf", nullptr},
    {"llama-bpe", nullptr, "tokenizers/llama3/tokenizer.json"},
    {"qwen2", nullptr, "tokenizers/qwen3/tokenizer.json"},
};

// Tokenizers are expensive to build (the JSON files are ~10 MB): build each once.
const Tokenizer* Load(const VectorFile& f) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto it = cache.find(f.name);
  if (it != cache.end()) return it->second.get();
  Result<Vocab> vocab = Status::NotFound("no source");
  if (f.gguf != nullptr) {
    auto file = GgufFile::Open(testing::FixturePath(f.gguf));
    EXPECT_TRUE(file.ok()) << file.status().ToString();
    if (!file.ok()) return nullptr;
    vocab = Vocab::FromGguf(**file);
  } else {
    vocab = LoadHfVocab(testing::FixturePath(f.hf_json));
  }
  EXPECT_TRUE(vocab.ok()) << vocab.status().ToString();
  if (!vocab.ok()) return nullptr;
  auto tok = Tokenizer::Create(std::move(vocab).value());
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  if (!tok.ok()) return nullptr;
  return (cache[f.name] = std::move(tok).value()).get();
}

class TokenizerVectorsTest : public ::testing::TestWithParam<VectorFile> {};

TEST_P(TokenizerVectorsTest, EveryCaseMatchesExpectedIdsAndRoundTrips) {
  const VectorFile& f = GetParam();
  const std::string base = std::string("vocab/ggml-vocab-") + f.name + ".gguf";
  KV_REQUIRE_FIXTURE(base + ".inp");
  KV_REQUIRE_FIXTURE(f.gguf != nullptr ? f.gguf : f.hf_json);
  const Tokenizer* tok = Load(f);
  ASSERT_NE(tok, nullptr);
  const std::vector<Case> cases =
      ReadCases(testing::FixturePath(base + ".inp"), testing::FixturePath(base + ".out"));
  ASSERT_EQ(cases.size(), 46u);
  int passed = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::vector<int32_t> got =
        tok->Encode(c.text, /*add_bos=*/false, /*parse_special=*/false);
    EXPECT_EQ(got, c.ids) << f.name << " case " << i << ": '" << c.text << "'";
    EXPECT_EQ(tok->Decode(got, /*render_special=*/false), c.text)
        << f.name << " case " << i << " does not round-trip";
    if (got == c.ids) ++passed;
  }
  std::printf("[ vectors  ] %s: %d/%zu cases pass\n", f.name, passed, cases.size());
}

INSTANTIATE_TEST_SUITE_P(AllFiles, TokenizerVectorsTest, ::testing::ValuesIn(kFiles),
                         [](const ::testing::TestParamInfo<VectorFile>& info) {
                           std::string n = info.param.name;
                           for (char& ch : n) {
                             if (ch == '-') ch = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace kvstash::engine
