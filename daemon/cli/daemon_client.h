// What the CLI commands that talk to a running kvstashd share (generate, chat, prefill, stats,
// and the daemon side of `session`): the --socket/--timeout flags, connecting with a clear error,
// sampling flags, and printing a usage record as a line or as JSON. The wire format stays behind
// protocol/client.h.
//
// Thread safety: used from the CLI's main thread (the client itself is thread-safe).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "base/status.h"
#include "protocol/client.h"

namespace kvstash::cli {

struct DaemonFlags {
  std::string socket;      // "" = protocol::DefaultSocketPath()
  double timeout_s = 600;  // per request: longest silence before giving up
};
// --socket and --timeout on `cmd`.
void AddDaemonFlags(CLI::App* cmd, DaemonFlags* flags);

// Connects; on failure prints "kvstash CMD: ..." (naming the socket) and returns null.
std::unique_ptr<protocol::Client> ConnectOrSay(const DaemonFlags& flags, const char* cmd);

// Sampling flags shared by generate and chat.
struct SamplingFlags {
  int max_tokens = -1;
  double temperature = -1;
  double top_p = -1;
  int top_k = -1;
  int64_t seed = -1;
  std::vector<std::string> stop;
};
void AddSamplingFlags(CLI::App* cmd, SamplingFlags* flags);
protocol::Sampling ToSampling(const SamplingFlags& flags);

// `usage` as the HTTP API's usage.kvstash object (docs/daemon.md), plus prompt/generated tokens.
nlohmann::json UsageJson(const protocol::Usage& usage);
// One line for stderr: "prompt 300 tokens: 288 cached (device 288, host 0, disk 0), 12 computed;
// load 0.1 ms, prefill 3.2 ms, ttft 3.5 ms; 16 generated".
std::string UsageLine(const protocol::Usage& usage);

// Exit status for a failed request: 2 for InvalidArgument (a bad flag value the daemon refused),
// 1 otherwise. Prints "kvstash CMD: STATUS".
int Fail(const char* cmd, const Status& s);

}  // namespace kvstash::cli
