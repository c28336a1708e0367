// Named sessions: durable save, restore after a restart from any tier, two independent restores
// sharing blocks, model mismatch refused, names validated, list and delete.
#include <gtest/gtest.h>

#include "cache/prefix_cache.h"
#include "tests/cache/cache_test_util.h"

namespace kvstash::cache {
namespace {

using storage::testing::RealDiskTestRoot;
using storage::testing::TempDir;
using testutil::Generate;
using testutil::MakePrompt;
using testutil::Stack;
using testutil::StackSetup;

// Prefills `prompt` into `seq` (after what it holds) and generates `n` greedy tokens, all of which
// end up computed in the sequence (the last one is fed through Decode too).
std::vector<int32_t> Turn(engine::Runner& r, engine::Sequence& seq, std::span<const int32_t> prompt,
                          int n) {
  std::vector<float> logits;
  EXPECT_TRUE(r.Prefill(seq, prompt, engine::LogitsMode::kLast, &logits).ok());
  std::vector<int32_t> out = engine::testutil::Greedy(r, seq, logits, n);
  EXPECT_TRUE(r.Decode(seq, out.back(), &logits).ok());
  return out;
}

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = testutil::SyntheticModel("tiny-qwen3", "q8_0");
    model_ = testutil::LoadOrDie(path_);
    ASSERT_NE(model_, nullptr);
    dir_ = std::make_unique<TempDir>(RealDiskTestRoot(), "cache-session");
    setup_.store_dir = dir_->Sub("store");
    V_ = model_->config().n_vocab;
  }
  std::string path_;
  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<TempDir> dir_;
  StackSetup setup_;
  int V_ = 0;
};

// Save -> restart -> restore -> continue gives the same tokens as never stopping.
TEST_F(SessionTest, SaveRestartRestoreContinueEqualsNeverStopping) {
  const auto p1 = MakePrompt(90, V_, 1), p2 = MakePrompt(21, V_, 2);
  // Never stopping: one sequence, two turns.
  std::vector<int32_t> g1, g2_ref;
  {
    StackSetup plain;
    Stack st(*model_, path_, plain);
    engine::Sequence seq;
    g1 = Turn(*st.runner, seq, p1, 12);
    g2_ref = Turn(*st.runner, seq, p2, 12);
  }
  {
    Stack st(*model_, path_, setup_);
    engine::Sequence seq;
    EXPECT_EQ(Turn(*st.runner, seq, p1, 12), g1);
    ASSERT_EQ(seq.n_past(), 90 + 12);  // 6 full blocks + a 6-token tail
    ASSERT_TRUE(st.cache->SaveSession("chat-1", seq).ok());
    st.cache->Release(seq);
  }
  Stack st(*model_, path_, setup_);  // restart
  engine::Sequence seq;
  auto r = st.cache->RestoreSession("chat-1", seq);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->tokens.size(), 102u);
  EXPECT_EQ(seq.n_past(), 102);  // everything, tail included, from disk
  EXPECT_EQ(r->acquired.disk_tokens, 102);
  EXPECT_EQ(Turn(*st.runner, seq, p2, 12), g2_ref);
  st.cache->Release(seq);

  auto list = ListSessions(*st.store);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "chat-1");
  EXPECT_EQ((*list)[0].tokens, 102);
  EXPECT_EQ((*list)[0].bytes, 7 * st.runner->kv_layout().block_bytes());
  EXPECT_GT((*list)[0].created_us, 0);
  EXPECT_GE((*list)[0].last_used_us, (*list)[0].created_us);
  EXPECT_EQ((*list)[0].model_path, path_);
}

// With only_if_prefix_of, a session that is not a prefix of the given tokens is reported without
// reading anything; one that is a prefix restores as without it.
TEST_F(SessionTest, OnlyIfPrefixOfReadsNothingForADivergedSession) {
  const auto p1 = MakePrompt(90, V_, 11);
  std::vector<int32_t> saved;
  {
    Stack st(*model_, path_, setup_);
    engine::Sequence seq;
    Turn(*st.runner, seq, p1, 6);
    saved = seq.tokens;
    ASSERT_TRUE(st.cache->SaveSession("chat-p", seq).ok());
    st.cache->Release(seq);
  }
  Stack st(*model_, path_, setup_);  // restart: every block is on disk only
  std::vector<int32_t> other = saved;
  other[other.size() - 3] = (other[other.size() - 3] + 1) % V_;  // differs in the tail
  other.push_back(1);
  {
    engine::Sequence seq;
    auto r = st.cache->RestoreSession("chat-p", seq, 1, "", &other);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(r->not_a_prefix);
    EXPECT_EQ(r->tokens, saved);
    EXPECT_EQ(seq.n_past(), 0);
    EXPECT_EQ(r->acquired.disk_tokens, 0);
    EXPECT_EQ(st.cache->Stats().disk.hits, 0u);
    // Shorter than the session: not a prefix either.
    const std::vector<int32_t> shorter(saved.begin(), saved.end() - 1);
    r = st.cache->RestoreSession("chat-p", seq, 1, "", &shorter);
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r->not_a_prefix);
    EXPECT_EQ(st.cache->Stats().disk.hits, 0u);
  }
  std::vector<int32_t> longer = saved;
  longer.push_back(2);
  engine::Sequence seq;
  auto r = st.cache->RestoreSession("chat-p", seq, 1, "", &longer);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->not_a_prefix);
  EXPECT_EQ(seq.n_past(), static_cast<int>(saved.size()) - 1);
  EXPECT_GT(st.cache->Stats().disk.hits, 0u);
  st.cache->Release(seq);
}

// Restoring twice gives two independent sequences that share the full blocks.
TEST_F(SessionTest, TwoRestoresAreIndependentAndShareBlocks) {
  const auto p1 = MakePrompt(70, V_, 3);
  const auto a = MakePrompt(9, V_, 4), b = MakePrompt(9, V_, 5);
  std::vector<int32_t> ga_ref, gb_ref;
  {
    StackSetup plain;
    Stack st(*model_, path_, plain);
    engine::Sequence s1;
    const auto g = Turn(*st.runner, s1, p1, 5);
    std::vector<int32_t> ctx = p1;
    ctx.insert(ctx.end(), g.begin(), g.end());
    st.runner->Release(s1);
    engine::Sequence sa, sb;
    Turn(*st.runner, sa, ctx, 1);
    st.runner->Release(sa);
    std::vector<int32_t> ca = ctx, cb = ctx;
    ca.insert(ca.end(), a.begin(), a.end());
    cb.insert(cb.end(), b.begin(), b.end());
    ga_ref = Generate(*st.runner, nullptr, ca, 8).tokens;
    gb_ref = Generate(*st.runner, nullptr, cb, 8).tokens;
    (void)sb;
  }
  Stack st(*model_, path_, setup_);
  {
    engine::Sequence s;
    Turn(*st.runner, s, p1, 5);
    ASSERT_TRUE(st.cache->SaveSession("base", s).ok());
    st.cache->Release(s);
  }
  engine::Sequence sa, sb;
  auto ra = st.cache->RestoreSession("base", sa);
  auto rb = st.cache->RestoreSession("base", sb);
  ASSERT_TRUE(ra.ok() && rb.ok());
  EXPECT_EQ(sa.block_table[0], sb.block_table[0]);          // shared full block
  EXPECT_NE(sa.block_table.back(), sb.block_table.back());  // private tails
  std::vector<float> la, lb;
  ASSERT_TRUE(st.runner->Prefill(sa, a, engine::LogitsMode::kLast, &la).ok());
  ASSERT_TRUE(st.runner->Prefill(sb, b, engine::LogitsMode::kLast, &lb).ok());
  EXPECT_EQ(engine::testutil::Greedy(*st.runner, sa, la, 8), ga_ref);
  EXPECT_EQ(engine::testutil::Greedy(*st.runner, sb, lb, 8), gb_ref);
  st.cache->Release(sa);
  st.cache->Release(sb);
}

// Blocks evicted from every tier are recomputed from the session's tokens.
TEST_F(SessionTest, RestoreRecomputesMissingBlocks) {
  const auto p1 = MakePrompt(80, V_, 6), p2 = MakePrompt(5, V_, 7);
  std::vector<int32_t> ref;
  {
    StackSetup plain;
    Stack st(*model_, path_, plain);
    engine::Sequence seq;
    Turn(*st.runner, seq, p1, 4);
    ref = Turn(*st.runner, seq, p2, 6);
  }
  {
    Stack st(*model_, path_, setup_);
    engine::Sequence seq;
    Turn(*st.runner, seq, p1, 4);
    ASSERT_TRUE(st.cache->SaveSession("gappy", seq).ok());
    st.cache->Release(seq);
    const auto keys = BlockHashes(NamespaceHash(st.ns), p1, 16);
    ASSERT_TRUE(st.store->Erase(keys[2]).ok());
  }
  Stack st(*model_, path_, setup_);
  engine::Sequence seq;
  auto r = st.cache->RestoreSession("gappy", seq);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(seq.n_past(), 32);  // blocks 0 and 1
  std::vector<float> logits;
  const std::span<const int32_t> rest(r->tokens.data() + seq.n_past(),
                                      r->tokens.size() - seq.n_past());
  ASSERT_TRUE(st.runner->Prefill(seq, rest, engine::LogitsMode::kNone, nullptr).ok());
  EXPECT_EQ(Turn(*st.runner, seq, p2, 6), ref);
  st.cache->Release(seq);
}

TEST_F(SessionTest, ErrorsAreClear) {
  Stack st(*model_, path_, setup_);
  engine::Sequence seq;
  auto missing = st.cache->RestoreSession("nope", seq);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope"), std::string::npos);
  for (const char* bad : {"", ".hidden", "-x", "a/b", "sp ace", "x\n"}) {
    EXPECT_EQ(ValidateSessionName(bad).code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(ValidateSessionName("agent_1.turn-2").ok());
  EXPECT_FALSE(st.cache->SaveSession("empty", seq).ok());
  {
    const auto p = MakePrompt(40, V_, 8);
    Turn(*st.runner, seq, p, 2);
    ASSERT_TRUE(st.cache->SaveSession("mine", seq).ok());
    st.cache->Release(seq);
  }
  EXPECT_EQ(DeleteSession(*st.store, "absent").code(), StatusCode::kNotFound);
  st.Close();

  // Another model refuses to restore it, naming both.
  const std::string other = testutil::SyntheticModel("tiny-qwen3", "q8_0", 99);
  auto other_model = testutil::LoadOrDie(other);
  {
    Stack o(*other_model, other, setup_);
    auto r = o.cache->RestoreSession("mine", seq);
    EXPECT_EQ(r.status().code(), StatusCode::kIncompatible);
    EXPECT_NE(r.status().message().find("another model"), std::string::npos);
    EXPECT_TRUE(seq.tokens.empty());
  }
  // Another KV type too.
  StackSetup f32 = setup_;
  f32.dtype = engine::KvDtype::kF32;
  {
    Stack o(*model_, path_, f32);
    auto r = o.cache->RestoreSession("mine", seq);
    EXPECT_EQ(r.status().code(), StatusCode::kIncompatible);
  }
  // Without a disk tier, sessions are refused.
  StackSetup nodisk;
  Stack nd(*model_, path_, nodisk);
  EXPECT_EQ(nd.cache->RestoreSession("mine", seq).status().code(), StatusCode::kInvalidArgument);

  Stack again(*model_, path_, setup_);
  ASSERT_TRUE(DeleteSession(*again.store, "mine").ok());
  EXPECT_EQ(again.cache->RestoreSession("mine", seq).status().code(), StatusCode::kNotFound);
  auto list = ListSessions(*again.store);
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
}

}  // namespace
}  // namespace kvstash::cache
