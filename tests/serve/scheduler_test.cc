// The scheduler end to end through serve::Engine: concurrent requests give exactly what each
// gives alone, the prefix cache serves shared prefixes per request, a pool too small for the
// load preempts and resumes without truncating or leaking pages, and cancellation frees pages.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "serve/engine.h"
#include "storage/testing/test_blocks.h"
#include "tests/cache/cache_test_util.h"
#include "tests/engine/engine_test_util.h"
#include "tests/fixtures.h"

namespace kvstash::serve {
namespace {

using cache::testutil::MakePrompt;

struct Result_ {
  std::vector<int32_t> tokens;
  Usage usage;
  Status error = Status::Ok();
  int progress_events = 0;
  std::vector<float> top_logits;  // first token's, when requested
};

Result_ CollectAll(RequestHandle& h) {
  Result_ r;
  for (;;) {
    auto e = h.Next(std::chrono::seconds(120));
    if (!e) {
      r.error = Status::Internal("timed out waiting for an event");
      return r;
    }
    switch (e->kind) {
      case Event::Kind::kToken:
        r.tokens.push_back(e->token);
        for (const TopLogit& t : e->top_logits) r.top_logits.push_back(t.logit);
        break;
      case Event::Kind::kPrefillProgress:
        ++r.progress_events;
        break;
      case Event::Kind::kDone:
        r.usage = e->usage;
        return r;
      case Event::Kind::kError:
        r.error = e->status;
        r.usage = e->usage;
        return r;
    }
  }
}

Request Greedy(std::vector<int32_t> prompt, int n) {
  Request r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0;
  r.limits.max_tokens = n;
  r.limits.ignore_eog = true;
  return r;
}

std::unique_ptr<Engine> OpenEngine(const std::string& model, bool use_cache, int n_pages,
                                   int max_running = 16, int batch_tokens = 64,
                                   int block_tokens = 16, const std::string& cache_dir = "") {
  EngineOptions o;
  o.cache_dir = cache_dir;
  o.cache_bytes = 64ull << 20;
  o.snapshot_disk_bytes = 64ull << 20;
  o.model_path = model;
  o.weights = engine::WeightMemory::kMmap;
  o.runner.n_threads = 2;
  o.runner.n_ctx = 512;
  o.runner.block_tokens = block_tokens;
  o.runner.n_pages = n_pages;
  o.use_cache = use_cache;
  o.scheduler.max_running = max_running;
  o.scheduler.batch_tokens = batch_tokens;
  auto e = Engine::Open(o);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(*e) : nullptr;
}

// Each prompt alone (one at a time) on an engine without a cache: the reference.
std::vector<std::vector<int32_t>> RunAlone(const std::string& model,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           int n) {
  auto eng = OpenEngine(model, false, 0, 1);
  std::vector<std::vector<int32_t>> out;
  for (const auto& p : prompts) {
    auto h = eng->Submit(Greedy(p, n));
    EXPECT_TRUE(h.ok()) << h.status().ToString();
    Result_ r = CollectAll(**h);
    EXPECT_TRUE(r.error.ok()) << r.error.ToString();
    EXPECT_EQ(static_cast<int>(r.tokens.size()), n);
    out.push_back(r.tokens);
  }
  return out;
}

// Pages only the device tier holds once nothing runs: nothing may be referenced by a sequence.
void ExpectIdlePool(Engine& eng) {
  // The scheduler updates its counters at the end of each step (after the final events went
  // out); give it time to finish that step.
  for (int i = 0; i < 200; ++i) {
    const SchedulerStats s = eng.scheduler_stats();
    if (s.running == 0 && s.queue_depth == 0 && s.pages_used == eng.cache_stats().device.blocks) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  SchedulerStats s = eng.scheduler_stats();
  EXPECT_EQ(s.running, 0u);
  EXPECT_EQ(s.queue_depth, 0u);
  EXPECT_EQ(s.pages_used, eng.cache_stats().device.blocks) << "pages leaked";
}

TEST(SchedulerTest, SixteenConcurrentRequestsEqualEachAlone) {
  const std::string model = engine::testutil::SyntheticModel("tiny-llama", "q8_0");
  const int V = 1024;  // tiny-llama's vocabulary
  // Eight share a 64-token prefix (system prompt + context); all differ after it.
  const std::vector<int32_t> shared = MakePrompt(64, V, 99);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 16; ++i) {
    std::vector<int32_t> p = i < 8 ? shared : std::vector<int32_t>{};
    auto own = MakePrompt(10 + 7 * i, V, 100 + i);
    p.insert(p.end(), own.begin(), own.end());
    prompts.push_back(p);
  }
  const int n = 12;
  auto alone = RunAlone(model, prompts, n);

  auto eng = OpenEngine(model, true, 512);
  ASSERT_TRUE(eng);
  // Warm the shared prefix so the other sharers find it in the device tier.
  {
    auto h = eng->Submit(Greedy(prompts[0], n));
    ASSERT_TRUE(h.ok());
    Result_ r = CollectAll(**h);
    ASSERT_TRUE(r.error.ok()) << r.error.ToString();
    EXPECT_EQ(r.tokens, alone[0]);
    EXPECT_EQ(r.usage.cached_tokens, 0);
  }
  std::vector<std::shared_ptr<RequestHandle>> handles;
  for (const auto& p : prompts) {
    auto h = eng->Submit(Greedy(p, n));
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    handles.push_back(*h);
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    Result_ r = CollectAll(*handles[i]);
    ASSERT_TRUE(r.error.ok()) << r.error.ToString();
    EXPECT_EQ(r.tokens, alone[i]) << "request " << i;
    EXPECT_EQ(r.usage.prompt_tokens, static_cast<int>(prompts[i].size()));
    EXPECT_EQ(r.usage.cached_tokens + r.usage.prefilled_tokens, r.usage.prompt_tokens);
    if (i == 0) {
      // Request 0 ran before: its whole prompt but the last position is cached.
      EXPECT_EQ(r.usage.cached_tokens, (static_cast<int>(prompts[0].size()) - 1) / 16 * 16);
    } else if (i < 8) {
      EXPECT_EQ(r.usage.cached_tokens, 64) << "request " << i;
      EXPECT_EQ(r.usage.device_tokens, 64);
    } else {
      EXPECT_EQ(r.usage.cached_tokens, 0) << "request " << i;
    }
  }
  SchedulerStats s = eng->scheduler_stats();
  EXPECT_EQ(s.completed, 17u);
  EXPECT_GT(s.batch_rows, 0u);
  // Batching happened: fewer steps than one per row.
  EXPECT_LT(s.steps, s.batch_rows);
  ExpectIdlePool(*eng);
}

TEST(SchedulerTest, PoolExhaustionPreemptsAndResumesWithoutTruncation) {
  const std::string model = engine::testutil::SyntheticModel("tiny-qwen3", "f16");
  const int V = 4096;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 8; ++i) prompts.push_back(MakePrompt(60 + 9 * i, V, 300 + i));
  const int n = 40;
  auto alone = RunAlone(model, prompts, n);
  // 8 sequences of up to 163 positions need ~80 pages of 16; give the pool 24 (each fits alone).
  for (bool use_cache : {true, false}) {
    SCOPED_TRACE(use_cache ? "with the prefix cache" : "without a cache");
    auto eng = OpenEngine(model, use_cache, 24, 8, 32);
    ASSERT_TRUE(eng);
    std::vector<std::shared_ptr<RequestHandle>> handles;
    for (const auto& p : prompts) {
      auto h = eng->Submit(Greedy(p, n));
      ASSERT_TRUE(h.ok()) << h.status().ToString();
      handles.push_back(*h);
    }
    int preempted = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      Result_ r = CollectAll(*handles[i]);
      ASSERT_TRUE(r.error.ok()) << r.error.ToString();
      EXPECT_EQ(r.tokens, alone[i]) << "request " << i;
      EXPECT_EQ(r.usage.finish, FinishReason::kMaxTokens);
      preempted += r.usage.preemptions;
    }
    SchedulerStats s = eng->scheduler_stats();
    EXPECT_EQ(s.completed, prompts.size());
    EXPECT_EQ(static_cast<int>(s.preemptions), preempted);
    EXPECT_GT(s.preemptions + 0u, 0u) << "the pool was never exhausted: the test lost its point";
    ExpectIdlePool(*eng);
  }
}

// Hybrid models (DeltaNet layers carry a recurrent state the cache does not store yet) must not
// resume from cached KV blocks: every request, repeated or preempted, recomputes its context and
// gives exactly what it gives alone on an engine without a cache.
// Hybrid models resume from recurrent-state snapshots (docs/cache.md "Hybrid models"): repeated
// and preempted requests equal the cold run, and a repeated prompt starts at its last block
// boundary before the end.
TEST(SchedulerTest, HybridModelResumesFromStateSnapshotsAndEqualsCold) {
  const std::string model = engine::testutil::SyntheticModel("tiny-qwen35", "f16");
  const int V = 2048;
  const std::vector<int32_t> shared = MakePrompt(48, V, 77);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p = shared;
    const std::vector<int32_t> own = MakePrompt(20 + 7 * i, V, 500 + i);
    p.insert(p.end(), own.begin() + 1, own.end());
    prompts.push_back(p);
  }
  const int n = 24;
  auto alone = RunAlone(model, prompts, n);
  // 12 pages of 16: each request fits alone, six at once do not (preemption).
  auto eng = OpenEngine(model, true, 12, 6, 32);
  ASSERT_TRUE(eng);
  int resumed = 0;
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::vector<std::shared_ptr<RequestHandle>> handles;
    for (const auto& p : prompts) {
      auto h = eng->Submit(Greedy(p, n));
      ASSERT_TRUE(h.ok()) << h.status().ToString();
      handles.push_back(*h);
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
      Result_ r = CollectAll(*handles[i]);
      ASSERT_TRUE(r.error.ok()) << r.error.ToString();
      EXPECT_EQ(r.tokens, alone[i]) << "request " << i;
      EXPECT_EQ(r.usage.cached_tokens % 16, 0) << "request " << i;
      resumed += r.usage.cached_tokens > 0;
    }
  }
  EXPECT_GT(eng->scheduler_stats().preemptions, 0u);
  EXPECT_GT(resumed, 0);
  EXPECT_GT(eng->cache_stats().snapshot_hits, 0u);
  ExpectIdlePool(*eng);

  // With room for everything: each repeat resumes at its last boundary before the end, with
  // the cold run's logits bit for bit.
  auto big = OpenEngine(model, true, 256, 6, 32);
  auto cold = OpenEngine(model, false, 0, 1);
  ASSERT_TRUE(big && cold);
  for (const auto& p : prompts) {
    Request req = Greedy(p, 4);
    req.top_logits = 16;
    auto c = cold->Submit(req);
    ASSERT_TRUE(c.ok());
    const Result_ ref = CollectAll(**c);
    for (int rep = 0; rep < 2; ++rep) {
      auto h = big->Submit(req);
      ASSERT_TRUE(h.ok());
      const Result_ r = CollectAll(**h);
      ASSERT_TRUE(r.error.ok()) << r.error.ToString();
      EXPECT_EQ(r.tokens, ref.tokens);
      EXPECT_EQ(r.top_logits, ref.top_logits) << "logits differ from the cold run";
      if (rep == 1) {
        EXPECT_EQ(r.usage.cached_tokens, (static_cast<int>(p.size()) - 1) / 16 * 16);
        EXPECT_EQ(r.usage.prefilled_tokens, static_cast<int>(p.size()) - r.usage.cached_tokens);
      }
    }
  }
}

// The agent loop: each turn's prompt is the conversation so far (previous prompt + the answer)
// plus new tokens. Snapshots at the end of every answer let each turn prefill only its new tokens
// plus at most one block, with the cold run's output.
TEST(SchedulerTest, HybridAgentLoopPrefillsOnlyEachTurnsNewTokens) {
  for (const char* preset : {"tiny-qwen35", "tiny-qwen35moe"}) {
    SCOPED_TRACE(preset);
    const std::string model = engine::testutil::SyntheticModel(preset, "q8_0");
    const int V = 2048;
    auto eng = OpenEngine(model, true, 64, 4, 64);
    auto cold = OpenEngine(model, false, 0, 1);
    ASSERT_TRUE(eng && cold);
    std::vector<int32_t> conv = MakePrompt(40, V, 900);
    for (int turn = 0; turn < 10; ++turn) {
      SCOPED_TRACE("turn " + std::to_string(turn));
      int new_tokens = static_cast<int>(conv.size());
      if (turn > 0) {
        const std::vector<int32_t> user = MakePrompt(9 + 3 * turn, V, 1000 + turn);
        conv.insert(conv.end(), user.begin(), user.end());
        new_tokens = static_cast<int>(user.size());
      }
      Request req = Greedy(conv, 5 + turn % 4);
      req.top_logits = 8;
      auto h = eng->Submit(req);
      auto c = cold->Submit(req);
      ASSERT_TRUE(h.ok() && c.ok());
      const Result_ r = CollectAll(**h);
      const Result_ ref = CollectAll(**c);
      ASSERT_TRUE(r.error.ok() && ref.error.ok());
      EXPECT_EQ(r.tokens, ref.tokens);
      EXPECT_EQ(r.top_logits, ref.top_logits);
      EXPECT_EQ(r.usage.cached_tokens + r.usage.prefilled_tokens, static_cast<int>(conv.size()));
      if (turn > 0) {
        EXPECT_LE(r.usage.prefilled_tokens, new_tokens + 16);
        EXPECT_GT(r.usage.cached_tokens, 0);
      }
      conv.insert(conv.end(), r.tokens.begin(), r.tokens.end());
    }
    ExpectIdlePool(*eng);
  }
}

// Chat message boundaries (Request::snapshot_hints, filled by the chat APIs): a conversation
// re-sent with its last message replaced resumes at the last block boundary before that message,
// and one with an earlier message edited at the boundary before the edited one; without hints
// neither resumes (the first request's snapshots sit past the divergence). Output equals cold.
TEST(SchedulerTest, HybridConversationWithAReplacedMessageResumesAtTheMessageBoundary) {
  const std::string model = engine::testutil::SyntheticModel("tiny-qwen35", "q8_0");
  const int V = 2048;
  // Four messages of 37, 45, 35 and 50 tokens: they start at 0, 37, 82 and 117.
  const std::vector<std::vector<int32_t>> msgs = {MakePrompt(37, V, 61), MakePrompt(45, V, 62),
                                                  MakePrompt(35, V, 63), MakePrompt(50, V, 64)};
  auto conversation = [&](const std::vector<std::vector<int32_t>>& m, bool hints) {
    Request req = Greedy({}, 6);
    for (const auto& x : m) {
      if (hints && !req.prompt.empty())
        req.snapshot_hints.push_back(static_cast<int>(req.prompt.size()));
      req.prompt.insert(req.prompt.end(), x.begin(), x.end());
    }
    req.top_logits = 8;
    return req;
  };
  std::vector<std::vector<int32_t>> last_replaced = msgs;
  last_replaced[3] = MakePrompt(41, V, 65);
  std::vector<std::vector<int32_t>> middle_edited = msgs;
  middle_edited[2][5] = middle_edited[2][5] == 9 ? 10 : 9;  // position 87
  auto cold = OpenEngine(model, false, 0, 1);
  ASSERT_TRUE(cold);
  for (bool hints : {true, false}) {
    SCOPED_TRACE(hints ? "with hints" : "without hints");
    auto eng = OpenEngine(model, true, 64, 4, 64);
    ASSERT_TRUE(eng);
    auto first = eng->Submit(conversation(msgs, hints));
    ASSERT_TRUE(first.ok());
    ASSERT_TRUE(CollectAll(**first).error.ok());
    // {request, the boundary it resumes at with hints}
    const std::vector<std::pair<Request, int>> cases = {
        {conversation(last_replaced, hints), 112},  // 117 -> 112
        {conversation(middle_edited, hints), 80},   // 82 -> 80
    };
    for (const auto& [req, want] : cases) {
      auto h = eng->Submit(req);
      auto c = cold->Submit(req);
      ASSERT_TRUE(h.ok() && c.ok());
      const Result_ r = CollectAll(**h);
      const Result_ ref = CollectAll(**c);
      ASSERT_TRUE(r.error.ok() && ref.error.ok());
      EXPECT_EQ(r.tokens, ref.tokens);
      EXPECT_EQ(r.top_logits, ref.top_logits) << "logits differ from the cold run";
      EXPECT_EQ(r.usage.cached_tokens, hints ? want : 0);
      EXPECT_EQ(r.usage.prefilled_tokens, static_cast<int>(req.prompt.size()) - (hints ? want : 0));
    }
    ExpectIdlePool(*eng);
  }
}

// After a restart (engine closed and reopened on the same cache directory) a hybrid prompt
// resumes from a disk snapshot, and a saved session resumes at its last full block: only its
// tail and the new tokens are computed. Output equals the cold run.
TEST(SchedulerTest, HybridModelResumesFromDiskSnapshotsAfterARestart) {
  const std::string model = engine::testutil::SyntheticModel("tiny-qwen35", "q8_0");
  const int V = 2048;
  storage::testing::TempDir dir(storage::testing::RealDiskTestRoot(), "hybrid-restart");
  const std::string cache_dir = dir.Sub("kv");
  const std::vector<int32_t> prompt = MakePrompt(75, V, 4242);
  auto cold = OpenEngine(model, false, 0, 1);
  ASSERT_TRUE(cold);
  auto run = [](Engine& e, Request req) {
    req.top_logits = 8;
    auto h = e.Submit(std::move(req));
    EXPECT_TRUE(h.ok());
    return h.ok() ? CollectAll(**h) : Result_{};
  };
  const Result_ ref = run(*cold, Greedy(prompt, 6));
  std::vector<int32_t> session_tokens;
  {
    auto eng = OpenEngine(model, true, 64, 4, 64, 16, cache_dir);
    ASSERT_TRUE(eng);
    Request req = Greedy(prompt, 6);
    req.save_session = "agent";
    const Result_ r = run(*eng, req);
    ASSERT_TRUE(r.error.ok()) << r.error.ToString();
    EXPECT_EQ(r.tokens, ref.tokens);
    session_tokens = prompt;
    session_tokens.insert(session_tokens.end(), r.tokens.begin(), r.tokens.end());
    ASSERT_TRUE(eng->Close().ok());
  }
  auto eng = OpenEngine(model, true, 64, 4, 64, 16, cache_dir);
  ASSERT_TRUE(eng);
  // The same prompt: from the disk snapshot at its last boundary before the end.
  const Result_ again = run(*eng, Greedy(prompt, 6));
  ASSERT_TRUE(again.error.ok()) << again.error.ToString();
  EXPECT_EQ(again.tokens, ref.tokens);
  EXPECT_EQ(again.top_logits, ref.top_logits);
  EXPECT_EQ(again.usage.cached_tokens, 64);
  EXPECT_EQ(again.usage.disk_tokens, 64);
  EXPECT_GE(eng->cache_stats().snapshot_disk_hits, 1u);
  // The session + new tokens: resumes at the session's last full block.
  const std::vector<int32_t> user = MakePrompt(20, V, 4343);
  Request next = Greedy(user, 6);
  next.restore_session = "agent";
  const Result_ resumed = run(*eng, next);
  ASSERT_TRUE(resumed.error.ok()) << resumed.error.ToString();
  std::vector<int32_t> whole = session_tokens;
  whole.insert(whole.end(), user.begin(), user.end());
  const Result_ whole_ref = run(*cold, Greedy(whole, 6));
  EXPECT_EQ(resumed.tokens, whole_ref.tokens);
  EXPECT_EQ(resumed.top_logits, whole_ref.top_logits);
  const int session_full = static_cast<int>(session_tokens.size()) / 16 * 16;
  EXPECT_EQ(resumed.usage.cached_tokens, session_full);
  EXPECT_EQ(resumed.usage.prefilled_tokens, static_cast<int>(whole.size()) - session_full);
  ExpectIdlePool(*eng);
}

TEST(SchedulerTest, RequestLargerThanThePoolIsRefusedNotTruncated) {
  const std::string model = engine::testutil::SyntheticModel("tiny-llama", "q8_0");
  auto eng = OpenEngine(model, true, 4);
  ASSERT_TRUE(eng);
  auto h = eng->Submit(Greedy(MakePrompt(100, 1024, 5), 4));
  ASSERT_TRUE(h.ok());
  Result_ r = CollectAll(**h);
  EXPECT_EQ(r.error.code(), StatusCode::kResourceExhausted) << r.error.ToString();
  ExpectIdlePool(*eng);
}

TEST(SchedulerTest, CancellationMidPrefillAndMidDecodeFreesPagesWithinAStep) {
  const std::string model = engine::testutil::SyntheticModel("tiny-qwen3", "f16");
  auto eng = OpenEngine(model, true, 256, 4, 8);  // 8 tokens per step: a long prefill
  ASSERT_TRUE(eng);
  // Mid-prefill: 400 prompt tokens take 50 steps.
  {
    Request req = Greedy(MakePrompt(400, 4096, 7), 8);
    req.progress = true;
    auto h = eng->Submit(req);
    ASSERT_TRUE(h.ok());
    // Wait until a few blocks are computed, then cancel.
    for (;;) {
      auto e = (*h)->Next(std::chrono::seconds(30));
      ASSERT_TRUE(e);
      ASSERT_EQ(e->kind, Event::Kind::kPrefillProgress);
      if (e->done_tokens >= 64) break;
    }
    (*h)->Cancel();
    Result_ r = CollectAll(**h);
    ASSERT_TRUE(r.error.ok());
    EXPECT_EQ(r.usage.finish, FinishReason::kCancelled);
    EXPECT_TRUE(r.tokens.empty());
    EXPECT_LT(r.usage.prefilled_tokens, 400);
    ExpectIdlePool(*eng);
    // The full blocks it computed stay cached: the same prompt now starts from them.
    auto h2 = eng->Submit(Greedy(MakePrompt(400, 4096, 7), 1));
    ASSERT_TRUE(h2.ok());
    Result_ r2 = CollectAll(**h2);
    ASSERT_TRUE(r2.error.ok());
    EXPECT_EQ(r2.usage.cached_tokens, r.usage.prefilled_tokens / 16 * 16);
    EXPECT_GT(r2.usage.cached_tokens, 0);
  }
  // Mid-decode: a long generation cancelled after a few tokens.
  {
    auto h = eng->Submit(Greedy(MakePrompt(20, 4096, 8), 400));
    ASSERT_TRUE(h.ok());
    int tokens = 0;
    while (tokens < 3) {
      auto e = (*h)->Next(std::chrono::seconds(30));
      ASSERT_TRUE(e);
      if (e->kind == Event::Kind::kToken) ++tokens;
    }
    (*h)->Cancel();
    Result_ r = CollectAll(**h);
    ASSERT_TRUE(r.error.ok());
    EXPECT_EQ(r.usage.finish, FinishReason::kCancelled);
    EXPECT_LT(r.usage.generated_tokens, 400);
    ExpectIdlePool(*eng);
  }
  EXPECT_EQ(eng->scheduler_stats().cancelled, 2u);
}

TEST(SchedulerTest, DeadlineCancels) {
  const std::string model = engine::testutil::SyntheticModel("tiny-llama", "q8_0");
  auto eng = OpenEngine(model, true, 256);
  ASSERT_TRUE(eng);
  Request req = Greedy(MakePrompt(20, 1024, 9), 400);
  req.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto h = eng->Submit(req);
  ASSERT_TRUE(h.ok());
  Result_ r = CollectAll(**h);
  ASSERT_TRUE(r.error.ok());
  EXPECT_EQ(r.usage.finish, FinishReason::kCancelled);
  ExpectIdlePool(*eng);
}

TEST(SchedulerTest, QueueBeyondMaxQueueIsRefused) {
  const std::string model = engine::testutil::SyntheticModel("tiny-llama", "q8_0");
  EngineOptions o;
  o.model_path = model;
  o.runner.n_threads = 1;
  o.runner.n_ctx = 512;
  o.scheduler.max_running = 1;
  o.scheduler.max_queue = 2;
  auto eng = Engine::Open(o);
  ASSERT_TRUE(eng.ok());
  std::vector<std::shared_ptr<RequestHandle>> ok;
  int refused = 0;
  for (int i = 0; i < 12; ++i) {
    auto h = (*eng)->Submit(Greedy(MakePrompt(30, 1024, 50 + i), 200));
    if (h.ok()) {
      ok.push_back(*h);
    } else {
      EXPECT_EQ(h.status().code(), StatusCode::kResourceExhausted);
      EXPECT_NE(h.status().message().find("max-queue"), std::string::npos);
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
  for (auto& h : ok) h->Cancel();
  for (auto& h : ok) EXPECT_TRUE(CollectAll(*h).error.ok());
  EXPECT_EQ((*eng)->scheduler_stats().refused, static_cast<uint64_t>(refused));
}

TEST(SchedulerTest, BadRequestsAreRefusedAtSubmit) {
  const std::string model = engine::testutil::SyntheticModel("tiny-llama", "q8_0");
  auto eng = OpenEngine(model, false, 64);
  ASSERT_TRUE(eng);
  EXPECT_EQ(eng->Submit(Greedy({1, 99999}, 1)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(eng->Submit(Greedy({}, 1)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(eng->Submit(Greedy(MakePrompt(600, 1024, 1), 1)).status().code(),
            StatusCode::kInvalidArgument);
  Request nan = Greedy({1, 2, 3}, 1);
  nan.sampling.temperature = 1;
  nan.sampling.top_p = std::nanf("");
  EXPECT_EQ(eng->Submit(nan).status().code(), StatusCode::kInvalidArgument);
  Request session = Greedy({1, 2, 3}, 1);
  session.save_session = "x";
  EXPECT_EQ(eng->Submit(session).status().code(), StatusCode::kInvalidArgument);
  Request forced = Greedy({1, 2, 3}, 4);
  forced.forced_tokens = {5, -1};
  EXPECT_EQ(eng->Submit(forced).status().code(), StatusCode::kInvalidArgument);
}

// Session-as-prefix mode when the conversation leaves the session mid-block (an agent re-sends
// its answer in other words): the session's KV serves every position up to the first differing
// token, not just the whole blocks, and the output is what a cold engine gives.
TEST(SchedulerTest, DivergedSessionStillServesTheCommonPrefixToTheToken) {
  const std::string model = engine::testutil::SyntheticModel("tiny-llama", "q8_0");
  const auto dir =
      std::filesystem::temp_directory_path() / ("kvstash-diverged-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  EngineOptions o;
  o.model_path = model;
  o.weights = engine::WeightMemory::kMmap;
  o.runner.n_threads = 2;
  o.runner.n_ctx = 512;
  o.runner.block_tokens = 16;
  o.runner.n_pages = 64;
  o.use_cache = true;
  o.cache_dir = dir.string();
  auto opened = Engine::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::unique_ptr<Engine> eng = std::move(*opened);

  const int V = 1024;
  const std::vector<int32_t> turn1 = MakePrompt(53, V, 41);  // 3 blocks + 5 tokens
  auto submit = [&](const std::vector<int32_t>& prompt, int n) {
    Request r = Greedy(prompt, n);
    r.save_session = "agent";
    r.restore_session = "agent";
    r.session_is_prefix = true;
    auto h = eng->Submit(r);
    EXPECT_TRUE(h.ok()) << h.status().ToString();
    return CollectAll(**h);
  };
  Result_ first = submit(turn1, 6);
  ASSERT_TRUE(first.error.ok()) << first.error.ToString();
  // The session now holds turn1 + its 6 generated tokens. The next prompt keeps turn1 and 3 of
  // the generated tokens, then goes on differently: it leaves the session at position 56, in the
  // middle of block 3.
  std::vector<int32_t> turn2 = turn1;
  turn2.insert(turn2.end(), first.tokens.begin(), first.tokens.begin() + 3);
  const int common = static_cast<int>(turn2.size());
  turn2.push_back((first.tokens[3] + 1) % V);
  const std::vector<int32_t> more = MakePrompt(30, V, 42);
  turn2.insert(turn2.end(), more.begin() + 1, more.end());
  Result_ second = submit(turn2, 8);
  ASSERT_TRUE(second.error.ok()) << second.error.ToString();
  EXPECT_EQ(second.usage.cached_tokens, common) << "whole blocks only would give 48";
  EXPECT_EQ(second.usage.prefilled_tokens, static_cast<int>(turn2.size()) - common);
  EXPECT_EQ(second.tokens, RunAlone(model, {turn2}, 8)[0]);

  // A prompt shorter than the session (a retry of an earlier turn): everything but its last
  // token comes from the session, in the middle of a block again.
  std::vector<int32_t> retry(turn2.begin(), turn2.begin() + 45);
  Result_ third = submit(retry, 4);
  ASSERT_TRUE(third.error.ok()) << third.error.ToString();
  EXPECT_EQ(third.usage.cached_tokens, 44);
  EXPECT_EQ(third.tokens, RunAlone(model, {retry}, 4)[0]);
  // Every page the diverged sessions lent or handed over is accounted for: once idle, only the
  // cache's own blocks are in use.
  ExpectIdlePool(*eng);
  eng.reset();
  std::filesystem::remove_all(dir);
}

// Forced tokens replace sampling and go through the model: the tokens after a forced prefix are
// exactly what greedy decoding gives when the prefix is part of the prompt, and a scripted reply
// (end_after_forced) is exactly the forced tokens, ending as an end-of-generation token would.
TEST(SchedulerTest, ForcedTokensPrimeTheReplyAndScriptedRepliesEndAfterThem) {
  const std::string model = engine::testutil::SyntheticModel("tiny-llama", "q8_0");
  auto eng = OpenEngine(model, false, 64);
  ASSERT_TRUE(eng);
  const std::vector<int32_t> prompt = MakePrompt(37, 1024, 3);
  const std::vector<int32_t> prefix = {11, 12, 13};
  std::vector<int32_t> joined = prompt;
  joined.insert(joined.end(), prefix.begin(), prefix.end());
  auto ref = eng->Submit(Greedy(joined, 5));
  ASSERT_TRUE(ref.ok());
  Result_ want = CollectAll(**ref);
  ASSERT_TRUE(want.error.ok());

  Request primed = Greedy(prompt, 8);
  primed.forced_tokens = prefix;
  auto h = eng->Submit(primed);
  ASSERT_TRUE(h.ok());
  Result_ got = CollectAll(**h);
  ASSERT_TRUE(got.error.ok()) << got.error.ToString();
  ASSERT_EQ(got.tokens.size(), 8u);
  EXPECT_EQ(std::vector<int32_t>(got.tokens.begin(), got.tokens.begin() + 3), prefix);
  EXPECT_EQ(std::vector<int32_t>(got.tokens.begin() + 3, got.tokens.end()), want.tokens);

  Request scripted = Greedy(prompt, 100);
  scripted.forced_tokens = {21, 22, 23, 24};
  scripted.end_after_forced = true;
  auto s = eng->Submit(scripted);
  ASSERT_TRUE(s.ok());
  Result_ sc = CollectAll(**s);
  ASSERT_TRUE(sc.error.ok());
  EXPECT_EQ(sc.tokens, scripted.forced_tokens);
  EXPECT_EQ(sc.usage.finish, FinishReason::kEndOfGeneration);
  EXPECT_EQ(sc.usage.generated_tokens, 4);
}

}  // namespace
}  // namespace kvstash::serve
