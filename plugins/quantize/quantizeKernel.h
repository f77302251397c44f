// Fused activation quantizers (C ABI launchers). See quantizeKernel.cu for the math.
#pragma once

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

// dtype codes of the fp input x (and gamma, which has the same dtype)
#define LOWBIT_DTYPE_FP16 0
#define LOWBIT_DTYPE_BF16 1

// Atom: [RMSNorm] + reorder + per-token quantize (lowbit.reference.atom_rmsnorm_quantize when
// gamma != null, lowbit.reference.atom_reorder_quantize when gamma == null; perm null = identity).
//   x fp16/bf16 [M, K] original channel order; gamma [K] (already permuted, same dtype as x);
//   perm int32 [K]: h[:, j] = norm(x)[:, perm[j]]
//   outputs: x4 int8 [M, (K-Ko)/2] packed int4; xs4 fp16 [M, (K-Ko)/G]; x8 int8 [M, Ko];
//            xs8 fp16 [M]
// Rules: K % 8 == 0; Kn = K - Ko > 0, Kn % 128 == 0 (G = 64 too); Ko % 16 == 0;
//        group_size 128 or 64; x, gamma, perm, x8 16-byte aligned; x4 4-byte aligned.
LOWBIT_API int lowbit_atom_quantize(const void* x, int dtype, const void* gamma, const int* perm,
                                    float eps, int M, int K, int Ko, int group_size, float clip,
                                    void* x4, void* xs4, void* x8, void* xs8, void* stream);

// SmoothQuant: RMSNorm + int8 quantize (lowbit.reference.rmsnorm_quantize_int8); gamma null:
// no RMSNorm, h = x (lowbit.reference.quantize_per_token_int8 / quantize_static_int8).
//   x fp16/bf16 [M, K]; gamma [K] same dtype or null; static_scale fp32 [1] device pointer or null
//   outputs: q int8 [M, K]; xs fp32 [M] (written only when static_scale is null)
// Rules: K % 8 == 0; x, gamma, q 16-byte aligned.
LOWBIT_API int lowbit_rmsnorm_quantize_int8(const void* x, int dtype, const void* gamma, float eps,
                                            const float* static_scale, int M, int K, void* q,
                                            float* xs, void* stream);

#ifdef __cplusplus
}
#endif
