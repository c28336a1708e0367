// AVX2 + FMA + F16C kernel table (the x86 baseline).
#define KV_X86_NS avx2
#define KV_X86_NAME "avx2"
#define KV_X86_VNNI 0
#define KV_X86_RM 2
#define KV_X86_DECODE_RM 4
#define KV_X86_DECODE_RM_KQUANT 8
#define KV_X86_DECODE_RM_FLOAT 8
#include "engine/cpu/kernels_x86.inc"

namespace kvstash::engine::cpu {
const KernelTable* Avx2Kernels() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok ? &avx2::kTable : nullptr;
}
}  // namespace kvstash::engine::cpu
