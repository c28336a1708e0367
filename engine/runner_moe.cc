// The mixture-of-experts FFN of Runner::Forward (qwen3moe, qwen35moe).
//
// Routing is per token (softmax, top-k, renormalized weights: Backend::MoeRoute). The rows are
// then grouped by expert, so each chosen expert's weights stream once per forward chunk however
// many tokens picked it: one gathered MatMul for gate, up and down per expert. Every expert
// output lands in its (token, slot) place and each token sums its slots in slot order (best
// first), so a token's result never depends on which other rows rode in the batch or how they
// were grouped (the MatMul contract makes each (weight row, token) dot independent of the
// token count).
#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/runner.h"

namespace kvstash::engine {

void Runner::MoeFfn(const LayerWeights& L, int n) {
  const HParams& c = model_.config();
  Backend& be = *backend_;
  const int E = c.n_expert, K = c.n_expert_used, D = c.n_embd;
  const size_t nn = static_cast<size_t>(n);
  router_.resize(nn * E);
  moe_ids_.resize(nn * K);
  moe_w_.resize(nn * K);
  moe_out_.resize(nn * K * D);
  be.MatMul(L.ffn_router, xn_.data(), n, router_.data());
  be.MoeRoute(router_.data(), n, E, K, moe_ids_.data(), moe_w_.data());

  // Counting sort of (token, slot) pairs by expert.
  std::vector<int> start(E + 1, 0);
  for (int32_t e : moe_ids_) ++start[e + 1];
  for (int e = 0; e < E; ++e) start[e + 1] += start[e];
  moe_rows_.resize(nn * K);
  {
    std::vector<int> fill(start.begin(), start.end() - 1);
    for (size_t i = 0; i < nn * K; ++i) moe_rows_[fill[moe_ids_[i]]++] = static_cast<int32_t>(i);
  }
  const size_t ff_max = std::max(c.n_ff_exp, c.n_ff_shexp);
  for (int e = 0; e < E; ++e) {
    const int m = start[e + 1] - start[e];
    if (m == 0) continue;
    moe_x_.resize(static_cast<size_t>(m) * D);
    moe_g_.resize(static_cast<size_t>(m) * ff_max);
    moe_u_.resize(static_cast<size_t>(m) * ff_max);
    moe_y_.resize(static_cast<size_t>(m) * D);
    for (int r = 0; r < m; ++r) {
      const size_t token = moe_rows_[start[e] + r] / K;
      std::copy_n(xn_.data() + token * D, D, moe_x_.data() + static_cast<size_t>(r) * D);
    }
    be.MatMul(L.exp_gate[e], moe_x_.data(), m, moe_g_.data());
    be.MatMul(L.exp_up[e], moe_x_.data(), m, moe_u_.data());
    be.SwiGlu(moe_g_.data(), moe_u_.data(), static_cast<int64_t>(m) * c.n_ff_exp, moe_g_.data());
    be.MatMul(L.exp_down[e], moe_g_.data(), m, moe_y_.data());
    for (int r = 0; r < m; ++r) {
      const size_t pair = moe_rows_[start[e] + r];
      std::copy_n(moe_y_.data() + static_cast<size_t>(r) * D, D, moe_out_.data() + pair * D);
    }
  }
  for (size_t t = 0; t < nn; ++t) {
    float* y = tmp_.data() + t * D;
    const float* o = moe_out_.data() + t * K * D;
    const float* w = moe_w_.data() + t * K;
    for (int i = 0; i < D; ++i) y[i] = w[0] * o[i];
    for (int s = 1; s < K; ++s) {
      for (int i = 0; i < D; ++i) y[i] += w[s] * o[static_cast<size_t>(s) * D + i];
    }
  }

  if (tap_) {
    Tap("moe_router", layer_, router_.data(), n, E);
    std::vector<float> ids(moe_ids_.begin(), moe_ids_.end());
    Tap("moe_ids", layer_, ids.data(), n, K);
    Tap("moe_weights", layer_, moe_w_.data(), n, K);
    Tap("moe_routed", layer_, tmp_.data(), n, D);
  }

  // Shared expert (qwen35moe): every token, scaled by sigmoid(ffn_gate_inp_shexp . x).
  if (c.n_ff_shexp > 0) {
    const int F = c.n_ff_shexp;
    moe_g_.resize(nn * ff_max);
    moe_u_.resize(nn * ff_max);
    moe_y_.resize(nn * D);
    be.MatMul(L.shexp_gate, xn_.data(), n, moe_g_.data());
    be.MatMul(L.shexp_up, xn_.data(), n, moe_u_.data());
    be.SwiGlu(moe_g_.data(), moe_u_.data(), static_cast<int64_t>(nn) * F, moe_g_.data());
    be.MatMul(L.shexp_down, moe_g_.data(), n, moe_y_.data());
    for (size_t t = 0; t < nn; ++t) {
      const float* x = xn_.data() + t * D;
      float logit = 0;
      for (int i = 0; i < D; ++i) logit += L.shexp_router[i] * x[i];
      const float gate = 1.0f / (1.0f + std::exp(-logit));
      float* y = tmp_.data() + t * D;
      const float* sh = moe_y_.data() + t * D;
      for (int i = 0; i < D; ++i) y[i] += gate * sh[i];
    }
  }
}

}  // namespace kvstash::engine
