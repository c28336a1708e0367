// The file layer: every byte the block store reads or writes outside RocksDB goes through these
// interfaces, so tests can substitute a fault-injecting implementation
// (storage/testing/fault_injection_file_system.h) that fails chosen calls or drops unsynced data.
//
// FileSystem and File objects are thread-safe unless noted. An IoQueue is a batched asynchronous
// I/O channel (io_uring in production, see storage/uring/) and is NOT thread-safe: one thread at a
// time submits and reaps on it. Errors are Status values carrying the path and offset; ENOSPC and
// EDQUOT map to ResourceExhausted.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace kvstash::storage {

struct OpenOptions {
  bool create = false;     // create the file when missing
  bool read_only = false;  // open O_RDONLY (otherwise O_RDWR)
  bool direct = false;     // O_DIRECT; a filesystem without it fails with InvalidArgument
};

class File {
 public:
  virtual ~File() = default;

  virtual const std::string& path() const = 0;
  virtual bool direct() const = 0;
  // The OS descriptor, for IoQueue implementations that hand it to the kernel; -1 when the file
  // is not backed by one (such queues then fall back to the synchronous calls below).
  virtual int fd() const { return -1; }

  // Reads into the iovecs starting at `offset`. Returns the bytes read, short only at end of
  // file. With direct() every iovec base, length and the offset must be 4 KiB aligned.
  virtual Result<size_t> ReadV(uint64_t offset, std::span<const iovec> iov) = 0;
  // Writes all of the iovecs at `offset` or fails.
  virtual Status WriteV(uint64_t offset, std::span<const iovec> iov) = 0;
  // Makes written data and the metadata needed to read it durable (fdatasync).
  virtual Status Sync() = 0;
  // Reserves [offset, offset + length) and extends the file over it, so that writes there cannot
  // fail for lack of space. Default: does nothing and succeeds.
  virtual Status Allocate(uint64_t offset, uint64_t length) { return Status::Ok(); }
  virtual Status Truncate(uint64_t size_bytes) = 0;
  virtual Result<uint64_t> Size() = 0;

  // Single-buffer conveniences over ReadV/WriteV.
  Result<size_t> ReadAt(uint64_t offset, std::span<std::byte> dst);
  Status WriteAt(uint64_t offset, std::span<const std::byte> src);
};

// Released (unlocked) on destruction.
class FileLock {
 public:
  virtual ~FileLock() = default;
};

// One operation for an IoQueue. The file, the iovec array and the buffers are owned by the caller
// and must stay valid until the operation's completion has been reaped.
struct IoOp {
  enum class Kind : uint8_t { kRead, kWrite, kSync };
  Kind kind = Kind::kRead;
  File* file = nullptr;
  uint64_t offset = 0;         // read/write
  const iovec* iov = nullptr;  // read/write
  uint32_t iov_count = 0;      // read/write
  uint64_t tag = 0;            // returned in the completion
};

struct IoCompletion {
  uint64_t tag = 0;
  int64_t result = 0;  // bytes transferred (read/write), 0 (sync), or -errno
};

class IoQueue {
 public:
  virtual ~IoQueue() = default;
  // The most operations that may be in flight at once.
  virtual unsigned depth() const = 0;
  virtual unsigned in_flight() const = 0;
  // "io_uring" or "sync".
  virtual std::string_view name() const = 0;
  // Starts the operations. Requires in_flight() + ops.size() <= depth(). A failure here means
  // none of `ops` was started.
  virtual Status Submit(std::span<const IoOp> ops) = 0;
  // Waits until at least min(min_completions, in_flight()) operations have completed, then
  // appends every available completion to `out`.
  virtual Status Reap(unsigned min_completions, std::vector<IoCompletion>* out) = 0;
};

// Performs one operation with the File's synchronous calls; returns what its completion would
// carry (bytes transferred, 0, or -errno). IoQueues use it for files without a descriptor.
int64_t RunIoOpSynchronously(const IoOp& op);

// An IoQueue that performs each operation synchronously inside Submit (File::ReadV/WriteV/Sync):
// the working default where no asynchronous interface exists.
std::unique_ptr<IoQueue> NewSyncIoQueue(unsigned depth);

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  virtual Result<std::unique_ptr<File>> OpenFile(const std::string& path,
                                                 const OpenOptions& options) = 0;
  virtual Status CreateDirIfMissing(const std::string& path) = 0;
  // Names of the directory's entries (without "." and "..").
  virtual Result<std::vector<std::string>> ListDir(const std::string& path) = 0;
  virtual Result<bool> Exists(const std::string& path) = 0;
  virtual Status RemoveFile(const std::string& path) = 0;
  // Removes a file or a directory tree; succeeds when nothing is there.
  virtual Status RemoveAll(const std::string& path) = 0;
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  // Makes the directory's entries (created, removed, renamed files) durable.
  virtual Status SyncDir(const std::string& path) = 0;
  // An exclusive advisory lock on `path` (created if missing), also exclusive within this
  // process. Busy when someone else holds it.
  virtual Result<std::unique_ptr<FileLock>> LockFile(const std::string& path) = 0;
  // A new batched I/O queue for this file system's files. Default: NewSyncIoQueue.
  virtual Result<std::unique_ptr<IoQueue>> NewIoQueue(unsigned depth);

  // The POSIX file system. With `use_io_uring`, NewIoQueue returns an io_uring queue when the
  // kernel allows one and the synchronous queue otherwise.
  static std::shared_ptr<FileSystem> Posix(bool use_io_uring = true);
};

}  // namespace kvstash::storage
