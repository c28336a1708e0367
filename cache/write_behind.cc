#include "cache/write_behind.h"

#include <cstring>
#include <utility>

#include "base/logging.h"
#include "storage/block_store.h"

namespace kvstash::cache {

WriteBehind::WriteBehind(storage::BlockStore& store, size_t max_blocks, uint64_t max_bytes)
    : store_(store), max_blocks_(max_blocks), max_bytes_(max_bytes) {
  thread_ = std::thread([this] { Loop(); });
}

WriteBehind::~WriteBehind() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [this] { return queue_.empty() && outstanding_ == 0; });
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

bool WriteBehind::Enqueue(const storage::BlockKey& key, const storage::BlockHeader& header,
                          std::span<const std::byte> payload) {
  std::vector<std::byte> buf;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.size() >= max_blocks_ || queued_bytes_ + payload.size() > max_bytes_) {
      ++counters_.dropped;
      return false;
    }
    queued_bytes_ += payload.size();
    if (!spare_.empty()) {
      buf = std::move(spare_.back());
      spare_.pop_back();
    }
  }
  // Copy outside the lock: the writer thread keeps draining meanwhile.
  buf.resize(payload.size());
  std::memcpy(buf.data(), payload.data(), payload.size());
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(Item{key, header, std::move(buf)});
    ++counters_.queued;
  }
  cv_.notify_one();
  return true;
}

void WriteBehind::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_ with nothing left
    Item item = std::move(queue_.front());
    queue_.pop_front();
    ++outstanding_;
    lock.unlock();
    // Put copies the payload before it returns; it may block on the store's back-pressure.
    store_.Put(item.key, item.header, item.payload, [this](Status s) {
      bool first_failure = false;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (s.ok()) {
          ++counters_.written;
        } else {
          first_failure = counters_.failed++ == 0;
        }
        --outstanding_;
        if (queue_.empty() && outstanding_ == 0) idle_cv_.notify_all();
      }
      // Nothing of `this` past the lock: the destructor may be running once the queue is idle.
      if (first_failure) {
        DefaultLogger()->warn(
            "cache: a block could not be written to disk: {} (the first of its kind; later ones "
            "are only counted)",
            s.ToString());
      }
    });
    lock.lock();
    queued_bytes_ -= item.payload.size();
    if (spare_.size() < 4) spare_.push_back(std::move(item.payload));
  }
}

Status WriteBehind::Flush() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [this] { return queue_.empty() && outstanding_ == 0; });
  }
  return store_.Flush();
}

WriteBehind::Counters WriteBehind::counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  Counters c = counters_;
  c.depth = queue_.size();
  c.bytes = queued_bytes_;
  return c;
}

}  // namespace kvstash::cache
