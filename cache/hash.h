// Block hashing for the prefix cache (ARCHITECTURE.md §3).
//
// h_0 = H(namespace), h_i = H(h_{i-1} || token ids of block i), H = XXH3-128. The namespace binds
// everything that changes the KV bytes of a block: the model fingerprint (all bytes of the GGUF
// file), the KV layout (dtype, layers, kv heads, head dim, block size), the RoPE settings and an
// optional per-tenant salt. Two prompts share a block hash only when they share the whole prefix
// up to and including that block under the same namespace. Hashes are keys, not proofs: every
// stored block also carries its parent hash and token ids, checked on each hit.
//
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "engine/kv_pool.h"
#include "storage/block_key.h"

namespace kvstash::engine {
class Model;
}
namespace kvstash::storage {
class BlockStore;
}

namespace kvstash::cache {

using Hash128 = storage::BlockKey;

// Everything a block's KV bytes depend on.
struct NamespaceParams {
  Hash128 model_fingerprint;
  engine::KvLayout layout;
  // RoPE settings (from the model file unless overridden; listed explicitly so a future override
  // cannot silently share blocks with the unmodified model).
  float rope_base = 0;
  float rope_scale = 1;
  int rope_style = 0;  // engine::RopeStyle as an int
  int n_rot = 0;
  bool rope_freq_factors = false;
  // Which model layers a block holds, when not all of them: hybrid models (qwen35*) keep K/V
  // for their attention layers only, e.g. "3,7,11". Empty = every layer (and then absent from
  // the namespace text, so existing namespaces are unchanged). The interleaved-rope sections
  // of those models ride along as "rope_sections=a,b,c,d".
  std::string kv_layers;
  std::string rope_sections;
  // Hybrid models: RunnerOptions::deltanet_chunk_tokens when > 0 (the chunked DeltaNet prefill
  // rounds differently, so its KV and state snapshots differ in the last bits from the
  // token-by-token default). 0 = the default, absent from the text ("deltanet_chunk=N").
  int deltanet_chunk_tokens = 0;
  std::string cache_salt;  // optional per-tenant salt; "" = none
};

// The canonical text the namespace hash is computed over (also shown by tools).
std::string NamespaceString(const NamespaceParams& p);
// h_0.
Hash128 NamespaceHash(const NamespaceParams& p);
// The namespace parameters of a loaded model with a KV layout.
NamespaceParams NamespaceFor(const engine::Model& model, const Hash128& fingerprint,
                             const engine::KvLayout& layout, std::string cache_salt);

// h_i from h_{i-1} and the tokens of block i.
Hash128 ChainHash(const Hash128& parent, std::span<const int32_t> tokens);
// The key of a session's partial tail block (fewer than block_tokens tokens). A separate domain
// from ChainHash, so a tail never answers a full-block lookup.
Hash128 TailHash(const Hash128& parent, std::span<const int32_t> tokens);
// Chained hashes of every full block of `tokens` (tokens.size() / block_tokens of them).
std::vector<Hash128> BlockHashes(const Hash128& ns, std::span<const int32_t> tokens,
                                 int block_tokens);

// XXH3-128 over every byte of the file (GGUF metadata, tensor infos and all tensor bytes). With a
// store, the result is remembered in its metadata under the file's (path, size, mtime, inode), so
// the next process does not re-read a multi-GiB model; `*from_meta` tells which happened.
Result<Hash128> FingerprintFile(const std::string& path, storage::BlockStore* store,
                                bool* from_meta = nullptr);

}  // namespace kvstash::cache
