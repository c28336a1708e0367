// What the cache does with bad bytes and failing calls from its store: session manifests that are
// well-formed JSON with wrong field types become Corruption naming the session and the field
// (never an exception), and store errors the cache absorbs (failed reads, erases, metadata and
// block writes) are counted in CacheStats and logged once per cause.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "base/logging.h"
#include "cache/prefix_cache.h"
#include "tests/cache/cache_test_util.h"

namespace kvstash::cache {
namespace {

using storage::testing::RealDiskTestRoot;
using storage::testing::TempDir;
using testutil::MakePrompt;
using Json = nlohmann::json;

// A BlockStore that forwards to a real one and fails the calls a test asks it to (a fake, not a
// mock). Flags may be flipped while the write-behind thread runs, hence atomics.
class FlakyStore final : public storage::BlockStore {
 public:
  explicit FlakyStore(storage::BlockStore& inner) : inner_(inner) {}

  std::atomic<bool> fail_get_many{false};  // GetMany itself fails
  std::atomic<bool> fail_reads{false};     // GetMany succeeds, every block is an IOError
  std::atomic<bool> fail_puts{false};      // every Put completes with an IOError
  std::atomic<bool> fail_erase{false};
  std::atomic<bool> fail_put_meta{false};
  std::atomic<bool> fail_put_session{false};

  Status GetMany(std::span<const storage::BlockKey> keys,
                 std::span<const std::span<std::byte>> destinations,
                 std::span<storage::ReadResult> results) override {
    if (fail_get_many) return Status::IOError("injected: GetMany failed");
    KV_RETURN_IF_ERROR(inner_.GetMany(keys, destinations, results));
    if (fail_reads) {
      for (auto& r : results) r.status = Status::IOError("injected: read failed");
    }
    return Status::Ok();
  }
  bool Contains(const storage::BlockKey& key) const override { return inner_.Contains(key); }
  std::optional<uint64_t> PayloadBytes(const storage::BlockKey& key) const override {
    return inner_.PayloadBytes(key);
  }
  std::vector<storage::BlockKey> ListKeys() const override { return inner_.ListKeys(); }
  Status Erase(const storage::BlockKey& key) override {
    return fail_erase ? Status::IOError("injected: erase failed") : inner_.Erase(key);
  }
  Status Flush() override { return inner_.Flush(); }
  storage::StoreStats Stats() const override { return inner_.Stats(); }
  Status Close() override { return inner_.Close(); }
  Status PutMeta(std::string_view key, std::string_view value) override {
    return fail_put_meta ? Status::IOError("injected: meta write failed")
                         : inner_.PutMeta(key, value);
  }
  Result<std::string> GetMeta(std::string_view key) const override { return inner_.GetMeta(key); }
  Status DeleteMeta(std::string_view key) override { return inner_.DeleteMeta(key); }
  Status PutSession(std::string_view name, std::string_view manifest) override {
    return fail_put_session ? Status::IOError("injected: session write failed")
                            : inner_.PutSession(name, manifest);
  }
  Result<std::string> GetSession(std::string_view name) const override {
    return inner_.GetSession(name);
  }
  Result<std::vector<std::string>> ListSessions() const override { return inner_.ListSessions(); }
  Status DeleteSession(std::string_view name) override { return inner_.DeleteSession(name); }

 protected:
  void DoPut(const storage::BlockKey& key, const storage::BlockHeader& header,
             std::span<const std::byte> payload, storage::PutCallback done) override {
    if (fail_puts) {
      done(Status::IOError("injected: put failed"));
      return;
    }
    inner_.Put(key, header, payload, std::move(done));
  }

 private:
  storage::BlockStore& inner_;
};

// Collects what the default logger writes at warn level while it lives (whatever
// KVSTASH_LOG_LEVEL says). Tests flush the cache before it goes, so no other thread logs while
// the sink list changes.
class LogCapture {
 public:
  LogCapture()
      : sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(out_)),
        level_(DefaultLogger()->level()) {
    DefaultLogger()->sinks().push_back(sink_);
    if (level_ > spdlog::level::warn) DefaultLogger()->set_level(spdlog::level::warn);
  }
  ~LogCapture() {
    DefaultLogger()->set_level(level_);
    auto& sinks = DefaultLogger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
  }
  int Count(const std::string& needle) const {
    const std::string text = out_.str();
    int n = 0;
    for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
      ++n;
    }
    return n;
  }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
  spdlog::level::level_enum level_;
};

class ManifestCorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = testutil::SyntheticModel("tiny-qwen3", "q8_0");
    model_ = testutil::LoadOrDie(path_);
    ASSERT_NE(model_, nullptr);
    V_ = model_->config().n_vocab;
    runner_ = engine::testutil::MakeRunner(*model_, engine::KvDtype::kF16, kBlockTokens);
    ASSERT_NE(runner_, nullptr);
    dir_ = std::make_unique<TempDir>(RealDiskTestRoot(), "cache-manifest");
    storage::Options so;
    so.path = dir_->Sub("store");
    so.capacity_bytes = 64ull << 20;
    so.segment_bytes = 4ull << 20;
    auto st = storage::BlockStore::Open(so);
    ASSERT_TRUE(st.ok()) << st.status().ToString();
    real_ = std::move(*st);
    store_ = std::make_unique<FlakyStore>(*real_);
    OpenCache();
  }
  void TearDown() override {
    cache_.reset();
    if (real_) {
      EXPECT_TRUE(real_->Close().ok());
    }
  }

  void OpenCache(const CacheOptions& options = {}) {
    cache_.reset();
    auto fp = FingerprintFile(path_, store_.get());
    ASSERT_TRUE(fp.ok()) << fp.status().ToString();
    const NamespaceParams ns = NamespaceFor(*model_, *fp, runner_->kv_layout(), "");
    auto c =
        PrefixCache::Create(runner_->pool(), store_.get(), ns, options, path_, model_->Describe());
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    cache_ = std::move(*c);
  }

  // Saves a session of `n` prompt tokens as `name` and returns its manifest.
  Json SaveGood(const std::string& name, int n, uint32_t seed) {
    engine::Sequence seq;
    const auto p = MakePrompt(n, V_, seed);
    EXPECT_TRUE(runner_->Prefill(seq, p, engine::LogitsMode::kNone, nullptr).ok());
    EXPECT_TRUE(cache_->SaveSession(name, seq).ok());
    cache_->Release(seq);
    auto raw = store_->GetSession(name);
    EXPECT_TRUE(raw.ok());
    return raw.ok() ? Json::parse(*raw) : Json::object();
  }

  // Full blocks of `n` prompt tokens published, durable, and out of the memory tiers.
  std::vector<int32_t> OnDiskOnly(int n, uint32_t seed) {
    auto p = MakePrompt(n, V_, seed);
    engine::Sequence seq;
    EXPECT_TRUE(runner_->Prefill(seq, p, engine::LogitsMode::kNone, nullptr).ok());
    cache_->Publish(seq);
    cache_->Release(seq);
    EXPECT_TRUE(cache_->Flush().ok());
    cache_->EvictDevice();
    return p;
  }

  static constexpr int kBlockTokens = 16;
  std::string path_;
  std::unique_ptr<engine::Model> model_;
  int V_ = 0;
  std::unique_ptr<engine::Runner> runner_;
  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<storage::BlockStore> real_;
  std::unique_ptr<FlakyStore> store_;
  std::unique_ptr<PrefixCache> cache_;
};

// One field of a good manifest replaced (or removed), and the field the error must name.
struct BadField {
  const char* session;
  const char* pointer;  // JSON pointer of the field
  Json value;
  const char* field;  // as the error names it
  bool erase = false;
};

std::vector<BadField> BadFields() {
  const Json kNone;
  return {
      {"tokens-string", "/tokens", "1 2 3", "'tokens'"},
      {"tokens-object", "/tokens", Json::object(), "'tokens'"},
      {"tokens-absent", "/tokens", kNone, "'tokens'", true},
      {"tokens-has-string", "/tokens/1", "x", "'tokens[1]'"},
      {"tokens-has-float", "/tokens/2", 2.5, "'tokens[2]'"},
      {"tokens-has-negative", "/tokens/0", -4, "'tokens[0]'"},
      {"tokens-has-huge", "/tokens/3", int64_t{1} << 40, "'tokens[3]'"},
      {"tokens-has-null", "/tokens/4", nullptr, "'tokens[4]'"},
      {"blocks-string", "/blocks", "deadbeef", "'blocks'"},
      {"blocks-has-number", "/blocks/0", 123, "'blocks[0]'"},
      {"blocks-has-short-hex", "/blocks/1", "abc", "'blocks[1]'"},
      {"namespace-number", "/namespace", 42, "'namespace'"},
      {"namespace-text-array", "/namespace_text", Json::array(), "'namespace_text'"},
      {"created-string", "/created_us", "yesterday", "'created_us'"},
      {"created-float", "/created_us", 1.5e15, "'created_us'"},
      {"last-used-negative", "/last_used_us", -1, "'last_used_us'"},
      {"model-array", "/model", Json::array({1, 2}), "'model'"},
      {"model-path-number", "/model/path", 7, "'model.path'"},
      {"model-description-bool", "/model/description", true, "'model.description'"},
      {"model-fingerprint-object", "/model/fingerprint", Json::object(), "'model.fingerprint'"},
      {"kv-string", "/kv", "f16", "'kv'"},
      {"kv-block-tokens-string", "/kv/block_tokens", "16", "'kv.block_tokens'"},
      {"tail-number", "/tail", 12345, "'tail'"},
      {"tail-not-hex", "/tail", "not-a-hash", "'tail'"},
      {"n-tokens-string", "/n_tokens", "40", "'n_tokens'"},
      {"n-tokens-not-the-count", "/n_tokens", 5, "'n_tokens'"},
      {"n-tokens-too-big", "/n_tokens", UINT64_MAX, "'n_tokens'"},
      {"bytes-float", "/bytes", 1.5, "'bytes'"},
      {"bytes-string", "/bytes", "1 MiB", "'bytes'"},
      {"format-string", "/format", "1", "'format'"},
      {"format-float", "/format", 1.0, "'format'"},
      {"format-absent", "/format", kNone, "'format'", true},
  };
}

TEST_F(ManifestCorruptionTest, WrongFieldTypesAreCorruptionNamingSessionAndField) {
  const Json good = SaveGood("good", 40, 1);  // 2 full blocks + an 8-token tail
  ASSERT_TRUE(good.contains("tail"));
  const std::vector<BadField> cases = BadFields();
  for (const BadField& c : cases) {
    Json m = good;
    const Json::json_pointer ptr(c.pointer);
    if (c.erase) {
      m.erase(ptr.back());
    } else {
      m[ptr] = c.value;
    }
    ASSERT_TRUE(store_->PutSession(c.session, m.dump()).ok());
  }

  // Listed (not skipped) with the error, so the user can see and remove them.
  Result<std::vector<SessionInfo>> list = Status::Internal("not run");
  ASSERT_NO_THROW(list = ListSessions(*store_));
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  ASSERT_EQ(list->size(), cases.size() + 1);
  for (const SessionInfo& s : *list) {
    if (s.name == "good") {
      EXPECT_EQ(s.tokens, 40);
      continue;
    }
    const auto c = std::find_if(cases.begin(), cases.end(),
                                [&](const BadField& b) { return s.name == b.session; });
    ASSERT_NE(c, cases.end()) << s.name;
    EXPECT_EQ(s.tokens, 0) << s.name;
    EXPECT_EQ(s.model_description.rfind("Corruption: session '" + s.name + "'", 0), 0u)
        << s.model_description;
    EXPECT_NE(s.model_description.find(c->field), std::string::npos) << s.model_description;
  }

  // The bad copies leave the good session alone.
  {
    engine::Sequence seq;
    auto r = cache_->RestoreSession("good", seq, 1);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(seq.n_past(), 39);
    cache_->Release(seq);
  }

  for (const BadField& c : cases) {
    engine::Sequence seq;
    Result<PrefixCache::Restored> r = Status::Internal("not run");
    ASSERT_NO_THROW(r = cache_->RestoreSession(c.session, seq, 1)) << c.session;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption)
        << c.session << ": " << r.status().ToString();
    EXPECT_NE(r.status().message().find(std::string("'") + c.session + "'"), std::string::npos)
        << r.status().ToString();
    EXPECT_NE(r.status().message().find(c.field), std::string::npos) << r.status().ToString();
    EXPECT_TRUE(seq.tokens.empty() && seq.block_table.empty()) << c.session;
    // A broken session can always be removed.
    Status d = Status::Internal("not run");
    ASSERT_NO_THROW(d = DeleteSession(*store_, c.session)) << c.session;
    EXPECT_TRUE(d.ok()) << c.session << ": " << d.ToString();
    EXPECT_EQ(store_->GetSession(c.session).status().code(), StatusCode::kNotFound) << c.session;
  }

  // Its manifest is intact (its tail block is not: the copies named it, and deleting a session
  // erases its tail, so the good session's tail is recomputed when restored).
  engine::Sequence seq;
  auto r = cache_->RestoreSession("good", seq, 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->tokens.size(), 40u);
  EXPECT_EQ(seq.n_past(), 32);
  cache_->Release(seq);
  auto left = ListSessions(*store_);
  ASSERT_TRUE(left.ok());
  ASSERT_EQ(left->size(), 1u);
  EXPECT_EQ((*left)[0].name, "good");
}

TEST_F(ManifestCorruptionTest, ManifestThatIsNotAJsonObjectIsCorruption) {
  const std::vector<std::string> bad = {"[1, 2]", "\"text\"", "null", "42", "{", "", "\xff\xfe"};
  for (size_t i = 0; i < bad.size(); ++i) {
    ASSERT_TRUE(store_->PutSession("bad" + std::to_string(i), bad[i]).ok());
  }
  auto list = ListSessions(*store_);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), bad.size());
  for (const SessionInfo& s : *list) {
    EXPECT_NE(s.model_description.find("is not a JSON object"), std::string::npos)
        << s.model_description;
  }
  for (size_t i = 0; i < bad.size(); ++i) {
    const std::string name = "bad" + std::to_string(i);
    engine::Sequence seq;
    EXPECT_EQ(cache_->RestoreSession(name, seq).status().code(), StatusCode::kCorruption) << name;
    EXPECT_TRUE(DeleteSession(*store_, name).ok()) << name;
  }
  EXPECT_TRUE(ListSessions(*store_)->empty());
}

TEST_F(ManifestCorruptionTest, NewerManifestFormatIsIncompatibleButListedAndRemovable) {
  Json m = SaveGood("future", 40, 2);
  m["format"] = 2;
  ASSERT_TRUE(store_->PutSession("future", m.dump()).ok());
  engine::Sequence seq;
  auto r = cache_->RestoreSession("future", seq);
  EXPECT_EQ(r.status().code(), StatusCode::kIncompatible) << r.status().ToString();
  auto list = ListSessions(*store_);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_NE((*list)[0].model_description.find("format 2"), std::string::npos);
  EXPECT_TRUE(DeleteSession(*store_, "future").ok());
}

// DeleteSession needs only the tail: a manifest broken elsewhere still has its tail erased.
TEST_F(ManifestCorruptionTest, DeleteOfABrokenManifestStillErasesItsTail) {
  Json m = SaveGood("broken", 40, 3);
  ASSERT_TRUE(m["tail"].is_string());
  const std::string tail_hex = m["tail"].get<std::string>();
  auto is_tail = [&](const storage::BlockKey& k) { return k.ToHex() == tail_hex; };
  auto keys = real_->ListKeys();
  ASSERT_EQ(std::count_if(keys.begin(), keys.end(), is_tail), 1);
  m["created_us"] = "a while ago";
  ASSERT_TRUE(store_->PutSession("broken", m.dump()).ok());
  ASSERT_TRUE(DeleteSession(*store_, "broken").ok());
  keys = real_->ListKeys();
  EXPECT_EQ(std::count_if(keys.begin(), keys.end(), is_tail), 0);
  EXPECT_EQ(keys.size(), 2u);  // the full blocks stay as cache entries
}

// Replacing a session whose old manifest is broken works (created_us starts afresh).
TEST_F(ManifestCorruptionTest, SavingOverABrokenManifestReplacesIt) {
  Json m = SaveGood("again", 40, 4);
  m["created_us"] = Json::array();
  ASSERT_TRUE(store_->PutSession("again", m.dump()).ok());
  const Json saved = SaveGood("again", 40, 4);
  EXPECT_TRUE(saved["created_us"].is_number_integer());
  engine::Sequence seq;
  auto r = cache_->RestoreSession("again", seq);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  cache_->Release(seq);
}

// ---- Store errors the cache absorbs --------------------------------------------------------

TEST_F(ManifestCorruptionTest, FailedGetManyIsAMissCountedAndLoggedOnce) {
  CacheOptions o;
  o.cost_model = false;
  OpenCache(o);
  const auto p = OnDiskOnly(65, 11);  // 4 full blocks
  LogCapture log;
  store_->fail_get_many = true;
  for (int i = 0; i < 2; ++i) {
    engine::Sequence seq;
    auto r = cache_->Acquire(seq, p);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->cached_tokens, 0);
    EXPECT_EQ(r->recomputed_blocks, 4);
    cache_->Release(seq);
  }
  CacheStats cs = cache_->Stats();
  EXPECT_EQ(cs.disk_read_errors, 8u);
  EXPECT_EQ(cs.corrupt_blocks, 0u);
  EXPECT_EQ(log.Count("batched disk read failed"), 1) << log.text();
  EXPECT_EQ(log.Count("injected: GetMany failed"), 1) << log.text();

  store_->fail_get_many = false;
  engine::Sequence seq;
  auto r = cache_->Acquire(seq, p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->disk_tokens, 64);
  cache_->Release(seq);
  EXPECT_EQ(cache_->Stats().disk_read_errors, 8u);
}

TEST_F(ManifestCorruptionTest, FailedBlockReadsAreCountedPerBlockAndLoggedOnce) {
  CacheOptions o;
  o.cost_model = false;
  OpenCache(o);
  const auto p = OnDiskOnly(65, 12);
  LogCapture log;
  store_->fail_reads = true;
  for (int i = 0; i < 2; ++i) {
    engine::Sequence seq;
    auto r = cache_->Acquire(seq, p);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->cached_tokens, 0);
    cache_->Release(seq);
  }
  EXPECT_EQ(cache_->Stats().disk_read_errors, 8u);
  EXPECT_EQ(cache_->Stats().corrupt_blocks, 0u);
  EXPECT_EQ(log.Count("injected: read failed"), 1) << log.text();
}

TEST_F(ManifestCorruptionTest, FailedWriteBehindIsCountedAndLoggedOnce) {
  LogCapture log;
  store_->fail_puts = true;
  const auto p = MakePrompt(65, V_, 13);
  engine::Sequence seq;
  ASSERT_TRUE(runner_->Prefill(seq, p, engine::LogitsMode::kNone, nullptr).ok());
  cache_->Publish(seq);
  cache_->Release(seq);
  ASSERT_TRUE(cache_->Flush().ok());
  EXPECT_EQ(cache_->Stats().write_failed, 4u);
  EXPECT_EQ(log.Count("could not be written to disk"), 1) << log.text();
  EXPECT_EQ(log.Count("injected: put failed"), 1) << log.text();
}

TEST_F(ManifestCorruptionTest, FailedLastUseUpdateStillRestoresAndIsCounted) {
  SaveGood("s", 40, 14);
  LogCapture log;
  store_->fail_put_session = true;
  for (int i = 0; i < 2; ++i) {
    engine::Sequence seq;
    auto r = cache_->RestoreSession("s", seq);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(seq.n_past(), 40);
    cache_->Release(seq);
  }
  EXPECT_EQ(cache_->Stats().meta_write_errors, 2u);
  EXPECT_EQ(log.Count("injected: session write failed"), 1) << log.text();
}

TEST_F(ManifestCorruptionTest, FailedEraseOfAReplacedTailIsCounted) {
  const auto p = MakePrompt(44, V_, 15);
  engine::Sequence seq;
  const std::span<const int32_t> all(p);
  ASSERT_TRUE(runner_->Prefill(seq, all.first(40), engine::LogitsMode::kNone, nullptr).ok());
  ASSERT_TRUE(cache_->SaveSession("grow", seq).ok());
  ASSERT_TRUE(runner_->Prefill(seq, all.subspan(40), engine::LogitsMode::kNone, nullptr).ok());
  LogCapture log;
  store_->fail_erase = true;
  ASSERT_TRUE(cache_->SaveSession("grow", seq).ok());  // a new tail replaces the old one
  cache_->Release(seq);
  EXPECT_EQ(cache_->Stats().erase_errors, 1u);
  EXPECT_EQ(log.Count("injected: erase failed"), 1) << log.text();
}

TEST_F(ManifestCorruptionTest, FailedPlannerEstimateWriteIsLogged) {
  LogCapture log;
  store_->fail_put_meta = true;
  cache_.reset();  // writes the planner's estimates
  EXPECT_EQ(log.Count("saving planner estimate"), 1) << log.text();
}

}  // namespace
}  // namespace kvstash::cache
