// The embedded default model: a small synthetic model (kvstash-mkmodel preset "default") that
// `kvstash run` uses when no -m is given, generated deterministically on first use.
#pragma once

#include <string>

#include "base/status.h"

namespace kvstash::cli {

// Path of the default model: $KVSTASH_DEFAULT_MODEL, else $XDG_CACHE_HOME/kvstash/default.gguf
// (~/.cache/kvstash/default.gguf). Creates it (printing progress on stderr) when missing.
Result<std::string> EnsureDefaultModel();

}  // namespace kvstash::cli
