// GGUF reader (versions 2 and 3) over an mmapped file or a caller-owned byte span.
//
// Open() validates everything before returning: header, every metadata key/value (types, string
// and array lengths against the file size), every tensor info (name, rank, dims, type, offset,
// alignment, extent inside the data section, no overlaps). Afterwards accessors never read out of
// bounds. Version 1 files are refused with a clear message. Immutable after Open(): thread-safe
// for concurrent readers. Tensor data pointers stay valid for the lifetime of the GgufFile.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "base/status.h"
#include "engine/gguf/ggml_types.h"

namespace kvstash::engine {

// GGUF metadata value types (file format numbering).
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// Bytes of one scalar element of a metadata type; 0 for string and array.
size_t GgufScalarSize(GgufValueType t);

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint32_t kGgufDefaultAlignment = 32;

// A metadata value. Scalars are widened: integers to int64/uint64, floats to double. Arrays keep
// their element type; string arrays hold views into the file.
struct GgufArray {
  GgufValueType elem_type = GgufValueType::kUint8;
  uint64_t count = 0;
  const uint8_t* data = nullptr;          // packed elements for scalar types
  std::vector<std::string_view> strings;  // for string arrays
};

struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  std::variant<uint64_t, int64_t, double, bool, std::string_view, GgufArray> v;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ne[0] is the innermost (row length), as in ggml
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;  // relative to the data section
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;
  int64_t n_elements() const {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }
};

// Where tensor bytes live once a file is open.
enum class WeightMemory : uint8_t {
  kMmap,  // the file is mapped read-only: instant start, pages shared with the page cache
  kRam,   // read into anonymous memory backed by transparent huge pages: slower start (the file
          // is read once), but weight streaming in decode is ~1.4x faster on the CPU backend
          // (2 MiB pages keep the hardware prefetchers and the TLB streaming; see docs/engine.md)
  kAuto,  // kRam when the file fits in half of MemAvailable, else kMmap
};
const char* WeightMemoryName(WeightMemory m);
// MemAvailable of /proc/meminfo in bytes (0 when unknown).
uint64_t MemAvailableBytes();

// Anonymous, zero-filled memory for weights that decode streams (the `ram` weights, a kernel
// table's repacked copies): at least `bytes`, starting on a 2 MiB boundary and rounded up to
// whole 2 MiB pages, with transparent huge pages asked for (best effort: THP may be disabled).
// nullptr when it cannot be mapped.
struct HugePagesUnmap {
  size_t len = 0;  // the mapped length
  void operator()(uint8_t* p) const;
};
using HugePages = std::unique_ptr<uint8_t, HugePagesUnmap>;
HugePages MapHugePages(size_t bytes);
Result<WeightMemory> ParseWeightMemory(const std::string& name);  // auto | ram | mmap

class GgufFile {
 public:
  // Opens `path` (mapped or read into memory, see WeightMemory), then validates. Errors name the
  // path and the problem.
  static Result<std::unique_ptr<GgufFile>> Open(const std::string& path,
                                                WeightMemory memory = WeightMemory::kMmap);
  // Parses caller-owned bytes (must outlive the GgufFile). Used by tests and the fuzzer.
  static Result<std::unique_ptr<GgufFile>> OpenBytes(std::span<const uint8_t> bytes,
                                                     std::string name = "<memory>");
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  const std::string& path() const { return path_; }
  // kMmap or kRam: where the bytes ended up.
  WeightMemory memory() const { return memory_; }
  std::span<const uint8_t> bytes() const { return bytes_; }
  // Gives back the memory of the whole pages inside [p, p + n) (bytes of this file), for tensors
  // a backend computes from a copy of its own: later reads still see the file's bytes, paged in
  // from the file again (`ram`: the file is mapped over those pages of the copy; `mmap`: they
  // are dropped from the mapping). False when nothing was given back (bytes not from a file).
  bool ReleaseResident(const uint8_t* p, size_t n) const;
  uint64_t data_offset() const { return data_offset_; }

  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return kv_; }
  const GgufValue* Find(std::string_view key) const;
  // Typed getters: NotFound when absent, InvalidArgument when of another type.
  Result<std::string> GetString(std::string_view key) const;
  Result<uint64_t> GetUint(std::string_view key) const;  // any non-negative integer type
  Result<double> GetFloat(std::string_view key) const;   // float32/64 or integer
  Result<bool> GetBool(std::string_view key) const;
  Result<const GgufArray*> GetArray(std::string_view key) const;
  // Convenience: the value or `fallback` when absent (wrong type is still an error).
  Result<uint64_t> GetUintOr(std::string_view key, uint64_t fallback) const;
  Result<double> GetFloatOr(std::string_view key, double fallback) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;

 private:
  GgufFile() = default;
  Status Parse();

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  int fd_ = -1;  // the open file (ReleaseResident maps from it)
  WeightMemory memory_ = WeightMemory::kMmap;
  std::span<const uint8_t> bytes_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue, std::less<>> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace kvstash::engine
