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
#include "engine/chat_template.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/runner.h"
#include "engine/sampler.h"
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
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  int repeat_last_n = 64;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::vector<std::string> stop;
  bool chat = false;
  std::string system;
  std::string chat_template;
  int think = -1;  // -1 template default, 0 off, 1 on (Qwen3)
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

// Renders the prompt through the model's chat template (or the one named by --chat-template).
Result<std::string> RenderChatPrompt(const RunArgs& a, const std::string& user,
                                     const engine::Tokenizer& tok) {
  const engine::Vocab& v = tok.vocab();
  Result<engine::ChatTemplate> tmpl =
      !a.chat_template.empty() ? engine::ChatTemplateFromName(a.chat_template)
      : !v.chat_template.empty()
          ? engine::DetectChatTemplate(v.chat_template)
          : Result<engine::ChatTemplate>(Status::InvalidArgument(
                "the model has no tokenizer.chat_template; pick one with --chat-template "
                "(chatml, qwen3, llama3, llama2, mistral, zephyr)"));
  if (!tmpl.ok()) return tmpl.status();
  std::vector<engine::ChatMessage> messages;
  if (!a.system.empty()) messages.push_back({"system", a.system});
  messages.push_back({"user", user});
  engine::ChatOptions o;
  o.add_generation_prompt = true;
  if (a.think >= 0) o.enable_thinking = a.think == 1;
  if (v.bos_id >= 0) o.bos_token = tok.TokenToPiece(v.bos_id, true);
  if (v.eos_id >= 0) o.eos_token = tok.TokenToPiece(v.eos_id, true);
  return engine::RenderChat(*tmpl, messages, o);
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
    bool add_bos = !a.no_bos && tokenizer->vocab().add_bos;
    if (a.chat) {
      auto rendered = RenderChatPrompt(a, text, *tokenizer);
      if (!rendered.ok()) return fail(rendered.status(), 2);
      // Templates that write the BOS text themselves must not get a second BOS.
      const int32_t bos = tokenizer->vocab().bos_id;
      if (bos >= 0 && rendered->rfind(tokenizer->TokenToPiece(bos, true), 0) == 0) add_bos = false;
      text = std::move(*rendered);
    }
    prompt = tokenizer->Encode(text, add_bos, /*parse_special=*/a.chat);
  }
  if ((a.chat || !a.system.empty()) && !a.prompt_ids.empty()) {
    return fail(Status::InvalidArgument("--chat/--system need a text prompt, not --prompt-ids"), 2);
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
  engine::SamplerOptions so;
  so.temperature = a.temp;
  so.top_k = a.top_k;
  so.top_p = a.top_p;
  so.min_p = a.min_p;
  so.repeat_penalty = a.repeat_penalty;
  so.penalty_last_n = a.repeat_last_n;
  so.presence_penalty = a.presence_penalty;
  so.frequency_penalty = a.frequency_penalty;
  so.seed = seed;
  auto sampler = engine::Sampler::Create(so);
  if (!sampler.ok()) return fail(sampler.status(), 2);
  engine::GenerationLimits limits;
  limits.max_tokens = a.n_predict;
  limits.ignore_eog = a.ignore_eos;
  limits.stop_strings = a.stop;
  if (tokenizer) {
    for (int32_t id : {tokenizer->vocab().eos_id, tokenizer->vocab().eot_id}) {
      if (id >= 0) limits.eog_tokens.push_back(id);
    }
  }
  engine::StopChecker stop(limits);
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
  std::string text;
  double ttft_ms = 0;
  Stopwatch decode_watch;
  engine::StopReason reason = engine::StopReason::kNone;
  for (int i = 0; i < a.n_predict; ++i) {
    auto tok = sampler->Sample(logits);
    if (!tok.ok()) return fail(tok.status());
    if (i == 0) {
      ttft_ms = ttft_watch.ElapsedMs();
      decode_watch.Reset();
    }
    sampler->Accept(*tok);
    const std::string piece = tokenizer ? tokenizer->TokenToPiece(*tok, false) : "";
    engine::StopChecker::Step step = stop.Push(*tok, piece);
    if (step.reason != engine::StopReason::kEndOfGeneration) generated.push_back(*tok);
    text += step.text;
    if (!a.json && !step.text.empty()) {
      std::fwrite(step.text.data(), 1, step.text.size(), stdout);
      std::fflush(stdout);
    }
    if (step.reason != engine::StopReason::kNone) {
      reason = step.reason;
      break;
    }
    if (Status s = (*runner)->Decode(seq, *tok, &logits); !s.ok()) return fail(s);
  }
  const double decode_ms = a.n_predict > 0 ? decode_watch.ElapsedMs() : 0.0;
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
    j["stop_reason"] = reason == engine::StopReason::kEndOfGeneration ? "eog"
                       : reason == engine::StopReason::kStopString    ? "stop_string"
                                                                      : "max_tokens";
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
  cmd->add_option("--top-k", args->top_k, "Keep the K most likely tokens; 0 = off")
      ->capture_default_str();
  cmd->add_option("--top-p", args->top_p, "Nucleus sampling mass; 1 = off")->capture_default_str();
  cmd->add_option("--min-p", args->min_p, "Drop tokens below min-p x p(best); 0 = off")
      ->capture_default_str();
  cmd->add_option("--repeat-penalty", args->repeat_penalty, "Repetition penalty; 1 = off")
      ->capture_default_str();
  cmd->add_option("--repeat-last-n", args->repeat_last_n, "Tokens the penalties look back over")
      ->capture_default_str();
  cmd->add_option("--presence-penalty", args->presence_penalty, "Presence penalty; 0 = off")
      ->capture_default_str();
  cmd->add_option("--frequency-penalty", args->frequency_penalty, "Frequency penalty; 0 = off")
      ->capture_default_str();
  cmd->add_option("--stop", args->stop, "Stop when this text is generated (repeatable)");
  cmd->add_flag("--chat", args->chat,
                "Treat the prompt as a user message and apply the model's chat template");
  cmd->add_option("--system", args->system, "System message for --chat");
  cmd->add_option("--chat-template", args->chat_template,
                  "Chat template to use instead of the model's: chatml, qwen3, llama3, llama2, "
                  "mistral, zephyr");
  cmd->add_option("--think", args->think,
                  "Qwen3 thinking switch for --chat: 1 on, 0 off, -1 template default")
      ->capture_default_str();
  cmd->add_flag("--no-bos", args->no_bos, "Do not prepend BOS to a text prompt");
  cmd->add_flag("--ignore-eos", args->ignore_eos, "Keep generating past end-of-generation tokens");
  cmd->add_flag("--json", args->json,
                "Print one JSON object on stdout: prompt_ids, generated_ids, text, top_logits, "
                "timings {ttft_ms, prefill_ms, decode_ms, prompt_tokens_per_s, gen_tokens_per_s}");
  cmd->callback([args, exit_code] { *exit_code = Run(*args); });
}

}  // namespace kvstash::cli
