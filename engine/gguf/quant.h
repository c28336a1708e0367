// Scalar reference conversions for every supported weight type: fp16/bf16 <-> f32, dequantize a
// row, quantize a row. These are the definitions the SIMD kernels in engine/cpu/ are checked
// against, and what kvstash-mkmodel writes files with. Pure functions; thread-safe.
#pragma once

#include <cstdint>

#include "base/status.h"
#include "engine/gguf/ggml_types.h"

namespace kvstash::engine {

float Fp16ToFp32(uint16_t h);
uint16_t Fp32ToFp16(float f);  // round to nearest even, inf/nan preserved
float Bf16ToFp32(uint16_t h);
uint16_t Fp32ToBf16(float f);  // round to nearest even, nan preserved

// Dequantizes `n` elements (a multiple of the type's block size) of type `t` at `src` into `dst`.
// InvalidArgument for unsupported types or a bad `n`.
Status DequantizeRow(GgmlType t, const void* src, float* dst, int64_t n);

// Quantizes `n` floats into `dst` (RowBytes(t, n) bytes). Reference quantizers: round to nearest
// with per-block scales (and for K-quants per-sub-block scales/mins searched to minimise error).
Status QuantizeRow(GgmlType t, const float* src, void* dst, int64_t n);

}  // namespace kvstash::engine
