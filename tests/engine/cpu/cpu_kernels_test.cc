// CPU kernel tables against the definitions: for every weight type, gemm over quantized rows and
// quantized activations equals the float dot of the dequantized weights and dequantized
// activations (exact integer arithmetic, so only float rounding differs), for every tile shape;
// and the tables (scalar, AVX2, AVX-512) agree with each other.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>

#include "engine/cpu/kernels.h"
#include "engine/cpu/repack.h"
#include "engine/gguf/quant.h"

namespace kvstash::engine::cpu {
namespace {

std::vector<float> RandomRow(std::mt19937& rng, int64_t n, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Dequantized activations, as the kernels see them.
std::vector<float> DequantAct(ActFormat f, const uint8_t* a, int64_t n) {
  std::vector<float> out(n);
  if (f == ActFormat::kF32) {
    std::memcpy(out.data(), a, n * 4);
  } else if (f == ActFormat::kQ8A) {
    const auto* b = reinterpret_cast<const BlockQ8A*>(a);
    for (int64_t i = 0; i < n; ++i) out[i] = b[i / 32].d * b[i / 32].qs[i % 32];
  } else {
    const auto* b = reinterpret_cast<const BlockQ8_K*>(a);
    for (int64_t i = 0; i < n; ++i) out[i] = b[i / 256].d * b[i / 256].qs[i % 256];
  }
  return out;
}

// Random rows in a kernel's input format (`stride` bytes apart) and the values they hold.
struct Rows {
  size_t stride = 0;
  std::vector<uint8_t> bytes;
  std::vector<std::vector<float>> f;
};

// count rows of n values, row i drawn with standard deviation scale(i), each converted by
// convert(values, dst) (stride bytes) and read back by read(src, values).
Rows RandomRows(std::mt19937& rng, int count, int64_t n, size_t stride,
                const std::function<float(int)>& scale,
                const std::function<void(const float*, uint8_t*)>& convert,
                const std::function<void(const uint8_t*, float*)>& read) {
  Rows out;
  out.stride = stride;
  out.bytes.resize(stride * count);
  out.f.assign(count, std::vector<float>(n));
  for (int i = 0; i < count; ++i) {
    auto v = RandomRow(rng, n, scale(i));
    convert(v.data(), out.bytes.data() + i * stride);
    read(out.bytes.data() + i * stride, out.f[i].data());
  }
  return out;
}

// Weight rows quantized to `type`, and their dequantized values.
Rows RandomWeights(std::mt19937& rng, GgmlType type, int rows, int64_t n,
                   const std::function<float(int)>& scale) {
  return RandomRows(
      rng, rows, n, RowBytes(type, n), scale,
      [&](const float* v, uint8_t* dst) { EXPECT_TRUE(QuantizeRow(type, v, dst, n).ok()); },
      [&](const uint8_t* src, float* f) { EXPECT_TRUE(DequantizeRow(type, src, f, n).ok()); });
}

// Activation rows converted as the kernels take them for weights of `type`, and the values the
// kernels see.
Rows RandomActs(std::mt19937& rng, GgmlType type, int toks, int64_t n,
                const std::function<float(int)>& scale) {
  const ActFormat fmt = ActFormatFor(type);
  return RandomRows(
      rng, toks, n, ActRowBytes(fmt, n), scale,
      [&](const float* v, uint8_t* dst) { ScalarKernels().quantize_act(fmt, v, dst, n); },
      [&](const uint8_t* src, float* f) {
        const std::vector<float> d = DequantAct(fmt, src, n);
        std::copy(d.begin(), d.end(), f);
      });
}

std::vector<const KernelTable*> Tables() {
  std::vector<const KernelTable*> t = {&ScalarKernels()};
  if (Avx2Kernels()) t.push_back(Avx2Kernels());
  if (Avx512Kernels()) t.push_back(Avx512Kernels());
  return t;
}

class KernelTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(KernelTest, GemmEqualsDequantizedDotForEveryTileShape) {
  const GgmlType type = GetParam();
  const int64_t n =
      Traits(type).block_elems == 256 ? 512 : 200 + (Traits(type).block_elems == 1 ? 3 : 24);
  const int rows = 7, toks = 6;  // odd sizes exercise every tile remainder
  std::mt19937 rng(42);
  const Rows wt = RandomWeights(rng, type, rows, n, [](int) { return 0.05f; });
  const Rows act = RandomActs(rng, type, toks, n, [](int) { return 1.0f; });
  const size_t row_bytes = wt.stride, xs = act.stride;
  const std::vector<uint8_t>& w = wt.bytes;
  const std::vector<uint8_t>& x = act.bytes;
  const auto& wf = wt.f;
  const auto& xf = act.f;
  for (const KernelTable* k : Tables()) {
    SCOPED_TRACE(k->name);
    for (int nt : {1, toks}) {
      std::vector<float> y(static_cast<size_t>(toks) * rows, NAN);
      k->gemm(type, w.data(), row_bytes, rows, x.data(), xs, nt, n, y.data(), rows);
      for (int t = 0; t < nt; ++t) {
        for (int r = 0; r < rows; ++r) {
          double ref = 0, mag = 0;
          for (int64_t i = 0; i < n; ++i) {
            ref += double{wf[r][i]} * xf[t][i];
            mag += std::fabs(double{wf[r][i]} * xf[t][i]);
          }
          EXPECT_NEAR(y[t * rows + r], ref, 1e-5 * mag + 1e-6) << "row " << r << " tok " << t;
        }
      }
    }
    // A token's result never depends on how many tokens shared the call.
    std::vector<float> all(static_cast<size_t>(toks) * rows), one(rows);
    k->gemm(type, w.data(), row_bytes, rows, x.data(), xs, toks, n, all.data(), rows);
    for (int t = 0; t < toks; ++t) {
      k->gemm(type, w.data(), row_bytes, rows, x.data() + t * xs, xs, 1, n, one.data(), rows);
      for (int r = 0; r < rows; ++r) EXPECT_EQ(one[r], all[t * rows + r]);
    }
  }
}

// Wide tiles (the Q4_K tiles take up to 8 tokens) and every remainder: for each count of tokens
// 1..19 starting at each offset 0..2, a (row, token) value is bit-identical to the one computed in
// a single call over all 19 tokens, and equals the dequantized dot product.
TEST_P(KernelTest, EveryTokenCountAndOffsetGivesTheSameBits) {
  const GgmlType type = GetParam();
  const int64_t n =
      Traits(type).block_elems == 256 ? 768 : 200 + (Traits(type).block_elems == 1 ? 3 : 24);
  const int rows = 9, toks = 19;
  std::mt19937 rng(5);
  const Rows wt = RandomWeights(rng, type, rows, n, [](int) { return 0.05f; });
  const Rows act = RandomActs(rng, type, toks, n, [](int t) { return t % 5 == 0 ? 30.0f : 1.0f; });
  const size_t row_bytes = wt.stride, xs = act.stride;
  const std::vector<uint8_t>& w = wt.bytes;
  const std::vector<uint8_t>& x = act.bytes;
  const auto& wf = wt.f;
  const auto& xf = act.f;
  for (const KernelTable* k : Tables()) {
    SCOPED_TRACE(k->name);
    std::vector<float> all(static_cast<size_t>(toks) * rows);
    k->gemm(type, w.data(), row_bytes, rows, x.data(), xs, toks, n, all.data(), rows);
    for (int t = 0; t < toks; ++t) {
      for (int r = 0; r < rows; ++r) {
        double ref = 0, mag = 0;
        for (int64_t i = 0; i < n; ++i) {
          ref += double{wf[r][i]} * xf[t][i];
          mag += std::fabs(double{wf[r][i]} * xf[t][i]);
        }
        EXPECT_NEAR(all[t * rows + r], ref, 1e-5 * mag + 1e-6) << "row " << r << " tok " << t;
      }
    }
    for (int t0 = 0; t0 < 3; ++t0) {
      for (int nt = 1; t0 + nt <= toks; ++nt) {
        // Rows from 1 on: the row tiles fall differently than in the full call.
        std::vector<float> part(static_cast<size_t>(nt) * (rows - 1), NAN);
        k->gemm(type, w.data() + row_bytes, row_bytes, rows - 1, x.data() + t0 * xs, xs, nt, n,
                part.data(), rows - 1);
        for (int t = 0; t < nt; ++t) {
          for (int r = 1; r < rows; ++r) {
            ASSERT_EQ(part[t * (rows - 1) + r - 1], all[(t0 + t) * rows + r])
                << "tokens [" << t0 << ", " << t0 + nt << ") row " << r << " tok " << t0 + t;
          }
        }
      }
    }
  }
}

// Decode (one token) runs tiles of up to 16 rows (AVX-512 Q8_0); the tests above have 9 rows.
// With 37 rows every decode tile width and its row remainder run: each value is bit-identical to
// a one-row call and to the same token computed in a 5-token (prefill) call.
TEST_P(KernelTest, DecodeRowTilesGiveTheSameBitsAsOneRowAndPrefill) {
  const GgmlType type = GetParam();
  const int64_t n =
      Traits(type).block_elems == 256 ? 512 : 256 + (Traits(type).block_elems == 1 ? 5 : 0);
  const int rows = 37, toks = 5;
  std::mt19937 rng(11);
  const Rows wt = RandomWeights(rng, type, rows, n, [](int) { return 0.05f; });
  const Rows act = RandomActs(rng, type, toks, n, [](int) { return 1.0f; });
  const size_t row_bytes = wt.stride, xs = act.stride;
  const std::vector<uint8_t>& w = wt.bytes;
  const std::vector<uint8_t>& x = act.bytes;
  for (const KernelTable* k : Tables()) {
    SCOPED_TRACE(k->name);
    std::vector<float> prefill(static_cast<size_t>(toks) * rows);
    k->gemm(type, w.data(), row_bytes, rows, x.data(), xs, toks, n, prefill.data(), rows);
    for (int t = 0; t < toks; ++t) {
      std::vector<float> decode(rows, NAN);
      k->gemm(type, w.data(), row_bytes, rows, x.data() + t * xs, xs, 1, n, decode.data(), rows);
      for (int r = 0; r < rows; ++r) {
        float one = NAN;
        k->gemm(type, w.data() + r * row_bytes, row_bytes, 1, x.data() + t * xs, xs, 1, n, &one, 1);
        ASSERT_EQ(decode[r], one) << "row " << r << " tok " << t;
        ASSERT_EQ(decode[r], prefill[t * rows + r]) << "row " << r << " tok " << t;
      }
    }
  }
}

// The AVX2 Q8_0 prefill tile takes the four tokens' activation scales from a buffer gathered once
// per token group, for rows of up to 1024 blocks (32K elements, GemmQ8_0's kMaxBlocks), and
// falls back to the plain tile beyond. Rows of exactly 1024 blocks (the largest gathered) and of
// 1025 (the smallest that falls back), 3 of them so the one-row tail runs too, and 5 tokens so
// a 1-token tail follows the gathered group: each table gives the same bits in the 5-token
// prefill as token by token, and the dot products within rounding. Tokens differ in scale by 30x,
// so a product taken from the wrong token's scale fails.
TEST(KernelTableTest, Q8_0RowsAtAndPastTheGatheredScaleLimitGiveTheDecodeBits) {
  const int rows = 3, toks = 5;
  for (const int64_t n : {int64_t{32 * 1024}, int64_t{32 * 1024 + 32}}) {
    SCOPED_TRACE(n);
    std::mt19937 rng(23);
    const Rows wt = RandomWeights(rng, GgmlType::kQ8_0, rows, n, [](int) { return 0.05f; });
    const Rows act =
        RandomActs(rng, GgmlType::kQ8_0, toks, n, [](int t) { return t % 2 ? 30.0f : 1.0f; });
    for (const KernelTable* k : Tables()) {
      SCOPED_TRACE(k->name);
      std::vector<float> prefill(static_cast<size_t>(toks) * rows, NAN);
      k->gemm(GgmlType::kQ8_0, wt.bytes.data(), wt.stride, rows, act.bytes.data(), act.stride, toks,
              n, prefill.data(), rows);
      for (int t = 0; t < toks; ++t) {
        std::vector<float> decode(rows, NAN);
        k->gemm(GgmlType::kQ8_0, wt.bytes.data(), wt.stride, rows,
                act.bytes.data() + t * act.stride, act.stride, 1, n, decode.data(), rows);
        for (int r = 0; r < rows; ++r) {
          double ref = 0, mag = 0;
          for (int64_t i = 0; i < n; ++i) {
            ref += double{wt.f[r][i]} * act.f[t][i];
            mag += std::fabs(double{wt.f[r][i]} * act.f[t][i]);
          }
          EXPECT_NEAR(prefill[t * rows + r], ref, 1e-5 * mag + 1e-6) << "row " << r << " tok " << t;
          ASSERT_EQ(prefill[t * rows + r], decode[r]) << "row " << r << " tok " << t;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, KernelTest,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16,
                                           GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ5_0,
                                           GgmlType::kQ5_1, GgmlType::kQ4_K, GgmlType::kQ6_K,
                                           GgmlType::kQ3_K, GgmlType::kQ5_K, GgmlType::kIQ4_NL,
                                           GgmlType::kIQ4_XS),
                         [](const auto& info) { return std::string(Traits(info.param).name); });

// Repacked Q4_K (engine/cpu/repack.h): the layout round-trips to the file's bytes; the scalar
// reference over it equals the dequantized dot product; every table that repacks Q4_K gives
// the reference's bits for every token count and offset and any first group (the decode and
// prefill tiles and a thread's row chunk), and agrees with its own row-major gemm to rounding.
TEST(KernelTableTest, RepackedQ4KGivesTheReferenceBitsForEveryTileAndChunk) {
  const GgmlType type = GgmlType::kQ4_K;
  const int64_t n = 768, nb = n / kQK_K;
  const int rows = 24, toks = 11;
  std::mt19937 rng(23);
  const Rows wt =
      RandomWeights(rng, type, rows, n, [](int r) { return r % 7 == 0 ? 3.0f : 0.05f; });
  const size_t row_bytes = wt.stride;
  const std::vector<uint8_t>& w = wt.bytes;
  const auto& wf = wt.f;
  std::vector<uint8_t> packed(RepackedBytes(type, rows, n));
  ASSERT_EQ(packed.size(), rows / 8 * nb * sizeof(BlockQ4Kx8));
  RepackWeights(type, w.data(), row_bytes, n, 0, rows / 8, packed.data());
  const auto* blocks = reinterpret_cast<const BlockQ4Kx8*>(packed.data());
  for (int r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < nb; ++b) {
      BlockQ4_K back;
      UnrepackQ4Kx8(blocks[r / 8 * nb + b], r % 8, &back);
      ASSERT_EQ(std::memcmp(&back, w.data() + r * row_bytes + b * sizeof(BlockQ4_K), sizeof back),
                0)
          << "row " << r << " block " << b;
    }
  }
  const Rows act = RandomActs(rng, type, toks, n, [](int t) { return t % 4 == 0 ? 40.0f : 1.0f; });
  const size_t xs = act.stride;
  const std::vector<uint8_t>& x = act.bytes;
  const auto& xf = act.f;
  std::vector<float> ref(static_cast<size_t>(toks) * rows);
  for (int g = 0; g < rows / 8; ++g)
    GemvQ4Kx8Scalar(blocks + g * nb, nb, x.data(), xs, toks, ref.data() + 8 * g, rows);
  std::vector<double> mag(ref.size());
  for (int t = 0; t < toks; ++t) {
    for (int r = 0; r < rows; ++r) {
      double dot = 0;
      for (int64_t i = 0; i < n; ++i) {
        dot += double{wf[r][i]} * xf[t][i];
        mag[t * rows + r] += std::fabs(double{wf[r][i]} * xf[t][i]);
      }
      ASSERT_NEAR(ref[t * rows + r], dot, 1e-5 * mag[t * rows + r] + 1e-6)
          << "row " << r << " tok " << t;
    }
  }
  int repacking = 0;
  for (const KernelTable* k : Tables()) {
    if (k->repack_rows == nullptr || k->repack_rows(type, n) == 0) continue;
    SCOPED_TRACE(k->name);
    ++repacking;
    ASSERT_EQ(k->repack_rows(type, n), 8);
    EXPECT_EQ(k->repack_rows(type, n + 32), 0);  // not whole super-blocks
    std::vector<float> rowmajor(static_cast<size_t>(toks) * rows);
    k->gemm(type, w.data(), row_bytes, rows, x.data(), xs, toks, n, rowmajor.data(), rows);
    for (size_t i = 0; i < ref.size(); ++i)
      EXPECT_NEAR(rowmajor[i], ref[i], 1e-5 * mag[i] + 1e-6) << i;
    for (int g0 = 0; g0 < 2; ++g0) {
      const int n_rows = rows - 8 * g0;
      for (int t0 = 0; t0 < 3; ++t0) {
        for (int nt = 1; t0 + nt <= toks; ++nt) {
          std::vector<float> y(static_cast<size_t>(nt) * n_rows, NAN);
          k->gemm_repacked(type, packed.data() + g0 * nb * sizeof(BlockQ4Kx8), n_rows,
                           x.data() + t0 * xs, xs, nt, n, y.data(), n_rows);
          for (int t = 0; t < nt; ++t) {
            for (int r = 0; r < n_rows; ++r) {
              ASSERT_EQ(y[t * n_rows + r], ref[(t0 + t) * rows + 8 * g0 + r])
                  << "first group " << g0 << " tokens [" << t0 << ", " << t0 + nt << ") row " << r;
            }
          }
        }
      }
    }
  }
  if (repacking == 0) std::printf("no kernel table on this CPU repacks Q4_K: reference only\n");
}

// 16-bit float rows repacked by 4 (engine/cpu/repack.h): the layout round-trips to the file's
// rows, and every x86 table computes from it exactly the bits of its own row-major gemm, for every
// token count (the decode tile and each prefill tile width with its remainders), offset and first
// group, at row lengths of one chunk and of many.
TEST(KernelTableTest, RepackedHalfRowsGiveTheRowMajorBitsForEveryTileAndChunk) {
  for (const GgmlType type : {GgmlType::kF16, GgmlType::kBF16}) {
    for (const int64_t n : {int64_t{16}, int64_t{48}, int64_t{1024}}) {
      SCOPED_TRACE(std::string(Traits(type).name) + ", n " + std::to_string(n));
      const int rows = 12, toks = 14;
      std::mt19937 rng(29);
      const Rows wt =
          RandomWeights(rng, type, rows, n, [](int r) { return r % 5 == 0 ? 2.0f : 0.1f; });
      std::vector<uint8_t> packed(RepackedBytes(type, rows, n));
      ASSERT_EQ(packed.size(), wt.bytes.size());
      RepackWeights(type, wt.bytes.data(), wt.stride, n, 0, rows / kHalfx4Rows, packed.data());
      std::vector<uint8_t> back(wt.stride);
      for (int r = 0; r < rows; ++r) {
        UnrepackRow(type, packed.data(), n, r, back.data());
        ASSERT_EQ(0, std::memcmp(back.data(), wt.bytes.data() + r * wt.stride, wt.stride))
            << "row " << r;
      }
      const Rows act = RandomActs(rng, type, toks, n, [](int t) { return 1.0f + t; });
      int repacking = 0;
      for (const KernelTable* k : Tables()) {
        if (k->repack_rows == nullptr || k->repack_rows(type, n) == 0) continue;
        SCOPED_TRACE(k->name);
        ++repacking;
        ASSERT_EQ(k->repack_rows(type, n), kHalfx4Rows);
        EXPECT_EQ(k->repack_rows(type, n + 8), 0);  // not whole 16-element chunks
        std::vector<float> ref(static_cast<size_t>(toks) * rows);
        k->gemm(type, wt.bytes.data(), wt.stride, rows, act.bytes.data(), act.stride, toks, n,
                ref.data(), rows);
        for (int g0 = 0; g0 < 2; ++g0) {
          const int n_rows = rows - kHalfx4Rows * g0;
          for (int t0 = 0; t0 < 2; ++t0) {
            for (int nt = 1; t0 + nt <= toks; ++nt) {
              std::vector<float> y(static_cast<size_t>(nt) * n_rows, NAN);
              k->gemm_repacked(type, packed.data() + g0 * kHalfx4Rows * wt.stride, n_rows,
                               act.bytes.data() + t0 * act.stride, act.stride, nt, n, y.data(),
                               n_rows);
              for (int t = 0; t < nt; ++t) {
                for (int r = 0; r < n_rows; ++r) {
                  ASSERT_EQ(y[t * n_rows + r], ref[(t0 + t) * rows + kHalfx4Rows * g0 + r])
                      << "first group " << g0 << " tokens [" << t0 << ", " << t0 + nt << ") row "
                      << r;
                }
              }
            }
          }
        }
      }
      // Both x86 tables repack them; the scalar table computes from the file's rows.
      const int simd = (Avx2Kernels() != nullptr) + (Avx512Kernels() != nullptr);
      EXPECT_EQ(repacking, simd);
    }
  }
}

TEST(KernelTableTest, SimdTablesQuantizeActivationsExactlyAsScalar) {
  std::mt19937 rng(7);
  const int64_t n = 1024;
  for (ActFormat fmt : {ActFormat::kQ8A, ActFormat::kQ8K}) {
    for (float scale : {1.0f, 1e-3f, 300.0f}) {
      auto v = RandomRow(rng, n, scale);
      v[5] = 0.5f * scale;  // ties and exact zeros exercise the rounding and d == 0 paths
      std::fill(v.begin() + 256, v.begin() + 512, 0.0f);
      std::vector<uint8_t> a(ActRowBytes(fmt, n)), b(a.size());
      ScalarKernels().quantize_act(fmt, v.data(), a.data(), n);
      for (const KernelTable* k : Tables()) {
        std::fill(b.begin(), b.end(), 0xAB);
        k->quantize_act(fmt, v.data(), b.data(), n);
        EXPECT_EQ(a, b) << k->name << " format " << static_cast<int>(fmt) << " scale " << scale;
      }
    }
  }
}

// Float weights have their own prefill tiles (RM x RN with token and row tails of every size,
// 512-bit on the AVX-512 table). Whatever the row/token counts of a call and wherever the row
// chunk starts, each (row, token) value is bit-identical to a 1 x 1 call (the decode path), and
// close to the f64 dot product. n = 1024 + 13 covers the vector body and the scalar k tail;
// 8 * 5 + 3 and 13 short rows (an odd count of 8-lane chunks, one chunk, less than one 16-lane
// vector).
TEST(KernelTableTest, FloatGemmResultIndependentOfTileShapeAndTokenCount) {
  std::mt19937 rng(5);
  const int rows = 19, toks = 15;
  for (const int64_t n : {int64_t{1024 + 13}, int64_t{8 * 5 + 3}, int64_t{13}})
    for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16}) {
      SCOPED_TRACE("n " + std::to_string(n));
      const size_t row_bytes = RowBytes(type, n);
      std::vector<uint8_t> w(row_bytes * rows);
      std::vector<std::vector<float>> wf(rows, std::vector<float>(n));
      for (int r = 0; r < rows; ++r) {
        auto v = RandomRow(rng, n, 0.05f);
        ASSERT_TRUE(QuantizeRow(type, v.data(), w.data() + r * row_bytes, n).ok());
        ASSERT_TRUE(DequantizeRow(type, w.data() + r * row_bytes, wf[r].data(), n).ok());
      }
      std::vector<float> x;
      for (int t = 0; t < toks; ++t) {
        auto v = RandomRow(rng, n, 1.0f);
        x.insert(x.end(), v.begin(), v.end());
      }
      const auto* xb = reinterpret_cast<const uint8_t*>(x.data());
      const size_t xs = n * sizeof(float);
      for (const KernelTable* k : Tables()) {
        SCOPED_TRACE(std::string(k->name) + " " + std::string(Traits(type).name));
        std::vector<float> single(static_cast<size_t>(toks) * rows);
        for (int t = 0; t < toks; ++t) {
          for (int r = 0; r < rows; ++r) {
            k->gemm(type, w.data() + r * row_bytes, row_bytes, 1, xb + t * xs, xs, 1, n,
                    &single[t * rows + r], rows);
            double ref = 0, mag = 0;
            for (int64_t i = 0; i < n; ++i) {
              ref += double{wf[r][i]} * x[t * n + i];
              mag += std::fabs(double{wf[r][i]} * x[t * n + i]);
            }
            EXPECT_NEAR(single[t * rows + r], ref, 1e-5 * mag) << "row " << r << " tok " << t;
          }
        }
        // Every token count 2..toks, and row ranges starting at 0 and 3 (a chunk boundary that is
        // not a multiple of any tile height).
        for (int nt = 2; nt <= toks; ++nt) {
          for (int r0 : {0, 3}) {
            const int nr = rows - r0;
            std::vector<float> y(static_cast<size_t>(nt) * rows, NAN);
            k->gemm(type, w.data() + r0 * row_bytes, row_bytes, nr, xb, xs, nt, n, y.data() + r0,
                    rows);
            for (int t = 0; t < nt; ++t) {
              for (int r = r0; r < rows; ++r) {
                ASSERT_EQ(y[t * rows + r], single[t * rows + r])
                    << "n_tok " << nt << " rows from " << r0 << ": row " << r << " tok " << t;
              }
            }
          }
        }
      }
    }
}

TEST(KernelTableTest, SwiGluMatchesDefinition) {
  std::mt19937 rng(3);
  auto gate = RandomRow(rng, 1003, 30.0f);
  auto up = RandomRow(rng, 1003, 2.0f);
  gate[0] = -200.0f, gate[1] = 200.0f, gate[2] = 0.0f;  // saturated tails and zero
  for (const KernelTable* k : Tables()) {
    std::vector<float> out(gate.size());
    k->swiglu(gate.data(), up.data(), static_cast<int64_t>(gate.size()), out.data());
    for (size_t i = 0; i < gate.size(); ++i) {
      const double g = gate[i], ref = g / (1.0 + std::exp(-g)) * up[i];
      EXPECT_NEAR(out[i], ref, 1e-6 * std::fabs(ref) + 1e-30) << k->name << " i=" << i;
    }
    // Where a call's boundary falls never changes a value (prefix invariance).
    std::vector<float> split(gate.size());
    k->swiglu(gate.data(), up.data(), 13, split.data());
    k->swiglu(gate.data() + 13, up.data() + 13, static_cast<int64_t>(gate.size()) - 13,
              split.data() + 13);
    EXPECT_EQ(split, out) << k->name;
  }
}

// Two pages of online-softmax updates against a direct softmax in double; each query's result is
// bit-identical whether it is updated alone or together with others (tile independence), and
// whether the value rows are given as f16 or as the same values in f32 (up to 6 queries, one
// block: widened in registers; more: widened into a copy first). 7-11 queries: a block of 6
// then every shorter block.
TEST(KernelTableTest, AttentionUpdateMatchesSoftmaxAndIsPerQuery) {
  std::mt19937 rng(11);
  for (int hd : {64, 40, 128}) {
    for (const auto& [n, nq] : {std::pair{16, 7}, {7, 8}, {33, 9}, {16, 10}, {33, 11}, {7, 5}}) {
      auto q = RandomRow(rng, int64_t{nq} * hd, 1.0f);
      auto k = RandomRow(rng, 2 * int64_t{n} * hd, 1.0f);
      auto v = RandomRow(rng, 2 * int64_t{n} * hd, 1.0f);
      // V exactly representable in f16, so both forms hold the same values.
      std::vector<uint16_t> v16(v.size());
      ScalarKernels().f32_to_f16(v.data(), v16.data(), static_cast<int64_t>(v.size()));
      ScalarKernels().f16_to_f32(v16.data(), v.data(), static_cast<int64_t>(v.size()));
      // Query i sees all of page 0 and (i * 3) % (n + 1) keys of page 1 (0 included).
      std::vector<int> all_valid(nq, n), page1(nq);
      for (int i = 0; i < nq; ++i) page1[i] = (i * 3) % (n + 1);
      const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
      for (const KernelTable* kt : Tables()) {
        SCOPED_TRACE(std::string(kt->name) + " hd " + std::to_string(hd) + " n " +
                     std::to_string(n));
        auto run = [&](int q0, int qn, bool f16, std::vector<float>& acc, std::vector<float>& m,
                       std::vector<float>& l) {
          acc.assign(static_cast<size_t>(qn) * hd, 0.0f);
          m.assign(qn, -INFINITY);
          l.assign(qn, 0.0f);
          std::vector<float> scores(n);
          for (int page = 0; page < 2; ++page) {
            const int* valid = (page == 0 ? all_valid.data() : page1.data()) + q0;
            // K transposed, [hd][ldk], columns past n zero.
            const int ldk = (n + 15) / 16 * 16;
            std::vector<float> ktr(static_cast<size_t>(hd) * ldk, 0.0f);
            for (int s = 0; s < n; ++s)
              for (int d = 0; d < hd; ++d)
                ktr[static_cast<size_t>(d) * ldk + s] =
                    k[(static_cast<size_t>(page) * n + s) * hd + d];
            // The page's V rows stored in reverse order: row s at slot n - 1 - s, so only a
            // kernel that follows the row pointers reads the right values.
            std::vector<float> rev32(static_cast<size_t>(n) * hd);
            std::vector<uint16_t> rev16(rev32.size());
            std::vector<const float*> rows32(n);
            std::vector<const uint16_t*> rows16(n);
            for (int s = 0; s < n; ++s) {
              const size_t from = (static_cast<size_t>(page) * n + s) * hd;
              const size_t to = static_cast<size_t>(n - 1 - s) * hd;
              std::copy_n(v.data() + from, hd, rev32.data() + to);
              std::copy_n(v16.data() + from, hd, rev16.data() + to);
              rows32[s] = rev32.data() + to;
              rows16[s] = rev16.data() + to;
            }
            const AttnValues vals =
                f16 ? AttnValues{rows16.data(), nullptr} : AttnValues{nullptr, rows32.data()};
            kt->attn_update(q.data() + static_cast<size_t>(q0) * hd, qn, valid, ktr.data(), ldk,
                            vals, n, hd, scale, m.data(), l.data(), acc.data(), scores.data());
          }
        };
        std::vector<float> acc, m, l;
        run(0, nq, false, acc, m, l);
        std::vector<float> acc16, m16, l16;
        run(0, nq, true, acc16, m16, l16);
        EXPECT_EQ(acc16, acc);
        EXPECT_EQ(m16, m);
        EXPECT_EQ(l16, l);
        for (int i = 0; i < nq; ++i) {
          const int keys = n + page1[i];
          std::vector<double> w(keys);
          double mx = -1e300, sum = 0;
          for (int s = 0; s < keys; ++s) {
            double dot = 0;
            for (int d = 0; d < hd; ++d) dot += double{q[i * hd + d]} * k[s * hd + d];
            w[s] = dot * scale;
            mx = std::max(mx, w[s]);
          }
          for (auto& x : w) sum += (x = std::exp(x - mx));
          for (int d = 0; d < hd; d += 7) {
            double ref = 0;
            for (int s = 0; s < keys; ++s) ref += w[s] / sum * v[s * hd + d];
            EXPECT_NEAR(acc[i * hd + d] / l[i], ref, 2e-5) << "query " << i << " dim " << d;
          }
          for (bool f16 : {false, true}) {
            std::vector<float> acc1, m1, l1;
            run(i, 1, f16, acc1, m1, l1);
            EXPECT_EQ(0, std::memcmp(acc1.data(), acc.data() + i * hd, hd * sizeof(float)))
                << "query " << i << (f16 ? " f16" : " f32") << " values";
            EXPECT_EQ(m1[0], m[i]);
            EXPECT_EQ(l1[0], l[i]);
          }
        }
      }
    }
  }
}

TEST(KernelTableTest, SimdTablesMatchScalarOnFp16Conversion) {
  std::mt19937 rng(1);
  auto v = RandomRow(rng, 1003, 100.0f);
  std::vector<uint16_t> a(v.size()), b(v.size());
  ScalarKernels().f32_to_f16(v.data(), a.data(), v.size());
  for (const KernelTable* k : Tables()) {
    k->f32_to_f16(v.data(), b.data(), v.size());
    EXPECT_EQ(a, b) << k->name;
  }
  EXPECT_NE(Kernels().name, nullptr);
}

// kv_rows_to_kt writes row s, dim d of a page's K rows to kt[d * ldk + s], from f16 (exactly the
// widened value) and from f32, on every table, for head sizes with and without a SIMD block and
// runs of every length 1-33 placed at any column; it leaves columns before the run alone.
TEST(KernelTableTest, KvRowsToKtTransposesExactly) {
  std::mt19937 rng(5);
  constexpr int ldk = 80;
  for (int hd : {8, 16, 40, 64, 128}) {
    for (int n_rows = 1; n_rows <= 33; ++n_rows) {
      const int col = (n_rows * 7) % 30;
      auto f = RandomRow(rng, int64_t{n_rows} * hd, 3.0f);
      std::vector<uint16_t> h(f.size());
      ScalarKernels().f32_to_f16(f.data(), h.data(), static_cast<int64_t>(f.size()));
      std::vector<float> widened(h.size());
      ScalarKernels().f16_to_f32(h.data(), widened.data(), static_cast<int64_t>(h.size()));
      for (const KernelTable* k : Tables()) {
        for (bool from_f16 : {true, false}) {
          SCOPED_TRACE(std::string(k->name) + " hd " + std::to_string(hd) + " rows " +
                       std::to_string(n_rows) + (from_f16 ? " f16" : " f32"));
          std::vector<float> kt(static_cast<size_t>(hd) * ldk, -7.0f);
          k->kv_rows_to_kt(from_f16 ? h.data() : nullptr, from_f16 ? nullptr : f.data(), n_rows, hd,
                           kt.data() + col, ldk);
          const std::vector<float>& src = from_f16 ? widened : f;
          for (int d = 0; d < hd; ++d) {
            for (int c = 0; c < col; ++c) ASSERT_EQ(kt[d * ldk + c], -7.0f);
            for (int r = 0; r < n_rows; ++r) {
              ASSERT_EQ(kt[d * ldk + col + r], src[r * hd + d]) << "row " << r << " dim " << d;
            }
          }
        }
      }
    }
  }
}

// Every table's argmax equals the plain first-maximum loop (strict '>', NaN and -inf never win)
// at every length 0-70 (the SIMD bodies and their tails), with ties, NaN, -inf, +inf and signed
// zeros placed anywhere, and on a vocabulary-sized row.
TEST(KernelTableTest, ArgmaxIsTheFirstMaximumOnEveryTable) {
  auto reference = [](const std::vector<float>& x) {
    int64_t best = -1;
    float value = -INFINITY;
    for (size_t i = 0; i < x.size(); ++i) {
      if (x[i] > value) {
        value = x[i];
        best = static_cast<int64_t>(i);
      }
    }
    return best;
  };
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> pick(0, 9);
  int checked = 0, none = 0;
  for (int n = 0; n <= 70; ++n) {
    for (int trial = 0; trial < 40; ++trial) {
      std::vector<float> x(n);
      for (float& v : x) {
        switch (pick(rng)) {
          case 0:
            v = NAN;
            break;
          case 1:
            v = -INFINITY;
            break;
          case 2:
            v = 3.0f;
            break;  // frequent ties at the top
          case 3:
            v = trial % 5 == 0 ? INFINITY : 1.0f;
            break;
          case 4:
            v = -0.0f;
            break;
          case 5:
            v = 0.0f;
            break;
          default:
            v = std::normal_distribution<float>(0.0f, 2.0f)(rng);
        }
      }
      if (trial % 7 == 0) {  // rows with no value above -inf
        for (float& v : x) v = pick(rng) < 5 ? NAN : -INFINITY;
      }
      if (trial % 11 == 0) {  // all negative: a zero-filled tail would win if lanes leaked
        for (float& v : x) v = -1.0f - static_cast<float>(pick(rng));
      }
      const int64_t want = reference(x);
      none += want < 0;
      for (const KernelTable* k : Tables()) {
        ASSERT_EQ(k->argmax_f32(x.data(), n), want) << k->name << " n=" << n << " trial=" << trial;
      }
      ++checked;
    }
  }
  EXPECT_GT(none, 0);
  std::vector<float> row = RandomRow(rng, 151936, 4.0f);
  row[100000] = 50.0f;
  row[120000] = 50.0f;
  for (const KernelTable* k : Tables()) EXPECT_EQ(k->argmax_f32(row.data(), 151936), 100000);
  EXPECT_EQ(checked, 71 * 40);
}

}  // namespace
}  // namespace kvstash::engine::cpu
