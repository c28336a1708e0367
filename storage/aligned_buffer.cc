#include "storage/aligned_buffer.h"

#include <sys/mman.h>

#include <cstdlib>
#include <utility>

#include "base/check.h"
#include "storage/format.h"

namespace kvstash::storage {

namespace {
// Buffers of MiBs are touched once per use by a copy or a DMA. Backing them with transparent
// huge pages turns 512 page faults per 2 MiB into one, which matters most in VMs where a fault
// is expensive.
constexpr size_t kHugePage = 2 << 20;
}  // namespace

AlignedBuffer::AlignedBuffer(size_t size_bytes) {
  size_ = format::AlignUp(size_bytes == 0 ? 1 : size_bytes);
  const size_t alignment = size_ >= kHugePage ? kHugePage : format::kIoAlignment;
  void* p = nullptr;
  KV_CHECK_MSG(posix_memalign(&p, alignment, size_) == 0, "aligned allocation failed");
  data_ = static_cast<std::byte*>(p);
  if (alignment == kHugePage) ::madvise(p, size_, MADV_HUGEPAGE);  // advisory; errors ignored
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
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
  }
  return AlignedBuffer(size);
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
