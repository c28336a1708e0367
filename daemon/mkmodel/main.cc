// kvstash-mkmodel: writes synthetic GGUF models (deterministic random weights in the shapes of
// real models) for tests, benchmarks and the demo. See engine/model/mkmodel.h.
//
// Exit codes: 0 ok, 1 runtime error (I/O, unreadable tokenizer file), 2 usage error (bad flag,
// unknown preset or type, inconsistent dimensions).

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "engine/model/mkmodel.h"
#include "engine/tokenizer/hf_tokenizer.h"
#include "engine/tokenizer/vocab_gguf.h"

namespace {

using kvstash::Status;
using kvstash::StatusCode;
namespace eng = kvstash::engine;

// Bad arguments are usage errors (2); anything else (files, I/O) is a runtime error (1).
int Fail(const Status& st, bool usage) {
  std::fprintf(stderr, "kvstash-mkmodel: %s\n", st.ToString().c_str());
  return usage ? 2 : 1;
}

double MiB(uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

int ListPresets(bool json) {
  nlohmann::json out = nlohmann::json::array();
  if (!json) {
    std::printf("%-14s %-6s %10s  %s\n", "preset", "arch", "params", "description");
  }
  for (const eng::ModelPreset& p : eng::ModelPresets()) {
    int64_t n_params = 0;
    if (auto plan = eng::PlanTensors(p.config, eng::WeightType{}); plan.ok()) {
      for (const eng::TensorSpec& s : *plan) n_params += s.n_elements();
    }
    if (json) {
      out.push_back({{"name", p.name},
                     {"arch", p.config.arch},
                     {"params", n_params},
                     {"n_embd", p.config.n_embd},
                     {"n_layer", p.config.n_layer},
                     {"n_head", p.config.n_head},
                     {"n_head_kv", p.config.n_head_kv},
                     {"head_dim", p.config.EffectiveHeadDim()},
                     {"n_ff", p.config.n_ff},
                     {"n_vocab", p.config.n_vocab},
                     {"n_ctx", p.config.n_ctx},
                     {"tied", p.config.tied_embeddings},
                     {"description", p.description}});
    } else {
      std::printf("%-14s %-6s %9.1fM  %s\n", std::string(p.name).c_str(), p.config.arch.c_str(),
                  static_cast<double>(n_params) / 1e6, std::string(p.description).c_str());
    }
  }
  if (json) std::cout << out.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "kvstash-mkmodel: write a synthetic GGUF model (deterministic random weights, real model "
      "shapes, llama.cpp-compatible names) for tests, benchmarks and the demo.\n\n"
      "Examples:\n"
      "  kvstash-mkmodel --preset tiny-llama -o tiny.gguf\n"
      "  kvstash-mkmodel --preset llama-3.1-8b --type q4_k_m -o llama8b-q4km.gguf\n"
      "  kvstash-mkmodel --preset qwen3-0.6b --tokenizer-from Qwen3-0.6B-Q8_0.gguf -o q3.gguf\n"
      "  kvstash-mkmodel --preset default --n-layer 4 --n-ctx 8192 --type q8_0 -o demo.gguf "
      "--json\n"
      "  kvstash-mkmodel --list-presets"};
  app.set_help_flag("-h,--help", "Print this help and exit");

  std::string preset = "default";
  std::string output;
  std::string type = "f16";
  uint64_t seed = 0;
  std::string tokenizer_from;
  std::string tokenizer_json;
  std::string name;
  bool list_presets = false;
  bool json = false;
  bool quiet = false;
  int threads = 0;
  std::optional<std::string> arch;
  std::optional<int64_t> n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx;
  std::optional<float> rope_base, norm_eps, rope_scaling;
  bool tied = false, untied = false;

  app.add_option("--preset", preset,
                 "Model shape to start from (see --list-presets); overrides apply on top")
      ->capture_default_str();
  app.add_flag("--list-presets", list_presets, "List the presets (with --json: as JSON) and exit");
  app.add_option("-o,--output", output, "Output GGUF path (written to PATH.tmp, then renamed)");
  app.add_option("--type", type,
                 "Weight type of the 2-D tensors: f32 f16 bf16 q8_0 q4_0 q5_0 q5_1 q3_k q4_k q5_k "
                 "q6_k iq4_nl iq4_xs, or a llama.cpp mix: q3_k_m q4_k_m q5_k_m. Norms and biases "
                 "stay f32; rows that do not fit a 256-block type fall back as llama-quantize "
                 "does (q3_k->q4_0, q4_k->q5_0, q5_k->q5_1, q6_k->q8_0, iq4_xs->iq4_nl)")
      ->capture_default_str();
  app.add_option("--seed", seed, "Weight seed; same seed and options give identical bytes")
      ->capture_default_str();
  app.add_option("--tokenizer-from", tokenizer_from,
                 "Copy every tokenizer.* key from this GGUF file; the vocabulary size follows it "
                 "(default: built-in byte-fallback SentencePiece vocab of --n-vocab tokens)")
      ->check(CLI::ExistingFile);
  app.add_option("--tokenizer", tokenizer_json,
                 "Import a Hugging Face tokenizer.json (and tokenizer_config.json beside it); "
                 "the vocabulary size follows the tokenizer")
      ->check(CLI::ExistingFile);
  app.add_option("--name", name, "general.name (default: the preset's name)");
  app.add_option("--arch", arch, "Architecture: llama | qwen2 (q/k/v biases) | qwen3 (q/k norms)")
      ->check(CLI::IsMember({"llama", "qwen2", "qwen3"}));
  app.add_option("--n-embd", n_embd, "Hidden size ({arch}.embedding_length)");
  app.add_option("--n-layer", n_layer, "Number of transformer blocks ({arch}.block_count)");
  app.add_option("--n-head", n_head, "Attention (query) heads");
  app.add_option("--n-head-kv", n_head_kv, "Key/value heads (GQA); must divide --n-head");
  app.add_option("--head-dim", head_dim,
                 "Per-head dimension (0 = n_embd/n_head); when it differs from n_embd/n_head the "
                 "key_length/value_length keys are written, as for qwen3");
  app.add_option("--n-ff", n_ff, "Feed-forward hidden size ({arch}.feed_forward_length)");
  app.add_option("--n-vocab", n_vocab,
                 "Vocabulary size for the built-in tokenizer (>= 259; ignored with "
                 "--tokenizer-from)");
  app.add_option("--ctx,--n-ctx", n_ctx, "Training context length ({arch}.context_length)");
  app.add_option("--rope-base", rope_base, "RoPE frequency base ({arch}.rope.freq_base)");
  app.add_option("--norm-eps", norm_eps, "RMSNorm epsilon");
  app.add_option("--rope-scaling-factor", rope_scaling,
                 "Llama-3 RoPE scaling factor written as rope_freqs.weight (0 = none; llama only)");
  auto* tied_flag =
      app.add_flag("--tied", tied, "Tie the LM head to token_embd (no output.weight)");
  auto* untied_flag = app.add_flag("--untied", untied, "Write a separate output.weight");
  tied_flag->excludes(untied_flag);
  app.add_option("--threads", threads, "Worker threads (0 = all cores); never changes the bytes")
      ->capture_default_str();
  app.add_flag("--json", json, "Print a JSON summary {path, arch, params, bytes, type, ...}");
  app.add_flag("-q,--quiet", quiet, "No progress on stderr");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  if (list_presets) return ListPresets(json);
  if (output.empty()) {
    std::fprintf(stderr, "kvstash-mkmodel: --output is required (see --help)\n");
    return 2;
  }

  auto cfg = eng::FindPreset(preset);
  if (!cfg.ok()) return Fail(cfg.status(), true);
  eng::MkModelOptions opts;
  opts.config = *cfg;
  eng::ModelConfig& c = opts.config;
  if (!name.empty()) c.name = name;
  if (arch) c.arch = *arch;
  if (n_embd) c.n_embd = *n_embd;
  if (n_layer) c.n_layer = *n_layer;
  if (n_head) c.n_head = *n_head;
  if (n_head_kv) c.n_head_kv = *n_head_kv;
  if (head_dim) c.head_dim = *head_dim;
  if (n_ff) c.n_ff = *n_ff;
  if (n_vocab) c.n_vocab = *n_vocab;
  if (n_ctx) c.n_ctx = *n_ctx;
  if (rope_base) c.rope_base = *rope_base;
  if (norm_eps) c.norm_eps = *norm_eps;
  if (rope_scaling) c.rope_scaling_factor = *rope_scaling;
  if (tied) c.tied_embeddings = true;
  if (untied) c.tied_embeddings = false;
  // Changing the shape of a preset makes it a different model: say so in general.name.
  if (name.empty() && (arch || n_embd || n_layer || n_head || n_head_kv || head_dim || n_ff ||
                       n_vocab || n_ctx || rope_base || rope_scaling || tied || untied)) {
    c.name += "-custom";
  }
  if (Status st = eng::ValidateConfig(c); !st.ok()) return Fail(st, true);

  auto wt = eng::ParseWeightType(type);
  if (!wt.ok()) return Fail(wt.status(), true);
  opts.weight_type = *wt;
  opts.seed = seed;
  opts.tokenizer_gguf = tokenizer_from;
  if (!tokenizer_json.empty()) {
    if (!tokenizer_from.empty()) {
      std::fprintf(stderr, "kvstash-mkmodel: give only one of --tokenizer and --tokenizer-from\n");
      return 2;
    }
    auto vocab = eng::LoadHfVocab(tokenizer_json);
    if (!vocab.ok()) {
      std::fprintf(stderr, "kvstash-mkmodel: %s\n", vocab.status().ToString().c_str());
      return 1;
    }
    opts.tokenizer = [v = std::move(*vocab)](eng::GgufWriter& w) -> kvstash::Result<int64_t> {
      return eng::AddVocabToGguf(w, v);
    };
  }
  opts.n_threads = threads;

  const bool tty = ::isatty(STDERR_FILENO) != 0;
  const auto start = std::chrono::steady_clock::now();
  int last_decile = -1;
  if (!quiet) {
    opts.progress = [&](const eng::MkModelProgress& p) {
      // Only big models get progress; small ones finish before it would be read.
      if (p.bytes_total < (uint64_t{32} << 20)) return;
      const int decile = static_cast<int>(10 * p.bytes_done / std::max<uint64_t>(1, p.bytes_total));
      if (tty) {
        std::fprintf(stderr, "\r[%4lld/%lld] %8.1f / %.1f MiB  %-32.*s",
                     static_cast<long long>(p.tensors_done), static_cast<long long>(p.n_tensors),
                     MiB(p.bytes_done), MiB(p.bytes_total), static_cast<int>(p.tensor.size()),
                     p.tensor.data());
        if (p.tensors_done == p.n_tensors) std::fputc('\n', stderr);
      } else if (decile != last_decile) {
        last_decile = decile;
        std::fprintf(stderr, "kvstash-mkmodel: %3d%% (%lld/%lld tensors, %.1f MiB)\n", decile * 10,
                     static_cast<long long>(p.tensors_done), static_cast<long long>(p.n_tensors),
                     MiB(p.bytes_done));
      }
    };
  }

  auto summary = eng::WriteSyntheticModel(output, opts);
  if (!summary.ok()) {
    return Fail(summary.status(), summary.status().code() == StatusCode::kInvalidArgument);
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (json) {
    const nlohmann::json out = {{"path", summary->path},
                                {"name", summary->name},
                                {"arch", summary->arch},
                                {"type", summary->type},
                                {"params", summary->n_params},
                                {"bytes", summary->file_bytes},
                                {"n_vocab", summary->n_vocab},
                                {"tensors", summary->n_tensors},
                                {"seed", seed},
                                {"seconds", secs}};
    std::cout << out.dump() << "\n";
  } else if (!quiet) {
    std::fprintf(stderr, "kvstash-mkmodel: wrote %s (%s, %s, %.1fM params, %.1f MiB) in %.1fs\n",
                 summary->path.c_str(), summary->arch.c_str(), summary->type.c_str(),
                 static_cast<double>(summary->n_params) / 1e6, MiB(summary->file_bytes), secs);
  }
  return 0;
}
