// Writes the committed seed corpus of frame_fuzz (tests/fuzz/corpus/frame/): for every body type,
// one file holding the first input byte (the chunk size, see frame_fuzz.cc) and a valid frame
// stream (Hello, then a frame of that type). Regenerate after a schema change:
//   g++ -std=c++20 -I. -Ibuild/protocol/gen tests/fuzz/make_frame_seeds.cc protocol/codec.cc \
//       base/status.cc -o /tmp/make_frame_seeds && /tmp/make_frame_seeds tests/fuzz/corpus/frame
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "protocol/codec.h"

using namespace kvstash::protocol;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_frame_seeds DIR\n");
    return 2;
  }
  GenerateRequest g;
  g.prompt.messages = {{"user", "hi"}};
  g.sampling.stop = {"\n"};
  g.session = "s";
  Usage u;
  u.finish_reason = "eog";
  StatsResult st;
  st.tiers = {{"device", 1, 2, 3, 4, 5}};
  const std::vector<Body> bodies = {
      Hello{1, 0, "seed"},
      HelloAck{1, 0, "kvstashd", 65536, "m", 8192, 16},
      g,
      PrefillRequest{Prompt{"context", {}, {}, true}, "", true},
      TokenizeRequest{"hello world", false, true},
      DetokenizeRequest{{1, 2, 3}},
      SessionSaveRequest{"a", Prompt{"", {}, {5, 6}, true}, "b", ""},
      SessionRestoreRequest{"a", ""},
      SessionListRequest{},
      SessionDeleteRequest{"a"},
      StatsRequest{},
      HealthRequest{},
      CancelRequest{3},
      TokenChunk{{9}, "a"},
      Progress{1, 2, 0, 1.0},
      Done{u, "t", {1}},
      ErrorReply{4, "bad", false},
      TokenizeResult{{4}},
      DetokenizeResult{"x"},
      SessionListResult{{{"a", "m", "ff", 1, 2, 3, 4}}},
      st,
      HealthResult{"ok"},
  };
  for (size_t i = 0; i < bodies.size(); ++i) {
    std::string data(1, static_cast<char>(i * 11));  // chunk size byte
    data += EncodeFrame(Frame{0, Hello{1, 0, "seed"}});
    data += EncodeFrame(Frame{i + 1, bodies[i]});
    std::ofstream(std::string(argv[1]) + "/" + BodyName(bodies[i]), std::ios::binary) << data;
  }
  return 0;
}
