// The socket client (client.h). The calls waiting on a connection take turns reading it and route
// frames to calls by id; writers serialize on a mutex. A connection that breaks fails every call
// still waiting, with the reason (daemon closed the connection, or its fatal Error frame).
#include "protocol/client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>

#include "protocol/codec.h"
#include "protocol/wire_format.h"

namespace kvstash::protocol {

struct Call::State {
  // All guarded by ClientCore::mu.
  std::deque<Body> frames;
  bool final_taken = false;
  Status broken;  // the connection failed before the final frame
};

// No reader thread: the calls take turns reading the socket (leader/follower). A call waiting in
// Next() with nothing queued becomes the reader if no one else is; it reads, routes every frame
// to its call and, when one of them was its own, returns it without a thread switch. Other
// waiters sleep on `cv` until their frame is routed to them or the reader role is free again.
// This saves a hand-off between threads on every frame (issue 14's latency budget).
struct ClientCore {
  int fd = -1;
  std::string path;
  ClientOptions options;
  HelloAck ack;
  std::unique_ptr<FrameReader> reader;  // used by the reader of the moment only
  std::mutex write_mu;
  std::mutex mu;  // guards calls, every Call::State, broken and reading
  std::condition_variable cv;
  std::map<uint64_t, std::shared_ptr<Call::State>> calls;
  Status broken;
  bool reading = false;
  std::atomic<uint64_t> next_id{1};
  std::atomic<bool> closed{false};

  // The fd is closed only here, once no Call can still be reading it.
  ~ClientCore() {
    if (fd >= 0) ::close(fd);
  }

  // Wakes a reader blocked in poll() and fails what waits; the fd stays open until the last Call
  // lets go of the core.
  void Close() {
    if (closed.exchange(true)) return;
    if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
    Fail(Status::Cancelled("the client closed the connection"));
  }

  Status Send(const Frame& f) {
    const std::string bytes = EncodeFrame(f);
    if (bytes.size() - wire::kLengthPrefixBytes > ack.max_frame_bytes && ack.max_frame_bytes > 0) {
      return Status::InvalidArgument("request of " + std::to_string(bytes.size()) +
                                     " bytes exceeds the daemon's frame limit of " +
                                     std::to_string(ack.max_frame_bytes));
    }
    std::lock_guard<std::mutex> lock(write_mu);
    size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Status::FromErrno("kvstashd socket " + path + ": send", errno);
      off += static_cast<size_t>(n);
    }
    return Status::Ok();
  }

  // Routes one decoded frame (mu held). Returns false when the connection is to be considered
  // broken.
  bool Dispatch(Frame f) {
    if (f.id == wire::kConnectionId) {
      if (const auto* e = std::get_if<ErrorReply>(&f.body)) {
        FailLocked(StatusFromError(*e).WithContext("kvstashd closed the connection"));
        return !e->fatal;
      }
      return true;  // nothing else is addressed to the connection after HelloAck
    }
    auto it = calls.find(f.id);
    if (it == calls.end()) return true;  // a call already given up on
    std::shared_ptr<Call::State> s = it->second;
    if (IsFinal(f.body)) calls.erase(it);
    s->frames.push_back(std::move(f.body));
    return true;
  }

  void FailLocked(const Status& why) {
    if (broken.ok()) broken = why;
    for (auto& [id, s] : calls) {
      if (s->broken.ok()) s->broken = why;
    }
    calls.clear();
  }

  void Fail(const Status& why) {
    {
      std::lock_guard<std::mutex> lock(mu);
      FailLocked(why);
    }
    cv.notify_all();
  }

  // Called by the reader of the moment without mu: waits until the socket is readable (or
  // `deadline`), reads once and routes every complete frame. False on a timeout; the connection
  // is failed (Fail) when it broke.
  bool ReadOnce(std::chrono::steady_clock::time_point deadline) {
    if (DrainAndNotify() > 0) return true;  // frames that arrived with the HelloAck
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), INT32_MAX)));
    if (r < 0 && errno == EINTR) return true;
    if (r < 0) {
      Fail(Status::FromErrno("kvstashd socket " + path + ": poll", errno));
      return true;
    }
    if (r == 0) return false;
    char buf[65536];
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
    if (n <= 0) {
      Fail(n == 0 ? Status::IOError("kvstashd closed the connection (socket " + path + ")")
                  : Status::FromErrno("kvstashd socket " + path, errno));
      return true;
    }
    if (Status s = reader->Append(buf, static_cast<size_t>(n)); !s.ok()) {
      Fail(s.WithContext("bad frame from kvstashd"));
      return true;
    }
    DrainAndNotify();
    return true;
  }

  // Routes every complete frame the reader holds. Returns how many.
  int DrainAndNotify() {
    int routed = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      while (auto raw = reader->Next()) {
        ++routed;
        auto f = DecodeFrame(std::span(reinterpret_cast<const uint8_t*>(raw->data()), raw->size()));
        if (!f.ok()) {
          FailLocked(f.status().WithContext("bad frame from kvstashd"));
          break;
        }
        if (!Dispatch(std::move(*f))) break;
      }
      if (!reader->status().ok())
        FailLocked(reader->status().WithContext("bad frame from kvstashd"));
    }
    cv.notify_all();
    return routed;
  }
};

std::string DefaultSocketPath() {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  std::string dir = xdg != nullptr && xdg[0] != '\0'
                        ? std::string(xdg) + "/" + std::string(wire::kSocketDirName)
                        : "/tmp/kvstash-" + std::to_string(::getuid());
  return dir + "/" + std::string(wire::kSocketFileName);
}

Status StatusFromError(const ErrorReply& e) {
  const uint8_t max = static_cast<uint8_t>(StatusCode::kInternal);
  const StatusCode code =
      e.code == 0 || e.code > max ? StatusCode::kInternal : static_cast<StatusCode>(e.code);
  return Status(code, e.message);
}

Result<Body> Call::Next(std::chrono::milliseconds timeout) {
  ClientCore& c = *client_;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock<std::mutex> lock(c.mu);
  if (state_->final_taken) return Status::Cancelled("request finished");
  for (;;) {
    if (!state_->frames.empty()) {
      Body b = std::move(state_->frames.front());
      state_->frames.pop_front();
      if (IsFinal(b)) state_->final_taken = true;
      return b;
    }
    if (!state_->broken.ok()) return state_->broken;
    bool timed_out = false;
    if (!c.reading) {
      c.reading = true;
      lock.unlock();
      timed_out = !c.ReadOnce(deadline);
      lock.lock();
      c.reading = false;
      c.cv.notify_all();  // another waiter may take the reader role
    } else {
      timed_out = c.cv.wait_until(lock, deadline) == std::cv_status::timeout;
    }
    if (timed_out && state_->frames.empty() && state_->broken.ok()) {
      return Status::ResourceExhausted("no answer from kvstashd within " +
                                       std::to_string(timeout.count()) + " ms (request " +
                                       std::to_string(id_) + ")");
    }
  }
}

Status Call::Cancel() { return client_->Send(Frame{client_->next_id++, CancelRequest{id_}}); }

namespace {

Status Unreachable(const std::string& path, int err) {
  return Status::IOError("is kvstashd running? socket " + path + ": " + std::strerror(err));
}

// Reads frames synchronously (before any call exists) until one is complete.
Result<Frame> ReadOne(ClientCore& c, std::chrono::steady_clock::time_point deadline) {
  char buf[65536];
  for (;;) {
    if (auto raw = c.reader->Next()) {
      return DecodeFrame(std::span(reinterpret_cast<const uint8_t*>(raw->data()), raw->size()));
    }
    KV_RETURN_IF_ERROR(c.reader->status());
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return Status::ResourceExhausted("kvstashd did not answer Hello on " + c.path + " in time");
    }
    pollfd p{c.fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    const ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) {
      return Status::IOError("kvstashd closed the connection during Hello (socket " + c.path +
                             "): is the socket another program's, or is this uid not allowed?");
    }
    if (n < 0) return Status::FromErrno("kvstashd socket " + c.path, errno);
    KV_RETURN_IF_ERROR(c.reader->Append(buf, static_cast<size_t>(n)));
  }
}

}  // namespace

Result<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  auto core = std::make_shared<ClientCore>();
  core->options = options;
  core->path = options.socket_path.empty() ? DefaultSocketPath() : options.socket_path;
  core->reader = std::make_unique<FrameReader>(options.max_frame_bytes);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (core->path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("socket path too long (" + std::to_string(core->path.size()) +
                                   " bytes): " + core->path);
  }
  std::memcpy(addr.sun_path, core->path.c_str(), core->path.size() + 1);
  core->fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (core->fd < 0) return Status::FromErrno("socket", errno);
  if (::connect(core->fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Unreachable(core->path, errno);
  }
  const auto deadline = std::chrono::steady_clock::now() + options.connect_timeout;
  Hello hello{wire::kMajorVersion, wire::kMinorVersion, options.client_name};
  KV_RETURN_IF_ERROR(core->Send(Frame{wire::kConnectionId, hello}));
  KV_ASSIGN_OR_RETURN(Frame f, ReadOne(*core, deadline));
  if (const auto* e = std::get_if<ErrorReply>(&f.body)) return StatusFromError(*e);
  const auto* ack = std::get_if<HelloAck>(&f.body);
  if (ack == nullptr) {
    return Status::Incompatible(std::string("kvstashd answered Hello with ") + BodyName(f.body));
  }
  if (ack->major != wire::kMajorVersion) {
    return Status::Incompatible("kvstashd speaks protocol " + std::to_string(ack->major) + "." +
                                std::to_string(ack->minor) + ", this client " +
                                std::to_string(wire::kMajorVersion) + "." +
                                std::to_string(wire::kMinorVersion));
  }
  core->ack = *ack;
  return std::unique_ptr<Client>(new Client(std::move(core)));
}

Client::~Client() { impl_->Close(); }

const HelloAck& Client::server() const { return impl_->ack; }
const std::string& Client::socket_path() const { return impl_->path; }

Result<std::unique_ptr<Call>> Client::Start(Body request) {
  const uint64_t id = impl_->next_id++;
  auto state = std::make_shared<Call::State>();
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (!impl_->broken.ok()) return impl_->broken;
    impl_->calls[id] = state;
  }
  if (Status s = impl_->Send(Frame{id, std::move(request)}); !s.ok()) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->calls.erase(id);
    return s;
  }
  return std::unique_ptr<Call>(new Call(impl_, std::move(state), id));
}

Result<Body> Client::Finish(Call& call, const std::function<void(const Body&)>& on_stream) {
  for (;;) {
    Result<Body> b = call.Next(impl_->options.request_timeout);
    if (!b.ok()) {
      if (b.status().code() == StatusCode::kResourceExhausted) (void)call.Cancel();
      return b.status();
    }
    if (const auto* e = std::get_if<ErrorReply>(&*b)) return StatusFromError(*e);
    if (IsFinal(*b)) return b;
    if (on_stream) on_stream(*b);
  }
}

namespace {
template <typename T>
Result<T> Expect(Result<Body> b, const char* what) {
  if (!b.ok()) return b.status();
  if (auto* v = std::get_if<T>(&*b)) return std::move(*v);
  return Status::Internal(std::string("kvstashd answered ") + what + " with " + BodyName(*b));
}
}  // namespace

Result<GenerateResult> Client::Generate(const GenerateRequest& request,
                                        const std::function<void(const TokenChunk&)>& on_token,
                                        std::function<void(uint64_t)> call_id) {
  KV_ASSIGN_OR_RETURN(auto call, Start(request));
  if (call_id) call_id(call->id());
  GenerateResult r;
  auto done =
      Expect<Done>(Finish(*call,
                          [&](const Body& b) {
                            if (const auto* t = std::get_if<TokenChunk>(&b)) {
                              r.text += t->text;
                              r.tokens.insert(r.tokens.end(), t->tokens.begin(), t->tokens.end());
                              if (on_token) on_token(*t);
                            }
                          }),
                   "Generate");
  if (!done.ok()) return done.status();
  if (!done->text.empty() || !done->tokens.empty()) {
    TokenChunk tail{done->tokens, done->text};
    r.text += tail.text;
    r.tokens.insert(r.tokens.end(), tail.tokens.begin(), tail.tokens.end());
    if (on_token) on_token(tail);
  }
  r.usage = done->usage.value_or(Usage{});
  return r;
}

Result<Usage> Client::Prefill(const PrefillRequest& request,
                              const std::function<void(const Progress&)>& on_progress) {
  KV_ASSIGN_OR_RETURN(auto call, Start(request));
  auto done = Expect<Done>(Finish(*call,
                                  [&](const Body& b) {
                                    if (const auto* p = std::get_if<Progress>(&b)) {
                                      if (on_progress) on_progress(*p);
                                    }
                                  }),
                           "Prefill");
  if (!done.ok()) return done.status();
  return done->usage.value_or(Usage{});
}

Result<std::vector<int32_t>> Client::Tokenize(const TokenizeRequest& request) {
  KV_ASSIGN_OR_RETURN(auto call, Start(request));
  KV_ASSIGN_OR_RETURN(TokenizeResult r, Expect<TokenizeResult>(Finish(*call, nullptr), "Tokenize"));
  return std::move(r.tokens);
}

Result<std::string> Client::Detokenize(const std::vector<int32_t>& tokens) {
  KV_ASSIGN_OR_RETURN(auto call, Start(DetokenizeRequest{tokens}));
  KV_ASSIGN_OR_RETURN(DetokenizeResult r,
                      Expect<DetokenizeResult>(Finish(*call, nullptr), "Detokenize"));
  return std::move(r.text);
}

Result<Usage> Client::SessionSave(const SessionSaveRequest& request) {
  KV_ASSIGN_OR_RETURN(auto call, Start(request));
  KV_ASSIGN_OR_RETURN(Done d, Expect<Done>(Finish(*call, nullptr), "SessionSave"));
  return d.usage.value_or(Usage{});
}

Result<Done> Client::SessionRestore(const SessionRestoreRequest& request) {
  KV_ASSIGN_OR_RETURN(auto call, Start(request));
  return Expect<Done>(Finish(*call, nullptr), "SessionRestore");
}

Result<std::vector<SessionInfo>> Client::SessionList() {
  KV_ASSIGN_OR_RETURN(auto call, Start(SessionListRequest{}));
  KV_ASSIGN_OR_RETURN(SessionListResult r,
                      Expect<SessionListResult>(Finish(*call, nullptr), "SessionList"));
  return std::move(r.sessions);
}

Status Client::SessionDelete(const std::string& name) {
  KV_ASSIGN_OR_RETURN(auto call, Start(SessionDeleteRequest{name}));
  return Expect<Done>(Finish(*call, nullptr), "SessionDelete").status();
}

Result<StatsResult> Client::Stats() {
  KV_ASSIGN_OR_RETURN(auto call, Start(StatsRequest{}));
  return Expect<StatsResult>(Finish(*call, nullptr), "Stats");
}

Result<std::string> Client::Health() {
  KV_ASSIGN_OR_RETURN(auto call, Start(HealthRequest{}));
  KV_ASSIGN_OR_RETURN(HealthResult r, Expect<HealthResult>(Finish(*call, nullptr), "Health"));
  return std::move(r.status);
}

Status Client::Cancel(uint64_t id) {
  return impl_->Send(Frame{impl_->next_id++, CancelRequest{id}});
}

}  // namespace kvstash::protocol
