// kvstashd's application layer: routing, API keys, the loading and draining states, the
// OpenAI-compatible generation routes (streamed or not) over serve::Engine, /metrics, and one
// access-log line per request. Runs on the HTTP server's connection strands; never blocks them:
// generation events arrive through RequestHandle::SetOnEvent and are drained on the strand.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "daemon/kvstashd/api/openai.h"
#include "daemon/kvstashd/config.h"
#include "daemon/kvstashd/http/server.h"
#include "daemon/kvstashd/metrics/metrics.h"

namespace kvstash::serve {
class Engine;
}

namespace kvstash::daemon {

class App {
 public:
  explicit App(const DaemonConfig& config);
  // The model is loaded: start serving. `model` describes it to the API layer.
  void SetEngine(std::shared_ptr<serve::Engine> engine, api::ModelContext model,
                 MemoryBudget memory);
  // Shutdown: new generation requests get 503; those in flight continue.
  void BeginDrain() { draining_.store(true); }
  int in_flight() const { return in_flight_.load(); }

  void Handle(std::shared_ptr<http::Connection> conn, http::Request req);

  Metrics& metrics() { return metrics_; }

  struct Generation;

 private:
  bool Authorized(const http::Request& req) const;
  enum class Api { kChat, kCompletions, kMessages, kResponses };
  void Generate(std::shared_ptr<http::Connection> conn, const http::Request& req, Api api,
                const std::string& id, std::chrono::steady_clock::time_point t0);
  void RememberReply(const Generation& g);
  void Drain(const std::shared_ptr<Generation>& g);
  void Ping(const std::shared_ptr<Generation>& g);
  void Send(const std::shared_ptr<http::Connection>& conn, const http::Request& req,
            const std::string& route, int status, std::string body, const std::string& id,
            std::chrono::steady_clock::time_point t0, const char* content_type = nullptr,
            int retry_after_s = 0);
  void SendError(const std::shared_ptr<http::Connection>& conn, const http::Request& req,
                 const std::string& route, const api::ApiError& e, const std::string& id,
                 std::chrono::steady_clock::time_point t0);
  void AccessLog(const std::string& id, const http::Request& req, int status,
                 const serve::Usage* usage, std::chrono::steady_clock::time_point t0);

  const DaemonConfig& config_;
  Metrics metrics_;
  std::atomic<bool> draining_{false};
  std::atomic<int> in_flight_{0};
  std::atomic<uint64_t> next_id_{0};
  mutable std::mutex mu_;  // guards the three below (set once when loaded)
  std::shared_ptr<serve::Engine> engine_;
  std::shared_ptr<const api::ModelContext> model_;
  MemoryBudget memory_;
};

}  // namespace kvstash::daemon
