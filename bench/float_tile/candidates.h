// Candidate float prefill tiles for bench/float_tile_bench.cc, compiled once per vector width
// (cand_avx2.cc: 256-bit with -mavx2 -mfma -mf16c, 16 registers; cand_avx512.cc: 512-bit with
// -mavx512f -mavx512vl, 32 registers), with the engine kernels' flags (-O3 -ffp-contract=off).
#pragma once

#include <cstdint>
#include <vector>

namespace kvstash::bench::float_tile {

// One chunk as the engine hands it to a task: `rows` weight rows (f16, or f32 where the name
// says so) of n elements against n_tok f32 activation rows; y[t * rows + r]. scratch holds at
// least rows * n floats.
struct ChunkArgs {
  const void* w;
  int rows;
  const float* x;
  int n_tok;
  int64_t n;
  float* y;
  float* scratch;
};
struct Candidate {
  const char* name;
  int rm, rn;  // tile shape: whole tiles only, the rest of the chunk is left alone
  bool f32_weights;
  void (*run)(const ChunkArgs&);
};

std::vector<Candidate> Candidates256();
std::vector<Candidate> Candidates512();
// 12 independent FMA chains for `iters` steps; returns a sum that depends on all of them.
float PeakFma256(int64_t iters);
float PeakFma512(int64_t iters);

}  // namespace kvstash::bench::float_tile
