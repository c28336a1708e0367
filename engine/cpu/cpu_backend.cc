// CPU implementation of engine/backend.h over the thread pool and the kernel tables.
//
// Work split: MatMul converts the activations once (parallel over tokens), then hands out
// chunks of weight rows; each chunk walks all tokens in tiles so the chunk's rows stay in cache.
// Attention hands out (kv head, tile of queries) pairs; each block of 64 keys is requested from
// memory at once, its K transposed to f32 once per tile (straight from the f16 page rows) and used
// by every query head of the group (GQA) and every query in the tile; V is read in place.

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/check.h"
#include "base/clock.h"
#include "base/logging.h"
#include "engine/backend.h"
#include "engine/cpu/deltanet.h"
#include "engine/cpu/fp16.h"
#include "engine/cpu/kernels.h"
#include "engine/cpu/moe.h"
#include "engine/cpu/repack.h"
#include "engine/cpu/thread_pool.h"
#include "engine/gguf/quant.h"

namespace kvstash::engine {
namespace {

using cpu::ActFormat;
using cpu::KernelTable;

// Queries per attention task. Each task converts (f16 -> f32) every K/V page it visits (K
// transposed on the way), so larger tiles share that work among more queries; a query's result does
// not depend on its tile (tested). 64 still leaves n_kv_heads * n_tok / 64 tasks (64 at 512 tokens
// with 8 kv heads) for the pool's dynamic hand-out.
constexpr int kAttnQueryTile = 64;
// Keys per online-softmax step: blocks of absolute positions [j * 64, (j + 1) * 64), gathered
// from the sequence's pages. Every query sees the same block boundaries whatever tile, batch or
// chunk it is computed in (they depend on key positions only), so its result does not change;
// 64 keys per step instead of one 16-token page amortize the per-step work (the running max,
// the rescale of the accumulators, the transpose of K) over four times the multiply-adds.
constexpr int kAttnKeyBlock = 64;
constexpr int kMaxRopePairs = 512;

class CpuBackend final : public Backend {
 public:
  CpuBackend(int n_threads, bool repack_weights, const KernelTable& table)
      : pool_(n_threads), k_(table), repack_weights_(repack_weights) {
    scratch_.resize(pool_.size());
  }
  const char* name() const override { return k_.name; }
  int n_threads() const override { return pool_.size(); }

  void MatMul(const WeightMatrix& w, const float* x, int n_tok, float* y) override {
    const ActFormat fmt = cpu::ActFormatFor(w.type);
    const size_t x_stride = cpu::ActRowBytes(fmt, w.n_in);
    const uint8_t* xa;
    if (fmt == ActFormat::kF32) {
      xa = reinterpret_cast<const uint8_t*>(x);
    } else {
      act_.resize(x_stride * n_tok);
      uint8_t* dst = act_.data();
      ForRows(n_tok, w.n_in,
              [&](int64_t t) { k_.quantize_act(fmt, x + t * w.n_in, dst + t * x_stride, w.n_in); });
      xa = dst;
    }
    const int n_out = static_cast<int>(w.n_out);
    const Repacked* rp = FindRepacked(w);
    // Chunks of rows: enough chunks for load balance, multiples of 4 (8 for decode and for
    // repacked rows, whose groups are 8) so tiles stay whole. They are walked in order within
    // each thread's contiguous share (ParallelForContiguous): a tile prefetches the rows after
    // it, which are then this thread's next rows instead of another thread's (dynamic hand-out
    // made every chunk start cold).
    int chunk = n_tok == 1 ? std::max(8, (n_out / (pool_.size() * 8)) & ~7)
                           : std::max(16, (n_out / (pool_.size() * 4)) & (rp ? ~7 : ~3));
    chunk = std::min(chunk, n_tok == 1 ? 256 : 128);
    const int n_chunks = (n_out + chunk - 1) / chunk;
    pool_.ParallelForContiguous(n_chunks, [&](int64_t c, int) {
      const int r0 = static_cast<int>(c) * chunk;
      const int rows = std::min(chunk, n_out - r0);
      Gemm(w, rp, r0, rows, xa, x_stride, n_tok, y + r0);
    });
  }

  // Activations are converted once per distinct (x, format) (MoE gate and up share theirs), then
  // every job's rows are handed out in chunks of kBatchChunkRows from one task list, so threads
  // move on to the next expert instead of waiting at a barrier after each. Chunking never changes
  // a (row, token) value (kernels.h), so each y equals MatMul's.
  void MatMulBatch(std::span<const MatMulJob> jobs) override {
    constexpr int kBatchChunkRows = 64;  // a multiple of every repacked group
    struct Prep {
      const uint8_t* xa;
      size_t x_stride;
      size_t act_offset;  // into batch_act_, or SIZE_MAX when x is used as is (f32)
      const Repacked* rp;
    };
    struct Row {  // one activation row to convert
      const float* x;
      size_t dst;
      ActFormat fmt;
      int64_t n;
    };
    std::vector<Prep> prep(jobs.size());
    std::vector<Row> rows;
    size_t act_bytes = 0;
    int64_t act_elems = 0;
    for (size_t i = 0; i < jobs.size(); ++i) {
      const MatMulJob& j = jobs[i];
      const ActFormat fmt = cpu::ActFormatFor(j.w->type);
      prep[i].x_stride = cpu::ActRowBytes(fmt, j.w->n_in);
      prep[i].act_offset = SIZE_MAX;
      prep[i].rp = FindRepacked(*j.w);
      if (fmt == ActFormat::kF32) continue;
      size_t shared = SIZE_MAX;
      // Only the last two jobs are looked at: the callers put the products of one x together.
      for (size_t k = i >= 2 ? i - 2 : 0; k < i && shared == SIZE_MAX; ++k) {
        if (jobs[k].x == j.x && jobs[k].n_tok >= j.n_tok && jobs[k].w->n_in == j.w->n_in &&
            cpu::ActFormatFor(jobs[k].w->type) == fmt) {
          shared = prep[k].act_offset;
        }
      }
      if (shared != SIZE_MAX) {
        prep[i].act_offset = shared;
        continue;
      }
      prep[i].act_offset = act_bytes;
      for (int t = 0; t < j.n_tok; ++t)
        rows.push_back({j.x + static_cast<size_t>(t) * j.w->n_in, act_bytes + t * prep[i].x_stride,
                        fmt, j.w->n_in});
      act_bytes += prep[i].x_stride * j.n_tok;
      act_elems += j.w->n_in * j.n_tok;
    }
    if (batch_act_.size() < act_bytes) batch_act_.resize(act_bytes);
    uint8_t* act = batch_act_.data();
    const auto quantize = [&](int64_t r) {
      k_.quantize_act(rows[r].fmt, rows[r].x, act + rows[r].dst, rows[r].n);
    };
    if (act_elems < kMinParallelElems) {
      for (size_t r = 0; r < rows.size(); ++r) quantize(static_cast<int64_t>(r));
    } else {
      pool_.ParallelFor(static_cast<int64_t>(rows.size()), [&](int64_t r, int) { quantize(r); });
    }
    std::vector<std::pair<int, int>> tasks;  // (job, first row)
    for (size_t i = 0; i < jobs.size(); ++i) {
      prep[i].xa = prep[i].act_offset == SIZE_MAX ? reinterpret_cast<const uint8_t*>(jobs[i].x)
                                                  : act + prep[i].act_offset;
      for (int64_t r0 = 0; r0 < jobs[i].w->n_out; r0 += kBatchChunkRows)
        tasks.emplace_back(static_cast<int>(i), static_cast<int>(r0));
    }
    pool_.ParallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t task, int) {
      const auto [i, r0] = tasks[task];
      const MatMulJob& j = jobs[i];
      const WeightMatrix& w = *j.w;
      const int n_rows = static_cast<int>(std::min<int64_t>(kBatchChunkRows, w.n_out - r0));
      Gemm(w, prep[i].rp, r0, n_rows, prep[i].xa, prep[i].x_stride, j.n_tok, j.y + r0);
    });
  }

  void RmsNorm(const float* x, const float* weight, int n_tok, int dim, float eps,
               float* y) override {
    ForRows(n_tok, dim, [&](int64_t t) {
      const float* xr = x + static_cast<size_t>(t) * dim;
      float* yr = y + static_cast<size_t>(t) * dim;
      // Eight partial sums (element i goes to i % 8), combined in a fixed order: independent
      // chains instead of one dependent add per element; a row's result still depends on the row
      // alone, never on the batch it is in.
      double ps[8] = {};
      int i = 0;
      for (; i + 8 <= dim; i += 8) {
        for (int j = 0; j < 8; ++j) ps[j] += static_cast<double>(xr[i + j]) * xr[i + j];
      }
      double ss = ((ps[0] + ps[4]) + (ps[2] + ps[6])) + ((ps[1] + ps[5]) + (ps[3] + ps[7]));
      for (; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
      const float scale = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
      for (int i = 0; i < dim; ++i) yr[i] = xr[i] * scale * weight[i];
    });
  }

  void Rope(float* x, int n_tok, int n_heads, const int32_t* positions,
            const RopeParams& p) override {
    const int half = p.n_rot / 2;
    const float* table = RopeTable(positions, n_tok, half, p.inv_freq);
    ForRows(n_tok, int64_t{n_heads} * p.head_dim, [&](int64_t t) {
      const float* cs = table + static_cast<size_t>(t) * 2 * half;
      const float* sn = cs + half;
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + (static_cast<size_t>(t) * n_heads + h) * p.head_dim;
        for (int i = 0; i < half; ++i) {
          const int a = p.style == RopeStyle::kNormal ? 2 * i : i;
          const int b = p.style == RopeStyle::kNormal ? 2 * i + 1 : i + half;
          const float x0 = v[a], x1 = v[b];
          v[a] = x0 * cs[i] - x1 * sn[i];
          v[b] = x0 * sn[i] + x1 * cs[i];
        }
      }
    });
  }

  void StoreKv(KvPool& pool, const Sequence& seq, int layer, int pos0, int n_tok, const float* k,
               const float* v) override {
    const KvLayout& L = pool.layout();
    const int bt = L.block_tokens;
    for (int t = 0; t < n_tok; ++t) {
      const int pos = pos0 + t;
      uint8_t* page = pool.page(seq.block_table[pos / bt]);
      for (int kv = 0; kv < 2; ++kv) {
        const float* src = (kv == 0 ? k : v) + static_cast<size_t>(t) * L.n_kv_heads * L.head_dim;
        for (int h = 0; h < L.n_kv_heads; ++h) {
          const size_t off = L.RowOffset(layer, kv, h, pos % bt);
          if (L.dtype == KvDtype::kF16) {
            k_.f32_to_f16(src + h * L.head_dim, reinterpret_cast<uint16_t*>(page) + off,
                          L.head_dim);
          } else {
            std::memcpy(reinterpret_cast<float*>(page) + off, src + h * L.head_dim,
                        L.head_dim * sizeof(float));
          }
        }
      }
    }
  }

  // One job of AttentionBatch: the same tasks in the same order.
  void Attention(const KvPool& pool, const Sequence& seq, int layer, int pos0, int n_tok,
                 int n_head, const float* q, float* out) override {
    const AttentionJob job{&seq, pos0, n_tok, q, out};
    AttentionBatch(pool, layer, n_head, std::span<const AttentionJob>(&job, 1));
  }

  // Tasks (job, query tile, kv head) of every job in one list. A job's out depends only on its
  // own AttentionTile calls, so it is the same whatever else is in the batch.
  void AttentionBatch(const KvPool& pool, int layer, int n_head,
                      std::span<const AttentionJob> jobs) override {
    const KvLayout& L = pool.layout();
    const int hd = L.head_dim;
    const int group = n_head / L.n_kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    attn_tasks_.clear();
    for (size_t i = 0; i < jobs.size(); ++i) {
      const int n_tiles = (jobs[i].n_tok + kAttnQueryTile - 1) / kAttnQueryTile;
      for (int tile = 0; tile < n_tiles; ++tile)
        for (int g = 0; g < L.n_kv_heads; ++g)
          attn_tasks_.push_back({static_cast<int>(i), tile, g});
    }
    // Each thread walks its own run of tasks (whole sequences at N decoding sequences) instead of
    // taking the next (job, tile, head) in turn: with the two threads on neighbouring heads of
    // one sequence, N = 8 decode steps at 256-384 positions were ~12 % slower (bench/batch_bench,
    // docs/engine.md).
    pool_.ParallelForContiguous(
        static_cast<int64_t>(attn_tasks_.size()), [&](int64_t task, int thread) {
          const AttnTask& a = attn_tasks_[task];
          const AttentionJob& j = jobs[a.job];
          const int t0 = a.tile * kAttnQueryTile;
          const int nq = std::min(kAttnQueryTile, j.n_tok - t0);
          AttentionTile(pool, *j.seq, layer, j.pos0 + t0, nq, a.g, group, n_head, scale,
                        j.q + static_cast<size_t>(t0) * n_head * hd,
                        j.out + static_cast<size_t>(t0) * n_head * hd, scratch_[thread]);
        });
  }

  void SwiGlu(const float* gate, const float* up, int64_t n, float* out) override {
    ForChunks(n, [&](int64_t i0, int64_t i1) { k_.swiglu(gate + i0, up + i0, i1 - i0, out + i0); });
  }

  void Add(const float* x, int64_t n, float* y) override {
    ForChunks(n, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) y[i] += x[i];
    });
  }

  void SigmoidMul(const float* gate, int64_t n, float* x) override {
    ForChunks(n, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) x[i] *= 1.0f / (1.0f + std::exp(-gate[i]));
    });
  }

  void MoeRoute(const float* logits, int n_tok, int n_expert, int k, int32_t* ids,
                float* weights) override {
    ForRows(n_tok, n_expert, [&](int64_t t) {
      cpu::MoeRouteToken(logits + t * n_expert, n_expert, k, ids + t * k, weights + t * k);
    });
  }

  void CausalConvSilu(float* x, int n_tok, int channels, const float* conv_w, int d_conv,
                      float* state) override {
    constexpr int kChannelsPerTask = 256;
    const int n_tasks = (channels + kChannelsPerTask - 1) / kChannelsPerTask;
    pool_.ParallelFor(n_tasks, [&](int64_t task, int) {
      const int c0 = static_cast<int>(task) * kChannelsPerTask;
      cpu::CausalConvSiluChannels(x, n_tok, channels, conv_w, d_conv, state, c0,
                                  std::min(channels, c0 + kChannelsPerTask));
    });
  }

  void GatedDeltaNet(const float* qkv, const float* alpha, const float* beta, const float* dt_bias,
                     const float* a, int n_tok, int n_k_heads, int n_v_heads, int dk, int dv,
                     float eps, int chunk_tokens, float* state, float* out) override {
    gdn_qn_.resize(static_cast<size_t>(n_tok) * n_k_heads * dk);
    gdn_kn_.resize(gdn_qn_.size());
    gdn_g_.resize(static_cast<size_t>(n_tok) * n_v_heads);
    gdn_b_.resize(gdn_g_.size());
    cpu::DeltaNetPrepare(qkv, alpha, beta, dt_bias, a, n_tok, n_k_heads, n_v_heads, dk, dv, eps,
                         gdn_qn_.data(), gdn_kn_.data(), gdn_g_.data(), gdn_b_.data());
    pool_.ParallelFor(n_v_heads, [&](int64_t h, int) {
      const cpu::DeltaHeadArgs args{qkv,
                                    gdn_qn_.data(),
                                    gdn_kn_.data(),
                                    gdn_g_.data(),
                                    gdn_b_.data(),
                                    n_tok,
                                    n_k_heads,
                                    n_v_heads,
                                    dk,
                                    dv,
                                    static_cast<int>(h)};
      float* state_h = state + static_cast<size_t>(h) * dv * dk;
      if (chunk_tokens > 1 && n_tok > 1) {
        cpu::DeltaRuleHeadChunked(k_, args, chunk_tokens, state_h, out);
      } else {
        cpu::DeltaRuleHead(k_, args, state_h, out);
      }
    });
  }

  Status Embed(const WeightMatrix& w, std::span<const int32_t> tokens, float* out) override {
    for (size_t t = 0; t < tokens.size(); ++t) {
      if (tokens[t] < 0 || tokens[t] >= w.n_out) {
        return Status::InvalidArgument("token id " + std::to_string(tokens[t]) +
                                       " out of range [0, " + std::to_string(w.n_out) + ")");
      }
      const uint8_t* row = w.data + tokens[t] * w.row_bytes;
      if (const Repacked* rp = FindRepacked(w)) {
        // From the copy: PrepareWeights gave the file's pages back.
        embed_row_.resize(w.row_bytes);
        cpu::UnrepackRow(w.type, rp->data, w.n_in, tokens[t], embed_row_.data());
        row = embed_row_.data();
      }
      KV_RETURN_IF_ERROR(DequantizeRow(w.type, row, out + t * w.n_in, w.n_in));
    }
    return Status::Ok();
  }

  // Repacks every matrix of the model the kernel table has a faster layout for, into one
  // allocation in 2 MiB pages (weight streams in decode need them as Model::Load's `ram` mode
  // does), groups spread over the threads.
  void PrepareWeights(const Model& model) override {
    if (!repack_weights_ || k_.repack_rows == nullptr || !repacked_.empty()) return;
    if (const char* env = std::getenv("KVSTASH_CPU_REPACK"); env && std::string(env) == "0") return;
    std::vector<const WeightMatrix*> mats;
    std::vector<std::pair<const uint8_t*, const uint8_t*>> kept;  // matrices read as they are
    auto add = [&](const WeightMatrix& w) {
      if (w.data == nullptr || w.n_out <= 0) return;
      const int g = k_.repack_rows(w.type, w.n_in);
      if (g <= 0 || w.n_out % g != 0) {
        kept.emplace_back(w.data, w.data + w.row_bytes * w.n_out);
        return;
      }
      if (repacked_.count(w.data)) return;
      repacked_[w.data] = Repacked{};
      mats.push_back(&w);
    };
    for (const LayerWeights& l : model.layers()) {
      for (const WeightMatrix* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.ssm_qkv, &l.ssm_z, &l.ssm_beta,
                                    &l.ssm_alpha, &l.ssm_out, &l.w_gate, &l.w_up, &l.w_down,
                                    &l.ffn_router, &l.shexp_gate, &l.shexp_up, &l.shexp_down}) {
        add(*w);
      }
      for (const auto* v : {&l.exp_gate, &l.exp_up, &l.exp_down})
        for (const WeightMatrix& w : *v) add(w);
    }
    add(model.output());
    const WeightMatrix& embd = model.token_embd();
    if (embd.data != nullptr && embd.data != model.output().data) {
      kept.emplace_back(embd.data, embd.data + embd.row_bytes * embd.n_out);  // Embed reads it
    }
    if (mats.empty()) return;
    // In file order: the tasks below then repack (and give back) the file front to back.
    std::sort(mats.begin(), mats.end(),
              [](const WeightMatrix* a, const WeightMatrix* b) { return a->data < b->data; });
    size_t total = 0;
    std::vector<size_t> offset;
    for (const WeightMatrix* w : mats) {
      offset.push_back(total);
      total += (cpu::RepackedBytes(w->type, w->n_out, w->n_in) + 63) & ~size_t{63};
    }
    const uint64_t avail = MemAvailableBytes();
    if (avail > 0 && total > avail / 2) {
      DefaultLogger()->warn(
          "cpu: not repacking {} weight matrices for the {} kernels: their copy ({} MiB) would "
          "not fit in half of the available memory ({} MiB); decode is slower without it",
          mats.size(), k_.name, total >> 20, avail >> 20);
      repacked_.clear();
      return;
    }
    Stopwatch watch;
    repack_mem_ = MapHugePages(total);
    if (repack_mem_ == nullptr) {
      DefaultLogger()->warn("cpu: not repacking weight matrices: cannot allocate {} MiB",
                            total >> 20);
      repacked_.clear();
      return;
    }
    // Tasks of up to 64 groups, every matrix's.
    std::vector<std::array<int64_t, 3>> tasks;  // (matrix, first group, end group)
    for (size_t i = 0; i < mats.size(); ++i) {
      const WeightMatrix& w = *mats[i];
      const int64_t groups = w.n_out / k_.repack_rows(w.type, w.n_in);
      for (int64_t g = 0; g < groups; g += 64)
        tasks.push_back({static_cast<int64_t>(i), g, std::min(groups, g + 64)});
      repacked_[w.data] =
          Repacked{repack_mem_.get() + offset[i],
                   cpu::RepackedBytes(w.type, w.n_out, w.n_in) / w.n_out, w.type, w.n_in, w.n_out};
    }
    // Nothing reads the file's bytes of a repacked matrix any more (Embed of a tied output
    // matrix reads the copy too), so they are given back in runs of repacked matrices with no
    // matrix still read from the file between them (the bytes between, norms and metadata, are
    // copied at load; the experts of a MoE tensor are one run): as each matrix is done, its
    // run up to it, so the peak stays near the file's size instead of the file and the whole
    // copy. Given-back pages still read as the file, so a matrix whose pages go early
    // (out-of-order completion) is still repacked right.
    auto end_of = [](const WeightMatrix* w) { return w->data + w->row_bytes * w->n_out; };
    std::sort(kept.begin(), kept.end());
    auto kept_between = [&](const uint8_t* a, const uint8_t* b) {  // a kept matrix in [a, b)?
      auto it = std::upper_bound(kept.begin(), kept.end(), std::make_pair(a, a));
      if (it != kept.begin() && std::prev(it)->second > a) return true;
      return it != kept.end() && it->first < b;
    };
    std::vector<size_t> run_of(mats.size());  // index of the run's first matrix
    for (size_t i = 1; i < mats.size(); ++i)
      run_of[i] = kept_between(end_of(mats[i - 1]), mats[i]->data) ? i : run_of[i - 1];
    // The release by a run's last matrix covers the whole run, whatever finished before it.
    std::vector<std::atomic<int>> left(mats.size());
    for (const auto& t : tasks) left[t[0]].fetch_add(1, std::memory_order_relaxed);
    std::atomic<size_t> released{0};
    pool_.ParallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t t, int) {
      const auto [i, g0, g1] = tasks[t];
      const WeightMatrix& w = *mats[i];
      cpu::RepackWeights(w.type, w.data, w.row_bytes, w.n_in, g0, g1,
                         repack_mem_.get() + offset[i]);
      if (left[i].fetch_sub(1, std::memory_order_acq_rel) == 1) {
        const uint8_t* begin = mats[run_of[i]]->data;
        const size_t n = static_cast<size_t>(end_of(&w) - begin);
        const bool last_of_run =
            static_cast<size_t>(i) + 1 == mats.size() || run_of[i + 1] != run_of[i];
        if (model.gguf().ReleaseResident(begin, n) && last_of_run)
          released.fetch_add(n, std::memory_order_relaxed);
      }
    });
    repacked_bytes_ = total;
    DefaultLogger()->info(
        "cpu: repacked {} weight matrices ({} MiB) for the {} kernels in {:.0f} ms ({} MiB of "
        "the file's pages given back)",
        mats.size(), total >> 20, k_.name, watch.ElapsedMs(), released.load() >> 20);
  }

  size_t prepared_weight_bytes() const override { return repacked_bytes_; }

 private:
  // A matrix's repacked copy (PrepareWeights): row r0's group at data + r0 * row_bytes.
  struct Repacked {
    const uint8_t* data = nullptr;
    size_t row_bytes = 0;
    GgmlType type = GgmlType::kF32;  // the matrix it copies (another view of the same bytes
    int64_t n_in = 0, n_out = 0;     // with another shape is computed from the file's rows)
  };
  const Repacked* FindRepacked(const WeightMatrix& w) const {
    if (repacked_.empty()) return nullptr;
    auto it = repacked_.find(w.data);
    if (it == repacked_.end()) return nullptr;
    const Repacked& r = it->second;
    return r.type == w.type && r.n_in == w.n_in && r.n_out == w.n_out ? &r : nullptr;
  }
  // Rows [r0, r0 + rows) of w (r0 and rows multiples of the group when repacked) for n_tok
  // converted activation rows; y: row r0's column of the output.
  void Gemm(const WeightMatrix& w, const Repacked* rp, int r0, int rows, const uint8_t* xa,
            size_t x_stride, int n_tok, float* y) {
    if (rp != nullptr) {
      k_.gemm_repacked(w.type, rp->data + r0 * rp->row_bytes, rows, xa, x_stride, n_tok, w.n_in, y,
                       w.n_out);
    } else {
      k_.gemm(w.type, w.data + r0 * w.row_bytes, w.row_bytes, rows, xa, x_stride, n_tok, w.n_in, y,
              w.n_out);
    }
  }

  // Element-wise work is split into chunks of at least kMinParallelElems elements; smaller jobs
  // run on the calling thread (a pool round trip costs more than they do).
  static constexpr int64_t kMinParallelElems = 16384;

  void ForChunks(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    const int64_t n_chunks = std::min<int64_t>(pool_.size() * 4, n / kMinParallelElems);
    if (n_chunks <= 1) return fn(0, n);
    const int64_t per = (n + n_chunks - 1) / n_chunks;
    pool_.ParallelFor(n_chunks, [&](int64_t c, int) { fn(c * per, std::min(n, (c + 1) * per)); });
  }

  // cos | sin of every (token, pair) angle, [n_tok][2][half], for these positions and
  // frequencies. A forward pass ropes q and k of every attention layer at the same positions, so
  // the table is kept and computed again only when the positions or frequencies change (values
  // compared, not pointers): the same numbers as computing them per call, once per pass.
  const float* RopeTable(const int32_t* positions, int n_tok, int half, const float* inv_freq) {
    KV_CHECK(half <= kMaxRopePairs);
    const bool same = rope_pos_.size() == static_cast<size_t>(n_tok) &&
                      rope_freq_.size() == static_cast<size_t>(half) &&
                      std::equal(positions, positions + n_tok, rope_pos_.begin()) &&
                      std::memcmp(inv_freq, rope_freq_.data(), sizeof(float) * half) == 0;
    if (!same) {
      rope_pos_.assign(positions, positions + n_tok);
      rope_freq_.assign(inv_freq, inv_freq + half);
      rope_table_.resize(static_cast<size_t>(n_tok) * 2 * half);
      ForRows(n_tok, int64_t{half} * 64, [&](int64_t t) {
        float* cs = rope_table_.data() + static_cast<size_t>(t) * 2 * half;
        for (int i = 0; i < half; ++i) {
          const double theta = static_cast<double>(positions[t]) * inv_freq[i];
          cs[i] = static_cast<float>(std::cos(theta));
          cs[half + i] = static_cast<float>(std::sin(theta));
        }
      });
    }
    return rope_table_.data();
  }

  void ForRows(int64_t n_rows, int64_t row_elems, const std::function<void(int64_t)>& fn) {
    if (n_rows == 1 || n_rows * row_elems < kMinParallelElems) {
      for (int64_t r = 0; r < n_rows; ++r) fn(r);
      return;
    }
    pool_.ParallelFor(n_rows, [&](int64_t r, int) { fn(r); });
  }

  struct Scratch {
    std::vector<float> k;  // [head_dim][kAttnKeyBlock + 16] K of one key block, transposed
    std::array<const uint16_t*, kAttnKeyBlock> v16;  // its V rows in the pages, when f16
    std::array<const float*, kAttnKeyBlock> v32;     // or f32
    std::vector<float> scores;                       // [kAttnKeyBlock]
    std::vector<float> acc;                          // [nq * group][head_dim]
    std::vector<float> m, l;                         // [nq * group] running max and sum
    std::vector<float> q;      // [nq * group][head_dim] the tile's queries, gathered
    std::vector<int> n_valid;  // [nq * group] keys of the current page each query sees
  };

  // Online-softmax attention for nq consecutive queries (absolute positions p0..p0+nq-1) and the
  // `group` query heads sharing kv head g. Keys are visited in position order in blocks of
  // kAttnKeyBlock absolute positions, so each query's result does not depend on the tile it was
  // computed in.
  void AttentionTile(const KvPool& pool, const Sequence& seq, int layer, int p0, int nq, int g,
                     int group, int n_head, float scale, const float* q, float* out, Scratch& s) {
    const KvLayout& L = pool.layout();
    const int hd = L.head_dim, bt = L.block_tokens;
    const int nqh = nq * group;
    // K of a key block transposed, [hd][ldk]: the 64 keys plus room for the zero columns that
    // kv_rows_to_kt may write past a short run.
    constexpr int ldk = kAttnKeyBlock + 16;
    s.k.resize(static_cast<size_t>(ldk) * hd);
    s.scores.resize(kAttnKeyBlock);
    s.n_valid.resize(nqh);
    // Gather the group's query heads into [nq * group][hd] once per tile.
    s.q.resize(static_cast<size_t>(nqh) * hd);
    for (int i = 0; i < nq; ++i) {
      for (int j = 0; j < group; ++j) {
        std::memcpy(s.q.data() + static_cast<size_t>(i * group + j) * hd,
                    q + (static_cast<size_t>(i) * n_head + g * group + j) * hd, sizeof(float) * hd);
      }
    }
    s.acc.assign(static_cast<size_t>(nqh) * hd, 0.0f);
    s.m.assign(nqh, -INFINITY);
    s.l.assign(nqh, 0.0f);
    const int last_pos = p0 + nq - 1;
    for (int k0 = 0; k0 <= last_pos; k0 += kAttnKeyBlock) {
      const int n = std::min(kAttnKeyBlock, last_pos + 1 - k0);
      // Keys [k0, k0 + n) of head g, page by page (a head's rows are contiguous in a page). First
      // every K and V line of the block is requested, so the misses of all its pages overlap
      // (decode reads each sequence's KV from DRAM once per step); then K is transposed straight
      // from the page into s.k's columns (f16 widened in registers) and attn_update is given
      // the V rows where they are (it reads them in place, or widens f16 rows once when the
      // group's queries need several passes over V).
      const bool f16 = L.dtype == KvDtype::kF16;
      const size_t elem = f16 ? sizeof(uint16_t) : sizeof(float);
      for (int pos = k0; pos < k0 + n;) {
        const int slot = pos % bt;
        const int run = std::min(bt - slot, k0 + n - pos);
        const uint8_t* page = pool.page(seq.block_table[pos / bt]);
        for (int kv = 0; kv < 2; ++kv) {
          // Whole lines from the one holding the first byte to the one holding the last.
          const auto first =
              reinterpret_cast<uintptr_t>(page + elem * L.RowOffset(layer, kv, g, slot));
          const uintptr_t end = first + elem * run * hd;
          for (uintptr_t b = first & ~uintptr_t{63}; b < end; b += 64)
            __builtin_prefetch(reinterpret_cast<const void*>(b));
        }
        pos += run;
      }
      for (int pos = k0; pos < k0 + n;) {
        const int slot = pos % bt;
        const int run = std::min(bt - slot, k0 + n - pos);
        const uint8_t* page = pool.page(seq.block_table[pos / bt]);
        const size_t koff = L.RowOffset(layer, 0, g, slot), voff = L.RowOffset(layer, 1, g, slot);
        float* kt = s.k.data() + (pos - k0);
        for (int r = 0; r < run; ++r) {
          const size_t row = voff + static_cast<size_t>(r) * hd;
          if (f16) {
            s.v16[pos - k0 + r] = reinterpret_cast<const uint16_t*>(page) + row;
          } else {
            s.v32[pos - k0 + r] = reinterpret_cast<const float*>(page) + row;
          }
        }
        if (f16) {
          k_.kv_rows_to_kt(reinterpret_cast<const uint16_t*>(page) + koff, nullptr, run, hd, kt,
                           ldk);
        } else {
          k_.kv_rows_to_kt(nullptr, reinterpret_cast<const float*>(page) + koff, run, hd, kt, ldk);
        }
        pos += run;
      }
      // attn_update reads whole 16-key groups: the columns past the last key are zero.
      if (const int n16 = (n + 15) & ~15; n16 > n) {
        for (int d = 0; d < hd; ++d)
          std::fill_n(s.k.data() + static_cast<size_t>(d) * ldk + n, n16 - n, 0.0f);
      }
      // Causal mask: query i (position p0 + i) sees the keys of this block up to its position.
      for (int i = 0; i < nq; ++i) {
        const int n_valid = std::clamp(p0 + i + 1 - k0, 0, n);
        for (int j = 0; j < group; ++j) s.n_valid[i * group + j] = n_valid;
      }
      const cpu::AttnValues v =
          f16 ? cpu::AttnValues{s.v16.data(), nullptr} : cpu::AttnValues{nullptr, s.v32.data()};
      k_.attn_update(s.q.data(), nqh, s.n_valid.data(), s.k.data(), ldk, v, n, hd, scale,
                     s.m.data(), s.l.data(), s.acc.data(), s.scores.data());
    }
    for (int i = 0; i < nq; ++i) {
      for (int j = 0; j < group; ++j) {
        const int qi = i * group + j;
        const float inv = 1.0f / s.l[qi];
        const float* acc = s.acc.data() + static_cast<size_t>(qi) * hd;
        float* o = out + (static_cast<size_t>(i) * n_head + g * group + j) * hd;
        for (int d = 0; d < hd; ++d) o[d] = acc[d] * inv;
      }
    }
  }

  cpu::ThreadPool pool_;
  const KernelTable& k_;
  const bool repack_weights_;
  HugePages repack_mem_;                                   // every repacked copy
  std::unordered_map<const uint8_t*, Repacked> repacked_;  // by the file's bytes of the matrix
  size_t repacked_bytes_ = 0;
  std::vector<uint8_t> embed_row_;  // Embed's row of a repacked matrix
  std::vector<uint8_t> act_;
  std::vector<int32_t> rope_pos_;  // RopeTable's positions and frequencies, and its table
  std::vector<float> rope_freq_, rope_table_;
  std::vector<uint8_t> batch_act_;  // MatMulBatch's converted activations, every job's rows
  std::vector<Scratch> scratch_;
  struct AttnTask {
    int job, tile, g;
  };
  std::vector<AttnTask> attn_tasks_;  // AttentionBatch's task list
  // GatedDeltaNet scratch: normalized q/k [n_tok][n_k_heads * dk], log-decay and beta [n_tok]
  // [n_v_heads], f32.
  std::vector<float> gdn_qn_, gdn_kn_, gdn_g_, gdn_b_;
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend(int n_threads, bool repack_weights,
                                          const cpu::KernelTable* table) {
  return std::make_unique<CpuBackend>(n_threads, repack_weights,
                                      table != nullptr ? *table : cpu::Kernels());
}

}  // namespace kvstash::engine
