// Running requests to completion from a caller that owns the runner and cache (tests,
// benchmarks): a Scheduler is started over them for the duration of the call, so these callers go
// through the same generation path as `kvstash run` and kvstashd. Between calls the caller may use
// the runner and cache directly again.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "cache/prefix_cache.h"
#include "serve/request.h"
#include "serve/scheduler.h"

namespace kvstash::serve {

// Everything a finished request produced.
struct Completion {
  std::vector<int32_t> tokens;  // sampled tokens (an end-of-generation token excluded)
  std::string text;             // the released text
  Usage usage;
};

// Reads a handle's events until its final one. The kError event's status is returned as an
// error; a request that produced nothing for `timeout` is an Internal error.
Result<Completion> Collect(RequestHandle& handle,
                           std::chrono::milliseconds timeout = std::chrono::minutes(10));

// Runs `requests` concurrently through a Scheduler over `runner` and `cache` (may be null) and
// returns their completions in order. The runner and cache belong to the scheduler's thread
// during the call.
Result<std::vector<Completion>> RunToCompletion(engine::Runner& runner, cache::PrefixCache* cache,
                                                const engine::Tokenizer* tokenizer,
                                                std::vector<Request> requests,
                                                const SchedulerOptions& options = {});

// Where a finished request's prompt came from, in the cache's own terms.
cache::AcquireResult AcquiredOf(const Usage& usage);

// Greedy decoding of `n` tokens after `prompt` (end-of-generation tokens ignored).
Request GreedyRequest(std::vector<int32_t> prompt, int n, std::string cache_salt = "");

}  // namespace kvstash::serve
