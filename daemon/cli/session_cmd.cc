// `kvstash session`: named sessions. With --cache-dir DIR, `list` and `rm` work on a cache
// directory directly (the daemon stopped); without it, every subcommand (save, restore, list, rm)
// asks the running kvstashd over its local socket.
#include <cctype>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "base/logging.h"
#include "cache/prefix_cache.h"
#include "daemon/cli/commands.h"
#include "daemon/cli/daemon_client.h"
#include "storage/block_store.h"
#include "storage/format.h"

namespace kvstash::cli {
namespace {

struct SessionArgs {
  std::string cache_dir;  // "": the running daemon
  std::string name;
  bool json = false;
  DaemonFlags daemon;
  // save
  std::string text;
  std::vector<std::string> files;
  std::string from;
  std::string salt;
};

// One line of `session list`, from a cache directory or from the daemon.
struct Row {
  std::string name, model, model_description, model_fingerprint;
  int64_t tokens = 0;
  uint64_t bytes = 0;
  int64_t created_us = 0, last_used_us = 0;
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

int PrintSessions(const std::vector<Row>& rows, bool json, const std::string& where) {
  if (json) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& s : rows) {
      arr.push_back({{"name", s.name},
                     {"model", s.model},
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
  if (rows.empty()) {
    std::printf("no sessions in %s\n", where.c_str());
    return 0;
  }
  std::printf("%-24s %8s %10s  %-19s  %-19s  %s\n", "NAME", "TOKENS", "KV MiB", "CREATED",
              "LAST USED", "MODEL");
  for (const auto& s : rows) {
    std::printf("%-24s %8" PRId64 " %10.1f  %-19s  %-19s  %s %s\n", s.name.c_str(), s.tokens,
                s.bytes / 1048576.0, FormatTime(s.created_us).c_str(),
                FormatTime(s.last_used_us).c_str(), s.model.c_str(),
                s.model_description.empty() ? "" : ("(" + s.model_description + ")").c_str());
  }
  return 0;
}

int ListFromDaemon(const SessionArgs& a) {
  auto c = ConnectOrSay(a.daemon, "session list");
  if (!c) return 1;
  auto sessions = c->SessionList();
  if (!sessions.ok()) return Fail("session list", sessions.status());
  std::vector<Row> rows;
  for (const auto& s : *sessions) {
    rows.push_back({s.name, s.model, "", s.model_fingerprint, s.tokens, s.bytes, s.created_us,
                    s.last_used_us});
  }
  return PrintSessions(rows, a.json, "kvstashd (" + c->socket_path() + ")");
}

int List(const SessionArgs& a) {
  if (a.cache_dir.empty()) return ListFromDaemon(a);
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
  std::vector<Row> rows;
  for (const auto& s : *sessions) {
    rows.push_back({s.name, s.model_path, s.model_description, s.model_fingerprint, s.tokens,
                    s.bytes, s.created_us, s.last_used_us});
  }
  return PrintSessions(rows, a.json, a.cache_dir);
}

int Remove(const SessionArgs& a) {
  if (a.cache_dir.empty()) {
    auto c = ConnectOrSay(a.daemon, "session rm");
    if (!c) return 1;
    if (Status s = c->SessionDelete(a.name); !s.ok()) return Fail("session rm", s);
    std::printf("removed session %s\n", a.name.c_str());
    return 0;
  }
  auto store = OpenExisting(a.cache_dir);
  Status s = store.ok() ? cache::DeleteSession(**store, a.name) : store.status();
  if (!s.ok()) {
    std::fprintf(stderr, "kvstash session rm: %s\n", s.ToString().c_str());
    return s.code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  std::printf("removed session %s\n", a.name.c_str());
  return 0;
}

int Save(const SessionArgs& a) {
  protocol::SessionSaveRequest r;
  r.name = a.name;
  r.prompt.text = a.text;
  for (const std::string& f : a.files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) return Fail("session save", Status::InvalidArgument("-f: cannot read " + f));
    r.prompt.text.append(std::istreambuf_iterator<char>(in), {});
  }
  r.from_session = a.from;
  r.cache_salt = a.salt;
  auto c = ConnectOrSay(a.daemon, "session save");
  if (!c) return 1;
  auto u = c->SessionSave(r);
  if (!u.ok()) return Fail("session save", u.status());
  if (a.json) {
    std::printf("%s\n",
                nlohmann::json({{"name", a.name}, {"usage", UsageJson(*u)}}).dump().c_str());
  } else {
    std::printf("saved session %s: %d tokens (%d were cached, %d computed)\n", a.name.c_str(),
                u->prompt_tokens, u->cached_tokens, u->prefilled_tokens);
  }
  return 0;
}

int Restore(const SessionArgs& a) {
  auto c = ConnectOrSay(a.daemon, "session restore");
  if (!c) return 1;
  auto d = c->SessionRestore({a.name, a.salt});
  if (!d.ok()) return Fail("session restore", d.status());
  const protocol::Usage u = d->usage.value_or(protocol::Usage{});
  if (a.json) {
    std::printf("%s\n", nlohmann::json({{"name", a.name}, {"usage", UsageJson(u)}}).dump().c_str());
  } else {
    std::printf(
        "restored session %s: %d tokens in memory (%d from the device tier, %d host, %d "
        "disk, %d computed) in %.1f ms\n",
        a.name.c_str(), u.prompt_tokens, u.device_tokens, u.host_tokens, u.disk_tokens,
        u.prefilled_tokens, u.total_ms);
  }
  return 0;
}

constexpr const char* kSaveHelp =
    "Save a context as the session NAME in the running kvstashd: TEXT and/or the contents of "
    "-f FILE, after the tokens of --from SESSION when given (a copy of it with -f/TEXT "
    "appended). The daemon computes or finds its KV and writes it to its cache directory; "
    "`kvstash generate --session NAME` and `kvstash chat --session NAME` continue it.\n"
    "Exit status: 0 saved; 1 no daemon or the request failed; 2 a bad name or nothing to save.";
constexpr const char* kRestoreHelp =
    "Load the session NAME into the running kvstashd's memory (from disk after a restart), so "
    "the next request that continues it starts at once. Prints where its tokens came from.\n"
    "Exit status: 0 restored; 1 no daemon, no such session, or it was saved under another "
    "model; 2 a bad name.";

constexpr const char* kListHelp =
    "List the sessions: name, tokens, KV size, times, model. A session whose manifest cannot be "
    "read is listed with the error in place of the model.\n"
    "Without --cache-dir: the running kvstashd's sessions.\n"
    "Exit status: 0 (also when there are no sessions); 1 when --cache-dir is not an existing "
    "cache directory (\"no cache directory at DIR\") or cannot be read, or no daemon runs.";
constexpr const char* kRmHelp =
    "Delete a session (its full blocks stay in the cache as ordinary entries). Without "
    "--cache-dir: in the running kvstashd.\n"
    "Exit status: 0 removed; 1 no such session, or --cache-dir is not an existing cache "
    "directory; 2 an invalid session name.";

}  // namespace

void RegisterSessionCommand(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<SessionArgs>();
  CLI::App* cmd = app.add_subcommand(
      "session", "Named sessions of the running kvstashd, or of a cache directory (--cache-dir).");
  cmd->footer(
      "save, restore, list and rm ask the running kvstashd over its local socket; list and rm "
      "with --cache-dir DIR read the cache directory itself (the daemon stopped; sessions saved "
      "with `kvstash run --save-session` too).");
  cmd->require_subcommand(1);
  CLI::App* list = cmd->add_subcommand("list", kListHelp);
  list->add_option("--cache-dir", args->cache_dir,
                   "Cache directory (default: ask the running kvstashd)");
  list->add_flag("--json", args->json,
                 "Print {\"sessions\": [{name, model, model_fingerprint, tokens, bytes, "
                 "created_us, last_used_us}]}");
  AddDaemonFlags(list, &args->daemon);
  list->callback([args, exit_code] { *exit_code = List(*args); });
  CLI::App* rm = cmd->add_subcommand("rm", kRmHelp);
  rm->add_option("name", args->name, "Session name")->required();
  rm->add_option("--cache-dir", args->cache_dir,
                 "Cache directory (default: ask the running kvstashd)");
  AddDaemonFlags(rm, &args->daemon);
  rm->callback([args, exit_code] { *exit_code = Remove(*args); });
  CLI::App* save = cmd->add_subcommand("save", kSaveHelp);
  save->add_option("name", args->name, "Session name")->required();
  save->add_option("text", args->text, "Context text");
  save->add_option("-f,--file", args->files, "Append the contents of FILE (repeatable)");
  save->add_option("--from", args->from, "Start from the tokens of this session");
  save->add_option("--salt", args->salt, "Cache salt (tenant isolation)");
  save->add_flag("--json", args->json, "Print {name, usage} as JSON");
  AddDaemonFlags(save, &args->daemon);
  save->callback([args, exit_code] { *exit_code = Save(*args); });
  CLI::App* restore = cmd->add_subcommand("restore", kRestoreHelp);
  restore->add_option("name", args->name, "Session name")->required();
  restore->add_option("--salt", args->salt, "Cache salt the session was saved under");
  restore->add_flag("--json", args->json, "Print {name, usage} as JSON");
  AddDaemonFlags(restore, &args->daemon);
  restore->callback([args, exit_code] { *exit_code = Restore(*args); });
}

}  // namespace kvstash::cli
