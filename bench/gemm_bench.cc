// How fast is one kernel table's matrix-matrix product for a weight type and shape, on one
// thread, with no model around it? Random rows are quantized to the type, random activations
// converted as the engine converts them, and the table's gemm runs over all rows in chunks of
// 128 (as CpuBackend::MatMul hands them to a thread). Prints one row per (table, tokens): the
// best of --reps timings, in ms per call and in billions of multiply-adds per second.
//
//   gemm_bench --type q4_k --rows 3072 --cols 1024 --tokens 1,8,16,512 --tables avx2,avx512-vnni
//
// With --attention it times the table's attn_update instead: one KV head's causal prefill
// attention over --tokens positions, walked as CpuBackend::AttentionTile walks it (query tiles of
// 64 positions x --group query heads, key blocks of 64, f16 value rows), in GFLOP/s of the
// useful work (4 * head_dim per visible (query, key) pair).
//
// With --stream it also reads the weight bytes once as one sequential stream with nothing else to
// do, and prints each row's weight bytes per second beside that read's: how close a one-token
// (memory-bound) product comes to what this core can read, measured in the same run.
//
//   gemm_bench --type f16 --rows 151936 --cols 1024 --tokens 1 --tables avx512-vnni --stream
#include <immintrin.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "engine/cpu/fp16.h"
#include "engine/cpu/kernels.h"
#include "engine/cpu/repack.h"
#include "engine/gguf/ggml_types.h"
#include "engine/gguf/gguf.h"
#include "engine/gguf/quant.h"

namespace kvstash::bench {
namespace {

volatile uint64_t g_sink = 0;  // keeps the --stream reads from being optimized away

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(item);
  return out;
}

double NowSeconds(bool cpu_time) {
  if (!cpu_time)
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// --attention: one KV head of a causal prefill over nt positions per table, as AttentionTile
// calls attn_update (the keys' transpose is done once up front: it is not what is timed).
void BenchAttention(const std::vector<const engine::cpu::KernelTable*>& tables,
                    const std::vector<int>& token_counts, int hd, int group, int reps,
                    bool cpu_time) {
  constexpr int kTile = 64, kBlock = 64, ldk = kBlock + 16;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::printf(
      "| table | head_dim | group | tokens | ms/head | GFLOP/s "
      "|\n|---|---:|---:|---:|---:|---:|\n");
  for (const int nt : token_counts) {
    const int n_blocks = (nt + kBlock - 1) / kBlock;
    std::vector<float> q(static_cast<size_t>(nt) * group * hd),
        kt(static_cast<size_t>(n_blocks) * hd * ldk, 0.0f);
    std::vector<uint16_t> v16(static_cast<size_t>(nt) * hd);
    for (auto& e : q) e = nd(rng);
    for (int b = 0; b < n_blocks; ++b)
      for (int d = 0; d < hd; ++d)
        for (int s = 0; s < std::min(kBlock, nt - b * kBlock); ++s)
          kt[(static_cast<size_t>(b) * hd + d) * ldk + s] = nd(rng);
    for (auto& e : v16) e = engine::cpu::F32ToHalf(nd(rng));
    std::vector<const uint16_t*> vrows(nt);
    for (int s = 0; s < nt; ++s) vrows[s] = v16.data() + static_cast<size_t>(s) * hd;
    double pairs = 0;
    for (int i = 0; i < nt; ++i) pairs += static_cast<double>(i + 1) * group;
    for (const auto* k : tables) {
      std::vector<float> m(kTile * group), l(kTile * group),
          acc(static_cast<size_t>(kTile) * group * hd), scores(kBlock);
      std::vector<int> n_valid(kTile * group);
      double best = 1e30;
      for (int rep = 0; rep < reps; ++rep) {
        const double t0 = NowSeconds(cpu_time);
        for (int p0 = 0; p0 < nt; p0 += kTile) {
          const int nq = std::min(kTile, nt - p0), nqh = nq * group;
          std::fill(m.begin(), m.end(), -INFINITY);
          std::fill(l.begin(), l.end(), 0.0f);
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int k0 = 0; k0 < p0 + nq; k0 += kBlock) {
            const int n = std::min(kBlock, p0 + nq - k0);
            for (int i = 0; i < nqh; ++i) n_valid[i] = std::clamp(p0 + i / group + 1 - k0, 0, n);
            k->attn_update(q.data() + static_cast<size_t>(p0) * group * hd, nqh, n_valid.data(),
                           kt.data() + static_cast<size_t>(k0 / kBlock) * hd * ldk, ldk,
                           engine::cpu::AttnValues{vrows.data() + k0, nullptr}, n, hd, 0.088f,
                           m.data(), l.data(), acc.data(), scores.data());
          }
        }
        best = std::min(best, NowSeconds(cpu_time) - t0);
      }
      std::printf("| %s | %d | %d | %d | %.3f | %.2f |\n", k->name, hd, group, nt, best * 1e3,
                  pairs * 4 * hd / best * 1e-9);
    }
  }
}

// --stream: the ceiling a one-token product of these weights can reach on this core, one sequential
// read of the same bytes with nothing else to do (32-byte loads summed into four chains).
__attribute__((target("avx2"))) double StreamReadSeconds(const uint8_t* p, size_t bytes, int reps,
                                                         bool cpu_time) {
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    const double t0 = NowSeconds(cpu_time);
    __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                      _mm256_setzero_si256()};
    for (size_t off = 0; off + 128 <= bytes; off += 128) {
      for (int j = 0; j < 4; ++j) {
        acc[j] = _mm256_add_epi64(
            acc[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + off + 32 * j)));
      }
    }
    const __m256i s =
        _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3]));
    best = std::min(best, NowSeconds(cpu_time) - t0);
    g_sink = g_sink + static_cast<uint64_t>(_mm256_extract_epi64(s, 0));
  }
  return best;
}

int Main(int argc, char** argv) {
  CLI::App app{"gemm_bench: one kernel table's matrix-matrix product, one thread"};
  std::string type_name = "q4_k", tables = "avx2,avx512-vnni", tokens = "1,2,4,8,16,128,512";
  int rows = 3072, cols = 1024, reps = 5, chunk = 128;
  app.add_option("--type", type_name, "weight type (ggml name, e.g. q4_k, q8_0, f16)");
  app.add_option("--rows", rows, "weight rows (output features)");
  app.add_option("--cols", cols, "row length (input features)");
  app.add_option("--tokens", tokens, "comma-separated token counts");
  app.add_option("--tables", tables, "comma-separated kernel tables (scalar, avx2, avx512-vnni)");
  app.add_option("--reps", reps, "timings per row; the best is printed");
  app.add_option("--chunk", chunk, "rows per gemm call");
  bool cpu_time = false;
  app.add_flag("--cpu-time", cpu_time,
               "time with this thread's CPU clock instead of the wall clock (on a shared machine "
               "other jobs then cost only their cache and memory-bandwidth effects)");
  bool attention = false;
  int head_dim = 128, group = 2;
  app.add_flag("--attention", attention,
               "time the tables' causal prefill attention (attn_update) of one KV head over "
               "--tokens positions instead of a matrix product");
  app.add_option("--head-dim", head_dim, "--attention: head dimension");
  app.add_option("--group", group, "--attention: query heads per KV head");
  bool stream = false;
  app.add_flag("--stream", stream,
               "also time one sequential read of the weight bytes (row-major, then the repacked "
               "copy where a table has one), with nothing else done: the memory ceiling of a "
               "one-token product on this core, printed below the table with each row's share");
  CLI11_PARSE(app, argc, argv);

  std::vector<const engine::cpu::KernelTable*> picked;
  for (const std::string& tn : Split(tables)) {
    const engine::cpu::KernelTable* k = nullptr;
    for (const auto* c : {&engine::cpu::ScalarKernels(), engine::cpu::Avx2Kernels(),
                          engine::cpu::Avx512Kernels()}) {
      if (c != nullptr && tn == c->name) k = c;
    }
    if (k == nullptr) {
      std::fprintf(stderr, "gemm_bench: table %s not available\n", tn.c_str());
      continue;
    }
    picked.push_back(k);
  }
  if (attention) {
    std::vector<int> counts;
    for (const std::string& ts : Split(tokens)) counts.push_back(std::atoi(ts.c_str()));
    if (head_dim < 8 || head_dim > 256 || group < 1 ||
        std::any_of(counts.begin(), counts.end(), [](int c) { return c < 1; })) {
      std::fprintf(stderr,
                   "gemm_bench: --attention needs --head-dim in [8, 256], --group >= 1 and "
                   "positive --tokens\n");
      return 2;
    }
    BenchAttention(picked, counts, head_dim, group, reps, cpu_time);
    return 0;
  }

  const std::optional<engine::GgmlType> parsed = engine::ParseGgmlType(type_name);
  if (!parsed) {
    std::fprintf(stderr, "gemm_bench: unknown type %s\n", type_name.c_str());
    return 2;
  }
  const engine::GgmlType type = *parsed;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const size_t row_bytes = engine::RowBytes(type, cols);
  // Weights in 2 MiB pages, as Model::Load's `ram` mode reads them (with 4 KiB pages a decode
  // stream over more than the L3 is dominated by TLB misses).
  const size_t w_bytes = row_bytes * rows;
  engine::HugePages w_mem = engine::MapHugePages(w_bytes);
  std::span<uint8_t> w(w_mem.get(), w_bytes);
  std::vector<float> v(cols);
  for (int r = 0; r < rows; ++r) {
    for (auto& e : v) e = 0.05f * nd(rng);
    if (!engine::QuantizeRow(type, v.data(), w.data() + r * row_bytes, cols).ok()) {
      std::fprintf(stderr, "gemm_bench: cannot quantize to %s\n", type_name.c_str());
      return 2;
    }
  }
  const auto fmt = engine::cpu::ActFormatFor(type);
  const size_t xs = engine::cpu::ActRowBytes(fmt, cols);
  std::printf(
      "| table | type | rows x cols | tokens | ms/call | GMAC/s |\n|---|---|---|---:|---:|---:|\n");
  engine::HugePages packed;
  size_t packed_bytes = 0;
  struct Timed {
    std::string label;
    int tokens;
    double seconds;
  };
  std::vector<Timed> timed;  // for --stream
  for (const engine::cpu::KernelTable* k : picked) {
    for (const std::string& ts : Split(tokens)) {
      const int nt = std::stoi(ts);
      std::vector<uint8_t> x(xs * nt);
      for (int t = 0; t < nt; ++t) {
        for (auto& e : v) e = nd(rng);
        k->quantize_act(fmt, v.data(), x.data() + t * xs, cols);
      }
      std::vector<float> y(static_cast<size_t>(nt) * rows);
      auto now_s = [cpu_time] { return NowSeconds(cpu_time); };
      auto report = [&](const std::string& label, const auto& call) {
        double best = 1e30;
        for (int rep = 0; rep < reps; ++rep) {
          const double t0 = now_s();
          for (int r0 = 0; r0 < rows; r0 += chunk) call(r0, std::min(chunk, rows - r0));
          best = std::min(best, now_s() - t0);
        }
        std::printf("| %s | %s | %d x %d | %d | %.3f | %.2f |\n", label.c_str(), type_name.c_str(),
                    rows, cols, nt, best * 1e3,
                    static_cast<double>(rows) * cols * nt / best * 1e-9);
        timed.push_back({label, nt, best});
      };
      report(k->name, [&](int r0, int n) {
        k->gemm(type, w.data() + r0 * row_bytes, row_bytes, n, x.data(), xs, nt, cols,
                y.data() + r0, rows);
      });
      // The table's repacked layout of this type, as the CPU backend uses it (engine/cpu/repack.h).
      const int group = k->repack_rows != nullptr ? k->repack_rows(type, cols) : 0;
      if (group > 0 && rows % group == 0 && chunk % group == 0) {
        if (!packed) {
          packed_bytes = engine::cpu::RepackedBytes(type, rows, cols);
          packed = engine::MapHugePages(packed_bytes);
          engine::cpu::RepackWeights(type, w.data(), row_bytes, cols, 0, rows / group,
                                     packed.get());
        }
        const size_t per_row = packed_bytes / rows;
        report(std::string(k->name) + " repacked", [&](int r0, int n) {
          k->gemm_repacked(type, packed.get() + r0 * per_row, n, x.data(), xs, nt, cols,
                           y.data() + r0, rows);
        });
      }
    }
  }
  if (stream && !__builtin_cpu_supports("avx2")) {
    std::fprintf(stderr, "gemm_bench: --stream needs AVX2; not measured on this CPU\n");
  } else if (stream) {
    const double row_major = StreamReadSeconds(w.data(), w_bytes, reps, cpu_time);
    std::printf("\none sequential read of the %.1f MiB of weights: %.3f ms, %.2f GB/s",
                w_bytes / 1048576.0, row_major * 1e3, w_bytes / row_major * 1e-9);
    if (packed) {
      const double p = StreamReadSeconds(packed.get(), packed_bytes, reps, cpu_time);
      std::printf(" (the repacked copy: %.3f ms, %.2f GB/s)", p * 1e3, packed_bytes / p * 1e-9);
    }
    std::printf("\n\n| row | tokens | weight GB/s | of the read |\n|---|---:|---:|---:|\n");
    for (const Timed& t : timed) {
      std::printf("| %s | %d | %.2f | %.2f |\n", t.label.c_str(), t.tokens,
                  w_bytes / t.seconds * 1e-9, row_major / t.seconds);
    }
  }
  return 0;
}

}  // namespace
}  // namespace kvstash::bench

int main(int argc, char** argv) { return kvstash::bench::Main(argc, argv); }
