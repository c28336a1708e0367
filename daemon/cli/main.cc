// kvstash: the command-line front end. Offline commands (run, tokenize, session --cache-dir) run
// the engine in-process; generate, chat, prefill, stats and session talk to a running kvstashd.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "daemon/cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{
      "kvstash — an LLM inference engine that never computes the same prompt prefix twice.\n"
      "Run `kvstash <command> --help` for the flags of a command."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "kvstash 0.1.0");
  int exit_code = 0;
  kvstash::cli::RegisterRunCommand(app, &exit_code);
  kvstash::cli::RegisterTokenizeCommands(app, &exit_code);
  kvstash::cli::RegisterSessionCommand(app, &exit_code);
  kvstash::cli::RegisterDaemonGenerateCommands(app, &exit_code);
  kvstash::cli::RegisterDaemonPrefillCommands(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help/--version exit 0; every usage error exits 2, like other Unix tools.
    return app.exit(e) == 0 ? 0 : 2;
  }
  return exit_code;
}
