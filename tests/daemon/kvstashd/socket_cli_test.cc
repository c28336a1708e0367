// The `kvstash` commands that talk to a running kvstashd (generate, chat, prefill, session,
// stats): what they print, their exit status, and a session saved through the CLI that continues
// after a daemon restart exactly as if the daemon had never stopped.
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "tests/daemon/kvstashd/daemon_test_util.h"
#include "tests/daemon/kvstashd/socket_test_util.h"
#include "tests/fixtures.h"

namespace kvstash::daemon {
namespace {

using nlohmann::json;
using testutil::Daemon;
using testutil::RunKvstash;
using testutil::TestDir;

std::string Stories() { return ::kvstash::testing::FixturePath("stories260K.gguf"); }

std::string Sock(const Daemon& d) { return " --socket " + d.socket_path(); }

const std::string kStory =
    "Once upon a time, there was a little girl named Lily. She liked to play in the park with "
    "her friends every day. One day she found a big red ball under a tree.";

TEST(SocketCliTest, SessionContinuesAcrossARestartAsIfNeverStopped) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  const std::string dir = TestDir("cli-session-restart");
  const std::string gen = " --temperature 0 -n 12 -q --json --session story";
  auto text_of = [](const testutil::CliResult& r) {
    const json j = json::parse(r.out, nullptr, false);
    return j.is_object() ? j["text"].get<std::string>() : "<" + r.out + r.err + ">";
  };
  // Never stopped.
  std::string turn2_reference;
  {
    Daemon d(dir + "/a");
    ASSERT_TRUE(d.Start({"-m", Stories(), "--cache-dir", dir + "/a/cache"})) << d.Log();
    auto t1 = RunKvstash("generate" + gen + Sock(d) + " '" + kStory + "'");
    ASSERT_EQ(t1.rc, 0) << t1.err;
    auto t2 = RunKvstash("generate" + gen + Sock(d) + " ' Then she'");
    ASSERT_EQ(t2.rc, 0) << t2.err;
    turn2_reference = text_of(t2);
    EXPECT_EQ(d.Stop(), 0);
  }
  // Stopped and restarted between the turns.
  Daemon d(dir + "/b");
  const std::vector<std::string> args = {"-m", Stories(), "--cache-dir", dir + "/b/cache"};
  ASSERT_TRUE(d.Start(args)) << d.Log();
  auto t1 = RunKvstash("generate" + gen + Sock(d) + " '" + kStory + "'");
  ASSERT_EQ(t1.rc, 0) << t1.err;
  const json u1 = json::parse(t1.out)["usage"];
  EXPECT_EQ(u1["session_saved"], "story");
  EXPECT_EQ(d.Stop(), 0);
  ASSERT_TRUE(d.Start(args)) << d.Log();
  auto list = RunKvstash("session list --json" + Sock(d));
  ASSERT_EQ(list.rc, 0) << list.err;
  const json sessions = json::parse(list.out)["sessions"];
  ASSERT_EQ(sessions.size(), 1u) << list.out;
  EXPECT_EQ(sessions[0]["name"], "story");
  auto restore = RunKvstash("session restore story --json" + Sock(d));
  ASSERT_EQ(restore.rc, 0) << restore.err;
  const json ru = json::parse(restore.out)["usage"];
  EXPECT_GT(ru["disk_tokens"].get<int>(), 0) << restore.out;
  auto t2 = RunKvstash("generate" + gen + Sock(d) + " ' Then she'");
  ASSERT_EQ(t2.rc, 0) << t2.err;
  EXPECT_EQ(text_of(t2), turn2_reference);
  const json u2 = json::parse(t2.out)["usage"];
  // Every full block before this turn came from memory (restored there just before).
  EXPECT_GE(u2["cached_tokens"].get<int>(), ru["prompt_tokens"].get<int>() / 16 * 16) << t2.out;
  EXPECT_GT(u2["device_tokens"].get<int>(), 0) << t2.out;
  auto rm = RunKvstash("session rm story" + Sock(d));
  EXPECT_EQ(rm.rc, 0) << rm.err;
  EXPECT_EQ(RunKvstash("session rm story" + Sock(d)).rc, 1);
  EXPECT_EQ(d.Stop(), 0);
  // The offline listing of the same directory still works with the daemon stopped.
  auto offline = RunKvstash("session list --json --cache-dir " + dir + "/b/cache");
  EXPECT_EQ(offline.rc, 0) << offline.err;
  EXPECT_EQ(json::parse(offline.out)["sessions"], json::array());
}

TEST(SocketCliTest, GenerateChatPrefillAndStats) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  const std::string dir = TestDir("cli-commands");
  Daemon d(dir);
  ASSERT_TRUE(d.Start({"-m", Stories(), "--cache-dir", dir + "/cache"})) << d.Log();

  auto g = RunKvstash("generate --temperature 0 -n 8" + Sock(d) + " 'Once upon a time'");
  ASSERT_EQ(g.rc, 0) << g.err;
  EXPECT_FALSE(g.out.empty());
  EXPECT_NE(g.err.find("8 generated"), std::string::npos) << g.err;
  auto piped = RunKvstash("generate --temperature 0 -n 8 -q" + Sock(d), "Once upon a time");
  ASSERT_EQ(piped.rc, 0) << piped.err;
  EXPECT_EQ(piped.out, g.out);

  // Chat from piped stdin: two turns in one session; the second starts from the first's KV.
  auto one = RunKvstash("chat --temperature 0 -n 6 --session talk1" + Sock(d), "Hello\n");
  ASSERT_EQ(one.rc, 0) << one.err;
  auto chat = RunKvstash("chat --temperature 0 -n 6 --session talk" + Sock(d), "Hello\nTell me\n");
  ASSERT_EQ(chat.rc, 0) << chat.err;
  EXPECT_EQ(chat.out.substr(0, one.out.size()), one.out);  // the first turn alone, then more
  EXPECT_GT(chat.out.size(), one.out.size());
  auto list = RunKvstash("session list --json" + Sock(d));
  const json talk = json::parse(list.out)["sessions"];
  ASSERT_EQ(talk.size(), 2u) << list.out;
  EXPECT_GT(talk[0]["tokens"].get<int>(), talk[1]["tokens"].get<int>()) << list.out;
  // A temporary chat session is removed at the end.
  auto tmp = RunKvstash("chat --temperature 0 -n 4" + Sock(d), "Hi\n");
  ASSERT_EQ(tmp.rc, 0) << tmp.err;
  list = RunKvstash("session list --json" + Sock(d));
  EXPECT_EQ(json::parse(list.out)["sessions"].size(), 2u) << list.out;

  // Prefill a "repository": the second run finds every full block cached.
  std::filesystem::create_directories(dir + "/repo/src/sub");
  for (const char* f : {"src/a.cc", "src/sub/b.cc", "src/c.h"}) {
    std::ofstream(dir + "/repo/" + f) << "// " << f << "\n" << kStory << "\n" << kStory << "\n";
  }
  const std::string prefill =
      "cd " + dir + "/repo && " + std::string(KVSTASH_BIN_DIR) + "/kvstash prefill --json";
  auto run_prefill = [&](const std::string& flags) {
    testutil::CliResult r;
    FILE* p = ::popen((prefill + flags + Sock(d) + " 2>&1").c_str(), "r");
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
    const int status = ::pclose(p);
    r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
  };
  auto p1 = run_prefill(" --glob 'src/**/*.cc' -f src/c.h");
  ASSERT_EQ(p1.rc, 0) << p1.out;
  const json j1 = json::parse(p1.out);
  EXPECT_EQ(j1["files"], 3);
  EXPECT_EQ(j1["usage"]["cached_tokens"], 0);
  auto p2 = run_prefill(" --glob 'src/**/*.cc' -f src/c.h");
  ASSERT_EQ(p2.rc, 0) << p2.out;
  const json u2 = json::parse(p2.out)["usage"];
  EXPECT_EQ(u2["cached_tokens"].get<int>(), (u2["prompt_tokens"].get<int>() - 1) / 16 * 16);
  EXPECT_EQ(run_prefill(" --glob 'nothing/*.x'").rc, 2);

  auto stats = RunKvstash("stats --json" + Sock(d));
  ASSERT_EQ(stats.rc, 0) << stats.err;
  const json s = json::parse(stats.out);
  EXPECT_GT(s["tiers"]["device"]["hits"].get<int>(), 0) << stats.out;
  EXPECT_GT(s["tiers"]["device"]["hit_rate"].get<double>(), 0);
  auto table = RunKvstash("stats" + Sock(d));
  ASSERT_EQ(table.rc, 0);
  EXPECT_NE(table.out.find("HIT RATE"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("device"), std::string::npos);
  EXPECT_EQ(d.Stop(), 0);
}

// `kvstash chat` as a person uses it: in a terminal (a pseudo-terminal here), typing with
// corrections and recalling the previous line. Each keystroke is sent only once the prompt is
// shown, as a person types.
class Terminal {
 public:
  // Runs `kvstash ARGS` on a new pseudo-terminal.
  bool Start(const std::vector<std::string>& args) {
    struct winsize ws {};
    ws.ws_row = 24;
    ws.ws_col = 120;
    pid_ = ::forkpty(&fd_, nullptr, nullptr, &ws);
    if (pid_ < 0) return false;
    if (pid_ == 0) {
      ::setenv("TERM", "xterm", 1);
      std::vector<char*> argv;
      const std::string bin = std::string(KVSTASH_BIN_DIR) + "/kvstash";
      argv.push_back(const_cast<char*>(bin.c_str()));
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
    return true;
  }
  ~Terminal() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  // Reads until `what` appears after position `from` of everything shown so far (false after
  // 60 s or when the program ended).
  // Then waits a moment more, so the line editor has the terminal in its mode before the next
  // keys arrive (a person does not type within microseconds of the prompt either).
  bool WaitFor(const std::string& what, size_t from) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (screen_.find(what, from) == std::string::npos) {
      if (std::chrono::steady_clock::now() > deadline || !ReadSome(200)) return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    return true;
  }
  void Type(const std::string& keys) {
    ASSERT_EQ(::write(fd_, keys.data(), keys.size()), static_cast<ssize_t>(keys.size()));
  }
  // Waits for the program to end; its exit status.
  // `nudge` is typed again every second while it runs (a key typed while the line editor
  // switches the terminal's mode can be flushed, as in a real terminal).
  int Wait(const std::string& nudge) {
    const auto start = std::chrono::steady_clock::now();
    auto last = start;
    while (ReadSome(200)) {
      const auto now = std::chrono::steady_clock::now();
      if (now - start > std::chrono::seconds(60)) return -2;  // the destructor kills it
      if (now - last > std::chrono::seconds(1)) {
        Type(nudge);
        last = now;
      }
    }
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  const std::string& screen() const { return screen_; }

 private:
  // False at end of output (EIO once the program closed the terminal).
  bool ReadSome(int ms) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, ms) <= 0) return true;
    char buf[4096];
    const ssize_t n = ::read(fd_, buf, sizeof(buf));
    if (n <= 0) return false;
    screen_.append(buf, static_cast<size_t>(n));
    return true;
  }
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string screen_;
};

TEST(SocketCliTest, ChatInATerminalEditsLinesAndRecallsHistory) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  const std::string dir = TestDir("cli-chat-tty");
  Daemon d(dir);
  ASSERT_TRUE(d.Start({"-m", Stories(), "--cache-dir", dir + "/cache"})) << d.Log();
  // The reference: the same two turns from piped stdin, typed without mistakes.
  auto piped = RunKvstash("chat --temperature 0 -n 6 -q --session piped" + Sock(d),
                          "Hello world\nHello world\n");
  ASSERT_EQ(piped.rc, 0) << piped.err;

  Terminal t;
  ASSERT_TRUE(t.Start({"chat", "--temperature", "0", "-n", "6", "--session", "typed", "--socket",
                       d.socket_path()}));
  ASSERT_TRUE(t.WaitFor("> ", 0)) << t.screen();
  // A typo fixed with backspace (DEL, what the key sends), then Ctrl-A and Ctrl-E around the
  // line, and a stray word removed with Ctrl-W.
  t.Type("Hello wrold");
  t.Type("\x7f\x7f\x7f\x7f");
  t.Type("orld oops");
  t.Type("\x17");  // Ctrl-W: deletes "oops"
  t.Type("\x7f");  // the space before it
  t.Type("\r");
  size_t shown = t.screen().size();
  ASSERT_TRUE(t.WaitFor("generated", shown)) << t.screen();  // the usage line of turn 1
  ASSERT_TRUE(t.WaitFor("> ", shown)) << t.screen();
  shown = t.screen().size();
  t.Type("\x1b[A");  // Up: the previous line again
  t.Type("\r");
  ASSERT_TRUE(t.WaitFor("generated", shown)) << t.screen();
  ASSERT_TRUE(t.WaitFor("> ", shown)) << t.screen();
  t.Type("\x04");  // Ctrl-D ends the chat
  EXPECT_EQ(t.Wait("\x04"), 0) << t.screen();

  // Both sessions hold the same conversation, token for token: the edited lines and the
  // recalled one reached the daemon exactly as "Hello world".
  auto list = RunKvstash("session list --json" + Sock(d));
  ASSERT_EQ(list.rc, 0) << list.err;
  std::map<std::string, int> tokens;
  const json sessions = json::parse(list.out)["sessions"];
  for (const auto& s : sessions) {
    tokens[s["name"].get<std::string>()] = s["tokens"].get<int>();
  }
  ASSERT_EQ(tokens.count("typed"), 1u) << list.out;
  EXPECT_EQ(tokens["typed"], tokens["piped"]) << list.out << "\n" << t.screen();
  // And the replies the terminal showed are the piped run's.
  std::string replies = piped.out;
  for (size_t nl = replies.find('\n'); nl != std::string::npos; nl = replies.find('\n')) {
    const std::string reply = replies.substr(0, nl);
    if (!reply.empty()) {
      EXPECT_NE(t.screen().find(reply), std::string::npos) << reply;
    }
    replies.erase(0, nl + 1);
  }
}

TEST(SocketCliTest, NoDaemonSaysIsKvstashdRunning) {
  const std::string dir = TestDir("cli-nodaemon");
  for (const std::string cmd :
       {"generate hi", "stats", "session list", "prefill -f /etc/hostname"}) {
    auto r = RunKvstash(cmd + " --socket " + dir + "/none.sock");
    EXPECT_EQ(r.rc, 1) << cmd << ": " << r.err;
    EXPECT_NE(r.err.find("is kvstashd running? socket " + dir + "/none.sock"), std::string::npos)
        << cmd << ": " << r.err;
  }
}

}  // namespace
}  // namespace kvstash::daemon
