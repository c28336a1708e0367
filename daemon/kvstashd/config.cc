#include "daemon/kvstashd/config.h"

#include <toml++/toml.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "base/bytes.h"

namespace kvstash::daemon {

namespace {

constexpr const char* kDescription =
    "kvstashd: a local LLM inference daemon that never computes the same prompt prefix twice.\n"
    "Serves an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models,\n"
    "/tokenize, /detokenize, /health, /metrics) on loopback by default. KV blocks of every\n"
    "prompt are kept in memory and in --cache-dir, so repeated prefixes (system prompts,\n"
    "repository context) are loaded instead of recomputed, across restarts too.\n"
    "Options may also come from a TOML file (--config) whose keys are the long option names.";

// Byte-size options are strings in CLI11 and parsed here, naming the option on error.
struct RawSizes {
  std::string kv_bytes = "2G", cache_bytes = "64G", host_cache_bytes = "0", snapshot_bytes = "2G",
              snapshot_disk_bytes = "16G", max_body = "16M", max_frame = "16M";
};

void AddOptions(CLI::App& app, DaemonConfig& c, RawSizes& r) {
  app.add_option("-m,--model", c.model,
                 "GGUF model file (default: the embedded default model, created on first use)");
  app.add_option("--weights", c.weights,
                 "Where the weights live: ram (read into huge-page memory), mmap (map the file), "
                 "auto (ram when the file fits in half of the available memory)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "ram", "mmap"}));
  app.add_option("-t,--threads", c.threads, "Compute threads; 0 = all cores")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  app.add_option("-c,--ctx-size", c.ctx_size,
                 "Context size of one sequence in tokens (prompt + generation); 0 = the model's")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("--block-tokens", c.block_tokens, "Tokens per KV block (page)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--kv-type", c.kv_type, "KV element type: f16 or f32")
      ->capture_default_str()
      ->check(CLI::IsMember({"f16", "f32"}));
  app.add_option("--kv-bytes", r.kv_bytes,
                 "Memory for the KV page pool (the device tier), K/M/G suffixes; at least one "
                 "full context is always allocated. Sequences beyond it wait or are preempted.")
      ->capture_default_str();
  app.add_option("--parallel", c.parallel, "Sequences generated at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app.add_option("--batch-tokens", c.batch_tokens,
                 "Rows in one forward pass: decode rows of running sequences first, then prompt "
                 "tokens of new ones (chunked prefill)")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--max-queue", c.max_queue,
                 "Requests waiting beyond which new ones get 503 with Retry-After")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  app.add_option("--chat-template", c.chat_template,
                 "Chat template instead of the model's: chatml, qwen3, llama3, llama2, mistral, "
                 "zephyr (default: the model's; chatml when it has none)");
  app.add_option("--default-max-tokens", c.default_max_tokens,
                 "max_tokens of a request that gives none")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 24));
  app.add_option("--alias", c.aliases,
                 "Another model name to list in /v1/models (repeatable; any name is accepted)");
  app.add_flag("--keep-volatile", c.keep_volatile,
               "Keep known per-request fragments in system prompts (by default kvstashd strips "
               "them, e.g. Claude Code's 'x-anthropic-billing-header: ...cch=...;' line, which "
               "would make every request a cache miss from its first tokens; docs/agents.md)");
  app.add_flag("--no-token-replay", c.no_token_replay,
               "Re-tokenize assistant turns that clients send back instead of reusing the token "
               "ids kvstashd generated for them (BPE re-tokenization can differ and miss the "
               "cache)");
  app.add_flag("--allow-scripted-replies", c.allow_scripted_replies,
               "Accept the request extra {\"kvstash\": {\"script\": TEXT}}: the reply is TEXT, "
               "computed through the model but not sampled (tests and transcript replays; off "
               "by default)");
  app.add_option("--cache-dir", c.cache_dir,
                 "Persistent KV cache directory (default $XDG_CACHE_HOME/kvstash/kv)");
  app.add_flag("--no-cache", c.no_cache,
               "Turn the prefix cache off (every prompt is computed in full: a baseline)");
  app.add_option("--cache-bytes", r.cache_bytes,
                 "Disk budget of --cache-dir (K/M/G/T); least recently used segments are "
                 "evicted beyond it")
      ->capture_default_str();
  app.add_option("--host-cache-bytes", r.host_cache_bytes,
                 "Host-memory tier budget; 0 = off (the CPU backend's pool already is RAM)")
      ->capture_default_str();
  app.add_option("--snapshot-bytes", r.snapshot_bytes,
                 "Hybrid models (qwen35, qwen35moe): host-memory budget of recurrent-state "
                 "snapshots, LRU; a prompt resumes only at a block with a snapshot; 0 = off")
      ->capture_default_str();
  app.add_option("--snapshot-disk-bytes", r.snapshot_disk_bytes,
                 "Hybrid models: disk budget of recurrent-state snapshots (a store of their own "
                 "in --cache-dir/snapshots, segments evicted least recently used); 0 = memory only")
      ->capture_default_str();
  app.add_option("--state-interval", c.state_interval,
                 "Hybrid models: prompt tokens between recurrent-state snapshots inside long "
                 "prompts (besides the end of every prompt and answer); 0 = ends only")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("--write-policy", c.write_policy,
                 "When computed blocks are written to --cache-dir: always, on-evict or never")
      ->capture_default_str()
      ->check(CLI::IsMember({"always", "on-evict", "never"}));
  app.add_option("--host", c.host,
                 "Address to listen on (loopback by default; another address without "
                 "--api-key prints a warning)")
      ->capture_default_str();
  app.add_option("--port", c.port, "HTTP port; 0 = any free port (printed)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app.add_option("--api-key", c.api_keys,
                 "Require `Authorization: Bearer KEY` or `x-api-key: KEY` (repeatable; /health "
                 "stays open)");
  app.add_option("--api-key-file", c.api_key_file, "File with one API key per line");
  app.add_option("--http-threads", c.http_threads, "Threads serving HTTP connections")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  app.add_option("--max-body-bytes", r.max_body, "Largest request body; larger ones get 413")
      ->capture_default_str();
  app.add_option("--header-timeout", c.header_timeout_s,
                 "Seconds a client has to send a request's headers and body before the "
                 "connection is closed")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  app.add_option("--shutdown-timeout", c.shutdown_timeout_s,
                 "On SIGTERM/SIGINT, seconds in-flight requests may take to finish before they "
                 "are cancelled")
      ->capture_default_str()
      ->check(CLI::Range(0, 3600));
  app.add_option("--sse-ping", c.sse_ping_s,
                 "Seconds between SSE keep-alive comments while a stream is silent (long "
                 "prefills); 0 = off")
      ->capture_default_str()
      ->check(CLI::Range(0, 3600));
  app.add_option("--socket", c.socket_path,
                 "Unix socket for local clients (kvstash generate/chat/prefill/session/stats); "
                 "default $XDG_RUNTIME_DIR/kvstash/kvstashd.sock; none = off");
  app.add_option("--max-frame-bytes", r.max_frame,
                 "Largest socket frame; a longer one closes the connection")
      ->capture_default_str();
  app.add_option("--socket-allow-uid", c.socket_allow_uids,
                 "Another uid that may connect to the socket (repeatable; default: only the "
                 "daemon's own)");
  app.add_option("--log-level", c.log_level, "trace, debug, info, warn, error or off")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  app.add_option("--log-format", c.log_format, "text or json (one JSON object per line)")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
}

// The TOML file as extra "--key=value" arguments, for keys not given on the command line.
Result<std::vector<std::string>> ConfigFileArgs(const std::string& path, CLI::App& app) {
  toml::table tbl;
  try {
    tbl = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    std::ostringstream msg;
    msg << "config file " << path << ": " << e.description() << " (line " << e.source().begin.line
        << ")";
    return Status::InvalidArgument(msg.str());
  }
  std::vector<std::string> args;
  for (const auto& [key, node] : tbl) {
    const std::string k(key.str());
    CLI::Option* opt = app.get_option_no_throw("--" + k);
    if (opt == nullptr || k == "config") {
      return Status::InvalidArgument("config file " + path + ": unknown key '" + k +
                                     "' (keys are the long option names of kvstashd --help)");
    }
    if (opt->count() > 0) continue;  // the command line wins
    auto one = [&](const toml::node& n) -> Result<std::string> {
      if (auto s = n.value<std::string>()) return *s;
      if (auto i = n.value<int64_t>()) return std::to_string(*i);
      if (auto b = n.value<bool>()) return std::string(*b ? "true" : "false");
      if (auto d = n.value<double>()) return std::to_string(*d);
      return Status::InvalidArgument("config file " + path + ": key '" + k +
                                     "' has a value of an unsupported type");
    };
    if (const toml::array* arr = node.as_array()) {
      for (const toml::node& n : *arr) {
        KV_ASSIGN_OR_RETURN(std::string v, one(n));
        args.push_back("--" + k + "=" + v);
      }
    } else if (opt->get_type_size() == 0) {  // a flag
      auto b = node.value<bool>();
      if (!b) {
        return Status::InvalidArgument("config file " + path + ": key '" + k +
                                       "' must be true or false");
      }
      if (*b) args.push_back("--" + k);
    } else {
      KV_ASSIGN_OR_RETURN(std::string v, one(node));
      args.push_back("--" + k + "=" + v);
    }
  }
  return args;
}

Status ParseSizes(const RawSizes& r, DaemonConfig& c) {
  struct Item {
    const char* flag;
    const std::string* text;
    uint64_t* out;
  } items[] = {{"--kv-bytes", &r.kv_bytes, &c.kv_bytes},
               {"--cache-bytes", &r.cache_bytes, &c.cache_bytes},
               {"--host-cache-bytes", &r.host_cache_bytes, &c.host_cache_bytes},
               {"--snapshot-bytes", &r.snapshot_bytes, &c.snapshot_bytes},
               {"--snapshot-disk-bytes", &r.snapshot_disk_bytes, &c.snapshot_disk_bytes},
               {"--max-body-bytes", &r.max_body, &c.max_body_bytes},
               {"--max-frame-bytes", &r.max_frame, &c.max_frame_bytes}};
  for (const Item& it : items) {
    auto v = ParseByteSize(*it.text);
    if (!v.ok()) return v.status().WithContext(it.flag);
    *it.out = *v;
  }
  if (c.max_body_bytes < 1024) return Status::InvalidArgument("--max-body-bytes must be >= 1K");
  if (c.max_frame_bytes < 4096 || c.max_frame_bytes > (1ull << 31)) {
    return Status::InvalidArgument("--max-frame-bytes must be between 4K and 2G");
  }
  return Status::Ok();
}

Status ReadKeyFile(DaemonConfig& c) {
  if (c.api_key_file.empty()) return Status::Ok();
  std::ifstream in(c.api_key_file);
  if (!in) return Status::InvalidArgument("--api-key-file: cannot read " + c.api_key_file);
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty() && line[0] != '#') c.api_keys.push_back(line);
  }
  if (c.api_keys.empty()) {
    return Status::InvalidArgument("--api-key-file: " + c.api_key_file + " holds no key");
  }
  return Status::Ok();
}

}  // namespace

std::string DefaultCacheDir() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg != nullptr && xdg[0] != '\0') return std::string(xdg) + "/kvstash/kv";
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : "/tmp") + "/.cache/kvstash/kv";
}

Result<DaemonConfig> ParseConfig(int argc, char** argv, bool* exit_now, int* exit_code) {
  *exit_now = false;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (int pass = 0; pass < 2; ++pass) {
    DaemonConfig c;
    RawSizes r;
    CLI::App app{kDescription, "kvstashd"};
    app.set_version_flag("--version", "kvstashd 0.1.0");
    app.get_formatter()->column_width(34);
    AddOptions(app, c, r);
    app.add_option("--config", c.config_file, "TOML file of options (keys: the long names)");
    std::vector<std::string> rev(args.rbegin(), args.rend());
    try {
      app.parse(rev);
    } catch (const CLI::ParseError& e) {
      std::ostringstream out, err;
      *exit_code = app.exit(e, out, err);
      if (*exit_code == 0) {  // --help / --version
        std::fputs(out.str().c_str(), stdout);
        *exit_now = true;
        return c;
      }
      return Status::InvalidArgument(e.what());
    }
    if (pass == 0 && !c.config_file.empty()) {
      KV_ASSIGN_OR_RETURN(std::vector<std::string> extra, ConfigFileArgs(c.config_file, app));
      args.insert(args.begin(), extra.begin(), extra.end());
      continue;  // parse again with the file's values before the command line's
    }
    KV_RETURN_IF_ERROR(ParseSizes(r, c));
    KV_RETURN_IF_ERROR(ReadKeyFile(c));
    if (c.cache_dir.empty()) c.cache_dir = DefaultCacheDir();
    return c;
  }
  return Status::Internal("unreachable");
}

}  // namespace kvstash::daemon
