// What a newcomer met with `kvstash run`, as regression tests: Ctrl-C during a long cold prefill
// keeps the blocks computed so far, -t beyond the cores is capped with a warning, -n 0 reports no
// time to first token, no prompt says it generates from BOS, and a cache budget larger than the
// filesystem is said.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "tests/engine/engine_test_util.h"
#include "tests/fixtures.h"

extern char** environ;

namespace kvstash {
namespace {

std::string Bin() { return std::string(KVSTASH_BIN_DIR) + "/kvstash"; }
std::string Stories() { return testing::FixturePath("stories260K.gguf"); }

std::string Dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() /
           ("kvstash-newcomer-" + std::to_string(::getpid()) + "-" + name);
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// stdout and stderr together.
std::string Kvstash(const std::string& args, int* rc) {
  return engine::testutil::RunCommand(Bin() + " " + args + " 2>&1", rc);
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(RunNewcomerTest, InterruptedColdPrefillKeepsItsBlocks) {
  const std::string dir = Dir("sigint");
  // The demo model's shape and a prompt whose prefill takes seconds on one thread.
  const std::string model = engine::testutil::SyntheticModel("default", "q8_0");
  std::string ids;
  for (int i = 0; i < 3000; ++i) ids += std::to_string(3 + (i * 7919) % 4000) + " ";
  std::ofstream(dir + "/ids.txt") << ids;
  const std::string args = "run -m " + model + " --prompt-ids \"$(cat " + dir +
                           "/ids.txt)\" -n 4 --temp 0 -t 1 --batch-size 32 -c 4096 --cache-dir " +
                           dir + "/cache";
  // Start it, interrupt it mid-prefill.
  const std::string cmd = Bin() + " " + args;
  std::vector<std::string> argv = {"/bin/sh", "-c", "exec " + cmd + " >" + dir + "/out.txt 2>&1"};
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  pid_t pid = -1;
  ASSERT_EQ(posix_spawn(&pid, "/bin/sh", nullptr, nullptr, cargv.data(), environ), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  ASSERT_EQ(::kill(pid, SIGINT), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  const std::string out = Slurp(dir + "/out.txt");
  ASSERT_TRUE(WIFEXITED(status)) << out;
  if (WEXITSTATUS(status) == 0) GTEST_SKIP() << "the prefill finished within 1 s: " << out;
  EXPECT_EQ(WEXITSTATUS(status), 130) << out;
  EXPECT_NE(out.find("interrupted"), std::string::npos) << out;
  // The next run starts from what the interrupted one computed.
  int rc = 0;
  const std::string json = engine::testutil::RunCommand(cmd + " --json 2>/dev/null", &rc);
  ASSERT_EQ(rc, 0) << json;
  auto j = nlohmann::json::parse(json, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << json;
  EXPECT_GT(j["cache"]["cached_tokens"].get<int>(), 0) << json;
  EXPECT_GT(j["cache"]["disk_tokens"].get<int>(), 0);
}

TEST(RunNewcomerTest, MoreThreadsThanCoresAreCappedWithAWarning) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  int rc = 0;
  const std::string out =
      Kvstash("run -m " + Stories() + " -p Tom -n 2 --temp 0 -t 4096 --json", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("4096 threads requested but only"), std::string::npos) << out;
  const size_t brace = out.find("{\"");
  ASSERT_NE(brace, std::string::npos) << out;
  auto j = nlohmann::json::parse(out.substr(brace), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_LE(j["threads"].get<int>(), static_cast<int>(std::thread::hardware_concurrency()));
}

TEST(RunNewcomerTest, NoTokensMeansNoTimeToFirstToken) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  int rc = 0;
  std::string out =
      engine::testutil::RunCommand(Bin() + " run -m " + Stories() + " -p Tom -n 0 --json", &rc);
  ASSERT_EQ(rc, 0) << out;
  auto j = nlohmann::json::parse(out);
  EXPECT_TRUE(j["timings"]["ttft_ms"].is_null()) << out;
  EXPECT_TRUE(j["generated_ids"].empty());
  out = Kvstash("run -m " + Stories() + " -p Tom -n 0", &rc);
  EXPECT_NE(out.find("time to first token: none"), std::string::npos) << out;
}

TEST(RunNewcomerTest, NoPromptSaysItGeneratesFromBos) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  int rc = 0;
  const std::string out = Kvstash("run -m " + Stories() + " -n 4 --temp 0", &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(out.find("no prompt given"), std::string::npos) << out;
}

TEST(RunNewcomerTest, CacheBudgetLargerThanTheFilesystemIsSaid) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  const std::string dir = Dir("budget");
  int rc = 0;
  const std::string out = Kvstash(
      "run -m " + Stories() + " -p Tom -n 2 --cache-dir " + dir + "/cache --cache-bytes 4096T",
      &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("is larger than"), std::string::npos) << out;
  EXPECT_NE(out.find("--cache-bytes"), std::string::npos) << out;
}

}  // namespace
}  // namespace kvstash
