// Helpers shared by the kernel tables (not part of the engine's interface).
#pragma once

#include <cstdint>

#include "engine/cpu/kernels.h"
#include "engine/gguf/ggml_types.h"

namespace kvstash::engine::cpu {

// Unpacks a 32-element block of Q8_0/Q4_0/Q5_0/Q5_1 into signed quants with scale d and min m
// (x = q*d + m; m is 0 for the symmetric types).
void UnpackBlock32(GgmlType type, const uint8_t* blk, int8_t q[32], float* d, float* m);
// Q4_K: the 8 six-bit scales and mins.
void UnpackQ4KScales(const uint8_t* scales12, uint8_t sc[8], uint8_t mn[8]);
// Q6_K: 256 signed quants in [-32, 31].
void UnpackQ6K(const BlockQ6_K& b, int8_t q[kQK_K]);
// Q3_K: 256 signed quants in [-4, 3] and the 16 signed sub-block scales.
void UnpackQ3K(const BlockQ3_K& b, int8_t q[kQK_K], int8_t sc[16]);
// Q5_K: 256 unsigned quants in [0, 31].
void UnpackQ5K(const BlockQ5_K& b, uint8_t q[kQK_K]);
// Scalar dot product of one weight row of Q3_K, Q5_K, IQ4_NL or IQ4_XS with a converted
// activation row (kernels_kquant_extra_scalar.cc); NaN for other types.
float DotRowScalarExtra(GgmlType type, const uint8_t* w, const uint8_t* x, int64_t n);
void QuantizeActScalar(ActFormat fmt, const float* x, void* dst, int64_t n);

}  // namespace kvstash::engine::cpu
