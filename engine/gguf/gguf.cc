// GGUF parsing. The invariant that makes the rest of the engine safe: nothing leaves Parse()
// unless every byte it refers to lies inside the file. All reads go through Cursor, which checks
// bounds before touching memory; counts are checked against the bytes left before anything is
// allocated, so a hostile header cannot make us allocate or loop for long.
#include "engine/gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

namespace kvstash::engine {
namespace {

constexpr uint64_t kMaxStringBytes = uint64_t{1} << 30;
constexpr uint32_t kMaxDims = 4;

bool ValidValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kFloat64); }

class Cursor {
 public:
  explicit Cursor(std::span<const uint8_t> b) : b_(b) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return b_.size() - pos_; }

  template <typename T>
  bool Read(T* out) {
    if (left() < sizeof(T)) return false;
    std::memcpy(out, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool ReadString(std::string_view* out) {
    uint64_t n = 0;
    if (!Read(&n)) return false;
    if (n > left() || n > kMaxStringBytes) return false;
    *out = std::string_view(reinterpret_cast<const char*>(b_.data() + pos_), n);
    pos_ += n;
    return true;
  }
  const uint8_t* Skip(uint64_t n) {
    if (n > left()) return nullptr;
    const uint8_t* p = b_.data() + pos_;
    pos_ += n;
    return p;
  }

 private:
  std::span<const uint8_t> b_;
  uint64_t pos_ = 0;
};

}  // namespace

size_t GgufScalarSize(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

GgufFile::~GgufFile() {
  if (map_ != nullptr) munmap(map_, map_size_);
  if (fd_ >= 0) ::close(fd_);
}

bool GgufFile::ReleaseResident(const uint8_t* p, size_t n) const {
  if (map_ == nullptr || fd_ < 0) return false;
  const auto* base = static_cast<const uint8_t*>(map_);
  if (p < base || n > bytes_.size() || static_cast<size_t>(p - base) > bytes_.size() - n) {
    return false;
  }
  // `ram`: whole 2 MiB pages only, so no huge page that also holds bytes still in use is split
  // (the rest of it would be read through 4 KiB pages from then on).
  const size_t page =
      memory_ == WeightMemory::kRam ? size_t{2} << 20 : static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t lo = (static_cast<size_t>(p - base) + page - 1) / page * page;
  const size_t hi = static_cast<size_t>(p - base + n) / page * page;
  if (hi <= lo) return false;
  auto* at = const_cast<uint8_t*>(base) + lo;
  if (memory_ == WeightMemory::kMmap) return madvise(at, hi - lo, MADV_DONTNEED) == 0;
  // `ram`: file offset o is at base + o, so the file's pages land on the copy's own bytes.
  return mmap(at, hi - lo, PROT_READ, MAP_SHARED | MAP_FIXED, fd_, static_cast<off_t>(lo)) !=
         MAP_FAILED;
}

const char* WeightMemoryName(WeightMemory m) {
  switch (m) {
    case WeightMemory::kMmap:
      return "mmap";
    case WeightMemory::kRam:
      return "ram";
    case WeightMemory::kAuto:
      return "auto";
  }
  return "?";
}

Result<WeightMemory> ParseWeightMemory(const std::string& name) {
  if (name == "auto") return WeightMemory::kAuto;
  if (name == "ram") return WeightMemory::kRam;
  if (name == "mmap") return WeightMemory::kMmap;
  return Status::InvalidArgument("unknown weight memory '" + name +
                                 "' (expected auto, ram or mmap)");
}

uint64_t MemAvailableBytes() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) return 0;
  char line[256];
  uint64_t kb = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "MemAvailable: %lu kB", &kb) == 1) break;
  }
  std::fclose(f);
  return kb * 1024;
}

void HugePagesUnmap::operator()(uint8_t* p) const {
  if (p != nullptr) munmap(p, len);
}

HugePages MapHugePages(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t len = std::max<size_t>(1, (bytes + kHuge - 1) / kHuge) * kHuge;
  // One huge page more than needed, then the head and tail cut so the block starts on a 2 MiB
  // boundary: mmap alone aligns to 4 KiB, and the partial huge pages at both ends would be
  // 4 KiB ones (and a release of whole 2 MiB pages, GgufFile::ReleaseResident, would split them).
  void* m = mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return HugePages(nullptr, HugePagesUnmap{});
  auto* base = static_cast<uint8_t*>(m);
  auto* start = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(base) + kHuge - 1) &
                                           ~uintptr_t{kHuge - 1});
  if (start > base) munmap(base, static_cast<size_t>(start - base));
  uint8_t* end = base + len + kHuge;
  if (end > start + len) munmap(start + len, static_cast<size_t>(end - (start + len)));
  (void)madvise(start, len, MADV_HUGEPAGE);
  return HugePages(start, HugePagesUnmap{len});
}

namespace {

// Reads the whole file into anonymous memory in huge pages (MapHugePages). nullptr (and the
// mapping undone) when memory or the read fails; the caller then maps the file instead.
void* ReadIntoHugePages(int fd, size_t size, size_t* mapped) {
  HugePages m = MapHugePages(size);
  if (m == nullptr) return nullptr;
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, m.get() + done, size - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return nullptr;
    done += static_cast<size_t>(n);
  }
  *mapped = m.get_deleter().len;
  (void)mprotect(m.get(), *mapped, PROT_READ);
  return m.release();
}

}  // namespace

Result<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path, WeightMemory memory) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno("open GGUF " + path, errno);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return Status::FromErrno("stat " + path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::InvalidArgument(path + ": not a regular file");
  }
  auto file = std::unique_ptr<GgufFile>(new GgufFile());
  file->path_ = path;
  const size_t size = static_cast<size_t>(st.st_size);
  if (memory == WeightMemory::kAuto) {
    const uint64_t avail = MemAvailableBytes();
    memory = avail > 0 && size <= avail / 2 ? WeightMemory::kRam : WeightMemory::kMmap;
  }
  if (size > 0 && memory == WeightMemory::kRam) {
    size_t mapped = 0;
    if (void* m = ReadIntoHugePages(fd, size, &mapped); m != nullptr) {
      file->map_ = m;
      file->map_size_ = mapped;
      file->memory_ = WeightMemory::kRam;
      file->bytes_ = std::span<const uint8_t>(static_cast<const uint8_t*>(m), size);
    }
  }
  if (size > 0 && file->map_ == nullptr) {
    void* m = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      return Status::FromErrno("mmap " + path, err);
    }
    file->map_ = m;
    file->map_size_ = size;
    file->memory_ = WeightMemory::kMmap;
    file->bytes_ = std::span<const uint8_t>(static_cast<const uint8_t*>(m), size);
  }
  file->fd_ = fd;  // kept for ReleaseResident; closed with the file
  Status s = file->Parse();
  if (!s.ok()) return s.WithContext(path);
  return file;
}

Result<std::unique_ptr<GgufFile>> GgufFile::OpenBytes(std::span<const uint8_t> bytes,
                                                      std::string name) {
  auto file = std::unique_ptr<GgufFile>(new GgufFile());
  file->path_ = std::move(name);
  file->bytes_ = bytes;
  Status s = file->Parse();
  if (!s.ok()) return s.WithContext(file->path_);
  return file;
}

Status GgufFile::Parse() {
  Cursor c(bytes_);
  uint32_t magic = 0;
  if (!c.Read(&magic))
    return Status::Corruption("file too short for a GGUF header (" + std::to_string(bytes_.size()) +
                              " bytes)");
  if (magic != kGgufMagic) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "bad magic 0x%08x (expected \"GGUF\")", magic);
    return Status::Corruption(buf);
  }
  if (!c.Read(&version_)) return Status::Corruption("truncated header: missing version");
  if (version_ == 1) {
    return Status::Incompatible(
        "GGUF version 1 is not supported (it uses 32-bit counts and was superseded in 2023); "
        "re-convert the model with a current llama.cpp converter");
  }
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xFFFF) == 0 && version_ != 0) {
      return Status::Incompatible("GGUF file appears to be big-endian (version field " +
                                  std::to_string(version_) + "); only little-endian is supported");
    }
    return Status::Incompatible("unsupported GGUF version " + std::to_string(version_) +
                                " (supported: 2, 3)");
  }
  uint64_t n_tensors = 0, n_kv = 0;
  if (!c.Read(&n_tensors)) return Status::Corruption("truncated header: missing tensor count");
  if (!c.Read(&n_kv)) return Status::Corruption("truncated header: missing metadata count");
  // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at least
  // 8 + 4 + 8 + 4 + 8. Bounding the counts by the bytes left rejects absurd headers up front.
  if (n_kv > c.left() / 13) {
    return Status::Corruption("metadata count " + std::to_string(n_kv) +
                              " exceeds what the file can hold");
  }
  if (n_tensors > c.left() / 32) {
    return Status::Corruption("tensor count " + std::to_string(n_tensors) +
                              " exceeds what the file can hold");
  }

  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string at =
        "metadata entry " + std::to_string(i) + " at offset " + std::to_string(c.pos());
    std::string_view key;
    if (!c.ReadString(&key)) return Status::Corruption(at + ": truncated or oversize key");
    if (key.empty()) return Status::Corruption(at + ": empty key");
    uint32_t type_raw = 0;
    if (!c.Read(&type_raw))
      return Status::Corruption(at + " (" + std::string(key) + "): truncated type");
    if (!ValidValueType(type_raw)) {
      return Status::Corruption(at + " (" + std::string(key) + "): unknown value type " +
                                std::to_string(type_raw));
    }
    GgufValue value;
    value.type = static_cast<GgufValueType>(type_raw);
    const std::string where = "key '" + std::string(key) + "'";
    auto read_scalar = [&](GgufValueType t, GgufValue* out) -> bool {
      switch (t) {
        case GgufValueType::kUint8: {
          uint8_t v;
          if (!c.Read(&v)) return false;
          out->v = uint64_t{v};
          return true;
        }
        case GgufValueType::kUint16: {
          uint16_t v;
          if (!c.Read(&v)) return false;
          out->v = uint64_t{v};
          return true;
        }
        case GgufValueType::kUint32: {
          uint32_t v;
          if (!c.Read(&v)) return false;
          out->v = uint64_t{v};
          return true;
        }
        case GgufValueType::kUint64: {
          uint64_t v;
          if (!c.Read(&v)) return false;
          out->v = v;
          return true;
        }
        case GgufValueType::kInt8: {
          int8_t v;
          if (!c.Read(&v)) return false;
          out->v = int64_t{v};
          return true;
        }
        case GgufValueType::kInt16: {
          int16_t v;
          if (!c.Read(&v)) return false;
          out->v = int64_t{v};
          return true;
        }
        case GgufValueType::kInt32: {
          int32_t v;
          if (!c.Read(&v)) return false;
          out->v = int64_t{v};
          return true;
        }
        case GgufValueType::kInt64: {
          int64_t v;
          if (!c.Read(&v)) return false;
          out->v = v;
          return true;
        }
        case GgufValueType::kFloat32: {
          float v;
          if (!c.Read(&v)) return false;
          out->v = double{v};
          return true;
        }
        case GgufValueType::kFloat64: {
          double v;
          if (!c.Read(&v)) return false;
          out->v = v;
          return true;
        }
        case GgufValueType::kBool: {
          uint8_t v;
          if (!c.Read(&v)) return false;
          out->v = v != 0;
          return true;
        }
        case GgufValueType::kString: {
          std::string_view s;
          if (!c.ReadString(&s)) return false;
          out->v = s;
          return true;
        }
        case GgufValueType::kArray:
          return false;
      }
      return false;
    };
    if (value.type == GgufValueType::kArray) {
      uint32_t elem_raw = 0;
      uint64_t count = 0;
      if (!c.Read(&elem_raw) || !c.Read(&count)) {
        return Status::Corruption(where + ": truncated array header");
      }
      if (!ValidValueType(elem_raw)) {
        return Status::Corruption(where + ": unknown array element type " +
                                  std::to_string(elem_raw));
      }
      GgufArray arr;
      arr.elem_type = static_cast<GgufValueType>(elem_raw);
      arr.count = count;
      if (arr.elem_type == GgufValueType::kArray) {
        return Status::Incompatible(where + ": nested arrays are not supported");
      }
      if (arr.elem_type == GgufValueType::kString) {
        if (count > c.left() / 8) {
          return Status::Corruption(where + ": string array of " + std::to_string(count) +
                                    " elements exceeds the file");
        }
        arr.strings.reserve(count);
        for (uint64_t j = 0; j < count; ++j) {
          std::string_view s;
          if (!c.ReadString(&s)) {
            return Status::Corruption(where + ": truncated string " + std::to_string(j) +
                                      " of array");
          }
          arr.strings.push_back(s);
        }
      } else {
        const size_t es = GgufScalarSize(arr.elem_type);
        if (count > c.left() / es) {
          return Status::Corruption(where + ": array of " + std::to_string(count) +
                                    " elements exceeds the file");
        }
        arr.data = c.Skip(count * es);
      }
      value.v = std::move(arr);
    } else if (!read_scalar(value.type, &value)) {
      return Status::Corruption(where + ": truncated value");
    }
    if (kv_.count(key) != 0) return Status::Corruption("duplicate metadata " + where);
    kv_.emplace(std::string(key), std::move(value));
  }

  if (const GgufValue* a = Find("general.alignment")) {
    if (a->type != GgufValueType::kUint32 && a->type != GgufValueType::kUint64 &&
        a->type != GgufValueType::kInt32) {
      return Status::Corruption("general.alignment has a non-integer type");
    }
    uint64_t al = 0;
    if (const auto* u = std::get_if<uint64_t>(&a->v)) al = *u;
    if (const auto* s = std::get_if<int64_t>(&a->v)) al = *s > 0 ? static_cast<uint64_t>(*s) : 0;
    if (al == 0 || (al & (al - 1)) != 0 || al > (1u << 20)) {
      return Status::Corruption("general.alignment " + std::to_string(al) +
                                " is not a power of two in [1, 1 MiB]");
    }
    alignment_ = static_cast<uint32_t>(al);
  }

  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const std::string at =
        "tensor info " + std::to_string(i) + " at offset " + std::to_string(c.pos());
    std::string_view name;
    if (!c.ReadString(&name)) return Status::Corruption(at + ": truncated or oversize name");
    if (name.empty() || name.size() > 256) {
      return Status::Corruption(at + ": tensor name length " + std::to_string(name.size()) +
                                " out of range [1, 256]");
    }
    GgufTensorInfo t;
    t.name = std::string(name);
    const std::string where = "tensor '" + t.name + "'";
    uint32_t n_dims = 0;
    if (!c.Read(&n_dims)) return Status::Corruption(where + ": truncated dimension count");
    if (n_dims == 0 || n_dims > kMaxDims) {
      return Status::Corruption(where + ": " + std::to_string(n_dims) +
                                " dimensions (supported: 1 to 4)");
    }
    uint64_t n_elems = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim = 0;
      if (!c.Read(&dim)) return Status::Corruption(where + ": truncated dimensions");
      if (dim == 0 || dim > (uint64_t{1} << 40)) {
        return Status::Corruption(where + ": dimension " + std::to_string(d) + " = " +
                                  std::to_string(dim) + " out of range");
      }
      if (n_elems > (uint64_t{1} << 50) / dim) {
        return Status::Corruption(where + ": element count overflows");
      }
      n_elems *= dim;
      t.dims.push_back(static_cast<int64_t>(dim));
    }
    uint32_t type_raw = 0;
    if (!c.Read(&type_raw)) return Status::Corruption(where + ": truncated type");
    auto traits = TraitsOf(type_raw);
    if (!traits) {
      return Status::Incompatible(where + ": unknown tensor type " + std::to_string(type_raw));
    }
    t.type = static_cast<GgmlType>(type_raw);
    if (t.dims[0] % traits->block_elems != 0) {
      return Status::Corruption(where + ": row length " + std::to_string(t.dims[0]) +
                                " is not a multiple of the " + std::string(traits->name) +
                                " block size " + std::to_string(traits->block_elems));
    }
    t.n_bytes = n_elems / traits->block_elems * traits->block_bytes;
    if (!c.Read(&t.offset)) return Status::Corruption(where + ": truncated offset");
    if (t.offset % alignment_ != 0) {
      return Status::Corruption(where + ": data offset " + std::to_string(t.offset) +
                                " is not aligned to " + std::to_string(alignment_));
    }
    if (tensor_index_.count(t.name) != 0) return Status::Corruption("duplicate " + where);
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  data_offset_ = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (!tensors_.empty()) {
    if (data_offset_ > bytes_.size()) {
      return Status::Corruption("data section starts at " + std::to_string(data_offset_) +
                                " beyond the end of the file (" + std::to_string(bytes_.size()) +
                                " bytes)");
    }
    const uint64_t data_size = bytes_.size() - data_offset_;
    std::vector<size_t> order(tensors_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
    for (size_t k = 0; k < order.size(); ++k) {
      GgufTensorInfo& t = tensors_[order[k]];
      if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
        return Status::Corruption("tensor '" + t.name + "' (" + std::to_string(t.n_bytes) +
                                  " bytes at data offset " + std::to_string(t.offset) +
                                  ") extends beyond the end of the file; truncated download?");
      }
      if (k + 1 < order.size()) {
        const GgufTensorInfo& next = tensors_[order[k + 1]];
        if (t.offset + t.n_bytes > next.offset) {
          return Status::Corruption("tensor '" + t.name + "' overlaps tensor '" + next.name + "'");
        }
      }
      t.data = bytes_.data() + data_offset_ + t.offset;
    }
  }
  return Status::Ok();
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Result<std::string> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound("missing metadata key '" + std::string(key) + "'");
  if (const auto* s = std::get_if<std::string_view>(&v->v)) return std::string(*s);
  return Status::InvalidArgument("metadata key '" + std::string(key) + "' is not a string");
}

Result<uint64_t> GgufFile::GetUint(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound("missing metadata key '" + std::string(key) + "'");
  if (const auto* u = std::get_if<uint64_t>(&v->v)) return *u;
  if (const auto* i = std::get_if<int64_t>(&v->v)) {
    if (*i >= 0) return static_cast<uint64_t>(*i);
    return Status::InvalidArgument("metadata key '" + std::string(key) + "' is negative");
  }
  return Status::InvalidArgument("metadata key '" + std::string(key) + "' is not an integer");
}

Result<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound("missing metadata key '" + std::string(key) + "'");
  if (const auto* d = std::get_if<double>(&v->v)) return *d;
  if (const auto* u = std::get_if<uint64_t>(&v->v)) return static_cast<double>(*u);
  if (const auto* i = std::get_if<int64_t>(&v->v)) return static_cast<double>(*i);
  return Status::InvalidArgument("metadata key '" + std::string(key) + "' is not a number");
}

Result<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound("missing metadata key '" + std::string(key) + "'");
  if (const auto* b = std::get_if<bool>(&v->v)) return *b;
  return Status::InvalidArgument("metadata key '" + std::string(key) + "' is not a bool");
}

Result<const GgufArray*> GgufFile::GetArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Status::NotFound("missing metadata key '" + std::string(key) + "'");
  if (const auto* a = std::get_if<GgufArray>(&v->v)) return a;
  return Status::InvalidArgument("metadata key '" + std::string(key) + "' is not an array");
}

Result<uint64_t> GgufFile::GetUintOr(std::string_view key, uint64_t fallback) const {
  if (Find(key) == nullptr) return fallback;
  return GetUint(key);
}

Result<double> GgufFile::GetFloatOr(std::string_view key, double fallback) const {
  if (Find(key) == nullptr) return fallback;
  return GetFloat(key);
}

}  // namespace kvstash::engine
