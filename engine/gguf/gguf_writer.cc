// GGUF v3 serialization. File layout (all little-endian):
//
//   u32 magic "GGUF" | u32 version 3 | u64 n_tensors | u64 n_kv
//   n_kv   x { string key | u32 value type | value }
//   n_tensors x { string name | u32 n_dims | u64 dims[n_dims] | u32 ggml type | u64 offset }
//   zero padding to `alignment`
//   tensor data, each tensor starting at data_start + offset, offset a multiple of `alignment`,
//   each followed by zero padding to `alignment` (as ggml's gguf writer does)
//
// where string = u64 length + bytes (no terminator) and an array value = u32 element type +
// u64 count + elements. Values are encoded when set, so Serialize() only concatenates.
// The writer does not validate that tensor data matches dims/type: tests use that to craft
// malformed files; mkmodel guarantees consistency itself.

#include "engine/gguf/gguf_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>

namespace kvstash::engine {
namespace {

static_assert(std::endian::native == std::endian::little, "GGUF writer assumes little-endian");

template <typename T>
void Put(std::vector<uint8_t>& out, T v) {
  static_assert(std::is_trivially_copyable_v<T>);
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

void PutString(std::vector<uint8_t>& out, std::string_view s) {
  Put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

void PutType(std::vector<uint8_t>& out, GgufValueType t) {
  Put<uint32_t>(out, static_cast<uint32_t>(t));
}

// Encodes a scalar read by GgufFile (widened to uint64/int64/double/bool) back at its file type.
void PutWidenedScalar(std::vector<uint8_t>& out, const GgufValue& value) {
  const auto as_u64 = [&]() -> uint64_t {
    if (const auto* u = std::get_if<uint64_t>(&value.v)) return *u;
    if (const auto* i = std::get_if<int64_t>(&value.v)) return static_cast<uint64_t>(*i);
    if (const auto* b = std::get_if<bool>(&value.v)) return *b ? 1 : 0;
    if (const auto* d = std::get_if<double>(&value.v)) return static_cast<uint64_t>(*d);
    return 0;
  };
  const auto as_f64 = [&]() -> double {
    if (const auto* d = std::get_if<double>(&value.v)) return *d;
    if (const auto* i = std::get_if<int64_t>(&value.v)) return static_cast<double>(*i);
    return static_cast<double>(as_u64());
  };
  switch (value.type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      Put<uint8_t>(out, static_cast<uint8_t>(as_u64()));
      break;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      Put<uint16_t>(out, static_cast<uint16_t>(as_u64()));
      break;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
      Put<uint32_t>(out, static_cast<uint32_t>(as_u64()));
      break;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
      Put<uint64_t>(out, as_u64());
      break;
    case GgufValueType::kFloat32:
      Put<float>(out, static_cast<float>(as_f64()));
      break;
    case GgufValueType::kFloat64:
      Put<double>(out, as_f64());
      break;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      break;
  }
}

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

void PadTo(std::vector<uint8_t>& out, uint64_t alignment) {
  out.resize(AlignUp(out.size(), alignment), 0);
}

}  // namespace

namespace {

std::vector<uint8_t> Tagged(GgufValueType t) {
  std::vector<uint8_t> e;
  PutType(e, t);
  return e;
}

// Replaces the value of an existing key in place (keeping its position) or appends it. A
// template so the writer's private Kv type need not be named here.
template <typename KvVector>
void Upsert(KvVector& kvs, const std::string& key, std::vector<uint8_t> encoded) {
  for (auto& kv : kvs) {
    if (kv.key == key) {
      kv.encoded = std::move(encoded);
      return;
    }
  }
  kvs.push_back({key, std::move(encoded)});
}

// Header, metadata, tensor infos and the padding before the data section. Tensor offsets
// follow from the data sizes: each tensor starts aligned.
template <typename KvVector, typename TensorVector>
std::vector<uint8_t> EncodeHeader(const KvVector& kvs, const TensorVector& tensors,
                                  uint32_t alignment, uint64_t* data_bytes) {
  std::vector<uint8_t> out;
  Put<uint32_t>(out, kGgufMagic);
  Put<uint32_t>(out, 3);
  Put<uint64_t>(out, tensors.size());
  Put<uint64_t>(out, kvs.size());
  for (const auto& kv : kvs) {
    PutString(out, kv.key);
    out.insert(out.end(), kv.encoded.begin(), kv.encoded.end());
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    PutString(out, t.name);
    Put<uint32_t>(out, static_cast<uint32_t>(t.dims.size()));
    for (int64_t d : t.dims) Put<uint64_t>(out, static_cast<uint64_t>(d));
    Put<uint32_t>(out, static_cast<uint32_t>(t.type));
    Put<uint64_t>(out, offset);
    offset = AlignUp(offset + t.data.size(), alignment);
  }
  PadTo(out, alignment);
  *data_bytes = offset;
  return out;
}

}  // namespace

void GgufWriter::SetUint8(const std::string& key, uint8_t v) {
  auto e = Tagged(GgufValueType::kUint8);
  Put(e, v);
  Upsert(kvs_, key, std::move(e));
}

void GgufWriter::SetUint32(const std::string& key, uint32_t v) {
  auto e = Tagged(GgufValueType::kUint32);
  Put(e, v);
  Upsert(kvs_, key, std::move(e));
}

void GgufWriter::SetInt32(const std::string& key, int32_t v) {
  auto e = Tagged(GgufValueType::kInt32);
  Put(e, v);
  Upsert(kvs_, key, std::move(e));
}

void GgufWriter::SetUint64(const std::string& key, uint64_t v) {
  auto e = Tagged(GgufValueType::kUint64);
  Put(e, v);
  Upsert(kvs_, key, std::move(e));
}

void GgufWriter::SetFloat32(const std::string& key, float v) {
  auto e = Tagged(GgufValueType::kFloat32);
  Put(e, v);
  Upsert(kvs_, key, std::move(e));
}

void GgufWriter::SetBool(const std::string& key, bool v) {
  auto e = Tagged(GgufValueType::kBool);
  Put<uint8_t>(e, v ? 1 : 0);
  Upsert(kvs_, key, std::move(e));
}

void GgufWriter::SetString(const std::string& key, const std::string& v) {
  auto e = Tagged(GgufValueType::kString);
  PutString(e, v);
  Upsert(kvs_, key, std::move(e));
}

void GgufWriter::SetStringArray(const std::string& key, const std::vector<std::string>& v) {
  auto e = Tagged(GgufValueType::kArray);
  PutType(e, GgufValueType::kString);
  Put<uint64_t>(e, v.size());
  for (const std::string& s : v) PutString(e, s);
  Upsert(kvs_, key, std::move(e));
}

void GgufWriter::SetFloat32Array(const std::string& key, const std::vector<float>& v) {
  auto e = Tagged(GgufValueType::kArray);
  PutType(e, GgufValueType::kFloat32);
  Put<uint64_t>(e, v.size());
  for (float f : v) Put(e, f);
  Upsert(kvs_, key, std::move(e));
}

void GgufWriter::SetInt32Array(const std::string& key, const std::vector<int32_t>& v) {
  auto e = Tagged(GgufValueType::kArray);
  PutType(e, GgufValueType::kInt32);
  Put<uint64_t>(e, v.size());
  for (int32_t i : v) Put(e, i);
  Upsert(kvs_, key, std::move(e));
}

void GgufWriter::CopyValue(const std::string& key, const GgufValue& value) {
  std::vector<uint8_t> e = Tagged(value.type);
  if (value.type == GgufValueType::kString) {
    const auto* s = std::get_if<std::string_view>(&value.v);
    PutString(e, s ? *s : std::string_view());
  } else if (value.type == GgufValueType::kArray) {
    const auto* a = std::get_if<GgufArray>(&value.v);
    const GgufArray empty;
    const GgufArray& arr = a ? *a : empty;
    PutType(e, arr.elem_type);
    if (arr.elem_type == GgufValueType::kString) {
      Put<uint64_t>(e, arr.strings.size());
      for (std::string_view s : arr.strings) PutString(e, s);
    } else {
      // Scalar arrays are copied as the packed little-endian bytes the reader points at.
      // Nested arrays are not produced by any known writer and are copied as empty.
      const size_t elem = GgufScalarSize(arr.elem_type);
      const uint64_t count = elem != 0 && arr.data != nullptr ? arr.count : 0;
      Put<uint64_t>(e, count);
      if (count != 0) e.insert(e.end(), arr.data, arr.data + count * elem);
    }
  } else {
    PutWidenedScalar(e, value);
  }
  Upsert(kvs_, key, std::move(e));
}

void GgufWriter::SetAlignment(uint32_t alignment) {
  alignment_ = alignment == 0 ? kGgufDefaultAlignment : alignment;
  if (alignment_ != kGgufDefaultAlignment) {
    SetUint32("general.alignment", alignment_);
  } else {
    std::erase_if(kvs_, [](const Kv& kv) { return kv.key == "general.alignment"; });
  }
}

void GgufWriter::AddTensor(const std::string& name, std::vector<int64_t> dims, GgmlType type,
                           std::vector<uint8_t> data) {
  tensors_.push_back(Tensor{name, std::move(dims), type, std::move(data)});
}

std::vector<uint8_t> GgufWriter::Serialize() const {
  uint64_t data_bytes = 0;
  std::vector<uint8_t> out = EncodeHeader(kvs_, tensors_, alignment_, &data_bytes);
  out.reserve(out.size() + data_bytes);
  for (const Tensor& t : tensors_) {
    out.insert(out.end(), t.data.begin(), t.data.end());
    PadTo(out, alignment_);
  }
  return out;
}

Status GgufWriter::WriteFile(const std::string& path) const {
  // Header first, then each tensor straight from its buffer: peak memory stays at the tensors
  // themselves instead of doubling through a Serialize() copy (multi-GB models).
  uint64_t data_bytes = 0;
  const std::vector<uint8_t> header = EncodeHeader(kvs_, tensors_, alignment_, &data_bytes);

  // A temporary name of this process's own: several processes creating the same file at once
  // (the default model on first use) each write whole and rename; the last rename wins.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno("open " + tmp, errno);
  const auto write_all = [fd, &tmp](const uint8_t* p, size_t n) -> Status {
    while (n > 0) {
      const ssize_t w = ::write(fd, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno("write " + tmp, errno);
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
    return Status::Ok();
  };
  static const uint8_t kZeros[256] = {};
  Status st = write_all(header.data(), header.size());
  for (const Tensor& t : tensors_) {
    if (!st.ok()) break;
    st = write_all(t.data.data(), t.data.size());
    const size_t pad = AlignUp(t.data.size(), alignment_) - t.data.size();
    for (size_t left = pad; st.ok() && left > 0;) {
      const size_t n = left < sizeof(kZeros) ? left : sizeof(kZeros);
      st = write_all(kZeros, n);
      left -= n;
    }
  }
  if (st.ok() && ::fsync(fd) != 0) st = Status::FromErrno("fsync " + tmp, errno);
  if (::close(fd) != 0 && st.ok()) st = Status::FromErrno("close " + tmp, errno);
  if (st.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    st = Status::FromErrno("rename " + tmp + " -> " + path, errno);
  }
  if (!st.ok()) ::unlink(tmp.c_str());
  return st;
}

}  // namespace kvstash::engine
