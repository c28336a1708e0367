#include "storage/testing/fault_injection_file_system.h"

#include <cerrno>
#include <cstring>
#include <deque>
#include <unordered_map>

#include "storage/aligned_buffer.h"

namespace kvstash::storage {
namespace {

std::string Parent(const std::string& path) {
  auto pos = path.find_last_of('/');
  return pos == std::string::npos ? std::string(".") : path.substr(0, pos);
}

Status Injected(std::string_view what, const std::string& path, int err) {
  return Status::FromErrno(std::string(what) + " " + path + " (injected)", err);
}

class FaultFile final : public File {
 public:
  FaultFile(FaultInjectionFileSystem* fs, std::unique_ptr<File> base)
      : fs_(fs), base_(std::move(base)) {}

  File* base() { return base_.get(); }
  const std::string& path() const override { return base_->path(); }
  bool direct() const override { return base_->direct(); }
  // No descriptor: a foreign IoQueue must come back through the calls below.
  int fd() const override { return -1; }

  Result<size_t> ReadV(uint64_t offset, std::span<const iovec> iov) override {
    if (int err = fs_->Check(FaultOp::kRead, path())) return Injected("read", path(), err);
    return base_->ReadV(offset, iov);
  }
  Status WriteV(uint64_t offset, std::span<const iovec> iov) override {
    if (int err = fs_->Check(FaultOp::kWrite, path())) return Injected("write", path(), err);
    KV_RETURN_IF_ERROR(base_->WriteV(offset, iov));
    uint64_t n = 0;
    for (const iovec& v : iov) n += v.iov_len;
    fs_->RecordWrite(path(), offset, n);
    return Status::Ok();
  }
  Status Sync() override {
    if (int err = fs_->Check(FaultOp::kSync, path())) return Injected("fdatasync", path(), err);
    KV_RETURN_IF_ERROR(base_->Sync());
    fs_->RecordSync(path());
    return Status::Ok();
  }
  Status Allocate(uint64_t offset, uint64_t length) override {
    if (int err = fs_->Check(FaultOp::kAllocate, path())) return Injected("fallocate", path(), err);
    return base_->Allocate(offset, length);
  }
  Status Truncate(uint64_t size_bytes) override {
    if (int err = fs_->Check(FaultOp::kTruncate, path())) return Injected("ftruncate", path(), err);
    return base_->Truncate(size_bytes);
  }
  Result<uint64_t> Size() override { return base_->Size(); }

 private:
  FaultInjectionFileSystem* fs_;
  std::unique_ptr<File> base_;
};

// Forwards to the base queue with the base files (so io_uring still does the I/O), except for
// operations a rule fails, which complete with -errno without touching the disk.
class FaultIoQueue final : public IoQueue {
 public:
  FaultIoQueue(FaultInjectionFileSystem* fs, std::unique_ptr<IoQueue> base)
      : fs_(fs), base_(std::move(base)) {}

  unsigned depth() const override { return base_->depth(); }
  unsigned in_flight() const override {
    return base_->in_flight() + static_cast<unsigned>(ready_.size());
  }
  std::string_view name() const override { return base_->name(); }

  Status Submit(std::span<const IoOp> ops) override {
    if (in_flight() + ops.size() > depth()) return Status::Internal("IoQueue depth exceeded");
    std::vector<IoOp> forward;
    for (const IoOp& op : ops) {
      auto* ff = dynamic_cast<FaultFile*>(op.file);
      if (ff == nullptr) {
        ready_.push_back({op.tag, RunIoOpSynchronously(op)});
        continue;
      }
      const FaultOp fop = op.kind == IoOp::Kind::kRead    ? FaultOp::kRead
                          : op.kind == IoOp::Kind::kWrite ? FaultOp::kWrite
                                                          : FaultOp::kSync;
      if (int err = fs_->Check(fop, ff->path())) {
        ready_.push_back({op.tag, -static_cast<int64_t>(err)});
        continue;
      }
      const uint64_t id = next_id_++;
      uint64_t len = 0;
      for (uint32_t i = 0; i < op.iov_count; ++i) len += op.iov[i].iov_len;
      outstanding_[id] = {op.tag, op.kind, ff->path(), op.offset, len};
      IoOp b = op;
      b.file = ff->base();
      b.tag = id;
      forward.push_back(b);
    }
    if (!forward.empty()) {
      Status s = base_->Submit(forward);
      if (!s.ok()) {
        for (const IoOp& b : forward) outstanding_.erase(b.tag);
        return s;
      }
    }
    return Status::Ok();
  }

  Status Reap(unsigned min_completions, std::vector<IoCompletion>* out) override {
    unsigned got = static_cast<unsigned>(ready_.size());
    out->insert(out->end(), ready_.begin(), ready_.end());
    ready_.clear();
    std::vector<IoCompletion> base_done;
    KV_RETURN_IF_ERROR(base_->Reap(min_completions > got ? min_completions - got : 0, &base_done));
    for (const IoCompletion& c : base_done) {
      auto it = outstanding_.find(c.tag);
      if (it == outstanding_.end()) continue;
      const Op& op = it->second;
      if (op.kind == IoOp::Kind::kWrite && c.result > 0) {
        fs_->RecordWrite(op.path, op.offset, static_cast<uint64_t>(c.result));
      } else if (op.kind == IoOp::Kind::kSync && c.result == 0) {
        fs_->RecordSync(op.path);
      }
      out->push_back({op.tag, c.result});
      outstanding_.erase(it);
    }
    return Status::Ok();
  }

 private:
  struct Op {
    uint64_t tag;
    IoOp::Kind kind;
    std::string path;
    uint64_t offset;
    uint64_t length;
  };
  FaultInjectionFileSystem* fs_;
  std::unique_ptr<IoQueue> base_;
  std::deque<IoCompletion> ready_;
  std::unordered_map<uint64_t, Op> outstanding_;
  uint64_t next_id_ = 1;
};

}  // namespace

FaultInjectionFileSystem::FaultInjectionFileSystem(std::shared_ptr<FileSystem> base)
    : base_(std::move(base)) {}

void FaultInjectionFileSystem::InjectFault(FaultOp op, int error, int count,
                                           std::string path_substring) {
  std::lock_guard lock(mu_);
  rules_.push_back({op, error, count, std::move(path_substring)});
}

void FaultInjectionFileSystem::ClearFaults() {
  std::lock_guard lock(mu_);
  rules_.clear();
}

uint64_t FaultInjectionFileSystem::injected_faults() const {
  std::lock_guard lock(mu_);
  return injected_;
}

int FaultInjectionFileSystem::Check(FaultOp op, const std::string& path) {
  std::lock_guard lock(mu_);
  for (auto it = rules_.begin(); it != rules_.end(); ++it) {
    if (it->op != op || path.find(it->path_substring) == std::string::npos) continue;
    const int err = it->error;
    if (it->remaining > 0 && --it->remaining == 0) rules_.erase(it);
    ++injected_;
    return err;
  }
  return 0;
}

void FaultInjectionFileSystem::RecordWrite(const std::string& path, uint64_t offset,
                                           uint64_t length) {
  std::lock_guard lock(mu_);
  unsynced_[path].emplace_back(offset, length);
}

void FaultInjectionFileSystem::RecordSync(const std::string& path) {
  std::lock_guard lock(mu_);
  unsynced_.erase(path);
}

uint64_t FaultInjectionFileSystem::unsynced_bytes() const {
  std::lock_guard lock(mu_);
  uint64_t n = 0;
  for (const auto& [path, ranges] : unsynced_) {
    for (const auto& r : ranges) n += r.second;
  }
  return n;
}

Status FaultInjectionFileSystem::DropUnsyncedWrites() {
  std::map<std::string, std::vector<std::pair<uint64_t, uint64_t>>> unsynced;
  std::set<std::string> creates;
  {
    std::lock_guard lock(mu_);
    unsynced.swap(unsynced_);
    creates.swap(unsynced_creates_);
  }
  for (const auto& [path, ranges] : unsynced) {
    if (creates.contains(path)) continue;
    auto f = base_->OpenFile(path, {.create = false, .read_only = false, .direct = false});
    if (!f.ok()) {
      if (f.status().code() == StatusCode::kNotFound) continue;
      return f.status();
    }
    for (const auto& [offset, length] : ranges) {
      std::vector<std::byte> zeros(length);
      KV_RETURN_IF_ERROR((*f)->WriteAt(offset, zeros));
    }
    KV_RETURN_IF_ERROR((*f)->Sync());
  }
  for (const std::string& path : creates) {
    Status s = base_->RemoveFile(path);
    if (!s.ok() && s.code() != StatusCode::kNotFound) return s;
  }
  return Status::Ok();
}

Result<std::unique_ptr<File>> FaultInjectionFileSystem::OpenFile(const std::string& path,
                                                                 const OpenOptions& options) {
  if (int err = Check(FaultOp::kOpen, path)) return Injected("open", path, err);
  if (options.direct) {
    if (int err = Check(FaultOp::kOpenDirect, path)) {
      if (err == EINVAL) {
        return Status::InvalidArgument("O_DIRECT not supported for " + path + " (injected)");
      }
      return Injected("open", path, err);
    }
  }
  bool existed = true;
  if (options.create) {
    KV_ASSIGN_OR_RETURN(existed, base_->Exists(path));
  }
  KV_ASSIGN_OR_RETURN(std::unique_ptr<File> f, base_->OpenFile(path, options));
  if (!existed) {
    std::lock_guard lock(mu_);
    unsynced_creates_.insert(path);
  }
  return std::unique_ptr<File>(new FaultFile(this, std::move(f)));
}

Status FaultInjectionFileSystem::CreateDirIfMissing(const std::string& path) {
  return base_->CreateDirIfMissing(path);
}

Result<std::vector<std::string>> FaultInjectionFileSystem::ListDir(const std::string& path) {
  return base_->ListDir(path);
}

Result<bool> FaultInjectionFileSystem::Exists(const std::string& path) {
  return base_->Exists(path);
}

Status FaultInjectionFileSystem::RemoveFile(const std::string& path) {
  if (int err = Check(FaultOp::kRemove, path)) return Injected("unlink", path, err);
  KV_RETURN_IF_ERROR(base_->RemoveFile(path));
  std::lock_guard lock(mu_);
  unsynced_.erase(path);
  unsynced_creates_.erase(path);
  return Status::Ok();
}

Status FaultInjectionFileSystem::RemoveAll(const std::string& path) {
  return base_->RemoveAll(path);
}

Status FaultInjectionFileSystem::Rename(const std::string& from, const std::string& to) {
  return base_->Rename(from, to);
}

Status FaultInjectionFileSystem::SyncDir(const std::string& path) {
  if (int err = Check(FaultOp::kSyncDir, path)) return Injected("fsync dir", path, err);
  KV_RETURN_IF_ERROR(base_->SyncDir(path));
  std::lock_guard lock(mu_);
  for (auto it = unsynced_creates_.begin(); it != unsynced_creates_.end();) {
    it = Parent(*it) == path ? unsynced_creates_.erase(it) : std::next(it);
  }
  return Status::Ok();
}

Result<std::unique_ptr<FileLock>> FaultInjectionFileSystem::LockFile(const std::string& path) {
  if (int err = Check(FaultOp::kLock, path)) return Injected("flock", path, err);
  return base_->LockFile(path);
}

Result<std::unique_ptr<IoQueue>> FaultInjectionFileSystem::NewIoQueue(unsigned depth) {
  KV_ASSIGN_OR_RETURN(std::unique_ptr<IoQueue> base, base_->NewIoQueue(depth));
  return std::unique_ptr<IoQueue>(new FaultIoQueue(this, std::move(base)));
}

}  // namespace kvstash::storage
