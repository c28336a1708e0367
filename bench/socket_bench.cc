// socket_bench: what does the local socket cost? (issue 14, docs/benchmarks.md "Local socket")
//
//   1. Round-trip latency of a 1-token Generate on a fully cached prompt, three ways: in-process
//      (serve::Engine::Submit + Collect), over kvstashd's Unix socket (protocol::Client), and
//      over its HTTP API (POST /v1/completions on one keep-alive connection). The same model,
//      prompt and options everywhere; the prompt is warmed first, so each request loads its
//      blocks from the device tier and computes only the last token.
//   2. Tokenize frames/s of a 1 KiB text with 1, 8 and 64 connections (one thread each).
//
// kvstashd runs as a child process (--port 0, its own socket and cache directory in a temporary
// directory). Prints a table; --json for one JSON object.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "protocol/client.h"
#include "serve/engine.h"
#include "serve/generate.h"

extern char** environ;

namespace kvstash::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

struct Stats {
  double p50 = 0, p90 = 0, mean = 0;
};
Stats Summarize(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.p50 = v[v.size() / 2];
  s.p90 = v[std::min(v.size() - 1, v.size() * 9 / 10)];
  for (double x : v) s.mean += x;
  s.mean /= static_cast<double>(v.size());
  return s;
}

// kvstashd as a child: started, its port read from its log, stopped with SIGTERM.
class DaemonProcess {
 public:
  bool Start(const std::string& bin, const std::vector<std::string>& args, const std::string& log) {
    log_ = log;
    std::vector<std::string> argv = {bin};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> c;
    for (auto& a : argv) c.push_back(a.data());
    c.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    const int rc = posix_spawn(&pid_, bin.c_str(), &fa, nullptr, c.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return false;
    for (int i = 0; i < 600 && port_ == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::ifstream in(log);
      std::stringstream ss;
      ss << in.rdbuf();
      const std::string text = ss.str();
      const std::string key = "listening on http://127.0.0.1:";
      if (size_t p = text.find(key); p != std::string::npos) {
        port_ = std::atoi(text.c_str() + p + key.size());
      }
    }
    return port_ != 0;
  }
  ~DaemonProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int st = 0;
      ::waitpid(pid_, &st, 0);
    }
  }
  int port() const { return port_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_;
};

// One keep-alive HTTP/1.1 connection (Content-Length responses only: non-streamed requests).
class HttpConn {
 public:
  explicit HttpConn(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~HttpConn() {
    if (fd_ >= 0) ::close(fd_);
  }
  // The response body, "" on failure.
  std::string Post(const std::string& path, const std::string& body) {
    const std::string req = "POST " + path +
                            " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                            "Content-Length: " +
                            std::to_string(body.size()) + "\r\n\r\n" + body;
    if (::send(fd_, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
      return "";
    }
    std::string buf;
    char tmp[65536];
    size_t hdr_end = std::string::npos;
    size_t want = 0;
    for (;;) {
      const ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
      if (n <= 0) return "";
      buf.append(tmp, static_cast<size_t>(n));
      if (hdr_end == std::string::npos) {
        hdr_end = buf.find("\r\n\r\n");
        if (hdr_end == std::string::npos) continue;
        std::string lower = buf.substr(0, hdr_end);
        for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        const size_t cl = lower.find("content-length:");
        if (cl == std::string::npos) return "";
        want = std::strtoul(lower.c_str() + cl + 15, nullptr, 10);
      }
      if (buf.size() >= hdr_end + 4 + want) return buf.substr(hdr_end + 4, want);
    }
  }
  bool ok() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

int Main(int argc, char** argv) {
  CLI::App app{
      "socket_bench: 1-token Generate latency (in-process / socket / HTTP) and Tokenize "
      "frames/s over kvstashd's local socket"};
  const std::string self_dir = std::filesystem::path(argv[0]).parent_path().string();
  std::string model =
      std::string(KVSTASH_SOURCE_DIR_FOR_BENCH) + "/../shared/models/stories260K.gguf";
  std::string kvstashd = self_dir + "/kvstashd";
  int n = 200;
  int prompt_tokens = 256;
  double tokenize_s = 2;
  double gap_ms = 2;
  std::vector<int> conns = {1, 8, 64};
  bool json = false;
  app.add_option("-m,--model", model, "GGUF model")->capture_default_str();
  app.add_option("--kvstashd", kvstashd, "kvstashd binary")->capture_default_str();
  app.add_option("-n,--requests", n, "Timed 1-token requests per path")->capture_default_str();
  app.add_option("--prompt-tokens", prompt_tokens, "Prompt length (all but its last token cached)")
      ->capture_default_str();
  app.add_option("--tokenize-seconds", tokenize_s, "Seconds per Tokenize measurement")
      ->capture_default_str();
  app.add_option("--gap-ms", gap_ms,
                 "Pause before each timed request, so the previous request's spinning worker "
                 "threads (in this process or the daemon) have gone to sleep and every path starts "
                 "from the same idle state")
      ->capture_default_str();
  app.add_option("--connections", conns, "Connection counts for Tokenize")->delimiter(',');
  app.add_flag("--json", json, "One JSON object instead of the table");
  CLI11_PARSE(app, argc, argv);

  const auto tmp =
      std::filesystem::temp_directory_path() / ("socket_bench-" + std::to_string(::getpid()));
  std::filesystem::create_directories(tmp);
  const std::string sock = (tmp / "kvstashd.sock").string();
  DaemonProcess daemon;
  if (!daemon.Start(kvstashd,
                    {"-m", model, "--port", "0", "--socket", sock, "--cache-dir",
                     (tmp / "cache-daemon").string(), "--kv-bytes", "256M", "--log-level", "warn"},
                    (tmp / "kvstashd.log").string())) {
    std::fprintf(stderr, "socket_bench: kvstashd did not start (log %s)\n",
                 (tmp / "kvstashd.log").c_str());
    return 1;
  }
  serve::EngineOptions eo;
  eo.model_path = model;
  eo.cache_dir = (tmp / "cache-inproc").string();
  eo.kv_bytes = 256ull << 20;
  auto engine = serve::Engine::Open(eo);
  if (!engine.ok()) {
    std::fprintf(stderr, "socket_bench: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  const int vocab = (*engine)->tokenizer() ? (*engine)->tokenizer()->vocab().size() : 512;
  std::vector<int32_t> prompt(prompt_tokens);
  for (int i = 0; i < prompt_tokens; ++i) prompt[i] = 3 + (i * 7919) % (vocab - 3);

  double server_ms = 0;  // the engine's usage.total_ms of the last request
  // In-process.
  auto one_inproc = [&]() -> double {
    serve::Request r = serve::GreedyRequest(prompt, 1);
    const auto t0 = Clock::now();
    auto h = (*engine)->Submit(r);
    if (!h.ok()) return -1;
    auto c = serve::Collect(**h);
    if (!c.ok()) return -1;
    server_ms = c->usage.total_ms;
    return Ms(Clock::now() - t0);
  };
  // Socket.
  protocol::ClientOptions co;
  co.socket_path = sock;
  auto client = protocol::Client::Connect(co);
  for (int i = 0; i < 600 && client.ok(); ++i) {  // until the daemon's model is loaded
    auto h = (*client)->Health();
    if (h.ok() && *h == "ok") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!client.ok()) {
    std::fprintf(stderr, "socket_bench: %s\n", client.status().ToString().c_str());
    return 1;
  }
  protocol::GenerateRequest g;
  g.prompt.tokens = prompt;
  g.sampling.temperature = 0;
  g.sampling.max_tokens = 1;
  g.stream = false;
  auto one_socket = [&]() -> double {
    const auto t0 = Clock::now();
    auto r = (*client)->Generate(g);
    if (!r.ok()) return -1;
    server_ms = r->usage.total_ms;
    return Ms(Clock::now() - t0);
  };
  // HTTP.
  HttpConn http(daemon.port());
  nlohmann::json body = {{"prompt", prompt}, {"max_tokens", 1}, {"temperature", 0}};
  const std::string body_text = body.dump();
  auto one_http = [&]() -> double {
    const auto t0 = Clock::now();
    const std::string r = http.Post("/v1/completions", body_text);
    const double ms = Ms(Clock::now() - t0);
    const auto j = nlohmann::json::parse(r, nullptr, false);
    if (!j.is_object() || !j.contains("usage")) return -1;
    server_ms = j["usage"]["kvstash"]["total_ms"].get<double>();
    return ms;
  };
  struct Path {
    const char* name;
    std::function<double()> one;
    std::vector<double> ms;
    std::vector<double> overhead_ms;  // round trip minus the engine's own total_ms
    std::vector<double> engine_ms;    // the engine's own total_ms
  } paths[] = {{"in-process", one_inproc, {}, {}, {}},
               {"socket", one_socket, {}, {}, {}},
               {"http", one_http, {}, {}, {}}};
  for (auto& p : paths) {  // warm: the prompt's blocks are cached on both sides
    for (int i = 0; i < 3; ++i) {
      if (p.one() < 0) {
        std::fprintf(stderr, "socket_bench: the %s request failed\n", p.name);
        return 1;
      }
    }
  }
  // Interleaved, so a burst of load from elsewhere hits all three alike, in a rotating order (each
  // path follows each other path equally often) and after a pause: the engine's worker threads
  // spin for a while after a request, and a request that starts while the other process's workers
  // still spin would pay for them.
  constexpr int kPaths = 3;
  for (int i = 0; i < n; ++i) {
    for (int k = 0; k < kPaths; ++k) {
      Path& p = paths[(i + k) % kPaths];
      std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(gap_ms));
      p.ms.push_back(p.one());
      p.overhead_ms.push_back(p.ms.back() - server_ms);
      p.engine_ms.push_back(server_ms);
    }
  }

  // Tokenize frames/s.
  std::string text;
  while (text.size() < 1024) text += "The quick brown fox jumps over the lazy dog. ";
  text.resize(1024);
  // Tokenize round trip on one connection, socket vs HTTP (POST /tokenize), interleaved: the
  // smallest request there is (no engine work, ~50 us of tokenizing), so it shows the transport.
  std::vector<double> tok_socket_ms, tok_http_ms;
  {
    const std::string tok_body = nlohmann::json{{"content", text}}.dump();
    for (int i = 0; i < n; ++i) {
      std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(gap_ms));
      auto t0 = Clock::now();
      if (!(*client)->Tokenize({text, false, true}).ok()) {
        std::fprintf(stderr, "socket_bench: Tokenize over the socket failed\n");
        return 1;
      }
      tok_socket_ms.push_back(Ms(Clock::now() - t0));
      std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(gap_ms));
      t0 = Clock::now();
      const std::string r = http.Post("/tokenize", tok_body);
      tok_http_ms.push_back(Ms(Clock::now() - t0));
      if (r.find("\"tokens\"") == std::string::npos) {
        std::fprintf(stderr, "socket_bench: POST /tokenize failed: %s\n", r.c_str());
        return 1;
      }
    }
  }
  const Stats tok_so = Summarize(tok_socket_ms), tok_ht = Summarize(tok_http_ms);

  struct Rate {
    int connections;
    double frames_per_s;
  };
  std::vector<Rate> rates;
  for (int c : conns) {
    std::vector<std::unique_ptr<protocol::Client>> clients;
    for (int i = 0; i < c; ++i) {
      auto cl = protocol::Client::Connect(co);
      if (!cl.ok()) {
        std::fprintf(stderr, "socket_bench: %s\n", cl.status().ToString().c_str());
        return 1;
      }
      clients.push_back(std::move(*cl));
    }
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> done{0};
    std::vector<std::thread> threads;
    const auto t0 = Clock::now();
    for (int i = 0; i < c; ++i) {
      threads.emplace_back([&, i] {
        while (!stop.load(std::memory_order_relaxed)) {
          if (clients[i]->Tokenize({text, false, true}).ok()) done.fetch_add(1);
        }
      });
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(tokenize_s));
    stop = true;
    for (auto& t : threads) t.join();
    rates.push_back({c, done.load() / std::chrono::duration<double>(Clock::now() - t0).count()});
  }

  engine->reset();  // closes the in-process engine before its directory goes
  std::filesystem::remove_all(tmp);
  // The engine's own time differs between the two processes (another engine, another thread
  // pool, whatever else the machine runs); the transport's cost is the round trip minus the
  // engine's usage.total_ms of the same request.
  const Stats so = Summarize(paths[1].overhead_ms), ht = Summarize(paths[2].overhead_ms);
  const Stats in = Summarize(paths[0].overhead_ms);
  if (json) {
    nlohmann::json j;
    for (auto& p : paths) {
      const Stats s = Summarize(p.ms), o = Summarize(p.overhead_ms);
      j["generate_1_token_ms"][p.name] = {
          {"p50", s.p50},          {"p90", s.p90},
          {"mean", s.mean},        {"overhead_p50", o.p50},
          {"overhead_p90", o.p90}, {"engine_p50", Summarize(p.engine_ms).p50}};
    }
    j["tokenize_1k_round_trip_ms"]["socket"] = {{"p50", tok_so.p50}, {"p90", tok_so.p90}};
    j["tokenize_1k_round_trip_ms"]["http"] = {{"p50", tok_ht.p50}, {"p90", tok_ht.p90}};
    for (const Rate& r : rates) {
      j["tokenize_1k_frames_per_s"][std::to_string(r.connections)] = r.frames_per_s;
    }
    j["requests"] = n;
    j["gap_ms"] = gap_ms;
    j["prompt_tokens"] = prompt_tokens;
    j["model"] = model;
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf(
      "1-token Generate on a fully cached %d-token prompt (%s), %d requests each, %.1f ms apart\n",
      prompt_tokens, std::filesystem::path(model).filename().c_str(), n, gap_ms);
  std::printf("%-12s %9s %9s %9s %11s %14s %14s %16s\n", "path", "p50 ms", "p90 ms", "mean ms",
              "engine p50", "overhead p50", "overhead p90", "- in-process p50");
  for (auto& p : paths) {
    const Stats s = Summarize(p.ms), o = Summarize(p.overhead_ms);
    std::printf("%-12s %9.3f %9.3f %9.3f %11.3f %14.3f %14.3f %16.3f\n", p.name, s.p50, s.p90,
                s.mean, Summarize(p.engine_ms).p50, o.p50, o.p90, o.p50 - in.p50);
  }
  std::printf("(overhead = round trip - the engine's usage.total_ms of the same request)\n");
  std::printf("socket vs http overhead (p50): %.1fx smaller; round trip (p50): %.1fx faster\n\n",
              so.p50 > 0 ? ht.p50 / so.p50 : 0.0,
              Summarize(paths[1].ms).p50 > 0
                  ? Summarize(paths[2].ms).p50 / Summarize(paths[1].ms).p50
                  : 0.0);
  std::printf("Tokenize of a 1 KiB text, round trip on one connection (%d each)\n", n);
  std::printf("%-12s %9s %9s\n", "path", "p50 ms", "p90 ms");
  std::printf("%-12s %9.3f %9.3f\n", "socket", tok_so.p50, tok_so.p90);
  std::printf("%-12s %9.3f %9.3f\n", "http", tok_ht.p50, tok_ht.p90);
  std::printf("socket vs http (p50): %.1fx faster\n\n",
              tok_so.p50 > 0 ? tok_ht.p50 / tok_so.p50 : 0.0);
  std::printf("Tokenize of a 1 KiB text over the socket\n%-12s %14s\n", "connections", "frames/s");
  for (const Rate& r : rates) std::printf("%-12d %14.0f\n", r.connections, r.frames_per_s);
  return 0;
}

}  // namespace
}  // namespace kvstash::bench

int main(int argc, char** argv) { return kvstash::bench::Main(argc, argv); }
