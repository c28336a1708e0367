// AVX-512 (VL + VNNI) kernel table: the AVX2 code with vpdpbusd int8 dot products.
#define KV_X86_NS avx512
#define KV_X86_NAME "avx512-vnni"
#define KV_X86_VNNI 1
#define KV_X86_RM 4
#define KV_X86_DECODE_RM 16
#define KV_X86_DECODE_RM_KQUANT 8
#define KV_X86_DECODE_RM_FLOAT 1
// GCC 12's 512-bit insert/extract intrinsics pass _mm256_undefined_*() as their unused merge
// source, which -Wuninitialized reports at every use (a GCC bug, fixed in later releases).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "engine/cpu/kernels_x86.inc"

namespace kvstash::engine::cpu {
const KernelTable* Avx512Kernels() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx512vnni") &&
                         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok ? &avx512::kTable : nullptr;
}
}  // namespace kvstash::engine::cpu
