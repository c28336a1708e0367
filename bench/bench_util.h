// Small helpers the benchmark programs share: deterministic token streams, synthetic models
// written once per models directory, and running a peer program for its output.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "engine/model/mkmodel.h"

namespace kvstash::bench {

// n pseudo-random token ids in [3, vocab) (ids 0-2 are the special tokens of every test vocab).
inline std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(3, vocab - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = d(rng);
  return t;
}

// DIR/PRESET-TYPE.gguf, written with kvstash-mkmodel's generator (seed 1) when missing. Exits
// the program with a message when the preset or type is unknown or the write fails.
// n_layer > 0 keeps the preset's layer shapes with fewer (or more) layers: the file name then
// says so (`PRESET-L<n>-TYPE.gguf`).
inline std::string EnsureSyntheticModel(const std::string& dir, const std::string& preset,
                                        const std::string& type, const char* program,
                                        int n_layer = 0) {
  const std::string path = dir + "/" + preset +
                           (n_layer > 0 ? "-L" + std::to_string(n_layer) : "") + "-" + type +
                           ".gguf";
  if (std::filesystem::exists(path)) return path;
  std::fprintf(stderr, "%s: writing %s\n", program, path.c_str());
  engine::MkModelOptions o;
  auto cfg = engine::FindPreset(preset);
  auto wt = engine::ParseWeightType(type);
  if (!cfg.ok() || !wt.ok()) {
    std::fprintf(stderr, "%s: %s\n", program,
                 (!cfg.ok() ? cfg.status() : wt.status()).ToString().c_str());
    std::exit(2);
  }
  o.config = *cfg;
  if (n_layer > 0) o.config.n_layer = n_layer;
  o.weight_type = *wt;
  o.seed = 1;
  if (auto r = engine::WriteSyntheticModel(path, o); !r.ok()) {
    std::fprintf(stderr, "%s: %s\n", program, r.status().ToString().c_str());
    std::exit(1);
  }
  return path;
}

// Runs a shell command and returns its stdout (the peer's results).
inline std::string ReadCommand(const std::string& cmd) {
  std::fprintf(stderr, "  peer: %s\n", cmd.c_str());
  std::string text;
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  pclose(f);
  return text;
}

}  // namespace kvstash::bench
