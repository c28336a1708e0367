// The on-disk format of the block store: every constant in one place, plus the encoders and
// decoders that are the only code allowed to lay bytes out. docs/storage-format.md describes the
// same layout byte by byte; change both together and bump kFormatVersion when bytes change.
//
// All integers are little-endian. Pure functions; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"
#include "storage/block_key.h"

namespace kvstash::storage::format {

// Version of the whole layout (segment files, record headers, index values). Stored in the
// `meta` column family under kMetaFormatVersionKey and in every segment header.
inline constexpr uint32_t kFormatVersion = 1;

// Every offset and length that reaches the disk is a multiple of this (O_DIRECT alignment).
inline constexpr uint64_t kIoAlignment = 4096;

// ---- Directory layout ---------------------------------------------------------------------
inline constexpr std::string_view kLockFileName = "LOCK";
inline constexpr std::string_view kIndexDirName = "index";  // RocksDB
inline constexpr std::string_view kCorruptIndexDirName = "index.corrupt";
inline constexpr std::string_view kSegmentDirName = "segments";
inline constexpr std::string_view kSegmentFileSuffix = ".seg";  // "%016x.seg"

// ---- Segment file header (first kSegmentHeaderBytes of every segment) ----------------------
inline constexpr uint64_t kSegmentHeaderBytes = 4096;
inline constexpr char kSegmentMagic[8] = {'K', 'V', 'S', 'T', 'S', 'E', 'G', '1'};
inline constexpr size_t kSegmentHeaderUsedBytes = 64;  // the rest of the 4 KiB is zero

// ---- Record (one block) ----------------------------------------------------------------------
// [record header area: fixed part + block header, zero-padded to kIoAlignment]
// [payload, zero-padded to kIoAlignment]
inline constexpr uint32_t kRecordMagic = 0x3152564B;  // bytes "KVR1"
inline constexpr size_t kRecordFixedBytes = 64;
inline constexpr size_t kBlockHeaderFixedBytes = 32;  // parent(16) layout_tag(8) n(4) reserved(4)
inline constexpr size_t kMaxHeaderAreaBytes = 64 * 1024;
inline constexpr size_t kMaxBlockHeaderBytes = kMaxHeaderAreaBytes - kRecordFixedBytes;
inline constexpr uint64_t kMaxPayloadBytes = 1ull << 31;  // 2 GiB

// Seed of every XXH3-64 checksum in the format.
inline constexpr uint64_t kChecksumSeed = 0x6B7673746173682Dull;  // "-hsatsvk"

// ---- Index (RocksDB) -------------------------------------------------------------------------
inline constexpr std::string_view kBlocksColumnFamily = "blocks";
inline constexpr std::string_view kSessionsColumnFamily = "sessions";
inline constexpr std::string_view kMetaColumnFamily = "meta";
inline constexpr size_t kIndexKeyBytes = 16;  // key.hi, key.lo big-endian (sorts by key)
inline constexpr size_t kIndexValueBytes = 56;
inline constexpr uint8_t kIndexValueVersion = 1;
inline constexpr std::string_view kMetaFormatVersionKey = "format_version";
inline constexpr std::string_view kMetaSegmentPrefix = "segment/";  // + 16 hex digits
inline constexpr std::string_view kMetaUserPrefix = "user/";        // + caller's key
inline constexpr size_t kSegmentRecordBytes = 32;
inline constexpr uint8_t kSegmentRecordVersion = 1;

constexpr uint64_t AlignUp(uint64_t n) { return (n + kIoAlignment - 1) & ~(kIoAlignment - 1); }

// Serialized size of a block header, and of the record header area that holds it.
size_t BlockHeaderBytes(const BlockHeader& h);
inline uint32_t HeaderAreaBytes(const BlockHeader& h) {
  return static_cast<uint32_t>(AlignUp(kRecordFixedBytes + BlockHeaderBytes(h)));
}
inline uint64_t RecordBytes(uint32_t header_area_bytes, uint64_t payload_bytes) {
  return header_area_bytes + AlignUp(payload_bytes);
}

uint64_t Checksum(std::span<const std::byte> bytes);

// ---- Segment header ----
struct SegmentHeader {
  uint32_t format_version = kFormatVersion;
  uint64_t segment_id = 0;
  uint64_t created_us = 0;
  uint64_t capacity_bytes = 0;  // size the segment was allocated with
};
// Writes kSegmentHeaderBytes into `out` (which must be that large).
void EncodeSegmentHeader(const SegmentHeader& h, std::span<std::byte> out);
// Corruption on a bad magic or checksum; Incompatible on an unknown version.
Result<SegmentHeader> DecodeSegmentHeader(std::span<const std::byte> in);
std::string SegmentFileName(uint64_t segment_id);
std::optional<uint64_t> ParseSegmentFileName(std::string_view name);

// ---- Record header ----
struct RecordHeader {
  uint32_t header_area_bytes = 0;
  BlockKey key;
  uint64_t payload_bytes = 0;
  uint64_t payload_checksum = 0;
  uint64_t write_time_us = 0;
  uint64_t header_checksum = 0;  // filled in by EncodeRecordHeader / checked by Decode
};
// Writes the fixed part and the block header, zero-pads to h.header_area_bytes (which must be
// HeaderAreaBytes(block)), and sets h.header_checksum. `out` must hold header_area_bytes.
void EncodeRecordHeader(RecordHeader& h, const BlockHeader& block, std::span<std::byte> out);
// Decodes only the fixed part (needs kRecordFixedBytes) without verifying the checksum: enough to
// learn the header area size before reading all of it.
Result<RecordHeader> PeekRecordHeader(std::span<const std::byte> in);
// Decodes and verifies a whole header area: magic, sizes and header checksum.
Result<RecordHeader> DecodeRecordHeader(std::span<const std::byte> in, BlockHeader* block);

// ---- Index value ----
struct IndexEntry {
  uint64_t segment_id = 0;
  uint64_t offset = 0;  // of the record header, within the segment file
  uint32_t header_area_bytes = 0;
  uint64_t payload_bytes = 0;
  uint64_t payload_checksum = 0;
  uint64_t header_checksum = 0;
  uint64_t write_time_us = 0;  // access stamp at write; reads update recency per segment only

  uint64_t record_bytes() const { return RecordBytes(header_area_bytes, payload_bytes); }
  uint64_t payload_offset() const { return offset + header_area_bytes; }
};
std::string EncodeIndexKey(const BlockKey& key);
std::optional<BlockKey> DecodeIndexKey(std::string_view in);
std::string EncodeIndexValue(const IndexEntry& e);
// Corruption on a wrong size, version or an impossible field (misaligned offset, ...).
Result<IndexEntry> DecodeIndexValue(std::string_view in);

// ---- Segment record (meta CF) ----
struct SegmentRecord {
  bool sealed = false;
  uint64_t end_offset = 0;  // bytes of the file that hold records (valid when sealed)
  uint64_t last_access_us = 0;
};
std::string SegmentRecordKey(uint64_t segment_id);
std::optional<uint64_t> ParseSegmentRecordKey(std::string_view key);
std::string EncodeSegmentRecord(const SegmentRecord& r);
Result<SegmentRecord> DecodeSegmentRecord(std::string_view in);

}  // namespace kvstash::storage::format
