// libFuzzer target: arbitrary bytes through the GGUF reader and the model loader's metadata and
// tensor checks. Any crash, sanitizer report or out-of-bounds read is a bug; errors are fine.
#include <cstddef>
#include <cstdint>
#include <span>

#include "engine/gguf/gguf.h"
#include "engine/model/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using kvstash::engine::GgufFile;
  auto file = GgufFile::OpenBytes(std::span<const uint8_t>(data, size), "fuzz");
  if (!file.ok()) return 0;
  // Touch everything the reader promised is in bounds.
  uint64_t sum = 0;
  for (const auto& t : (*file)->tensors()) {
    if (t.n_bytes > 0) sum += t.data[0] + t.data[t.n_bytes - 1];
  }
  for (const auto& [k, v] : (*file)->metadata()) {
    if (const auto* a = std::get_if<kvstash::engine::GgufArray>(&v.v)) {
      for (auto s : a->strings) sum += s.empty() ? 0 : static_cast<uint8_t>(s.back());
    }
  }
  // Keeps the reads from being optimized away.
  volatile uint64_t sink = sum;
  (void)sink;
  auto model = kvstash::engine::Model::FromGguf(std::move(*file));
  (void)model;
  return 0;
}
