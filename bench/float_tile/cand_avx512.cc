// 512-bit candidates (see candidates.h).
#include <immintrin.h>

#include <cstring>

#include "bench/float_tile/candidates.h"

// GCC 12's 512-bit intrinsics pass _mm256_undefined_*() as merge sources (see
// engine/cpu/kernels_avx512.cc).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define FT_NS kvstash::bench::float_tile::v512
#define FT_VEC __m512
#define FT_LANES 16
#define FT_ZERO() _mm512_setzero_ps()
#define FT_LOADF(p) _mm512_loadu_ps(p)
#define FT_LOADH(p) _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))
#define FT_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define FT_HSUM(v) _mm512_reduce_add_ps(v)
#include "bench/float_tile/candidates.inc"

namespace kvstash::bench::float_tile {

std::vector<Candidate> Candidates512() {
  using namespace v512;
  return {
      {"512 f16 4x4", 4, 4, false, Run<kWF16, 4, 4>},
      {"512 f16 4x6", 4, 6, false, Run<kWF16, 4, 6>},
      {"512 f16 6x4", 6, 4, false, Run<kWF16, 6, 4>},
      {"512 f16 8x3", 8, 3, false, Run<kWF16, 8, 3>},
      {"512 f16 3x8", 3, 8, false, Run<kWF16, 3, 8>},
      {"512 f16 5x5", 5, 5, false, Run<kWF16, 5, 5>},
      {"512 f16 4x5", 4, 5, false, Run<kWF16, 4, 5>},
      {"512 f16 3x9", 3, 9, false, Run<kWF16, 3, 9>},
      {"512 f16 4x3", 4, 3, false, Run<kWF16, 4, 3>},
      {"512 f16 2x12", 2, 12, false, Run<kWF16, 2, 12>},
      {"512 f32 4x6", 4, 6, true, Run<kWF32, 4, 6>},
      {"512 f32 8x3", 8, 3, true, Run<kWF32, 8, 3>},
      {"512 f16 8x3 cvt-once", 8, 3, false, RunConvertOnce<8, 3>},
      {"512 f16 8x3 packed", 8, 3, false, RunPacked<kWF16, 8, 3>},
  };
}

float PeakFma512(int64_t iters) { return v512::PeakFma(iters); }

}  // namespace kvstash::bench::float_tile
