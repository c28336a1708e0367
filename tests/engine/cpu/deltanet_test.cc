// Gated DeltaNet and MoE-router kernels (engine/cpu/deltanet.h, moe.h) on every kernel table
// this CPU can run: the recurrence against a float64 statement of the math
// S_t = e^g (I - b k k^T) S_{t-1} + b k v^T, o_t = S_t^T q; the chunked form against the
// recurrence; the conv with state; splitting a call.
#include "engine/cpu/deltanet.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "engine/cpu/kernels.h"
#include "engine/cpu/moe.h"

namespace kvstash::engine::cpu {
namespace {

std::vector<const KernelTable*> Tables() {
  std::vector<const KernelTable*> t = {&ScalarKernels()};
  if (Avx2Kernels()) t.push_back(Avx2Kernels());
  if (Avx512Kernels()) t.push_back(Avx512Kernels());
  return t;
}

// Inputs for n_tok tokens: 2 key heads, 4 value heads (value head h uses key head h % 2).
struct Inputs {
  int n_tok, nk = 2, nv = 4, dk = 32, dv = 32;
  std::vector<float> qkv, qn, kn, g, b, state0;
  explicit Inputs(int n, uint32_t seed) : n_tok(n) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int row = 2 * nk * dk + nv * dv;
    qkv.resize(static_cast<size_t>(n) * row);
    for (float& x : qkv) x = nd(rng);
    std::vector<float> alpha(static_cast<size_t>(n) * nv), beta(alpha.size());
    for (float& x : alpha) x = nd(rng);
    for (float& x : beta) x = nd(rng);
    const std::vector<float> dt = {0.1f, -0.2f, 0.3f, 0.0f}, a = {-1.0f, -0.5f, -2.0f, -0.1f};
    qn.resize(static_cast<size_t>(n) * nk * dk);
    kn.resize(qn.size());
    g.resize(alpha.size());
    b.resize(alpha.size());
    DeltaNetPrepare(qkv.data(), alpha.data(), beta.data(), dt.data(), a.data(), n, nk, nv, dk, dv,
                    1e-6f, qn.data(), kn.data(), g.data(), b.data());
    state0.resize(static_cast<size_t>(nv) * dv * dk);
    for (float& x : state0) x = 0.1f * nd(rng);
  }
  DeltaHeadArgs Head(int h, int t0 = 0, int n = -1) const {
    const int row = 2 * nk * dk + nv * dv;
    return {qkv.data() + static_cast<size_t>(t0) * row,
            qn.data() + static_cast<size_t>(t0) * nk * dk,
            kn.data() + static_cast<size_t>(t0) * nk * dk,
            g.data() + static_cast<size_t>(t0) * nv,
            b.data() + static_cast<size_t>(t0) * nv,
            n < 0 ? n_tok : n,
            nk,
            nv,
            dk,
            dv,
            h};
  }
};

// All heads of `in` with the recurrence (chunk 0) or the chunked form; returns out, updates st.
std::vector<float> RunAll(const KernelTable& kt, const Inputs& in, int chunk,
                          std::vector<float>& st) {
  std::vector<float> out(static_cast<size_t>(in.n_tok) * in.nv * in.dv);
  for (int h = 0; h < in.nv; ++h) {
    float* s = st.data() + static_cast<size_t>(h) * in.dv * in.dk;
    if (chunk > 1) {
      DeltaRuleHeadChunked(kt, in.Head(h), chunk, s, out.data());
    } else {
      DeltaRuleHead(kt, in.Head(h), s, out.data());
    }
  }
  return out;
}

double MaxRel(const std::vector<float>& a, const std::vector<double>& b) {
  double ss = 0, m = 0;
  for (size_t i = 0; i < b.size(); ++i) ss += b[i] * b[i];
  const double scale = std::sqrt(ss / b.size());
  for (size_t i = 0; i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m / scale;
}

TEST(DeltaNetKernelTest, RecurrenceMatchesFloat64MathOnEveryTable) {
  const Inputs in(40, 1);
  // float64 reference in the (I - b k k^T) form, S[i][j] with i over keys, j over values.
  std::vector<double> ref_out(static_cast<size_t>(in.n_tok) * in.nv * in.dv), ref_st;
  for (int h = 0; h < in.nv; ++h) {
    std::vector<double> S(static_cast<size_t>(in.dk) * in.dv);
    for (int j = 0; j < in.dv; ++j)
      for (int i = 0; i < in.dk; ++i) S[i * in.dv + j] = in.state0[(h * in.dv + j) * in.dk + i];
    const int kh = h % in.nk, row = 2 * in.nk * in.dk + in.nv * in.dv;
    for (int t = 0; t < in.n_tok; ++t) {
      const float* k = in.kn.data() + (t * in.nk + kh) * in.dk;
      const float* q = in.qn.data() + (t * in.nk + kh) * in.dk;
      const float* v = in.qkv.data() + t * row + 2 * in.nk * in.dk + h * in.dv;
      const double eg = std::exp(double{in.g[t * in.nv + h]}), bt = in.b[t * in.nv + h];
      std::vector<double> kS(in.dv, 0.0);  // k^T S
      for (int i = 0; i < in.dk; ++i)
        for (int j = 0; j < in.dv; ++j) kS[j] += k[i] * S[i * in.dv + j];
      for (int i = 0; i < in.dk; ++i)
        for (int j = 0; j < in.dv; ++j)
          S[i * in.dv + j] = eg * (S[i * in.dv + j] - bt * k[i] * kS[j]) + bt * k[i] * v[j];
      for (int j = 0; j < in.dv; ++j) {
        double o = 0;
        for (int i = 0; i < in.dk; ++i) o += S[i * in.dv + j] * q[i];
        ref_out[(t * in.nv + h) * in.dv + j] = o;
      }
    }
    for (int j = 0; j < in.dv; ++j)
      for (int i = 0; i < in.dk; ++i) ref_st.push_back(S[i * in.dv + j]);
  }
  for (const KernelTable* kt : Tables()) {
    SCOPED_TRACE(kt->name);
    std::vector<float> st = in.state0;
    const std::vector<float> out = RunAll(*kt, in, 0, st);
    EXPECT_LE(MaxRel(out, ref_out), 1e-5);
    EXPECT_LE(MaxRel(st, ref_st), 1e-5);
  }
}

TEST(DeltaNetKernelTest, ChunkedFormAgreesWithRecurrence) {
  for (const KernelTable* kt : Tables()) {
    for (int n : {1, 7, 64, 65, 150}) {
      for (int chunk : {64, 16, 5}) {
        SCOPED_TRACE(std::string(kt->name) + " n_tok " + std::to_string(n) + " chunk " +
                     std::to_string(chunk));
        const Inputs in(n, 100 + n);
        std::vector<float> st_r = in.state0, st_c = in.state0;
        const std::vector<float> out_r = RunAll(*kt, in, 0, st_r);
        const std::vector<float> out_c = RunAll(*kt, in, chunk, st_c);
        EXPECT_LE(MaxRel(out_c, std::vector<double>(out_r.begin(), out_r.end())), 1e-4);
        EXPECT_LE(MaxRel(st_c, std::vector<double>(st_r.begin(), st_r.end())), 1e-4);
      }
    }
  }
}

TEST(DeltaNetKernelTest, RecurrenceSplitAnywhereIsBitIdentical) {
  const Inputs in(30, 7);
  for (const KernelTable* kt : Tables()) {
    SCOPED_TRACE(kt->name);
    std::vector<float> st_one = in.state0;
    const std::vector<float> one = RunAll(*kt, in, 0, st_one);
    for (int cut : {1, 13, 29}) {
      std::vector<float> st = in.state0, out(one.size());
      for (int h = 0; h < in.nv; ++h) {
        float* s = st.data() + static_cast<size_t>(h) * in.dv * in.dk;
        DeltaRuleHead(*kt, in.Head(h, 0, cut), s, out.data());
        DeltaRuleHead(*kt, in.Head(h, cut, in.n_tok - cut), s,
                      out.data() + static_cast<size_t>(cut) * in.nv * in.dv);
      }
      EXPECT_EQ(0, std::memcmp(out.data(), one.data(), one.size() * sizeof(float)));
      EXPECT_EQ(0, std::memcmp(st.data(), st_one.data(), st.size() * sizeof(float)));
    }
  }
}

TEST(DeltaNetKernelTest, FusedTokenStepEqualsDotAxpyCompositionBitForBit) {
  // The shapes of the real models (128) and odd ones that take the row-by-row remainder.
  for (const KernelTable* kt : Tables()) {
    for (const auto& [dv, dk] : {std::pair{128, 128}, std::pair{6, 16}, std::pair{5, 20}}) {
      SCOPED_TRACE(std::string(kt->name) + " dv " + std::to_string(dv) + " dk " +
                   std::to_string(dk));
      std::mt19937 rng(dv * 1000 + dk);
      std::normal_distribution<float> nd;
      std::vector<float> s0(static_cast<size_t>(dv) * dk), q(dk), k(dk), v(dv);
      for (float& x : s0) x = 0.1f * nd(rng);
      for (float& x : q) x = nd(rng);
      for (float& x : k) x = nd(rng);
      for (float& x : v) x = nd(rng);
      const float eg = 0.93f, bt = 0.61f;
      std::vector<float> s_ref = s0, o_ref(dv), s = s0, o(dv);
      for (int j = 0; j < dv; ++j) {
        float* r = s_ref.data() + static_cast<size_t>(j) * dk;
        for (int i = 0; i < dk; ++i) r[i] *= eg;
        const float d = bt * (v[j] - kt->dot_f32(r, k.data(), dk));
        kt->axpy_f32(d, k.data(), r, dk);
        o_ref[j] = kt->dot_f32(r, q.data(), dk);
      }
      kt->delta_rule_token(s.data(), dv, dk, q.data(), k.data(), v.data(), eg, bt, o.data());
      EXPECT_EQ(0, std::memcmp(s.data(), s_ref.data(), s.size() * sizeof(float)));
      EXPECT_EQ(0, std::memcmp(o.data(), o_ref.data(), o.size() * sizeof(float)));
    }
  }
}

TEST(DeltaNetKernelTest, CausalConvWithStateEqualsConvOverTheWholeSequence) {
  const int C = 37, K = 4, n = 23;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> w(C * K), x(n * C), st0((K - 1) * C);
  for (float& v : w) v = nd(rng);
  for (float& v : x) v = nd(rng);
  for (float& v : st0) v = nd(rng);
  std::vector<float> one = x, st_one = st0;
  CausalConvSiluChannels(one.data(), n, C, w.data(), K, st_one.data(), 0, C);
  // Naive: y[t][c] = silu(sum_j w[c][j] * in[t + j][c]) over in = [state; x].
  for (int t = 0; t < n; ++t) {
    for (int c = 0; c < C; ++c) {
      double s = 0;
      for (int j = 0; j < K; ++j) {
        const int p = t + j - (K - 1);
        s += w[c * K + j] * (p < 0 ? st0[(p + K - 1) * C + c] : x[p * C + c]);
      }
      EXPECT_NEAR(one[t * C + c], s / (1 + std::exp(-s)), 1e-5);
    }
  }
  for (int i = 0; i < K - 1; ++i)
    for (int c = 0; c < C; ++c) EXPECT_EQ(st_one[i * C + c], x[(n - K + 1 + i) * C + c]);
  // Split at 1 and at 2 (shorter than the state) and in channel ranges: bit-identical.
  for (int cut : {1, 2, 10}) {
    std::vector<float> y = x, st = st0;
    CausalConvSiluChannels(y.data(), cut, C, w.data(), K, st.data(), 0, 20);
    CausalConvSiluChannels(y.data(), cut, C, w.data(), K, st.data(), 20, C);
    CausalConvSiluChannels(y.data() + cut * C, n - cut, C, w.data(), K, st.data(), 0, C);
    EXPECT_EQ(0, std::memcmp(y.data(), one.data(), y.size() * sizeof(float))) << cut;
    EXPECT_EQ(0, std::memcmp(st.data(), st_one.data(), st.size() * sizeof(float))) << cut;
  }
}

TEST(MoeRouteTest, TopKOfSoftmaxRenormalizedTiesToLowerId) {
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f, 0.5f, -3.0f, 0.0f};
  int32_t ids[3];
  float w[3];
  MoeRouteToken(logits.data(), 8, 3, ids, w);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 3);
  EXPECT_EQ(ids[2], 4);
  const double e2 = std::exp(2.0), e1 = std::exp(1.0);
  EXPECT_NEAR(w[0], e2 / (2 * e2 + e1), 1e-6);
  EXPECT_NEAR(w[2], e1 / (2 * e2 + e1), 1e-6);
  EXPECT_NEAR(w[0] + w[1] + w[2], 1.0, 1e-6);
}

}  // namespace
}  // namespace kvstash::engine::cpu
