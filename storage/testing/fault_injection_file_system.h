// FaultInjectionFileSystem: a FileSystem wrapper for tests that fails chosen calls and simulates
// power loss (LevelDB's fault_injection_test idea, for segment files and the lock file; RocksDB
// keeps its own files).
//
//  - InjectFault(op, errno, count, path_substring): the next `count` calls of `op` on a path
//    containing the substring fail with that errno (count < 0: until ClearFaults). Faults reach
//    the asynchronous queue too: an injected read or write completes with -errno.
//    FaultOp::kOpenDirect makes O_DIRECT opens fail as on a filesystem without it.
//  - DropUnsyncedWrites(): what a power cut would do: every range written since the file's last
//    successful sync is overwritten with zeros, and files created since their directory's last
//    sync are removed.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "storage/file.h"

namespace kvstash::storage {

enum class FaultOp : uint8_t {
  kOpen,
  kOpenDirect,
  kRead,
  kWrite,
  kSync,
  kAllocate,
  kTruncate,
  kRemove,
  kSyncDir,
  kLock,
};

class FaultInjectionFileSystem final : public FileSystem {
 public:
  explicit FaultInjectionFileSystem(std::shared_ptr<FileSystem> base = FileSystem::Posix());

  void InjectFault(FaultOp op, int error, int count = -1, std::string path_substring = {});
  void ClearFaults();
  // Calls failed by injection so far.
  uint64_t injected_faults() const;
  Status DropUnsyncedWrites();
  uint64_t unsynced_bytes() const;

  Result<std::unique_ptr<File>> OpenFile(const std::string& path,
                                         const OpenOptions& options) override;
  Status CreateDirIfMissing(const std::string& path) override;
  Result<std::vector<std::string>> ListDir(const std::string& path) override;
  Result<bool> Exists(const std::string& path) override;
  Status RemoveFile(const std::string& path) override;
  Status RemoveAll(const std::string& path) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status SyncDir(const std::string& path) override;
  Result<std::unique_ptr<FileLock>> LockFile(const std::string& path) override;
  Result<std::unique_ptr<IoQueue>> NewIoQueue(unsigned depth) override;

  // Used by the wrapped files and queues.
  int Check(FaultOp op, const std::string& path);
  void RecordWrite(const std::string& path, uint64_t offset, uint64_t length);
  void RecordSync(const std::string& path);

 private:
  struct Rule {
    FaultOp op;
    int error;
    int remaining;
    std::string path_substring;
  };

  std::shared_ptr<FileSystem> base_;
  mutable std::mutex mu_;
  std::vector<Rule> rules_;
  uint64_t injected_ = 0;
  std::map<std::string, std::vector<std::pair<uint64_t, uint64_t>>> unsynced_;
  std::set<std::string> unsynced_creates_;
};

}  // namespace kvstash::storage
