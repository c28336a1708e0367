#include "daemon/cli/default_model.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "engine/gguf/gguf.h"
#include "engine/model/mkmodel.h"

namespace kvstash::cli {
namespace {

constexpr char kPreset[] = "default";

enum class Existing { kMissing, kCurrent, kStale, kOther };

// What is at `path`: the current default model, a default model written by another version of
// the generator (files from before versioning have no version key), something else (or an
// unreadable file), or nothing.
Existing Inspect(const std::string& path, const std::string& default_name) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return Existing::kMissing;
  auto file = engine::GgufFile::Open(path);
  if (!file.ok()) return Existing::kOther;
  auto name = (*file)->GetString("general.name");
  if (!name.ok() || *name != default_name) return Existing::kOther;
  auto version = (*file)->GetUintOr(engine::kMkModelVersionKey, 1);
  return version.ok() && *version == engine::kMkModelVersion ? Existing::kCurrent
                                                             : Existing::kStale;
}

}  // namespace

Result<std::string> EnsureDefaultModel() {
  namespace fs = std::filesystem;
  std::string path;
  const char* env = std::getenv("KVSTASH_DEFAULT_MODEL");
  if (env != nullptr && *env != '\0') {
    path = env;
  } else {
    fs::path dir;
    if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) {
      dir = fs::path(x) / "kvstash";
    } else if (const char* h = std::getenv("HOME"); h && *h) {
      dir = fs::path(h) / ".cache" / "kvstash";
    } else {
      dir = fs::temp_directory_path() / "kvstash";
    }
    path = (dir / "default.gguf").string();
  }
  engine::MkModelOptions o;
  KV_ASSIGN_OR_RETURN(o.config, engine::FindPreset(kPreset));
  o.weight_type.type = engine::GgmlType::kQ8_0;
  o.seed = 1;
  switch (Inspect(path, o.config.name)) {
    case Existing::kCurrent:
      return path;
    case Existing::kOther:
      // $KVSTASH_DEFAULT_MODEL may name the user's own model; the cache path is ours.
      if (env != nullptr && *env != '\0') return path;
      std::fprintf(stderr, "kvstash: %s is not a readable default model; rebuilding it\n",
                   path.c_str());
      break;
    case Existing::kStale:
      std::fprintf(
          stderr,
          "kvstash: the default model at %s was made by another kvstash version; rebuilding\n",
          path.c_str());
      break;
    case Existing::kMissing:
      std::fprintf(stderr, "kvstash: creating the default model at %s (once)...\n", path.c_str());
      break;
  }
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  if (ec) return Status::IOError("create directory for " + path + ": " + ec.message());
  KV_ASSIGN_OR_RETURN(auto summary, engine::WriteSyntheticModel(path, o));
  std::fprintf(stderr, "kvstash: default model ready (%s, %.1f M parameters, %.1f MiB)\n",
               summary.arch.c_str(), summary.n_params / 1e6, summary.file_bytes / 1048576.0);
  return path;
}

}  // namespace kvstash::cli
