// The embedded default model: a small synthetic model (kvstash-mkmodel preset "default") that
// `kvstash run`, `kvstash tokenize` and `kvstash detokenize` use when no -m is given, generated
// deterministically on first use and regenerated when an older kvstash wrote it.
#pragma once

#include <string>

#include "base/status.h"

namespace kvstash::cli {

// Path of the default model: $KVSTASH_DEFAULT_MODEL, else $XDG_CACHE_HOME/kvstash/default.gguf
// (~/.cache/kvstash/default.gguf). Creates it (printing progress on stderr) when missing, and
// rebuilds it when it is a default model from another kvstash-mkmodel version (its
// kvstash.mkmodel.version differs). At the cache path an unreadable file is rebuilt too; a file
// named by $KVSTASH_DEFAULT_MODEL that is some other model is used as it is.
// Not safe against two processes creating the file at once (they share PATH.tmp).
Result<std::string> EnsureDefaultModel();

}  // namespace kvstash::cli
