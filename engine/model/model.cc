#include "engine/model/model.h"

#include <cstring>

#include "engine/cpu/fp16.h"

namespace kvstash::engine {
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

}  // namespace

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

Status Model::Init() {
  const GgufFile& f = *file_;
  HParams& c = config_;
  KV_ASSIGN_OR_RETURN(c.arch_name, f.GetString("general.architecture"));
  if (c.arch_name == "llama") {
    c.arch = Arch::kLlama;
    c.rope_style = RopeStyle::kNormal;
  } else if (c.arch_name == "qwen2") {
    c.arch = Arch::kQwen2;
    c.rope_style = RopeStyle::kNeox;
    c.has_qkv_bias = true;
  } else if (c.arch_name == "qwen3") {
    c.arch = Arch::kQwen3;
    c.rope_style = RopeStyle::kNeox;
    c.has_qk_norm = true;
  } else {
    return Status::Incompatible("unsupported architecture '" + c.arch_name +
                                "' (supported: llama, qwen2, qwen3)");
  }
  if (auto n = f.GetString("general.name"); n.ok()) c.name = *n;
  const std::string a = c.arch_name + ".";
  auto get_int = [&](const std::string& key, int* out) -> Status {
    auto v = f.GetUint(a + key);
    if (!v.ok()) return v.status();
    if (*v == 0 || *v > (1u << 30)) {
      return Status::InvalidArgument("metadata " + a + key + " = " + std::to_string(*v) +
                                     " out of range");
    }
    *out = static_cast<int>(*v);
    return Status::Ok();
  };
  KV_RETURN_IF_ERROR(get_int("embedding_length", &c.n_embd));
  KV_RETURN_IF_ERROR(get_int("block_count", &c.n_layer));
  KV_RETURN_IF_ERROR(get_int("attention.head_count", &c.n_head));
  KV_RETURN_IF_ERROR(get_int("feed_forward_length", &c.n_ff));
  c.n_head_kv = c.n_head;
  if (f.Find(a + "attention.head_count_kv"))
    KV_RETURN_IF_ERROR(get_int("attention.head_count_kv", &c.n_head_kv));
  if (c.n_head % c.n_head_kv != 0) {
    return Status::InvalidArgument("head_count " + std::to_string(c.n_head) +
                                   " is not a multiple of head_count_kv " +
                                   std::to_string(c.n_head_kv));
  }
  c.head_dim = c.n_embd / c.n_head;
  if (f.Find(a + "attention.key_length"))
    KV_RETURN_IF_ERROR(get_int("attention.key_length", &c.head_dim));
  if (f.Find(a + "attention.value_length")) {
    int vl = 0;
    KV_RETURN_IF_ERROR(get_int("attention.value_length", &vl));
    if (vl != c.head_dim)
      return Status::Incompatible("value_length != key_length is not supported");
  }
  if (c.head_dim % 2 != 0 || c.head_dim > 1024) {
    return Status::InvalidArgument("head dimension " + std::to_string(c.head_dim) +
                                   " must be even and at most 1024");
  }
  c.n_ctx_train = 4096;
  if (f.Find(a + "context_length")) KV_RETURN_IF_ERROR(get_int("context_length", &c.n_ctx_train));
  c.n_rot = c.head_dim;
  if (f.Find(a + "rope.dimension_count"))
    KV_RETURN_IF_ERROR(get_int("rope.dimension_count", &c.n_rot));
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

  // Tensors.
  auto tensor = [&](const std::string& name) -> Result<const GgufTensorInfo*> {
    const GgufTensorInfo* t = f.FindTensor(name);
    if (t == nullptr) return Status::NotFound("missing tensor '" + name + "'");
    return t;
  };
  auto matrix = [&](const std::string& name, int64_t n_in, int64_t n_out,
                    WeightMatrix* out) -> Status {
    KV_ASSIGN_OR_RETURN(const GgufTensorInfo* t, tensor(name));
    if (t->dims.size() != 2 || t->dims[0] != n_in || t->dims[1] != n_out) {
      std::string got;
      for (int64_t d : t->dims) got += (got.empty() ? "" : ", ") + std::to_string(d);
      return Status::InvalidArgument("tensor '" + name + "' has shape [" + got + "], expected [" +
                                     std::to_string(n_in) + ", " + std::to_string(n_out) + "]");
    }
    const auto tr = Traits(t->type);
    if (!tr.supported) {
      return Status::Incompatible("tensor '" + name + "' has unsupported type " +
                                  std::string(tr.name) +
                                  " (supported: f32 f16 bf16 q8_0 q4_0 q5_0 q5_1 q4_K q6_K)");
    }
    out->type = t->type;
    out->n_in = n_in;
    out->n_out = n_out;
    out->row_bytes = RowBytes(t->type, n_in);
    out->data = t->data;
    return Status::Ok();
  };
  auto vec = [&](const std::string& name, int64_t n, std::vector<float>* out) -> Status {
    KV_ASSIGN_OR_RETURN(const GgufTensorInfo* t, tensor(name));
    if (t->n_elements() != n) {
      return Status::InvalidArgument("tensor '" + name + "' has " +
                                     std::to_string(t->n_elements()) + " elements, expected " +
                                     std::to_string(n));
    }
    return ReadVector(f, *t, out);
  };

  KV_ASSIGN_OR_RETURN(const GgufTensorInfo* embd, tensor("token_embd.weight"));
  if (embd->dims.size() != 2 || embd->dims[0] != c.n_embd) {
    return Status::InvalidArgument("token_embd.weight must have shape [n_embd, n_vocab]");
  }
  c.n_vocab = static_cast<int>(embd->dims[1]);
  KV_RETURN_IF_ERROR(matrix("token_embd.weight", c.n_embd, c.n_vocab, &token_embd_));
  KV_RETURN_IF_ERROR(vec("output_norm.weight", c.n_embd, &output_norm_));
  if (f.FindTensor("output.weight") != nullptr) {
    KV_RETURN_IF_ERROR(matrix("output.weight", c.n_embd, c.n_vocab, &output_));
  } else {
    c.tied_embeddings = true;
    output_ = token_embd_;
  }
  if (f.FindTensor("rope_freqs.weight") != nullptr) {
    KV_RETURN_IF_ERROR(vec("rope_freqs.weight", c.n_rot / 2, &rope_freqs_));
    c.has_rope_freqs = true;
  }
  const int64_t q_dim = int64_t{c.n_head} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_head_kv} * c.head_dim;
  layers_.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights& L = layers_[l];
    KV_RETURN_IF_ERROR(vec(p + "attn_norm.weight", c.n_embd, &L.attn_norm));
    KV_RETURN_IF_ERROR(matrix(p + "attn_q.weight", c.n_embd, q_dim, &L.wq));
    KV_RETURN_IF_ERROR(matrix(p + "attn_k.weight", c.n_embd, kv_dim, &L.wk));
    KV_RETURN_IF_ERROR(matrix(p + "attn_v.weight", c.n_embd, kv_dim, &L.wv));
    KV_RETURN_IF_ERROR(matrix(p + "attn_output.weight", q_dim, c.n_embd, &L.wo));
    if (c.has_qkv_bias) {
      KV_RETURN_IF_ERROR(vec(p + "attn_q.bias", q_dim, &L.bq));
      KV_RETURN_IF_ERROR(vec(p + "attn_k.bias", kv_dim, &L.bk));
      KV_RETURN_IF_ERROR(vec(p + "attn_v.bias", kv_dim, &L.bv));
    }
    if (c.has_qk_norm) {
      KV_RETURN_IF_ERROR(vec(p + "attn_q_norm.weight", c.head_dim, &L.q_norm));
      KV_RETURN_IF_ERROR(vec(p + "attn_k_norm.weight", c.head_dim, &L.k_norm));
    }
    KV_RETURN_IF_ERROR(vec(p + "ffn_norm.weight", c.n_embd, &L.ffn_norm));
    KV_RETURN_IF_ERROR(matrix(p + "ffn_gate.weight", c.n_embd, c.n_ff, &L.w_gate));
    KV_RETURN_IF_ERROR(matrix(p + "ffn_up.weight", c.n_embd, c.n_ff, &L.w_up));
    KV_RETURN_IF_ERROR(matrix(p + "ffn_down.weight", c.n_ff, c.n_embd, &L.w_down));
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
  return c.arch_name + " " + std::to_string(c.n_embd) + "d " + std::to_string(c.n_layer) + "L " +
         std::to_string(c.n_head) + "h/" + std::to_string(c.n_head_kv) + "kv ff" +
         std::to_string(c.n_ff) + " vocab " + std::to_string(c.n_vocab) + " " +
         std::string(Traits(layers_.empty() ? token_embd_.type : layers_[0].wq.type).name);
}

}  // namespace kvstash::engine
