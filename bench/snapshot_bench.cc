// What a recurrent-state snapshot of a hybrid model costs (docs/cache.md "Hybrid models"): its
// bytes per sequence in the real shapes, how many tokens of the model's KV weigh the same, and
// the time to take one (copy into the in-memory tier), restore one (copy out), write one to the
// disk tier (BlockStore Put, durable) and read it back (BlockStore Get, checksum verified).
//
//   snapshot_bench [--dir DIR] [--reps N]
// DIR must be on the disk to measure (default build/bin/../snapshot-bench-tmp).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "cache/state_snapshots.h"
#include "engine/model/mkmodel.h"
#include "storage/block_store.h"

namespace {

using namespace kvstash;
using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

struct Shape {
  size_t state_bytes = 0;
  size_t kv_bytes_per_token = 0;  // f16, attention layers only
};

Shape ShapeOf(const engine::ModelConfig& c) {
  Shape s;
  const int64_t key_dim = c.ssm_head_dim * c.ssm_n_k_heads;
  const int64_t value_dim = c.ssm_head_dim * c.ssm_n_v_heads;
  const int64_t conv = (c.ssm_d_conv - 1) * (2 * key_dim + value_dim);
  const int64_t ssm = c.ssm_head_dim * c.ssm_head_dim * c.ssm_n_v_heads;
  int64_t n_deltanet = 0;
  for (int64_t i = 0; i < c.n_layer; ++i) n_deltanet += c.IsDeltaNetLayer(i);
  s.state_bytes = static_cast<size_t>(n_deltanet * (conv + ssm)) * sizeof(float);
  s.kv_bytes_per_token =
      static_cast<size_t>((c.n_layer - n_deltanet) * 2 * c.n_head_kv * c.EffectiveHeadDim() * 2);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("snapshot_bench: the cost of recurrent-state snapshots");
  std::string dir = std::string(KVSTASH_BENCH_DEFAULT_DIR);
  int reps = 5;
  app.add_option("--dir", dir, "Directory for the disk-tier store (on the disk to measure)");
  app.add_option("--reps", reps,
                 "Repetitions per measurement (the best is printed: on a shared machine the "
                 "others measure the neighbours)");
  CLI11_PARSE(app, argc, argv);

  std::printf("%-16s %10s %9s %8s %8s %8s %9s %9s\n", "preset", "state MiB", "KV tokens", "save ms",
              "load ms", "GB/s", "disk w ms", "disk r ms");
  for (const char* preset : {"tiny-qwen35", "qwen3.6-35b-a3b", "qwen3.6-27b"}) {
    auto cfg = engine::FindPreset(preset);
    if (!cfg.ok()) {
      std::fprintf(stderr, "%s: %s\n", preset, cfg.status().ToString().c_str());
      return 1;
    }
    const Shape shape = ShapeOf(*cfg);
    std::vector<float> state(shape.state_bytes / sizeof(float));
    for (size_t i = 0; i < state.size(); ++i) state[i] = static_cast<float>(i % 977) * 0.5f;
    std::vector<int32_t> toks(16, 7);
    std::vector<double> save, load, dw, dr;
    cache::StateSnapshots snaps(4 * shape.state_bytes);
    std::vector<float> out;
    out.reserve(state.size());  // a sequence's state buffer exists already when it resumes
    std::filesystem::remove_all(dir);
    storage::Options so;
    so.path = dir;
    so.segment_bytes = ((shape.state_bytes + (1 << 20)) & ~size_t{4095});
    so.capacity_bytes = 8 * so.segment_bytes;
    auto store = storage::BlockStore::Open(so);
    if (!store.ok()) {
      std::fprintf(stderr, "%s\n", store.status().ToString().c_str());
      return 1;
    }
    std::vector<std::byte> buf(storage::BlockStore::ReadBufferBytes(shape.state_bytes) + 4096);
    auto* aligned = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(buf.data()) + 4095) &
                                                 ~uintptr_t{4095});
    for (int r = 0; r < reps; ++r) {
      storage::BlockKey key{static_cast<uint64_t>(r + 1), 42};
      auto t0 = Clock::now();
      snaps.Put(key, storage::BlockKey{}, toks, state);
      save.push_back(MsSince(t0));
      t0 = Clock::now();
      const std::vector<float>* f = snaps.Find(key, storage::BlockKey{}, toks);
      out.assign(f->begin(), f->end());
      load.push_back(MsSince(t0));
      storage::BlockHeader h;
      h.token_ids = toks;
      t0 = Clock::now();
      Status s = (*store)->Put(key, h, std::as_bytes(std::span<const float>(state))).get();
      if (s.ok()) s = (*store)->Flush();
      dw.push_back(MsSince(t0));
      t0 = Clock::now();
      storage::ReadResult rr =
          (*store)->Get(key, {aligned, storage::BlockStore::ReadBufferBytes(shape.state_bytes)});
      dr.push_back(MsSince(t0));
      if (!s.ok() || !rr.hit() || std::memcmp(aligned, state.data(), shape.state_bytes) != 0) {
        std::fprintf(stderr, "disk round trip failed: %s %s\n", s.ToString().c_str(),
                     rr.status.ToString().c_str());
        return 1;
      }
    }
    (void)(*store)->Close();
    std::filesystem::remove_all(dir);
    auto best = [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); };
    const double l = best(load);
    std::printf("%-16s %10.2f %9zu %8.2f %8.2f %8.2f %9.1f %9.1f\n", preset,
                shape.state_bytes / 1048576.0, shape.state_bytes / shape.kv_bytes_per_token,
                best(save), l, shape.state_bytes / (l * 1e6), best(dw), best(dr));
  }
  return 0;
}
