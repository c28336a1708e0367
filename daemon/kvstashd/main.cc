// kvstashd: the daemon (ARCHITECTURE.md §7, docs/daemon.md). Starts listening at once (every
// route but /health answers 503 while the model loads), loads the model and opens the cache on a
// loader thread, serves the OpenAI-compatible API, and on SIGTERM/SIGINT stops accepting, lets
// in-flight requests finish up to --shutdown-timeout, cancels the rest, flushes the write-behind
// queue, closes the store and exits 0.
#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <thread>
#include <vector>

#include "base/bytes.h"
#include "base/clock.h"
#include "base/logging.h"
#include "cache/prefix_cache.h"
#include "daemon/cli/default_model.h"
#include "daemon/kvstashd/app.h"
#include "daemon/kvstashd/config.h"
#include "daemon/kvstashd/http/server.h"
#include "daemon/kvstashd/socket/socket_server.h"
#include "daemon/kvstashd/socket/socket_service.h"
#include "engine/chat/jinja/template.h"
#include "engine/chat/output_parser.h"
#include "engine/model/model.h"
#include "engine/tokenizer/tokenizer.h"
#include "protocol/client.h"
#include "serve/engine.h"

namespace kvstash::daemon {
namespace {

// spdlog flag %* : the message as a JSON string body (quotes, backslashes, control bytes escaped).
class JsonEscapedMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    for (char c : std::string_view(msg.payload.data(), msg.payload.size())) {
      switch (c) {
        case '"':
          dest.append(std::string_view("\\\""));
          break;
        case '\\':
          dest.append(std::string_view("\\\\"));
          break;
        case '\n':
          dest.append(std::string_view("\\n"));
          break;
        case '\r':
          dest.append(std::string_view("\\r"));
          break;
        case '\t':
          dest.append(std::string_view("\\t"));
          break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
            dest.append(std::string_view(buf));
          } else {
            dest.push_back(c);
          }
      }
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonEscapedMessage>();
  }
};

void SetUpLogging(const DaemonConfig& c) {
  SetLogLevel(c.log_level);
  auto logger = DefaultLogger();
  if (c.log_format == "json") {
    auto f = std::make_unique<spdlog::pattern_formatter>();
    f->add_flag<JsonEscapedMessage>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","msg":"%*"})");
    logger->set_formatter(std::move(f));
  } else {
    logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%l] %v");
  }
}

bool IsLoopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// What the API layer needs to know about the model.
api::ModelContext MakeModelContext(const DaemonConfig& c, const serve::Engine& e,
                                   const std::string& model_path) {
  api::ModelContext m;
  m.model_id = std::filesystem::path(model_path).stem().string();
  m.aliases = c.aliases;
  m.tokenizer = e.tokenizer();
  m.n_ctx = e.runner_options().n_ctx;
  m.default_max_tokens = c.default_max_tokens;
  auto log = DefaultLogger();
  Result<engine::ChatTemplate> t = Status::NotFound("");
  if (!c.chat_template.empty()) {
    t = engine::ChatTemplateFromName(c.chat_template);
  } else if (e.tokenizer() != nullptr && !e.tokenizer()->vocab().chat_template.empty()) {
    t = engine::DetectChatTemplate(e.tokenizer()->vocab().chat_template);
    if (!t.ok())
      log->warn("the model's chat template is not supported ({}): using chatml",
                t.status().ToString());
  } else {
    log->info("the model has no chat template: /v1/chat/completions uses chatml");
  }
  m.chat_template = t.ok() ? *t : *engine::ChatTemplateFromName("chatml");
  // The model's own Jinja template is preferred (tools, reasoning, any family) unless a built-in
  // one was named.
  const std::string source =
      e.tokenizer() != nullptr ? e.tokenizer()->vocab().chat_template : std::string();
  if (c.chat_template.empty() && !source.empty()) {
    auto j = engine::jinja::Template::Parse(source);
    if (j.ok()) {
      m.jinja = std::make_shared<const engine::jinja::Template>(std::move(*j));
    } else {
      m.jinja_error = j.status().message();
      log->warn("the model's chat template cannot be interpreted ({}): tools are unavailable",
                m.jinja_error);
    }
    m.tool_format = engine::DetectToolCallFormat(source);
    m.reasoning = source.find("<think>") != std::string::npos;
    m.template_prints_string_arguments = source.find("arguments is string") != std::string::npos;
  } else {
    m.jinja_error = c.chat_template.empty() ? "the model has no chat template"
                                            : "--chat-template names a built-in template";
    m.reasoning = m.chat_template.kind == engine::ChatTemplateKind::kQwen3;
  }
  m.strip_volatile = !c.keep_volatile;
  if (!c.no_token_replay) m.replay = std::make_shared<api::TokenReplay>(c.token_replay_bytes);
  m.block_tokens = e.runner_options().block_tokens;
  m.message_starts = e.model().config().is_hybrid() && e.has_cache();
  m.allow_scripted_replies = c.allow_scripted_replies;
  return m;
}

Result<serve::EngineOptions> EngineOptionsFrom(const DaemonConfig& c, std::string model_path) {
  serve::EngineOptions o;
  o.model_path = std::move(model_path);
  KV_ASSIGN_OR_RETURN(o.weights, engine::ParseWeightMemory(c.weights));
  KV_ASSIGN_OR_RETURN(o.runner.kv_dtype, engine::ParseKvDtype(c.kv_type));
  o.runner.n_threads = c.threads;
  o.runner.n_ctx = c.ctx_size;
  o.runner.block_tokens = c.block_tokens;
  o.runner.n_batch = c.batch_tokens;
  o.kv_bytes = c.kv_bytes;
  o.use_cache = !c.no_cache;
  o.cache_dir = c.no_cache ? "" : c.cache_dir;
  o.cache_bytes = c.cache_bytes;
  o.cache.host_bytes = c.host_cache_bytes;
  o.cache.snapshot_bytes = c.snapshot_bytes;
  o.snapshot_disk_bytes = c.snapshot_disk_bytes;
  KV_ASSIGN_OR_RETURN(o.cache.write_policy, cache::ParseWritePolicy(c.write_policy));
  o.scheduler.batch_tokens = c.batch_tokens;
  o.scheduler.max_running = c.parallel;
  o.scheduler.max_queue = c.max_queue;
  o.scheduler.state_interval = c.state_interval;
  return o;
}

std::atomic<int> g_signal{0};
extern "C" void OnSignal(int sig) { g_signal.store(sig); }

int Main(int argc, char** argv) {
  bool exit_now = false;
  int exit_code = 0;
  Result<DaemonConfig> cfg = ParseConfig(argc, argv, &exit_now, &exit_code);
  if (exit_now) return exit_code;
  if (!cfg.ok()) {
    std::fprintf(stderr, "kvstashd: %s\n(see kvstashd --help)\n", cfg.status().ToString().c_str());
    return 2;
  }
  const DaemonConfig& c = *cfg;
  SetUpLogging(c);
  auto log = DefaultLogger();
  if (!IsLoopback(c.host) && c.api_keys.empty()) {
    log->warn(
        "listening on {} without --api-key: anyone who can reach this address can use the "
        "model and read cached prompts",
        c.host);
  }
  // Signals are polled by the main thread (async-signal-safe), which runs the shutdown.
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGPIPE, SIG_IGN);

  App app(c);
  http::net::io_context ioc;
  http::ServerOptions so;
  so.host = c.host;
  so.port = c.port;
  so.threads = c.http_threads;
  so.max_body_bytes = c.max_body_bytes;
  so.header_timeout = std::chrono::seconds(c.header_timeout_s);
  http::Server server(ioc, so, [&app](std::shared_ptr<http::Connection> conn, http::Request req) {
    app.Handle(std::move(conn), std::move(req));
  });
  if (Status s = server.Listen(); !s.ok()) {
    log->error("{}", s.ToString());
    return 1;
  }
  socket::Service socket_service(app.metrics());
  std::unique_ptr<socket::SocketServer> socket_server;
  if (c.socket_path != "none") {
    socket::SocketOptions o;
    o.path = c.socket_path.empty() ? protocol::DefaultSocketPath() : c.socket_path;
    o.max_frame_bytes = static_cast<uint32_t>(c.max_frame_bytes);
    o.allowed_uids = c.socket_allow_uids;
    socket_server = std::make_unique<socket::SocketServer>(ioc, o, socket_service);
    if (Status s = socket_server->Listen(); !s.ok()) {
      log->error("{}", s.ToString());
      return 1;
    }
  }
  std::printf("kvstashd: listening on http://%s:%d (OpenAI base URL http://%s:%d/v1)\n",
              c.host.c_str(), server.port(), c.host.c_str(), server.port());
  if (socket_server) std::printf("kvstashd: socket %s\n", socket_server->path().c_str());
  std::fflush(stdout);
  auto work = http::net::make_work_guard(ioc);
  std::vector<std::thread> io_threads;
  for (int i = 0; i < c.http_threads; ++i) io_threads.emplace_back([&ioc] { ioc.run(); });
  auto stop_io = [&] {
    work.reset();
    ioc.stop();
    for (auto& t : io_threads) t.join();
  };

  // Load on another thread so /health answers (loading) meanwhile.
  std::shared_ptr<serve::Engine> engine;
  Status load_status = Status::Ok();
  std::atomic<bool> loaded{false};
  std::thread loader([&] {
    Stopwatch w;
    // Tests hold the loading state open to check what clients see meanwhile.
    if (const char* d = std::getenv("KVSTASHD_TEST_LOAD_DELAY_MS")) {
      std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(d)));
    }
    std::string model_path = c.model;
    if (model_path.empty()) {
      auto p = cli::EnsureDefaultModel();
      if (!p.ok()) {
        load_status = p.status();
        loaded = true;
        return;
      }
      model_path = *p;
    }
    log->info("loading {} (cache {})", model_path, c.no_cache ? "off" : c.cache_dir);
    auto opts = EngineOptionsFrom(c, model_path);
    if (!opts.ok()) {
      load_status = opts.status();
      loaded = true;
      return;
    }
    auto e = serve::Engine::Open(*opts);
    if (!e.ok()) {
      load_status = e.status();
      loaded = true;
      return;
    }
    for (const std::string& warning : (*e)->report().warnings) log->warn("{}", warning);
    engine = std::shared_ptr<serve::Engine>(std::move(*e));
    MemoryBudget mem;
    mem.weights_bytes = engine->model().gguf().bytes().size();
    mem.kv_pool_bytes =
        static_cast<uint64_t>(engine->kv_pages()) * engine->kv_layout().block_bytes();
    mem.host_tier_bytes = c.host_cache_bytes;
    api::ModelContext model_context = MakeModelContext(c, *engine, model_path);
    socket_service.SetEngine(engine, std::make_shared<const api::ModelContext>(model_context));
    app.SetEngine(engine, std::move(model_context), mem);
    log->info("ready in {:.0f} ms: {} ({}), {} threads, {} KV pages of {} tokens ({}), context {}",
              w.ElapsedMs(), model_path, engine->model().Describe(), engine->n_threads(),
              mem.kv_pool_bytes / engine->kv_layout().block_bytes(),
              engine->kv_layout().block_tokens, FormatBytes(mem.kv_pool_bytes),
              engine->runner_options().n_ctx);
    loaded = true;
  });

  // Wait for a signal or a failed load.
  while (g_signal.load() == 0) {
    if (loaded.load() && !load_status.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  loader.join();
  if (!load_status.ok()) {
    log->error("cannot start: {}", load_status.ToString());
    stop_io();
    return 1;
  }
  log->info("signal {}: shutting down (in-flight requests have {} s)", g_signal.load(),
            c.shutdown_timeout_s);
  server.StopAccepting();
  if (socket_server) socket_server->StopAccepting();
  app.BeginDrain();
  socket_service.BeginDrain();
  auto in_flight = [&] { return app.in_flight() + socket_service.in_flight(); };
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(c.shutdown_timeout_s);
  while (in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  int rc = 0;
  if (engine) {
    if (in_flight() > 0) log->warn("cancelling {} requests still running", in_flight());
    // Cancels what still runs (clients get their final event), flushes, closes the store.
    if (Status s = engine->Close(); !s.ok()) {
      log->error("closing the cache: {}", s.ToString());
      rc = 1;
    }
    const auto grace = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (in_flight() > 0 && std::chrono::steady_clock::now() < grace) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  stop_io();
  log->info("stopped");
  return rc;
}

}  // namespace
}  // namespace kvstash::daemon

int main(int argc, char** argv) { return kvstash::daemon::Main(argc, argv); }
