// Sampler: each stage of the chain on fixed logits (exact support sets and probabilities), the
// order of the stages, penalties, seeded reproducibility and empirical frequencies; StopChecker:
// stop strings across token boundaries, held-back text, EOG and token budgets.
#include "engine/sampling/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace kvstash::engine {
namespace {

// Options with every filter and penalty off: a plain softmax(logits / T).
SamplerOptions Plain(float temperature = 1.0f) {
  SamplerOptions o;
  o.temperature = temperature;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.min_p = 0.0f;
  return o;
}

Sampler Make(const SamplerOptions& o) {
  Result<Sampler> s = Sampler::Create(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

std::vector<TokenProbability> Dist(const SamplerOptions& o, const std::vector<float>& logits) {
  Result<std::vector<TokenProbability>> d = Make(o).Distribution(logits);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return d.ok() ? *d : std::vector<TokenProbability>{};
}

std::set<int32_t> Support(const std::vector<TokenProbability>& d) {
  std::set<int32_t> ids;
  for (const TokenProbability& p : d) ids.insert(p.id);
  return ids;
}

std::vector<double> Softmax(const std::vector<float>& logits, double t) {
  const double mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) total += p[i] = std::exp((logits[i] - mx) / t);
  for (double& x : p) x /= total;
  return p;
}

// Ids ordered by (logit desc, id asc).
std::vector<int32_t> Ranked(const std::vector<float>& logits) {
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  return ids;
}

// Pearson chi-square of observed counts against expected probabilities.
double ChiSquare(const std::map<int32_t, int>& counts, const std::vector<TokenProbability>& expect,
                 int n) {
  double chi = 0;
  for (const TokenProbability& p : expect) {
    const double e = p.probability * n;
    const auto it = counts.find(p.id);
    const double o = it == counts.end() ? 0 : it->second;
    chi += (o - e) * (o - e) / e;
  }
  return chi;
}

const std::vector<float> kLogits = {1.0f, 2.5f, -0.5f, 2.5f, 0.3f, 4.0f, -3.0f, 1.7f};

TEST(SamplerTest, GreedyIsArgmaxWithTiesToLowestId) {
  const std::vector<float> tie = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
  for (float t : {0.0f, -1.0f}) {
    Sampler s = Make(Plain(t));
    EXPECT_EQ(*s.Sample(tie), 1);
    EXPECT_EQ(*s.Sample(kLogits), 5);
    const std::vector<TokenProbability> d = *s.Distribution(tie);
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].id, 1);
    EXPECT_EQ(d[0].probability, 1.0);
  }
  // Greedy ignores the filters' settings and skips NaN / -inf.
  SamplerOptions o;
  o.temperature = 0;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float ninf = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(*Make(o).Sample(std::vector<float>{nan, ninf, -5.0f, nan}), 2);
}

TEST(SamplerTest, BadRowsAreInvalidArgument) {
  Sampler s = Make(SamplerOptions{});
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(s.Sample(std::vector<float>{}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Sample(std::vector<float>{1.0f, inf}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Sample(std::vector<float>{nan, -inf}).status().code(), StatusCode::kInvalidArgument);
  // NaN and -inf entries are simply never drawn.
  Sampler plain = Make(Plain());
  for (int i = 0; i < 200; ++i) {
    const int32_t id = *plain.Sample(std::vector<float>{nan, 0.0f, -inf, 0.5f});
    EXPECT_TRUE(id == 1 || id == 3) << id;
  }
}

TEST(SamplerTest, CreateRejectsOutOfRangeOptions) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<SamplerOptions> bad(8);
  bad[0].temperature = nan;
  bad[1].top_p = 0.0f;
  bad[2].top_p = nan;
  bad[3].min_p = 1.5f;
  bad[4].repeat_penalty = 0.0f;
  bad[5].frequency_penalty = nan;
  bad[6].presence_penalty = std::numeric_limits<float>::infinity();
  bad[7].penalty_last_n = -1;
  for (const SamplerOptions& o : bad) {
    const Result<Sampler> s = Sampler::Create(o);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find("sampler option"), std::string::npos);
  }
  EXPECT_TRUE(Sampler::Create(SamplerOptions{}).ok());
}

TEST(SamplerTest, PlainSamplingDistributionIsSoftmaxOverTemperature) {
  for (float t : {0.3f, 1.0f, 2.0f}) {
    const std::vector<TokenProbability> d = Dist(Plain(t), kLogits);
    const std::vector<double> want = Softmax(kLogits, t);
    ASSERT_EQ(d.size(), kLogits.size());
    double total = 0;
    for (const TokenProbability& p : d) {
      EXPECT_NEAR(p.probability, want[p.id], 1e-12) << "T=" << t << " id=" << p.id;
      total += p.probability;
    }
    EXPECT_NEAR(total, 1.0, 1e-12);
    // Ordered by probability, ties by id (ids 1 and 3 share a logit).
    std::vector<int32_t> order;
    for (const TokenProbability& p : d) order.push_back(p.id);
    EXPECT_EQ(order, Ranked(kLogits));
  }
}

TEST(SamplerTest, TopKKeepsExactlyKWithTiesToLowestIds) {
  const std::vector<int32_t> ranked = Ranked(kLogits);  // 5, 1, 3, 7, 0, 4, 2, 6
  for (int32_t k = 1; k <= 8; ++k) {
    SamplerOptions o = Plain();
    o.top_k = k;
    const std::set<int32_t> want(ranked.begin(), ranked.begin() + k);
    EXPECT_EQ(Support(Dist(o, kLogits)), want) << "k=" << k;
  }
  SamplerOptions o = Plain();
  o.top_k = 2;  // 1 and 3 tie for second place: the lower id wins
  EXPECT_EQ(Support(Dist(o, kLogits)), (std::set<int32_t>{5, 1}));
  o.top_k = 100;  // more than the vocabulary: no-op
  EXPECT_EQ(Dist(o, kLogits).size(), kLogits.size());
  // Renormalised over the survivors.
  o.top_k = 3;
  const std::vector<TokenProbability> d = Dist(o, kLogits);
  const double z = std::exp(4.0) + 2 * std::exp(2.5);
  EXPECT_NEAR(d[0].probability, std::exp(4.0) / z, 1e-12);
}

// The smallest head (in rank order) whose untempered mass reaches p.
size_t ExpectedTopP(const std::vector<float>& logits, double p) {
  const std::vector<double> probs = Softmax(logits, 1.0);
  double cum = 0;
  size_t k = 0;
  for (int32_t id : Ranked(logits)) {
    cum += probs[id];
    ++k;
    if (cum >= p) break;
  }
  return k;
}

TEST(SamplerTest, TopPKeepsTheSmallestSetWithMassAtLeastP) {
  const std::vector<int32_t> ranked = Ranked(kLogits);
  for (float p : {0.05f, 0.5f, 0.6f, 0.75f, 0.9f, 0.95f, 0.99f, 0.9999f}) {
    SamplerOptions o = Plain();
    o.top_p = p;
    const size_t k = ExpectedTopP(kLogits, p);
    EXPECT_EQ(Support(Dist(o, kLogits)), std::set<int32_t>(ranked.begin(), ranked.begin() + k))
        << "p=" << p;
  }
  // Mass exactly on a boundary: two equal logits, p = 0.5 keeps one.
  SamplerOptions o = Plain();
  o.top_p = 0.5f;
  EXPECT_EQ(Support(Dist(o, {0.0f, 0.0f})), std::set<int32_t>{0});
}

// A vocabulary-sized row exercises the growing partial sort (top-p without top-k).
TEST(SamplerTest, TopPOnALargeVocabularyMatchesAFullSort) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(151936);
  for (float& l : logits) l = normal(rng);
  const std::vector<int32_t> ranked = Ranked(logits);
  for (float p : {0.5f, 0.9f, 0.999f}) {
    SamplerOptions o = Plain(0.7f);
    o.top_p = p;
    const size_t k = ExpectedTopP(logits, p);
    const std::vector<TokenProbability> d = Dist(o, logits);
    ASSERT_EQ(d.size(), k) << "p=" << p;
    for (size_t i = 0; i < k; ++i) ASSERT_EQ(d[i].id, ranked[i]) << "p=" << p << " i=" << i;
  }
}

TEST(SamplerTest, MinPKeepsTokensWithAtLeastMinPTimesTheTopProbability) {
  // Relative to the top logit 0: token i has p_i / p_max = exp(l_i).
  const std::vector<float> logits = {0.0f,
                                     std::log(0.5f),
                                     std::log(0.2f),
                                     std::log(0.1f) + 1e-4f,
                                     std::log(0.1f) - 1e-4f,
                                     std::log(0.01f)};
  SamplerOptions o = Plain();
  o.min_p = 0.1f;
  EXPECT_EQ(Support(Dist(o, logits)), (std::set<int32_t>{0, 1, 2, 3}));
  o.min_p = 0.3f;
  EXPECT_EQ(Support(Dist(o, logits)), (std::set<int32_t>{0, 1}));
  o.min_p = 1.0f;
  EXPECT_EQ(Support(Dist(o, logits)), std::set<int32_t>{0});
}

// llama.cpp order: top-k -> top-p -> min-p on the untempered distribution, temperature last.
TEST(SamplerTest, FiltersRunInLlamaCppOrderBeforeTemperature) {
  const std::vector<float> logits = {2.0f, 1.0f, 0.0f, -1.0f};
  // Untempered probs: .644 .237 .087 .032. top_p 0.8 keeps two; had T=0.1 been applied first,
  // token 0 alone (p > .99) would have been kept.
  SamplerOptions o = Plain(0.1f);
  o.top_p = 0.8f;
  const std::vector<TokenProbability> d = Dist(o, logits);
  EXPECT_EQ(Support(d), (std::set<int32_t>{0, 1}));
  const double t = 0.1f;  // tempered afterwards: p1 / p0 = exp((1 - 2) / T)
  EXPECT_NEAR(d[1].probability, 1.0 / (1.0 + std::exp(1.0 / t)), 1e-15);
  // min_p 0.3: exp(-1) = .37 survives untempered (it would not at T=0.1).
  o = Plain(0.1f);
  o.min_p = 0.3f;
  EXPECT_EQ(Support(Dist(o, logits)), (std::set<int32_t>{0, 1}));
  // top-p then min-p: renormalised mass after top-k=3 is .670 .246 .090; top_p .95 keeps 3, then
  // min_p 0.2 (relative to the max) drops token 2 (exp(-2) = .135).
  o = Plain(1.0f);
  o.top_k = 3;
  o.top_p = 0.95f;
  o.min_p = 0.2f;
  EXPECT_EQ(Support(Dist(o, logits)), (std::set<int32_t>{0, 1}));
  // top-k before top-p: with k = 1 top-p has nothing left to cut.
  o = Plain();
  o.top_k = 1;
  o.top_p = 0.01f;
  EXPECT_EQ(Support(Dist(o, logits)), std::set<int32_t>{0});
}

TEST(SamplerTest, PenaltiesChangeExactlyTheWindowTokens) {
  SamplerOptions o = Plain();
  o.repeat_penalty = 1.5f;
  o.frequency_penalty = 0.25f;
  o.presence_penalty = 0.5f;
  o.penalty_last_n = 4;
  Sampler s = Make(o);
  for (int32_t t : {7, 1, 2, 2, 5, 99}) s.Accept(t);  // window: 2 2 5 99 (7 and 1 slid out)
  std::vector<float> row = {1.0f, 2.0f, 3.0f, -1.0f, 0.5f, -2.0f, 0.0f, 4.0f};
  const std::vector<float> before = row;
  s.ApplyPenalties(row);
  for (size_t i = 0; i < row.size(); ++i) {
    if (i == 2 || i == 5) continue;
    EXPECT_EQ(row[i], before[i]) << "token " << i << " is not in the window";
  }
  EXPECT_FLOAT_EQ(row[2], 3.0f / 1.5f - 2 * 0.25f - 0.5f);   // positive: divided; count 2
  EXPECT_FLOAT_EQ(row[5], -2.0f * 1.5f - 1 * 0.25f - 0.5f);  // negative: multiplied; count 1
  // Out-of-vocabulary ids in the window (99) are ignored; Reset() empties the window.
  s.Reset();
  std::vector<float> again = before;
  s.ApplyPenalties(again);
  EXPECT_EQ(again, before);
}

TEST(SamplerTest, PenaltiesApplyBeforeGreedyAndFilters) {
  SamplerOptions o = Plain(0.0f);
  o.repeat_penalty = 2.0f;
  Sampler s = Make(o);
  const std::vector<float> logits = {3.0f, 2.0f, 1.0f};
  EXPECT_EQ(*s.Sample(logits), 0);
  s.Accept(0);  // 3 / 2 = 1.5 < 2
  EXPECT_EQ(*s.Sample(logits), 1);
  SamplerOptions k = Plain();
  k.top_k = 1;
  k.presence_penalty = 10.0f;
  Sampler t = Make(k);
  t.Accept(0);
  EXPECT_EQ(Support(*t.Distribution(logits)), std::set<int32_t>{1});
  SamplerOptions off = k;
  off.penalty_last_n = 0;  // window disabled
  Sampler u = Make(off);
  u.Accept(0);
  EXPECT_EQ(Support(*u.Distribution(logits)), std::set<int32_t>{0});
}

TEST(SamplerTest, EmpiricalFrequenciesMatchSoftmaxOverTemperature) {
  for (float t : {0.7f, 1.0f, 1.8f}) {
    SamplerOptions o = Plain(t);
    o.seed = 1234;
    Sampler s = Make(o);
    const int n = 200000;
    std::map<int32_t, int> counts;
    for (int i = 0; i < n; ++i) ++counts[*s.Sample(kLogits)];
    std::vector<TokenProbability> expect;
    const std::vector<double> p = Softmax(kLogits, t);
    for (size_t i = 0; i < p.size(); ++i) expect.push_back({static_cast<int32_t>(i), p[i]});
    // 7 degrees of freedom: P(chi2 > 30) < 1e-4.
    EXPECT_LT(ChiSquare(counts, expect, n), 30.0) << "T=" << t;
  }
}

TEST(SamplerTest, EmpiricalFrequenciesMatchTheFilteredDistribution) {
  SamplerOptions o;
  o.temperature = 1.3f;
  o.top_k = 6;
  o.top_p = 0.97f;
  o.min_p = 0.02f;
  o.seed = 99;
  Sampler s = Make(o);
  const std::vector<TokenProbability> d = *s.Distribution(kLogits);
  ASSERT_GE(d.size(), 3u);
  ASSERT_LT(d.size(), kLogits.size());
  const std::set<int32_t> support = Support(d);
  const int n = 100000;
  std::map<int32_t, int> counts;
  for (int i = 0; i < n; ++i) {
    const int32_t id = *s.Sample(kLogits);
    ASSERT_TRUE(support.count(id)) << "drew filtered-out token " << id;
    ++counts[id];
  }
  EXPECT_LT(ChiSquare(counts, d, n), 30.0);
}

TEST(SamplerTest, SameSeedGivesTheSameSequence) {
  SamplerOptions o;
  o.seed = 42;
  o.temperature = 1.0f;
  o.min_p = 0;
  Sampler a = Make(o);
  Sampler b = Make(o);
  std::vector<int32_t> sa, sb;
  for (int i = 0; i < 500; ++i) {
    sa.push_back(*a.Sample(kLogits));
    sb.push_back(*b.Sample(kLogits));
  }
  EXPECT_EQ(sa, sb);
  a.Reset();
  std::vector<int32_t> again;
  for (int i = 0; i < 500; ++i) again.push_back(*a.Sample(kLogits));
  EXPECT_EQ(again, sa);
  o.seed = 43;
  Sampler c = Make(o);
  std::vector<int32_t> sc;
  for (int i = 0; i < 500; ++i) sc.push_back(*c.Sample(kLogits));
  EXPECT_NE(sc, sa);
}

// Samplers share nothing: running them on other threads, concurrently, changes nothing.
TEST(SamplerTest, SequenceDoesNotDependOnTheThreadItRunsOn) {
  SamplerOptions o;
  o.seed = 7;
  o.repeat_penalty = 1.2f;
  auto run = [&] {
    Sampler s = Make(o);
    std::vector<int32_t> out;
    for (int i = 0; i < 300; ++i) {
      out.push_back(*s.Sample(kLogits));
      s.Accept(out.back());
    }
    return out;
  };
  const std::vector<int32_t> want = run();
  std::vector<std::vector<int32_t>> got(4);
  std::vector<std::thread> threads;
  for (auto& g : got) threads.emplace_back([&g, &run] { g = run(); });
  for (std::thread& t : threads) t.join();
  for (const auto& g : got) EXPECT_EQ(g, want);
}

// std::mt19937_64 and the 53-bit conversion are fully specified, so this sequence is the same on
// every platform and build; a change here breaks reproducibility of existing seeds.
TEST(SamplerTest, SeededSequenceIsPinned) {
  SamplerOptions o = Plain(1.0f);
  o.seed = 2024;
  Sampler s = Make(o);
  std::vector<int32_t> got;
  for (int i = 0; i < 16; ++i) got.push_back(*s.Sample(kLogits));
  const std::vector<int32_t> want = {5, 5, 3, 5, 0, 1, 5, 5, 3, 5, 5, 5, 5, 5, 1, 1};
  EXPECT_EQ(got, want);
}

// ---- Stop strings and limits -----------------------------------------------------------------

TEST(SamplerTest, FindStopStringMatchesEarliestAndHoldsBackPrefixes) {
  const std::vector<std::string> stops = {"<|end|>", "\n\nUser:", ""};
  StopStringMatch m = FindStopString("Hello <|e", stops);
  EXPECT_FALSE(m.matched);
  EXPECT_EQ(m.safe_length, 6u);  // "<|e" may become "<|end|>"
  m = FindStopString("Hello\n\nUs", stops);
  EXPECT_EQ(m.safe_length, 5u);
  m = FindStopString("Hello <|end|> and\n\nUser:", stops);
  ASSERT_TRUE(m.matched);
  EXPECT_EQ(m.stop_index, 0u);
  EXPECT_EQ(m.position, 6u);
  EXPECT_EQ(m.safe_length, 6u);
  m = FindStopString("a\n\nUser: <|end|>", stops);
  EXPECT_EQ(m.stop_index, 1u);
  EXPECT_EQ(m.position, 1u);
  m = FindStopString("no stop here", stops);
  EXPECT_FALSE(m.matched);
  EXPECT_EQ(m.safe_length, 12u);
  m = FindStopString("<|end|>", stops, 1);  // starts before search_from: not reported
  EXPECT_FALSE(m.matched);
  EXPECT_EQ(FindStopString("abc", {}).safe_length, 3u);
}

TEST(SamplerTest, CompleteUtf8LengthExcludesATruncatedCharacter) {
  EXPECT_EQ(CompleteUtf8Length(""), 0u);
  EXPECT_EQ(CompleteUtf8Length("ab"), 2u);
  EXPECT_EQ(CompleteUtf8Length("a\xe4\xbd"), 1u);      // 2 of 3 bytes of U+4F60
  EXPECT_EQ(CompleteUtf8Length("a\xe4\xbd\xa0"), 4u);  // complete
  EXPECT_EQ(CompleteUtf8Length("a\xf0\x9f\x99"), 1u);  // 3 of 4 bytes of an emoji
  EXPECT_EQ(CompleteUtf8Length("a\x80"), 2u);          // stray continuation: malformed, kept
  EXPECT_EQ(CompleteUtf8Length("a\xff"), 2u);
}

GenerationLimits Limits(std::vector<std::string> stops, std::vector<int32_t> eog = {},
                        int32_t max_tokens = -1, bool ignore_eog = false) {
  GenerationLimits l;
  l.stop_strings = std::move(stops);
  l.eog_tokens = std::move(eog);
  l.max_tokens = max_tokens;
  l.ignore_eog = ignore_eog;
  return l;
}

std::string Concat(StopChecker& c, const std::vector<std::string>& pieces,
                   std::vector<StopReason>* reasons) {
  std::string out;
  int32_t token = 100;
  for (const std::string& p : pieces) {
    StopChecker::Step step = c.Push(token++, p);
    out += step.text;
    reasons->push_back(step.reason);
    if (step.reason != StopReason::kNone) break;
  }
  return out;
}

TEST(SamplerTest, StopStringAcrossTokensIsCutAndNeverStreamed) {
  StopChecker c(Limits({"<|end|>"}));
  EXPECT_EQ(c.Push(1, "Hel").text, "Hel");
  EXPECT_EQ(c.Push(2, "lo <|").text, "lo ");  // "<|" held back
  const StopChecker::Step s3 = c.Push(3, "en");
  EXPECT_EQ(s3.reason, StopReason::kNone);
  EXPECT_EQ(s3.text, "");
  const StopChecker::Step s4 = c.Push(4, "d|> trailing");
  EXPECT_EQ(s4.reason, StopReason::kStopString);
  EXPECT_EQ(s4.text, "");
  EXPECT_EQ(c.released_text(), "Hello ");
  EXPECT_TRUE(c.stopped());
  EXPECT_EQ(c.Push(5, "x").text, "");  // after the stop: nothing
}

TEST(SamplerTest, HeldBackTextIsReleasedWhenItStopsLookingLikeAStop) {
  StopChecker c(Limits({"</s>", "STOP"}));
  std::vector<StopReason> reasons;
  EXPECT_EQ(Concat(c, {"a<", "/", "x", "ST", "OP!"}, &reasons), "a</x");
  EXPECT_EQ(reasons.back(), StopReason::kStopString);
  EXPECT_EQ(c.released_text(), "a</x");
}

TEST(SamplerTest, EndOfGenerationTokenStopsAndFlushesHeldText) {
  StopChecker c(Limits({"###"}, {2, 7}));
  EXPECT_EQ(c.Push(10, "ok #").text, "ok ");
  const StopChecker::Step s = c.Push(7, "<|eot_id|>");
  EXPECT_EQ(s.reason, StopReason::kEndOfGeneration);
  EXPECT_EQ(s.text, "#");  // held text flushed, the EOG piece is not text
  EXPECT_EQ(c.released_text(), "ok #");
  EXPECT_EQ(c.n_tokens(), 2);

  StopChecker ignore(Limits({}, {2}, -1, true));
  const StopChecker::Step t = ignore.Push(2, "</s>");
  EXPECT_EQ(t.reason, StopReason::kNone);
  EXPECT_EQ(t.text, "</s>");
}

TEST(SamplerTest, MaxTokensStopsAfterTheLastAllowedToken) {
  StopChecker c(Limits({"END"}, {}, 3));
  EXPECT_EQ(c.Push(1, "a").reason, StopReason::kNone);
  EXPECT_EQ(c.Push(2, "b").reason, StopReason::kNone);
  const StopChecker::Step s = c.Push(3, "cE");
  EXPECT_EQ(s.reason, StopReason::kMaxTokens);
  EXPECT_EQ(s.text, "cE");  // the held "E" is flushed
  // A stop string completed by the last allowed token wins over the budget.
  StopChecker d(Limits({"END"}, {}, 2));
  d.Push(1, "xE");
  const StopChecker::Step t = d.Push(2, "ND");
  EXPECT_EQ(t.reason, StopReason::kStopString);
  EXPECT_EQ(d.released_text(), "x");
}

TEST(SamplerTest, IncompleteUtf8IsHeldUntilComplete) {
  StopChecker c(GenerationLimits{});
  EXPECT_EQ(c.Push(1, "h\xe4").text, "h");
  EXPECT_EQ(c.Push(2, "\xbd").text, "");
  EXPECT_EQ(c.Push(3, "\xa0!").text, "\xe4\xbd\xa0!");
  EXPECT_EQ(c.released_text(), "h\xe4\xbd\xa0!");
}

TEST(SamplerTest, StopStringMatchingIsIncrementalOverManyTokens) {
  StopChecker c(Limits({"needle", "xyz"}));
  std::string released;
  for (int i = 0; i < 5000; ++i) {
    const StopChecker::Step s = c.Push(i, i == 4321 ? "nee" : i == 4322 ? "dle" : "hay ");
    released += s.text;
    if (s.reason != StopReason::kNone) {
      EXPECT_EQ(s.reason, StopReason::kStopString);
      EXPECT_EQ(i, 4322);
      break;
    }
  }
  EXPECT_EQ(released.size(), 4321u * 4);
  EXPECT_EQ(released, c.released_text());
}

}  // namespace
}  // namespace kvstash::engine
