// Inline scalar fp16/bf16 <-> f32 conversions for kernels (engine/quant.h has the out-of-line
// reference versions; these are bit-identical and header-only so hot loops can inline them).
#pragma once

#include <cstdint>
#include <cstring>

namespace kvstash::engine::cpu {

static inline float BitsToF32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline uint32_t F32ToBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

static inline float HalfToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  if (exp == 0) {
    if (mant == 0) return BitsToF32(sign);
    // Subnormal: value = mant * 2^-24.
    float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31) return BitsToF32(sign | 0x7F800000 | (mant << 13));
  return BitsToF32(sign | ((exp + 112) << 23) | (mant << 13));
}

static inline uint16_t F32ToHalf(float f) {
  uint32_t x = F32ToBits(f);
  const uint32_t sign = (x >> 16) & 0x8000;
  x &= 0x7FFFFFFF;
  if (x >= 0x7F800000) return static_cast<uint16_t>(sign | 0x7C00 | (x > 0x7F800000 ? 0x200 : 0));
  if (x >= 0x477FF000) return static_cast<uint16_t>(sign | 0x7C00);  // rounds to inf
  if (x < 0x38800000) {
    // Result is subnormal or zero: round(value / 2^-24) to nearest even.
    float v = BitsToF32(x) * 16777216.0f;
    uint32_t m = static_cast<uint32_t>(v);
    float rem = v - static_cast<float>(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1))) ++m;
    return static_cast<uint16_t>(sign | m);
  }
  // Normal: rebias exponent, round mantissa to nearest even.
  uint32_t r = x + 0xC8000FFF + ((x >> 13) & 1);  // -(112 << 23) + 0xFFF + lsb
  return static_cast<uint16_t>(sign | (r >> 13));
}

static inline float Bf16ToF32(uint16_t h) { return BitsToF32(static_cast<uint32_t>(h) << 16); }

}  // namespace kvstash::engine::cpu
