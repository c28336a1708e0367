// Helpers for end-to-end tests of a real kvstashd over real sockets: start/stop/kill the daemon
// in a temporary directory, and a minimal HTTP/1.1 client (Connection: close; chunked bodies
// decoded) so the tests depend on nothing but POSIX.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace kvstash::daemon::testutil {

struct HttpResult {
  int status = 0;  // 0: no answer (connection failed or closed)
  std::string headers;
  std::string body;
  nlohmann::json Json() const {
    return nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  }
};

inline int ConnectTo(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

inline bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

inline std::string DecodeChunked(const std::string& s) {
  std::string out;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t eol = s.find("\r\n", pos);
    if (eol == std::string::npos) break;
    const size_t len = std::strtoul(s.substr(pos, eol - pos).c_str(), nullptr, 16);
    if (len == 0) break;
    out += s.substr(eol + 2, len);
    pos = eol + 2 + len + 2;
  }
  return out;
}

// One request on a fresh connection; reads until the server closes it.
inline HttpResult Http(int port, const std::string& method, const std::string& path,
                       const std::string& body = "", const std::vector<std::string>& headers = {}) {
  HttpResult r;
  int fd = ConnectTo(port);
  if (fd < 0) return r;
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  for (const auto& h : headers) req += h + "\r\n";
  if (!body.empty() || method == "POST") {
    req +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  if (!SendAll(fd, req)) {
    ::close(fd);
    return r;
  }
  std::string resp;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    resp.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  const size_t hdr_end = resp.find("\r\n\r\n");
  if (resp.rfind("HTTP/1.1 ", 0) != 0 || hdr_end == std::string::npos) return r;
  r.status = std::atoi(resp.c_str() + 9);
  r.headers = resp.substr(0, hdr_end);
  r.body = resp.substr(hdr_end + 4);
  std::string lower = r.headers;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower.find("transfer-encoding: chunked") != std::string::npos) r.body = DecodeChunked(r.body);
  return r;
}

inline HttpResult Post(int port, const std::string& path, const nlohmann::json& body,
                       const std::vector<std::string>& headers = {}) {
  return Http(port, "POST", path, body.dump(), headers);
}

// The JSON payloads of an SSE body ("data: {...}" lines), "[DONE]" as a string.
inline std::vector<nlohmann::json> SseEvents(const std::string& body) {
  std::vector<nlohmann::json> out;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("data: ", 0) != 0) continue;
    const std::string payload = line.substr(6);
    if (payload == "[DONE]") {
      out.push_back("[DONE]");
    } else {
      out.push_back(nlohmann::json::parse(payload, nullptr, false));
    }
  }
  return out;
}

// A kvstashd process in `dir` (its stdout/stderr go to dir/kvstashd.log).
class Daemon {
 public:
  explicit Daemon(std::string dir) : dir_(std::move(dir)) {
    std::filesystem::create_directories(dir_);
  }
  ~Daemon() {
    if (pid_ > 0) Kill();
  }

  static std::string Binary() { return std::string(KVSTASH_BIN_DIR) + "/kvstashd"; }

  // Starts it with `args` (plus --port 0) and waits until /health says ok (or `wait_ready`
  // false: until it listens). Returns false when it did not come up within `timeout`.
  bool Start(const std::vector<std::string>& args, bool wait_ready = true,
             std::chrono::seconds timeout = std::chrono::seconds(60),
             const std::vector<std::string>& env_extra = {}) {
    log_ = dir_ + "/kvstashd-" + std::to_string(++starts_) + ".log";
    std::vector<std::string> argv = {Binary(), "--port", "0"};
    // Each test daemon has its own socket (the default path is one per user).
    if (std::find(args.begin(), args.end(), "--socket") == args.end()) {
      argv.insert(argv.end(), {"--socket", socket_path()});
    }
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
    env.insert(env.end(), env_extra.begin(), env_extra.end());
    std::vector<char*> cenv;
    for (auto& e : env) cenv.push_back(e.data());
    cenv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    const int rc = posix_spawn(&pid_, cargv[0], &fa, nullptr, cargv.data(), cenv.data());
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      pid_ = -1;
      return false;
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    port_ = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (port_ == 0) port_ = ParsePort();
      if (port_ != 0) {
        if (!wait_ready) return true;
        if (Http(port_, "GET", "/health").status == 200) return true;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // SIGTERM and wait; returns the exit code (-1 if killed by a signal or not running).
  int Stop(std::chrono::seconds timeout = std::chrono::seconds(60)) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    return Wait(timeout);
  }
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  int Wait(std::chrono::seconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Kill();
    return -1;
  }
  bool running() const { return pid_ > 0; }
  int port() const { return port_; }
  const std::string& dir() const { return dir_; }
  // The local socket of a daemon started without --socket (in its directory, or under /tmp when
  // that path would exceed a Unix socket address).
  std::string socket_path() const {
    const std::string p = dir_ + "/kvstashd.sock";
    if (p.size() < 100) return p;
    return "/tmp/kvstashd-test-" + std::to_string(::getpid()) + "-" +
           std::to_string(std::hash<std::string>()(dir_) % 1000000) + ".sock";
  }
  pid_t pid() const { return pid_; }
  std::string Log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  int ParsePort() const {
    const std::string log = Log();
    const std::string key = "listening on http://127.0.0.1:";
    const size_t p = log.find(key);
    if (p == std::string::npos) return 0;
    return std::atoi(log.c_str() + p + key.size());
  }

  std::string dir_;
  std::string log_;
  pid_t pid_ = -1;
  int port_ = 0;
  int starts_ = 0;
};

// A fresh temporary directory per test.
inline std::string TestDir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() /
           ("kvstashd-test-" + std::to_string(::getpid()) + "-" + name);
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

}  // namespace kvstash::daemon::testutil
