// CPU kernels of the Gated DeltaNet layer (qwen35, qwen35moe): the short causal conv with its
// state and the gated delta-rule recurrence. Contracts are those of engine/backend.h
// (CausalConvSilu, GatedDeltaNet); these functions do one slice of the work so the backend can
// spread channels or heads over its threads. Vector work goes through the kernel table, so the
// SIMD path is the one chosen at startup (engine/cpu/kernels.h) and tests can force each.
#pragma once

#include <cstdint>

#include "engine/cpu/kernels.h"

namespace kvstash::engine::cpu {

// Channels [c0, c1) of CausalConvSilu: x [n_tok][channels] in place, conv_w [channels][d_conv],
// state [d_conv - 1][channels].
void CausalConvSiluChannels(float* x, int n_tok, int channels, const float* conv_w, int d_conv,
                            float* state, int c0, int c1);

// Per token, the L2-normalized q (times 1/sqrt(dk)) and k of every key head, the log-decay
// g = softplus(alpha + dt_bias) * a (<= 0) and sigmoid(beta) of every value head:
// qn, kn [n_tok][n_k_heads * dk]; g, b [n_tok][n_v_heads].
void DeltaNetPrepare(const float* qkv, const float* alpha, const float* beta, const float* dt_bias,
                     const float* a, int n_tok, int n_k_heads, int n_v_heads, int dk, int dv,
                     float eps, float* qn, float* kn, float* g, float* b);

// One value head's inputs laid out as DeltaNetPrepare and the backend leave them: v rows are
// read from qkv (row stride 2 * n_k_heads * dk + n_v_heads * dv), out rows have stride
// n_v_heads * dv; value head h uses key head h % n_k_heads.
struct DeltaHeadArgs {
  const float* qkv;
  const float* qn;
  const float* kn;
  const float* g;
  const float* b;
  int n_tok, n_k_heads, n_v_heads, dk, dv, h;
};

// The recurrence token by token. state_h [dv][dk] of this head (row j = column j of S over the
// key index), updated; out [n_tok][n_v_heads * dv].
void DeltaRuleHead(const KernelTable& kt, const DeltaHeadArgs& a, float* state_h, float* out);

// The same result computed chunk by chunk (chunk_tokens per chunk, counted from the first token
// of the call): within a chunk, with cumulative log-decay G, A[i][j] = b_i (k_i.k_j) e^(G_i-G_j)
// (j < i), T = (I + A)^-1, U = T (b v), W = T (b e^G k); V' = U - W S;
// O = (e^G q) S + tril(q k^T e^(G_i-G_j)) V'; S <- e^(G_last) S + (e^(G_last-G) k)^T V'.
// Agrees with DeltaRuleHead to float rounding (tests/engine/cpu/deltanet_test.cc), not bit for
// bit, and its rounding depends on where chunks start.
void DeltaRuleHeadChunked(const KernelTable& kt, const DeltaHeadArgs& a, int chunk_tokens,
                          float* state_h, float* out);

}  // namespace kvstash::engine::cpu
