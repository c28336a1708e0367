// float_tile_bench: GFLOP/s of float-weight (F16/F32/BF16) prefill tiles on one core with the
// data in L1/L2, against the core's FMA peak. Question: which register blocking, vector width
// and operand handling lets the F16 prefill tile keep both FMA pipes busy?
//
//   build/bin/float_tile_bench [--rows 120] [--n 1024] [--tokens 48] [--ms 300]
//
// One "chunk" is what the engine gives one task: `rows` weight rows (120: 240 KiB of f16 at
// n = 1024, in L2) against `tokens` activation rows. Rows:
//   peak        12 independent FMA chains (256- and 512-bit): the core's ceiling
//   cand        candidate tiles (bench/float_tile/candidates.inc), RM rows x RN tokens, walking
//               token tiles outer and row tiles inner as the engine does; "packed" packs each
//               token tile along k first, "cvt-once" converts the chunk's f16 weights to f32 once
//   table       the engine's own kernel tables (KernelTable::gemm) on the same chunk
// Each figure is the best of 5 runs of --ms milliseconds of this thread's CPU time (on a shared
// machine the best run is the least disturbed one).
#include <immintrin.h>

#include <CLI/CLI.hpp>
#include <array>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench/float_tile/candidates.h"
#include "engine/cpu/fp16.h"
#include "engine/cpu/kernels.h"

// GCC 12's 512-bit intrinsics pass _mm256_undefined_*() as merge sources (see kernels_avx512.cc).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvstash::bench {
namespace {

volatile float g_sink;  // keeps the peak loops' results alive

// This thread's CPU time in seconds: time while descheduled does not count, so other jobs on a
// shared machine cost only what they do to caches and memory bandwidth.
double ThreadSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Best per-call CPU time of `runs` runs of fn() repeated for about `ms` milliseconds each.
double BestSeconds(const std::function<void()>& fn, int ms, int runs = 5) {
  fn();  // warm caches
  double best = 1e30;
  for (int r = 0; r < runs; ++r) {
    int64_t calls = 0;
    const double t0 = ThreadSeconds();
    double el = 0;
    do {
      fn();
      ++calls;
      el = ThreadSeconds() - t0;
    } while (el * 1e3 < ms);
    best = std::min(best, el / calls);
  }
  return best;
}

struct Data {
  int rows, n_tok;
  int64_t n;
  std::vector<float> wf, x, y, yref, wconv;  // wconv: candidates' scratch
  std::vector<uint16_t> wh, wb;
};

void Print(const char* group, const std::string& name, double flop, double s, double peak) {
  const double g = flop / s * 1e-9;
  std::printf("| %-6s | %-34s | %7.1f | %5.2f |\n", group, name.c_str(), g, g / peak);
}

// Max |y - yref| relative to max |yref|: a candidate must compute the same product.
double RelErr(const Data& d) {
  double m = 0, e = 0;
  for (size_t i = 0; i < d.y.size(); ++i) {
    m = std::max(m, static_cast<double>(std::abs(d.yref[i])));
    e = std::max(e, static_cast<double>(std::abs(d.y[i] - d.yref[i])));
  }
  return e / m;
}

}  // namespace
}  // namespace kvstash::bench

int main(int argc, char** argv) {
  using namespace kvstash::bench;
  namespace cpu = kvstash::engine::cpu;
  CLI::App app{"float prefill tile micro-benchmark"};
  int rows = 120, n_tok = 48, ms = 300;
  int64_t n = 1024;
  bool only_tables = false;
  app.add_option("--rows", rows, "weight rows per chunk (multiple of 24)");
  app.add_option("--n", n, "row length (multiple of 16)");
  app.add_option("--tokens", n_tok, "tokens (multiple of 24)");
  app.add_option("--ms", ms, "milliseconds per timed run");
  app.add_flag("--only-tables", only_tables, "skip the candidates");
  CLI11_PARSE(app, argc, argv);
  if (rows % 24 != 0 || n % 16 != 0 || n_tok % 24 != 0) {
    std::fprintf(stderr, "rows and tokens must be multiples of 24, n of 16\n");
    return 2;
  }
  Data d;
  d.rows = rows, d.n_tok = n_tok, d.n = n;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  d.wf.resize(rows * n), d.wh.resize(rows * n), d.wb.resize(rows * n);
  for (int64_t i = 0; i < rows * n; ++i) {
    // 8 significant bits: the same values in f32, f16 and bf16.
    const float v = cpu::BitsToF32(cpu::F32ToBits(u(rng)) & 0xFFFF0000u);
    d.wh[i] = cpu::F32ToHalf(v);
    d.wf[i] = cpu::HalfToF32(d.wh[i]);
    d.wb[i] = static_cast<uint16_t>(cpu::F32ToBits(d.wf[i]) >> 16);
  }
  d.x.resize(n_tok * n);
  for (auto& v : d.x) v = u(rng);
  d.y.assign(rows * n_tok, 0), d.yref.resize(rows * n_tok);
  d.wconv.resize(rows * n);
  for (int t = 0; t < n_tok; ++t) {
    for (int r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += static_cast<double>(d.wf[r * n + i]) * d.x[t * n + i];
      d.yref[t * rows + r] = static_cast<float>(s);
    }
  }
  const double flop = 2.0 * rows * n * n_tok;
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");

  std::printf("rows %d, n %lld, tokens %d (weights %.0f KiB f16), best of 5 x %d ms\n\n", rows,
              static_cast<long long>(n), n_tok, rows * n * 2 / 1024.0, ms);
  const double it = 1 << 20;
  const double p256 =
      12 * it * 16 / BestSeconds([&] { g_sink = float_tile::PeakFma256(1 << 20); }, ms) * 1e-9;
  const double p512 =
      has512
          ? 12 * it * 32 / BestSeconds([&] { g_sink = float_tile::PeakFma512(1 << 20); }, ms) * 1e-9
          : 0;
  std::printf("| group  | tile                               | GFLOP/s | /peak |\n");
  std::printf("|--------|------------------------------------|--------:|------:|\n");
  std::printf("| peak   | 256-bit FMA, 12 chains             | %7.1f | %5.2f |\n", p256, 1.0);
  if (has512)
    std::printf("| peak   | 512-bit FMA, 12 chains             | %7.1f | %5.2f |\n", p512,
                p512 / p256);
  const double peak = std::max(p256, p512);

  auto check = [&](const std::string& name) {
    const double e = RelErr(d);
    if (e > 1e-5) std::printf("  !! %s differs from the f64 product: %.2e\n", name.c_str(), e);
  };
  const float* x = d.x.data();
  float* y = d.y.data();
  if (!only_tables) {
    std::vector<float_tile::Candidate> cands = float_tile::Candidates256();
    if (has512) {
      auto c512 = float_tile::Candidates512();
      cands.insert(cands.end(), c512.begin(), c512.end());
    }
    for (const auto& c : cands) {
      const float_tile::ChunkArgs args = {
          c.f32_weights ? static_cast<const void*>(d.wf.data()) : d.wh.data(),
          rows,
          x,
          n_tok,
          n,
          y,
          d.wconv.data()};
      std::copy(d.yref.begin(), d.yref.end(),
                d.y.begin());  // entries outside the candidate's whole tiles stay right
      c.run(args);
      check(c.name);
      const double covered = 2.0 * (rows / c.rm * c.rm) * n * (n_tok / c.rn * c.rn);
      Print("cand", c.name, covered, BestSeconds([&] { c.run(args); }, ms), peak);
    }
  }
  // The engine's tables, on the same chunk (one gemm call = one chunk task).
  struct T {
    const char* label;
    const cpu::KernelTable* k;
  };
  const T tables[] = {{"avx2", cpu::Avx2Kernels()}, {"avx512", cpu::Avx512Kernels()}};
  for (const T& t : tables) {
    if (t.k == nullptr) continue;
    struct W {
      const char* name;
      kvstash::engine::GgmlType type;
      const void* data;
      size_t es;
    };
    const W ws[] = {{"f16", kvstash::engine::GgmlType::kF16, d.wh.data(), 2},
                    {"f32", kvstash::engine::GgmlType::kF32, d.wf.data(), 4},
                    {"bf16", kvstash::engine::GgmlType::kBF16, d.wb.data(), 2}};
    for (const W& w : ws) {
      const std::string name = std::string(t.label) + " gemm " + w.name;
      std::fill(d.y.begin(), d.y.end(), 0.0f);
      auto fn = [&] {
        t.k->gemm(w.type, static_cast<const uint8_t*>(w.data), n * w.es, rows,
                  reinterpret_cast<const uint8_t*>(x), n * sizeof(float), n_tok, n, y, rows);
      };
      fn();
      check(name);
      Print("table", name, flop, BestSeconds(fn, ms), peak);
    }
  }
  return 0;
}
