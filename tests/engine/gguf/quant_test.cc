// Tests for engine/quant.h: fp16/bf16 conversions, dequantization of hand-built blocks with
// hand-computed expected values (ggml layouts), and quantize -> dequantize error bounds.

#include "engine/gguf/quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace kvstash::engine {
namespace {

// ---- fp16 / bf16 ----------------------------------------------------------------------------

TEST(QuantFp16, ExactValuesAndLimits) {
  EXPECT_EQ(Fp32ToFp16(0.0f), 0x0000);
  EXPECT_EQ(Fp32ToFp16(-0.0f), 0x8000);
  EXPECT_EQ(Fp32ToFp16(1.0f), 0x3C00);
  EXPECT_EQ(Fp32ToFp16(-2.0f), 0xC000);
  EXPECT_EQ(Fp32ToFp16(0.5f), 0x3800);
  EXPECT_EQ(Fp32ToFp16(65504.0f), 0x7BFF);    // largest finite half
  EXPECT_EQ(Fp32ToFp16(65519.996f), 0x7BFF);  // just below the rounding midpoint
  EXPECT_EQ(Fp32ToFp16(65520.0f), 0x7C00);    // midpoint ties to even: inf
  EXPECT_EQ(Fp32ToFp16(1e9f), 0x7C00);
  EXPECT_EQ(Fp32ToFp16(-1e9f), 0xFC00);
  EXPECT_EQ(Fp32ToFp16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(Fp32ToFp16(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_EQ(Fp32ToFp16(0x1p-14f), 0x0400);    // smallest normal
  EXPECT_EQ(Fp32ToFp16(0x1p-24f), 0x0001);    // smallest subnormal
  EXPECT_EQ(Fp32ToFp16(0x1p-25f), 0x0000);    // half of it ties to even (zero)
  EXPECT_EQ(Fp32ToFp16(0x1.8p-25f), 0x0001);  // 0.75 units rounds up
  EXPECT_EQ(Fp32ToFp16(-0x1p-24f), 0x8001);
  EXPECT_EQ(Fp32ToFp16(0x3FFp-24f), 0x03FF);    // largest subnormal
  EXPECT_EQ(Fp32ToFp16(0x1.FFCp-15f), 0x0400);  // rounds up out of the subnormal range
  EXPECT_EQ(Fp32ToFp16(1e-10f), 0x0000);
}

TEST(QuantFp16, RoundsToNearestEven) {
  // Half has 10 mantissa bits: ulp(1) = 2^-10.
  EXPECT_EQ(Fp32ToFp16(1.0f + 0x1p-11f), 0x3C00);             // tie, 0x3C00 is even
  EXPECT_EQ(Fp32ToFp16(1.0f + 3 * 0x1p-11f), 0x3C02);         // tie, 0x3C01 odd -> up
  EXPECT_EQ(Fp32ToFp16(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);  // above the tie
  EXPECT_EQ(Fp32ToFp16(2047.0f + 0.5f), 0x6800);              // 2047.5 -> 2048 (carry to exp)
}

TEST(QuantFp16, NanAndInfDecode) {
  EXPECT_TRUE(std::isnan(Fp16ToFp32(0x7E00)));
  EXPECT_TRUE(std::isnan(Fp16ToFp32(0xFC01)));
  EXPECT_EQ(Fp16ToFp32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(Fp16ToFp32(0xFC00), -std::numeric_limits<float>::infinity());
  const uint16_t nan_bits = Fp32ToFp16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan_bits & 0x7C00, 0x7C00);
  EXPECT_NE(nan_bits & 0x03FF, 0);
  // A signalling NaN whose payload lies only in the low mantissa bits must stay a NaN.
  const float snan_low = std::bit_cast<float>(0x7F800001u);
  EXPECT_TRUE(std::isnan(Fp16ToFp32(Fp32ToFp16(snan_low))));
  EXPECT_EQ(Fp16ToFp32(0x0001), 0x1p-24f);
  EXPECT_EQ(Fp16ToFp32(0x8000), 0.0f);
  EXPECT_TRUE(std::signbit(Fp16ToFp32(0x8000)));
  EXPECT_EQ(Fp16ToFp32(0x3555), 0.333251953125f);
}

TEST(QuantFp16, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float f = Fp16ToFp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(Fp32ToFp16(f), h) << "half 0x" << std::hex << h;
  }
}

TEST(QuantBf16, ValuesRoundingAndSpecials) {
  EXPECT_EQ(Fp32ToBf16(1.0f), 0x3F80);
  EXPECT_EQ(Fp32ToBf16(-2.0f), 0xC000);
  EXPECT_EQ(Fp32ToBf16(1.0f + 0x1p-8f), 0x3F80);      // tie -> even
  EXPECT_EQ(Fp32ToBf16(1.0f + 3 * 0x1p-8f), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(Fp32ToBf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);
  EXPECT_EQ(Fp32ToBf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds to inf
  EXPECT_EQ(Fp32ToBf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(Fp32ToBf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_TRUE(std::isnan(Bf16ToFp32(Fp32ToBf16(std::numeric_limits<float>::quiet_NaN()))));
  // NaN with payload only in the bits that get dropped must not become inf.
  EXPECT_TRUE(std::isnan(Bf16ToFp32(Fp32ToBf16(std::bit_cast<float>(0xFF800001u)))));
  EXPECT_EQ(Bf16ToFp32(0x4049), 3.140625f);
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float f = Bf16ToFp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(Fp32ToBf16(f), h);
  }
}

// ---- Dequantization of hand-built blocks ----------------------------------------------------

std::vector<float> Dequant(GgmlType t, const void* block, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  const Status st = DequantizeRow(t, block, out.data(), n);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return out;
}

TEST(QuantDequant, FloatTypes) {
  const float f32[2] = {1.5f, -3.25f};
  EXPECT_EQ(Dequant(GgmlType::kF32, f32, 2), (std::vector<float>{1.5f, -3.25f}));
  const uint16_t f16[3] = {0x3C00, 0xC200, 0x7BFF};  // 1, -3, 65504
  EXPECT_EQ(Dequant(GgmlType::kF16, f16, 3), (std::vector<float>{1.0f, -3.0f, 65504.0f}));
  const uint16_t bf16[2] = {0x3FC0, 0xC120};  // 1.5, -10
  EXPECT_EQ(Dequant(GgmlType::kBF16, bf16, 2), (std::vector<float>{1.5f, -10.0f}));
}

TEST(QuantDequant, Q8_0HandBlock) {
  BlockQ8_0 b{};
  b.d = 0x3800;                                                             // 0.5
  for (int j = 0; j < 32; ++j) b.qs[j] = static_cast<int8_t>(j * 8 - 128);  // -128 .. 120
  const std::vector<float> y = Dequant(GgmlType::kQ8_0, &b, 32);
  EXPECT_EQ(y[0], -64.0f);
  EXPECT_EQ(y[16], 0.0f);
  EXPECT_EQ(y[17], 4.0f);
  EXPECT_EQ(y[31], 60.0f);
}

TEST(QuantDequant, Q4_0HandBlock) {
  BlockQ4_0 b{};
  b.d = 0x4000;  // 2.0
  // Byte j: low nibble -> element j, high nibble -> element j + 16.
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const std::vector<float> y = Dequant(GgmlType::kQ4_0, &b, 32);
  EXPECT_EQ(y[0], -16.0f);   // (0 - 8) * 2
  EXPECT_EQ(y[8], 0.0f);     // (8 - 8) * 2
  EXPECT_EQ(y[15], 14.0f);   // (15 - 8) * 2
  EXPECT_EQ(y[16], 14.0f);   // high nibble of byte 0 = 15
  EXPECT_EQ(y[31], -16.0f);  // high nibble of byte 15 = 0
}

TEST(QuantDequant, Q5_0HandBlock) {
  BlockQ5_0 b{};
  b.d = 0x3400;    // 0.25
  b.qs[0] = 0x3A;  // element 0 low nibble 0xA, element 16 low nibble 0x3
  b.qs[5] = 0xF0;  // element 5 nibble 0, element 21 nibble 0xF
  // qh bit i is the fifth bit of element i (little-endian u32).
  const uint32_t qh = (1u << 0) | (1u << 21) | (1u << 31);
  std::memcpy(b.qh, &qh, 4);
  const std::vector<float> y = Dequant(GgmlType::kQ5_0, &b, 32);
  EXPECT_EQ(y[0], 2.5f);     // (0x1A - 16) * 0.25
  EXPECT_EQ(y[16], -3.25f);  // (0x03 - 16) * 0.25
  EXPECT_EQ(y[5], -4.0f);    // (0 - 16) * 0.25
  EXPECT_EQ(y[21], 3.75f);   // (0x1F - 16) * 0.25
  EXPECT_EQ(y[31], 0.0f);    // (0x10 - 16) * 0.25
  EXPECT_EQ(y[1], -4.0f);
}

TEST(QuantDequant, Q5_1HandBlock) {
  BlockQ5_1 b{};
  b.d = 0x3800;    // 0.5
  b.m = 0xBC00;    // -1.0
  b.qs[2] = 0x7C;  // element 2 nibble 0xC, element 18 nibble 0x7
  const uint32_t qh = (1u << 2) | (1u << 30);
  std::memcpy(b.qh, &qh, 4);
  const std::vector<float> y = Dequant(GgmlType::kQ5_1, &b, 32);
  EXPECT_EQ(y[2], 13.0f);  // 0x1C * 0.5 - 1
  EXPECT_EQ(y[18], 2.5f);  // 0x07 * 0.5 - 1
  EXPECT_EQ(y[30], 7.0f);  // 0x10 * 0.5 - 1
  EXPECT_EQ(y[0], -1.0f);
}

TEST(QuantDequant, Q4_KHandBlock) {
  BlockQ4_K b{};
  b.d = 0x3C00;     // 1.0
  b.dmin = 0x3800;  // 0.5
  // Sub-block scales {1,2,3,4,5,6,7,63}, mins {0,1,2,3,4,5,6,33}, packed by hand:
  // bytes 0-3: sc0..3 | (sc4..7 >> 4) << 6; bytes 4-7: m0..3 | (m4..7 >> 4) << 6;
  // bytes 8-11: (sc4..7 & 15) | (m4..7 & 15) << 4.
  const uint8_t scales[12] = {1, 2, 3, 4 | (3 << 6), 0, 1, 2, 3 | (2 << 6), 0x45, 0x56, 0x67, 0x1F};
  std::memcpy(b.scales, scales, 12);
  // qs[32g + l]: low nibble = element 64g + l, high nibble = element 64g + 32 + l.
  for (int i = 0; i < 128; ++i) b.qs[i] = static_cast<uint8_t>((i % 16) | ((15 - i % 16) << 4));
  const std::vector<float> y = Dequant(GgmlType::kQ4_K, &b, 256);
  EXPECT_EQ(y[0], 0.0f);           // sc 1, q 0, m 0
  EXPECT_EQ(y[1], 1.0f);           // sc 1, q 1
  EXPECT_EQ(y[32], 29.5f);         // sub-block 1: 2 * 15 - 0.5 * 1
  EXPECT_EQ(y[64 + 3], 8.0f);      // sub-block 2: 3 * 3 - 0.5 * 2
  EXPECT_EQ(y[128 + 2], 8.0f);     // sub-block 4: 5 * 2 - 0.5 * 4
  EXPECT_EQ(y[160], 87.5f);        // sub-block 5: 6 * 15 - 0.5 * 5
  EXPECT_EQ(y[192 + 15], 102.0f);  // sub-block 6: 7 * 15 - 0.5 * 6
  EXPECT_EQ(y[224], 928.5f);       // sub-block 7: 63 * 15 - 0.5 * 33
  EXPECT_EQ(y[255], -16.5f);       // sub-block 7: 63 * 0 - 0.5 * 33
}

TEST(QuantDequant, Q6_KHandBlock) {
  BlockQ6_K b{};
  b.d = 0x3800;  // 0.5
  for (int i = 0; i < 16; ++i) b.scales[i] = static_cast<int8_t>(i - 8);
  // First half: element l takes ql[l] low, l+32 ql[l+32] low, l+64 ql[l] high, l+96 ql[l+32]
  // high; the top two bits come from bit pairs 0-1, 2-3, 4-5, 6-7 of qh[l].
  b.ql[0] = 0x21;        // element 0 low 1, element 64 low 2
  b.ql[32] = 0x43;       // element 32 low 3, element 96 low 4
  b.qh[0] = 0xE4;        // hi bits: element 0 -> 0, 32 -> 1, 64 -> 2, 96 -> 3
  b.ql[64 + 20] = 0x0F;  // second half, element 128 + 20 low 15
  const std::vector<float> y = Dequant(GgmlType::kQ6_K, &b, 256);
  // Scale index = 8 * half + l / 16 + 2 * quarter.
  EXPECT_EQ(y[0], 124.0f);        // q = 1 - 32 = -31, scale -8: 0.5 * -8 * -31
  EXPECT_EQ(y[32], 39.0f);        // q = 19 - 32 = -13, scale -6
  EXPECT_EQ(y[64], -4.0f);        // q = 34 - 32 = 2, scale -4
  EXPECT_EQ(y[96], -20.0f);       // q = 52 - 32 = 20, scale -2
  EXPECT_EQ(y[17], 112.0f);       // q = -32, scale index 1 (-7)
  EXPECT_EQ(y[128 + 20], -8.5f);  // q = 15 - 32, scale index 9 (1)
  EXPECT_EQ(y[255], -112.0f);     // q = -32, scale index 15 (7)
}

TEST(QuantDequant, RejectsBadArguments) {
  float out[64];
  const uint8_t zeros[1024] = {};
  EXPECT_EQ(DequantizeRow(GgmlType::kQ8_0, zeros, out, 33).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeRow(GgmlType::kQ4_K, zeros, out, 64).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeRow(GgmlType::kQ4_1, zeros, out, 32).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeRow(static_cast<GgmlType>(99), zeros, out, 32).code(),
            StatusCode::kInvalidArgument);
  uint8_t dst[1024];
  EXPECT_EQ(QuantizeRow(GgmlType::kQ6_K, out, dst, 32).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(QuantizeRow(GgmlType::kQ2_K, out, dst, 256).code(), StatusCode::kInvalidArgument);
}

// ---- Quantize -> dequantize -----------------------------------------------------------------

struct ErrorBound {
  GgmlType type;
  double max_rel_rmse;  // RMSE / RMS of the data
};

class QuantRoundTrip : public ::testing::TestWithParam<ErrorBound> {};

std::vector<float> RoundTrip(GgmlType t, const std::vector<float>& x) {
  std::vector<uint8_t> q(RowBytes(t, static_cast<int64_t>(x.size())));
  EXPECT_TRUE(QuantizeRow(t, x.data(), q.data(), static_cast<int64_t>(x.size())).ok());
  std::vector<float> y(x.size());
  EXPECT_TRUE(DequantizeRow(t, q.data(), y.data(), static_cast<int64_t>(x.size())).ok());
  return y;
}

TEST_P(QuantRoundTrip, GaussianDataWithinBound) {
  const ErrorBound eb = GetParam();
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> x(256 * 64);
  for (float& v : x) v = normal(rng);
  x[7] = 0.3f;  // an outlier, as real weights have
  const std::vector<float> y = RoundTrip(eb.type, x);
  double err2 = 0, sig2 = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    err2 += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
    sig2 += double(x[i]) * x[i];
  }
  const double rel = std::sqrt(err2 / sig2);
  EXPECT_LT(rel, eb.max_rel_rmse) << Traits(eb.type).name;
  RecordProperty("rel_rmse", std::to_string(rel));
}

TEST_P(QuantRoundTrip, ZerosAndConstantsAreExactOrClose) {
  const GgmlType t = GetParam().type;
  const std::vector<float> zeros(512, 0.0f);
  for (float v : RoundTrip(t, zeros)) ASSERT_EQ(v, 0.0f) << Traits(t).name;
  const std::vector<float> ones(512, -0.75f);
  for (float v : RoundTrip(t, ones)) ASSERT_NEAR(v, -0.75f, 0.75f * 0.01) << Traits(t).name;
}

TEST_P(QuantRoundTrip, PerElementErrorIsBoundedByBlockRange) {
  // Each element's error is at most about one quantization step of its block.
  const GgmlType t = GetParam().type;
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> x(1024);
  for (float& v : x) v = uni(rng);
  const std::vector<float> y = RoundTrip(t, x);
  const double step = t == GgmlType::kQ8_0                               ? 1.0 / 127
                      : t == GgmlType::kQ6_K                             ? 1.0 / 31
                      : t == GgmlType::kQ5_0 || t == GgmlType::kQ5_1     ? 1.0 / 15
                      : t == GgmlType::kQ4_0 || t == GgmlType::kQ4_K     ? 1.0 / 7
                      : t == GgmlType::kQ5_K                             ? 1.0 / 15
                      : t == GgmlType::kQ3_K                             ? 1.0 / 3
                      : t == GgmlType::kIQ4_NL || t == GgmlType::kIQ4_XS ? 1.0 / 7
                      : t == GgmlType::kBF16                             ? 1.0 / 256
                                                                         : 1.0 / 2048;
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_LE(std::fabs(x[i] - y[i]), step * 1.01) << Traits(t).name << " element " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Quant, QuantRoundTrip,
    ::testing::Values(ErrorBound{GgmlType::kF32, 1e-9}, ErrorBound{GgmlType::kF16, 1e-3},
                      ErrorBound{GgmlType::kBF16, 5e-3}, ErrorBound{GgmlType::kQ8_0, 0.01},
                      ErrorBound{GgmlType::kQ6_K, 0.04}, ErrorBound{GgmlType::kQ5_1, 0.06},
                      ErrorBound{GgmlType::kQ5_0, 0.07}, ErrorBound{GgmlType::kQ4_K, 0.11},
                      ErrorBound{GgmlType::kQ4_0, 0.15}, ErrorBound{GgmlType::kQ5_K, 0.06},
                      ErrorBound{GgmlType::kQ3_K, 0.22}, ErrorBound{GgmlType::kIQ4_NL, 0.11},
                      ErrorBound{GgmlType::kIQ4_XS, 0.11}),
    [](const ::testing::TestParamInfo<ErrorBound>& info) {
      return std::string(Traits(info.param.type).name);
    });

TEST(QuantQuantize, Q8_0MatchesTheReferenceScale) {
  // d = amax / 127, codes round(x / d): a block holding -127..127 in steps is exact.
  float x[32];
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j * 8 - 127) / 64.0f;  // amax 127/64
  BlockQ8_0 b;
  ASSERT_TRUE(QuantizeRow(GgmlType::kQ8_0, x, &b, 32).ok());
  EXPECT_EQ(b.d, Fp32ToFp16((127.0f / 64.0f) / 127.0f));  // 2^-6
  EXPECT_EQ(b.qs[0], -127);
  EXPECT_EQ(b.qs[31], 121);
}

TEST(QuantQuantize, Q4_0UsesGgmlSignConvention) {
  // The element of largest magnitude maps to code 0 (value -8 * d), so d = max / -8.
  float x[32];
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(8 - j % 16);  // 8 .. -7; max 8 at j=0
  BlockQ4_0 b;
  ASSERT_TRUE(QuantizeRow(GgmlType::kQ4_0, x, &b, 32).ok());
  EXPECT_EQ(Fp16ToFp32(b.d), -1.0f);
  EXPECT_EQ(b.qs[0] & 0x0F, 0);  // 8 / -1 + 8 = 0
  const std::vector<float> y = Dequant(GgmlType::kQ4_0, &b, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], x[j]) << j;  // all on the grid: exact
}

TEST(QuantQuantize, Q5_0AndQ5_1AreExactOnTheirGrids) {
  float x0[32], x1[32];
  for (int j = 0; j < 32; ++j) {
    x0[j] = static_cast<float>(j - 16) * 0.125f;  // -2 .. 1.875, max magnitude -2 => d = 0.125
    x1[j] = 3.0f + static_cast<float>(31 - j) * 0.25f;  // min 3, step 0.25
  }
  BlockQ5_0 b0;
  BlockQ5_1 b1;
  ASSERT_TRUE(QuantizeRow(GgmlType::kQ5_0, x0, &b0, 32).ok());
  ASSERT_TRUE(QuantizeRow(GgmlType::kQ5_1, x1, &b1, 32).ok());
  const std::vector<float> y0 = Dequant(GgmlType::kQ5_0, &b0, 32);
  const std::vector<float> y1 = Dequant(GgmlType::kQ5_1, &b1, 32);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(y0[j], x0[j]) << j;
    EXPECT_EQ(y1[j], x1[j]) << j;
  }
}

TEST(QuantQuantize, KQuantsKeepLargeDynamicRangeAcrossSubBlocks) {
  // Sub-blocks 10x apart in magnitude: each gets its own scale (6-bit / int8 sub-block scales
  // relative to the block maximum limit how far apart they can usefully be).
  std::vector<float> x(256);
  for (int i = 0; i < 256; ++i) {
    const float mag = (i / 32) % 2 == 0 ? 1.0f : 0.1f;
    x[i] = mag * std::sin(static_cast<float>(i));
  }
  for (GgmlType t :
       {GgmlType::kQ4_K, GgmlType::kQ6_K, GgmlType::kQ5_K, GgmlType::kQ3_K, GgmlType::kIQ4_XS}) {
    const std::vector<float> y = RoundTrip(t, x);
    const float tol = t == GgmlType::kQ6_K   ? 0.04f
                      : t == GgmlType::kQ5_K ? 0.08f
                      : t == GgmlType::kQ3_K ? 0.4f
                                             : 0.15f;
    for (int i = 0; i < 256; ++i) {
      const float mag = (i / 32) % 2 == 0 ? 1.0f : 0.1f;
      ASSERT_NEAR(y[i], x[i], mag * tol) << Traits(t).name << " " << i;
    }
  }
}

}  // namespace
}  // namespace kvstash::engine
