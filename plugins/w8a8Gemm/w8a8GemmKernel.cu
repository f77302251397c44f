// SmoothQuant W8A8 GEMM, exactly lowbit.reference.w8a8_gemm up to fp32 rounding of the scaling:
//
//   y[m, n] = fp16( float(sum_k xq[m,k] * wq[n,k]) * xs[m] * ws[n] )
//
//   xq int8 [M, K] (per-token dynamic or static per-tensor quantized activations)
//   xs fp32 [M] per token, or [1] static (xs_per_token = 0)
//   wq int8 [N, K] (canonical layout, no repacking), ws fp32 [N] per output channel
//   y  fp16 [M, N]
// Divisibility: K % 16 == 0 (16-byte copies; the last 64-byte slice is zero-filled past K);
// N % 8 == 0; M arbitrary. The int32 sum is exact for K * 127 * 127 < 2^31 (K < 133000).
// With the decode/mid tiles (in-CTA split-K) each K part is scaled in fp32 and the parts summed,
// which differs from scaling the full int32 sum by fp32 rounding only (~1e-7 relative).
//
// Same int8 tensor-core core as w4a4Gemm (igemmCore.cuh, region 8 only) and the same explicit
// configurations: gemv (M <= 32, igemmGemv.cuh; skinny where it does not fit), mid 64x64, large
// 128x256 (warp tile 64x64, 4 stages); decode 16x32 split-K 8 when the GPU lacks the skinny
// kernel's shared memory.
#include "w8a8Gemm/w8a8GemmKernel.h"

#include "common/igemmCore.cuh"

using namespace lowbit;

extern "C" int lowbit_w8a8_gemm(const void* xq, const void* xs, int xs_per_token, const void* wq,
                                const void* ws, void* y, int M, int N, int K, int config,
                                void* stream) {
  if (M < 0 || N < 8 || K <= 0) return LOWBIT_ERR_BAD_SHAPE;
  if (N % 8 || K % 16) return LOWBIT_ERR_DIVISIBILITY;
  if (!xq || !xs || !wq || !ws || !y) return LOWBIT_ERR_NULL_POINTER;
  if (!aligned16(xq) || !aligned16(wq) || (reinterpret_cast<uintptr_t>(y) & 3))
    return LOWBIT_ERR_MISALIGNED;
  if (M == 0) return LOWBIT_OK;

  igemm::Problem p{};
  p.a8 = static_cast<const int8_t*>(xq);
  p.b8 = static_cast<const int8_t*>(wq);
  p.as8 = xs;
  p.bs8 = ws;
  p.y = static_cast<__half*>(y);
  p.M = M;
  p.N = N;
  p.Kn = 0;
  p.K8 = K;
  p.ng = 1;
  p.slices4 = 0;
  p.slices8 = (K + igemm::kSliceBytes - 1) / igemm::kSliceBytes;
  p.as8Stride = xs_per_token ? 1 : 0;
  return igemm::dispatch<igemm::kW8A8>(p, config, static_cast<cudaStream_t>(stream));
}
