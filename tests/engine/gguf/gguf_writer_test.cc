// Tests for engine/gguf_writer.h: byte layout of the header, and round trips through the GGUF
// reader (engine/gguf.h) for every metadata type, tensors and alignment.

#include "engine/gguf/gguf_writer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "engine/gguf/gguf.h"

namespace kvstash::engine {
namespace {

std::unique_ptr<GgufFile> Parse(const std::vector<uint8_t>& bytes) {
  auto f = GgufFile::OpenBytes(bytes);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  return f.ok() ? std::move(*f) : nullptr;
}

template <typename T>
T ReadAt(const std::vector<uint8_t>& b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}

std::string TempPath(const std::string& leaf) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("kvstash-gguf-writer-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / leaf).string();
}

GgufWriter EveryTypeWriter() {
  GgufWriter w;
  w.SetUint8("t.u8", 200);
  w.SetUint32("t.u32", 4000000000u);
  w.SetInt32("t.i32", -123456);
  w.SetUint64("t.u64", 0x123456789ABCDEFull);
  w.SetFloat32("t.f32", 0.15625f);
  w.SetBool("t.bool", true);
  w.SetString("t.str", "h\xC3\xA9llo");
  w.SetString("t.empty", "");
  w.SetStringArray("t.strs", {"a", "", "\xE2\x96\x81the"});
  w.SetFloat32Array("t.f32s", {1.5f, -2.25f, 0.0f});
  w.SetInt32Array("t.i32s", {1, -2, 2147483647});
  return w;
}

void ExpectEveryType(const GgufFile& f) {
  EXPECT_EQ(*f.GetUint("t.u8"), 200u);
  EXPECT_EQ(f.Find("t.u8")->type, GgufValueType::kUint8);
  EXPECT_EQ(*f.GetUint("t.u32"), 4000000000u);
  EXPECT_EQ(f.Find("t.u32")->type, GgufValueType::kUint32);
  ASSERT_NE(f.Find("t.i32"), nullptr);
  EXPECT_EQ(f.Find("t.i32")->type, GgufValueType::kInt32);
  EXPECT_EQ(std::get<int64_t>(f.Find("t.i32")->v), -123456);
  EXPECT_EQ(*f.GetUint("t.u64"), 0x123456789ABCDEFull);
  EXPECT_EQ(f.Find("t.u64")->type, GgufValueType::kUint64);
  EXPECT_EQ(*f.GetFloat("t.f32"), 0.15625);
  EXPECT_EQ(f.Find("t.f32")->type, GgufValueType::kFloat32);
  EXPECT_EQ(*f.GetBool("t.bool"), true);
  EXPECT_EQ(*f.GetString("t.str"), "h\xC3\xA9llo");
  EXPECT_EQ(*f.GetString("t.empty"), "");
  const GgufArray* strs = *f.GetArray("t.strs");
  ASSERT_EQ(strs->elem_type, GgufValueType::kString);
  ASSERT_EQ(strs->strings.size(), 3u);
  EXPECT_EQ(strs->strings[0], "a");
  EXPECT_EQ(strs->strings[1], "");
  EXPECT_EQ(strs->strings[2], "\xE2\x96\x81the");
  const GgufArray* f32s = *f.GetArray("t.f32s");
  ASSERT_EQ(f32s->elem_type, GgufValueType::kFloat32);
  ASSERT_EQ(f32s->count, 3u);
  float fv[3];
  std::memcpy(fv, f32s->data, sizeof(fv));
  EXPECT_EQ(fv[0], 1.5f);
  EXPECT_EQ(fv[1], -2.25f);
  EXPECT_EQ(fv[2], 0.0f);
  const GgufArray* i32s = *f.GetArray("t.i32s");
  ASSERT_EQ(i32s->elem_type, GgufValueType::kInt32);
  ASSERT_EQ(i32s->count, 3u);
  int32_t iv[3];
  std::memcpy(iv, i32s->data, sizeof(iv));
  EXPECT_EQ(iv[1], -2);
  EXPECT_EQ(iv[2], 2147483647);
}

TEST(GgufWriter, HeaderBytesAreGgufV3LittleEndian) {
  GgufWriter w;
  w.SetUint32("a", 7);
  w.AddTensor("t", {4}, GgmlType::kF32, std::vector<uint8_t>(16, 1));
  const std::vector<uint8_t> b = w.Serialize();
  ASSERT_GE(b.size(), 24u);
  EXPECT_EQ(std::string(b.begin(), b.begin() + 4), "GGUF");
  EXPECT_EQ(ReadAt<uint32_t>(b, 4), 3u);   // version
  EXPECT_EQ(ReadAt<uint64_t>(b, 8), 1u);   // tensor count
  EXPECT_EQ(ReadAt<uint64_t>(b, 16), 1u);  // kv count
  // First key: u64 length 1, "a", u32 type 4 (uint32), u32 value 7.
  EXPECT_EQ(ReadAt<uint64_t>(b, 24), 1u);
  EXPECT_EQ(b[32], 'a');
  EXPECT_EQ(ReadAt<uint32_t>(b, 33), static_cast<uint32_t>(GgufValueType::kUint32));
  EXPECT_EQ(ReadAt<uint32_t>(b, 37), 7u);
  // Tensor info: name, n_dims 1, dim 4, type F32, offset 0; then padding to 32; then data.
  EXPECT_EQ(ReadAt<uint64_t>(b, 41), 1u);
  EXPECT_EQ(b[49], 't');
  EXPECT_EQ(ReadAt<uint32_t>(b, 50), 1u);
  EXPECT_EQ(ReadAt<uint64_t>(b, 54), 4u);
  EXPECT_EQ(ReadAt<uint32_t>(b, 62), 0u);
  EXPECT_EQ(ReadAt<uint64_t>(b, 66), 0u);
  // Header ends at 74, data starts at 96 and is padded to a multiple of 32.
  EXPECT_EQ(b.size(), 128u);
  for (size_t i = 74; i < 96; ++i) EXPECT_EQ(b[i], 0) << i;
  for (size_t i = 96; i < 112; ++i) EXPECT_EQ(b[i], 1) << i;
}

TEST(GgufWriter, EveryMetadataTypeRoundTrips) {
  const std::vector<uint8_t> bytes = EveryTypeWriter().Serialize();
  auto f = Parse(bytes);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->metadata().size(), 11u);
  ExpectEveryType(*f);
}

TEST(GgufWriter, CopyValueReproducesEveryType) {
  const std::vector<uint8_t> bytes = EveryTypeWriter().Serialize();
  auto src = Parse(bytes);
  ASSERT_NE(src, nullptr);
  GgufWriter copy;
  for (const auto& [key, value] : src->metadata()) copy.CopyValue(key, value);
  const std::vector<uint8_t> copied = copy.Serialize();
  auto f = Parse(copied);
  ASSERT_NE(f, nullptr);
  ExpectEveryType(*f);
}

TEST(GgufWriter, SettingAKeyTwiceReplacesItInPlace) {
  GgufWriter w;
  w.SetUint32("first", 1);
  w.SetString("second", "x");
  w.SetUint32("first", 2);
  w.SetString("first", "now a string");
  const std::vector<uint8_t> b = w.Serialize();
  EXPECT_EQ(ReadAt<uint64_t>(b, 16), 2u);
  auto f = Parse(b);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(*f->GetString("first"), "now a string");
  EXPECT_EQ(ReadAt<uint64_t>(b, 24), 5u);  // "first" is still the first key
}

TEST(GgufWriter, TensorsRoundTripWithAlignedOffsets) {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  std::vector<uint8_t> a(3 * 5 * 4);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint8_t>(i);
  std::vector<uint8_t> q(2 * sizeof(BlockQ8_0), 0xAB);
  std::vector<uint8_t> h(7 * 2, 0x3C);
  w.AddTensor("a.weight", {5, 3}, GgmlType::kF32, a);
  w.AddTensor("q.weight", {32, 2}, GgmlType::kQ8_0, q);
  w.AddTensor("h", {7}, GgmlType::kF16, h);
  const std::vector<uint8_t> bytes = w.Serialize();
  auto f = Parse(bytes);
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->data_offset() % 32, 0u);
  const GgufTensorInfo* ta = f->FindTensor("a.weight");
  const GgufTensorInfo* tq = f->FindTensor("q.weight");
  const GgufTensorInfo* th = f->FindTensor("h");
  ASSERT_TRUE(ta && tq && th);
  EXPECT_EQ(ta->dims, (std::vector<int64_t>{5, 3}));
  EXPECT_EQ(ta->type, GgmlType::kF32);
  EXPECT_EQ(tq->dims, (std::vector<int64_t>{32, 2}));
  EXPECT_EQ(tq->type, GgmlType::kQ8_0);
  EXPECT_EQ(th->type, GgmlType::kF16);
  EXPECT_EQ(ta->offset, 0u);
  EXPECT_EQ(tq->offset, 64u);   // 60 bytes, padded to 64
  EXPECT_EQ(th->offset, 160u);  // 64 + 68 -> 132, padded to 160
  EXPECT_EQ(std::vector<uint8_t>(ta->data, ta->data + ta->n_bytes), a);
  EXPECT_EQ(std::vector<uint8_t>(tq->data, tq->data + tq->n_bytes), q);
  EXPECT_EQ(std::vector<uint8_t>(th->data, th->data + th->n_bytes), h);
  EXPECT_EQ(bytes.size() % 32, 0u);
}

TEST(GgufWriter, CustomAlignmentIsWrittenAndHonoured) {
  GgufWriter w;
  w.SetAlignment(64);
  w.AddTensor("x", {3}, GgmlType::kF32, std::vector<uint8_t>(12, 9));
  w.AddTensor("y", {8}, GgmlType::kF32, std::vector<uint8_t>(32, 7));
  const std::vector<uint8_t> bytes = w.Serialize();
  auto f = Parse(bytes);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(*f->GetUint("general.alignment"), 64u);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  EXPECT_EQ(f->FindTensor("y")->offset, 64u);
  EXPECT_EQ(f->FindTensor("y")->data[0], 7);
}

TEST(GgufWriter, DefaultAlignmentWritesNoAlignmentKey) {
  GgufWriter w;
  w.SetAlignment(64);
  w.SetAlignment(32);  // back to the default: the key goes away again
  w.AddTensor("x", {3}, GgmlType::kF32, std::vector<uint8_t>(12, 9));
  auto f = Parse(w.Serialize());
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->Find("general.alignment"), nullptr);
  EXPECT_EQ(f->alignment(), 32u);
}

TEST(GgufWriter, WriteFileMatchesSerializeAndLeavesNoTemp) {
  GgufWriter w = EveryTypeWriter();
  w.AddTensor("t", {32}, GgmlType::kQ8_0, std::vector<uint8_t>(sizeof(BlockQ8_0), 3));
  w.AddTensor("u", {2, 2}, GgmlType::kF16, std::vector<uint8_t>(8, 4));
  const std::string path = TempPath("write.gguf");
  ASSERT_TRUE(w.WriteFile(path).ok());
  std::ifstream in(path, std::ios::binary);
  const std::vector<uint8_t> file((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
  EXPECT_EQ(file, w.Serialize());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ExpectEveryType(**f);
  EXPECT_EQ((*f)->FindTensor("u")->data[0], 4);
}

TEST(GgufWriter, WriteFileIntoMissingDirectoryFailsNamingThePath) {
  GgufWriter w;
  const Status st = w.WriteFile("/nonexistent-kvstash-dir/x.gguf");
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(st.code() == StatusCode::kNotFound || st.code() == StatusCode::kIOError)
      << st.ToString();
  EXPECT_NE(st.message().find("/nonexistent-kvstash-dir/x.gguf"), std::string::npos);
}

TEST(GgufWriter, EmptyWriterIsAValidFile) {
  auto f = Parse(GgufWriter().Serialize());
  ASSERT_NE(f, nullptr);
  EXPECT_TRUE(f->metadata().empty());
  EXPECT_TRUE(f->tensors().empty());
}

}  // namespace
}  // namespace kvstash::engine
