// Crash tests: a child process (tests/storage_extra/storage_crash_writer.cc) writes continuously
// and is SIGKILLed at random moments, or kills itself at a chosen point of the write path. After
// every kill the store is reopened here and must (1) find every block whose Put was acknowledged,
// (2) return exactly the bytes that were written for every block it lists, (3) keep working.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>
#include <unordered_set>

#include "storage/aligned_buffer.h"
#include "storage/block_store.h"
#include "storage/format.h"
#include "storage/testing/test_blocks.h"

namespace kvstash::storage {
namespace {

using storage::testing::KeyFor;
using storage::testing::MakeHeader;
using storage::testing::PayloadMatches;
using storage::testing::TempDir;

enum AckKind : uint64_t { kAcked = 1, kEraseIntent = 2, kOpened = 3, kDone = 4 };
struct Ack {
  uint64_t id, kind;
};

std::string ChildPath() { return std::string(KVSTASH_BIN_DIR) + "/storage_crash_writer"; }

class Child {
 public:
  bool Start(std::vector<std::string> args) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return false;
    ::fcntl(fds[0], F_SETPIPE_SZ, 1 << 20);  // acks must never block the child
    args.insert(args.begin(), ChildPath());
    args.push_back("--ack-fd");
    args.push_back("3");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], 3);  // the duplicate does not inherit O_CLOEXEC
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    read_fd_ = fds[0];
    return pid_ > 0;
  }
  void Kill() { ::kill(pid_, SIGKILL); }
  int Wait() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
  }
  // The next record the child reports; false at end of pipe.
  bool Next(Ack* a) {
    size_t have = 0;
    char* p = reinterpret_cast<char*>(a);
    while (have < sizeof(*a)) {
      ssize_t n = ::read(read_fd_, p + have, sizeof(*a) - have);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      have += static_cast<size_t>(n);
    }
    return true;
  }
  // Everything the child reported (call after it exited: reads to end of pipe).
  std::vector<Ack> Acks() {
    std::vector<Ack> acks;
    Ack a;
    size_t have = 0;
    char* p = reinterpret_cast<char*>(&a);
    for (;;) {
      ssize_t n = ::read(read_fd_, p + have, sizeof(a) - have);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      have += static_cast<size_t>(n);
      if (have == sizeof(a)) {
        acks.push_back(a);
        have = 0;
      }
    }
    ::close(read_fd_);
    return acks;
  }

 private:
  pid_t pid_ = -1;
  int read_fd_ = -1;
};

Options StoreOptions(const std::string& path) {
  Options o;
  o.path = path;
  o.segment_bytes = 1 << 20;
  o.capacity_bytes = 1ull << 30;
  o.logger = NullLogger();
  return o;
}

// Reads every listed block back in batches; fails the test on any block that does not verify.
// Returns the listed keys.
std::unordered_set<BlockKey, BlockKeyHash> VerifyEverything(BlockStore& store) {
  std::vector<BlockKey> keys = store.ListKeys();
  for (size_t start = 0; start < keys.size(); start += 32) {
    const size_t n = std::min<size_t>(32, keys.size() - start);
    std::vector<AlignedBuffer> bufs;
    std::vector<std::span<std::byte>> dsts;
    for (size_t i = 0; i < n; ++i) {
      bufs.emplace_back(BlockStore::ReadBufferBytes(*store.PayloadBytes(keys[start + i])));
    }
    for (auto& b : bufs) dsts.push_back(b.span());
    std::vector<ReadResult> results(n);
    EXPECT_TRUE(store.GetMany({keys.data() + start, n}, dsts, results).ok());
    for (size_t i = 0; i < n; ++i) {
      const BlockKey& key = keys[start + i];
      EXPECT_TRUE(results[i].hit()) << key.ToHex() << ": " << results[i].status.ToString();
      if (!results[i].hit()) continue;
      EXPECT_TRUE(PayloadMatches(key, {bufs[i].data(), results[i].payload_bytes})) << key.ToHex();
      EXPECT_EQ(results[i].header, MakeHeader(key)) << key.ToHex();
    }
  }
  return {keys.begin(), keys.end()};
}

// Puts one fresh block and reads it back: the store still works after recovery.
void ExpectWritable(BlockStore& store, uint64_t id) {
  auto payload = storage::testing::MakePayload(KeyFor(id), 10'000 + id % 5000);
  ASSERT_TRUE(store.Put(KeyFor(id), MakeHeader(KeyFor(id)), payload).get().ok());
  AlignedBuffer buf(BlockStore::ReadBufferBytes(payload.size()));
  ReadResult r = store.Get(KeyFor(id), buf.span());
  ASSERT_TRUE(r.hit()) << r.status.ToString();
  EXPECT_TRUE(PayloadMatches(KeyFor(id), {buf.data(), payload.size()}));
}

uint64_t Seed() {
  if (const char* s = std::getenv("KVSTASH_CRASH_SEED")) return std::strtoull(s, nullptr, 10);
  return 20240601;
}

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(ChildPath())) {
      GTEST_FAIL() << ChildPath() << " is missing: build the storage_crash_writer target";
    }
    dir_ = std::make_unique<TempDir>(storage::testing::RealDiskTestRoot(), "crash");
    ASSERT_TRUE(dir_->ok());
  }
  std::unique_ptr<TempDir> dir_;
};

TEST_F(CrashTest, RandomKillsNeverLoseAcknowledgedBlocksOrReturnWrongBytes) {
  const std::string path = dir_->Sub("cache");
  const uint64_t seed = Seed();
  std::mt19937_64 rng(seed);
  std::unordered_set<BlockKey, BlockKeyHash> expected;  // must be there after the next reopen
  constexpr int kKills = 50;
  int kills = 0, completed = 0;
  for (uint64_t round = 0; kills < kKills; ++round) {
    SCOPED_TRACE("seed " + std::to_string(seed) + " round " + std::to_string(round));
    const uint64_t start = round * 100'000;
    Child child;
    ASSERT_TRUE(
        child.Start({"--dir", path, "--start", std::to_string(start), "--count", "20000",
                     "--max-payload", "65536", "--erase-every", "20", "--flush-every", "50"}));
    // Anywhere from during Open to well into writing.
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 250));
    child.Kill();
    const int status = child.Wait();
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
      ++kills;
    } else {
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
      ++completed;
    }
    std::set<uint64_t> erase_intents;
    for (const Ack& a : child.Acks()) {
      if (a.kind == kAcked) expected.insert(KeyFor(a.id));
      if (a.kind == kEraseIntent) erase_intents.insert(a.id);
    }
    for (uint64_t id : erase_intents) expected.erase(KeyFor(id));  // may or may not be gone

    auto opened = BlockStore::Open(StoreOptions(path));
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    BlockStore& store = **opened;
    auto listed = VerifyEverything(store);
    size_t missing = 0;
    for (const BlockKey& k : expected) missing += !listed.contains(k);
    EXPECT_EQ(missing, 0u) << "acknowledged blocks lost";
    StoreStats st = store.Stats();
    EXPECT_EQ(st.corrupt_records, 0u);
    EXPECT_EQ(st.read_errors, 0u);
    EXPECT_EQ(st.evicted_segments, 0u);
    EXPECT_TRUE(store.ListSessions().ok());
    ExpectWritable(store, 1'000'000'000 + round);
    if (HasFailure()) return;
    expected = std::move(listed);
    expected.insert(KeyFor(1'000'000'000 + round));
    const bool wipe = st.disk_bytes > (48u << 20);
    ASSERT_TRUE(store.Close().ok());
    if (wipe) {  // keep the test fast and far below the budget (no eviction here)
      std::filesystem::remove_all(path);
      expected.clear();
    }
  }
  std::printf("[ crash    ] %d kills, %d runs completed before their kill\n", kills, completed);
}

TEST_F(CrashTest, RandomKillsUnderEvictionNeverReturnWrongBytes) {
  const std::string path = dir_->Sub("cache");
  std::mt19937_64 rng(Seed() + 1);
  int kills = 0;
  for (uint64_t round = 0; kills < 12; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    Child child;
    ASSERT_TRUE(child.Start({"--dir", path, "--start", std::to_string(round * 100'000), "--count",
                             "20000", "--capacity", std::to_string(6 << 20), "--max-payload",
                             "100000", "--erase-every", "15"}));
    std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 250));
    child.Kill();
    const int status = child.Wait();
    kills += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    child.Acks();

    Options o = StoreOptions(path);
    o.capacity_bytes = 6 << 20;
    auto opened = BlockStore::Open(o);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    VerifyEverything(**opened);
    StoreStats st = (*opened)->Stats();
    EXPECT_EQ(st.corrupt_records, 0u);
    EXPECT_LE(st.disk_bytes, o.capacity_bytes);
    ExpectWritable(**opened, 2'000'000'000 + round);
    ASSERT_TRUE((*opened)->Close().ok());
    if (HasFailure()) return;
    // The children wrote far more than the budget; what is left on disk stays within it.
    uint64_t on_disk = 0;
    for (const auto& e : std::filesystem::directory_iterator(path + "/segments")) {
      on_disk += e.file_size();
    }
    EXPECT_LE(on_disk, o.capacity_bytes);
  }
}

TEST_F(CrashTest, CrashAfterPayloadSyncBeforeIndexWriteRecoversTheTail) {
  const std::string path = dir_->Sub("cache");
  Child child;
  ASSERT_TRUE(child.Start({"--dir", path, "--count", "100000", "--max-payload", "65536",
                           "--crash-at", "segment_synced:5"}));
  const int status = child.Wait();
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
  std::unordered_set<BlockKey, BlockKeyHash> acked;
  for (const Ack& a : child.Acks()) {
    if (a.kind == kAcked) acked.insert(KeyFor(a.id));
  }
  ASSERT_FALSE(acked.empty());

  auto opened = BlockStore::Open(StoreOptions(path));
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  BlockStore& store = **opened;
  EXPECT_GE(store.Stats().recovered_records, 1u);
  auto listed = VerifyEverything(store);
  for (const BlockKey& k : acked) EXPECT_TRUE(listed.contains(k)) << k.ToHex();
  EXPECT_GT(listed.size(), acked.size());  // the synced-but-unindexed batch came back
  ExpectWritable(store, 3'000'000'000);
}

TEST_F(CrashTest, ADirectoryInUseByAnotherProcessIsRefused) {
  const std::string path = dir_->Sub("cache");
  Child child;
  ASSERT_TRUE(child.Start({"--dir", path, "--count", "100000000", "--max-payload", "4096"}));
  Ack a{};
  ASSERT_TRUE(child.Next(&a));
  ASSERT_EQ(a.kind, kOpened);
  auto second = BlockStore::Open(StoreOptions(path));
  EXPECT_EQ(second.status().code(), StatusCode::kBusy) << second.status().ToString();
  child.Kill();
  child.Wait();
  child.Acks();
  auto third = BlockStore::Open(StoreOptions(path));  // the lock died with its holder
  ASSERT_TRUE(third.ok()) << third.status().ToString();
  VerifyEverything(**third);
}

// Scans a segment file the way recovery does; returns (offset, key) of every valid record.
std::vector<std::pair<uint64_t, BlockKey>> ScanSegmentFile(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::pair<uint64_t, BlockKey>> out;
  uint64_t off = format::kSegmentHeaderBytes;
  while (off + format::kIoAlignment <= bytes.size()) {
    std::span<const std::byte> rest(reinterpret_cast<const std::byte*>(bytes.data()) + off,
                                    bytes.size() - off);
    auto peek = format::PeekRecordHeader(rest);
    if (!peek.ok() || peek->header_area_bytes > rest.size()) break;
    auto h = format::DecodeRecordHeader(rest.first(peek->header_area_bytes), nullptr);
    if (!h.ok()) break;
    const uint64_t size = format::RecordBytes(h->header_area_bytes, h->payload_bytes);
    if (off + size > bytes.size()) break;
    out.emplace_back(off, h->key);
    off += size;
  }
  return out;
}

TEST_F(CrashTest, TornTailIsCutAtTheFirstRecordThatDoesNotVerify) {
  const std::string path = dir_->Sub("cache");
  Child child;
  ASSERT_TRUE(
      child.Start({"--dir", path, "--count", "100000", "--max-payload", "30000", "--segment-bytes",
                   std::to_string(8 << 20), "--crash-at", "segment_synced:4"}));
  const int status = child.Wait();
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
  std::unordered_set<BlockKey, BlockKeyHash> acked;
  for (const Ack& a : child.Acks()) {
    if (a.kind == kAcked) acked.insert(KeyFor(a.id));
  }
  // The unacknowledged records are the batch that was synced but never indexed: the tail.
  // The batch may span two segments (the one being sealed and the next): damage the longer tail;
  // the unacknowledged records of the other are synced and valid, and are recovered too.
  std::string seg_file;
  std::vector<std::pair<uint64_t, BlockKey>> tail;
  std::vector<BlockKey> unacked;
  for (const auto& e : std::filesystem::directory_iterator(path + "/segments")) {
    if (e.path().extension() != ".seg") continue;
    std::vector<std::pair<uint64_t, BlockKey>> t;
    for (const auto& rec : ScanSegmentFile(e.path())) {
      if (!acked.contains(rec.second)) {
        t.push_back(rec);
        unacked.push_back(rec.second);
      }
    }
    if (t.size() > tail.size()) {
      tail = t;
      seg_file = e.path();
    }
  }
  ASSERT_GE(tail.size(), 2u) << "the crashed batch should hold several records";
  // Damage the payload of the second tail record: the first is recovered, the rest dropped.
  {
    std::fstream f(seg_file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(tail[1].first + format::kIoAlignment));  // payload byte 0
    char c = 0x55;
    f.write(&c, 1);
  }
  auto opened = BlockStore::Open(StoreOptions(path));
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  BlockStore& store = **opened;
  VerifyEverything(store);
  for (const BlockKey& k : acked) EXPECT_TRUE(store.Contains(k));
  EXPECT_TRUE(store.Contains(tail[0].second));
  for (size_t i = 1; i < tail.size(); ++i) EXPECT_FALSE(store.Contains(tail[i].second)) << i;
  const auto in_tail = [&](const BlockKey& k) {
    return std::any_of(tail.begin(), tail.end(), [&](const auto& r) { return r.second == k; });
  };
  uint64_t recovered_elsewhere = 0;
  for (const BlockKey& k : unacked) recovered_elsewhere += !in_tail(k) && store.Contains(k);
  EXPECT_EQ(store.Stats().recovered_records, 1u + recovered_elsewhere);
  ExpectWritable(store, 3'000'000'001);
}

}  // namespace
}  // namespace kvstash::storage
