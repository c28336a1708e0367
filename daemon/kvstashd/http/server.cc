#include "daemon/kvstashd/http/server.h"

#include <sys/socket.h>

#include <cerrno>
#include <optional>

#include "base/logging.h"

namespace kvstash::daemon::http {

namespace {

std::string ErrorBody(const std::string& message, const std::string& type,
                      const std::string& code) {
  // Built by hand: this layer has no JSON library and the texts are fixed ASCII.
  return "{\"error\":{\"message\":\"" + message + "\",\"type\":\"" + type +
         "\",\"param\":null,\"code\":" + (code.empty() ? "null" : "\"" + code + "\"") + "}}";
}

}  // namespace

Response JsonResponse(unsigned version, bool keep_alive, bhttp::status status, std::string body) {
  Response res{status, version};
  res.set(bhttp::field::server, "kvstashd");
  res.set(bhttp::field::content_type, "application/json");
  res.keep_alive(keep_alive);
  res.body() = std::move(body);
  res.prepare_payload();
  return res;
}

// ---- Connection ---------------------------------------------------------------------------------

Connection::Connection(tcp::socket socket, const ServerOptions& options, Handler handler,
                       std::atomic<int>* open_connections)
    : stream_(std::move(socket)),
      options_(options),
      handler_(std::move(handler)),
      open_connections_(open_connections) {}

Connection::~Connection() { open_connections_->fetch_sub(1); }

void Connection::Start() {
  net::dispatch(stream_.get_executor(),
                beast::bind_front_handler(&Connection::Read, shared_from_this()));
}

void Connection::Read() {
  if (closed_) return;
  parser_.emplace();
  parser_->body_limit(options_.max_body_bytes);
  parser_->header_limit(64 * 1024);
  // The whole request (headers and body) must arrive within the deadline: a client that never
  // finishes its headers holds a connection for at most that long.
  stream_.expires_after(options_.header_timeout);
  bhttp::async_read(stream_, buffer_, *parser_,
                    beast::bind_front_handler(&Connection::OnRead, shared_from_this()));
}

void Connection::OnRead(beast::error_code ec, size_t) {
  if (ec == bhttp::error::end_of_stream || ec == beast::error::timeout ||
      ec == net::error::operation_aborted || ec == net::error::connection_reset ||
      ec == net::error::eof) {
    Close();
    return;
  }
  keep_alive_ = false;
  if (ec == bhttp::error::body_limit) {
    Reply(JsonResponse(
        11, false, bhttp::status::payload_too_large,
        ErrorBody("request body larger than " + std::to_string(options_.max_body_bytes) +
                      " bytes (--max-body-bytes)",
                  "invalid_request_error", "request_too_large")));
    return;
  }
  if (ec) {
    Reply(JsonResponse(11, false, bhttp::status::bad_request,
                       ErrorBody("malformed HTTP request", "invalid_request_error", "")));
    return;
  }
  stream_.expires_never();
  Request req = parser_->release();
  keep_alive_ = req.keep_alive();
  busy_ = true;
  handler_(shared_from_this(), std::move(req));
}

void Connection::Reply(Response res) {
  if (closed_) return;
  busy_ = true;
  res.keep_alive(keep_alive_ && res.keep_alive());
  res.prepare_payload();
  auto sp = std::make_shared<Response>(std::move(res));
  const bool keep = sp->keep_alive();
  stream_.expires_after(std::chrono::seconds(60));
  bhttp::async_write(stream_, *sp,
                     [self = shared_from_this(), sp, keep](beast::error_code ec, size_t) {
                       self->AfterWrite(ec, keep);
                     });
}

void Connection::AfterWrite(beast::error_code ec, bool keep_alive) {
  busy_ = false;
  streaming_ = false;
  end_queued_ = false;
  on_disconnect_ = nullptr;
  head_.reset();
  if (ec || !keep_alive) {
    Close();
    return;
  }
  Read();
}

void Connection::BeginStream(Response res) {
  if (closed_) return;
  streaming_ = true;
  res.chunked(true);
  res.keep_alive(keep_alive_);
  struct Head {
    Response res;
    bhttp::response_serializer<bhttp::string_body> sr;
    explicit Head(Response r) : res(std::move(r)), sr(res) {}
  };
  auto head = std::make_shared<Head>(std::move(res));
  head_ = head;
  writing_ = true;
  stream_.expires_never();
  bhttp::async_write_header(
      stream_, head->sr,
      [self = shared_from_this(), head](beast::error_code ec, size_t) { self->OnStreamWrite(ec); });
}

void Connection::Write(std::string data) {
  if (closed_ || !streaming_ || data.empty()) return;
  out_.push_back(std::move(data));
  WriteNext();
}

void Connection::EndStream() {
  if (closed_ || !streaming_) return;
  end_queued_ = true;
  WriteNext();
}

void Connection::WriteNext() {
  if (writing_ || closed_) return;
  if (!out_.empty()) {
    auto data = std::make_shared<std::string>(std::move(out_.front()));
    out_.pop_front();
    writing_ = true;
    net::async_write(stream_, bhttp::make_chunk(net::buffer(*data)),
                     [self = shared_from_this(), data](beast::error_code ec, size_t) {
                       self->OnStreamWrite(ec);
                     });
    return;
  }
  if (end_queued_) {
    writing_ = true;
    const bool keep = keep_alive_;
    net::async_write(stream_, bhttp::make_chunk_last(),
                     [self = shared_from_this(), keep](beast::error_code ec, size_t) {
                       self->writing_ = false;
                       self->AfterWrite(ec, keep);
                     });
  }
}

// A piece of a stream was written: the next one, or on failure the client is gone.
void Connection::OnStreamWrite(beast::error_code ec) {
  writing_ = false;
  if (ec) {
    Gone();
    Close();
    return;
  }
  WriteNext();
}

void Connection::OnDisconnect(std::function<void()> fn) {
  on_disconnect_ = std::move(fn);
  WatchPeer();
}

// While a response is pending, a readable socket that reads as end-of-file means the client
// went away. (Data instead means a pipelined request: watching stops, a failed write will tell.)
void Connection::WatchPeer() {
  if (watching_ || closed_) return;
  watching_ = true;
  stream_.socket().async_wait(
      tcp::socket::wait_read,
      net::bind_executor(stream_.get_executor(), [self = shared_from_this()](beast::error_code ec) {
        self->watching_ = false;
        if (self->closed_ || !self->busy_ || !self->on_disconnect_) return;
        if (ec) {
          if (ec != net::error::operation_aborted) self->Gone();
          return;
        }
        char c;
        const ssize_t n =
            ::recv(self->stream_.socket().native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
          self->Gone();
          self->Close();
        } else if (n < 0) {
          self->WatchPeer();  // spurious wakeup
        }
      }));
}

void Connection::Gone() {
  if (!on_disconnect_) return;
  auto fn = std::move(on_disconnect_);
  on_disconnect_ = nullptr;
  fn();
}

void Connection::Close() {
  if (closed_) return;
  closed_ = true;
  if (busy_) Gone();
  beast::error_code ec;
  stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
  stream_.close();
}

// ---- Server -------------------------------------------------------------------------------------

Server::Server(net::io_context& ioc, ServerOptions options, Handler handler)
    : ioc_(ioc), options_(std::move(options)), handler_(std::move(handler)), acceptor_(ioc) {}

Status Server::Listen() {
  beast::error_code ec;
  const std::string host = options_.host == "localhost" ? "127.0.0.1" : options_.host;
  const net::ip::address addr = net::ip::make_address(host, ec);
  if (ec) return Status::InvalidArgument("--host: '" + options_.host + "' is not an IP address");
  const tcp::endpoint ep(addr, static_cast<unsigned short>(options_.port));
  acceptor_.open(ep.protocol(), ec);
  if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return Status::IOError("cannot listen on " + options_.host + ":" +
                           std::to_string(options_.port) + ": " + ec.message());
  }
  port_ = acceptor_.local_endpoint().port();
  Accept();
  return Status::Ok();
}

void Server::StopAccepting() {
  net::post(acceptor_.get_executor(), [this] {
    beast::error_code ec;
    acceptor_.close(ec);
  });
}

void Server::Accept() {
  acceptor_.async_accept(net::make_strand(ioc_), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
    if (ec) {
      // Out of descriptors and the like: say so once in a while and retry shortly, never spin.
      DefaultLogger()->warn("accept: {}", ec.message());
      auto timer = std::make_shared<net::steady_timer>(ioc_, std::chrono::milliseconds(50));
      timer->async_wait([this, timer](beast::error_code) { Accept(); });
      return;
    }
    open_.fetch_add(1);
    std::make_shared<Connection>(std::move(socket), options_, handler_, &open_)->Start();
    Accept();
  });
}

}  // namespace kvstash::daemon::http
