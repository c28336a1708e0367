#include "serve/generate.h"

namespace kvstash::serve {

Result<Completion> Collect(RequestHandle& handle, std::chrono::milliseconds timeout) {
  Completion c;
  for (;;) {
    std::optional<Event> e = handle.Next(timeout);
    if (!e) return Status::Internal("request " + handle.id() + " produced no event in time");
    switch (e->kind) {
      case Event::Kind::kPrefillProgress:
        break;
      case Event::Kind::kToken:
        c.tokens.push_back(e->token);
        c.text += e->text;
        break;
      case Event::Kind::kDone:
        c.text += e->text;
        c.usage = e->usage;
        return c;
      case Event::Kind::kError:
        return e->status;
    }
  }
}

Result<std::vector<Completion>> RunToCompletion(engine::Runner& runner, cache::PrefixCache* cache,
                                                const engine::Tokenizer* tokenizer,
                                                std::vector<Request> requests,
                                                const SchedulerOptions& options) {
  SchedulerOptions o = options;
  o.max_queue = std::max<int>(o.max_queue, static_cast<int>(requests.size()));
  Scheduler scheduler(runner, cache, tokenizer, o);
  std::vector<std::shared_ptr<RequestHandle>> handles;
  for (Request& r : requests) {
    KV_ASSIGN_OR_RETURN(std::shared_ptr<RequestHandle> h, scheduler.Submit(std::move(r)));
    handles.push_back(std::move(h));
  }
  std::vector<Completion> out;
  Status first = Status::Ok();
  for (auto& h : handles) {
    Result<Completion> c = Collect(*h);
    if (!c.ok()) {
      if (first.ok()) first = c.status();
      continue;
    }
    out.push_back(std::move(*c));
  }
  scheduler.Stop();
  if (!first.ok()) return first;
  return out;
}

cache::AcquireResult AcquiredOf(const Usage& u) {
  cache::AcquireResult a;
  a.cached_tokens = u.cached_tokens;
  a.device_tokens = u.device_tokens;
  a.host_tokens = u.host_tokens;
  a.disk_tokens = u.disk_tokens;
  a.recomputed_blocks = u.recomputed_blocks;
  a.load_ms = u.load_ms;
  return a;
}

Request GreedyRequest(std::vector<int32_t> prompt, int n, std::string cache_salt) {
  Request r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0;
  r.sampling.repeat_penalty = 1;
  r.limits.max_tokens = n;
  r.limits.ignore_eog = true;
  r.cache_salt = std::move(cache_salt);
  return r;
}

}  // namespace kvstash::serve
