// Atom W4A4 mixed-precision group GEMM (C ABI launcher). See w4a4GemmKernel.cu for the math.
#pragma once

#include <stddef.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

// y[M, N] fp16 = sum_g xs4[m,g]*ws4[n,g] * sum_{k in g} x4[m,k]*w4[n,k]
//              + xs8[m]*ws8[n] * sum_{k < Ko} x8[m,k]*w8[n,k]          (lowbit.reference.atom_gemm)
//   x4   int8 [M, Kn/2]  packed int4, low nibble first      w4   int8 [N, Kn/2]  same packing
//   xs4  fp16 [M, Kn/G]                                     ws4t fp16 [Kn/G, N]  (transposed!)
//   x8   int8 [M, Ko]                                       w8   int8 [N, Ko]
//   xs8  fp16 [M]                                           ws8  fp16 [N]
//   y    fp16 [M, N]
// Rules: M >= 0; N >= 8, N % 8 == 0; Kn > 0, Kn % 128 == 0; group_size 128 or 64;
//        0 <= Ko, Ko % 16 == 0 (x8/w8/xs8/ws8 may be null when Ko == 0); int8 operands
//        16-byte aligned, fp16 operands 4-byte aligned; all contiguous row-major.
// config: -1 auto, 0 decode (16x32, split-K 8), 1 mid (64x64), 2 large (128x128), 3 skinny
//         (M <= 16, G = 128; falls back to decode on GPUs without its shared memory),
//         4/5/6 gemv (M <= 64, G = 128; auto for M <= 64), 7 wgmma (sm_90a: TMA + wgmma, 64x256
//         tiles, G = 128, ws4t 16-byte aligned; auto on compute capability 9.0 from M >= 512,
//         and for M = 65..511 where its tiles fill half the SMs), 8 wgmma ping-pong variant
//         (slower; kept for the record, never auto), 19 wgmma wide (sm_90a, G = 128: weights as
//         the register operand, the activations widened to int8 once into `workspace`; auto in
//         place of 7 whenever the workspace holds lowbit_w4a4_gemm_workspace_size bytes, and
//         then also for M = 256..511 where 7 would not run).
//         7/8/19 return LOWBIT_ERR_UNSUPPORTED on other GPUs or when the library lacks sm_90a
//         code; 19 also without the workspace.
// flags: 0 or LOWBIT_GEMM_CONST_WEIGHTS, the caller's promise that w4, ws4t, w8 and ws8 are not
//        written by the kernel enqueued right before this call on `stream` (engine constants, a
//        runtime's loaded weights). The decode kernel is a programmatic dependent of that kernel
//        (sm_90); with the promise it reads its first weights before that kernel has completed
//        (W4A4 at M <= 8: plugins/NOTES.md log 28), without it nothing before.
// workspace: null, or 16-byte aligned device scratch of workspace_bytes, owned by the caller and
//        not touched by anything else until this call's kernels have run (it is written and read
//        on `stream`); only the wide prefill kernel uses it, and only when it holds
//        lowbit_w4a4_gemm_workspace_size(M, ...) bytes (else config 7 runs as before).
// stream: a cudaStream_t (0 = legacy default). Asynchronous; returns a lowbitStatus.
#define LOWBIT_GEMM_CONST_WEIGHTS 1
LOWBIT_API int lowbit_w4a4_gemm(const void* x4, const void* xs4, const void* x8, const void* xs8,
                                const void* w4, const void* ws4t, const void* w8, const void* ws8,
                                void* y, int M, int N, int Kn, int Ko, int group_size, int config,
                                int flags, void* workspace, size_t workspace_bytes, void* stream);

// Bytes of workspace the wide kernel takes for these sizes: M (Kn + Ko) int8 activations
// (rounded up to 256) + Kn/128 x round_up(M, 4) fp32 scales; 0 when it cannot run (group_size
// != 128, or a bad size). Depends on the sizes only (not on the device), so a TensorRT plugin can
// ask for it at build time with the largest M of its profile.
LOWBIT_API size_t lowbit_w4a4_gemm_workspace_size(int M, int N, int Kn, int Ko, int group_size);

#ifdef __cplusplus
}
#endif
