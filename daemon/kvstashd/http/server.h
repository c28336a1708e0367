// The HTTP/1.1 server under kvstashd (Boost.Asio + Boost.Beast): an acceptor, keep-alive
// connections with a deadline on reading each request (a client that never finishes its headers
// is closed), a body limit (413 before the body is buffered), and responses that are either one
// message or a chunked stream (Server-Sent Events). Routing and the API live above it (app.h).
//
// Threading: `threads` io_context threads; each connection runs on its own strand, so a
// connection's handlers never run concurrently. Nothing here blocks: work for the engine goes
// through serve::Engine::Submit and comes back through RequestHandle::SetOnEvent posting to the
// connection's strand.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including <utility>.
#include <utility>
// clang-format off
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>

// clang-format on
#include "base/status.h"

namespace kvstash::daemon::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

using Request = bhttp::request<bhttp::string_body>;
using Response = bhttp::response<bhttp::string_body>;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0 = any free port
  int threads = 2;
  uint64_t max_body_bytes = 16ull << 20;
  std::chrono::seconds header_timeout{30};
};

class Connection;
// Called on the connection's strand for every complete request. It must eventually answer
// through Reply() or a stream (BeginStream/Write/EndStream), exactly once.
using Handler = std::function<void(std::shared_ptr<Connection>, Request)>;

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, const ServerOptions& options, Handler handler,
             std::atomic<int>* open_connections);
  ~Connection();
  void Start();

  // One whole response; the connection then reads the next request (keep-alive) or closes.
  void Reply(Response res);
  // A chunked response whose head is `res` (its body is ignored); then Write() pieces and
  // EndStream(). A failed write calls the disconnect callback.
  void BeginStream(Response res);
  void Write(std::string data);
  void EndStream();
  // Called once (on the strand) when the peer goes away while a response is pending or
  // streaming (for cancelling its generation). Watching starts with this call.
  void OnDisconnect(std::function<void()> fn);
  net::any_io_executor executor() { return stream_.get_executor(); }
  bool closed() const { return closed_; }

 private:
  void Read();
  void OnRead(beast::error_code ec, size_t bytes);
  void AfterWrite(beast::error_code ec, bool keep_alive);
  void WriteNext();
  void OnStreamWrite(beast::error_code ec);
  void WatchPeer();
  void Gone();
  void Close();

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  const ServerOptions& options_;
  Handler handler_;
  std::atomic<int>* open_connections_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  bool keep_alive_ = false;
  bool busy_ = false;  // a request is being answered
  bool closed_ = false;
  // Streaming.
  bool streaming_ = false;
  bool writing_ = false;
  bool end_queued_ = false;
  std::deque<std::string> out_;  // chunks waiting to be written
  std::shared_ptr<void> head_;   // response head being serialized
  std::function<void()> on_disconnect_;
  bool watching_ = false;
};

class Server {
 public:
  Server(net::io_context& ioc, ServerOptions options, Handler handler);
  // Binds and listens; the bound port is port() afterwards.
  Status Listen();
  int port() const { return port_; }
  // Stops accepting new connections (existing ones continue).
  void StopAccepting();
  int open_connections() const { return open_.load(); }

 private:
  void Accept();
  net::io_context& ioc_;
  ServerOptions options_;
  Handler handler_;
  tcp::acceptor acceptor_;
  int port_ = 0;
  std::atomic<int> open_{0};
};

// A JSON response with the usual headers.
Response JsonResponse(unsigned version, bool keep_alive, bhttp::status status, std::string body);

}  // namespace kvstash::daemon::http
