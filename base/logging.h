// The logging facade. Modules log through a Logger (spdlog underneath); take one through Options
// so tests can silence or capture it. Thread-safe. Nothing at info level in per-token or
// per-block loops: count instead.
#pragma once

#include <memory>
#include <string>

#include <spdlog/logger.h>

namespace kvstash {

using Logger = spdlog::logger;

// A process-wide logger writing to stderr, named "kvstash". Level from KVSTASH_LOG_LEVEL
// (trace, debug, info, warn, error, off); default info.
std::shared_ptr<Logger> DefaultLogger();

// A logger that discards everything (for tests and quiet tools).
std::shared_ptr<Logger> NullLogger();

// Sets the level of the default logger by name; returns false for an unknown name.
bool SetLogLevel(const std::string& level);

}  // namespace kvstash
