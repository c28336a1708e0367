// The scheduler (ARCHITECTURE.md §1, §6): one engine thread drives the Runner over many
// sequences; callers on other threads Submit requests and read events from their handles.
//
// Each step:
//   1. cancelled and expired requests finish (their pages are freed, full blocks stay cached);
//   2. waiting requests are admitted in arrival order while sequences and pages allow: the
//      prompt is matched against the prefix cache (Acquire) at admission;
//   3. one batch is built: every decoding sequence's next row first, then prompt tokens of
//      prefilling sequences (oldest first) up to `batch_tokens`, so a long prefill never freezes
//      the streams that already decode (chunked prefill);
//   4. pages are reserved for the batch; when the pool runs dry the most recently admitted
//      sequence is preempted: its full blocks are already published to the cache, its pages go
//      back, and it returns to the front of the queue to resume by re-acquiring them (never
//      truncated);
//   5. one Runner::Forward over the batch; full blocks are published as they fill (so an
//      interrupted prefill keeps what it computed); logits are sampled; events are pushed.
//
// Thread safety: Submit, Stats and Stop may be called from any thread. The Runner and
// PrefixCache passed in belong to the engine thread from construction until Stop returns.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "base/status.h"
#include "serve/request.h"

namespace kvstash::engine {
class Runner;
class Tokenizer;
}  // namespace kvstash::engine
namespace kvstash::cache {
class PrefixCache;
}

namespace kvstash::serve {

struct SchedulerOptions {
  // Rows (decode rows + prompt tokens) in one forward pass. Default 256.
  int batch_tokens = 256;
  // Sequences in flight at once (decoding or prefilling). Default 16.
  int max_running = 16;
  // Requests waiting for admission beyond which Submit refuses (ResourceExhausted; the daemon
  // answers 503 with Retry-After). Default 64.
  int max_queue = 64;
  // Hybrid models (qwen35, qwen35moe): besides the snapshots at the end of every prompt and of
  // every answer, the recurrent state is snapshotted every `state_interval` prompt positions
  // (rounded up to a whole block), so a long shared context that diverges resumes at most this
  // many positions before the divergence. 0 = only at prompt and answer ends. Default 4096
  // (docs/cache.md "Hybrid models": a snapshot of Qwen3.6-35B-A3B weighs as much as ~3.2K
  // tokens of its KV, so 4096 keeps interval snapshots below the KV they accompany).
  int state_interval = 4096;
};

struct SchedulerStats {
  uint64_t queue_depth = 0;  // waiting now
  uint64_t running = 0;      // admitted now
  uint64_t pages_total = 0;
  uint64_t pages_free = 0;  // on the pool's free list (cached pages are not free)
  uint64_t pages_used = 0;  // referenced by a live sequence or held by the device tier
  uint64_t submitted = 0;
  uint64_t refused = 0;  // Submit refused: queue full
  uint64_t completed = 0;
  uint64_t failed = 0;
  uint64_t cancelled = 0;
  uint64_t preemptions = 0;
  uint64_t steps = 0;
  uint64_t batch_rows = 0;        // rows computed, all steps
  uint64_t prefilled_tokens = 0;  // prompt positions computed
  uint64_t cached_device = 0;     // prompt positions reused, per tier
  uint64_t cached_host = 0;
  uint64_t cached_disk = 0;
  uint64_t generated_tokens = 0;
};

class Scheduler {
 public:
  // `cache` may be null (no reuse; sessions refused). Starts the engine thread.
  Scheduler(engine::Runner& runner, cache::PrefixCache* cache, const engine::Tokenizer* tokenizer,
            const SchedulerOptions& options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request. InvalidArgument for a request that can never run (bad token ids, longer
  // than the context, bad sampling options), ResourceExhausted when max_queue requests wait,
  // Cancelled after Stop.
  Result<std::shared_ptr<RequestHandle>> Submit(Request request);
  // Cancels every request (each gets its kDone/kError event) and joins the engine thread.
  // Idempotent.
  void Stop();
  SchedulerStats Stats() const;
  const SchedulerOptions& options() const { return options_; }

  struct Active;

 private:
  void Loop();
  void Step();
  bool Admit(Active& a);
  void RestoreSessionPrefix(Active& a);
  void ExtendFromDiverged(Active& a, int max_positions);
  // Whether a restored session's sequence can be used as RestoreSession left it. False only for
  // hybrid models without a snapshot tier (every position is then recomputed); with one, the
  // cache's RestoreSession resumes a hybrid session at the last block with a snapshot (the one
  // saved with it) and its tail is recomputed.
  bool KvReuseAllowed() const;
  // Hybrid models: the next position > n_past where `a` wants a state snapshot (a prefill chunk
  // ends there), or INT_MAX; and whether the position it just reached is one.
  int NextSnapshotAt(const Active& a) const;
  // Hybrid models: the snapshot positions of the request's message-start hints (at admission).
  void SetHintPositions(Active& a) const;
  bool WantsSnapshotNow(const Active& a) const;
  // Keeps the state at the end of the sequence's last full block as a snapshot: the current one
  // when it sits on a block boundary, else the one stashed when decoding crossed the boundary.
  void SaveLastSnapshot(Active& a);
  void Preempt(Active& a);
  void Finish(Active& a, FinishReason reason, const std::string& tail_text);
  void Fail(Active& a, const Status& s);
  void Release(Active& a);
  void Forget(Active& a);
  void PublishFull(Active& a);
  void SampleNext(Active& a, const float* logits);
  bool BuildAndRunBatch();

  engine::Runner& runner_;
  cache::PrefixCache* cache_;
  const engine::Tokenizer* tokenizer_;
  const SchedulerOptions options_;
  // Hybrid model with a snapshot tier: snapshots are taken (policy above).
  const bool snapshots_;
  const int state_interval_;  // options_.state_interval rounded up to whole blocks (0 = off)

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Active>> inbox_;  // submitted, not yet seen by the engine thread
  bool stopping_ = false;
  uint64_t next_id_ = 0;

  // Engine thread only.
  std::deque<std::unique_ptr<Active>> waiting_;
  std::deque<std::unique_ptr<Active>> running_;  // admission order
  uint64_t admit_counter_ = 0;

  mutable std::mutex stats_mu_;
  SchedulerStats stats_;
  std::thread thread_;
};

}  // namespace kvstash::serve
