// kvstashd end to end: a real daemon over real sockets in a temporary directory. Restart
// persistence (SIGTERM and SIGKILL under load), concurrent clients equal to each alone, client
// disconnects freeing their sequence, hostile input leaving the daemon serving, API keys, the
// loading state, and configuration errors.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <random>
#include <thread>

#include "engine/model/mkmodel.h"
#include "tests/daemon/kvstashd/daemon_test_util.h"
#include "tests/engine/engine_test_util.h"
#include "tests/fixtures.h"

namespace kvstash::daemon {
namespace {

using nlohmann::json;
using testutil::Daemon;
using testutil::Http;
using testutil::Post;
using testutil::TestDir;

std::string Stories() { return ::kvstash::testing::FixturePath("stories260K.gguf"); }

// ~300 tokens of stories260K text: long enough for many 16-token blocks.
std::string LongPrompt(int variant = 0) {
  std::string p =
      "Once upon a time, there was a little girl named Lily " + std::to_string(variant) + ". ";
  for (int i = 0; i < 12; ++i) p += "She liked to play in the park with her friends every day. ";
  return p;
}

json Completion(const std::string& prompt, int max_tokens, bool stream = false) {
  return json{
      {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}, {"stream", stream}};
}

std::string TextOf(const testutil::HttpResult& r) {
  json j = r.Json();
  if (!j.is_object() || !j.contains("choices")) return "<no text: " + r.body.substr(0, 200) + ">";
  return j["choices"][0]["text"].get<std::string>();
}

double MetricValue(int port, const std::string& name) {
  const std::string text = Http(port, "GET", "/metrics").body;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + " ", 0) == 0) return std::atof(line.c_str() + name.size() + 1);
  }
  return -1;
}

TEST(DaemonE2eTest, RestartAfterSigtermServesFromDiskWithIdenticalOutput) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  const std::string dir = TestDir("restart");
  Daemon d(dir);
  const std::vector<std::string> args = {"-m", Stories(), "--cache-dir", dir + "/cache"};
  ASSERT_TRUE(d.Start(args)) << d.Log();
  auto cold = Post(d.port(), "/v1/completions", Completion(LongPrompt(), 16));
  ASSERT_EQ(cold.status, 200) << cold.body;
  json cu = cold.Json()["usage"];
  EXPECT_EQ(cu["prompt_tokens_details"]["cached_tokens"], 0);
  auto warm = Post(d.port(), "/v1/completions", Completion(LongPrompt(), 16));
  ASSERT_EQ(warm.status, 200);
  EXPECT_EQ(TextOf(warm), TextOf(cold));
  EXPECT_GT(warm.Json()["usage"]["kvstash"]["device_tokens"].get<int>(), 0);
  EXPECT_EQ(d.Stop(), 0) << d.Log();
  ASSERT_TRUE(d.Start(args)) << d.Log();
  auto disk = Post(d.port(), "/v1/completions", Completion(LongPrompt(), 16));
  ASSERT_EQ(disk.status, 200);
  EXPECT_EQ(TextOf(disk), TextOf(cold));
  const json du = disk.Json()["usage"];
  EXPECT_GT(du["kvstash"]["disk_tokens"].get<int>(), 200) << du.dump();
  EXPECT_EQ(du["prompt_tokens_details"]["cached_tokens"], du["kvstash"]["cached_tokens"]);
  EXPECT_EQ(d.Stop(), 0);
}

// A hybrid model (Gated DeltaNet + attention + MoE): after a restart the prompt resumes from a
// recurrent-state snapshot read from the disk tier, gives the cold run's text, and /metrics
// counts the snapshot read.
TEST(DaemonE2eTest, HybridModelResumesFromADiskSnapshotAfterRestart) {
  const std::string dir = TestDir("hybrid");
  engine::MkModelOptions o;
  auto preset = engine::FindPreset("tiny-qwen35moe");
  ASSERT_TRUE(preset.ok()) << preset.status().ToString();
  o.config = *preset;
  auto type = engine::ParseWeightType("q8_0");
  ASSERT_TRUE(type.ok());
  o.weight_type = *type;
  const std::string model = dir + "/tiny-qwen35moe.gguf";
  ASSERT_TRUE(engine::WriteSyntheticModel(model, o).ok());
  Daemon d(dir);
  const std::vector<std::string> args = {"-m", model, "--cache-dir", dir + "/cache"};
  ASSERT_TRUE(d.Start(args)) << d.Log();
  auto cold = Post(d.port(), "/v1/completions", Completion(LongPrompt(), 12));
  ASSERT_EQ(cold.status, 200) << cold.body;
  EXPECT_EQ(cold.Json()["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_GT(MetricValue(d.port(), "kvstash_snapshots_taken_total"), 0);
  EXPECT_EQ(MetricValue(d.port(), "kvstash_snapshot_bytes_read_total"), 0);
  EXPECT_EQ(d.Stop(), 0) << d.Log();
  ASSERT_TRUE(d.Start(args)) << d.Log();
  auto warm = Post(d.port(), "/v1/completions", Completion(LongPrompt(), 12));
  ASSERT_EQ(warm.status, 200) << warm.body;
  EXPECT_EQ(TextOf(warm), TextOf(cold));
  const json u = warm.Json()["usage"];
  const int prompt = u["prompt_tokens"];
  // Resumed at the last full block before the prompt's last token (its snapshot), the rest
  // computed: at most one block plus the last token.
  EXPECT_EQ(u["kvstash"]["disk_tokens"], u["kvstash"]["cached_tokens"]) << u.dump();
  EXPECT_GE(u["kvstash"]["cached_tokens"].get<int>(), prompt - 17) << u.dump();
  EXPECT_EQ(MetricValue(d.port(), "kvstash_snapshot_hits_total{tier=\"disk\"}"), 1);
  EXPECT_GT(MetricValue(d.port(), "kvstash_snapshot_bytes_read_total"), 0);
  EXPECT_GT(MetricValue(d.port(), "kvstash_store_bytes_read_total"), 0);
  EXPECT_EQ(d.Stop(), 0);
}

// Repeated SIGKILLs at random moments while clients are generating: after every restart the
// daemon answers, and every answer (before or after a kill) is the cache-off answer.
TEST(DaemonE2eTest, SigkillUnderLoadNeverGivesAWrongToken) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  const std::string dir = TestDir("sigkill");
  std::vector<std::string> prompts;
  for (int i = 0; i < 4; ++i) prompts.push_back(LongPrompt(i % 2) + (i < 2 ? "Tom" : "Sue"));
  // Reference: a cache-off daemon.
  std::vector<std::string> reference;
  {
    Daemon ref(dir + "/ref");
    ASSERT_TRUE(ref.Start({"-m", Stories(), "--no-cache"})) << ref.Log();
    for (const auto& p : prompts) {
      auto r = Post(ref.port(), "/v1/completions", Completion(p, 24));
      ASSERT_EQ(r.status, 200);
      reference.push_back(TextOf(r));
    }
    EXPECT_EQ(ref.Stop(), 0);
  }
  const std::vector<std::string> args = {"-m", Stories(), "--cache-dir", dir + "/cache"};
  std::mt19937 rng(42);
  int answered = 0;
  for (int cycle = 0; cycle < 20; ++cycle) {
    Daemon d(dir + "/run");
    ASSERT_TRUE(d.Start(args)) << "cycle " << cycle << ":\n" << d.Log();
    // The first answer after a restart must be right (recovered store).
    auto first = Post(d.port(), "/v1/completions", Completion(prompts[cycle % 4], 24));
    ASSERT_EQ(first.status, 200) << "cycle " << cycle;
    ASSERT_EQ(TextOf(first), reference[cycle % 4]) << "cycle " << cycle;
    std::atomic<bool> stop{false};
    std::atomic<int> wrong{0}, ok{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < 3; ++c) {
      clients.emplace_back([&, c] {
        for (int i = 0; !stop.load(); ++i) {
          const int k = (c + i) % 4;
          auto r = Post(d.port(), "/v1/completions", Completion(prompts[k], 24));
          if (r.status != 200) continue;  // killed mid-request
          if (TextOf(r) == reference[k]) {
            ++ok;
          } else {
            ++wrong;
          }
        }
      });
    }
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::uniform_int_distribution<int>(20, 400)(rng)));
    d.Kill();
    stop = true;
    for (auto& t : clients) t.join();
    EXPECT_EQ(wrong.load(), 0) << "cycle " << cycle;
    answered += ok.load() + 1;
  }
  EXPECT_GT(answered, 20);
}

TEST(DaemonE2eTest, SixteenConcurrentClientsEqualEachAlone) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  const std::string dir = TestDir("concurrent");
  Daemon d(dir);
  ASSERT_TRUE(d.Start({"-m", Stories(), "--cache-dir", dir + "/cache", "--parallel", "16"}))
      << d.Log();
  std::vector<std::string> prompts;
  for (int i = 0; i < 16; ++i) {
    prompts.push_back((i % 2 ? LongPrompt(i % 3) : std::string("Tom and Sue ")) +
                      std::to_string(i) + " went to the");
  }
  std::vector<std::string> alone;
  for (const auto& p : prompts)
    alone.push_back(TextOf(Post(d.port(), "/v1/completions", Completion(p, 20))));
  std::vector<std::future<testutil::HttpResult>> futures;
  for (const auto& p : prompts) {
    futures.push_back(std::async(std::launch::async, [&, p] {
      return Post(d.port(), "/v1/chat/completions",
                  json{{"messages", {{{"role", "user"}, {"content", p}}}},
                       {"max_tokens", 20},
                       {"temperature", 0}});
    }));
  }
  std::vector<std::future<testutil::HttpResult>> completions;
  for (const auto& p : prompts) {
    completions.push_back(std::async(std::launch::async, [&, p] {
      return Post(d.port(), "/v1/completions", Completion(p, 20));
    }));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto r = completions[i].get();
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(TextOf(r), alone[i]) << "client " << i;
    EXPECT_EQ(futures[i].get().status, 200);
  }
  EXPECT_EQ(d.Stop(), 0);
}

TEST(DaemonE2eTest, ClientDisconnectMidStreamFreesItsSequence) {
  const std::string dir = TestDir("disconnect");
  // Random weights: the end-of-generation token is rare, so the stream runs long.
  const std::string model = engine::testutil::SyntheticModel("tiny-qwen3", "f16");
  Daemon d(dir);
  ASSERT_TRUE(d.Start({"-m", model, "--cache-dir", dir + "/cache", "-c", "4096"})) << d.Log();
  int fd = testutil::ConnectTo(d.port());
  ASSERT_GE(fd, 0);
  const std::string body = Completion("hello there", 3500, true).dump();
  ASSERT_TRUE(testutil::SendAll(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                                        std::to_string(body.size()) + "\r\n\r\n" + body));
  // Read until the first token arrived (the headers alone go out before the request is admitted).
  std::string got;
  char buf[4096];
  while (got.find("data: ") == std::string::npos) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    ASSERT_GT(n, 0) << got;
    got.append(buf, static_cast<size_t>(n));
  }
  // The scheduler's counters follow at the end of its step.
  double before = 0;
  for (int i = 0; i < 100 && before != 1; ++i) {
    before = MetricValue(d.port(), "kvstash_running_sequences");
    if (before != 1) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(before, 1);
  ::close(fd);
  // Within a few steps the sequence is cancelled and freed.
  double running = 1;
  for (int i = 0; i < 200 && running != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    running = MetricValue(d.port(), "kvstash_running_sequences");
  }
  EXPECT_EQ(running, 0);
  EXPECT_EQ(MetricValue(d.port(), "kvstash_client_disconnects_total"), 1);
  EXPECT_EQ(MetricValue(d.port(), "kvstash_cancellations_total"), 1);
  EXPECT_EQ(d.Stop(), 0);
}

TEST(DaemonE2eTest, HostileInputLeavesTheDaemonServing) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  const std::string dir = TestDir("hostile");
  Daemon d(dir);
  ASSERT_TRUE(d.Start({"-m", Stories(), "--cache-dir", dir + "/cache", "--max-body-bytes", "64K",
                       "--header-timeout", "1", "-c", "1024"}))
      << d.Log();
  const int port = d.port();
  // Malformed JSON, wrong types, bad values: 400 naming the field.
  EXPECT_EQ(Http(port, "POST", "/v1/completions", "{\"prompt\": ").status, 400);
  EXPECT_EQ(Http(port, "POST", "/v1/completions", "[1,2,3]").status, 400);
  auto wrong = Post(port, "/v1/completions", json{{"prompt", 5.5}, {"max_tokens", 2}});
  EXPECT_EQ(wrong.status, 400);
  EXPECT_EQ(wrong.Json()["error"]["param"], "prompt") << wrong.body;
  auto temp = Post(port, "/v1/completions", json{{"prompt", "hi"}, {"temperature", -1}});
  EXPECT_EQ(temp.status, 400);
  EXPECT_EQ(temp.Json()["error"]["param"], "temperature");
  EXPECT_EQ(Http(port, "POST", "/v1/completions", R"({"prompt":"hi","top_p":NaN})").status, 400);
  EXPECT_EQ(Post(port, "/v1/chat/completions", json{{"messages", "hi"}}).status, 400);
  // Huge max_tokens: clamped to the context or refused, never a crash.
  auto huge = Post(port, "/v1/completions",
                   json{{"prompt", "hi"}, {"max_tokens", 1000000000000LL}, {"temperature", 0}});
  EXPECT_TRUE(huge.status == 200 || huge.status == 400) << huge.body;
  // Invalid UTF-8.
  EXPECT_EQ(Http(port, "POST", "/v1/completions", "{\"prompt\":\"\xff\xfe bad\"}").status, 400);
  // A prompt longer than the context: 422.
  std::string long_prompt;
  for (int i = 0; i < 400; ++i) long_prompt += "Once upon a time ";
  EXPECT_EQ(Post(port, "/v1/completions", json{{"prompt", long_prompt}}).status, 422);
  // A body over --max-body-bytes: 413.
  EXPECT_EQ(Http(port, "POST", "/v1/completions", std::string(100 * 1024, 'x')).status, 413);
  // Unknown route and method.
  EXPECT_EQ(Http(port, "GET", "/v1/nothing").status, 404);
  EXPECT_EQ(Http(port, "DELETE", "/v1/completions").status, 404);
  // A slow client that never finishes its headers is closed by the header timeout.
  {
    int fd = testutil::ConnectTo(port);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(testutil::SendAll(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n"));
    const auto t0 = std::chrono::steady_clock::now();
    char c;
    const ssize_t n = ::recv(fd, &c, 1, 0);  // blocks until the server closes
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LE(n, 0);
    EXPECT_LT(s, 10.0);
    ::close(fd);
  }
  // 1,000 connections opened and dropped (some mid-request).
  for (int i = 0; i < 1000; ++i) {
    int fd = testutil::ConnectTo(port);
    ASSERT_GE(fd, 0) << "connection " << i;
    if (i % 3 == 1) testutil::SendAll(fd, "GET /heal");
    if (i % 3 == 2)
      testutil::SendAll(fd, "POST /v1/completions HTTP/1.1\r\nContent-Length: 50\r\n\r\n{");
    ::close(fd);
  }
  // Still serving everyone.
  EXPECT_EQ(Http(port, "GET", "/health").status, 200);
  auto ok = Post(port, "/v1/completions", Completion("Once upon a time", 8));
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(d.Stop(), 0) << d.Log();
}

// A chat continued through `session` across a restart resumes from the saved session, partial
// tail block included; `cache_salt` keeps tenants apart.
TEST(DaemonE2eTest, SessionsSurviveRestartsAndSaltsIsolate) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  const std::string dir = TestDir("session");
  Daemon d(dir);
  const std::vector<std::string> args = {"-m", Stories(), "--cache-dir", dir + "/cache"};
  ASSERT_TRUE(d.Start(args)) << d.Log();
  const std::string first = LongPrompt(7);
  auto t1 =
      Post(d.port(), "/v1/completions",
           json{{"prompt", first}, {"max_tokens", 9}, {"temperature", 0}, {"session", "story-1"}});
  ASSERT_EQ(t1.status, 200) << t1.body;
  EXPECT_EQ(d.Stop(), 0);
  ASSERT_TRUE(d.Start(args)) << d.Log();
  // Turn 2 resends the conversation (turn 1 + its answer) and adds to it.
  const std::string second = first + TextOf(t1) + " Then she went home.";
  auto t2 =
      Post(d.port(), "/v1/completions",
           json{{"prompt", second}, {"max_tokens", 8}, {"temperature", 0}, {"session", "story-1"}});
  ASSERT_EQ(t2.status, 200) << t2.body;
  const json u2 = t2.Json()["usage"];
  const int prompt1 = t1.Json()["usage"]["prompt_tokens"].get<int>();
  // The whole first turn (its partial tail block too, from the session) came from disk.
  EXPECT_GE(u2["kvstash"]["disk_tokens"].get<int>(), prompt1) << u2.dump();
  // The same text under another salt shares nothing.
  auto salted = Post(
      d.port(), "/v1/completions",
      json{{"prompt", first}, {"max_tokens", 9}, {"temperature", 0}, {"cache_salt", "tenant-b"}});
  ASSERT_EQ(salted.status, 200);
  EXPECT_EQ(salted.Json()["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_EQ(TextOf(salted), TextOf(t1));
  auto again = Post(
      d.port(), "/v1/completions",
      json{{"prompt", first}, {"max_tokens", 9}, {"temperature", 0}, {"cache_salt", "tenant-b"}});
  EXPECT_GT(again.Json()["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 0);
  EXPECT_EQ(d.Stop(), 0);
}

TEST(DaemonE2eTest, ApiKeyIsRequiredExceptForHealth) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  const std::string dir = TestDir("auth");
  Daemon d(dir);
  ASSERT_TRUE(d.Start({"-m", Stories(), "--no-cache", "--api-key", "s3cret"})) << d.Log();
  const json body = Completion("Once", 2);
  EXPECT_EQ(Http(d.port(), "GET", "/health").status, 200);
  auto none = Post(d.port(), "/v1/completions", body);
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(none.Json()["error"]["type"], "authentication_error");
  EXPECT_EQ(Post(d.port(), "/v1/completions", body, {"Authorization: Bearer wrong"}).status, 401);
  EXPECT_EQ(Post(d.port(), "/v1/completions", body, {"Authorization: Bearer s3cret"}).status, 200);
  EXPECT_EQ(Post(d.port(), "/v1/completions", body, {"x-api-key: s3cret"}).status, 200);
  EXPECT_EQ(Http(d.port(), "GET", "/v1/models").status, 401);
  EXPECT_EQ(d.Stop(), 0);
}

TEST(DaemonE2eTest, WhileLoadingEveryRouteButHealthIs503) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  const std::string dir = TestDir("loading");
  Daemon d(dir);
  ASSERT_TRUE(d.Start({"-m", Stories(), "--no-cache"}, /*wait_ready=*/false,
                      std::chrono::seconds(30), {"KVSTASHD_TEST_LOAD_DELAY_MS=1500"}))
      << d.Log();
  auto health = Http(d.port(), "GET", "/health");
  EXPECT_EQ(health.status, 503);
  EXPECT_EQ(health.Json()["status"], "loading");
  auto gen = Post(d.port(), "/v1/completions", Completion("Once", 2));
  EXPECT_EQ(gen.status, 503);
  EXPECT_NE(gen.headers.find("Retry-After"), std::string::npos) << gen.headers;
  EXPECT_EQ(Http(d.port(), "GET", "/v1/models").status, 503);
  for (int i = 0; i < 300 && Http(d.port(), "GET", "/health").status != 200; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(Http(d.port(), "GET", "/health").status, 200);
  EXPECT_EQ(Post(d.port(), "/v1/completions", Completion("Once", 2)).status, 200);
  EXPECT_EQ(d.Stop(), 0);
}

TEST(DaemonE2eTest, ConfigErrorsNameTheKeyAndExit2) {
  const std::string dir = TestDir("config");
  auto run = [&](const std::string& args) {
    int rc = 0;
    std::string out = engine::testutil::RunCommand(Daemon::Binary() + " " + args + " 2>&1", &rc);
    return std::make_pair(rc, out);
  };
  {
    std::ofstream(dir + "/bad.toml") << "port = 9\nno-such-key = 1\n";
    auto [rc, out] = run("--config " + dir + "/bad.toml");
    EXPECT_EQ(rc, 2);
    EXPECT_NE(out.find("no-such-key"), std::string::npos) << out;
  }
  {
    std::ofstream(dir + "/badval.toml") << "parallel = \"many\"\n";
    auto [rc, out] = run("--config " + dir + "/badval.toml");
    EXPECT_EQ(rc, 2);
    EXPECT_NE(out.find("parallel"), std::string::npos) << out;
  }
  {
    auto [rc, out] = run("--kv-bytes lots");
    EXPECT_EQ(rc, 2);
    EXPECT_NE(out.find("--kv-bytes"), std::string::npos) << out;
  }
  {
    auto [rc, out] = run("--help");
    EXPECT_EQ(rc, 0);
    for (const char* flag :
         {"--model", "--cache-dir", "--port", "--api-key", "--parallel", "--batch-tokens",
          "--max-queue", "--shutdown-timeout", "--max-body-bytes", "--log-format", "--config"}) {
      EXPECT_NE(out.find(flag), std::string::npos) << flag;
    }
  }
  // A TOML file's values apply, and the command line wins over them.
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  std::ofstream(dir + "/ok.toml") << "model = \"" << Stories() << "\"\nno-cache = true\n"
                                  << "api-key = [\"from-file\"]\n";
  Daemon d(dir);
  ASSERT_TRUE(d.Start({"--config", dir + "/ok.toml"})) << d.Log();
  EXPECT_EQ(
      Post(d.port(), "/v1/completions", Completion("Once", 2), {"x-api-key: from-file"}).status,
      200);
  EXPECT_EQ(d.Stop(), 0);
}

}  // namespace
}  // namespace kvstash::daemon
