// An IoQueue over one io_uring instance (liburing): batched submission of reads, writes and
// fdatasyncs with many operations in flight. Operations on a File without a descriptor
// (File::fd() < 0) run synchronously and complete on the next Reap.
//
// Not thread-safe: one thread at a time submits and reaps (the store keeps a pool of queues and
// hands each to one caller at a time).
#pragma once

#include <memory>

#include "base/status.h"
#include "storage/file.h"

namespace kvstash::storage {

// Fails (IOError/Incompatible) when the kernel refuses io_uring; callers fall back to
// NewSyncIoQueue.
Result<std::unique_ptr<IoQueue>> NewIoUringQueue(unsigned depth);

}  // namespace kvstash::storage
