// Clocks. Clock is an interface so tests can use a fake; MonotonicNowNs is the cheap direct call.
#pragma once

#include <chrono>
#include <cstdint>

namespace kvstash {

inline int64_t MonotonicNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline int64_t WallNowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Thread-safe. The default instance reads the steady clock.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowNs() const = 0;
  static Clock* Default();
};

// Measures elapsed milliseconds since construction or Reset().
class Stopwatch {
 public:
  Stopwatch() : start_ns_(MonotonicNowNs()) {}
  void Reset() { start_ns_ = MonotonicNowNs(); }
  double ElapsedMs() const { return (MonotonicNowNs() - start_ns_) / 1e6; }

 private:
  int64_t start_ns_;
};

}  // namespace kvstash
