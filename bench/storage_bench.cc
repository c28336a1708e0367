// storage_bench: how close does the block store get to the disk?
//
// For each payload size, on one filesystem and in one run:
//   raw_write  plain io_uring O_DIRECT writer (sequential, --qd in flight, one fdatasync at end)
//   raw_read   plain io_uring O_DIRECT reader (random order, --qd in flight); its QD1 latency
//   pread      one thread, O_DIRECT pread, random order (for comparison)
//   put        BlockStore::Put of every block, then Flush (durable and indexed)
//   getmany    BlockStore::GetMany in batches of --batch, random order, cold (O_DIRECT)
//   get        single-block Get latency (p50/p99)
// put and getmany carry ratio_to_ceiling against raw_write and raw_read. Then the index overhead:
// RocksDB bytes and commit CPU per block, and the time to reopen a store of --index-blocks blocks.
// Prints a table, or JSON with --json.
#include <fcntl.h>
#include <liburing.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/logging.h"
#include "storage/aligned_buffer.h"
#include "storage/block_store.h"
#include "storage/testing/test_blocks.h"

namespace {

namespace fs = std::filesystem;
using kvstash::Stopwatch;
using kvstash::storage::AlignedBuffer;
using kvstash::storage::BlockKey;
using kvstash::storage::BlockStore;
using kvstash::storage::ReadResult;
using json = nlohmann::json;

struct Config {
  std::string dir = "storage-bench-data";
  std::vector<std::string> sizes = {"256K", "1M", "4M"};
  uint64_t bytes_per_size = 1ull << 30;
  unsigned qd = 32;
  unsigned batch = 256;
  unsigned latency_samples = 400;
  unsigned repeats = 3;
  uint64_t pread_bytes = 256ull << 20;
  uint64_t index_blocks = 100'000;
  bool json = false;
  bool keep = false;
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "storage_bench: %s\n", what.c_str());
  std::exit(1);
}

uint64_t ParseSize(const std::string& s) {
  char* end = nullptr;
  uint64_t v = std::strtoull(s.c_str(), &end, 10);
  switch (end && *end ? *end : ' ') {
    case 'K':
    case 'k':
      return v << 10;
    case 'M':
    case 'm':
      return v << 20;
    case 'G':
    case 'g':
      return v << 30;
    default:
      return v;
  }
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

double MBps(uint64_t bytes, double ms) { return ms > 0 ? bytes / (ms / 1e3) / 1e6 : 0; }

// ---- the raw ceiling: plain liburing, nothing of the store ----

class Ring {
 public:
  explicit Ring(unsigned depth) {
    if (int rc = io_uring_queue_init(depth, &ring_, 0); rc < 0) Die("io_uring_queue_init");
  }
  ~Ring() { io_uring_queue_exit(&ring_); }
  void Prep(bool write, int fd, void* buf, unsigned len, uint64_t off, uint64_t tag) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (write) {
      io_uring_prep_write(sqe, fd, buf, len, off);
    } else {
      io_uring_prep_read(sqe, fd, buf, len, off);
    }
    io_uring_sqe_set_data64(sqe, tag);
  }
  void Submit() {
    if (io_uring_submit(&ring_) < 0) Die("io_uring_submit");
  }
  // Waits for one completion; returns its tag.
  uint64_t WaitOne(unsigned expect_len) {
    io_uring_cqe* cqe;
    if (io_uring_wait_cqe(&ring_, &cqe) < 0) Die("io_uring_wait_cqe");
    if (cqe->res != static_cast<int>(expect_len)) Die("raw I/O: " + std::to_string(cqe->res));
    uint64_t tag = io_uring_cqe_get_data64(cqe);
    io_uring_cqe_seen(&ring_, cqe);
    return tag;
  }

 private:
  io_uring ring_{};
};

struct RawResult {
  double write_mbps = 0, read_mbps = 0, qd1_p50_us = 0, qd1_p99_us = 0;
  double pread_mbps = 0, pread_p50_us = 0, pread_p99_us = 0;
};

RawResult RunRaw(const Config& cfg, const std::string& path, uint64_t size, uint64_t n) {
  RawResult r;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0644);
  if (fd < 0) Die("open " + path + " with O_DIRECT: " + std::strerror(errno));
  if (::fallocate(fd, 0, 0, static_cast<off_t>(size * n)) != 0) Die("fallocate " + path);
  std::vector<AlignedBuffer> bufs;
  for (unsigned i = 0; i < cfg.qd; ++i) {
    bufs.emplace_back(size);
    kvstash::storage::testing::FillPayload({i, 1}, bufs.back().span());
  }
  const unsigned len = static_cast<unsigned>(size);
  {
    Ring ring(cfg.qd);
    Stopwatch sw;
    uint64_t next = 0, done = 0;
    while (next < n && next < cfg.qd) {
      ring.Prep(true, fd, bufs[next].data(), len, next * size, next);
      ++next;
    }
    ring.Submit();
    while (done < n) {
      uint64_t slot = ring.WaitOne(len) % cfg.qd;
      ++done;
      if (next < n) {
        ring.Prep(true, fd, bufs[slot].data(), len, next * size, next);
        ++next;
        ring.Submit();
      }
    }
    if (::fdatasync(fd) != 0) Die("fdatasync");
    r.write_mbps = MBps(size * n, sw.ElapsedMs());
  }
  std::vector<uint64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(1));
  {
    Ring ring(cfg.qd);
    Stopwatch sw;
    uint64_t next = 0, done = 0;
    while (next < n && next < cfg.qd) {
      ring.Prep(false, fd, bufs[next].data(), len, order[next] * size, next);
      ++next;
    }
    ring.Submit();
    while (done < n) {
      uint64_t slot = ring.WaitOne(len) % cfg.qd;
      ++done;
      if (next < n) {
        ring.Prep(false, fd, bufs[slot].data(), len, order[next] * size, next);
        ++next;
        ring.Submit();
      }
    }
    r.read_mbps = MBps(size * n, sw.ElapsedMs());
    std::vector<double> lat;
    for (unsigned i = 0; i < cfg.latency_samples; ++i) {
      Stopwatch one;
      ring.Prep(false, fd, bufs[0].data(), len, order[(i * 7919) % n] * size, 0);
      ring.Submit();
      ring.WaitOne(len);
      lat.push_back(one.ElapsedMs() * 1e3);
    }
    r.qd1_p50_us = Percentile(lat, 0.5);
    r.qd1_p99_us = Percentile(lat, 0.99);
  }
  {
    const uint64_t m = std::max<uint64_t>(1, std::min(n, cfg.pread_bytes / size));
    std::vector<double> lat;
    Stopwatch sw;
    for (uint64_t i = 0; i < m; ++i) {
      Stopwatch one;
      if (::pread(fd, bufs[0].data(), len, static_cast<off_t>(order[i] * size)) != len) {
        Die("pread");
      }
      lat.push_back(one.ElapsedMs() * 1e3);
    }
    r.pread_mbps = MBps(size * m, sw.ElapsedMs());
    r.pread_p50_us = Percentile(lat, 0.5);
    r.pread_p99_us = Percentile(lat, 0.99);
  }
  ::close(fd);
  fs::remove(path);
  return r;
}

// ---- the store ----

kvstash::storage::Options StoreOptions(const Config& cfg, const std::string& path, uint64_t bytes) {
  kvstash::storage::Options o;
  o.path = path;
  o.segment_bytes = 256ull << 20;
  o.capacity_bytes = std::max<uint64_t>(2 * bytes, 1ull << 30);
  o.read_queue_depth = cfg.qd;
  o.write_queue_depth = cfg.qd;
  o.logger = kvstash::NullLogger();
  return o;
}

std::unique_ptr<BlockStore> OpenStore(const kvstash::storage::Options& o) {
  auto r = BlockStore::Open(o);
  if (!r.ok()) Die(r.status().ToString());
  return std::move(r).value();
}

uint64_t DirBytes(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) n += e.file_size();
  }
  return n;
}

struct StoreResult {
  double put_mbps = 0, get_mbps = 0, get_p50_us = 0, get_p99_us = 0;
  double index_bytes_per_block = 0, index_cpu_us_per_block = 0;
  bool direct_io = false, io_uring = false;
};

StoreResult RunStore(const Config& cfg, const std::string& path, uint64_t size, uint64_t n) {
  StoreResult r;
  auto o = StoreOptions(cfg, path, size * n);
  auto store = OpenStore(o);
  // A few distinct payloads (generating fresh random bytes per block would measure the
  // generator); every block still gets its own key, header and checksum.
  std::vector<std::vector<std::byte>> payloads;
  for (uint64_t i = 0; i < 4; ++i) {
    payloads.push_back(kvstash::storage::testing::MakePayload({i, 2}, size));
  }
  std::atomic<uint64_t> failed{0};
  // Warm-up, untimed: the store's staging buffers come from a pool that a running daemon has
  // long since filled; fill it here too (the raw writer's buffers are also touched beforehand).
  const uint64_t warm = std::min<uint64_t>(n, o.max_queued_write_bytes / size + cfg.qd);
  for (uint64_t i = 0; i < warm; ++i) {
    BlockKey key = kvstash::storage::testing::KeyFor(i, /*salt=*/0xAAAA);
    store->Put(key, kvstash::storage::testing::MakeHeader(key), payloads[i % payloads.size()],
               [&failed](kvstash::Status s) { failed += !s.ok(); });
  }
  if (!store->Flush().ok()) Die("flush");
  const auto before = store->Stats();
  Stopwatch sw;
  for (uint64_t i = 0; i < n; ++i) {
    BlockKey key = kvstash::storage::testing::KeyFor(i);
    store->Put(key, kvstash::storage::testing::MakeHeader(key), payloads[i % payloads.size()],
               [&failed](kvstash::Status s) { failed += !s.ok(); });
  }
  if (!store->Flush().ok()) Die("flush");
  r.put_mbps = MBps(size * n, sw.ElapsedMs());
  if (failed) Die(std::to_string(failed.load()) + " puts failed");
  auto st = store->Stats();
  r.direct_io = st.direct_io;
  r.io_uring = st.io_uring;
  r.index_cpu_us_per_block =
      static_cast<double>(st.index_commit_cpu_ns - before.index_commit_cpu_ns) / 1e3 / n;
  if (!store->Close().ok()) Die("close");
  r.index_bytes_per_block = static_cast<double>(DirBytes(path + "/index")) / (n + warm);

  store = OpenStore(o);
  std::vector<uint64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(2));
  // --batch keys per call, but at most 512 MiB of destination buffers (and never below qd).
  const uint64_t by_memory = std::max<uint64_t>(cfg.qd, (512ull << 20) / size);
  const unsigned batch = static_cast<unsigned>(std::min<uint64_t>({cfg.batch, by_memory, n}));
  std::vector<AlignedBuffer> bufs;
  std::vector<std::span<std::byte>> dsts;
  for (unsigned i = 0; i < batch; ++i) bufs.emplace_back(BlockStore::ReadBufferBytes(size));
  // Staging memory is reused in a real cache: fault it in before the clock starts, as the raw
  // reader's buffers are.
  for (auto& b : bufs) {
    std::memset(b.data(), 0, b.size());
    dsts.push_back(b.span());
  }
  std::vector<BlockKey> keys(batch);
  std::vector<ReadResult> results(batch);
  uint64_t hits = 0;
  sw.Reset();
  for (uint64_t start = 0; start < n; start += batch) {
    const size_t m = static_cast<size_t>(std::min<uint64_t>(batch, n - start));
    for (size_t j = 0; j < m; ++j) keys[j] = kvstash::storage::testing::KeyFor(order[start + j]);
    if (!store->GetMany({keys.data(), m}, {dsts.data(), m}, {results.data(), m}).ok()) {
      Die("getmany");
    }
    for (size_t j = 0; j < m; ++j) hits += results[j].hit();
  }
  r.get_mbps = MBps(size * n, sw.ElapsedMs());
  if (hits != n) Die("getmany: " + std::to_string(n - hits) + " misses");
  std::vector<double> lat;
  for (unsigned i = 0; i < cfg.latency_samples; ++i) {
    BlockKey key = kvstash::storage::testing::KeyFor(order[(i * 7919) % n]);
    Stopwatch one;
    ReadResult res = store->Get(key, bufs[0].span());
    lat.push_back(one.ElapsedMs() * 1e3);
    if (!res.hit()) Die("get: " + res.status.ToString());
  }
  r.get_p50_us = Percentile(lat, 0.5);
  r.get_p99_us = Percentile(lat, 0.99);
  if (!store->Close().ok()) Die("close");
  return r;
}

struct IndexResult {
  uint64_t blocks = 0;
  double rocksdb_bytes_per_block = 0, index_cpu_us_per_block = 0, put_cpu_us_per_block = 0;
  double reopen_ms = 0;
};

double ProcessCpuUs() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec * 1e6 + ru.ru_utime.tv_usec + ru.ru_stime.tv_sec * 1e6 +
         ru.ru_stime.tv_usec;
}

IndexResult RunIndex(const Config& cfg, const std::string& path) {
  IndexResult r;
  r.blocks = cfg.index_blocks;
  const uint64_t size = 4096;  // smallest record: 4 KiB header + 4 KiB payload
  auto o = StoreOptions(cfg, path, r.blocks * 2 * size);
  auto store = OpenStore(o);
  std::vector<std::byte> payload = kvstash::storage::testing::MakePayload({9, 9}, size);
  const double cpu0 = ProcessCpuUs();
  for (uint64_t i = 0; i < r.blocks; ++i) {
    BlockKey key = kvstash::storage::testing::KeyFor(i, 77);
    store->Put(key, kvstash::storage::testing::MakeHeader(key), payload, nullptr);
  }
  if (!store->Flush().ok()) Die("flush");
  r.put_cpu_us_per_block = (ProcessCpuUs() - cpu0) / r.blocks;
  auto st = store->Stats();
  if (st.blocks != r.blocks) Die("index run stored " + std::to_string(st.blocks) + " blocks");
  r.index_cpu_us_per_block = static_cast<double>(st.index_commit_cpu_ns) / 1e3 / r.blocks;
  if (!store->Close().ok()) Die("close");
  store.reset();
  r.rocksdb_bytes_per_block = static_cast<double>(DirBytes(path + "/index")) / r.blocks;
  Stopwatch sw;
  store = OpenStore(o);
  r.reopen_ms = sw.ElapsedMs();
  if (store->Stats().blocks != r.blocks) Die("reopen lost blocks");
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"storage_bench: BlockStore throughput and latency against the raw io_uring ceiling"};
  app.add_option("--dir", cfg.dir, "scratch directory on the filesystem under test")
      ->capture_default_str();
  app.add_option("--sizes", cfg.sizes, "payload sizes (K/M suffixes)")->capture_default_str();
  std::string bytes_str = "1G";
  app.add_option("--bytes", bytes_str, "bytes written per payload size")->capture_default_str();
  app.add_option("--qd", cfg.qd, "I/O queue depth (raw and store)")->capture_default_str();
  app.add_option("--batch", cfg.batch, "keys per GetMany call (capped at 512 MiB of buffers)")
      ->capture_default_str();
  app.add_option("--latency-samples", cfg.latency_samples, "single-block gets timed")
      ->capture_default_str();
  app.add_option("--repeats", cfg.repeats,
                 "alternate raw and store measurements this many times; report medians")
      ->capture_default_str()
      ->check(CLI::Range(1, 99));
  app.add_option("--index-blocks", cfg.index_blocks, "blocks for the index/reopen test (0: skip)")
      ->capture_default_str();
  app.add_flag("--json", cfg.json, "print JSON instead of a table");
  app.add_flag("--keep", cfg.keep, "keep the scratch directory");
  CLI11_PARSE(app, argc, argv);
  cfg.bytes_per_size = ParseSize(bytes_str);

  fs::create_directories(cfg.dir);
  json rows = json::array();
  bool direct = false, uring = false;
  for (const std::string& s : cfg.sizes) {
    const uint64_t size = ParseSize(s);
    if (size == 0 || size % 4096 != 0) Die("sizes must be multiples of 4 KiB: " + s);
    const uint64_t n = std::max<uint64_t>(cfg.qd, cfg.bytes_per_size / size);
    if (!cfg.json)
      std::fprintf(stderr, "storage_bench: %s x %llu ...\n", s.c_str(),
                   static_cast<unsigned long long>(n));
    // Raw and store runs alternate so that interference from other users of the disk lands on
    // both; each figure is the median over the repeats.
    std::vector<RawResult> raws;
    std::vector<StoreResult> stores;
    for (unsigned rep = 0; rep < cfg.repeats; ++rep) {
      raws.push_back(RunRaw(cfg, cfg.dir + "/raw.bin", size, n));
      const std::string store_dir = cfg.dir + "/store-" + s;
      fs::remove_all(store_dir);
      stores.push_back(RunStore(cfg, store_dir, size, n));
      if (!cfg.keep) fs::remove_all(store_dir);
    }
    auto med = [](auto& v, auto field) {
      std::vector<double> x;
      for (const auto& e : v) x.push_back(e.*field);
      return Percentile(x, 0.5);
    };
    RawResult raw;
    raw.write_mbps = med(raws, &RawResult::write_mbps);
    raw.read_mbps = med(raws, &RawResult::read_mbps);
    raw.qd1_p50_us = med(raws, &RawResult::qd1_p50_us);
    raw.qd1_p99_us = med(raws, &RawResult::qd1_p99_us);
    raw.pread_mbps = med(raws, &RawResult::pread_mbps);
    raw.pread_p50_us = med(raws, &RawResult::pread_p50_us);
    raw.pread_p99_us = med(raws, &RawResult::pread_p99_us);
    StoreResult st = stores.back();
    st.put_mbps = med(stores, &StoreResult::put_mbps);
    st.get_mbps = med(stores, &StoreResult::get_mbps);
    st.get_p50_us = med(stores, &StoreResult::get_p50_us);
    st.get_p99_us = med(stores, &StoreResult::get_p99_us);
    st.index_bytes_per_block = med(stores, &StoreResult::index_bytes_per_block);
    st.index_cpu_us_per_block = med(stores, &StoreResult::index_cpu_us_per_block);
    direct = st.direct_io;
    uring = st.io_uring;
    const json base = {{"payload_bytes", size}, {"blocks", n}};
    auto row = [&](const char* name, json extra) {
      json j = base;
      j["name"] = name;
      j.update(extra);
      rows.push_back(j);
    };
    row("raw_write", {{"MBps", raw.write_mbps}});
    row("raw_read",
        {{"MBps", raw.read_mbps}, {"p50_us", raw.qd1_p50_us}, {"p99_us", raw.qd1_p99_us}});
    row("pread",
        {{"MBps", raw.pread_mbps}, {"p50_us", raw.pread_p50_us}, {"p99_us", raw.pread_p99_us}});
    row("put", {{"MBps", st.put_mbps},
                {"ratio_to_ceiling", st.put_mbps / raw.write_mbps},
                {"index_bytes_per_block", st.index_bytes_per_block},
                {"index_cpu_us_per_block", st.index_cpu_us_per_block}});
    row("getmany", {{"MBps", st.get_mbps}, {"ratio_to_ceiling", st.get_mbps / raw.read_mbps}});
    row("get", {{"p50_us", st.get_p50_us},
                {"p99_us", st.get_p99_us},
                {"ceiling_p50_us", raw.qd1_p50_us},
                {"ceiling_p99_us", raw.qd1_p99_us}});
  }
  json index = nullptr;
  if (cfg.index_blocks > 0) {
    const std::string dir = cfg.dir + "/index-store";
    fs::remove_all(dir);
    IndexResult ir = RunIndex(cfg, dir);
    if (!cfg.keep) fs::remove_all(dir);
    index = {{"blocks", ir.blocks},
             {"rocksdb_bytes_per_block", ir.rocksdb_bytes_per_block},
             {"index_cpu_us_per_block", ir.index_cpu_us_per_block},
             {"put_cpu_us_per_block", ir.put_cpu_us_per_block},
             {"reopen_ms", ir.reopen_ms}};
  }
  if (!cfg.keep) fs::remove_all(cfg.dir);

  json out = {{"dir", cfg.dir},
              {"qd", cfg.qd},
              {"batch", cfg.batch},
              {"repeats", cfg.repeats},
              {"direct_io", direct},
              {"io_uring", uring},
              {"bytes_per_size", cfg.bytes_per_size},
              {"rows", rows},
              {"index", index}};
  if (cfg.json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("storage_bench  dir=%s  qd=%u  batch=%u  repeats=%u (medians)  %s  %s\n",
              cfg.dir.c_str(), cfg.qd, cfg.batch, cfg.repeats, direct ? "O_DIRECT" : "buffered",
              uring ? "io_uring" : "sync I/O");
  std::printf("%-10s %9s %10s %9s %9s %9s\n", "row", "payload", "MB/s", "p50 us", "p99 us",
              "ratio");
  for (const json& r : rows) {
    auto num = [&](const char* k, const char* fmt) {
      static char buf[32];
      if (!r.contains(k)) return std::string("-");
      std::snprintf(buf, sizeof(buf), fmt, r[k].get<double>());
      return std::string(buf);
    };
    std::printf("%-10s %8lluK %10s %9s %9s %9s\n", r["name"].get<std::string>().c_str(),
                static_cast<unsigned long long>(r["payload_bytes"].get<uint64_t>() >> 10),
                num("MBps", "%.0f").c_str(), num("p50_us", "%.0f").c_str(),
                num("p99_us", "%.0f").c_str(), num("ratio_to_ceiling", "%.2f").c_str());
  }
  if (!index.is_null()) {
    std::printf(
        "index: %llu blocks: RocksDB %.1f bytes/block, commit CPU %.2f us/block, "
        "Put CPU %.2f us/block (process), reopen %.0f ms\n",
        static_cast<unsigned long long>(index["blocks"].get<uint64_t>()),
        index["rocksdb_bytes_per_block"].get<double>(),
        index["index_cpu_us_per_block"].get<double>(), index["put_cpu_us_per_block"].get<double>(),
        index["reopen_ms"].get<double>());
  }
  return 0;
}
