#include "base/bytes.h"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace kvstash {

Result<uint64_t> ParseByteSize(const std::string& text) {
  std::string t = text;
  while (!t.empty() && (t.back() == 'B' || t.back() == 'b' || t.back() == 'i')) t.pop_back();
  // An optional unit letter: K, M, G, T (either case), powers of 1024.
  uint64_t mult = 1;
  if (!t.empty()) {
    static constexpr std::string_view kUnits = "kmgt";
    const size_t u =
        kUnits.find(static_cast<char>(std::tolower(static_cast<unsigned char>(t.back()))));
    if (u != std::string_view::npos) {
      mult = 1ull << (10 * (u + 1));
      t.pop_back();
    }
  }
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = t.empty() ? 0 : std::strtoull(t.c_str(), &end, 10);
  if (t.empty() || end == t.c_str() || *end != '\0' || errno != 0 || t[0] == '-' ||
      v > UINT64_MAX / mult) {
    return Status::InvalidArgument("'" + text + "' is not a byte size (e.g. 4096, 512K, 64M, 2G)");
  }
  return static_cast<uint64_t>(v) * mult;
}

std::string FormatBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

}  // namespace kvstash
