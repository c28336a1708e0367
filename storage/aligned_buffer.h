// AlignedBuffer: an owned byte buffer whose address and capacity are multiples of
// format::kIoAlignment (4 KiB), as O_DIRECT I/O requires. Use it for GetMany destinations to get
// zero-copy reads. BufferPool recycles buffers of equal size so large records do not pay for fresh
// page faults on every write.
//
// AlignedBuffer is move-only and not thread-safe; BufferPool is thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <span>

namespace kvstash::storage {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // Allocates at least `size_bytes` (rounded up to the alignment); contents are uninitialized.
  // Aborts on allocation failure, like operator new.
  explicit AlignedBuffer(size_t size_bytes);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::span<std::byte> span() { return {data_, size_}; }
  std::span<const std::byte> span() const { return {data_, size_}; }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

class BufferPool {
 public:
  // Keeps at most `max_cached_bytes` of idle buffers.
  explicit BufferPool(size_t max_cached_bytes) : max_cached_bytes_(max_cached_bytes) {}

  // A buffer of at least `size_bytes`: the smallest idle one that is at most a quarter larger,
  // else a new one of exactly AlignUp(size_bytes).
  AlignedBuffer Get(size_t size_bytes);
  // Returns a buffer for reuse; freed when the pool is full.
  void Release(AlignedBuffer buffer);

 private:
  std::mutex mu_;
  size_t max_cached_bytes_;
  size_t cached_bytes_ = 0;
  std::multimap<size_t, AlignedBuffer> free_;  // by size
};

}  // namespace kvstash::storage
