// `kvstash session list|rm` on directories that hold no cache: a clear message naming the
// directory (not the store's internals), exit status 1, and nothing created there.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "storage/testing/test_blocks.h"

namespace kvstash {
namespace {

using storage::testing::RealDiskTestRoot;
using storage::testing::TempDir;

struct Output {
  int rc = -1;
  std::string text;  // stdout and stderr
};

Output Kvstash(const std::string& args) {
  Output o;
  const std::string cmd = std::string(KVSTASH_BIN_DIR) + "/kvstash " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return o;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) o.text.append(buf, n);
  const int status = pclose(p);
  o.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return o;
}

TEST(SessionCliTest, MissingCacheDirSaysSoForListAndRm) {
  TempDir dir(RealDiskTestRoot(), "cli-session-missing");
  const std::string absent = dir.Sub("absent");
  for (const std::string cmd : {"session list --cache-dir ", "session list --json --cache-dir ",
                                "session rm chat --cache-dir "}) {
    const Output o = Kvstash(cmd + absent);
    EXPECT_EQ(o.rc, 1) << cmd << o.text;
    EXPECT_NE(o.text.find("no cache directory at " + absent), std::string::npos) << o.text;
    EXPECT_EQ(o.text.find("create_if_missing"), std::string::npos) << o.text;
    EXPECT_FALSE(std::filesystem::exists(absent));
  }
}

TEST(SessionCliTest, DirectoryThatIsNotACacheIsLeftUntouched) {
  TempDir dir(RealDiskTestRoot(), "cli-session-notcache");
  const std::string plain = dir.Sub("plain");
  std::filesystem::create_directories(plain);
  for (const std::string cmd : {"session list --cache-dir ", "session rm chat --cache-dir "}) {
    const Output o = Kvstash(cmd + plain);
    EXPECT_EQ(o.rc, 1) << cmd << o.text;
    EXPECT_NE(o.text.find(plain + " is not a kvstash cache directory"), std::string::npos)
        << o.text;
    EXPECT_TRUE(std::filesystem::is_empty(plain)) << "store files were created in " << plain;
  }
  const std::string file = dir.Sub("file");
  std::ofstream(file) << "not a cache\n";
  const Output o = Kvstash("session list --cache-dir " + file);
  EXPECT_EQ(o.rc, 1) << o.text;
  EXPECT_NE(o.text.find("no cache directory at " + file + " (it is not a directory)"),
            std::string::npos)
      << o.text;
}

TEST(SessionCliTest, CacheWithoutSessionsListsNoneAndExitsZero) {
  TempDir dir(RealDiskTestRoot(), "cli-session-empty");
  const std::string cache = dir.Sub("c");
  std::filesystem::create_directories(cache + "/segments");  // a cache with nothing in it yet
  Output o = Kvstash("session list --cache-dir " + cache);
  EXPECT_EQ(o.rc, 0) << o.text;
  EXPECT_NE(o.text.find("no sessions in " + cache), std::string::npos) << o.text;
  o = Kvstash("session list --json --cache-dir " + cache);
  ASSERT_EQ(o.rc, 0) << o.text;
  const auto j = nlohmann::json::parse(o.text, nullptr, false);
  ASSERT_TRUE(j.is_object()) << o.text;
  EXPECT_EQ(j["sessions"], nlohmann::json::array());
  o = Kvstash("session rm chat --cache-dir " + cache);
  EXPECT_EQ(o.rc, 1) << o.text;
  EXPECT_NE(o.text.find("no session named 'chat'"), std::string::npos) << o.text;
}

TEST(SessionCliTest, HelpStatesTheExitStatus) {
  for (const char* cmd : {"session list --help", "session rm --help"}) {
    const Output o = Kvstash(cmd);
    EXPECT_EQ(o.rc, 0) << o.text;
    EXPECT_NE(o.text.find("Exit status"), std::string::npos) << cmd << "\n" << o.text;
  }
}

}  // namespace
}  // namespace kvstash
