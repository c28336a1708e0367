#include "daemon/kvstashd/app.h"

#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>

#include "base/logging.h"
#include "daemon/kvstashd/api/anthropic.h"
#include "daemon/kvstashd/api/responses.h"
#include "engine/tokenizer/tokenizer.h"
#include "serve/engine.h"

namespace kvstash::daemon {

namespace {

using SteadyClock = std::chrono::steady_clock;
namespace bhttp = http::bhttp;

double MsSince(SteadyClock::time_point t0) {
  return std::chrono::duration<double, std::milli>(SteadyClock::now() - t0).count();
}

std::string PathOf(const http::Request& req) {
  std::string target(req.target());
  const size_t q = target.find('?');
  return q == std::string::npos ? target : target.substr(0, q);
}

api::ApiError Error(int status, std::string message, std::string type, std::string code = "") {
  api::ApiError e;
  e.http_status = status;
  e.message = std::move(message);
  e.type = std::move(type);
  e.code = std::move(code);
  return e;
}

bool ConstantTimeEqual(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i]);
  return d == 0;
}

}  // namespace

// One generation request in flight: its handle, the response being built, where it goes.
struct App::Generation {
  std::shared_ptr<http::Connection> conn;
  std::shared_ptr<serve::RequestHandle> handle;
  std::unique_ptr<api::ReplyBuilder> builder;
  std::shared_ptr<const api::ModelContext> model;  // for token replay at the end
  http::Request req;                               // method and target, for the access log
  std::string id, route;
  bool stream = false;
  bool done = false;
  SteadyClock::time_point t0;
  std::unique_ptr<http::net::steady_timer> ping;
  SteadyClock::time_point last_write;
};

App::App(const DaemonConfig& config) : config_(config) {}

void App::SetEngine(std::shared_ptr<serve::Engine> engine, api::ModelContext model,
                    MemoryBudget memory) {
  std::lock_guard<std::mutex> lock(mu_);
  engine_ = std::move(engine);
  model_ = std::make_shared<const api::ModelContext>(std::move(model));
  memory_ = memory;
}

bool App::Authorized(const http::Request& req) const {
  if (config_.api_keys.empty()) return true;
  std::string key;
  if (auto it = req.find(bhttp::field::authorization); it != req.end()) {
    const std::string v(it->value());
    if (v.rfind("Bearer ", 0) == 0) key = v.substr(7);
  }
  if (key.empty()) {
    if (auto it = req.find("x-api-key"); it != req.end()) key = std::string(it->value());
  }
  if (key.empty()) return false;
  bool ok = false;
  for (const std::string& k : config_.api_keys) ok |= ConstantTimeEqual(k, key);
  return ok;
}

void App::Handle(std::shared_ptr<http::Connection> conn, http::Request req) {
  const auto t0 = SteadyClock::now();
  const std::string id = "req-" + std::to_string(++next_id_);
  const std::string path = PathOf(req);
  const auto method = req.method();
  std::shared_ptr<serve::Engine> engine;
  std::shared_ptr<const api::ModelContext> model;
  MemoryBudget memory;
  {
    std::lock_guard<std::mutex> lock(mu_);
    engine = engine_;
    model = model_;
    memory = memory_;
  }
  const bool loading = engine == nullptr;
  if (path == "/health" || path == "/v1/health") {
    if (loading) {
      Send(conn, req, "/health", 503, R"({"status":"loading"})", id, t0, nullptr, 5);
    } else {
      Send(conn, req, "/health", 200, R"({"status":"ok"})", id, t0);
    }
    return;
  }
  if (method == bhttp::verb::options) {  // CORS preflight: no auth
    Send(conn, req, "OPTIONS", 204, "", id, t0);
    return;
  }
  if (!Authorized(req)) {
    SendError(conn, req, path,
              Error(401, "missing or invalid API key (Authorization: Bearer KEY or x-api-key)",
                    "authentication_error", "invalid_api_key"),
              id, t0);
    return;
  }
  if (loading) {
    SendError(conn, req, path, Error(503, "the model is loading", "unavailable_error", "loading"),
              id, t0);
    return;
  }
  const bool get = method == bhttp::verb::get || method == bhttp::verb::head;
  const bool post = method == bhttp::verb::post;
  if (get && (path == "/v1/models" || path == "/models")) {
    Send(conn, req, "/v1/models", 200, api::ModelsJson(*model, std::time(nullptr)), id, t0);
  } else if (get && path.rfind("/v1/models/", 0) == 0 && path.size() > 11) {
    // Any name is served by the loaded model (as on the generation routes).
    nlohmann::json m = {{"id", path.substr(11)},
                        {"object", "model"},
                        {"created", static_cast<int64_t>(std::time(nullptr))},
                        {"owned_by", "kvstash"},
                        {"served_by", model->model_id}};
    Send(conn, req, "/v1/models", 200,
         m.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), id, t0);
  } else if (get && path == "/metrics") {
    Send(conn, req, "/metrics", 200, metrics_.Render(engine.get(), memory, false), id, t0,
         "text/plain; version=0.0.4; charset=utf-8");
  } else if (post && (path == "/tokenize" || path == "/detokenize")) {
    api::ApiError err;
    Result<std::string> body = path == "/tokenize"
                                   ? api::HandleTokenize(req.body(), *model, &err)
                                   : api::HandleDetokenize(req.body(), *model, &err);
    if (body.ok()) {
      Send(conn, req, path, 200, std::move(*body), id, t0);
    } else {
      SendError(conn, req, path, err, id, t0);
    }
  } else if (post && path == "/v1/messages/count_tokens") {
    api::ApiError err;
    Result<std::string> body = api::HandleAnthropicCountTokens(req.body(), *model, &err);
    if (body.ok()) {
      Send(conn, req, path, 200, std::move(*body), id, t0);
    } else {
      Send(conn, req, path, err.http_status, api::AnthropicErrorBody(err), id, t0);
    }
  } else if (post && (path == "/v1/chat/completions" || path == "/v1/completions" ||
                      path == "/v1/messages" || path == "/v1/responses")) {
    const Api api = path == "/v1/chat/completions" ? Api::kChat
                    : path == "/v1/completions"    ? Api::kCompletions
                    : path == "/v1/messages"       ? Api::kMessages
                                                   : Api::kResponses;
    if (draining_.load()) {
      api::ApiError e =
          Error(503, "kvstashd is shutting down", "unavailable_error", "shutting_down");
      Send(conn, req, path, 503, api == Api::kMessages ? api::AnthropicErrorBody(e) : e.ToJson(),
           id, t0, nullptr, 5);
      return;
    }
    Generate(conn, req, api, id, t0);
  } else if (get && path == "/") {
    // Agents probe the base URL before they start (HEAD / or GET /).
    Send(conn, req, "/", 200, R"({"status":"ok","service":"kvstashd"})", id, t0);
  } else {
    SendError(conn, req, path.size() > 64 ? "other" : "other",
              Error(404, "no route " + std::string(req.method_string()) + " " + path.substr(0, 200),
                    "not_found_error", "not_found"),
              id, t0);
  }
}

void App::Generate(std::shared_ptr<http::Connection> conn, const http::Request& req, Api api,
                   const std::string& id, SteadyClock::time_point t0) {
  std::shared_ptr<serve::Engine> engine;
  std::shared_ptr<const api::ModelContext> model;
  {
    std::lock_guard<std::mutex> lock(mu_);
    engine = engine_;
    model = model_;
  }
  const std::string route = PathOf(req);
  api::ApiError err;
  Result<api::ParsedRequest> parsed = Status::Internal("unreachable");
  switch (api) {
    case Api::kChat:
      parsed = api::ParseChatCompletion(req.body(), *model, &err);
      break;
    case Api::kCompletions:
      parsed = api::ParseCompletion(req.body(), *model, &err);
      break;
    case Api::kMessages:
      parsed = api::ParseAnthropicMessages(req.body(), *model, &err);
      break;
    case Api::kResponses:
      parsed = api::ParseResponsesRequest(req.body(), *model, &err);
      break;
  }
  auto error_body = [api](const api::ApiError& e) {
    return api == Api::kMessages ? api::AnthropicErrorBody(e) : e.ToJson();
  };
  if (!parsed.ok()) {
    Send(conn, req, route, err.http_status, error_body(err), id, t0, nullptr,
         err.http_status == 503 ? 2 : 0);
    return;
  }
  parsed->request.id = id;
  if (!parsed->request.restore_session.empty()) parsed->request.session_is_prefix = true;
  auto handle = engine->Submit(parsed->request);
  if (!handle.ok()) {
    api::ApiError e = api::ErrorFromStatus(handle.status());
    Send(conn, req, route, e.http_status, error_body(e), id, t0, nullptr,
         e.http_status == 503 ? 2 : 0);
    return;
  }
  auto g = std::make_shared<Generation>();
  g->conn = conn;
  g->handle = *handle;
  switch (api) {
    case Api::kChat:
    case Api::kCompletions:
      g->builder = std::make_unique<api::ResponseBuilder>(
          *parsed, (api == Api::kChat ? "chatcmpl-" : "cmpl-") + id, std::time(nullptr), *model);
      break;
    case Api::kMessages:
      g->builder = api::MakeAnthropicBuilder(*parsed, api::RandomId("msg_"), *model);
      break;
    case Api::kResponses:
      g->builder =
          api::MakeResponsesBuilder(*parsed, api::RandomId("resp_"), std::time(nullptr), *model);
      break;
  }
  g->model = model;
  g->req.method(req.method());
  g->req.target(req.target());
  g->id = id;
  g->route = route;
  g->stream = parsed->stream;
  g->t0 = t0;
  g->last_write = SteadyClock::now();
  in_flight_.fetch_add(1);
  // A client that goes away cancels its request (its computed blocks stay cached).
  std::weak_ptr<Generation> weak = g;
  conn->OnDisconnect([this, weak] {
    if (auto gg = weak.lock(); gg && !gg->done) {
      gg->handle->Cancel();
      metrics_.CountDisconnect();
    }
  });
  if (g->stream) {
    http::Response head{bhttp::status::ok, req.version()};
    head.set(bhttp::field::server, "kvstashd");
    head.set(bhttp::field::content_type, "text/event-stream");
    head.set(bhttp::field::cache_control, "no-cache");
    head.set("x-request-id", id);
    conn->BeginStream(std::move(head));
    if (std::string open = g->builder->StreamOpen(); !open.empty()) conn->Write(std::move(open));
    if (config_.sse_ping_s > 0) {
      g->ping = std::make_unique<http::net::steady_timer>(conn->executor());
      Ping(g);
    }
  }
  auto executor = conn->executor();
  // Events arrive on the engine thread; each one schedules a drain on the connection's strand.
  g->handle->SetOnEvent(
      [this, g, executor] { http::net::post(executor, [this, g] { Drain(g); }); });
  http::net::post(executor, [this, g] { Drain(g); });
}

void App::Drain(const std::shared_ptr<Generation>& g) {
  while (!g->done) {
    std::optional<serve::Event> e = g->handle->TryNext();
    if (!e) return;
    const bool final =
        e->kind == serve::Event::Kind::kDone || e->kind == serve::Event::Kind::kError;
    if (g->stream) {
      std::string frames = g->builder->StreamEvent(*e);
      if (!frames.empty()) {
        g->conn->Write(std::move(frames));
        g->last_write = SteadyClock::now();
      }
    } else if (e->kind != serve::Event::Kind::kError) {
      g->builder->Add(*e);
    }
    if (!final) continue;
    g->done = true;
    g->handle->SetOnEvent(nullptr);  // breaks the handle -> callback -> generation cycle
    if (g->ping) g->ping->cancel();
    in_flight_.fetch_sub(1);
    const serve::Usage& u = e->usage;
    metrics_.CountGeneration(u);
    RememberReply(*g);
    int status = 200;
    if (e->kind == serve::Event::Kind::kError) status = api::ErrorFromStatus(e->status).http_status;
    if (u.finish == serve::FinishReason::kCancelled && g->conn->closed()) status = 499;
    if (g->stream) {
      g->conn->EndStream();
      metrics_.CountRequest(g->route, status);
      AccessLog(g->id, g->req, status, &u, g->t0);
    } else if (e->kind == serve::Event::Kind::kError) {
      api::ApiError err = api::ErrorFromStatus(e->status);
      g->conn->Reply(http::JsonResponse(11, true, static_cast<bhttp::status>(err.http_status),
                                        g->builder->ErrorBody(err)));
      metrics_.CountRequest(g->route, err.http_status);
      AccessLog(g->id, g->req, err.http_status, &u, g->t0);
    } else {
      g->conn->Reply(http::JsonResponse(11, true, bhttp::status::ok, g->builder->Finish()));
      metrics_.CountRequest(g->route, status);
      AccessLog(g->id, g->req, status, &u, g->t0);
    }
    g->conn.reset();
  }
}

// Token replay: the ids of this reply, keyed by what the client will send back for it.
void App::RememberReply(const Generation& g) {
  if (g.model == nullptr || g.model->replay == nullptr || g.model->tokenizer == nullptr) return;
  auto record = g.builder->ReplyRecord();
  if (!record || record->second.ids.empty()) return;
  api::ReplayEntry& entry = record->second;
  for (int32_t t : entry.ids) entry.text += g.model->tokenizer->TokenToPiece(t, true);
  for (const api::ToolCall& c : record->first.tool_calls) entry.arguments.push_back(c.arguments);
  g.model->replay->Remember(api::TokenReplay::KeyOf(record->first), std::move(entry));
}

// SSE comment lines keep proxies and clients from timing out while a long prompt is prefilled.
void App::Ping(const std::shared_ptr<Generation>& g) {
  g->ping->expires_after(std::chrono::seconds(config_.sse_ping_s));
  std::weak_ptr<Generation> weak = g;
  g->ping->async_wait([this, weak](boost::system::error_code ec) {
    auto gg = weak.lock();
    if (ec || !gg || gg->done || !gg->conn) return;
    if (SteadyClock::now() - gg->last_write >= std::chrono::seconds(config_.sse_ping_s)) {
      gg->conn->Write(": ping\n\n");
      gg->last_write = SteadyClock::now();
    }
    Ping(gg);
  });
}

void App::Send(const std::shared_ptr<http::Connection>& conn, const http::Request& req,
               const std::string& route, int status, std::string body, const std::string& id,
               SteadyClock::time_point t0, const char* content_type, int retry_after_s) {
  http::Response res = http::JsonResponse(req.version(), req.keep_alive(),
                                          static_cast<bhttp::status>(status), std::move(body));
  if (content_type != nullptr) res.set(bhttp::field::content_type, content_type);
  if (retry_after_s > 0) res.set(bhttp::field::retry_after, std::to_string(retry_after_s));
  res.set("x-request-id", id);
  if (req.method() == bhttp::verb::head) res.body().clear();
  res.prepare_payload();
  conn->Reply(std::move(res));
  metrics_.CountRequest(route, status);
  AccessLog(id, req, status, nullptr, t0);
}

void App::SendError(const std::shared_ptr<http::Connection>& conn, const http::Request& req,
                    const std::string& route, const api::ApiError& e, const std::string& id,
                    SteadyClock::time_point t0) {
  // Anthropic clients parse errors in their API's shape, whatever refused the request.
  const bool anthropic = PathOf(req).rfind("/v1/messages", 0) == 0;
  Send(conn, req, route, e.http_status, anthropic ? api::AnthropicErrorBody(e) : e.ToJson(), id, t0,
       nullptr, e.http_status == 503 ? 2 : 0);
}

void App::AccessLog(const std::string& id, const http::Request& req, int status,
                    const serve::Usage* u, SteadyClock::time_point t0) {
  const std::string path = PathOf(req).substr(0, 200);
  DefaultLogger()->info("{} {} {} {} prompt={} cached={} ttft_ms={:.1f} total_ms={:.1f}", id,
                        std::string(req.method_string()), path, status, u ? u->prompt_tokens : 0,
                        u ? u->cached_tokens : 0, u ? u->ttft_ms : 0.0, MsSince(t0));
}

}  // namespace kvstash::daemon
