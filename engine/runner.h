// The forward pass over paged KV, written once against engine/backend.h.
//
// Prefill(seq, tokens) appends tokens to a sequence: it allocates pages as blocks fill, computes
// and stores K/V for every new position, and returns logits. The KV stored for a position is
// bit-identical however the prompt was split into Prefill calls (chunk sizes, block boundaries),
// which is what lets cached blocks stand in for recomputed ones.
//
// Forward(segments) is the batched form (ARCHITECTURE.md §6): one pass over rows from several
// sequences (decode rows and prefill chunks together), each segment attending only to its own
// pages, so concurrent decodes stream every weight byte once per step instead of once per
// sequence. Every kernel computes a row from that row's inputs alone, so the KV and logits of a
// row are bit-identical whatever else rode in the batch (tests/engine/batch_invariance_test.cc).
//
// Not thread-safe: one engine thread drives a Runner. The Model must outlive it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "engine/backend.h"
#include "engine/kv_pool.h"
#include "engine/model/model.h"

namespace kvstash::engine {

struct RunnerOptions {
  int n_threads = 0;      // 0 = all cores
  int n_ctx = 4096;       // max positions per sequence; 0 = the model's training context
  int block_tokens = 16;  // positions per KV block (page)
  KvDtype kv_dtype = KvDtype::kF16;
  int n_batch = 256;  // tokens per forward chunk during prefill (memory bound)
  int n_pages = 0;    // pool size; 0 = enough for one sequence of n_ctx
  // Gated DeltaNet prefill: 0 = token-by-token recurrence (default; the recurrent state is then
  // bit-identical however a prompt is split, which cached == cold relies on); N > 1 = the
  // chunked form over chunks of N tokens for segments longer than one token (agrees to float
  // rounding only; the split changes the rounding).
  int deltanet_chunk_tokens = 0;
  // CPU backend: compute from repacked copies of the weights its kernel table has a faster
  // layout for (x86: F16 and BF16 rows by 4; AVX2: Q4_K rows by 8; engine/cpu/repack.h). The
  // file's pages of each repacked matrix are given back as it is copied, so the process holds
  // about one copy; KVSTASH_CPU_REPACK=0 turns it off too.
  bool repack_weights = true;
};

enum class LogitsMode { kNone, kLast, kAll };

// One sequence's part of a batched forward: `tokens` are appended at positions
// seq->n_past().. of `seq`, whose pages for them must already be reserved (Runner::Reserve).
struct BatchSegment {
  Sequence* seq = nullptr;
  std::span<const int32_t> tokens;
  LogitsMode logits = LogitsMode::kNone;
  // Receives n_vocab floats (kLast) or tokens.size() * n_vocab (kAll); unused for kNone.
  float* out = nullptr;
};

class Runner {
 public:
  static Result<std::unique_ptr<Runner>> Create(const Model& model, const RunnerOptions& options);

  const Model& model() const { return model_; }
  const RunnerOptions& options() const { return options_; }
  const KvLayout& kv_layout() const { return pool_->layout(); }
  KvPool& pool() { return *pool_; }
  // f32 elements of a sequence's recurrent state (Sequence::recurrent; 0 for non-hybrid models).
  size_t RecurrentStateElems() const;
  Backend& backend() { return *backend_; }

  // Appends `tokens` to `seq`. With kLast, `logits` receives n_vocab floats for the last token;
  // with kAll, n_tokens * n_vocab (row per token). ResourceExhausted when the context or the
  // pool is full (the sequence is left unchanged), InvalidArgument for bad token ids.
  Status Prefill(Sequence& seq, std::span<const int32_t> tokens, LogitsMode mode,
                 std::vector<float>* logits);
  // One token; logits for it.
  Status Decode(Sequence& seq, int32_t token, std::vector<float>* logits) {
    return Prefill(seq, std::span<const int32_t>(&token, 1), LogitsMode::kLast, logits);
  }
  // Returns the sequence's pages to the pool and clears it.
  void Release(Sequence& seq);

  // Makes sure `seq` has pages for positions [0, n_positions): allocates the missing ones, all or
  // none. ResourceExhausted when the pool (after its reclaimer) cannot supply them or
  // n_positions exceeds the context size; the sequence is then unchanged.
  Status Reserve(Sequence& seq, int64_t n_positions);
  // Pages `seq` still needs to hold n_positions positions.
  int PagesNeeded(const Sequence& seq, int64_t n_positions) const;

  // Test hook: when set, Forward reports intermediate tensors of every layer, all rows of the
  // batch in order: "attn_norm", "mixer_out", "ffn_out", "l_out" [n][n_embd]; DeltaNet layers
  // "gdn_conv" [n][conv_dim] (after conv + SiLU) and "gdn_o" [n][value_dim] (recurrence output);
  // MoE layers "moe_router" [n][n_expert] logits, "moe_ids" and "moe_weights" [n][k],
  // "moe_routed" [n][n_embd] (routed experts only). f32.
  using TensorTap = std::function<void(std::string_view name, int layer, const float* data,
                                       int n_rows, int row_elems)>;
  void SetTensorTap(TensorTap tap) { tap_ = std::move(tap); }

  // One forward pass over every segment's rows (at most one segment per sequence; pages
  // reserved). Token ids are validated first; on error no sequence has changed. Each segment's
  // sequence grows by its tokens.
  Status Forward(std::span<const BatchSegment> segments);

 private:
  Runner(const Model& model, const RunnerOptions& options) : model_(model), options_(options) {}
  Status CheckTokens(std::span<const int32_t> tokens) const;
  // Token mixers of one layer for the n rows of the batch: read xn_, write the projection
  // output (before the residual add) to tmp_.
  void AttentionMixer(const LayerWeights& L, int kv_layer, std::span<const BatchSegment> segments,
                      int n);
  void DeltaNetMixer(const LayerWeights& L, int deltanet_index,
                     std::span<const BatchSegment> segments, int n);  // runner_deltanet.cc
  // FFNs: read xn_, write tmp_.
  void DenseFfn(const LayerWeights& L, int n);
  void MoeFfn(const LayerWeights& L, int n);  // runner_moe.cc
  void Tap(std::string_view name, int layer, const float* data, int n_rows, int row_elems) {
    if (tap_) tap_(name, layer, data, n_rows, row_elems);
  }

  const Model& model_;
  RunnerOptions options_;
  TensorTap tap_;
  int layer_ = 0;  // the layer Forward is in (for taps)
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<KvPool> pool_;
  std::vector<float> inv_freq_;
  // Activation scratch for the n rows of one forward (grown on demand, never shrunk).
  std::vector<float> x_;     // [n][n_embd] residual stream
  std::vector<float> xn_;    // [n][max(n_embd, n_head * head_dim)] normed input of a matmul
  std::vector<float> q_;     // [n][n_head * head_dim]
  std::vector<float> k_;     // [n][n_head_kv * head_dim]
  std::vector<float> v_;     // [n][n_head_kv * head_dim]
  std::vector<float> att_;   // [n][n_head * head_dim] attention output
  std::vector<float> tmp_;   // [n][n_embd] projection output before the residual add
  std::vector<float> gate_;  // [n][n_ff]
  std::vector<float> up_;    // [n][n_ff]
  std::vector<float> out_;   // [rows wanting logits][n_vocab]
  std::vector<float> qg_;    // [n][n_head][2][head_dim] qwen35 attn_q output: q, gate
  std::vector<AttentionJob> attn_jobs_;  // one per segment, for Backend::AttentionBatch
  // MoE (runner_moe.cc).
  std::vector<float> router_;     // [n][n_expert] router logits
  std::vector<int32_t> moe_ids_;  // [n][n_expert_used] chosen experts, best first
  std::vector<float> moe_w_;      // [n][n_expert_used] their renormalized weights
  // Routed rows in expert order (n * n_expert_used of them), then reused for the shared expert
  // (n rows); at least this large, never shrunk.
  std::vector<float> moe_x_;         // [rows][n_embd] gathered inputs
  std::vector<float> moe_g_;         // [rows][n_ff_exp] gate, then SwiGLU ([n][n_ff_shexp] shared)
  std::vector<float> moe_u_;         // [rows][n_ff_exp] up
  std::vector<float> moe_y_;         // [rows][n_embd] expert outputs
  std::vector<int32_t> moe_rows_;    // [n * n_expert_used] (token * k + slot) grouped by expert
  std::vector<int32_t> moe_pos_;     // [n * n_expert_used] inverse: row of (token * k + slot)
  std::vector<MatMulJob> moe_jobs_;  // one layer's expert products (MoeFfn)
  // Gated DeltaNet (runner_deltanet.cc).
  std::vector<float> gdn_qkv_;      // [n][conv_dim] q | k | v, conv applied in place
  std::vector<float> gdn_z_;        // [n][value_dim] output gate
  std::vector<float> gdn_alpha_;    // [n][n_v_heads]
  std::vector<float> gdn_beta_;     // [n][n_v_heads]
  std::vector<float> gdn_o_;        // [n][value_dim] recurrence output, then gated norm
  std::vector<int32_t> tokens_;     // [n] every row's token id
  std::vector<int32_t> positions_;  // [n] every row's absolute position
};

}  // namespace kvstash::engine
