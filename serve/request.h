// One generation request and what comes back from it (ARCHITECTURE.md §1): a Request goes in,
// a stream of Events comes out through a RequestHandle, ending with exactly one kDone or kError
// event that carries the Usage record every caller reports (CLI, HTTP, socket, tests, benchmarks).
//
// Thread safety: a RequestHandle is shared between the caller's thread (Next, Cancel) and the
// engine thread (Push); all of its methods are thread-safe. The engine never blocks on a handle:
// events queue without bound (a request produces at most max_tokens of them, plus one progress
// event per scheduler step), and a caller that stops reading only costs memory.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/sampling/sampler.h"

namespace kvstash::serve {

inline constexpr size_t kMaxSnapshotHints = 4;

struct Request {
  // The prompt as token ids (tokenize text with Engine::Tokenize / RenderChat first). With
  // `restore_session` it is appended to the session's tokens and may be empty.
  std::vector<int32_t> prompt;
  engine::SamplerOptions sampling;
  // Token budget, stop strings, end-of-generation handling. eog_tokens are filled from the
  // model's vocabulary when left empty.
  engine::GenerationLimits limits;
  // Continue the saved session NAME: its tokens come first (empty: none).
  std::string restore_session;
  // The prompt already holds the whole conversation (the chat APIs resend it every turn): the
  // session is used only when its tokens are a prefix of the prompt (it then supplies the KV,
  // its partial tail block included), and a missing or diverged session is not an error.
  bool session_is_prefix = false;
  // Save the whole sequence (context + generated tokens) as NAME when the request ends normally.
  std::string save_session;
  // Tenant isolation: joins the block-hash namespace (cache::PrefixCache).
  std::string cache_salt;
  // Report the K highest logits at the last prompt position (Event::top_logits on the first
  // token event).
  int top_logits = 0;
  // Report each sampled token's log-probability and the `logprobs` most likely alternatives.
  int logprobs = -1;  // -1: off; 0: the chosen token only; K: K alternatives
  // Cancel when not finished by then (steady clock); nullopt: no deadline.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  // Forced decoding: the first generated tokens are these instead of sampled ones. The model
  // still computes them (they are cached, sessions hold them, logprobs are the model's). The API
  // uses it to open a reply with a tool call's markup (tool_choice "required" or a named
  // function); with `end_after_forced` the reply is exactly these tokens (a scripted reply:
  // tests, transcript replays), ending as an end-of-generation token would.
  std::vector<int32_t> forced_tokens;
  bool end_after_forced = false;
  // Hybrid models (qwen35, qwen35moe): prompt positions where chat messages start, ascending (the
  // chat APIs fill it from the rendered template). The scheduler also snapshots the recurrent
  // state at the last block boundary at or before each of the last kMaxSnapshotHints of them,
  // ending a prefill chunk there (at most one extra chunk each), so a conversation re-sent with
  // its later messages changed resumes at the end of the last unchanged one. Ignored otherwise.
  std::vector<int> snapshot_hints;
  // Emit kPrefillProgress events as the prompt is computed.
  bool progress = false;
  // Free-form id for logs (the daemon's request id).
  std::string id;
};

enum class FinishReason : uint8_t {
  kEndOfGeneration,  // an EOS/EOT token
  kStopString,
  kMaxTokens,
  kCancelled,  // Cancel() or the deadline
  kContextFull,
};
const char* FinishReasonName(FinishReason r);  // "eog", "stop_string", "max_tokens", ...

// What a request cost and where its prompt came from.
struct Usage {
  int prompt_tokens = 0;     // tokens in the context (session tokens + prompt)
  int cached_tokens = 0;     // positions loaded from the cache instead of computed
  int device_tokens = 0;     // ... from the device tier
  int host_tokens = 0;       // ... from the host tier
  int disk_tokens = 0;       // ... from the disk tier
  int prefilled_tokens = 0;  // prompt positions computed (prompt_tokens - cached_tokens)
  int recomputed_blocks = 0;
  int generated_tokens = 0;  // sampled tokens returned (an end-of-generation token excluded)
  int preemptions = 0;       // times the request was preempted for pages and resumed
  double queue_ms = 0;       // submit -> admitted
  double load_ms = 0;        // cache lookup + copies + disk reads
  double prefill_ms = 0;     // wall time from admission to the prompt's last row computed
  double ttft_ms = 0;        // submit -> first token sampled
  double decode_ms = 0;      // first token -> last token
  double decode_tokens_per_s = 0;
  double total_ms = 0;  // submit -> done
  double save_ms = 0;   // saving the session
  FinishReason finish = FinishReason::kMaxTokens;
  std::string session_saved;  // name, when saved
};

struct TopLogit {
  int32_t id;
  float logit;
};
struct TokenLogprob {
  int32_t id;
  float logprob;
};

struct Event {
  enum class Kind : uint8_t { kPrefillProgress, kToken, kDone, kError };
  Kind kind = Kind::kToken;
  // kToken: the sampled token and the text that became safe to emit with it (may be empty:
  // held back for a stop string or an incomplete UTF-8 character). An end-of-generation token
  // comes with kDone instead.
  int32_t token = -1;
  std::string text;
  float logprob = 0;                 // when Request::logprobs >= 0
  std::vector<TokenLogprob> top;     // when Request::logprobs > 0
  std::vector<TopLogit> top_logits;  // first token, when Request::top_logits > 0
  // kPrefillProgress: context positions done (cached + computed) of the total.
  int done_tokens = 0;
  int total_tokens = 0;
  int cached_tokens = 0;
  double tokens_per_s = 0;  // computed positions per second so far
  // kDone: the final text (tail released by the stop checker) is in `text`; usage.
  Usage usage;
  // kError.
  Status status;
};

class RequestHandle {
 public:
  explicit RequestHandle(std::string id) : id_(std::move(id)) {}
  const std::string& id() const { return id_; }

  // Next event, waiting up to `timeout` (nullopt when none arrived in time). After the final
  // event (kDone / kError) it returns nullopt at once.
  std::optional<Event> Next(std::chrono::milliseconds timeout = std::chrono::hours(24));
  // The next event if one is queued; never waits.
  std::optional<Event> TryNext() { return Next(std::chrono::milliseconds(0)); }
  // Called (on the engine thread, without locks held) after every event pushed, for callers that
  // cannot block on Next (an io_context): it must be cheap and never block (post a drain to an
  // executor, or write to a non-blocking socket).
  // Set it before the first event can arrive, or drain once after setting it.
  void SetOnEvent(std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(mu_);
    on_event_ = std::move(fn);
  }
  // Asks the engine to stop the request; effective within one scheduler step (pages freed, full
  // blocks kept in the cache, a kDone event with FinishReason::kCancelled).
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  bool finished() const;

  // Engine side.
  void Push(Event e);

 private:
  const std::string id_;
  std::atomic<bool> cancelled_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
  bool final_pushed_ = false;
  bool final_taken_ = false;
  std::function<void()> on_event_;
};

}  // namespace kvstash::serve
