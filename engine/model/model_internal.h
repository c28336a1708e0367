// Helpers shared by the per-architecture loaders (engine/model/*.cc); not part of the engine's
// interface.
#pragma once

#include <string>
#include <vector>

#include "base/status.h"
#include "engine/gguf/gguf.h"
#include "engine/model/model.h"

namespace kvstash::engine::model_internal {

// Reads tensors of one file, checking shapes and types; errors name the tensor.
class WeightReader {
 public:
  explicit WeightReader(const GgufFile& f) : f_(f) {}
  bool Has(const std::string& name) const { return f_.FindTensor(name) != nullptr; }
  Result<const GgufTensorInfo*> Tensor(const std::string& name) const;
  // A 2-D weight [n_in, n_out] (ggml order) of a supported matmul type, used in place.
  Status Matrix(const std::string& name, int64_t n_in, int64_t n_out, WeightMatrix* out) const;
  // A 3-D expert tensor [n_in, n_out, n_expert]: one in-place view per expert.
  Status Experts(const std::string& name, int64_t n_in, int64_t n_out, int64_t n_expert,
                 std::vector<WeightMatrix>* out) const;
  // A tensor of exactly n elements (any shape) copied to f32; f32, f16 or bf16.
  Status Vector(const std::string& name, int64_t n, std::vector<float>* out) const;

 private:
  Status CheckShape(const GgufTensorInfo& t, const std::vector<int64_t>& dims) const;
  const GgufFile& f_;
};

// {arch}.key as a positive int (at most 2^30); `optional` keeps *out when the key is absent.
Status GetPositiveInt(const GgufFile& f, const std::string& key, int* out, bool optional = false);

}  // namespace kvstash::engine::model_internal

namespace kvstash::engine::model_internal {
// {arch}.expert_count / expert_used_count / expert_feed_forward_length (qwen3moe.cc).
Status ReadMoeHParams(const GgufFile& f, HParams& c);
// Router and routed experts of layer prefix `p` ("blk.N.").
Status ReadMoeFfn(const WeightReader& r, const HParams& c, const std::string& p, LayerWeights& L);
}  // namespace kvstash::engine::model_internal
