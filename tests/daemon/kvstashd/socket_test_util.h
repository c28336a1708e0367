// Helpers for the local-socket end-to-end tests: a client of a test daemon, greedy requests, and
// a raw connection that writes arbitrary bytes and reads frames (for hostile-input tests).
#pragma once

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>

#include "protocol/client.h"
#include "protocol/codec.h"
#include "protocol/wire_format.h"
#include "tests/daemon/kvstashd/daemon_test_util.h"

namespace kvstash::daemon::testutil {

inline std::unique_ptr<protocol::Client> SocketClient(const std::string& path) {
  protocol::ClientOptions o;
  o.socket_path = path;
  o.client_name = "socket-test";
  auto c = protocol::Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(*c) : nullptr;
}

inline protocol::GenerateRequest Greedy(const std::string& text, int max_tokens,
                                        bool stream = true) {
  protocol::GenerateRequest g;
  g.prompt.text = text;
  g.sampling.temperature = 0;
  g.sampling.max_tokens = max_tokens;
  g.stream = stream;
  return g;
}

// A connection that speaks raw bytes.
class RawConn {
 public:
  explicit RawConn(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~RawConn() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return fd_ >= 0; }
  bool Write(std::string_view bytes) { return SendAll(fd_, bytes); }
  bool Send(const protocol::Frame& f) { return Write(protocol::EncodeFrame(f)); }
  bool Hello(uint16_t major = protocol::wire::kMajorVersion) {
    if (!Send(protocol::Frame{0, protocol::Hello{major, 0, "raw"}})) return false;
    auto f = Read();
    return f.has_value() && std::holds_alternative<protocol::HelloAck>(f->body);
  }
  // The next frame, or nullopt when the daemon closed the connection or nothing came in time.
  std::optional<protocol::Frame> Read(
      std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (auto raw = reader_.Next()) {
        auto f = protocol::DecodeFrame(
            std::span(reinterpret_cast<const uint8_t*>(raw->data()), raw->size()));
        if (!f.ok()) return std::nullopt;
        return *f;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        closed_ = true;
        return std::nullopt;
      }
      if (!reader_.Append(buf, static_cast<size_t>(n)).ok()) return std::nullopt;
      if (!reader_.status().ok()) return std::nullopt;
    }
  }
  // Reads until the daemon closes the connection (true) or `timeout` passes (false).
  bool WaitClosed(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!closed_ && std::chrono::steady_clock::now() < deadline) {
      (void)Read(std::chrono::milliseconds(100));
    }
    return closed_;
  }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  bool closed_ = false;
  protocol::FrameReader reader_{1u << 30};
};

}  // namespace kvstash::daemon::testutil

namespace kvstash::daemon::testutil {

struct CliResult {
  int rc = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs `kvstash ARGS` through the shell, with `input` on stdin (a file, so stdin is not a tty).
inline CliResult RunKvstash(const std::string& args, const std::string& input = "",
                            const std::string& dir = "/tmp") {
  static int n = 0;
  const std::string base = dir + "/cli-" + std::to_string(::getpid()) + "-" + std::to_string(++n);
  { std::ofstream(base + ".in") << input; }
  const std::string cmd =
      std::string(KVSTASH_BIN_DIR) + "/kvstash " + args + " <" + base + ".in 2>" + base + ".err";
  CliResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, got);
  const int status = ::pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream e(base + ".err");
  std::stringstream ss;
  ss << e.rdbuf();
  r.err = ss.str();
  return r;
}

}  // namespace kvstash::daemon::testutil
