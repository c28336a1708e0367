#include "cache/prefix_cache.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_map>
#include <utility>

#include "base/clock.h"
#include "base/logging.h"
#include "cache/write_behind.h"
#include "storage/block_store.h"

namespace kvstash::cache {
namespace {

constexpr double kDefaultDiskBytesPerS = 1e9;
constexpr double kHostCopyBytesPerS = 8e9;  // memcpy estimate for host-tier loads
constexpr double kDiskBatchOverheadMs = 0.2;
constexpr double kEwmaWeight = 0.3;
constexpr int kManifestFormat = 1;
constexpr std::string_view kRateMetaPrefix = "planner/v1/";

struct Freer {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBytes = std::unique_ptr<std::byte[], Freer>;

AlignedBytes AllocAligned(size_t n) {
  const size_t rounded = (n + 4095) & ~size_t{4095};
  return AlignedBytes(static_cast<std::byte*>(std::aligned_alloc(4096, rounded)));
}

std::string HashHex(const Hash128& h) { return h.ToHex(); }

Result<Hash128> ParseHex(const std::string& s) {
  if (s.size() != 32) return Status::Corruption("bad hash '" + s + "'");
  Hash128 h;
  for (size_t i = 0; i < 32; ++i) {
    const char c = s[i];
    uint64_t v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else {
      return Status::Corruption("bad hash '" + s + "'");
    }
    uint64_t& half = i < 16 ? h.hi : h.lo;
    half = (half << 4) | v;
  }
  return h;
}

// Session manifests are JSON that anything with access to the store directory may have written,
// so every read goes through FieldReader: nlohmann's .value()/.get() throw on a type mismatch,
// and no exception may leave cache/. A field that is absent keeps its default (except `format`
// and `tokens`, which a manifest cannot do without); one that is present with the wrong type or
// out of range is Corruption naming the session and the field.
using Json = nlohmann::json;

class FieldReader {
 public:
  // `obj` must be an object and outlive the reader; `prefix` names it ("model." for a member).
  FieldReader(const std::string& session, const Json& obj, std::string prefix = "")
      : session_(session), obj_(obj), prefix_(std::move(prefix)) {}

  const Json* Find(const char* key) const {
    auto it = obj_.find(key);
    return it == obj_.end() ? nullptr : &*it;
  }
  Status Bad(const std::string& field, const std::string& want) const {
    return Status::Corruption("session '" + session_ + "' manifest: field '" + prefix_ + field +
                              "' is not " + want);
  }
  Status String(const char* key, std::string* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return Status::Ok();
    if (!v->is_string()) return Bad(key, "a string");
    *out = v->get<std::string>();
    return Status::Ok();
  }
  // An integer in [lo, INT64_MAX].
  Status Int(const char* key, int64_t lo, int64_t* out) const {
    const Json* v = Find(key);
    if (v == nullptr) return Status::Ok();
    std::optional<int64_t> i = IntOf(*v, lo, INT64_MAX);
    if (!i) return Bad(key, lo == 0 ? "a non-negative integer" : "an integer");
    *out = *i;
    return Status::Ok();
  }
  Status Hash(const std::string& field, const Json& v, Hash128* out) const {
    if (v.is_string()) {
      if (Result<Hash128> h = ParseHex(v.get<std::string>()); h.ok()) {
        *out = *h;
        return Status::Ok();
      }
    }
    return Bad(field, "a hash (32 lowercase hex digits)");
  }
  // The member object `key` (an empty object when absent).
  Result<FieldReader> Object(const char* key) const {
    const Json* v = Find(key);
    if (v != nullptr && !v->is_object()) return Bad(key, "an object");
    return FieldReader(session_, v != nullptr ? *v : Empty(), prefix_ + key + ".");
  }

  static std::optional<int64_t> IntOf(const Json& v, int64_t lo, int64_t hi) {
    int64_t i;
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
      i = static_cast<int64_t>(u);
    } else if (v.is_number_integer()) {
      i = v.get<int64_t>();
    } else {
      return std::nullopt;
    }
    if (i < lo || i > hi) return std::nullopt;
    return i;
  }

 private:
  static const Json& Empty() {
    static const Json kEmpty = Json::object();
    return kEmpty;
  }
  const std::string& session_;
  const Json& obj_;
  std::string prefix_;
};

// A session manifest as SaveSession writes it (docs/cache.md), every field type-checked.
struct Manifest {
  Json raw;  // the stored object (RestoreSession writes it back with a new last_used_us)
  std::string ns_hex, ns_text;
  std::string model_path, model_description, model_fingerprint;
  std::string kv_dtype;
  int64_t kv_block_tokens = 0;
  int64_t n_tokens = -1;  // -1 until read (absent: the number of tokens)
  std::vector<int32_t> tokens;
  std::vector<Hash128> blocks;
  std::optional<Hash128> tail;
  int64_t bytes = 0;
  int64_t created_us = 0, last_used_us = 0;
};

// The manifest bytes of `name` as a JSON object of a format this kvstash reads.
Result<Json> LoadManifestJson(storage::BlockStore& store, const std::string& name) {
  Result<std::string> raw = store.GetSession(name);
  if (!raw.ok()) {
    if (raw.status().code() == StatusCode::kNotFound) {
      return Status::NotFound("no session named '" + name + "'");
    }
    return raw.status().WithContext("session '" + name + "'");
  }
  Json m = Json::parse(*raw, nullptr, /*allow_exceptions=*/false);
  if (m.is_discarded() || !m.is_object()) {
    return Status::Corruption("session '" + name + "' manifest is not a JSON object");
  }
  const Json* format = FieldReader(name, m).Find("format");
  if (format == nullptr) return FieldReader(name, m).Bad("format", "present");
  const std::optional<int64_t> f = FieldReader::IntOf(*format, INT64_MIN, INT64_MAX);
  if (!f) return FieldReader(name, m).Bad("format", "an integer");
  if (*f != kManifestFormat) {
    return Status::Incompatible("session '" + name + "' has manifest format " + std::to_string(*f) +
                                "; this kvstash reads " + std::to_string(kManifestFormat));
  }
  return m;
}

Status ParseTail(const FieldReader& r, std::optional<Hash128>* tail) {
  const Json* v = r.Find("tail");
  if (v == nullptr) return Status::Ok();
  Hash128 h;
  KV_RETURN_IF_ERROR(r.Hash("tail", *v, &h));
  *tail = h;
  return Status::Ok();
}

Status ParseTokens(const FieldReader& r, Manifest* m) {
  const Json* v = r.Find("tokens");
  if (v == nullptr || !v->is_array()) return r.Bad("tokens", "an array of token ids");
  m->tokens.reserve(v->size());
  for (const Json& t : *v) {
    const std::optional<int64_t> id = FieldReader::IntOf(t, 0, INT32_MAX);
    if (!id) {
      return r.Bad("tokens[" + std::to_string(m->tokens.size()) + "]",
                   "a token id (an integer in [0, 2^31))");
    }
    m->tokens.push_back(static_cast<int32_t>(*id));
  }
  const int64_t n = static_cast<int64_t>(m->tokens.size());
  if (m->n_tokens < 0) m->n_tokens = n;
  if (m->n_tokens != n) {
    return r.Bad("n_tokens", "the number of tokens (" + std::to_string(n) + ")");
  }
  return Status::Ok();
}

Status ParseBlocks(const FieldReader& r, Manifest* m) {
  const Json* v = r.Find("blocks");
  if (v == nullptr) return Status::Ok();
  if (!v->is_array()) return r.Bad("blocks", "an array of hashes");
  for (const Json& b : *v) {
    Hash128 h;
    KV_RETURN_IF_ERROR(r.Hash("blocks[" + std::to_string(m->blocks.size()) + "]", b, &h));
    m->blocks.push_back(h);
  }
  return Status::Ok();
}

Result<Manifest> ParseManifest(const std::string& name, Json raw) {
  Manifest m;
  const FieldReader r(name, raw);
  KV_RETURN_IF_ERROR(r.String("namespace", &m.ns_hex));
  KV_RETURN_IF_ERROR(r.String("namespace_text", &m.ns_text));
  KV_ASSIGN_OR_RETURN(const FieldReader model, r.Object("model"));
  KV_RETURN_IF_ERROR(model.String("path", &m.model_path));
  KV_RETURN_IF_ERROR(model.String("description", &m.model_description));
  KV_RETURN_IF_ERROR(model.String("fingerprint", &m.model_fingerprint));
  KV_ASSIGN_OR_RETURN(const FieldReader kv, r.Object("kv"));
  KV_RETURN_IF_ERROR(kv.String("dtype", &m.kv_dtype));
  KV_RETURN_IF_ERROR(kv.Int("block_tokens", 0, &m.kv_block_tokens));
  KV_RETURN_IF_ERROR(r.Int("n_tokens", 0, &m.n_tokens));
  KV_RETURN_IF_ERROR(r.Int("bytes", 0, &m.bytes));
  KV_RETURN_IF_ERROR(r.Int("created_us", 0, &m.created_us));
  KV_RETURN_IF_ERROR(r.Int("last_used_us", 0, &m.last_used_us));
  KV_RETURN_IF_ERROR(ParseTokens(r, &m));
  KV_RETURN_IF_ERROR(ParseBlocks(r, &m));
  KV_RETURN_IF_ERROR(ParseTail(r, &m.tail));
  m.raw = std::move(raw);
  return m;
}

Result<Manifest> LoadManifest(storage::BlockStore& store, const std::string& name) {
  KV_ASSIGN_OR_RETURN(Json raw, LoadManifestJson(store, name));
  return ParseManifest(name, std::move(raw));
}

SessionInfo InfoFromManifest(const std::string& name, const Manifest& m) {
  SessionInfo s;
  s.name = name;
  s.model_path = m.model_path;
  s.model_description = m.model_description;
  s.model_fingerprint = m.model_fingerprint;
  s.tokens = m.n_tokens;
  s.bytes = static_cast<uint64_t>(m.bytes);
  s.created_us = m.created_us;
  s.last_used_us = m.last_used_us;
  return s;
}

}  // namespace

const char* WritePolicyName(WritePolicy p) {
  switch (p) {
    case WritePolicy::kAlways:
      return "always";
    case WritePolicy::kOnEvict:
      return "on-evict";
    case WritePolicy::kNever:
      return "never";
  }
  return "?";
}

Result<WritePolicy> ParseWritePolicy(const std::string& name) {
  if (name == "always") return WritePolicy::kAlways;
  if (name == "on-evict") return WritePolicy::kOnEvict;
  if (name == "never") return WritePolicy::kNever;
  return Status::InvalidArgument("unknown write policy '" + name +
                                 "' (expected always, on-evict or never)");
}

Status ValidateSessionName(const std::string& name) {
  if (name.empty() || name.size() > 128) {
    return Status::InvalidArgument("session name must be 1 to 128 characters");
  }
  if (name[0] == '.' || name[0] == '-') {
    return Status::InvalidArgument("session name '" + name + "' must not start with '.' or '-'");
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return Status::InvalidArgument("session name '" + name +
                                     "' may only use letters, digits, '.', '_' and '-'");
    }
  }
  return Status::Ok();
}

Result<std::vector<SessionInfo>> ListSessions(storage::BlockStore& store) {
  KV_ASSIGN_OR_RETURN(std::vector<std::string> names, store.ListSessions());
  std::vector<SessionInfo> out;
  for (const std::string& name : names) {
    Result<Manifest> m = LoadManifest(store, name);
    if (!m.ok()) {
      // Listed, not skipped: the user sees the broken session and can remove it.
      SessionInfo s;
      s.name = name;
      s.model_description = m.status().ToString();
      out.push_back(std::move(s));
      continue;
    }
    out.push_back(InfoFromManifest(name, *m));
  }
  return out;
}

Status DeleteSession(storage::BlockStore& store, const std::string& name) {
  KV_RETURN_IF_ERROR(ValidateSessionName(name));
  // Only the tail is needed, so a manifest broken elsewhere still gives its tail back; one that
  // cannot be read at all is removed anyway, so a broken session never becomes undeletable.
  Result<Json> m = LoadManifestJson(store, name);
  if (!m.ok() && m.status().code() == StatusCode::kNotFound) return m.status();
  std::optional<Hash128> tail;
  Status s = m.ok() ? ParseTail(FieldReader(name, *m), &tail) : m.status();
  if (!s.ok()) {
    DefaultLogger()->warn(
        "removing session '{}' without its tail block ({}): the block, if any, "
        "stays until its segment is evicted",
        name, s.ToString());
  }
  if (tail) KV_RETURN_IF_ERROR(store.Erase(*tail));
  return store.DeleteSession(name);
}

// ---------------------------------------------------------------------------------------------

class PrefixCache::Impl {
 public:
  Impl(engine::KvPool& pool, storage::BlockStore* store, const NamespaceParams& ns,
       const CacheOptions& options, std::string model_path, std::string model_description)
      : pool_(pool),
        store_(store),
        ns_params_(ns),
        ns_(NamespaceHash(ns)),
        options_(options),
        layout_(pool.layout()),
        block_bytes_(layout_.block_bytes()),
        bt_(layout_.block_tokens),
        layout_tag_(ns_.lo ^ ns_.hi),
        model_path_(std::move(model_path)),
        model_description_(std::move(model_description)) {
    page_cached_.assign(pool.n_pages(), false);
    disk_bps_ = options.disk_read_bytes_per_s;
    prefill_tps_ = options.prefill_tokens_per_s;
    if (store_ != nullptr) {
      if (disk_bps_ <= 0) disk_bps_ = ReadRateMeta("disk_read_bytes_per_s");
      if (prefill_tps_ <= 0) prefill_tps_ = ReadRateMeta("prefill_tokens_per_s/" + HashHex(ns_));
      if (options.write_policy != WritePolicy::kNever) {
        writer_ = std::make_unique<WriteBehind>(*store_, options.write_queue_blocks,
                                                options.write_queue_bytes);
      }
    }
    if (disk_bps_ <= 0) disk_bps_ = kDefaultDiskBytesPerS;
    pool_.SetReclaimer([this] { return EvictOneDevicePage(); });
  }

  ~Impl() {
    pool_.SetReclaimer(nullptr);
    // Under on-evict, blocks still in memory are persisted now (the process is going away).
    if (options_.write_policy == WritePolicy::kOnEvict) {
      EvictDevice();
      DropHost();
    }
    writer_.reset();  // drains the queue
    if (store_ != nullptr) {
      WriteRateMeta("disk_read_bytes_per_s", disk_bps_);
      if (prefill_tps_ > 0) WriteRateMeta("prefill_tokens_per_s/" + HashHex(ns_), prefill_tps_);
    }
    for (auto& [key, e] : device_) pool_.Unref(e.page);
    device_.clear();
  }

  const Hash128& ns() const { return ns_; }
  int ReclaimablePages() const {
    int n = 0;
    for (const auto& [key, e] : device_) n += pool_.refcount(e.page) == 1;
    return n;
  }

  // The namespace a request's salt selects: "" is the cache's own; any other salt joins the
  // cache's (ARCHITECTURE.md §3), so tenants never share blocks. Memoized; engine thread only.
  struct Root {
    Hash128 hash;
    NamespaceParams params;
  };
  const Root& RootFor(const std::string& salt) {
    auto it = roots_.find(salt);
    if (it != roots_.end()) return it->second;
    Root r;
    r.params = ns_params_;
    if (!salt.empty()) {
      r.params.cache_salt =
          ns_params_.cache_salt.empty() ? salt : ns_params_.cache_salt + "/" + salt;
    }
    r.hash = salt.empty() ? ns_ : NamespaceHash(r.params);
    return roots_.emplace(salt, std::move(r)).first->second;
  }

  Result<AcquireResult> Acquire(engine::Sequence& seq, std::span<const int32_t> tokens,
                                int max_positions, const Hash128* tail_key,
                                const std::string& salt);
  void Publish(const engine::Sequence& seq, const std::string& salt);
  void Release(engine::Sequence& seq) {
    for (int32_t p : seq.block_table) pool_.Unref(p);
    seq.block_table.clear();
    seq.tokens.clear();
    EnforceDeviceBudget();
  }
  void ObservePrefill(int tokens, double ms) {
    if (tokens < bt_ || ms <= 0) return;
    const double tps = tokens / ms * 1e3;
    std::lock_guard<std::mutex> lock(stats_mu_);
    prefill_tps_ = prefill_tps_ <= 0 ? tps : (1 - kEwmaWeight) * prefill_tps_ + kEwmaWeight * tps;
  }
  Status SaveSession(const std::string& name, const engine::Sequence& seq, const std::string& salt);
  Result<Restored> RestoreSession(const std::string& name, engine::Sequence& seq, int leave_tokens,
                                  const std::string& salt);
  Status Flush() {
    if (writer_ == nullptr) return Status::Ok();
    return writer_->Flush();
  }
  void EvictDevice() {
    std::vector<Hash128> victims;
    for (const Hash128& k : device_lru_) {
      if (pool_.refcount(device_.at(k).page) == 1) victims.push_back(k);
    }
    for (const Hash128& k : victims) EvictDeviceEntry(k);
  }
  void DropHost() {
    while (!host_lru_.empty()) EvictHostEntry(host_lru_.back());
  }
  CacheStats Stats() const {
    std::lock_guard<std::mutex> lock(stats_mu_);
    CacheStats s = stats_;
    s.device.blocks = device_count_.load();
    s.device.bytes = s.device.blocks * block_bytes_;
    s.host.blocks = host_count_.load();
    s.host.bytes = s.host.blocks * block_bytes_;
    if (store_ != nullptr) {
      const storage::StoreStats st = store_->Stats();
      s.disk.blocks = st.blocks;
      s.disk.bytes = st.live_bytes;
      s.disk.evictions = st.evicted_blocks;
    }
    if (writer_ != nullptr) {
      const WriteBehind::Counters c = writer_->counters();
      s.write_queue_depth = c.depth;
      s.write_queue_bytes = c.bytes;
      s.write_queued = c.queued;
      s.write_dropped = c.dropped;
      s.written_blocks = c.written;
      s.write_failed = c.failed;
    }
    s.disk_read_bytes_per_s = disk_bps_;
    s.prefill_tokens_per_s = prefill_tps_;
    return s;
  }

 private:
  struct DeviceEntry {
    int page = -1;
    Hash128 parent;
    std::vector<int32_t> tokens;
    std::list<Hash128>::iterator lru;
  };
  struct HostEntry {
    Hash128 parent;
    std::vector<int32_t> tokens;
    AlignedBytes bytes;
    std::list<Hash128>::iterator lru;
  };
  enum class Tier : uint8_t { kDevice, kHost, kDisk };
  struct PlanBlock {
    Hash128 key;
    Hash128 parent;
    Tier tier;
    int page = -1;  // destination page in the sequence
  };

  // Store errors the cache absorbs (they degrade to misses, recomputation or a lost update): each
  // is counted in `counter` (when there is one) and the first of each cause is logged with its
  // text, so a failing disk shows up without one line per block.
  enum Cause : uint8_t {
    kDiskRead,
    kCorruptBlock,
    kErase,
    kMetaWrite,
    kMetaRead,
    kReplacedManifest,
    kNumCauses
  };
  void Absorb(Cause cause, uint64_t CacheStats::*counter, uint64_t n, const std::string& what,
              const Status& s) {
    bool first;
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      if (counter != nullptr) stats_.*counter += n;
      first = !logged_[cause];
      logged_[cause] = true;
    }
    if (first) {
      DefaultLogger()->warn("cache: {}: {} (the first of its kind; later ones are only counted)",
                            what, s.ToString());
    }
  }
  void EraseOrCount(const Hash128& key, const char* why) {
    Status s = store_->Erase(key);
    if (!s.ok()) {
      Absorb(kErase, &CacheStats::erase_errors, 1,
             std::string("erasing ") + why + " block " + HashHex(key), s);
    }
  }

  double ReadRateMeta(const std::string& name) {
    Result<std::string> v = store_->GetMeta(std::string(kRateMetaPrefix) + name);
    if (!v.ok()) {
      if (v.status().code() != StatusCode::kNotFound) {
        Absorb(kMetaRead, nullptr, 0, "reading planner estimate " + name, v.status());
      }
      return 0;
    }
    const double d = std::strtod(v->c_str(), nullptr);
    return d > 0 && d < 1e15 ? d : 0;
  }
  void WriteRateMeta(const std::string& name, double value) {
    Status s = store_->PutMeta(std::string(kRateMetaPrefix) + name, std::to_string(value));
    if (!s.ok()) {
      Absorb(kMetaWrite, &CacheStats::meta_write_errors, 1, "saving planner estimate " + name, s);
    }
  }

  storage::BlockHeader HeaderFor(const Hash128& parent, std::span<const int32_t> toks) const {
    storage::BlockHeader h;
    h.parent = parent;
    h.layout_tag = layout_tag_;
    h.token_ids.assign(toks.begin(), toks.end());
    return h;
  }
  std::span<const std::byte> PageBytes(int page) const {
    return {reinterpret_cast<const std::byte*>(pool_.page(page)), block_bytes_};
  }

  void WriteToDisk(const Hash128& key, const Hash128& parent, std::span<const int32_t> toks,
                   std::span<const std::byte> bytes) {
    if (writer_ == nullptr || store_->Contains(key)) return;
    writer_->Enqueue(key, HeaderFor(parent, toks), bytes);
  }

  void InsertDevice(const Hash128& key, const Hash128& parent, std::span<const int32_t> toks,
                    int page) {
    pool_.Ref(page);
    device_lru_.push_front(key);
    device_.emplace(key,
                    DeviceEntry{page, parent, {toks.begin(), toks.end()}, device_lru_.begin()});
    page_cached_[page] = true;
    device_count_.store(device_.size());
    EnforceDeviceBudget();
  }

  // Evicts unpinned pages from the cold end while more than max_device_pages are cached. Pages of
  // live sequences may keep the tier above its budget until they are released.
  void EnforceDeviceBudget() {
    if (options_.max_device_pages <= 0) return;
    auto it = device_lru_.end();  // candidates are the elements before `it`
    while (static_cast<int>(device_.size()) > options_.max_device_pages &&
           it != device_lru_.begin()) {
      const auto cur = std::prev(it);
      if (pool_.refcount(device_.at(*cur).page) == 1) {
        EvictDeviceEntry(*cur);  // erases cur; `it` stays valid
      } else {
        it = cur;
      }
    }
  }

  void EvictDeviceEntry(const Hash128& key) {
    auto it = device_.find(key);
    DeviceEntry& e = it->second;
    const int page = e.page;
    if (options_.host_bytes >= block_bytes_) {
      InsertHost(key, e.parent, e.tokens, PageBytes(page));
    } else if (options_.write_policy == WritePolicy::kOnEvict) {
      WriteToDisk(key, e.parent, e.tokens, PageBytes(page));
    }
    device_lru_.erase(e.lru);
    page_cached_[page] = false;
    device_.erase(it);
    device_count_.store(device_.size());
    {
      std::lock_guard<std::mutex> lock(stats_mu_);
      ++stats_.device.evictions;
    }
    pool_.Unref(page);
  }

  bool EvictOneDevicePage() {
    for (auto it = device_lru_.rbegin(); it != device_lru_.rend(); ++it) {
      if (pool_.refcount(device_.at(*it).page) == 1) {
        EvictDeviceEntry(*it);
        return true;
      }
    }
    return false;
  }

  void InsertHost(const Hash128& key, const Hash128& parent, std::span<const int32_t> toks,
                  std::span<const std::byte> bytes) {
    if (options_.host_bytes < block_bytes_) return;
    if (auto it = host_.find(key); it != host_.end()) {
      host_lru_.splice(host_lru_.begin(), host_lru_, it->second.lru);
      return;
    }
    while ((host_.size() + 1) * block_bytes_ > options_.host_bytes)
      EvictHostEntry(host_lru_.back());
    AlignedBytes buf = AllocAligned(block_bytes_);
    if (buf == nullptr) return;
    std::memcpy(buf.get(), bytes.data(), block_bytes_);
    host_lru_.push_front(key);
    host_.emplace(key,
                  HostEntry{parent, {toks.begin(), toks.end()}, std::move(buf), host_lru_.begin()});
    host_count_.store(host_.size());
  }

  void EvictHostEntry(const Hash128& key) {
    auto it = host_.find(key);
    HostEntry& e = it->second;
    if (options_.write_policy == WritePolicy::kOnEvict) {
      WriteToDisk(key, e.parent, e.tokens, {e.bytes.get(), block_bytes_});
    }
    host_lru_.erase(e.lru);
    host_.erase(it);
    host_count_.store(host_.size());
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.host.evictions;
  }

  // A disk block the store did not return. NotFound is an ordinary miss (evicted since the lookup).
  void NoteReadFailure(const Status& s) {
    if (s.code() == StatusCode::kNotFound) return;
    if (s.code() == StatusCode::kCorruption) {
      Absorb(kCorruptBlock, &CacheStats::corrupt_blocks, 1, "recomputing a disk block", s);
    } else {
      Absorb(kDiskRead, &CacheStats::disk_read_errors, 1, "recomputing a disk block", s);
    }
  }

  // Reads the disk blocks of `plan` (indices `idx`) into their pages in one batch. Returns the
  // index into `idx` of the first block that failed (idx.size() when all verified).
  size_t LoadDisk(const std::vector<PlanBlock>& plan, const std::vector<size_t>& idx,
                  std::span<const int32_t> tokens, const std::vector<int>& n_tokens_of);

  engine::KvPool& pool_;
  storage::BlockStore* store_;
  NamespaceParams ns_params_;
  Hash128 ns_;
  std::map<std::string, Root> roots_;
  CacheOptions options_;
  engine::KvLayout layout_;
  size_t block_bytes_;
  int bt_;
  uint64_t layout_tag_;
  std::string model_path_, model_description_;

  std::unordered_map<Hash128, DeviceEntry, storage::BlockKeyHash> device_;
  std::list<Hash128> device_lru_;  // front = most recently used
  std::vector<bool> page_cached_;
  std::unordered_map<Hash128, HostEntry, storage::BlockKeyHash> host_;
  std::list<Hash128> host_lru_;
  std::unique_ptr<WriteBehind> writer_;
  // Sizes of device_ and host_, readable by Stats() from other threads.
  std::atomic<uint64_t> device_count_{0}, host_count_{0};

  mutable std::mutex stats_mu_;  // guards stats_, logged_ and the estimates for Stats() readers
  CacheStats stats_;
  std::array<bool, kNumCauses> logged_{};  // causes Absorb has logged
  double disk_bps_ = 0;
  double prefill_tps_ = 0;
};

size_t PrefixCache::Impl::LoadDisk(const std::vector<PlanBlock>& plan,
                                   const std::vector<size_t>& idx, std::span<const int32_t> tokens,
                                   const std::vector<int>& n_tokens_of) {
  if (idx.empty()) return 0;
  std::vector<storage::BlockKey> keys;
  std::vector<std::span<std::byte>> dest;
  std::vector<storage::ReadResult> results(idx.size());
  for (size_t j : idx) {
    keys.push_back(plan[j].key);
    dest.emplace_back(reinterpret_cast<std::byte*>(pool_.page(plan[j].page)), block_bytes_);
  }
  const int64_t t0 = MonotonicNowNs();
  Status s = store_->GetMany(keys, dest, results);
  const double secs = (MonotonicNowNs() - t0) / 1e9;
  if (!s.ok()) {
    Absorb(kDiskRead, &CacheStats::disk_read_errors, idx.size(), "batched disk read failed", s);
    return 0;
  }
  uint64_t bytes = 0;
  size_t first_bad = idx.size();
  for (size_t r = 0; r < idx.size(); ++r) {
    const PlanBlock& b = plan[idx[r]];
    const storage::ReadResult& rr = results[r];
    if (!rr.hit()) {
      NoteReadFailure(rr.status);
      first_bad = std::min(first_bad, r);
      continue;
    }
    bytes += rr.payload_bytes;
    const size_t first_tok = idx[r] * static_cast<size_t>(bt_);
    const auto want = tokens.subspan(first_tok, n_tokens_of[idx[r]]);
    const bool verified = rr.payload_bytes == block_bytes_ && rr.header.parent == b.parent &&
                          rr.header.layout_tag == layout_tag_ &&
                          std::equal(want.begin(), want.end(), rr.header.token_ids.begin(),
                                     rr.header.token_ids.end());
    if (!verified) {
      // A stale or colliding entry: never used, and removed so it is not read again.
      Absorb(kCorruptBlock, &CacheStats::corrupt_blocks, 1, "recomputing a disk block",
             Status::Corruption("block " + HashHex(b.key) +
                                " does not match its parent, tokens, layout or size"));
      EraseOrCount(b.key, "unverified");
      first_bad = std::min(first_bad, r);
    }
  }
  if (secs > 0 && bytes >= (1u << 20)) {
    std::lock_guard<std::mutex> lock(stats_mu_);
    disk_bps_ = (1 - kEwmaWeight) * disk_bps_ + kEwmaWeight * (bytes / secs);
  }
  return first_bad;
}

Result<AcquireResult> PrefixCache::Impl::Acquire(engine::Sequence& seq,
                                                 std::span<const int32_t> tokens, int max_positions,
                                                 const Hash128* tail_key, const std::string& salt) {
  if (!seq.tokens.empty() || !seq.block_table.empty()) {
    return Status::InvalidArgument("Acquire needs an empty sequence");
  }
  Stopwatch watch;
  AcquireResult out;
  const int n = static_cast<int>(tokens.size());
  if (max_positions < 0) max_positions = n - 1;
  max_positions = std::clamp(max_positions, 0, n);
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.lookups;
    stats_.lookup_tokens += n;
  }
  if (max_positions == 0) return out;

  // 1. The plan: consecutive blocks found in some tier, each covering >= 1 loadable position.
  const int n_full = n / bt_;
  std::vector<PlanBlock> plan;
  std::vector<int> n_tokens_of;  // tokens each plan block covers (bt, or the tail's count)
  Hash128 parent = RootFor(salt).hash;
  for (int i = 0; i < n_full && i * bt_ < max_positions; ++i) {
    const auto toks = tokens.subspan(static_cast<size_t>(i) * bt_, bt_);
    const Hash128 key = ChainHash(parent, toks);
    PlanBlock b{key, parent, Tier::kDevice};
    bool found = false;
    if (auto it = device_.find(key); it != device_.end()) {
      found =
          it->second.parent == parent &&
          std::equal(toks.begin(), toks.end(), it->second.tokens.begin(), it->second.tokens.end());
    }
    std::lock_guard<std::mutex> lock(stats_mu_);
    if (found) {
      ++stats_.device.hits;
    } else {
      ++stats_.device.misses;
      b.tier = Tier::kHost;
      if (auto it = host_.find(key); it != host_.end() && it->second.parent == parent &&
                                     std::equal(toks.begin(), toks.end(), it->second.tokens.begin(),
                                                it->second.tokens.end())) {
        found = true;
        ++stats_.host.hits;
      } else {
        if (options_.host_bytes > 0) ++stats_.host.misses;
        b.tier = Tier::kDisk;
        if (store_ != nullptr && store_->Contains(key)) {
          found = true;
          ++stats_.disk.hits;
        } else if (store_ != nullptr) {
          ++stats_.disk.misses;
        }
      }
    }
    if (!found) break;
    plan.push_back(b);
    n_tokens_of.push_back(bt_);
    parent = key;
  }
  // A session's partial tail follows its last full block.
  const int tail_tokens = n - n_full * bt_;
  if (tail_key != nullptr && static_cast<int>(plan.size()) == n_full && tail_tokens > 0 &&
      max_positions > n_full * bt_ && store_ != nullptr && store_->Contains(*tail_key)) {
    plan.push_back(PlanBlock{*tail_key, parent, Tier::kDisk});
    n_tokens_of.push_back(tail_tokens);
  }

  // 2. Load or recompute: from the first disk block on, is reading cheaper than prefilling?
  if (options_.cost_model && prefill_tps_ > 0) {
    for (size_t a = 0; a < plan.size(); ++a) {
      if (plan[a].tier != Tier::kDisk || (a > 0 && plan[a - 1].tier == Tier::kDisk)) continue;
      double disk_bytes = 0, host_bytes = 0, toks = 0;
      for (size_t j = a; j < plan.size(); ++j) {
        (plan[j].tier == Tier::kDisk ? disk_bytes : host_bytes) += block_bytes_;
        toks += n_tokens_of[j];
      }
      const double load_ms = kDiskBatchOverheadMs + disk_bytes / disk_bps_ * 1e3 +
                             host_bytes / kHostCopyBytesPerS * 1e3;
      const double recompute_ms = toks / prefill_tps_ * 1e3;
      std::lock_guard<std::mutex> lock(stats_mu_);
      if (recompute_ms < load_ms) {
        ++stats_.recompute_decisions;
        out.recomputed_blocks += static_cast<int>(plan.size() - a);
        plan.resize(a);
        n_tokens_of.resize(a);
        break;
      }
      ++stats_.load_decisions;
    }
  }

  // 3. Pin device blocks first (so allocating pages below cannot evict them), then allocate.
  const int loadable = std::min(max_positions, [&] {
    int t = 0;
    for (int c : n_tokens_of) t += c;
    return t;
  }());
  auto is_private = [&](size_t j) {
    // Partly covered by the loaded positions, or a session tail: the sequence will write into
    // it, so it gets its own page.
    return n_tokens_of[j] < bt_ || static_cast<int>(j + 1) * bt_ > loadable;
  };
  // Every device block is pinned (a private copy's source only until it is copied), so the
  // reclaimer cannot evict it while pages are allocated below. Host entries can still be evicted
  // by that reclaimer (device pages demoted into a full host tier); they are looked up again.
  size_t usable = plan.size();
  for (size_t j = 0; j < plan.size(); ++j) {
    if (plan[j].tier != Tier::kDevice) continue;
    DeviceEntry& e = device_.at(plan[j].key);
    pool_.Ref(e.page);
    device_lru_.splice(device_lru_.begin(), device_lru_, e.lru);
    if (!is_private(j)) plan[j].page = e.page;  // the pin becomes the sequence's reference
  }
  std::vector<int> private_src(plan.size(), -1);
  for (size_t j = 0; j < plan.size(); ++j) {
    if (plan[j].tier == Tier::kDevice && is_private(j))
      private_src[j] = device_.at(plan[j].key).page;
  }
  for (size_t j = 0; j < plan.size(); ++j) {
    if (plan[j].page >= 0) continue;
    const int p = pool_.Allocate();
    if (p < 0) {
      usable = j;
      break;
    }
    plan[j].page = p;
  }
  for (size_t j = 0; j < usable; ++j) {
    if (private_src[j] >= 0) {
      std::memcpy(pool_.page(plan[j].page), pool_.page(private_src[j]), block_bytes_);
    } else if (plan[j].tier == Tier::kHost) {
      auto it = host_.find(plan[j].key);
      if (it == host_.end()) {
        usable = j;
        break;
      }
      std::memcpy(pool_.page(plan[j].page), it->second.bytes.get(), block_bytes_);
      host_lru_.splice(host_lru_.begin(), host_lru_, it->second.lru);
    }
  }
  for (int src : private_src) {
    if (src >= 0) pool_.Unref(src);
  }
  // 4. One batched read for every disk block.
  std::vector<size_t> disk_idx;
  for (size_t j = 0; j < usable; ++j) {
    if (plan[j].tier == Tier::kDisk) disk_idx.push_back(j);
  }
  const size_t bad = LoadDisk(plan, disk_idx, tokens, n_tokens_of);
  if (bad < disk_idx.size()) usable = std::min(usable, disk_idx[bad]);
  // Blocks past the usable prefix go back.
  for (size_t j = usable; j < plan.size(); ++j) {
    if (plan[j].page >= 0) pool_.Unref(plan[j].page);
  }
  if (usable < plan.size()) out.recomputed_blocks += static_cast<int>(plan.size() - usable);
  plan.resize(usable);

  // 5. The sequence, and loaded full blocks join the device tier.
  int positions = 0;
  for (size_t j = 0; j < plan.size(); ++j) {
    const int cover = std::min(n_tokens_of[j], max_positions - positions);
    positions += cover;
    seq.block_table.push_back(plan[j].page);
    const size_t bytes = block_bytes_;
    std::lock_guard<std::mutex> lock(stats_mu_);
    switch (plan[j].tier) {
      case Tier::kDevice:
        out.device_tokens += cover;
        break;
      case Tier::kHost:
        out.host_tokens += cover;
        stats_.host.bytes_in += bytes;
        break;
      case Tier::kDisk:
        out.disk_tokens += cover;
        stats_.disk.bytes_in += bytes;
        break;
    }
  }
  seq.tokens.assign(tokens.begin(), tokens.begin() + positions);
  for (size_t j = 0; j < plan.size(); ++j) {
    if (plan[j].tier != Tier::kDevice && !is_private(j) && !device_.count(plan[j].key)) {
      const auto toks = tokens.subspan(j * static_cast<size_t>(bt_), bt_);
      InsertDevice(plan[j].key, plan[j].parent, toks, plan[j].page);
    }
  }
  out.cached_tokens = positions;
  out.load_ms = watch.ElapsedMs();
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.cached_tokens += positions;
  return out;
}

void PrefixCache::Impl::Publish(const engine::Sequence& seq, const std::string& salt) {
  const int n_full = seq.n_past() / bt_;
  Hash128 parent = RootFor(salt).hash;
  for (int i = 0; i < n_full && i < static_cast<int>(seq.block_table.size()); ++i) {
    const auto toks =
        std::span<const int32_t>(seq.tokens).subspan(static_cast<size_t>(i) * bt_, bt_);
    const Hash128 key = ChainHash(parent, toks);
    const int page = seq.block_table[i];
    if (auto it = device_.find(key); it != device_.end()) {
      device_lru_.splice(device_lru_.begin(), device_lru_, it->second.lru);
    } else if (!page_cached_[page]) {
      InsertDevice(key, parent, toks, page);
      {
        std::lock_guard<std::mutex> lock(stats_mu_);
        ++stats_.published_blocks;
      }
      if (options_.write_policy == WritePolicy::kAlways) {
        WriteToDisk(key, parent, toks, PageBytes(page));
      }
    }
    parent = key;
  }
}

Status PrefixCache::Impl::SaveSession(const std::string& name, const engine::Sequence& seq,
                                      const std::string& salt) {
  const Root& root = RootFor(salt);
  KV_RETURN_IF_ERROR(ValidateSessionName(name));
  if (store_ == nullptr) {
    return Status::InvalidArgument("sessions need a disk tier (--cache-dir)");
  }
  if (seq.tokens.empty()) return Status::InvalidArgument("cannot save an empty sequence");
  const int n = seq.n_past();
  const int n_full = n / bt_;
  const std::span<const int32_t> all(seq.tokens);
  std::vector<std::future<Status>> pending;
  nlohmann::json blocks = nlohmann::json::array();
  Hash128 parent = root.hash;
  for (int i = 0; i < n_full; ++i) {
    const auto toks = all.subspan(static_cast<size_t>(i) * bt_, bt_);
    const Hash128 key = ChainHash(parent, toks);
    if (!store_->Contains(key)) {
      pending.push_back(store_->Put(key, HeaderFor(parent, toks), PageBytes(seq.block_table[i])));
    }
    blocks.push_back(HashHex(key));
    parent = key;
  }
  std::string tail_hex;
  if (n > n_full * bt_) {
    const auto toks = all.subspan(static_cast<size_t>(n_full) * bt_);
    const Hash128 key = TailHash(parent, toks);
    pending.push_back(
        store_->Put(key, HeaderFor(parent, toks), PageBytes(seq.block_table[n_full])));
    tail_hex = HashHex(key);
  }
  for (auto& f : pending) {
    Status s = f.get();
    if (!s.ok()) return Status(s.code(), "saving session '" + name + "': " + s.message());
  }
  KV_RETURN_IF_ERROR(store_->Flush());
  const int64_t now = WallNowUs();
  int64_t created = now;
  if (Result<Manifest> old = LoadManifest(*store_, name); old.ok()) {
    if (old->created_us > 0) created = old->created_us;
    // The replaced session's tail is no longer named by anything.
    if (old->tail && HashHex(*old->tail) != tail_hex) EraseOrCount(*old->tail, "replaced tail");
  } else if (old.status().code() != StatusCode::kNotFound) {
    Absorb(kReplacedManifest, nullptr, 0,
           "replacing session '" + name + "' (its old tail block, if any, stays until evicted)",
           old.status());
  }
  Json m;
  m["format"] = kManifestFormat;
  m["namespace"] = HashHex(root.hash);
  m["namespace_text"] = NamespaceString(root.params);
  m["model"] = {{"path", model_path_},
                {"description", model_description_},
                {"fingerprint", HashHex(ns_params_.model_fingerprint)}};
  m["kv"] = {{"dtype", engine::KvDtypeName(layout_.dtype)}, {"block_tokens", bt_}};
  m["n_tokens"] = n;
  m["tokens"] = seq.tokens;
  m["blocks"] = blocks;
  if (!tail_hex.empty()) m["tail"] = tail_hex;
  m["bytes"] = static_cast<uint64_t>(n_full + (tail_hex.empty() ? 0 : 1)) * block_bytes_;
  m["created_us"] = created;
  m["last_used_us"] = now;
  // Model paths and descriptions are not always UTF-8; dump() would throw on them.
  return store_->PutSession(name, m.dump(-1, ' ', false, Json::error_handler_t::replace));
}

Result<PrefixCache::Restored> PrefixCache::Impl::RestoreSession(const std::string& name,
                                                                engine::Sequence& seq,
                                                                int leave_tokens,
                                                                const std::string& salt) {
  const Root& root = RootFor(salt);
  KV_RETURN_IF_ERROR(ValidateSessionName(name));
  if (store_ == nullptr) {
    return Status::InvalidArgument("sessions need a disk tier (--cache-dir)");
  }
  KV_ASSIGN_OR_RETURN(Manifest m, LoadManifest(*store_, name));
  if (m.ns_hex != HashHex(root.hash)) {
    const std::string fp = HashHex(ns_params_.model_fingerprint);
    if (m.model_fingerprint != fp) {
      return Status::Incompatible("session '" + name + "' was saved with another model (" +
                                  (m.model_path.empty() ? "?" : m.model_path) + ", fingerprint " +
                                  m.model_fingerprint + "); this run uses fingerprint " + fp);
    }
    return Status::Incompatible("session '" + name + "' was saved with other KV settings (" +
                                (m.ns_text.empty() ? "?" : m.ns_text) + "); this run uses " +
                                NamespaceString(root.params));
  }
  Restored r;
  r.tokens = std::move(m.tokens);
  if (r.tokens.empty()) return Status::Corruption("session '" + name + "' has no tokens");
  const int n = static_cast<int>(r.tokens.size());
  const int max_positions = std::max(0, n - std::max(0, leave_tokens));
  KV_ASSIGN_OR_RETURN(r.acquired,
                      Acquire(seq, r.tokens, max_positions, m.tail ? &*m.tail : nullptr, salt));
  m.raw["last_used_us"] = WallNowUs();
  Status s = store_->PutSession(name, m.raw.dump(-1, ' ', false, Json::error_handler_t::replace));
  if (!s.ok()) {
    Absorb(kMetaWrite, &CacheStats::meta_write_errors, 1,
           "recording the last use of session '" + name + "'", s);
  }
  return r;
}

// ---------------------------------------------------------------------------------------------

PrefixCache::PrefixCache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PrefixCache::~PrefixCache() = default;

Result<std::unique_ptr<PrefixCache>> PrefixCache::Create(
    engine::KvPool& pool, storage::BlockStore* store, const NamespaceParams& ns,
    const CacheOptions& options, std::string model_path, std::string model_description) {
  if (!(ns.layout == pool.layout())) {
    return Status::InvalidArgument("cache namespace layout differs from the KV pool's");
  }
  if (options.write_queue_blocks == 0 || options.write_queue_bytes == 0) {
    return Status::InvalidArgument("write-behind queue bounds must be > 0");
  }
  if (options.max_device_pages < 0) return Status::InvalidArgument("max_device_pages must be >= 0");
  return std::unique_ptr<PrefixCache>(new PrefixCache(std::make_unique<Impl>(
      pool, store, ns, options, std::move(model_path), std::move(model_description))));
}

const Hash128& PrefixCache::namespace_hash() const { return impl_->ns(); }
Result<AcquireResult> PrefixCache::Acquire(engine::Sequence& seq, std::span<const int32_t> tokens,
                                           int max_positions, const std::string& salt) {
  return impl_->Acquire(seq, tokens, max_positions, nullptr, salt);
}
void PrefixCache::Publish(const engine::Sequence& seq, const std::string& salt) {
  impl_->Publish(seq, salt);
}
void PrefixCache::Release(engine::Sequence& seq) { impl_->Release(seq); }
void PrefixCache::ObservePrefill(int tokens, double ms) { impl_->ObservePrefill(tokens, ms); }
Status PrefixCache::SaveSession(const std::string& name, const engine::Sequence& seq,
                                const std::string& salt) {
  return impl_->SaveSession(name, seq, salt);
}
Result<PrefixCache::Restored> PrefixCache::RestoreSession(const std::string& name,
                                                          engine::Sequence& seq, int leave_tokens,
                                                          const std::string& salt) {
  return impl_->RestoreSession(name, seq, leave_tokens, salt);
}
Status PrefixCache::Flush() { return impl_->Flush(); }
void PrefixCache::EvictDevice() { impl_->EvictDevice(); }
void PrefixCache::DropHost() { impl_->DropHost(); }
CacheStats PrefixCache::Stats() const { return impl_->Stats(); }
int PrefixCache::ReclaimablePages() const { return impl_->ReclaimablePages(); }

}  // namespace kvstash::cache
