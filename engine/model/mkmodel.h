// Synthetic GGUF models: deterministic random weights in the shapes of real models.
//
// kvstash-mkmodel, the tests and the benchmarks use these files wherever only the shape matters
// (timings, KV layout, cache behaviour). Files follow llama.cpp's key and tensor names and byte
// layouts exactly (llama, qwen2, qwen3), so llama.cpp loads them too. Weights come from a
// counter-based generator keyed by (seed, tensor name, element index): the bytes depend only on
// the options, never on the thread count. Scales are chosen so the forward pass stays well
// conditioned (unit-variance activations after each norm, next-token distributions that are
// neither uniform nor one-hot).
//
// All functions are reentrant; BuildSyntheticModel uses `n_threads` worker threads internally
// and calls `progress` from the calling thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "engine/gguf/ggml_types.h"
#include "engine/gguf/gguf_writer.h"

namespace kvstash::engine {

// Shape and hyperparameters; the union of what llama, qwen2, qwen3, qwen3moe, qwen35 and
// qwen35moe need.
struct ModelConfig {
  std::string name;  // general.name
  // "llama" | "qwen2" (adds q/k/v biases) | "qwen3" (adds q/k norms) | "qwen3moe" | "qwen35" |
  // "qwen35moe"
  std::string arch = "llama";
  int64_t n_embd = 0;          // {arch}.embedding_length
  int64_t n_layer = 0;         // {arch}.block_count
  int64_t n_head = 0;          // {arch}.attention.head_count
  int64_t n_head_kv = 0;       // {arch}.attention.head_count_kv; divides n_head
  int64_t head_dim = 0;        // 0 = n_embd / n_head; otherwise key_length/value_length are written
  int64_t n_ff = 0;            // {arch}.feed_forward_length
  int64_t n_vocab = 0;         // token count; a copied tokenizer overrides it
  int64_t n_ctx = 0;           // {arch}.context_length
  float rope_base = 10000.0f;  // {arch}.rope.freq_base
  float norm_eps = 1e-5f;      // {arch}.attention.layer_norm_rms_epsilon
  bool tied_embeddings = false;  // true: no output.weight, token_embd is also the LM head
  // Llama-3 RoPE scaling, written as the rope_freqs.weight tensor [head_dim/2] (llama only).
  // factor 0 = no scaling.
  float rope_scaling_factor = 0.0f;
  float rope_low_freq_factor = 1.0f;
  float rope_high_freq_factor = 4.0f;
  int64_t rope_original_ctx = 8192;

  // Partial rotary: {arch}.rope.dimension_count; 0 = the whole head.
  int64_t n_rot = 0;
  // Mixture of experts (qwen3moe, qwen35moe).
  int64_t n_expert = 0;       // {arch}.expert_count
  int64_t n_expert_used = 0;  // {arch}.expert_used_count, <= n_expert
  int64_t n_ff_exp = 0;       // {arch}.expert_feed_forward_length
  int64_t n_ff_shexp = 0;     // {arch}.expert_shared_feed_forward_length (qwen35moe)
  // Hybrid (qwen35, qwen35moe): Gated DeltaNet layers except every full_attention_interval-th.
  int64_t full_attention_interval = 4;
  int64_t ssm_d_conv = 4;                   // {arch}.ssm.conv_kernel
  int64_t ssm_head_dim = 0;                 // {arch}.ssm.state_size
  int64_t ssm_n_k_heads = 0;                // {arch}.ssm.group_count
  int64_t ssm_n_v_heads = 0;                // {arch}.ssm.time_step_rank (multiple of ssm_n_k_heads)
  int64_t rope_sections[4] = {0, 0, 0, 0};  // {arch}.rope.dimension_sections (sum n_rot / 2)

  int64_t EffectiveHeadDim() const { return head_dim > 0 ? head_dim : n_embd / n_head; }
  int64_t EffectiveNRot() const { return n_rot > 0 ? n_rot : EffectiveHeadDim(); }
  bool HasQkvBias() const { return arch == "qwen2"; }
  bool HasQkNorm() const { return arch != "llama" && arch != "qwen2"; }
  bool IsMoe() const { return arch == "qwen3moe" || arch == "qwen35moe"; }
  bool IsHybrid() const { return arch == "qwen35" || arch == "qwen35moe"; }
  bool IsDeltaNetLayer(int64_t i) const {
    return IsHybrid() && (i + 1) % full_attention_interval != 0;
  }
};

struct ModelPreset {
  std::string_view name;         // "qwen3-0.6b"
  std::string_view description;  // one line for --list-presets
  ModelConfig config;
};

// Every preset: real shapes (stories260k, smollm2-135m, qwen3-0.6b, qwen2.5-0.5b, qwen2.5-7b,
// llama-3.2-1b, llama-3.1-8b), the demo `default`, and the small `tiny-*` test shapes.
const std::vector<ModelPreset>& ModelPresets();
// NotFound (listing the valid names) for an unknown preset.
Result<ModelConfig> FindPreset(std::string_view name);
// InvalidArgument naming the first bad field.
Status ValidateConfig(const ModelConfig& config);

// The weight type of the 2-D tensors: one ggml type for all, or one of llama.cpp's *_M mixes as
// llama-quantize chooses them per tensor (src/llama-quant.cpp, dense and non-8-expert case):
// - Q4_K_M: Q4_K; Q6_K for the LM head and for attn_v/ffn_down (and ssm_out) of the "more bits"
//   layers. Q5_K_M: the same with Q5_K as the base.
// - Q3_K_M: Q3_K; Q6_K for the LM head; attn_v Q5_K in the first two attention layers, else
//   Q4_K; attn_output Q4_K; ffn_down (and ssm_out) Q5_K in the first n_layer/16 layers, Q4_K in
//   the "more bits" layers, else Q3_K.
// 1-D tensors (norms, biases, rope_freqs) are always F32. Where a row length does not fit the
// type's block, the type falls back as llama-quantize does: Q4_K -> Q5_0, Q5_K -> Q5_1,
// Q6_K -> Q8_0, Q3_K -> Q4_0, IQ4_XS -> IQ4_NL, and anything still misfitting -> F16.
struct WeightType {
  enum class Mix { kNone, kQ3_K_M, kQ4_K_M, kQ5_K_M };
  GgmlType type = GgmlType::kF16;
  Mix mix = Mix::kNone;
};
// "f32 f16 bf16 q8_0 q4_0 q5_0 q5_1 q3_k q4_k q5_k q6_k iq4_nl iq4_xs q3_k_m q4_k_m q5_k_m"
// (case-insensitive).
Result<WeightType> ParseWeightType(std::string_view name);
std::string WeightTypeName(WeightType t);  // "q4_k_m", "q8_0", "iq4_xs", ...
uint32_t LlamaFileType(WeightType t);      // general.file_type (llama_ftype numbering)

struct TensorSpec {
  std::string name;
  std::vector<int64_t> dims;  // innermost first, as in GGUF
  GgmlType type = GgmlType::kF32;
  int64_t n_elements() const;
  uint64_t n_bytes() const;
};
// Every tensor of the model in file order, with its final type. No data is generated, so this is
// cheap for any size (used to test big presets and to size a file before writing it).
Result<std::vector<TensorSpec>> PlanTensors(const ModelConfig& config, WeightType weight_type);
// Llama-3 rope frequency factors [head_dim/2], as llama.cpp's converter computes them.
std::vector<float> Llama3RopeFactors(const ModelConfig& config);

// Written into every synthetic model as `kvstash.mkmodel.version` (uint32). Bumped whenever the
// same options give a different file (vocabulary, weight generator, keys), so a cached file can
// be recognised as stale (see daemon/cli/default_model.cc). Files without the key are version 1;
// 2: pseudo-words replace <unused_N> in the built-in vocabulary.
inline constexpr std::string_view kMkModelVersionKey = "kvstash.mkmodel.version";
inline constexpr uint32_t kMkModelVersion = 2;

// Writes tokenizer.* keys into `w` and returns the vocabulary size they define.
using TokenizerEmitter = std::function<Result<int64_t>(GgufWriter& w)>;
// The built-in byte-fallback SentencePiece ("llama") vocabulary of exactly `n_vocab` tokens
// (>= 259): <unk> <s> </s>, <0x00>..<0xFF>, "▁", printable ASCII, frequent English words and
// pieces, letter pairs, then pronounceable pseudo-words ("▁kota", "rumi") up to `n_vocab`. Every
// normal token prints distinct, non-empty text, so whatever id a random model samples is
// visible. Every token's prefixes (by character) are tokens too, so SPM merging turns each
// "▁word" token's text back into that one token. bos 1, eos 2, unk 0, add_bos true.
Status AddBuiltinTokenizer(GgufWriter& w, int64_t n_vocab);
// Copies every tokenizer.* key of an existing GGUF file; returns its token count.
Result<int64_t> CopyTokenizerFrom(GgufWriter& w, const std::string& gguf_path);

struct MkModelProgress {
  int64_t tensors_done = 0;
  int64_t n_tensors = 0;
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  std::string_view tensor;  // the tensor just finished
};

struct MkModelOptions {
  ModelConfig config;      // a preset plus overrides; validated
  WeightType weight_type;  // default f16
  uint64_t seed = 0;
  // Tokenizer source, first match wins: `tokenizer` (hook for other formats, e.g. a future
  // tokenizer.json importer), then `tokenizer_gguf` (copy from that file), else built-in.
  TokenizerEmitter tokenizer;
  std::string tokenizer_gguf;
  int n_threads = 0;  // 0 = std::thread::hardware_concurrency()
  uint32_t alignment = kGgufDefaultAlignment;
  std::function<void(const MkModelProgress&)> progress;  // after each tensor; may be empty
};

struct MkModelSummary {
  std::string path;  // empty for in-memory builds
  std::string name;
  std::string arch;
  std::string type;      // WeightTypeName
  int64_t n_params = 0;  // elements of all tensors (rope_freqs included)
  int64_t n_vocab = 0;
  int64_t n_tensors = 0;
  uint64_t file_bytes = 0;
};

// Builds the complete model in memory (peak memory ~ the file size).
Result<GgufWriter> BuildSyntheticModel(const MkModelOptions& options,
                                       MkModelSummary* summary = nullptr);
// BuildSyntheticModel + GgufWriter::WriteFile (written to path.tmp, then renamed).
Result<MkModelSummary> WriteSyntheticModel(const std::string& path, const MkModelOptions& options);

}  // namespace kvstash::engine
