// protocol/client.h without a daemon: a clear error when nothing listens, the default path, and
// the Hello exchange against a scripted server (version refusal, a silent server timing out).
#include "protocol/client.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "protocol/codec.h"
#include "protocol/wire_format.h"

namespace kvstash::protocol {
namespace {

std::string TempSocket(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("kvstash-client-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string p = (dir / name).string();
  ::unlink(p.c_str());
  return p;
}

int ListenAt(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strcpy(a.sun_path, path.c_str());
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  EXPECT_EQ(::listen(fd, 4), 0);
  return fd;
}

TEST(ClientTest, NoDaemonSaysSoAndNamesTheSocket) {
  ClientOptions o;
  o.socket_path = TempSocket("nobody.sock");
  auto c = Client::Connect(o);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("is kvstashd running? socket " + o.socket_path),
            std::string::npos)
      << c.status().ToString();
}

TEST(ClientTest, DefaultPathFollowsXdgRuntimeDir) {
  const char* old = std::getenv("XDG_RUNTIME_DIR");
  const std::string saved = old ? old : "";
  ::setenv("XDG_RUNTIME_DIR", "/run/user/1234", 1);
  EXPECT_EQ(DefaultSocketPath(), "/run/user/1234/kvstash/kvstashd.sock");
  ::unsetenv("XDG_RUNTIME_DIR");
  EXPECT_EQ(DefaultSocketPath(), "/tmp/kvstash-" + std::to_string(::getuid()) + "/kvstashd.sock");
  if (old) ::setenv("XDG_RUNTIME_DIR", saved.c_str(), 1);
}

TEST(ClientTest, RefusedVersionIsIncompatibleWithTheDaemonsMessage) {
  const std::string path = TempSocket("old.sock");
  const int lfd = ListenAt(path);
  std::thread server([lfd] {
    const int fd = ::accept(lfd, nullptr, nullptr);
    char buf[4096];
    (void)::recv(fd, buf, sizeof(buf), 0);
    const std::string e = EncodeFrame(
        Frame{0, ErrorReply{static_cast<uint8_t>(StatusCode::kIncompatible), "speaks 9.0", true}});
    (void)::send(fd, e.data(), e.size(), MSG_NOSIGNAL);
    ::close(fd);
  });
  ClientOptions o;
  o.socket_path = path;
  auto c = Client::Connect(o);
  server.join();
  ::close(lfd);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kIncompatible);
  EXPECT_NE(c.status().message().find("speaks 9.0"), std::string::npos);
}

TEST(ClientTest, SilentServerTimesOutOnConnect) {
  const std::string path = TempSocket("silent.sock");
  const int lfd = ListenAt(path);
  ClientOptions o;
  o.socket_path = path;
  o.connect_timeout = std::chrono::milliseconds(200);
  auto c = Client::Connect(o);
  ::close(lfd);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("did not answer Hello"), std::string::npos)
      << c.status().ToString();
}

}  // namespace
}  // namespace kvstash::protocol
