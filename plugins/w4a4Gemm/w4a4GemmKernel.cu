// Atom W4A4 mixed-precision group GEMM, exactly lowbit.reference.atom_gemm up to fp32
// accumulation order, rounded to fp16.
//
//   y[m, n] = sum_g xs4[m,g]*ws4[n,g] * sum_{k in g} x4[m,k]*w4[n,k]      (int4 x int4, group G)
//           + xs8[m]*ws8[n] * sum_{k < Ko} x8[m,k]*w8[n,k]                (int8 outliers)
//
// Operands (K = Kn + Ko input channels in Atom's reordered layout, outliers last):
//   x4   int8 [M, Kn/2]  activations, packed int4 (two per byte, low nibble first), [-8, 7]
//   xs4  fp16 [M, Kn/G]  per token and group
//   x8   int8 [M, Ko]    outlier activations in [-127, 127]
//   xs8  fp16 [M]
//   w4   int8 [N, Kn/2]  weights, canonical packing (no reordering needed, see igemmCore.cuh)
//   ws4t fp16 [Kn/G, N]  weight group scales TRANSPOSED (lowbit.packing.pack_w4a4_weight):
//                        a thread's two adjacent output columns then share one 4-byte load
//   w8   int8 [N, Ko], ws8 fp16 [N]
//   y    fp16 [M, N]
// Divisibility: Kn % 128 == 0 (one 64-byte slice = 128 values is the pipeline unit, for G = 64
// too); Ko % 16 == 0 (16-byte copies; the last slice is zero-filled past Ko), Ko may be 0..any;
// N % 8 == 0; M arbitrary (rows past M are zero-filled and not stored).
// Accumulation: each group's integer sum is exact in int32 (|sum| <= 8*8*128 * 256 with the
// x16 widening), converted exactly and scaled in fp32 (xs4*ws4, fp16 -> fp32, exact product);
// outliers likewise once; fp32 accumulation over groups, then one fp16 rounding.
//
// Kernel configurations (igemmCore.cuh, igemmGemv.cuh, igemmSkinny.cuh), chosen by pickConfig:
// gemv (M <= 64, G = 128: weights streamed into registers as the mma A operand, 12 or 16 warps
// split K; the Atom outliers of each 64-value part are scaled per part, fp32 rounding only),
// skinny (its fallback: weights through a per-warp cp.async ring, no smem tiles), decode
// 16x32 with 8-way in-CTA split-K (M <= 16 with G = 64), mid 64x64 (2x2 warps, 2-way split-K),
// large 128x128 (2x4 warps, 3 stages of 128 B of K).
#include "w4a4Gemm/w4a4GemmKernel.h"

#include "common/igemmCore.cuh"

using namespace lowbit;

extern "C" int lowbit_w4a4_gemm(const void* x4, const void* xs4, const void* x8, const void* xs8,
                                const void* w4, const void* ws4t, const void* w8, const void* ws8,
                                void* y, int M, int N, int Kn, int Ko, int group_size, int config,
                                int flags, void* workspace, size_t workspace_bytes,
                                void* stream) {
  if (M < 0 || N < 8 || Kn <= 0 || Ko < 0) return LOWBIT_ERR_BAD_SHAPE;
  if (N % 8 || Kn % 128 || Ko % 16) return LOWBIT_ERR_DIVISIBILITY;
  if (group_size != 128 && group_size != 64) return LOWBIT_ERR_UNSUPPORTED;
  if (!x4 || !xs4 || !w4 || !ws4t || !y) return LOWBIT_ERR_NULL_POINTER;
  if (Ko > 0 && (!x8 || !xs8 || !w8 || !ws8)) return LOWBIT_ERR_NULL_POINTER;
  if (!aligned16(x4) || !aligned16(w4) || (Ko > 0 && (!aligned16(x8) || !aligned16(w8))))
    return LOWBIT_ERR_MISALIGNED;
  if ((reinterpret_cast<uintptr_t>(ws4t) | reinterpret_cast<uintptr_t>(y)) & 3)
    return LOWBIT_ERR_MISALIGNED;
  if (flags & ~LOWBIT_GEMM_CONST_WEIGHTS) return LOWBIT_ERR_UNSUPPORTED;  // unknown flag bits
  if (M == 0) return LOWBIT_OK;

  igemm::Problem p{};
  p.a4 = static_cast<const int8_t*>(x4);
  p.b4 = static_cast<const int8_t*>(w4);
  p.as4 = static_cast<const __half*>(xs4);
  p.bs4t = static_cast<const __half*>(ws4t);
  p.a8 = static_cast<const int8_t*>(x8);
  p.b8 = static_cast<const int8_t*>(w8);
  p.as8 = xs8;
  p.bs8 = ws8;
  p.y = static_cast<__half*>(y);
  p.M = M;
  p.N = N;
  p.Kn = Kn;
  p.K8 = Ko;
  p.ng = Kn / group_size;
  p.slices4 = Kn / 128;
  p.slices8 = (Ko + igemm::kSliceBytes - 1) / igemm::kSliceBytes;
  p.as8Stride = 1;
  p.constWeights = (flags & LOWBIT_GEMM_CONST_WEIGHTS) ? 1 : 0;
  p.workspace = workspace;
  p.workspaceBytes = workspace ? workspace_bytes : 0;
  auto s = static_cast<cudaStream_t>(stream);
  return group_size == 128 ? igemm::dispatch<igemm::kW4A4G128>(p, config, s)
                           : igemm::dispatch<igemm::kW4A4G64>(p, config, s);
}

extern "C" size_t lowbit_w4a4_gemm_workspace_size(int M, int N, int Kn, int Ko, int group_size) {
  if (group_size != 128 || M <= 0 || N < 8 || Kn <= 0 || Kn % 128 || Ko < 0 || Ko % 16) return 0;
  return wg::w4aWideWorkspace(M, Kn, Ko, Kn / 128);
}
