// `kvstash session list|rm --cache-dir DIR`: the named sessions of a prefix cache directory.
#include <cctype>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "base/logging.h"
#include "cache/prefix_cache.h"
#include "daemon/cli/commands.h"
#include "storage/block_store.h"
#include "storage/format.h"

namespace kvstash::cli {
namespace {

struct SessionArgs {
  std::string cache_dir;
  std::string name;
  bool json = false;
};

// Whether `dir` holds a cache, checked before opening so that neither a mistyped path nor a
// directory that is not a cache (say $HOME) gets store files created in it, and the message says
// so instead of the store's "create_if_missing is false".
Status CheckCacheDir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (st.type() == fs::file_type::not_found) {
    return Status::NotFound("no cache directory at " + dir);
  }
  if (ec) return Status::IOError("cannot read the cache directory " + dir + ": " + ec.message());
  if (st.type() != fs::file_type::directory) {
    return Status::NotFound("no cache directory at " + dir + " (it is not a directory)");
  }
  const std::string index = dir + "/" + std::string(storage::format::kIndexDirName);
  const std::string segments = dir + "/" + std::string(storage::format::kSegmentDirName);
  if (!fs::exists(index, ec) && !fs::exists(segments, ec)) {
    return Status::NotFound(dir + " is not a kvstash cache directory (no " +
                            std::string(storage::format::kIndexDirName) + "/ or " +
                            std::string(storage::format::kSegmentDirName) + "/ in it)");
  }
  return Status::Ok();
}

Result<std::unique_ptr<storage::BlockStore>> OpenExisting(const std::string& dir) {
  KV_RETURN_IF_ERROR(CheckCacheDir(dir));
  storage::Options o;
  o.path = dir;
  o.create_if_missing = false;
  o.logger = NullLogger();
  auto store = storage::BlockStore::Open(o);
  if (!store.ok()) return store.status().WithContext("--cache-dir " + dir);
  return store;
}

std::string FormatTime(int64_t us) {
  if (us <= 0) return "-";
  const time_t t = static_cast<time_t>(us / 1000000);
  struct tm tm {};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

int List(const SessionArgs& a) {
  auto store = OpenExisting(a.cache_dir);
  if (!store.ok()) {
    std::fprintf(stderr, "kvstash session list: %s\n", store.status().ToString().c_str());
    return 1;
  }
  auto sessions = cache::ListSessions(**store);
  if (!sessions.ok()) {
    std::fprintf(stderr, "kvstash session list: %s\n", sessions.status().ToString().c_str());
    return 1;
  }
  if (a.json) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& s : *sessions) {
      arr.push_back({{"name", s.name},
                     {"model", s.model_path},
                     {"model_description", s.model_description},
                     {"model_fingerprint", s.model_fingerprint},
                     {"tokens", s.tokens},
                     {"bytes", s.bytes},
                     {"created_us", s.created_us},
                     {"last_used_us", s.last_used_us}});
    }
    const nlohmann::json out = {{"sessions", arr}};
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  if (sessions->empty()) {
    std::printf("no sessions in %s\n", a.cache_dir.c_str());
    return 0;
  }
  std::printf("%-24s %8s %10s  %-19s  %-19s  %s\n", "NAME", "TOKENS", "KV MiB", "CREATED",
              "LAST USED", "MODEL");
  for (const auto& s : *sessions) {
    std::printf("%-24s %8" PRId64 " %10.1f  %-19s  %-19s  %s %s\n", s.name.c_str(), s.tokens,
                s.bytes / 1048576.0, FormatTime(s.created_us).c_str(),
                FormatTime(s.last_used_us).c_str(), s.model_path.c_str(),
                s.model_description.empty() ? "" : ("(" + s.model_description + ")").c_str());
  }
  return 0;
}

int Remove(const SessionArgs& a) {
  auto store = OpenExisting(a.cache_dir);
  Status s = store.ok() ? cache::DeleteSession(**store, a.name) : store.status();
  if (!s.ok()) {
    std::fprintf(stderr, "kvstash session rm: %s\n", s.ToString().c_str());
    return s.code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  std::printf("removed session %s\n", a.name.c_str());
  return 0;
}

constexpr const char* kListHelp =
    "List the sessions: name, tokens, KV size, times, model. A session whose manifest cannot be "
    "read is listed with the error in place of the model.\n"
    "Exit status: 0 (also when there are no sessions); 1 when --cache-dir is not an existing "
    "cache directory (\"no cache directory at DIR\") or cannot be read.";
constexpr const char* kRmHelp =
    "Delete a session (its full blocks stay in the cache as ordinary entries).\n"
    "Exit status: 0 removed; 1 no such session, or --cache-dir is not an existing cache "
    "directory; 2 an invalid session name.";

}  // namespace

void RegisterSessionCommand(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<SessionArgs>();
  CLI::App* cmd = app.add_subcommand(
      "session", "Named sessions saved with `kvstash run --save-session` in a cache directory.");
  cmd->require_subcommand(1);
  CLI::App* list = cmd->add_subcommand("list", kListHelp);
  list->add_option("--cache-dir", args->cache_dir, "Cache directory")->required();
  list->add_flag("--json", args->json,
                 "Print {\"sessions\": [{name, model, model_fingerprint, tokens, bytes, "
                 "created_us, last_used_us}]}");
  list->callback([args, exit_code] { *exit_code = List(*args); });
  CLI::App* rm = cmd->add_subcommand("rm", kRmHelp);
  rm->add_option("name", args->name, "Session name")->required();
  rm->add_option("--cache-dir", args->cache_dir, "Cache directory")->required();
  rm->callback([args, exit_code] { *exit_code = Remove(*args); });
}

}  // namespace kvstash::cli
