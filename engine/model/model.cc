#include "engine/model/model.h"

#include <cstring>

#include "engine/cpu/fp16.h"
#include "engine/model/model_internal.h"

namespace kvstash::engine {
namespace model_internal {
namespace {

Status ReadVector(const GgufFile& f, const GgufTensorInfo& t, std::vector<float>* out) {
  out->resize(t.n_elements());
  const int64_t n = t.n_elements();
  switch (t.type) {
    case GgmlType::kF32:
      std::memcpy(out->data(), t.data, n * sizeof(float));
      return Status::Ok();
    case GgmlType::kF16:
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        (*out)[i] = t.type == GgmlType::kF16 ? cpu::HalfToF32(h) : cpu::Bf16ToF32(h);
      }
      return Status::Ok();
    default:
      return Status::Incompatible("tensor '" + t.name + "' has type " +
                                  std::string(Traits(t.type).name) +
                                  "; 1-D tensors must be f32, f16 or bf16");
  }
}

std::string ShapeString(const std::vector<int64_t>& dims) {
  std::string s;
  for (int64_t d : dims) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return "[" + s + "]";
}

}  // namespace

Result<const GgufTensorInfo*> WeightReader::Tensor(const std::string& name) const {
  const GgufTensorInfo* t = f_.FindTensor(name);
  if (t == nullptr) return Status::NotFound("missing tensor '" + name + "'");
  return t;
}

Status WeightReader::CheckShape(const GgufTensorInfo& t, const std::vector<int64_t>& dims) const {
  if (t.dims != dims) {
    return Status::InvalidArgument("tensor '" + t.name + "' has shape " + ShapeString(t.dims) +
                                   ", expected " + ShapeString(dims));
  }
  const auto tr = Traits(t.type);
  if (!tr.supported) {
    return Status::Incompatible("tensor '" + t.name + "' has unsupported type " +
                                std::string(tr.name) +
                                " (supported: f32 f16 bf16 q8_0 q4_0 q5_0 q5_1 q4_K q6_K)");
  }
  return Status::Ok();
}

Status WeightReader::Matrix(const std::string& name, int64_t n_in, int64_t n_out,
                            WeightMatrix* out) const {
  KV_ASSIGN_OR_RETURN(const GgufTensorInfo* t, Tensor(name));
  KV_RETURN_IF_ERROR(CheckShape(*t, {n_in, n_out}));
  out->type = t->type;
  out->n_in = n_in;
  out->n_out = n_out;
  out->row_bytes = RowBytes(t->type, n_in);
  out->data = t->data;
  return Status::Ok();
}

Status WeightReader::Experts(const std::string& name, int64_t n_in, int64_t n_out, int64_t n_expert,
                             std::vector<WeightMatrix>* out) const {
  KV_ASSIGN_OR_RETURN(const GgufTensorInfo* t, Tensor(name));
  KV_RETURN_IF_ERROR(CheckShape(*t, {n_in, n_out, n_expert}));
  out->resize(n_expert);
  const size_t row_bytes = RowBytes(t->type, n_in);
  for (int64_t e = 0; e < n_expert; ++e) {
    WeightMatrix& w = (*out)[e];
    w.type = t->type;
    w.n_in = n_in;
    w.n_out = n_out;
    w.row_bytes = row_bytes;
    w.data = t->data + static_cast<size_t>(e) * n_out * row_bytes;
  }
  return Status::Ok();
}

Status WeightReader::Vector(const std::string& name, int64_t n, std::vector<float>* out) const {
  KV_ASSIGN_OR_RETURN(const GgufTensorInfo* t, Tensor(name));
  if (t->n_elements() != n) {
    return Status::InvalidArgument("tensor '" + name + "' has " + std::to_string(t->n_elements()) +
                                   " elements, expected " + std::to_string(n));
  }
  return ReadVector(f_, *t, out);
}

Status GetPositiveInt(const GgufFile& f, const std::string& key, int* out, bool optional) {
  if (optional && f.Find(key) == nullptr) return Status::Ok();
  auto v = f.GetUint(key);
  if (!v.ok()) return v.status();
  if (*v == 0 || *v > (1u << 30)) {
    return Status::InvalidArgument("metadata " + key + " = " + std::to_string(*v) +
                                   " out of range");
  }
  *out = static_cast<int>(*v);
  return Status::Ok();
}

}  // namespace model_internal

Result<std::unique_ptr<Model>> Model::Load(const std::string& path, WeightMemory memory) {
  KV_ASSIGN_OR_RETURN(auto file, GgufFile::Open(path, memory));
  return FromGguf(std::move(file));
}

Result<std::unique_ptr<Model>> Model::FromGguf(std::unique_ptr<GgufFile> file) {
  auto m = std::unique_ptr<Model>(new Model());
  m->file_ = std::move(file);
  Status s = m->Init();
  if (!s.ok()) return s.WithContext(m->file_->path());
  return m;
}

// Metadata common to every architecture, the global tensors, then the per-family layer loader.
Status Model::Init() {
  using model_internal::GetPositiveInt;
  const GgufFile& f = *file_;
  HParams& c = config_;
  KV_ASSIGN_OR_RETURN(c.arch_name, f.GetString("general.architecture"));
  c.rope_style = RopeStyle::kNeox;
  if (c.arch_name == "llama") {
    c.arch = Arch::kLlama;
    c.rope_style = RopeStyle::kNormal;
  } else if (c.arch_name == "qwen2") {
    c.arch = Arch::kQwen2;
    c.has_qkv_bias = true;
  } else if (c.arch_name == "qwen3") {
    c.arch = Arch::kQwen3;
    c.has_qk_norm = true;
  } else if (c.arch_name == "qwen3moe") {
    c.arch = Arch::kQwen3Moe;
    c.has_qk_norm = true;
  } else if (c.arch_name == "qwen35") {
    c.arch = Arch::kQwen35;
    c.has_qk_norm = true;
  } else if (c.arch_name == "qwen35moe") {
    c.arch = Arch::kQwen35Moe;
    c.has_qk_norm = true;
  } else {
    return Status::Incompatible("unsupported architecture '" + c.arch_name +
                                "' (supported: llama, qwen2, qwen3, qwen3moe, qwen35, qwen35moe)");
  }
  if (auto n = f.GetString("general.name"); n.ok()) c.name = *n;
  const std::string a = c.arch_name + ".";
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "embedding_length", &c.n_embd));
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "block_count", &c.n_layer));
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "attention.head_count", &c.n_head));
  // MoE models may omit the dense width.
  KV_RETURN_IF_ERROR(
      GetPositiveInt(f, a + "feed_forward_length", &c.n_ff,
                     /*optional=*/c.arch == Arch::kQwen3Moe || c.arch == Arch::kQwen35Moe));
  c.n_head_kv = c.n_head;
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "attention.head_count_kv", &c.n_head_kv, true));
  if (c.n_head % c.n_head_kv != 0) {
    return Status::InvalidArgument("head_count " + std::to_string(c.n_head) +
                                   " is not a multiple of head_count_kv " +
                                   std::to_string(c.n_head_kv));
  }
  c.head_dim = c.n_embd / c.n_head;
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "attention.key_length", &c.head_dim, true));
  if (f.Find(a + "attention.value_length")) {
    int vl = 0;
    KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "attention.value_length", &vl));
    if (vl != c.head_dim)
      return Status::Incompatible("value_length != key_length is not supported");
  }
  if (c.head_dim % 2 != 0 || c.head_dim > 1024) {
    return Status::InvalidArgument("head dimension " + std::to_string(c.head_dim) +
                                   " must be even and at most 1024");
  }
  c.n_ctx_train = 4096;
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "context_length", &c.n_ctx_train, true));
  c.n_rot = c.head_dim;
  KV_RETURN_IF_ERROR(GetPositiveInt(f, a + "rope.dimension_count", &c.n_rot, true));
  if (c.n_rot > c.head_dim || c.n_rot % 2 != 0) {
    return Status::InvalidArgument("rope.dimension_count " + std::to_string(c.n_rot) +
                                   " must be even and <= head dimension " +
                                   std::to_string(c.head_dim));
  }
  KV_ASSIGN_OR_RETURN(double eps, f.GetFloatOr(a + "attention.layer_norm_rms_epsilon", 1e-5));
  KV_ASSIGN_OR_RETURN(double base, f.GetFloatOr(a + "rope.freq_base", 10000.0));
  if (!(eps > 0 && eps < 1) || !(base > 1)) {
    return Status::InvalidArgument("bad rms epsilon or rope.freq_base");
  }
  c.rms_eps = static_cast<float>(eps);
  c.rope_base = static_cast<float>(base);
  if (auto st = f.GetString(a + "rope.scaling.type"); st.ok()) {
    if (*st == "linear") {
      KV_ASSIGN_OR_RETURN(double factor, f.GetFloatOr(a + "rope.scaling.factor", 1.0));
      if (!(factor >= 1.0)) return Status::InvalidArgument("bad rope.scaling.factor");
      c.rope_scale = static_cast<float>(1.0 / factor);
    } else if (*st != "none" && *st != "llama3") {
      // llama3 scaling arrives as the rope_freqs.weight tensor; yarn and others are not supported.
      return Status::Incompatible("rope scaling type '" + *st + "' is not supported");
    }
  }

  model_internal::WeightReader r(f);
  KV_ASSIGN_OR_RETURN(const GgufTensorInfo* embd, r.Tensor("token_embd.weight"));
  if (embd->dims.size() != 2 || embd->dims[0] != c.n_embd) {
    return Status::InvalidArgument("token_embd.weight must have shape [n_embd, n_vocab]");
  }
  c.n_vocab = static_cast<int>(embd->dims[1]);
  KV_RETURN_IF_ERROR(r.Matrix("token_embd.weight", c.n_embd, c.n_vocab, &token_embd_));
  KV_RETURN_IF_ERROR(r.Vector("output_norm.weight", c.n_embd, &output_norm_));
  if (r.Has("output.weight")) {
    KV_RETURN_IF_ERROR(r.Matrix("output.weight", c.n_embd, c.n_vocab, &output_));
  } else {
    c.tied_embeddings = true;
    output_ = token_embd_;
  }
  if (r.Has("rope_freqs.weight")) {
    KV_RETURN_IF_ERROR(r.Vector("rope_freqs.weight", c.n_rot / 2, &rope_freqs_));
    c.has_rope_freqs = true;
  }
  switch (c.arch) {
    case Arch::kQwen3Moe:
      KV_RETURN_IF_ERROR(InitQwen3Moe());
      break;
    case Arch::kQwen35:
    case Arch::kQwen35Moe:
      KV_RETURN_IF_ERROR(InitQwen35());
      break;
    default:
      KV_RETURN_IF_ERROR(InitDense());
  }
  // Every layer of a non-hybrid model is attention, in the KV layout in order.
  if (c.layer_kind.empty()) {
    c.layer_kind.assign(c.n_layer, LayerKind::kAttention);
    c.kv_layer.resize(c.n_layer);
    for (int l = 0; l < c.n_layer; ++l) c.kv_layer[l] = l;
    c.n_kv_layers = c.n_layer;
  }
  return Status::Ok();
}

// llama, qwen2, qwen3: attention + dense SwiGLU FFN in every layer.
Status Model::InitDense() {
  const HParams& c = config_;
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
    if (c.has_qkv_bias) {
      KV_RETURN_IF_ERROR(r.Vector(p + "attn_q.bias", q_dim, &L.bq));
      KV_RETURN_IF_ERROR(r.Vector(p + "attn_k.bias", kv_dim, &L.bk));
      KV_RETURN_IF_ERROR(r.Vector(p + "attn_v.bias", kv_dim, &L.bv));
    }
    if (c.has_qk_norm) {
      KV_RETURN_IF_ERROR(r.Vector(p + "attn_q_norm.weight", c.head_dim, &L.q_norm));
      KV_RETURN_IF_ERROR(r.Vector(p + "attn_k_norm.weight", c.head_dim, &L.k_norm));
    }
    KV_RETURN_IF_ERROR(r.Vector(p + "ffn_norm.weight", c.n_embd, &L.ffn_norm));
    KV_RETURN_IF_ERROR(r.Matrix(p + "ffn_gate.weight", c.n_embd, c.n_ff, &L.w_gate));
    KV_RETURN_IF_ERROR(r.Matrix(p + "ffn_up.weight", c.n_embd, c.n_ff, &L.w_up));
    KV_RETURN_IF_ERROR(r.Matrix(p + "ffn_down.weight", c.n_ff, c.n_embd, &L.w_down));
  }
  return Status::Ok();
}

uint64_t Model::weight_bytes() const {
  uint64_t n = 0;
  for (const auto& t : file_->tensors()) n += t.n_bytes;
  return n;
}

std::string Model::Describe() const {
  const HParams& c = config_;
  std::string s = c.arch_name + " " + std::to_string(c.n_embd) + "d " + std::to_string(c.n_layer) +
                  "L " + std::to_string(c.n_head) + "h/" + std::to_string(c.n_head_kv) + "kv";
  if (c.is_hybrid()) {
    s += " (" + std::to_string(c.n_deltanet_layers()) + " deltanet " +
         std::to_string(c.ssm_n_k_heads) + "k/" + std::to_string(c.ssm_n_v_heads) + "v)";
  }
  if (c.is_moe()) {
    s += " moe " + std::to_string(c.n_expert_used) + "/" + std::to_string(c.n_expert) + "x" +
         std::to_string(c.n_ff_exp);
    if (c.n_ff_shexp > 0) s += "+shared " + std::to_string(c.n_ff_shexp);
  } else {
    s += " ff" + std::to_string(c.n_ff);
  }
  const WeightMatrix* typed = &token_embd_;
  if (!layers_.empty()) {
    typed = layers_[0].kind == LayerKind::kDeltaNet ? &layers_[0].ssm_qkv : &layers_[0].wq;
  }
  s += " vocab " + std::to_string(c.n_vocab) + " " + std::string(Traits(typed->type).name);
  return s;
}

}  // namespace kvstash::engine
