// The local socket under hostile input and at the edges of its life: 10,000 malformed frames at
// a live daemon while an honest client on another connection is served throughout; version
// negotiation; out-of-order and oversize frames; a live socket is never stolen and a stale one is
// replaced; permissions and peer credentials keep other uids out.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <atomic>
#include <random>
#include <thread>

#include "protocol/kvstash_generated.h"
#include "tests/daemon/kvstashd/daemon_test_util.h"
#include "tests/daemon/kvstashd/socket_test_util.h"
#include "tests/fixtures.h"

namespace kvstash::daemon {
namespace {

using testutil::Daemon;
using testutil::Greedy;
using testutil::RawConn;
using testutil::SocketClient;
using testutil::TestDir;

std::string Stories() { return ::kvstash::testing::FixturePath("stories260K.gguf"); }

std::string Le32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

std::string Framed(const std::string& payload) {
  return Le32(static_cast<uint32_t>(payload.size())) + payload;
}

// A verified frame whose body offset points back at its own table: a cycle only the verifier's
// depth limit stops (and garbage nesting in general).
std::string DeepFrame(std::mt19937& rng) {
  flatbuffers::FlatBufferBuilder b;
  std::vector<flatbuffers::Offset<protocol::fb::ChatMessage>> msgs;
  for (int i = 0; i < 64; ++i) msgs.push_back(protocol::fb::CreateChatMessage(b));
  auto prompt = protocol::fb::CreatePrompt(b, 0, b.CreateVector(msgs));
  auto body = protocol::fb::CreateGenerate(b, prompt).Union();
  b.Finish(protocol::fb::CreateFrame(b, 5, protocol::fb::Body_Generate, body),
           protocol::fb::FrameIdentifier());
  std::string s(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
  // Corrupt a few offsets inside it.
  for (int i = 0; i < 4; ++i) {
    const size_t at = 8 + rng() % (s.size() - 12);
    const uint32_t v = static_cast<uint32_t>(rng() % s.size());
    std::memcpy(&s[at & ~size_t{3}], &v, 4);
  }
  return s;
}

class SocketRobustnessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KV_REQUIRE_FIXTURE("stories260K.gguf");
    dir_ = TestDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  std::string dir_;
};

TEST_F(SocketRobustnessTest, TenThousandMalformedFramesLeaveAnHonestClientServed) {
  Daemon d(dir_);
  ASSERT_TRUE(
      d.Start({"-m", Stories(), "--cache-dir", dir_ + "/cache", "--max-frame-bytes", "64K"}))
      << d.Log();
  auto honest = SocketClient(d.socket_path());
  ASSERT_NE(honest, nullptr);
  auto reference = honest->Generate(Greedy("Once upon a time", 8));
  ASSERT_TRUE(reference.ok());

  std::atomic<bool> stop{false};
  std::atomic<int> served{0}, failed{0};
  std::string failure;
  std::thread client([&] {
    while (!stop.load()) {
      auto r = honest->Generate(Greedy("Once upon a time", 8));
      if (r.ok() && r->text == reference->text) {
        ++served;
      } else {
        if (failed++ == 0) failure = r.ok() ? "different text: " + r->text : r.status().ToString();
      }
    }
  });

  std::mt19937 rng(2026);
  const std::string valid_tokenize =
      protocol::EncodeFrame(protocol::Frame{7, protocol::TokenizeRequest{"hi"}});
  int sent = 0, kinds_seen[8] = {};
  std::unique_ptr<RawConn> conn;
  while (sent < 10000) {
    if (!conn || rng() % 50 == 0) {
      conn = std::make_unique<RawConn>(d.socket_path());
      if (!conn->ok() || !conn->Hello()) {
        stop = true;
        client.join();
        if (std::getenv("KVSTASH_DEBUG_GDB")) {
          (void)std::system(("gdb -p " + std::to_string(d.pid()) +
                             " -batch -ex 'thread apply all bt 12' > /tmp/sock-gdb.txt 2>&1")
                                .c_str());
        }
        RawConn again(d.socket_path());
        again.Send(protocol::Frame{0, protocol::Hello{1, 0, "again"}});
        auto f = again.Read(std::chrono::seconds(5));
        FAIL() << "retry: " << (f ? protocol::BodyName(f->body) : "nothing")
               << (f && std::holds_alternative<protocol::ErrorReply>(f->body)
                       ? std::get<protocol::ErrorReply>(f->body).message
                       : "")
               << " running=" << d.running() << "\na fresh connection was not served after " << sent
               << " malformed frames ("
               << (conn->ok() ? "no HelloAck" : std::string("connect: ") + std::strerror(errno))
               << ")\n"
               << d.Log().substr(d.Log().size() > 4000 ? d.Log().size() - 4000 : 0);
      }
    }
    const int kind = static_cast<int>(rng() % 8);
    ++kinds_seen[kind];
    std::string bytes;
    switch (kind) {
      case 0: {  // truncated length prefix, then the connection goes away
        bytes = Le32(100).substr(0, 1 + rng() % 3);
        conn->Write(bytes);
        conn.reset();
        ++sent;
        continue;
      }
      case 1:  // a length of 4 GiB (- 1): refused before buffering, connection closed
        conn->Write(Le32(0xffffffffu) + "garbage");
        EXPECT_TRUE(conn->WaitClosed()) << "oversize frame did not close the connection";
        conn.reset();
        ++sent;
        continue;
      case 2: {  // garbage buffers with a sane length
        std::string g(8 + rng() % 300, '\0');
        for (char& c : g) c = static_cast<char>(rng());
        if (rng() % 2) g.replace(4, 4, protocol::wire::kFileIdentifier);
        bytes = Framed(g);
        break;
      }
      case 3:  // valid buffers of types a client may not send
        bytes = protocol::EncodeFrame(protocol::Frame{
            rng() % 100 + 1, rng() % 2
                                 ? protocol::Body(protocol::Done{})
                                 : protocol::Body(protocol::HelloAck{1, 0, "x", 0, "", 0, 0})});
        break;
      case 4:  // deep / cyclic nesting
        bytes = Framed(DeepFrame(rng));
        break;
      case 5: {  // a valid frame with flipped bytes
        std::string v = valid_tokenize.substr(4);
        v[rng() % v.size()] ^= static_cast<char>(1 + rng() % 255);
        bytes = Framed(v);
        break;
      }
      case 6: {  // a valid frame cut short, padded with the next frame's bytes
        std::string v = valid_tokenize.substr(4);
        bytes = Framed(v.substr(0, v.size() / 2));
        break;
      }
      default:  // a second Hello (out of order)
        bytes = protocol::EncodeFrame(protocol::Frame{0, protocol::Hello{1, 0, "again"}});
        break;
    }
    if (!conn->Write(bytes)) {
      conn.reset();
      continue;
    }
    ++sent;
    if (sent % 200 == 0) {
      // Every malformed frame so far was answered (an Error frame) or closed the connection.
      auto f = conn->Read(std::chrono::seconds(10));
      if (f) {
        EXPECT_TRUE(std::holds_alternative<protocol::ErrorReply>(f->body) ||
                    std::holds_alternative<protocol::TokenizeResult>(f->body))
            << protocol::BodyName(f->body);
      }
    }
  }
  conn.reset();
  // One more honest request after the storm, on a fresh connection too.
  stop = true;
  client.join();
  EXPECT_EQ(failed.load(), 0) << failure;
  EXPECT_GT(served.load(), 0);
  auto fresh = SocketClient(d.socket_path());
  ASSERT_NE(fresh, nullptr);
  auto after = fresh->Generate(Greedy("Once upon a time", 8));
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->text, reference->text);
  for (int k = 0; k < 8; ++k) EXPECT_GT(kinds_seen[k], 100) << k;
  std::printf("[          ] %d malformed frames sent; the honest client was served %d times\n",
              sent, served.load());
  EXPECT_EQ(d.Stop(), 0) << d.Log();
}

TEST_F(SocketRobustnessTest, VersionAndOrderAreNegotiated) {
  Daemon d(dir_);
  ASSERT_TRUE(d.Start({"-m", Stories(), "--no-cache"})) << d.Log();
  {  // unknown major version: a clear fatal error, then close
    RawConn c(d.socket_path());
    ASSERT_TRUE(c.Send(protocol::Frame{0, protocol::Hello{2, 0, "future"}}));
    auto f = c.Read();
    ASSERT_TRUE(f.has_value());
    const auto* e = std::get_if<protocol::ErrorReply>(&f->body);
    ASSERT_NE(e, nullptr);
    EXPECT_TRUE(e->fatal);
    EXPECT_EQ(e->code, static_cast<uint8_t>(StatusCode::kIncompatible));
    EXPECT_NE(e->message.find("protocol version 2.0 is not supported: kvstashd speaks 1.0"),
              std::string::npos)
        << e->message;
    EXPECT_TRUE(c.WaitClosed());
  }
  {  // a request before Hello
    RawConn c(d.socket_path());
    ASSERT_TRUE(c.Send(protocol::Frame{3, protocol::HealthRequest{}}));
    auto f = c.Read();
    ASSERT_TRUE(f.has_value());
    const auto* e = std::get_if<protocol::ErrorReply>(&f->body);
    ASSERT_NE(e, nullptr);
    EXPECT_NE(e->message.find("expected Hello"), std::string::npos) << e->message;
    EXPECT_TRUE(c.WaitClosed());
  }
  {  // after Hello: a bad frame is answered with its id and the connection goes on
    RawConn c(d.socket_path());
    ASSERT_TRUE(c.Hello());
    ASSERT_TRUE(c.Send(protocol::Frame{0, protocol::HealthRequest{}}));
    auto f = c.Read();
    ASSERT_TRUE(f && std::holds_alternative<protocol::HealthResult>(f->body));
    ASSERT_TRUE(c.Send(protocol::Frame{42, protocol::Done{}}));
    f = c.Read();
    ASSERT_TRUE(f.has_value());
    EXPECT_EQ(f->id, 42u);
    ASSERT_TRUE(std::holds_alternative<protocol::ErrorReply>(f->body));
    EXPECT_NE(std::get<protocol::ErrorReply>(f->body).message.find("not a request"),
              std::string::npos);
    ASSERT_TRUE(c.Send(protocol::Frame{43, protocol::HealthRequest{}}));
    f = c.Read();
    ASSERT_TRUE(f && std::holds_alternative<protocol::HealthResult>(f->body));
    EXPECT_EQ(f->id, 43u);
  }
  EXPECT_EQ(d.Stop(), 0);
}

TEST_F(SocketRobustnessTest, ALiveSocketIsNeverStolenAndAStaleOneIsReplaced) {
  Daemon first(dir_ + "/a");
  const std::string sock = dir_ + "/kvstashd.sock";
  ASSERT_TRUE(first.Start({"-m", Stories(), "--no-cache", "--socket", sock})) << first.Log();
  Daemon second(dir_ + "/b");
  EXPECT_FALSE(second.Start({"-m", Stories(), "--no-cache", "--socket", sock}));
  EXPECT_NE(second.Log().find("another kvstashd is listening on " + sock), std::string::npos)
      << second.Log();
  auto c = SocketClient(sock);  // the first one still serves
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(*c->Health(), "ok");
  c.reset();
  first.Kill();  // SIGKILL: the socket file stays behind
  struct stat st {};
  ASSERT_EQ(::lstat(sock.c_str(), &st), 0);
  ASSERT_TRUE(S_ISSOCK(st.st_mode));
  ASSERT_TRUE(second.Start({"-m", Stories(), "--no-cache", "--socket", sock})) << second.Log();
  EXPECT_NE(second.Log().find("replacing the stale socket"), std::string::npos) << second.Log();
  c = SocketClient(sock);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(*c->Health(), "ok");
  c.reset();
  EXPECT_EQ(second.Stop(), 0);
  EXPECT_NE(::lstat(sock.c_str(), &st), 0) << "a clean shutdown removes the socket";
}

TEST_F(SocketRobustnessTest, SocketIsPrivateAndOtherUidsAreRefused) {
  Daemon d(dir_);
  const std::string sock_dir = dir_ + "/kvstash";
  const std::string sock = sock_dir + "/kvstashd.sock";
  ASSERT_TRUE(d.Start({"-m", Stories(), "--no-cache", "--socket", sock})) << d.Log();
  struct stat st {};
  ASSERT_EQ(::stat(sock.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(sock_dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  if (::geteuid() != 0) {
    GTEST_SKIP() << "cannot switch uid (not root): the peer-credential check is not exercised";
  }
  // Open the file permissions so that only SO_PEERCRED stands between uid 65534 and the daemon.
  ::chmod(dir_.c_str(), 0755);
  ::chmod(sock_dir.c_str(), 0755);
  ::chmod(sock.c_str(), 0666);
  auto try_as_nobody = [&]() -> int {  // 0 served, 1 refused, 2 could not even try
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
      protocol::ClientOptions o;
      o.socket_path = sock;
      o.connect_timeout = std::chrono::seconds(5);
      auto c = protocol::Client::Connect(o);
      ::_exit(c.ok() ? 0 : 1);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 2;
  };
  const int rc = try_as_nobody();
  if (rc == 2) GTEST_SKIP() << "setuid(65534) failed in the child";
  EXPECT_EQ(rc, 1) << "uid 65534 was served";
  EXPECT_NE(d.Log().find("refused a connection from uid 65534"), std::string::npos) << d.Log();
  EXPECT_EQ(d.Stop(), 0);
  // With --socket-allow-uid it is let in.
  ASSERT_TRUE(
      d.Start({"-m", Stories(), "--no-cache", "--socket", sock, "--socket-allow-uid", "65534"}))
      << d.Log();
  ::chmod(sock_dir.c_str(), 0755);
  ::chmod(sock.c_str(), 0666);
  EXPECT_EQ(try_as_nobody(), 0);
  EXPECT_EQ(d.Stop(), 0);
}

}  // namespace
}  // namespace kvstash::daemon
