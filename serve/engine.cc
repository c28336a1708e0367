#include "serve/engine.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <filesystem>
#include <thread>

#include "base/bytes.h"
#include "base/clock.h"
#include "cache/hash.h"
#include "engine/model/model.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"
#include "storage/block_store.h"

namespace kvstash::serve {

namespace {

// Bytes the filesystem holding `dir` can still give, plus what the store already uses there.
uint64_t RoomFor(const std::string& dir) {
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0) return UINT64_MAX;
  uint64_t used = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) used += it->file_size(ec);
  }
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize + used;
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::Open(const EngineOptions& options) {
  auto e = std::unique_ptr<Engine>(new Engine());
  e->options_ = options;
  EngineOptions& o = e->options_;
  OpenReport& rep = e->report_;
  if (o.model_path.empty()) return Status::InvalidArgument("no model path");
  if (o.scheduler.batch_tokens < 1) return Status::InvalidArgument("batch_tokens must be >= 1");
  if (o.scheduler.max_running < 1) return Status::InvalidArgument("max_running must be >= 1");
  if (o.scheduler.max_queue < 0) return Status::InvalidArgument("max_queue must be >= 0");
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (o.runner.n_threads < 0) return Status::InvalidArgument("threads must be >= 0");
  if (o.runner.n_threads > cores) {
    rep.warnings.push_back(std::to_string(o.runner.n_threads) + " threads requested but only " +
                           std::to_string(cores) + " cores are available: using " +
                           std::to_string(cores) +
                           " (more threads than cores makes every step wait for descheduled "
                           "workers)");
    o.runner.n_threads = cores;
  }

  // 1. The model and its tokenizer.
  Stopwatch w;
  KV_ASSIGN_OR_RETURN(e->model_, engine::Model::Load(o.model_path, o.weights));
  rep.load_ms = w.ElapsedMs();
  if (auto vocab = engine::Vocab::FromGguf(e->model_->gguf()); vocab.ok()) {
    auto t = engine::Tokenizer::Create(std::move(*vocab));
    if (t.ok()) e->tokenizer_ = std::move(*t);
  }
  // 2. The runner and its KV pool.
  if (o.kv_bytes > 0 && o.runner.n_pages == 0) {
    const engine::HParams& hp = e->model_->config();
    const engine::KvLayout layout{o.runner.kv_dtype, hp.n_kv_layers, hp.n_head_kv, hp.head_dim,
                                  std::max(1, o.runner.block_tokens)};
    const int n_ctx = o.runner.n_ctx > 0 ? o.runner.n_ctx : hp.n_ctx_train;
    const uint64_t one_ctx =
        (static_cast<uint64_t>(n_ctx) + layout.block_tokens - 1) / layout.block_tokens;
    const uint64_t pages = std::max<uint64_t>(one_ctx, o.kv_bytes / layout.block_bytes());
    o.runner.n_pages = static_cast<int>(std::min<uint64_t>(pages, 1u << 30));
  }
  KV_ASSIGN_OR_RETURN(e->runner_, engine::Runner::Create(*e->model_, o.runner));
  // 3. The disk tier.
  cache::Hash128 fingerprint{};
  if (o.use_cache && !o.cache_dir.empty()) {
    w.Reset();
    storage::Options so;
    so.path = o.cache_dir;
    so.capacity_bytes = o.cache_bytes;
    so.segment_bytes = std::min<uint64_t>(
        so.segment_bytes, std::max<uint64_t>(o.cache_bytes / 4, 64 << 10) & ~uint64_t{4095});
    auto store = storage::BlockStore::Open(so);
    if (!store.ok()) return store.status().WithContext("cache directory " + o.cache_dir);
    e->store_ = std::move(*store);
    rep.store_open_ms = w.ElapsedMs();
    const uint64_t room = RoomFor(o.cache_dir);
    if (room < o.cache_bytes) {
      rep.warnings.push_back("the cache budget (" + FormatBytes(o.cache_bytes) +
                             ") is larger than " + o.cache_dir + " can hold (" + FormatBytes(room) +
                             " free or already used by the cache): writes will fail once it is "
                             "full; lower --cache-bytes");
    }
    // Hybrid models: recurrent-state snapshots get a store of their own under the cache
    // directory, with their own budget and segment eviction (docs/cache.md "Hybrid models").
    if (e->runner_->RecurrentStateElems() > 0 && o.snapshot_disk_bytes > 0 &&
        o.cache.snapshot_bytes > 0) {
      storage::Options ss;
      ss.path = o.cache_dir + "/snapshots";
      ss.capacity_bytes = o.snapshot_disk_bytes;
      // A segment holds at least one snapshot (62.8 MiB on Qwen3.6-35B-A3B, 149.6 MiB on 27B).
      const uint64_t state_bytes = e->runner_->RecurrentStateElems() * sizeof(float);
      ss.segment_bytes = std::max<uint64_t>(
          (state_bytes + (1 << 20)) & ~uint64_t{4095},
          std::min<uint64_t>(ss.segment_bytes, (o.snapshot_disk_bytes / 4) & ~uint64_t{4095}));
      if (ss.capacity_bytes < 4 * ss.segment_bytes) ss.capacity_bytes = 4 * ss.segment_bytes;
      auto snap = storage::BlockStore::Open(ss);
      if (!snap.ok()) return snap.status().WithContext("snapshot directory " + ss.path);
      e->snapshot_store_ = std::move(*snap);
    }
  }
  // 4. The prefix cache over the runner's pool.
  if (o.use_cache) {
    w.Reset();
    KV_ASSIGN_OR_RETURN(fingerprint, cache::FingerprintFile(o.model_path, e->store_.get(),
                                                            &rep.fingerprint_remembered));
    rep.fingerprint_ms = w.ElapsedMs();
    cache::NamespaceParams ns =
        cache::NamespaceFor(*e->model_, fingerprint, e->runner_->kv_layout(), o.cache.cache_salt);
    if (e->model_->config().is_hybrid()) {
      ns.deltanet_chunk_tokens = e->runner_->options().deltanet_chunk_tokens;
    }
    cache::CacheOptions co = o.cache;
    co.recurrent_state_elems = e->runner_->RecurrentStateElems();
    KV_ASSIGN_OR_RETURN(e->cache_, cache::PrefixCache::Create(
                                       e->runner_->pool(), e->store_.get(), ns, co, o.model_path,
                                       e->model_->Describe(), e->snapshot_store_.get()));
    rep.model_fingerprint = fingerprint.ToHex();
    rep.namespace_hash = e->cache_->namespace_hash().ToHex();
  }
  // 5. The engine thread.
  e->scheduler_ =
      std::make_unique<Scheduler>(*e->runner_, e->cache_.get(), e->tokenizer_.get(), o.scheduler);
  return e;
}

Engine::~Engine() {
  Status s = Close();
  if (!s.ok()) DefaultLogger()->error("closing the engine: {}", s.ToString());
}

Status Engine::Close() {
  if (closed_) return Status::Ok();
  closed_ = true;
  if (scheduler_) scheduler_->Stop();
  Status first = Status::Ok();
  if (cache_) {
    first = cache_->Flush();
    cache_.reset();  // drains write-behind into the store, remembers planner rates
  }
  if (store_) {
    Status s = store_->Close();
    if (first.ok()) first = s;
    store_.reset();
  }
  if (snapshot_store_) {
    Status s = snapshot_store_->Close();
    if (first.ok()) first = s;
    snapshot_store_.reset();
  }
  scheduler_.reset();
  runner_.reset();
  return first;
}

Result<std::shared_ptr<RequestHandle>> Engine::Submit(Request request) {
  if (closed_) return Status::Cancelled("the engine is closed");
  return scheduler_->Submit(std::move(request));
}

Result<std::vector<int32_t>> Engine::Tokenize(std::string_view text, bool add_bos,
                                              bool parse_special) const {
  if (!tokenizer_) {
    return Status::InvalidArgument("the model has no tokenizer vocabulary: give token ids");
  }
  return tokenizer_->Encode(text, add_bos, parse_special);
}

std::string Engine::Detokenize(std::span<const int32_t> ids) const {
  return tokenizer_ ? tokenizer_->Decode(ids, false) : std::string();
}

const char* Engine::backend_name() const { return runner_->backend().name(); }
int Engine::n_threads() const { return runner_->backend().n_threads(); }

cache::CacheStats Engine::cache_stats() const {
  return cache_ ? cache_->Stats() : cache::CacheStats{};
}

Status Engine::Flush() { return cache_ ? cache_->Flush() : Status::Ok(); }

Result<std::vector<cache::SessionInfo>> Engine::ListSessions() const {
  if (!store_) return std::vector<cache::SessionInfo>{};
  return cache::ListSessions(*store_);
}

Status Engine::DeleteSession(const std::string& name) {
  if (!store_) return Status::NotFound("no session '" + name + "' (no cache directory)");
  return cache::DeleteSession(*store_, name);
}

}  // namespace kvstash::serve
