#include "engine/gguf/ggml_types.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

namespace kvstash::engine {

std::optional<GgmlTypeTraits> TraitsOf(uint32_t type_id) {
  switch (static_cast<GgmlType>(type_id)) {
    case GgmlType::kF32:
      return GgmlTypeTraits{"f32", 1, 4, true};
    case GgmlType::kF16:
      return GgmlTypeTraits{"f16", 1, 2, true};
    case GgmlType::kBF16:
      return GgmlTypeTraits{"bf16", 1, 2, true};
    case GgmlType::kQ4_0:
      return GgmlTypeTraits{"q4_0", 32, sizeof(BlockQ4_0), true};
    case GgmlType::kQ4_1:
      return GgmlTypeTraits{"q4_1", 32, sizeof(BlockQ4_1), false};
    case GgmlType::kQ5_0:
      return GgmlTypeTraits{"q5_0", 32, sizeof(BlockQ5_0), true};
    case GgmlType::kQ5_1:
      return GgmlTypeTraits{"q5_1", 32, sizeof(BlockQ5_1), true};
    case GgmlType::kQ8_0:
      return GgmlTypeTraits{"q8_0", 32, sizeof(BlockQ8_0), true};
    case GgmlType::kQ8_1:
      return GgmlTypeTraits{"q8_1", 32, 36, false};
    case GgmlType::kQ2_K:
      return GgmlTypeTraits{"q2_K", 256, 84, false};
    case GgmlType::kQ3_K:
      return GgmlTypeTraits{"q3_K", 256, sizeof(BlockQ3_K), true};
    case GgmlType::kQ4_K:
      return GgmlTypeTraits{"q4_K", 256, sizeof(BlockQ4_K), true};
    case GgmlType::kQ5_K:
      return GgmlTypeTraits{"q5_K", 256, sizeof(BlockQ5_K), true};
    case GgmlType::kQ6_K:
      return GgmlTypeTraits{"q6_K", 256, sizeof(BlockQ6_K), true};
    case GgmlType::kQ8_K:
      return GgmlTypeTraits{"q8_K", 256, sizeof(BlockQ8_K), false};
    case GgmlType::kIQ4_NL:
      return GgmlTypeTraits{"iq4_nl", 32, sizeof(BlockIQ4_NL), true};
    case GgmlType::kIQ4_XS:
      return GgmlTypeTraits{"iq4_xs", 256, sizeof(BlockIQ4_XS), true};
  }
  return std::nullopt;
}

std::optional<GgmlType> ParseGgmlType(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  static constexpr std::array<std::pair<std::string_view, GgmlType>, 13> kNames = {{
      {"f32", GgmlType::kF32},
      {"f16", GgmlType::kF16},
      {"bf16", GgmlType::kBF16},
      {"q8_0", GgmlType::kQ8_0},
      {"q4_k", GgmlType::kQ4_K},
      {"q6_k", GgmlType::kQ6_K},
      {"q4_0", GgmlType::kQ4_0},
      {"q5_0", GgmlType::kQ5_0},
      {"q5_1", GgmlType::kQ5_1},
      {"q3_k", GgmlType::kQ3_K},
      {"q5_k", GgmlType::kQ5_K},
      {"iq4_nl", GgmlType::kIQ4_NL},
      {"iq4_xs", GgmlType::kIQ4_XS},
  }};
  for (const auto& [n, t] : kNames) {
    if (lower == n) return t;
  }
  return std::nullopt;
}

}  // namespace kvstash::engine
