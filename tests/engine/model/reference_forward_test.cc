// The engine against an independent float64 reference (tests/reference/ref_forward.py, numpy,
// written from the model definitions): every architecture x every weight type, logits at every
// prompt position.
//
// Tolerances (qwen3moe/qwen35/qwen35moe on quantized weights: see `loose` below), relative to
// the rms of the reference logits: float weight types (f32, f16, bf16)
// run the same math in f32 — max error 2e-3, rms 2e-4 (measured: ~5e-7). Quantized types also
// quantize the activations to 8 bits (as llama.cpp does) where the reference keeps them exact —
// max 15%, rms 4% (measured: rms 1.5-2.6%), and the argmax agrees wherever the reference's
// winner leads the runner-up by more than 5% of the logit scale.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/engine/engine_test_util.h"

namespace kvstash::engine {
namespace {

struct Case {
  std::string preset;
  std::string type;
};

class ReferenceForwardTest : public ::testing::TestWithParam<Case> {};

TEST_P(ReferenceForwardTest, LogitsMatchNumpyReference) {
  if (!testutil::HavePythonNumpy()) GTEST_SKIP() << "/usr/bin/python3 with numpy not available";
  const Case& c = GetParam();
  const std::string path = testutil::SyntheticModel(c.preset, c.type);
  auto model = testutil::LoadOrDie(path);
  ASSERT_TRUE(model);
  const int V = model->config().n_vocab;
  const std::vector<int32_t> prompt = {1, 17, 300, 42, 999, 5, 77, 256, 18, 400, 3, 64, 90, 511};
  auto runner = testutil::MakeRunner(*model, KvDtype::kF32, 4);
  Sequence seq;
  std::vector<float> logits;
  ASSERT_TRUE(runner->Prefill(seq, prompt, LogitsMode::kAll, &logits).ok());

  std::string ids;
  for (int32_t t : prompt) ids += std::to_string(t) + " ";
  int rc = 0;
  const std::string out = testutil::RunCommand(
      "/usr/bin/python3 " KVSTASH_SOURCE_DIR "/tests/reference/ref_forward.py " + path +
          " --ids '" + ids + "' --positions all --out -",
      &rc);
  ASSERT_EQ(rc, 0) << out.substr(0, 500);
  auto j = nlohmann::json::parse(out);
  const auto& ref = j["logits"];
  ASSERT_EQ(ref.size(), prompt.size());

  const bool quantized = c.type != "f32" && c.type != "f16" && c.type != "bf16";
  // MoE and hybrid models on quantized weights: 8-bit activation error flips expert choices and
  // the DeltaNet's normalized keys amplify it, so on these random tiny models a logit-level
  // comparison is only a smoke bound (llama.cpp differs from the reference as much: see
  // tests/engine/model/goldens/README.md). Their math is checked on float weights here and per
  // tensor in hybrid_reference_test; the quantized kernels in cpu_kernels_test.
  const bool loose = quantized && (c.preset.find("moe") != std::string::npos ||
                                   c.preset.find("qwen35") != std::string::npos);
  double max_diff = 0, scale = 0, sq_diff = 0;
  int argmax_agree = 0;
  for (size_t p = 0; p < prompt.size(); ++p) {
    std::vector<float> r = ref[p].get<std::vector<float>>();
    ASSERT_EQ(static_cast<int>(r.size()), V);
    const float* e = logits.data() + p * V;
    double ss = 0;
    for (int i = 0; i < V; ++i) {
      const double d = std::fabs(double{e[i]} - r[i]);
      max_diff = std::max(max_diff, d);
      sq_diff += d * d;
      ss += double{r[i]} * r[i];
    }
    scale = std::max(scale, std::sqrt(ss / V));
    // Where the reference has a clear winner (margin over the runner-up above 5% of the logit
    // scale, beyond the quantized error), the engine must pick it too.
    const int best = testutil::Argmax(r.data(), V);
    float second = -1e30f;
    for (int i = 0; i < V; ++i)
      if (i != best) second = std::max(second, r[i]);
    const bool clear = r[best] - second > 0.05 * std::sqrt(ss / V);
    const bool agree = testutil::Argmax(e, V) == best;
    argmax_agree += agree;
    if (clear && !loose) {
      EXPECT_TRUE(agree) << "position " << p << ": margin " << r[best] - second;
    }
  }
  const double rms_diff = std::sqrt(sq_diff / (static_cast<double>(V) * prompt.size()));
  std::printf("[ %s %s ] rms |diff| %.3g (%.2e of logit rms)\n", c.preset.c_str(), c.type.c_str(),
              rms_diff, rms_diff / scale);
  // Float types: same math in f32. Quantized types: 8-bit activations add ~1-3% rms error
  // (kernel exactness itself is checked in cpu_kernels_test against dequantized dots). Their
  // worst single logit moves with any rounding change upstream (an activation that lands on the
  // other side of a quantization step): Q6_K on the scalar table measured 0.136 of the logit rms
  // with 16-key attention steps and 0.158 with 64-key steps at an unchanged rms (2.6%), so the
  // bound on the maximum is 0.2 and the rms bound below is the tight one.
  const double max_tol = loose ? 1.5 : quantized ? 0.2 : 2e-3;
  const double rms_tol = loose ? 0.2 : quantized ? 0.04 : 2e-4;
  EXPECT_LE(max_diff, max_tol * scale)
      << "max |engine - reference| " << max_diff << ", logit rms " << scale;
  EXPECT_LE(rms_diff, rms_tol * scale) << "rms |engine - reference| " << rms_diff;
  if (!quantized) {
    EXPECT_EQ(argmax_agree, static_cast<int>(prompt.size()));
  }
  RecordProperty("max_diff", std::to_string(max_diff));
  std::printf("[ %s %s ] max |diff| %.3g, logit rms %.3g, ratio %.2e, argmax agree %d/%zu\n",
              c.preset.c_str(), c.type.c_str(), max_diff, scale, max_diff / scale, argmax_agree,
              prompt.size());
}

std::vector<Case> AllCases() {
  std::vector<Case> v;
  for (const char* p : {"tiny-llama", "tiny-llama3", "tiny-qwen2", "tiny-qwen3"}) {
    for (const char* t : {"f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "q5_1", "q4_k", "q6_k"}) {
      v.push_back({p, t});
    }
  }
  for (const char* p : {"tiny-qwen3moe", "tiny-qwen35", "tiny-qwen35moe"}) {
    for (const char* t : {"f32", "f16", "q8_0", "q4_k"}) v.push_back({p, t});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(AllArchsAllTypes, ReferenceForwardTest, ::testing::ValuesIn(AllCases()),
                         [](const auto& info) {
                           std::string n = info.param.preset + "_" + info.param.type;
                           for (char& ch : n)
                             if (ch == '-' || ch == '.') ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace kvstash::engine
