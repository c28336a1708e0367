// Helpers for prefix cache tests: a model + runner + optional store + cache, and a generation
// loop that uses the cache the way `kvstash run` does.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "cache/prefix_cache.h"
#include "engine/runner.h"
#include "serve/generate.h"
#include "storage/block_store.h"
#include "storage/testing/test_blocks.h"
#include "tests/engine/engine_test_util.h"

namespace kvstash::cache::testutil {

using engine::testutil::LoadOrDie;
using engine::testutil::SyntheticModel;

struct StackSetup {
  engine::KvDtype dtype = engine::KvDtype::kF16;
  int block_tokens = 16;
  int n_pages = 256;
  int n_ctx = 1024;
  CacheOptions cache;
  std::string store_dir;  // empty: no disk tier
  uint64_t store_capacity = 64ull << 20;
  uint64_t segment_bytes = 4ull << 20;
  // Hybrid models: a snapshot store in store_dir/snapshots (as serve::Engine opens it).
  bool snapshot_store = false;
  // Its budget and segment size (0: those of the KV store), and whether it prepares segments
  // ahead (tests of its eviction turn that off so segment counts are exact).
  uint64_t snapshot_store_capacity = 0;
  uint64_t snapshot_segment_bytes = 0;
  bool snapshot_prepare_segments = true;
};

// One "process": runner, store and cache over a loaded model.
class Stack {
 public:
  Stack(const engine::Model& model, const std::string& model_path, const StackSetup& s) {
    engine::RunnerOptions ro;
    ro.kv_dtype = s.dtype;
    ro.block_tokens = s.block_tokens;
    ro.n_ctx = s.n_ctx;
    ro.n_pages = s.n_pages;
    ro.n_threads = 2;
    auto r = engine::Runner::Create(model, ro);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    runner = std::move(*r);
    if (!s.store_dir.empty()) {
      storage::Options so;
      so.path = s.store_dir;
      so.capacity_bytes = s.store_capacity;
      so.segment_bytes = s.segment_bytes;
      auto st = storage::BlockStore::Open(so);
      EXPECT_TRUE(st.ok()) << st.status().ToString();
      store = std::move(*st);
      if (s.snapshot_store) {
        so.path = s.store_dir + "/snapshots";
        if (s.snapshot_store_capacity > 0) so.capacity_bytes = s.snapshot_store_capacity;
        if (s.snapshot_segment_bytes > 0) so.segment_bytes = s.snapshot_segment_bytes;
        so.prepare_segments = s.snapshot_prepare_segments;
        auto ss = storage::BlockStore::Open(so);
        EXPECT_TRUE(ss.ok()) << ss.status().ToString();
        snapshot_store = std::move(*ss);
      }
    }
    auto fp = FingerprintFile(model_path, store.get());
    EXPECT_TRUE(fp.ok()) << fp.status().ToString();
    ns = NamespaceFor(model, *fp, runner->kv_layout(), s.cache.cache_salt);
    CacheOptions co = s.cache;
    co.recurrent_state_elems = runner->RecurrentStateElems();  // as serve::Engine does
    auto c = PrefixCache::Create(runner->pool(), store.get(), ns, co, model_path, model.Describe(),
                                 snapshot_store.get());
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    cache = std::move(*c);
  }
  ~Stack() { Close(); }
  // Shuts down in the right order (cache drains its queue into the store first).
  void Close() {
    cache.reset();
    if (store) {
      EXPECT_TRUE(store->Close().ok());
    }
    store.reset();
    if (snapshot_store) {
      EXPECT_TRUE(snapshot_store->Close().ok());
    }
    snapshot_store.reset();
    runner.reset();
  }

  std::unique_ptr<engine::Runner> runner;
  std::unique_ptr<storage::BlockStore> store;
  std::unique_ptr<storage::BlockStore> snapshot_store;
  std::unique_ptr<PrefixCache> cache;
  NamespaceParams ns;
};

struct GenResult {
  std::vector<int32_t> tokens;
  AcquireResult acquired;
};

// Greedy generation of `n` tokens after `prompt`, reusing and filling the cache when given: the
// same generation path as `kvstash run` and kvstashd (serve::RunToCompletion).
inline GenResult Generate(engine::Runner& runner, PrefixCache* cache,
                          const std::vector<int32_t>& prompt, int n) {
  GenResult out;
  std::vector<serve::Request> reqs;
  reqs.push_back(serve::GreedyRequest(prompt, n));
  auto done = serve::RunToCompletion(runner, cache, nullptr, std::move(reqs));
  EXPECT_TRUE(done.ok()) << done.status().ToString();
  if (!done.ok()) return out;
  const serve::Usage& u = (*done)[0].usage;
  out.tokens = (*done)[0].tokens;
  out.acquired = serve::AcquiredOf(u);
  EXPECT_EQ(out.acquired.cached_tokens,
            out.acquired.device_tokens + out.acquired.host_tokens + out.acquired.disk_tokens);
  return out;
}

// A deterministic pseudo-random prompt of `n` ids in [first, vocab).
inline std::vector<int32_t> MakePrompt(int n, int vocab, uint32_t seed, int first = 3) {
  std::vector<int32_t> p;
  uint32_t x = seed * 2654435761u + 1;
  for (int i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    p.push_back(first + static_cast<int32_t>((x >> 8) % static_cast<uint32_t>(vocab - first)));
  }
  return p;
}

}  // namespace kvstash::cache::testutil
