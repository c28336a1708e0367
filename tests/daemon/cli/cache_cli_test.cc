// `kvstash run --cache-dir/--session/--save-session` and `kvstash session list|rm`: what scripts
// rely on (the `cache` JSON object, exit codes), a second process served from disk, a session
// continued in another process equal to one uninterrupted run, and SIGKILL during write-behind.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "storage/testing/test_blocks.h"
#include "tests/engine/engine_test_util.h"
#include "tests/fixtures.h"

extern char** environ;

namespace kvstash {
namespace {

using storage::testing::RealDiskTestRoot;
using storage::testing::TempDir;

struct Output {
  int rc = -1;
  std::string out;
};

Output Kvstash(const std::string& args) {
  Output o;
  o.out = engine::testutil::RunCommand(
      std::string(KVSTASH_BIN_DIR) + "/kvstash " + args + " 2>>/tmp/kvstash-cache-cli-test.err",
      &o.rc);
  return o;
}

nlohmann::json RunJson(const std::string& args) {
  Output o = Kvstash("run " + args + " --json");
  EXPECT_EQ(o.rc, 0) << args << "\n" << o.out;
  auto j = nlohmann::json::parse(o.out, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << o.out;
  return j;
}

std::string Ids(const std::vector<int>& ids) {
  std::string s = "'";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s + "'";
}

std::vector<int> PromptIds(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int> ids{1};  // BOS
  for (int i = 1; i < n; ++i) ids.push_back(3 + static_cast<int>(rng() % 500));
  return ids;
}

std::string Model() { return testing::FixturePath("stories260K.gguf"); }

TEST(CacheCliTest, SecondProcessIsServedFromDisk) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  TempDir dir(RealDiskTestRoot(), "cli-cache");
  const std::string prompt = Ids(PromptIds(200, 1));
  const std::string base = "-m " + Model() + " --prompt-ids " + prompt + " -n 16 --temp 0";
  const auto cold = RunJson(base);
  EXPECT_FALSE(cold.contains("cache"));
  const auto first = RunJson(base + " --cache-dir " + dir.Sub("c"));
  const auto second = RunJson(base + " --cache-dir " + dir.Sub("c"));
  EXPECT_EQ(first["generated_ids"], cold["generated_ids"]);
  EXPECT_EQ(second["generated_ids"], cold["generated_ids"]);
  const auto& c1 = first["cache"];
  const auto& c2 = second["cache"];
  for (const char* k :
       {"cached_tokens", "device_tokens", "host_tokens", "disk_tokens", "load_ms"}) {
    ASSERT_TRUE(c1.contains(k)) << k;
    ASSERT_TRUE(c2.contains(k)) << k;
  }
  EXPECT_EQ(c1["cached_tokens"], 0);
  EXPECT_EQ(c2["cached_tokens"], 192);  // 12 full blocks of 16
  EXPECT_EQ(c2["disk_tokens"], 192);
  EXPECT_EQ(c2["device_tokens"], 0);
  EXPECT_EQ(c2["prefilled_tokens"], 8);
  EXPECT_TRUE(c2["fingerprint_remembered"].get<bool>());
  EXPECT_GE(second["timings"]["ttft_ms"].get<double>(), c2["load_ms"].get<double>());
  // A different salt shares nothing.
  const auto salted = RunJson(base + " --cache-dir " + dir.Sub("c") + " --cache-salt other");
  EXPECT_EQ(salted["cache"]["cached_tokens"], 0);
  EXPECT_EQ(salted["generated_ids"], cold["generated_ids"]);
}

TEST(CacheCliTest, SessionContinuedInANewProcessEqualsOneRun) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  TempDir dir(RealDiskTestRoot(), "cli-session");
  const std::string cache = " --cache-dir " + dir.Sub("c");
  const std::vector<int> p1 = PromptIds(40, 2);
  const std::vector<int> p2 = {403, 407, 261, 300};
  const std::string gen = " -n 12 --temp 0 --ignore-eos -m " + Model();
  const auto t1 = RunJson("--prompt-ids " + Ids(p1) + gen + cache + " --save-session chat");
  EXPECT_EQ(t1["cache"]["saved_session"], "chat");
  const auto t2 = RunJson("--prompt-ids " + Ids(p2) + gen + cache + " --session chat");
  // One uninterrupted run over the same tokens.
  std::vector<int> all = p1;
  for (const auto& t : t1["generated_ids"]) all.push_back(t.get<int>());
  all.insert(all.end(), p2.begin(), p2.end());
  const auto ref = RunJson("--prompt-ids " + Ids(all) + gen);
  EXPECT_EQ(t2["generated_ids"], ref["generated_ids"]);
  EXPECT_EQ(t2["timings"]["prompt_tokens"], static_cast<int>(all.size()));
  EXPECT_EQ(t2["cache"]["cached_tokens"], 52);  // every session token, tail included
  EXPECT_EQ(t2["cache"]["prefilled_tokens"], 4);

  Output list = Kvstash("session list --json" + cache);
  ASSERT_EQ(list.rc, 0);
  auto j = nlohmann::json::parse(list.out);
  ASSERT_EQ(j["sessions"].size(), 1u);
  EXPECT_EQ(j["sessions"][0]["name"], "chat");
  EXPECT_EQ(j["sessions"][0]["tokens"], 52);
  EXPECT_EQ(j["sessions"][0]["model"], Model());
  Output text = Kvstash("session list" + cache);
  EXPECT_NE(text.out.find("chat"), std::string::npos);
  EXPECT_EQ(Kvstash("session rm chat" + cache).rc, 0);
  EXPECT_EQ(Kvstash("session rm chat" + cache).rc, 1);
  EXPECT_EQ(Kvstash("run --session chat -p x" + gen + cache).rc, 1);
}

TEST(CacheCliTest, UsageErrors) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  TempDir dir(RealDiskTestRoot(), "cli-usage");
  const std::string m = " -m " + Model() + " -p hi -n 1";
  EXPECT_EQ(Kvstash("run --session s" + m).rc, 2);
  EXPECT_EQ(Kvstash("run --save-session s" + m).rc, 2);
  EXPECT_EQ(Kvstash("run --cache-dir " + dir.Sub("c") + " --save-session ../x" + m).rc, 2);
  EXPECT_EQ(Kvstash("run --cache-dir " + dir.Sub("c") + " --write-policy sometimes" + m).rc, 2);
  EXPECT_EQ(Kvstash("run --cache-dir " + dir.Sub("c") + " --cache-bytes lots" + m).rc, 2);
  EXPECT_EQ(Kvstash("session list --cache-dir " + dir.Sub("absent")).rc, 1);
  Output help = Kvstash("run --help");
  for (const char* flag : {"--cache-dir", "--cache-salt", "--cache-bytes", "--host-cache-bytes",
                           "--write-policy", "--session", "--save-session"}) {
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  }
}

// A process killed (SIGKILL) at random moments while it publishes and writes behind: after each
// kill the cache directory opens, and every run served from it gives the uncached output.
TEST(CacheCliTest, SigkillDuringWriteBehindNeverServesWrongKv) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  TempDir dir(RealDiskTestRoot(), "cli-kill");
  const std::string cache_dir = dir.Sub("c");
  std::vector<std::vector<int>> prompts;
  std::vector<nlohmann::json> cold;
  for (int i = 0; i < 3; ++i) {
    prompts.push_back(PromptIds(300, 10 + i));
    cold.push_back(RunJson("-m " + Model() + " --prompt-ids " + Ids(prompts[i]) +
                           " -n 24 --temp 0 --ignore-eos")["generated_ids"]);
  }
  std::mt19937 rng(1234);
  const std::string bin = std::string(KVSTASH_BIN_DIR) + "/kvstash";
  int kills = 0, hits = 0;
  for (int round = 0; round < 16; ++round) {
    const auto& p = prompts[round % prompts.size()];
    std::vector<std::string> argv_s = {bin,       "run", "-m",           Model(),  "--cache-dir",
                                       cache_dir, "-n",  "900",          "-c",     "1300",
                                       "--temp",  "0",   "--ignore-eos", "--json", "--prompt-ids"};
    std::string ids;
    for (int t : p) ids += std::to_string(t) + " ";
    argv_s.push_back(ids);
    std::vector<char*> argv;
    for (auto& s : argv_s) argv.push_back(s.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid = -1;
    ASSERT_EQ(posix_spawn(&pid, bin.c_str(), &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    std::this_thread::sleep_for(std::chrono::milliseconds(10 + rng() % 250));
    ::kill(pid, SIGKILL);
    int st = 0;
    ::waitpid(pid, &st, 0);
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) ++kills;  // else it had finished already
    // Every prompt served from what the killed process left behind is still right.
    for (size_t i = 0; i < prompts.size(); ++i) {
      const auto j = RunJson("-m " + Model() + " --prompt-ids " + Ids(prompts[i]) +
                             " -n 24 --temp 0 --ignore-eos --cache-dir " + cache_dir +
                             " --write-policy never");
      EXPECT_EQ(j["generated_ids"], cold[i]) << "round " << round << " prompt " << i;
      if (j["cache"]["cached_tokens"].get<int>() > 0) ++hits;
    }
  }
  std::printf("SIGKILL rounds: %d kills, %d warm runs with cache hits\n", kills, hits);
  EXPECT_GE(kills, 8);
  EXPECT_GT(hits, 0);
}

}  // namespace
}  // namespace kvstash
