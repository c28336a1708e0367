// The local socket end to end: a real kvstashd, a real Unix socket, a temporary directory. Round
// trips of every request type, streaming, interleaved requests on one connection, Cancel
// mid-stream, 16 socket clients and HTTP clients at once with outputs identical to each request
// alone, and the same answer over the socket as over HTTP.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "tests/daemon/kvstashd/daemon_test_util.h"
#include "tests/daemon/kvstashd/socket_test_util.h"
#include "tests/fixtures.h"

namespace kvstash::daemon {
namespace {

using nlohmann::json;
using testutil::Daemon;
using testutil::Greedy;
using testutil::SocketClient;
using testutil::TestDir;

std::string Stories() { return ::kvstash::testing::FixturePath("stories260K.gguf"); }

std::string LongPrompt(int variant = 0) {
  std::string p =
      "Once upon a time, there was a little girl named Lily " + std::to_string(variant) + ". ";
  for (int i = 0; i < 12; ++i) p += "She liked to play in the park with her friends every day. ";
  return p;
}

class SocketE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KV_REQUIRE_FIXTURE("stories260K.gguf");
    dir_ = TestDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    d_ = std::make_unique<Daemon>(dir_);
    ASSERT_TRUE(d_->Start({"-m", Stories(), "--cache-dir", dir_ + "/cache"})) << d_->Log();
  }
  void TearDown() override {
    if (d_ && d_->running()) {
      EXPECT_EQ(d_->Stop(), 0) << d_->Log();
    }
  }
  std::string dir_;
  std::unique_ptr<Daemon> d_;
};

TEST_F(SocketE2eTest, EveryRequestTypeRoundTrips) {
  auto c = SocketClient(d_->socket_path());
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->server().major, protocol::wire::kMajorVersion);
  EXPECT_EQ(c->server().model, "stories260K");
  EXPECT_GT(c->server().n_ctx, 0);
  EXPECT_EQ(c->server().block_tokens, 16);

  auto health = c->Health();
  ASSERT_TRUE(health.ok()) << health.status().ToString();
  EXPECT_EQ(*health, "ok");

  auto ids = c->Tokenize({"Once upon a time", false, true});
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  EXPECT_FALSE(ids->empty());
  auto text = c->Detokenize(*ids);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "Once upon a time");
  EXPECT_EQ(c->Detokenize({-1}).status().code(), StatusCode::kInvalidArgument);

  // Streamed and not: the same greedy text; streaming delivered it in chunks.
  int chunks = 0;
  auto streamed =
      c->Generate(Greedy("Once upon a time", 12), [&](const protocol::TokenChunk&) { ++chunks; });
  ASSERT_TRUE(streamed.ok()) << streamed.status().ToString();
  EXPECT_GE(chunks, 1);
  EXPECT_EQ(streamed->usage.generated_tokens, 12);
  EXPECT_EQ(streamed->tokens.size(), 12u);
  EXPECT_EQ(streamed->usage.finish_reason, "max_tokens");
  auto whole = c->Generate(Greedy("Once upon a time", 12, /*stream=*/false));
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->text, streamed->text);
  EXPECT_EQ(whole->tokens, streamed->tokens);

  // Prefill warms; the second time everything but the last token is cached.
  protocol::PrefillRequest p;
  p.prompt.text = LongPrompt();
  int progress = 0;
  auto cold = c->Prefill(p, [&](const protocol::Progress&) { ++progress; });
  ASSERT_TRUE(cold.ok()) << cold.status().ToString();
  EXPECT_EQ(cold->cached_tokens, 0);
  EXPECT_EQ(cold->prefilled_tokens, cold->prompt_tokens);
  EXPECT_EQ(cold->generated_tokens, 0);
  EXPECT_GE(progress, 1);
  auto warm = c->Prefill(p);
  ASSERT_TRUE(warm.ok());
  EXPECT_EQ(warm->cached_tokens, (warm->prompt_tokens - 1) / 16 * 16);
  EXPECT_EQ(warm->device_tokens, warm->cached_tokens);

  // Sessions: save, list, restore, generate on, delete.
  protocol::SessionSaveRequest save;
  save.name = "story";
  save.prompt.text = LongPrompt(1);
  auto saved = c->SessionSave(save);
  ASSERT_TRUE(saved.ok()) << saved.status().ToString();
  EXPECT_EQ(saved->session_saved, "story");
  auto list = c->SessionList();
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "story");
  EXPECT_EQ((*list)[0].tokens, saved->prompt_tokens);
  auto restored = c->SessionRestore({"story", ""});
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  ASSERT_TRUE(restored->usage.has_value());
  EXPECT_EQ(restored->usage->prompt_tokens, saved->prompt_tokens);
  // The session's full blocks are still in device memory; its partial tail is on disk, and the
  // cache's cost model may judge recomputing those few tokens of this tiny model cheaper than a
  // disk read (it does on fast machines). So either the tail is loaded (every position but the
  // last) or exactly the tail is recomputed (the full blocks).
  const int full = saved->prompt_tokens / 16 * 16;
  const int tail = saved->prompt_tokens - 1 - full;
  ASSERT_GT(tail, 0) << "the session needs a partial tail block";
  const protocol::Usage& ru = *restored->usage;
  if (ru.disk_tokens > 0) {
    EXPECT_EQ(ru.cached_tokens, saved->prompt_tokens - 1);
    EXPECT_EQ(ru.disk_tokens, tail);
  } else {
    EXPECT_EQ(ru.cached_tokens, full);
  }
  EXPECT_EQ(ru.device_tokens, full);
  auto on = Greedy(" The end.", 4);
  on.session = "story";
  on.session_mode = protocol::SessionMode::kAppend;
  auto cont = c->Generate(on);
  ASSERT_TRUE(cont.ok()) << cont.status().ToString();
  EXPECT_GT(cont->usage.prompt_tokens, saved->prompt_tokens);
  EXPECT_GE(cont->usage.cached_tokens, full);
  EXPECT_TRUE(c->SessionDelete("story").ok());
  EXPECT_EQ(c->SessionDelete("story").code(), StatusCode::kNotFound);
  EXPECT_EQ(c->SessionRestore({"story", ""}).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(c->SessionDelete("../etc").code(), StatusCode::kInvalidArgument);

  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  ASSERT_EQ(stats->tiers.size(), 3u);
  EXPECT_EQ(stats->tiers[0].tier, "device");
  EXPECT_GT(stats->tiers[0].hits, 0u);
  EXPECT_GT(stats->pages_total, 0u);
  EXPECT_EQ(stats->running, 0u);

  // Cancel of an id that is not running is answered and harmless.
  EXPECT_TRUE(c->Cancel(999999).ok());
  EXPECT_EQ(*c->Health(), "ok");
}

TEST_F(SocketE2eTest, ChatMessagesAndBadFieldsGetClearErrors) {
  auto c = SocketClient(d_->socket_path());
  ASSERT_NE(c, nullptr);
  protocol::GenerateRequest g = Greedy("", 4);
  g.prompt.messages = {{"user", "Hello"}};
  auto r = c->Generate(g);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_GT(r->usage.prompt_tokens, 3);  // the template's markup around "Hello"
  g.prompt.text = "both";
  EXPECT_NE(c->Generate(g).status().message().find("one of text, messages or tokens"),
            std::string::npos);
  g = Greedy("", 4);
  EXPECT_NE(c->Generate(g).status().message().find("empty"), std::string::npos);
  g = Greedy("x", 4);
  g.session = "bad/name";
  EXPECT_EQ(c->Generate(g).status().code(), StatusCode::kInvalidArgument);
  g = Greedy("x", 4);
  g.sampling.temperature = 50;
  EXPECT_EQ(c->Generate(g).status().code(), StatusCode::kInvalidArgument);
  g = Greedy("", 4);
  g.prompt.tokens = {1, 2, 1 << 30};
  EXPECT_NE(c->Generate(g).status().message().find("out of range"), std::string::npos);
  g = Greedy(std::string(200000, 'a'), 4);
  EXPECT_NE(c->Generate(g).status().message().find("context"), std::string::npos);
  EXPECT_EQ(*c->Health(), "ok");
}

TEST_F(SocketE2eTest, SocketAnswersLikeHttp) {
  auto c = SocketClient(d_->socket_path());
  ASSERT_NE(c, nullptr);
  auto s = c->Generate(Greedy(LongPrompt(3), 16));
  ASSERT_TRUE(s.ok());
  auto h = testutil::Post(d_->port(), "/v1/completions",
                          json{{"prompt", LongPrompt(3)}, {"max_tokens", 16}, {"temperature", 0}});
  ASSERT_EQ(h.status, 200) << h.body;
  const json j = h.Json();
  EXPECT_EQ(j["choices"][0]["text"].get<std::string>(), s->text);
  EXPECT_EQ(j["usage"]["prompt_tokens"].get<int>(), s->usage.prompt_tokens);
  // The HTTP request came second: its prompt was cached by the socket's.
  EXPECT_EQ(j["usage"]["kvstash"]["cached_tokens"].get<int>(),
            (s->usage.prompt_tokens - 1) / 16 * 16);
}

TEST_F(SocketE2eTest, TwoRequestsInterleaveOnOneConnection) {
  auto c = SocketClient(d_->socket_path());
  ASSERT_NE(c, nullptr);
  auto alone_a = c->Generate(Greedy(LongPrompt(10), 24));
  auto alone_b = c->Generate(Greedy(LongPrompt(11), 24));
  ASSERT_TRUE(alone_a.ok() && alone_b.ok());
  auto a = c->Start(Greedy(LongPrompt(10), 24));
  auto b = c->Start(Greedy(LongPrompt(11), 24));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE((*a)->id(), (*b)->id());
  std::string text_a, text_b;
  bool done_a = false, done_b = false;
  int switches = 0;
  int last = 0;
  // Read both calls alternately: frames of both arrive while the other is still running.
  while (!done_a || !done_b) {
    for (int which : {1, 2}) {
      bool& done = which == 1 ? done_a : done_b;
      if (done) continue;
      auto& call = which == 1 ? *a : *b;
      auto f = call->Next(std::chrono::seconds(60));
      ASSERT_TRUE(f.ok()) << f.status().ToString();
      if (const auto* t = std::get_if<protocol::TokenChunk>(&*f)) {
        (which == 1 ? text_a : text_b) += t->text;
        if (last != which) ++switches;
        last = which;
      } else if (const auto* d = std::get_if<protocol::Done>(&*f)) {
        (which == 1 ? text_a : text_b) += d->text;
        done = true;
      } else {
        FAIL() << protocol::BodyName(*f);
      }
    }
  }
  EXPECT_EQ(text_a, alone_a->text);
  EXPECT_EQ(text_b, alone_b->text);
  EXPECT_GE(switches, 2);
}

TEST_F(SocketE2eTest, CancelMidStreamFreesTheSequence) {
  auto c = SocketClient(d_->socket_path());
  ASSERT_NE(c, nullptr);
  protocol::GenerateRequest g = Greedy("Once upon a time", 100000);
  auto call = c->Start(g);
  ASSERT_TRUE(call.ok());
  auto first = (*call)->Next(std::chrono::seconds(60));
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(std::holds_alternative<protocol::TokenChunk>(*first)) << protocol::BodyName(*first);
  ASSERT_TRUE((*call)->Cancel().ok());
  protocol::Done done;
  for (;;) {
    auto f = (*call)->Next(std::chrono::seconds(60));
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    if (auto* d = std::get_if<protocol::Done>(&*f)) {
      done = *d;
      break;
    }
  }
  ASSERT_TRUE(done.usage.has_value());
  EXPECT_EQ(done.usage->finish_reason, "cancelled");
  EXPECT_LT(done.usage->generated_tokens, 5000);
  // The sequence is gone: nothing runs (the scheduler's counters catch up within a step).
  uint64_t running = 1, cancelled = 0;
  for (int i = 0; i < 200 && (running != 0 || cancelled == 0); ++i) {
    auto st = c->Stats();
    ASSERT_TRUE(st.ok());
    running = st->running;
    cancelled = st->cancelled;
    if (running != 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(running, 0u);
  EXPECT_GE(cancelled, 1u);
  EXPECT_EQ(*c->Health(), "ok");
}

TEST_F(SocketE2eTest, ClosingTheConnectionCancelsItsRequests) {
  {
    auto c = SocketClient(d_->socket_path());
    ASSERT_NE(c, nullptr);
    auto call = c->Start(Greedy("Once upon a time", 100000));
    ASSERT_TRUE(call.ok());
    ASSERT_TRUE((*call)->Next(std::chrono::seconds(60)).ok());
  }  // the client goes away mid-stream
  auto c = SocketClient(d_->socket_path());
  ASSERT_NE(c, nullptr);
  for (int i = 0; i < 200; ++i) {
    auto st = c->Stats();
    ASSERT_TRUE(st.ok());
    if (st->running == 0 && st->cancelled >= 1) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  FAIL() << "the abandoned request kept running";
}

TEST_F(SocketE2eTest, SixteenSocketClientsAndHttpClientsMatchEachAlone) {
  constexpr int kSocket = 16, kHttp = 4;
  std::vector<std::string> alone(kSocket + kHttp);
  {
    auto c = SocketClient(d_->socket_path());
    ASSERT_NE(c, nullptr);
    for (int i = 0; i < kSocket + kHttp; ++i) {
      auto r = c->Generate(Greedy(LongPrompt(100 + i), 16, i % 2 == 0));
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      alone[i] = r->text;
    }
  }
  std::vector<std::future<std::string>> futures;
  for (int i = 0; i < kSocket; ++i) {
    futures.push_back(std::async(std::launch::async, [this, i]() -> std::string {
      auto c = SocketClient(d_->socket_path());
      if (!c) return "<no connection>";
      auto r = c->Generate(Greedy(LongPrompt(100 + i), 16, i % 2 == 0));
      return r.ok() ? r->text : "<" + r.status().ToString() + ">";
    }));
  }
  for (int i = kSocket; i < kSocket + kHttp; ++i) {
    futures.push_back(std::async(std::launch::async, [this, i]() -> std::string {
      auto h = testutil::Post(
          d_->port(), "/v1/completions",
          json{{"prompt", LongPrompt(100 + i)}, {"max_tokens", 16}, {"temperature", 0}});
      if (h.status != 200) return "<http " + std::to_string(h.status) + ">";
      return h.Json()["choices"][0]["text"].get<std::string>();
    }));
  }
  for (int i = 0; i < kSocket + kHttp; ++i) EXPECT_EQ(futures[i].get(), alone[i]) << i;
}

}  // namespace
}  // namespace kvstash::daemon
