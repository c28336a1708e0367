#include "base/clock.h"

namespace kvstash {
namespace {
class SteadyClock final : public Clock {
 public:
  int64_t NowNs() const override { return MonotonicNowNs(); }
};
}  // namespace

Clock* Clock::Default() {
  static SteadyClock clock;
  return &clock;
}

}  // namespace kvstash
