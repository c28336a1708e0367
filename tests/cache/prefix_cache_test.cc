// The prefix cache against uncached runs (ARCHITECTURE.md §8 invariants 1-3): warm output equals
// cold output from every tier, reuse is exactly the shared full blocks, namespaces isolate,
// tiny budgets evict without changing outputs, and damaged disk blocks are recomputed.
#include "cache/prefix_cache.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/cache/cache_test_util.h"
#include "tests/fixtures.h"

namespace kvstash::cache {
namespace {

using storage::testing::RealDiskTestRoot;
using storage::testing::TempDir;
using testutil::Generate;
using testutil::GenResult;
using testutil::MakePrompt;
using testutil::Stack;
using testutil::StackSetup;

struct ModelCase {
  std::string name;
  std::string path;  // empty = skip (fixture missing)
};

std::vector<ModelCase> Models() {
  std::vector<ModelCase> out;
  out.push_back({"stories260K", ::kvstash::testing::HaveFixture("stories260K.gguf")
                                    ? ::kvstash::testing::FixturePath("stories260K.gguf")
                                    : ""});
  out.push_back({"tiny-llama-q8_0", testutil::SyntheticModel("tiny-llama", "q8_0")});
  out.push_back({"tiny-qwen3-f16", testutil::SyntheticModel("tiny-qwen3", "f16")});
  return out;
}

// Invariant 1: the greedy continuation served from each tier equals the uncached one.
TEST(PrefixCacheTest, WarmEqualsColdFromEveryTier) {
  for (const ModelCase& mc : Models()) {
    SCOPED_TRACE(mc.name);
    if (mc.path.empty()) {
      std::printf("[ SKIPPED  ] %s: fixture missing\n", mc.name.c_str());
      continue;
    }
    auto model = testutil::LoadOrDie(mc.path);
    ASSERT_NE(model, nullptr);
    const int V = model->config().n_vocab;
    // 150 tokens: 9 full blocks + a partial one.
    const std::vector<int32_t> prompt = MakePrompt(150, V, 11, 1);
    const int n_gen = 24;

    std::vector<int32_t> cold;
    {
      StackSetup s;
      Stack plain(*model, mc.path, s);
      cold = Generate(*plain.runner, nullptr, prompt, n_gen).tokens;
      ASSERT_EQ(cold.size(), static_cast<size_t>(n_gen));
    }
    TempDir dir(RealDiskTestRoot(), "cache-tiers");
    StackSetup s;
    s.store_dir = dir.Sub("store");
    s.cache.host_bytes = 64ull << 20;
    {
      Stack st(*model, mc.path, s);
      GenResult first = Generate(*st.runner, st.cache.get(), prompt, n_gen);
      EXPECT_EQ(first.acquired.cached_tokens, 0);
      EXPECT_EQ(first.tokens, cold);

      GenResult dev = Generate(*st.runner, st.cache.get(), prompt, n_gen);
      EXPECT_EQ(dev.tokens, cold);
      EXPECT_EQ(dev.acquired.device_tokens, 144);  // 9 full blocks
      EXPECT_EQ(dev.acquired.cached_tokens, 144);

      st.cache->EvictDevice();  // into the host tier
      EXPECT_EQ(st.cache->Stats().device.blocks, 0u);
      GenResult host = Generate(*st.runner, st.cache.get(), prompt, n_gen);
      EXPECT_EQ(host.tokens, cold);
      EXPECT_EQ(host.acquired.host_tokens, 144);
      EXPECT_EQ(host.acquired.cached_tokens, 144);
      ASSERT_TRUE(st.cache->Flush().ok());
      EXPECT_GT(st.cache->Stats().written_blocks, 0u);
    }
    // A new "process": nothing in memory, everything from disk.
    {
      Stack st(*model, mc.path, s);
      GenResult disk = Generate(*st.runner, st.cache.get(), prompt, n_gen);
      EXPECT_EQ(disk.tokens, cold);
      EXPECT_EQ(disk.acquired.disk_tokens, 144);
      EXPECT_EQ(disk.acquired.cached_tokens, 144);
      const CacheStats cs = st.cache->Stats();
      EXPECT_EQ(cs.disk.hits, 9u);
      EXPECT_EQ(cs.disk.bytes_in, 9 * st.runner->kv_layout().block_bytes());
      // Generated tokens were published too: the continuation hits beyond the prompt.
      std::vector<int32_t> longer = prompt;
      longer.insert(longer.end(), cold.begin(), cold.end());
      longer.push_back(5);
      GenResult cont = Generate(*st.runner, st.cache.get(), longer, 4);
      EXPECT_EQ(cont.acquired.cached_tokens, (150 + n_gen) / 16 * 16);
    }
  }
}

// A prompt that is entirely cached still recomputes its last token (for its logits), from a
// private copy of the last block.
TEST(PrefixCacheTest, FullyCachedPromptRecomputesOnlyTheLastToken) {
  const std::string path = testutil::SyntheticModel("tiny-llama", "q8_0");
  auto model = testutil::LoadOrDie(path);
  const std::vector<int32_t> prompt = MakePrompt(64, model->config().n_vocab, 3);
  StackSetup s;
  Stack st(*model, path, s);
  Stack plain(*model, path, s);
  const auto cold = Generate(*plain.runner, nullptr, prompt, 8).tokens;
  Generate(*st.runner, st.cache.get(), prompt, 8);
  GenResult warm = Generate(*st.runner, st.cache.get(), prompt, 8);
  EXPECT_EQ(warm.acquired.cached_tokens, 63);
  EXPECT_EQ(warm.tokens, cold);
}

// Invariant: two prompts sharing a prefix reuse exactly the shared full blocks.
TEST(PrefixCacheTest, DivergingPromptsReuseExactlyTheSharedBlocks) {
  const std::string path = testutil::SyntheticModel("tiny-qwen3", "f16");
  auto model = testutil::LoadOrDie(path);
  const int V = model->config().n_vocab;
  const std::vector<int32_t> shared = MakePrompt(100, V, 5);
  for (int bt : {16, 7}) {
    SCOPED_TRACE(bt);
    std::vector<int32_t> a = shared, b = shared;
    const auto ta = MakePrompt(40, V, 6), tb = MakePrompt(40, V, 7);
    a.insert(a.end(), ta.begin(), ta.end());
    b.insert(b.end(), tb.begin(), tb.end());
    ASSERT_NE(a[100], b[100]);
    StackSetup s;
    s.block_tokens = bt;
    Stack st(*model, path, s);
    Stack plain(*model, path, s);
    Generate(*st.runner, st.cache.get(), a, 4);
    GenResult rb = Generate(*st.runner, st.cache.get(), b, 12);
    EXPECT_EQ(rb.acquired.cached_tokens, 100 / bt * bt);
    EXPECT_EQ(rb.tokens, Generate(*plain.runner, nullptr, b, 12).tokens);
    // Two live sequences share the cached pages (reference counts, no copies).
    engine::Sequence s1, s2;
    ASSERT_TRUE(st.cache->Acquire(s1, a).ok());
    ASSERT_TRUE(st.cache->Acquire(s2, b).ok());
    ASSERT_GE(s1.block_table.size(), 2u);
    EXPECT_EQ(s1.block_table[0], s2.block_table[0]);
    EXPECT_GE(st.runner->pool().refcount(s1.block_table[0]), 3);
    st.cache->Release(s1);
    st.cache->Release(s2);
  }
}

// Invariant 2: another model file (same shape, other weights), KV dtype, block size or salt never
// hits, even through the same cache directory.
TEST(PrefixCacheTest, NamespacesIsolate) {
  const std::string path_a = testutil::SyntheticModel("tiny-llama", "q8_0", 7);
  const std::string path_b = testutil::SyntheticModel("tiny-llama", "q8_0", 8);
  auto model_a = testutil::LoadOrDie(path_a);
  auto model_b = testutil::LoadOrDie(path_b);
  const std::vector<int32_t> prompt = MakePrompt(96, model_a->config().n_vocab, 9);
  TempDir dir(RealDiskTestRoot(), "cache-isolation");
  StackSetup base;
  base.store_dir = dir.Sub("store");
  {
    Stack st(*model_a, path_a, base);
    Generate(*st.runner, st.cache.get(), prompt, 2);
    ASSERT_TRUE(st.cache->Flush().ok());
  }
  auto expect_no_hit = [&](const engine::Model& m, const std::string& path, StackSetup s,
                           const char* what) {
    SCOPED_TRACE(what);
    Stack st(m, path, s);
    GenResult r = Generate(*st.runner, st.cache.get(), prompt, 2);
    EXPECT_EQ(r.acquired.cached_tokens, 0);
    EXPECT_EQ(st.cache->Stats().disk.hits, 0u);
  };
  expect_no_hit(*model_b, path_b, base, "other weights");
  StackSetup f32 = base;
  f32.dtype = engine::KvDtype::kF32;
  expect_no_hit(*model_a, path_a, f32, "kv dtype");
  StackSetup bt8 = base;
  bt8.block_tokens = 8;
  expect_no_hit(*model_a, path_a, bt8, "block size");
  StackSetup salted = base;
  salted.cache.cache_salt = "tenant-2";
  expect_no_hit(*model_a, path_a, salted, "salt");
  // The original settings still hit (the store was not just empty).
  Stack st(*model_a, path_a, base);
  EXPECT_EQ(Generate(*st.runner, st.cache.get(), prompt, 2).acquired.disk_tokens, 95);
}

// A hybrid model's blocks hold its attention layers only: the layout counts them and the
// namespace names them (and the rope sections); a dense model's namespace text is unchanged.
TEST(PrefixCacheTest, HybridNamespaceNamesTheLayersABlockHolds) {
  auto model = engine::testutil::LoadOrDie(engine::testutil::SyntheticModel("tiny-qwen35", "f16"));
  ASSERT_TRUE(model);
  auto runner = engine::testutil::MakeRunner(*model, engine::KvDtype::kF16, 16);
  EXPECT_EQ(runner->kv_layout().n_layers, 2);  // layers 1 and 3 of 4
  const std::string s = NamespaceString(NamespaceFor(*model, Hash128{}, runner->kv_layout(), ""));
  EXPECT_NE(s.find(";n_layers=2;"), std::string::npos) << s;
  EXPECT_NE(s.find(";kv_layers=1,3;"), std::string::npos) << s;
  EXPECT_NE(s.find(";rope_sections=3,3,2,0;"), std::string::npos) << s;
  auto dense = engine::testutil::LoadOrDie(engine::testutil::SyntheticModel("tiny-qwen3", "f16"));
  auto dr = engine::testutil::MakeRunner(*dense, engine::KvDtype::kF16, 16);
  const std::string d = NamespaceString(NamespaceFor(*dense, Hash128{}, dr->kv_layout(), ""));
  EXPECT_EQ(d.find("kv_layers"), std::string::npos) << d;
  EXPECT_EQ(d.find("rope_sections"), std::string::npos) << d;
}

TEST(PrefixCacheTest, FingerprintCoversTensorBytesAndIsRemembered) {
  TempDir dir(RealDiskTestRoot(), "cache-fp");
  const std::string a = testutil::SyntheticModel("tiny-llama", "f16", 7);
  const std::string copy = dir.Sub("copy.gguf");
  std::filesystem::copy_file(a, copy);
  auto fa = FingerprintFile(a, nullptr);
  auto fc = FingerprintFile(copy, nullptr);
  ASSERT_TRUE(fa.ok() && fc.ok());
  EXPECT_EQ(*fa, *fc);
  // One byte of the last tensor changes the fingerprint.
  {
    std::fstream f(copy, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    char c = 0;
    f.read(&c, 1);
    f.seekp(-3, std::ios::end);
    c ^= 1;
    f.write(&c, 1);
  }
  auto fc2 = FingerprintFile(copy, nullptr);
  ASSERT_TRUE(fc2.ok());
  EXPECT_NE(*fa, *fc2);
  // Remembered per (path, size, mtime, inode).
  storage::Options so;
  so.path = dir.Sub("store");
  auto store = storage::BlockStore::Open(so);
  ASSERT_TRUE(store.ok());
  bool from_meta = true;
  ASSERT_TRUE(FingerprintFile(a, store->get(), &from_meta).ok());
  EXPECT_FALSE(from_meta);
  auto again = FingerprintFile(a, store->get(), &from_meta);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(from_meta);
  EXPECT_EQ(*again, *fa);
}

// Invariant 4: tiny budgets in every tier keep outputs right and counters consistent.
TEST(PrefixCacheTest, TinyBudgetsEvictEverywhereAndStayCorrect) {
  const std::string path = testutil::SyntheticModel("tiny-llama", "q8_0");
  auto model = testutil::LoadOrDie(path);
  const int V = model->config().n_vocab;
  TempDir dir(RealDiskTestRoot(), "cache-tiny");
  StackSetup s;
  s.n_pages = 24;  // one 200-token sequence needs 13
  s.cache.max_device_pages = 8;
  s.store_dir = dir.Sub("store");
  s.segment_bytes = 64 << 10;
  s.store_capacity = 4 * s.segment_bytes;
  Stack st(*model, path, s);
  s.cache.host_bytes = 5 * st.runner->kv_layout().block_bytes();
  st.Close();
  Stack cached(*model, path, s);
  StackSetup plain_setup;
  Stack plain(*model, path, plain_setup);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) prompts.push_back(MakePrompt(120 + 13 * i, V, 100 + i));
  uint64_t served = 0;
  for (int round = 0; round < 3; ++round) {
    for (size_t i = 0; i < prompts.size(); ++i) {
      SCOPED_TRACE(std::to_string(round) + "/" + std::to_string(i));
      GenResult r = Generate(*cached.runner, cached.cache.get(), prompts[i], 6);
      EXPECT_EQ(r.tokens, Generate(*plain.runner, nullptr, prompts[i], 6).tokens);
      served += r.acquired.cached_tokens;
      const CacheStats cs = cached.cache->Stats();
      EXPECT_LE(cs.device.blocks, 8u);
      EXPECT_LE(cs.host.bytes, s.cache.host_bytes);
      EXPECT_LE(cached.store->Stats().disk_bytes, s.store_capacity);
    }
    if (round == 1) cached.cache->EvictDevice();
  }
  ASSERT_TRUE(cached.cache->Flush().ok());
  const CacheStats cs = cached.cache->Stats();
  EXPECT_GT(cs.device.evictions, 0u);
  EXPECT_GT(cs.host.evictions, 0u);
  EXPECT_GT(cached.store->Stats().evicted_segments, 0u);
  EXPECT_EQ(cs.cached_tokens, served);
  EXPECT_EQ(cs.write_queued, cs.written_blocks + cs.write_failed);
  EXPECT_EQ(cs.write_queue_depth, 0u);
  EXPECT_EQ(cs.lookups, 18u);
  // Every free page is back: nothing leaked while evicting (cached pages hold one ref each).
  EXPECT_EQ(cached.runner->pool().n_free() + static_cast<int>(cs.device.blocks), 24);
}

// Acquire's own page allocations can make the pool's reclaimer demote device blocks into a full
// host tier, evicting host blocks the plan was about to copy: the plan shrinks, output unchanged.
TEST(PrefixCacheTest, ReclaimDuringAcquireShrinksThePlanSafely) {
  const std::string path = testutil::SyntheticModel("tiny-llama", "q8_0");
  auto model = testutil::LoadOrDie(path);
  const int V = model->config().n_vocab;
  StackSetup s;
  s.n_pages = 12;
  s.n_ctx = 190;
  Stack probe(*model, path, s);
  s.cache.host_bytes = 3 * probe.runner->kv_layout().block_bytes();
  probe.Close();
  Stack st(*model, path, s);
  StackSetup ps;
  Stack plain(*model, path, ps);
  const auto a = MakePrompt(48, V, 61);
  const auto b = MakePrompt(176, V, 62);
  Generate(*st.runner, st.cache.get(), a, 1);
  st.cache->EvictDevice();  // a's 3 blocks -> host (full)
  EXPECT_EQ(st.cache->Stats().host.blocks, 3u);
  Generate(*st.runner, st.cache.get(), b, 1);  // 11 cached device pages, 1 free
  std::vector<int32_t> a2 = a;
  const auto more = MakePrompt(20, V, 63);
  a2.insert(a2.end(), more.begin(), more.end());
  GenResult r = Generate(*st.runner, st.cache.get(), a2, 8);
  EXPECT_EQ(r.tokens, Generate(*plain.runner, nullptr, a2, 8).tokens);
  EXPECT_LT(r.acquired.host_tokens, 48);
  EXPECT_GT(r.acquired.recomputed_blocks, 0);
  EXPECT_EQ(st.runner->pool().n_free() + static_cast<int>(st.cache->Stats().device.blocks), 12);
}

// A corrupted disk block (flipped payload byte, or a stale entry whose tokens differ) is
// detected, recomputed, and the output is unchanged.
TEST(PrefixCacheTest, CorruptDiskBlocksAreRecomputed) {
  const std::string path = testutil::SyntheticModel("tiny-llama", "q8_0");
  auto model = testutil::LoadOrDie(path);
  const std::vector<int32_t> prompt = MakePrompt(160, model->config().n_vocab, 21);
  TempDir dir(RealDiskTestRoot(), "cache-corrupt");
  StackSetup s;
  s.store_dir = dir.Sub("store");
  StackSetup ps;
  Stack plain(*model, path, ps);
  const auto cold = Generate(*plain.runner, nullptr, prompt, 10).tokens;
  size_t block_bytes = 0;
  {
    Stack st(*model, path, s);
    block_bytes = st.runner->kv_layout().block_bytes();
    Generate(*st.runner, st.cache.get(), prompt, 10);
  }
  // Flip one byte in the middle of the payload area of every segment file.
  for (const auto& e : std::filesystem::directory_iterator(dir.Sub("store/segments"))) {
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    const std::streamoff off = 4096 + 4096 + static_cast<std::streamoff>(block_bytes) * 4;
    f.seekg(off);
    char c = 0;
    f.read(&c, 1);
    f.seekp(off);
    c = static_cast<char>(c ^ 0x5a);
    f.write(&c, 1);
  }
  {
    Stack st(*model, path, s);
    GenResult r = Generate(*st.runner, st.cache.get(), prompt, 10);
    EXPECT_EQ(r.tokens, cold);
    EXPECT_LT(r.acquired.cached_tokens, 159);
    EXPECT_GE(st.cache->Stats().corrupt_blocks, 1u);
    // The damaged block was dropped and republished: the next process hits everything.
  }
  {
    Stack st(*model, path, s);
    GenResult r = Generate(*st.runner, st.cache.get(), prompt, 10);
    EXPECT_EQ(r.tokens, cold);
    EXPECT_EQ(r.acquired.disk_tokens, 159);
  }
  // A stale entry: the right key with other tokens in its header is never used.
  {
    Stack st(*model, path, s);
    const Hash128 ns = NamespaceHash(st.ns);
    const auto keys = BlockHashes(ns, prompt, 16);
    ASSERT_TRUE(st.store->Erase(keys[0]).ok());
    storage::BlockHeader h;
    h.parent = ns;
    h.layout_tag = ns.lo ^ ns.hi;
    h.token_ids.assign(prompt.begin() + 1, prompt.begin() + 17);  // off by one
    std::vector<std::byte> payload(block_bytes, std::byte{0});
    ASSERT_TRUE(st.store->Put(keys[0], h, payload).get().ok());
    GenResult r = Generate(*st.runner, st.cache.get(), prompt, 10);
    EXPECT_EQ(r.tokens, cold);
    EXPECT_EQ(r.acquired.cached_tokens, 0);
    EXPECT_EQ(st.cache->Stats().corrupt_blocks, 1u);
  }
}

// The planner recomputes a disk run when prefill is estimated to be faster than reading it.
TEST(PrefixCacheTest, PlannerRecomputesWhenLoadingIsSlower) {
  const std::string path = testutil::SyntheticModel("tiny-llama", "q8_0");
  auto model = testutil::LoadOrDie(path);
  const std::vector<int32_t> prompt = MakePrompt(96, model->config().n_vocab, 31);
  TempDir dir(RealDiskTestRoot(), "cache-planner");
  StackSetup s;
  s.store_dir = dir.Sub("store");
  {
    Stack st(*model, path, s);
    Generate(*st.runner, st.cache.get(), prompt, 2);
  }
  StackSetup slow = s;
  slow.cache.disk_read_bytes_per_s = 1e3;  // 1 KB/s disk
  slow.cache.prefill_tokens_per_s = 1e6;   // instant prefill
  {
    Stack st(*model, path, slow);
    GenResult r = Generate(*st.runner, st.cache.get(), prompt, 2);
    EXPECT_EQ(r.acquired.cached_tokens, 0);
    EXPECT_EQ(r.acquired.recomputed_blocks, 6);
    EXPECT_EQ(st.cache->Stats().recompute_decisions, 1u);
  }
  StackSetup fast = s;
  fast.cache.disk_read_bytes_per_s = 1e12;
  fast.cache.prefill_tokens_per_s = 1;
  Stack st(*model, path, fast);
  GenResult r = Generate(*st.runner, st.cache.get(), prompt, 2);
  EXPECT_EQ(r.acquired.disk_tokens, 95);
  EXPECT_EQ(st.cache->Stats().load_decisions, 1u);
}

TEST(PrefixCacheTest, WritePolicies) {
  const std::string path = testutil::SyntheticModel("tiny-llama", "q8_0");
  auto model = testutil::LoadOrDie(path);
  const std::vector<int32_t> prompt = MakePrompt(64, model->config().n_vocab, 41);
  for (WritePolicy p : {WritePolicy::kAlways, WritePolicy::kOnEvict, WritePolicy::kNever}) {
    SCOPED_TRACE(WritePolicyName(p));
    TempDir dir(RealDiskTestRoot(), "cache-policy");
    StackSetup s;
    s.store_dir = dir.Sub("store");
    s.cache.write_policy = p;
    Stack st(*model, path, s);
    Generate(*st.runner, st.cache.get(), prompt, 2);
    ASSERT_TRUE(st.cache->Flush().ok());
    const uint64_t after_publish = st.store->Stats().blocks;
    st.cache->EvictDevice();
    ASSERT_TRUE(st.cache->Flush().ok());
    const uint64_t after_evict = st.store->Stats().blocks;
    switch (p) {
      case WritePolicy::kAlways:
        EXPECT_EQ(after_publish, 4u);
        EXPECT_EQ(after_evict, 4u);
        break;
      case WritePolicy::kOnEvict:
        EXPECT_EQ(after_publish, 0u);
        EXPECT_EQ(after_evict, 4u);
        break;
      case WritePolicy::kNever:
        EXPECT_EQ(after_evict, 0u);
        break;
    }
  }
  EXPECT_FALSE(ParseWritePolicy("sometimes").ok());
}

// A full write-behind queue drops blocks from persistence (counted) instead of blocking.
TEST(PrefixCacheTest, FullWriteQueueDropsInsteadOfBlocking) {
  const std::string path = testutil::SyntheticModel("tiny-llama", "q8_0");
  auto model = testutil::LoadOrDie(path);
  TempDir dir(RealDiskTestRoot(), "cache-drop");
  StackSetup s;
  s.store_dir = dir.Sub("store");
  s.cache.write_queue_blocks = 1;
  Stack st(*model, path, s);
  for (int i = 0; i < 4; ++i) {
    Generate(*st.runner, st.cache.get(), MakePrompt(256, model->config().n_vocab, 50 + i), 1);
  }
  ASSERT_TRUE(st.cache->Flush().ok());
  const CacheStats cs = st.cache->Stats();
  EXPECT_GT(cs.write_dropped, 0u);
  EXPECT_EQ(cs.write_queued + cs.write_dropped, cs.published_blocks);
  EXPECT_EQ(cs.written_blocks, cs.write_queued);
}

}  // namespace
}  // namespace kvstash::cache
