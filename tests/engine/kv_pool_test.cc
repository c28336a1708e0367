// KvPool: pages are disjoint, writable, start on a 2 MiB boundary (so the pool can live in
// transparent huge pages), and the free list and reference counts behave.
#include "engine/kv_pool.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

namespace kvstash::engine {
namespace {

KvLayout SmallLayout() {
  KvLayout l;
  l.dtype = KvDtype::kF16;
  l.n_layers = 3;
  l.n_kv_heads = 2;
  l.head_dim = 24;  // block_bytes = 3*2*2*16*24*2 = 9,216: not a divisor of 2 MiB
  l.block_tokens = 16;
  return l;
}

TEST(KvPoolTest, PagesAreDisjointWritableAndStartOnAHugePageBoundary) {
  const KvLayout layout = SmallLayout();
  const int n_pages = 301;  // 2.6 MiB, not a whole number of 4 KiB pages: more than one huge page
  auto pool_or = KvPool::Create(layout, n_pages);
  ASSERT_TRUE(pool_or.ok()) << pool_or.status().ToString();
  KvPool& pool = *pool_or.value();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pool.page(0)) % (uintptr_t{2} << 20), 0u);
  const size_t bytes = layout.block_bytes();
  for (int i = 0; i + 1 < n_pages; ++i) {
    ASSERT_EQ(pool.page(i + 1) - pool.page(i), static_cast<ptrdiff_t>(bytes));
  }
  // Every byte of every page can be written and reads back (the last page included: the
  // alignment must not push it past the reservation).
  for (int i = 0; i < n_pages; ++i) std::memset(pool.page(i), i & 0xff, bytes);
  for (int i = 0; i < n_pages; ++i) {
    const uint8_t* p = pool.page(i);
    ASSERT_EQ(p[0], i & 0xff) << "page " << i;
    ASSERT_EQ(p[bytes - 1], i & 0xff) << "page " << i;
  }
}

TEST(KvPoolTest, AllocateRefUnrefAndExhaustion) {
  auto pool_or = KvPool::Create(SmallLayout(), 4);
  ASSERT_TRUE(pool_or.ok());
  KvPool& pool = *pool_or.value();
  std::set<int> got;
  for (int i = 0; i < 4; ++i) {
    const int p = pool.Allocate();
    ASSERT_GE(p, 0);
    EXPECT_EQ(pool.refcount(p), 1);
    got.insert(p);
  }
  EXPECT_EQ(got.size(), 4u);
  EXPECT_EQ(pool.n_free(), 0);
  EXPECT_EQ(pool.Allocate(), -1);  // no reclaimer: exhausted
  const int shared = *got.begin();
  pool.Ref(shared);
  pool.Unref(shared);
  EXPECT_EQ(pool.n_free(), 0);  // still referenced once
  pool.Unref(shared);
  EXPECT_EQ(pool.n_free(), 1);
  EXPECT_EQ(pool.Allocate(), shared);
}

TEST(KvPoolTest, RejectsEmptyLayouts) {
  KvLayout l = SmallLayout();
  l.n_layers = 0;
  EXPECT_FALSE(KvPool::Create(l, 4).ok());
  EXPECT_FALSE(KvPool::Create(SmallLayout(), 0).ok());
}

}  // namespace
}  // namespace kvstash::engine
