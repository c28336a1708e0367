// The local-socket wire format: every constant in one place (docs/protocol.md describes the same
// bytes). A connection is a sequence of frames in each direction:
//
//   frame := length (4 bytes, little-endian, unsigned) || FlatBuffer (`length` bytes)
//
// The FlatBuffer's root is kvstash.protocol.fb.Frame (protocol/kvstash.fbs) with the file
// identifier kFileIdentifier. The first frame a client sends is Hello; the daemon answers HelloAck
// (or a fatal Error for an unsupported major version, then closes).
//
// Pure constants; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kvstash::protocol::wire {

// Protocol version. A peer with another major version is refused; minor versions add fields
// and request types that older peers ignore or refuse one by one (an Error frame).
inline constexpr uint16_t kMajorVersion = 1;
inline constexpr uint16_t kMinorVersion = 0;

// Bytes of the length prefix of a frame.
inline constexpr size_t kLengthPrefixBytes = 4;
// The four bytes at offset 4 of every FlatBuffer frame (kvstash.fbs `file_identifier`).
inline constexpr std::string_view kFileIdentifier = "KVS1";
// Smallest valid FlatBuffer frame: root offset (4) + file identifier (4).
inline constexpr uint32_t kMinFrameBytes = 8;
// Default bound on one frame (`kvstashd --max-frame-bytes`, ClientOptions::max_frame_bytes). A
// frame whose length prefix exceeds the bound is refused before any of it is buffered.
inline constexpr uint32_t kDefaultMaxFrameBytes = 16u << 20;
// Smallest --max-frame-bytes accepted (a Hello and its answer always fit).
inline constexpr uint32_t kMinMaxFrameBytes = 4096;

// FlatBuffers verifier limits applied to every incoming frame. The schema nests at most 4 deep
// (Frame -> Generate -> Prompt -> ChatMessage); tables: one per chat message / session / tier.
inline constexpr int kVerifierMaxDepth = 16;
inline constexpr int kVerifierMaxTables = 1 << 20;

// Request ids are chosen by the client; 0 is reserved for frames about the connection itself
// (Hello/HelloAck, and Error frames about a frame whose id could not be read).
inline constexpr uint64_t kConnectionId = 0;

// The socket: $XDG_RUNTIME_DIR/kvstash/kvstashd.sock (else /tmp/kvstash-UID/kvstashd.sock), the
// socket mode 0600 inside a directory of mode 0700.
inline constexpr std::string_view kSocketDirName = "kvstash";
inline constexpr std::string_view kSocketFileName = "kvstashd.sock";
inline constexpr uint32_t kSocketMode = 0600;
inline constexpr uint32_t kSocketDirMode = 0700;

}  // namespace kvstash::protocol::wire
