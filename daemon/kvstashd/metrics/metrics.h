// The daemon's own counters and the Prometheus text exposition of /metrics (format 0.0.4):
// requests by route and status, prompt tokens by source (computed / device / host / disk), TTFT
// and request-duration histograms, plus the engine's scheduler and cache counters and the memory
// budget, rendered at scrape time. Every name is prefixed `kvstash_`; docs/daemon.md lists them.
//
// Thread safety: all methods may be called from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "serve/request.h"

namespace kvstash::serve {
class Engine;
}

namespace kvstash::daemon {

class Histogram {
 public:
  // Upper bounds in seconds (Prometheus `le`), ascending.
  static constexpr std::array<double, 14> kBounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                     1,     2.5,  5,     10,   30,  60,   300};
  void Observe(double seconds);
  void Render(std::string* out, const std::string& name, const std::string& help) const;

 private:
  mutable std::mutex mu_;
  std::array<uint64_t, kBounds.size()> buckets_{};
  uint64_t count_ = 0;
  double sum_ = 0;
};

// Memory the daemon holds by design, for /metrics and the start line.
struct MemoryBudget {
  uint64_t weights_bytes = 0;
  uint64_t kv_pool_bytes = 0;
  uint64_t host_tier_bytes = 0;
};

class Metrics {
 public:
  // One finished HTTP request.
  void CountRequest(const std::string& route, int status);
  // One finished generation (its usage record).
  void CountGeneration(const serve::Usage& u);
  void CountDisconnect() {
    std::lock_guard<std::mutex> l(mu_);
    ++disconnects_;
  }

  // The whole exposition. `engine` may be null (still loading).
  std::string Render(const serve::Engine* engine, const MemoryBudget& memory, bool loading) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  uint64_t prompt_computed_ = 0, prompt_device_ = 0, prompt_host_ = 0, prompt_disk_ = 0;
  uint64_t generated_ = 0, disconnects_ = 0;
  Histogram ttft_, duration_;
};

}  // namespace kvstash::daemon
