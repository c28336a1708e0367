// `kvstash prefill` (warm a repository context in a running kvstashd: files concatenated into one
// prompt whose KV blocks the daemon computes or finds, with a progress bar) and `kvstash stats`
// (the daemon's cache tiers and scheduler as a table or JSON).
#include <fnmatch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "base/bytes.h"
#include "daemon/cli/commands.h"
#include "daemon/cli/daemon_client.h"

namespace kvstash::cli {
namespace {

namespace fs = std::filesystem;

struct PrefillArgs {
  DaemonFlags daemon;
  std::vector<std::string> files;
  std::vector<std::string> globs;
  std::string salt;
  std::string session;
  bool json = false;
  bool no_progress = false;
};

// Whether the '/'-separated `path` matches `pattern`, where a "**" component matches any number
// of components (zero included) and the others are fnmatch patterns of one component.
bool GlobMatch(const std::vector<std::string>& pat, size_t pi, const std::vector<std::string>& path,
               size_t si) {
  if (pi == pat.size()) return si == path.size();
  if (pat[pi] == "**") {
    for (size_t k = si; k <= path.size(); ++k) {
      if (GlobMatch(pat, pi + 1, path, k)) return true;
    }
    return false;
  }
  if (si == path.size()) return false;
  return fnmatch(pat[pi].c_str(), path[si].c_str(), FNM_PERIOD) == 0 &&
         GlobMatch(pat, pi + 1, path, si + 1);
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t slash = s.find('/', start);
    const std::string part = s.substr(start, slash == std::string::npos ? slash : slash - start);
    if (!part.empty() && part != ".") out.push_back(part);
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return out;
}

// Files under the current directory matching `pattern` (relative), sorted (a stable prompt, so a
// second run finds the first one's blocks).
Result<std::vector<std::string>> Glob(const std::string& pattern) {
  const std::vector<std::string> pat = Split(pattern);
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it =
           fs::recursive_directory_iterator(".", fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->path().filename().string().starts_with(".") && it->is_directory()) {
      it.disable_recursion_pending();  // .git and friends
      continue;
    }
    if (!it->is_regular_file()) continue;
    const std::string rel = it->path().lexically_relative(".").generic_string();
    if (GlobMatch(pat, 0, Split(rel), 0)) out.push_back(rel);
  }
  if (ec) return Status::IOError("--glob " + pattern + ": " + ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

void DrawProgress(const protocol::Progress& p, bool tty) {
  if (!tty || p.total_tokens <= 0) return;
  constexpr int kWidth = 30;
  const int filled =
      static_cast<int>(static_cast<int64_t>(kWidth) * p.done_tokens / p.total_tokens);
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r[%s] %d/%d tokens, %d cached, %.0f tokens/s ", bar.c_str(), p.done_tokens,
               p.total_tokens, p.cached_tokens, p.tokens_per_s);
  std::fflush(stderr);
}

int Prefill(PrefillArgs a) {
  for (const std::string& g : a.globs) {
    auto files = Glob(g);
    if (!files.ok()) return Fail("prefill", files.status());
    if (files->empty())
      std::fprintf(stderr, "kvstash prefill: --glob '%s' matches no file\n", g.c_str());
    a.files.insert(a.files.end(), files->begin(), files->end());
  }
  if (a.files.empty()) {
    return Fail("prefill", Status::InvalidArgument("no files: give -f FILE... or --glob PATTERN"));
  }
  // One prompt: each file under a header line, in the order given.
  std::string context;
  for (const std::string& f : a.files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) return Fail("prefill", Status::InvalidArgument("cannot read " + f));
    context += "// FILE: " + f + "\n";
    context.append(std::istreambuf_iterator<char>(in), {});
    if (!context.empty() && context.back() != '\n') context += '\n';
  }
  auto c = ConnectOrSay(a.daemon, "prefill");
  if (!c) return 1;
  const bool tty = !a.no_progress && !a.json && isatty(STDERR_FILENO);
  const auto t0 = std::chrono::steady_clock::now();
  Result<protocol::Usage> u = Status::Internal("unset");
  if (a.session.empty()) {
    protocol::PrefillRequest p;
    p.prompt.text = context;
    p.cache_salt = a.salt;
    p.progress = tty;
    u = c->Prefill(p, [tty](const protocol::Progress& pr) { DrawProgress(pr, tty); });
  } else {
    protocol::SessionSaveRequest s;
    s.name = a.session;
    s.prompt.text = context;
    s.cache_salt = a.salt;
    u = c->SessionSave(s);
  }
  if (tty) std::fprintf(stderr, "\n");
  if (!u.ok()) return Fail("prefill", u.status());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (a.json) {
    nlohmann::json j = {{"files", a.files.size()},
                        {"bytes", context.size()},
                        {"seconds", s},
                        {"usage", UsageJson(*u)}};
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  std::printf(
      "%zu files, %s, %d tokens: %d already cached (device %d, host %d, disk %d), %d "
      "computed in %.2f s (%.0f tokens/s)%s\n",
      a.files.size(), FormatBytes(context.size()).c_str(), u->prompt_tokens, u->cached_tokens,
      u->device_tokens, u->host_tokens, u->disk_tokens, u->prefilled_tokens, s,
      u->prefill_ms > 0 ? u->prefilled_tokens / u->prefill_ms * 1e3 : 0.0,
      a.session.empty() ? "" : (", saved as session " + a.session).c_str());
  return 0;
}

struct StatsArgs {
  DaemonFlags daemon;
  bool json = false;
};

double HitRate(const protocol::TierStats& t) {
  const uint64_t n = t.hits + t.misses;
  return n == 0 ? 0.0 : static_cast<double>(t.hits) / static_cast<double>(n);
}

int Stats(const StatsArgs& a) {
  auto c = ConnectOrSay(a.daemon, "stats");
  if (!c) return 1;
  auto s = c->Stats();
  if (!s.ok()) return Fail("stats", s.status());
  if (a.json) {
    nlohmann::json tiers = nlohmann::json::object();
    for (const auto& t : s->tiers) {
      tiers[t.tier] = {{"blocks", t.blocks}, {"bytes", t.bytes},       {"hits", t.hits},
                       {"misses", t.misses}, {"hit_rate", HitRate(t)}, {"evictions", t.evictions}};
    }
    const nlohmann::json j = {{"model", c->server().model},
                              {"tiers", tiers},
                              {"lookups", s->lookups},
                              {"lookup_tokens", s->lookup_tokens},
                              {"cached_tokens", s->cached_tokens},
                              {"prefilled_tokens", s->prefilled_tokens},
                              {"generated_tokens", s->generated_tokens},
                              {"running", s->running},
                              {"queue_depth", s->queue_depth},
                              {"pages_total", s->pages_total},
                              {"pages_free", s->pages_free},
                              {"completed", s->completed},
                              {"cancelled", s->cancelled}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("%s, model %s, socket %s\n\n", c->server().server.c_str(), c->server().model.c_str(),
              c->socket_path().c_str());
  std::printf("%-8s %10s %12s %12s %12s %9s %10s\n", "TIER", "BLOCKS", "BYTES", "HITS", "MISSES",
              "HIT RATE", "EVICTIONS");
  for (const auto& t : s->tiers) {
    std::printf("%-8s %10" PRIu64 " %12s %12" PRIu64 " %12" PRIu64 " %8.1f%% %10" PRIu64 "\n",
                t.tier.c_str(), t.blocks, FormatBytes(t.bytes).c_str(), t.hits, t.misses,
                100 * HitRate(t), t.evictions);
  }
  const double share =
      s->lookup_tokens == 0 ? 0 : 100.0 * s->cached_tokens / static_cast<double>(s->lookup_tokens);
  std::printf("\nprompt tokens looked up %" PRIu64 ", served from the cache %" PRIu64
              " (%.1f%%), computed %" PRIu64 "; generated %" PRIu64 "\n",
              s->lookup_tokens, s->cached_tokens, share, s->prefilled_tokens, s->generated_tokens);
  std::printf("requests running %" PRIu64 ", waiting %" PRIu64 ", completed %" PRIu64
              ", cancelled %" PRIu64 "; KV pages %" PRIu64 " of %" PRIu64 " free\n",
              s->running, s->queue_depth, s->completed, s->cancelled, s->pages_free,
              s->pages_total);
  return 0;
}

constexpr const char* kPrefillHelp =
    "Warm a repository context in the running kvstashd: the files (in the order given; --glob "
    "matches are sorted) are concatenated, each under a `// FILE: path` line, and the daemon "
    "computes the KV of the blocks it does not have yet. Shows a progress bar (tokens/s, what "
    "was already cached) in a terminal; prints what was cached and what was computed.\n"
    "Exit status: 0 done; 1 no daemon or the request failed; 2 no files or a bad flag.";
constexpr const char* kStatsHelp =
    "The running kvstashd's prefix cache per tier (blocks, bytes, hits, misses, hit rate, "
    "evictions) and its scheduler, as a table or --json.\n"
    "Exit status: 0; 1 no daemon.";

}  // namespace

void RegisterDaemonPrefillCommands(CLI::App& app, int* exit_code) {
  auto a = std::make_shared<PrefillArgs>();
  CLI::App* p = app.add_subcommand(
      "prefill", "Warm a repository context (files, globs) in the running kvstashd's cache.");
  p->footer(kPrefillHelp);
  p->add_option("-f,--file", a->files, "A file of the context (repeatable)")->expected(1, -1);
  p->add_option("--glob", a->globs,
                "Files under the current directory matching PATTERN, ** for any directories "
                "(e.g. 'src/**/*.cc'; repeatable)");
  p->add_option("--salt", a->salt, "Cache salt (tenant isolation)");
  p->add_option("--session", a->session, "Also save the context as the daemon session NAME");
  p->add_flag("--no-progress", a->no_progress, "No progress bar");
  p->add_flag("--json", a->json, "Print {files, bytes, seconds, usage} as JSON");
  AddDaemonFlags(p, &a->daemon);
  p->callback([a, exit_code] { *exit_code = Prefill(*a); });

  auto s = std::make_shared<StatsArgs>();
  CLI::App* st = app.add_subcommand("stats", "The running kvstashd's cache tiers and scheduler.");
  st->footer(kStatsHelp);
  st->add_flag("--json", s->json, "Print the numbers as one JSON object");
  AddDaemonFlags(st, &s->daemon);
  st->callback([s, exit_code] { *exit_code = Stats(*s); });
}

}  // namespace kvstash::cli
