#include "storage/aligned_buffer.h"

#include <sys/mman.h>

#include <cstdlib>
#include <utility>

#include "base/check.h"
#include "base/huge_pages.h"
#include "storage/format.h"

namespace kvstash::storage {

namespace {
// Buffers of MiBs are touched once per use by a copy or a DMA. Backing them with transparent
// huge pages turns 512 page faults per 2 MiB into one, which matters most in VMs where a fault
// is expensive.
// A fresh, 2 MiB-aligned mapping of BufferPool::kSlabBytes advised to use huge pages. Mapped
// directly rather than through malloc, which may hand out recycled heap memory already backed by
// small pages (its mmap threshold grows as large blocks are freed).
std::byte* MapSlab() {
  void* p = MapHugePageAligned(BufferPool::kSlabBytes);
  KV_CHECK_MSG(p != nullptr, "slab allocation failed");
  return static_cast<std::byte*>(p);
}
}  // namespace

AlignedBuffer::AlignedBuffer(size_t size_bytes) {
  size_ = format::AlignUp(size_bytes == 0 ? 1 : size_bytes);
  const size_t alignment = size_ >= kHugePageBytes ? kHugePageBytes : format::kIoAlignment;
  void* p = nullptr;
  KV_CHECK_MSG(posix_memalign(&p, alignment, size_) == 0, "aligned allocation failed");
  data_ = static_cast<std::byte*>(p);
  if (alignment == kHugePageBytes) ::madvise(p, size_, MADV_HUGEPAGE);  // advisory; errors ignored
}

AlignedBuffer::AlignedBuffer(std::byte* data, size_t size,
                             std::shared_ptr<std::byte> owner) noexcept
    : data_(data), size_(size), owner_(std::move(owner)) {}

AlignedBuffer::~AlignedBuffer() { Reset(); }

void AlignedBuffer::Reset() noexcept {
  if (!owner_) std::free(data_);
  owner_.reset();
  data_ = nullptr;
  size_ = 0;
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      owner_(std::move(other.owner_)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    owner_ = std::move(other.owner_);
  }
  return *this;
}

AlignedBuffer BufferPool::Get(size_t size_bytes) {
  const size_t size = format::AlignUp(size_bytes == 0 ? 1 : size_bytes);
  {
    std::lock_guard lock(mu_);
    auto it = free_.lower_bound(size);
    if (it != free_.end() && it->first <= size + size / 4) {
      AlignedBuffer b = std::move(it->second);
      free_.erase(it);
      cached_bytes_ -= b.size();
      return b;
    }
    if (size >= kSlabMinBytes && size < kHugePageBytes) return CarveLocked(size);
  }
  return AlignedBuffer(size);
}

AlignedBuffer BufferPool::CarveLocked(size_t size) {
  static_assert(kSlabBytes % kHugePageBytes == 0 && kSlabBytes >= 2 * kHugePageBytes);
  if (!slab_ || slab_used_ + size > kSlabBytes) {
    // The previous slab lives on in the buffers carved from it; its unused tail (less than one
    // buffer) is lost until they are all gone.
    slab_ = std::shared_ptr<std::byte>(MapSlab(), [](std::byte* q) { ::munmap(q, kSlabBytes); });
    slab_used_ = 0;
  }
  AlignedBuffer b(slab_.get() + slab_used_, size, slab_);
  slab_used_ += size;
  return b;
}

void BufferPool::Release(AlignedBuffer buffer) {
  if (buffer.empty()) return;
  std::lock_guard lock(mu_);
  if (cached_bytes_ + buffer.size() > max_cached_bytes_) return;
  cached_bytes_ += buffer.size();
  const size_t size = buffer.size();
  free_.emplace(size, std::move(buffer));
}

}  // namespace kvstash::storage
