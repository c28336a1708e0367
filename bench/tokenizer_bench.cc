// How fast do the tokenizers encode and decode source code?
//
// Encodes ~100 KiB of C++-like source text (generated deterministically, or --file) with each
// tokenizer on one thread and prints a table: tokens/s and MB/s for a cold encode (a freshly
// built tokenizer, empty word cache), a warm encode (median and best of --iters repeats), and
// decode.
// Tokenizers: llama-spm and gpt-2 from the vocab GGUFs, llama3 and qwen3 from tokenizer.json.
// Fixtures are found like the tests do ($KVSTASH_FIXTURES, else ../shared/models).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/gguf/gguf.h"
#include "engine/tokenizer/hf_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"
#include "tests/fixtures.h"

namespace {

using kvstash::Result;
using kvstash::engine::Tokenizer;
using Clock = std::chrono::steady_clock;

// Deterministic C++-flavoured text: functions with comments, identifiers, literals, operators
// and indentation, plus a little non-ASCII in comments, as real source files have.
std::string GenerateSource(size_t n_bytes) {
  static const char* kWords[] = {
      "buffer", "count",  "offset", "block",  "tokens", "status", "result", "index",  "value",
      "cache",  "prefix", "length", "stride", "layer",  "heads",  "scale",  "weight", "input",
      "output", "reader", "writer", "shard",  "queue",  "worker", "thread", "handle", "config"};
  static const char* kTypes[] = {"int32_t",  "size_t",      "float",
                                 "uint64_t", "std::string", "std::vector<int32_t>",
                                 "Status",   "auto"};
  static const char* kComments[] = {
      "// Returns the number of bytes written, or an error when the device is full.",
      "// The invariant: every block in the list is referenced by at least one sequence.",
      "// TODO(kv): handle the résumé of a half-written segment — see naïve path above.",
      "// Keys are sorted; a binary search finds the first block at or after `offset`.",
      "/* Layout: [n_layers][2][n_kv_heads][block_tokens][head_dim] f16 */",
      "// 注意: the cache may evict this entry concurrently; hold the lock.",
  };
  std::mt19937 rng(12345);
  auto pick = [&](auto& arr) { return arr[rng() % std::size(arr)]; };
  auto ident = [&] {
    std::string s = pick(kWords);
    if (rng() % 2) s += std::string("_") + pick(kWords);
    return s;
  };
  std::string out;
  while (out.size() < n_bytes) {
    out += pick(kComments);
    out += "\n";
    const std::string fn = ident();
    out += std::string(pick(kTypes)) + " " + fn + "(const " + pick(kTypes) + "& " + ident() + ", " +
           pick(kTypes) + " " + ident() + ") {\n";
    const int n_lines = 3 + static_cast<int>(rng() % 8);
    for (int i = 0; i < n_lines; ++i) {
      switch (rng() % 5) {
        case 0:
          out += "  " + std::string(pick(kTypes)) + " " + ident() + " = " + ident() + " * " +
                 std::to_string(rng() % 4096) + " + " + ident() + ";\n";
          break;
        case 1:
          out += "  if (" + ident() + " >= " + std::to_string(rng() % 100) + ") return " + ident() +
                 ";\n";
          break;
        case 2:
          out += "  for (size_t i = 0; i < " + ident() + ".size(); ++i) " + ident() +
                 "[i] += " + ident() + "[i];\n";
          break;
        case 3:
          out += "  LOG(INFO) << \"" + ident() + " \" << " + ident() + " << \" bytes\";\n";
          break;
        default:
          out += "  " + ident() + "->" + ident() + "(" + ident() + ", 0x" +
                 std::to_string(rng() % 0xFFFF) + ");\n";
          break;
      }
    }
    out += "  return " + ident() + ";\n}\n\n";
  }
  out.resize(n_bytes);
  return out;
}

struct Subject {
  std::string name;
  std::string fixture;  // relative to the fixtures directory
  bool hf_json;
};

Result<std::unique_ptr<Tokenizer>> Build(const Subject& s) {
  kvstash::engine::Vocab vocab;
  const std::string path = kvstash::testing::FixturePath(s.fixture);
  if (s.hf_json) {
    KV_ASSIGN_OR_RETURN(vocab, kvstash::engine::LoadHfVocab(path));
  } else {
    KV_ASSIGN_OR_RETURN(auto file, kvstash::engine::GgufFile::Open(path));
    KV_ASSIGN_OR_RETURN(vocab, kvstash::engine::Vocab::FromGguf(*file));
  }
  return Tokenizer::Create(std::move(vocab));
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Row {
  std::string name;
  size_t n_tokens = 0;
  double cold_s = 0, warm_s = 0, warm_best_s = 0, decode_s = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tokenizer throughput on ~100 KiB of source code (one thread)."};
  std::string file;
  size_t n_bytes = 100 * 1024;
  int iters = 10;
  bool json = false;
  bool print_text = false;
  app.add_option("--file", file, "Tokenize this file instead of generated source text");
  app.add_option("--bytes", n_bytes, "Size of the generated text")->capture_default_str();
  app.add_option("--iters", iters, "Warm repeats (median reported)")->capture_default_str();
  app.add_flag("--json", json, "Print JSON instead of a table");
  app.add_flag("--print-text", print_text, "Write the text that would be tokenized and exit");
  CLI11_PARSE(app, argc, argv);

  std::string text;
  if (!file.empty()) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot read %s\n", file.c_str());
      return 1;
    }
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } else {
    text = GenerateSource(n_bytes);
  }

  if (print_text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }

  const std::vector<Subject> subjects = {
      {"llama-spm", "vocab/ggml-vocab-llama-spm.gguf", false},
      {"gpt-2", "vocab/ggml-vocab-gpt-2.gguf", false},
      {"llama3 (llama-bpe)", "tokenizers/llama3/tokenizer.json", true},
      {"qwen3 (qwen2)", "tokenizers/qwen3/tokenizer.json", true},
  };
  std::vector<Row> rows;
  for (const Subject& s : subjects) {
    if (!kvstash::testing::HaveFixture(s.fixture)) {
      std::fprintf(stderr, "skipping %s: %s not found\n", s.name.c_str(),
                   kvstash::testing::FixturePath(s.fixture).c_str());
      continue;
    }
    auto tok = Build(s);
    if (!tok.ok()) {
      std::fprintf(stderr, "%s: %s\n", s.name.c_str(), tok.status().ToString().c_str());
      return 1;
    }
    Row r;
    r.name = s.name;
    auto t0 = Clock::now();
    std::vector<int32_t> ids = (*tok)->Encode(text, false, false);
    r.cold_s = Seconds(Clock::now() - t0);
    r.n_tokens = ids.size();
    std::vector<double> warm, dec;
    for (int i = 0; i < std::max(1, iters); ++i) {
      t0 = Clock::now();
      ids = (*tok)->Encode(text, false, false);
      warm.push_back(Seconds(Clock::now() - t0));
      t0 = Clock::now();
      const std::string back = (*tok)->Decode(ids, false);
      dec.push_back(Seconds(Clock::now() - t0));
      // SentencePiece cannot tell a literal U+2581 from an escaped space; anything else is a bug.
      const bool spm_lossy = (*tok)->vocab().kind == kvstash::engine::TokenizerKind::kSpm &&
                             text.find("\xE2\x96\x81") != std::string::npos;
      if (back != text && !spm_lossy) {
        std::fprintf(stderr, "%s: decode(encode(text)) != text\n", s.name.c_str());
        return 1;
      }
    }
    std::sort(warm.begin(), warm.end());
    std::sort(dec.begin(), dec.end());
    r.warm_s = warm[warm.size() / 2];
    r.warm_best_s = warm.front();
    r.decode_s = dec[dec.size() / 2];
    rows.push_back(r);
  }

  const double mb = text.size() / 1e6;
  if (json) {
    nlohmann::json out = {{"text_bytes", text.size()}, {"tokenizers", nlohmann::json::array()}};
    for (const Row& r : rows) {
      out["tokenizers"].push_back({{"name", r.name},
                                   {"tokens", r.n_tokens},
                                   {"cold_encode_ms", r.cold_s * 1e3},
                                   {"warm_encode_ms", r.warm_s * 1e3},
                                   {"warm_encode_best_ms", r.warm_best_s * 1e3},
                                   {"warm_encode_tokens_per_s", r.n_tokens / r.warm_s},
                                   {"warm_encode_mb_per_s", mb / r.warm_s},
                                   {"cold_encode_tokens_per_s", r.n_tokens / r.cold_s},
                                   {"cold_encode_mb_per_s", mb / r.cold_s},
                                   {"decode_ms", r.decode_s * 1e3},
                                   {"decode_mb_per_s", mb / r.decode_s}});
    }
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("text: %zu bytes (%s), one thread\n\n", text.size(),
              file.empty() ? "generated source" : file.c_str());
  std::printf("%-20s %7s %8s %9s %8s %8s %11s %9s %10s\n", "tokenizer", "tokens", "cold ms",
              "cold MB/s", "warm ms", "best ms", "warm tok/s", "warm MB/s", "dec. MB/s");
  for (const Row& r : rows) {
    std::printf("%-20s %7zu %8.2f %9.2f %8.2f %8.2f %11.0f %9.2f %10.1f\n", r.name.c_str(),
                r.n_tokens, r.cold_s * 1e3, mb / r.cold_s, r.warm_s * 1e3, r.warm_best_s * 1e3,
                r.n_tokens / r.warm_s, mb / r.warm_s, mb / r.decode_s);
  }
  std::printf(
      "\ncold: first Encode on a freshly built tokenizer (empty word cache); warm: median "
      "of --iters repeats; best: fastest repeat. MB = 10^6 bytes.\n");
  return 0;
}
