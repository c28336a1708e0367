// The Gated DeltaNet token mixer of Runner::Forward (qwen35, qwen35moe).
//
// Projections run over all rows of the batch at once; the conv and the recurrence run per
// segment on that sequence's own state (Sequence::recurrent), token by token, so a sequence's
// state after its last token is the same bit for bit however its tokens were split across
// forwards or batched with others.
#include "engine/runner.h"

namespace kvstash::engine {

void Runner::DeltaNetMixer(const LayerWeights& L, int deltanet_index,
                           std::span<const BatchSegment> segments, int n) {
  const HParams& c = model_.config();
  Backend& be = *backend_;
  const size_t nn = static_cast<size_t>(n);
  const int conv_dim = c.ssm_conv_dim(), value_dim = c.ssm_value_dim();
  const int hv = c.ssm_n_v_heads, hd = c.ssm_head_dim;
  gdn_qkv_.resize(nn * conv_dim);
  gdn_z_.resize(nn * value_dim);
  gdn_alpha_.resize(nn * hv);
  gdn_beta_.resize(nn * hv);
  gdn_o_.resize(nn * value_dim);
  be.MatMul(L.ssm_qkv, xn_.data(), n, gdn_qkv_.data());
  be.MatMul(L.ssm_z, xn_.data(), n, gdn_z_.data());
  be.MatMul(L.ssm_beta, xn_.data(), n, gdn_beta_.data());
  be.MatMul(L.ssm_alpha, xn_.data(), n, gdn_alpha_.data());
  const size_t layer_elems = c.conv_state_elems() + c.ssm_state_elems();
  size_t row = 0;
  for (const BatchSegment& s : segments) {
    const int m = static_cast<int>(s.tokens.size());
    float* conv_state = s.seq->recurrent.data() + deltanet_index * layer_elems;
    float* ssm_state = conv_state + c.conv_state_elems();
    float* qkv = gdn_qkv_.data() + row * conv_dim;
    be.CausalConvSilu(qkv, m, conv_dim, L.ssm_conv.data(), c.ssm_d_conv, conv_state);
    be.GatedDeltaNet(qkv, gdn_alpha_.data() + row * hv, gdn_beta_.data() + row * hv,
                     L.ssm_dt_bias.data(), L.ssm_a.data(), m, c.ssm_n_k_heads, hv, hd, hd,
                     c.rms_eps, options_.deltanet_chunk_tokens, ssm_state,
                     gdn_o_.data() + row * value_dim);
    row += m;
  }
  if (tap_) {
    Tap("gdn_conv", layer_, gdn_qkv_.data(), n, conv_dim);
    Tap("gdn_o", layer_, gdn_o_.data(), n, value_dim);
  }
  // Gated RMSNorm per value head (plain ssm_norm weight), times silu(z), then ssm_out.
  be.RmsNorm(gdn_o_.data(), L.ssm_norm.data(), n * hv, hd, c.rms_eps, gdn_o_.data());
  be.SwiGlu(gdn_z_.data(), gdn_o_.data(), static_cast<int64_t>(nn) * value_dim, gdn_o_.data());
  be.MatMul(L.ssm_out, gdn_o_.data(), n, tmp_.data());
}

}  // namespace kvstash::engine
