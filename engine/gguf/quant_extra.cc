// Scalar reference (de)quantizers of the types the common "K_M" and "dynamic" downloads add to
// the basic set: Q3_K, Q5_K, IQ4_NL, IQ4_XS. Layouts are ggml's byte for byte (ggml-common.h;
// the element order of each is described at its block struct in ggml_types.h). The quantizers
// follow quant.cc's approach: a small scale search per sub-block minimising squared error, then
// codes re-derived against the scales as stored (fp16 super-block scale, 6-bit sub-block
// scales). No imatrix; they are not bit-identical to llama-quantize's, only as good or close.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "engine/gguf/quant.h"
#include "engine/gguf/quant_internal.h"

namespace kvstash::engine {
namespace {

using quant_internal::FitAffine;
using quant_internal::FitSymmetric;
using quant_internal::NearestInt;
using quant_internal::ScaleMinK4;
using quant_internal::SignedAbsMax;

inline float Half(ggml_half h) { return Fp16ToFp32(h); }

// Q3_K's 16 six-bit scales: the low 4 bits of scale j are the low (j < 8) or high (j >= 8)
// nibble of byte j % 8, the top 2 bits are bits 2(j / 4)..+1 of byte 8 + j % 4. Stored +32.
inline int Q3KScale(const uint8_t* s, int j) {
  const int lo = j < 8 ? (s[j] & 0x0F) : (s[j - 8] >> 4);
  const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
  return (lo | (hi << 4)) - 32;
}

// ---- Dequantization -------------------------------------------------------------------------

void DequantQ3_K(const BlockQ3_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Half(b[i].d);
    // Two halves of 128; in a half, 4 bit planes j of qs (shift 2j) with hmask bit 4h + j.
    for (int h = 0; h < 2; ++h) {
      const uint8_t* q = b[i].qs + 32 * h;
      for (int j = 0; j < 4; ++j) {
        const uint8_t m = static_cast<uint8_t>(1u << (4 * h + j));
        for (int k = 0; k < 2; ++k) {
          const float dl = d * static_cast<float>(Q3KScale(b[i].scales, 8 * h + 2 * j + k));
          for (int l = 0; l < 16; ++l) {
            const int e = 16 * k + l;
            const int v = ((q[e] >> (2 * j)) & 3) - ((b[i].hmask[e] & m) ? 0 : 4);
            *y++ = dl * static_cast<float>(v);
          }
        }
      }
    }
  }
}

void DequantQ5_K(const BlockQ5_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Half(b[i].d);
    const float dmin = Half(b[i].dmin);
    const uint8_t* ql = b[i].qs;
    // 4 groups of 64 as Q4_K; group g's fifth bits are bits 2g (low nibbles) and 2g+1 (high).
    for (int g = 0; g < 4; ++g, ql += 32) {
      uint8_t sc, m;
      ScaleMinK4(2 * g, b[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      ScaleMinK4(2 * g + 1, b[i].scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      const uint8_t u1 = static_cast<uint8_t>(1u << (2 * g)), u2 = static_cast<uint8_t>(u1 << 1);
      for (int l = 0; l < 32; ++l) {
        *y++ = d1 * static_cast<float>((ql[l] & 0x0F) + ((b[i].qh[l] & u1) ? 16 : 0)) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        *y++ = d2 * static_cast<float>((ql[l] >> 4) + ((b[i].qh[l] & u2) ? 16 : 0)) - m2;
      }
    }
  }
}

void DequantIQ4_NL(const BlockIQ4_NL* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK4_NL) {
    const float d = Half(b[i].d);
    for (int j = 0; j < kQK4_NL / 2; ++j) {
      y[j] = d * static_cast<float>(kIq4nlValues[b[i].qs[j] & 0x0F]);
      y[j + kQK4_NL / 2] = d * static_cast<float>(kIq4nlValues[b[i].qs[j] >> 4]);
    }
  }
}

void DequantIQ4_XS(const BlockIQ4_XS* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = Half(b[i].d);
    for (int ib = 0; ib < kQK_K / 32; ++ib, y += 32) {
      const int ls = ((b[i].scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F) |
                     (((b[i].scales_h >> (2 * ib)) & 3) << 4);
      const float dl = d * static_cast<float>(ls - 32);
      const uint8_t* qs = b[i].qs + 16 * ib;
      for (int j = 0; j < 16; ++j) {
        y[j] = dl * static_cast<float>(kIq4nlValues[qs[j] & 0x0F]);
        y[j + 16] = dl * static_cast<float>(kIq4nlValues[qs[j] >> 4]);
      }
    }
  }
}

// ---- Quantization ---------------------------------------------------------------------------

void QuantQ3_K(const float* x, BlockQ3_K* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    float scales[16];
    float max_scale = 0.0f, amax = 0.0f;
    for (int j = 0; j < 16; ++j) {
      scales[j] = FitSymmetric(x + 16 * j, 16, 4);
      if (std::fabs(scales[j]) > amax) {
        amax = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    std::memset(b[i].scales, 0, sizeof(b[i].scales));
    uint8_t L[kQK_K];
    if (amax < 1e-30f) {
      b[i].d = Fp32ToFp16(0.0f);
      std::fill(L, L + kQK_K, 4);
    } else {
      // 6-bit signed sub-block scales; the largest maps to -32 as in ggml.
      const float iscale = -32.0f / max_scale;
      for (int j = 0; j < 16; ++j) {
        const int l = std::clamp(NearestInt(iscale * scales[j]), -32, 31) + 32;
        if (j < 8) {
          b[i].scales[j] = static_cast<uint8_t>(l & 0x0F);
        } else {
          b[i].scales[j - 8] |= static_cast<uint8_t>((l & 0x0F) << 4);
        }
        b[i].scales[8 + j % 4] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
      }
      b[i].d = Fp32ToFp16(1.0f / iscale);
      const float d = Half(b[i].d);
      for (int j = 0; j < 16; ++j) {
        const float dj = d * static_cast<float>(Q3KScale(b[i].scales, j));
        for (int k = 0; k < 16; ++k) {
          const int l = dj != 0.0f ? std::clamp(NearestInt(x[16 * j + k] / dj), -4, 3) : 0;
          L[16 * j + k] = static_cast<uint8_t>(l + 4);
        }
      }
    }
    // High bit of element e: bit e / 32 of hmask[e % 32]; low 2 bits: plane (e % 128) / 32 of
    // qs[32 * (e / 128) + e % 32].
    std::memset(b[i].hmask, 0, sizeof(b[i].hmask));
    std::memset(b[i].qs, 0, sizeof(b[i].qs));
    for (int e = 0; e < kQK_K; ++e) {
      if (L[e] > 3) b[i].hmask[e % 32] |= static_cast<uint8_t>(1u << (e / 32));
      b[i].qs[32 * (e / 128) + e % 32] |=
          static_cast<uint8_t>((L[e] & 3) << (2 * ((e % 128) / 32)));
    }
  }
}

void QuantQ5_K(const float* x, BlockQ5_K* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    uint8_t L[kQK_K];
    float scales[8], mins[8];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 8; ++j) {
      scales[j] = FitAffine(x + 32 * j, 32, 31, L + 32 * j, &mins[j]);
      max_scale = std::max(max_scale, scales[j]);
      max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    std::memset(b[i].scales, 0, sizeof(b[i].scales));
    for (int j = 0; j < 8; ++j) {
      const uint8_t ls = static_cast<uint8_t>(std::min(63, NearestInt(inv_scale * scales[j])));
      const uint8_t lm = static_cast<uint8_t>(std::min(63, NearestInt(inv_min * mins[j])));
      if (j < 4) {
        b[i].scales[j] = ls;
        b[i].scales[j + 4] = lm;
      } else {
        b[i].scales[j + 4] = static_cast<uint8_t>((ls & 0x0F) | ((lm & 0x0F) << 4));
        b[i].scales[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
        b[i].scales[j] |= static_cast<uint8_t>((lm >> 4) << 6);
      }
    }
    b[i].d = Fp32ToFp16(max_scale / 63.0f);
    b[i].dmin = Fp32ToFp16(max_min / 63.0f);
    const float d = Half(b[i].d), dmin = Half(b[i].dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      ScaleMinK4(j, b[i].scales, &sc, &m);
      const float dj = d * sc;
      if (dj == 0.0f) continue;
      const float mj = dmin * m;
      for (int k = 0; k < 32; ++k) {
        L[32 * j + k] =
            static_cast<uint8_t>(std::clamp(NearestInt((x[32 * j + k] + mj) / dj), 0, 31));
      }
    }
    std::memset(b[i].qh, 0, sizeof(b[i].qh));
    for (int g = 0; g < 4; ++g) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t l1 = L[64 * g + l], l2 = L[64 * g + 32 + l];
        b[i].qs[32 * g + l] = static_cast<uint8_t>((l1 & 0x0F) | ((l2 & 0x0F) << 4));
        b[i].qh[l] |= static_cast<uint8_t>(((l1 >> 4) << (2 * g)) | ((l2 >> 4) << (2 * g + 1)));
      }
    }
  }
}

// Index of the IQ4_NL level nearest to v (ties to the lower level).
inline uint8_t NearestIq4(float v) {
  int best = 0;
  float best_err = std::fabs(v - kIq4nlValues[0]);
  for (int k = 1; k < 16; ++k) {
    const float e = std::fabs(v - kIq4nlValues[k]);
    if (e < best_err) {
      best_err = e;
      best = k;
    }
  }
  return static_cast<uint8_t>(best);
}

// Best scale for x[0..32) ≈ d * kIq4nlValues[L]: a grid over the reciprocal scale around the one
// that maps the largest magnitude onto -127 (as ggml's search), each with its least-squares d.
float FitIq4(const float* x) {
  const float max = SignedAbsMax(x, 32);
  if (std::fabs(max) < 1e-30f) return 0.0f;
  float best_d = max / kIq4nlValues[0], best_score = -1.0f;
  for (int step = -7; step <= 7; ++step) {
    const float id = (static_cast<float>(kIq4nlValues[0]) + step) / max;
    float sum_qx = 0, sum_q2 = 0;
    for (int k = 0; k < 32; ++k) {
      const float q = kIq4nlValues[NearestIq4(id * x[k])];
      sum_qx += q * x[k];
      sum_q2 += q * q;
    }
    // Squared error for the optimal d is sum x^2 - sum_qx^2 / sum_q2: maximise the second term.
    if (sum_q2 > 0.0f && sum_qx * sum_qx / sum_q2 > best_score) {
      best_score = sum_qx * sum_qx / sum_q2;
      best_d = sum_qx / sum_q2;
    }
  }
  return best_d;
}

// Packs 32 codes as Q4_0 orders nibbles: element j in the low nibble of byte j, 16 + j high.
inline void PackNibbles32(const float* x, float d, uint8_t* qs) {
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < 16; ++j) {
    qs[j] = static_cast<uint8_t>(NearestIq4(id * x[j]) | (NearestIq4(id * x[j + 16]) << 4));
  }
}

void QuantIQ4_NL(const float* x, BlockIQ4_NL* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK4_NL) {
    b[i].d = Fp32ToFp16(FitIq4(x));
    PackNibbles32(x, Half(b[i].d), b[i].qs);
  }
}

void QuantIQ4_XS(const float* x, BlockIQ4_XS* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    float scales[8];
    float max_scale = 0.0f, amax = 0.0f;
    for (int ib = 0; ib < 8; ++ib) {
      scales[ib] = FitIq4(x + 32 * ib);
      if (std::fabs(scales[ib]) > amax) {
        amax = std::fabs(scales[ib]);
        max_scale = scales[ib];
      }
    }
    // 6-bit signed sub-block scales relative to d; the largest maps to -32.
    b[i].d = Fp32ToFp16(amax < 1e-30f ? 0.0f : -max_scale / 32.0f);
    const float d = Half(b[i].d);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b[i].scales_h = 0;
    std::memset(b[i].scales_l, 0, sizeof(b[i].scales_l));
    for (int ib = 0; ib < 8; ++ib) {
      const int l = std::clamp(NearestInt(id * scales[ib]), -32, 31);
      const int ls = l + 32;
      b[i].scales_l[ib / 2] |= static_cast<uint8_t>((ls & 0x0F) << (4 * (ib % 2)));
      b[i].scales_h = static_cast<uint16_t>(b[i].scales_h | ((ls >> 4) << (2 * ib)));
      PackNibbles32(x + 32 * ib, d * static_cast<float>(l), b[i].qs + 16 * ib);
    }
  }
}

}  // namespace

bool DequantizeRowExtra(GgmlType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case GgmlType::kQ3_K:
      DequantQ3_K(static_cast<const BlockQ3_K*>(src), dst, n / kQK_K);
      return true;
    case GgmlType::kQ5_K:
      DequantQ5_K(static_cast<const BlockQ5_K*>(src), dst, n / kQK_K);
      return true;
    case GgmlType::kIQ4_NL:
      DequantIQ4_NL(static_cast<const BlockIQ4_NL*>(src), dst, n / kQK4_NL);
      return true;
    case GgmlType::kIQ4_XS:
      DequantIQ4_XS(static_cast<const BlockIQ4_XS*>(src), dst, n / kQK_K);
      return true;
    default:
      return false;
  }
}

bool QuantizeRowExtra(GgmlType t, const float* src, void* dst, int64_t n) {
  switch (t) {
    case GgmlType::kQ3_K:
      QuantQ3_K(src, static_cast<BlockQ3_K*>(dst), n / kQK_K);
      return true;
    case GgmlType::kQ5_K:
      QuantQ5_K(src, static_cast<BlockQ5_K*>(dst), n / kQK_K);
      return true;
    case GgmlType::kIQ4_NL:
      QuantIQ4_NL(src, static_cast<BlockIQ4_NL*>(dst), n / kQK4_NL);
      return true;
    case GgmlType::kIQ4_XS:
      QuantIQ4_XS(src, static_cast<BlockIQ4_XS*>(dst), n / kQK_K);
      return true;
    default:
      return false;
  }
}

}  // namespace kvstash::engine
