#include "serve/scheduler.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <exception>

#include "base/clock.h"
#include "base/logging.h"
#include "cache/prefix_cache.h"
#include "engine/runner.h"
#include "engine/tokenizer/tokenizer.h"

namespace kvstash::serve {

namespace {
using SteadyClock = std::chrono::steady_clock;

double MsSince(SteadyClock::time_point t0, SteadyClock::time_point t1) {
  return std::chrono::duration<double, std::milli>(t1 - t0).count();
}
}  // namespace

// One request from admission to its final event. Engine thread only (the handle is shared).
struct Scheduler::Active {
  Active(Request r, std::shared_ptr<RequestHandle> h, engine::Sampler s)
      : req(std::move(r)), handle(std::move(h)), sampler(std::move(s)), stop(req.limits) {}

  Request req;
  std::shared_ptr<RequestHandle> handle;
  engine::Sampler sampler;
  engine::StopChecker stop;
  // Every position that must be in the KV before the next sample: session tokens + prompt on
  // first admission; after a preemption, everything the sequence held.
  std::vector<int32_t> context;
  engine::Sequence seq;
  int32_t pending = -1;  // sampled, not yet in the KV (the next decode row)
  bool admitted = false;
  bool started = false;      // first admission done (the session restored, usage counted)
  uint64_t admit_order = 0;  // larger = admitted later (preemption victim order)
  int prompt_end = 0;        // context size of the first admission (prompt positions)
  int computed_prompt = 0;   // prompt positions computed (not loaded)
  SteadyClock::time_point submitted, admitted_at, first_token, prefill_started;
  bool have_first_token = false;
  bool prefill_done = false;
  Usage usage;
  int published_blocks = 0;
  size_t forced_pos = 0;  // next entry of req.forced_tokens
  // Session-as-prefix mode, first admission: the named session when it is not a prefix of the
  // prompt, held until the cache lookup so its KV can still serve the common part.
  engine::Sequence diverged;
  cache::AcquireResult diverged_from;  // the tiers its restore read
  // Hybrid models: the last position with a snapshot taken, and the state decoding left at the
  // last block boundary it crossed (saved as a snapshot when the request ends: where the next
  // agent turn resumes). [RecurrentStateElems] f32.
  int snapshot_pos = 0;
  int stash_pos = 0;
  // Hybrid models: block boundaries (context positions, ascending) at or before the message
  // starts the request hinted (Request::snapshot_hints), where the prompt is also snapshotted.
  std::vector<int> hint_pos;
  std::vector<float> stash;
};

// Where a request's prompt came from, as the cache reported it at admission.
void SetCacheUsage(Usage& u, const cache::AcquireResult& got) {
  u.cached_tokens = got.cached_tokens;
  u.device_tokens = got.device_tokens;
  u.host_tokens = got.host_tokens;
  u.disk_tokens = got.disk_tokens;
  u.recomputed_blocks = got.recomputed_blocks;
  u.load_ms = got.load_ms;
}

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kEndOfGeneration:
      return "eog";
    case FinishReason::kStopString:
      return "stop_string";
    case FinishReason::kMaxTokens:
      return "max_tokens";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kContextFull:
      return "context_full";
  }
  return "?";
}

// ---- RequestHandle ------------------------------------------------------------------------------

std::optional<Event> RequestHandle::Next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (final_taken_) return std::nullopt;
  if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return std::nullopt;
  Event e = std::move(events_.front());
  events_.pop_front();
  if (e.kind == Event::Kind::kDone || e.kind == Event::Kind::kError) final_taken_ = true;
  return e;
}

bool RequestHandle::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return final_pushed_;
}

void RequestHandle::Push(Event e) {
  std::function<void()> notify;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (final_pushed_) return;
    if (e.kind == Event::Kind::kDone || e.kind == Event::Kind::kError) final_pushed_ = true;
    events_.push_back(std::move(e));
    notify = on_event_;
  }
  cv_.notify_all();
  if (notify) notify();
}

// ---- Scheduler ----------------------------------------------------------------------------------

Scheduler::Scheduler(engine::Runner& runner, cache::PrefixCache* cache,
                     const engine::Tokenizer* tokenizer, const SchedulerOptions& options)
    : runner_(runner),
      cache_(cache),
      tokenizer_(tokenizer),
      options_(options),
      snapshots_(cache != nullptr && runner.model().config().is_hybrid() && cache->resumes()),
      state_interval_(options.state_interval <= 0
                          ? 0
                          : (options.state_interval + runner.options().block_tokens - 1) /
                                runner.options().block_tokens * runner.options().block_tokens) {
  thread_ = std::thread([this] { Loop(); });
}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Result<std::shared_ptr<RequestHandle>> Scheduler::Submit(Request request) {
  const engine::HParams& hp = runner_.model().config();
  for (int32_t t : request.prompt) {
    if (t < 0 || t >= hp.n_vocab) {
      return Status::InvalidArgument("prompt token id " + std::to_string(t) + " out of range [0, " +
                                     std::to_string(hp.n_vocab) + ")");
    }
  }
  for (int32_t t : request.forced_tokens) {
    if (t < 0 || t >= hp.n_vocab) {
      return Status::InvalidArgument("forced token id " + std::to_string(t) + " out of range [0, " +
                                     std::to_string(hp.n_vocab) + ")");
    }
  }
  if (request.prompt.empty() && request.restore_session.empty()) {
    return Status::InvalidArgument("empty prompt");
  }
  const int n_ctx = runner_.options().n_ctx;
  if (static_cast<int64_t>(request.prompt.size()) >= n_ctx) {
    return Status::InvalidArgument("prompt (" + std::to_string(request.prompt.size()) +
                                   " tokens) does not fit the context size " +
                                   std::to_string(n_ctx) + " with room to generate");
  }
  if ((!request.restore_session.empty() || !request.save_session.empty()) && cache_ == nullptr) {
    return Status::InvalidArgument("sessions need the prefix cache with a disk tier");
  }
  if (request.top_logits < 0) return Status::InvalidArgument("top_logits must be >= 0");
  if (request.limits.eog_tokens.empty() && tokenizer_ != nullptr) {
    for (int32_t id : {tokenizer_->vocab().eos_id, tokenizer_->vocab().eot_id}) {
      if (id >= 0) request.limits.eog_tokens.push_back(id);
    }
  }
  KV_ASSIGN_OR_RETURN(engine::Sampler sampler, engine::Sampler::Create(request.sampling));
  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) return Status::Cancelled("the engine is shutting down");
  {
    std::lock_guard<std::mutex> s(stats_mu_);
    if (stats_.queue_depth >= static_cast<uint64_t>(options_.max_queue)) {
      ++stats_.refused;
      return Status::ResourceExhausted("too many requests waiting (" +
                                       std::to_string(options_.max_queue) +
                                       "; --max-queue): try again later");
    }
    ++stats_.queue_depth;
    ++stats_.submitted;
  }
  if (request.id.empty()) request.id = "req-" + std::to_string(++next_id_);
  auto handle = std::make_shared<RequestHandle>(request.id);
  auto a = std::make_unique<Active>(std::move(request), handle, std::move(sampler));
  a->submitted = SteadyClock::now();
  inbox_.push_back(std::move(a));
  lock.unlock();
  cv_.notify_all();
  return handle;
}

SchedulerStats Scheduler::Stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_;
}

void Scheduler::Loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return stopping_ || !inbox_.empty() || !waiting_.empty() || !running_.empty();
      });
      while (!inbox_.empty()) {
        waiting_.push_back(std::move(inbox_.front()));
        inbox_.pop_front();
      }
      if (stopping_) break;
    }
    try {
      Step();
    } catch (const std::exception& e) {
      // An engine bug must not leave callers waiting forever: fail everything in flight.
      Status s = Status::Internal(std::string("engine step failed: ") + e.what());
      DefaultLogger()->error("scheduler: {}", s.ToString());
      while (!running_.empty()) Fail(*running_.front(), s);
      while (!waiting_.empty()) Fail(*waiting_.front(), s);
    }
  }
  // Shutdown: everything still here is cancelled (full blocks stay cached).
  while (!running_.empty()) Finish(*running_.front(), FinishReason::kCancelled, "");
  while (!waiting_.empty()) Finish(*waiting_.front(), FinishReason::kCancelled, "");
}

void Scheduler::Step() {
  const auto now = SteadyClock::now();
  // 1. Cancellations and deadlines, waiting and running.
  for (auto* q : {&running_, &waiting_}) {
    for (size_t i = 0; i < q->size();) {
      Active& a = *(*q)[i];
      const bool expired = a.req.deadline && now >= *a.req.deadline;
      if (a.handle->cancelled() || expired) {
        Finish(a, FinishReason::kCancelled, "");  // removes it from its queue
      } else {
        ++i;
      }
    }
  }
  // 2. Admission, in arrival order (a preempted request is at the front).
  while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_running) {
    Active& a = *waiting_.front();
    if (!Admit(a)) break;
  }
  {
    // Lock order: mu_ before stats_mu_ (as in Submit).
    std::lock_guard<std::mutex> l1(mu_);
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.queue_depth = waiting_.size() + inbox_.size();
    stats_.running = running_.size();
  }
  // 3-5.
  if (!running_.empty()) BuildAndRunBatch();
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    const engine::KvPool& pool = runner_.pool();
    stats_.pages_total = pool.n_pages();
    stats_.pages_free = pool.n_free();
    stats_.pages_used = pool.n_pages() - pool.n_free();
    stats_.running = running_.size();
    ++stats_.steps;
  }
}

// Admits the front waiting request when the pool can hold it; false to stop admitting for now.
bool Scheduler::Admit(Active& a) {
  engine::KvPool& pool = runner_.pool();
  const int bt = runner_.options().block_tokens;
  if (!a.started) {
    // Build the context: session tokens (restored into the sequence) + the prompt.
    a.context.clear();
    if (!a.req.restore_session.empty() && a.req.session_is_prefix) {
      RestoreSessionPrefix(a);
    } else if (!a.req.restore_session.empty()) {
      auto r = cache_->RestoreSession(a.req.restore_session, a.seq, a.req.prompt.empty() ? 1 : 0,
                                      a.req.cache_salt);
      if (!r.ok()) {
        Fail(a, r.status());
        return true;
      }
      a.context = r->tokens;
      if (KvReuseAllowed()) {
        SetCacheUsage(a.usage, r->acquired);
      } else {
        Release(a);  // hybrid without snapshots: the session's tokens are recomputed
      }
    }
    a.context.insert(a.context.end(), a.req.prompt.begin(), a.req.prompt.end());
    const int n_ctx = runner_.options().n_ctx;
    if (static_cast<int>(a.context.size()) >= n_ctx) {
      Fail(a, Status::InvalidArgument("context (" + std::to_string(a.context.size()) +
                                      " tokens) does not fit the context size " +
                                      std::to_string(n_ctx) + " with room to generate"));
      return true;
    }
    a.prompt_end = static_cast<int>(a.context.size());
    if (snapshots_) SetHintPositions(a);
  }
  // Pages: the whole remaining context plus the first generated token. A request that cannot
  // fit the pool even alone is refused; otherwise it waits until running sequences leave.
  const int need = runner_.PagesNeeded(a.seq, static_cast<int64_t>(a.context.size()) + 1);
  const int whole = static_cast<int>((a.context.size() + 1 + bt - 1) / bt);
  if (whole > pool.n_pages()) {
    Fail(a, Status::ResourceExhausted("the context needs " + std::to_string(whole) +
                                      " KV pages, the pool has " + std::to_string(pool.n_pages())));
    return true;
  }
  if (!running_.empty()) {
    const int reclaimable = cache_ != nullptr ? cache_->ReclaimablePages() : 0;
    if (need > pool.n_free() + reclaimable) {
      if (!a.diverged.block_table.empty()) cache_->Release(a.diverged);
      return false;
    }
  }
  // Match against the prefix cache (a restored session already holds its prefix).
  if (cache_ != nullptr && a.seq.n_past() == 0) {
    // On resume with a pending token the whole context may come from the cache; otherwise the
    // last position is computed for its logits.
    int max_positions = a.pending >= 0 ? static_cast<int>(a.context.size())
                                       : static_cast<int>(a.context.size()) - 1;
    if (!cache_->resumes()) max_positions = 0;
    auto got = cache_->Acquire(a.seq, a.context, max_positions, a.req.cache_salt);
    if (!got.ok()) {
      Fail(a, got.status());
      return true;
    }
    if (!a.started) {
      SetCacheUsage(a.usage, *got);
      if (!a.diverged.block_table.empty()) ExtendFromDiverged(a, max_positions);
    }
  }
  if (cache_ != nullptr && !a.diverged.block_table.empty()) cache_->Release(a.diverged);
  a.published_blocks = a.seq.n_past() / bt;
  a.admitted = true;
  a.admit_order = ++admit_counter_;
  a.admitted_at = SteadyClock::now();
  if (!a.started) {
    a.usage.queue_ms = MsSince(a.submitted, a.admitted_at);
    a.usage.prompt_tokens = a.prompt_end;
    a.prefill_started = a.admitted_at;
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.cached_device += a.usage.device_tokens;
    stats_.cached_host += a.usage.host_tokens;
    stats_.cached_disk += a.usage.disk_tokens;
  }
  a.started = true;
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->get() == &a) {
      running_.push_back(std::move(*it));
      waiting_.erase(it);
      break;
    }
  }
  return true;
}

// Session-as-prefix mode: the prompt holds the whole conversation. The session supplies the KV
// only when its tokens are a prefix of the prompt; otherwise (missing, diverged, incompatible)
// the prompt goes through the plain cache lookup.
bool Scheduler::KvReuseAllowed() const {
  return !runner_.model().config().is_hybrid() || snapshots_;
}

// Message boundaries: the last block boundary at or before each of the last kMaxSnapshotHints
// message starts (positions in the prompt, which follows any session tokens in the context).
void Scheduler::SetHintPositions(Active& a) const {
  const int bt = runner_.options().block_tokens;
  const auto& hints = a.req.snapshot_hints;
  const int n_prompt = static_cast<int>(a.req.prompt.size());
  const int offset = a.prompt_end - n_prompt;
  a.hint_pos.clear();
  const size_t first = hints.size() > kMaxSnapshotHints ? hints.size() - kMaxSnapshotHints : 0;
  for (size_t i = first; i < hints.size(); ++i) {
    if (hints[i] <= 0 || hints[i] > n_prompt) continue;
    const int p = (offset + hints[i]) / bt * bt;
    if (p > 0 && p < a.prompt_end) a.hint_pos.push_back(p);
  }
  std::sort(a.hint_pos.begin(), a.hint_pos.end());
  a.hint_pos.erase(std::unique(a.hint_pos.begin(), a.hint_pos.end()), a.hint_pos.end());
}

// The policy (docs/cache.md "Hybrid models"): the last block boundary before the end of the
// context (a repeated prompt resumes there), the end of the context when it is a boundary (a
// prompt that grows resumes there), every state_interval_ positions, and
// the hinted message boundaries (SetHintPositions).
int Scheduler::NextSnapshotAt(const Active& a) const {
  const int bt = runner_.options().block_tokens;
  const int n = a.seq.n_past();
  const int end = static_cast<int>(a.context.size());
  int next = INT_MAX;
  const int last_before_end = (end - 1) / bt * bt;
  if (last_before_end > n) next = last_before_end;
  if (state_interval_ > 0) {
    const int iv = (n / state_interval_ + 1) * state_interval_;
    if (iv < end) next = std::min(next, iv);
  }
  const auto hint = std::upper_bound(a.hint_pos.begin(), a.hint_pos.end(), n);
  if (hint != a.hint_pos.end() && *hint < end) next = std::min(next, *hint);
  return next;
}

bool Scheduler::WantsSnapshotNow(const Active& a) const {
  const int bt = runner_.options().block_tokens;
  const int n = a.seq.n_past();
  const int end = static_cast<int>(a.context.size());
  if (n == 0 || n % bt != 0 || n <= a.snapshot_pos) return false;
  return n == (end - 1) / bt * bt || n == end ||
         (state_interval_ > 0 && n % state_interval_ == 0) ||
         std::binary_search(a.hint_pos.begin(), a.hint_pos.end(), n);
}

void Scheduler::SaveLastSnapshot(Active& a) {
  if (!snapshots_) return;
  const int bt = runner_.options().block_tokens;
  const int n = a.seq.n_past();
  if (n > 0 && n % bt == 0 && n > a.snapshot_pos &&
      a.seq.recurrent.size() == runner_.RecurrentStateElems()) {
    if (cache_->SaveSnapshot(std::span<const int32_t>(a.seq.tokens), a.seq.recurrent,
                             a.req.cache_salt)) {
      a.snapshot_pos = n;
    }
  } else if (a.stash_pos > a.snapshot_pos && a.stash_pos <= n) {
    if (cache_->SaveSnapshot(std::span<const int32_t>(a.seq.tokens).first(a.stash_pos), a.stash,
                             a.req.cache_salt)) {
      a.snapshot_pos = a.stash_pos;
    }
  }
}

void Scheduler::RestoreSessionPrefix(Active& a) {
  // A hybrid model could only use the session when it is a prefix of the prompt (its snapshot is
  // that of the session's end): check the tokens before reading any block or snapshot.
  const bool hybrid = runner_.model().config().is_hybrid();
  auto r = cache_->RestoreSession(a.req.restore_session, a.seq, 1, a.req.cache_salt,
                                  hybrid ? &a.req.prompt : nullptr);
  if (r.ok() && r->not_a_prefix) return;
  if (!r.ok()) {
    if (r.status().code() != StatusCode::kNotFound) {
      DefaultLogger()->warn("request {}: session '{}' not used: {}", a.req.id,
                            a.req.restore_session, r.status().ToString());
    }
    return;
  }
  const bool prefix = r->tokens.size() <= a.req.prompt.size() &&
                      std::equal(r->tokens.begin(), r->tokens.end(), a.req.prompt.begin());
  if (!prefix || a.seq.n_past() >= static_cast<int>(a.req.prompt.size()) || !KvReuseAllowed()) {
    // Not for hybrid models: their recurrent state is that of the session's end, not of the
    // common prefix.
    if (KvReuseAllowed() && !hybrid && a.seq.n_past() > 0) {
      std::swap(a.seq, a.diverged);  // kept for ExtendFromDiverged after the cache lookup
      a.diverged_from = r->acquired;
    } else {
      Release(a);
    }
    return;
  }
  SetCacheUsage(a.usage, r->acquired);
}

// The cache gives whole blocks, so where a conversation's new prompt leaves the session it
// continues (an agent that re-sends its own answer in other words, a generated tail the client
// dropped) everything after the last common full block would be recomputed. The session's KV
// still holds the positions up to the first differing token: take them (full blocks shared,
// the partial block copied into a page of its own), the way a server that keeps its slot's KV
// reuses the longest common prefix.
void Scheduler::ExtendFromDiverged(Active& a, int max_positions) {
  engine::Sequence& d = a.diverged;
  const int bt = runner_.options().block_tokens;
  const int have = a.seq.n_past();
  if (have % bt != 0) return;
  int common = 0;
  const int limit = std::min({d.n_past(), max_positions, static_cast<int>(a.context.size())});
  while (common < limit && d.tokens[common] == a.context[common]) ++common;
  if (common <= have) return;
  engine::KvPool& pool = runner_.pool();
  for (int b = have / bt; b * bt < common; ++b) {
    const int src = d.block_table[b];
    if ((b + 1) * bt <= common) {  // a whole block: shared like a cached one
      pool.Ref(src);
      a.seq.block_table.push_back(src);
      continue;
    }
    // The block the two diverge in: rows past `common` will be overwritten by the new prompt.
    int dst = src;
    if (pool.refcount(src) == 1) {
      d.block_table[b] = -1;  // the diverged session's own page: handed over, not copied
    } else {
      dst = pool.Allocate();
      if (dst < 0) {
        common = b * bt;  // no page to copy into: settle for the whole blocks
        break;
      }
      std::memcpy(pool.page(dst), pool.page(src), pool.layout().block_bytes());
    }
    a.seq.block_table.push_back(dst);
  }
  std::erase(d.block_table, -1);
  if (common <= have) return;
  a.seq.tokens.assign(a.context.begin(), a.context.begin() + common);
  const int extra = common - have;
  const cache::AcquireResult& from = a.diverged_from;
  a.usage.cached_tokens += extra;
  (from.disk_tokens > 0   ? a.usage.disk_tokens
   : from.host_tokens > 0 ? a.usage.host_tokens
                          : a.usage.device_tokens) += extra;
  a.usage.load_ms += from.load_ms;
}

// Gives up the sequence's pages (its full blocks are published and stay cached) and puts it
// at the front of the queue; it resumes by re-acquiring them.
void Scheduler::Preempt(Active& a) {
  PublishFull(a);
  SaveLastSnapshot(a);
  // Decoding: everything in the KV is the context to resume (the pending token follows it).
  // Still prefilling: the context stays the prompt, of which the sequence held a prefix.
  if (a.prefill_done) a.context.assign(a.seq.tokens.begin(), a.seq.tokens.end());
  Release(a);
  a.admitted = false;
  a.snapshot_pos = 0;  // the next admission starts a new sequence
  a.stash_pos = 0;
  ++a.usage.preemptions;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.preemptions;
  }
  for (auto it = running_.begin(); it != running_.end(); ++it) {
    if (it->get() == &a) {
      waiting_.push_front(std::move(*it));
      running_.erase(it);
      break;
    }
  }
}

void Scheduler::Release(Active& a) {
  if (cache_ != nullptr) {
    cache_->Release(a.seq);
  } else {
    runner_.Release(a.seq);
  }
}

void Scheduler::PublishFull(Active& a) {
  if (cache_ == nullptr) return;
  const int full = a.seq.n_past() / runner_.options().block_tokens;
  if (full > a.published_blocks) {
    cache_->Publish(a.seq, a.req.cache_salt);
    a.published_blocks = full;
  }
}

bool Scheduler::BuildAndRunBatch() {
  const int V = runner_.model().config().n_vocab;
  const int bt = runner_.options().block_tokens;
  // Rows each running sequence wants this step: decode rows first, then prompt chunks by age.
  struct Want {
    Active* a;
    int rows;
  };
  std::vector<Want> plan;
  int budget = std::max(1, options_.batch_tokens);
  for (auto& up : running_) {
    if (up->pending >= 0 && up->seq.n_past() >= static_cast<int>(up->context.size())) {
      plan.push_back({up.get(), 1});
      --budget;
    }
  }
  for (auto& up : running_) {
    Active& a = *up;
    const int left = static_cast<int>(a.context.size()) - a.seq.n_past();
    if (left > 0 && budget > 0) {
      int m = std::min(left, budget);
      // A hybrid prompt chunk ends where a snapshot is due: the state exists only there.
      if (snapshots_) m = std::min(m, NextSnapshotAt(a) - a.seq.n_past());
      plan.push_back({&a, m});
      budget -= m;
    }
  }
  // Reserve pages, preempting the most recently admitted sequences when the pool is dry.
  for (size_t i = 0; i < plan.size(); ++i) {
    Active* a = plan[i].a;
    if (a == nullptr) continue;
    for (;;) {
      const int64_t end = a->seq.n_past() + static_cast<int64_t>(plan[i].rows);
      if (runner_.Reserve(a->seq, end).ok()) break;
      // The most recently admitted sequence gives way, which may be this one.
      Active* victim = running_.size() > 1 ? running_.back().get() : nullptr;
      if (victim == a) {
        plan[i].a = nullptr;
        Preempt(*a);
        break;
      }
      if (victim == nullptr) {
        // Alone and still short of pages: take what fits, or give up on the request.
        const int fit =
            (a->seq.block_table.size() + runner_.pool().n_free()) * bt - a->seq.n_past();
        if (fit > 0 && fit < plan[i].rows) {
          plan[i].rows = fit;
          continue;
        }
        Fail(*a, Status::ResourceExhausted("KV pool exhausted with no other sequence to preempt (" +
                                           std::to_string(runner_.pool().n_pages()) + " pages)"));
        plan[i].a = nullptr;
        break;
      }
      for (auto& w : plan) {
        if (w.a == victim) w.a = nullptr;
      }
      Preempt(*victim);
    }
  }
  std::vector<engine::BatchSegment> segs;
  std::vector<Active*> who;
  std::vector<bool> is_decode;
  std::vector<std::vector<float>> outs;
  std::vector<int32_t> pending_tokens;
  pending_tokens.reserve(plan.size());
  outs.reserve(plan.size());
  for (const Want& w : plan) {
    if (w.a == nullptr) continue;
    Active& a = *w.a;
    engine::BatchSegment seg;
    seg.seq = &a.seq;
    const bool decode = a.seq.n_past() >= static_cast<int>(a.context.size());
    if (decode) {
      pending_tokens.push_back(a.pending);
      seg.tokens = std::span<const int32_t>(&pending_tokens.back(), 1);
      seg.logits = engine::LogitsMode::kLast;
    } else {
      seg.tokens = std::span<const int32_t>(a.context.data() + a.seq.n_past(), w.rows);
      const bool reaches_end = a.seq.n_past() + w.rows == static_cast<int>(a.context.size());
      // The prompt's last row gives the first token's logits; a resumed decoding sequence has
      // its next token pending and needs none.
      seg.logits =
          reaches_end && a.pending < 0 ? engine::LogitsMode::kLast : engine::LogitsMode::kNone;
    }
    outs.emplace_back(seg.logits == engine::LogitsMode::kNone ? 0 : V);
    seg.out = outs.back().empty() ? nullptr : outs.back().data();
    is_decode.push_back(decode);
    segs.push_back(seg);
    who.push_back(&a);
  }
  if (segs.empty()) return false;
  size_t rows = 0;
  for (const auto& s : segs) rows += s.tokens.size();
  Status st = runner_.Forward(segs);
  if (!st.ok()) {
    for (Active* a : who) Fail(*a, st);
    return false;
  }
  const auto now = SteadyClock::now();
  uint64_t prefilled = 0;
  for (size_t k = 0; k < segs.size(); ++k) {
    Active& a = *who[k];
    if (is_decode[k]) {
      a.pending = -1;
    } else {
      if (a.seq.n_past() <= a.prompt_end) {
        a.computed_prompt += static_cast<int>(segs[k].tokens.size());
        prefilled += segs[k].tokens.size();
      }
      if (a.req.progress && !a.prefill_done) {
        Event e;
        e.kind = Event::Kind::kPrefillProgress;
        e.done_tokens = std::min(a.seq.n_past(), a.prompt_end);
        e.total_tokens = a.prompt_end;
        e.cached_tokens = a.usage.cached_tokens;
        const double ms = MsSince(a.prefill_started, now);
        e.tokens_per_s = ms > 0 ? a.computed_prompt / ms * 1e3 : 0;
        a.handle->Push(std::move(e));
      }
    }
    PublishFull(a);
    if (snapshots_) {
      if (!is_decode[k] && WantsSnapshotNow(a)) {
        SaveLastSnapshot(a);
      } else if (is_decode[k] && a.seq.n_past() % bt == 0) {
        a.stash = a.seq.recurrent;  // reuses the stash's capacity after the first block
        a.stash_pos = a.seq.n_past();
      }
    }
    if (segs[k].logits == engine::LogitsMode::kNone) continue;
    if (!a.prefill_done) {
      a.prefill_done = true;
      a.usage.prefill_ms = MsSince(a.prefill_started, now);
      if (cache_ != nullptr) cache_->ObservePrefill(a.computed_prompt, a.usage.prefill_ms);
    }
    SampleNext(a, outs[k].data());
  }
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.batch_rows += rows;
  stats_.prefilled_tokens += prefilled;
  return true;
}

// Samples from a row of logits and emits the token; finishes the request on a stop condition.
void Scheduler::SampleNext(Active& a, const float* logits_ptr) {
  const int V = runner_.model().config().n_vocab;
  const std::span<const float> logits(logits_ptr, V);
  if (a.req.limits.max_tokens == 0) {
    Finish(a, FinishReason::kMaxTokens, "");
    return;
  }
  if (a.forced_pos >= a.req.forced_tokens.size() && a.req.end_after_forced) {
    Finish(a, FinishReason::kEndOfGeneration, a.stop.End().text);
    return;
  }
  Result<int32_t> tok = a.forced_pos < a.req.forced_tokens.size()
                            ? Result<int32_t>(a.req.forced_tokens[a.forced_pos++])
                            : a.sampler.Sample(logits);
  if (!tok.ok()) {
    Fail(a, tok.status());
    return;
  }
  const auto now = SteadyClock::now();
  Event e;
  e.kind = Event::Kind::kToken;
  e.token = *tok;
  if (!a.have_first_token) {
    a.have_first_token = true;
    a.first_token = now;
    a.usage.ttft_ms = MsSince(a.submitted, now);
    if (a.req.top_logits > 0) {
      std::vector<int32_t> order(V);
      for (int i = 0; i < V; ++i) order[i] = i;
      const int k = std::min(a.req.top_logits, V);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t x, int32_t y) {
        return logits[x] > logits[y] || (logits[x] == logits[y] && x < y);
      });
      for (int i = 0; i < k; ++i) e.top_logits.push_back({order[i], logits[order[i]]});
    }
  }
  if (a.req.logprobs >= 0) {
    // Log-probabilities of the model's distribution (raw logits, before penalties/temperature).
    float mx = -INFINITY;
    for (float v : logits) mx = std::max(mx, v);
    double sum = 0;
    for (float v : logits) sum += std::exp(static_cast<double>(v - mx));
    const double lse = mx + std::log(sum);
    e.logprob = static_cast<float>(logits[*tok] - lse);
    if (a.req.logprobs > 0) {
      std::vector<int32_t> order(V);
      for (int i = 0; i < V; ++i) order[i] = i;
      const int k = std::min(a.req.logprobs, V);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t x, int32_t y) {
        return logits[x] > logits[y] || (logits[x] == logits[y] && x < y);
      });
      for (int i = 0; i < k; ++i) {
        e.top.push_back({order[i], static_cast<float>(logits[order[i]] - lse)});
      }
    }
  }
  a.sampler.Accept(*tok);
  const std::string piece = tokenizer_ != nullptr ? tokenizer_->TokenToPiece(*tok, false) : "";
  engine::StopChecker::Step step = a.stop.Push(*tok, piece);
  if (step.reason == engine::StopReason::kEndOfGeneration) {
    Finish(a, FinishReason::kEndOfGeneration, step.text);
    return;
  }
  ++a.usage.generated_tokens;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.generated_tokens;
  }
  if (step.reason != engine::StopReason::kNone) {
    e.text = std::move(step.text);
    a.handle->Push(std::move(e));
    a.pending = *tok;  // part of the conversation (saved with a session)
    Finish(a,
           step.reason == engine::StopReason::kStopString ? FinishReason::kStopString
                                                          : FinishReason::kMaxTokens,
           "");
    return;
  }
  e.text = std::move(step.text);
  a.handle->Push(std::move(e));
  a.pending = *tok;
  if (a.seq.n_past() + 1 > runner_.options().n_ctx) {
    Finish(a, FinishReason::kContextFull, "");
  }
}

// Ends a request normally (or cancelled): saves its session when asked, keeps its full blocks
// in the cache, frees its pages and pushes kDone with the usage record.
void Scheduler::Finish(Active& a, FinishReason reason, const std::string& tail_text) {
  const auto now = SteadyClock::now();
  Usage& u = a.usage;
  u.finish = reason;
  u.prefilled_tokens = a.computed_prompt;
  if (a.have_first_token) {
    u.decode_ms = MsSince(a.first_token, now);
    const int decoded = u.generated_tokens - 1;
    u.decode_tokens_per_s = decoded > 0 && u.decode_ms > 0 ? decoded / u.decode_ms * 1e3 : 0;
  }
  if (a.admitted && !a.req.save_session.empty() && reason != FinishReason::kCancelled &&
      a.seq.n_past() > 0) {
    const auto t0 = SteadyClock::now();
    // The session holds every token of the conversation, the last sampled one included.
    if (a.pending >= 0 && a.seq.n_past() >= static_cast<int>(a.context.size()) &&
        a.seq.n_past() < runner_.options().n_ctx &&
        runner_.Reserve(a.seq, a.seq.n_past() + 1).ok()) {
      engine::BatchSegment seg;
      seg.seq = &a.seq;
      seg.tokens = std::span<const int32_t>(&a.pending, 1);
      (void)runner_.Forward(std::span<const engine::BatchSegment>(&seg, 1)).ok();
    }
    PublishFull(a);
    SaveLastSnapshot(a);  // hybrid: made durable with the session
    Status s = cache_->SaveSession(a.req.save_session, a.seq, a.req.cache_salt);
    if (!s.ok()) {
      Fail(a, s);
      return;
    }
    u.session_saved = a.req.save_session;
    u.save_ms = MsSince(t0, SteadyClock::now());
  }
  if (a.admitted) {
    PublishFull(a);
    SaveLastSnapshot(a);
    Release(a);
  } else if (a.seq.n_past() > 0 || !a.seq.block_table.empty()) {
    Release(a);
  }
  u.total_ms = MsSince(a.submitted, SteadyClock::now());
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    if (reason == FinishReason::kCancelled) {
      ++stats_.cancelled;
    } else {
      ++stats_.completed;
    }
  }
  Event e;
  e.kind = Event::Kind::kDone;
  e.text = tail_text;
  e.usage = u;
  a.handle->Push(std::move(e));
  Forget(a);
}

void Scheduler::Fail(Active& a, const Status& s) {
  if (a.admitted || a.seq.n_past() > 0 || !a.seq.block_table.empty()) {
    PublishFull(a);
    Release(a);
  }
  DefaultLogger()->warn("request {}: {}", a.req.id, s.ToString());
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.failed;
  }
  Event e;
  e.kind = Event::Kind::kError;
  e.status = s;
  e.usage = a.usage;
  a.handle->Push(std::move(e));
  Forget(a);
}

// Drops a finished request from whichever queue holds it (`a` is destroyed).
void Scheduler::Forget(Active& a) {
  // A request that ends between restoring a diverged session and the cache lookup (a context
  // too long, a lookup error, a cancel) still holds the session's pages.
  if (cache_ != nullptr && !a.diverged.block_table.empty()) cache_->Release(a.diverged);
  for (auto* q : {&running_, &waiting_}) {
    for (auto it = q->begin(); it != q->end(); ++it) {
      if (it->get() == &a) {
        q->erase(it);
        return;
      }
    }
  }
}

}  // namespace kvstash::serve
