// kvstashd's local socket (docs/protocol.md, docs/daemon.md "The local socket"): a Unix stream
// socket speaking the FlatBuffers protocol of protocol/. SocketServer owns the listening socket:
// the path (created 0600 inside a directory created 0700), the lock that keeps a second daemon
// from stealing a live socket (a stale one, left by a killed daemon, is replaced), and the peer
// credential check (SO_PEERCRED: only the daemon's own uid, plus --socket-allow-uid, may
// connect). Each accepted connection is a shared_from_this object on its own strand that cuts
// the byte stream into frames (refusing oversize ones before buffering them), verifies and
// decodes each one, negotiates the version (Hello), and hands requests to the Service
// (socket_service.h), which answers through the connection's write queue.
//
// Threading: runs on the daemon's io_context threads; a connection's handlers never run
// concurrently, and nothing here blocks (generation goes to serve::Engine, blocking store work
// to the Service's worker thread).
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including <utility>.
#include <utility>
// clang-format off
#include <atomic>
#include <boost/asio.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>
// clang-format on

#include "base/status.h"

namespace kvstash::daemon::socket {

namespace net = boost::asio;
using local = net::local::stream_protocol;

struct SocketOptions {
  // Socket path (required; the daemon resolves the default, protocol::DefaultSocketPath()).
  std::string path;
  // Largest frame accepted; a longer one gets a fatal Error frame and the connection is closed.
  uint32_t max_frame_bytes = 16u << 20;
  // Uids allowed besides the daemon's own (root is not implied).
  std::vector<uint32_t> allowed_uids;
  // Requests in flight on one connection beyond which new ones get a ResourceExhausted error.
  size_t max_in_flight = 256;
  // Bytes queued for a client that does not read before its connection is closed.
  size_t max_queued_bytes = 64u << 20;
};

class Service;

class SocketServer {
 public:
  SocketServer(net::io_context& ioc, SocketOptions options, Service& service);
  // Closes the listener and removes the socket file (when it is still ours).
  ~SocketServer();
  // Creates the directory, takes PATH.lock, replaces a stale socket, binds (mode 0600) and starts
  // accepting. Busy ("another kvstashd is listening on PATH") when a live daemon holds it.
  Status Listen();
  void StopAccepting();
  const std::string& path() const { return options_.path; }
  int open_connections() const { return open_->load(); }
  // Connections refused for their peer uid (tests, logs).
  uint64_t refused_peers() const { return refused_.load(); }

 private:
  void Accept();
  net::io_context& ioc_;
  SocketOptions options_;
  std::shared_ptr<const SocketOptions> shared_options_;  // shared with the connections
  Service& service_;
  local::acceptor acceptor_;
  int lock_fd_ = -1;
  bool bound_ = false;
  std::shared_ptr<std::atomic<int>> open_ = std::make_shared<std::atomic<int>>(0);
  std::atomic<uint64_t> refused_{0};
};

}  // namespace kvstash::daemon::socket
