// 256-bit candidates (see candidates.h).
#include <immintrin.h>

#include <cstring>

#include "bench/float_tile/candidates.h"

namespace kvstash::bench::float_tile {
namespace {
inline float Hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
}  // namespace
}  // namespace kvstash::bench::float_tile

#define FT_NS kvstash::bench::float_tile::v256
#define FT_VEC __m256
#define FT_LANES 8
#define FT_ZERO() _mm256_setzero_ps()
#define FT_LOADF(p) _mm256_loadu_ps(p)
#define FT_LOADH(p) _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))
#define FT_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define FT_HSUM(v) Hsum256(v)
#include "bench/float_tile/candidates.inc"

namespace kvstash::bench::float_tile {

std::vector<Candidate> Candidates256() {
  using namespace v256;
  return {
      {"256 f16 2x4 (old AVX2 shape)", 2, 4, false, Run<kWF16, 2, 4>},
      {"256 f16 4x4 (old AVX-512 shape)", 4, 4, false, Run<kWF16, 4, 4>},
      {"256 f16 4x3", 4, 3, false, Run<kWF16, 4, 3>},
      {"256 f16 3x4", 3, 4, false, Run<kWF16, 3, 4>},
      {"256 f16 4x2", 4, 2, false, Run<kWF16, 4, 2>},
      {"256 f16 2x6", 2, 6, false, Run<kWF16, 2, 6>},
      {"256 f32 4x3", 4, 3, true, Run<kWF32, 4, 3>},
      {"256 f16 4x3 cvt-once", 4, 3, false, RunConvertOnce<4, 3>},
      {"256 f16 4x3 packed", 4, 3, false, RunPacked<kWF16, 4, 3>},
  };
}

float PeakFma256(int64_t iters) { return v256::PeakFma(iters); }

}  // namespace kvstash::bench::float_tile
