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

enum class Arch { kLlama, kQwen2, kQwen3 };
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
  std::vector<float> attn_norm;  // [n_embd]
  WeightMatrix wq, wk, wv, wo;
  std::vector<float> bq, bk, bv;      // qwen2 only
  std::vector<float> q_norm, k_norm;  // qwen3 only, [head_dim]
  std::vector<float> ffn_norm;        // [n_embd]
  WeightMatrix w_gate, w_up, w_down;
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

  std::unique_ptr<GgufFile> file_;
  HParams config_;
  WeightMatrix token_embd_, output_;
  std::vector<float> output_norm_;
  std::vector<LayerWeights> layers_;
  std::vector<float> rope_freqs_;
};

}  // namespace kvstash::engine
