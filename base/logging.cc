#include "base/logging.h"

#include <cstdlib>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

namespace kvstash {

std::shared_ptr<Logger> DefaultLogger() {
  static std::shared_ptr<Logger> logger = [] {
    auto l = std::make_shared<spdlog::logger>(
        "kvstash", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    l->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
    l->set_level(spdlog::level::info);
    if (const char* lvl = std::getenv("KVSTASH_LOG_LEVEL")) {
      l->set_level(spdlog::level::from_str(lvl));
    }
    return l;
  }();
  return logger;
}

std::shared_ptr<Logger> NullLogger() {
  static std::shared_ptr<Logger> logger =
      std::make_shared<spdlog::logger>("null", std::make_shared<spdlog::sinks::null_sink_mt>());
  return logger;
}

bool SetLogLevel(const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off") return false;
  DefaultLogger()->set_level(lvl);
  return true;
}

}  // namespace kvstash
