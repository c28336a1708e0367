#include "cache/hash.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "base/logging.h"
#include "engine/model/model.h"
#include "storage/block_store.h"

namespace kvstash::cache {
namespace {

Hash128 FromXxh(XXH128_hash_t h) { return Hash128{h.high64, h.low64}; }

// Domain bytes keep full blocks, tails and namespaces apart even for equal inputs.
constexpr uint8_t kDomainBlock = 0x42;  // 'B'
constexpr uint8_t kDomainTail = 0x54;   // 'T'

Hash128 Chain(uint8_t domain, const Hash128& parent, std::span<const int32_t> tokens) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_128bits_reset(st);
  uint8_t head[17];
  head[0] = domain;
  for (int i = 0; i < 8; ++i) {
    head[1 + i] = static_cast<uint8_t>(parent.hi >> (56 - 8 * i));
    head[9 + i] = static_cast<uint8_t>(parent.lo >> (56 - 8 * i));
  }
  XXH3_128bits_update(st, head, sizeof(head));
  // Token ids little-endian (x86 and arm64 are; a big-endian host would need a swap here).
  XXH3_128bits_update(st, tokens.data(), tokens.size_bytes());
  Hash128 out = FromXxh(XXH3_128bits_digest(st));
  XXH3_freeState(st);
  return out;
}

std::string Hex(const Hash128& h) { return h.ToHex(); }

}  // namespace

std::string NamespaceString(const NamespaceParams& p) {
  char rope[160];
  std::snprintf(rope, sizeof(rope),
                "rope_base=%.9g;rope_scale=%.9g;rope_style=%d;n_rot=%d;"
                "rope_freqs=%d",
                p.rope_base, p.rope_scale, p.rope_style, p.n_rot, p.rope_freq_factors ? 1 : 0);
  const engine::KvLayout& l = p.layout;
  return "kvstash-ns-v1;model=" + Hex(p.model_fingerprint) +
         ";kv_dtype=" + engine::KvDtypeName(l.dtype) + ";n_layers=" + std::to_string(l.n_layers) +
         ";n_kv_heads=" + std::to_string(l.n_kv_heads) + ";head_dim=" + std::to_string(l.head_dim) +
         ";block_tokens=" + std::to_string(l.block_tokens) + ";" + rope +
         (p.kv_layers.empty() ? "" : ";kv_layers=" + p.kv_layers) +
         (p.rope_sections.empty() ? "" : ";rope_sections=" + p.rope_sections) +
         (p.deltanet_chunk_tokens <= 0
              ? ""
              : ";deltanet_chunk=" + std::to_string(p.deltanet_chunk_tokens)) +
         ";salt_bytes=" + std::to_string(p.cache_salt.size()) + ";salt=" + p.cache_salt;
}

Hash128 NamespaceHash(const NamespaceParams& p) {
  const std::string s = NamespaceString(p);
  return FromXxh(XXH3_128bits(s.data(), s.size()));
}

NamespaceParams NamespaceFor(const engine::Model& model, const Hash128& fingerprint,
                             const engine::KvLayout& layout, std::string cache_salt) {
  const engine::HParams& c = model.config();
  NamespaceParams p;
  p.model_fingerprint = fingerprint;
  p.layout = layout;
  p.rope_base = c.rope_base;
  p.rope_scale = c.rope_scale;
  p.rope_style = static_cast<int>(c.rope_style);
  p.n_rot = c.n_rot;
  p.rope_freq_factors = !model.rope_freq_factors().empty();
  if (c.n_kv_layers != c.n_layer) {
    for (int l = 0; l < c.n_layer; ++l) {
      if (c.kv_layer[l] < 0) continue;
      p.kv_layers += (p.kv_layers.empty() ? "" : ",") + std::to_string(l);
    }
  }
  if (c.is_hybrid()) {
    for (int i = 0; i < 4; ++i) {
      p.rope_sections += (i ? "," : "") + std::to_string(c.rope_sections[i]);
    }
  }
  p.cache_salt = std::move(cache_salt);
  return p;
}

Hash128 ChainHash(const Hash128& parent, std::span<const int32_t> tokens) {
  return Chain(kDomainBlock, parent, tokens);
}

Hash128 TailHash(const Hash128& parent, std::span<const int32_t> tokens) {
  return Chain(kDomainTail, parent, tokens);
}

std::vector<Hash128> BlockHashes(const Hash128& ns, std::span<const int32_t> tokens,
                                 int block_tokens) {
  std::vector<Hash128> out;
  if (block_tokens <= 0) return out;
  const size_t n = tokens.size() / static_cast<size_t>(block_tokens);
  out.reserve(n);
  Hash128 h = ns;
  for (size_t i = 0; i < n; ++i) {
    h = ChainHash(h, tokens.subspan(i * block_tokens, block_tokens));
    out.push_back(h);
  }
  return out;
}

Result<Hash128> FingerprintFile(const std::string& path, storage::BlockStore* store,
                                bool* from_meta) {
  if (from_meta != nullptr) *from_meta = false;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::IOError("cannot open model " + path + ": " + std::strerror(errno));
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return Status::IOError("cannot stat model " + path + ": " + std::strerror(errno));
  }
  char resolved[PATH_MAX];
  const std::string abs = ::realpath(path.c_str(), resolved) != nullptr ? resolved : path;
  const std::string meta_key =
      "model-fingerprint/v1/" + abs + "|" + std::to_string(st.st_size) + "|" +
      std::to_string(static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec) +
      "|" + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  if (store != nullptr) {
    Result<std::string> v = store->GetMeta(meta_key);
    if (v.ok() && v->size() == 32) {
      Hash128 h;
      if (std::sscanf(v->c_str(), "%16lx%16lx", &h.hi, &h.lo) == 2) {
        if (from_meta != nullptr) *from_meta = true;
        return h;
      }
    }
  }
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(),
                                                                 &XXH3_freeState);
  XXH3_128bits_reset(state.get());
  std::vector<char> buf(4 << 20);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::IOError("cannot read model " + path + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    XXH3_128bits_update(state.get(), buf.data(), static_cast<size_t>(n));
  }
  const Hash128 h = FromXxh(XXH3_128bits_digest(state.get()));
  if (store != nullptr) {
    // Best effort: a failure only means the next process hashes the file again. Nothing is
    // counted; the first failure in the process is logged, the way cache/ absorbs store errors.
    if (Status s = store->PutMeta(meta_key, h.ToHex()); !s.ok()) {
      static std::atomic<bool> logged{false};
      if (!logged.exchange(true)) {
        DefaultLogger()->warn(
            "cache: remembering the fingerprint of model {}: {} (the first of its kind; later ones "
            "are not logged)",
            path, s.ToString());
      }
    }
  }
  return h;
}

}  // namespace kvstash::cache
