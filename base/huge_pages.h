// Anonymous memory on a 2 MiB boundary, advised to use transparent huge pages: buffers of MiBs
// that are streamed (the KV page pool, storage slabs) take one page fault and one TLB entry per
// 2 MiB instead of 512.
#pragma once

#include <cstddef>

namespace kvstash {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

// A private anonymous mapping of `bytes` starting on a 2 MiB boundary (the alignment slack is
// unmapped again, so munmap(p, bytes) releases it all), with MADV_HUGEPAGE as a best effort.
// `extra_flags` are ORed into the mmap flags (e.g. MAP_NORESERVE). nullptr with errno set when
// the mapping fails.
void* MapHugePageAligned(size_t bytes, int extra_flags = 0);

}  // namespace kvstash
