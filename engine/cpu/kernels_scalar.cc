// Portable kernels: the fallback on CPUs without AVX2, and the readable statement of what every
// SIMD table computes.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/cpu/fp16.h"
#include "engine/cpu/kernels.h"
#include "engine/cpu/kernels_internal.h"

namespace kvstash::engine::cpu {
namespace {

float DotRowScalar(GgmlType type, const uint8_t* w, const uint8_t* x, int64_t n) {
  switch (type) {
    case GgmlType::kF32: {
      const float* a = reinterpret_cast<const float*>(w);
      const float* b = reinterpret_cast<const float*>(x);
      float s = 0;
      for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
      return s;
    }
    case GgmlType::kF16: {
      const uint16_t* a = reinterpret_cast<const uint16_t*>(w);
      const float* b = reinterpret_cast<const float*>(x);
      float s = 0;
      for (int64_t i = 0; i < n; ++i) s += HalfToF32(a[i]) * b[i];
      return s;
    }
    case GgmlType::kBF16: {
      const uint16_t* a = reinterpret_cast<const uint16_t*>(w);
      const float* b = reinterpret_cast<const float*>(x);
      float s = 0;
      for (int64_t i = 0; i < n; ++i) s += Bf16ToF32(a[i]) * b[i];
      return s;
    }
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1: {
      const BlockQ8A* xb = reinterpret_cast<const BlockQ8A*>(x);
      const int64_t nb = n / 32;
      const size_t bs = Traits(type).block_bytes;
      float s = 0;
      int8_t q[32];
      for (int64_t b = 0; b < nb; ++b) {
        float d = 0, m = 0;
        UnpackBlock32(type, w + b * bs, q, &d, &m);
        int32_t isum = 0;
        for (int i = 0; i < 32; ++i) isum += q[i] * xb[b].qs[i];
        s += d * xb[b].d * static_cast<float>(isum) + m * xb[b].s;
      }
      return s;
    }
    case GgmlType::kQ4_K: {
      const BlockQ4_K* wb = reinterpret_cast<const BlockQ4_K*>(w);
      const BlockQ8_K* xb = reinterpret_cast<const BlockQ8_K*>(x);
      float s = 0;
      for (int64_t b = 0; b < n / kQK_K; ++b) {
        uint8_t sc[8], mn[8];
        UnpackQ4KScales(wb[b].scales, sc, mn);
        int32_t isum = 0, msum = 0;
        for (int j = 0; j < 8; ++j) {
          const uint8_t* qs = wb[b].qs + 32 * (j / 2);
          const int8_t* xq = xb[b].qs + 32 * j;
          int32_t part = 0;
          for (int i = 0; i < 32; ++i) {
            int q = (j % 2 == 0) ? (qs[i] & 0xF) : (qs[i] >> 4);
            part += q * xq[i];
          }
          isum += sc[j] * part;
          msum += mn[j] * (xb[b].bsums[2 * j] + xb[b].bsums[2 * j + 1]);
        }
        s += HalfToF32(wb[b].d) * xb[b].d * static_cast<float>(isum) -
             HalfToF32(wb[b].dmin) * xb[b].d * static_cast<float>(msum);
      }
      return s;
    }
    case GgmlType::kQ6_K: {
      const BlockQ6_K* wb = reinterpret_cast<const BlockQ6_K*>(w);
      const BlockQ8_K* xb = reinterpret_cast<const BlockQ8_K*>(x);
      float s = 0;
      int8_t q[kQK_K];
      for (int64_t b = 0; b < n / kQK_K; ++b) {
        UnpackQ6K(wb[b], q);
        int32_t isum = 0;
        for (int j = 0; j < 16; ++j) {
          int32_t part = 0;
          for (int i = 0; i < 16; ++i) part += q[16 * j + i] * xb[b].qs[16 * j + i];
          isum += wb[b].scales[j] * part;
        }
        s += HalfToF32(wb[b].d) * xb[b].d * static_cast<float>(isum);
      }
      return s;
    }
    default:
      return DotRowScalarExtra(type, w, x, n);
  }
}

void GemmScalar(GgmlType type, const uint8_t* w, size_t w_stride, int n_rows, const uint8_t* x,
                size_t x_stride, int n_tok, int64_t n, float* y, size_t ldy) {
  for (int t = 0; t < n_tok; ++t) {
    for (int r = 0; r < n_rows; ++r) {
      y[t * ldy + r] = DotRowScalar(type, w + r * w_stride, x + t * x_stride, n);
    }
  }
}

void F32ToF16Scalar(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = F32ToHalf(x[i]);
}
void F16ToF32Scalar(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = HalfToF32(x[i]);
}
float DotF32Scalar(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
void AxpyF32Scalar(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void DeltaRuleTokenScalar(float* s, int dv, int dk, const float* q, const float* k, const float* v,
                          float eg, float bt, float* o) {
  for (int j = 0; j < dv; ++j) {
    float* r = s + static_cast<size_t>(j) * dk;
    for (int i = 0; i < dk; ++i) r[i] *= eg;
    const float d = bt * (v[j] - DotF32Scalar(r, k, dk));
    AxpyF32Scalar(d, k, r, dk);
    o[j] = DotF32Scalar(r, q, dk);
  }
}

void AttnUpdateScalar(const float* q, int nq, const int* n_valid, const float* kt, int ldk,
                      AttnValues v, int n, int hd, float scale, float* m, float* l, float* acc,
                      float* scores) {
  // f16 value rows widened once into a scratch copy.
  thread_local std::vector<float> v_wide;
  thread_local std::vector<const float*> v_rows;
  if (v.f16 != nullptr) {
    v_wide.resize(static_cast<size_t>(n) * hd);
    v_rows.resize(n);
    for (int s = 0; s < n; ++s) {
      F16ToF32Scalar(v.f16[s], v_wide.data() + static_cast<size_t>(s) * hd, hd);
      v_rows[s] = v_wide.data() + static_cast<size_t>(s) * hd;
    }
    v.f32 = v_rows.data();
  }
  // K rows gathered back from kt ([hd][ldk]) so each score is DotF32Scalar of two rows.
  thread_local std::vector<float> k_rows;
  k_rows.resize(static_cast<size_t>(n) * hd);
  for (int s = 0; s < n; ++s)
    for (int d = 0; d < hd; ++d) k_rows[static_cast<size_t>(s) * hd + d] = kt[d * ldk + s];
  const float* k = k_rows.data();
  for (int i = 0; i < nq; ++i) {
    const int nv = std::min(n, n_valid[i]);
    if (nv <= 0) continue;
    const float* qi = q + static_cast<size_t>(i) * hd;
    float bmax = -INFINITY;
    for (int s = 0; s < nv; ++s) {
      scores[s] = DotF32Scalar(qi, k + static_cast<size_t>(s) * hd, hd) * scale;
      bmax = std::max(bmax, scores[s]);
    }
    const float m_new = std::max(m[i], bmax);
    const float corr = std::exp(m[i] - m_new);
    float* a = acc + static_cast<size_t>(i) * hd;
    for (int d = 0; d < hd; ++d) a[d] *= corr;
    float lsum = l[i] * corr;
    for (int s = 0; s < nv; ++s) {
      const float p = std::exp(scores[s] - m_new);
      lsum += p;
      AxpyF32Scalar(p, v.f32[s], a, hd);
    }
    m[i] = m_new;
    l[i] = lsum;
  }
}

}  // namespace

void UnpackBlock32(GgmlType type, const uint8_t* blk, int8_t q[32], float* d, float* m) {
  *m = 0;
  switch (type) {
    case GgmlType::kQ8_0: {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(blk);
      *d = HalfToF32(b->d);
      std::memcpy(q, b->qs, 32);
      return;
    }
    case GgmlType::kQ4_0: {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(blk);
      *d = HalfToF32(b->d);
      for (int i = 0; i < 16; ++i) {
        q[i] = static_cast<int8_t>((b->qs[i] & 0xF) - 8);
        q[i + 16] = static_cast<int8_t>((b->qs[i] >> 4) - 8);
      }
      return;
    }
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1: {
      const bool has_min = type == GgmlType::kQ5_1;
      const uint8_t* p = blk;
      uint16_t dh, mh = 0;
      std::memcpy(&dh, p, 2);
      p += 2;
      if (has_min) {
        std::memcpy(&mh, p, 2);
        p += 2;
      }
      uint32_t qh;
      std::memcpy(&qh, p, 4);
      p += 4;
      *d = HalfToF32(dh);
      *m = has_min ? HalfToF32(mh) : 0.0f;
      const int bias = has_min ? 0 : 16;
      for (int i = 0; i < 16; ++i) {
        q[i] = static_cast<int8_t>(((p[i] & 0xF) | (((qh >> i) & 1) << 4)) - bias);
        q[i + 16] = static_cast<int8_t>(((p[i] >> 4) | (((qh >> (i + 16)) & 1) << 4)) - bias);
      }
      return;
    }
    default:
      *d = 0;
      std::memset(q, 0, 32);
  }
}

void UnpackQ4KScales(const uint8_t* s, uint8_t sc[8], uint8_t mn[8]) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      sc[j] = s[j] & 63;
      mn[j] = s[j + 4] & 63;
    } else {
      sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
      mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
  }
}

void UnpackQ6K(const BlockQ6_K& b, int8_t q[kQK_K]) {
  const uint8_t* ql = b.ql;
  const uint8_t* qh = b.qh;
  for (int half = 0; half < 2; ++half) {
    int8_t* out = q + 128 * half;
    for (int l = 0; l < 32; ++l) {
      out[l] = static_cast<int8_t>(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
      out[l + 32] = static_cast<int8_t>(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
      out[l + 64] = static_cast<int8_t>(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
      out[l + 96] = static_cast<int8_t>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
    }
    ql += 64;
    qh += 32;
  }
}

void QuantizeActScalar(ActFormat fmt, const float* x, void* dst, int64_t n) {
  switch (fmt) {
    case ActFormat::kF32:
      std::memcpy(dst, x, n * sizeof(float));
      return;
    case ActFormat::kQ8A: {
      auto* out = static_cast<BlockQ8A*>(dst);
      for (int64_t b = 0; b < n / 32; ++b) {
        const float* v = x + 32 * b;
        float amax = 0;
        for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[i]));
        const float d = amax / 127.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int i = 0; i < 32; ++i) {
          out[b].qs[i] = static_cast<int8_t>(std::nearbyint(v[i] * id));
          sum += out[b].qs[i];
        }
        out[b].d = d;
        out[b].s = d * static_cast<float>(sum);
      }
      return;
    }
    case ActFormat::kQ8K: {
      auto* out = static_cast<BlockQ8_K*>(dst);
      for (int64_t b = 0; b < n / kQK_K; ++b) {
        const float* v = x + kQK_K * b;
        float amax = 0;
        for (int i = 0; i < kQK_K; ++i) amax = std::max(amax, std::fabs(v[i]));
        const float d = amax / 127.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        for (int i = 0; i < kQK_K; ++i) {
          out[b].qs[i] = static_cast<int8_t>(std::nearbyint(v[i] * id));
        }
        for (int j = 0; j < 16; ++j) {
          int s = 0;
          for (int i = 0; i < 16; ++i) s += out[b].qs[16 * j + i];
          out[b].bsums[j] = static_cast<int16_t>(s);
        }
        out[b].d = d;
      }
      return;
    }
  }
}

ActFormat ActFormatFor(GgmlType t) {
  switch (t) {
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kIQ4_NL:
      return ActFormat::kQ8A;
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K:
    case GgmlType::kQ3_K:
    case GgmlType::kQ5_K:
    case GgmlType::kIQ4_XS:
      return ActFormat::kQ8K;
    default:
      return ActFormat::kF32;
  }
}

size_t ActRowBytes(ActFormat f, int64_t n) {
  switch (f) {
    case ActFormat::kF32:
      return n * sizeof(float);
    case ActFormat::kQ8A:
      return (n / 32) * sizeof(BlockQ8A);
    case ActFormat::kQ8K:
      return (n / kQK_K) * sizeof(BlockQ8_K);
  }
  return 0;
}

void SwiGluScalar(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void KvRowsToKtScalar(const uint16_t* rows_f16, const float* rows_f32, int n_rows, int hd,
                      float* kt, int ldk) {
  for (int s = 0; s < n_rows; ++s)
    for (int d = 0; d < hd; ++d) {
      const size_t i = static_cast<size_t>(s) * hd + d;
      kt[static_cast<size_t>(d) * ldk + s] =
          rows_f16 != nullptr ? HalfToF32(rows_f16[i]) : rows_f32[i];
    }
}

int64_t ArgmaxF32Scalar(const float* x, int64_t n) {
  int64_t best = -1;
  float best_value = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    if (x[i] > best_value) {  // strict: the lowest index among equal maxima; NaN never wins
      best_value = x[i];
      best = i;
    }
  }
  return best;
}

const KernelTable& ScalarKernels() {
  static const KernelTable table = {"scalar",
                                    QuantizeActScalar,
                                    GemmScalar,
                                    F32ToF16Scalar,
                                    F16ToF32Scalar,
                                    KvRowsToKtScalar,
                                    DotF32Scalar,
                                    AxpyF32Scalar,
                                    AttnUpdateScalar,
                                    SwiGluScalar,
                                    DeltaRuleTokenScalar,
                                    ArgmaxF32Scalar,
                                    nullptr,
                                    nullptr};
  return table;
}

const KernelTable& Kernels() {
  static const KernelTable* chosen = [] {
    const char* force = std::getenv("KVSTASH_CPU_KERNELS");
    std::string f = force ? force : "";
    if (f == "scalar") return &ScalarKernels();
    if (f != "avx2") {
      if (const KernelTable* t = Avx512Kernels()) return t;
    }
    if (const KernelTable* t = Avx2Kernels()) return t;
    return &ScalarKernels();
  }();
  return *chosen;
}

}  // namespace kvstash::engine::cpu
