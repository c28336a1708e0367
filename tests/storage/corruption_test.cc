// Damage on disk: flipped bytes in payloads, record headers, segment headers and RocksDB's own
// files, and truncated segments. Every case must be detected (a miss, a dropped entry or segment,
// a rebuilt index) and no read may ever return bytes other than the ones written.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>

#include "storage/aligned_buffer.h"
#include "storage/block_store.h"
#include "storage/format.h"
#include "storage/testing/test_blocks.h"

namespace kvstash::storage {
namespace {

namespace fs = std::filesystem;
using storage::testing::KeyFor;
using storage::testing::MakeHeader;
using storage::testing::MakePayload;
using storage::testing::PayloadMatches;
using storage::testing::TempDir;

size_t SizeOf(uint64_t i) { return 50'000 + i * 1000; }

struct Record {
  std::string file;
  uint64_t offset;
  uint32_t header_area;
  BlockKey key;
};

void FlipByte(const std::string& file, uint64_t offset, uint8_t mask = 0x40) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ mask);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

class CorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempDir>(storage::testing::RealDiskTestRoot(), "corrupt");
    ASSERT_TRUE(dir_->ok());
  }
  Options MakeOptions(const std::string& path) const {
    Options o;
    o.path = path;
    o.segment_bytes = 1 << 20;
    o.capacity_bytes = 64 << 20;
    o.logger = NullLogger();
    return o;
  }
  std::string Path() const { return dir_->Sub("cache"); }
  std::unique_ptr<BlockStore> Open(const std::string& path) {
    auto r = BlockStore::Open(MakeOptions(path));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : nullptr;
  }
  void Fill(uint64_t n) {
    auto store = Open(Path());
    ASSERT_TRUE(store);
    for (uint64_t i = 0; i < n; ++i) {
      auto p = MakePayload(KeyFor(i), SizeOf(i));
      ASSERT_TRUE(store->Put(KeyFor(i), MakeHeader(KeyFor(i)), p).get().ok());
    }
    ASSERT_TRUE(store->PutSession("s", "manifest").ok());
    ASSERT_TRUE(store->Close().ok());
  }
  std::vector<Record> Records(const std::string& path) const {
    std::vector<Record> out;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(path + "/segments")) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      std::ifstream in(file, std::ios::binary);
      std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
      uint64_t off = format::kSegmentHeaderBytes;
      while (off + format::kIoAlignment <= bytes.size()) {
        std::span<const std::byte> rest(reinterpret_cast<const std::byte*>(bytes.data()) + off,
                                        bytes.size() - off);
        auto h = format::DecodeRecordHeader(rest.first(format::kIoAlignment), nullptr);
        if (!h.ok()) break;
        out.push_back({file.string(), off, h->header_area_bytes, h->key});
        off += format::RecordBytes(h->header_area_bytes, h->payload_bytes);
      }
    }
    return out;
  }
  // Every listed key either verifies exactly or is reported as a miss: returns verified count.
  size_t CheckNothingWrong(BlockStore& store) {
    size_t verified = 0;
    for (const BlockKey& key : store.ListKeys()) {
      AlignedBuffer buf(BlockStore::ReadBufferBytes(*store.PayloadBytes(key)));
      ReadResult r = store.Get(key, buf.span());
      if (!r.hit()) {
        EXPECT_EQ(r.status.code(), StatusCode::kCorruption) << r.status.ToString();
        continue;
      }
      EXPECT_TRUE(PayloadMatches(key, {buf.data(), r.payload_bytes})) << key.ToHex();
      EXPECT_EQ(r.header, MakeHeader(key));
      ++verified;
    }
    return verified;
  }
  std::unique_ptr<TempDir> dir_;
};

TEST_F(CorruptionTest, FlippedPayloadByteIsAMissAndTheRecordIsDropped) {
  Fill(20);
  auto recs = Records(Path());
  ASSERT_EQ(recs.size(), 20u);
  FlipByte(recs[5].file, recs[5].offset + recs[5].header_area + 1234);
  auto store = Open(Path());
  ASSERT_TRUE(store);
  std::vector<std::byte> buf(SizeOf(20));
  ReadResult r = store->Get(recs[5].key, buf);
  EXPECT_EQ(r.status.code(), StatusCode::kCorruption) << r.status.ToString();
  EXPECT_NE(r.status.message().find("checksum"), std::string::npos);
  EXPECT_FALSE(store->Contains(recs[5].key));
  EXPECT_EQ(store->Stats().corrupt_records, 1u);
  EXPECT_EQ(CheckNothingWrong(*store), 19u);
  ASSERT_TRUE(store->Close().ok());
  store = Open(Path());
  ASSERT_TRUE(store);
  EXPECT_FALSE(store->Contains(recs[5].key));  // the drop is persistent
  EXPECT_EQ(store->Stats().blocks, 19u);
}

TEST_F(CorruptionTest, FlippedRecordHeaderBytesAreMisses) {
  Fill(20);
  auto recs = Records(Path());
  ASSERT_EQ(recs.size(), 20u);
  FlipByte(recs[2].file, recs[2].offset + 9);    // the key
  FlipByte(recs[4].file, recs[4].offset + 100);  // a token id
  FlipByte(recs[6].file, recs[6].offset + 26);   // payload length
  FlipByte(recs[8].file, recs[8].offset + 1);    // magic
  auto store = Open(Path());
  ASSERT_TRUE(store);
  for (int i : {2, 4, 6, 8}) {
    std::vector<std::byte> buf(SizeOf(30));
    ReadResult r = store->Get(recs[static_cast<size_t>(i)].key, buf);
    EXPECT_EQ(r.status.code(), StatusCode::kCorruption) << i << ": " << r.status.ToString();
  }
  EXPECT_EQ(store->Stats().corrupt_records, 4u);
  EXPECT_EQ(CheckNothingWrong(*store), 16u);
}

TEST_F(CorruptionTest, DamagedSegmentHeaderDropsThatSegmentOnly) {
  Fill(40);
  auto recs = Records(Path());
  const std::string first = recs.front().file;
  const size_t in_first = static_cast<size_t>(
      std::count_if(recs.begin(), recs.end(), [&](const Record& r) { return r.file == first; }));
  ASSERT_LT(in_first, recs.size());
  FlipByte(first, 17);
  auto store = Open(Path());
  ASSERT_TRUE(store);
  EXPECT_EQ(store->Stats().blocks, recs.size() - in_first);
  EXPECT_EQ(store->Stats().dropped_index_entries, in_first);
  EXPECT_FALSE(store->Contains(recs.front().key));
  EXPECT_FALSE(fs::exists(first));
  EXPECT_EQ(CheckNothingWrong(*store), recs.size() - in_first);
}

TEST_F(CorruptionTest, TruncatedSegmentDropsTheEntriesItLost) {
  Fill(40);
  auto recs = Records(Path());
  const Record& last_in_first = *std::find_if(
      recs.rbegin(), recs.rend(), [&](const Record& r) { return r.file == recs.front().file; });
  fs::resize_file(last_in_first.file, last_in_first.offset + 8192);
  auto store = Open(Path());
  ASSERT_TRUE(store);
  EXPECT_FALSE(store->Contains(last_in_first.key));
  EXPECT_EQ(store->Stats().dropped_index_entries, 1u);
  EXPECT_EQ(CheckNothingWrong(*store), recs.size() - 1);
}

TEST_F(CorruptionTest, RandomBitRotInSegmentsIsNeverReturned) {
  Fill(60);
  std::mt19937_64 rng(7);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(Path() + "/segments")) files.push_back(e.path());
  for (int i = 0; i < 40; ++i) {
    const fs::path& f = files[rng() % files.size()];
    FlipByte(f, rng() % fs::file_size(f), static_cast<uint8_t>(1u << (rng() % 8)));
  }
  auto store = Open(Path());
  ASSERT_TRUE(store);
  const size_t verified = CheckNothingWrong(*store);
  EXPECT_GT(verified, 0u);
  auto p = MakePayload(KeyFor(999), 1000);
  EXPECT_TRUE(store->Put(KeyFor(999), MakeHeader(KeyFor(999)), p).get().ok());
}

// Flips bytes in each of RocksDB's files in turn (on a copy of the store): open must either
// refuse or come up with an index that returns only verified blocks (it rebuilds the block index
// from the segment files when RocksDB reports corruption).
TEST_F(CorruptionTest, DamagedIndexFilesAreDetectedAndNeverReturned) {
  Fill(30);
  std::vector<fs::path> index_files;
  for (const auto& e : fs::directory_iterator(Path() + "/index")) {
    if (e.is_regular_file() && e.file_size() > 0) index_files.push_back(e.path().filename());
  }
  std::sort(index_files.begin(), index_files.end());
  ASSERT_FALSE(index_files.empty());
  int rebuilt = 0, refused = 0;
  std::mt19937_64 rng(11);
  for (const fs::path& name : index_files) {
    SCOPED_TRACE(name.string());
    const std::string copy = dir_->Sub("copy");
    fs::remove_all(copy);
    fs::copy(Path(), copy, fs::copy_options::recursive);
    const std::string target = copy + "/index/" + name.string();
    const uint64_t size = fs::file_size(target);
    for (int i = 0; i < 8; ++i) FlipByte(target, (size / 9) * static_cast<uint64_t>(i + 1) % size);
    fs::remove(copy + "/LOCK");
    auto r = BlockStore::Open(MakeOptions(copy));
    if (!r.ok()) {
      ++refused;  // detected; nothing served
      continue;
    }
    BlockStore& store = **r;
    rebuilt += store.Stats().index_rebuilds > 0;
    // Either way every block is still found (a rebuild re-reads the segments) and verifies.
    EXPECT_EQ(CheckNothingWrong(store), 30u);
    auto p = MakePayload(KeyFor(500), 2000);
    EXPECT_TRUE(store.Put(KeyFor(500), MakeHeader(KeyFor(500)), p).get().ok());
    EXPECT_TRUE(store.Close().ok());
  }
  std::printf("[ index    ] %zu files damaged: %d rebuilt, %d refused to open\n",
              index_files.size(), rebuilt, refused);
  EXPECT_GT(rebuilt, 0);
}

}  // namespace
}  // namespace kvstash::storage
