// The KV computed for a token must not depend on how the prompt was split into prefill calls:
// prefill(prefix) + prefill(rest) == prefill(all), for random split points and block sizes.
// This is what makes a cached block interchangeable with a recomputed one.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "tests/engine/engine_test_util.h"
#include "tests/fixtures.h"

namespace kvstash::engine {
namespace {

using testutil::MakeRunner;
using testutil::RandomPrompt;

void CheckSplitInvariance(const Model& model, uint32_t seed) {
  std::mt19937 rng(seed);
  const int V = model.config().n_vocab;
  for (int block_tokens : {1, 3, 16, 64}) {
    for (int trial = 0; trial < 3; ++trial) {
      const int n = std::uniform_int_distribution<int>(8, 150)(rng);
      const auto prompt = RandomPrompt(rng, n, V);
      const int n_batch = std::uniform_int_distribution<int>(1, 64)(rng);
      auto one = MakeRunner(model, KvDtype::kF32, block_tokens);
      auto split = MakeRunner(model, KvDtype::kF32, block_tokens, n_batch);
      Sequence s1, s2;
      std::vector<float> l1, l2;
      ASSERT_TRUE(one->Prefill(s1, prompt, LogitsMode::kLast, &l1).ok());
      // Several random split points.
      std::vector<int> cuts = {0, n};
      for (int c = 0; c < 3; ++c) cuts.push_back(std::uniform_int_distribution<int>(1, n - 1)(rng));
      std::sort(cuts.begin(), cuts.end());
      cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
      for (size_t c = 0; c + 1 < cuts.size(); ++c) {
        std::span<const int32_t> part(prompt.data() + cuts[c], cuts[c + 1] - cuts[c]);
        ASSERT_TRUE(split->Prefill(s2, part, LogitsMode::kLast, &l2).ok());
      }
      SCOPED_TRACE("block_tokens " + std::to_string(block_tokens) + " n " + std::to_string(n) +
                   " n_batch " + std::to_string(n_batch));
      ASSERT_EQ(l1.size(), l2.size());
      float max_diff = 0;
      for (size_t i = 0; i < l1.size(); ++i)
        max_diff = std::max(max_diff, std::fabs(l1[i] - l2[i]));
      EXPECT_LE(max_diff, 1e-4f);
      // The KV bytes of every full block are identical.
      const size_t bb = one->kv_layout().block_bytes();
      for (int b = 0; b < n / block_tokens; ++b) {
        EXPECT_EQ(0, std::memcmp(one->pool().page(s1.block_table[b]),
                                 split->pool().page(s2.block_table[b]), bb))
            << "block " << b;
      }
      EXPECT_EQ(testutil::Greedy(*one, s1, l1, 12), testutil::Greedy(*split, s2, l2, 12));
    }
  }
}

TEST(PrefixInvarianceTest, Stories260KSplitPrefillEqualsOneShot) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  auto model = testutil::LoadOrDie(testing::FixturePath("stories260K.gguf"));
  ASSERT_TRUE(model);
  CheckSplitInvariance(*model, 1);
}

TEST(PrefixInvarianceTest, QuantizedQwen3SplitPrefillEqualsOneShot) {
  auto model = testutil::LoadOrDie(testutil::SyntheticModel("tiny-qwen3", "q4_k"));
  ASSERT_TRUE(model);
  CheckSplitInvariance(*model, 2);
}

TEST(PrefixInvarianceTest, Q8LlamaSplitPrefillEqualsOneShot) {
  auto model = testutil::LoadOrDie(testutil::SyntheticModel("tiny-llama", "q8_0"));
  ASSERT_TRUE(model);
  CheckSplitInvariance(*model, 3);
}

}  // namespace
}  // namespace kvstash::engine
