// Portable dot products of Q3_K, Q5_K, IQ4_NL and IQ4_XS weight rows with converted activations:
// the statement of what the x86 tiles in kernels_kquant_extra.inc compute (integer sums per
// block exact, one float accumulation per block in order). Pure functions; thread-safe.
#include <cmath>

#include "engine/cpu/fp16.h"
#include "engine/cpu/kernels.h"
#include "engine/cpu/kernels_internal.h"

namespace kvstash::engine::cpu {

void UnpackQ3K(const BlockQ3_K& b, int8_t q[kQK_K], int8_t sc[16]) {
  for (int j = 0; j < 16; ++j) {
    const int lo = j < 8 ? (b.scales[j] & 0x0F) : (b.scales[j - 8] >> 4);
    const int hi = (b.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    sc[j] = static_cast<int8_t>((lo | (hi << 4)) - 32);
  }
  // Element e: low bits plane (e % 128) / 32 of qs[32 (e / 128) + e % 32], high bit e / 32 of
  // hmask[e % 32] (clear: subtract 4).
  for (int e = 0; e < kQK_K; ++e) {
    const int lo = (b.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
    const int hi = (b.hmask[e % 32] >> (e / 32)) & 1;
    q[e] = static_cast<int8_t>(lo - (hi ? 0 : 4));
  }
}

void UnpackQ5K(const BlockQ5_K& b, uint8_t q[kQK_K]) {
  for (int g = 0; g < 4; ++g) {
    for (int l = 0; l < 32; ++l) {
      q[64 * g + l] =
          static_cast<uint8_t>((b.qs[32 * g + l] & 0x0F) | (((b.qh[l] >> (2 * g)) & 1) << 4));
      q[64 * g + 32 + l] =
          static_cast<uint8_t>((b.qs[32 * g + l] >> 4) | (((b.qh[l] >> (2 * g + 1)) & 1) << 4));
    }
  }
}

float DotRowScalarExtra(GgmlType type, const uint8_t* w, const uint8_t* x, int64_t n) {
  switch (type) {
    case GgmlType::kQ3_K: {
      const BlockQ3_K* wb = reinterpret_cast<const BlockQ3_K*>(w);
      const BlockQ8_K* xb = reinterpret_cast<const BlockQ8_K*>(x);
      float s = 0;
      int8_t q[kQK_K], sc[16];
      for (int64_t b = 0; b < n / kQK_K; ++b) {
        UnpackQ3K(wb[b], q, sc);
        int32_t isum = 0;
        for (int j = 0; j < 16; ++j) {
          int32_t part = 0;
          for (int i = 0; i < 16; ++i) part += q[16 * j + i] * xb[b].qs[16 * j + i];
          isum += sc[j] * part;
        }
        s += HalfToF32(wb[b].d) * xb[b].d * static_cast<float>(isum);
      }
      return s;
    }
    case GgmlType::kQ5_K: {
      const BlockQ5_K* wb = reinterpret_cast<const BlockQ5_K*>(w);
      const BlockQ8_K* xb = reinterpret_cast<const BlockQ8_K*>(x);
      float s = 0;
      uint8_t q[kQK_K];
      for (int64_t b = 0; b < n / kQK_K; ++b) {
        uint8_t sc[8], mn[8];
        UnpackQ4KScales(wb[b].scales, sc, mn);
        UnpackQ5K(wb[b], q);
        int32_t isum = 0, msum = 0;
        for (int j = 0; j < 8; ++j) {
          int32_t part = 0;
          for (int i = 0; i < 32; ++i) part += q[32 * j + i] * xb[b].qs[32 * j + i];
          isum += sc[j] * part;
          msum += mn[j] * (xb[b].bsums[2 * j] + xb[b].bsums[2 * j + 1]);
        }
        s += HalfToF32(wb[b].d) * xb[b].d * static_cast<float>(isum) -
             HalfToF32(wb[b].dmin) * xb[b].d * static_cast<float>(msum);
      }
      return s;
    }
    case GgmlType::kIQ4_NL: {
      const BlockIQ4_NL* wb = reinterpret_cast<const BlockIQ4_NL*>(w);
      const BlockQ8A* xb = reinterpret_cast<const BlockQ8A*>(x);
      float s = 0;
      for (int64_t b = 0; b < n / kQK4_NL; ++b) {
        int32_t isum = 0;
        for (int i = 0; i < 16; ++i) {
          isum += kIq4nlValues[wb[b].qs[i] & 0x0F] * xb[b].qs[i];
          isum += kIq4nlValues[wb[b].qs[i] >> 4] * xb[b].qs[i + 16];
        }
        s += HalfToF32(wb[b].d) * xb[b].d * static_cast<float>(isum);
      }
      return s;
    }
    case GgmlType::kIQ4_XS: {
      const BlockIQ4_XS* wb = reinterpret_cast<const BlockIQ4_XS*>(w);
      const BlockQ8_K* xb = reinterpret_cast<const BlockQ8_K*>(x);
      float s = 0;
      for (int64_t b = 0; b < n / kQK_K; ++b) {
        int32_t isum = 0;
        for (int ib = 0; ib < 8; ++ib) {
          const int ls = ((wb[b].scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F) |
                         (((wb[b].scales_h >> (2 * ib)) & 3) << 4);
          const uint8_t* qs = wb[b].qs + 16 * ib;
          const int8_t* xq = xb[b].qs + 32 * ib;
          int32_t part = 0;
          for (int i = 0; i < 16; ++i) {
            part += kIq4nlValues[qs[i] & 0x0F] * xq[i];
            part += kIq4nlValues[qs[i] >> 4] * xq[i + 16];
          }
          isum += (ls - 32) * part;
        }
        s += HalfToF32(wb[b].d) * xb[b].d * static_cast<float>(isum);
      }
      return s;
    }
    default:
      return NAN;
  }
}

}  // namespace kvstash::engine::cpu
