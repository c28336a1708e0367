// engine_bench: prefill and decode throughput of the CPU engine on synthetic models in real
// shapes, optionally beside llama.cpp's llama-bench on the same GGUF files, thread counts and
// prompt lengths, in the same run. Human table by default; --json for scripts.
//
//   build/bin/engine_bench --llama-bench /path/to/llama-bench
//
// Rows: one per (preset, weight type, threads, test), tests pp<N> (prefill N tokens into an
// empty context) and tg<N> (decode N tokens one at a time from an empty context), as
// llama-bench defines them, so the ratio column compares like with like.
//
// With --rounds R (> 1) each (preset, type, threads) is measured R times, kvstash and llama-bench
// taking turns (ABBA order), and a row's ratio is the median of the R per-round ratios: both
// sides of a ratio ran within the same minute, so a slow spell of a shared host hits both (this
// VM's whole runs of one binary spread 15-30 %).
//
// --stat best reports each side's fastest repetition instead of kvstash's median and
// llama-bench's mean: a shared host only ever slows a run down, so the best of N is the least
// disturbed measurement of each side (same N on both).
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "base/clock.h"
#include "bench/bench_util.h"
#include "engine/model/mkmodel.h"
#include "engine/model/model.h"
#include "engine/runner.h"

namespace kvstash::bench {
namespace {

using engine::KvDtype;

struct Row {
  std::string preset, type, test;
  int threads = 0;
  double tokens_per_s = 0;
  double peer_tokens_per_s = 0;  // 0 when not measured
  double peak_rss_mb = 0;
  // With --rounds > 1: the median and range of the per-round ratios (tokens_per_s and
  // peer_tokens_per_s are then the medians of the rounds).
  double ratio = 0, ratio_min = 0, ratio_max = 0;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double PeakRssMb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

// A runner whose context holds `depth` tokens before a test of `n` more, and the sequence of
// those `depth` tokens, prefilled once (untimed). Each repetition starts from a copy that shares
// its pages (depth is a whole number of blocks), as llama-bench's -d starts each test at depth.
struct DepthRunner {
  std::unique_ptr<engine::Runner> runner;
  engine::Sequence base;

  engine::Sequence Start() {
    engine::Sequence s;
    s.tokens = base.tokens;
    s.block_table = base.block_table;
    for (int page : s.block_table) runner->pool().Ref(page);
    return s;
  }
};

Result<DepthRunner> MakeDepthRunner(const engine::Model& m, int threads, int depth, int n) {
  engine::RunnerOptions o;
  o.n_threads = threads;
  o.n_ctx = depth + n + 8;
  o.n_batch = 512;
  DepthRunner d;
  KV_ASSIGN_OR_RETURN(d.runner, engine::Runner::Create(m, o));
  const int bt = d.runner->options().block_tokens;
  if (depth % bt != 0) {
    return Status::InvalidArgument("--depth must be a multiple of the block size (" +
                                   std::to_string(bt) + " tokens)");
  }
  if (depth > 0) {
    std::fprintf(stderr, "engine_bench:   filling %d tokens of context (untimed)\n", depth);
    std::vector<float> logits;
    KV_RETURN_IF_ERROR(d.runner->Prefill(d.base, RandomTokens(depth, m.config().n_vocab, 3),
                                         engine::LogitsMode::kNone, &logits));
  }
  return d;
}

// --cpu-time: tokens per second of this process's CPU time instead of wall time. On a shared
// machine with more runnable threads than cores, wall time counts the time other jobs held the
// core; CPU time counts only their cache and memory-bandwidth effects. Meaningful with 1 thread
// (with more, the workers' spinning counts too).
bool g_cpu_time = false;

// --stat best: the fastest repetition, not the median (kvstash) and mean (llama-bench).
bool g_best = false;

// The reported tokens/s of one test's repetitions.
double Summarize(std::vector<double> tps) {
  std::sort(tps.begin(), tps.end());
  return g_best ? tps.back() : tps[tps.size() / 2];
}

double NowSeconds() {
  if (!g_cpu_time) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

Result<double> MeasurePrefill(const engine::Model& m, int threads, int depth, int n, int reps) {
  KV_ASSIGN_OR_RETURN(DepthRunner d, MakeDepthRunner(m, threads, depth, n));
  const auto tokens = RandomTokens(n, m.config().n_vocab, 1);
  std::vector<double> tps;
  for (int r = 0; r < reps; ++r) {
    engine::Sequence seq = d.Start();
    std::vector<float> logits;
    const double t0 = NowSeconds();
    KV_RETURN_IF_ERROR(d.runner->Prefill(seq, tokens, engine::LogitsMode::kLast, &logits));
    tps.push_back(n / (NowSeconds() - t0));
    d.runner->Release(seq);
  }
  d.runner->Release(d.base);
  return Summarize(std::move(tps));
}

Result<double> MeasureDecode(const engine::Model& m, int threads, int depth, int n, int reps) {
  KV_ASSIGN_OR_RETURN(DepthRunner d, MakeDepthRunner(m, threads, depth, n));
  const auto tokens = RandomTokens(n, m.config().n_vocab, 2);
  std::vector<double> tps;
  for (int r = 0; r < reps; ++r) {
    engine::Sequence seq = d.Start();
    std::vector<float> logits;
    const double t0 = NowSeconds();
    for (int i = 0; i < n; ++i) KV_RETURN_IF_ERROR(d.runner->Decode(seq, tokens[i], &logits));
    tps.push_back(n / (NowSeconds() - t0));
    d.runner->Release(seq);
  }
  d.runner->Release(d.base);
  return Summarize(std::move(tps));
}

// "pp512", or "pp128@d4096" for a test after `depth` tokens of context (llama-bench's naming).
std::string TestName(const char* kind, int n, int depth) {
  return kind + std::to_string(n) + (depth > 0 ? "@d" + std::to_string(depth) : "");
}

// Runs llama-bench on `path` and returns avg tokens/s keyed by "pp512" / "tg64".
std::map<std::string, double> RunLlamaBench(const std::string& bin, const std::string& path,
                                            int threads, const std::vector<int>& prompts,
                                            int decode, int reps, const std::string& load_mode,
                                            int depth) {
  std::string p;
  for (int n : prompts) p += (p.empty() ? "" : ",") + std::to_string(n);
  const std::string cmd = bin + " -m " + path + " -p " + p + " -n " + std::to_string(decode) +
                          " -t " + std::to_string(threads) + " -r " + std::to_string(reps) +
                          (load_mode.empty() ? "" : " -lm " + load_mode) +
                          (depth > 0 ? " -d " + std::to_string(depth) : "") +
                          " -o json 2>/dev/null";
  std::map<std::string, double> out;
  const std::string text = ReadCommand(cmd);
  try {
    for (const auto& t : nlohmann::json::parse(text)) {
      const int np = t.value("n_prompt", 0), ng = t.value("n_gen", 0);
      const std::string key = TestName(np > 0 ? "pp" : "tg", np > 0 ? np : ng, depth);
      double ts = t.value("avg_ts", 0.0);
      if (g_best && t.contains("samples_ts")) {
        for (const auto& v : t["samples_ts"]) ts = std::max(ts, v.get<double>());
      }
      out[key] = ts;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "  peer: could not parse llama-bench output: %s\n", e.what());
  }
  return out;
}

int Main(int argc, char** argv) {
  CLI::App app{"Prefill/decode throughput of the kvstash CPU engine (optionally vs llama-bench)"};
  std::string models_dir = "bench-models";
  std::vector<std::string> presets = {"smollm2-135m", "qwen3-0.6b"};
  std::vector<std::string> types = {"f16", "q8_0", "q4_k"};
  std::vector<int> threads = {1, 2};
  std::vector<int> prompts = {128, 512, 2048};
  int decode = 64;
  int reps = 2;
  int rounds = 1;
  std::string llama_bench;
  std::string llama_load_mode;
  bool json = false;
  int n_layer = 0;
  int depth = 0;
  app.add_option("--models-dir", models_dir, "Where synthetic models are written and reused")
      ->capture_default_str();
  app.add_option("--presets", presets, "kvstash-mkmodel presets")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--types", types,
                 "Weight types: any kvstash-mkmodel --type (f32 f16 bf16 q8_0 q4_0 q5_0 q5_1 q3_k "
                 "q4_k q5_k q6_k iq4_nl iq4_xs q3_k_m q4_k_m q5_k_m)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--threads", threads, "Thread counts")->delimiter(',')->capture_default_str();
  app.add_option("--prompts", prompts, "Prompt lengths (pp tests)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--decode", decode, "Tokens to decode (tg test)")->capture_default_str();
  app.add_option("--reps", reps, "Repetitions per test (median reported; see --stat)")
      ->capture_default_str();
  std::string stat = "median";
  app.add_option("--stat", stat,
                 "What a row reports of its repetitions: 'median' (llama-bench's own mean on "
                 "the peer side), or 'best': each side's fastest repetition (a shared host only "
                 "slows runs down; use with --reps 3 or more)")
      ->capture_default_str()
      ->check(CLI::IsMember({"median", "best"}));
  app.add_option("--rounds", rounds,
                 "With --llama-bench: measure each model/type/thread count this many times, "
                 "kvstash and llama-bench taking turns (ABBA), and report the median of the "
                 "per-round ratios with their range (pairs the two against a noisy host; an even "
                 "count balances who goes first)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  app.add_option("--llama-bench", llama_bench,
                 "Path of llama.cpp's llama-bench: measure it on the same files in this run");
  app.add_option("--llama-load-mode", llama_load_mode,
                 "llama-bench -lm (this llama.cpp's successor of -mmp): 'none' reads the weights "
                 "into memory as kvstash's --weights auto does (the fair decode comparison); "
                 "empty keeps llama-bench's default (mmap)");
  app.add_option("--n-layer", n_layer,
                 "Keep each preset's layer shapes with this many layers (0 = the preset's own); "
                 "files are written as PRESET-L<n>-TYPE.gguf. For the large presets "
                 "(qwen3.6-35b-a3b, qwen3.6-27b) that do not fit in memory whole; a hybrid "
                 "preset needs a multiple of 4 (three DeltaNet layers, then attention)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  app.add_option("--depth", depth,
                 "Run every test after this many tokens already in the context (llama-bench -d; "
                 "a multiple of the 16-token block): prefill and decode at long context, where "
                 "attention dominates. Rows are named pp128@d4096")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  app.add_flag("--cpu-time", g_cpu_time,
               "kvstash rows in tokens per second of process CPU time, not wall time (for a "
               "shared machine; 1 thread; llama-bench rows stay wall time)");
  app.add_flag("--json", json, "Print {\"rows\": [...]} on stdout instead of a table");
  CLI11_PARSE(app, argc, argv);
  g_best = stat == "best";

  std::filesystem::create_directories(models_dir);
  std::vector<Row> rows;
  for (const std::string& preset_name : presets) {
    // Rows name the file's shape: "qwen3.6-35b-a3b-L8" when --n-layer cut it.
    const std::string preset =
        preset_name + (n_layer > 0 ? "-L" + std::to_string(n_layer) : std::string());
    for (const std::string& type : types) {
      const std::string path =
          EnsureSyntheticModel(models_dir, preset_name, type, "engine_bench", n_layer);
      auto model = engine::Model::Load(path, engine::WeightMemory::kAuto);
      if (!model.ok()) {
        std::fprintf(stderr, "engine_bench: %s\n", model.status().ToString().c_str());
        return 1;
      }
      for (int t : threads) {
        // Per test name: kvstash's and llama-bench's rate in each round (NaN: llama-bench gave
        // none that round), and the peak RSS after the test's first round.
        std::map<std::string, std::vector<double>> ours, peer;
        std::map<std::string, double> rss;
        std::vector<std::string> order;
        for (int n : prompts) order.push_back(TestName("pp", n, depth));
        order.push_back(TestName("tg", decode, depth));
        auto measure_ours = [&]() -> Status {
          for (int n : prompts) {
            std::fprintf(stderr, "engine_bench: %s %s t=%d pp%d\n", preset.c_str(), type.c_str(), t,
                         n);
            KV_ASSIGN_OR_RETURN(
                double tps, MeasurePrefill(**model, t, depth, n, n >= 2048 && !g_best ? 1 : reps));
            ours[TestName("pp", n, depth)].push_back(tps);
            rss.emplace(TestName("pp", n, depth), PeakRssMb());
          }
          std::fprintf(stderr, "engine_bench: %s %s t=%d tg%d\n", preset.c_str(), type.c_str(), t,
                       decode);
          KV_ASSIGN_OR_RETURN(double tps, MeasureDecode(**model, t, depth, decode, reps));
          ours[TestName("tg", decode, depth)].push_back(tps);
          rss.emplace(TestName("tg", decode, depth), PeakRssMb());
          return Status::Ok();
        };
        auto measure_peer = [&]() {
          if (llama_bench.empty()) return;
          auto got =
              RunLlamaBench(llama_bench, path, t, prompts, decode, reps, llama_load_mode, depth);
          for (const std::string& test : order) {
            const bool ok = got.count(test) != 0 && got[test] > 0;
            if (!ok) std::fprintf(stderr, "  peer: no %s result this round\n", test.c_str());
            peer[test].push_back(ok ? got[test] : std::nan(""));
          }
        };
        for (int r = 0; r < rounds; ++r) {
          if (rounds > 1)
            std::fprintf(stderr, "engine_bench: %s %s t=%d round %d/%d\n", preset.c_str(),
                         type.c_str(), t, r + 1, rounds);
          // ABBA: the peer first in rounds 0, 3, 4, 7, ...
          const bool peer_first = (r % 4 == 0 || r % 4 == 3);
          if (peer_first) measure_peer();
          if (Status st = measure_ours(); !st.ok()) {
            std::fprintf(stderr, "engine_bench: %s\n", st.ToString().c_str());
            return 1;
          }
          if (!peer_first) measure_peer();
        }
        for (const std::string& test : order) {
          Row row{preset, type, test, t, Median(ours[test]), 0.0, rss[test]};
          // Ratios of the rounds where llama-bench gave a result.
          std::vector<double> p, ratios;
          for (size_t i = 0; i < peer[test].size(); ++i) {
            if (std::isnan(peer[test][i])) continue;
            p.push_back(peer[test][i]);
            ratios.push_back(ours[test][i] / peer[test][i]);
          }
          if (!p.empty()) {
            row.peer_tokens_per_s = Median(p);
            row.ratio = Median(ratios);
            row.ratio_min = *std::min_element(ratios.begin(), ratios.end());
            row.ratio_max = *std::max_element(ratios.begin(), ratios.end());
          }
          rows.push_back(row);
        }
      }
    }
  }

  if (json) {
    nlohmann::json j = {{"rows", nlohmann::json::array()}};
    for (const Row& r : rows) {
      nlohmann::json o = {
          {"name", r.preset + "/" + r.type + "/" + r.test + "/t" + std::to_string(r.threads)},
          {"preset", r.preset},
          {"type", r.type},
          {"test", r.test},
          {"threads", r.threads},
          {"tokens_per_s", r.tokens_per_s},
          {"peak_rss_mb", r.peak_rss_mb}};
      if (r.peer_tokens_per_s > 0) {
        o["llama_cpp_tokens_per_s"] = r.peer_tokens_per_s;
        o["ratio_to_llama_cpp"] = r.ratio;
        if (rounds > 1) {
          o["rounds"] = rounds;
          o["ratio_min"] = r.ratio_min;
          o["ratio_max"] = r.ratio_max;
        }
      }
      j["rows"].push_back(o);
    }
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  const bool ranges = rounds > 1 && !llama_bench.empty();
  std::printf(
      "| model | type | threads | test | kvstash tok/s | llama.cpp tok/s | ratio | peak RSS MiB "
      "|%s\n",
      ranges ? " ratio per round, min-max |" : "");
  std::printf("|---|---|---:|---|---:|---:|---:|---:|%s\n", ranges ? "---|" : "");
  for (const Row& r : rows) {
    char peer[32] = "-", ratio[32] = "-", range[48] = "";
    if (r.peer_tokens_per_s > 0) {
      std::snprintf(peer, sizeof(peer), "%.1f", r.peer_tokens_per_s);
      std::snprintf(ratio, sizeof(ratio), "%.2f", r.ratio);
      if (ranges) std::snprintf(range, sizeof(range), " %.2f-%.2f |", r.ratio_min, r.ratio_max);
    } else if (ranges) {
      std::snprintf(range, sizeof(range), " - |");
    }
    std::printf("| %s | %s | %d | %s | %.1f | %s | %s | %.0f |%s\n", r.preset.c_str(),
                r.type.c_str(), r.threads, r.test.c_str(), r.tokens_per_s, peer, ratio,
                r.peak_rss_mb, range);
  }
  return 0;
}

}  // namespace
}  // namespace kvstash::bench

int main(int argc, char** argv) { return kvstash::bench::Main(argc, argv); }
