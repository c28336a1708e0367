// `kvstash run`: offline generation with the engine in-process (ARCHITECTURE.md §7).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "base/clock.h"
#include "cache/prefix_cache.h"
#include "daemon/cli/commands.h"
#include "daemon/cli/default_model.h"
#include "engine/chat/chat_template.h"
#include "engine/gguf/gguf.h"
#include "engine/model/model.h"
#include "engine/runner.h"
#include "engine/sampling/sampler.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/vocab.h"
#include "serve/engine.h"
#include "storage/block_store.h"

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
  // Prefix cache.
  std::string cache_dir;
  std::string cache_salt;
  std::string cache_bytes = "64G";
  std::string host_cache_bytes = "0";
  std::string write_policy = "always";
  std::string weights = "auto";
  std::string session;
  std::string save_session;
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

// Set by SIGINT/SIGTERM: the request is cancelled (its full blocks stay in the cache) and the
// engine closes cleanly, so an interrupted long prefill is not lost.
std::atomic<int> g_signal{0};
extern "C" void OnSignal(int sig) { g_signal.store(sig); }

struct Fail {
  bool json;
  int operator()(const Status& s, int code = 1) const {
    if (json) {
      nlohmann::json j = {{"error", s.ToString()}};
      std::printf("%s\n", j.dump().c_str());
    }
    std::fprintf(stderr, "kvstash run: %s\n", s.ToString().c_str());
    return code;
  }
};

// Flags that need no model: exit code 2 on misuse.
Status ValidateArgs(const RunArgs& a) {
  int given = !a.prompt.empty() + !a.file.empty() + !a.prompt_ids.empty();
  if (given > 1)
    return Status::InvalidArgument("give only one of -p/--prompt, -f/--file, --prompt-ids");
  if (a.n_predict < 0) return Status::InvalidArgument("-n must be >= 0");
  if (a.top_logits < 0) return Status::InvalidArgument("--top-logits must be >= 0");
  if (a.threads < 0) return Status::InvalidArgument("-t must be >= 0");
  if ((!a.session.empty() || !a.save_session.empty()) && a.cache_dir.empty()) {
    return Status::InvalidArgument("--session/--save-session need --cache-dir");
  }
  for (const std::string* name : {&a.session, &a.save_session}) {
    if (!name->empty()) KV_RETURN_IF_ERROR(cache::ValidateSessionName(*name));
  }
  if ((a.chat || !a.system.empty()) && !a.prompt_ids.empty()) {
    return Status::InvalidArgument("--chat/--system need a text prompt, not --prompt-ids");
  }
  return Status::Ok();
}

Result<serve::EngineOptions> EngineOptionsFrom(const RunArgs& a, std::string model_path) {
  serve::EngineOptions o;
  o.model_path = std::move(model_path);
  KV_ASSIGN_OR_RETURN(o.weights, engine::ParseWeightMemory(a.weights));
  KV_ASSIGN_OR_RETURN(o.runner.kv_dtype, engine::ParseKvDtype(a.kv_type));
  o.runner.n_threads = a.threads;
  o.runner.n_ctx = a.ctx_size;
  o.runner.block_tokens = a.block_tokens;
  o.runner.n_batch = a.n_batch;
  o.scheduler.batch_tokens = std::max(1, a.n_batch);
  o.scheduler.max_running = 1;
  o.use_cache = !a.cache_dir.empty();
  o.cache_dir = a.cache_dir;
  auto disk = ParseByteSize(a.cache_bytes);
  if (!disk.ok()) return disk.status().WithContext("--cache-bytes");
  o.cache_bytes = *disk;
  auto host = ParseByteSize(a.host_cache_bytes);
  if (!host.ok()) return host.status().WithContext("--host-cache-bytes");
  o.cache.host_bytes = *host;
  KV_ASSIGN_OR_RETURN(o.cache.write_policy, cache::ParseWritePolicy(a.write_policy));
  o.cache.cache_salt = a.cache_salt;
  return o;
}

// The prompt's token ids: --prompt-ids as given, or text (-p / -f) through the tokenizer and,
// with --chat, the chat template. No prompt at all generates from BOS (said on stderr).
Result<std::vector<int32_t>> BuildPrompt(const RunArgs& a, const serve::Engine& eng) {
  if (!a.prompt_ids.empty()) return ParseIds(a.prompt_ids);
  const engine::Tokenizer* tok = eng.tokenizer();
  if (tok == nullptr) {
    return Status::InvalidArgument("the model has no tokenizer vocabulary: use --prompt-ids");
  }
  if (a.prompt.empty() && a.file.empty() && a.session.empty()) {
    std::fprintf(stderr,
                 "kvstash run: no prompt given (-p, -f or --prompt-ids): generating from the BOS "
                 "token\n");
  }
  std::string text = a.prompt;
  if (!a.file.empty()) {
    std::ifstream in(a.file, std::ios::binary);
    if (!in) return Status::NotFound("cannot read prompt file " + a.file);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  bool add_bos = !a.no_bos && tok->vocab().add_bos && a.session.empty();
  if (a.chat) {
    KV_ASSIGN_OR_RETURN(std::string rendered, RenderChatPrompt(a, text, *tok));
    // Templates that write the BOS text themselves must not get a second BOS.
    const int32_t bos = tok->vocab().bos_id;
    if (bos >= 0 && rendered.rfind(tok->TokenToPiece(bos, true), 0) == 0) add_bos = false;
    text = std::move(rendered);
  }
  std::vector<int32_t> ids = tok->Encode(text, add_bos, /*parse_special=*/a.chat);
  if (ids.empty() && a.session.empty()) {
    if (tok->vocab().bos_id < 0) {
      return Status::InvalidArgument("empty prompt and the model has no BOS token");
    }
    ids.push_back(tok->vocab().bos_id);
  }
  return ids;
}

serve::Request MakeRequest(const RunArgs& a, std::vector<int32_t> prompt, uint64_t seed) {
  serve::Request r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = a.temp;
  r.sampling.top_k = a.top_k;
  r.sampling.top_p = a.top_p;
  r.sampling.min_p = a.min_p;
  r.sampling.repeat_penalty = a.repeat_penalty;
  r.sampling.penalty_last_n = a.repeat_last_n;
  r.sampling.presence_penalty = a.presence_penalty;
  r.sampling.frequency_penalty = a.frequency_penalty;
  r.sampling.seed = seed;
  r.limits.max_tokens = a.n_predict;
  r.limits.ignore_eog = a.ignore_eos;
  r.limits.stop_strings = a.stop;
  r.restore_session = a.session;
  r.save_session = a.save_session;
  r.top_logits = a.top_logits;
  r.progress = true;
  r.id = "run";
  return r;
}

// What the request produced, collected from its events.
struct Outcome {
  std::vector<int32_t> generated;
  std::string text;
  nlohmann::json top = nlohmann::json::array();
  serve::Usage usage;
  bool interrupted = false;
};

// Reads the request's events: streams text to stdout (unless --json), shows prefill progress on
// a terminal, and turns SIGINT/SIGTERM into a cancel.
Result<Outcome> Consume(const RunArgs& a, serve::RequestHandle& h) {
  Outcome o;
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  bool progress_shown = false;
  for (;;) {
    if (g_signal.load() != 0 && !h.cancelled()) {
      h.Cancel();
      o.interrupted = true;
    }
    std::optional<serve::Event> e = h.Next(std::chrono::milliseconds(100));
    if (!e) continue;
    switch (e->kind) {
      case serve::Event::Kind::kPrefillProgress:
        if (tty && e->total_tokens >= 256) {
          std::fprintf(stderr, "\rprefill %d/%d tokens (%d cached), %.0f tokens/s   ",
                       e->done_tokens, e->total_tokens, e->cached_tokens, e->tokens_per_s);
          progress_shown = true;
        }
        break;
      case serve::Event::Kind::kToken:
        if (progress_shown) {
          std::fprintf(stderr, "\r%*s\r", 70, "");
          progress_shown = false;
        }
        o.generated.push_back(e->token);
        for (const auto& t : e->top_logits) o.top.push_back({t.id, t.logit});
        o.text += e->text;
        if (!a.json && !e->text.empty()) {
          std::fwrite(e->text.data(), 1, e->text.size(), stdout);
          std::fflush(stdout);
        }
        break;
      case serve::Event::Kind::kDone:
        if (progress_shown) std::fprintf(stderr, "\n");
        o.text += e->text;
        if (!a.json && !e->text.empty()) std::fwrite(e->text.data(), 1, e->text.size(), stdout);
        o.usage = e->usage;
        return o;
      case serve::Event::Kind::kError:
        if (progress_shown) std::fprintf(stderr, "\n");
        return e->status;
    }
  }
}

nlohmann::json JsonReport(const RunArgs& a, const serve::Engine& eng, const Outcome& o,
                          const std::vector<int32_t>& prompt, uint64_t seed, double tokenize_ms,
                          double flush_ms, const cache::CacheStats& cs) {
  const serve::Usage& u = o.usage;
  const serve::OpenReport& rep = eng.report();
  nlohmann::json j;
  j["model"] = {{"path", eng.options().model_path},
                {"arch", eng.model().config().arch_name},
                {"description", eng.model().Describe()},
                {"weights", engine::WeightMemoryName(eng.model().gguf().memory())},
                {"n_vocab", eng.model().config().n_vocab}};
  j["backend"] = eng.backend_name();
  j["threads"] = eng.n_threads();
  j["seed"] = seed;
  j["prompt_ids"] = prompt;
  j["generated_ids"] = o.generated;
  j["text"] = o.text;
  j["stop_reason"] = serve::FinishReasonName(u.finish);
  j["top_logits"] = o.top;
  if (eng.has_cache()) {
    j["cache"] = {{"cached_tokens", u.cached_tokens},
                  {"device_tokens", u.device_tokens},
                  {"host_tokens", u.host_tokens},
                  {"disk_tokens", u.disk_tokens},
                  {"load_ms", u.load_ms},
                  {"context_tokens", u.prompt_tokens},
                  {"prefilled_tokens", u.prefilled_tokens},
                  {"recomputed_blocks", u.recomputed_blocks},
                  {"dir", a.cache_dir},
                  {"namespace", rep.namespace_hash},
                  {"model_fingerprint", rep.model_fingerprint},
                  {"fingerprint_ms", rep.fingerprint_ms},
                  {"fingerprint_remembered", rep.fingerprint_remembered},
                  {"open_ms", rep.store_open_ms},
                  {"session", a.session},
                  {"saved_session", u.session_saved},
                  {"save_ms", u.save_ms},
                  {"flush_ms", flush_ms},
                  {"published_blocks", cs.published_blocks},
                  {"written_blocks", cs.written_blocks},
                  {"write_dropped", cs.write_dropped},
                  {"write_failed", cs.write_failed},
                  {"corrupt_blocks", cs.corrupt_blocks}};
  }
  const double pp_tps = u.prefilled_tokens / std::max(u.prefill_ms, 1e-6) * 1e3;
  j["timings"] = {
      {"load_ms", rep.load_ms},
      // No token, no time to first token (-n 0).
      {"ttft_ms", o.generated.empty() && u.finish != serve::FinishReason::kEndOfGeneration
                      ? nlohmann::json(nullptr)
                      : nlohmann::json(tokenize_ms + u.ttft_ms)},
      {"prefill_ms", u.prefill_ms},
      {"decode_ms", u.decode_ms},
      {"prompt_tokens", u.prompt_tokens},
      {"generated_tokens", o.generated.size()},
      {"prompt_tokens_per_s", pp_tps},
      {"gen_tokens_per_s", u.decode_tokens_per_s}};
  return j;
}

void HumanReport(const RunArgs& a, const serve::Engine& eng, const Outcome& o, double tokenize_ms,
                 const cache::CacheStats& cs) {
  const serve::Usage& u = o.usage;
  if (eng.tokenizer() == nullptr) {
    for (int32_t t : o.generated) std::printf("%d ", t);
  }
  std::printf("\n");
  if (a.top_logits > 0) {
    std::fprintf(stderr, "top logits at the last prompt position:\n");
    for (const auto& e : o.top) {
      std::fprintf(stderr, "  %6d  %10.5f\n", e[0].get<int>(), e[1].get<double>());
    }
  }
  const double pp_tps = u.prefilled_tokens / std::max(u.prefill_ms, 1e-6) * 1e3;
  std::fprintf(stderr,
               "\nkvstash run: model %s (%s), backend %s, %d threads\n"
               "  load        %8.1f ms\n"
               "  prefill     %8d tokens  %8.1f ms  %8.1f tokens/s\n"
               "  generation  %8zu tokens  %8.1f ms  %8.1f tokens/s\n",
               eng.options().model_path.c_str(), eng.model().Describe().c_str(), eng.backend_name(),
               eng.n_threads(), eng.report().load_ms, u.prefilled_tokens, u.prefill_ms, pp_tps,
               o.generated.size(), u.decode_ms, u.decode_tokens_per_s);
  if (o.generated.empty()) {
    std::fprintf(stderr, "  time to first token: none (no token generated)\n");
  } else {
    std::fprintf(stderr, "  time to first token %.1f ms\n", tokenize_ms + u.ttft_ms);
  }
  if (eng.has_cache()) {
    std::fprintf(stderr,
                 "  cache       %8d of %d context tokens reused (device %d, host %d, disk %d), "
                 "load %.1f ms; %d prefilled\n",
                 u.cached_tokens, u.prompt_tokens, u.device_tokens, u.host_tokens, u.disk_tokens,
                 u.load_ms, u.prefilled_tokens);
    if (!u.session_saved.empty()) {
      std::fprintf(stderr, "  session     saved '%s' (%zu tokens) in %.1f ms\n",
                   u.session_saved.c_str(), u.prompt_tokens + o.generated.size(), u.save_ms);
    }
  }
}

// Problems the user must hear about even without --json: blocks that never reached the disk.
void WarnAboutWrites(const cache::CacheStats& cs, const std::string& dir) {
  if (cs.write_failed > 0) {
    std::fprintf(stderr,
                 "kvstash run: warning: %llu KV blocks could not be written to %s (disk full or "
                 "I/O error; see above): they will be recomputed next time\n",
                 static_cast<unsigned long long>(cs.write_failed), dir.c_str());
  }
  if (cs.write_dropped > 0) {
    std::fprintf(stderr,
                 "kvstash run: warning: %llu KV blocks were not persisted (the write-behind queue "
                 "was full)\n",
                 static_cast<unsigned long long>(cs.write_dropped));
  }
}

int Run(const RunArgs& a) {
  const Fail fail{a.json};
  if (Status s = ValidateArgs(a); !s.ok()) return fail(s, 2);
  std::string model_path = a.model;
  if (model_path.empty()) {
    auto p = EnsureDefaultModel();
    if (!p.ok()) return fail(p.status());
    model_path = *p;
  }
  auto opts = EngineOptionsFrom(a, model_path);
  if (!opts.ok()) return fail(opts.status(), 2);
  auto eng = serve::Engine::Open(*opts);
  if (!eng.ok()) {
    const bool usage = eng.status().code() == StatusCode::kInvalidArgument;
    return fail(eng.status(), usage ? 2 : 1);
  }
  for (const std::string& w : (*eng)->report().warnings) {
    std::fprintf(stderr, "kvstash run: warning: %s\n", w.c_str());
  }
  Stopwatch tokenize_watch;
  auto prompt = BuildPrompt(a, **eng);
  if (!prompt.ok()) {
    const bool usage = prompt.status().code() == StatusCode::kInvalidArgument;
    return fail(prompt.status(), usage ? 2 : 1);
  }
  const int n_ctx = (*eng)->runner_options().n_ctx;
  if (a.session.empty() && static_cast<int64_t>(prompt->size()) + a.n_predict > n_ctx) {
    return fail(Status::InvalidArgument("prompt (" + std::to_string(prompt->size()) +
                                        " tokens) + n_predict (" + std::to_string(a.n_predict) +
                                        ") exceeds the context size " + std::to_string(n_ctx) +
                                        "; raise -c"),
                2);
  }
  const uint64_t seed = a.seed >= 0 ? static_cast<uint64_t>(a.seed) : std::random_device{}();
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto handle = (*eng)->Submit(MakeRequest(a, *prompt, seed));
  const double tokenize_ms = tokenize_watch.ElapsedMs();
  // The engine refusing the request (a bad token id, ...) is a runtime error: exit 1.
  if (!handle.ok()) return fail(handle.status());
  auto outcome = Consume(a, **handle);
  // Whatever happened, what the request computed goes to the disk tier before we exit.
  Stopwatch flush_watch;
  Status flushed = (*eng)->Flush();
  const double flush_ms = flush_watch.ElapsedMs();
  const cache::CacheStats cs = (*eng)->cache_stats();
  if (!flushed.ok()) {
    std::fprintf(stderr, "kvstash run: warning: cache flush: %s\n", flushed.ToString().c_str());
  }
  if (!outcome.ok()) return fail(outcome.status());
  if (outcome->interrupted) {
    const int bt = (*eng)->runner_options().block_tokens;
    const int kept = (outcome->usage.cached_tokens + outcome->usage.prefilled_tokens) / bt;
    std::fprintf(stderr,
                 "\nkvstash run: interrupted; %d full blocks (%d tokens) of the context are in the "
                 "cache%s\n",
                 kept, kept * bt, (*eng)->has_disk_tier() ? " directory for the next run" : "");
    WarnAboutWrites(cs, a.cache_dir);
    (void)(*eng)->Close();
    return 130;
  }
  if (a.json) {
    nlohmann::json j = JsonReport(a, **eng, *outcome, *prompt, seed, tokenize_ms, flush_ms, cs);
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    HumanReport(a, **eng, *outcome, tokenize_ms, cs);
  }
  WarnAboutWrites(cs, a.cache_dir);
  if (Status s = (*eng)->Close(); !s.ok()) {
    std::fprintf(stderr, "kvstash run: warning: closing the cache: %s\n", s.ToString().c_str());
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
  cmd->add_option("-t,--threads", args->threads,
                  "Compute threads; 0 = all cores (more than the cores available are capped, "
                  "with a warning)")
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
  cmd->add_option("--weights", args->weights,
                  "Where the weights live: ram (read into huge-page memory: slower start, faster "
                  "decode), mmap (map the file: instant start), auto (ram when the file fits in "
                  "half of the available memory)")
      ->capture_default_str();
  cmd->add_option("--cache-dir", args->cache_dir,
                  "Persistent prefix cache directory (created if missing): reuse the KV blocks of "
                  "prompt prefixes computed by earlier runs, and store this run's blocks there "
                  "for later ones");
  cmd->add_option("--cache-salt", args->cache_salt,
                  "Cache namespace salt: runs with different salts never share blocks");
  cmd->add_option("--cache-bytes", args->cache_bytes,
                  "Disk budget of --cache-dir (K/M/G/T suffixes); least recently used segments "
                  "are evicted beyond it")
      ->capture_default_str();
  cmd->add_option("--host-cache-bytes", args->host_cache_bytes,
                  "Host-memory tier budget (K/M/G suffixes); 0 = off, the CPU backend's KV pool "
                  "already lives in RAM (docs/cache.md)")
      ->capture_default_str();
  cmd->add_option("--write-policy", args->write_policy,
                  "When computed blocks are written to --cache-dir: always, on-evict or never")
      ->capture_default_str();
  cmd->add_option("--session", args->session,
                  "Continue the saved session NAME: its tokens come first, the prompt is appended "
                  "(no BOS); needs --cache-dir");
  cmd->add_option("--save-session", args->save_session,
                  "Save the whole sequence (context + generated tokens) as session NAME at the "
                  "end, durably; needs --cache-dir");
  cmd->add_flag(
      "--json", args->json,
      "Print one JSON object on stdout: prompt_ids, generated_ids, text, top_logits, "
      "timings {ttft_ms, prefill_ms, decode_ms, prompt_tokens_per_s, gen_tokens_per_s}, and with "
      "--cache-dir cache {cached_tokens, device_tokens, host_tokens, disk_tokens, "
      "load_ms, ...}");
  cmd->callback([args, exit_code] { *exit_code = Run(*args); });
}

}  // namespace kvstash::cli
