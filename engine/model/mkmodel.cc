// Synthetic model generation. Three parts: presets and validation, the tensor plan (names,
// shapes, types — llama.cpp's naming and llama-quantize's type choices), and data generation.
//
// Determinism: element i of tensor T is a pure function of (seed, name of T, i), from a
// splitmix64 counter generator and an Irwin-Hall normal approximation (sum of four uniforms):
// no libm calls, so the bytes are identical across machines, compilers and thread counts.
// Threads split a tensor by rows; quantization is per row, so the split cannot change a byte.

#include "engine/model/mkmodel.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numbers>
#include <thread>
#include <unordered_set>

#include "engine/gguf/gguf.h"
#include "engine/gguf/quant.h"

namespace kvstash::engine {
namespace {

ModelConfig Make(std::string name, std::string arch, int64_t n_embd, int64_t n_layer,
                 int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t n_ff, int64_t n_vocab,
                 int64_t n_ctx, float rope_base, float norm_eps, bool tied,
                 float rope_scaling_factor = 0.0f) {
  ModelConfig c;
  c.name = std::move(name);
  c.arch = std::move(arch);
  c.n_embd = n_embd;
  c.n_layer = n_layer;
  c.n_head = n_head;
  c.n_head_kv = n_head_kv;
  c.head_dim = head_dim;
  c.n_ff = n_ff;
  c.n_vocab = n_vocab;
  c.n_ctx = n_ctx;
  c.rope_base = rope_base;
  c.norm_eps = norm_eps;
  c.tied_embeddings = tied;
  c.rope_scaling_factor = rope_scaling_factor;
  return c;
}

ModelConfig WithMoe(ModelConfig c, int64_t n_expert, int64_t n_expert_used, int64_t n_ff_exp,
                    int64_t n_ff_shexp = 0) {
  c.n_expert = n_expert;
  c.n_expert_used = n_expert_used;
  c.n_ff_exp = n_ff_exp;
  c.n_ff_shexp = n_ff_shexp;
  return c;
}

// Hybrid shape: partial rotary n_rot with llama.cpp's default section split ([11,11,10,0] for
// 64), DeltaNet heads.
ModelConfig WithDeltaNet(ModelConfig c, int64_t n_rot, int64_t ssm_head_dim, int64_t n_k_heads,
                         int64_t n_v_heads, int64_t interval = 4) {
  c.n_rot = n_rot;
  const int64_t pairs = n_rot / 2;
  c.rope_sections[0] = (pairs + 2) / 3;
  c.rope_sections[1] = (pairs + 1) / 3;
  c.rope_sections[2] = pairs / 3;
  c.rope_sections[3] = 0;
  c.ssm_head_dim = ssm_head_dim;
  c.ssm_n_k_heads = n_k_heads;
  c.ssm_n_v_heads = n_v_heads;
  c.full_attention_interval = interval;
  return c;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// ---- Deterministic weights ------------------------------------------------------------------

uint64_t SplitMix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t TensorKey(uint64_t seed, std::string_view name) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 0x100000001B3ull;
  return SplitMix64(SplitMix64(seed) ^ h);
}

// Approximately N(0, 1): the sum of four 16-bit uniforms, centred and scaled to unit variance.
inline float UnitNormal(uint64_t key, uint64_t index) {
  const uint64_t r = SplitMix64(key + index * 0xD1B54A32D192ED03ull);
  const float sum =
      static_cast<float>((r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48)) +
      2.0f;  // +0.5 per uniform: centre of each 1/65536 cell
  return (sum * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

// How a tensor's values are drawn: mean + stddev * N(0,1).
struct Init {
  float mean = 0.0f;
  float stddev = 0.0f;
};

// Projections get stddev 1/sqrt(fan_in) so a normalised input gives unit-variance outputs (and
// attention scores q.k/sqrt(head_dim) of unit variance). The LM head gets 2.5/sqrt(n_embd):
// logits with stddev ~2.5, a peaked but far from one-hot distribution over any vocabulary.
// Norm weights sit near 1, biases near 0.
Init InitFor(const ModelConfig& c, std::string_view name, const std::vector<int64_t>& dims) {
  const auto ends_with = [&](std::string_view suffix) {
    return name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
  };
  if (ends_with("norm.weight")) return {1.0f, 0.1f};
  // DeltaNet decay -exp(A_log): negative, around -1 (per-token decay exp(softplus(.) * a)).
  if (ends_with(".ssm_a")) return {-1.0f, 0.25f};
  if (ends_with(".bias")) return {0.0f, 0.1f};
  if (name == "token_embd.weight" || name == "output.weight") {
    return {0.0f, 2.5f / std::sqrt(static_cast<float>(c.n_embd))};
  }
  return {0.0f, 1.0f / std::sqrt(static_cast<float>(dims[0]))};
}

// ---- Tensor plan ----------------------------------------------------------------------------

// llama-quantize's rule for which layers get more bits in the *_M mixes.
bool UseMoreBits(int64_t i_layer, int64_t n_layer) {
  return i_layer < n_layer / 8 || i_layer >= 7 * n_layer / 8 || (i_layer - n_layer / 8) % 3 == 2;
}

GgmlType FitRowLength(GgmlType t, int64_t row_len) {
  if (row_len % Traits(t).block_elems == 0) return t;
  switch (t) {
    case GgmlType::kQ4_K:
      t = GgmlType::kQ5_0;
      break;
    case GgmlType::kQ5_K:
      t = GgmlType::kQ5_1;
      break;
    case GgmlType::kQ6_K:
      t = GgmlType::kQ8_0;
      break;
    case GgmlType::kQ3_K:
      t = GgmlType::kQ4_0;
      break;
    case GgmlType::kIQ4_XS:
      t = GgmlType::kIQ4_NL;
      break;
    default:
      break;
  }
  if (row_len % Traits(t).block_elems == 0) return t;
  return GgmlType::kF16;
}

}  // namespace

const std::vector<ModelPreset>& ModelPresets() {
  static const std::vector<ModelPreset> kPresets = {
      {"default", "demo model: llama shape, ~27M params, built-in 4096-token vocab",
       Make("kvstash-default", "llama", 512, 8, 8, 4, 0, 1536, 4096, 4096, 10000.0f, 1e-5f, true)},
      {"stories260k", "llama2.c stories260K shape (llama, 64 embd, 5 layers)",
       Make("stories260k", "llama", 64, 5, 8, 4, 0, 172, 512, 512, 10000.0f, 1e-5f, false)},
      {"smollm2-135m", "SmolLM2-135M shape (llama, 576 embd, 30 layers, GQA 9/3, tied)",
       Make("smollm2-135m", "llama", 576, 30, 9, 3, 0, 1536, 49152, 8192, 100000.0f, 1e-5f, true)},
      {"qwen2.5-0.5b", "Qwen2.5-0.5B shape (qwen2, 896 embd, 24 layers, GQA 14/2, tied)",
       Make("qwen2.5-0.5b", "qwen2", 896, 24, 14, 2, 0, 4864, 151936, 32768, 1000000.0f, 1e-6f,
            true)},
      {"qwen3-0.6b", "Qwen3-0.6B shape (qwen3, 1024 embd, 28 layers, 16/8 heads of 128, tied)",
       Make("qwen3-0.6b", "qwen3", 1024, 28, 16, 8, 128, 3072, 151936, 40960, 1000000.0f, 1e-6f,
            true)},
      {"llama-3.2-1b", "Llama-3.2-1B shape (llama, 2048 embd, 16 layers, GQA 32/8, tied, rope x32)",
       Make("llama-3.2-1b", "llama", 2048, 16, 32, 8, 0, 8192, 128256, 131072, 500000.0f, 1e-5f,
            true, 32.0f)},
      {"llama-3.1-8b", "Llama-3.1-8B shape (llama, 4096 embd, 32 layers, GQA 32/8, rope x8)",
       Make("llama-3.1-8b", "llama", 4096, 32, 32, 8, 0, 14336, 128256, 131072, 500000.0f, 1e-5f,
            false, 8.0f)},
      {"qwen2.5-7b", "Qwen2.5-7B shape (qwen2, 3584 embd, 28 layers, GQA 28/4)",
       Make("qwen2.5-7b", "qwen2", 3584, 28, 28, 4, 0, 18944, 152064, 32768, 1000000.0f, 1e-6f,
            false)},
      {"qwen3-30b-a3b",
       "Qwen3-30B-A3B shape (qwen3moe, 2048 embd, 48 layers, 32/4 heads of 128, 128 experts top 8)",
       WithMoe(Make("qwen3-30b-a3b", "qwen3moe", 2048, 48, 32, 4, 128, 6144, 151936, 40960,
                    1000000.0f, 1e-6f, false),
               128, 8, 768)},
      {"qwen3.6-27b",
       "Qwen3.6-27B shape (qwen35: 64 layers, 48 DeltaNet 16k/48v + 16 attention 24/4x256)",
       WithDeltaNet(Make("qwen3.6-27b", "qwen35", 5120, 64, 24, 4, 256, 17408, 248320, 262144,
                         10000000.0f, 1e-6f, false),
                    64, 128, 16, 48)},
      {"qwen3.6-35b-a3b",
       "Qwen3.6-35B-A3B shape (qwen35moe: 40 layers, 30 DeltaNet + 10 attention, 256 experts "
       "top 8 + shared)",
       WithMoe(WithDeltaNet(Make("qwen3.6-35b-a3b", "qwen35moe", 2048, 40, 16, 2, 256, 512, 248320,
                                 262144, 10000000.0f, 1e-6f, false),
                            64, 128, 16, 32),
               256, 8, 512, 512)},
      {"tiny-llama", "test: llama, 256 embd, 2 layers, 4/2 heads of 64, untied",
       Make("tiny-llama", "llama", 256, 2, 4, 2, 0, 512, 1024, 2048, 10000.0f, 1e-5f, false)},
      {"tiny-llama3", "test: llama, 256 embd, 2 layers, 4/2 heads of 64, tied, llama3 rope x8",
       Make("tiny-llama3", "llama", 256, 2, 4, 2, 0, 768, 2048, 4096, 500000.0f, 1e-5f, true,
            8.0f)},
      {"tiny-qwen2", "test: qwen2, 256 embd, 2 layers, 8/2 heads of 32, qkv bias, tied",
       Make("tiny-qwen2", "qwen2", 256, 2, 8, 2, 0, 768, 2048, 4096, 1000000.0f, 1e-6f, true)},
      {"tiny-qwen3", "test: qwen3, 256 embd, 3 layers, 8/4 heads of 64 (q dim 512), tied",
       Make("tiny-qwen3", "qwen3", 256, 3, 8, 4, 64, 512, 4096, 4096, 1000000.0f, 1e-6f, true)},
      {"tiny-qwen3moe", "test: qwen3moe, 256 embd, 2 layers, 8/4 heads of 64, 16 experts top 4",
       WithMoe(Make("tiny-qwen3moe", "qwen3moe", 256, 2, 8, 4, 64, 512, 2048, 4096, 1000000.0f,
                    1e-6f, false),
               16, 4, 128)},
      {"tiny-qwen35",
       "test: qwen35, 256 embd, 4 layers (DeltaNet 2k/4v heads of 32, attention 4/2x64, rot 16)",
       WithDeltaNet(Make("tiny-qwen35", "qwen35", 256, 4, 4, 2, 64, 512, 2048, 4096, 10000000.0f,
                         1e-6f, false),
                    16, 32, 2, 4, 2)},
      {"tiny-qwen35moe",
       "test: qwen35moe, tiny-qwen35 attention/DeltaNet shape, 8 experts top 3 + shared expert",
       WithMoe(WithDeltaNet(Make("tiny-qwen35moe", "qwen35moe", 256, 4, 4, 2, 64, 128, 2048, 4096,
                                 10000000.0f, 1e-6f, false),
                            16, 32, 2, 4, 2),
               8, 3, 128, 128)},
  };
  return kPresets;
}

Result<ModelConfig> FindPreset(std::string_view name) {
  const std::string key = Lower(name);
  std::string names;
  for (const ModelPreset& p : ModelPresets()) {
    if (p.name == key) return p.config;
    names += names.empty() ? "" : ", ";
    names += p.name;
  }
  return Status::NotFound("unknown preset '" + std::string(name) + "' (presets: " + names + ")");
}

Status ValidateConfig(const ModelConfig& c) {
  const auto bad = [&](const std::string& what) {
    return Status::InvalidArgument("model config '" + c.name + "': " + what);
  };
  if (c.arch != "llama" && c.arch != "qwen2" && c.arch != "qwen3" && !c.IsMoe() && !c.IsHybrid()) {
    return bad("arch '" + c.arch +
               "' is not one of llama, qwen2, qwen3, qwen3moe, qwen35, qwen35moe");
  }
  if (c.IsMoe()) {
    if (c.n_expert < 1 || c.n_expert > 4096 || c.n_expert_used < 1 ||
        c.n_expert_used > c.n_expert || c.n_ff_exp < 1) {
      return bad("MoE needs 1 <= n_expert_used <= n_expert <= 4096 and n_ff_exp >= 1");
    }
    if (c.arch == "qwen35moe" && c.n_ff_shexp < 1) return bad("qwen35moe needs n_ff_shexp >= 1");
  }
  if (c.n_rot < 0 || c.n_rot > c.EffectiveHeadDim() || c.n_rot % 2 != 0) {
    return bad("n_rot must be even and <= head_dim");
  }
  if (c.IsHybrid()) {
    if (c.ssm_head_dim < 1 || c.ssm_n_k_heads < 1 || c.ssm_n_v_heads < 1 ||
        c.ssm_n_v_heads % c.ssm_n_k_heads != 0 || c.ssm_d_conv < 2 || c.ssm_d_conv > 16 ||
        c.full_attention_interval < 1) {
      return bad(
          "hybrid models need ssm head dim/heads >= 1, n_v_heads a multiple of n_k_heads, "
          "2 <= ssm_d_conv <= 16, full_attention_interval >= 1");
    }
    int64_t sum = 0;
    for (int64_t s : c.rope_sections) sum += s;
    if (sum < 1) return bad("rope_sections must not all be zero");
  }
  constexpr int64_t kMaxDim = int64_t{1} << 24;
  const std::pair<const char*, int64_t> positive[] = {
      {"n_embd", c.n_embd},       {"n_layer", c.n_layer}, {"n_head", c.n_head},
      {"n_head_kv", c.n_head_kv}, {"n_ff", c.n_ff},       {"n_ctx", c.n_ctx}};
  for (const auto& [field, v] : positive) {
    if (v <= 0 || v > kMaxDim) return bad(std::string(field) + " must be in [1, 2^24]");
  }
  if (c.head_dim < 0 || c.head_dim > 4096) return bad("head_dim must be in [0, 4096]");
  if (c.head_dim == 0 && c.n_embd % c.n_head != 0) {
    return bad("n_embd " + std::to_string(c.n_embd) + " is not a multiple of n_head " +
               std::to_string(c.n_head) + " (set head_dim)");
  }
  if (c.EffectiveHeadDim() % 2 != 0) return bad("head_dim must be even (RoPE rotates pairs)");
  if (c.n_head % c.n_head_kv != 0) return bad("n_head must be a multiple of n_head_kv");
  if (c.n_vocab < 0 || c.n_vocab > (int64_t{1} << 31) - 1) return bad("n_vocab out of range");
  if (!(c.rope_base > 0.0f) || !std::isfinite(c.rope_base)) return bad("rope_base must be > 0");
  if (!(c.norm_eps > 0.0f) || !(c.norm_eps < 1.0f)) return bad("norm_eps must be in (0, 1)");
  if (c.rope_scaling_factor != 0.0f) {
    if (c.arch != "llama") return bad("llama3 rope scaling is only defined for arch llama");
    if (!(c.rope_scaling_factor > 0.0f) || !(c.rope_high_freq_factor > c.rope_low_freq_factor) ||
        !(c.rope_low_freq_factor > 0.0f) || c.rope_original_ctx <= 0) {
      return bad("rope scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor");
    }
  }
  return Status::Ok();
}

namespace {

constexpr std::pair<std::string_view, WeightType> kMixes[] = {
    {"q3_k_m", {GgmlType::kQ3_K, WeightType::Mix::kQ3_K_M}},
    {"q4_k_m", {GgmlType::kQ4_K, WeightType::Mix::kQ4_K_M}},
    {"q5_k_m", {GgmlType::kQ5_K, WeightType::Mix::kQ5_K_M}},
};

// Tensor roles the *_M mixes treat differently.
enum class Role { kOther, kAttnV, kAttnOutput, kFfnDown, kOutput };

// llama-quantize's choice for a tensor of `role` in layer `i_layer` (for attn_v, `i_layer` is
// the ordinal among attention layers, as llama.cpp counts attn_v tensors).
GgmlType MixType(WeightType wt, Role role, int64_t i_layer, int64_t n_layer) {
  using M = WeightType::Mix;
  if (wt.mix == M::kNone) return wt.type;
  if (role == Role::kOutput) return GgmlType::kQ6_K;
  if (wt.mix == M::kQ3_K_M) {
    switch (role) {
      case Role::kAttnV:
        return i_layer < 2 ? GgmlType::kQ5_K : GgmlType::kQ4_K;
      case Role::kAttnOutput:
        return GgmlType::kQ4_K;
      case Role::kFfnDown:
        return i_layer < n_layer / 16          ? GgmlType::kQ5_K
               : UseMoreBits(i_layer, n_layer) ? GgmlType::kQ4_K
                                               : GgmlType::kQ3_K;
      default:
        return wt.type;
    }
  }
  // Q4_K_M, Q5_K_M.
  if ((role == Role::kAttnV || role == Role::kFfnDown) && UseMoreBits(i_layer, n_layer)) {
    return GgmlType::kQ6_K;
  }
  return wt.type;
}

}  // namespace

Result<WeightType> ParseWeightType(std::string_view name) {
  for (const auto& [n, wt] : kMixes) {
    if (Lower(name) == n) return wt;
  }
  if (const std::optional<GgmlType> t = ParseGgmlType(name)) return WeightType{*t};
  return Status::InvalidArgument(
      "unknown weight type '" + std::string(name) +
      "' (f32 f16 bf16 q8_0 q4_0 q5_0 q5_1 q3_k q4_k q5_k q6_k iq4_nl iq4_xs q3_k_m q4_k_m "
      "q5_k_m)");
}

std::string WeightTypeName(WeightType t) {
  for (const auto& [n, wt] : kMixes) {
    if (t.mix == wt.mix && t.mix != WeightType::Mix::kNone) return std::string(n);
  }
  return Lower(Traits(t.type).name);
}

uint32_t LlamaFileType(WeightType t) {
  switch (t.mix) {  // llama_ftype numbering
    case WeightType::Mix::kQ3_K_M:
      return 12;
    case WeightType::Mix::kQ4_K_M:
      return 15;
    case WeightType::Mix::kQ5_K_M:
      return 17;
    case WeightType::Mix::kNone:
      break;
  }
  switch (t.type) {
    case GgmlType::kF32:
      return 0;
    case GgmlType::kF16:
      return 1;
    case GgmlType::kQ4_0:
      return 2;
    case GgmlType::kQ8_0:
      return 7;
    case GgmlType::kQ5_0:
      return 8;
    case GgmlType::kQ5_1:
      return 9;
    case GgmlType::kQ3_K:
      return 11;  // Q3_K_S: the closest named ftype to "all Q3_K"
    case GgmlType::kQ4_K:
      return 14;  // Q4_K_S: the closest named ftype to "all Q4_K"
    case GgmlType::kQ5_K:
      return 16;  // Q5_K_S
    case GgmlType::kQ6_K:
      return 18;
    case GgmlType::kIQ4_NL:
      return 25;
    case GgmlType::kIQ4_XS:
      return 30;
    case GgmlType::kBF16:
      return 32;
    default:
      return 1;
  }
}

int64_t TensorSpec::n_elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

uint64_t TensorSpec::n_bytes() const {
  return static_cast<uint64_t>(n_elements() / dims[0]) * RowBytes(type, dims[0]);
}

Result<std::vector<TensorSpec>> PlanTensors(const ModelConfig& c, WeightType wt) {
  KV_RETURN_IF_ERROR(ValidateConfig(c));
  if (c.n_vocab <= 0) return Status::InvalidArgument("PlanTensors: n_vocab must be > 0");
  const std::optional<GgmlTypeTraits> tr = TraitsOf(static_cast<uint32_t>(wt.type));
  if (!tr || !tr->supported) return Status::InvalidArgument("PlanTensors: unsupported type");
  const int64_t hd = c.EffectiveHeadDim();
  const int64_t q_dim = c.n_head * hd, kv_dim = c.n_head_kv * hd;

  std::vector<TensorSpec> plan;
  const auto vec = [&](std::string name, int64_t n) {
    plan.push_back({std::move(name), {n}, GgmlType::kF32});
  };
  // `base` is the type before row-length fallbacks; the *_M mix adjusts it per tensor.
  const auto mat = [&](std::string name, int64_t n_in, int64_t n_out, GgmlType base) {
    plan.push_back({std::move(name), {n_in, n_out}, FitRowLength(base, n_in)});
  };
  const GgmlType out_type = MixType(wt, Role::kOutput, 0, c.n_layer);
  // llama.cpp counts attn_v tensors (i_attention_wv of n_attention_wv): attention layers only.
  int64_t i_attn_v = 0, n_attn = 0;
  for (int64_t i = 0; i < c.n_layer; ++i) n_attn += c.IsDeltaNetLayer(i) ? 0 : 1;

  // Like llama-quantize: MoE routers and the DeltaNet conv stay f32.
  const auto f32_mat = [&](std::string name, std::vector<int64_t> dims) {
    plan.push_back({std::move(name), std::move(dims), GgmlType::kF32});
  };
  const auto experts = [&](std::string name, int64_t n_in, int64_t n_out, GgmlType base) {
    plan.push_back({std::move(name), {n_in, n_out, c.n_expert}, FitRowLength(base, n_in)});
  };
  mat("token_embd.weight", c.n_embd, c.n_vocab, c.tied_embeddings ? out_type : wt.type);
  if (c.IsMoe() || c.IsHybrid()) {
    // qwen3moe, qwen35, qwen35moe, in llama.cpp's tensor names.
    const int64_t conv_dim = (2 * c.ssm_n_k_heads + c.ssm_n_v_heads) * c.ssm_head_dim;
    const int64_t value_dim = c.ssm_n_v_heads * c.ssm_head_dim;
    for (int64_t i = 0; i < c.n_layer; ++i) {
      const std::string p = "blk." + std::to_string(i) + ".";
      const GgmlType down = MixType(wt, Role::kFfnDown, i, c.n_layer);
      vec(p + "attn_norm.weight", c.n_embd);
      if (c.IsDeltaNetLayer(i)) {
        mat(p + "attn_qkv.weight", c.n_embd, conv_dim, wt.type);
        mat(p + "attn_gate.weight", c.n_embd, value_dim, wt.type);
        f32_mat(p + "ssm_conv1d.weight", {c.ssm_d_conv, conv_dim});
        vec(p + "ssm_dt.bias", c.ssm_n_v_heads);
        vec(p + "ssm_a", c.ssm_n_v_heads);
        mat(p + "ssm_beta.weight", c.n_embd, c.ssm_n_v_heads, wt.type);
        mat(p + "ssm_alpha.weight", c.n_embd, c.ssm_n_v_heads, wt.type);
        vec(p + "ssm_norm.weight", c.ssm_head_dim);
        mat(p + "ssm_out.weight", value_dim, c.n_embd, down);
      } else {
        // qwen35*: attn_q yields per head [q, gate].
        mat(p + "attn_q.weight", c.n_embd, c.IsHybrid() ? 2 * q_dim : q_dim, wt.type);
        mat(p + "attn_k.weight", c.n_embd, kv_dim, wt.type);
        mat(p + "attn_v.weight", c.n_embd, kv_dim, MixType(wt, Role::kAttnV, i_attn_v++, n_attn));
        mat(p + "attn_output.weight", q_dim, c.n_embd,
            MixType(wt, Role::kAttnOutput, i, c.n_layer));
        vec(p + "attn_q_norm.weight", hd);
        vec(p + "attn_k_norm.weight", hd);
      }
      vec(p + (c.IsHybrid() ? "post_attention_norm.weight" : "ffn_norm.weight"), c.n_embd);
      if (c.IsMoe()) {
        f32_mat(p + "ffn_gate_inp.weight", {c.n_embd, c.n_expert});
        experts(p + "ffn_gate_exps.weight", c.n_embd, c.n_ff_exp, wt.type);
        experts(p + "ffn_up_exps.weight", c.n_embd, c.n_ff_exp, wt.type);
        experts(p + "ffn_down_exps.weight", c.n_ff_exp, c.n_embd, down);
        if (c.n_ff_shexp > 0) {
          vec(p + "ffn_gate_inp_shexp.weight", c.n_embd);
          mat(p + "ffn_gate_shexp.weight", c.n_embd, c.n_ff_shexp, wt.type);
          mat(p + "ffn_up_shexp.weight", c.n_embd, c.n_ff_shexp, wt.type);
          mat(p + "ffn_down_shexp.weight", c.n_ff_shexp, c.n_embd, down);
        }
      } else {
        mat(p + "ffn_gate.weight", c.n_embd, c.n_ff, wt.type);
        mat(p + "ffn_up.weight", c.n_embd, c.n_ff, wt.type);
        mat(p + "ffn_down.weight", c.n_ff, c.n_embd, down);
      }
    }
    vec("output_norm.weight", c.n_embd);
    if (!c.tied_embeddings) mat("output.weight", c.n_embd, c.n_vocab, out_type);
    return plan;
  }
  if (c.rope_scaling_factor != 0.0f) vec("rope_freqs.weight", hd / 2);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    const GgmlType down = MixType(wt, Role::kFfnDown, i, c.n_layer);
    vec(p + "attn_norm.weight", c.n_embd);
    mat(p + "attn_q.weight", c.n_embd, q_dim, wt.type);
    if (c.HasQkvBias()) vec(p + "attn_q.bias", q_dim);
    mat(p + "attn_k.weight", c.n_embd, kv_dim, wt.type);
    if (c.HasQkvBias()) vec(p + "attn_k.bias", kv_dim);
    mat(p + "attn_v.weight", c.n_embd, kv_dim, MixType(wt, Role::kAttnV, i, c.n_layer));
    if (c.HasQkvBias()) vec(p + "attn_v.bias", kv_dim);
    mat(p + "attn_output.weight", q_dim, c.n_embd, MixType(wt, Role::kAttnOutput, i, c.n_layer));
    if (c.HasQkNorm()) {
      vec(p + "attn_q_norm.weight", hd);
      vec(p + "attn_k_norm.weight", hd);
    }
    vec(p + "ffn_norm.weight", c.n_embd);
    mat(p + "ffn_gate.weight", c.n_embd, c.n_ff, wt.type);
    mat(p + "ffn_up.weight", c.n_embd, c.n_ff, wt.type);
    mat(p + "ffn_down.weight", c.n_ff, c.n_embd, down);
  }
  vec("output_norm.weight", c.n_embd);
  if (!c.tied_embeddings) mat("output.weight", c.n_embd, c.n_vocab, out_type);
  return plan;
}

std::vector<float> Llama3RopeFactors(const ModelConfig& c) {
  // Mirrors convert_hf_to_gguf.py (LlamaModel.generate_extra_tensors): per rotary frequency,
  // wavelengths shorter than original_ctx/high_freq_factor keep factor 1, longer than
  // original_ctx/low_freq_factor get `factor`, and those between are interpolated smoothly.
  const int64_t hd = c.EffectiveHeadDim();
  const double old_ctx = static_cast<double>(c.rope_original_ctx);
  const double low_wavelen = old_ctx / c.rope_low_freq_factor;
  const double high_wavelen = old_ctx / c.rope_high_freq_factor;
  std::vector<float> factors;
  for (int64_t i = 0; i < hd; i += 2) {
    const float freq = static_cast<float>(
        1.0 / std::pow(static_cast<double>(c.rope_base),
                       static_cast<double>(static_cast<float>(i) / static_cast<float>(hd))));
    const double wavelen = 2.0 * std::numbers::pi / freq;
    if (wavelen < high_wavelen) {
      factors.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      factors.push_back(c.rope_scaling_factor);
    } else {
      const double smooth = (old_ctx / wavelen - c.rope_low_freq_factor) /
                            (c.rope_high_freq_factor - c.rope_low_freq_factor);
      factors.push_back(
          static_cast<float>(1.0 / ((1.0 - smooth) / c.rope_scaling_factor + smooth)));
    }
  }
  return factors;
}

// ---- Tokenizers -----------------------------------------------------------------------------

namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space marker

// Frequent English words (most frequent first), each used with a leading "▁". Suffix-like
// pieces follow as word-internal tokens.
constexpr std::string_view kWords =
    "the of and to a in is it you that he was for on are with as I his they be at one have this "
    "from or had by not but what some we can out other were all there when up use your how said "
    "an each she which do their time if will way about many then them write would like so these "
    "her long make thing see him two has look more day could go come did number sound no most "
    "people my over know water than call first who may down side been now find any new work part "
    "take get place made live where after back little only round man year came show every good "
    "me give our under name very through just form sentence great think say help low line differ "
    "turn cause much mean before move right boy old too same tell does set three want air well "
    "also play small end put home read hand port large spell add even land here must big high "
    "such follow act why ask men change went light kind off need house picture try us again "
    "animal point mother world near build self earth father head stand own page should country "
    "found answer school grow study still learn plant cover food sun four between state keep eye "
    "never last let thought city tree cross farm hard start might story saw far sea draw left "
    "late run don't while press close night real life few north open seem together next white "
    "children begin got walk example ease paper group always music those both mark often letter "
    "until mile river car feet care second book carry took science eat room friend began idea "
    "fish mountain stop once base hear horse cut sure watch color face wood main enough plain "
    "girl usual young ready above ever red list though feel talk bird soon body dog family "
    "direct pose leave song measure door product black short numeral class wind question happen "
    "complete ship area half rock order fire south problem piece told knew pass since top whole "
    "king space heard best hour better true during hundred five remember step early hold west "
    "ground interest reach fast verb sing listen six table travel less morning ten simple "
    "several vowel toward war lay against pattern slow center love person money serve appear "
    "road map rain rule govern pull cold notice voice unit power town fine certain fly fall lead "
    "cry dark machine note wait plan figure star box noun field rest correct able pound done "
    "beauty drive stood contain front teach week final gave green oh quick develop ocean warm "
    "free minute strong special mind behind clear tail produce fact street inch multiply nothing "
    "course stay wheel full force blue object decide surface deep moon island foot system busy "
    "test record boat common gold possible plane stead dry wonder laugh thousand ago ran check "
    "game shape equate hot miss brought heat snow tire bring yes distant fill east paint "
    "language among The He She It They We You In This But And What When Once Then There Lily Tom "
    "said. day. it. him. her. ing ed er ly tion s es ness ment able ful est";

// Pseudo-word k: consonant-vowel syllables spelling k in bijective base 75 ("ba", "be", ...,
// "zu", "baba", ...). Every syllable is two letters, so distinct k give distinct words.
std::string PseudoWord(uint64_t k) {
  constexpr std::string_view kConsonants = "bdfghklmnprstvz";
  constexpr std::string_view kVowels = "aeiou";
  constexpr uint64_t kSyllables = kConsonants.size() * kVowels.size();
  std::string word;
  for (uint64_t n = k + 1; n > 0; n = (n - 1) / kSyllables) {
    const uint64_t s = (n - 1) % kSyllables;
    word += kConsonants[s / kVowels.size()];
    word += kVowels[s % kVowels.size()];
  }
  return word;
}

void AddPiece(const std::string& piece, std::vector<std::string>& tokens,
              std::unordered_set<std::string>& seen, size_t limit) {
  // Prefix closure: add every shorter prefix (by UTF-8 character) first, so SPM's bigram merging
  // can build each piece from two tokens of the vocabulary.
  for (size_t len = 1; len <= piece.size() && tokens.size() < limit; ++len) {
    if (len < piece.size() && (static_cast<unsigned char>(piece[len]) & 0xC0) == 0x80) continue;
    std::string prefix = piece.substr(0, len);
    if (seen.insert(prefix).second) tokens.push_back(std::move(prefix));
  }
}

}  // namespace

Status AddBuiltinTokenizer(GgufWriter& w, int64_t n_vocab) {
  if (n_vocab < 259 || n_vocab > (int64_t{1} << 24)) {
    return Status::InvalidArgument("built-in tokenizer needs 259 <= n_vocab <= 2^24, got " +
                                   std::to_string(n_vocab));
  }
  const size_t limit = static_cast<size_t>(n_vocab);
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    tokens.emplace_back(buf);
    types.push_back(6);
  }
  // Normal pieces: "▁", printable ASCII, words with their prefixes, letter pairs, pseudo-words.
  std::vector<std::string> normal;
  std::unordered_set<std::string> seen;
  const size_t normal_limit = limit - tokens.size();
  AddPiece(std::string(kSpace), normal, seen, normal_limit);
  for (char ch = 33; ch < 127; ++ch) AddPiece(std::string(1, ch), normal, seen, normal_limit);
  for (size_t pos = 0; pos < kWords.size();) {
    size_t end = kWords.find(' ', pos);
    if (end == std::string_view::npos) end = kWords.size();
    const std::string word(kWords.substr(pos, end - pos));
    pos = end + 1;
    // Lowercase-initial words and capitalised words are word starts; the short tail pieces
    // ("ing", "ed", ...) are also useful word-internally.
    AddPiece(std::string(kSpace) + word, normal, seen, normal_limit);
    if (word.size() <= 4) AddPiece(word, normal, seen, normal_limit);
  }
  for (char a = 'a'; a <= 'z'; ++a) {
    for (char b = 'a'; b <= 'z'; ++b) {
      AddPiece(std::string(kSpace) + a + b, normal, seen, normal_limit);
      AddPiece(std::string(1, a) + b, normal, seen, normal_limit);
    }
  }
  // The rest are pseudo-words, as word starts and word-internal pieces, so that every id a model
  // samples prints visible text (no unused tokens). Word k never repeats, so this ends.
  for (uint64_t k = 0; normal.size() < normal_limit; ++k) {
    const std::string word = PseudoWord(k);
    AddPiece(std::string(kSpace) + word, normal, seen, normal_limit);
    AddPiece(word, normal, seen, normal_limit);
  }
  std::vector<float> scores(tokens.size(), 0.0f);
  for (size_t i = 0; i < normal.size(); ++i) {
    tokens.push_back(normal[i]);
    types.push_back(1);
    // SPM merges the highest-scoring bigram first; earlier (shorter, more frequent) pieces
    // score higher, like a trained model's log-probabilities.
    scores.push_back(-static_cast<float>(i));
  }
  w.SetString("tokenizer.ggml.model", "llama");
  w.SetStringArray("tokenizer.ggml.tokens", tokens);
  w.SetFloat32Array("tokenizer.ggml.scores", scores);
  w.SetInt32Array("tokenizer.ggml.token_type", types);
  w.SetUint32("tokenizer.ggml.bos_token_id", 1);
  w.SetUint32("tokenizer.ggml.eos_token_id", 2);
  w.SetUint32("tokenizer.ggml.unknown_token_id", 0);
  w.SetBool("tokenizer.ggml.add_bos_token", true);
  w.SetBool("tokenizer.ggml.add_eos_token", false);
  w.SetBool("tokenizer.ggml.add_space_prefix", true);
  return Status::Ok();
}

Result<int64_t> CopyTokenizerFrom(GgufWriter& w, const std::string& gguf_path) {
  KV_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> src, GgufFile::Open(gguf_path));
  KV_ASSIGN_OR_RETURN(const GgufArray* tokens, src->GetArray("tokenizer.ggml.tokens"));
  if (tokens->elem_type != GgufValueType::kString || tokens->count == 0) {
    return Status::InvalidArgument(gguf_path + ": tokenizer.ggml.tokens is not a string array");
  }
  for (const auto& [key, value] : src->metadata()) {
    if (key.starts_with("tokenizer.")) w.CopyValue(key, value);
  }
  return static_cast<int64_t>(tokens->count);
}

// ---- Generation -----------------------------------------------------------------------------

namespace {

// Fills rows [row_begin, row_end) of `spec` into `out` (the whole tensor's bytes).
Status GenerateRows(const TensorSpec& spec, const Init& init, uint64_t key, int64_t row_begin,
                    int64_t row_end, uint8_t* out) {
  const int64_t row_len = spec.dims[0];
  const size_t row_bytes = RowBytes(spec.type, row_len);
  std::vector<float> row(static_cast<size_t>(row_len));
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint64_t base = static_cast<uint64_t>(r) * static_cast<uint64_t>(row_len);
    for (int64_t i = 0; i < row_len; ++i) {
      row[i] = init.mean + init.stddev * UnitNormal(key, base + static_cast<uint64_t>(i));
    }
    KV_RETURN_IF_ERROR(
        QuantizeRow(spec.type, row.data(), out + static_cast<size_t>(r) * row_bytes, row_len));
  }
  return Status::Ok();
}

Result<std::vector<uint8_t>> GenerateTensor(const ModelConfig& c, const TensorSpec& spec,
                                            uint64_t seed, int n_threads) {
  std::vector<uint8_t> data(spec.n_bytes());
  if (spec.name == "rope_freqs.weight") {
    const std::vector<float> f = Llama3RopeFactors(c);
    std::memcpy(data.data(), f.data(), std::min(data.size(), f.size() * sizeof(float)));
    return data;
  }
  const Init init = InitFor(c, spec.name, spec.dims);
  const uint64_t key = TensorKey(seed, spec.name);
  const int64_t n_rows = spec.n_elements() / spec.dims[0];
  // Threads only pay off for big tensors; the split never changes the bytes.
  constexpr int64_t kMinElemsPerThread = int64_t{1} << 18;
  const int64_t want = std::max<int64_t>(1, spec.n_elements() / kMinElemsPerThread);
  const int n = static_cast<int>(std::min<int64_t>({want, n_threads, n_rows}));
  if (n <= 1) {
    KV_RETURN_IF_ERROR(GenerateRows(spec, init, key, 0, n_rows, data.data()));
    return data;
  }
  std::vector<Status> results(static_cast<size_t>(n));
  std::vector<std::thread> workers;
  for (int t = 0; t < n; ++t) {
    const int64_t begin = n_rows * t / n, end = n_rows * (t + 1) / n;
    workers.emplace_back([&, t, begin, end] {
      results[t] = GenerateRows(spec, init, key, begin, end, data.data());
    });
  }
  for (std::thread& th : workers) th.join();
  for (const Status& st : results) KV_RETURN_IF_ERROR(st);
  return data;
}

}  // namespace

Result<GgufWriter> BuildSyntheticModel(const MkModelOptions& options, MkModelSummary* summary) {
  ModelConfig c = options.config;
  if (c.name.empty()) c.name = "kvstash-synthetic";
  KV_RETURN_IF_ERROR(ValidateConfig(c));
  GgufWriter w;
  w.SetAlignment(options.alignment);
  // Key order follows llama.cpp's converter: general, hparams, tokenizer. vocab_size is set to a
  // placeholder first and rewritten in place once the tokenizer has decided the token count.
  const std::string& a = c.arch;
  const int64_t hd = c.EffectiveHeadDim();
  const auto u32 = [](int64_t v) { return static_cast<uint32_t>(v); };
  w.SetString("general.architecture", a);
  w.SetString("general.name", c.name);
  w.SetUint32(std::string(kMkModelVersionKey), kMkModelVersion);
  w.SetUint32(a + ".vocab_size", 0);
  w.SetUint32(a + ".context_length", u32(c.n_ctx));
  w.SetUint32(a + ".embedding_length", u32(c.n_embd));
  w.SetUint32(a + ".block_count", u32(c.n_layer));
  w.SetUint32(a + ".feed_forward_length", u32(c.n_ff));
  w.SetUint32(a + ".attention.head_count", u32(c.n_head));
  w.SetUint32(a + ".attention.head_count_kv", u32(c.n_head_kv));
  w.SetFloat32(a + ".attention.layer_norm_rms_epsilon", c.norm_eps);
  w.SetFloat32(a + ".rope.freq_base", c.rope_base);
  w.SetUint32(a + ".rope.dimension_count", u32(c.EffectiveNRot()));
  if (c.n_embd % c.n_head != 0 || hd != c.n_embd / c.n_head) {
    w.SetUint32(a + ".attention.key_length", u32(hd));
    w.SetUint32(a + ".attention.value_length", u32(hd));
  }
  if (c.IsMoe()) {
    w.SetUint32(a + ".expert_count", u32(c.n_expert));
    w.SetUint32(a + ".expert_used_count", u32(c.n_expert_used));
    w.SetUint32(a + ".expert_feed_forward_length", u32(c.n_ff_exp));
    if (c.n_ff_shexp > 0) {
      w.SetUint32(a + ".expert_shared_feed_forward_length", u32(c.n_ff_shexp));
    }
  }
  if (c.IsHybrid()) {
    w.SetInt32Array(
        a + ".rope.dimension_sections",
        {static_cast<int32_t>(c.rope_sections[0]), static_cast<int32_t>(c.rope_sections[1]),
         static_cast<int32_t>(c.rope_sections[2]), static_cast<int32_t>(c.rope_sections[3])});
    w.SetUint32(a + ".ssm.conv_kernel", u32(c.ssm_d_conv));
    w.SetUint32(a + ".ssm.state_size", u32(c.ssm_head_dim));
    w.SetUint32(a + ".ssm.group_count", u32(c.ssm_n_k_heads));
    w.SetUint32(a + ".ssm.time_step_rank", u32(c.ssm_n_v_heads));
    w.SetUint32(a + ".ssm.inner_size", u32(c.ssm_n_v_heads * c.ssm_head_dim));
    w.SetUint32(a + ".full_attention_interval", u32(c.full_attention_interval));
  }
  w.SetUint32("general.file_type", LlamaFileType(options.weight_type));
  if (Traits(options.weight_type.type).block_elems > 1) {
    w.SetUint32("general.quantization_version", 2);
  }
  if (options.tokenizer) {
    KV_ASSIGN_OR_RETURN(c.n_vocab, options.tokenizer(w));
  } else if (!options.tokenizer_gguf.empty()) {
    KV_ASSIGN_OR_RETURN(c.n_vocab, CopyTokenizerFrom(w, options.tokenizer_gguf));
  } else {
    KV_RETURN_IF_ERROR(AddBuiltinTokenizer(w, c.n_vocab));
  }
  w.SetUint32(a + ".vocab_size", u32(c.n_vocab));
  KV_ASSIGN_OR_RETURN(std::vector<TensorSpec> plan, PlanTensors(c, options.weight_type));

  const int n_threads = options.n_threads > 0
                            ? options.n_threads
                            : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  MkModelProgress progress;
  progress.n_tensors = static_cast<int64_t>(plan.size());
  for (const TensorSpec& s : plan) progress.bytes_total += s.n_bytes();
  int64_t n_params = 0;
  for (const TensorSpec& s : plan) {
    KV_ASSIGN_OR_RETURN(std::vector<uint8_t> data, GenerateTensor(c, s, options.seed, n_threads));
    n_params += s.n_elements();
    progress.bytes_done += data.size();
    w.AddTensor(s.name, s.dims, s.type, std::move(data));
    ++progress.tensors_done;
    progress.tensor = s.name;
    if (options.progress) options.progress(progress);
  }
  if (summary != nullptr) {
    summary->name = c.name;
    summary->arch = c.arch;
    summary->type = WeightTypeName(options.weight_type);
    summary->n_params = n_params;
    summary->n_vocab = c.n_vocab;
    summary->n_tensors = static_cast<int64_t>(plan.size());
    summary->file_bytes = 0;  // known once serialized or written
  }
  return w;
}

Result<MkModelSummary> WriteSyntheticModel(const std::string& path, const MkModelOptions& options) {
  MkModelSummary summary;
  KV_ASSIGN_OR_RETURN(GgufWriter w, BuildSyntheticModel(options, &summary));
  KV_RETURN_IF_ERROR(w.WriteFile(path));
  std::error_code ec;
  summary.path = path;
  summary.file_bytes = std::filesystem::file_size(path, ec);
  if (ec) return Status::IOError("stat " + path + ": " + ec.message());
  return summary;
}

}  // namespace kvstash::engine
