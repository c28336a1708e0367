// `kvstash run`: offline generation with the engine in-process (ARCHITECTURE.md §7).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
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

// The cache tiers of one run: the store (disk tier) and the PrefixCache over the runner's pool.
// Declared before the runner so it is destroyed after the cache, which drains into the store.
struct CacheRun {
  std::unique_ptr<storage::BlockStore> store;
  std::unique_ptr<cache::PrefixCache> cache;
  double open_ms = 0;
  double fingerprint_ms = 0;
  bool fingerprint_remembered = false;
  cache::Hash128 fingerprint;
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

  if ((!a.session.empty() || !a.save_session.empty()) && a.cache_dir.empty()) {
    return fail(Status::InvalidArgument("--session/--save-session need --cache-dir"), 2);
  }
  for (const std::string* name : {&a.session, &a.save_session}) {
    if (!name->empty()) {
      if (Status s = cache::ValidateSessionName(*name); !s.ok()) return fail(s, 2);
    }
  }
  auto write_policy = cache::ParseWritePolicy(a.write_policy);
  if (!write_policy.ok()) return fail(write_policy.status(), 2);
  auto disk_budget = ParseByteSize(a.cache_bytes);
  if (!disk_budget.ok()) return fail(disk_budget.status().WithContext("--cache-bytes"), 2);
  auto host_budget = ParseByteSize(a.host_cache_bytes);
  if (!host_budget.ok()) return fail(host_budget.status().WithContext("--host-cache-bytes"), 2);

  std::string model_path = a.model;
  if (model_path.empty()) {
    auto p = EnsureDefaultModel();
    if (!p.ok()) return fail(p.status());
    model_path = *p;
  }
  auto weight_memory = engine::ParseWeightMemory(a.weights);
  if (!weight_memory.ok()) return fail(weight_memory.status().WithContext("--weights"), 2);
  Stopwatch load_watch;
  auto model = engine::Model::Load(model_path, *weight_memory);
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

  CacheRun cr;
  if (!a.cache_dir.empty()) {
    Stopwatch w;
    storage::Options so;
    so.path = a.cache_dir;
    so.capacity_bytes = *disk_budget;
    so.segment_bytes = std::min<uint64_t>(
        so.segment_bytes, std::max<uint64_t>(*disk_budget / 4, 64 << 10) & ~uint64_t{4095});
    auto store = storage::BlockStore::Open(so);
    if (!store.ok()) return fail(store.status().WithContext("--cache-dir " + a.cache_dir));
    cr.store = std::move(*store);
    cr.open_ms = w.ElapsedMs();
    w.Reset();
    auto fp = cache::FingerprintFile(model_path, cr.store.get(), &cr.fingerprint_remembered);
    if (!fp.ok()) return fail(fp.status());
    cr.fingerprint = *fp;
    cr.fingerprint_ms = w.ElapsedMs();
  }

  Stopwatch ttft_watch;  // covers tokenization, cache lookup and load, prefill, first sample
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
    bool add_bos = !a.no_bos && tokenizer->vocab().add_bos && a.session.empty();
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
  if (prompt.empty() && a.session.empty()) {
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
  // After the runner, so it is destroyed first (it drains write-behind into the store).
  struct CacheCloser {
    CacheRun& cr;
    ~CacheCloser() { cr.cache.reset(); }
  } cache_closer{cr};
  if (cr.store) {
    cache::CacheOptions co;
    co.cache_salt = a.cache_salt;
    co.host_bytes = *host_budget;
    co.write_policy = *write_policy;
    auto ns = cache::NamespaceFor(**model, cr.fingerprint, (*runner)->kv_layout(), a.cache_salt);
    auto c = cache::PrefixCache::Create((*runner)->pool(), cr.store.get(), ns, co, model_path,
                                        (*model)->Describe());
    if (!c.ok()) return fail(c.status());
    cr.cache = std::move(*c);
  }
  // The context: a restored session's tokens, then this run's prompt.
  engine::Sequence seq;
  std::vector<int32_t> context;
  cache::AcquireResult acquired;
  if (!a.session.empty()) {
    // With nothing appended, the session's last token is recomputed for its logits.
    auto restored = cr.cache->RestoreSession(a.session, seq, prompt.empty() ? 1 : 0);
    if (!restored.ok()) return fail(restored.status());
    context = std::move(restored->tokens);
    acquired = restored->acquired;
  }
  context.insert(context.end(), prompt.begin(), prompt.end());
  if (context.empty()) {
    return fail(Status::InvalidArgument("empty prompt and the model has no BOS token"), 2);
  }
  if (static_cast<int64_t>(context.size()) + a.n_predict > (*runner)->options().n_ctx) {
    return fail(Status::InvalidArgument("prompt (" + std::to_string(context.size()) +
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
  if (cr.cache && a.session.empty()) {
    auto got = cr.cache->Acquire(seq, context);
    if (!got.ok()) return fail(got.status());
    acquired = *got;
  }
  std::vector<float> logits;
  Stopwatch prefill_watch;
  const std::span<const int32_t> suffix(context.data() + seq.n_past(),
                                        context.size() - seq.n_past());
  if (Status s = (*runner)->Prefill(seq, suffix, engine::LogitsMode::kLast, &logits); !s.ok()) {
    return fail(s);
  }
  const double prefill_ms = prefill_watch.ElapsedMs();
  if (cr.cache) {
    cr.cache->ObservePrefill(static_cast<int>(suffix.size()), prefill_ms);
    cr.cache->Publish(seq);
  }

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
  int32_t last_sampled = -1;
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
    last_sampled = *tok;
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
    last_sampled = -1;  // now part of the sequence
    if (cr.cache && seq.n_past() % (*runner)->options().block_tokens == 0) cr.cache->Publish(seq);
  }
  const double decode_ms = a.n_predict > 0 ? decode_watch.ElapsedMs() : 0.0;
  const double pp_tps = suffix.size() / std::max(prefill_ms, 1e-6) * 1e3;

  double save_ms = 0, flush_ms = 0;
  cache::CacheStats cache_stats;
  if (cr.cache) {
    if (!a.save_session.empty()) {
      Stopwatch w;
      // The session holds every token of the conversation, the last sampled one included.
      if (last_sampled >= 0 && seq.n_past() < (*runner)->options().n_ctx) {
        if (Status s = (*runner)->Decode(seq, last_sampled, &logits); !s.ok()) return fail(s);
      }
      cr.cache->Publish(seq);
      if (Status s = cr.cache->SaveSession(a.save_session, seq); !s.ok()) return fail(s);
      save_ms = w.ElapsedMs();
    }
    cr.cache->Release(seq);
    Stopwatch w;
    if (Status s = cr.cache->Flush(); !s.ok()) {
      std::fprintf(stderr, "kvstash run: warning: cache flush: %s\n", s.ToString().c_str());
    }
    flush_ms = w.ElapsedMs();
    cache_stats = cr.cache->Stats();
  }
  const int n_decoded = generated.empty() ? 0 : static_cast<int>(generated.size()) - 1;
  const double tg_tps = n_decoded > 0 ? n_decoded / std::max(decode_ms, 1e-6) * 1e3 : 0.0;

  if (a.json) {
    nlohmann::json j;
    j["model"] = {{"path", model_path},
                  {"arch", hp.arch_name},
                  {"description", (*model)->Describe()},
                  {"weights", engine::WeightMemoryName((*model)->gguf().memory())},
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
    if (cr.cache) {
      j["cache"] = {{"cached_tokens", acquired.cached_tokens},
                    {"device_tokens", acquired.device_tokens},
                    {"host_tokens", acquired.host_tokens},
                    {"disk_tokens", acquired.disk_tokens},
                    {"load_ms", acquired.load_ms},
                    {"context_tokens", context.size()},
                    {"prefilled_tokens", suffix.size()},
                    {"recomputed_blocks", acquired.recomputed_blocks},
                    {"dir", a.cache_dir},
                    {"namespace", cr.cache->namespace_hash().ToHex()},
                    {"model_fingerprint", cr.fingerprint.ToHex()},
                    {"fingerprint_ms", cr.fingerprint_ms},
                    {"fingerprint_remembered", cr.fingerprint_remembered},
                    {"open_ms", cr.open_ms},
                    {"session", a.session},
                    {"saved_session", a.save_session},
                    {"save_ms", save_ms},
                    {"flush_ms", flush_ms},
                    {"published_blocks", cache_stats.published_blocks},
                    {"written_blocks", cache_stats.written_blocks},
                    {"write_dropped", cache_stats.write_dropped},
                    {"write_failed", cache_stats.write_failed},
                    {"corrupt_blocks", cache_stats.corrupt_blocks}};
    }
    j["timings"] = {{"load_ms", load_ms},
                    {"ttft_ms", ttft_ms},
                    {"prefill_ms", prefill_ms},
                    {"decode_ms", decode_ms},
                    {"prompt_tokens", context.size()},
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
                 "  prefill     %8zu tokens  %8.1f ms  %8.1f tokens/s\n"
                 "  generation  %8zu tokens  %8.1f ms  %8.1f tokens/s\n"
                 "  time to first token %.1f ms\n",
                 model_path.c_str(), (*model)->Describe().c_str(), (*runner)->backend().name(),
                 (*runner)->backend().n_threads(), load_ms, suffix.size(), prefill_ms, pp_tps,
                 generated.size(), decode_ms, tg_tps, ttft_ms);
    if (cr.cache) {
      std::fprintf(stderr,
                   "  cache       %8d of %zu context tokens reused (device %d, host %d, disk %d), "
                   "load %.1f ms; %zu prefilled\n",
                   acquired.cached_tokens, context.size(), acquired.device_tokens,
                   acquired.host_tokens, acquired.disk_tokens, acquired.load_ms, suffix.size());
      if (!a.save_session.empty()) {
        std::fprintf(stderr, "  session     saved '%s' (%d tokens) in %.1f ms\n",
                     a.save_session.c_str(), static_cast<int>(context.size() + generated.size()),
                     save_ms);
      }
    }
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
  cmd->add_option("--weights", args->weights,
                  "Where the weights live: ram (read into huge-page memory: slower start, faster "
                  "decode), mmap (map the file: instant start), auto (ram when the file fits in "
                  "half of the available memory)")
      ->capture_default_str();
  cmd->add_option("--cache-dir", args->cache_dir,
                  "Persistent prefix cache directory (created if missing): reuse the KV of "
                  "prompt prefixes computed by earlier runs, and store this run's");
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
