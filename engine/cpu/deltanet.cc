#include "engine/cpu/deltanet.h"

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
  const int hist = d_conv - 1;
  std::vector<float> col(static_cast<size_t>(n_tok + hist));  // [hist + n_tok] one channel
  for (int c = c0; c < c1; ++c) {
    for (int i = 0; i < hist; ++i) col[i] = state[static_cast<size_t>(i) * channels + c];
    for (int t = 0; t < n_tok; ++t) col[hist + t] = x[static_cast<size_t>(t) * channels + c];
    const float* w = conv_w + static_cast<size_t>(c) * d_conv;
    for (int t = 0; t < n_tok; ++t) {
      float s = 0;
      for (int j = 0; j < d_conv; ++j) s += w[j] * col[t + j];
      x[static_cast<size_t>(t) * channels + c] = Silu(s);
    }
    for (int i = 0; i < hist; ++i) state[static_cast<size_t>(i) * channels + c] = col[n_tok + i];
  }
}

void DeltaNetPrepare(const float* qkv, const float* alpha, const float* beta, const float* dt_bias,
                     const float* a, int n_tok, int n_k_heads, int n_v_heads, int dk, int dv,
                     float eps, float* qn, float* kn, float* decay, float* b) {
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
      decay[i] = std::exp(Softplus(alpha[i] + dt_bias[h]) * a[h]);
      b[i] = 1.0f / (1.0f + std::exp(-beta[i]));
    }
  }
}

void DeltaRuleHead(const KernelTable& kt, const float* qkv, const float* qn, const float* kn,
                   const float* decay, const float* b, int n_tok, int n_k_heads, int n_v_heads,
                   int dk, int dv, int h, float* state_h, float* out) {
  const int key_dim = n_k_heads * dk;
  const size_t row = static_cast<size_t>(2) * key_dim + static_cast<size_t>(n_v_heads) * dv;
  const int kh = h % n_k_heads;  // tiled value heads (llama.cpp's qwen35 converter order)
  for (int t = 0; t < n_tok; ++t) {
    const float* q = qn + static_cast<size_t>(t) * key_dim + kh * dk;
    const float* k = kn + static_cast<size_t>(t) * key_dim + kh * dk;
    const float* v = qkv + t * row + 2 * key_dim + static_cast<size_t>(h) * dv;
    const float eg = decay[static_cast<size_t>(t) * n_v_heads + h];
    const float bt = b[static_cast<size_t>(t) * n_v_heads + h];
    float* o = out + (static_cast<size_t>(t) * n_v_heads + h) * dv;
    for (int j = 0; j < dv; ++j) {
      float* s = state_h + static_cast<size_t>(j) * dk;  // column j of S, over key index
      for (int i = 0; i < dk; ++i) s[i] *= eg;
      const float d = bt * (v[j] - kt.dot_f32(s, k, dk));
      kt.axpy_f32(d, k, s, dk);
      o[j] = kt.dot_f32(s, q, dk);
    }
  }
}

}  // namespace kvstash::engine::cpu
