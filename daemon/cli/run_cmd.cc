// `kvstash run`: offline generation with the engine in-process (ARCHITECTURE.md §7).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "base/clock.h"
#include "daemon/cli/commands.h"
#include "daemon/cli/default_model.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/runner.h"
#include "engine/tokenizer.h"
#include "engine/vocab.h"

namespace kvstash::cli {
namespace {

struct RunArgs {
  std::string model;
  std::string prompt;
  std::string file;
  std::string prompt_ids;
  int n_predict = 64;
  float temp = 0.8f;
  int64_t seed = -1;
  int threads = 0;
  int ctx_size = 4096;
  int block_tokens = 16;
  std::string kv_type = "f16";
  int top_logits = 0;
  bool json = false;
  bool no_bos = false;
  bool ignore_eos = false;
  int n_batch = 256;
};

Result<std::vector<int32_t>> ParseIds(const std::string& s) {
  std::vector<int32_t> ids;
  std::string norm = s;
  std::replace(norm.begin(), norm.end(), ',', ' ');
  std::istringstream in(norm);
  std::string tok;
  while (in >> tok) {
    char* end = nullptr;
    long v = std::strtol(tok.c_str(), &end, 10);
    if (end == tok.c_str() || *end != '\0' || v < 0 || v > INT32_MAX) {
      return Status::InvalidArgument("--prompt-ids: '" + tok + "' is not a token id");
    }
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

// Temperature sampling over softmax(logits / temp); temp <= 0 is greedy (lowest id on ties).
int32_t Sample(const std::vector<float>& logits, float temp, std::mt19937_64& rng) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  if (temp <= 0) return best;
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    p[i] = std::exp((static_cast<double>(logits[i]) - logits[best]) / temp);
    sum += p[i];
  }
  double r = std::uniform_real_distribution<double>(0.0, sum)(rng);
  for (size_t i = 0; i < p.size(); ++i) {
    r -= p[i];
    if (r <= 0) return static_cast<int32_t>(i);
  }
  return best;
}

// Length of the longest prefix of s that does not end inside a UTF-8 sequence.
size_t CompleteUtf8Prefix(const std::string& s) {
  size_t n = s.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    unsigned char c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    return len > back ? n - back : n;
  }
  return n;
}

int Run(const RunArgs& a) {
  auto fail = [&](const Status& s, int code = 1) {
    if (a.json) {
      nlohmann::json j = {{"error", s.ToString()}};
      std::printf("%s\n", j.dump().c_str());
    }
    std::fprintf(stderr, "kvstash run: %s\n", s.ToString().c_str());
    return code;
  };
  int given = !a.prompt.empty() + !a.file.empty() + !a.prompt_ids.empty();
  if (given > 1) {
    return fail(Status::InvalidArgument("give only one of -p/--prompt, -f/--file, --prompt-ids"),
                2);
  }
  auto kv_dtype = engine::ParseKvDtype(a.kv_type);
  if (!kv_dtype.ok()) return fail(kv_dtype.status(), 2);
  if (a.n_predict < 0) return fail(Status::InvalidArgument("-n must be >= 0"), 2);
  if (a.top_logits < 0) return fail(Status::InvalidArgument("--top-logits must be >= 0"), 2);

  std::string model_path = a.model;
  if (model_path.empty()) {
    auto p = EnsureDefaultModel();
    if (!p.ok()) return fail(p.status());
    model_path = *p;
  }
  Stopwatch load_watch;
  auto model = engine::Model::Load(model_path);
  if (!model.ok()) return fail(model.status());
  const double load_ms = load_watch.ElapsedMs();
  const engine::HParams& hp = (*model)->config();

  std::unique_ptr<engine::Tokenizer> tokenizer;
  {
    auto vocab = engine::Vocab::FromGguf((*model)->gguf());
    if (vocab.ok()) {
      auto t = engine::Tokenizer::Create(std::move(*vocab));
      if (t.ok())
        tokenizer = std::move(*t);
      else if (a.prompt_ids.empty())
        return fail(t.status());
    } else if (a.prompt_ids.empty()) {
      return fail(vocab.status());
    }
  }

  Stopwatch ttft_watch;  // covers tokenization, prefill and the first sample
  std::vector<int32_t> prompt;
  if (!a.prompt_ids.empty()) {
    auto ids = ParseIds(a.prompt_ids);
    if (!ids.ok()) return fail(ids.status(), 2);
    prompt = std::move(*ids);
  } else {
    std::string text = a.prompt;
    if (!a.file.empty()) {
      std::ifstream in(a.file, std::ios::binary);
      if (!in) return fail(Status::NotFound("cannot read prompt file " + a.file));
      text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    prompt = tokenizer->Encode(text, !a.no_bos && tokenizer->vocab().add_bos, false);
  }
  if (prompt.empty()) {
    if (tokenizer && tokenizer->vocab().bos_id >= 0) {
      prompt.push_back(tokenizer->vocab().bos_id);
    } else {
      return fail(Status::InvalidArgument("empty prompt and the model has no BOS token"), 2);
    }
  }

  engine::RunnerOptions ro;
  ro.n_threads = a.threads;
  ro.n_ctx = a.ctx_size;
  ro.block_tokens = a.block_tokens;
  ro.kv_dtype = *kv_dtype;
  ro.n_batch = a.n_batch;
  auto runner = engine::Runner::Create(**model, ro);
  if (!runner.ok()) return fail(runner.status(), 2);
  if (static_cast<int64_t>(prompt.size()) + a.n_predict > (*runner)->options().n_ctx) {
    return fail(Status::InvalidArgument("prompt (" + std::to_string(prompt.size()) +
                                        " tokens) + n_predict (" + std::to_string(a.n_predict) +
                                        ") exceeds the context size " +
                                        std::to_string((*runner)->options().n_ctx) + "; raise -c"),
                2);
  }

  const uint64_t seed = a.seed >= 0 ? static_cast<uint64_t>(a.seed) : std::random_device{}();
  std::mt19937_64 rng(seed);
  engine::Sequence seq;
  std::vector<float> logits;
  Stopwatch prefill_watch;
  if (Status s = (*runner)->Prefill(seq, prompt, engine::LogitsMode::kLast, &logits); !s.ok()) {
    return fail(s);
  }
  const double prefill_ms = prefill_watch.ElapsedMs();

  nlohmann::json top = nlohmann::json::array();
  if (a.top_logits > 0) {
    std::vector<int32_t> order(logits.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
    const size_t k = std::min<size_t>(a.top_logits, order.size());
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t x, int32_t y) {
      return logits[x] > logits[y] || (logits[x] == logits[y] && x < y);
    });
    for (size_t i = 0; i < k; ++i) top.push_back({order[i], logits[order[i]]});
  }

  std::vector<int32_t> generated;
  double ttft_ms = 0;
  std::string printed;
  Stopwatch decode_watch;
  for (int i = 0; i < a.n_predict; ++i) {
    const int32_t tok = Sample(logits, a.temp, rng);
    if (i == 0) {
      ttft_ms = ttft_watch.ElapsedMs();
      decode_watch.Reset();
    }
    if (!a.ignore_eos && tokenizer && tokenizer->IsEog(tok)) break;
    generated.push_back(tok);
    if (!a.json && tokenizer) {
      std::string text = tokenizer->Decode(generated, false);
      size_t upto = CompleteUtf8Prefix(text);
      if (upto > printed.size()) {
        std::fwrite(text.data() + printed.size(), 1, upto - printed.size(), stdout);
        std::fflush(stdout);
        printed = text.substr(0, upto);
      }
    }
    if (i + 1 == a.n_predict) break;
    if (Status s = (*runner)->Decode(seq, tok, &logits); !s.ok()) return fail(s);
  }
  const double decode_ms = a.n_predict > 0 ? decode_watch.ElapsedMs() : 0.0;
  const std::string text = tokenizer ? tokenizer->Decode(generated, false) : "";
  const double pp_tps = prompt.size() / std::max(prefill_ms, 1e-6) * 1e3;
  const int n_decoded = generated.empty() ? 0 : static_cast<int>(generated.size()) - 1;
  const double tg_tps = n_decoded > 0 ? n_decoded / std::max(decode_ms, 1e-6) * 1e3 : 0.0;

  if (a.json) {
    nlohmann::json j;
    j["model"] = {{"path", model_path},
                  {"arch", hp.arch_name},
                  {"description", (*model)->Describe()},
                  {"n_vocab", hp.n_vocab}};
    j["backend"] = (*runner)->backend().name();
    j["threads"] = (*runner)->backend().n_threads();
    j["seed"] = seed;
    j["prompt_ids"] = prompt;
    j["generated_ids"] = generated;
    j["text"] = text;
    j["top_logits"] = top;
    j["timings"] = {{"load_ms", load_ms},
                    {"ttft_ms", ttft_ms},
                    {"prefill_ms", prefill_ms},
                    {"decode_ms", decode_ms},
                    {"prompt_tokens", prompt.size()},
                    {"generated_tokens", generated.size()},
                    {"prompt_tokens_per_s", pp_tps},
                    {"gen_tokens_per_s", tg_tps}};
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    if (!tokenizer) {
      for (int32_t t : generated) std::printf("%d ", t);
    }
    std::printf("\n");
    if (a.top_logits > 0) {
      std::fprintf(stderr, "top logits at the last prompt position:\n");
      for (const auto& e : top) {
        std::fprintf(stderr, "  %6d  %10.5f\n", e[0].get<int>(), e[1].get<double>());
      }
    }
    std::fprintf(stderr,
                 "\nkvstash run: model %s (%s), backend %s, %d threads\n"
                 "  load        %8.1f ms\n"
                 "  prompt      %8zu tokens  %8.1f ms  %8.1f tokens/s\n"
                 "  generation  %8zu tokens  %8.1f ms  %8.1f tokens/s\n"
                 "  time to first token %.1f ms\n",
                 model_path.c_str(), (*model)->Describe().c_str(), (*runner)->backend().name(),
                 (*runner)->backend().n_threads(), load_ms, prompt.size(), prefill_ms, pp_tps,
                 generated.size(), decode_ms, tg_tps, ttft_ms);
  }
  return 0;
}

}  // namespace

void RegisterRunCommand(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<RunArgs>();
  CLI::App* cmd =
      app.add_subcommand("run", "Generate from a prompt with the engine in-process (no daemon).");
  cmd->add_option("-m,--model", args->model,
                  "GGUF model file (default: the embedded default model, created on first use)");
  cmd->add_option("-p,--prompt", args->prompt, "Prompt text");
  cmd->add_option("-f,--file", args->file, "Read the prompt text from a file (bytes as-is)");
  cmd->add_option("--prompt-ids", args->prompt_ids,
                  "Prompt as token ids instead of text, e.g. \"1 403 407\" (no BOS is added)");
  cmd->add_option("-n,--n-predict", args->n_predict, "Tokens to generate")->capture_default_str();
  cmd->add_option("--temp", args->temp, "Sampling temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--seed", args->seed, "Sampling seed; -1 = random (printed in --json)")
      ->capture_default_str();
  cmd->add_option("-t,--threads", args->threads, "Compute threads; 0 = all cores")
      ->capture_default_str();
  cmd->add_option("-c,--ctx-size", args->ctx_size,
                  "Context size in tokens (prompt + generation); 0 = the model's")
      ->capture_default_str();
  cmd->add_option("--block-tokens", args->block_tokens, "Tokens per KV block (page)")
      ->capture_default_str();
  cmd->add_option("--kv-type", args->kv_type, "KV cache element type: f16 or f32")
      ->capture_default_str();
  cmd->add_option("--batch-size", args->n_batch, "Prompt tokens per forward chunk")
      ->capture_default_str();
  cmd->add_option("--top-logits", args->top_logits,
                  "Report the K highest logits at the last prompt position")
      ->capture_default_str();
  cmd->add_flag("--no-bos", args->no_bos, "Do not prepend BOS to a text prompt");
  cmd->add_flag("--ignore-eos", args->ignore_eos, "Keep generating past end-of-generation tokens");
  cmd->add_flag("--json", args->json,
                "Print one JSON object on stdout: prompt_ids, generated_ids, text, top_logits, "
                "timings {ttft_ms, prefill_ms, decode_ms, prompt_tokens_per_s, gen_tokens_per_s}");
  cmd->callback([args, exit_code] { *exit_code = Run(*args); });
}

}  // namespace kvstash::cli
