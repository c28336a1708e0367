// Paged KV storage (ARCHITECTURE.md §3). One page = one block of `block_tokens` positions for
// ALL layers, block-major: [n_layers][2 (K,V)][n_kv_heads][block_tokens][head_dim] in the KV
// dtype, so a block moves between tiers as one contiguous copy.
//
// KvPool hands out pages with reference counts (several sequences may share a full block).
// Not thread-safe: owned and used by the engine thread. Page memory is reserved up front with
// mmap and only touched when used.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"

namespace kvstash::engine {

enum class KvDtype : uint8_t { kF16 = 0, kF32 = 1 };
const char* KvDtypeName(KvDtype t);
Result<KvDtype> ParseKvDtype(const std::string& name);  // "f16" | "f32"

struct KvLayout {
  KvDtype dtype = KvDtype::kF16;
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int block_tokens = 16;

  size_t elem_bytes() const { return dtype == KvDtype::kF16 ? 2 : 4; }
  size_t block_elems() const {
    return static_cast<size_t>(n_layers) * 2 * n_kv_heads * block_tokens * head_dim;
  }
  size_t block_bytes() const { return block_elems() * elem_bytes(); }
  size_t bytes_per_token() const { return block_bytes() / block_tokens; }
  // Element offset of the row for (layer, kv: 0 = K / 1 = V, head, slot) inside a page.
  size_t RowOffset(int layer, int kv, int head, int slot) const {
    return ((static_cast<size_t>(layer) * 2 + kv) * n_kv_heads + head) * block_tokens * head_dim +
           static_cast<size_t>(slot) * head_dim;
  }
  bool operator==(const KvLayout&) const = default;
};

class KvPool {
 public:
  // Reserves n_pages pages. Fails only when the address space cannot be reserved.
  static Result<std::unique_ptr<KvPool>> Create(const KvLayout& layout, int n_pages);
  ~KvPool();
  KvPool(const KvPool&) = delete;
  KvPool& operator=(const KvPool&) = delete;

  const KvLayout& layout() const { return layout_; }
  int n_pages() const { return n_pages_; }
  int n_free() const { return static_cast<int>(free_.size()); }
  // A free page with refcount 1, or -1 when the pool is exhausted. When the free list is empty
  // the reclaimer (if set) is asked to free pages first.
  int Allocate();
  // Called by Allocate while no page is free; returns true when it released at least one page
  // (through Unref), false when it has nothing left to give. The prefix cache installs one that
  // evicts unreferenced cached pages. Pass nullptr to remove it.
  void SetReclaimer(std::function<bool()> reclaim) { reclaim_ = std::move(reclaim); }
  void Ref(int page);
  // Drops one reference; the page returns to the free list at zero.
  void Unref(int page);
  int refcount(int page) const { return refs_[page]; }
  uint8_t* page(int id) { return base_ + static_cast<size_t>(id) * layout_.block_bytes(); }
  const uint8_t* page(int id) const {
    return base_ + static_cast<size_t>(id) * layout_.block_bytes();
  }

 private:
  KvPool() = default;
  KvLayout layout_;
  int n_pages_ = 0;
  uint8_t* base_ = nullptr;  // page 0, on a 2 MiB boundary (base/huge_pages.h)
  size_t map_bytes_ = 0;
  std::vector<int> free_;
  std::vector<int> refs_;
  std::function<bool()> reclaim_;
};

// One sequence's view of the pool: its tokens and the page holding each block, and for hybrid
// models (engine/model/model.h LayerKind::kDeltaNet) the recurrent state after its last token,
// which lives outside the pool: it is one whole state per sequence, not per position.
struct Sequence {
  std::vector<int32_t> tokens;       // every position computed so far
  std::vector<int32_t> block_table;  // page id of block i (positions [i*bt, (i+1)*bt))
  // Hybrid models only, empty otherwise: per DeltaNet layer (in layer order) the conv state
  // [d_conv - 1][conv_dim] then the delta-rule state [n_v_heads][head_dim (v)][head_dim (k)], f32.
  // Valid for exactly `tokens`; a sequence with tokens but no state cannot be extended.
  std::vector<float> recurrent;
  int n_past() const { return static_cast<int>(tokens.size()); }
};

}  // namespace kvstash::engine
