// qwen3moe (Qwen3-30B-A3B, Qwen3-235B-A22B): qwen3 attention (per-head q/k RMSNorm, NeoX RoPE)
// and a mixture-of-experts FFN in every layer — softmax router over n_expert experts, the top
// n_expert_used per token, their weights renormalized to sum 1 (llama.cpp always renormalizes
// for this architecture, matching HF's norm_topk_prob = true), no shared expert.
#include "engine/model/model.h"
#include "engine/model/model_internal.h"

namespace kvstash::engine {

namespace model_internal {

Status ReadMoeHParams(const GgufFile& f, HParams& c) {
  const std::string a = c.arch_name + ".";
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "expert_count", &c.n_expert));
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "expert_used_count", &c.n_expert_used));
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "expert_feed_forward_length", &c.n_ff_exp));
  if (c.n_expert_used > c.n_expert || c.n_expert > 4096) {
    return Status::InvalidArgument("expert_used_count " + std::to_string(c.n_expert_used) +
                                   " must be <= expert_count " + std::to_string(c.n_expert) +
                                   " (at most 4096)");
  }
  // expert_weights_scale is not read for these architectures (llama.cpp ignores it too).
  return Status::Ok();
}

Status ReadMoeFfn(const WeightReader& r, const HParams& c, const std::string& p, LayerWeights& L) {
  KV_RETURN_IF_ERROR(r.Matrix(p + "ffn_gate_inp.weight", c.n_embd, c.n_expert, &L.ffn_router));
  if (r.Has(p + "ffn_gate_up_exps.weight")) {
    // Fused form: per expert, n_ff_exp gate rows then n_ff_exp up rows.
    std::vector<WeightMatrix> fused;
    KV_RETURN_IF_ERROR(r.Experts(p + "ffn_gate_up_exps.weight", c.n_embd, 2 * int64_t{c.n_ff_exp},
                                 c.n_expert, &fused));
    L.exp_gate = fused;
    L.exp_up = fused;
    for (int e = 0; e < c.n_expert; ++e) {
      L.exp_gate[e].n_out = L.exp_up[e].n_out = c.n_ff_exp;
      L.exp_up[e].data += static_cast<size_t>(c.n_ff_exp) * fused[e].row_bytes;
    }
  } else {
    KV_RETURN_IF_ERROR(
        r.Experts(p + "ffn_gate_exps.weight", c.n_embd, c.n_ff_exp, c.n_expert, &L.exp_gate));
    KV_RETURN_IF_ERROR(
        r.Experts(p + "ffn_up_exps.weight", c.n_embd, c.n_ff_exp, c.n_expert, &L.exp_up));
  }
  KV_RETURN_IF_ERROR(
      r.Experts(p + "ffn_down_exps.weight", c.n_ff_exp, c.n_embd, c.n_expert, &L.exp_down));
  return Status::Ok();
}

}  // namespace model_internal

Status Model::InitQwen3Moe() {
  HParams& c = config_;
  KV_RETURN_IF_ERROR(model_internal::ReadMoeHParams(*file_, c));
  model_internal::WeightReader r(*file_);
  const int64_t q_dim = int64_t{c.n_head} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_head_kv} * c.head_dim;
  layers_.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights& L = layers_[l];
    KV_RETURN_IF_ERROR(r.Vector(p + "attn_norm.weight", c.n_embd, &L.attn_norm));
    KV_RETURN_IF_ERROR(r.Matrix(p + "attn_q.weight", c.n_embd, q_dim, &L.wq));
    KV_RETURN_IF_ERROR(r.Matrix(p + "attn_k.weight", c.n_embd, kv_dim, &L.wk));
    KV_RETURN_IF_ERROR(r.Matrix(p + "attn_v.weight", c.n_embd, kv_dim, &L.wv));
    KV_RETURN_IF_ERROR(r.Matrix(p + "attn_output.weight", q_dim, c.n_embd, &L.wo));
    KV_RETURN_IF_ERROR(r.Vector(p + "attn_q_norm.weight", c.head_dim, &L.q_norm));
    KV_RETURN_IF_ERROR(r.Vector(p + "attn_k_norm.weight", c.head_dim, &L.k_norm));
    KV_RETURN_IF_ERROR(r.Vector(p + "ffn_norm.weight", c.n_embd, &L.ffn_norm));
    KV_RETURN_IF_ERROR(model_internal::ReadMoeFfn(r, c, p, L));
  }
  return Status::Ok();
}

}  // namespace kvstash::engine
