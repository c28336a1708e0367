// Hybrid models (qwen35, qwen35moe): the recurrent state after a token must not depend on how
// the prompt was split into forwards, and decode (one token per forward) must equal prefill.
// The DeltaNet recurrence runs token by token and every other op is per row, so both hold bit
// for bit: logits, the KV bytes of the attention layers and the recurrent state.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "tests/engine/engine_test_util.h"

namespace kvstash::engine {
namespace {

using testutil::MakeRunner;
using testutil::RandomPrompt;

struct FedRun {
  std::vector<float> logits;  // [n_tokens][n_vocab]
  Sequence seq;
};

// Feeds `prompt` in chunks ending at `cuts` (ascending, last = prompt size), all logits.
FedRun Feed(Runner& r, const std::vector<int32_t>& prompt, const std::vector<size_t>& cuts) {
  FedRun out;
  size_t done = 0;
  for (size_t cut : cuts) {
    std::vector<float> part;
    const std::span<const int32_t> chunk(prompt.data() + done, cut - done);
    Status s = r.Prefill(out.seq, chunk, LogitsMode::kAll, &part);
    EXPECT_TRUE(s.ok()) << s.ToString();
    out.logits.insert(out.logits.end(), part.begin(), part.end());
    done = cut;
  }
  return out;
}

void ExpectSame(Runner& ra, const FedRun& a, Runner& rb, const FedRun& b) {
  ASSERT_EQ(a.logits.size(), b.logits.size());
  EXPECT_EQ(0, std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)))
      << "logits differ";
  ASSERT_EQ(a.seq.recurrent.size(), b.seq.recurrent.size());
  ASSERT_FALSE(a.seq.recurrent.empty());
  EXPECT_EQ(0, std::memcmp(a.seq.recurrent.data(), b.seq.recurrent.data(),
                           a.seq.recurrent.size() * sizeof(float)))
      << "recurrent state differs";
  const KvLayout& L = ra.kv_layout();
  const int full = a.seq.n_past() / L.block_tokens;
  for (int blk = 0; blk < full; ++blk) {
    EXPECT_EQ(0, std::memcmp(ra.pool().page(a.seq.block_table[blk]),
                             rb.pool().page(b.seq.block_table[blk]), L.block_bytes()))
        << "KV block " << blk;
  }
}

class HybridInvarianceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HybridInvarianceTest, SplitPrefillAndDecodeEqualOneShotPrefill) {
  auto model = testutil::LoadOrDie(testutil::SyntheticModel(GetParam(), "q8_0"));
  ASSERT_TRUE(model);
  ASSERT_TRUE(model->config().is_hybrid());
  // The pages hold the attention layers only.
  const int V = model->config().n_vocab;
  std::mt19937 rng(21);
  const std::vector<int32_t> prompt = RandomPrompt(rng, 70, V);
  auto r1 = MakeRunner(*model, KvDtype::kF16, 8, 256);
  EXPECT_EQ(r1->kv_layout().n_layers, model->config().n_kv_layers);
  EXPECT_LT(model->config().n_kv_layers, model->config().n_layer);
  const FedRun one = Feed(*r1, prompt, {prompt.size()});
  // Every single split point.
  for (size_t cut = 1; cut < prompt.size(); ++cut) {
    auto r2 = MakeRunner(*model, KvDtype::kF16, 8, 256);
    const FedRun split = Feed(*r2, prompt, {cut, prompt.size()});
    SCOPED_TRACE("split at " + std::to_string(cut));
    ExpectSame(*r1, one, *r2, split);
    if (HasFatalFailure() || HasFailure()) return;
  }
  // Random multi-way splits and small n_batch (chunks inside Prefill).
  for (int trial = 0; trial < 5; ++trial) {
    auto r2 = MakeRunner(*model, KvDtype::kF16, 8, 1 + trial * 7);
    std::vector<size_t> cuts;
    for (size_t at = 0; at < prompt.size();) {
      at = std::min(prompt.size(), at + std::uniform_int_distribution<size_t>(1, 20)(rng));
      cuts.push_back(at);
    }
    const FedRun split = Feed(*r2, prompt, cuts);
    ExpectSame(*r1, one, *r2, split);
  }
  // Decode: one token per forward.
  std::vector<size_t> every(prompt.size());
  for (size_t i = 0; i < prompt.size(); ++i) every[i] = i + 1;
  auto r3 = MakeRunner(*model, KvDtype::kF16, 8, 256);
  const FedRun decode = Feed(*r3, prompt, every);
  ExpectSame(*r1, one, *r3, decode);
}

TEST_P(HybridInvarianceTest, SequenceWithoutRecurrentStateIsRefused) {
  auto model = testutil::LoadOrDie(testutil::SyntheticModel(GetParam(), "q8_0"));
  ASSERT_TRUE(model);
  auto r = MakeRunner(*model, KvDtype::kF16, 8);
  Sequence seq;
  std::vector<float> logits;
  const std::vector<int32_t> prompt = {1, 5, 9, 200, 31, 7, 8, 9, 10};
  ASSERT_TRUE(r->Prefill(seq, prompt, LogitsMode::kLast, &logits).ok());
  // What a KV-only cache hit would build: tokens and pages, no state.
  seq.recurrent.clear();
  const Status s = r->Decode(seq, 42, &logits);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_EQ(seq.n_past(), static_cast<int>(prompt.size()));
  r->Release(seq);
  EXPECT_TRUE(seq.recurrent.empty());
}

// The chunked DeltaNet prefill (RunnerOptions::deltanet_chunk_tokens) agrees with the default
// token-by-token recurrence to float rounding: logits within 1e-4 of the logit rms.
TEST_P(HybridInvarianceTest, ChunkedPrefillAgreesWithRecurrence) {
  auto model = testutil::LoadOrDie(testutil::SyntheticModel(GetParam(), "f32"));
  ASSERT_TRUE(model);
  std::mt19937 rng(5);
  const std::vector<int32_t> prompt = RandomPrompt(rng, 150, model->config().n_vocab);
  auto r1 = MakeRunner(*model, KvDtype::kF32, 16, 256);
  RunnerOptions o = r1->options();
  o.deltanet_chunk_tokens = 64;
  auto r2 = Runner::Create(*model, o);
  ASSERT_TRUE(r2.ok());
  const FedRun rec = Feed(*r1, prompt, {prompt.size()});
  const FedRun chunked = Feed(**r2, prompt, {prompt.size()});
  double ss = 0, max_diff = 0;
  for (size_t i = 0; i < rec.logits.size(); ++i) {
    ss += double{rec.logits[i]} * rec.logits[i];
    max_diff = std::max(max_diff, std::fabs(double{rec.logits[i]} - chunked.logits[i]));
  }
  const double rel = max_diff / std::sqrt(ss / rec.logits.size());
  std::printf("[ %s ] chunked vs recurrent prefill: max |diff| / logit rms = %.2e\n",
              GetParam().c_str(), rel);
  EXPECT_LE(rel, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Models, HybridInvarianceTest,
                         ::testing::Values("tiny-qwen35", "tiny-qwen35moe"), [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace kvstash::engine
