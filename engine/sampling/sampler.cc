// Sampler and StopChecker (see sampler.h for the chain and its order).
//
// Determinism: candidates are compared by (logit desc, id asc), a strict total order, so every
// sort or partial sort below has exactly one correct result and the order in which the final draw
// walks the candidates is fixed by the math, not by the library. Where no filter has sorted the
// candidates they stay in id order (erase/remove are stable). Probabilities are accumulated in
// double; the uniform variate is the top 53 bits of one mt19937_64 output.
//
// Cost per call is O(n_vocab) to copy and filter the row, plus a partial sort of the head: k
// candidates for top-k, or for top-p without top-k a head that grows geometrically from 256
// until it holds mass p (a full sort of the vocabulary only when the distribution is nearly
// flat). Sample() keeps its vocabulary-sized buffers between calls. Greedy without active
// penalties is one SIMD argmax over the row (cpu kernel table) with no copy.
#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "engine/cpu/kernels.h"

namespace kvstash::engine {
namespace {

template <typename C>
bool Before(const C& a, const C& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// llama.cpp's penalty formula for one logit seen `count` (> 0) times in the window.
float Penalize(float logit, int32_t count, const SamplerOptions& o) {
  if (o.repeat_penalty != 1.0f) {
    logit = logit <= 0 ? logit * o.repeat_penalty : logit / o.repeat_penalty;
  }
  return logit - static_cast<float>(count) * o.frequency_penalty - o.presence_penalty;
}

bool PenaltiesActive(const SamplerOptions& o) {
  return o.repeat_penalty != 1.0f || o.frequency_penalty != 0.0f || o.presence_penalty != 0.0f;
}

// Calls fn(id, count) once per distinct token of the window that is inside [0, n_vocab).
template <typename Fn>
void ForEachWindowToken(std::vector<int32_t> ids, size_t n_vocab, Fn fn) {
  std::sort(ids.begin(), ids.end());
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j < ids.size() && ids[j] == ids[i]) ++j;
    if (ids[i] >= 0 && static_cast<size_t>(ids[i]) < n_vocab) {
      fn(ids[i], static_cast<int32_t>(j - i));
    }
    i = j;
  }
}

}  // namespace

Result<Sampler> Sampler::Create(const SamplerOptions& o) {
  auto bad = [](const char* field, const std::string& why) {
    return Status::InvalidArgument(std::string("sampler option ") + field + ": " + why);
  };
  if (!std::isfinite(o.temperature)) return bad("temperature", "must be finite");
  if (!(o.top_p > 0) || std::isnan(o.top_p)) return bad("top_p", "must be > 0 (>= 1 disables)");
  if (!(o.min_p <= 1) || std::isnan(o.min_p)) return bad("min_p", "must be <= 1 (<= 0 disables)");
  if (!(o.repeat_penalty > 0) || !std::isfinite(o.repeat_penalty)) {
    return bad("repeat_penalty", "must be finite and > 0 (1 disables)");
  }
  if (!std::isfinite(o.frequency_penalty)) return bad("frequency_penalty", "must be finite");
  if (!std::isfinite(o.presence_penalty)) return bad("presence_penalty", "must be finite");
  if (o.penalty_last_n < 0) return bad("penalty_last_n", "must be >= 0 (0 disables)");
  return Sampler(o);
}

Sampler::Sampler(const SamplerOptions& options) : options_(options), rng_(options.seed) {
  window_.reserve(static_cast<size_t>(options_.penalty_last_n));
}

void Sampler::Accept(int32_t token) {
  const auto capacity = static_cast<size_t>(options_.penalty_last_n);
  if (capacity == 0) return;
  if (window_.size() < capacity) {
    window_.push_back(token);
  } else {
    window_[window_next_] = token;
    window_next_ = (window_next_ + 1) % capacity;
  }
}

void Sampler::Reset() {
  window_.clear();
  window_next_ = 0;
  rng_.seed(options_.seed);
}

void Sampler::ApplyPenalties(std::span<float> logits) const {
  if (window_.empty() || !PenaltiesActive(options_)) return;
  ForEachWindowToken(window_, logits.size(), [&](int32_t id, int32_t count) {
    logits[id] = Penalize(logits[id], count, options_);
  });
}

Status Sampler::BuildCandidates(std::span<const float> logits, std::vector<float>* scratch,
                                std::vector<Candidate>* cands, bool* sorted) const {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (logits.empty()) return Status::InvalidArgument("sampler: empty logits row");
  const SamplerOptions& o = options_;
  std::vector<Candidate>& c = *cands;
  c.clear();
  *sorted = false;
  // Greedy: one SIMD argmax (ties go to the lowest id, NaN never wins) leaves one candidate.
  auto greedy = [&](std::span<const float> r) -> int64_t {
    const int64_t best = cpu::Kernels().argmax_f32(r.data(), std::ssize(r));
    if (best >= 0) {
      c.push_back({r[best], static_cast<int32_t>(best)});
      *sorted = true;
    }
    return best;
  };
  if (o.temperature <= 0 && (window_.empty() || !PenaltiesActive(o))) {
    // Nothing to penalize (the common decode step): the row as given, no copy. A +inf anywhere
    // is the first maximum, so the error below names the same token as the check further down.
    const int64_t best = greedy(logits);
    if (best < 0) return Status::InvalidArgument("sampler: no finite logit");
    if (logits[best] == kInf) {
      c.clear();
      return Status::InvalidArgument("sampler: logit of token " + std::to_string(best) +
                                     " is +inf");
    }
    return Status::Ok();
  }
  if (const auto it = std::find(logits.begin(), logits.end(), kInf); it != logits.end()) {
    return Status::InvalidArgument("sampler: logit of token " +
                                   std::to_string(it - logits.begin()) + " is +inf");
  }
  std::vector<float>& row = *scratch;
  row.assign(logits.begin(), logits.end());
  ApplyPenalties(row);

  if (o.temperature <= 0) {
    if (greedy(row) < 0) return Status::InvalidArgument("sampler: no finite logit");
    return Status::Ok();
  }

  c.reserve(row.size());
  for (size_t i = 0; i < row.size(); ++i) {
    // NaN and -inf (given, or reached through a penalty) are never candidates.
    if (std::isfinite(row[i])) c.push_back({row[i], static_cast<int32_t>(i)});
  }
  if (c.empty()) return Status::InvalidArgument("sampler: no finite logit");
  auto before = [](const Candidate& a, const Candidate& b) { return Before(a, b); };
  // Sorts c[first, last) into the head of the (logit desc, id asc) order of c[first, end).
  // A heap (partial_sort) wins for short heads, selection + sort for long ones.
  auto sort_head = [&](size_t first, size_t last) {
    if (last - first <= 1024) {
      std::partial_sort(c.begin() + first, c.begin() + last, c.end(), before);
    } else {
      std::nth_element(c.begin() + first, c.begin() + last, c.end(), before);
      std::sort(c.begin() + first, c.begin() + last, before);
    }
  };

  // top-k
  if (o.top_k > 0 && static_cast<size_t>(o.top_k) < c.size()) {
    sort_head(0, static_cast<size_t>(o.top_k));
    c.resize(static_cast<size_t>(o.top_k));
    *sorted = true;
  }

  // top-p over the untempered softmax of the current candidates.
  if (o.top_p < 1.0f) {
    const float max_logit =
        *sorted ? c[0].logit : std::max_element(c.begin(), c.end(), [](auto& a, auto& b) {
                                 return a.logit < b.logit;
                               })->logit;
    double total = 0;
    for (const Candidate& x : c) total += std::exp(static_cast<double>(x.logit) - max_logit);
    const double target = static_cast<double>(o.top_p) * total;
    double cum = 0;
    size_t keep = c.size();
    size_t done = 0;
    while (done < c.size() && keep == c.size()) {
      size_t end = c.size();
      if (!*sorted) {
        end = std::min(c.size(), std::max<size_t>(256, done * 4));
        sort_head(done, end);
      }
      for (size_t i = done; i < end; ++i) {
        cum += std::exp(static_cast<double>(c[i].logit) - max_logit);
        if (cum >= target) {
          keep = i + 1;
          break;
        }
      }
      done = end;
    }
    // Not reaching the target (rounding) keeps everything; either way the survivors are sorted.
    c.resize(keep);
    *sorted = true;
  }

  // min-p: p_i >= min_p * p_max  <=>  exp(l_i - l_max) >= min_p. Stable, so order is kept.
  if (o.min_p > 0) {
    const float max_logit =
        *sorted ? c[0].logit : std::max_element(c.begin(), c.end(), [](auto& a, auto& b) {
                                 return a.logit < b.logit;
                               })->logit;
    const double min_p = o.min_p;
    std::erase_if(c, [&](const Candidate& x) {
      return std::exp(static_cast<double>(x.logit) - max_logit) < min_p;
    });
  }
  return Status::Ok();
}

Result<std::vector<TokenProbability>> Sampler::Distribution(std::span<const float> logits) const {
  std::vector<float> row;
  std::vector<Candidate> c;
  bool sorted = false;
  KV_RETURN_IF_ERROR(BuildCandidates(logits, &row, &c, &sorted));
  if (!sorted) std::sort(c.begin(), c.end(), [](auto& a, auto& b) { return Before(a, b); });
  std::vector<TokenProbability> out;
  out.reserve(c.size());
  if (c.size() == 1) {
    out.push_back({c[0].id, 1.0});
    return out;
  }
  const double t = options_.temperature;
  double total = 0;
  for (const Candidate& x : c) {
    const double w = std::exp((static_cast<double>(x.logit) - c[0].logit) / t);
    out.push_back({x.id, w});
    total += w;
  }
  for (TokenProbability& p : out) p.probability /= total;
  return out;
}

Result<int32_t> Sampler::Sample(std::span<const float> logits) {
  // Scratch buffers are members so that a vocabulary-sized row does not cost fresh pages per token.
  std::vector<Candidate>& c = cands_;
  bool sorted = false;
  KV_RETURN_IF_ERROR(BuildCandidates(logits, &row_, &c, &sorted));
  if (options_.temperature <= 0) return c[0].id;
  // temperature, then softmax weights relative to the maximum.
  float max_logit = c[0].logit;
  if (!sorted) {
    for (const Candidate& x : c) max_logit = std::max(max_logit, x.logit);
  }
  const double t = options_.temperature;
  std::vector<double>& weights = weights_;
  weights.resize(c.size());
  double total = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    weights[i] = std::exp((static_cast<double>(c[i].logit) - max_logit) / t);
    total += weights[i];
  }
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;  // [0, 1)
  const double target = u * total;
  double acc = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    acc += weights[i];
    if (target < acc) return c[i].id;
  }
  return c.back().id;  // u * total rounded up to the full sum
}

// ---- Stop conditions ---------------------------------------------------------------------------

StopStringMatch FindStopString(std::string_view text, std::span<const std::string> stop_strings,
                               size_t search_from) {
  StopStringMatch m;
  size_t best = std::string_view::npos;
  for (size_t i = 0; i < stop_strings.size(); ++i) {
    const std::string& s = stop_strings[i];
    if (s.empty() || search_from > text.size()) continue;
    const size_t pos = text.find(s, search_from);
    if (pos < best) {
      best = pos;
      m.stop_index = i;
    }
  }
  if (best != std::string_view::npos) {
    m.matched = true;
    m.position = best;
    m.safe_length = best;
    return m;
  }
  size_t held = 0;
  for (const std::string& s : stop_strings) {
    for (size_t k = std::min(s.size() - (s.empty() ? 0 : 1), text.size()); k > held; --k) {
      if (text.ends_with(std::string_view(s).substr(0, k))) {
        held = k;
        break;
      }
    }
  }
  m.safe_length = text.size() - held;
  return m;
}

size_t CompleteUtf8Length(std::string_view text) {
  const size_t n = text.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const auto b = static_cast<unsigned char>(text[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t len = 0;
    if (b < 0x80) {
      len = 1;
    } else if ((b & 0xE0) == 0xC0) {
      len = 2;
    } else if ((b & 0xF0) == 0xE0) {
      len = 3;
    } else if ((b & 0xF8) == 0xF0) {
      len = 4;
    } else {
      return n;  // not a lead byte: malformed, nothing to wait for
    }
    return back < len ? n - back : n;
  }
  return n;
}

StopChecker::StopChecker(GenerationLimits limits) : limits_(std::move(limits)) {
  for (const std::string& s : limits_.stop_strings) {
    max_stop_length_ = std::max(max_stop_length_, s.size());
  }
}

StopChecker::Step StopChecker::Release(StopReason reason, size_t up_to) {
  Step step;
  step.reason = reason;
  if (up_to > released_) step.text = text_.substr(released_, up_to - released_);
  released_ = std::max(released_, up_to);
  if (reason != StopReason::kNone) stopped_ = true;
  return step;
}

StopChecker::Step StopChecker::End() {
  if (stopped_) return {};
  return Release(StopReason::kEndOfGeneration, text_.size());
}

StopChecker::Step StopChecker::Push(int32_t token, std::string_view piece) {
  if (stopped_) return {};
  ++n_tokens_;
  if (!limits_.ignore_eog && std::find(limits_.eog_tokens.begin(), limits_.eog_tokens.end(),
                                       token) != limits_.eog_tokens.end()) {
    return Release(StopReason::kEndOfGeneration, text_.size());
  }
  text_.append(piece);
  // No stop string occurred in the text before this piece, so a match must end inside the piece
  // and start at most max_stop_length_ - 1 bytes before it; the held-back tail covers that.
  const StopStringMatch m = FindStopString(text_, limits_.stop_strings, searched_);
  if (m.matched) return Release(StopReason::kStopString, std::max(m.position, released_));
  searched_ = text_.size() >= max_stop_length_ ? text_.size() - max_stop_length_ + 1 : 0;
  if (limits_.max_tokens >= 0 && n_tokens_ >= limits_.max_tokens) {
    return Release(StopReason::kMaxTokens, text_.size());
  }
  return Release(StopReason::kNone, std::min(m.safe_length, CompleteUtf8Length(text_)));
}

}  // namespace kvstash::engine
