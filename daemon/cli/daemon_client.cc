#include "daemon/cli/daemon_client.h"

#include <cinttypes>
#include <cstdio>

namespace kvstash::cli {

void AddDaemonFlags(CLI::App* cmd, DaemonFlags* flags) {
  cmd->add_option("--socket", flags->socket,
                  "kvstashd's socket (default $XDG_RUNTIME_DIR/kvstash/kvstashd.sock)");
  cmd->add_option("--timeout", flags->timeout_s,
                  "Seconds without an answer before a request is given up (and cancelled)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

std::unique_ptr<protocol::Client> ConnectOrSay(const DaemonFlags& flags, const char* cmd) {
  protocol::ClientOptions o;
  o.socket_path = flags.socket;
  o.request_timeout = std::chrono::milliseconds(static_cast<int64_t>(flags.timeout_s * 1000));
  o.client_name = std::string("kvstash ") + cmd;
  auto c = protocol::Client::Connect(o);
  if (!c.ok()) {
    std::fprintf(stderr, "kvstash %s: %s\n", cmd, c.status().ToString().c_str());
    return nullptr;
  }
  return std::move(*c);
}

void AddSamplingFlags(CLI::App* cmd, SamplingFlags* f) {
  cmd->add_option("-n,--max-tokens", f->max_tokens,
                  "Tokens to generate at most (default: the daemon's --default-max-tokens)");
  cmd->add_option("--temperature", f->temperature,
                  "Sampling temperature, 0 = greedy (default: the daemon's, 1.0)")
      ->check(CLI::Range(0.0, 2.0));
  cmd->add_option("--top-p", f->top_p, "Nucleus sampling mass (default 1.0)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--top-k", f->top_k, "Keep the K most likely tokens; 0 = off (default 40)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", f->seed, "Sampling seed (default: a fresh one per request)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--stop", f->stop, "Stop at this string (repeatable, at most 4)");
}

protocol::Sampling ToSampling(const SamplingFlags& f) {
  protocol::Sampling s;
  s.max_tokens = f.max_tokens;
  s.temperature = static_cast<float>(f.temperature);
  s.top_p = static_cast<float>(f.top_p);
  s.top_k = f.top_k;
  if (f.seed >= 0) {
    s.has_seed = true;
    s.seed = static_cast<uint64_t>(f.seed);
  }
  s.stop = f.stop;
  return s;
}

nlohmann::json UsageJson(const protocol::Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.generated_tokens},
          {"cached_tokens", u.cached_tokens},
          {"device_tokens", u.device_tokens},
          {"host_tokens", u.host_tokens},
          {"disk_tokens", u.disk_tokens},
          {"prefilled_tokens", u.prefilled_tokens},
          {"queue_ms", u.queue_ms},
          {"load_ms", u.load_ms},
          {"prefill_ms", u.prefill_ms},
          {"ttft_ms", u.ttft_ms},
          {"decode_ms", u.decode_ms},
          {"total_ms", u.total_ms},
          {"preemptions", u.preemptions},
          {"finish_reason", u.finish_reason},
          {"session_saved", u.session_saved}};
}

std::string UsageLine(const protocol::Usage& u) {
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "prompt %d tokens: %d cached (device %d, host %d, disk %d), %d computed; "
                "load %.1f ms, prefill %.1f ms, ttft %.1f ms; %d generated (%s)",
                u.prompt_tokens, u.cached_tokens, u.device_tokens, u.host_tokens, u.disk_tokens,
                u.prefilled_tokens, u.load_ms, u.prefill_ms, u.ttft_ms, u.generated_tokens,
                u.finish_reason.c_str());
  return buf;
}

int Fail(const char* cmd, const Status& s) {
  std::fprintf(stderr, "kvstash %s: %s\n", cmd, s.ToString().c_str());
  return s.code() == StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace kvstash::cli
