// The batched forward (Runner::Forward) must give every row exactly what it would get alone: the
// KV bytes stored for a position and the logits of a row may not depend on which other sequences
// rode in the batch, on prefill chunk sizes or on block boundaries. This is what lets the
// scheduler batch concurrent sequences without breaking cached == recomputed.
//
// For each model: N sequences are run (a) one at a time with Runner::Prefill/Decode and (b)
// together in batches of 2/4/8/16 with different neighbours, prefill chunks of random sizes mixed
// with decode rows. Greedy tokens, every logit row (bit for bit) and the KV bytes of every block
// must agree.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "tests/engine/engine_test_util.h"
#include "tests/fixtures.h"

namespace kvstash::engine {
namespace {

using testutil::Argmax;
using testutil::MakeRunner;
using testutil::RandomPrompt;

struct Alone {
  std::vector<int32_t> generated;
  std::vector<std::vector<float>> logits;  // one row per generated token
  Sequence seq;
};

// Greedy generation of n_gen tokens for one prompt, alone, in one Prefill call.
Alone RunAlone(Runner& r, const std::vector<int32_t>& prompt, int n_gen) {
  Alone a;
  std::vector<float> logits;
  Status s = r.Prefill(a.seq, prompt, LogitsMode::kLast, &logits);
  EXPECT_TRUE(s.ok()) << s.ToString();
  const int V = r.model().config().n_vocab;
  for (int i = 0; i < n_gen; ++i) {
    a.logits.push_back(logits);
    const int32_t t = Argmax(logits.data(), V);
    a.generated.push_back(t);
    if (i + 1 < n_gen) {
      EXPECT_TRUE(r.Decode(a.seq, t, &logits).ok());
    }
  }
  return a;
}

// Runs every prompt together through Forward: each step, every sequence still prefilling takes a
// random chunk (1..max_chunk tokens) and every decoding sequence one row; sequences start at
// random steps so prefill chunks and decode rows mix. `width` caps the sequences per batch.
void RunBatchedAndCompare(Runner& batched, const std::vector<std::vector<int32_t>>& prompts,
                          const std::vector<Alone>& alone, Runner& alone_runner, int n_gen,
                          int width, std::mt19937& rng) {
  const int V = batched.model().config().n_vocab;
  const size_t n = prompts.size();
  struct State {
    Sequence seq;
    size_t fed = 0;  // prompt tokens fed
    std::vector<int32_t> generated;
    std::vector<std::vector<float>> logits;
    int start_step = 0;
    int32_t pending = -1;
  };
  std::vector<State> st(n);
  for (auto& s : st) s.start_step = std::uniform_int_distribution<int>(0, 4)(rng);
  std::vector<std::vector<float>> out(n, std::vector<float>(V));
  for (int step = 0;; ++step) {
    std::vector<BatchSegment> segs;
    std::vector<size_t> who;
    std::vector<int32_t> one_token(n);
    // Rotate the starting sequence so neighbours change from step to step.
    const size_t rot = std::uniform_int_distribution<size_t>(0, n - 1)(rng);
    bool all_done = true;
    for (size_t k = 0; k < n; ++k) {
      const size_t i = (k + rot) % n;
      State& s = st[i];
      if (static_cast<int>(s.generated.size()) >= n_gen) continue;
      all_done = false;
      if (step < s.start_step || static_cast<int>(segs.size()) >= width) continue;
      BatchSegment seg;
      seg.seq = &s.seq;
      if (s.fed < prompts[i].size()) {
        const size_t left = prompts[i].size() - s.fed;
        const size_t m = std::min<size_t>(left, std::uniform_int_distribution<int>(1, 40)(rng));
        seg.tokens = std::span<const int32_t>(prompts[i].data() + s.fed, m);
        seg.logits = m == left ? LogitsMode::kLast : LogitsMode::kNone;
      } else {
        one_token[i] = s.pending;
        seg.tokens = std::span<const int32_t>(&one_token[i], 1);
        seg.logits = LogitsMode::kLast;
      }
      seg.out = out[i].data();
      ASSERT_TRUE(batched.Reserve(s.seq, s.seq.n_past() + seg.tokens.size()).ok());
      segs.push_back(seg);
      who.push_back(i);
    }
    if (all_done) break;
    ASSERT_TRUE(batched.Forward(segs).ok());
    for (size_t k = 0; k < segs.size(); ++k) {
      State& s = st[who[k]];
      if (s.fed < prompts[who[k]].size()) s.fed += segs[k].tokens.size();
      if (segs[k].logits == LogitsMode::kLast) {
        s.logits.push_back(out[who[k]]);
        s.pending = Argmax(out[who[k]].data(), V);
        s.generated.push_back(s.pending);
      }
    }
  }
  const size_t bb = batched.kv_layout().block_bytes();
  const int bt = batched.kv_layout().block_tokens;
  for (size_t i = 0; i < n; ++i) {
    SCOPED_TRACE("sequence " + std::to_string(i) + ", width " + std::to_string(width));
    EXPECT_EQ(st[i].generated, alone[i].generated);
    ASSERT_EQ(st[i].logits.size(), alone[i].logits.size());
    for (size_t t = 0; t < st[i].logits.size(); ++t) {
      EXPECT_EQ(0,
                std::memcmp(st[i].logits[t].data(), alone[i].logits[t].data(), V * sizeof(float)))
          << "logits of generated token " << t << " differ";
    }
    // Both hold prompt + n_gen - 1 positions (and, for hybrid models, the same state).
    ASSERT_EQ(st[i].seq.n_past(), alone[i].seq.n_past());
    ASSERT_EQ(st[i].seq.recurrent.size(), alone[i].seq.recurrent.size());
    EXPECT_EQ(0, std::memcmp(st[i].seq.recurrent.data(), alone[i].seq.recurrent.data(),
                             st[i].seq.recurrent.size() * sizeof(float)))
        << "recurrent state differs";
    const int blocks = (st[i].seq.n_past() + bt - 1) / bt;
    for (int b = 0; b < blocks; ++b) {
      // A partial last block compares its filled rows only (the rest is whatever the page held).
      const int filled = std::min(bt, st[i].seq.n_past() - b * bt);
      const KvLayout& L = batched.kv_layout();
      for (int l = 0; l < L.n_layers; ++l)
        for (int kv = 0; kv < 2; ++kv)
          for (int h = 0; h < L.n_kv_heads; ++h) {
            const size_t off = L.RowOffset(l, kv, h, 0) * L.elem_bytes();
            const size_t len = static_cast<size_t>(filled) * L.head_dim * L.elem_bytes();
            ASSERT_EQ(0,
                      std::memcmp(batched.pool().page(st[i].seq.block_table[b]) + off,
                                  alone_runner.pool().page(alone[i].seq.block_table[b]) + off, len))
                << "KV of block " << b << " layer " << l << " kv " << kv << " head " << h;
          }
    }
    (void)bb;
    batched.Release(st[i].seq);
  }
}

void CheckBatchInvariance(const Model& model, KvDtype dtype, uint32_t seed) {
  std::mt19937 rng(seed);
  const int V = model.config().n_vocab;
  constexpr int kSeqs = 16;
  constexpr int kGen = 6;
  for (int block_tokens : {16, 7}) {
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < kSeqs; ++i) {
      prompts.push_back(RandomPrompt(rng, std::uniform_int_distribution<int>(1, 90)(rng), V));
    }
    auto alone_runner = MakeRunner(model, dtype, block_tokens, 64);
    ASSERT_TRUE(alone_runner);
    std::vector<Alone> alone;
    // Each sequence alone in a runner with a pool big enough for all of them.
    RunnerOptions ro = alone_runner->options();
    ro.n_pages = kSeqs * 16;
    auto ar = Runner::Create(model, ro);
    ASSERT_TRUE(ar.ok());
    for (const auto& p : prompts) alone.push_back(RunAlone(**ar, p, kGen));
    for (int width : {2, 4, 8, 16}) {
      auto br = Runner::Create(model, ro);
      ASSERT_TRUE(br.ok());
      SCOPED_TRACE("block_tokens " + std::to_string(block_tokens));
      RunBatchedAndCompare(**br, prompts, alone, **ar, kGen, width, rng);
    }
  }
}

TEST(BatchInvarianceTest, Stories260KBatchesEqualAlone) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  auto model = testutil::LoadOrDie(testing::FixturePath("stories260K.gguf"));
  ASSERT_TRUE(model);
  CheckBatchInvariance(*model, KvDtype::kF32, 11);
}

TEST(BatchInvarianceTest, Q8LlamaBatchesEqualAlone) {
  auto model = testutil::LoadOrDie(testutil::SyntheticModel("tiny-llama", "q8_0"));
  ASSERT_TRUE(model);
  CheckBatchInvariance(*model, KvDtype::kF16, 12);
}

TEST(BatchInvarianceTest, Qwen2BiasBatchesEqualAlone) {
  auto model = testutil::LoadOrDie(testutil::SyntheticModel("tiny-qwen2", "f16"));
  ASSERT_TRUE(model);
  CheckBatchInvariance(*model, KvDtype::kF16, 13);
}

TEST(BatchInvarianceTest, Q4KQwen3BatchesEqualAlone) {
  auto model = testutil::LoadOrDie(testutil::SyntheticModel("tiny-qwen3", "q4_k"));
  ASSERT_TRUE(model);
  CheckBatchInvariance(*model, KvDtype::kF16, 14);
}

TEST(BatchInvarianceTest, Q4KQwen3MoeBatchesEqualAlone) {
  auto model = testutil::LoadOrDie(testutil::SyntheticModel("tiny-qwen3moe", "q4_k"));
  ASSERT_TRUE(model);
  CheckBatchInvariance(*model, KvDtype::kF16, 15);
}

TEST(BatchInvarianceTest, Q8HybridQwen35MoeBatchesEqualAlone) {
  auto model = testutil::LoadOrDie(testutil::SyntheticModel("tiny-qwen35moe", "q8_0"));
  ASSERT_TRUE(model);
  CheckBatchInvariance(*model, KvDtype::kF16, 16);
}

TEST(BatchInvarianceTest, ForwardRejectsBadBatchesWithoutChangingState) {
  auto model = testutil::LoadOrDie(testutil::SyntheticModel("tiny-llama", "q8_0"));
  ASSERT_TRUE(model);
  auto r = MakeRunner(*model, KvDtype::kF16, 16);
  Sequence a, b;
  std::vector<int32_t> ok = {1, 5, 6};
  std::vector<int32_t> bad = {1, model->config().n_vocab};
  ASSERT_TRUE(r->Reserve(a, 3).ok());
  ASSERT_TRUE(r->Reserve(b, 2).ok());
  std::vector<float> out(model->config().n_vocab);
  BatchSegment sa{&a, ok, LogitsMode::kLast, out.data()};
  BatchSegment sb{&b, bad, LogitsMode::kNone, nullptr};
  std::vector<BatchSegment> segs = {sa, sb};
  EXPECT_EQ(r->Forward(segs).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a.n_past(), 0);
  // Same sequence twice.
  segs = {sa, sa};
  EXPECT_EQ(r->Forward(segs).code(), StatusCode::kInvalidArgument);
  // No pages reserved.
  Sequence c;
  BatchSegment sc{&c, ok, LogitsMode::kNone, nullptr};
  segs = {sc};
  EXPECT_EQ(r->Forward(segs).code(), StatusCode::kInvalidArgument);
  segs = {sa};
  EXPECT_TRUE(r->Forward(segs).ok());
  EXPECT_EQ(a.n_past(), 3);
}

}  // namespace
}  // namespace kvstash::engine
