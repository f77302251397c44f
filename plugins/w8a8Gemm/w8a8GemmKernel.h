// SmoothQuant W8A8 GEMM (C ABI launcher). See w8a8GemmKernel.cu for the math.
#pragma once

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

// y[M, N] fp16 = xs[m or 0] * ws[n] * sum_k xq[m,k] * wq[n,k]        (lowbit.reference.w8a8_gemm)
//   xq int8 [M, K]; xs fp32 [M] (xs_per_token = 1) or [1] (xs_per_token = 0, static scale)
//   wq int8 [N, K]; ws fp32 [N]; y fp16 [M, N]
// Rules: M >= 0; N >= 8, N % 8 == 0; K > 0, K % 16 == 0; xq/wq 16-byte aligned, y 4-byte
//        aligned; contiguous row-major. config: -1 auto, 0 decode, 1 mid, 2 large (128x256),
//        3 skinny (M <= 16), 4/5/6 gemv (M <= 32); sm_90a TMA + wgmma kernels (compute
//        capability 9.0 only, else LOWBIT_ERR_UNSUPPORTED): 7 128x256, 8 128x128, 9 128x64,
//        10 128x32 tiles (auto for M >= 17 on Hopper, the tile by M, N and K); 11..17 split-K
//        over thread-block clusters, never auto: 11 tile and split by shape (S <= 2),
//        12/13/14 128x64 tile S = 2/3/4, 15/16/17 128x32 tile S = 2/3/4; 18 128x96 tile
//        (auto where one M-tile and N make it the fastest modelled width).
LOWBIT_API int lowbit_w8a8_gemm(const void* xq, const void* xs, int xs_per_token, const void* wq,
                                const void* ws, void* y, int M, int N, int K, int config,
                                void* stream);

#ifdef __cplusplus
}
#endif
