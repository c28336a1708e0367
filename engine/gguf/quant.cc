// Scalar reference (de)quantizers. Every layout here is ggml's (ggml-common.h / ggml-quants.c)
// byte for byte, so files written by kvstash-mkmodel load in llama.cpp and files from
// llama-quantize load here. The quantizers are deliberately simple: block-wise round-to-nearest
// for the 32-element types (the same scale conventions as ggml's *_ref quantizers, so that
// results are bit-identical to them), and for the K-quants a small grid search over the
// sub-block scale that minimises squared error followed by a least-squares refit. No imatrix,
// no SIMD: correctness first; the CPU backend has the fast paths.

#include "engine/gguf/quant.h"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>

#include "engine/gguf/quant_internal.h"

namespace kvstash::engine {
using namespace quant_internal;  // NOLINT: the helpers shared with quant_extra.cc
namespace {

inline float Half(ggml_half h) { return Fp16ToFp32(h); }

// ---- Dequantization -------------------------------------------------------------------------

void DequantQ4_0(const BlockQ4_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK4_0) {
    const float d = Half(b[i].d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      y[j] = static_cast<float>((b[i].qs[j] & 0x0F) - 8) * d;
      y[j + kQK4_0 / 2] = static_cast<float>((b[i].qs[j] >> 4) - 8) * d;
    }
  }
}

inline uint32_t LoadQh(const uint8_t qh[4]) {
  return static_cast<uint32_t>(qh[0]) | static_cast<uint32_t>(qh[1]) << 8 |
         static_cast<uint32_t>(qh[2]) << 16 | static_cast<uint32_t>(qh[3]) << 24;
}

void DequantQ5_0(const BlockQ5_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK5_0) {
    const float d = Half(b[i].d);
    const uint32_t qh = LoadQh(b[i].qh);
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const int hi0 = static_cast<int>((qh >> j) & 1u) << 4;
      const int hi1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
      y[j] = static_cast<float>(((b[i].qs[j] & 0x0F) | hi0) - 16) * d;
      y[j + kQK5_0 / 2] = static_cast<float>(((b[i].qs[j] >> 4) | hi1) - 16) * d;
    }
  }
}

void DequantQ5_1(const BlockQ5_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK5_1) {
    const float d = Half(b[i].d);
    const float m = Half(b[i].m);
    const uint32_t qh = LoadQh(b[i].qh);
    for (int j = 0; j < kQK5_1 / 2; ++j) {
      const int hi0 = static_cast<int>((qh >> j) & 1u) << 4;
      const int hi1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
      y[j] = static_cast<float>((b[i].qs[j] & 0x0F) | hi0) * d + m;
      y[j + kQK5_1 / 2] = static_cast<float>((b[i].qs[j] >> 4) | hi1) * d + m;
    }
  }
}

void DequantQ8_0(const BlockQ8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK8_0) {
    const float d = Half(b[i].d);
    for (int j = 0; j < kQK8_0; ++j) y[j] = static_cast<float>(b[i].qs[j]) * d;
  }
}

void DequantQ4_K(const BlockQ4_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Half(b[i].d);
    const float dmin = Half(b[i].dmin);
    const uint8_t* q = b[i].qs;
    // 4 groups of 64: the low nibbles of 32 bytes are sub-block 2g, the high nibbles 2g+1.
    for (int g = 0; g < 4; ++g, q += 32) {
      uint8_t sc, m;
      ScaleMinK4(2 * g, b[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      ScaleMinK4(2 * g + 1, b[i].scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0x0F) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

void DequantQ6_K(const BlockQ6_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Half(b[i].d);
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const int8_t* sc = b[i].scales;
    // Two halves of 128: ql[0..63] and qh[0..31] serve the first half. Within a half, element
    // l (+0, +32, +64, +96) takes its low 4 bits from ql[l] / ql[l+32] low / high nibbles and its
    // top 2 bits from bits 0-1 / 2-3 / 4-5 / 6-7 of qh[l].
    for (int half = 0; half < 2; ++half, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[is] * q1);
        y[l + 32] = d * static_cast<float>(sc[is + 2] * q2);
        y[l + 64] = d * static_cast<float>(sc[is + 4] * q3);
        y[l + 96] = d * static_cast<float>(sc[is + 6] * q4);
      }
    }
  }
}

// ---- Quantization: 32-element types ---------------------------------------------------------
// Scale conventions follow ggml's reference quantizers: the element of largest magnitude maps to
// the most negative code (-8 / -16), which uses the asymmetric code range fully.

}  // namespace
namespace quant_internal {

// Signed value of largest magnitude in x[0..n).
float SignedAbsMax(const float* x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

}  // namespace quant_internal
namespace {

void QuantQ4_0(const float* x, BlockQ4_0* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK4_0) {
    const float d = SignedAbsMax(x, kQK4_0) / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = Fp32ToFp16(d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      // Truncation of (v + 8.5) is round-half-up of v + 8 for the non-negative range used.
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
      const int q1 =
          std::min(15, static_cast<int>(static_cast<int8_t>(x[j + kQK4_0 / 2] * id + 8.5f)));
      b[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

inline void StoreQh(uint32_t qh, uint8_t out[4]) {
  for (int k = 0; k < 4; ++k) out[k] = static_cast<uint8_t>(qh >> (8 * k));
}

void QuantQ5_0(const float* x, BlockQ5_0* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK5_0) {
    const float d = SignedAbsMax(x, kQK5_0) / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = Fp32ToFp16(d);
    uint32_t qh = 0;
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const int q0 = std::min(31, static_cast<int>(static_cast<int8_t>(x[j] * id + 16.5f)));
      const int q1 =
          std::min(31, static_cast<int>(static_cast<int8_t>(x[j + kQK5_0 / 2] * id + 16.5f)));
      b[i].qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + 16);
    }
    StoreQh(qh, b[i].qh);
  }
}

void QuantQ5_1(const float* x, BlockQ5_1* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK5_1) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < kQK5_1; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = Fp32ToFp16(d);
    b[i].m = Fp32ToFp16(min);
    uint32_t qh = 0;
    for (int j = 0; j < kQK5_1 / 2; ++j) {
      const int q0 = std::min(31, static_cast<int>((x[j] - min) * id + 0.5f));
      const int q1 = std::min(31, static_cast<int>((x[j + kQK5_1 / 2] - min) * id + 0.5f));
      b[i].qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + 16);
    }
    StoreQh(qh, b[i].qh);
  }
}

void QuantQ8_0(const float* x, BlockQ8_0* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK8_0) {
    float amax = 0.0f;
    for (int j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].d = Fp32ToFp16(d);
    for (int j = 0; j < kQK8_0; ++j) b[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

// ---- Quantization: K-quants -----------------------------------------------------------------

}  // namespace
namespace quant_internal {

// Fits x[i] ≈ scale * L[i] - min_out with L in [0, nmax] and min_out >= 0 (the affine form of
// Q4_K sub-blocks). Tries a few grid points for the initial scale, assigns codes, refits (scale,
// offset) by least squares, and keeps the best. Returns scale; writes the codes and min_out.
float FitAffine(const float* x, int n, int nmax, uint8_t* L, float* min_out) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  if (lo > 0.0f) lo = 0.0f;  // the offset is subtracted, so it can only move values down
  if (hi <= lo) {
    std::fill(L, L + n, 0);
    *min_out = -lo;
    return 0.0f;
  }
  uint8_t trial[32];
  float best_err = FLT_MAX, best_scale = (hi - lo) / nmax, best_off = lo;
  for (int step = -4; step <= 8; ++step) {
    const float iscale = (static_cast<float>(nmax) + 0.1f * step) / (hi - lo);
    float sum_l = 0, sum_l2 = 0, sum_x = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(NearestInt(iscale * (x[i] - lo)), 0, nmax);
      trial[i] = static_cast<uint8_t>(l);
      sum_l += l;
      sum_l2 += static_cast<float>(l * l);
      sum_x += x[i];
      sum_xl += x[i] * l;
    }
    // Least squares for x ≈ s*l + off.
    const float det = n * sum_l2 - sum_l * sum_l;
    float s, off;
    if (det > 0.0f) {
      s = (n * sum_xl - sum_l * sum_x) / det;
      off = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    } else {
      s = 1.0f / iscale;
      off = lo;
    }
    if (off > 0.0f) {  // constrained: refit the scale alone with off = 0
      off = 0.0f;
      s = sum_l2 > 0.0f ? sum_xl / sum_l2 : 0.0f;
    }
    if (s <= 0.0f) continue;
    float err = 0;
    for (int i = 0; i < n; ++i) {
      const float e = s * trial[i] + off - x[i];
      err += e * e;
    }
    if (err < best_err) {
      best_err = err;
      best_scale = s;
      best_off = off;
      std::copy(trial, trial + n, L);
    }
  }
  if (best_err == FLT_MAX) {  // degenerate: fall back to the plain min/max mapping
    const float iscale = nmax / (hi - lo);
    for (int i = 0; i < n; ++i) {
      L[i] = static_cast<uint8_t>(std::clamp(NearestInt(iscale * (x[i] - lo)), 0, nmax));
    }
  }
  *min_out = -best_off;
  return best_scale;
}

// Fits x[i] ≈ scale * l[i] with l in [-nmax, nmax-1] (symmetric, as Q6_K sub-blocks). Grid over
// the reciprocal scale around -nmax/max (ggml's convention: the extreme value takes -nmax), then
// least-squares refit; returns the best (signed) scale.
float FitSymmetric(const float* x, int n, int nmax) {
  const float max = SignedAbsMax(x, n);
  if (std::fabs(max) < 1e-30f) return 0.0f;
  float best_scale = -max / nmax, best_err = FLT_MAX;
  for (int step = -9; step <= 9; ++step) {
    const float iscale = -(static_cast<float>(nmax) + 0.1f * step) / max;
    float sum_xl = 0, sum_l2 = 0;
    int l_buf[32];
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(NearestInt(iscale * x[i]), -nmax, nmax - 1);
      l_buf[i] = l;
      sum_xl += x[i] * l;
      sum_l2 += static_cast<float>(l * l);
    }
    if (sum_l2 <= 0.0f) continue;
    const float s = sum_xl / sum_l2;
    float err = 0;
    for (int i = 0; i < n; ++i) {
      const float e = s * l_buf[i] - x[i];
      err += e * e;
    }
    if (err < best_err) {
      best_err = err;
      best_scale = s;
    }
  }
  return best_scale;
}

}  // namespace quant_internal
namespace {

void QuantQ4_K(const float* x, BlockQ4_K* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    uint8_t L[kQK_K];
    float scales[8], mins[8];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 8; ++j) {
      scales[j] = FitAffine(x + 32 * j, 32, 15, L + 32 * j, &mins[j]);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    // Super-block scales: 6-bit sub-block scales/mins relative to d and dmin.
    const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; ++j) {
      ls[j] = static_cast<uint8_t>(std::min(63, NearestInt(inv_scale * scales[j])));
      lm[j] = static_cast<uint8_t>(std::min(63, NearestInt(inv_min * mins[j])));
    }
    std::memset(b[i].scales, 0, sizeof(b[i].scales));
    for (int j = 0; j < 8; ++j) {
      if (j < 4) {
        b[i].scales[j] = ls[j];
        b[i].scales[j + 4] = lm[j];
      } else {
        b[i].scales[j + 4] = static_cast<uint8_t>((ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4));
        b[i].scales[j - 4] |= static_cast<uint8_t>((ls[j] >> 4) << 6);
        b[i].scales[j] |= static_cast<uint8_t>((lm[j] >> 4) << 6);
      }
    }
    b[i].d = Fp32ToFp16(max_scale / 63.0f);
    b[i].dmin = Fp32ToFp16(max_min / 63.0f);
    // Re-derive the codes against the scales as stored (fp16 d, 6-bit sc), so rounding of the
    // scales does not bias the reconstruction.
    const float d = Fp16ToFp32(b[i].d), dmin = Fp16ToFp32(b[i].dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      ScaleMinK4(j, b[i].scales, &sc, &m);
      const float dj = d * sc;
      if (dj == 0.0f) continue;
      const float mj = dmin * m;
      for (int k = 0; k < 32; ++k) {
        L[32 * j + k] =
            static_cast<uint8_t>(std::clamp(NearestInt((x[32 * j + k] + mj) / dj), 0, 15));
      }
    }
    uint8_t* q = b[i].qs;
    for (int g = 0; g < 4; ++g, q += 32) {
      for (int l = 0; l < 32; ++l) {
        q[l] = static_cast<uint8_t>(L[64 * g + l] | (L[64 * g + 32 + l] << 4));
      }
    }
  }
}

void QuantQ6_K(const float* x, BlockQ6_K* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    float scales[16];
    float max_scale = 0.0f, max_abs_scale = 0.0f;
    for (int j = 0; j < 16; ++j) {
      scales[j] = FitSymmetric(x + 16 * j, 16, 32);
      if (std::fabs(scales[j]) > max_abs_scale) {
        max_abs_scale = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    uint8_t L[kQK_K] = {};
    if (max_abs_scale < 1e-30f) {
      std::memset(b[i].scales, 0, sizeof(b[i].scales));
      b[i].d = Fp32ToFp16(0.0f);
      std::fill(L, L + kQK_K, 32);
    } else {
      // int8 sub-block scales; the largest maps to -128 as in ggml.
      const float iscale = -128.0f / max_scale;
      b[i].d = Fp32ToFp16(1.0f / iscale);
      for (int j = 0; j < 16; ++j) {
        b[i].scales[j] = static_cast<int8_t>(std::clamp(NearestInt(iscale * scales[j]), -128, 127));
      }
      const float d = Fp16ToFp32(b[i].d);
      for (int j = 0; j < 16; ++j) {
        const float dj = d * b[i].scales[j];
        for (int k = 0; k < 16; ++k) {
          const int l = dj != 0.0f ? std::clamp(NearestInt(x[16 * j + k] / dj), -32, 31) : 0;
          L[16 * j + k] = static_cast<uint8_t>(l + 32);
        }
      }
    }
    uint8_t* ql = b[i].ql;
    uint8_t* qh = b[i].qh;
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32) {
      const uint8_t* Lh = L + 128 * half;
      for (int l = 0; l < 32; ++l) {
        ql[l] = static_cast<uint8_t>((Lh[l] & 0x0F) | ((Lh[l + 64] & 0x0F) << 4));
        ql[l + 32] = static_cast<uint8_t>((Lh[l + 32] & 0x0F) | ((Lh[l + 96] & 0x0F) << 4));
        qh[l] = static_cast<uint8_t>((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) |
                                     ((Lh[l + 64] >> 4) << 4) | ((Lh[l + 96] >> 4) << 6));
      }
    }
  }
}

Status CheckArgs(GgmlType t, int64_t n, const char* what) {
  const std::optional<GgmlTypeTraits> tr = TraitsOf(static_cast<uint32_t>(t));
  if (!tr || !tr->supported) {
    return Status::InvalidArgument(std::string(what) + ": unsupported type id " +
                                   std::to_string(static_cast<uint32_t>(t)));
  }
  if (n < 0 || n % tr->block_elems != 0) {
    return Status::InvalidArgument(std::string(what) + ": " + std::to_string(n) +
                                   " elements is not a multiple of the " + std::string(tr->name) +
                                   " block size " + std::to_string(tr->block_elems));
  }
  return Status::Ok();
}

}  // namespace

float Fp16ToFp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in f32.
    const float v = static_cast<float>(mant) * 0x1p-24f;
    return std::bit_cast<float>(std::bit_cast<uint32_t>(v) | sign);
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t Fp32ToFp16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t abs = x & 0x7FFFFFFF;
  if (abs > 0x7F800000) {  // NaN: keep it a (quiet) NaN, keep the top payload bits
    return static_cast<uint16_t>(sign | 0x7E00 | ((abs >> 13) & 0x3FF));
  }
  if (abs >= 0x477FF000) return sign | 0x7C00;  // >= 65520 rounds to inf (and inf itself)
  if (abs < 0x38800000) {
    // Below the smallest normal half (2^-14): a subnormal half counts units of 2^-24.
    const int exp = static_cast<int>(abs >> 23);
    const int shift = 126 - exp;  // value = mant24 * 2^(exp-150); units of 2^-24 => >> shift
    if (shift > 24) return sign;  // < 2^-25 (or exactly it, which ties to even zero)
    const uint32_t mant = (abs & 0x7FFFFF) | 0x800000;
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (q & 1))) ++q;
    return static_cast<uint16_t>(sign | q);  // q may carry into the smallest normal: correct
  }
  // Normal: rebias the exponent (127 -> 15) and round the low 13 mantissa bits to nearest even;
  // a carry out of the mantissa correctly increments the exponent.
  const uint32_t r = abs - (112u << 23);
  return static_cast<uint16_t>(sign | ((r + 0x0FFF + ((r >> 13) & 1)) >> 13));
}

float Bf16ToFp32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t Fp32ToBf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFF) > 0x7F800000) return static_cast<uint16_t>((x >> 16) | 0x40);  // quiet NaN
  return static_cast<uint16_t>((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

Status DequantizeRow(GgmlType t, const void* src, float* dst, int64_t n) {
  KV_RETURN_IF_ERROR(CheckArgs(t, n, "DequantizeRow"));
  switch (t) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return Status::Ok();
    case GgmlType::kF16: {
      const auto* s = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        dst[i] = Fp16ToFp32(h);
      }
      return Status::Ok();
    }
    case GgmlType::kBF16: {
      const auto* s = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        dst[i] = Bf16ToFp32(h);
      }
      return Status::Ok();
    }
    case GgmlType::kQ4_0:
      DequantQ4_0(static_cast<const BlockQ4_0*>(src), dst, n / kQK4_0);
      return Status::Ok();
    case GgmlType::kQ5_0:
      DequantQ5_0(static_cast<const BlockQ5_0*>(src), dst, n / kQK5_0);
      return Status::Ok();
    case GgmlType::kQ5_1:
      DequantQ5_1(static_cast<const BlockQ5_1*>(src), dst, n / kQK5_1);
      return Status::Ok();
    case GgmlType::kQ8_0:
      DequantQ8_0(static_cast<const BlockQ8_0*>(src), dst, n / kQK8_0);
      return Status::Ok();
    case GgmlType::kQ4_K:
      DequantQ4_K(static_cast<const BlockQ4_K*>(src), dst, n / kQK_K);
      return Status::Ok();
    case GgmlType::kQ6_K:
      DequantQ6_K(static_cast<const BlockQ6_K*>(src), dst, n / kQK_K);
      return Status::Ok();
    default:
      if (DequantizeRowExtra(t, src, dst, n)) return Status::Ok();
      break;
  }
  return Status::InvalidArgument("DequantizeRow: no dequantizer for type " +
                                 std::string(Traits(t).name));
}

Status QuantizeRow(GgmlType t, const float* src, void* dst, int64_t n) {
  KV_RETURN_IF_ERROR(CheckArgs(t, n, "QuantizeRow"));
  switch (t) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return Status::Ok();
    case GgmlType::kF16: {
      auto* d = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = Fp32ToFp16(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      }
      return Status::Ok();
    }
    case GgmlType::kBF16: {
      auto* d = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = Fp32ToBf16(src[i]);
        std::memcpy(d + 2 * i, &h, 2);
      }
      return Status::Ok();
    }
    case GgmlType::kQ4_0:
      QuantQ4_0(src, static_cast<BlockQ4_0*>(dst), n / kQK4_0);
      return Status::Ok();
    case GgmlType::kQ5_0:
      QuantQ5_0(src, static_cast<BlockQ5_0*>(dst), n / kQK5_0);
      return Status::Ok();
    case GgmlType::kQ5_1:
      QuantQ5_1(src, static_cast<BlockQ5_1*>(dst), n / kQK5_1);
      return Status::Ok();
    case GgmlType::kQ8_0:
      QuantQ8_0(src, static_cast<BlockQ8_0*>(dst), n / kQK8_0);
      return Status::Ok();
    case GgmlType::kQ4_K:
      QuantQ4_K(src, static_cast<BlockQ4_K*>(dst), n / kQK_K);
      return Status::Ok();
    case GgmlType::kQ6_K:
      QuantQ6_K(src, static_cast<BlockQ6_K*>(dst), n / kQK_K);
      return Status::Ok();
    default:
      if (QuantizeRowExtra(t, src, dst, n)) return Status::Ok();
      break;
  }
  return Status::InvalidArgument("QuantizeRow: no quantizer for type " +
                                 std::string(Traits(t).name));
}

}  // namespace kvstash::engine
