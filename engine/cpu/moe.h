// CPU kernel of the mixture-of-experts router (engine/backend.h MoeRoute).
#pragma once

#include <cstdint>

namespace kvstash::engine::cpu {

// One token: softmax over logits [n_expert], top k ids (descending probability, ties to the
// lower id) and their renormalized weights.
void MoeRouteToken(const float* logits, int n_expert, int k, int32_t* ids, float* weights);

}  // namespace kvstash::engine::cpu
