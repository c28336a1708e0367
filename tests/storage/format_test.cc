// The byte layout of format.h: round trips, and damage that every decoder must refuse.
#include "storage/format.h"

#include <gtest/gtest.h>

#include <vector>

#include "storage/aligned_buffer.h"
#include "storage/testing/test_blocks.h"

namespace kvstash::storage::format {
namespace {

TEST(FormatTest, RecordHeaderRoundTripsAndDetectsEveryFlippedByte) {
  BlockHeader block = storage::testing::MakeHeader({1, 2}, 37);
  RecordHeader h;
  h.header_area_bytes = HeaderAreaBytes(block);
  h.key = {0xAABB, 0xCCDD};
  h.payload_bytes = 123456;
  h.payload_checksum = 42;
  h.write_time_us = 7;
  AlignedBuffer area(h.header_area_bytes);
  EncodeRecordHeader(h, block, {area.data(), h.header_area_bytes});
  BlockHeader decoded;
  auto got = DecodeRecordHeader({area.data(), h.header_area_bytes}, &decoded);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->key, h.key);
  EXPECT_EQ(got->payload_bytes, h.payload_bytes);
  EXPECT_EQ(got->header_checksum, h.header_checksum);
  EXPECT_EQ(decoded, block);

  const size_t used = kRecordFixedBytes + BlockHeaderBytes(block);
  for (size_t i = 0; i < used; ++i) {
    area.data()[i] ^= std::byte{0x10};
    EXPECT_FALSE(DecodeRecordHeader({area.data(), h.header_area_bytes}, nullptr).ok())
        << "byte " << i;
    area.data()[i] ^= std::byte{0x10};
  }
}

TEST(FormatTest, SegmentHeaderRoundTripsAndRejectsDamage) {
  AlignedBuffer buf(kSegmentHeaderBytes);
  EncodeSegmentHeader({kFormatVersion, 77, 1234, 1 << 20}, buf.span());
  auto h = DecodeSegmentHeader(buf.span());
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->segment_id, 77u);
  EXPECT_EQ(h->capacity_bytes, 1u << 20);
  for (size_t i = 0; i < kSegmentHeaderUsedBytes; ++i) {
    buf.data()[i] ^= std::byte{1};
    EXPECT_FALSE(DecodeSegmentHeader(buf.span()).ok()) << "byte " << i;
    buf.data()[i] ^= std::byte{1};
  }
}

TEST(FormatTest, IndexValueRoundTripsAndRejectsImpossibleFields) {
  IndexEntry e{.segment_id = 3,
               .offset = 8192,
               .header_area_bytes = 4096,
               .payload_bytes = 5000,
               .payload_checksum = 9,
               .header_checksum = 10,
               .write_time_us = 11};
  std::string v = EncodeIndexValue(e);
  ASSERT_EQ(v.size(), kIndexValueBytes);
  auto d = DecodeIndexValue(v);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->offset, 8192u);
  EXPECT_EQ(d->record_bytes(), 4096u + 8192u);
  EXPECT_FALSE(DecodeIndexValue(v.substr(1)).ok());
  e.offset = 100;  // misaligned
  EXPECT_FALSE(DecodeIndexValue(EncodeIndexValue(e)).ok());
  v[0] = 9;  // unknown version
  EXPECT_FALSE(DecodeIndexValue(v).ok());
}

TEST(FormatTest, IndexKeysSortByKeyAndRoundTrip) {
  BlockKey a{1, 0xFFFFFFFFFFFFFFFF}, b{2, 0};
  EXPECT_LT(EncodeIndexKey(a), EncodeIndexKey(b));
  EXPECT_EQ(DecodeIndexKey(EncodeIndexKey(a)), a);
  EXPECT_FALSE(DecodeIndexKey("short").has_value());
}

TEST(FormatTest, NamesParseBack) {
  EXPECT_EQ(ParseSegmentFileName(SegmentFileName(0x1234)), 0x1234u);
  EXPECT_FALSE(ParseSegmentFileName("0000000000001234.tmp").has_value());
  EXPECT_FALSE(ParseSegmentFileName("direct-io-probe").has_value());
  EXPECT_EQ(ParseSegmentRecordKey(SegmentRecordKey(99)), 99u);
  auto r = DecodeSegmentRecord(EncodeSegmentRecord({true, 8192, 5}));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->sealed);
  EXPECT_EQ(r->end_offset, 8192u);
}

TEST(FormatTest, ChecksumIsSeededXxh3) {
  std::vector<std::byte> a(1000, std::byte{1});
  uint64_t c = Checksum(a);
  a[999] = std::byte{2};
  EXPECT_NE(c, Checksum(a));
  EXPECT_EQ(AlignUp(0), 0u);
  EXPECT_EQ(AlignUp(1), 4096u);
  EXPECT_EQ(AlignUp(4096), 4096u);
}

}  // namespace
}  // namespace kvstash::storage::format
