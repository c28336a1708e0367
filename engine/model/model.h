// A loaded model: its configuration read from GGUF metadata and views of its weights, which stay
// in the mmapped file (quantized weights are used in place, never dequantized to a full copy;
// only 1-D tensors — norms, biases — are converted to owned f32 vectors).
// Immutable after Load(); thread-safe for concurrent readers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/gguf/ggml_types.h"
#include "engine/gguf/gguf.h"

namespace kvstash::engine {

enum class Arch { kLlama, kQwen2, kQwen3, kQwen3Moe, kQwen35, kQwen35Moe };
// What mixes the tokens of a layer: softmax attention over the paged KV, or a Gated DeltaNet
// (linear attention with a per-sequence recurrent state; qwen35/qwen35moe, docs/engine.md).
enum class LayerKind { kAttention, kDeltaNet };
enum class RopeStyle { kNormal /* interleaved pairs (2i, 2i+1) */, kNeox /* (i, i + n_rot/2) */ };

struct HParams {
  Arch arch = Arch::kLlama;
  std::string arch_name;  // general.architecture
  std::string name;       // general.name
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;  // {arch}.attention.key_length or n_embd / n_head
  int n_ff = 0;
  int n_vocab = 0;
  int n_ctx_train = 0;
  int n_rot = 0;  // rotary dimensions (<= head_dim)
  float rms_eps = 1e-5f;
  float rope_base = 10000.0f;
  float rope_scale = 1.0f;  // linear position scaling (rope.scaling.type = linear)
  RopeStyle rope_style = RopeStyle::kNormal;
  bool has_qkv_bias = false;  // qwen2
  bool has_qk_norm = false;   // qwen3
  bool tied_embeddings = false;
  bool has_rope_freqs = false;  // rope_freqs.weight present (Llama 3 rope scaling)

  // Mixture of experts (qwen3moe, qwen35moe): every layer's FFN is n_expert experts of width
  // n_ff_exp, n_expert_used of them per token (softmax router, top-k, weights renormalized).
  int n_expert = 0;       // 0 = dense FFN
  int n_expert_used = 0;  // top-k
  int n_ff_exp = 0;       // {arch}.expert_feed_forward_length
  int n_ff_shexp = 0;     // shared expert width (qwen35moe), 0 = none

  // Hybrid (qwen35, qwen35moe). n_layer counts trunk layers only: block_count minus the
  // multi-token-prediction blocks ({arch}.nextn_predict_layers), which are not run.
  std::vector<LayerKind> layer_kind;    // [n_layer]
  std::vector<int> kv_layer;            // [n_layer] index into the KV layout, -1 for DeltaNet
  int n_kv_layers = 0;                  // attention layers = the layers a KV block holds
  bool attn_output_gate = false;        // qwen35*: attn_q also yields a per-head sigmoid gate
  int ssm_d_conv = 0;                   // short conv kernel width (4)
  int ssm_head_dim = 0;                 // head_k_dim = head_v_dim (ssm.state_size)
  int ssm_n_k_heads = 0;                // ssm.group_count
  int ssm_n_v_heads = 0;                // ssm.time_step_rank; a multiple of ssm_n_k_heads
  int rope_sections[4] = {0, 0, 0, 0};  // qwen35*: imrope sections (text uses axes 0-2)

  bool is_hybrid() const { return arch == Arch::kQwen35 || arch == Arch::kQwen35Moe; }
  bool is_moe() const { return n_expert > 0; }
  int ssm_key_dim() const { return ssm_head_dim * ssm_n_k_heads; }
  int ssm_value_dim() const { return ssm_head_dim * ssm_n_v_heads; }
  int ssm_conv_dim() const { return 2 * ssm_key_dim() + ssm_value_dim(); }
  // f32 elements of one sequence's recurrent state for one DeltaNet layer.
  size_t conv_state_elems() const { return static_cast<size_t>(ssm_d_conv - 1) * ssm_conv_dim(); }
  size_t ssm_state_elems() const {
    return static_cast<size_t>(ssm_head_dim) * ssm_head_dim * ssm_n_v_heads;
  }
  int n_deltanet_layers() const { return n_layer - n_kv_layers; }
};

// A 2-D weight: n_out rows of n_in elements, row-major, in `type`, inside the mapped file.
struct WeightMatrix {
  GgmlType type = GgmlType::kF32;
  int64_t n_in = 0;
  int64_t n_out = 0;
  size_t row_bytes = 0;
  const uint8_t* data = nullptr;
};

struct LayerWeights {
  LayerKind kind = LayerKind::kAttention;
  std::vector<float> attn_norm;  // [n_embd]
  // Attention. qwen35*: wq has 2 * n_head * head_dim rows, per head [q (head_dim), gate
  // (head_dim)].
  WeightMatrix wq, wk, wv, wo;
  std::vector<float> bq, bk, bv;      // qwen2 only
  std::vector<float> q_norm, k_norm;  // qwen3*/qwen35*, [head_dim]

  // Gated DeltaNet (qwen35*). Value heads are in the converter's tiled order: value head j uses
  // key head j % n_k_heads.
  WeightMatrix ssm_qkv;              // attn_qkv: n_embd -> conv_dim (q | k | v)
  WeightMatrix ssm_z;                // attn_gate: n_embd -> value_dim
  WeightMatrix ssm_beta, ssm_alpha;  // n_embd -> n_v_heads
  WeightMatrix ssm_out;              // value_dim -> n_embd
  std::vector<float> ssm_conv;       // [conv_dim][d_conv] f32 (ssm_conv1d.weight)
  std::vector<float> ssm_dt_bias;    // [n_v_heads]
  std::vector<float> ssm_a;          // [n_v_heads], holds -exp(A_log)
  std::vector<float> ssm_norm;       // [ssm_head_dim], plain weight (no +1)

  std::vector<float> ffn_norm;        // [n_embd] (qwen35*: post_attention_norm)
  WeightMatrix w_gate, w_up, w_down;  // dense FFN
  // MoE FFN: router and per-expert views into the 3-D expert tensors.
  WeightMatrix ffn_router;                               // ffn_gate_inp: n_embd -> n_expert
  std::vector<WeightMatrix> exp_gate, exp_up, exp_down;  // [n_expert]
  WeightMatrix shexp_gate, shexp_up, shexp_down;         // shared expert (qwen35moe)
  std::vector<float> shexp_router;                       // [n_embd] ffn_gate_inp_shexp
};

class Model {
 public:
  // Opens, validates and maps `path`. Errors name the file and the problem (missing tensor,
  // wrong shape, unsupported type or architecture).
  // `memory`: where the weights live (engine/gguf.h WeightMemory; mapped by default).
  static Result<std::unique_ptr<Model>> Load(const std::string& path,
                                             WeightMemory memory = WeightMemory::kMmap);
  // Same over an already-open file (takes ownership).
  static Result<std::unique_ptr<Model>> FromGguf(std::unique_ptr<GgufFile> file);

  const HParams& config() const { return config_; }
  const GgufFile& gguf() const { return *file_; }
  const WeightMatrix& token_embd() const { return token_embd_; }
  const WeightMatrix& output() const { return output_; }
  const std::vector<float>& output_norm() const { return output_norm_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  // Per-pair frequency divisors from rope_freqs.weight, empty when absent. [n_rot / 2]
  const std::vector<float>& rope_freq_factors() const { return rope_freqs_; }
  // Bytes of all weights (for reports).
  uint64_t weight_bytes() const;
  // A short description: "llama 64d 5L 8h/4kv f32".
  std::string Describe() const;

 private:
  Model() = default;
  Status Init();
  Status InitDense();
  Status InitQwen3Moe();
  Status InitQwen35();

  std::unique_ptr<GgufFile> file_;
  HParams config_;
  WeightMatrix token_embd_, output_;
  std::vector<float> output_norm_;
  std::vector<LayerWeights> layers_;
  std::vector<float> rope_freqs_;
};

}  // namespace kvstash::engine
