// Byte sizes as people write them on command lines and in config files.
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"

namespace kvstash {

// "4096", "512K", "64M", "2G", "1T" (either case; an optional trailing "B"/"iB"), powers of 1024.
// InvalidArgument for anything else, negative numbers and overflow.
Result<uint64_t> ParseByteSize(const std::string& text);

// 1536 -> "1.5 KiB".
std::string FormatBytes(uint64_t bytes);

}  // namespace kvstash
