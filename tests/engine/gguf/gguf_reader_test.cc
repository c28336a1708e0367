// GGUF reader: valid files parse; every kind of malformed file gets a clear error, never a crash
// or an out-of-bounds read (run under ASan by the fuzz build too).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "engine/gguf/gguf.h"
#include "engine/model/model.h"
#include "tests/fixtures.h"

namespace kvstash::engine {
namespace {

// A hand-rolled GGUF byte builder, independent of GgufWriter, so tests can write any field value
// — including wrong ones.
class RawGguf {
 public:
  RawGguf& U32(uint32_t v) { return Put(&v, 4); }
  RawGguf& U64(uint64_t v) { return Put(&v, 8); }
  RawGguf& Str(const std::string& s) {
    U64(s.size());
    return Put(s.data(), s.size());
  }
  RawGguf& Put(const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    bytes.insert(bytes.end(), b, b + n);
    return *this;
  }
  RawGguf& Header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    return U32(kGgufMagic).U32(version).U64(n_tensors).U64(n_kv);
  }
  RawGguf& KvString(const std::string& k, const std::string& v) { return Str(k).U32(8).Str(v); }
  RawGguf& KvU32(const std::string& k, uint32_t v) { return Str(k).U32(4).U32(v); }
  RawGguf& Tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type,
                  uint64_t offset) {
    Str(name).U32(static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) U64(d);
    return U32(type).U64(offset);
  }
  RawGguf& PadTo(size_t align) {
    while (bytes.size() % align) bytes.push_back(0);
    return *this;
  }
  RawGguf& Zeros(size_t n) {
    bytes.resize(bytes.size() + n, 0);
    return *this;
  }
  std::vector<uint8_t> bytes;
};

// Two f32 tensors of 8 and 4 floats and two metadata keys: a small valid file.
std::vector<uint8_t> ValidFile() {
  RawGguf g;
  g.Header(2, 2).KvString("general.architecture", "llama").KvU32("llama.block_count", 1);
  g.Tensor("a", {8}, 0, 0).Tensor("b", {2, 2}, 0, 32);
  g.PadTo(32).Zeros(48);
  return g.bytes;
}

Status Parse(const std::vector<uint8_t>& b) {
  auto r = GgufFile::OpenBytes(b, "test.gguf");
  return r.ok() ? Status::Ok() : r.status();
}

TEST(GgufReaderTest, ValidFileParses) {
  auto b = ValidFile();
  auto r = GgufFile::OpenBytes(b);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const GgufFile& f = **r;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(*f.GetString("general.architecture"), "llama");
  EXPECT_EQ(*f.GetUint("llama.block_count"), 1u);
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.FindTensor("b")->n_bytes, 16u);
  EXPECT_EQ(f.FindTensor("b")->data, b.data() + f.data_offset() + 32);
  EXPECT_EQ(f.GetString("missing").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(f.GetString("llama.block_count").status().code(), StatusCode::kInvalidArgument);
}

TEST(GgufReaderTest, TruncationAtEveryByteIsAnError) {
  const auto full = ValidFile();
  for (size_t len = 0; len < full.size(); ++len) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + len);
    Status s = Parse(cut);
    ASSERT_FALSE(s.ok()) << "truncated to " << len << " bytes was accepted";
    EXPECT_FALSE(s.message().empty());
  }
}

TEST(GgufReaderTest, BadMagicIsNamed) {
  auto b = ValidFile();
  b[0] = 'X';
  Status s = Parse(b);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
  EXPECT_NE(s.message().find("bad magic"), std::string::npos) << s.ToString();
}

TEST(GgufReaderTest, UnsupportedVersionsAreRefused) {
  for (uint32_t v : {1u, 4u, 0x03000000u}) {
    auto b = ValidFile();
    std::memcpy(b.data() + 4, &v, 4);
    Status s = Parse(b);
    EXPECT_EQ(s.code(), StatusCode::kIncompatible) << v;
    if (v == 1) {
      EXPECT_NE(s.message().find("version 1"), std::string::npos) << s.ToString();
    }
    if (v == 0x03000000u) {
      EXPECT_NE(s.message().find("big-endian"), std::string::npos);
    }
  }
}

TEST(GgufReaderTest, HugeCountsAreRejectedBeforeAllocating) {
  RawGguf a;
  a.Header(uint64_t{1} << 60, 0);
  EXPECT_NE(Parse(a.bytes).message().find("tensor count"), std::string::npos);
  RawGguf b;
  b.Header(0, uint64_t{1} << 62);
  EXPECT_NE(Parse(b.bytes).message().find("metadata count"), std::string::npos);
  RawGguf c;  // string array claiming 2^40 elements
  c.Header(0, 1).Str("tokenizer.ggml.tokens").U32(9).U32(8).U64(uint64_t{1} << 40).Str("x");
  EXPECT_EQ(Parse(c.bytes).code(), StatusCode::kCorruption);
  RawGguf d;  // key length larger than the file
  d.Header(0, 1).U64(uint64_t{1} << 50);
  EXPECT_EQ(Parse(d.bytes).code(), StatusCode::kCorruption);
}

TEST(GgufReaderTest, BadTensorInfosAreNamed) {
  struct Case {
    const char* what;
    std::vector<uint64_t> dims;
    uint32_t type;
    uint64_t offset;
    const char* expect;
  };
  const Case cases[] = {
      {"out of bounds", {1024}, 0, 0, "beyond the end"},
      {"misaligned", {4}, 0, 4, "not aligned"},
      {"unknown type", {4}, 99, 0, "unknown tensor type 99"},
      {"too many dims", {1, 1, 1, 1, 1}, 0, 0, "dimensions"},
      {"zero dim", {0}, 0, 0, "out of range"},
      {"bad block multiple", {33}, 8, 0, "not a multiple"},
      {"huge offset", {4}, 0, uint64_t{1} << 63, "beyond the end"},
  };
  for (const Case& c : cases) {
    RawGguf g;
    g.Header(1, 0).Tensor("t", c.dims, c.type, c.offset).PadTo(32).Zeros(64);
    Status s = Parse(g.bytes);
    EXPECT_FALSE(s.ok()) << c.what;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << c.what << ": " << s.ToString();
    EXPECT_NE(s.message().find("'t'"), std::string::npos) << c.what << ": " << s.ToString();
  }
}

TEST(GgufReaderTest, OverlappingAndDuplicateTensorsAreRejected) {
  RawGguf g;
  g.Header(2, 0).Tensor("a", {16}, 0, 0).Tensor("b", {16}, 0, 32).PadTo(32).Zeros(128);
  Status s = Parse(g.bytes);
  EXPECT_NE(s.message().find("overlaps"), std::string::npos) << s.ToString();
  RawGguf d;
  d.Header(2, 0).Tensor("a", {8}, 0, 0).Tensor("a", {8}, 0, 32).PadTo(32).Zeros(64);
  EXPECT_NE(Parse(d.bytes).message().find("duplicate"), std::string::npos);
}

TEST(GgufReaderTest, BadAlignmentAndNestedArraysAreRejected) {
  RawGguf g;
  g.Header(0, 1).KvU32("general.alignment", 24);
  EXPECT_NE(Parse(g.bytes).message().find("power of two"), std::string::npos);
  RawGguf n;
  n.Header(0, 1).Str("x").U32(9).U32(9).U64(1);
  EXPECT_EQ(Parse(n.bytes).code(), StatusCode::kIncompatible);
  RawGguf t;
  t.Header(0, 1).Str("x").U32(77);
  EXPECT_NE(Parse(t.bytes).message().find("unknown value type"), std::string::npos);
}

TEST(GgufReaderTest, ModelErrorsNameTheProblem) {
  auto arch = [](const std::string& a) {
    RawGguf g;
    g.Header(0, 1).KvString("general.architecture", a);
    return g.bytes;
  };
  auto b = arch("mamba");
  auto f = GgufFile::OpenBytes(b);
  ASSERT_TRUE(f.ok());
  auto m = Model::FromGguf(std::move(*f));
  EXPECT_EQ(m.status().code(), StatusCode::kIncompatible);
  EXPECT_NE(m.status().message().find("unsupported architecture 'mamba'"), std::string::npos);
  auto b2 = arch("llama");
  auto m2 = Model::FromGguf(std::move(*GgufFile::OpenBytes(b2)));
  EXPECT_EQ(m2.status().code(), StatusCode::kNotFound);
  EXPECT_NE(m2.status().message().find("llama.embedding_length"), std::string::npos)
      << m2.status().ToString();
}

TEST(GgufReaderTest, MissingFileIsNotFound) {
  auto r = GgufFile::Open("/nonexistent/model.gguf");
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("/nonexistent/model.gguf"), std::string::npos);
}

TEST(GgufReaderTest, RealFixturesOpenAndLegacyV1IsRefused) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  auto f = GgufFile::Open(testing::FixturePath("stories260K.gguf"));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->tensors().size(), 48u);
  auto m = Model::FromGguf(std::move(*f));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ((*m)->config().n_vocab, 512);
  EXPECT_EQ((*m)->config().n_head_kv, 4);
  EXPECT_FALSE((*m)->config().tied_embeddings);
  auto legacy = GgufFile::Open(testing::FixturePath("legacy/tinyllamas-stories-260k-f32.gguf"));
  EXPECT_EQ(legacy.status().code(), StatusCode::kIncompatible);
  EXPECT_NE(legacy.status().message().find("version 1"), std::string::npos);
}

}  // namespace
}  // namespace kvstash::engine
