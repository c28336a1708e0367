// Repacked weight layouts: a copy of a weight matrix in an order a kernel table computes faster
// from than the file's row-major one (docs/engine.md "AVX2 Q4_K: rows interleaved by 8"). The
// CPU backend makes the copy once per matrix (KernelTable::repack) and keeps the file's bytes
// for everything else (the embedding lookup of a tied output matrix).
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/gguf/ggml_types.h"

namespace kvstash::engine::cpu {

// One 256-element Q4_K super-block of 8 consecutive rows. The values are those of the 8
// BlockQ4_K, only regrouped: the scales and mins unpacked to bytes (Q4KScales), and the quant
// bytes interleaved so that one 256-bit vector holds the same 4 bytes of all 8 rows.
struct BlockQ4Kx8 {
  ggml_half d[8];     // row r's d
  ggml_half dmin[8];  // row r's dmin
  // Sub-block pair k (sub-blocks 2k, 2k + 1): bytes 0-7 the scales of sub-block 2k of rows 0-7,
  // 8-15 those of 2k + 1, 16-23 the mins of 2k, 24-31 the mins of 2k + 1.
  uint8_t sm[4][32];
  // qs[k][v]: bytes 4r..4r+3 are bytes 32k + 4v .. 32k + 4v + 3 of row r's qs (low nibbles:
  // elements 4v..4v+3 of sub-block 2k, high nibbles: of sub-block 2k + 1).
  uint8_t qs[4][8][32];
};
static_assert(sizeof(BlockQ4Kx8) == 1184);

inline constexpr int kQ4Kx8Rows = 8;

// Bytes of n_rows (a multiple of 8) Q4_K rows of n elements (a multiple of 256) repacked.
inline size_t Q4Kx8Bytes(int64_t n_rows, int64_t n) {
  return static_cast<size_t>(n_rows / kQ4Kx8Rows) * static_cast<size_t>(n / kQK_K) *
         sizeof(BlockQ4Kx8);
}

// Repacks rows [g * 8, g * 8 + 8) for g in [g0, g1) of a row-major Q4_K matrix (w: row 0,
// w_stride bytes between rows, nb blocks per row) into out: group g's block b at out[g * nb + b].
void RepackQ4Kx8(const uint8_t* w, size_t w_stride, int64_t nb, int64_t g0, int64_t g1,
                 BlockQ4Kx8* out);
// The inverse for one block: row r's BlockQ4_K (bytes equal to the original).
void UnrepackQ4Kx8(const BlockQ4Kx8& in, int r, BlockQ4_K* out);

// 16-bit float rows (F16, BF16) repacked by 4: per group of 4 consecutive rows, the rows'
// elements in chunks of 16, row by row within each chunk: chunk c of row r (elements 16c ..
// 16c + 15) at bytes (4c + r) * 32 of the group. The 4 x 16 values a tile reads at one k step are
// then one run of 128 bytes and a group is one sequential stream (decode reads it once per
// token), where row-major rows are 4 streams a row apart. Only the order changes, so every
// (row, token) dot product is the one the row-major tiles compute, bit for bit
// (docs/engine.md "16-bit float rows repacked by 4").
inline constexpr int kHalfx4Rows = 4;
inline constexpr int kHalfx4Chunk = 16;
// Repacks rows [g * 4, g * 4 + 4) for g in [g0, g1) of a row-major matrix of 2-byte elements
// (w: row 0, w_stride bytes between rows, n elements per row, a multiple of 16) into out: group
// g at out + g * 4 * n * 2.
void RepackHalfx4(const uint8_t* w, size_t w_stride, int64_t n, int64_t g0, int64_t g1,
                  uint8_t* out);

// Any repacked type (KernelTable::repack_rows says which): bytes of n_rows repacked rows of n
// elements, and the repacking of groups [g0, g1) of `rows_per_group` rows (independent
// ranges may be repacked in parallel).
size_t RepackedBytes(GgmlType type, int64_t n_rows, int64_t n);
void RepackWeights(GgmlType type, const uint8_t* w, size_t w_stride, int64_t n, int64_t g0,
                   int64_t g1, uint8_t* dst);
// Row `row` of a repacked matrix (packed: its first group) back in the file's layout at out.
void UnrepackRow(GgmlType type, const uint8_t* packed, int64_t n, int64_t row, uint8_t* out);

// The reference product over a repacked group (scalar, the same arithmetic per (row, token)
// as the SIMD tiles: the exact integer sums of a block, then per block
// acc = fma(d * dx, sum, acc), acc = fma(-(dmin * dx), min_sum, acc)): y[t * ldy + r] for the
// group's 8 rows r and n_tok Q8_K activation rows.
void GemvQ4Kx8Scalar(const BlockQ4Kx8* w, int64_t nb, const uint8_t* x, size_t x_stride, int n_tok,
                     float* y, size_t ldy);

}  // namespace kvstash::engine::cpu
