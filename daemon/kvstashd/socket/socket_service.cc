// Socket requests -> serve::Engine (socket_service.h). Requests are validated here as the HTTP API
// validates its bodies (api/prompt.h does the shared part: chat rendering, budget, session
// names), so a bad field is an InvalidArgument Error frame naming it, never an engine failure.
#include "daemon/kvstashd/socket/socket_service.h"

#include <random>
#include <string>
#include <utility>
#include <vector>

#include "base/logging.h"
#include "daemon/kvstashd/api/prompt.h"
#include "engine/tokenizer/tokenizer.h"
#include "protocol/wire_format.h"
#include "serve/engine.h"

namespace kvstash::daemon::socket {

using protocol::Body;
using protocol::Frame;

protocol::ErrorReply ErrorFrom(const Status& s, bool fatal) {
  return protocol::ErrorReply{static_cast<uint8_t>(s.code()), s.message(), fatal};
}

namespace {

// Requests in flight on one connection beyond which new ones are refused.
constexpr size_t kMaxInFlightPerConnection = 256;

protocol::Usage UsageOf(const serve::Usage& u) {
  protocol::Usage p;
  p.prompt_tokens = u.prompt_tokens;
  p.cached_tokens = u.cached_tokens;
  p.device_tokens = u.device_tokens;
  p.host_tokens = u.host_tokens;
  p.disk_tokens = u.disk_tokens;
  p.prefilled_tokens = u.prefilled_tokens;
  p.generated_tokens = u.generated_tokens;
  p.preemptions = u.preemptions;
  p.queue_ms = u.queue_ms;
  p.load_ms = u.load_ms;
  p.prefill_ms = u.prefill_ms;
  p.ttft_ms = u.ttft_ms;
  p.decode_ms = u.decode_ms;
  p.total_ms = u.total_ms;
  p.finish_reason = serve::FinishReasonName(u.finish);
  p.session_saved = u.session_saved;
  return p;
}

Status CheckSession(const std::string& name, const char* field, bool required) {
  if (name.empty() && !required) return Status::Ok();
  if (!api::ValidSessionName(name)) {
    return Status::InvalidArgument(std::string(field) +
                                   ": a session name is 1 to 128 of letters, digits, '.', '_' and "
                                   "'-', not starting with '.' or '-'");
  }
  return Status::Ok();
}

Status CheckSalt(const std::string& salt) {
  if (salt.size() > api::kMaxCacheSaltBytes) {
    return Status::InvalidArgument("cache_salt: at most " +
                                   std::to_string(api::kMaxCacheSaltBytes) + " bytes, got " +
                                   std::to_string(salt.size()));
  }
  return Status::Ok();
}

// The prompt's token ids. `continuation`: chat messages continue a session's conversation.
// An empty prompt (none of the three given) is allowed here; callers that need one check.
Result<std::vector<int32_t>> PromptTokens(const protocol::Prompt& p, const api::ModelContext& m,
                                          bool continuation) {
  const int given = !p.text.empty() + !p.messages.empty() + !p.tokens.empty();
  if (given > 1) {
    return Status::InvalidArgument("prompt: give one of text, messages or tokens");
  }
  if (!p.tokens.empty()) return p.tokens;  // range-checked by the scheduler
  if (!p.text.empty()) {
    if (m.tokenizer == nullptr) {
      return Status::InvalidArgument(
          "prompt.text: the model has no tokenizer vocabulary: send token ids");
    }
    return m.tokenizer->Encode(p.text, p.add_special && m.tokenizer->vocab().add_bos,
                               /*parse_special=*/false);
  }
  if (p.messages.empty()) return std::vector<int32_t>();
  std::vector<engine::ChatMessage> msgs;
  for (const protocol::ChatMessage& x : p.messages) msgs.push_back({x.role, x.content});
  engine::ChatOptions opts;
  opts.add_generation_prompt = true;
  auto ids = continuation ? api::RenderChatContinuation(m, msgs, opts)
                          : api::RenderChatTokens(m, msgs, opts);
  if (!ids.ok()) return ids.status().WithContext("prompt.messages");
  return ids;
}

Status ApplySampling(const protocol::Sampling& s, const api::ModelContext& m, serve::Request* r) {
  engine::SamplerOptions& o = r->sampling;
  o = m.default_sampling;
  if (s.temperature >= 0) o.temperature = s.temperature;
  if (s.top_p >= 0) o.top_p = s.top_p;
  if (s.top_k >= 0) o.top_k = s.top_k;
  if (s.min_p >= 0) o.min_p = s.min_p;
  if (s.repetition_penalty >= 0) o.repeat_penalty = s.repetition_penalty;
  o.presence_penalty = s.presence_penalty;
  o.frequency_penalty = s.frequency_penalty;
  if (s.has_seed) {
    o.seed = s.seed;
  } else {
    std::random_device rd;
    o.seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  // The HTTP API's ranges (api/openai_request.cc), so both front ends accept the same requests.
  auto range = [](const char* field, double v, double lo, double hi) -> Status {
    if (v >= lo && v <= hi) return Status::Ok();
    return Status::InvalidArgument("sampling." + std::string(field) + " must be between " +
                                   std::to_string(lo) + " and " + std::to_string(hi) + ", got " +
                                   std::to_string(v));
  };
  KV_RETURN_IF_ERROR(range("temperature", o.temperature, 0, 2));
  KV_RETURN_IF_ERROR(range("top_p", o.top_p, 1e-9, 1));
  KV_RETURN_IF_ERROR(range("min_p", o.min_p, 0, 1));
  KV_RETURN_IF_ERROR(range("presence_penalty", o.presence_penalty, -2, 2));
  KV_RETURN_IF_ERROR(range("frequency_penalty", o.frequency_penalty, -2, 2));
  if (!(o.repeat_penalty > 0)) {
    return Status::InvalidArgument("sampling.repetition_penalty must be greater than 0");
  }
  if (s.stop.size() > static_cast<size_t>(api::kMaxStopStrings)) {
    return Status::InvalidArgument("sampling.stop: at most " +
                                   std::to_string(api::kMaxStopStrings) + " strings");
  }
  r->limits.stop_strings = s.stop;
  return Status::Ok();
}

// The token budget: 0 stays 0 (prefill only).
Status SetBudget(const api::ModelContext& m, int32_t requested, serve::Request* r) {
  const int64_t n = static_cast<int64_t>(r->prompt.size());
  if (n >= m.n_ctx) {
    return Status::InvalidArgument("the prompt has " + std::to_string(n) +
                                   " tokens, which leaves no room in the context of " +
                                   std::to_string(m.n_ctx) + " tokens");
  }
  r->limits.max_tokens =
      requested == 0 ? 0
                     : api::TokenBudget(
                           m, n, requested < 0 ? std::nullopt : std::optional<int64_t>(requested));
  return Status::Ok();
}

Result<serve::Request> FromGenerate(const protocol::GenerateRequest& g,
                                    const api::ModelContext& m) {
  serve::Request r;
  KV_RETURN_IF_ERROR(CheckSession(g.session, "session", false));
  KV_RETURN_IF_ERROR(CheckSalt(g.cache_salt));
  const bool append = !g.session.empty() && g.session_mode == protocol::SessionMode::kAppend;
  KV_ASSIGN_OR_RETURN(r.prompt, PromptTokens(g.prompt, m, append));
  if (r.prompt.empty() && !append) return Status::InvalidArgument("prompt: the prompt is empty");
  KV_RETURN_IF_ERROR(ApplySampling(g.sampling, m, &r));
  KV_RETURN_IF_ERROR(SetBudget(m, g.sampling.max_tokens, &r));
  if (!g.session.empty()) {
    r.save_session = g.session;
    if (g.session_mode != protocol::SessionMode::kCreate) r.restore_session = g.session;
    r.session_is_prefix = g.session_mode == protocol::SessionMode::kPrefix;
  }
  r.cache_salt = g.cache_salt;
  return r;
}

// A request that only computes a context (no token is sampled).
serve::Request PrefillOnly(std::vector<int32_t> prompt, const std::string& salt) {
  serve::Request r;
  r.prompt = std::move(prompt);
  r.limits.max_tokens = 0;
  r.sampling.temperature = 0;
  r.cache_salt = salt;
  return r;
}

}  // namespace

// One generation-shaped request in flight on a connection.
struct Service::Stream {
  std::shared_ptr<Peer> peer;
  std::shared_ptr<serve::RequestHandle> handle;
  uint64_t id = 0;
  Shape shape;
  std::string text;  // not streamed: everything; streamed: nothing
  std::vector<int32_t> tokens;
  bool done = false;
  std::mutex mu;  // Drain runs on the engine thread and once on the strand
};

Service::Service(Metrics& metrics) : metrics_(metrics) {}

Service::~Service() { worker_.join(); }

void Service::SetEngine(std::shared_ptr<serve::Engine> engine,
                        std::shared_ptr<const api::ModelContext> model) {
  std::lock_guard<std::mutex> lock(mu_);
  engine_ = std::move(engine);
  model_ = std::move(model);
}

protocol::HelloAck Service::Ack(uint32_t max_frame_bytes) const {
  protocol::HelloAck a;
  a.major = protocol::wire::kMajorVersion;
  a.minor = protocol::wire::kMinorVersion;
  a.server = "kvstashd 0.1.0";
  a.max_frame_bytes = max_frame_bytes;
  std::lock_guard<std::mutex> lock(mu_);
  if (engine_ && model_) {
    a.model = model_->model_id;
    a.n_ctx = model_->n_ctx;
    a.block_tokens = engine_->kv_layout().block_tokens;
  }
  return a;
}

namespace {

Result<serve::Request> FromPrefill(const protocol::PrefillRequest& p, const api::ModelContext& m) {
  KV_RETURN_IF_ERROR(CheckSalt(p.cache_salt));
  KV_ASSIGN_OR_RETURN(std::vector<int32_t> ids, PromptTokens(p.prompt, m, false));
  if (ids.empty()) return Status::InvalidArgument("prompt: the prompt is empty");
  serve::Request r = PrefillOnly(std::move(ids), p.cache_salt);
  r.progress = p.progress;
  return r;
}

Result<serve::Request> FromSessionSave(const protocol::SessionSaveRequest& ss,
                                       const api::ModelContext& m) {
  KV_RETURN_IF_ERROR(CheckSession(ss.name, "name", true));
  KV_RETURN_IF_ERROR(CheckSession(ss.from_session, "from_session", false));
  KV_RETURN_IF_ERROR(CheckSalt(ss.cache_salt));
  KV_ASSIGN_OR_RETURN(std::vector<int32_t> ids, PromptTokens(ss.prompt, m, false));
  if (ids.empty() && ss.from_session.empty()) {
    return Status::InvalidArgument("SessionSave needs a prompt or from_session");
  }
  serve::Request r = PrefillOnly(std::move(ids), ss.cache_salt);
  r.restore_session = ss.from_session;
  r.save_session = ss.name;
  return r;
}

Result<serve::Request> FromSessionRestore(const protocol::SessionRestoreRequest& sr) {
  KV_RETURN_IF_ERROR(CheckSession(sr.name, "name", true));
  KV_RETURN_IF_ERROR(CheckSalt(sr.cache_salt));
  serve::Request r = PrefillOnly({}, sr.cache_salt);
  r.restore_session = sr.name;
  return r;
}

// The engine request of a generation-shaped frame and the frames that answer it; nullopt for
// the other request types.
std::optional<Result<serve::Request>> EngineRequest(const Body& body, const api::ModelContext& m,
                                                    Shape* shape) {
  if (const auto* g = std::get_if<protocol::GenerateRequest>(&body)) {
    *shape = {g->stream, false, true};
    return FromGenerate(*g, m);
  }
  if (const auto* p = std::get_if<protocol::PrefillRequest>(&body)) {
    *shape = {false, p->progress, false};
    return FromPrefill(*p, m);
  }
  if (const auto* ss = std::get_if<protocol::SessionSaveRequest>(&body)) {
    return FromSessionSave(*ss, m);
  }
  if (const auto* sr = std::get_if<protocol::SessionRestoreRequest>(&body)) {
    return FromSessionRestore(*sr);
  }
  return std::nullopt;
}

Result<Body> Detokenize(const protocol::DetokenizeRequest& d, const api::ModelContext& m,
                        const serve::Engine& engine) {
  const int n_vocab = m.tokenizer != nullptr ? m.tokenizer->vocab().size() : 0;
  for (int32_t tok : d.tokens) {
    if (tok < 0 || tok >= n_vocab) {
      return Status::InvalidArgument("token id " + std::to_string(tok) + " is out of range [0, " +
                                     std::to_string(n_vocab) + ")");
    }
  }
  return Body(protocol::DetokenizeResult{engine.Detokenize(d.tokens)});
}

protocol::StatsResult StatsOf(const serve::Engine& engine) {
  const cache::CacheStats c = engine.cache_stats();
  const serve::SchedulerStats s = engine.scheduler_stats();
  protocol::StatsResult r;
  auto tier = [](const char* name, const cache::TierStats& t) {
    return protocol::TierStats{name, t.blocks, t.bytes, t.hits, t.misses, t.evictions};
  };
  r.tiers = {tier("device", c.device), tier("host", c.host), tier("disk", c.disk)};
  r.lookups = c.lookups;
  r.lookup_tokens = c.lookup_tokens;
  r.cached_tokens = c.cached_tokens;
  r.prefilled_tokens = s.prefilled_tokens;
  r.generated_tokens = s.generated_tokens;
  r.running = s.running;
  r.queue_depth = s.queue_depth;
  r.pages_total = s.pages_total;
  r.pages_free = s.pages_free;
  r.completed = s.completed;
  r.cancelled = s.cancelled;
  return r;
}

}  // namespace

void Service::Handle(const std::shared_ptr<Peer>& peer, Frame frame) {
  const uint64_t id = frame.id;
  auto reply = [&](Body b) { peer->Send(Frame{id, std::move(b)}); };
  auto fail = [&](const Status& s) { reply(ErrorFrom(s)); };
  std::shared_ptr<serve::Engine> engine;
  std::shared_ptr<const api::ModelContext> model;
  {
    std::lock_guard<std::mutex> lock(mu_);
    engine = engine_;
    model = model_;
  }
  if (std::holds_alternative<protocol::HealthRequest>(frame.body)) {
    reply(protocol::HealthResult{!engine ? "loading" : draining_.load() ? "draining" : "ok"});
    return;
  }
  if (const auto* c = std::get_if<protocol::CancelRequest>(&frame.body)) {
    auto it = peer->in_flight.find(c->target);
    if (it != peer->in_flight.end()) it->second->Cancel();
    reply(protocol::Done{});  // answered whether or not the target was still running
    return;
  }
  if (!engine) return fail(Status::Busy("the model is loading"));
  if (id == protocol::wire::kConnectionId) {
    return fail(Status::InvalidArgument("request id 0 is reserved for the connection"));
  }
  if (peer->in_flight.count(id) != 0) {
    return fail(Status::InvalidArgument("request id " + std::to_string(id) + " is in flight"));
  }
  Shape shape;
  if (auto req = EngineRequest(frame.body, *model, &shape)) {
    if (!req->ok()) return fail(req->status());
    return Submit(peer, id, *engine, std::move(**req), shape);
  }
  if (const auto* t = std::get_if<protocol::TokenizeRequest>(&frame.body)) {
    auto ids = engine->Tokenize(t->text, t->add_special, t->parse_special);
    if (!ids.ok()) return fail(ids.status());
    return reply(protocol::TokenizeResult{std::move(*ids)});
  }
  if (const auto* d = std::get_if<protocol::DetokenizeRequest>(&frame.body)) {
    auto r = Detokenize(*d, *model, *engine);
    return r.ok() ? reply(std::move(*r)) : fail(r.status());
  }
  if (std::holds_alternative<protocol::StatsRequest>(frame.body)) return reply(StatsOf(*engine));
  if (std::holds_alternative<protocol::SessionListRequest>(frame.body)) {
    return OffStrand(peer, id, [engine]() -> Body {
      auto list = engine->ListSessions();
      if (!list.ok()) return ErrorFrom(list.status());
      protocol::SessionListResult r;
      for (const auto& s : *list) {
        r.sessions.push_back({s.name, s.model_path, s.model_fingerprint, s.tokens, s.bytes,
                              s.created_us, s.last_used_us});
      }
      return r;
    });
  }
  if (const auto* sd = std::get_if<protocol::SessionDeleteRequest>(&frame.body)) {
    if (Status s = CheckSession(sd->name, "name", true); !s.ok()) return fail(s);
    return OffStrand(peer, id, [engine, name = sd->name]() -> Body {
      Status s = engine->DeleteSession(name);
      if (!s.ok()) return ErrorFrom(s);
      return protocol::Done{};
    });
  }
  fail(Status::InvalidArgument(std::string(protocol::BodyName(frame.body)) +
                               " is not a request a client may send"));
}

void Service::Submit(const std::shared_ptr<Peer>& peer, uint64_t id, serve::Engine& engine,
                     serve::Request req, const Shape& shape) {
  auto fail = [&](const Status& s) { peer->Send(Frame{id, ErrorFrom(s)}); };
  if (draining_.load()) return fail(Status::Busy("kvstashd is shutting down"));
  if (peer->in_flight.size() >= kMaxInFlightPerConnection) {
    return fail(Status::ResourceExhausted("too many requests in flight on this connection (" +
                                          std::to_string(kMaxInFlightPerConnection) + ")"));
  }
  req.id = "sock-" + std::to_string(++next_id_);
  auto handle = engine.Submit(std::move(req));
  if (!handle.ok()) return fail(handle.status());
  auto s = std::make_shared<Stream>();
  s->peer = peer;
  s->handle = *handle;
  s->id = id;
  s->shape = shape;
  peer->in_flight[id] = s->handle;
  in_flight_.fetch_add(1);
  // Events are drained on the engine thread as they happen (Peer::Send is thread-safe and writes
  // at once when nothing is queued), so an answer does not wait for the io thread to wake up;
  // one drain on the strand catches what came before the callback was set.
  s->handle->SetOnEvent([this, s] { Drain(s); });
  net::post(peer->executor(), [this, s] { Drain(s); });
}

// Token events that are already queued go out as one TokenChunk: under load a client gets fewer,
// larger frames instead of one per token.
void Service::Drain(const std::shared_ptr<Stream>& s) {
  std::lock_guard<std::mutex> lock(s->mu);
  protocol::TokenChunk chunk;
  auto flush = [&] {
    if (chunk.tokens.empty() && chunk.text.empty()) return;
    s->peer->Send(Frame{s->id, std::move(chunk)});
    chunk = {};
  };
  while (!s->done) {
    std::optional<serve::Event> e = s->handle->TryNext();
    if (!e) break;
    switch (e->kind) {
      case serve::Event::Kind::kToken:
        if (s->shape.stream) {
          chunk.tokens.push_back(e->token);
          chunk.text += e->text;
        } else {
          s->tokens.push_back(e->token);
          s->text += e->text;
        }
        continue;
      case serve::Event::Kind::kPrefillProgress:
        flush();
        if (s->shape.progress) {
          s->peer->Send(Frame{s->id, protocol::Progress{e->done_tokens, e->total_tokens,
                                                        e->cached_tokens, e->tokens_per_s}});
        }
        continue;
      case serve::Event::Kind::kDone:
      case serve::Event::Kind::kError:
        break;
    }
    flush();
    s->done = true;
    s->handle->SetOnEvent(nullptr);  // breaks the handle -> callback -> stream cycle
    // in_flight belongs to the connection's strand. The erase is posted before the final frame
    // is sent, so it runs before the strand can read a next request that reuses the id.
    net::post(s->peer->executor(), [peer = s->peer, id = s->id, handle = s->handle] {
      auto it = peer->in_flight.find(id);
      if (it != peer->in_flight.end() && it->second == handle) peer->in_flight.erase(it);
    });
    in_flight_.fetch_sub(1);
    if (s->shape.generate) metrics_.CountGeneration(e->usage);
    if (e->kind == serve::Event::Kind::kError) {
      s->peer->Send(Frame{s->id, ErrorFrom(e->status)});
    } else {
      protocol::Done d;
      d.usage = UsageOf(e->usage);
      d.text = std::move(s->text) + e->text;
      d.tokens = std::move(s->tokens);
      s->peer->Send(Frame{s->id, std::move(d)});
    }
    s->peer.reset();
    return;
  }
  flush();
}

void Service::OffStrand(const std::shared_ptr<Peer>& peer, uint64_t id,
                        std::function<Body()> work) {
  net::post(worker_, [peer, id, work = std::move(work)] {
    Body b = work();
    net::post(peer->executor(), [peer, id, b = std::move(b)] { peer->Send(Frame{id, b}); });
  });
}

}  // namespace kvstash::daemon::socket
