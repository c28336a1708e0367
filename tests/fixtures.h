// Locating the shared test fixtures: $KVSTASH_FIXTURES, else ../shared/models beside the source
// tree. Tests that need a fixture skip with a printed reason when it is absent.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace kvstash::testing {

inline std::string FixturesDir() {
  if (const char* env = std::getenv("KVSTASH_FIXTURES")) return env;
#ifdef KVSTASH_SOURCE_DIR
  return std::string(KVSTASH_SOURCE_DIR) + "/../shared/models";
#else
  return "../shared/models";
#endif
}

inline std::string FixturePath(const std::string& rel) { return FixturesDir() + "/" + rel; }

inline bool HaveFixture(const std::string& rel) {
  return std::filesystem::exists(FixturePath(rel));
}

}  // namespace kvstash::testing

// Skips the current test with a reason when a fixture file is missing.
#define KV_REQUIRE_FIXTURE(rel)                                                           \
  do {                                                                                    \
    if (!::kvstash::testing::HaveFixture(rel))                                            \
      GTEST_SKIP() << "fixture " << ::kvstash::testing::FixturePath(rel)                  \
                   << " not found (set KVSTASH_FIXTURES or put shared/ beside the repo)"; \
  } while (0)
