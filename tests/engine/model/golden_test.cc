// The engine against golden outputs of a real trained model (stories260K, see
// shared/models/MANIFEST.md): 256 greedy ids from BOS, and logits at positions 0..2.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>

#include "tests/engine/engine_test_util.h"
#include "tests/fixtures.h"

namespace kvstash::engine {
namespace {

using testutil::LoadOrDie;
using testutil::MakeRunner;

struct Golden {
  std::vector<int32_t> greedy;
  struct Pos {
    std::vector<int> top_ids;
    std::vector<double> top_values, first5;
    double sum = 0, l2 = 0;
  };
  std::vector<Pos> pos;
};

std::vector<double> Numbers(const std::string& s) {
  std::vector<double> v;
  static const std::regex num(R"(-?\d+(\.\d+)?)");
  for (auto it = std::sregex_iterator(s.begin(), s.end(), num); it != std::sregex_iterator(); ++it)
    v.push_back(std::stod(it->str()));
  return v;
}

Golden ReadGolden(const std::string& path) {
  Golden g;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("ids:", 0) == 0) {
      for (double d : Numbers(line.substr(4))) g.greedy.push_back(static_cast<int32_t>(d));
    } else if (line.rfind("pos ", 0) == 0) {
      // pos N: top5 ids [..] values [..] | sum=S l2=L logit[0..4]=[..]
      Golden::Pos p;
      auto section = [&](const std::string& from, const std::string& to) {
        size_t a = line.find(from) + from.size();
        return line.substr(a, line.find(to, a) - a);
      };
      for (double d : Numbers(section("ids [", "]"))) p.top_ids.push_back(static_cast<int>(d));
      p.top_values = Numbers(section("values [", "]"));
      p.sum = std::stod(section("sum=", " "));
      p.l2 = std::stod(section("l2=", " "));
      p.first5 = Numbers(section("logit[0..4]=[", "]"));
      g.pos.push_back(p);
    }
  }
  return g;
}

class GoldenTest : public ::testing::TestWithParam<KvDtype> {};

TEST_P(GoldenTest, Stories260KMatchesGoldenLogitsAndGreedy) {
  KV_REQUIRE_FIXTURE("stories260K.gguf");
  KV_REQUIRE_FIXTURE("stories260K.greedy-from-BOS.txt");
  Golden g = ReadGolden(testing::FixturePath("stories260K.greedy-from-BOS.txt"));
  ASSERT_EQ(g.greedy.size(), 256u);
  ASSERT_EQ(g.pos.size(), 3u);
  auto model = LoadOrDie(testing::FixturePath("stories260K.gguf"));
  ASSERT_TRUE(model);
  auto runner = MakeRunner(*model, GetParam(), 16);
  const int V = model->config().n_vocab;
  // f32 KV must match the float64 golden values to 1e-3; f16 KV rounds K/V to 11 bits, so its
  // logits are checked to 3e-2 (the greedy continuation must still match exactly).
  const double tol = GetParam() == KvDtype::kF32 ? 1e-3 : 3e-2;

  Sequence seq;
  std::vector<float> logits;
  const std::vector<int32_t> input = {1, 403, 407};
  ASSERT_TRUE(runner->Prefill(seq, input, LogitsMode::kAll, &logits).ok());
  for (int p = 0; p < 3; ++p) {
    const float* row = logits.data() + p * V;
    double sum = 0, l2 = 0;
    for (int i = 0; i < V; ++i) sum += row[i], l2 += double{row[i]} * row[i];
    for (int k = 0; k < 5; ++k) {
      EXPECT_NEAR(row[g.pos[p].top_ids[k]], g.pos[p].top_values[k], tol) << "pos " << p;
      EXPECT_NEAR(row[k], g.pos[p].first5[k], tol) << "pos " << p << " logit " << k;
    }
    EXPECT_EQ(testutil::Argmax(row, V), g.pos[p].top_ids[0]);
    EXPECT_NEAR(sum, g.pos[p].sum, tol * V) << "pos " << p;
    EXPECT_NEAR(std::sqrt(l2), g.pos[p].l2, tol * 10) << "pos " << p;
  }
  runner->Release(seq);

  const std::vector<int32_t> bos = {1};
  ASSERT_TRUE(runner->Prefill(seq, bos, LogitsMode::kLast, &logits).ok());
  std::vector<int32_t> got = testutil::Greedy(*runner, seq, logits, 256);
  EXPECT_EQ(got, g.greedy);
}

INSTANTIATE_TEST_SUITE_P(KvTypes, GoldenTest, ::testing::Values(KvDtype::kF32, KvDtype::kF16),
                         [](const auto& info) { return std::string(KvDtypeName(info.param)); });

}  // namespace
}  // namespace kvstash::engine

namespace kvstash::engine {
namespace {

// Weights read into huge-page memory compute exactly what the mapped file does.
TEST(WeightMemoryTest, RamAndMmapGiveIdenticalLogits) {
  const std::string path = testutil::SyntheticModel("tiny-qwen3", "q4_k");
  std::vector<float> out[2];
  const WeightMemory modes[2] = {WeightMemory::kMmap, WeightMemory::kRam};
  for (int i = 0; i < 2; ++i) {
    auto model = Model::Load(path, modes[i]);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    EXPECT_EQ((*model)->gguf().memory(), modes[i]);
    auto runner = testutil::MakeRunner(**model, KvDtype::kF32, 16);
    Sequence seq;
    const std::vector<int32_t> ids = {1, 5, 9, 200, 31, 7, 77, 120};
    ASSERT_TRUE(runner->Prefill(seq, ids, LogitsMode::kAll, &out[i]).ok());
  }
  EXPECT_EQ(out[0], out[1]);
  EXPECT_TRUE(ParseWeightMemory("auto").ok());
  EXPECT_FALSE(ParseWeightMemory("disk").ok());
  auto missing = Model::Load("/nonexistent.gguf", WeightMemory::kRam);
  EXPECT_FALSE(missing.ok());
}

// Huge-page memory (the `ram` weights and the repacked copies): on a 2 MiB boundary, whole 2 MiB
// pages, zero-filled and writable, unmapped by its deleter.
TEST(WeightMemoryTest, HugePagesStartOnA2MiBBoundaryInWholePages) {
  constexpr size_t kHuge = size_t{2} << 20;
  for (size_t bytes : {size_t{0}, size_t{1}, kHuge, kHuge + 4096, 5 * kHuge - 1}) {
    SCOPED_TRACE(bytes);
    HugePages m = MapHugePages(bytes);
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(m.get()) % kHuge, 0u);
    const size_t len = m.get_deleter().len;
    EXPECT_EQ(len % kHuge, 0u);
    EXPECT_GE(len, std::max<size_t>(bytes, 1));
    EXPECT_LT(len, std::max<size_t>(bytes, 1) + kHuge);
    EXPECT_EQ(m.get()[0], 0);
    EXPECT_EQ(m.get()[len - 1], 0);
    m.get()[len - 1] = 7;
    EXPECT_EQ(m.get()[len - 1], 7);
  }
}

// The pages a backend gives back (it computes from a copy of its own) read as the file's bytes
// afterwards in both modes: a runner created after the release computes the logits of one
// created before. Only whole pages (2 MiB in `ram` mode, so no huge page still in use is split)
// of this file's bytes are released.
TEST(WeightMemoryTest, ReleasedPagesStillReadAsTheFile) {
  const std::string path = testutil::SyntheticModel("tiny-qwen3", "f32");  // > 2 MiB
  std::ifstream in(path, std::ios::binary);
  const std::vector<uint8_t> file((std::istreambuf_iterator<char>(in)), {});
  ASSERT_GT(file.size(), 3u << 20);
  for (WeightMemory mode : {WeightMemory::kMmap, WeightMemory::kRam}) {
    SCOPED_TRACE(WeightMemoryName(mode));
    auto model = Model::Load(path, mode);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    const GgufFile& g = (*model)->gguf();
    EXPECT_FALSE(g.ReleaseResident(g.bytes().data() + 8, 100));  // no whole page inside
    EXPECT_FALSE(g.ReleaseResident(file.data(), file.size()));   // not this file's bytes
    EXPECT_FALSE(g.ReleaseResident(g.bytes().data() + 1, g.bytes().size()));  // past its end
    std::vector<float> out[2];
    const std::vector<int32_t> ids = {1, 5, 9, 200, 31, 7, 77, 120};
    for (int i = 0; i < 2; ++i) {
      auto runner = testutil::MakeRunner(**model, KvDtype::kF32, 16);
      Sequence seq;
      ASSERT_TRUE(runner->Prefill(seq, ids, LogitsMode::kAll, &out[i]).ok());
      if (i == 0) {
        EXPECT_TRUE(g.ReleaseResident(g.bytes().data(), g.bytes().size()));
      }
    }
    EXPECT_EQ(out[0], out[1]);
    EXPECT_EQ(0, std::memcmp(g.bytes().data(), file.data(), file.size()));
  }
  auto bytes = GgufFile::OpenBytes(file);
  ASSERT_TRUE(bytes.ok());
  EXPECT_FALSE((*bytes)->ReleaseResident(file.data() + (2u << 20), 16384));
}

}  // namespace
}  // namespace kvstash::engine
