// Builds GGUF v3 files: metadata in insertion order, tensors aligned to `alignment`.
// Used by kvstash-mkmodel and by tests that craft valid and malformed files.
// Not thread-safe; a value type.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/gguf/gguf.h"

namespace kvstash::engine {

class GgufWriter {
 public:
  void SetUint8(const std::string& key, uint8_t v);
  void SetUint32(const std::string& key, uint32_t v);
  void SetInt32(const std::string& key, int32_t v);
  void SetUint64(const std::string& key, uint64_t v);
  void SetFloat32(const std::string& key, float v);
  void SetBool(const std::string& key, bool v);
  void SetString(const std::string& key, const std::string& v);
  void SetStringArray(const std::string& key, const std::vector<std::string>& v);
  void SetFloat32Array(const std::string& key, const std::vector<float>& v);
  void SetInt32Array(const std::string& key, const std::vector<int32_t>& v);
  // Copies a key/value read from another file (tokenizer keys, chat template).
  void CopyValue(const std::string& key, const GgufValue& value);
  void SetAlignment(uint32_t alignment);  // writes general.alignment when != 32

  // `dims` innermost first (ggml order). `data` must be RowBytes-consistent with dims and type.
  void AddTensor(const std::string& name, std::vector<int64_t> dims, GgmlType type,
                 std::vector<uint8_t> data);

  std::vector<uint8_t> Serialize() const;
  Status WriteFile(const std::string& path) const;  // writes to path.tmp then renames

 private:
  struct Kv {
    std::string key;
    std::vector<uint8_t> encoded;  // type tag + value, already encoded
  };
  struct Tensor {
    std::string name;
    std::vector<int64_t> dims;
    GgmlType type;
    std::vector<uint8_t> data;
  };
  std::vector<Kv> kvs_;
  std::vector<Tensor> tensors_;
  uint32_t alignment_ = kGgufDefaultAlignment;
};

}  // namespace kvstash::engine
