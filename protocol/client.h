// A small C++ client for kvstashd's local socket (docs/protocol.md). It hides the wire format:
// callers see the plain structs of messages.h and Status/Result.
//
//   auto c = protocol::Client::Connect({});          // $XDG_RUNTIME_DIR/kvstash/kvstashd.sock
//   protocol::GenerateRequest g;
//   g.prompt.text = "Once upon a time";
//   auto done = (*c)->Generate(g, [](const protocol::TokenChunk& t) { fputs(t.text.c_str(),
//   stdout); });
//
// Several requests may be in flight on one connection: Start() sends a request and returns a
// Call whose frames arrive in order. There is no reader thread: a call waiting in Next() reads
// the socket itself (one at a time) and routes every frame to its call by request id, so a
// frame reaches its caller without a thread switch. The blocking helpers (Generate, Prefill,
// Tokenize, ...) are Start plus reading the call to its final frame.
//
// Errors: Unavailable-style IOError "is kvstashd running? socket PATH: ..." when nothing listens;
// Incompatible when the daemon refuses the protocol version; the daemon's Error frames come back
// as a Status with its code and message; a request that hears nothing for request_timeout is
// Cancelled on the daemon and returned as ResourceExhausted "timed out".
//
// Thread safety: a Client may be used from several threads at once (each Call by one thread).
// Destroying the Client closes the connection (the daemon cancels what is still running).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"
#include "protocol/messages.h"

namespace kvstash::protocol {

struct ClientOptions {
  // Socket path; "" = DefaultSocketPath().
  std::string socket_path;
  // Connecting and the Hello exchange. Default 5 s.
  std::chrono::milliseconds connect_timeout{5000};
  // Longest silence within one request (no frame for it) before it is cancelled. Default 10 min.
  std::chrono::milliseconds request_timeout{600000};
  // Largest frame accepted from the daemon. Default wire::kDefaultMaxFrameBytes.
  uint32_t max_frame_bytes = 16u << 20;
  // Sent in Hello, shown in the daemon's log.
  std::string client_name = "kvstash-client";
};

// $XDG_RUNTIME_DIR/kvstash/kvstashd.sock, or /tmp/kvstash-UID/kvstashd.sock without
// XDG_RUNTIME_DIR.
std::string DefaultSocketPath();

// A daemon error frame as a Status (its code and message).
Status StatusFromError(const ErrorReply& e);

class Client;
struct ClientCore;  // the connection (client.cc)

// One request in flight.
class Call {
 public:
  uint64_t id() const { return id_; }
  // The next frame of this request: TokenChunk / Progress, then one final frame (Done, a
  // *Result, or Error). Fails when the connection broke or nothing came for `timeout`. After the
  // final frame, returns Cancelled("request finished").
  Result<Body> Next(std::chrono::milliseconds timeout);
  // Asks the daemon to stop this request (it still answers with a final frame).
  Status Cancel();

  struct State;  // frames routed to this call (client.cc)

 private:
  friend class Client;
  Call(std::shared_ptr<ClientCore> c, std::shared_ptr<State> s, uint64_t id)
      : client_(std::move(c)), state_(std::move(s)), id_(id) {}
  std::shared_ptr<ClientCore> client_;
  std::shared_ptr<State> state_;
  uint64_t id_;
};

struct GenerateResult {
  std::string text;             // all of it, streamed or not
  std::vector<int32_t> tokens;  // sampled tokens
  Usage usage;
};

class Client {
 public:
  // Connects, says Hello and checks the answer.
  static Result<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // What the daemon said in HelloAck (model, context size, block size, its frame limit).
  const HelloAck& server() const;
  const std::string& socket_path() const;

  // Sends any request body; see Call.
  Result<std::unique_ptr<Call>> Start(Body request);

  // Generation. `on_token` (optional) sees every TokenChunk as it arrives; `on_progress` every
  // Progress frame. `call_id` (optional) receives the request id as soon as it is sent, for
  // Cancel from another thread.
  Result<GenerateResult> Generate(const GenerateRequest& request,
                                  const std::function<void(const TokenChunk&)>& on_token = nullptr,
                                  std::function<void(uint64_t)> call_id = nullptr);
  // Warms the cache with a prompt; Done.usage says what was cached and what was computed.
  Result<Usage> Prefill(const PrefillRequest& request,
                        const std::function<void(const Progress&)>& on_progress = nullptr);
  Result<std::vector<int32_t>> Tokenize(const TokenizeRequest& request);
  Result<std::string> Detokenize(const std::vector<int32_t>& tokens);
  Result<Usage> SessionSave(const SessionSaveRequest& request);
  // Loads a session into the daemon's memory tiers; Done.text is the session's text.
  Result<Done> SessionRestore(const SessionRestoreRequest& request);
  Result<std::vector<SessionInfo>> SessionList();
  Status SessionDelete(const std::string& name);
  Result<StatsResult> Stats();
  Result<std::string> Health();
  // Cancels request `id` of this connection.
  Status Cancel(uint64_t id);

 private:
  explicit Client(std::shared_ptr<ClientCore> impl) : impl_(std::move(impl)) {}
  // Reads `call` to its final frame; TokenChunk/Progress frames go to the callbacks.
  Result<Body> Finish(Call& call, const std::function<void(const Body&)>& on_stream);
  std::shared_ptr<ClientCore> impl_;
};

}  // namespace kvstash::protocol
