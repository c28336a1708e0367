// protocol/codec.h: every body type survives EncodeFrame -> FrameReader -> DecodeFrame; the
// reader refuses oversize and undersize length prefixes before buffering the frame; the decoder
// refuses what the verifier refuses (garbage, truncation, wrong identifier, unknown union types)
// and reports the request id when it could be read.
#include "protocol/codec.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "protocol/kvstash_generated.h"
#include "protocol/wire_format.h"

namespace kvstash::protocol {
namespace {

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// The FlatBuffer of an encoded frame (its length prefix dropped).
std::string Payload(const std::string& encoded) { return encoded.substr(wire::kLengthPrefixBytes); }

Frame RoundTrip(const Frame& f) {
  const std::string bytes = EncodeFrame(f);
  FrameReader r(wire::kDefaultMaxFrameBytes);
  EXPECT_TRUE(r.Append(bytes.data(), bytes.size()).ok());
  auto raw = r.Next();
  EXPECT_TRUE(raw.has_value());
  auto d = DecodeFrame(Bytes(*raw));
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(r.buffered(), 0u);
  return d.ok() ? *d : Frame{};
}

TEST(CodecTest, EveryBodyTypeRoundTrips) {
  GenerateRequest g;
  g.prompt.messages = {{"system", "be brief"}, {"user", "hi"}};
  g.sampling.temperature = 0;
  g.sampling.max_tokens = 7;
  g.sampling.stop = {"\n", "END"};
  g.sampling.has_seed = true;
  g.sampling.seed = 42;
  g.stream = false;
  g.session = "s1";
  g.session_mode = SessionMode::kAppend;
  g.cache_salt = "tenant";
  Usage u;
  u.prompt_tokens = 100;
  u.cached_tokens = 96;
  u.disk_tokens = 96;
  u.ttft_ms = 1.5;
  u.finish_reason = "max_tokens";
  StatsResult st;
  st.tiers = {{"device", 1, 2, 3, 4, 5}};
  st.pages_total = 9;
  const std::vector<Body> bodies = {
      Hello{1, 0, "t"},
      HelloAck{1, 0, "kvstashd", 4096, "m", 8192, 16},
      g,
      PrefillRequest{Prompt{"ctx", {}, {}, true}, "salt", true},
      TokenizeRequest{"hello", true, false},
      DetokenizeRequest{{1, 2, 3}},
      SessionSaveRequest{"a", Prompt{"", {}, {5, 6}, true}, "b", ""},
      SessionRestoreRequest{"a", "salt"},
      SessionListRequest{},
      SessionDeleteRequest{"a"},
      StatsRequest{},
      HealthRequest{},
      CancelRequest{77},
      TokenChunk{{9, 10}, "ab"},
      Progress{10, 20, 5, 123.5},
      Done{u, "tail", {1}},
      ErrorReply{4, "bad", true},
      TokenizeResult{{4, 5}},
      DetokenizeResult{"text"},
      SessionListResult{{{"a", "m.gguf", "ff", 10, 640, 1, 2}}},
      st,
      HealthResult{"ok"},
  };
  ASSERT_EQ(bodies.size(), std::variant_size_v<Body>);
  for (size_t i = 0; i < bodies.size(); ++i) {
    ASSERT_EQ(bodies[i].index(), i);
    const Frame back = RoundTrip(Frame{1000 + i, bodies[i]});
    EXPECT_EQ(back.id, 1000 + i);
    EXPECT_EQ(back.body.index(), i) << BodyName(bodies[i]);
  }
  const Frame gb = RoundTrip(Frame{5, g});
  const auto& g2 = std::get<GenerateRequest>(gb.body);
  ASSERT_EQ(g2.prompt.messages.size(), 2u);
  EXPECT_EQ(g2.prompt.messages[1].content, "hi");
  EXPECT_EQ(g2.sampling.temperature, 0);
  EXPECT_EQ(g2.sampling.max_tokens, 7);
  EXPECT_EQ(g2.sampling.stop, (std::vector<std::string>{"\n", "END"}));
  EXPECT_EQ(g2.sampling.seed, 42u);
  EXPECT_TRUE(g2.sampling.has_seed);
  EXPECT_FALSE(g2.stream);
  EXPECT_EQ(g2.session_mode, SessionMode::kAppend);
  EXPECT_EQ(g2.cache_salt, "tenant");
  const auto d = std::get<Done>(RoundTrip(Frame{6, Done{u, "tail", {1}}}).body);
  ASSERT_TRUE(d.usage.has_value());
  EXPECT_EQ(d.usage->cached_tokens, 96);
  EXPECT_EQ(d.usage->ttft_ms, 1.5);
  EXPECT_EQ(d.usage->finish_reason, "max_tokens");
  EXPECT_FALSE(std::get<Done>(RoundTrip(Frame{7, Done{}}).body).usage.has_value());
  const auto s = std::get<StatsResult>(RoundTrip(Frame{8, st}).body);
  ASSERT_EQ(s.tiers.size(), 1u);
  EXPECT_EQ(s.tiers[0].evictions, 5u);
  EXPECT_EQ(s.pages_total, 9u);
}

TEST(CodecTest, DefaultsOfAnEmptyGenerateAreTheDaemonDefaults) {
  const auto g = std::get<GenerateRequest>(RoundTrip(Frame{1, GenerateRequest{}}).body);
  EXPECT_LT(g.sampling.temperature, 0);
  EXPECT_LT(g.sampling.max_tokens, 0);
  EXPECT_TRUE(g.stream);
  EXPECT_EQ(g.session_mode, SessionMode::kPrefix);
}

TEST(CodecTest, FramesSplitAnywhereAreReassembled) {
  std::string stream;
  for (int i = 1; i <= 50; ++i) stream += EncodeFrame(Frame{uint64_t(i), TokenizeRequest{"x"}});
  std::mt19937 rng(1);
  FrameReader r(wire::kDefaultMaxFrameBytes);
  size_t pos = 0;
  uint64_t expect = 1;
  while (pos < stream.size()) {
    const size_t n = std::min<size_t>(stream.size() - pos, 1 + rng() % 13);
    ASSERT_TRUE(r.Append(stream.data() + pos, n).ok());
    pos += n;
    while (auto raw = r.Next()) {
      auto f = DecodeFrame(Bytes(*raw));
      ASSERT_TRUE(f.ok());
      EXPECT_EQ(f->id, expect++);
    }
  }
  EXPECT_EQ(expect, 51u);
}

TEST(CodecTest, OversizeLengthIsRefusedBeforeTheBodyIsBuffered) {
  FrameReader r(4096);
  const unsigned char prefix[4] = {0xff, 0xff, 0xff, 0xff};  // 4 GiB - 1
  Status s = r.Append(prefix, 2);
  EXPECT_TRUE(s.ok());
  s = r.Append(prefix + 2, 2);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("exceeds the limit of 4096"), std::string::npos) << s.message();
  EXPECT_EQ(r.buffered(), 0u);
  // Poisoned: the stream cannot be resynchronized.
  EXPECT_FALSE(r.Append("abcd", 4).ok());
  EXPECT_FALSE(r.Next().has_value());
}

TEST(CodecTest, OversizeFrameAfterAGoodOneInTheSameChunk) {
  std::string bytes = EncodeFrame(Frame{1, HealthRequest{}});
  bytes += std::string("\x00\x00\x01\x00", 4) + std::string(100, 'x');  // 64 KiB claimed
  FrameReader r(4096);
  ASSERT_TRUE(r.Append(bytes.data(), bytes.size()).ok());
  EXPECT_TRUE(r.Next().has_value());
  EXPECT_TRUE(r.status().ok());
  EXPECT_FALSE(r.Next().has_value());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);  // found by Next, reported here
  EXPECT_FALSE(r.Append("x", 1).ok());
}

TEST(CodecTest, TooShortLengthIsRefused) {
  FrameReader r(4096);
  const char prefix[4] = {3, 0, 0, 0};
  EXPECT_EQ(r.Append(prefix, 4).code(), StatusCode::kInvalidArgument);
}

TEST(CodecTest, GarbageTruncationAndWrongIdentifierFailVerification) {
  const std::string good = Payload(EncodeFrame(Frame{9, TokenizeRequest{"hello world"}}));
  ASSERT_TRUE(DecodeFrame(Bytes(good)).ok());
  for (size_t cut = 0; cut < good.size(); ++cut) {
    uint64_t id = 1234;
    EXPECT_FALSE(DecodeFrame(Bytes(good.substr(0, cut)), &id).ok()) << cut;
    EXPECT_EQ(id, wire::kConnectionId);
  }
  std::string wrong = good;
  wrong[4] = 'X';
  EXPECT_NE(DecodeFrame(Bytes(wrong)).status().message().find("identifier"), std::string::npos);
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::string g(8 + rng() % 200, '\0');
    for (char& c : g) c = static_cast<char>(rng());
    if (i % 2 == 0) g.replace(4, 4, wire::kFileIdentifier);
    EXPECT_FALSE(DecodeFrame(Bytes(g)).ok());  // never crashes; essentially never valid
  }
}

TEST(CodecTest, UnknownUnionTypeIsAnErrorThatKeepsTheId) {
  flatbuffers::FlatBufferBuilder b;
  auto body = fb::CreateHealth(b).Union();
  b.Finish(fb::CreateFrame(b, 31, static_cast<fb::Body>(200), body), fb::FrameIdentifier());
  const std::string buf(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
  uint64_t id = 0;
  auto f = DecodeFrame(Bytes(buf), &id);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("unknown frame type 200"), std::string::npos);
  EXPECT_EQ(id, 31u);
}

TEST(CodecTest, NestingBeyondTheDepthLimitFailsVerification) {
  // Frame -> Generate -> Prompt -> [ChatMessage] is 4 deep: fine. The verifier's depth limit is
  // what stops a crafted buffer whose offsets loop back into themselves.
  flatbuffers::FlatBufferBuilder b;
  auto body = fb::CreateGenerate(b, fb::CreatePrompt(b)).Union();
  b.Finish(fb::CreateFrame(b, 1, fb::Body_Generate, body), fb::FrameIdentifier());
  const std::string buf(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
  flatbuffers::Verifier shallow(reinterpret_cast<const uint8_t*>(buf.data()), buf.size(), 2);
  EXPECT_FALSE(fb::VerifyFrameBuffer(shallow));
  EXPECT_TRUE(DecodeFrame(Bytes(buf)).ok());
}

// Regression: the verifier passes a union type without its table; decoding dereferenced the
// missing table (found by the malformed-frame test against a live daemon).
TEST(CodecTest, UnionTypeWithoutItsTableIsAnError) {
  for (int type = 1; type <= static_cast<int>(fb::Body_MAX); ++type) {
    flatbuffers::FlatBufferBuilder b;
    fb::FrameBuilder fbld(b);
    fbld.add_id(2);
    fbld.add_body_type(static_cast<fb::Body>(type));
    b.Finish(fbld.Finish(), fb::FrameIdentifier());
    const std::string buf(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
    uint64_t id = 0;
    auto f = DecodeFrame(Bytes(buf), &id);
    ASSERT_FALSE(f.ok()) << type;
    EXPECT_NE(f.status().message().find("has no body table"), std::string::npos);
    EXPECT_EQ(id, 2u);
  }
}

TEST(CodecTest, NoBodyIsAnError) {
  flatbuffers::FlatBufferBuilder b;
  b.Finish(fb::CreateFrame(b, 3), fb::FrameIdentifier());
  const std::string buf(reinterpret_cast<const char*>(b.GetBufferPointer()), b.GetSize());
  EXPECT_NE(DecodeFrame(Bytes(buf)).status().message().find("no body"), std::string::npos);
}

TEST(CodecTest, RequestsAndFinalFramesAreClassified) {
  EXPECT_TRUE(IsRequest(GenerateRequest{}));
  EXPECT_FALSE(IsRequest(Done{}));
  EXPECT_TRUE(IsFinal(Done{}));
  EXPECT_TRUE(IsFinal(ErrorReply{}));
  EXPECT_FALSE(IsFinal(TokenChunk{}));
  EXPECT_FALSE(IsFinal(Progress{}));
  EXPECT_STREQ(BodyName(StatsRequest{}), "Stats");
}

}  // namespace
}  // namespace kvstash::protocol
