// Frames to bytes and back (docs/protocol.md). EncodeFrame lays out one length-prefixed frame;
// DecodeFrame runs the FlatBuffers verifier (depth and table limits of wire_format.h) over one
// frame's FlatBuffer before reading a byte of it, then converts it into the plain structs of
// messages.h. FrameReader cuts a byte stream into frames, refusing an oversize length prefix
// before the frame's body is buffered.
//
// Thread safety: EncodeFrame and DecodeFrame are pure. A FrameReader is used by one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "base/status.h"
#include "protocol/messages.h"

namespace kvstash::protocol {

// One frame: 4-byte little-endian length, then the FlatBuffer. Strings are sent as they are
// (the daemon checks UTF-8 where it matters).
std::string EncodeFrame(const Frame& frame);

// Verifies and decodes one FlatBuffer (the bytes after the length prefix). InvalidArgument when
// the buffer is shorter than wire::kMinFrameBytes, lacks the file identifier, fails the verifier,
// has no body, or has a body type this version does not know ("unknown frame type N"). `*id` is
// set (when not null) as soon as the frame verified, so an error reply can carry the request id;
// it is wire::kConnectionId otherwise. Never reads unverified bytes; never throws.
Result<Frame> DecodeFrame(std::span<const uint8_t> flatbuffer, uint64_t* id = nullptr);

// Cuts a byte stream into frames.
class FrameReader {
 public:
  explicit FrameReader(uint32_t max_frame_bytes);

  // Appends received bytes. Fails (ResourceExhausted, "frame of N bytes exceeds the limit of M")
  // as soon as a length prefix above the limit is complete, and (InvalidArgument) for a length
  // below wire::kMinFrameBytes; the bytes of such a frame are not kept. After a failure the
  // stream cannot be resynchronized: every later call fails the same way.
  Status Append(const void* data, size_t n);
  // The FlatBuffer of the next complete frame (without its prefix), or nullopt when more bytes
  // are needed or the stream failed: a length prefix inside an earlier chunk may only be checked
  // here, so after nullopt the caller checks status().
  std::optional<std::string> Next();
  // Ok, or why the stream cannot go on (the error Append returns from then on).
  const Status& status() const { return error_; }
  // Bytes held for an incomplete frame.
  size_t buffered() const { return buffer_.size() - pos_; }

 private:
  Status CheckPrefix();
  const uint32_t max_frame_bytes_;
  std::string buffer_;
  size_t pos_ = 0;  // start of the first unconsumed frame
  Status error_;
};

}  // namespace kvstash::protocol
