// kvstashd's configuration: command-line flags and an optional TOML file (--config) whose keys
// are the long flag names (`cache-dir = "/var/cache/kvstash"`). Flags given on the command line
// win over the file. Unknown keys and bad values are startup errors naming the key.
// docs/daemon.md lists every option.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace kvstash::daemon {

// The port kvstashd listens on by default: not one the common local servers use (8080
// llama.cpp, 8000 vLLM, 1234 LM Studio, 11434 Ollama).
inline constexpr int kDefaultPort = 8437;

struct DaemonConfig {
  // Model and engine.
  std::string model;  // GGUF path; "" = the embedded default model
  std::string weights = "auto";
  int threads = 0;
  int ctx_size = 8192;
  int block_tokens = 16;
  std::string kv_type = "f16";
  uint64_t kv_bytes = 2ull << 30;  // device page pool budget (at least one full context)
  int parallel = 8;                // sequences in flight
  int batch_tokens = 256;
  int max_queue = 64;
  std::string chat_template;  // "" = the model's (chatml when it has none)
  int default_max_tokens = 512;
  std::vector<std::string> aliases;  // extra model names
  // Agents (docs/agents.md).
  bool keep_volatile = false;    // do not strip known per-request fragments from prompts
  bool no_token_replay = false;  // re-tokenize returned replies instead of reusing their ids
  uint64_t token_replay_bytes = 64ull << 20;
  bool allow_scripted_replies = false;  // accept the `kvstash.script` request extra (tests)
  // Cache.
  std::string cache_dir;  // "" = $XDG_CACHE_HOME/kvstash/kv (~/.cache/kvstash/kv)
  bool no_cache = false;
  uint64_t cache_bytes = 64ull << 30;
  uint64_t host_cache_bytes = 0;
  std::string write_policy = "always";
  // Hybrid models: recurrent-state snapshots (docs/cache.md "Hybrid models").
  uint64_t snapshot_bytes = 2ull << 30;        // host-RAM snapshot tier
  uint64_t snapshot_disk_bytes = 16ull << 30;  // cache_dir/snapshots budget
  int state_interval = 4096;                   // prompt positions between snapshots; 0 = ends only
  // HTTP.
  std::string host = "127.0.0.1";
  int port = kDefaultPort;
  std::vector<std::string> api_keys;
  std::string api_key_file;
  int http_threads = 2;
  uint64_t max_body_bytes = 16ull << 20;
  int header_timeout_s = 30;
  int shutdown_timeout_s = 30;
  int sse_ping_s = 15;
  // Local socket (docs/protocol.md). "" = $XDG_RUNTIME_DIR/kvstash/kvstashd.sock; "none" = off.
  std::string socket_path;
  uint64_t max_frame_bytes = 16ull << 20;
  std::vector<uint32_t> socket_allow_uids;  // besides the daemon's own uid
  // Logging.
  std::string log_level = "info";
  std::string log_format = "text";
  // Where the TOML file came from, if any.
  std::string config_file;
};

// Parses argv (and the --config file). Returns NotFound-free results: InvalidArgument with a
// message naming the flag or key. `*exit_now` is set with `*exit_code` for --help/--version.
Result<DaemonConfig> ParseConfig(int argc, char** argv, bool* exit_now, int* exit_code);

// The default cache directory ($XDG_CACHE_HOME/kvstash/kv or ~/.cache/kvstash/kv).
std::string DefaultCacheDir();

}  // namespace kvstash::daemon
