// The CPU backend's batched calls (engine/backend.h MatMulBatch, AttentionBatch): every job's
// output is the one MatMul / Attention gives, bit for bit, whatever else is in the batch, the
// thread count or the kernel table (KVSTASH_CPU_KERNELS) — the MoE FFN and batched decode rely
// on it to keep a token's result independent of its batch neighbours.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/backend.h"
#include "engine/cpu/kernels.h"
#include "engine/gguf/ggml_types.h"
#include "engine/gguf/quant.h"
#include "engine/kv_pool.h"
#include "tests/engine/engine_test_util.h"

namespace kvstash::engine {
namespace {

struct Matrix {
  std::vector<uint8_t> bytes;
  WeightMatrix w;
  Matrix(GgmlType type, int64_t n_out, int64_t n_in, std::mt19937& rng) {
    std::normal_distribution<float> nd(0.0f, 0.1f);
    w.type = type;
    w.n_in = n_in;
    w.n_out = n_out;
    w.row_bytes = RowBytes(type, n_in);
    bytes.resize(w.row_bytes * n_out);
    std::vector<float> row(n_in);
    for (int64_t r = 0; r < n_out; ++r) {
      for (float& x : row) x = nd(rng);
      EXPECT_TRUE(QuantizeRow(type, row.data(), bytes.data() + r * w.row_bytes, n_in).ok());
    }
    w.data = bytes.data();
  }
};

TEST(CpuBackendTest, MatMulBatchEqualsMatMulPerJobBitForBit) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  // Expert-like products: gate/up pairs sharing x (Q4_K), a down projection (Q6_K) with a row
  // count that is not a multiple of the batch's row chunk, an F32 job, and 1..17 tokens.
  std::vector<Matrix> m;
  m.emplace_back(GgmlType::kQ4_K, 200, 512, rng);
  m.emplace_back(GgmlType::kQ4_K, 200, 512, rng);
  m.emplace_back(GgmlType::kQ6_K, 300, 256, rng);
  m.emplace_back(GgmlType::kF32, 70, 48, rng);
  m.emplace_back(GgmlType::kQ8_0, 65, 96, rng);
  const auto input = [&](int n_tok, int64_t n_in) {
    std::vector<float> x(n_tok * n_in);
    for (float& v : x) v = nd(rng);
    return x;
  };
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    auto be = CreateCpuBackend(threads);
    std::vector<std::vector<float>> xs, ys;
    std::vector<MatMulJob> jobs;
    std::vector<int> which;
    for (int n_tok : {1, 5, 17, 4}) {
      xs.push_back(input(n_tok, 512));
      which.insert(which.end(), {0, 1});
      xs.push_back(input(n_tok, 256));
      xs.push_back(input(n_tok, 48));
      xs.push_back(input(n_tok, 96));
      which.insert(which.end(), {2, 3, 4});
    }
    // Jobs in order: per token count, gate and up on the same x, then the other three.
    size_t xi = 0;
    for (size_t i = 0; i < which.size(); ++i) {
      const Matrix& mm = m[which[i]];
      const std::vector<float>& x = xs[which[i] == 1 ? xi - 1 : xi++];
      const int n_tok = static_cast<int>(x.size() / mm.w.n_in);
      ys.emplace_back(static_cast<size_t>(n_tok) * mm.w.n_out, NAN);
      jobs.push_back({&mm.w, x.data(), n_tok, ys.back().data()});
    }
    be->MatMulBatch(jobs);
    for (size_t i = 0; i < jobs.size(); ++i) {
      std::vector<float> ref(ys[i].size());
      be->MatMul(*jobs[i].w, jobs[i].x, jobs[i].n_tok, ref.data());
      EXPECT_EQ(0, std::memcmp(ref.data(), ys[i].data(), ref.size() * sizeof(float)))
          << "job " << i << " (matrix " << which[i] << ", " << jobs[i].n_tok << " tokens)";
    }
  }
}

// A table with a repacked layout (engine/cpu/repack.h: F16 / BF16 rows by 4 on both x86 tables,
// Q4_K by 8 rows on AVX2) computes every such matrix of a model from its copy: Q4_K the same
// values as from the file's rows to float rounding, F16 / BF16 the same bits (only the order of
// the bytes changes); a token's bits independent of the token count and of the batch, for 1-3
// threads (the row chunks of decode and prefill fall on other group boundaries).
TEST(CpuBackendTest, RepackedWeightsGiveTheRowMajorValuesAndStayBatchInvariant) {
  std::vector<const cpu::KernelTable*> tables;
  for (const cpu::KernelTable* t : {cpu::Avx2Kernels(), cpu::Avx512Kernels()}) {
    if (t != nullptr && t->repack_rows != nullptr) tables.push_back(t);
  }
  if (tables.empty()) GTEST_SKIP() << "no kernel table with a repacked layout on this CPU";
  std::mt19937 rng(21);
  std::normal_distribution<float> nd;
  int checked = 0;
  for (const char* type_name : {"q4_k", "f16", "bf16"}) {
    auto model = testutil::LoadOrDie(testutil::SyntheticModel("tiny-qwen3", type_name));
    ASSERT_NE(model, nullptr);
    const LayerWeights& l = model->layers()[1];
    const GgmlType type = l.wq.type;
    const bool exact = type != GgmlType::kQ4_K;
    for (const cpu::KernelTable* table : tables) {
      if (table->repack_rows(type, l.wq.n_in) == 0) continue;
      for (int threads : {1, 2, 3}) {
        SCOPED_TRACE(std::string(table->name) + ", " + type_name + ", threads " +
                     std::to_string(threads));
        ++checked;
        auto packed = CreateCpuBackend(threads, true, table);
        auto plain = CreateCpuBackend(threads, false, table);
        packed->PrepareWeights(*model);
        plain->PrepareWeights(*model);
        EXPECT_GT(packed->prepared_weight_bytes(), 0u);
        EXPECT_EQ(plain->prepared_weight_bytes(), 0u);
        for (const WeightMatrix* w :
             {&l.wq, &l.wk, &l.wo, &l.w_gate, &l.w_down, &model->output()}) {
          ASSERT_EQ(w->type, type);
          constexpr int kTok = 17;
          std::vector<float> x(static_cast<size_t>(kTok) * w->n_in);
          for (float& v : x) v = nd(rng);
          std::vector<float> a(static_cast<size_t>(kTok) * w->n_out), b(a.size());
          packed->MatMul(*w, x.data(), kTok, a.data());
          plain->MatMul(*w, x.data(), kTok, b.data());
          if (exact) {
            ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
          } else {
            for (size_t i = 0; i < a.size(); ++i)
              ASSERT_NEAR(a[i], b[i], 1e-4f * (1 + std::fabs(b[i]))) << "value " << i;
          }
          // Decode (one token) and a batch of two products give the same bits as the prefill.
          for (int t : {0, 5, kTok - 1}) {
            std::vector<float> one(w->n_out);
            packed->MatMul(*w, x.data() + t * w->n_in, 1, one.data());
            ASSERT_EQ(0, std::memcmp(one.data(), a.data() + t * w->n_out, one.size() * 4))
                << "token " << t;
          }
          std::vector<float> y1(static_cast<size_t>(3) * w->n_out), y2(w->n_out);
          const MatMulJob jobs[] = {{w, x.data() + 2 * w->n_in, 3, y1.data()},
                                    {w, x.data() + 9 * w->n_in, 1, y2.data()}};
          packed->MatMulBatch(jobs);
          EXPECT_EQ(0, std::memcmp(y1.data(), a.data() + 2 * w->n_out, y1.size() * 4));
          EXPECT_EQ(0, std::memcmp(y2.data(), a.data() + 9 * w->n_out, y2.size() * 4));
        }
        // The embedding lookup of the tied output matrix reads the file's rows either way.
        const int32_t tok[] = {0, 7, 4095};
        std::vector<float> ea(3 * model->config().n_embd), eb(ea.size());
        ASSERT_TRUE(packed->Embed(model->token_embd(), tok, ea.data()).ok());
        ASSERT_TRUE(plain->Embed(model->token_embd(), tok, eb.data()).ok());
        EXPECT_EQ(ea, eb);
      }
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(CpuBackendTest, AttentionBatchEqualsAttentionPerSequenceBitForBit) {
  std::mt19937 rng(12);
  std::normal_distribution<float> nd;
  constexpr int kLayers = 2, kKvHeads = 2, kHeads = 4, kHeadDim = 32, kBt = 16;
  for (KvDtype dtype : {KvDtype::kF16, KvDtype::kF32}) {
    auto pool = KvPool::Create({dtype, kLayers, kKvHeads, kHeadDim, kBt}, 64);
    ASSERT_TRUE(pool.ok()) << pool.status().ToString();
    // Sequences of different lengths, as decode rows (1 token), prefill chunks (7 and 70 tokens:
    // more than one query tile) and a first chunk; every position's K/V filled.
    struct Part {
      int past, n_tok;
    };
    const std::vector<Part> parts = {{37, 1}, {0, 7}, {130, 1}, {16, 70}, {5, 1}};
    std::vector<Sequence> seqs(parts.size());
    for (int threads : {1, 2, 3}) {
      SCOPED_TRACE("threads " + std::to_string(threads));
      auto be = CreateCpuBackend(threads);
      std::vector<std::vector<float>> qs, outs;
      std::vector<AttentionJob> jobs;
      for (size_t i = 0; i < parts.size(); ++i) {
        Sequence& s = seqs[i];
        const int end = parts[i].past + parts[i].n_tok;
        if (threads == 1) {
          while (static_cast<int>(s.block_table.size()) * kBt < end)
            s.block_table.push_back((*pool)->Allocate());
          std::vector<float> k(static_cast<size_t>(end) * kKvHeads * kHeadDim), v(k.size());
          for (float& x : k) x = nd(rng);
          for (float& x : v) x = nd(rng);
          for (int l = 0; l < kLayers; ++l) be->StoreKv(**pool, s, l, 0, end, k.data(), v.data());
        }
        qs.emplace_back(static_cast<size_t>(parts[i].n_tok) * kHeads * kHeadDim);
        for (float& x : qs.back()) x = nd(rng);
        outs.emplace_back(qs.back().size(), NAN);
        jobs.push_back({&s, parts[i].past, parts[i].n_tok, qs.back().data(), outs.back().data()});
      }
      be->AttentionBatch(**pool, 1, kHeads, jobs);
      for (size_t i = 0; i < jobs.size(); ++i) {
        std::vector<float> ref(outs[i].size());
        be->Attention(**pool, seqs[i], 1, jobs[i].pos0, jobs[i].n_tok, kHeads, jobs[i].q,
                      ref.data());
        EXPECT_EQ(0, std::memcmp(ref.data(), outs[i].data(), ref.size() * sizeof(float)))
            << "sequence " << i;
      }
    }
  }
}

}  // namespace
}  // namespace kvstash::engine
