// Helpers shared by the storage tests, the crash-test child and the benchmark: deterministic keys,
// headers and payloads (so a reader can check every byte without remembering what was written),
// and scratch directories on a real filesystem and on tmpfs. Header-only, no GoogleTest.
// Thread-safe (pure functions; a TempDir is owned by one test).
#pragma once

#include <sys/statfs.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "storage/block_key.h"

namespace kvstash::storage::testing {

inline uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The i-th test key of a run; `salt` separates runs.
inline BlockKey KeyFor(uint64_t i, uint64_t salt = 0) {
  uint64_t s = i * 0x100000001B3ull ^ salt;
  return {SplitMix64(s), SplitMix64(s)};
}

inline void FillPayload(const BlockKey& key, std::span<std::byte> out) {
  uint64_t s = key.hi ^ (key.lo << 1);
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    uint64_t v = SplitMix64(s);
    std::memcpy(out.data() + i, &v, 8);
  }
  uint64_t v = SplitMix64(s);
  std::memcpy(out.data() + i, &v, out.size() - i);
}

inline std::vector<std::byte> MakePayload(const BlockKey& key, size_t size_bytes) {
  std::vector<std::byte> p(size_bytes);
  FillPayload(key, p);
  return p;
}

inline bool PayloadMatches(const BlockKey& key, std::span<const std::byte> got) {
  std::vector<std::byte> want = MakePayload(key, got.size());
  return std::memcmp(want.data(), got.data(), got.size()) == 0;
}

inline BlockHeader MakeHeader(const BlockKey& key, size_t n_tokens = 16) {
  BlockHeader h;
  h.parent = {key.lo, key.hi};
  h.layout_tag = key.hi ^ 0x5A5A;
  uint64_t s = key.lo;
  for (size_t i = 0; i < n_tokens; ++i) {
    h.token_ids.push_back(static_cast<int32_t>(SplitMix64(s) & 0x7fffffff));
  }
  return h;
}

// A directory removed (with its contents) on destruction.
class TempDir {
 public:
  TempDir(const std::string& root, const std::string& name) {
    std::filesystem::create_directories(root);
    std::string templ = root + "/" + name + ".XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) != nullptr) path_ = buf.data();
  }
  ~TempDir() {
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A scratch root on a real (block-device) filesystem: $KVSTASH_TEST_TMPDIR, else beside the
// build's binaries, else the working directory.
inline std::string RealDiskTestRoot() {
  if (const char* env = std::getenv("KVSTASH_TEST_TMPDIR")) return env;
#ifdef KVSTASH_BIN_DIR
  return std::string(KVSTASH_BIN_DIR) + "/../storage-test-tmp";
#else
  return (std::filesystem::current_path() / "storage-test-tmp").string();
#endif
}

inline bool IsTmpfs(const std::string& path) {
  struct statfs st;
  return ::statfs(path.c_str(), &st) == 0 && st.f_type == 0x01021994;  // TMPFS_MAGIC
}

// /dev/shm when it is tmpfs (the filesystem without, or with only recent, O_DIRECT).
inline std::optional<std::string> TmpfsTestRoot() {
  if (IsTmpfs("/dev/shm") && ::access("/dev/shm", W_OK) == 0) return "/dev/shm/kvstash-test";
  return std::nullopt;
}

}  // namespace kvstash::storage::testing
