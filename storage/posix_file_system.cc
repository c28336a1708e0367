// POSIX implementation of the file layer, plus the synchronous IoQueue every FileSystem gets by
// default. All descriptors are O_CLOEXEC so a forked child (the crash test) never inherits them.
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <deque>
#include <filesystem>
#include <utility>

#include "storage/file.h"
#include "storage/uring/io_uring_queue.h"

namespace kvstash::storage {

Result<size_t> File::ReadAt(uint64_t offset, std::span<std::byte> dst) {
  iovec iov{dst.data(), dst.size()};
  return ReadV(offset, {&iov, 1});
}

Status File::WriteAt(uint64_t offset, std::span<const std::byte> src) {
  iovec iov{const_cast<std::byte*>(src.data()), src.size()};
  return WriteV(offset, {&iov, 1});
}

namespace {

std::string Ctx(std::string_view what, const std::string& path) {
  std::string s(what);
  s += ' ';
  s += path;
  return s;
}

std::string Ctx(std::string_view what, const std::string& path, uint64_t offset) {
  return Ctx(what, path) + " offset " + std::to_string(offset);
}

// Advances `iov` (a private copy) past `n` transferred bytes.
void Consume(std::vector<iovec>& iov, size_t& first, size_t n) {
  while (n > 0 && first < iov.size()) {
    if (n >= iov[first].iov_len) {
      n -= iov[first].iov_len;
      ++first;
    } else {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + n;
      iov[first].iov_len -= n;
      n = 0;
    }
  }
}

class PosixFile final : public File {
 public:
  PosixFile(std::string path, int fd, bool direct)
      : path_(std::move(path)), fd_(fd), direct_(direct) {}
  ~PosixFile() override { ::close(fd_); }

  const std::string& path() const override { return path_; }
  bool direct() const override { return direct_; }
  int fd() const override { return fd_; }

  Result<size_t> ReadV(uint64_t offset, std::span<const iovec> iov_in) override {
    std::vector<iovec> iov(iov_in.begin(), iov_in.end());
    size_t first = 0, total = 0;
    while (first < iov.size()) {
      ssize_t n = ::preadv(fd_, iov.data() + first, static_cast<int>(iov.size() - first),
                           static_cast<off_t>(offset + total));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(Ctx("read", path_, offset + total), errno);
      }
      if (n == 0) break;  // end of file
      total += static_cast<size_t>(n);
      Consume(iov, first, static_cast<size_t>(n));
    }
    return total;
  }

  Status WriteV(uint64_t offset, std::span<const iovec> iov_in) override {
    std::vector<iovec> iov(iov_in.begin(), iov_in.end());
    size_t first = 0, total = 0;
    while (first < iov.size()) {
      ssize_t n = ::pwritev(fd_, iov.data() + first, static_cast<int>(iov.size() - first),
                            static_cast<off_t>(offset + total));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(Ctx("write", path_, offset + total), errno);
      }
      if (n == 0) return Status::IOError(Ctx("write returned 0 bytes", path_, offset + total));
      total += static_cast<size_t>(n);
      Consume(iov, first, static_cast<size_t>(n));
    }
    return Status::Ok();
  }

  Status Sync() override {
    if (::fdatasync(fd_) != 0) return Status::FromErrno(Ctx("fdatasync", path_), errno);
    return Status::Ok();
  }

  Status Allocate(uint64_t offset, uint64_t length) override {
    int rc;
    do {
      rc = ::fallocate(fd_, 0, static_cast<off_t>(offset), static_cast<off_t>(length));
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      // Without fallocate the space is claimed by the writes themselves.
      if (errno == EOPNOTSUPP || errno == ENOSYS) return Status::Ok();
      return Status::FromErrno(Ctx("fallocate", path_, offset), errno);
    }
    return Status::Ok();
  }

  Status Truncate(uint64_t size_bytes) override {
    if (::ftruncate(fd_, static_cast<off_t>(size_bytes)) != 0) {
      return Status::FromErrno(Ctx("ftruncate", path_), errno);
    }
    return Status::Ok();
  }

  Result<uint64_t> Size() override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Status::FromErrno(Ctx("fstat", path_), errno);
    return static_cast<uint64_t>(st.st_size);
  }

 private:
  std::string path_;
  int fd_;
  bool direct_;
};

class PosixFileLock final : public FileLock {
 public:
  explicit PosixFileLock(int fd) : fd_(fd) {}
  ~PosixFileLock() override {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }

 private:
  int fd_;
};

class PosixFileSystem final : public FileSystem {
 public:
  explicit PosixFileSystem(bool use_io_uring) : use_io_uring_(use_io_uring) {}

  Result<std::unique_ptr<File>> OpenFile(const std::string& path,
                                         const OpenOptions& options) override {
    int flags = O_CLOEXEC | (options.read_only ? O_RDONLY : O_RDWR);
    if (options.create) flags |= O_CREAT;
    if (options.direct) flags |= O_DIRECT;
    int fd;
    do {
      fd = ::open(path.c_str(), flags, 0644);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      if (options.direct && errno == EINVAL) {
        return Status::InvalidArgument(Ctx("O_DIRECT not supported for", path));
      }
      return Status::FromErrno(Ctx("open", path), errno);
    }
    return std::unique_ptr<File>(new PosixFile(path, fd, options.direct));
  }

  Status CreateDirIfMissing(const std::string& path) override {
    if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
      return Status::FromErrno(Ctx("mkdir", path), errno);
    }
    return Status::Ok();
  }

  Result<std::vector<std::string>> ListDir(const std::string& path) override {
    DIR* dir = ::opendir(path.c_str());
    if (dir == nullptr) return Status::FromErrno(Ctx("opendir", path), errno);
    std::vector<std::string> names;
    while (dirent* e = ::readdir(dir)) {
      std::string_view n = e->d_name;
      if (n != "." && n != "..") names.emplace_back(n);
    }
    ::closedir(dir);
    return names;
  }

  Result<bool> Exists(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0) return true;
    if (errno == ENOENT) return false;
    return Status::FromErrno(Ctx("stat", path), errno);
  }

  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return Status::FromErrno(Ctx("unlink", path), errno);
    return Status::Ok();
  }

  Status RemoveAll(const std::string& path) override {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
    if (ec) return Status::IOError(Ctx("remove", path) + ": " + ec.message());
    return Status::Ok();
  }

  Status Rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return Status::FromErrno(Ctx("rename", from) + " -> " + to, errno);
    }
    return Status::Ok();
  }

  Status SyncDir(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno(Ctx("open dir", path), errno);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return Status::FromErrno(Ctx("fsync dir", path), err);
    return Status::Ok();
  }

  Result<std::unique_ptr<FileLock>> LockFile(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return Status::FromErrno(Ctx("open lock file", path), errno);
    // flock locks belong to the open file description, so a second open in this same process
    // conflicts too (POSIX record locks would not).
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK) {
        return Status::Busy(path + " is locked: the cache directory is in use by another store");
      }
      return Status::FromErrno(Ctx("flock", path), err);
    }
    return std::unique_ptr<FileLock>(new PosixFileLock(fd));
  }

  Result<std::unique_ptr<IoQueue>> NewIoQueue(unsigned depth) override {
    if (use_io_uring_) {
      auto q = NewIoUringQueue(depth);
      if (q.ok()) return std::move(q).value();
      // io_uring may be disabled (seccomp, sysctl); the synchronous queue still works.
    }
    return NewSyncIoQueue(depth);
  }

 private:
  bool use_io_uring_;
};

class SyncIoQueue final : public IoQueue {
 public:
  explicit SyncIoQueue(unsigned depth) : depth_(depth) {}
  unsigned depth() const override { return depth_; }
  unsigned in_flight() const override { return static_cast<unsigned>(done_.size()); }
  std::string_view name() const override { return "sync"; }

  Status Submit(std::span<const IoOp> ops) override {
    if (done_.size() + ops.size() > depth_) return Status::Internal("IoQueue depth exceeded");
    for (const IoOp& op : ops) done_.push_back({op.tag, RunIoOpSynchronously(op)});
    return Status::Ok();
  }

  Status Reap(unsigned min_completions, std::vector<IoCompletion>* out) override {
    out->insert(out->end(), done_.begin(), done_.end());
    done_.clear();
    return Status::Ok();
  }

 private:
  unsigned depth_;
  std::deque<IoCompletion> done_;
};

}  // namespace

int64_t RunIoOpSynchronously(const IoOp& op) {
  auto to_errno = [](const Status& s) -> int64_t {
    switch (s.code()) {
      case StatusCode::kResourceExhausted:
        return -ENOSPC;
      case StatusCode::kNotFound:
        return -ENOENT;
      case StatusCode::kInvalidArgument:
        return -EINVAL;
      default:
        return -EIO;
    }
  };
  switch (op.kind) {
    case IoOp::Kind::kRead: {
      auto r = op.file->ReadV(op.offset, {op.iov, op.iov_count});
      return r.ok() ? static_cast<int64_t>(*r) : to_errno(r.status());
    }
    case IoOp::Kind::kWrite: {
      Status s = op.file->WriteV(op.offset, {op.iov, op.iov_count});
      if (!s.ok()) return to_errno(s);
      int64_t total = 0;
      for (uint32_t i = 0; i < op.iov_count; ++i) total += static_cast<int64_t>(op.iov[i].iov_len);
      return total;
    }
    case IoOp::Kind::kSync: {
      Status s = op.file->Sync();
      return s.ok() ? 0 : to_errno(s);
    }
  }
  return -EINVAL;
}

std::unique_ptr<IoQueue> NewSyncIoQueue(unsigned depth) {
  return std::make_unique<SyncIoQueue>(depth);
}

Result<std::unique_ptr<IoQueue>> FileSystem::NewIoQueue(unsigned depth) {
  return NewSyncIoQueue(depth);
}

std::shared_ptr<FileSystem> FileSystem::Posix(bool use_io_uring) {
  return std::make_shared<PosixFileSystem>(use_io_uring);
}

}  // namespace kvstash::storage
