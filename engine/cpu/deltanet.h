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

// Per token, the L2-normalized q (times 1/sqrt(dk)) and k of every key head, the decay
// exp(softplus(alpha + dt_bias) * a) and sigmoid(beta) of every value head:
// qn, kn [n_tok][n_k_heads * dk]; decay, b [n_tok][n_v_heads].
void DeltaNetPrepare(const float* qkv, const float* alpha, const float* beta, const float* dt_bias,
                     const float* a, int n_tok, int n_k_heads, int n_v_heads, int dk, int dv,
                     float eps, float* qn, float* kn, float* decay, float* b);

// The recurrence for value head h over all tokens. v rows are read from qkv; out [n_tok]
// [n_v_heads * dv]; state_h [dv][dk] of this head.
void DeltaRuleHead(const KernelTable& kt, const float* qkv, const float* qn, const float* kn,
                   const float* decay, const float* b, int n_tok, int n_k_heads, int n_v_heads,
                   int dk, int dv, int h, float* state_h, float* out);

}  // namespace kvstash::engine::cpu
