// What kvstashd does with a request that arrived on the local socket (socket_server.h): build a
// serve::Request (through api/prompt.h, as the HTTP API does), submit it to the engine, and turn
// its events into frames (TokenChunk, Progress, then Done with the usage record, or Error);
// tokenize, detokenize, sessions, stats, health, and Cancel by request id.
//
// Threading: Handle runs on the connection's strand and never blocks it. Engine events arrive on
// the engine thread and are drained on the strand (RequestHandle::SetOnEvent posts the drain);
// session listing and deletion (store reads and writes) run on the service's own worker thread
// and post their answer back.
#pragma once

#include <utility>
// clang-format off
#include <atomic>
#include <boost/asio.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
// clang-format on

#include "daemon/kvstashd/api/openai.h"
#include "daemon/kvstashd/metrics/metrics.h"
#include "protocol/messages.h"

namespace kvstash::serve {
class Engine;
class RequestHandle;
struct Request;
}  // namespace kvstash::serve

namespace kvstash::daemon::socket {

namespace net = boost::asio;

// The connection side the service answers through. All methods are called on the connection's
// strand (executor()).
class Peer {
 public:
  virtual ~Peer() = default;
  // Sends or queues a frame (dropped when the connection is closed). Thread-safe: the engine
  // thread calls it as events happen.
  virtual void Send(const protocol::Frame& frame) = 0;
  virtual net::any_io_executor executor() = 0;
  virtual bool closed() const = 0;
  // Requests of this connection in flight, by client id (for Cancel and for cancelling them all
  // when the client goes away).
  std::map<uint64_t, std::shared_ptr<serve::RequestHandle>> in_flight;
};

// What a generation-shaped request (Generate, Prefill, SessionSave, SessionRestore) asks of the
// frames that answer it.
struct Shape {
  bool stream = false;    // TokenChunk frames (else the text comes in Done)
  bool progress = false;  // Progress frames
  bool generate = false;  // counted as a generation in /metrics
};

class Service {
 public:
  explicit Service(Metrics& metrics);
  ~Service();
  // The model is loaded: requests other than Health are served from now on.
  void SetEngine(std::shared_ptr<serve::Engine> engine,
                 std::shared_ptr<const api::ModelContext> model);
  // Shutdown: new generation requests get Busy; those in flight continue.
  void BeginDrain() { draining_.store(true); }
  // Generation requests running (the daemon waits for them on shutdown).
  int in_flight() const { return in_flight_.load(); }

  // The HelloAck of this daemon (model fields empty while it loads).
  protocol::HelloAck Ack(uint32_t max_frame_bytes) const;
  // One request frame (after Hello) of `peer`.
  void Handle(const std::shared_ptr<Peer>& peer, protocol::Frame frame);

  struct Stream;

 private:
  // Submits an engine request of `peer` and streams its events back as frames.
  void Submit(const std::shared_ptr<Peer>& peer, uint64_t id, serve::Engine& engine,
              serve::Request req, const Shape& shape);
  void Drain(const std::shared_ptr<Stream>& s);
  // Runs `work` on the worker thread and sends its frame back on the peer's strand.
  void OffStrand(const std::shared_ptr<Peer>& peer, uint64_t id,
                 std::function<protocol::Body()> work);

  Metrics& metrics_;
  std::atomic<bool> draining_{false};
  std::atomic<int> in_flight_{0};
  std::atomic<uint64_t> next_id_{0};
  mutable std::mutex mu_;  // guards the two below (set once when loaded)
  std::shared_ptr<serve::Engine> engine_;
  std::shared_ptr<const api::ModelContext> model_;
  net::thread_pool worker_{1};
};

// An error frame for `s` (fatal: the daemon closes the connection after sending it).
protocol::ErrorReply ErrorFrom(const Status& s, bool fatal = false);

}  // namespace kvstash::daemon::socket
