// `kvstash tokenize` / `kvstash detokenize` end to end: runs the built binary (skips when it has
// not been built) on the vocab fixtures and the default model, and checks output bytes and exit
// codes.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/engine/engine_test_util.h"
#include "tests/fixtures.h"

namespace kvstash {
namespace {

#ifdef KVSTASH_BIN_DIR
const std::string kBinary = std::string(KVSTASH_BIN_DIR) + "/kvstash";
#else
const std::string kBinary = "kvstash";
#endif

constexpr char kSpm[] = "vocab/ggml-vocab-llama-spm.gguf";

struct Output {
  int exit_code = -1;
  std::string out;
};

std::string Quote(const std::string& s) { return "'" + s + "'"; }

// Runs `kvstash <args>` through the shell with `input` on stdin; stderr is discarded. `env` is
// prefixed to the command ("NAME=value ").
Output RunKvstash(const std::string& args, const std::string& input = "",
                  const std::string& env = "") {
  Output o;
  o.out = engine::testutil::RunCommand(
      "printf '%s' " + Quote(input) + " | " + env + kBinary + " " + args + " 2>/dev/null",
      &o.exit_code);
  return o;
}

class TokenizerCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kBinary)) GTEST_SKIP() << kBinary << " not built";
    KV_REQUIRE_FIXTURE(kSpm);
    model_ = Quote(testing::FixturePath(kSpm));
  }
  std::string model_;
};

TEST_F(TokenizerCliTest, TokenizeJsonHasIdsAndPieces) {
  const Output o = RunKvstash("tokenize -m " + model_ + " -p 'Hello world' --json");
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(o.out, "{\"ids\":[1,15043,3186],\"pieces\":[\"<s>\",\" Hello\",\" world\"]}\n");
  const Output no_bos = RunKvstash("tokenize -m " + model_ + " -p 'Hello world' --json --no-bos");
  EXPECT_EQ(no_bos.out, "{\"ids\":[15043,3186],\"pieces\":[\" Hello\",\" world\"]}\n");
}

TEST_F(TokenizerCliTest, TokenizeHumanOutputListsIdsPiecesAndCount) {
  const Output o = RunKvstash("tokenize -m " + model_ + " -p 'Hello world'");
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_NE(o.out.find("15043 -> ' Hello'"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("3 tokens"), std::string::npos) << o.out;
}

TEST_F(TokenizerCliTest, FileBytesAreTokenizedExactlyIncludingTheTrailingNewline) {
  const std::string path = ::testing::TempDir() + "/kvstash_tokenize_input.txt";
  {
    std::ofstream f(path, std::ios::binary);
    f << "Hello world\n";
  }
  const Output o = RunKvstash("tokenize -m " + model_ + " -f " + Quote(path) + " --json --no-bos");
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(o.out, "{\"ids\":[15043,3186,13],\"pieces\":[\" Hello\",\" world\",\"\\n\"]}\n");
}

TEST_F(TokenizerCliTest, DetokenizePrintsExactTextFromIdsOrStdin) {
  const Output o = RunKvstash("detokenize -m " + model_ + " --ids '1 15043 3186'");
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(o.out, "Hello world");  // piped: no newline added
  const Output in = RunKvstash("detokenize -m " + model_ + " --json", "[1, 15043, 3186]\n");
  EXPECT_EQ(in.exit_code, 0);
  EXPECT_EQ(in.out, "{\"text\":\"Hello world\"}\n");
}

TEST_F(TokenizerCliTest, BadInvocationsExitWithUsageOrRuntimeErrors) {
  EXPECT_EQ(RunKvstash("tokenize -m " + model_).exit_code, 2);  // no text
  EXPECT_EQ(RunKvstash("tokenize -m " + model_ + " --tokenizer-json x.json -p hi").exit_code,
            2);  // two vocab sources
  EXPECT_EQ(RunKvstash("detokenize -m " + model_ + " --ids '1 x'").exit_code, 2);  // not an id
  EXPECT_EQ(RunKvstash("detokenize -m " + model_ + " --ids 99999").exit_code, 1);  // out of range
  EXPECT_EQ(RunKvstash("tokenize -m /nonexistent.gguf -p hi").exit_code, 1);       // unreadable
}

TEST_F(TokenizerCliTest, TokenizerJsonInsteadOfModel) {
  KV_REQUIRE_FIXTURE("tokenizers/qwen3/tokenizer.json");
  const std::string json = Quote(testing::FixturePath("tokenizers/qwen3/tokenizer.json"));
  const Output o = RunKvstash("tokenize --tokenizer-json " + json +
                              " -p '<|im_start|>user' --parse-special --json");
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(o.out, "{\"ids\":[151644,872],\"pieces\":[\"<|im_start|>\",\"user\"]}\n");
}

// Like `kvstash run`, tokenize and detokenize fall back to the embedded default model (created
// here in a temporary directory), whose vocabulary prints every id as visible text.
TEST(TokenizerCliDefaultModelTest, WithoutModelTheDefaultModelIsUsed) {
  if (!std::filesystem::exists(kBinary)) GTEST_SKIP() << kBinary << " not built";
  const std::string env =
      "KVSTASH_DEFAULT_MODEL=" + Quote(engine::testutil::TempDir() + "/default.gguf") + " ";
  const Output o = RunKvstash("tokenize -p 'Once upon a time' --json", "", env);
  ASSERT_EQ(o.exit_code, 0);
  const nlohmann::json j = nlohmann::json::parse(o.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.contains("ids") && j.contains("pieces")) << o.out;
  EXPECT_EQ(j["ids"][0], 1);  // BOS
  EXPECT_EQ(j["pieces"].back(), " time");
  const Output text = RunKvstash("detokenize --ids " + Quote(j["ids"].dump()), "", env);
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_EQ(text.out, "Once upon a time");
  const Output last = RunKvstash("detokenize --ids 4095", "", env);
  EXPECT_EQ(last.exit_code, 0);
  EXPECT_FALSE(last.out.empty());  // was an <unused_N> token that printed nothing
}

}  // namespace
}  // namespace kvstash
