// End-to-end checks of the `kvstash run` contract that scripts rely on: the --json fields, the
// top-logits ordering, greedy determinism, and clear errors with distinct exit codes.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/engine/engine_test_util.h"
#include "tests/fixtures.h"

namespace kvstash {
namespace {

struct Output {
  int rc = -1;
  std::string out;
};

Output Kvstash(const std::string& args) {
  Output o;
  o.out = engine::testutil::RunCommand(
      std::string(KVSTASH_BIN_DIR) + "/kvstash " + args + " 2>/tmp/kvstash-cli-test.err", &o.rc);
  return o;
}

std::string Stories() { return testing::FixturePath("stories260K.gguf"); }

TEST(RunCliTest, JsonHasEveryContractField) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  Output o = Kvstash("run -m " + Stories() +
                     " --prompt-ids '1 403 407' -n 8 --temp 0 --top-logits 5 --json");
  ASSERT_EQ(o.rc, 0) << o.out;
  auto j = nlohmann::json::parse(o.out);
  EXPECT_EQ(j["prompt_ids"], nlohmann::json({1, 403, 407}));
  ASSERT_EQ(j["generated_ids"].size(), 8u);
  EXPECT_EQ(j["generated_ids"][0], 261);  // golden greedy continuation of [1, 403, 407]
  EXPECT_TRUE(j["text"].is_string());
  ASSERT_EQ(j["top_logits"].size(), 5u);
  EXPECT_EQ(j["top_logits"][0][0], 261);
  EXPECT_NEAR(j["top_logits"][0][1].get<double>(), 17.13697, 1e-3);
  for (int i = 1; i < 5; ++i) {
    EXPECT_GE(j["top_logits"][i - 1][1].get<double>(), j["top_logits"][i][1].get<double>());
  }
  for (const char* k :
       {"ttft_ms", "prefill_ms", "decode_ms", "prompt_tokens_per_s", "gen_tokens_per_s"}) {
    EXPECT_TRUE(j["timings"].contains(k)) << k;
    EXPECT_GE(j["timings"][k].get<double>(), 0.0) << k;
  }
}

TEST(RunCliTest, GreedyTextFromBosMatchesGoldenStory) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  Output o = Kvstash("run -m " + Stories() + " -n 12 --temp 0 --json -t 1");
  ASSERT_EQ(o.rc, 0);
  auto j = nlohmann::json::parse(o.out);
  EXPECT_EQ(j["text"].get<std::string>().rfind(" Once upon a time, there was a little girl", 0), 0u)
      << j["text"];
}

TEST(RunCliTest, SeededSamplingIsReproducibleAcrossThreadCounts) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  Output a = Kvstash("run -m " + Stories() + " -p 'Tom' -n 20 --temp 1.0 --seed 42 --json -t 1");
  Output b = Kvstash("run -m " + Stories() + " -p 'Tom' -n 20 --temp 1.0 --seed 42 --json -t 2");
  ASSERT_EQ(a.rc, 0);
  ASSERT_EQ(b.rc, 0);
  EXPECT_EQ(nlohmann::json::parse(a.out)["generated_ids"],
            nlohmann::json::parse(b.out)["generated_ids"]);
}

TEST(RunCliTest, StopStringEndsGeneration) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  Output o = Kvstash("run -m " + Stories() + " -n 100 --temp 0 --stop 'Lily' --json");
  ASSERT_EQ(o.rc, 0);
  auto j = nlohmann::json::parse(o.out);
  EXPECT_EQ(j["stop_reason"], "stop_string");
  EXPECT_EQ(j["text"].get<std::string>().find("Lily"), std::string::npos);
}

TEST(RunCliTest, ErrorsAreClearWithDistinctExitCodes) {
  Output missing = Kvstash("run -m /nonexistent.gguf -p hi --json");
  EXPECT_EQ(missing.rc, 1);
  EXPECT_NE(missing.out.find("/nonexistent.gguf"), std::string::npos) << missing.out;
  EXPECT_EQ(Kvstash("run --no-such-flag").rc, 2);
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  Output bad_kv = Kvstash("run -m " + Stories() + " --kv-type q3 -p hi");
  EXPECT_EQ(bad_kv.rc, 2);
  Output bad_id = Kvstash("run -m " + Stories() + " --prompt-ids '1 99999' --json");
  EXPECT_EQ(bad_id.rc, 1);
  EXPECT_NE(bad_id.out.find("out of range"), std::string::npos) << bad_id.out;
  Output too_long = Kvstash("run -m " + Stories() + " -c 8 -n 16 --json");
  EXPECT_EQ(too_long.rc, 2);
  EXPECT_NE(too_long.out.find("context size"), std::string::npos) << too_long.out;
}

TEST(RunCliTest, MkModelImportsTokenizerJsonAndChatWorks) {
  KV_REQUIRE_FIXTURE("tokenizers/qwen3/tokenizer.json");
  const std::string tj = testing::FixturePath("tokenizers/qwen3/tokenizer.json");
  const std::string model = "/tmp/kvstash-cli-test-q3tok.gguf";
  const std::string mk = std::string(KVSTASH_BIN_DIR) +
                         "/kvstash-mkmodel --preset tiny-qwen3 -q --tokenizer " + tj + " -o " +
                         model;
  ASSERT_EQ(std::system(mk.c_str()), 0);
  Output a = Kvstash("tokenize -m " + model + " -p 'Hello world, 你好' --json");
  Output b = Kvstash("tokenize --tokenizer-json " + tj + " -p 'Hello world, 你好' --json");
  ASSERT_EQ(a.rc, 0);
  EXPECT_EQ(nlohmann::json::parse(a.out)["ids"], nlohmann::json::parse(b.out)["ids"]);
  // --chat renders the model's own (imported) template; its special tokens are parsed.
  Output c = Kvstash("run -m " + model + " --chat --system 'Be brief.' -p Hi -n 2 --temp 0 --json");
  ASSERT_EQ(c.rc, 0) << c.out;
  auto ids = nlohmann::json::parse(c.out)["prompt_ids"];
  EXPECT_EQ(ids[0], 151644);  // <|im_start|>
  EXPECT_EQ(ids[ids.size() - 3], 151644);
  std::remove(model.c_str());
}

TEST(RunCliTest, HelpDocumentsEveryFlag) {
  Output o = Kvstash("run --help");
  EXPECT_EQ(o.rc, 0);
  for (const char* f : {"--model", "--prompt", "--file", "--prompt-ids", "--n-predict", "--temp",
                        "--seed", "--threads", "--ctx-size", "--block-tokens", "--kv-type",
                        "--top-logits", "--json", "--top-k", "--top-p", "--chat"}) {
    EXPECT_NE(o.out.find(f), std::string::npos) << f;
  }
}

}  // namespace
}  // namespace kvstash
