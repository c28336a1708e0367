#include "base/huge_pages.h"

#include <sys/mman.h>

#include <cstdint>

namespace kvstash {

void* MapHugePageAligned(size_t bytes, int extra_flags) {
  void* raw = ::mmap(nullptr, bytes + kHugePageBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (begin + kHugePageBytes - 1) & ~uintptr_t{kHugePageBytes - 1};
  if (start > begin) ::munmap(raw, start - begin);
  // munmap takes whole pages: keep `bytes` rounded up to the next 4 KiB page.
  const uintptr_t keep = (bytes + 4095) & ~uintptr_t{4095};
  const uintptr_t end = begin + bytes + kHugePageBytes;
  if (end > start + keep) ::munmap(reinterpret_cast<void*>(start + keep), end - start - keep);
  (void)::madvise(reinterpret_cast<void*>(start), bytes, MADV_HUGEPAGE);  // THP may be disabled
  return reinterpret_cast<void*>(start);
}

}  // namespace kvstash
