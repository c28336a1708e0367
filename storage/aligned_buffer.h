// AlignedBuffer: an owned byte buffer whose address and capacity are multiples of
// format::kIoAlignment (4 KiB), as O_DIRECT I/O requires. Use it for GetMany destinations to get
// zero-copy reads. BufferPool recycles buffers of equal size so large records do not pay for fresh
// page faults on every write, and carves its medium-sized buffers out of huge-page slabs so that
// each is a few physically contiguous runs (see BufferPool).
//
// AlignedBuffer is move-only and not thread-safe; BufferPool is thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
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
  friend class BufferPool;
  // A buffer inside a larger allocation that `owner` keeps alive (a BufferPool slab).
  AlignedBuffer(std::byte* data, size_t size, std::shared_ptr<std::byte> owner) noexcept;
  void Reset() noexcept;

  std::byte* data_ = nullptr;
  size_t size_ = 0;
  std::shared_ptr<std::byte> owner_;  // null when data_ is this buffer's own allocation
};

// New buffers from kSlabMinBytes up to (not including) 2 MiB are carved, back to back, out of
// kSlabBytes slabs that are 2 MiB-aligned and advised to use transparent huge pages; smaller ones
// are allocated on their own, and 2 MiB and larger ones get huge pages of their own
// (AlignedBuffer). Why: O_DIRECT hands the device one segment per physically contiguous run of a
// buffer. A 1 MiB buffer of scattered 4 KiB pages is 256 segments; on a virtio disk without
// indirect descriptors (common in VMs) that takes 256 ring slots, so a single such request can fill
// the ring and the device sees a queue depth of one. From a huge-page slab the same buffer is one
// or two runs. A slab is freed when the last buffer carved from it is; in steady use (buffers of a
// few sizes, recycled through the pool) slabs stay full, and at most one slab is partly carved at a
// time.
class BufferPool {
 public:
  static constexpr size_t kSlabMinBytes = 128 << 10;
  static constexpr size_t kSlabBytes = 8 << 20;

  // Keeps at most `max_cached_bytes` of idle buffers.
  explicit BufferPool(size_t max_cached_bytes) : max_cached_bytes_(max_cached_bytes) {}

  // A buffer of at least `size_bytes`: the smallest idle one that is at most a quarter larger,
  // else a new one of exactly AlignUp(size_bytes).
  AlignedBuffer Get(size_t size_bytes);
  // Returns a buffer for reuse; freed when the pool is full.
  void Release(AlignedBuffer buffer);

 private:
  AlignedBuffer CarveLocked(size_t size);

  std::mutex mu_;
  size_t max_cached_bytes_;
  size_t cached_bytes_ = 0;
  std::multimap<size_t, AlignedBuffer> free_;  // by size
  std::shared_ptr<std::byte> slab_;            // the slab being carved
  size_t slab_used_ = 0;
};

}  // namespace kvstash::storage
