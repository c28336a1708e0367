#include "daemon/kvstashd/metrics/metrics.h"

#include <algorithm>
#include <cstdio>

#include "serve/engine.h"

namespace kvstash::daemon {

namespace {

void Line(std::string* out, const std::string& name, const std::string& labels, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  *out += name;
  if (!labels.empty()) *out += "{" + labels + "}";
  *out += " ";
  *out += buf;
  *out += "\n";
}

void Head(std::string* out, const std::string& name, const char* type, const std::string& help) {
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void Metric(std::string* out, const std::string& name, const char* type, const std::string& help,
            double v) {
  Head(out, name, type, help);
  Line(out, name, "", v);
}

}  // namespace

void Histogram::Observe(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < kBounds.size(); ++i) {
    if (seconds <= kBounds[i]) ++buckets_[i];
  }
  ++count_;
  sum_ += seconds;
}

void Histogram::Render(std::string* out, const std::string& name, const std::string& help) const {
  std::lock_guard<std::mutex> lock(mu_);
  Head(out, name, "histogram", help);
  for (size_t i = 0; i < kBounds.size(); ++i) {
    char le[32];
    std::snprintf(le, sizeof(le), "%g", kBounds[i]);
    Line(out, name + "_bucket", std::string("le=\"") + le + "\"", static_cast<double>(buckets_[i]));
  }
  Line(out, name + "_bucket", "le=\"+Inf\"", static_cast<double>(count_));
  Line(out, name + "_sum", "", sum_);
  Line(out, name + "_count", "", static_cast<double>(count_));
}

void Metrics::CountRequest(const std::string& route, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{route, status}];
}

void Metrics::CountGeneration(const serve::Usage& u) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    prompt_computed_ += u.prefilled_tokens;
    prompt_device_ += u.device_tokens;
    prompt_host_ += u.host_tokens;
    prompt_disk_ += u.disk_tokens;
    generated_ += u.generated_tokens;
  }
  if (u.generated_tokens > 0) ttft_.Observe(u.ttft_ms / 1e3);
  duration_.Observe(u.total_ms / 1e3);
}

std::string Metrics::Render(const serve::Engine* engine, const MemoryBudget& memory,
                            bool loading) const {
  std::string out;
  Metric(&out, "kvstash_loading", "gauge", "1 while the model loads.", loading ? 1 : 0);
  {
    std::lock_guard<std::mutex> lock(mu_);
    Head(&out, "kvstash_http_requests_total", "counter", "HTTP requests by route and status.");
    for (const auto& [key, n] : requests_) {
      Line(&out, "kvstash_http_requests_total",
           "route=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"",
           static_cast<double>(n));
    }
    Head(&out, "kvstash_prompt_tokens_total", "counter",
         "Prompt tokens by where their KV came from: computed (prefilled) or a cache tier.");
    Line(&out, "kvstash_prompt_tokens_total", "source=\"computed\"", prompt_computed_);
    Line(&out, "kvstash_prompt_tokens_total", "source=\"device\"", prompt_device_);
    Line(&out, "kvstash_prompt_tokens_total", "source=\"host\"", prompt_host_);
    Line(&out, "kvstash_prompt_tokens_total", "source=\"disk\"", prompt_disk_);
    Metric(&out, "kvstash_generated_tokens_total", "counter", "Tokens generated.", generated_);
    Metric(&out, "kvstash_client_disconnects_total", "counter",
           "Requests cancelled because the client went away.", disconnects_);
  }
  ttft_.Render(&out, "kvstash_time_to_first_token_seconds", "Submit to first token.");
  duration_.Render(&out, "kvstash_request_duration_seconds", "Submit to last event.");
  Metric(&out, "kvstash_memory_weights_bytes", "gauge", "Model weights.", memory.weights_bytes);
  Metric(&out, "kvstash_memory_kv_pool_bytes", "gauge", "KV page pool (device tier) budget.",
         memory.kv_pool_bytes);
  Metric(&out, "kvstash_memory_host_tier_bytes", "gauge", "Host tier budget.",
         memory.host_tier_bytes);
  if (engine == nullptr) return out;
  const serve::SchedulerStats s = engine->scheduler_stats();
  Metric(&out, "kvstash_queue_depth", "gauge", "Requests waiting for admission.", s.queue_depth);
  Metric(&out, "kvstash_running_sequences", "gauge", "Sequences being generated.", s.running);
  Metric(&out, "kvstash_kv_pages_total", "gauge", "KV pool pages.", s.pages_total);
  Metric(&out, "kvstash_kv_pages_used", "gauge",
         "KV pool pages referenced by sequences or held by the device tier.", s.pages_used);
  Metric(&out, "kvstash_kv_pages_free", "gauge", "KV pool pages on the free list.", s.pages_free);
  Metric(&out, "kvstash_preemptions_total", "counter",
         "Sequences preempted for pages (resumed later from the cache).", s.preemptions);
  Metric(&out, "kvstash_cancellations_total", "counter", "Requests cancelled.", s.cancelled);
  Metric(&out, "kvstash_requests_refused_total", "counter", "Requests refused: queue full.",
         s.refused);
  Metric(&out, "kvstash_engine_steps_total", "counter", "Batched forward steps.", s.steps);
  Metric(&out, "kvstash_batch_rows_total", "counter", "Rows computed in those steps.",
         s.batch_rows);
  const cache::CacheStats c = engine->cache_stats();
  Head(&out, "kvstash_cache_evictions_total", "counter", "Blocks evicted per tier.");
  Line(&out, "kvstash_cache_evictions_total", "tier=\"device\"", c.device.evictions);
  Line(&out, "kvstash_cache_evictions_total", "tier=\"host\"", c.host.evictions);
  Line(&out, "kvstash_cache_evictions_total", "tier=\"disk\"", c.disk.evictions);
  Head(&out, "kvstash_cache_blocks", "gauge", "Resident blocks per tier.");
  Line(&out, "kvstash_cache_blocks", "tier=\"device\"", c.device.blocks);
  Line(&out, "kvstash_cache_blocks", "tier=\"host\"", c.host.blocks);
  Line(&out, "kvstash_cache_blocks", "tier=\"disk\"", c.disk.blocks);
  Head(&out, "kvstash_cache_hits_total", "counter", "Blocks served per tier.");
  Line(&out, "kvstash_cache_hits_total", "tier=\"device\"", c.device.hits);
  Line(&out, "kvstash_cache_hits_total", "tier=\"host\"", c.host.hits);
  Line(&out, "kvstash_cache_hits_total", "tier=\"disk\"", c.disk.hits);
  Metric(&out, "kvstash_store_bytes_read_total", "counter", "Bytes read from the disk tier.",
         c.disk.bytes_in);
  Metric(&out, "kvstash_store_blocks_written_total", "counter",
         "Blocks made durable in the disk tier.", c.written_blocks);
  Metric(&out, "kvstash_store_bytes_written_total", "counter",
         "KV bytes made durable in the disk tier (blocks written x block size).",
         static_cast<double>(c.written_blocks) * engine->kv_layout().block_bytes());
  Metric(&out, "kvstash_write_behind_queue_depth", "gauge", "Blocks waiting to be written.",
         c.write_queue_depth);
  Metric(&out, "kvstash_write_behind_dropped_total", "counter",
         "Blocks not persisted because the write-behind queue was full.", c.write_dropped);
  Metric(&out, "kvstash_write_behind_failed_total", "counter",
         "Blocks the store refused or failed to write (e.g. disk full).", c.write_failed);
  Metric(&out, "kvstash_cache_corrupt_blocks_total", "counter",
         "Blocks that failed verification (recomputed).", c.corrupt_blocks);
  // Recurrent-state snapshots (hybrid models; 0 for the others).
  Metric(&out, "kvstash_snapshots", "gauge", "Recurrent-state snapshots held in memory.",
         c.snapshots);
  Metric(&out, "kvstash_snapshot_memory_bytes", "gauge", "Bytes of those snapshots.",
         c.snapshot_bytes);
  Metric(&out, "kvstash_snapshots_taken_total", "counter", "Snapshots taken.", c.snapshot_puts);
  Head(&out, "kvstash_snapshot_hits_total", "counter",
       "Resumes from a snapshot, by the tier it came from.");
  Line(&out, "kvstash_snapshot_hits_total", "tier=\"memory\"",
       c.snapshot_hits - std::min(c.snapshot_hits, c.snapshot_disk_hits));
  Line(&out, "kvstash_snapshot_hits_total", "tier=\"disk\"", c.snapshot_disk_hits);
  Metric(&out, "kvstash_snapshot_bytes_read_total", "counter",
         "Snapshot bytes read from the disk tier.", c.snapshot_disk_bytes_read);
  Metric(&out, "kvstash_snapshots_written_total", "counter",
         "Snapshots made durable in the disk tier.", c.snapshot_written);
  Metric(&out, "kvstash_snapshot_corrupt_total", "counter",
         "Snapshots that failed verification (recomputed).", c.snapshot_corrupt);
  return out;
}

}  // namespace kvstash::daemon
