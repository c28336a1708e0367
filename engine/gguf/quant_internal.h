// Helpers shared by the scalar quantizers in quant.cc and quant_extra.cc (not part of the
// engine's interface). Pure functions; thread-safe.
#pragma once

#include <bit>
#include <cstdint>

#include "engine/gguf/ggml_types.h"

namespace kvstash::engine {

// The dequantizers and quantizers of Q3_K, Q5_K, IQ4_NL and IQ4_XS (quant_extra.cc). They
// return false for any other type; `n` has been checked against the type's block size.
bool DequantizeRowExtra(GgmlType t, const void* src, float* dst, int64_t n);
bool QuantizeRowExtra(GgmlType t, const float* src, void* dst, int64_t n);

namespace quant_internal {

// Round to nearest (ties to even) by the float magic-number trick ggml uses: adding 1.5 * 2^23
// pushes the integer part into the low mantissa bits. Valid for |v| < 2^22, which holds for
// every code and scale ratio computed here; much cheaper than a libm call per element.
inline int NearestInt(float v) {
  const float shifted = v + 12582912.0f;
  return static_cast<int>(std::bit_cast<uint32_t>(shifted) & 0x007FFFFF) - 0x00400000;
}

// Q4_K and Q5_K pack 8 six-bit scales and 8 six-bit mins into 12 bytes: sub-blocks 0..3 keep
// theirs in the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7 keep the low 4
// bits in the nibbles of bytes 8..11 and the high 2 bits in the top bits of bytes 0..7.
inline void ScaleMinK4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Signed value of largest magnitude in x[0..n).
float SignedAbsMax(const float* x, int n);
// Fits x[i] ≈ scale * L[i] - min_out with L in [0, nmax], min_out >= 0, n <= 32 (the affine
// sub-blocks of Q4_K/Q5_K). Returns scale; writes the codes and min_out.
float FitAffine(const float* x, int n, int nmax, uint8_t* L, float* min_out);
// Fits x[i] ≈ scale * l[i] with l in [-nmax, nmax-1], n <= 32 (Q6_K/Q3_K sub-blocks); returns the
// best signed scale.
float FitSymmetric(const float* x, int n, int nmax);

}  // namespace quant_internal
}  // namespace kvstash::engine
