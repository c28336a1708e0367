#include "engine/cpu/moe.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace kvstash::engine::cpu {

void MoeRouteToken(const float* logits, int n_expert, int k, int32_t* ids, float* weights) {
  float mx = logits[0];
  for (int e = 1; e < n_expert; ++e) mx = std::max(mx, logits[e]);
  std::vector<float> p(n_expert);  // [n_expert] softmax probabilities
  float sum = 0;
  for (int e = 0; e < n_expert; ++e) {
    p[e] = std::exp(logits[e] - mx);
    sum += p[e];
  }
  for (int e = 0; e < n_expert; ++e) p[e] /= sum;
  // Selection by repeated maximum: k is small (8-10) and this keeps ties on the lower id.
  std::vector<bool> taken(n_expert, false);
  float wsum = 0;
  for (int s = 0; s < k; ++s) {
    int best = -1;
    for (int e = 0; e < n_expert; ++e) {
      if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
    }
    taken[best] = true;
    ids[s] = best;
    weights[s] = p[best];
    wsum += p[best];
  }
  // llama.cpp clamps the sum at the smallest normal f16 before dividing.
  wsum = std::max(wsum, 6.103515625e-5f);
  for (int s = 0; s < k; ++s) weights[s] /= wsum;
}

}  // namespace kvstash::engine::cpu
