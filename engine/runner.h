// The forward pass over paged KV, written once against engine/backend.h.
//
// Prefill(seq, tokens) appends tokens to a sequence: it allocates pages as blocks fill, computes
// and stores K/V for every new position, and returns logits. The KV stored for a position is
// bit-identical however the prompt was split into Prefill calls (chunk sizes, block boundaries),
// which is what lets cached blocks stand in for recomputed ones.
//
// Not thread-safe: one engine thread drives a Runner. The Model must outlive it.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/status.h"
#include "engine/backend.h"
#include "engine/kv_pool.h"
#include "engine/model/model.h"

namespace kvstash::engine {

struct RunnerOptions {
  int n_threads = 0;      // 0 = all cores
  int n_ctx = 4096;       // max positions per sequence; 0 = the model's training context
  int block_tokens = 16;  // positions per KV block (page)
  KvDtype kv_dtype = KvDtype::kF16;
  int n_batch = 256;  // tokens per forward chunk during prefill (memory bound)
  int n_pages = 0;    // pool size; 0 = enough for one sequence of n_ctx
};

enum class LogitsMode { kNone, kLast, kAll };

class Runner {
 public:
  static Result<std::unique_ptr<Runner>> Create(const Model& model, const RunnerOptions& options);

  const Model& model() const { return model_; }
  const RunnerOptions& options() const { return options_; }
  const KvLayout& kv_layout() const { return pool_->layout(); }
  KvPool& pool() { return *pool_; }
  Backend& backend() { return *backend_; }

  // Appends `tokens` to `seq`. With kLast, `logits` receives n_vocab floats for the last token;
  // with kAll, n_tokens * n_vocab (row per token). ResourceExhausted when the context or the
  // pool is full (the sequence is left unchanged), InvalidArgument for bad token ids.
  Status Prefill(Sequence& seq, std::span<const int32_t> tokens, LogitsMode mode,
                 std::vector<float>* logits);
  // One token; logits for it.
  Status Decode(Sequence& seq, int32_t token, std::vector<float>* logits) {
    return Prefill(seq, std::span<const int32_t>(&token, 1), LogitsMode::kLast, logits);
  }
  // Returns the sequence's pages to the pool and clears it.
  void Release(Sequence& seq);

 private:
  Runner(const Model& model, const RunnerOptions& options) : model_(model), options_(options) {}
  Status ForwardChunk(Sequence& seq, std::span<const int32_t> tokens, LogitsMode mode,
                      float* logits);

  const Model& model_;
  RunnerOptions options_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<KvPool> pool_;
  std::vector<float> inv_freq_;
  // Activation scratch, sized for n_batch tokens.
  std::vector<float> x_, xn_, q_, k_, v_, att_, tmp_, gate_, up_;
  std::vector<int32_t> positions_;
};

}  // namespace kvstash::engine
