// The mixture-of-experts FFN of Runner::Forward (qwen3moe, qwen35moe).
//
// Routing is per token (softmax, top-k, renormalized weights: Backend::MoeRoute). The rows are
// then grouped by expert, so each chosen expert's weights stream once per forward chunk however
// many tokens picked it: every expert's gate and up products go to the backend as one
// MatMulBatch, then every down product as another (one barrier per batch instead of three per
// expert, which at 2 threads left a thread idle after each small product). Each token reads its
// slots' outputs where their experts left them and sums them in slot order (best first), so a
// token's result never depends on which other rows rode in the batch or how they were grouped
// (the MatMul contract makes each (weight row, token) dot independent of the token count).
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
  be.MatMul(L.ffn_router, xn_.data(), n, router_.data());
  be.MoeRoute(router_.data(), n, E, K, moe_ids_.data(), moe_w_.data());

  // Counting sort of (token, slot) pairs by expert: moe_rows_[i] is the pair (token * K + slot)
  // of expert-ordered row i, expert e owning rows [start[e], start[e + 1]); moe_pos_ inverts it.
  std::vector<int> start(E + 1, 0);
  for (int32_t e : moe_ids_) ++start[e + 1];
  for (int e = 0; e < E; ++e) start[e + 1] += start[e];
  const size_t n_pairs = nn * K;
  moe_rows_.resize(n_pairs);
  moe_pos_.resize(n_pairs);
  {
    std::vector<int> fill(start.begin(), start.end() - 1);
    for (size_t i = 0; i < n_pairs; ++i) {
      const int row = fill[moe_ids_[i]]++;
      moe_rows_[row] = static_cast<int32_t>(i);
      moe_pos_[i] = row;
    }
  }
  // Grown, never shrunk: growing zero-fills the new part (memset was 3% of a 512-token prefill).
  const size_t F = c.n_ff_exp, ff_max = std::max(c.n_ff_exp, c.n_ff_shexp);
  const auto grow = [](std::vector<float>& v, size_t n) { v.resize(std::max(v.size(), n)); };
  grow(moe_x_, n_pairs * D);
  grow(moe_g_, n_pairs * ff_max);
  grow(moe_u_, n_pairs * ff_max);
  grow(moe_y_, n_pairs * D);
  for (size_t r = 0; r < n_pairs; ++r) {
    std::copy_n(xn_.data() + static_cast<size_t>(moe_rows_[r] / K) * D, D, moe_x_.data() + r * D);
  }
  // All experts' products of the layer as two batches (gate and up, then down), so the backend
  // spreads the experts over its threads without a barrier per expert.
  moe_jobs_.clear();
  for (int e = 0; e < E; ++e) {
    const int m = start[e + 1] - start[e];
    if (m == 0) continue;
    const size_t r0 = start[e];
    moe_jobs_.push_back({&L.exp_gate[e], moe_x_.data() + r0 * D, m, moe_g_.data() + r0 * F});
    moe_jobs_.push_back({&L.exp_up[e], moe_x_.data() + r0 * D, m, moe_u_.data() + r0 * F});
  }
  be.MatMulBatch(moe_jobs_);
  be.SwiGlu(moe_g_.data(), moe_u_.data(), static_cast<int64_t>(n_pairs * F), moe_g_.data());
  moe_jobs_.clear();
  for (int e = 0; e < E; ++e) {
    const int m = start[e + 1] - start[e];
    if (m == 0) continue;
    const size_t r0 = start[e];
    moe_jobs_.push_back({&L.exp_down[e], moe_g_.data() + r0 * F, m, moe_y_.data() + r0 * D});
  }
  be.MatMulBatch(moe_jobs_);
  // Each token sums its slots best first, reading each expert output where its expert left it.
  for (size_t t = 0; t < nn; ++t) {
    float* y = tmp_.data() + t * D;
    const float* w = moe_w_.data() + t * K;
    const float* o = moe_y_.data() + static_cast<size_t>(moe_pos_[t * K]) * D;
    for (int i = 0; i < D; ++i) y[i] = w[0] * o[i];
    for (int s = 1; s < K; ++s) {
      o = moe_y_.data() + static_cast<size_t>(moe_pos_[t * K + s]) * D;
      for (int i = 0; i < D; ++i) y[i] += w[s] * o[i];
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
    grow(moe_g_, nn * ff_max);
    grow(moe_u_, nn * ff_max);
    grow(moe_y_, nn * D);
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
