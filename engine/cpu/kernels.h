// CPU compute kernels behind a dispatch table chosen once at startup from the CPU's features
// (AVX-512 VNNI, AVX2+FMA+F16C, or portable scalar). All tables compute the same functions;
// results differ between tables only by float rounding.
//
// Determinism contract (prefix invariance): for a given table, the value written for one
// (weight row, token) pair depends only on that row and that token's activations — never on how
// many tokens or rows were computed in the same call. Every dot product accumulates its blocks
// in order in one accumulator whatever the tile shape.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/gguf/ggml_types.h"

namespace kvstash::engine::cpu {

// Activation block for dot products with the 32-element quant types.
struct BlockQ8A {
  float d;  // scale
  float s;  // d * sum(qs), for types with a min (Q5_1)
  int8_t qs[32];
};
static_assert(sizeof(BlockQ8A) == 40);

// What a weight type's activations are converted to before the dot products.
enum class ActFormat { kF32, kQ8A, kQ8K };
ActFormat ActFormatFor(GgmlType weight_type);
// Bytes of one converted activation row of n elements.
size_t ActRowBytes(ActFormat f, int64_t n);

// The value rows of one attn_update call: row s at f16[s] (widened as it is read) or at f32[s];
// exactly one of the two is set. Rows come one by one because a key block spans pages.
struct AttnValues {
  const uint16_t* const* f16 = nullptr;
  const float* const* f32 = nullptr;
};

struct KernelTable {
  const char* name;
  // Converts one f32 row of n elements into `fmt` at dst.
  void (*quantize_act)(ActFormat fmt, const float* x, void* dst, int64_t n);
  // y[t * ldy + r] = dot(weight row r, activation row t) for r < n_rows, t < n_tok.
  // w: first row, w_stride bytes between rows; x: first converted activation row, x_stride bytes
  // between rows; n: row length in elements.
  void (*gemm)(GgmlType type, const uint8_t* w, size_t w_stride, int n_rows, const uint8_t* x,
               size_t x_stride, int n_tok, int64_t n, float* y, size_t ldy);
  // Converts n f32 values to f16 / from f16.
  void (*f32_to_f16)(const float* x, uint16_t* y, int64_t n);
  void (*f16_to_f32)(const uint16_t* x, float* y, int64_t n);
  // K rows of a page (n_rows rows of hd, f16 in rows_f16 or else f32 in rows_f32) transposed
  // into columns of kt: kt[d * ldk + s] = row s, dim d. May write up to 15 further columns as
  // zero (whole register blocks): the caller leaves room and fills runs in column order.
  void (*kv_rows_to_kt)(const uint16_t* rows_f16, const float* rows_f32, int n_rows, int hd,
                        float* kt, int ldk);
  // sum_i a[i] * b[i] in f32 (n arbitrary).
  float (*dot_f32)(const float* a, const float* b, int64_t n);
  // y[i] += a * x[i].
  void (*axpy_f32)(float a, const float* x, float* y, int64_t n);
  // One step of online-softmax attention: nq query vectors q [nq][hd] against n keys given
  // transposed, kt [hd][ldk] (kt[d * ldk + s] = key s, dim d; ldk >= n rounded up to 16, and
  // the columns from n up to that rounding zero: they are read as whole 8- or 16-key groups),
  // and n value rows of hd (f32 or f16, the same result either way), where query i sees only its
  // first n_valid[i] keys; n <= 64. Updates the running max m [nq], sum l [nq] and unnormalized
  // output acc [nq][hd]. scores: scratch of n floats. Each query's update depends only on its
  // own inputs (tile-shape independent). f16 rows are widened in registers when the queries
  // take one pass over V (at most 6: a decode step of a GQA group up to 6) and into a scratch
  // copy once otherwise.
  void (*attn_update)(const float* q, int nq, const int* n_valid, const float* kt, int ldk,
                      AttnValues v, int n, int hd, float scale, float* m, float* l, float* acc,
                      float* scores);
  // out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + e^-gate[i]) * up[i] (out may alias gate).
  void (*swiglu)(const float* gate, const float* up, int64_t n, float* out);
  // One token of the gated delta rule for one value head (engine/backend.h GatedDeltaNet):
  // s [dv][dk] (row j = column j of S over the key index), q, k [dk], v, o [dv]. Per row j:
  //   s_j *= eg;  d = bt * (v[j] - dot_f32(s_j, k));  axpy_f32(d, k, s_j);  o[j] = dot_f32(s_j, q)
  // with exactly this table's dot_f32/axpy_f32 rounding, so results equal that composition bit
  // for bit; the SIMD tables interleave rows so their dot-product chains overlap.
  void (*delta_rule_token)(float* s, int dv, int dk, const float* q, const float* k, const float* v,
                           float eg, float bt, float* o);
  // Index of the first maximum of x[0..n) (ties: the lowest index), NaN skipped; -1 when no
  // value is above -inf. Greedy sampling's argmax over a vocabulary-sized logits row.
  int64_t (*argmax_f32)(const float* x, int64_t n);
  // Repacked weights (engine/cpu/repack.h); both nullptr where the table computes every type
  // from the file's row-major layout. repack_rows: the rows of one repacked group for `type`
  // with rows of n elements, 0 when that type is used as it is. gemm_repacked: as gemm, over
  // n_rows rows (a multiple of the group) repacked by RepackWeights, w their first group.
  int (*repack_rows)(GgmlType type, int64_t n);
  void (*gemm_repacked)(GgmlType type, const uint8_t* w, int n_rows, const uint8_t* x,
                        size_t x_stride, int n_tok, int64_t n, float* y, size_t ldy);
};

// The best table for this CPU (can be forced with KVSTASH_CPU_KERNELS=scalar|avx2|avx512).
const KernelTable& Kernels();
const KernelTable& ScalarKernels();
// nullptr when not compiled in or not supported by this CPU.
const KernelTable* Avx2Kernels();
const KernelTable* Avx512Kernels();

}  // namespace kvstash::engine::cpu
