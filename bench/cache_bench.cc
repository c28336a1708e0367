// cache_bench: what the prefix cache buys, against cold prefill and against the physical lower
// bound, measured in the same run (docs/benchmarks.md, "Prefix cache").
//
// 1. Time to first token for a prompt = context (N tokens) + a new 32-token suffix, on a
//    qwen3-0.6b-shaped synthetic model (F16 and Q8_0 weights, F16 KV):
//      cold    nothing cached: prefill N + 32
//      device  the context's blocks still in the engine's pool (same process)
//      host    the blocks evicted to the host tier
//      disk    the blocks only in the cache directory (io_uring O_DIRECT reads)
//    and the lower bound: KV bytes / raw O_DIRECT read bandwidth of the same files (a plain
//    io_uring reader, same block size and queue depth) + the prefill of the suffix alone.
// 2. An agent loop: S sessions share a C-token context and take T interleaved turns (a new
//    user message, then a greedy answer); total prefill time with the cache on vs off, and the
//    answers must be identical.
#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "base/clock.h"
#include "cache/prefix_cache.h"
#include "engine/model/mkmodel.h"
#include "engine/model/model.h"
#include "engine/runner.h"
#include "serve/generate.h"
#include "storage/block_store.h"

namespace kvstash {
namespace {

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "cache_bench: %s\n", what.c_str());
  std::exit(1);
}
template <typename T>
T Must(Result<T> r, const std::string& what) {
  if (!r.ok()) Die(what + ": " + r.status().ToString());
  return std::move(*r);
}
void Must(const Status& s, const std::string& what) {
  if (!s.ok()) Die(what + ": " + s.ToString());
}

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (int& x : t) x = 3 + static_cast<int>(rng() % static_cast<uint32_t>(vocab - 3));
  return t;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::string EnsureModel(const std::string& dir, const std::string& preset,
                        const std::string& type) {
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/" + preset + "-" + type + ".gguf";
  if (std::filesystem::exists(path)) return path;
  std::fprintf(stderr, "cache_bench: writing %s ...\n", path.c_str());
  engine::MkModelOptions o;
  o.config = Must(engine::FindPreset(preset), "preset");
  o.weight_type = Must(engine::ParseWeightType(type), "type");
  o.seed = 1;
  Must(engine::WriteSyntheticModel(path, o), "mkmodel");
  return path;
}

// A plain io_uring O_DIRECT reader: reads `bytes` from the segment files under `dir` in chunks of
// `chunk` bytes with `depth` reads in flight. Returns bytes per second.
double RawReadBandwidth(const std::string& dir, uint64_t bytes, size_t chunk, unsigned depth) {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  struct Extent {
    int fd;
    uint64_t off;
  };
  std::vector<Extent> extents;
  std::vector<int> fds;
  uint64_t planned = 0;
  for (const std::string& f : files) {
    const int fd = ::open(f.c_str(), O_RDONLY | O_DIRECT);
    if (fd < 0) continue;
    fds.push_back(fd);
    const uint64_t size = std::filesystem::file_size(f);
    for (uint64_t off = 4096; off + chunk <= size && planned < bytes; off += chunk) {
      extents.push_back({fd, off});
      planned += chunk;
    }
  }
  if (extents.empty()) return 0;
  io_uring ring{};
  if (io_uring_queue_init(depth, &ring, 0) < 0) Die("io_uring_queue_init");
  std::vector<void*> bufs(depth);
  for (void*& b : bufs) b = std::aligned_alloc(4096, chunk);
  const int64_t t0 = MonotonicNowNs();
  size_t next = 0, done = 0, inflight = 0;
  std::vector<unsigned> free_slots;
  for (unsigned i = 0; i < depth; ++i) free_slots.push_back(i);
  while (done < extents.size()) {
    while (next < extents.size() && !free_slots.empty()) {
      const unsigned slot = free_slots.back();
      free_slots.pop_back();
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      io_uring_prep_read(sqe, extents[next].fd, bufs[slot], static_cast<unsigned>(chunk),
                         extents[next].off);
      io_uring_sqe_set_data64(sqe, slot);
      ++next;
      ++inflight;
    }
    io_uring_submit(&ring);
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(&ring, &cqe) < 0) Die("io_uring_wait_cqe");
    if (cqe->res != static_cast<int>(chunk)) Die("raw read returned " + std::to_string(cqe->res));
    free_slots.push_back(static_cast<unsigned>(io_uring_cqe_get_data64(cqe)));
    io_uring_cqe_seen(&ring, cqe);
    --inflight;
    ++done;
  }
  const double secs = (MonotonicNowNs() - t0) / 1e9;
  io_uring_queue_exit(&ring);
  for (void* b : bufs) std::free(b);
  for (int fd : fds) ::close(fd);
  return planned / secs;
}

struct Tiers {
  std::unique_ptr<storage::BlockStore> store;
  std::unique_ptr<cache::PrefixCache> cache;
  void Open(engine::Runner& runner, const engine::Model& model, const std::string& model_path,
            const std::string& dir, uint64_t host_bytes) {
    storage::Options so;
    so.path = dir;
    so.logger = NullLogger();
    store = Must(storage::BlockStore::Open(so), "open store");
    const auto fp = Must(cache::FingerprintFile(model_path, store.get()), "fingerprint");
    cache::CacheOptions co;
    co.host_bytes = host_bytes;
    cache =
        Must(cache::PrefixCache::Create(runner.pool(), store.get(),
                                        cache::NamespaceFor(model, fp, runner.kv_layout(), ""), co),
             "cache");
  }
  void Close() {
    cache.reset();
    if (store) Must(store->Close(), "close store");
    store.reset();
  }
};

struct Ttft {
  double ttft_ms = 0, load_ms = 0, prefill_ms = 0;
  int cached = 0;
  cache::AcquireResult acquired;
};

// Lookup + load + prefill of the rest + first token, through the same generation path as
// `kvstash run` (serve::RunToCompletion).
Ttft TimeToFirstToken(engine::Runner& runner, cache::PrefixCache* cache,
                      const std::vector<int32_t>& prompt) {
  std::vector<serve::Request> reqs;
  reqs.push_back(serve::GreedyRequest(prompt, 1));
  const serve::Usage u =
      Must(serve::RunToCompletion(runner, cache, nullptr, std::move(reqs)), "generate")[0].usage;
  Ttft t;
  t.ttft_ms = u.ttft_ms;
  t.load_ms = u.load_ms;
  t.prefill_ms = u.prefill_ms;
  t.cached = u.cached_tokens;
  t.acquired = serve::AcquiredOf(u);
  return t;
}

nlohmann::json TtftRow(const std::string& model_path, const engine::Model& model,
                       const std::string& name, int n_ctx_tokens, int suffix, int threads, int reps,
                       const std::string& data_dir) {
  engine::RunnerOptions ro;
  ro.n_threads = threads;
  ro.n_ctx = n_ctx_tokens + suffix + 16;
  ro.n_pages = 2 * (ro.n_ctx / 16 + 1) + 8;
  auto runner = Must(engine::Runner::Create(model, ro), "runner");
  const int V = model.config().n_vocab;
  const std::vector<int32_t> context = RandomTokens(n_ctx_tokens, V, 1000 + n_ctx_tokens);
  int suffix_seed = 1;
  auto prompt = [&] {
    std::vector<int32_t> p = context;
    const auto s = RandomTokens(suffix, V, suffix_seed++);
    p.insert(p.end(), s.begin(), s.end());
    return p;
  };
  const std::string dir = data_dir + "/cache-" + name + "-" + std::to_string(n_ctx_tokens);
  std::filesystem::remove_all(dir);
  const size_t block_bytes = runner->kv_layout().block_bytes();
  const uint64_t kv_bytes = static_cast<uint64_t>(n_ctx_tokens / 16) * block_bytes;
  Tiers tiers;
  tiers.Open(*runner, model, model_path, dir, kv_bytes + 64 * block_bytes);

  std::fprintf(stderr, "cache_bench: %s N=%d cold ...\n", name.c_str(), n_ctx_tokens);
  const Ttft cold = TimeToFirstToken(*runner, tiers.cache.get(), prompt());
  Must(tiers.cache->Flush(), "flush");
  const bool direct = tiers.store->Stats().direct_io;
  const size_t chunk = (block_bytes + 4095) & ~size_t{4095};
  // Each repetition measures every tier back to back (and the raw reader right before the disk
  // tier), so a noisy neighbour slows them alike; the bound of a repetition uses the fastest
  // suffix prefill seen in it.
  std::vector<double> dev_ms, host_ms, disk_ms, disk_load, suffix_ms, raw, bound, ratio;
  Ttft dev, host, disk;
  for (int r = 0; r < reps; ++r) {
    std::fprintf(stderr, "cache_bench: %s N=%d warm repetition %d/%d\n", name.c_str(), n_ctx_tokens,
                 r + 1, reps);
    dev = TimeToFirstToken(*runner, tiers.cache.get(), prompt());
    tiers.cache->EvictDevice();  // into the host tier
    host = TimeToFirstToken(*runner, tiers.cache.get(), prompt());
    tiers.cache->EvictDevice();
    tiers.cache->DropHost();  // everything on disk only (written behind: policy always)
    Must(tiers.cache->Flush(), "flush");
    const double bps = RawReadBandwidth(dir + "/segments", kv_bytes, chunk, 64);
    disk = TimeToFirstToken(*runner, tiers.cache.get(), prompt());
    const double sfx = std::min({dev.prefill_ms, host.prefill_ms, disk.prefill_ms});
    const double b = kv_bytes / bps * 1e3 + sfx;
    dev_ms.push_back(dev.ttft_ms);
    host_ms.push_back(host.ttft_ms);
    disk_ms.push_back(disk.ttft_ms);
    disk_load.push_back(disk.load_ms);
    suffix_ms.push_back(sfx);
    raw.push_back(bps);
    bound.push_back(b);
    ratio.push_back(disk.ttft_ms / b);
  }
  tiers.Close();
  std::filesystem::remove_all(dir);

  const double raw_bps = Median(raw);
  const double bound_ms = Median(bound);
  nlohmann::json j;
  j["name"] = name;
  j["context_tokens"] = n_ctx_tokens;
  j["suffix_tokens"] = suffix;
  j["kv_bytes"] = kv_bytes;
  j["cold_ttft_ms"] = cold.ttft_ms;
  j["device_ttft_ms"] = Median(dev_ms);
  j["host_ttft_ms"] = Median(host_ms);
  j["disk_ttft_ms"] = Median(disk_ms);
  j["disk_load_ms"] = Median(disk_load);
  j["suffix_prefill_ms"] = Median(suffix_ms);
  j["raw_read_bytes_per_s"] = raw_bps;
  j["lower_bound_ms"] = bound_ms;
  j["disk_speedup"] = cold.ttft_ms / Median(disk_ms);
  j["disk_vs_lower_bound"] = Median(ratio);  // median over repetitions of disk / bound
  j["cached_tokens"] = {{"device", dev.acquired.device_tokens},
                        {"host", host.acquired.host_tokens},
                        {"disk", disk.acquired.disk_tokens}};
  j["direct_io"] = direct;
  j["reps"] = reps;
  return j;
}

// The agent loop. Returns {prefill_ms_on, prefill_ms_off, ...}.
nlohmann::json AgentLoop(const std::string& model_path, const engine::Model& model, int sessions,
                         int turns, int context_tokens, int msg_tokens, int answer_tokens,
                         int threads, const std::string& data_dir) {
  const int V = model.config().n_vocab;
  const std::vector<int32_t> context = RandomTokens(context_tokens, V, 77);
  engine::RunnerOptions ro;
  ro.n_threads = threads;
  ro.n_ctx = context_tokens + turns * (msg_tokens + answer_tokens) + 32;
  ro.n_pages =
      (context_tokens + sessions * turns * (msg_tokens + answer_tokens)) / 16 + ro.n_ctx / 16 + 64;
  nlohmann::json out;
  std::vector<std::vector<int32_t>> answers[2];
  for (int on = 1; on >= 0; --on) {
    auto runner = Must(engine::Runner::Create(model, ro), "runner");
    Tiers tiers;
    const std::string dir = data_dir + "/agent-cache";
    std::filesystem::remove_all(dir);
    if (on) tiers.Open(*runner, model, model_path, dir, 0);
    std::vector<std::vector<int32_t>> history(sessions, context);
    double prefill_ms = 0, ttft_ms = 0;
    int64_t prefilled = 0, cached = 0;
    for (int t = 0; t < turns; ++t) {
      std::fprintf(stderr, "cache_bench: agent loop, cache %s, turn %d/%d\n", on ? "on" : "off",
                   t + 1, turns);
      for (int s = 0; s < sessions; ++s) {
        const auto msg = RandomTokens(msg_tokens, V, 5000 + 100 * s + t);
        history[s].insert(history[s].end(), msg.begin(), msg.end());
        std::vector<serve::Request> reqs;
        reqs.push_back(serve::GreedyRequest(history[s], answer_tokens));
        const serve::Completion c =
            Must(serve::RunToCompletion(*runner, on ? tiers.cache.get() : nullptr, nullptr,
                                        std::move(reqs)),
                 "generate")[0];
        cached += c.usage.cached_tokens;
        prefilled += c.usage.prefilled_tokens;
        prefill_ms += c.usage.load_ms + c.usage.prefill_ms;
        ttft_ms += c.usage.ttft_ms;
        history[s].insert(history[s].end(), c.tokens.begin(), c.tokens.end());
        answers[on].push_back(c.tokens);
      }
    }
    const std::string key = on ? "cache_on" : "cache_off";
    out[key] = {{"prefill_ms", prefill_ms},
                {"ttft_ms_total", ttft_ms},
                {"prefilled_tokens", prefilled},
                {"cached_tokens", cached}};
    tiers.Close();
    std::filesystem::remove_all(dir);
  }
  out["sessions"] = sessions;
  out["turns"] = turns;
  out["context_tokens"] = context_tokens;
  out["message_tokens"] = msg_tokens;
  out["answer_tokens"] = answer_tokens;
  out["speedup"] = out["cache_off"]["prefill_ms"].get<double>() /
                   std::max(1e-6, out["cache_on"]["prefill_ms"].get<double>());
  out["answers_identical"] = answers[0] == answers[1];
  return out;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    size_t e = s.find(',', b);
    if (e == std::string::npos) e = s.size();
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

}  // namespace
}  // namespace kvstash

int main(int argc, char** argv) {
  using namespace kvstash;
  CLI::App app{
      "cache_bench: time to first token cold vs warm from each cache tier, beside the "
      "physical lower bound, and an agent loop with the cache on vs off."};
  std::string models_dir = "bench-models", data_dir = "cache-bench-data";
  std::string presets = "qwen3-0.6b", types = "f16,q8_0", lengths = "512,2048,8192";
  int suffix = 32, threads = 0, reps = 3;
  std::string agent_preset = "default", agent_type = "q8_0";
  int agent_sessions = 4, agent_turns = 10, agent_context = 4096, agent_msg = 48, agent_answer = 32;
  bool skip_ttft = false, skip_agent = false, json = false;
  app.add_option("--models-dir", models_dir, "Where synthetic models are written/reused")
      ->capture_default_str();
  app.add_option("--data-dir", data_dir,
                 "Cache directories are created here (use a real disk: O_DIRECT)")
      ->capture_default_str();
  app.add_option("--presets", presets, "kvstash-mkmodel presets, comma-separated")
      ->capture_default_str();
  app.add_option("--types", types, "Weight types, comma-separated")->capture_default_str();
  app.add_option("--lengths", lengths, "Context lengths in tokens (multiples of 16)")
      ->capture_default_str();
  app.add_option("--suffix", suffix, "New tokens after the cached context")->capture_default_str();
  app.add_option("-t,--threads", threads, "Compute threads; 0 = all cores")->capture_default_str();
  app.add_option("--reps", reps,
                 "Warm repetitions (each measures every tier back to back; medians reported)")
      ->capture_default_str();
  app.add_option("--agent-preset", agent_preset, "Model preset of the agent loop")
      ->capture_default_str();
  app.add_option("--agent-type", agent_type, "Weight type of the agent loop model")
      ->capture_default_str();
  app.add_option("--agent-sessions", agent_sessions, "Interleaved sessions")->capture_default_str();
  app.add_option("--agent-turns", agent_turns, "Turns per session")->capture_default_str();
  app.add_option("--agent-context", agent_context, "Shared context tokens")->capture_default_str();
  app.add_option("--agent-message", agent_msg, "User message tokens per turn")
      ->capture_default_str();
  app.add_option("--agent-answer", agent_answer, "Generated tokens per turn")
      ->capture_default_str();
  app.add_flag("--skip-ttft", skip_ttft, "Only the agent loop");
  app.add_flag("--skip-agent", skip_agent, "Only the TTFT table");
  app.add_flag("--json", json, "Print {\"ttft\": [rows], \"agent\": {...}} on stdout");
  CLI11_PARSE(app, argc, argv);
  std::filesystem::create_directories(data_dir);

  nlohmann::json result = {{"ttft", nlohmann::json::array()}};
  if (!skip_ttft) {
    for (const std::string& preset : Split(presets)) {
      for (const std::string& type : Split(types)) {
        const std::string path = EnsureModel(models_dir, preset, type);
        auto model = Must(engine::Model::Load(path, engine::WeightMemory::kAuto), "load " + path);
        for (const std::string& len : Split(lengths)) {
          result["ttft"].push_back(TtftRow(path, *model, preset + "-" + type, std::stoi(len),
                                           suffix, threads, reps, data_dir));
        }
      }
    }
  }
  if (!skip_agent) {
    const std::string path = EnsureModel(models_dir, agent_preset, agent_type);
    auto model = Must(engine::Model::Load(path, engine::WeightMemory::kAuto), "load " + path);
    result["agent"] = AgentLoop(path, *model, agent_sessions, agent_turns, agent_context, agent_msg,
                                agent_answer, threads, data_dir);
    result["agent"]["model"] = agent_preset + "-" + agent_type;
  }
  if (json) {
    std::printf("%s\n", result.dump(1).c_str());
    return 0;
  }
  std::printf(
      "| model | context | cold TTFT ms | device ms | host ms | disk ms | lower bound ms "
      "(KV / raw read + suffix) | disk speedup vs cold | disk / bound |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const auto& r : result["ttft"]) {
    std::printf(
        "| %s | %d | %.0f | %.1f | %.1f | %.1f | %.1f (%.0f MiB / %.2f GB/s + %.1f) | "
        "%.1fx | %.2fx |\n",
        r["name"].get<std::string>().c_str(), r["context_tokens"].get<int>(),
        r["cold_ttft_ms"].get<double>(), r["device_ttft_ms"].get<double>(),
        r["host_ttft_ms"].get<double>(), r["disk_ttft_ms"].get<double>(),
        r["lower_bound_ms"].get<double>(), r["kv_bytes"].get<double>() / 1048576.0,
        r["raw_read_bytes_per_s"].get<double>() / 1e9, r["suffix_prefill_ms"].get<double>(),
        r["disk_speedup"].get<double>(), r["disk_vs_lower_bound"].get<double>());
  }
  if (result.contains("agent")) {
    const auto& a = result["agent"];
    std::printf(
        "\nagent loop (%s): %d sessions x %d turns, %d-token shared context, %d-token "
        "messages, %d-token answers\n"
        "  cache off: prefill %.0f ms (%lld tokens prefilled)\n"
        "  cache on:  prefill+load %.0f ms (%lld tokens prefilled, %lld reused)\n"
        "  speedup %.1fx, answers identical: %s\n",
        a["model"].get<std::string>().c_str(), a["sessions"].get<int>(), a["turns"].get<int>(),
        a["context_tokens"].get<int>(), a["message_tokens"].get<int>(),
        a["answer_tokens"].get<int>(), a["cache_off"]["prefill_ms"].get<double>(),
        a["cache_off"]["prefilled_tokens"].get<long long>(),
        a["cache_on"]["prefill_ms"].get<double>(),
        a["cache_on"]["prefilled_tokens"].get<long long>(),
        a["cache_on"]["cached_tokens"].get<long long>(), a["speedup"].get<double>(),
        a["answers_identical"].get<bool>() ? "yes" : "NO");
  }
  return 0;
}
