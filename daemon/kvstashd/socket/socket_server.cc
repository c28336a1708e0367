// The listening socket and its connections (socket_server.h).
//
// Taking over a path: PATH.lock is flock()ed for the daemon's lifetime, so of two daemons only
// one may own the path, and whoever holds the lock knows a socket file left at PATH is stale (its
// daemon died without removing it) and may unlink it. A daemon that cannot take the lock refuses
// to start; it never unlinks a socket someone else is serving.
//
// A connection's life: Hello must come first (anything else, or an unsupported major version,
// gets a fatal Error frame and the connection closes once it is written); then request frames go
// to the Service. A frame that fails decoding gets a non-fatal Error frame (the framing is intact,
// so the connection goes on); a length prefix over the limit is fatal (the stream cannot be
// resynchronized without reading the frame). A client that stops reading while more than
// max_queued_bytes are queued for it is disconnected.
#include "daemon/kvstashd/socket/socket_server.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>

#include "base/logging.h"
#include "daemon/kvstashd/socket/socket_service.h"
#include "protocol/codec.h"
#include "protocol/wire_format.h"

namespace kvstash::daemon::socket {
namespace {

class Connection final : public Peer, public std::enable_shared_from_this<Connection> {
 public:
  // `options` and `open` are shared with the server: handlers may outlive it at shutdown.
  Connection(local::socket sock, std::shared_ptr<const SocketOptions> options, Service& service,
             std::shared_ptr<std::atomic<int>> open, uint32_t peer_uid)
      : sock_(std::move(sock)),
        options_(*options),
        options_holder_(std::move(options)),
        service_(service),
        open_(std::move(open)),
        reader_(options_.max_frame_bytes),
        peer_uid_(peer_uid) {
    open_->fetch_add(1);
  }
  ~Connection() override { open_->fetch_sub(1); }

  void Start() { Read(); }

  // Any thread (the engine thread sends a request's frames as its events happen). When nothing
  // is queued the frame is written at once with a non-blocking send(), so an answer does not wait
  // for the io thread to wake up; what the socket does not take goes to the write queue, which the
  // strand drains.
  void Send(const protocol::Frame& frame) override {
    if (closed_.load() || closing_.load()) return;
    std::string bytes = protocol::EncodeFrame(frame);
    std::unique_lock<std::mutex> lock(out_mu_);
    if (closed_.load() || closing_.load()) return;
    if (!writing_ && out_.empty()) {
      size_t off = 0;
      while (off < bytes.size()) {
        const ssize_t n = ::send(sock_.native_handle(), bytes.data() + off, bytes.size() - off,
                                 MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
          off += static_cast<size_t>(n);
        } else if (n < 0 && errno == EINTR) {
          continue;
        } else {
          break;  // full (EAGAIN), or an error the queued write will report and close on
        }
      }
      if (off == bytes.size()) return;
      bytes.erase(0, off);
    }
    queued_bytes_ += bytes.size();
    if (queued_bytes_ > options_.max_queued_bytes) {
      DefaultLogger()->warn("socket: uid {} does not read its answers ({} bytes queued): closing",
                            peer_uid_, queued_bytes_);
      closing_.store(true);
      lock.unlock();
      net::post(sock_.get_executor(), [self = shared_from_this()] { self->Close(); });
      return;
    }
    out_.push_back(std::move(bytes));
    if (!writing_) {
      writing_ = true;
      net::post(sock_.get_executor(), [self = shared_from_this()] { self->WriteNext(); });
    }
  }
  net::any_io_executor executor() override { return sock_.get_executor(); }
  bool closed() const override { return closed_.load(); }

 private:
  void Read() {
    if (closed_ || closing_) return;
    sock_.async_read_some(net::buffer(buf_),
                          [self = shared_from_this()](boost::system::error_code ec, size_t n) {
                            self->OnRead(ec, n);
                          });
  }

  void OnRead(boost::system::error_code ec, size_t n) {
    if (ec) {
      Close();
      return;
    }
    if (Status s = reader_.Append(buf_.data(), n); !s.ok()) {
      Fatal(s);
      return;
    }
    while (!closed_ && !closing_) {
      std::optional<std::string> raw = reader_.Next();
      if (!raw) break;
      OnFrame(*raw);
    }
    if (!reader_.status().ok()) {
      Fatal(reader_.status());
      return;
    }
    Read();
  }

  void OnFrame(const std::string& raw) {
    uint64_t id = protocol::wire::kConnectionId;
    Result<protocol::Frame> f = protocol::DecodeFrame(
        std::span(reinterpret_cast<const uint8_t*>(raw.data()), raw.size()), &id);
    if (!f.ok()) {
      if (!hello_done_) {
        Fatal(f.status().WithContext("the first frame must be a valid Hello"));
      } else {
        Send(protocol::Frame{id, ErrorFrom(f.status())});
      }
      return;
    }
    if (const auto* hello = std::get_if<protocol::Hello>(&f->body)) {
      if (hello_done_) {
        Send(protocol::Frame{f->id, ErrorFrom(Status::InvalidArgument("Hello was already sent"))});
        return;
      }
      if (hello->major != protocol::wire::kMajorVersion) {
        Fatal(Status::Incompatible("protocol version " + std::to_string(hello->major) + "." +
                                   std::to_string(hello->minor) +
                                   " is not supported: kvstashd speaks " +
                                   std::to_string(protocol::wire::kMajorVersion) + "." +
                                   std::to_string(protocol::wire::kMinorVersion)));
        return;
      }
      hello_done_ = true;
      Send(protocol::Frame{protocol::wire::kConnectionId, service_.Ack(options_.max_frame_bytes)});
      return;
    }
    if (!hello_done_) {
      Fatal(Status::InvalidArgument(std::string("expected Hello as the first frame, got ") +
                                    protocol::BodyName(f->body)));
      return;
    }
    service_.Handle(std::static_pointer_cast<Peer>(shared_from_this()), std::move(*f));
  }

  // A fatal Error frame, then the connection closes once it is written.
  void Fatal(const Status& s) {
    if (closed_ || closing_) return;
    DefaultLogger()->debug("socket: closing a connection of uid {}: {}", peer_uid_, s.ToString());
    Send(protocol::Frame{protocol::wire::kConnectionId, ErrorFrom(s, /*fatal=*/true)});
    bool writing = false;
    {
      std::lock_guard<std::mutex> lock(out_mu_);
      closing_.store(true);
      writing = writing_;
    }
    if (!writing) Close();
  }

  // On the strand, with writing_ set: writes the queue's front, then the next, until it is empty.
  void WriteNext() {
    std::unique_lock<std::mutex> lock(out_mu_);
    if (closed_.load()) return;
    if (out_.empty()) {
      writing_ = false;
      const bool close = closing_.load();
      lock.unlock();
      if (close) Close();
      return;
    }
    // A deque's elements stay where they are while others are pushed, so the buffer stays valid.
    const std::string& front = out_.front();
    lock.unlock();
    net::async_write(sock_, net::buffer(front),
                     [self = shared_from_this()](boost::system::error_code ec, size_t) {
                       {
                         std::lock_guard<std::mutex> lock(self->out_mu_);
                         if (self->closed_.load()) return;
                         self->queued_bytes_ -= self->out_.front().size();
                         self->out_.pop_front();
                       }
                       if (ec) {
                         self->Close();
                         return;
                       }
                       self->WriteNext();
                     });
  }

  // The client is gone (or misbehaved): its running requests are cancelled; their final events
  // still drain on this strand and are dropped by Send.
  void Close() {
    {
      // Under the lock, so no other thread is inside send() on this socket while it closes.
      std::lock_guard<std::mutex> lock(out_mu_);
      if (closed_.load()) return;
      closed_.store(true);
    }
    for (auto& [id, handle] : in_flight) handle->Cancel();
    boost::system::error_code ignored;
    sock_.shutdown(local::socket::shutdown_both, ignored);
    sock_.close(ignored);
    std::lock_guard<std::mutex> lock(out_mu_);
    out_.clear();
  }

  local::socket sock_;
  const SocketOptions& options_;
  const std::shared_ptr<const SocketOptions> options_holder_;
  Service& service_;
  const std::shared_ptr<std::atomic<int>> open_;
  protocol::FrameReader reader_;
  const uint32_t peer_uid_;
  std::array<char, 64 * 1024> buf_;
  std::mutex out_mu_;            // guards out_, queued_bytes_, writing_; held around send()
  std::deque<std::string> out_;  // frames the socket has not taken yet
  size_t queued_bytes_ = 0;
  bool writing_ = false;  // the strand is draining out_
  bool hello_done_ = false;
  std::atomic<bool> closing_{false};
  std::atomic<bool> closed_{false};
};

// Whether something is accepting connections at `path`.
bool SomeoneListens(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  const bool live = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  ::close(fd);
  return live;
}

}  // namespace

SocketServer::SocketServer(net::io_context& ioc, SocketOptions options, Service& service)
    : ioc_(ioc),
      options_(std::move(options)),
      shared_options_(std::make_shared<const SocketOptions>(options_)),
      service_(service),
      acceptor_(ioc) {}

SocketServer::~SocketServer() {
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  if (bound_) ::unlink(options_.path.c_str());
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock; the lock file stays (harmless)
}

Status SocketServer::Listen() {
  const std::string& path = options_.path;
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return Status::InvalidArgument(
        "--socket: path too long (" + std::to_string(path.size()) + " bytes, at most " +
        std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + "): " + path);
  }
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(path).parent_path();
  if (!dir.empty()) {
    std::error_code ec;
    if (!fs::exists(dir, ec)) {
      // Only the last component is created with 0700; missing parents get the usual mode.
      fs::create_directories(dir.parent_path(), ec);
      if (::mkdir(dir.c_str(), protocol::wire::kSocketDirMode) != 0 && errno != EEXIST) {
        return Status::FromErrno("--socket: create directory " + dir.string(), errno);
      }
    }
    struct stat st {};
    if (::stat(dir.c_str(), &st) == 0 && st.st_uid == ::geteuid() &&
        dir.filename() == std::string(protocol::wire::kSocketDirName) && (st.st_mode & 077) != 0) {
      ::chmod(dir.c_str(), protocol::wire::kSocketDirMode);  // our own kvstash dir: tighten it
    }
  }
  const std::string lock_path = path + ".lock";
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) return Status::FromErrno("--socket: open " + lock_path, errno);
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return Status::Busy("another kvstashd is listening on " + path + " (" + lock_path +
                        " is locked): stop it, or give this one another --socket");
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::Busy("--socket: " + path + " exists and is not a socket; not replacing it");
    }
    if (SomeoneListens(path)) {  // a daemon of an older kind, without the lock
      return Status::Busy("another kvstashd is listening on " + path +
                          ": stop it, or give this one another --socket");
    }
    DefaultLogger()->info("socket: replacing the stale socket {} (its daemon is gone)", path);
    if (::unlink(path.c_str()) != 0) return Status::FromErrno("--socket: unlink " + path, errno);
  }
  boost::system::error_code ec;
  acceptor_.open(local(), ec);
  // Created 0600 from the start (no window in which another uid could connect).
  const mode_t old_mask = ::umask(0177);
  if (!ec) acceptor_.bind(local::endpoint(path), ec);
  ::umask(old_mask);
  if (ec) return Status::IOError("--socket: bind " + path + ": " + ec.message());
  bound_ = true;
  ::chmod(path.c_str(), protocol::wire::kSocketMode);
  acceptor_.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return Status::IOError("--socket: listen " + path + ": " + ec.message());
  Accept();
  return Status::Ok();
}

void SocketServer::StopAccepting() {
  net::post(acceptor_.get_executor(), [this] {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
  });
}

void SocketServer::Accept() {
  acceptor_.async_accept(net::make_strand(ioc_), [this](boost::system::error_code ec,
                                                        local::socket sock) {
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) {
      ucred cred{};
      socklen_t len = sizeof(cred);
      const bool have =
          ::getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
      const uint32_t uid = have ? cred.uid : ~0u;
      const bool allowed =
          have && (uid == ::geteuid() ||
                   std::find(options_.allowed_uids.begin(), options_.allowed_uids.end(), uid) !=
                       options_.allowed_uids.end());
      if (!allowed) {
        ++refused_;
        DefaultLogger()->warn("socket: refused a connection from uid {} (pid {}): only uid {}{}",
                              uid, have ? cred.pid : -1, ::geteuid(),
                              options_.allowed_uids.empty() ? "" : " and --socket-allow-uid");
        boost::system::error_code ignored;
        sock.close(ignored);
      } else {
        std::make_shared<Connection>(std::move(sock), shared_options_, service_, open_, uid)
            ->Start();
      }
    } else {
      DefaultLogger()->warn("socket: accept: {}", ec.message());
    }
    Accept();
  });
}

}  // namespace kvstash::daemon::socket
