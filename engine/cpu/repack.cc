// The repacked layouts (engine/cpu/repack.h): the conversions both ways, and the scalar reference
// product the repacked Q4_K tiles are tested against bit for bit.
#include "engine/cpu/repack.h"

#include <cmath>
#include <cstring>

#include "base/check.h"
#include "engine/cpu/fp16.h"
#include "engine/cpu/kernels_internal.h"

namespace kvstash::engine::cpu {

void RepackQ4Kx8(const uint8_t* w, size_t w_stride, int64_t nb, int64_t g0, int64_t g1,
                 BlockQ4Kx8* out) {
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t b = 0; b < nb; ++b) {
      BlockQ4Kx8& o = out[g * nb + b];
      for (int r = 0; r < kQ4Kx8Rows; ++r) {
        const BlockQ4_K& in =
            reinterpret_cast<const BlockQ4_K*>(w + (g * kQ4Kx8Rows + r) * w_stride)[b];
        o.d[r] = in.d;
        o.dmin[r] = in.dmin;
        uint8_t sc[8], mn[8];
        UnpackQ4KScales(in.scales, sc, mn);
        for (int k = 0; k < 4; ++k) {
          o.sm[k][r] = sc[2 * k];
          o.sm[k][8 + r] = sc[2 * k + 1];
          o.sm[k][16 + r] = mn[2 * k];
          o.sm[k][24 + r] = mn[2 * k + 1];
          for (int v = 0; v < 8; ++v) std::memcpy(&o.qs[k][v][4 * r], in.qs + 32 * k + 4 * v, 4);
        }
      }
    }
  }
}

void UnrepackQ4Kx8(const BlockQ4Kx8& in, int r, BlockQ4_K* out) {
  out->d = in.d[r];
  out->dmin = in.dmin[r];
  uint8_t sc[8], mn[8];
  for (int k = 0; k < 4; ++k) {
    sc[2 * k] = in.sm[k][r];
    sc[2 * k + 1] = in.sm[k][8 + r];
    mn[2 * k] = in.sm[k][16 + r];
    mn[2 * k + 1] = in.sm[k][24 + r];
    for (int v = 0; v < 8; ++v) std::memcpy(out->qs + 32 * k + 4 * v, &in.qs[k][v][4 * r], 4);
  }
  // The inverse of UnpackQ4KScales: 6 bits each, the high 2 bits of values 4-7 in the top bits
  // of bytes 0-7.
  uint8_t* s = out->scales;
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    s[j + 4] = static_cast<uint8_t>((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
    s[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4));
  }
}

void RepackHalfx4(const uint8_t* w, size_t w_stride, int64_t n, int64_t g0, int64_t g1,
                  uint8_t* out) {
  constexpr size_t kChunkBytes = kHalfx4Chunk * 2;
  const int64_t nc = n / kHalfx4Chunk;
  for (int64_t g = g0; g < g1; ++g) {
    uint8_t* dst = out + static_cast<size_t>(g) * kHalfx4Rows * n * 2;
    for (int64_t c = 0; c < nc; ++c) {
      for (int r = 0; r < kHalfx4Rows; ++r) {
        std::memcpy(dst + (c * kHalfx4Rows + r) * kChunkBytes,
                    w + (g * kHalfx4Rows + r) * w_stride + c * kChunkBytes, kChunkBytes);
      }
    }
  }
}

namespace {
bool IsHalf(GgmlType type) { return type == GgmlType::kF16 || type == GgmlType::kBF16; }
}  // namespace

size_t RepackedBytes(GgmlType type, int64_t n_rows, int64_t n) {
  if (IsHalf(type)) return static_cast<size_t>(n_rows) * static_cast<size_t>(n) * 2;
  KV_CHECK(type == GgmlType::kQ4_K);
  return Q4Kx8Bytes(n_rows, n);
}

void RepackWeights(GgmlType type, const uint8_t* w, size_t w_stride, int64_t n, int64_t g0,
                   int64_t g1, uint8_t* dst) {
  if (IsHalf(type)) return RepackHalfx4(w, w_stride, n, g0, g1, dst);
  KV_CHECK(type == GgmlType::kQ4_K);
  RepackQ4Kx8(w, w_stride, n / kQK_K, g0, g1, reinterpret_cast<BlockQ4Kx8*>(dst));
}

void UnrepackRow(GgmlType type, const uint8_t* packed, int64_t n, int64_t row, uint8_t* out) {
  if (IsHalf(type)) {
    constexpr size_t kChunkBytes = kHalfx4Chunk * 2;
    const uint8_t* group = packed + static_cast<size_t>(row / kHalfx4Rows) * kHalfx4Rows * n * 2;
    for (int64_t c = 0; c < n / kHalfx4Chunk; ++c) {
      std::memcpy(out + c * kChunkBytes,
                  group + (c * kHalfx4Rows + row % kHalfx4Rows) * kChunkBytes, kChunkBytes);
    }
    return;
  }
  KV_CHECK(type == GgmlType::kQ4_K);
  const int64_t nb = n / kQK_K;
  const auto* group = reinterpret_cast<const BlockQ4Kx8*>(packed) + row / kQ4Kx8Rows * nb;
  for (int64_t b = 0; b < nb; ++b) {
    UnrepackQ4Kx8(group[b], static_cast<int>(row % kQ4Kx8Rows),
                  reinterpret_cast<BlockQ4_K*>(out) + b);
  }
}

void GemvQ4Kx8Scalar(const BlockQ4Kx8* w, int64_t nb, const uint8_t* x, size_t x_stride, int n_tok,
                     float* y, size_t ldy) {
  for (int t = 0; t < n_tok; ++t) {
    const auto* xb = reinterpret_cast<const BlockQ8_K*>(x + t * x_stride);
    float acc[kQ4Kx8Rows] = {};
    for (int64_t b = 0; b < nb; ++b) {
      const BlockQ4Kx8& blk = w[b];
      for (int r = 0; r < kQ4Kx8Rows; ++r) {
        int32_t sum = 0, msum = 0;
        for (int k = 0; k < 4; ++k) {
          int32_t lo = 0, hi = 0;
          for (int v = 0; v < 8; ++v) {
            for (int i = 0; i < 4; ++i) {
              const uint8_t q = blk.qs[k][v][4 * r + i];
              lo += (q & 0xF) * xb[b].qs[64 * k + 4 * v + i];
              hi += (q >> 4) * xb[b].qs[64 * k + 32 + 4 * v + i];
            }
          }
          sum += blk.sm[k][r] * lo + blk.sm[k][8 + r] * hi;
          msum += blk.sm[k][16 + r] * (xb[b].bsums[4 * k] + xb[b].bsums[4 * k + 1]) +
                  blk.sm[k][24 + r] * (xb[b].bsums[4 * k + 2] + xb[b].bsums[4 * k + 3]);
        }
        const float dx = xb[b].d;
        acc[r] = std::fma(HalfToF32(blk.d[r]) * dx, static_cast<float>(sum), acc[r]);
        acc[r] = std::fma(-(HalfToF32(blk.dmin[r]) * dx), static_cast<float>(msum), acc[r]);
      }
    }
    for (int r = 0; r < kQ4Kx8Rows; ++r) y[t * ldy + r] = acc[r];
  }
}

}  // namespace kvstash::engine::cpu
