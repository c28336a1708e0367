// The child of tests/storage/crash_test.cc: opens a store and writes blocks continuously until it
// is killed (or has written --count blocks). Every acknowledged Put, and every Erase before it is
// issued, is reported on --ack-fd as a 16-byte record {uint64 id, uint64 kind} so the parent can
// check durability after the kill. Payloads and headers derive from the key
// (storage/testing/test_blocks.h), so the parent can verify every byte it reads back.
//
// --crash-at POINT:N raises SIGKILL at the N-th time the store passes test sync point POINT.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "storage/block_store.h"
#include "storage/testing/test_blocks.h"

namespace {

enum AckKind : uint64_t { kAcked = 1, kEraseIntent = 2, kOpened = 3, kDone = 4 };

int g_ack_fd = -1;

void Report(uint64_t id, uint64_t kind) {
  uint64_t rec[2] = {id, kind};
  // 16 bytes < PIPE_BUF: atomic even from several threads.
  if (::write(g_ack_fd, rec, sizeof(rec)) != static_cast<ssize_t>(sizeof(rec))) std::abort();
}

int Usage() {
  std::fprintf(stderr,
               "usage: storage_crash_writer --dir D --ack-fd FD [--start N] [--count N]\n"
               "  [--segment-bytes B] [--capacity B] [--max-payload B] [--erase-every N]\n"
               "  [--flush-every N] [--crash-at POINT:N]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvstash;
  using namespace kvstash::storage;
  std::string dir, crash_point;
  uint64_t start = 0, count = 1'000'000, max_payload = 64 << 10, erase_every = 0, flush_every = 0,
           crash_n = 0;
  Options o;
  o.segment_bytes = 1 << 20;
  o.capacity_bytes = 1ull << 30;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    const uint64_t n = std::strtoull(value.c_str(), nullptr, 10);
    if (flag == "--dir") {
      dir = value;
    } else if (flag == "--ack-fd") {
      g_ack_fd = static_cast<int>(n);
    } else if (flag == "--start") {
      start = n;
    } else if (flag == "--count") {
      count = n;
    } else if (flag == "--segment-bytes") {
      o.segment_bytes = n;
    } else if (flag == "--capacity") {
      o.capacity_bytes = n;
    } else if (flag == "--max-payload") {
      max_payload = n;
    } else if (flag == "--erase-every") {
      erase_every = n;
    } else if (flag == "--flush-every") {
      flush_every = n;
    } else if (flag == "--crash-at") {
      auto colon = value.find(':');
      if (colon == std::string::npos) return Usage();
      crash_point = value.substr(0, colon);
      crash_n = std::strtoull(value.c_str() + colon + 1, nullptr, 10);
    } else {
      return Usage();
    }
  }
  if (dir.empty() || g_ack_fd < 0 || max_payload == 0) return Usage();

  o.path = dir;
  o.logger = NullLogger();
  if (!crash_point.empty()) {
    auto seen = std::make_shared<std::atomic<uint64_t>>(0);
    o.test_sync_point = [crash_point, crash_n, seen](std::string_view point) {
      if (point == crash_point && ++*seen == crash_n) ::raise(SIGKILL);
    };
  }
  auto opened = BlockStore::Open(o);
  if (!opened.ok()) {
    std::fprintf(stderr, "storage_crash_writer: %s\n", opened.status().ToString().c_str());
    return 1;
  }
  BlockStore& store = **opened;
  Report(0, kOpened);

  uint64_t rng = start * 31 + 7;
  for (uint64_t i = start; i < start + count; ++i) {
    const BlockKey key = storage::testing::KeyFor(i);
    const size_t size = 1 + storage::testing::SplitMix64(rng) % max_payload;
    auto payload = storage::testing::MakePayload(key, size);
    store.Put(key, storage::testing::MakeHeader(key), payload, [i](Status s) {
      if (s.ok()) Report(i, kAcked);
    });
    if (erase_every != 0 && i % erase_every == 0 && i >= start + erase_every / 2) {
      const uint64_t victim = i - erase_every / 2;
      Report(victim, kEraseIntent);
      Status s = store.Erase(storage::testing::KeyFor(victim));
      if (!s.ok()) std::fprintf(stderr, "erase: %s\n", s.ToString().c_str());
    }
    if (flush_every != 0 && i % flush_every == 0) {
      Status s = store.Flush();
      if (!s.ok()) std::fprintf(stderr, "flush: %s\n", s.ToString().c_str());
    }
    if (i % 37 == 0) {
      Status s =
          store.PutSession("session-" + std::to_string(i % 5), "manifest " + std::to_string(i));
      if (!s.ok()) std::fprintf(stderr, "session: %s\n", s.ToString().c_str());
    }
  }
  Status s = store.Close();
  if (!s.ok()) {
    std::fprintf(stderr, "close: %s\n", s.ToString().c_str());
    return 1;
  }
  Report(0, kDone);
  return 0;
}
