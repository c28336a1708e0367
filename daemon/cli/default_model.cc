#include "daemon/cli/default_model.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "engine/model/mkmodel.h"

namespace kvstash::cli {

Result<std::string> EnsureDefaultModel() {
  namespace fs = std::filesystem;
  std::string path;
  if (const char* p = std::getenv("KVSTASH_DEFAULT_MODEL")) {
    path = p;
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
  std::error_code ec;
  if (fs::exists(path, ec)) return path;
  fs::create_directories(fs::path(path).parent_path(), ec);
  if (ec) return Status::IOError("create directory for " + path + ": " + ec.message());
  std::fprintf(stderr, "kvstash: creating the default model at %s (once)...\n", path.c_str());
  engine::MkModelOptions o;
  KV_ASSIGN_OR_RETURN(o.config, engine::FindPreset("default"));
  o.weight_type.type = engine::GgmlType::kQ8_0;
  o.seed = 1;
  KV_ASSIGN_OR_RETURN(auto summary, engine::WriteSyntheticModel(path, o));
  std::fprintf(stderr, "kvstash: default model ready (%s, %.1f M parameters, %.1f MiB)\n",
               summary.arch.c_str(), summary.n_params / 1e6, summary.file_bytes / 1048576.0);
  return path;
}

}  // namespace kvstash::cli
