// `kvstash generate` and `kvstash chat`: generation by a running kvstashd over its local socket
// (docs/protocol.md). generate streams one completion of a prompt (text, a file, or stdin);
// chat is an interactive conversation whose history lives in a daemon session, so every turn
// sends only the new message and starts from the KV of everything before it.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>

#include "daemon/cli/commands.h"
#include "daemon/cli/daemon_client.h"

#if KVSTASH_HAVE_LIBEDIT
#include <editline/readline.h>
#endif

namespace kvstash::cli {
namespace {

struct GenerateArgs {
  DaemonFlags daemon;
  SamplingFlags sampling;
  std::string prompt;
  std::string file;
  std::string session;
  std::string system;
  std::string salt;
  bool chat = false;
  bool no_stream = false;
  bool json = false;
  bool quiet = false;
};

// Whether `name` is a session of the daemon (Append continues it, Create starts it).
Result<bool> SessionExists(protocol::Client& c, const std::string& name) {
  KV_ASSIGN_OR_RETURN(auto list, c.SessionList());
  for (const auto& s : list) {
    if (s.name == name) return true;
  }
  return false;
}

int Generate(const GenerateArgs& a) {
  std::string text = a.prompt;
  if (!a.file.empty()) {
    std::ifstream in(a.file, std::ios::binary);
    if (!in) return Fail("generate", Status::InvalidArgument("-f: cannot read " + a.file));
    text.assign(std::istreambuf_iterator<char>(in), {});
  } else if (text.empty() && !isatty(STDIN_FILENO)) {
    text.assign(std::istreambuf_iterator<char>(std::cin), {});
  }
  if (text.empty()) {
    return Fail("generate",
                Status::InvalidArgument("no prompt: give PROMPT, -f FILE, or pipe it on stdin"));
  }
  auto c = ConnectOrSay(a.daemon, "generate");
  if (!c) return 1;
  protocol::GenerateRequest g;
  g.sampling = ToSampling(a.sampling);
  g.stream = !a.no_stream;
  g.cache_salt = a.salt;
  g.session = a.session;
  bool continuing = false;
  if (!a.session.empty()) {
    auto exists = SessionExists(*c, a.session);
    if (!exists.ok()) return Fail("generate", exists.status());
    continuing = *exists;
    g.session_mode = continuing ? protocol::SessionMode::kAppend : protocol::SessionMode::kCreate;
  }
  if (a.chat) {
    if (!a.system.empty() && !continuing) g.prompt.messages.push_back({"system", a.system});
    g.prompt.messages.push_back({"user", text});
  } else {
    g.prompt.text = text;
    // A continued session already starts with a BOS.
    g.prompt.add_special = !continuing;
  }
  auto r = c->Generate(g, [&](const protocol::TokenChunk& t) {
    if (a.json) return;
    std::fwrite(t.text.data(), 1, t.text.size(), stdout);
    std::fflush(stdout);
  });
  if (!r.ok()) return Fail("generate", r.status());
  if (a.json) {
    const nlohmann::json j = {
        {"text", r->text}, {"tokens", r->tokens}, {"usage", UsageJson(r->usage)}};
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("\n");
    if (!a.quiet) std::fprintf(stderr, "[%s]\n", UsageLine(r->usage).c_str());
  }
  return 0;
}

// Reads one line of input; false at end of input. In a terminal with libedit: line editing and
// history.
bool ReadLine(bool tty, std::string* line) {
#if KVSTASH_HAVE_LIBEDIT
  if (tty) {
    char* l = readline("> ");
    if (l == nullptr) return false;
    *line = l;
    if (!line->empty()) add_history(l);
    std::free(l);
    return true;
  }
#endif
  if (tty) {
    std::fputs("> ", stdout);
    std::fflush(stdout);
  }
  return static_cast<bool>(std::getline(std::cin, *line));
}

int Chat(const GenerateArgs& a) {
  auto c = ConnectOrSay(a.daemon, "chat");
  if (!c) return 1;
  const bool tty = isatty(STDIN_FILENO);
  // Without --session the conversation still lives in a session (so each turn reuses the KV of
  // the previous ones); it is removed at the end.
  const bool temporary = a.session.empty();
  const std::string session =
      temporary ? "chat-" + std::to_string(::getpid()) + "-" + std::to_string(std::time(nullptr))
                : a.session;
  auto exists = SessionExists(*c, session);
  if (!exists.ok()) return Fail("chat", exists.status());
  bool continuing = *exists;
  if (tty) {
    std::fprintf(stderr, "kvstash chat: %s (model %s); end with Ctrl-D\n",
                 continuing ? ("continuing session " + session).c_str()
                            : (temporary ? "new conversation" : "new session " + session).c_str(),
                 c->server().model.c_str());
  }
  std::string line;
  int rc = 0;
  while (ReadLine(tty, &line)) {
    if (line.empty()) continue;
    protocol::GenerateRequest g;
    g.sampling = ToSampling(a.sampling);
    g.cache_salt = a.salt;
    g.session = session;
    g.session_mode = continuing ? protocol::SessionMode::kAppend : protocol::SessionMode::kCreate;
    if (!continuing && !a.system.empty()) g.prompt.messages.push_back({"system", a.system});
    g.prompt.messages.push_back({"user", line});
    auto r = c->Generate(g, [](const protocol::TokenChunk& t) {
      std::fwrite(t.text.data(), 1, t.text.size(), stdout);
      std::fflush(stdout);
    });
    std::printf("\n");
    std::fflush(stdout);
    if (!r.ok()) {
      rc = Fail("chat", r.status());
      break;
    }
    continuing = true;
    if (!a.quiet && tty) std::fprintf(stderr, "[%s]\n", UsageLine(r->usage).c_str());
  }
  if (temporary && continuing) (void)c->SessionDelete(session);
  return rc;
}

constexpr const char* kGenerateHelp =
    "Generate a completion with the running kvstashd (over its local socket), streaming the text "
    "to stdout and a usage line (prompt tokens cached per tier, computed, TTFT) to stderr.\n"
    "The prompt is PROMPT, the contents of -f FILE, or stdin when piped.\n"
    "--session NAME continues the session NAME (its tokens, then this prompt) and saves the "
    "result back; a session that does not exist yet is created.\n"
    "Exit status: 0 done; 1 no daemon or the request failed; 2 a bad flag or prompt.";
constexpr const char* kChatHelp =
    "An interactive conversation with the running kvstashd: one line per turn, the reply streamed "
    "back. The history lives in a daemon session (--session NAME keeps it across runs and "
    "daemon restarts; without it a temporary session is removed at the end), so each turn sends "
    "only the new message. Line editing and history in a terminal; reads piped stdin line by "
    "line too.\n"
    "Exit status: 0 at end of input; 1 no daemon or a request failed.";

}  // namespace

void RegisterDaemonGenerateCommands(CLI::App& app, int* exit_code) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* gen = app.add_subcommand(
      "generate", "Generate with the running kvstashd (local socket), streaming the text.");
  gen->footer(kGenerateHelp);
  gen->add_option("prompt", a->prompt, "Prompt text");
  gen->add_option("-f,--file", a->file, "Read the prompt from FILE");
  gen->add_option("--session", a->session, "Continue (or create) the daemon session NAME");
  gen->add_flag("--chat", a->chat,
                "Send the prompt as a user message, rendered with the model's chat template");
  gen->add_option("--system", a->system, "With --chat: a system message");
  gen->add_option("--salt", a->salt, "Cache salt (tenant isolation)");
  gen->add_flag("--no-stream", a->no_stream, "Print the text when it is complete");
  gen->add_flag("--json", a->json, "Print {text, tokens, usage} as JSON");
  gen->add_flag("-q,--quiet", a->quiet, "No usage line on stderr");
  AddSamplingFlags(gen, &a->sampling);
  AddDaemonFlags(gen, &a->daemon);
  gen->callback([a, exit_code] { *exit_code = Generate(*a); });

  auto ca = std::make_shared<GenerateArgs>();
  CLI::App* chat = app.add_subcommand(
      "chat", "An interactive conversation with the running kvstashd, kept in a session.");
  chat->footer(kChatHelp);
  chat->add_option("--session", ca->session, "Keep the conversation in the daemon session NAME");
  chat->add_option("--system", ca->system, "System message of a new conversation");
  chat->add_option("--salt", ca->salt, "Cache salt (tenant isolation)");
  chat->add_flag("-q,--quiet", ca->quiet, "No usage line after each reply");
  AddSamplingFlags(chat, &ca->sampling);
  AddDaemonFlags(chat, &ca->daemon);
  chat->callback([ca, exit_code] {
    ca->chat = true;
    *exit_code = Chat(*ca);
  });
}

}  // namespace kvstash::cli
