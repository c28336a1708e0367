// Tests for engine/mkmodel.h: presets (shapes and parameter counts of the real models), the
// tensor plan (llama.cpp names, type mix, fallbacks), metadata of generated files, the built-in
// tokenizer (every id prints distinct text), determinism, weight statistics, and the
// kvstash-mkmodel CLI.

#include "engine/model/mkmodel.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <unordered_set>

#include "engine/gguf/gguf.h"
#include "engine/gguf/quant.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"
#include "tests/fixtures.h"

namespace kvstash::engine {
namespace {

std::string TempPath(const std::string& leaf) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("kvstash-mkmodel-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / leaf).string();
}

MkModelOptions Options(const std::string& preset, const std::string& type = "f16",
                       uint64_t seed = 1) {
  MkModelOptions o;
  auto c = FindPreset(preset);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  if (c.ok()) o.config = *c;
  auto t = ParseWeightType(type);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  if (t.ok()) o.weight_type = *t;
  o.seed = seed;
  return o;
}

struct Built {
  std::vector<uint8_t> bytes;
  std::unique_ptr<GgufFile> file;
  MkModelSummary summary;
};

Built Build(const MkModelOptions& o) {
  Built b;
  auto w = BuildSyntheticModel(o, &b.summary);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  if (!w.ok()) return b;
  b.bytes = w->Serialize();
  auto f = GgufFile::OpenBytes(b.bytes);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  if (f.ok()) b.file = std::move(*f);
  return b;
}

int64_t ParamCount(const std::string& preset) {
  auto plan = PlanTensors(*FindPreset(preset), WeightType{});
  EXPECT_TRUE(plan.ok()) << plan.status().ToString();
  int64_t n = 0;
  for (const TensorSpec& s : *plan) n += s.n_elements();
  return n;
}

std::vector<float> DequantTensor(const GgufTensorInfo& t) {
  std::vector<float> out(static_cast<size_t>(t.n_elements()));
  EXPECT_TRUE(DequantizeRow(t.type, t.data, out.data(), t.n_elements()).ok());
  return out;
}

TEST(MkModelPresets, AllValidateAndAreListed) {
  std::set<std::string> names;
  for (const ModelPreset& p : ModelPresets()) {
    EXPECT_TRUE(ValidateConfig(p.config).ok()) << p.name;
    EXPECT_FALSE(p.description.empty());
    names.insert(std::string(p.name));
  }
  for (const char* n :
       {"default", "stories260k", "smollm2-135m", "qwen3-0.6b", "llama-3.2-1b", "llama-3.1-8b",
        "qwen2.5-7b", "qwen2.5-0.5b", "tiny-llama", "tiny-qwen2", "tiny-qwen3"}) {
    EXPECT_TRUE(names.count(n)) << n;
  }
  EXPECT_EQ(FindPreset("no-such-model").status().code(), StatusCode::kNotFound);
  EXPECT_NE(FindPreset("nope").status().message().find("qwen3-0.6b"), std::string::npos);
  EXPECT_TRUE(FindPreset("Qwen3-0.6B").ok());  // case-insensitive
}

TEST(MkModelPresets, ParameterCountsMatchTheRealModels) {
  // Hugging Face parameter counts (embeddings counted once when tied); llama-3 presets also
  // carry rope_freqs.weight (head_dim / 2 floats), which is not a model parameter.
  EXPECT_EQ(ParamCount("smollm2-135m"), 134515008);
  EXPECT_EQ(ParamCount("qwen2.5-0.5b"), 494032768);
  EXPECT_EQ(ParamCount("qwen3-0.6b"), 596049920);
  EXPECT_EQ(ParamCount("llama-3.2-1b"), 1235814400 + 32);
  EXPECT_EQ(ParamCount("llama-3.1-8b"), 8030261248 + 64);
  EXPECT_EQ(ParamCount("qwen2.5-7b"), 7615616512);
  EXPECT_EQ(ParamCount("stories260k"), 292800);
  EXPECT_EQ(ParamCount("qwen3-30b-a3b"), 30532122624);  // HF: 30.53B
  // Text trunk only (no MTP block, no vision tower), so a little under the names.
  EXPECT_EQ(ParamCount("qwen3.6-27b"), 26895998464);
  EXPECT_EQ(ParamCount("qwen3.6-35b-a3b"), 34660610688);
  const int64_t def = ParamCount("default");
  EXPECT_GT(def, 20000000);
  EXPECT_LT(def, 40000000);
}

TEST(MkModelPresets, KvShapesOfTheBigPresets) {
  const ModelConfig q3 = *FindPreset("qwen3-0.6b");
  EXPECT_EQ(q3.EffectiveHeadDim(), 128);  // != 1024 / 16
  EXPECT_TRUE(q3.HasQkNorm());
  const ModelConfig l8 = *FindPreset("llama-3.1-8b");
  EXPECT_EQ(l8.EffectiveHeadDim(), 128);
  EXPECT_EQ(l8.n_head_kv, 8);
  EXPECT_FALSE(l8.tied_embeddings);
  EXPECT_EQ(l8.rope_scaling_factor, 8.0f);
  EXPECT_EQ(FindPreset("llama-3.2-1b")->rope_scaling_factor, 32.0f);
  EXPECT_TRUE(FindPreset("qwen2.5-7b")->HasQkvBias());
  EXPECT_EQ(FindPreset("qwen2.5-7b")->n_vocab, 152064);
  // Hybrid presets: 3 of 4 layers DeltaNet, partial rotary with llama.cpp's default sections.
  const ModelConfig q27 = *FindPreset("qwen3.6-27b");
  int deltanet = 0;
  for (int64_t i = 0; i < q27.n_layer; ++i) deltanet += q27.IsDeltaNetLayer(i);
  EXPECT_EQ(deltanet, 48);
  EXPECT_EQ(q27.EffectiveNRot(), 64);
  EXPECT_EQ(q27.rope_sections[0], 11);
  EXPECT_EQ(q27.rope_sections[1], 11);
  EXPECT_EQ(q27.rope_sections[2], 10);
  EXPECT_EQ(q27.ssm_n_v_heads, 48);
  const ModelConfig q35 = *FindPreset("qwen3.6-35b-a3b");
  EXPECT_EQ(q35.n_expert, 256);
  EXPECT_EQ(q35.n_expert_used, 8);
  EXPECT_EQ(q35.n_ff_shexp, 512);
  EXPECT_EQ(FindPreset("qwen3-30b-a3b")->n_expert, 128);
}

TEST(MkModelPlan, BigPresetQ4KMTypesFollowLlamaQuantize) {
  auto plan = PlanTensors(*FindPreset("llama-3.1-8b"), *ParseWeightType("q4_k_m"));
  ASSERT_TRUE(plan.ok());
  std::map<std::string, TensorSpec> by;
  for (const TensorSpec& s : *plan) by[s.name] = s;
  EXPECT_EQ(by["output.weight"].type, GgmlType::kQ6_K);
  EXPECT_EQ(by["token_embd.weight"].type, GgmlType::kQ4_K);
  EXPECT_EQ(by["rope_freqs.weight"].type, GgmlType::kF32);
  EXPECT_EQ(by["blk.0.attn_q.weight"].type, GgmlType::kQ4_K);
  // use_more_bits(i, 32): i < 4 || i >= 28 || (i - 4) % 3 == 2.
  for (int i = 0; i < 32; ++i) {
    const bool more = i < 4 || i >= 28 || (i - 4) % 3 == 2;
    const GgmlType want = more ? GgmlType::kQ6_K : GgmlType::kQ4_K;
    EXPECT_EQ(by["blk." + std::to_string(i) + ".attn_v.weight"].type, want) << i;
    EXPECT_EQ(by["blk." + std::to_string(i) + ".ffn_down.weight"].type, want) << i;
    EXPECT_EQ(by["blk." + std::to_string(i) + ".ffn_up.weight"].type, GgmlType::kQ4_K) << i;
  }
  EXPECT_EQ(by["blk.31.ffn_down.weight"].dims, (std::vector<int64_t>{14336, 4096}));
  EXPECT_EQ(by["blk.0.attn_k.weight"].dims, (std::vector<int64_t>{4096, 1024}));
  uint64_t bytes = 0;
  for (const TensorSpec& s : *plan) bytes += s.n_bytes();
  EXPECT_GT(bytes, 4'500'000'000ull);  // the real Q4_K_M file is 4.92 GB
  EXPECT_LT(bytes, 5'100'000'000ull);
}

TEST(MkModelPlan, BigPresetQ3KMAndQ5KMTypesFollowLlamaQuantize) {
  // llama-quant.cpp for a dense llama (not falcon, not 8 experts), n_layer 32.
  auto q3 = PlanTensors(*FindPreset("llama-3.1-8b"), *ParseWeightType("q3_k_m"));
  auto q5 = PlanTensors(*FindPreset("llama-3.1-8b"), *ParseWeightType("Q5_K_M"));
  ASSERT_TRUE(q3.ok());
  ASSERT_TRUE(q5.ok());
  std::map<std::string, TensorSpec> a, b;
  for (const TensorSpec& s : *q3) a[s.name] = s;
  for (const TensorSpec& s : *q5) b[s.name] = s;
  EXPECT_EQ(a["output.weight"].type, GgmlType::kQ6_K);
  EXPECT_EQ(b["output.weight"].type, GgmlType::kQ6_K);
  EXPECT_EQ(a["token_embd.weight"].type, GgmlType::kQ3_K);
  EXPECT_EQ(b["token_embd.weight"].type, GgmlType::kQ5_K);
  for (int i = 0; i < 32; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    const bool more = i < 4 || i >= 28 || (i - 4) % 3 == 2;
    // Q3_K_M: attn_v Q5_K in the first two layers, else Q4_K; attn_output Q4_K; ffn_down Q5_K
    // below n_layer / 16, Q4_K where use_more_bits, else Q3_K; the rest Q3_K.
    EXPECT_EQ(a[p + "attn_v.weight"].type, i < 2 ? GgmlType::kQ5_K : GgmlType::kQ4_K) << i;
    EXPECT_EQ(a[p + "attn_output.weight"].type, GgmlType::kQ4_K) << i;
    EXPECT_EQ(a[p + "ffn_down.weight"].type,
              i < 2 ? GgmlType::kQ5_K : (more ? GgmlType::kQ4_K : GgmlType::kQ3_K))
        << i;
    EXPECT_EQ(a[p + "ffn_up.weight"].type, GgmlType::kQ3_K) << i;
    // Q5_K_M: Q5_K, Q6_K for attn_v and ffn_down where use_more_bits.
    const GgmlType want5 = more ? GgmlType::kQ6_K : GgmlType::kQ5_K;
    EXPECT_EQ(b[p + "attn_v.weight"].type, want5) << i;
    EXPECT_EQ(b[p + "ffn_down.weight"].type, want5) << i;
    EXPECT_EQ(b[p + "attn_output.weight"].type, GgmlType::kQ5_K) << i;
  }
  uint64_t bytes3 = 0, bytes5 = 0;
  for (const TensorSpec& s : *q3) bytes3 += s.n_bytes();
  for (const TensorSpec& s : *q5) bytes5 += s.n_bytes();
  EXPECT_GT(bytes3, 3'700'000'000ull);  // the real Q3_K_M file is 4.02 GB
  EXPECT_LT(bytes3, 4'200'000'000ull);
  EXPECT_GT(bytes5, 5'400'000'000ull);  // the real Q5_K_M file is 5.73 GB
  EXPECT_LT(bytes5, 5'900'000'000ull);
  EXPECT_EQ(LlamaFileType(*ParseWeightType("q3_k_m")), 12u);
  EXPECT_EQ(LlamaFileType(*ParseWeightType("q5_k_m")), 17u);
  EXPECT_EQ(LlamaFileType(*ParseWeightType("iq4_xs")), 30u);
}

TEST(MkModelPlan, NewTypesFallBackLikeLlamaQuantize) {
  // qwen2.5-0.5b rows of 896 elements: Q5_K -> Q5_1, Q3_K -> Q4_0, IQ4_XS -> IQ4_NL.
  for (const auto& [name, want] : std::vector<std::pair<std::string, GgmlType>>{
           {"q5_k", GgmlType::kQ5_1}, {"q3_k", GgmlType::kQ4_0}, {"iq4_xs", GgmlType::kIQ4_NL}}) {
    auto plan = PlanTensors(*FindPreset("qwen2.5-0.5b"), *ParseWeightType(name));
    ASSERT_TRUE(plan.ok());
    for (const TensorSpec& s : *plan) {
      if (s.name == "blk.0.attn_q.weight") {
        EXPECT_EQ(s.type, want) << name;
      }
    }
  }
}

TEST(MkModelPlan, RowsThatDoNotFitFallBackLikeLlamaQuantize) {
  // qwen2.5-0.5b: n_embd 896 is not a multiple of 256. Tied, so token_embd is the LM head.
  auto plan = PlanTensors(*FindPreset("qwen2.5-0.5b"), *ParseWeightType("q4_k_m"));
  ASSERT_TRUE(plan.ok());
  std::map<std::string, GgmlType> t;
  for (const TensorSpec& s : *plan) t[s.name] = s.type;
  EXPECT_EQ(t["token_embd.weight"], GgmlType::kQ8_0);      // Q6_K -> Q8_0
  EXPECT_EQ(t["blk.5.attn_q.weight"], GgmlType::kQ5_0);    // Q4_K -> Q5_0
  EXPECT_EQ(t["blk.0.ffn_down.weight"], GgmlType::kQ6_K);  // row 4864 = 19 * 256
  EXPECT_EQ(t["blk.4.ffn_down.weight"], GgmlType::kQ4_K);  // use_more_bits(4, 24) is false
  EXPECT_EQ(t["blk.5.ffn_down.weight"], GgmlType::kQ6_K);  // (5 - 3) % 3 == 2
  EXPECT_EQ(t.count("output.weight"), 0u);
  // stories260k: ffn_down rows are 172 long, not a multiple of 32 either -> F16.
  auto s = PlanTensors(*FindPreset("stories260k"), *ParseWeightType("q8_0"));
  ASSERT_TRUE(s.ok());
  for (const TensorSpec& spec : *s) {
    if (spec.dims.size() == 1) {
      EXPECT_EQ(spec.type, GgmlType::kF32) << spec.name;
    } else if (spec.name.find("ffn_down") != std::string::npos) {
      EXPECT_EQ(spec.type, GgmlType::kF16) << spec.name;
    } else {
      EXPECT_EQ(spec.type, GgmlType::kQ8_0) << spec.name;
    }
  }
}

TEST(MkModelPlan, InvalidConfigsAreRejected) {
  ModelConfig c = *FindPreset("tiny-llama");
  c.n_head_kv = 3;  // 4 % 3 != 0
  EXPECT_EQ(ValidateConfig(c).code(), StatusCode::kInvalidArgument);
  c = *FindPreset("tiny-llama");
  c.arch = "gpt2";
  EXPECT_EQ(ValidateConfig(c).code(), StatusCode::kInvalidArgument);
  c = *FindPreset("tiny-llama");
  c.n_embd = 250;  // not a multiple of 4 heads without head_dim
  EXPECT_EQ(ValidateConfig(c).code(), StatusCode::kInvalidArgument);
  c.head_dim = 64;
  EXPECT_TRUE(ValidateConfig(c).ok());
  c = *FindPreset("tiny-qwen2");
  c.rope_scaling_factor = 8;  // llama only
  EXPECT_EQ(ValidateConfig(c).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseWeightType("q2_k").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(WeightTypeName(*ParseWeightType("Q4_K_M")), "q4_k_m");
  EXPECT_EQ(WeightTypeName(*ParseWeightType("q6_K")), "q6_k");
  MkModelOptions o = Options("tiny-llama");
  o.config.n_vocab = 100;  // too small for the built-in tokenizer
  EXPECT_EQ(BuildSyntheticModel(o).status().code(), StatusCode::kInvalidArgument);
}

TEST(MkModelRope, Llama3FactorsFollowTheConverterFormula) {
  const ModelConfig c = *FindPreset("llama-3.1-8b");
  const std::vector<float> f = Llama3RopeFactors(c);
  ASSERT_EQ(f.size(), 64u);
  EXPECT_EQ(f[0], 1.0f);   // highest frequency: wavelength 2*pi < 8192/4
  EXPECT_EQ(f[63], 8.0f);  // lowest frequency: wavelength > 8192
  for (size_t i = 1; i < f.size(); ++i) EXPECT_GE(f[i], f[i - 1]);
  // A band in between is interpolated: check one by hand. i = 2*k over head_dim 128.
  int n_mid = 0;
  for (size_t k = 0; k < f.size(); ++k) {
    const double freq = 1.0 / std::pow(500000.0, (2.0 * k) / 128.0);
    const double wavelen = 2 * 3.14159265358979 / freq;
    if (wavelen >= 2048 && wavelen <= 8192) {
      const double smooth = (8192 / wavelen - 1) / 3;
      EXPECT_NEAR(f[k], 1 / ((1 - smooth) / 8 + smooth), 1e-4) << k;
      ++n_mid;
    }
  }
  EXPECT_GT(n_mid, 0);
  EXPECT_EQ(Llama3RopeFactors(*FindPreset("llama-3.2-1b")).back(), 32.0f);
}

// ---- Generated files ------------------------------------------------------------------------

void ExpectTensor(const GgufFile& f, const std::string& name, std::vector<int64_t> dims) {
  const GgufTensorInfo* t = f.FindTensor(name);
  ASSERT_NE(t, nullptr) << name;
  EXPECT_EQ(t->dims, dims) << name;
  if (dims.size() == 1) {
    EXPECT_EQ(t->type, GgmlType::kF32) << name;
  }
}

void ExpectArchMetadata(const GgufFile& f, const ModelConfig& c) {
  const std::string a = c.arch;
  EXPECT_EQ(*f.GetString("general.architecture"), a);
  EXPECT_EQ(*f.GetString("general.name"), c.name);
  EXPECT_EQ(f.Find("general.alignment"), nullptr);
  EXPECT_EQ(*f.GetUint(a + ".context_length"), static_cast<uint64_t>(c.n_ctx));
  EXPECT_EQ(*f.GetUint(a + ".embedding_length"), static_cast<uint64_t>(c.n_embd));
  EXPECT_EQ(*f.GetUint(a + ".block_count"), static_cast<uint64_t>(c.n_layer));
  EXPECT_EQ(*f.GetUint(a + ".feed_forward_length"), static_cast<uint64_t>(c.n_ff));
  EXPECT_EQ(*f.GetUint(a + ".attention.head_count"), static_cast<uint64_t>(c.n_head));
  EXPECT_EQ(*f.GetUint(a + ".attention.head_count_kv"), static_cast<uint64_t>(c.n_head_kv));
  EXPECT_FLOAT_EQ(static_cast<float>(*f.GetFloat(a + ".attention.layer_norm_rms_epsilon")),
                  c.norm_eps);
  EXPECT_FLOAT_EQ(static_cast<float>(*f.GetFloat(a + ".rope.freq_base")), c.rope_base);
  const int64_t hd = c.EffectiveHeadDim();
  EXPECT_EQ(*f.GetUint(a + ".rope.dimension_count"), static_cast<uint64_t>(hd));
  const bool custom_hd = hd * c.n_head != c.n_embd;
  EXPECT_EQ(f.Find(a + ".attention.key_length") != nullptr, custom_hd);
  EXPECT_EQ(f.Find(a + ".attention.value_length") != nullptr, custom_hd);
  if (custom_hd) {
    EXPECT_EQ(*f.GetUint(a + ".attention.key_length"), static_cast<uint64_t>(hd));
  }
  EXPECT_TRUE(f.GetUint("general.file_type").ok());
}

void ExpectTensors(const GgufFile& f, const ModelConfig& c, int64_t n_vocab) {
  const int64_t hd = c.EffectiveHeadDim();
  size_t n = 2;  // token_embd, output_norm
  ExpectTensor(f, "token_embd.weight", {c.n_embd, n_vocab});
  ExpectTensor(f, "output_norm.weight", {c.n_embd});
  EXPECT_EQ(f.FindTensor("output.weight") != nullptr, !c.tied_embeddings);
  if (!c.tied_embeddings) {
    ExpectTensor(f, "output.weight", {c.n_embd, n_vocab});
    ++n;
  }
  EXPECT_EQ(f.FindTensor("rope_freqs.weight") != nullptr, c.rope_scaling_factor != 0);
  if (c.rope_scaling_factor != 0) {
    ExpectTensor(f, "rope_freqs.weight", {hd / 2});
    ++n;
  }
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    ExpectTensor(f, p + "attn_norm.weight", {c.n_embd});
    ExpectTensor(f, p + "attn_q.weight", {c.n_embd, c.n_head * hd});
    ExpectTensor(f, p + "attn_k.weight", {c.n_embd, c.n_head_kv * hd});
    ExpectTensor(f, p + "attn_v.weight", {c.n_embd, c.n_head_kv * hd});
    ExpectTensor(f, p + "attn_output.weight", {c.n_head * hd, c.n_embd});
    ExpectTensor(f, p + "ffn_norm.weight", {c.n_embd});
    ExpectTensor(f, p + "ffn_gate.weight", {c.n_embd, c.n_ff});
    ExpectTensor(f, p + "ffn_up.weight", {c.n_embd, c.n_ff});
    ExpectTensor(f, p + "ffn_down.weight", {c.n_ff, c.n_embd});
    n += 9;
    if (c.HasQkvBias()) {
      ExpectTensor(f, p + "attn_q.bias", {c.n_head * hd});
      ExpectTensor(f, p + "attn_k.bias", {c.n_head_kv * hd});
      ExpectTensor(f, p + "attn_v.bias", {c.n_head_kv * hd});
      n += 3;
    }
    if (c.HasQkNorm()) {
      ExpectTensor(f, p + "attn_q_norm.weight", {hd});
      ExpectTensor(f, p + "attn_k_norm.weight", {hd});
      n += 2;
    }
  }
  EXPECT_EQ(f.tensors().size(), n);
}

class MkModelSmallPreset : public ::testing::TestWithParam<std::string> {};

TEST_P(MkModelSmallPreset, MetadataTensorsAndTokenizerAreComplete) {
  const MkModelOptions o = Options(GetParam());
  const Built b = Build(o);
  ASSERT_NE(b.file, nullptr);
  const GgufFile& f = *b.file;
  ExpectArchMetadata(f, o.config);
  ExpectTensors(f, o.config, o.config.n_vocab);
  EXPECT_EQ(*f.GetUint(o.config.arch + ".vocab_size"), static_cast<uint64_t>(o.config.n_vocab));
  EXPECT_EQ(*f.GetUint("general.file_type"), 1u);  // MOSTLY_F16
  EXPECT_EQ(f.Find("general.quantization_version"), nullptr);
  EXPECT_EQ(*f.GetString("tokenizer.ggml.model"), "llama");
  EXPECT_EQ((*f.GetArray("tokenizer.ggml.tokens"))->count, static_cast<uint64_t>(o.config.n_vocab));
  EXPECT_EQ((*f.GetArray("tokenizer.ggml.scores"))->count, static_cast<uint64_t>(o.config.n_vocab));
  EXPECT_EQ((*f.GetArray("tokenizer.ggml.token_type"))->count,
            static_cast<uint64_t>(o.config.n_vocab));
  EXPECT_EQ(*f.GetUint("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ(*f.GetUint("tokenizer.ggml.eos_token_id"), 2u);
  EXPECT_EQ(*f.GetUint("tokenizer.ggml.unknown_token_id"), 0u);
  EXPECT_TRUE(*f.GetBool("tokenizer.ggml.add_bos_token"));
  EXPECT_EQ(b.summary.n_vocab, o.config.n_vocab);
  EXPECT_EQ(b.summary.arch, o.config.arch);
  EXPECT_EQ(b.summary.n_tensors, static_cast<int64_t>(f.tensors().size()));
  EXPECT_EQ(b.summary.n_params, ParamCount(GetParam()));
  for (const GgufTensorInfo& t : f.tensors()) {
    if (t.dims.size() == 2 && t.dims[0] % 32 == 0) {
      EXPECT_EQ(t.type, GgmlType::kF16) << t.name;
    }
    for (float v : DequantTensor(t)) ASSERT_TRUE(std::isfinite(v)) << t.name;
  }
}

INSTANTIATE_TEST_SUITE_P(MkModel, MkModelSmallPreset,
                         ::testing::Values("stories260k", "tiny-llama", "tiny-llama3", "tiny-qwen2",
                                           "tiny-qwen3", "default"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string n = i.param;
                           for (char& ch : n)
                             ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
                           return n;
                         });

TEST(MkModelFile, EveryWeightTypeIsWrittenAndDecodes) {
  for (const char* type : {"f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "q5_1", "q4_k", "q6_k",
                           "q4_k_m", "q3_k", "q5_k", "iq4_nl", "iq4_xs", "q3_k_m", "q5_k_m"}) {
    const MkModelOptions o = Options("tiny-qwen3", type);
    const Built b = Build(o);
    ASSERT_NE(b.file, nullptr) << type;
    EXPECT_EQ(*b.file->GetUint("general.file_type"), LlamaFileType(o.weight_type)) << type;
    EXPECT_EQ(b.file->Find("general.quantization_version") != nullptr,
              Traits(o.weight_type.type).block_elems > 1)
        << type;
    const GgufTensorInfo* q = b.file->FindTensor("blk.1.attn_q.weight");
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q->type, o.weight_type.type) << type;
    // Values stay close to the generating distribution: stddev 1/sqrt(256) = 0.0625.
    const std::vector<float> v = DequantTensor(*q);
    double s2 = 0;
    for (float x : v) s2 += double(x) * x;
    EXPECT_NEAR(std::sqrt(s2 / v.size()), 0.0625, 0.0625 * 0.1) << type;
  }
}

TEST(MkModelFile, Q4KMFileUsesTheMix) {
  const Built b = Build(Options("tiny-llama", "q4_k_m"));
  ASSERT_NE(b.file, nullptr);
  EXPECT_EQ(b.file->FindTensor("output.weight")->type, GgmlType::kQ6_K);
  EXPECT_EQ(b.file->FindTensor("token_embd.weight")->type, GgmlType::kQ4_K);
  // use_more_bits(i, 2) is true only for i = 1 (i >= 7 * 2 / 8).
  EXPECT_EQ(b.file->FindTensor("blk.0.attn_v.weight")->type, GgmlType::kQ4_K);
  EXPECT_EQ(b.file->FindTensor("blk.1.attn_v.weight")->type, GgmlType::kQ6_K);
  EXPECT_EQ(b.file->FindTensor("blk.0.ffn_down.weight")->type, GgmlType::kQ4_K);
  EXPECT_EQ(b.file->FindTensor("blk.1.ffn_down.weight")->type, GgmlType::kQ6_K);
  EXPECT_EQ(b.file->FindTensor("blk.0.ffn_up.weight")->type, GgmlType::kQ4_K);
  EXPECT_EQ(*b.file->GetUint("general.file_type"), 15u);
}

TEST(MkModelFile, SameSeedSameBytesRegardlessOfThreads) {
  MkModelOptions o = Options("tiny-qwen2", "q4_k_m", 42);
  o.n_threads = 1;
  const Built a = Build(o);
  o.n_threads = 3;
  const Built b = Build(o);
  EXPECT_EQ(a.bytes, b.bytes);
  o.seed = 43;
  const Built c = Build(o);
  ASSERT_EQ(a.bytes.size(), c.bytes.size());
  EXPECT_NE(a.bytes, c.bytes);
  // Different tensors get different values even with equal shapes.
  const GgufTensorInfo* g = a.file->FindTensor("blk.0.ffn_gate.weight");
  const GgufTensorInfo* u = a.file->FindTensor("blk.0.ffn_up.weight");
  EXPECT_NE(std::memcmp(g->data, u->data, g->n_bytes), 0);
}

TEST(MkModelFile, BigTensorsSplitAcrossThreadsAreDeterministic) {
  // The default preset's token_embd (2M elements) is split into several row ranges.
  MkModelOptions o = Options("default", "q8_0", 5);
  o.config.n_layer = 1;
  o.n_threads = 1;
  const Built a = Build(o);
  o.n_threads = 4;
  const Built b = Build(o);
  EXPECT_EQ(a.bytes, b.bytes);
}

TEST(MkModelFile, CustomAlignmentIsWritten) {
  MkModelOptions o = Options("tiny-llama", "q6_k");
  o.alignment = 256;
  const Built b = Build(o);
  ASSERT_NE(b.file, nullptr);
  EXPECT_EQ(*b.file->GetUint("general.alignment"), 256u);
  EXPECT_EQ(b.file->alignment(), 256u);
  for (const GgufTensorInfo& t : b.file->tensors()) EXPECT_EQ(t.offset % 256, 0u) << t.name;
}

TEST(MkModelFile, WeightScalesAreWellConditioned) {
  const Built b = Build(Options("tiny-llama", "f32"));
  ASSERT_NE(b.file, nullptr);
  const auto stats = [&](const std::string& name) {
    const std::vector<float> v = DequantTensor(*b.file->FindTensor(name));
    double m = 0, s2 = 0;
    for (float x : v) m += x;
    m /= v.size();
    for (float x : v) s2 += (x - m) * (x - m);
    return std::pair<double, double>{m, std::sqrt(s2 / v.size())};
  };
  auto [m_norm, s_norm] = stats("blk.0.attn_norm.weight");
  EXPECT_NEAR(m_norm, 1.0, 0.02);
  EXPECT_NEAR(s_norm, 0.1, 0.02);
  auto [m_q, s_q] = stats("blk.0.attn_q.weight");
  EXPECT_NEAR(m_q, 0.0, 0.002);
  EXPECT_NEAR(s_q, 1.0 / 16, 0.003);
  auto [m_d, s_d] = stats("blk.1.ffn_down.weight");
  EXPECT_NEAR(s_d, 1.0 / std::sqrt(512.0), 0.003);
  auto [m_o, s_o] = stats("output.weight");
  EXPECT_NEAR(s_o, 2.5 / 16, 0.005);
}

TEST(MkModelFile, QwenExtrasAndRopeFreqs) {
  const Built q2 = Build(Options("tiny-qwen2"));
  ASSERT_NE(q2.file, nullptr);
  EXPECT_EQ(q2.file->FindTensor("blk.1.attn_k.bias")->type, GgmlType::kF32);
  const Built q3 = Build(Options("tiny-qwen3"));
  ASSERT_NE(q3.file, nullptr);
  EXPECT_EQ(*q3.file->GetUint("qwen3.attention.key_length"), 64u);
  EXPECT_EQ(q3.file->FindTensor("blk.0.attn_q.weight")->dims, (std::vector<int64_t>{256, 512}));
  const Built l3 = Build(Options("tiny-llama3"));
  ASSERT_NE(l3.file, nullptr);
  const GgufTensorInfo* rf = l3.file->FindTensor("rope_freqs.weight");
  ASSERT_NE(rf, nullptr);
  std::vector<float> got(32);
  std::memcpy(got.data(), rf->data, 32 * sizeof(float));
  EXPECT_EQ(got, Llama3RopeFactors(*FindPreset("tiny-llama3")));
}

TEST(MkModelTokenizer, BuiltinVocabIsClosedUnderSpmMerging) {
  GgufWriter w;
  ASSERT_TRUE(AddBuiltinTokenizer(w, 4096).ok());
  const std::vector<uint8_t> bytes = w.Serialize();
  auto f = GgufFile::OpenBytes(bytes);
  ASSERT_TRUE(f.ok());
  const GgufArray* tokens = *(*f)->GetArray("tokenizer.ggml.tokens");
  const GgufArray* types = *(*f)->GetArray("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens->strings.size(), 4096u);
  EXPECT_EQ(tokens->strings[0], "<unk>");
  EXPECT_EQ(tokens->strings[1], "<s>");
  EXPECT_EQ(tokens->strings[2], "</s>");
  EXPECT_EQ(tokens->strings[3], "<0x00>");
  EXPECT_EQ(tokens->strings[258], "<0xFF>");
  std::vector<int32_t> ty(4096);
  std::memcpy(ty.data(), types->data, 4096 * sizeof(int32_t));
  EXPECT_EQ(ty[0], 2);
  EXPECT_EQ(ty[1], 3);
  EXPECT_EQ(ty[100], 6);
  std::set<std::string_view> vocab(tokens->strings.begin(), tokens->strings.end());
  EXPECT_EQ(vocab.size(), 4096u);  // no duplicates
  EXPECT_TRUE(vocab.count("\xE2\x96\x81the"));
  EXPECT_TRUE(vocab.count("a"));
  int n_normal = 0;
  for (size_t i = 259; i < 4096; ++i) {
    if (ty[i] != 1) continue;
    ++n_normal;
    const std::string_view t = tokens->strings[i];
    // Multi-character normal tokens split into two vocabulary tokens somewhere.
    size_t n_chars = 0;
    for (unsigned char c : t) n_chars += (c & 0xC0) != 0x80;
    if (n_chars < 2) continue;
    bool split = false;
    for (size_t k = 1; k < t.size() && !split; ++k) {
      if ((static_cast<unsigned char>(t[k]) & 0xC0) == 0x80) continue;
      split = vocab.count(t.substr(0, k)) && vocab.count(t.substr(k));
    }
    EXPECT_TRUE(split) << t;
  }
  EXPECT_GT(n_normal, 1500);
  // A tiny vocabulary is still exactly sized.
  GgufWriter small;
  ASSERT_TRUE(AddBuiltinTokenizer(small, 259).ok());
  EXPECT_EQ(AddBuiltinTokenizer(small, 258).code(), StatusCode::kInvalidArgument);
}

// Regression: qwen3-0.6b's built-in vocab was ~148k <unused_N> tokens that print nothing, so
// `kvstash run -m` on it printed a blank line. Now every id prints visible text, and every
// "▁word" token is what the tokenizer makes of that word. Every preset (including the qwen and
// llama-3 shapes, whose real models use BPE) writes this built-in SPM vocab; there is no
// built-in BPE vocab to check.
TEST(MkModelTokenizer, EveryBuiltinTokenPrintsDistinctVisibleText) {
  std::set<int64_t> sizes = {259, 300};
  for (const ModelPreset& p : ModelPresets()) sizes.insert(p.config.n_vocab);
  for (const int64_t n_vocab : sizes) {
    SCOPED_TRACE("n_vocab " + std::to_string(n_vocab));
    GgufWriter w;
    ASSERT_TRUE(AddBuiltinTokenizer(w, n_vocab).ok());
    const std::vector<uint8_t> bytes = w.Serialize();
    auto f = GgufFile::OpenBytes(bytes);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(*(*f)->GetString("tokenizer.ggml.model"), "llama");
    auto vocab = Vocab::FromGguf(**f);
    ASSERT_TRUE(vocab.ok()) << vocab.status().ToString();
    auto tok = Tokenizer::Create(std::move(*vocab));
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    const Tokenizer& t = **tok;
    ASSERT_EQ(t.vocab().size(), n_vocab);
    std::unordered_set<std::string> normal_pieces;
    int n_bad = 0;  // stop reporting after a few, there may be 150k of them
    const auto bad = [&](int32_t id, const std::string& why) {
      ADD_FAILURE() << "id " << id << " '" << t.vocab().tokens[id] << "': " << why;
      return ++n_bad < 5;
    };
    for (int32_t id = 0; id < n_vocab; ++id) {
      const TokenType type = t.vocab().types[id];
      const std::string piece = t.TokenToPiece(id, /*render_special=*/true);
      if (piece.empty() && !bad(id, "prints nothing")) break;
      if (type == TokenType::kControl || type == TokenType::kUnknown) {
        if (id > 2 && !bad(id, "special token past </s>")) break;
        continue;
      }
      if (type == TokenType::kByte) continue;  // <0x00>..<0xFF>: one raw byte each
      if (type != TokenType::kNormal && !bad(id, "neither normal, byte nor special")) break;
      if (t.TokenToPiece(id, /*render_special=*/false) != piece &&
          !bad(id, "needs render_special")) {
        break;
      }
      if (!normal_pieces.insert(piece).second && !bad(id, "prints the same as another id")) break;
      // A word-start token is how its word (after the space) encodes.
      if (piece.size() > 1 && piece[0] == ' ' &&
          t.Encode(piece.substr(1), /*add_bos=*/false, false) != std::vector<int32_t>{id} &&
          !bad(id, "is not how '" + piece.substr(1) + "' encodes")) {
        break;
      }
    }
    // Generated text is ids drawn from the whole vocabulary; it decodes and re-encodes exactly
    // (once "▁" is a token: with bytes only, the space Encode prefixes stays three bytes).
    if (n_vocab == 259) continue;
    std::vector<int32_t> ids = {1};
    for (int64_t k = 0; k < 64; ++k) ids.push_back(static_cast<int32_t>((k * 7919 + 3) % n_vocab));
    const std::string text = t.Decode(ids, /*render_special=*/false);
    EXPECT_EQ(t.Decode(t.Encode(text, true, false), false), text);
  }
}

TEST(MkModelTokenizer, CopiedTokenizerDecidesTheVocabSize) {
  MkModelOptions src = Options("tiny-llama");
  src.config.n_vocab = 777;
  const std::string path = TempPath("tok-src.gguf");
  ASSERT_TRUE(WriteSyntheticModel(path, src).ok());
  MkModelOptions o = Options("tiny-qwen2");
  o.tokenizer_gguf = path;
  const Built b = Build(o);
  ASSERT_NE(b.file, nullptr);
  EXPECT_EQ(b.summary.n_vocab, 777);
  EXPECT_EQ(*b.file->GetUint("qwen2.vocab_size"), 777u);
  EXPECT_EQ(b.file->FindTensor("token_embd.weight")->dims, (std::vector<int64_t>{256, 777}));
  EXPECT_EQ((*b.file->GetArray("tokenizer.ggml.tokens"))->strings[300],
            (*GgufFile::Open(path))->GetArray("tokenizer.ggml.tokens").value()->strings[300]);
  o.tokenizer_gguf = TempPath("missing.gguf");
  EXPECT_FALSE(BuildSyntheticModel(o).ok());
}

TEST(MkModelTokenizer, CopiesTheRealStoriesTokenizer) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  MkModelOptions o = Options("stories260k");
  o.tokenizer_gguf = testing::FixturePath("stories260K.gguf");
  const Built b = Build(o);
  ASSERT_NE(b.file, nullptr);
  auto real = GgufFile::Open(o.tokenizer_gguf);
  ASSERT_TRUE(real.ok());
  for (const auto& [key, value] : (*real)->metadata()) {
    if (!key.starts_with("tokenizer.")) continue;
    const GgufValue* copied = b.file->Find(key);
    ASSERT_NE(copied, nullptr) << key;
    EXPECT_EQ(copied->type, value.type) << key;
  }
  EXPECT_EQ((*b.file->GetArray("tokenizer.ggml.tokens"))->strings,
            (*(*real)->GetArray("tokenizer.ggml.tokens"))->strings);
}

TEST(MkModelTokenizer, EmitterHookWins) {
  MkModelOptions o = Options("tiny-llama");
  o.tokenizer = [](GgufWriter& w) -> Result<int64_t> {
    w.SetString("tokenizer.ggml.model", "gpt2");
    w.SetStringArray("tokenizer.ggml.tokens", std::vector<std::string>(300, "x"));
    return int64_t{300};
  };
  const Built b = Build(o);
  ASSERT_NE(b.file, nullptr);
  EXPECT_EQ(*b.file->GetString("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(b.file->FindTensor("output.weight")->dims, (std::vector<int64_t>{256, 300}));
}

TEST(MkModelFile, WriteSyntheticModelReportsTheFile) {
  const std::string path = TempPath("written.gguf");
  MkModelOptions o = Options("stories260k", "q8_0");
  int calls = 0;
  o.progress = [&](const MkModelProgress& p) {
    ++calls;
    EXPECT_LE(p.bytes_done, p.bytes_total);
    EXPECT_EQ(p.tensors_done, calls);
  };
  auto s = WriteSyntheticModel(path, o);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->path, path);
  EXPECT_EQ(s->file_bytes, std::filesystem::file_size(path));
  EXPECT_EQ(s->type, "q8_0");
  EXPECT_EQ(calls, s->n_tensors);
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(*(*f)->GetString("general.architecture"), "llama");
}

// ---- CLI ------------------------------------------------------------------------------------

std::string MkModelBinary() {
#ifdef KVSTASH_BIN_DIR
  return std::string(KVSTASH_BIN_DIR) + "/kvstash-mkmodel";
#else
  return "";
#endif
}

int RunCli(const std::string& args, std::string* out) {
  const std::string cmd = MkModelBinary() + " " + args + " 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
  const int st = ::pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(MkModelCli, WritesJsonSummaryAndUsesExitCodes) {
  if (!std::filesystem::exists(MkModelBinary())) {
    GTEST_SKIP() << "kvstash-mkmodel not built at " << MkModelBinary();
  }
  const std::string path = TempPath("cli.gguf");
  std::string out;
  ASSERT_EQ(RunCli("--preset tiny-qwen3 --type q8_0 --n-layer 1 --seed 3 --json -o " + path, &out),
            0);
  EXPECT_NE(out.find("\"arch\":\"qwen3\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"type\":\"q8_0\""), std::string::npos) << out;
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(*(*f)->GetUint("qwen3.block_count"), 1u);
  EXPECT_EQ(*(*f)->GetString("general.name"), "tiny-qwen3-custom");
  // The library with the same options produces the same bytes.
  MkModelOptions o = Options("tiny-qwen3", "q8_0", 3);
  o.config.n_layer = 1;
  o.config.name = "tiny-qwen3-custom";
  EXPECT_EQ(Build(o).bytes, std::vector<uint8_t>((*f)->bytes().begin(), (*f)->bytes().end()));
  std::string ignored;
  EXPECT_EQ(RunCli("--preset nope -o " + path, &ignored), 2);
  EXPECT_EQ(RunCli("--preset tiny-llama --type q2_k -o " + path, &ignored), 2);
  EXPECT_EQ(RunCli("--preset tiny-llama --n-head-kv 3 -o " + path, &ignored), 2);
  EXPECT_EQ(RunCli("--bogus-flag", &ignored), 2);
  EXPECT_EQ(RunCli("--preset tiny-llama", &ignored), 2);  // no --output
  EXPECT_EQ(RunCli("--preset tiny-llama -o /nonexistent-dir/x.gguf", &ignored), 1);
  std::string list;
  EXPECT_EQ(RunCli("--list-presets", &list), 0);
  EXPECT_NE(list.find("llama-3.1-8b"), std::string::npos);
  std::string help;
  EXPECT_EQ(RunCli("--help", &help), 0);
  for (const char* flag :
       {"--preset", "--list-presets", "--output", "--type", "--seed", "--tokenizer-from",
        "--n-embd", "--n-layer", "--n-head", "--n-head-kv", "--head-dim", "--n-ff", "--n-vocab",
        "--ctx", "--rope-base", "--arch", "--tied", "--untied", "--json"}) {
    EXPECT_NE(help.find(flag), std::string::npos) << flag;
  }
}

}  // namespace
}  // namespace kvstash::engine
