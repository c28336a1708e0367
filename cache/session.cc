// Sessions: the manifest (docs/cache.md "Sessions"), read defensively and type-checked field by
// field; ValidateSessionName, ListSessions and DeleteSession, which need no model; and
// PrefixCache::Impl::SaveSession / RestoreSession (the rest of Impl is in prefix_cache.cc).
#include <algorithm>
#include <cstdint>
#include <future>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "base/logging.h"
#include "cache/prefix_cache.h"
#include "cache/prefix_cache_impl.h"
#include "storage/block_store.h"

namespace kvstash::cache {
namespace {

constexpr int kManifestFormat = 1;

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
  // Hybrid models: the snapshot the caller took at the session's last full block (the scheduler
  // does before saving) is durable too, so a restore after a restart resumes there and computes
  // only the tail (docs/cache.md "Hybrid models").
  if (snap_writer_ != nullptr) KV_RETURN_IF_ERROR(snap_writer_->Flush());
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

Result<PrefixCache::Restored> PrefixCache::Impl::RestoreSession(
    const std::string& name, engine::Sequence& seq, int leave_tokens, const std::string& salt,
    const std::vector<int32_t>* only_if_prefix_of) {
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
  if (only_if_prefix_of != nullptr &&
      (r.tokens.size() > only_if_prefix_of->size() ||
       !std::equal(r.tokens.begin(), r.tokens.end(), only_if_prefix_of->begin()))) {
    r.not_a_prefix = true;
    return r;
  }
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

}  // namespace kvstash::cache
