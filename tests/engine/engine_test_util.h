// Helpers for engine tests: synthetic models written once per test process into a temp dir,
// running the engine, and calling the Python reference.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/model/mkmodel.h"
#include "engine/model/model.h"
#include "engine/runner.h"

namespace kvstash::engine::testutil {

inline std::string TempDir() {
  static const std::string dir = [] {
    auto p = std::filesystem::temp_directory_path() /
             ("kvstash-engine-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(p);
    return p.string();
  }();
  return dir;
}

// Writes (once) and returns the path of a synthetic model of `preset` with weight type `type`.
inline std::string SyntheticModel(const std::string& preset, const std::string& type,
                                  uint64_t seed = 7) {
  const std::string path =
      TempDir() + "/" + preset + "-" + type + "-" + std::to_string(seed) + ".gguf";
  if (std::filesystem::exists(path)) return path;
  MkModelOptions o;
  auto cfg = FindPreset(preset);
  EXPECT_TRUE(cfg.ok()) << cfg.status().ToString();
  o.config = *cfg;
  auto wt = ParseWeightType(type);
  EXPECT_TRUE(wt.ok()) << wt.status().ToString();
  o.weight_type = *wt;
  o.seed = seed;
  auto r = WriteSyntheticModel(path, o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return path;
}

inline std::unique_ptr<Model> LoadOrDie(const std::string& path) {
  auto m = Model::Load(path);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? std::move(*m) : nullptr;
}

inline std::unique_ptr<Runner> MakeRunner(const Model& m, KvDtype dtype, int block_tokens,
                                          int n_batch = 256, int n_threads = 2) {
  RunnerOptions o;
  o.kv_dtype = dtype;
  o.block_tokens = block_tokens;
  o.n_batch = n_batch;
  o.n_threads = n_threads;
  o.n_ctx = 1024;
  auto r = Runner::Create(m, o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(*r) : nullptr;
}

// n random token ids in [3, vocab) with BOS (1) first.
inline std::vector<int32_t> RandomPrompt(std::mt19937& rng, int n, int vocab) {
  std::uniform_int_distribution<int> d(3, vocab - 1);
  std::vector<int32_t> p(n);
  for (auto& t : p) t = d(rng);
  p[0] = 1;
  return p;
}

inline int Argmax(const float* v, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

// Greedy continuation of `n` tokens after the current state (logits = last logits).
inline std::vector<int32_t> Greedy(Runner& r, Sequence& seq, std::vector<float> logits, int n) {
  std::vector<int32_t> out;
  const int V = r.model().config().n_vocab;
  for (int i = 0; i < n; ++i) {
    int32_t t = Argmax(logits.data(), V);
    out.push_back(t);
    if (i + 1 < n) {
      EXPECT_TRUE(r.Decode(seq, t, &logits).ok());
    }
  }
  return out;
}

// Runs a command and returns its stdout; sets *rc to the exit status.
inline std::string RunCommand(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    *rc = -1;
    return out;
  }
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int status = pclose(p);
  *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

inline bool HavePythonNumpy() {
  int rc = 0;
  RunCommand("/usr/bin/python3 -c 'import numpy' 2>/dev/null", &rc);
  return rc == 0;
}

}  // namespace kvstash::engine::testutil
