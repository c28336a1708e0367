#include "engine/runner.h"

#include <algorithm>
#include <cmath>

namespace kvstash::engine {

Result<std::unique_ptr<Runner>> Runner::Create(const Model& model, const RunnerOptions& options) {
  const HParams& c = model.config();
  RunnerOptions o = options;
  if (o.n_ctx == 0) o.n_ctx = c.n_ctx_train;
  if (o.n_ctx < 1 || o.n_ctx > (1 << 24)) {
    return Status::InvalidArgument("context size " + std::to_string(o.n_ctx) + " out of range");
  }
  if (o.block_tokens < 1 || o.block_tokens > 4096) {
    return Status::InvalidArgument("block_tokens must be in [1, 4096]");
  }
  if (o.n_batch < 1) o.n_batch = 256;
  auto r = std::unique_ptr<Runner>(new Runner(model, o));
  r->backend_ = CreateCpuBackend(o.n_threads, o.repack_weights);
  r->backend_->PrepareWeights(model);
  // The pages hold the attention layers only (all layers but the DeltaNet ones).
  KvLayout layout{o.kv_dtype, c.n_kv_layers, c.n_head_kv, c.head_dim, o.block_tokens};
  const int pages = o.n_pages > 0 ? o.n_pages : (o.n_ctx + o.block_tokens - 1) / o.block_tokens;
  KV_ASSIGN_OR_RETURN(r->pool_, KvPool::Create(layout, pages));
  // Per-pair inverse frequencies with linear scaling and rope_freqs divisors folded in.
  const auto& factors = model.rope_freq_factors();
  r->inv_freq_.resize(c.n_rot / 2);
  for (int i = 0; i < c.n_rot / 2; ++i) {
    double f = std::pow(static_cast<double>(c.rope_base), -2.0 * i / c.n_rot) * c.rope_scale;
    if (!factors.empty()) f /= factors[i];
    r->inv_freq_[i] = static_cast<float>(f);
  }
  if (c.is_hybrid()) {
    // Interleaved multi-section RoPE (ggml's IMROPE): pair i takes the position of axis
    // t, h or w by i % 3 within the sections, else axis e. Text tokens have t = h = w = their
    // position and e = 0, so the e pairs do not rotate.
    const int* sec = c.rope_sections;
    const int sect_dims = sec[0] + sec[1] + sec[2] + sec[3];
    for (int i = 0; i < c.n_rot / 2; ++i) {
      const int sector = i % sect_dims;
      const bool text_axis = (sector % 3 == 0 && sector < 3 * sec[0]) ||
                             (sector % 3 == 1 && sector < 3 * sec[1]) ||
                             (sector % 3 == 2 && sector < 3 * sec[2]);
      if (!text_axis) r->inv_freq_[i] = 0.0f;
    }
  }
  return r;
}

void Runner::Release(Sequence& seq) {
  for (int32_t p : seq.block_table) pool_->Unref(p);
  seq.block_table.clear();
  seq.tokens.clear();
  seq.recurrent.clear();
}

size_t Runner::RecurrentStateElems() const {
  const HParams& c = model_.config();
  if (!c.is_hybrid()) return 0;
  return static_cast<size_t>(c.n_deltanet_layers()) * (c.conv_state_elems() + c.ssm_state_elems());
}

Status Runner::CheckTokens(std::span<const int32_t> tokens) const {
  const int n_vocab = model_.config().n_vocab;
  for (int32_t t : tokens) {
    if (t < 0 || t >= n_vocab) {
      return Status::InvalidArgument("token id " + std::to_string(t) + " out of range [0, " +
                                     std::to_string(n_vocab) + ")");
    }
  }
  return Status::Ok();
}

int Runner::PagesNeeded(const Sequence& seq, int64_t n_positions) const {
  const int bt = options_.block_tokens;
  const int64_t blocks = (n_positions + bt - 1) / bt;
  return static_cast<int>(
      std::max<int64_t>(0, blocks - static_cast<int64_t>(seq.block_table.size())));
}

Status Runner::Reserve(Sequence& seq, int64_t n_positions) {
  if (n_positions > options_.n_ctx) {
    return Status::ResourceExhausted("context full: " + std::to_string(n_positions) +
                                     " positions requested, context size is " +
                                     std::to_string(options_.n_ctx));
  }
  const int bt = options_.block_tokens;
  const size_t blocks_needed = static_cast<size_t>((n_positions + bt - 1) / bt);
  const size_t old_blocks = seq.block_table.size();
  while (seq.block_table.size() < blocks_needed) {
    int p = pool_->Allocate();
    if (p < 0) {
      while (seq.block_table.size() > old_blocks) {
        pool_->Unref(seq.block_table.back());
        seq.block_table.pop_back();
      }
      return Status::ResourceExhausted("KV pool exhausted (" + std::to_string(pool_->n_pages()) +
                                       " pages of " + std::to_string(bt) + " tokens)");
    }
    seq.block_table.push_back(p);
  }
  return Status::Ok();
}

Status Runner::Prefill(Sequence& seq, std::span<const int32_t> tokens, LogitsMode mode,
                       std::vector<float>* logits) {
  const HParams& c = model_.config();
  if (tokens.empty()) return Status::InvalidArgument("no tokens to process");
  KV_RETURN_IF_ERROR(CheckTokens(tokens));
  // Allocate every page up front so a full pool fails before any state changes.
  KV_RETURN_IF_ERROR(Reserve(seq, seq.n_past() + static_cast<int64_t>(tokens.size())));
  if (logits != nullptr) {
    const size_t rows =
        mode == LogitsMode::kAll ? tokens.size() : (mode == LogitsMode::kLast ? 1 : 0);
    logits->assign(rows * c.n_vocab, 0.0f);
  }
  size_t done = 0;
  while (done < tokens.size()) {
    const size_t n = std::min<size_t>(options_.n_batch, tokens.size() - done);
    const bool last_chunk = done + n == tokens.size();
    BatchSegment seg;
    seg.seq = &seq;
    seg.tokens = tokens.subspan(done, n);
    seg.logits = mode == LogitsMode::kAll                    ? LogitsMode::kAll
                 : (mode == LogitsMode::kLast && last_chunk) ? LogitsMode::kLast
                                                             : LogitsMode::kNone;
    if (logits == nullptr) seg.logits = LogitsMode::kNone;
    if (seg.logits == LogitsMode::kAll) seg.out = logits->data() + done * c.n_vocab;
    if (seg.logits == LogitsMode::kLast) seg.out = logits->data();
    KV_RETURN_IF_ERROR(Forward(std::span<const BatchSegment>(&seg, 1)));
    done += n;
  }
  return Status::Ok();
}

Status Runner::Forward(std::span<const BatchSegment> segments) {
  const HParams& c = model_.config();
  Backend& be = *backend_;
  // Validate everything before any state changes.
  size_t nn = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    const BatchSegment& s = segments[i];
    if (s.seq == nullptr || s.tokens.empty()) {
      return Status::InvalidArgument("batch segment " + std::to_string(i) + " is empty");
    }
    KV_RETURN_IF_ERROR(CheckTokens(s.tokens));
    const int64_t end = s.seq->n_past() + static_cast<int64_t>(s.tokens.size());
    if (end > options_.n_ctx) {
      return Status::ResourceExhausted("context full: " + std::to_string(end) +
                                       " positions requested, context size is " +
                                       std::to_string(options_.n_ctx));
    }
    if (PagesNeeded(*s.seq, end) > 0) {
      return Status::InvalidArgument("batch segment " + std::to_string(i) +
                                     " has no pages reserved for its positions");
    }
    if (s.logits != LogitsMode::kNone && s.out == nullptr) {
      return Status::InvalidArgument("batch segment " + std::to_string(i) +
                                     " has no logits buffer");
    }
    if (s.seq->n_past() > 0 && s.seq->recurrent.size() != RecurrentStateElems()) {
      // A hybrid sequence rebuilt from KV blocks alone (no recurrent state) would compute
      // wrong outputs: refuse it.
      return Status::InvalidArgument("batch segment " + std::to_string(i) +
                                     " continues a sequence without its recurrent state");
    }
    for (size_t j = 0; j < i; ++j) {
      if (segments[j].seq == s.seq) {
        return Status::InvalidArgument("a sequence appears twice in one batch");
      }
    }
    nn += s.tokens.size();
  }
  if (nn == 0) return Status::Ok();
  const int n = static_cast<int>(nn);
  // A sequence's first tokens start from a zero recurrent state.
  for (const BatchSegment& s : segments) {
    if (s.seq->n_past() == 0) s.seq->recurrent.assign(RecurrentStateElems(), 0.0f);
  }
  const int64_t q_dim = int64_t{c.n_head} * c.head_dim;
  x_.resize(nn * c.n_embd);
  xn_.resize(nn * std::max<int64_t>({c.n_embd, q_dim, c.ssm_value_dim()}));
  tmp_.resize(nn * c.n_embd);
  tokens_.clear();
  positions_.clear();
  for (const BatchSegment& s : segments) {
    tokens_.insert(tokens_.end(), s.tokens.begin(), s.tokens.end());
    for (size_t t = 0; t < s.tokens.size(); ++t) {
      positions_.push_back(s.seq->n_past() + static_cast<int32_t>(t));
    }
  }

  KV_RETURN_IF_ERROR(be.Embed(model_.token_embd(), tokens_, x_.data()));
  int deltanet_index = 0;
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& L = model_.layers()[l];
    layer_ = l;
    be.RmsNorm(x_.data(), L.attn_norm.data(), n, c.n_embd, c.rms_eps, xn_.data());
    Tap("attn_norm", l, xn_.data(), n, c.n_embd);
    if (L.kind == LayerKind::kAttention) {
      AttentionMixer(L, c.kv_layer[l], segments, n);
    } else {
      DeltaNetMixer(L, deltanet_index++, segments, n);
    }
    Tap("mixer_out", l, tmp_.data(), n, c.n_embd);
    be.Add(tmp_.data(), nn * c.n_embd, x_.data());
    be.RmsNorm(x_.data(), L.ffn_norm.data(), n, c.n_embd, c.rms_eps, xn_.data());
    if (c.is_moe()) {
      MoeFfn(L, n);
    } else {
      DenseFfn(L, n);
    }
    Tap("ffn_out", l, tmp_.data(), n, c.n_embd);
    be.Add(tmp_.data(), nn * c.n_embd, x_.data());
    Tap("l_out", l, x_.data(), n, c.n_embd);
  }
  // Gather the rows that want logits, one output matmul for all of them, scatter back.
  int rows = 0;
  {
    size_t row = 0;
    for (const BatchSegment& s : segments) {
      const size_t m = s.tokens.size();
      const size_t first = s.logits == LogitsMode::kAll ? 0 : m - 1;
      if (s.logits != LogitsMode::kNone) {
        for (size_t t = first; t < m; ++t, ++rows) {
          be.RmsNorm(x_.data() + (row + t) * c.n_embd, model_.output_norm().data(), 1, c.n_embd,
                     c.rms_eps, xn_.data() + static_cast<size_t>(rows) * c.n_embd);
        }
      }
      row += m;
    }
  }
  if (rows > 0) {
    out_.resize(static_cast<size_t>(rows) * c.n_vocab);
    be.MatMul(model_.output(), xn_.data(), rows, out_.data());
    size_t r = 0;
    for (const BatchSegment& s : segments) {
      if (s.logits == LogitsMode::kNone) continue;
      const size_t k = s.logits == LogitsMode::kAll ? s.tokens.size() : 1;
      std::copy_n(out_.data() + r * c.n_vocab, k * c.n_vocab, s.out);
      r += k;
    }
  }
  for (const BatchSegment& s : segments) {
    s.seq->tokens.insert(s.seq->tokens.end(), s.tokens.begin(), s.tokens.end());
  }
  return Status::Ok();
}

// Softmax attention over the paged KV. qwen35*: attn_q yields per head [q, gate]; the output is
// multiplied by sigmoid(gate) before attn_output.
void Runner::AttentionMixer(const LayerWeights& L, int kv_layer,
                            std::span<const BatchSegment> segments, int n) {
  const HParams& c = model_.config();
  Backend& be = *backend_;
  const size_t nn = static_cast<size_t>(n);
  const int64_t q_dim = int64_t{c.n_head} * c.head_dim;
  const int64_t kv_dim = int64_t{c.n_head_kv} * c.head_dim;
  q_.resize(nn * q_dim);
  k_.resize(nn * kv_dim);
  v_.resize(nn * kv_dim);
  att_.resize(nn * q_dim);
  if (c.attn_output_gate) {
    qg_.resize(nn * 2 * q_dim);
    be.MatMul(L.wq, xn_.data(), n, qg_.data());
    // q_ gets the q halves of [n][n_head][q | gate]; the gates stay in qg_ until after attention.
    for (size_t t = 0; t < nn; ++t) {
      for (int h = 0; h < c.n_head; ++h) {
        const float* src = qg_.data() + (t * c.n_head + h) * 2 * c.head_dim;
        std::copy_n(src, c.head_dim, q_.data() + (t * c.n_head + h) * c.head_dim);
      }
    }
  } else {
    be.MatMul(L.wq, xn_.data(), n, q_.data());
  }
  be.MatMul(L.wk, xn_.data(), n, k_.data());
  be.MatMul(L.wv, xn_.data(), n, v_.data());
  if (c.has_qkv_bias) {
    for (size_t t = 0; t < nn; ++t) {
      be.Add(L.bq.data(), q_dim, q_.data() + t * q_dim);
      be.Add(L.bk.data(), kv_dim, k_.data() + t * kv_dim);
      be.Add(L.bv.data(), kv_dim, v_.data() + t * kv_dim);
    }
  }
  if (c.has_qk_norm) {
    be.RmsNorm(q_.data(), L.q_norm.data(), n * c.n_head, c.head_dim, c.rms_eps, q_.data());
    be.RmsNorm(k_.data(), L.k_norm.data(), n * c.n_head_kv, c.head_dim, c.rms_eps, k_.data());
  }
  RopeParams rope{c.n_rot, c.head_dim, c.rope_style, inv_freq_.data()};
  be.Rope(q_.data(), n, c.n_head, positions_.data(), rope);
  be.Rope(k_.data(), n, c.n_head_kv, positions_.data(), rope);
  // Attention is per sequence: each segment stores its rows' K/V into its own pages (slots past
  // its n_past, which no other sequence reads), then every segment attends over its own pages
  // in one batch. Sequences grow only after the last layer, so StoreKv/Attention take the absolute
  // positions explicitly.
  attn_jobs_.clear();
  size_t row = 0;
  for (const BatchSegment& s : segments) {
    const int m = static_cast<int>(s.tokens.size());
    const int pos0 = s.seq->n_past();
    be.StoreKv(*pool_, *s.seq, kv_layer, pos0, m, k_.data() + row * kv_dim,
               v_.data() + row * kv_dim);
    attn_jobs_.push_back({s.seq, pos0, m, q_.data() + row * q_dim, att_.data() + row * q_dim});
    row += s.tokens.size();
  }
  be.AttentionBatch(*pool_, kv_layer, c.n_head, attn_jobs_);
  if (c.attn_output_gate) {
    // The gate halves of qg_ gathered into q_ (free now), then att_ *= sigmoid(gate).
    for (size_t t = 0; t < nn; ++t) {
      for (int h = 0; h < c.n_head; ++h) {
        const float* src = qg_.data() + ((t * c.n_head + h) * 2 + 1) * c.head_dim;
        std::copy_n(src, c.head_dim, q_.data() + (t * c.n_head + h) * c.head_dim);
      }
    }
    be.SigmoidMul(q_.data(), nn * q_dim, att_.data());
  }
  be.MatMul(L.wo, att_.data(), n, tmp_.data());
}

void Runner::DenseFfn(const LayerWeights& L, int n) {
  const HParams& c = model_.config();
  Backend& be = *backend_;
  const size_t nn = static_cast<size_t>(n);
  gate_.resize(nn * c.n_ff);
  up_.resize(nn * c.n_ff);
  be.MatMul(L.w_gate, xn_.data(), n, gate_.data());
  be.MatMul(L.w_up, xn_.data(), n, up_.data());
  be.SwiGlu(gate_.data(), up_.data(), nn * c.n_ff, gate_.data());
  be.MatMul(L.w_down, gate_.data(), n, tmp_.data());
}

}  // namespace kvstash::engine
