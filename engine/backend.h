// The compute interface the forward pass (engine/runner.cc) is written against, once, for every
// backend (ARCHITECTURE.md §6). The CPU backend (engine/cpu/) is the oracle; a CUDA backend
// (engine/cuda/, built only when nvcc is found) implements the same calls on device buffers.
//
// Buffers are row-major f32 activations [n_tok][dim] unless stated. KV lives in a KvPool whose
// pages follow KvLayout. A backend instance is used by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "engine/kv_pool.h"
#include "engine/model/model.h"

namespace kvstash::engine {
namespace cpu {
struct KernelTable;
}

struct RopeParams {
  int n_rot = 0;
  int head_dim = 0;
  RopeStyle style = RopeStyle::kNormal;
  const float* inv_freq = nullptr;  // [n_rot / 2] per-pair frequency, scaling folded in
};

// One product of Backend::MatMulBatch: y [n_tok][w->n_out] = x [n_tok][w->n_in] times w^T.
struct MatMulJob {
  const WeightMatrix* w;
  const float* x;
  int n_tok;
  float* y;
};

// One sequence's part of Backend::AttentionBatch: as Backend::Attention's arguments.
struct AttentionJob {
  const Sequence* seq;
  int pos0;
  int n_tok;
  const float* q;
  float* out;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual int n_threads() const = 0;

  // y[t][o] = dot(w row o, x[t]) for t < n_tok, o < w.n_out.
  virtual void MatMul(const WeightMatrix& w, const float* x, int n_tok, float* y) = 0;
  // y[t] = x[t] / rms(x[t]) * weight, per row of `dim`. y may alias x.
  virtual void RmsNorm(const float* x, const float* weight, int n_tok, int dim, float eps,
                       float* y) = 0;
  // Rotates n_heads heads of head_dim in each row of x ([n_tok][n_heads * head_dim]) in place
  // for the given absolute positions.
  virtual void Rope(float* x, int n_tok, int n_heads, const int32_t* positions,
                    const RopeParams& p) = 0;
  // Writes K and V rows ([n_tok][n_kv_heads * head_dim]) for positions pos0.. of a sequence
  // into its pages (converted to the KV dtype).
  virtual void StoreKv(KvPool& pool, const Sequence& seq, int layer, int pos0, int n_tok,
                       const float* k, const float* v) = 0;
  // Causal attention of n_tok queries at positions pos0.. over positions [0, pos0 + t] of seq.
  // q: [n_tok][n_head * head_dim]; out: same shape.
  virtual void Attention(const KvPool& pool, const Sequence& seq, int layer, int pos0, int n_tok,
                         int n_head, const float* q, float* out) = 0;
  // Attention for several sequences of one batch (each job as Attention), its work spread over
  // the backend's threads as one job: N decoding sequences are N small attentions per layer.
  // Each out is exactly what Attention gives.
  virtual void AttentionBatch(const KvPool& pool, int layer, int n_head,
                              std::span<const AttentionJob> jobs) {
    for (const AttentionJob& j : jobs)
      Attention(pool, *j.seq, layer, j.pos0, j.n_tok, n_head, j.q, j.out);
  }
  // out[i] = silu(gate[i]) * up[i].
  virtual void SwiGlu(const float* gate, const float* up, int64_t n, float* out) = 0;
  // Every job's MatMul, in any order and with its work spread over the backend's threads as one
  // job (the MoE experts of a layer: hundreds of small products that each would be too small to
  // split well). Each y is exactly what MatMul gives; no y may alias another job's x or y.
  virtual void MatMulBatch(std::span<const MatMulJob> jobs) {
    for (const MatMulJob& j : jobs) MatMul(*j.w, j.x, j.n_tok, j.y);
  }
  // y[i] += x[i].
  virtual void Add(const float* x, int64_t n, float* y) = 0;
  // x[i] *= sigmoid(gate[i]) (the output gate of qwen35 attention).
  virtual void SigmoidMul(const float* gate, int64_t n, float* x) = 0;

  // MoE router: per token, softmax over n_expert logits ([n_tok][n_expert]), the top k experts
  // by probability (descending; ties to the lower id) into ids [n_tok][k], and their
  // probabilities renormalized to sum 1 (the sum clamped below at 2^-14 as llama.cpp does) into
  // weights [n_tok][k].
  virtual void MoeRoute(const float* logits, int n_tok, int n_expert, int k, int32_t* ids,
                        float* weights) = 0;

  // Depthwise causal conv (kernel d_conv, no bias) then SiLU over n_tok consecutive tokens of one
  // sequence: x [n_tok][channels] in place, conv_w [channels][d_conv], state [d_conv - 1]
  // [channels] the inputs before x[0] (oldest first), updated to the last d_conv - 1 inputs.
  virtual void CausalConvSilu(float* x, int n_tok, int channels, const float* conv_w, int d_conv,
                              float* state) = 0;

  // Gated DeltaNet recurrence over n_tok consecutive tokens of one sequence (docs/engine.md).
  // qkv [n_tok][2 * n_k_heads * dk + n_v_heads * dv]: q | k | v after the conv; alpha, beta
  // [n_tok][n_v_heads] raw projections; dt_bias, a [n_v_heads] (a = -exp(A_log)); state
  // [n_v_heads][dv][dk] f32, updated in place; out [n_tok][n_v_heads * dv]. Per token: q and k
  // are L2-normalized per head (x / sqrt(sum x^2 + eps)), q scaled by 1/sqrt(dk); value head h
  // uses key head h % n_k_heads; g = softplus(alpha + dt_bias) * a, b = sigmoid(beta);
  //   S <- exp(g) S;  d = b (v - S k);  S <- S + d k^T;  o = S q
  // chunk_tokens <= 1: token by token, so splitting the tokens across calls gives bit-identical
  // results. chunk_tokens > 1: the chunked (WY) form over chunks of that many tokens counted from
  // the first token of the call; equal to float rounding only.
  virtual void GatedDeltaNet(const float* qkv, const float* alpha, const float* beta,
                             const float* dt_bias, const float* a, int n_tok, int n_k_heads,
                             int n_v_heads, int dk, int dv, float eps, int chunk_tokens,
                             float* state, float* out) = 0;

  // Token embedding rows: out[t] = row tokens[t] of w, dequantized.
  virtual Status Embed(const WeightMatrix& w, std::span<const int32_t> tokens, float* out) = 0;

  // Called once with the model before the first forward pass: a backend may prepare copies of
  // its weights in the layout its kernels compute fastest from (the CPU backend's repacked
  // F16 / BF16 and AVX2 Q4_K, engine/cpu/repack.h). Results must not depend on it beyond float
  // rounding.
  virtual void PrepareWeights(const Model& /*model*/) {}
  // Bytes of the copies PrepareWeights made (0: the weights are used as the file has them).
  virtual size_t prepared_weight_bytes() const { return 0; }
};

// The CPU backend with n_threads workers (0 = all cores). repack_weights: let PrepareWeights
// repack the matrices the kernel table has a faster layout for (it also skips them when their
// copy would not fit in half of MemAvailable, or when KVSTASH_CPU_REPACK=0 is set).
// table: a kernel table to use instead of the best one for this CPU (cpu::Kernels()).
std::unique_ptr<Backend> CreateCpuBackend(int n_threads, bool repack_weights = true,
                                          const cpu::KernelTable* table = nullptr);

}  // namespace kvstash::engine
