// libFuzzer target for the local-socket frame reader and verifier (protocol/codec.h): arbitrary
// bytes are cut into frames by a FrameReader (in chunk sizes the input chooses, under a small
// frame limit) and every frame goes through DecodeFrame; the input is also decoded whole as one
// FlatBuffer. Whatever decodes must encode again and decode to the same type and id. Crashes,
// sanitizer reports, or a re-encoding that fails are bugs.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>

#include "protocol/codec.h"

namespace {

void CheckReencodes(const kvstash::protocol::Frame& f) {
  const std::string again = kvstash::protocol::EncodeFrame(f);
  auto back = kvstash::protocol::DecodeFrame(
      std::span(reinterpret_cast<const uint8_t*>(again.data()) + 4, again.size() - 4));
  if (!back.ok() || back->id != f.id || back->body.index() != f.body.index()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using kvstash::protocol::DecodeFrame;
  if (auto f = DecodeFrame(std::span(data, size)); f.ok()) CheckReencodes(*f);

  // The first byte picks the chunk size the stream arrives in (1..256 bytes).
  if (size == 0) return 0;
  const size_t chunk = 1 + data[0];
  kvstash::protocol::FrameReader reader(1 << 16);
  for (size_t pos = 1; pos < size; pos += chunk) {
    const size_t n = std::min(chunk, size - pos);
    if (!reader.Append(data + pos, n).ok()) break;
    while (auto raw = reader.Next()) {
      auto f = DecodeFrame(std::span(reinterpret_cast<const uint8_t*>(raw->data()), raw->size()));
      if (f.ok()) CheckReencodes(*f);
    }
  }
  return 0;
}
