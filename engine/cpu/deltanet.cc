#include "engine/cpu/deltanet.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace kvstash::engine::cpu {
namespace {

inline float Silu(float x) { return x / (1.0f + std::exp(-x)); }
// log(1 + e^x), linear above 20 where the two agree in f32 (as ggml_softplus).
inline float Softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

}  // namespace

void CausalConvSiluChannels(float* x, int n_tok, int channels, const float* conv_w, int d_conv,
                            float* state, int c0, int c1) {
  const int hist = d_conv - 1, nc = c1 - c0;
  // Row p of the input [state; x]: the state's rows, then x's (channels c0.. of each).
  const auto in_row = [&](int p) {
    return (p < hist ? state + static_cast<size_t>(p) * channels
                     : x + static_cast<size_t>(p - hist) * channels) +
           c0;
  };
  // The next state (the last hist inputs), saved before x is overwritten: [hist][nc].
  std::vector<float> next(static_cast<size_t>(hist) * nc);
  for (int i = 0; i < hist; ++i)
    std::copy_n(in_row(n_tok + i), nc, next.data() + static_cast<size_t>(i) * nc);
  // Weights transposed to [d_conv][nc] so every loop below walks channels contiguously (a loop
  // per channel over tokens strode a whole row, channels * 4 bytes, per element).
  std::vector<float> wt(static_cast<size_t>(d_conv) * nc), acc(nc);
  for (int c = 0; c < nc; ++c)
    for (int j = 0; j < d_conv; ++j)
      wt[static_cast<size_t>(j) * nc + c] = conv_w[static_cast<size_t>(c0 + c) * d_conv + j];
  // Tokens last to first: output row t replaces input row t + hist, which no earlier token
  // reads. Each channel sums its taps in order j = 0.. from 0, as a loop per channel would.
  for (int t = n_tok - 1; t >= 0; --t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int j = 0; j < d_conv; ++j) {
      const float* in = in_row(t + j);
      const float* w = wt.data() + static_cast<size_t>(j) * nc;
      for (int c = 0; c < nc; ++c) acc[c] += w[c] * in[c];
    }
    float* out = x + static_cast<size_t>(t) * channels + c0;
    for (int c = 0; c < nc; ++c) out[c] = Silu(acc[c]);
  }
  for (int i = 0; i < hist; ++i)
    std::copy_n(next.data() + static_cast<size_t>(i) * nc, nc,
                state + static_cast<size_t>(i) * channels + c0);
}

void DeltaNetPrepare(const float* qkv, const float* alpha, const float* beta, const float* dt_bias,
                     const float* a, int n_tok, int n_k_heads, int n_v_heads, int dk, int dv,
                     float eps, float* qn, float* kn, float* g, float* b) {
  const int key_dim = n_k_heads * dk;
  const size_t row = static_cast<size_t>(2) * key_dim + static_cast<size_t>(n_v_heads) * dv;
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  for (int t = 0; t < n_tok; ++t) {
    const float* src = qkv + t * row;
    for (int part = 0; part < 2; ++part) {  // q then k
      for (int h = 0; h < n_k_heads; ++h) {
        const float* x = src + part * key_dim + h * dk;
        float* y = (part == 0 ? qn : kn) + static_cast<size_t>(t) * key_dim + h * dk;
        double ss = 0;
        for (int i = 0; i < dk; ++i) ss += static_cast<double>(x[i]) * x[i];
        float inv = static_cast<float>(1.0 / std::sqrt(ss + eps));
        if (part == 0) inv *= q_scale;
        for (int i = 0; i < dk; ++i) y[i] = x[i] * inv;
      }
    }
    for (int h = 0; h < n_v_heads; ++h) {
      const size_t i = static_cast<size_t>(t) * n_v_heads + h;
      g[i] = Softplus(alpha[i] + dt_bias[h]) * a[h];
      b[i] = 1.0f / (1.0f + std::exp(-beta[i]));
    }
  }
}

void DeltaRuleHead(const KernelTable& kt, const DeltaHeadArgs& a, float* state_h, float* out) {
  const int dk = a.dk, dv = a.dv;
  const int key_dim = a.n_k_heads * dk;
  const size_t row = static_cast<size_t>(2) * key_dim + static_cast<size_t>(a.n_v_heads) * dv;
  const int kh = a.h % a.n_k_heads;  // tiled value heads (llama.cpp's qwen35 converter order)
  for (int t = 0; t < a.n_tok; ++t) {
    const float* q = a.qn + static_cast<size_t>(t) * key_dim + kh * dk;
    const float* k = a.kn + static_cast<size_t>(t) * key_dim + kh * dk;
    const float* v = a.qkv + t * row + 2 * key_dim + static_cast<size_t>(a.h) * dv;
    const float eg = std::exp(a.g[static_cast<size_t>(t) * a.n_v_heads + a.h]);
    const float bt = a.b[static_cast<size_t>(t) * a.n_v_heads + a.h];
    float* o = out + (static_cast<size_t>(t) * a.n_v_heads + a.h) * dv;
    kt.delta_rule_token(state_h, dv, dk, q, k, v, eg, bt, o);
  }
}

void DeltaRuleHeadChunked(const KernelTable& kt, const DeltaHeadArgs& a, int chunk_tokens,
                          float* state_h, float* out) {
  const int dk = a.dk, dv = a.dv, C = chunk_tokens;
  const int key_dim = a.n_k_heads * dk;
  const size_t row = static_cast<size_t>(2) * key_dim + static_cast<size_t>(a.n_v_heads) * dv;
  const int kh = a.h % a.n_k_heads;
  std::vector<float> G(C), beta(C);                    // [C] cumulative log-decay, beta
  std::vector<float> U(static_cast<size_t>(C) * dv);   // [C][dv] U = T (b v), then V'
  std::vector<float> W(static_cast<size_t>(C) * dk);   // [C][dk] W = T (b e^G k)
  std::vector<float> Kd(static_cast<size_t>(C) * dk);  // [C][dk] e^(G_last - G) k
  for (int t0 = 0; t0 < a.n_tok; t0 += C) {
    const int n = std::min(C, a.n_tok - t0);
    const auto q = [&](int i) { return a.qn + static_cast<size_t>(t0 + i) * key_dim + kh * dk; };
    const auto k = [&](int i) { return a.kn + static_cast<size_t>(t0 + i) * key_dim + kh * dk; };
    const auto v = [&](int i) { return a.qkv + (t0 + i) * row + 2 * key_dim + a.h * dv; };
    float acc = 0;
    for (int i = 0; i < n; ++i) {
      acc += a.g[static_cast<size_t>(t0 + i) * a.n_v_heads + a.h];
      G[i] = acc;
      beta[i] = a.b[static_cast<size_t>(t0 + i) * a.n_v_heads + a.h];
    }
    // (I + A) U = b v and (I + A) W = b e^G k by forward substitution (I + A is unit lower
    // triangular): row i = rhs_i - sum_{j<i} A[i][j] row j.
    for (int i = 0; i < n; ++i) {
      float* u = U.data() + static_cast<size_t>(i) * dv;
      float* w = W.data() + static_cast<size_t>(i) * dk;
      const float eg = std::exp(G[i]);
      for (int c = 0; c < dv; ++c) u[c] = beta[i] * v(i)[c];
      for (int c = 0; c < dk; ++c) w[c] = beta[i] * eg * k(i)[c];
      for (int j = 0; j < i; ++j) {
        const float aij = beta[i] * kt.dot_f32(k(i), k(j), dk) * std::exp(G[i] - G[j]);
        kt.axpy_f32(-aij, U.data() + static_cast<size_t>(j) * dv, u, dv);
        kt.axpy_f32(-aij, W.data() + static_cast<size_t>(j) * dk, w, dk);
      }
    }
    // V' = U - W S, with S column c = state row c.
    for (int i = 0; i < n; ++i) {
      float* u = U.data() + static_cast<size_t>(i) * dv;
      const float* w = W.data() + static_cast<size_t>(i) * dk;
      for (int c = 0; c < dv; ++c) {
        u[c] -= kt.dot_f32(w, state_h + static_cast<size_t>(c) * dk, dk);
      }
    }
    // O = (e^G q) S + tril_incl(q k^T e^(G_i - G_j)) V'.
    for (int i = 0; i < n; ++i) {
      float* o = out + (static_cast<size_t>(t0 + i) * a.n_v_heads + a.h) * dv;
      const float eg = std::exp(G[i]);
      for (int c = 0; c < dv; ++c) {
        o[c] = eg * kt.dot_f32(q(i), state_h + static_cast<size_t>(c) * dk, dk);
      }
      for (int j = 0; j <= i; ++j) {
        const float qk = kt.dot_f32(q(i), k(j), dk) * std::exp(G[i] - G[j]);
        kt.axpy_f32(qk, U.data() + static_cast<size_t>(j) * dv, o, dv);
      }
    }
    // S <- e^(G_last) S + sum_i (e^(G_last - G_i) k_i) V'_i^T.
    const float e_last = std::exp(G[n - 1]);
    for (int i = 0; i < n; ++i) {
      const float e = std::exp(G[n - 1] - G[i]);
      for (int c = 0; c < dk; ++c) Kd[static_cast<size_t>(i) * dk + c] = e * k(i)[c];
    }
    for (int c = 0; c < dv; ++c) {
      float* s = state_h + static_cast<size_t>(c) * dk;
      for (int i = 0; i < dk; ++i) s[i] *= e_last;
      for (int i = 0; i < n; ++i) {
        kt.axpy_f32(U[static_cast<size_t>(i) * dv + c], Kd.data() + static_cast<size_t>(i) * dk, s,
                    dk);
      }
    }
  }
}

}  // namespace kvstash::engine::cpu
