// storage_bench: how close does the block store get to the disk?
//
// For each payload size, on one filesystem and in one run:
//   raw_write  plain io_uring O_DIRECT writer: sequential, --qd in flight, into a preallocated
//              file, an fdatasync at the end of every slice
//   raw_read   plain io_uring O_DIRECT reader: random order, --qd in flight, reading the very
//              payload extents the store wrote; its QD1 latency
//   pread      one thread, O_DIRECT pread, random order (for comparison)
//   put        BlockStore::Put of every block, each slice timed until Flush() returns (durable
//              and indexed)
//   getmany    BlockStore::GetMany in batches of --batch, random order, cold (O_DIRECT), payloads
//              verified
//   get        single-block Get latency (p50/p99), alternating with raw QD1 reads
// put and getmany carry ratio_to_ceiling against raw_write and raw_read. Then the index overhead:
// RocksDB bytes and commit CPU per block, and the time to reopen a store of --index-blocks blocks.
//
// Fairness on a shared, noisy machine: raw and store alternate every --slice-bytes (ABBA order)
// within each of --repeats repetitions, so load from others and drift of the (virtual) disk land
// on both sides; both sides read the same disk blocks into the same buffers (see Arena). Each
// figure is the median over the repetitions, each ratio the ratio of the medians; min, max, the
// per-repetition figures and the per-slice ratios are in --json. Progress goes to stderr; a
// table, or JSON with --json, to stdout.
#include <fcntl.h>
#include <liburing.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "base/clock.h"
#include "base/logging.h"
#include "storage/aligned_buffer.h"
#include "storage/block_store.h"
#include "storage/format.h"
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
  unsigned repeats = 5;
  uint64_t pread_bytes = 256ull << 20;
  uint64_t slice_bytes = 256ull << 20;
  uint64_t index_blocks = 100'000;
  bool json = false;
  bool keep = false;
  bool quiet = false;
};

// The issue's bar and goal for put and getmany, as fractions of the raw ceiling.
constexpr double kBar = 0.8;
constexpr double kGoal = 0.95;

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

// I/O buffers: one allocation carved into `count` buffers of `each` bytes, 2 MiB-aligned and
// backed by transparent huge pages (AlignedBuffer does that for large buffers), as the engine's
// KV page pool that the cache reads into is one large allocation. A buffer is then one or two
// physically contiguous runs rather than a scatter of 4 KiB pages, and that matters: a virtio
// disk without indirect descriptors (this VM's: max_segments 254) spends a ring slot per
// segment, so one request over scattered pages can fill the ring, and throughput then depends on
// where the allocator happened to put each buffer. For the same reason the raw reader and
// GetMany read into the very same buffers.
class Arena {
 public:
  Arena(size_t count, size_t each) : mem_(count * each) {
    std::memset(mem_.data(), 0, mem_.size());  // fault it in before any clock runs
    for (size_t i = 0; i < count; ++i) spans_.emplace_back(mem_.data() + i * each, each);
  }
  size_t count() const { return spans_.size(); }
  std::byte* data(size_t i) { return spans_[i].data(); }
  const std::vector<std::span<std::byte>>& spans() const { return spans_; }

 private:
  AlignedBuffer mem_;
  std::vector<std::span<std::byte>> spans_;
};

// ---- the raw ceiling: plain liburing, nothing of the store ----

// A ring set up as the store sets up its own (COOP_TASKRUN and SUBMIT_ALL where the kernel has
// them), so that the ceiling differs from the store only by the store.
class Ring {
 public:
  explicit Ring(unsigned depth) {
    int rc = -EINVAL;
    for (unsigned flags : {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL, 0u}) {
      io_uring_params params;
      std::memset(&params, 0, sizeof(params));
      params.flags = flags;
      rc = io_uring_queue_init_params(depth, &ring_, &params);
      if (rc != -EINVAL) break;
    }
    if (rc < 0) Die(std::string("io_uring_queue_init: ") + std::strerror(-rc));
  }
  ~Ring() { io_uring_queue_exit(&ring_); }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  void Prep(bool write, int fd, void* buf, unsigned len, uint64_t off, uint64_t tag) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) Die("io_uring submission queue full");
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
  // Waits for at least one completion, then takes every one available; appends their tags.
  void Reap(unsigned expect_len, std::vector<uint64_t>* tags) {
    io_uring_cqe* cqe;
    int rc;
    do {
      rc = io_uring_wait_cqe(&ring_, &cqe);
    } while (rc == -EINTR || rc == -EAGAIN);
    if (rc < 0) Die(std::string("io_uring_wait_cqe: ") + std::strerror(-rc));
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      if (cqe->res != static_cast<int>(expect_len)) Die("raw I/O: " + std::to_string(cqe->res));
      tags->push_back(io_uring_cqe_get_data64(cqe));
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
  }

 private:
  io_uring ring_{};
};

// Runs operations 0..n-1 keeping up to `depth` in flight: every completion reaped is refilled at
// once and the refills go in one submission (as the store does). Buffers are taken least recently
// used first from `free` (indexes into the caller's buffers, at least `depth` of them, returned to
// it in completion order); prep(buffer, i) prepares operation i into the ring.
template <typename PrepFn>
void RunQueue(Ring& ring, unsigned depth, uint64_t n, unsigned len, std::deque<uint32_t>& free,
              PrepFn prep) {
  uint64_t next = 0, done = 0;
  auto issue = [&] {
    const uint32_t buf = free.front();
    free.pop_front();
    prep(buf, next++);
  };
  while (next < n && next < depth) issue();
  ring.Submit();
  std::vector<uint64_t> tags;
  while (done < n) {
    tags.clear();
    ring.Reap(len, &tags);
    done += tags.size();
    for (uint64_t t : tags) free.push_back(static_cast<uint32_t>(t));
    bool more = false;
    for (size_t k = 0; k < tags.size() && next < n; ++k) {
      issue();
      more = true;
    }
    if (more) ring.Submit();
  }
}

// A FIFO of buffer indexes 0..count-1.
std::deque<uint32_t> FreeList(size_t count) {
  std::deque<uint32_t> free(count);
  std::iota(free.begin(), free.end(), 0);
  return free;
}

// The raw writer: a file preallocated up front (unwritten extents, as a new store segment has).
// Write(a, b) writes blocks [a, b) in order, --qd in flight, then fdatasync; it returns the
// milliseconds that took.
class RawWriter {
 public:
  RawWriter(const Config& cfg, const std::string& path, uint64_t size, uint64_t n, Arena& bufs)
      : qd_(cfg.qd), size_(size), bufs_(bufs), free_(FreeList(bufs.count())), ring_(cfg.qd) {
    fs::remove(path);
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0644);
    if (fd_ < 0) Die("open " + path + " with O_DIRECT: " + std::strerror(errno));
    if (::fallocate(fd_, 0, 0, static_cast<off_t>(size * n)) != 0) Die("fallocate " + path);
  }
  ~RawWriter() { ::close(fd_); }

  double Write(uint64_t a, uint64_t b) {
    const unsigned len = static_cast<unsigned>(size_);
    Stopwatch sw;
    RunQueue(ring_, qd_, b - a, len, free_, [&](uint32_t buf, uint64_t i) {
      ring_.Prep(true, fd_, bufs_.data(buf), len, (a + i) * size_, buf);
    });
    if (::fdatasync(fd_) != 0) Die("fdatasync");
    return sw.ElapsedMs();
  }

 private:
  unsigned qd_;
  uint64_t size_;
  Arena& bufs_;
  std::deque<uint32_t> free_;
  Ring ring_;
  int fd_ = -1;
};

// Where the store put each payload, found by walking the records of its segment files with the
// format's own decoder (untimed), so that the raw reader reads the very disk blocks the store
// reads: the host's caches and the file layout then favour neither side.
struct PayloadMap {
  std::vector<std::string> files;
  std::vector<std::pair<uint32_t, uint64_t>> where;  // per block: file index, payload offset
};

PayloadMap MapPayloads(const std::string& store_dir, uint64_t n, uint64_t size) {
  namespace format = kvstash::storage::format;
  std::unordered_map<BlockKey, uint64_t, kvstash::storage::BlockKeyHash> block_of;
  for (uint64_t i = 0; i < n; ++i) block_of.emplace(kvstash::storage::testing::KeyFor(i), i);
  PayloadMap m;
  m.where.assign(n, {UINT32_MAX, 0});
  AlignedBuffer head(format::kIoAlignment);
  uint64_t found = 0;
  const std::string dir = store_dir + "/" + std::string(format::kSegmentDirName);
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!format::ParseSegmentFileName(e.path().filename().string())) continue;
    const std::string path = e.path().string();
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0) Die("open " + path + ": " + std::strerror(errno));
    const uint64_t file_bytes = fs::file_size(e.path());
    const auto file = static_cast<uint32_t>(m.files.size());
    m.files.push_back(path);
    for (uint64_t off = format::kSegmentHeaderBytes; off + head.size() <= file_bytes;) {
      if (::pread(fd, head.data(), head.size(), static_cast<off_t>(off)) !=
          static_cast<ssize_t>(head.size())) {
        break;
      }
      auto rh = format::PeekRecordHeader(head.span());
      if (!rh.ok()) break;  // the end of the written part
      if (auto it = block_of.find(rh->key); it != block_of.end()) {
        if (rh->payload_bytes != size) Die("unexpected record size in " + path);
        m.where[it->second] = {file, off + rh->header_area_bytes};
        ++found;
      }
      off += format::RecordBytes(rh->header_area_bytes, rh->payload_bytes);
    }
    ::close(fd);
  }
  if (found != n) Die("found " + std::to_string(found) + " of " + std::to_string(n) + " records");
  return m;
}

// The raw reader: plain io_uring reads of `size` bytes at the payload offsets of the store's
// records (not the 4 KiB record headers: reading those is part of the store's cost).
class RawReader {
 public:
  RawReader(const Config& cfg, PayloadMap map, uint64_t size, Arena& bufs)
      : qd_(cfg.qd),
        size_(size),
        map_(std::move(map)),
        bufs_(bufs),
        free_(FreeList(bufs.count())),
        ring_(cfg.qd),
        qd1_(1) {
    for (const std::string& path : map_.files) {
      int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
      if (fd < 0) Die("open " + path + ": " + std::strerror(errno));
      fds_.push_back(fd);
    }
  }
  ~RawReader() {
    for (int fd : fds_) ::close(fd);
  }

  // Reads the blocks order[a..b), --qd in flight; returns milliseconds.
  double Read(const std::vector<uint64_t>& order, uint64_t a, uint64_t b) {
    const unsigned len = static_cast<unsigned>(size_);
    Stopwatch sw;
    RunQueue(ring_, qd_, b - a, len, free_, [&](uint32_t buf, uint64_t i) {
      const auto& [file, off] = map_.where[order[a + i]];
      ring_.Prep(false, fds_[file], bufs_.data(buf), len, off, buf);
    });
    return sw.ElapsedMs();
  }
  // One read of one block at queue depth 1; returns microseconds.
  double ReadOneUs(uint64_t block) {
    const unsigned len = static_cast<unsigned>(size_);
    const auto& [file, off] = map_.where[block];
    std::vector<uint64_t> tags;
    Stopwatch one;
    qd1_.Prep(false, fds_[file], bufs_.data(0), len, off, 0);
    qd1_.Submit();
    qd1_.Reap(len, &tags);
    return one.ElapsedMs() * 1e3;
  }
  // The first m blocks of `order` with pread, one at a time; latencies appended to `lat`.
  // Returns MB/s.
  double Pread(const std::vector<uint64_t>& order, uint64_t m, std::vector<double>* lat) {
    const auto len = static_cast<ssize_t>(size_);
    Stopwatch sw;
    for (uint64_t i = 0; i < m; ++i) {
      const auto& [file, off] = map_.where[order[i]];
      Stopwatch one;
      if (::pread(fds_[file], bufs_.data(0), size_, static_cast<off_t>(off)) != len) {
        Die("pread");
      }
      lat->push_back(one.ElapsedMs() * 1e3);
    }
    return MBps(size_ * m, sw.ElapsedMs());
  }

 private:
  unsigned qd_;
  uint64_t size_;
  PayloadMap map_;
  Arena& bufs_;
  std::deque<uint32_t> free_;
  Ring ring_;
  Ring qd1_;
  std::vector<int> fds_;
};

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

// A fresh store for one write repetition. The constructor warms the staging-buffer pool
// (untimed); Put(a, b) puts blocks [a, b) and returns the milliseconds until Flush() returned
// (durable and indexed); Close() closes it (its data stays for the reads) and fills the index
// figures.
class StoreWriter {
 public:
  StoreWriter(const Config& cfg, const std::string& path, uint64_t size, uint64_t n)
      : path_(path), size_(size), n_(n) {
    fs::remove_all(path);
    auto o = StoreOptions(cfg, path, size * n);
    store_ = OpenStore(o);
    // A few distinct payloads (generating fresh random bytes per block would measure the
    // generator); every block still gets its own key, header and checksum.
    for (uint64_t i = 0; i < 4; ++i) {
      payloads_.push_back(kvstash::storage::testing::MakePayload({i, 2}, size));
    }
    // Warm-up, untimed: the store's staging buffers come from a pool that a running daemon has
    // long since filled; fill it here too (the raw writer's buffers are also touched beforehand).
    // Twice the pool's worth: the pool only grows to the peak of writes queued, and the queue
    // fills up only when Put outruns the disk for long enough.
    warm_ = std::min<uint64_t>(n, 2 * (o.max_queued_write_bytes / size + cfg.qd));
    for (uint64_t i = 0; i < warm_; ++i) PutOne(kvstash::storage::testing::KeyFor(i, 0xAAAA), i);
    if (!store_->Flush().ok()) Die("flush");
    before_ = store_->Stats();
  }

  double Put(uint64_t a, uint64_t b) {
    Stopwatch sw;
    for (uint64_t i = a; i < b; ++i) PutOne(kvstash::storage::testing::KeyFor(i), i);
    if (!store_->Flush().ok()) Die("flush");
    const double ms = sw.ElapsedMs();
    if (failed_) Die(std::to_string(failed_.load()) + " puts failed");
    return ms;
  }

  struct Figures {
    double index_bytes_per_block = 0, index_cpu_us_per_block = 0;
    bool direct_io = false, io_uring = false;
  };
  Figures Close() {
    Figures f;
    auto st = store_->Stats();
    if (st.blocks != n_ + warm_) Die("store holds " + std::to_string(st.blocks) + " blocks");
    f.direct_io = st.direct_io;
    f.io_uring = st.io_uring;
    f.index_cpu_us_per_block =
        static_cast<double>(st.index_commit_cpu_ns - before_.index_commit_cpu_ns) / 1e3 / n_;
    if (!store_->Close().ok()) Die("close");
    store_.reset();
    f.index_bytes_per_block = static_cast<double>(DirBytes(path_ + "/index")) / (n_ + warm_);
    return f;
  }

 private:
  void PutOne(const BlockKey& key, uint64_t i) {
    store_->Put(key, kvstash::storage::testing::MakeHeader(key), payloads_[i % payloads_.size()],
                [this](kvstash::Status s) { failed_ += !s.ok(); });
  }

  std::string path_;
  uint64_t size_, n_, warm_ = 0;
  std::unique_ptr<BlockStore> store_;
  std::vector<std::vector<std::byte>> payloads_;
  std::atomic<uint64_t> failed_{0};
  kvstash::storage::StoreStats before_;
};

// The store the last StoreWriter left, reopened (a close and reopen: nothing of it is in memory
// but the index), with GetMany destinations allocated and touched.
class StoreReader {
 public:
  // `dsts`: at least GetManyBatch() buffers of ReadBufferBytes(size), already faulted in (a
  // cache reads into memory it reuses).
  StoreReader(const Config& cfg, const std::string& path, uint64_t size, uint64_t n, Arena& dsts)
      : size_(size), store_(OpenStore(StoreOptions(cfg, path, size * n))) {
    batch_ = GetManyBatch(cfg, size, n);
    if (dsts.count() < batch_) Die("too few destination buffers");
    dsts_.assign(dsts.spans().begin(), dsts.spans().begin() + batch_);
    keys_.resize(batch_);
    results_.resize(batch_);
  }
  ~StoreReader() {
    if (!store_->Close().ok()) Die("close");
  }

  // --batch keys per call, but at most 512 MiB of destination buffers (and never below qd).
  static unsigned GetManyBatch(const Config& cfg, uint64_t size, uint64_t n) {
    const uint64_t by_memory = std::max<uint64_t>(cfg.qd, (512ull << 20) / size);
    return static_cast<unsigned>(std::min<uint64_t>({cfg.batch, by_memory, n}));
  }

  // Reads the blocks order[a..b) with GetMany, batch_ keys per call, every payload verified;
  // returns milliseconds.
  double GetMany(const std::vector<uint64_t>& order, uint64_t a, uint64_t b) {
    uint64_t hits = 0;
    Stopwatch sw;
    for (uint64_t start = a; start < b; start += batch_) {
      const size_t m = static_cast<size_t>(std::min<uint64_t>(batch_, b - start));
      for (size_t j = 0; j < m; ++j) {
        keys_[j] = kvstash::storage::testing::KeyFor(order[start + j]);
      }
      if (!store_->GetMany({keys_.data(), m}, {dsts_.data(), m}, {results_.data(), m}).ok()) {
        Die("getmany");
      }
      for (size_t j = 0; j < m; ++j) hits += results_[j].hit();
    }
    const double ms = sw.ElapsedMs();
    if (hits != b - a) Die("getmany: " + std::to_string(b - a - hits) + " misses");
    return ms;
  }

  // One single-block Get of block i; returns microseconds.
  double GetUs(uint64_t i) {
    const BlockKey key = kvstash::storage::testing::KeyFor(i);
    Stopwatch one;
    ReadResult res = store_->Get(key, dsts_[0]);
    const double us = one.ElapsedMs() * 1e3;
    if (!res.hit()) Die("get: " + res.status.ToString());
    return us;
  }

 private:
  uint64_t size_;
  std::unique_ptr<BlockStore> store_;
  unsigned batch_ = 0;
  std::vector<std::span<std::byte>> dsts_;
  std::vector<BlockKey> keys_;
  std::vector<ReadResult> results_;
};

// ---- one payload size: raw and store interleaved ----

// Median, extremes and every value of one measured figure.
struct Spread {
  std::vector<double> trials;
  double median() const { return Percentile(trials, 0.5); }
  double min() const {
    return trials.empty() ? 0 : *std::min_element(trials.begin(), trials.end());
  }
  double max() const {
    return trials.empty() ? 0 : *std::max_element(trials.begin(), trials.end());
  }
};

struct SizeResult {
  uint64_t size = 0, blocks = 0, write_slice_blocks = 0, read_slice_blocks = 0;
  unsigned batch = 0;
  // Per repetition (all n blocks): MB/s.
  Spread raw_write, raw_read, pread, put, getmany;
  // Per slice pair (a store slice over the raw slice beside it, equal bytes): MB/s ratio.
  Spread put_pair_ratio, getmany_pair_ratio;
  Spread index_bytes_per_block, index_cpu_us_per_block;
  double qd1_p50_us = 0, qd1_p99_us = 0, pread_p50_us = 0, pread_p99_us = 0;
  double get_p50_us = 0, get_p99_us = 0;
  bool direct_io = false, io_uring = false;
};

void Progress(const Config& cfg, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void Progress(const Config& cfg, const char* fmt, ...) {
  if (cfg.quiet) return;
  va_list ap;
  va_start(ap, fmt);
  std::fputs("storage_bench: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
}

// Runs raw(a, b) and store(a, b) (each returning milliseconds) over [0, n) in slices of `slice`
// blocks, alternating which side goes first (ABBA: raw first in even slices of even repetitions),
// so that load from other users of the machine and drift of the virtual disk land on both sides
// alike. Returns the two repetition totals as MB/s; appends the per-slice ratios to `pairs`.
template <typename RawFn, typename StoreFn>
std::pair<double, double> Interleave(unsigned rep, uint64_t n, uint64_t slice, uint64_t size,
                                     RawFn raw, StoreFn store, Spread* pairs) {
  double raw_ms = 0, store_ms = 0;
  uint64_t k = 0;
  for (uint64_t a = 0; a < n; a += slice, ++k) {
    const uint64_t b = std::min(n, a + slice);
    double r = 0, s = 0;
    if ((k + rep) % 2 == 0) {
      r = raw(a, b);
      s = store(a, b);
    } else {
      s = store(a, b);
      r = raw(a, b);
    }
    raw_ms += r;
    store_ms += s;
    pairs->trials.push_back(s > 0 ? r / s : 0);  // MB/s ratio of equal byte counts
  }
  return {MBps(size * n, raw_ms), MBps(size * n, store_ms)};
}

// Every repetition moves all n blocks through each side. First the write repetitions (a fresh
// raw file and a fresh store each), then the read repetitions over the store the last write
// repetition left: GetMany through the store, the raw reader straight at the same payload
// extents, each repetition in a new random order. Figures are per repetition; the reported ones
// are medians.
SizeResult MeasureSize(const Config& cfg, const std::string& label, uint64_t size, uint64_t n) {
  SizeResult r;
  r.size = size;
  r.blocks = n;
  const std::string raw_path = cfg.dir + "/raw-" + label + ".bin";
  const std::string store_dir = cfg.dir + "/store-" + label;
  const uint64_t slice = std::max<uint64_t>({cfg.qd, cfg.slice_bytes / size, 1});
  r.write_slice_blocks = std::min(slice, n);
  r.batch = StoreReader::GetManyBatch(cfg, size, n);
  // A read slice is whole GetMany calls, so the store is used as a caller would use it.
  r.read_slice_blocks = std::min(n, (slice + r.batch - 1) / r.batch * r.batch);

  // As many raw write buffers as the store's staging pool holds records (its default
  // max_queued_write_bytes), as many raw read buffers as GetMany gets destinations.
  const uint64_t staging = kvstash::storage::Options{}.max_queued_write_bytes;
  auto write_bufs = std::make_unique<Arena>(std::max<uint64_t>(cfg.qd, staging / size), size);
  for (size_t i = 0; i < write_bufs->count(); ++i) {
    kvstash::storage::testing::FillPayload({i, 1}, write_bufs->spans()[i]);
  }
  for (unsigned rep = 0; rep < cfg.repeats; ++rep) {
    RawWriter raw(cfg, raw_path, size, n, *write_bufs);
    StoreWriter store(cfg, store_dir, size, n);
    const size_t first_pair = r.put_pair_ratio.trials.size();
    auto [raw_mbps, put_mbps] = Interleave(
        rep, n, r.write_slice_blocks, size, [&](uint64_t a, uint64_t b) { return raw.Write(a, b); },
        [&](uint64_t a, uint64_t b) { return store.Put(a, b); }, &r.put_pair_ratio);
    StoreWriter::Figures f = store.Close();
    r.raw_write.trials.push_back(raw_mbps);
    r.put.trials.push_back(put_mbps);
    r.index_bytes_per_block.trials.push_back(f.index_bytes_per_block);
    r.index_cpu_us_per_block.trials.push_back(f.index_cpu_us_per_block);
    r.direct_io = f.direct_io;
    r.io_uring = f.io_uring;
    Spread pairs;
    pairs.trials.assign(r.put_pair_ratio.trials.begin() + first_pair,
                        r.put_pair_ratio.trials.end());
    Progress(cfg, "%s write %u/%u: raw %.0f MB/s, put %.0f MB/s (%.2f; slices %.2f-%.2f)",
             label.c_str(), rep + 1, cfg.repeats, raw_mbps, put_mbps, put_mbps / raw_mbps,
             pairs.min(), pairs.max());
  }

  fs::remove(raw_path);
  write_bufs.reset();
  Arena read_bufs(std::max<uint64_t>(cfg.qd, r.batch), BlockStore::ReadBufferBytes(size));
  RawReader raw(cfg, MapPayloads(store_dir, n, size), size, read_bufs);
  {
    StoreReader store(cfg, store_dir, size, n, read_bufs);
    const uint64_t pread_blocks = std::max<uint64_t>(1, std::min(n, cfg.pread_bytes / size));
    std::vector<double> pread_lat;
    std::vector<uint64_t> order(n), store_order(n);
    for (unsigned rep = 0; rep < cfg.repeats; ++rep) {
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), std::mt19937_64(1000 + rep));
      // The store reads the same permutation half a turn ahead: in each slice the two sides
      // read different blocks, so neither reads what the other has just pulled into a cache.
      for (uint64_t i = 0; i < n; ++i) store_order[i] = order[(i + n / 2) % n];
      const size_t first_pair = r.getmany_pair_ratio.trials.size();
      auto [raw_mbps, get_mbps] = Interleave(
          rep, n, r.read_slice_blocks, size,
          [&](uint64_t a, uint64_t b) { return raw.Read(order, a, b); },
          [&](uint64_t a, uint64_t b) { return store.GetMany(store_order, a, b); },
          &r.getmany_pair_ratio);
      r.raw_read.trials.push_back(raw_mbps);
      r.getmany.trials.push_back(get_mbps);
      double pread_mbps = 0;
      if (cfg.pread_bytes > 0) {
        pread_mbps = raw.Pread(order, pread_blocks, &pread_lat);
        r.pread.trials.push_back(pread_mbps);
      }
      Spread pairs;
      pairs.trials.assign(r.getmany_pair_ratio.trials.begin() + first_pair,
                          r.getmany_pair_ratio.trials.end());
      Progress(cfg,
               "%s read %u/%u: raw %.0f MB/s, getmany %.0f MB/s (%.2f; slices %.2f-%.2f), "
               "pread %.0f MB/s",
               label.c_str(), rep + 1, cfg.repeats, raw_mbps, get_mbps, get_mbps / raw_mbps,
               pairs.min(), pairs.max(), pread_mbps);
    }
    r.pread_p50_us = Percentile(pread_lat, 0.5);
    r.pread_p99_us = Percentile(pread_lat, 0.99);

    // Single-block latency: raw QD1 reads and store Gets of the same blocks, alternating.
    std::vector<double> raw_lat, get_lat;
    for (unsigned i = 0; i < cfg.latency_samples; ++i) {
      const uint64_t block = (static_cast<uint64_t>(i) * 7919 + 17) % n;
      if (i % 2 == 0) {
        raw_lat.push_back(raw.ReadOneUs(block));
        get_lat.push_back(store.GetUs(block));
      } else {
        get_lat.push_back(store.GetUs(block));
        raw_lat.push_back(raw.ReadOneUs(block));
      }
    }
    r.qd1_p50_us = Percentile(raw_lat, 0.5);
    r.qd1_p99_us = Percentile(raw_lat, 0.99);
    r.get_p50_us = Percentile(get_lat, 0.5);
    r.get_p99_us = Percentile(get_lat, 0.99);
  }
  if (!cfg.keep) fs::remove_all(store_dir);
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

json Throughput(const Spread& s) {
  return {{"MBps", s.median()},
          {"MBps_min", s.min()},
          {"MBps_max", s.max()},
          {"MBps_trials", s.trials}};
}

// Ratio of the medians (the headline), plus the ratios of the pairs measured side by side.
json Ratio(const Spread& store, const Spread& ceiling, const Spread& pairs) {
  const double ratio = ceiling.median() > 0 ? store.median() / ceiling.median() : 0;
  return {{"ratio_to_ceiling", ratio},      {"ratio_pairs_median", pairs.median()},
          {"ratio_pairs_min", pairs.min()}, {"ratio_pairs_max", pairs.max()},
          {"ratio_pairs", pairs.trials},    {"meets_bar", ratio >= kBar},
          {"meets_goal", ratio >= kGoal}};
}

std::vector<double> LoadAverage() {
  double l[3] = {0, 0, 0};
  if (getloadavg(l, 3) != 3) return {};
  return {l[0], l[1], l[2]};
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"storage_bench: BlockStore throughput and latency against the raw io_uring ceiling"};
  app.add_option("--dir", cfg.dir, "scratch directory on the filesystem under test")
      ->capture_default_str();
  app.add_option("--sizes", cfg.sizes, "payload sizes (K/M suffixes)")->capture_default_str();
  std::string bytes_str = "1G";
  app.add_option("--bytes", bytes_str, "bytes moved per trial and payload size")
      ->capture_default_str();
  app.add_option("--qd", cfg.qd, "I/O queue depth (raw and store)")->capture_default_str();
  app.add_option("--batch", cfg.batch, "keys per GetMany call (capped at 512 MiB of buffers)")
      ->capture_default_str();
  app.add_option("--latency-samples", cfg.latency_samples, "single-block gets timed")
      ->capture_default_str();
  app.add_option("--repeats", cfg.repeats,
                 "trials per figure, raw and store alternating (ABBA); report medians")
      ->capture_default_str()
      ->check(CLI::Range(1, 99));
  std::string pread_str = "256M";
  app.add_option("--pread-bytes", pread_str, "bytes read per pread trial (0: skip)")
      ->capture_default_str();
  std::string slice_str = "256M";
  app.add_option("--slice-bytes", slice_str,
                 "raw and store alternate every this many bytes (at least --qd blocks; reads: "
                 "whole GetMany batches)")
      ->capture_default_str();
  app.add_option("--index-blocks", cfg.index_blocks, "blocks for the index/reopen test (0: skip)")
      ->capture_default_str();
  app.add_flag("--json", cfg.json, "print JSON instead of a table");
  app.add_flag("--keep", cfg.keep, "keep the scratch directory");
  app.add_flag("--quiet", cfg.quiet, "no progress lines on stderr");
  CLI11_PARSE(app, argc, argv);
  cfg.bytes_per_size = ParseSize(bytes_str);
  cfg.pread_bytes = ParseSize(pread_str);
  cfg.slice_bytes = ParseSize(slice_str);

  const auto load_start = LoadAverage();
  Stopwatch total;
  fs::create_directories(cfg.dir);
  json rows = json::array();
  bool direct = false, uring = false, all_meet_bar = true;
  for (const std::string& s : cfg.sizes) {
    const uint64_t size = ParseSize(s);
    if (size == 0 || size % 4096 != 0) Die("sizes must be multiples of 4 KiB: " + s);
    const uint64_t n = std::max<uint64_t>(cfg.qd, cfg.bytes_per_size / size);
    Progress(cfg, "%s x %llu blocks, %u repeats ...", s.c_str(), static_cast<unsigned long long>(n),
             cfg.repeats);
    SizeResult r = MeasureSize(cfg, s, size, n);
    direct = r.direct_io;
    uring = r.io_uring;
    const json base = {{"payload_bytes", size}, {"blocks", n}, {"trials", cfg.repeats}};
    auto row = [&](const char* name, json extra) {
      json j = base;
      j["name"] = name;
      j.update(extra);
      rows.push_back(j);
    };
    json raw_read = Throughput(r.raw_read);
    raw_read.update({{"p50_us", r.qd1_p50_us}, {"p99_us", r.qd1_p99_us}});
    json pread = Throughput(r.pread);
    pread.update({{"p50_us", r.pread_p50_us}, {"p99_us", r.pread_p99_us}});
    json put = Throughput(r.put);
    put.update(Ratio(r.put, r.raw_write, r.put_pair_ratio));
    put.update({{"index_bytes_per_block", r.index_bytes_per_block.median()},
                {"index_cpu_us_per_block", r.index_cpu_us_per_block.median()}});
    json getmany = Throughput(r.getmany);
    getmany.update(Ratio(r.getmany, r.raw_read, r.getmany_pair_ratio));
    getmany["batch"] = r.batch;
    getmany["slice_blocks"] = r.read_slice_blocks;
    put["slice_blocks"] = r.write_slice_blocks;
    all_meet_bar = all_meet_bar && put["meets_bar"].get<bool>() && getmany["meets_bar"].get<bool>();
    row("raw_write", Throughput(r.raw_write));
    row("raw_read", raw_read);
    row("pread", pread);
    row("put", put);
    row("getmany", getmany);
    row("get", {{"p50_us", r.get_p50_us},
                {"p99_us", r.get_p99_us},
                {"ceiling_p50_us", r.qd1_p50_us},
                {"ceiling_p99_us", r.qd1_p99_us}});
    Progress(cfg, "%s: put %.2f, getmany %.2f of the ceiling (ratio of medians)", s.c_str(),
             put["ratio_to_ceiling"].get<double>(), getmany["ratio_to_ceiling"].get<double>());
  }
  json index = nullptr;
  if (cfg.index_blocks > 0) {
    Progress(cfg, "index: %llu blocks ...", static_cast<unsigned long long>(cfg.index_blocks));
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
              {"trial_order", "raw and store slices alternating, ABBA"},
              {"direct_io", direct},
              {"io_uring", uring},
              {"bytes_per_size", cfg.bytes_per_size},
              {"pread_bytes", cfg.pread_bytes},
              {"slice_bytes", cfg.slice_bytes},
              {"bar", kBar},
              {"goal", kGoal},
              {"all_meet_bar", all_meet_bar},
              {"cpus", std::thread::hardware_concurrency()},
              {"loadavg_start", load_start},
              {"loadavg_end", LoadAverage()},
              {"elapsed_s", total.ElapsedMs() / 1e3},
              {"rows", rows},
              {"index", index}};
  if (cfg.json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf(
      "storage_bench  dir=%s  qd=%u  batch=%u  repeats=%u (medians; raw and store alternating)"
      "  %s  %s\n",
      cfg.dir.c_str(), cfg.qd, cfg.batch, cfg.repeats, direct ? "O_DIRECT" : "buffered",
      uring ? "io_uring" : "sync I/O");
  std::printf("%-10s %9s %8s %8s %8s %9s %9s %7s %11s\n", "row", "payload", "MB/s", "min", "max",
              "p50 us", "p99 us", "ratio", "pairs");
  for (const json& r : rows) {
    auto num = [&](const char* k, const char* fmt) {
      char buf[32];
      if (!r.contains(k)) return std::string("-");
      std::snprintf(buf, sizeof(buf), fmt, r[k].get<double>());
      return std::string(buf);
    };
    std::string pairs = "-";
    if (r.contains("ratio_pairs_min")) {
      pairs = num("ratio_pairs_min", "%.2f") + "-" + num("ratio_pairs_max", "%.2f");
    }
    std::printf("%-10s %8lluK %8s %8s %8s %9s %9s %7s %11s\n", r["name"].get<std::string>().c_str(),
                static_cast<unsigned long long>(r["payload_bytes"].get<uint64_t>() >> 10),
                num("MBps", "%.0f").c_str(), num("MBps_min", "%.0f").c_str(),
                num("MBps_max", "%.0f").c_str(), num("p50_us", "%.0f").c_str(),
                num("p99_us", "%.0f").c_str(), num("ratio_to_ceiling", "%.2f").c_str(),
                pairs.c_str());
  }
  std::printf("bar %.2f: %s\n", kBar, all_meet_bar ? "met by every put and getmany row" : "MISSED");
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
