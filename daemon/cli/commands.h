// Subcommands of the `kvstash` CLI. Each lives in its own file and registers itself on the app;
// main.cc calls every Register function. A command's callback returns through the exit code it
// stores in `*exit_code` (0 ok, 1 runtime error, 2 usage error).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "base/bytes.h"  // ParseByteSize
#include "base/status.h"

namespace kvstash::cli {

void RegisterRunCommand(CLI::App& app, int* exit_code);  // run_cmd.cc
void RegisterSessionCommand(CLI::App& app,
                            int* exit_code);  // session_cmd.cc (save, restore, list, rm)
// Against a running kvstashd over its local socket:
void RegisterDaemonGenerateCommands(CLI::App& app,
                                    int* exit_code);  // generate_cmd.cc (generate, chat)
void RegisterDaemonPrefillCommands(CLI::App& app,
                                   int* exit_code);  // prefill_cmd.cc (prefill, stats)

void RegisterTokenizeCommands(CLI::App& app,
                              int* exit_code);  // tokenize_cmd.cc (tokenize, detokenize)

}  // namespace kvstash::cli
