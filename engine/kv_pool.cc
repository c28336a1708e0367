#include "engine/kv_pool.h"

#include <sys/mman.h>

#include "base/check.h"
#include "base/huge_pages.h"

namespace kvstash::engine {

const char* KvDtypeName(KvDtype t) { return t == KvDtype::kF16 ? "f16" : "f32"; }

Result<KvDtype> ParseKvDtype(const std::string& name) {
  if (name == "f16") return KvDtype::kF16;
  if (name == "f32") return KvDtype::kF32;
  return Status::InvalidArgument("unknown KV type '" + name + "' (expected f16 or f32)");
}

Result<std::unique_ptr<KvPool>> KvPool::Create(const KvLayout& layout, int n_pages) {
  if (layout.n_layers <= 0 || layout.n_kv_heads <= 0 || layout.head_dim <= 0 ||
      layout.block_tokens <= 0 || n_pages <= 0) {
    return Status::InvalidArgument("KV pool: layout and page count must be positive");
  }
  auto pool = std::unique_ptr<KvPool>(new KvPool());
  pool->layout_ = layout;
  pool->n_pages_ = n_pages;
  // Reserved, not committed: a page costs memory once written. The pages start on a 2 MiB
  // boundary and ask for transparent huge pages, as the weights do: at a few thousand tokens a
  // sequence's KV is hundreds of MiB, which decode at depth streams once per token, and in
  // 4 KiB pages that walks far more TLB entries than the CPU holds (docs/engine.md).
  pool->map_bytes_ = layout.block_bytes() * static_cast<size_t>(n_pages);
  void* m = MapHugePageAligned(pool->map_bytes_, MAP_NORESERVE);
  if (m == nullptr) {
    return Status::FromErrno("KV pool: reserve " + std::to_string(pool->map_bytes_) + " bytes",
                             errno);
  }
  pool->base_ = static_cast<uint8_t*>(m);
  pool->refs_.assign(n_pages, 0);
  pool->free_.reserve(n_pages);
  for (int i = n_pages - 1; i >= 0; --i) pool->free_.push_back(i);
  return pool;
}

KvPool::~KvPool() {
  if (base_ != nullptr) munmap(base_, map_bytes_);
}

int KvPool::Allocate() {
  while (free_.empty()) {
    if (!reclaim_ || !reclaim_()) return -1;
  }
  int id = free_.back();
  free_.pop_back();
  refs_[id] = 1;
  return id;
}

void KvPool::Ref(int page) {
  KV_CHECK(page >= 0 && page < n_pages_ && refs_[page] > 0);
  ++refs_[page];
}

void KvPool::Unref(int page) {
  KV_CHECK(page >= 0 && page < n_pages_ && refs_[page] > 0);
  if (--refs_[page] == 0) free_.push_back(page);
}

}  // namespace kvstash::engine
