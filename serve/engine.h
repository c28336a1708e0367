// A running engine (ARCHITECTURE.md §2 `serve/`): the model, its tokenizer, the runner with its
// KV pool, the block store (disk tier), the prefix cache and the scheduler, opened in that order
// from one EngineOptions and closed in reverse (scheduler stopped, write-behind flushed, store
// closed). `kvstash run`, kvstashd, the tests and the benchmarks all generate through it.
//
// Thread safety: Submit, Tokenize, Detokenize, Stats and the accessors may be called from any
// thread once Open returns. Close (or the destructor) must not race with Submit.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "cache/prefix_cache.h"
#include "engine/gguf/gguf.h"
#include "engine/runner.h"
#include "serve/request.h"
#include "serve/scheduler.h"

namespace kvstash::engine {
class Model;
class Tokenizer;
}  // namespace kvstash::engine
namespace kvstash::storage {
class BlockStore;
}

namespace kvstash::serve {

struct EngineOptions {
  // GGUF file to load (required; the CLI and the daemon resolve the default model first).
  std::string model_path;
  // Where the weights live: kAuto reads them into huge-page memory when the file fits.
  engine::WeightMemory weights = engine::WeightMemory::kAuto;
  // Threads, context size, block size, KV type, prefill chunk, pool pages (0 = one full
  // context). n_threads above the cores available is capped (with a warning).
  engine::RunnerOptions runner;
  // When > 0 (and runner.n_pages is 0): the page pool gets kv_bytes of pages, at least one full
  // context. The pool's memory is reserved, and touched only as pages are used.
  uint64_t kv_bytes = 0;
  // The prefix cache. Off: every request computes its whole prompt (a baseline). On without a
  // cache_dir: device tier only (and the host tier when host_bytes > 0).
  bool use_cache = true;
  // Disk tier directory (created if missing); "" = none. Sessions need it.
  std::string cache_dir;
  // Disk tier budget in bytes. Default 64 GiB. A budget larger than the filesystem can hold is
  // accepted with a warning.
  uint64_t cache_bytes = 64ull << 30;
  // Hybrid models: disk budget of recurrent-state snapshots, a store of their own in
  // cache_dir/snapshots (at least 4 segments of one snapshot each). Default 16 GiB; 0 = no disk
  // tier for snapshots.
  uint64_t snapshot_disk_bytes = 16ull << 30;
  cache::CacheOptions cache;
  SchedulerOptions scheduler;
};

// What opening cost, for reports (`kvstash run --json` cache fields, the daemon's start line).
struct OpenReport {
  double load_ms = 0;         // model load
  double store_open_ms = 0;   // block store open (recovery included)
  double fingerprint_ms = 0;  // model fingerprint (0-ish when remembered)
  bool fingerprint_remembered = false;
  std::string model_fingerprint;      // 32 hex digits, "" without a cache
  std::string namespace_hash;         // 32 hex digits, "" without a cache
  std::vector<std::string> warnings;  // things the user should know (printed by callers)
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> Open(const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Stops the scheduler (requests still running are cancelled and keep their full blocks),
  // drains the write-behind queue into the store and closes it. Returns the first error.
  // Idempotent.
  Status Close();

  // See Scheduler::Submit.
  Result<std::shared_ptr<RequestHandle>> Submit(Request request);

  // Text -> ids with the model's tokenizer (FailedPrecondition-like InvalidArgument when the
  // model has none). `add_bos` follows the vocabulary's add_bos flag when unset.
  Result<std::vector<int32_t>> Tokenize(std::string_view text, bool add_bos,
                                        bool parse_special) const;
  std::string Detokenize(std::span<const int32_t> ids) const;

  const engine::Model& model() const { return *model_; }
  const engine::Tokenizer* tokenizer() const { return tokenizer_.get(); }  // null: ids only
  const engine::RunnerOptions& runner_options() const { return runner_->options(); }
  const engine::KvLayout& kv_layout() const { return runner_->kv_layout(); }
  const char* backend_name() const;
  int kv_pages() const { return runner_->pool().n_pages(); }
  int n_threads() const;
  const EngineOptions& options() const { return options_; }
  const OpenReport& report() const { return report_; }
  bool has_cache() const { return cache_ != nullptr; }
  bool has_disk_tier() const { return store_ != nullptr; }

  SchedulerStats scheduler_stats() const { return scheduler_->Stats(); }
  cache::CacheStats cache_stats() const;  // zeros without a cache
  // Everything queued for the disk tier is durable when it returns.
  Status Flush();
  // Sessions of the disk tier (NotFound-free: empty without one).
  Result<std::vector<cache::SessionInfo>> ListSessions() const;
  Status DeleteSession(const std::string& name);

 private:
  Engine() = default;
  EngineOptions options_;
  OpenReport report_;
  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<engine::Tokenizer> tokenizer_;
  std::unique_ptr<engine::Runner> runner_;
  std::unique_ptr<storage::BlockStore> store_;
  std::unique_ptr<storage::BlockStore> snapshot_store_;  // hybrid models with a cache_dir
  std::unique_ptr<cache::PrefixCache> cache_;
  std::unique_ptr<Scheduler> scheduler_;
  bool closed_ = false;
};

}  // namespace kvstash::serve
