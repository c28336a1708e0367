// qwen35 (Qwen3.5/3.6 dense, e.g. 27B) and qwen35moe (e.g. Qwen3.6-35B-A3B): hybrid models.
// Three of every four layers (by default; {arch}.attention.recurrent_layers or
// full_attention_interval decide) are Gated DeltaNet layers with a per-sequence recurrent state;
// the others are full attention with a sigmoid output gate, per-head q/k RMSNorm and partial
// rotary (rope.dimension_count of key_length) in llama.cpp's interleaved multi-section form,
// which for text positions is NeoX RoPE on the first n_rot dims. The FFN is dense (qwen35) or
// MoE with a sigmoid-gated shared expert (qwen35moe).
//
// The file is read as llama.cpp's converter writes it: -exp(A_log) is already in ssm_a, the +1 of
// the zero-centred norms is folded into attn_norm/post_attention_norm/q_norm/k_norm/output_norm
// (not ssm_norm), value heads are tiled (value head j uses key head j % n_k_heads), and
// block_count includes nextn_predict_layers multi-token-prediction blocks, which are skipped.
#include <cstring>

#include "engine/model/model.h"
#include "engine/model/model_internal.h"

namespace kvstash::engine {
namespace {

// An integer array key (int32/uint32/bool elements) of exactly n values.
Status ReadIntArray(const GgufFile& f, const std::string& key, size_t n,
                    std::vector<int64_t>* out) {
  KV_ASSIGN_OR_RETURN(const GgufArray* arr, f.GetArray(key));
  if (arr->count != n) {
    return Status::InvalidArgument("metadata " + key + " has " + std::to_string(arr->count) +
                                   " values, expected " + std::to_string(n));
  }
  out->resize(n);
  for (size_t i = 0; i < n; ++i) {
    switch (arr->elem_type) {
      case GgufValueType::kInt32: {
        int32_t v;
        std::memcpy(&v, arr->data + 4 * i, 4);
        (*out)[i] = v;
        break;
      }
      case GgufValueType::kUint32: {
        uint32_t v;
        std::memcpy(&v, arr->data + 4 * i, 4);
        (*out)[i] = v;
        break;
      }
      case GgufValueType::kBool:
      case GgufValueType::kUint8:
        (*out)[i] = arr->data[i];
        break;
      default:
        return Status::InvalidArgument("metadata " + key + " is not an integer array");
    }
  }
  return Status::Ok();
}

}  // namespace

Status Model::InitQwen35() {
  using model_internal::GetPositiveInt;
  HParams& c = config_;
  const GgufFile& f = *file_;
  const std::string a = c.arch_name + ".";
  c.attn_output_gate = true;
  // Trunk layers: block_count minus the MTP blocks stored after them.
  const int n_layer_all = c.n_layer;
  KV_ASSIGN_OR_RETURN(uint64_t n_nextn, f.GetUintOr(a + "nextn_predict_layers", 0));
  if (n_nextn >= static_cast<uint64_t>(n_layer_all)) {
    return Status::InvalidArgument("nextn_predict_layers " + std::to_string(n_nextn) +
                                   " leaves no trunk layers of " + std::to_string(n_layer_all));
  }
  c.n_layer = n_layer_all - static_cast<int>(n_nextn);

  int d_inner = 0;
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "ssm.conv_kernel", &c.ssm_d_conv));
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "ssm.state_size", &c.ssm_head_dim));
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "ssm.group_count", &c.ssm_n_k_heads));
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "ssm.time_step_rank", &c.ssm_n_v_heads));
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "ssm.inner_size", &d_inner));
  if (c.ssm_n_v_heads % c.ssm_n_k_heads != 0 || d_inner != c.ssm_value_dim() || c.ssm_d_conv < 2 ||
      c.ssm_d_conv > 16 || c.ssm_head_dim > 1024) {
    return Status::InvalidArgument(
        "bad ssm metadata: time_step_rank must be a multiple of group_count, inner_size = "
        "state_size * time_step_rank, 2 <= conv_kernel <= 16");
  }
  std::vector<int64_t> sections;
  KV_RETURN_IF_ERROR(ReadIntArray(f, a + "rope.dimension_sections", 4, &sections));
  for (int i = 0; i < 4; ++i) {
    if (sections[i] < 0 || sections[i] > 4096)
      return Status::InvalidArgument("bad rope.dimension_sections");
    c.rope_sections[i] = static_cast<int>(sections[i]);
  }
  if (c.rope_sections[0] + c.rope_sections[1] + c.rope_sections[2] + c.rope_sections[3] == 0) {
    return Status::InvalidArgument("rope.dimension_sections are all zero");
  }

  // Which layers are DeltaNet: the explicit per-layer flags win over the interval.
  c.layer_kind.assign(c.n_layer, LayerKind::kAttention);
  if (f.Find(a + "attention.recurrent_layers") != nullptr) {
    std::vector<int64_t> recurrent;
    KV_RETURN_IF_ERROR(ReadIntArray(f, a + "attention.recurrent_layers", n_layer_all, &recurrent));
    for (int l = 0; l < c.n_layer; ++l)
      if (recurrent[l]) c.layer_kind[l] = LayerKind::kDeltaNet;
  } else {
    KV_ASSIGN_OR_RETURN(uint64_t interval, f.GetUintOr(a + "full_attention_interval", 4));
    if (interval == 0) return Status::InvalidArgument("full_attention_interval is 0");
    for (int l = 0; l < c.n_layer; ++l) {
      if ((l + 1) % interval != 0) c.layer_kind[l] = LayerKind::kDeltaNet;
    }
  }
  c.kv_layer.assign(c.n_layer, -1);
  c.n_kv_layers = 0;
  for (int l = 0; l < c.n_layer; ++l)
    if (c.layer_kind[l] == LayerKind::kAttention) c.kv_layer[l] = c.n_kv_layers++;

  if (c.arch == Arch::kQwen35Moe) {
    KV_RETURN_IF_ERROR(model_internal::ReadMoeHParams(f, c));
    c.n_ff_shexp = c.n_ff;
    KV_RETURN_IF_ERROR(
        GetPositiveInt(f, a + "expert_shared_feed_forward_length", &c.n_ff_shexp, true));
    if (c.n_ff_shexp <= 0) return Status::InvalidArgument("missing shared expert width");
  }

  model_internal::WeightReader r(f);
  const int64_t q_dim = int64_t{c.n_head} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_head_kv} * c.head_dim;
  const int64_t n_v = c.ssm_n_v_heads;
  layers_.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights& L = layers_[l];
    L.kind = c.layer_kind[l];
    KV_RETURN_IF_ERROR(r.Vector(p + "attn_norm.weight", c.n_embd, &L.attn_norm));
    KV_RETURN_IF_ERROR(r.Vector(p + "post_attention_norm.weight", c.n_embd, &L.ffn_norm));
    if (L.kind == LayerKind::kAttention) {
      KV_RETURN_IF_ERROR(r.Matrix(p + "attn_q.weight", c.n_embd, 2 * q_dim, &L.wq));
      KV_RETURN_IF_ERROR(r.Matrix(p + "attn_k.weight", c.n_embd, kv_dim, &L.wk));
      KV_RETURN_IF_ERROR(r.Matrix(p + "attn_v.weight", c.n_embd, kv_dim, &L.wv));
      KV_RETURN_IF_ERROR(r.Matrix(p + "attn_output.weight", q_dim, c.n_embd, &L.wo));
      KV_RETURN_IF_ERROR(r.Vector(p + "attn_q_norm.weight", c.head_dim, &L.q_norm));
      KV_RETURN_IF_ERROR(r.Vector(p + "attn_k_norm.weight", c.head_dim, &L.k_norm));
    } else {
      const int64_t conv_dim = c.ssm_conv_dim();
      if (!r.Has(p + "attn_qkv.weight")) {
        return Status::Incompatible(
            "tensor '" + p +
            "attn_qkv.weight' is missing (legacy fused ssm_in layouts are not supported)");
      }
      KV_RETURN_IF_ERROR(r.Matrix(p + "attn_qkv.weight", c.n_embd, conv_dim, &L.ssm_qkv));
      KV_RETURN_IF_ERROR(r.Matrix(p + "attn_gate.weight", c.n_embd, c.ssm_value_dim(), &L.ssm_z));
      KV_RETURN_IF_ERROR(r.Matrix(p + "ssm_beta.weight", c.n_embd, n_v, &L.ssm_beta));
      KV_RETURN_IF_ERROR(r.Matrix(p + "ssm_alpha.weight", c.n_embd, n_v, &L.ssm_alpha));
      KV_RETURN_IF_ERROR(r.Matrix(p + "ssm_out.weight", c.ssm_value_dim(), c.n_embd, &L.ssm_out));
      KV_ASSIGN_OR_RETURN(const GgufTensorInfo* conv, r.Tensor(p + "ssm_conv1d.weight"));
      if (conv->dims != std::vector<int64_t>{c.ssm_d_conv, conv_dim}) {
        return Status::InvalidArgument("tensor '" + conv->name +
                                       "' must have shape [conv_kernel, conv_dim]");
      }
      KV_RETURN_IF_ERROR(r.Vector(p + "ssm_conv1d.weight", conv_dim * c.ssm_d_conv, &L.ssm_conv));
      KV_RETURN_IF_ERROR(r.Vector(p + "ssm_dt.bias", n_v, &L.ssm_dt_bias));
      KV_RETURN_IF_ERROR(r.Vector(p + "ssm_a", n_v, &L.ssm_a));
      KV_RETURN_IF_ERROR(r.Vector(p + "ssm_norm.weight", c.ssm_head_dim, &L.ssm_norm));
    }
    if (c.arch == Arch::kQwen35Moe) {
      KV_RETURN_IF_ERROR(model_internal::ReadMoeFfn(r, c, p, L));
      KV_RETURN_IF_ERROR(r.Vector(p + "ffn_gate_inp_shexp.weight", c.n_embd, &L.shexp_router));
      KV_RETURN_IF_ERROR(
          r.Matrix(p + "ffn_gate_shexp.weight", c.n_embd, c.n_ff_shexp, &L.shexp_gate));
      KV_RETURN_IF_ERROR(r.Matrix(p + "ffn_up_shexp.weight", c.n_embd, c.n_ff_shexp, &L.shexp_up));
      KV_RETURN_IF_ERROR(
          r.Matrix(p + "ffn_down_shexp.weight", c.n_ff_shexp, c.n_embd, &L.shexp_down));
    } else {
      KV_RETURN_IF_ERROR(r.Matrix(p + "ffn_gate.weight", c.n_embd, c.n_ff, &L.w_gate));
      KV_RETURN_IF_ERROR(r.Matrix(p + "ffn_up.weight", c.n_embd, c.n_ff, &L.w_up));
      KV_RETURN_IF_ERROR(r.Matrix(p + "ffn_down.weight", c.n_ff, c.n_embd, &L.w_down));
    }
  }
  return Status::Ok();
}

}  // namespace kvstash::engine
