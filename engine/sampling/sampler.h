// Choosing the next token from a row of logits, and deciding when a generation stops.
//
// Sampler applies llama.cpp's default chain to one row of logits:
//
//   penalties (repeat, frequency, presence over the last `penalty_last_n` accepted tokens)
//     -> top-k -> top-p -> min-p -> temperature -> draw from the softmax
//
// Temperature <= 0 is greedy: the argmax of the penalized logits, ties to the lowest token id.
// Top-p and min-p see the *untempered* distribution, as in llama.cpp. Every step is
// deterministic: candidates are ordered by (logit descending, id ascending), so ties never depend
// on the standard library's sort, and the draw uses the sampler's own std::mt19937_64 (fully
// specified by the C++ standard) with a fixed conversion to [0, 1). The same seed, logits and
// accepted tokens give the same tokens on every run and machine, whatever the thread count
// elsewhere in the engine.
//
// StopChecker turns the stream of generated tokens into stream-safe text and a stop decision:
// end-of-generation tokens, stop strings (with the held-back tail that might begin one) and a
// token budget. FindStopString() is its stateless core.
//
// Thread safety: a Sampler or StopChecker belongs to one sequence and is not thread-safe; use one
// per request. The free functions are pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace kvstash::engine {

// Defaults are llama.cpp's. Validated by Sampler::Create().
struct SamplerOptions {
  float temperature = 0.8f;        // <= 0: greedy. Otherwise logits are divided by it.
  int32_t top_k = 40;              // keep the k most likely tokens; <= 0: off
  float top_p = 0.95f;             // keep the smallest head with mass >= top_p; >= 1: off; > 0
  float min_p = 0.05f;             // keep tokens with p >= min_p * p_max; <= 0: off; <= 1
  float repeat_penalty = 1.0f;     // > 0; 1: off. Positive logits /= it, negative *= it.
  float frequency_penalty = 0.0f;  // logit -= frequency_penalty * count in window
  float presence_penalty = 0.0f;   // logit -= presence_penalty if count in window > 0
  int32_t penalty_last_n = 64;     // window of accepted tokens the penalties count; 0: off; >= 0
  uint64_t seed = 0;               // seeds the PRNG (Create and Reset)
};

// One entry of the distribution a Sampler draws from.
struct TokenProbability {
  int32_t id = 0;
  double probability = 0;
};

class Sampler final {
 public:
  // InvalidArgument naming the field when an option is out of range (NaN included).
  [[nodiscard]] static Result<Sampler> Create(const SamplerOptions& options);

  // Picks the next token from `logits` ([n_vocab] f32, one row). Advances the PRNG by exactly one
  // draw unless greedy. Does not record the token: call Accept() with whatever the caller keeps.
  // NaN and -inf logits are never chosen. InvalidArgument when `logits` is empty, holds +inf,
  // or has no finite entry.
  [[nodiscard]] Result<int32_t> Sample(std::span<const float> logits);

  // The distribution Sample() would draw from, after the whole chain: the surviving tokens
  // ordered by probability descending (ties by id), probabilities summing to 1 (one entry with
  // probability 1 when greedy). Pure: does not touch the PRNG. Same errors as Sample().
  [[nodiscard]] Result<std::vector<TokenProbability>> Distribution(
      std::span<const float> logits) const;

  // Applies only the penalties, in place, to a full row of logits (what Sample() does first).
  void ApplyPenalties(std::span<float> logits) const;

  // Records a token in the penalty window (the last `penalty_last_n` accepted tokens). Feed the
  // prompt's tokens too if they should count, as llama.cpp's server does.
  void Accept(int32_t token);

  // Empties the penalty window and reseeds the PRNG with options().seed.
  void Reset();

  const SamplerOptions& options() const { return options_; }

 private:
  struct Candidate {
    float logit;
    int32_t id;
  };
  explicit Sampler(const SamplerOptions& options);
  // Runs the chain on `logits`; fills `cands` with the survivors and their final (tempered)
  // logits. Greedy leaves exactly one candidate. `sorted` tells whether `cands` is ordered by
  // (logit desc, id asc).
  Status BuildCandidates(std::span<const float> logits, std::vector<float>* scratch,
                         std::vector<Candidate>* cands, bool* sorted) const;

  SamplerOptions options_;
  std::mt19937_64 rng_;
  std::vector<int32_t> window_;  // ring buffer of accepted tokens, capacity penalty_last_n
  size_t window_next_ = 0;       // ring position of the next write once full
  // Per-call scratch reused across Sample() calls (no state carried between calls).
  std::vector<float> row_;        // [n_vocab] penalized logits
  std::vector<Candidate> cands_;  // survivors of the chain
  std::vector<double> weights_;   // [cands_.size()] unnormalized softmax weights
};

// ---- Stop conditions ---------------------------------------------------------------------------

struct StopStringMatch {
  bool matched = false;
  size_t stop_index = 0;  // which stop string matched (earliest position; first listed on ties)
  size_t position = 0;    // byte offset of the match in the text
  // Bytes of the text that can be released now: up to the match when matched, otherwise all but
  // the longest tail that is a proper prefix of some stop string (it may grow into one).
  size_t safe_length = 0;
};

// Looks for the earliest occurrence of any non-empty stop string in `text`, starting at
// `search_from` (a caller that already searched a shorter text may skip ahead; matches starting
// before `search_from` are not reported).
StopStringMatch FindStopString(std::string_view text, std::span<const std::string> stop_strings,
                               size_t search_from = 0);

// Length of the longest prefix of `text` that does not end inside a UTF-8 sequence (a truncated
// multi-byte character at the end is excluded; malformed bytes elsewhere are left alone).
size_t CompleteUtf8Length(std::string_view text);

enum class StopReason : uint8_t {
  kNone = 0,
  kEndOfGeneration,  // an EOS/EOT token (not part of the text)
  kStopString,       // a stop string matched (it and anything after it are dropped)
  kMaxTokens,        // the token budget is spent
};

struct GenerationLimits {
  // Generated tokens allowed (EOG tokens count); < 0: unlimited. The Push of token number
  // max_tokens returns kMaxTokens, so 0 acts like 1: check it before generating at all.
  int32_t max_tokens = -1;
  std::vector<int32_t> eog_tokens;        // end of generation: vocab eos_id, eot_id
  bool ignore_eog = false;                // treat eog_tokens as text (benchmarks)
  std::vector<std::string> stop_strings;  // empty strings are ignored
};

// Per-request stop state. Feed every generated token with its detokenized bytes
// (Tokenizer::TokenToPiece); each step returns the text that is now safe to stream. Text that may
// be the start of a stop string, or an incomplete UTF-8 character, is held back until it is
// resolved. After a stop reason other than kNone, further Push calls are a caller bug (they
// return kNone and no text).
class StopChecker final {
 public:
  explicit StopChecker(GenerationLimits limits);

  struct Step {
    StopReason reason = StopReason::kNone;
    std::string text;  // newly releasable bytes (on a stop: everything that is to be emitted)
  };
  Step Push(int32_t token, std::string_view piece);
  // Ends the generation for a reason outside the checker (a scripted reply ran out): releases
  // everything held back, as an end-of-generation token would.
  Step End();

  int32_t n_tokens() const { return n_tokens_; }
  bool stopped() const { return stopped_; }
  // Everything released so far.
  std::string_view released_text() const { return std::string_view(text_).substr(0, released_); }

 private:
  Step Release(StopReason reason, size_t up_to);

  GenerationLimits limits_;
  size_t max_stop_length_ = 0;
  std::string text_;     // all generated text (eog tokens excluded)
  size_t released_ = 0;  // prefix of text_ already returned
  size_t searched_ = 0;  // stop strings cannot start before this offset (already searched)
  int32_t n_tokens_ = 0;
  bool stopped_ = false;
};

}  // namespace kvstash::engine
