// Tensor element types as GGUF stores them (the numbering is ggml's and is part of the file
// format), with their block geometry and the packed block structs of the quantized types.
// Byte layouts follow the GGUF/ggml definitions exactly so files from other tools load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace kvstash::engine {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ4_NL = 20,
  kIQ4_XS = 23,
  kBF16 = 30,
};

struct GgmlTypeTraits {
  std::string_view name;  // "q4_K"
  uint32_t block_elems;   // elements per block (1 for float types)
  uint32_t block_bytes;   // bytes per block
  bool supported;         // kvstash can compute with weights of this type
};

// Traits of a type id read from a file; nullopt for ids ggml does not define (or defines but
// kvstash does not know the geometry of).
std::optional<GgmlTypeTraits> TraitsOf(uint32_t type_id);
inline GgmlTypeTraits Traits(GgmlType t) { return *TraitsOf(static_cast<uint32_t>(t)); }
// Parses "f32", "f16", "bf16", "q8_0", "q4_k", "q6_k", "q4_0", "q5_0", "q5_1", "q3_k", "q5_k",
// "iq4_nl", "iq4_xs" (case-insensitive).
std::optional<GgmlType> ParseGgmlType(std::string_view name);
// Bytes of a row of `n_elems` elements (n_elems must be a multiple of the block size).
inline size_t RowBytes(GgmlType t, int64_t n_elems) {
  const GgmlTypeTraits tr = Traits(t);
  return static_cast<size_t>(n_elems / tr.block_elems) * tr.block_bytes;
}

using ggml_half = uint16_t;  // IEEE fp16 bits
using ggml_bf16 = uint16_t;  // bfloat16 bits

constexpr int kQK4_0 = 32;
constexpr int kQK4_1 = 32;
constexpr int kQK5_0 = 32;
constexpr int kQK5_1 = 32;
constexpr int kQK8_0 = 32;
constexpr int kQK_K = 256;
constexpr int kKScaleSize = 12;
constexpr int kQK4_NL = 32;

#pragma pack(push, 1)
// x[i] = (q[i] - 8) * d; q[i] for i < 16 is the low nibble of qs[i], for i >= 16 the high
// nibble of qs[i - 16].
struct BlockQ4_0 {
  ggml_half d;
  uint8_t qs[kQK4_0 / 2];
};
// x[i] = q[i] * d + m (nibbles as Q4_0).
struct BlockQ4_1 {
  ggml_half d;
  ggml_half m;
  uint8_t qs[kQK4_1 / 2];
};
// x[i] = (q[i] - 16) * d, q = nibble | (bit i of qh) << 4.
struct BlockQ5_0 {
  ggml_half d;
  uint8_t qh[4];
  uint8_t qs[kQK5_0 / 2];
};
// x[i] = q[i] * d + m, q as Q5_0.
struct BlockQ5_1 {
  ggml_half d;
  ggml_half m;
  uint8_t qh[4];
  uint8_t qs[kQK5_1 / 2];
};
// x[i] = qs[i] * d.
struct BlockQ8_0 {
  ggml_half d;
  int8_t qs[kQK8_0];
};
// 8 sub-blocks of 32 with 6-bit scales and mins packed in `scales`;
// x = d * sc * q - dmin * m.
struct BlockQ4_K {
  ggml_half d;
  ggml_half dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK_K / 2];
};
// 16 sub-blocks of 16 with int8 scales; x = d * sc * (q - 32), q 6 bits = 4 low (ql) + 2 high (qh).
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  ggml_half d;
};
// 16 sub-blocks of 16 with 6-bit signed scales (stored +32) packed in `scales`; x = d * (sc - 32)
// * q, q 3 bits in [-4, 3] = 2 low bits (qs) + a high bit (hmask; clear means subtract 4).
// Element 128h + 32j + 16k + l: low bits (qs[32h + 16k + l] >> 2j) & 3, high bit j + 4h of
// hmask[16k + l], scale 8h + 2j + k.
struct BlockQ3_K {
  uint8_t hmask[kQK_K / 8];
  uint8_t qs[kQK_K / 4];
  uint8_t scales[kKScaleSize];
  ggml_half d;
};
// As Q4_K plus a fifth bit per element: element 64g + l (l < 32) has bit 2g of qh[l], element
// 64g + 32 + l bit 2g + 1; x = d * sc * q - dmin * m with q in [0, 31].
struct BlockQ5_K {
  ggml_half d;
  ggml_half dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
// Non-linear 4-bit: x[i] = d * kIq4nlValues[q[i]], nibbles ordered as Q4_0.
struct BlockIQ4_NL {
  ggml_half d;
  uint8_t qs[kQK4_NL / 2];
};
// IQ4_NL codes in 8 sub-blocks of 32 with 6-bit scales (4 low bits in scales_l, 2 high in
// scales_h): x = d * (ls - 32) * kIq4nlValues[q]; each sub-block's nibbles ordered as Q4_0.
struct BlockIQ4_XS {
  ggml_half d;
  uint16_t scales_h;
  uint8_t scales_l[kQK_K / 64];
  uint8_t qs[kQK_K / 2];
};
// Activation format for dot products with K-quants (not stored in files by kvstash).
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};
#pragma pack(pop)

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);
static_assert(sizeof(BlockQ3_K) == 110);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockIQ4_NL) == 18);
static_assert(sizeof(BlockIQ4_XS) == 136);

// The 16 levels of the IQ4_NL / IQ4_XS codes (ggml's kvalues_iq4nl).
inline constexpr int8_t kIq4nlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

}  // namespace kvstash::engine
