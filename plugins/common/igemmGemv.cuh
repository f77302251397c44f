// Register-streaming int8 tensor-core GEMV/GEMM for small M (decode and small batches: W4A4
// M <= 64, W8A8 M <= 32), shared by w4a4Gemm and w8a8Gemm. Included by igemmCore.cuh (uses its
// Problem, Mode, widen4, loadScale8); same operands and math as the tiled kernels.
//
// Why a second decode kernel: the skinny kernel (cp.async ring in shared memory) spent ~50
// instructions per 512 B of int4 weights (ring addressing, zero-fill selects, shared-memory
// reloads, mma operands padded with zero rows) at ~1 IPC per SM. Here:
//  * the weights go straight from global memory to registers (ld.global.nc.L1::no_allocate,
//    16 B per lane), D - 1 work items ahead of the one being multiplied; activations and scales
//    take the L1-cached path (every tile of a CTA re-reads the same activations);
//  * roles are swapped: the WEIGHTS are the mma's A operand (m16 = 16 weight rows = 16 output
//    columns) and the activations its B operand (n8 = 8 tokens). With M <= 8 an m16n8k32 mma then
//    does no work on padding (the skinny kernel's A = activations wasted 15/16 of it at M = 1),
//    so there are half the mma and no zero-register moves per weight byte; M = 9..16 uses a
//    second mma (tokens 8..15) sharing the widened weights, M = 17..32 / 33..64 four / eight
//    (NTG token groups of 8).
//  * out-of-range rows/columns are clamped, not predicated (their sums are never stored).
//
// Work split: a tile is NB blocks of 16 output columns (16 weight rows). A "super-chunk" is 64
// bytes of K per row: 128 int4 values = one group of G = 128 (region 4), or 64 int8 values
// (region 8: W8A8, or Atom's outliers). The KS warps of a CTA take the S super-chunks of a tile
// round-robin (warp ks: ks, ks + KS, ...; every warp counts cnt = ceil(S / KS) items per tile,
// the last ones empty where sc >= S, so that all warps meet each tile's barrier together). Work
// item = (tile, one super-chunk): lane (g, t) loads 16-byte chunk t of weight rows nb + g and
// nb + 8 + g of each block, the same chunk of activation rows (tokens) g + 8q, and the scales.
// In mma step i each lane supplies word i of ITS chunk for A and B alike, so the K order inside
// an mma agrees and no repacking is needed:
//   int4 (step i = 0..3, word i widened to lo = even nibbles, hi = odd nibbles, 16 x value):
//     A = {lo(W[g]), lo(W[g+8]), hi(W[g]), hi(W[g+8])}, B = {lo(X[g]), hi(X[g])}
//   int8 (step i = 0..1): A = {W[g].w2i, W[g+8].w2i, W[g].w2i+1, W[g+8].w2i+1},
//     B = {X[g].w2i, X[g].w2i+1}
// Accumulator lane (g, t): c0 = (row g, token 2t), c1 = (row g, token 2t+1), c2/c3 = row g + 8.
// At the end of a tile the KS partial tiles are summed through shared memory (double-buffered:
// one barrier per tile) in a fixed order (deterministic), all threads sharing the sum and the
// fp16 stores. The grid is persistent and strides over tiles; the register pipeline runs across
// tile boundaries.
#pragma once

#include <type_traits>

#include "common/ldg.cuh"
#include "common/pdl.cuh"

namespace lowbit {
namespace igemm {

constexpr int kLoadW = 1, kLoadA = 2;  // gemvKernel's load parts: weights, activations

// d = a * b + c with c read-only (the group accumulators start from constant magic registers,
// so no per-group re-initialisation moves). Not volatile: the scheduler may interleave.
__device__ __forceinline__ void mmaS8To(int (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1, const int (&c)[4]) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(c[0]), "r"(c[1]),
        "r"(c[2]), "r"(c[3]));
}

// One work item's registers: per 16-row block j the chunks of weight rows g and g + 8 (+ their
// group scales, raw fp16 bits in the low half), the activation chunks of tokens g + 8q
// (q < NTG) and the activation scales of tokens 2t + (i & 1) + 8 (i >> 1) (i < 2 NTG).
// W4A4 with NTG >= 4 (M = 17..64): the activations are not prefetched (24 / 48 registers a
// stage); the multiplier loads them from L1 one token group ahead (kLateA) and widens the weights
// once for all groups. The stage then holds one unused chunk. Measured against prefetching at
// NTG = 4 (H100, NOTES log 17): 4096 x 11008 M = 32 22.8 -> 20.1 us, 11008 x 4096 19.2 -> 18.4.
template <int MODE, int NTG>
constexpr bool gemvLateA() { return MODE != kW8A8 && NTG >= 4; }
template <int MODE, int NB, int NTG>
struct GemvStage {
  static constexpr int kA = gemvLateA<MODE, NTG>() ? 1 : NTG;
  uint4 b0[NB], b1[NB];
  uint32_t w0[NB], w1[NB];
  uint4 a[kA];
  uint32_t x[2 * kA];
};

// NTG: token groups of 8 (n8 of the mma): 1 for M <= 8, 2 for M <= 16, 4 for M <= 32, 8 for
// M <= 64 (W4A4).
template <int KS, int NB, int NTG>
struct GemvConfig {
  static constexpr int kThreads = KS * 32;
  static constexpr int kE = 4 * NTG;                       // accumulators per lane per block
  static constexpr int kRedFloats = KS * NB * kE * 32;     // [KS][NB][kE][32] per buffer
  // double-buffered (one barrier per tile) up to 64 KiB; above, one buffer and two barriers, so
  // that L1 keeps room for the activations every tile re-reads (M = 32: 32 x K bytes)
  static constexpr int kBufs = 2 * kRedFloats * 4 <= 64 * 1024 ? 2 : 1;
  static constexpr int kSmemBytes = kBufs * kRedFloats * 4;
};

__device__ __forceinline__ float halfBits(uint32_t h) {
  return __half2float(__ushort_as_half((unsigned short)h));
}

// f[c] += v[c] * (w * x) for the accumulators c0..c3 of one mma: rows g / g + 8 (weight scales
// wa / wb) x tokens 2t / 2t + 1 (activation scales x0 / x1).
__device__ __forceinline__ void fold4(float* f, const float (&v)[4], float wa, float wb, float x0,
                                      float x1) {
  f[0] = fmaf(v[0], wa * x0, f[0]);
  f[1] = fmaf(v[1], wa * x1, f[1]);
  f[2] = fmaf(v[2], wb * x0, f[2]);
  f[3] = fmaf(v[3], wb * x1, f[3]);
}
// a group's int32 sum started at the magic number (exact while |sum| < 2^22) / an exact int32 sum
__device__ __forceinline__ void groupSum(float (&v)[4], const int (&acc)[4]) {
#pragma unroll
  for (int c = 0; c < 4; ++c) v[c] = __int_as_float(acc[c]) - kMagicF;
}
__device__ __forceinline__ void intSum(float (&v)[4], const int (&acc)[4]) {
#pragma unroll
  for (int c = 0; c < 4; ++c) v[c] = static_cast<float>(acc[c]);
}

// NTG token groups of 8 (tokens g + 8q, q < NTG; the launcher picks NTG from M). Tokens >= M are
// clamped to M - 1: their sums are computed and never stored.
template <int MODE, int KS, int NB, int D, int NTG>
__global__ void __launch_bounds__(KS * 32, KS < 16 ? 16 / KS : 1) gemvKernel(const Problem p) {
  using C = GemvConfig<KS, NB, NTG>;
  constexpr bool kLateA = gemvLateA<MODE, NTG>();
  static_assert(!kLateA || (MODE != kW8A8 && NB == 1), "late activations: W4A4, NB = 1 only");
  constexpr int E = C::kE, NX = 2 * NTG, NTA = kLateA ? 1 : NTG, NXA = 2 * NTA;
  extern __shared__ __align__(16) float red[];
  const int lane = threadIdx.x & 31, ks = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int S4 = (MODE == kW8A8) ? 0 : p.ng;  // int4 super-chunks (= groups of 128)
  const int S = S4 + p.slices8;
  // items per tile, the same for every warp (a warp's items past S are empty): every warp then
  // reaches each tile's barrier(s) from the same unrolled position of the pipeline loop
  const int cnt = (S + KS - 1) / KS;
  const int scEnd = ks + cnt * KS;
  const int tiles = (p.N + NB * 16 - 1) / (NB * 16);
  const int myTiles = (tiles - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
  const int total = myTiles * cnt;
  const uint32_t rowB4 = (uint32_t)p.Kn >> 1, rowB8 = (uint32_t)p.K8;
  // Launched as a programmatic dependent (launchGemvWith): the grid may become resident while the
  // kernel before it (the activations' quantize, which triggers at its start) still runs. Until
  // pdlWait() (in the prologue below) nothing is written, and nothing is read unless the caller
  // promised constant weights (p.constWeights: not written by the kernel right before this one;
  // only griddepcontrol.wait makes that kernel's writes visible): then, for W4A4 at M <= 8, the
  // first items' weights. (Prefetching this CTA's weight rows into L2 in that window,
  // cp.async.bulk.prefetch.L2: 14.7 vs 11.7 us at 4096 x 11008 M = 1 for all of them, log 28.)
  // tokens, clamped (rows >= M compute sums that are never stored): tokA(q) = the token whose
  // chunks this lane loads (g + 8q), tokX(i) = the one whose scale it applies (2t + (i & 1) +
  // 8 (i >> 1)); kept in registers (ta, tx) unless the activations are loaded late
  auto tokA = [&](int q) { return (uint32_t)min(g + 8 * q, p.M - 1); };
  auto tokX = [&](int i) { return (uint32_t)min(2 * t + (i & 1) + (i >> 1) * 8, p.M - 1); };
  uint32_t ta[NTA], tx[NXA];
#pragma unroll
  for (int q = 0; q < NTA; ++q) ta[q] = tokA(q);
#pragma unroll
  for (int i = 0; i < NXA; ++i) tx[i] = tokX(i);
  const int tileStride = (int)gridDim.x * NB * 16;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  const int magic[4] = {kMagic, kMagic, kMagic, kMagic};
  const int zeros[4] = {0, 0, 0, 0};

  // Loader position (runs D - 1 items ahead of the multiplier); row4 = byte offset of weight row
  // (block j, row g) + chunk t in region 4 (32-bit: the launcher checks the sizes).
  int lSc = ks, lN0 = (int)blockIdx.x * NB * 16, lIt = 0;
  uint32_t row4[NB];
  auto setTile = [&]() {
#pragma unroll
    for (int j = 0; j < NB; ++j)
      row4[j] = ((uint32_t)min(lN0 + j * 16, p.N - 16) + g) * rowB4 + t * 16;
  };
  setTile();
  // load(st, part): the next work item's operands into stage st, part = kLoadW (weights and their
  // scales: constant, may be read before pdlWait), kLoadA (activations and their scales) or both;
  // advances the loader position either way.
  auto load = [&](GemvStage<MODE, NB, NTG>& st, auto part) {
    constexpr bool kW = (decltype(part)::value & kLoadW) != 0;
    constexpr bool kA = (decltype(part)::value & kLoadA) != 0 && !kLateA;
    const int sc = lSc;
    if (lIt < total) {
      if (sc < S4) {
        const uint32_t o = (uint32_t)sc * kSliceBytes;
        if constexpr (kA) {
#pragma unroll
          for (int q = 0; q < NTG; ++q)
            st.a[q] = ldgCached16(p.a4 + (ta[q] * rowB4 + t * 16 + o));
#pragma unroll
          for (int i = 0; i < NX; ++i) st.x[i] = ldgCached2(p.as4 + (tx[i] * p.ng + sc));
        }
        if constexpr (kW) {
          const __half* ws = p.bs4t + (size_t)sc * p.N + g;
#pragma unroll
          for (int j = 0; j < NB; ++j) {
            const int nb = min(lN0 + j * 16, p.N - 16);
            st.b0[j] = ldgStream16(p.b4 + (row4[j] + o));
            st.b1[j] = ldgStream16(p.b4 + (row4[j] + 8 * rowB4 + o));
            st.w0[j] = ldgCached2(ws + nb);
            st.w1[j] = ldgCached2(ws + nb + 8);
          }
        }
      } else if (sc < S) {
        const uint32_t o = (uint32_t)(sc - S4) * kSliceBytes + t * 16;
        if (o < rowB8) {  // K8 % 16 == 0: a chunk is all in or all out
          if constexpr (kA) {
#pragma unroll
            for (int q = 0; q < NTG; ++q) st.a[q] = ldgCached16(p.a8 + (ta[q] * rowB8 + o));
          }
          if constexpr (kW) {
#pragma unroll
            for (int j = 0; j < NB; ++j) {
              const uint32_t r = (uint32_t)min(lN0 + j * 16, p.N - 16) + g;
              st.b0[j] = ldgStream16(p.b8 + (r * rowB8 + o));
              st.b1[j] = ldgStream16(p.b8 + ((r + 8) * rowB8 + o));
            }
          }
        } else {
          if constexpr (kA) {
#pragma unroll
            for (int q = 0; q < NTA; ++q) st.a[q] = zero;
          }
          if constexpr (kW) {
#pragma unroll
            for (int j = 0; j < NB; ++j) {
              st.b0[j] = zero;
              st.b1[j] = zero;
            }
          }
        }
        if constexpr (MODE != kW8A8) {  // Atom outliers are folded per item: fp16 scales now
          const __half* xs8 = static_cast<const __half*>(p.as8);
          const __half* ws8 = static_cast<const __half*>(p.bs8);
          if constexpr (kA) {
#pragma unroll
            for (int i = 0; i < NX; ++i) st.x[i] = ldgCached2(xs8 + tx[i]);
          }
          if constexpr (kW) {
#pragma unroll
            for (int j = 0; j < NB; ++j) {
              const int nb = min(lN0 + j * 16, p.N - 16);
              st.w0[j] = ldgCached2(ws8 + nb + g);
              st.w1[j] = ldgCached2(ws8 + nb + 8 + g);
            }
          }
        }
      }
    }
    ++lIt;
    lSc += KS;
    if (lSc >= scEnd) {
      lSc = ks;
      lN0 += tileStride;
      setTile();
    }
  };

  // accF: fp32 partial sums of this warp's K part (Atom: groups and outliers, folded per item);
  // acc8: W8A8's exact int32 sum, scaled once at the end of the tile. Index e = 4q + c: c0..c3
  // (rows g / g + 8, tokens 2t / 2t + 1) of token group q (tokens + 8q).
  float accF[NB][E];
  int acc8[NB][NTG][4];
#pragma unroll
  for (int j = 0; j < NB; ++j)
#pragma unroll
    for (int e = 0; e < E; ++e) {
      accF[j][e] = 0.f;
      acc8[j][e >> 2][e & 3] = 0;
    }

  // Multiplier position.
  int cSc = ks, cN0 = (int)blockIdx.x * NB * 16, tileCount = 0;
  auto compute = [&](const GemvStage<MODE, NB, NTG>& st) {
    const int sc = cSc;
    if constexpr (kLateA) {
    if (sc < S4) {
      // weights widened once (16 registers), then token group by token group; the activation
      // chunk and scales of group q + 1 are loaded from L1 while group q is multiplied
      const uint32_t w0[4] = {st.b0[0].x, st.b0[0].y, st.b0[0].z, st.b0[0].w};
      const uint32_t w1[4] = {st.b1[0].x, st.b1[0].y, st.b1[0].z, st.b1[0].w};
      uint32_t wa4[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        widen4(w0[i], wa4[i][0], wa4[i][2]);
        widen4(w1[i], wa4[i][1], wa4[i][3]);
      }
      const float wa = halfBits(st.w0[0]), wb = halfBits(st.w1[0]);
      const uint32_t o = (uint32_t)sc * kSliceBytes + t * 16;
      uint4 an = ldgCached16(p.a4 + (tokA(0) * rowB4 + o));
      uint32_t xn0 = ldgCached2(p.as4 + (tokX(0) * p.ng + sc));
      uint32_t xn1 = ldgCached2(p.as4 + (tokX(1) * p.ng + sc));
#pragma unroll
      for (int q = 0; q < NTG; ++q) {
        const uint4 ac = an;
        const float x0 = halfBits(xn0) * (1.f / 256.f), x1 = halfBits(xn1) * (1.f / 256.f);
        if (q + 1 < NTG) {
          an = ldgCached16(p.a4 + (tokA(q + 1) * rowB4 + o));
          xn0 = ldgCached2(p.as4 + (tokX(2 * q + 2) * p.ng + sc));
          xn1 = ldgCached2(p.as4 + (tokX(2 * q + 3) * p.ng + sc));
        }
        const uint32_t xw[4] = {ac.x, ac.y, ac.z, ac.w};
        int acc[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          uint32_t b0, b1;
          widen4(xw[i], b0, b1);
          if (i == 0) mmaS8To(acc, wa4[i], b0, b1, magic);
          else mmaS8To(acc, wa4[i], b0, b1, acc);
        }
        float v[4];
        groupSum(v, acc);
        fold4(&accF[0][4 * q], v, wa, wb, x0, x1);
      }
    } else if (sc < S) {
      // Atom outliers (64 int8 values of this part), activations from L1 as above. Every lane
      // takes part in the (warp-collective) mma: a chunk past K_o has zero weights (loader) and
      // zero activations.
      const uint32_t o = (uint32_t)(sc - S4) * kSliceBytes + t * 16;
      const bool in = o < rowB8;  // K8 % 16 == 0: a chunk is all in or all out
      const uint32_t aA[4] = {st.b0[0].x, st.b1[0].x, st.b0[0].y, st.b1[0].y};
      const uint32_t aB[4] = {st.b0[0].z, st.b1[0].z, st.b0[0].w, st.b1[0].w};
      const float wa = halfBits(st.w0[0]), wb = halfBits(st.w1[0]);
      const __half* xs8 = static_cast<const __half*>(p.as8);
#pragma unroll
      for (int q = 0; q < NTG; ++q) {
        const uint4 ac = in ? ldgCached16(p.a8 + (tokA(q) * rowB8 + o)) : zero;
        const float x0 = halfBits(ldgCached2(xs8 + tokX(2 * q)));
        const float x1 = halfBits(ldgCached2(xs8 + tokX(2 * q + 1)));
        int acc[4];
        mmaS8To(acc, aA, ac.x, ac.y, zeros);
        mmaS8To(acc, aB, ac.z, ac.w, acc);
        float v[4];
        intSum(v, acc);
        fold4(&accF[0][4 * q], v, wa, wb, x0, x1);
      }
    }
    } else {
    if (sc < S4) {
      float xs[NX];  // activation scales / 256 (both operands carry 16 x value)
#pragma unroll
      for (int i = 0; i < NX; ++i) xs[i] = halfBits(st.x[i]) * (1.f / 256.f);
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        const uint32_t w0[4] = {st.b0[j].x, st.b0[j].y, st.b0[j].z, st.b0[j].w};
        const uint32_t w1[4] = {st.b1[j].x, st.b1[j].y, st.b1[j].z, st.b1[j].w};
        int acc[NTG][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          uint32_t a[4];
          widen4(w0[i], a[0], a[2]);
          widen4(w1[i], a[1], a[3]);
#pragma unroll
          for (int q = 0; q < NTG; ++q) {
            // widened activations (B operand); the same words for every block j (the compiler
            // keeps one copy when NB > 1)
            const uint32_t xw[4] = {st.a[q].x, st.a[q].y, st.a[q].z, st.a[q].w};
            uint32_t b0, b1;
            widen4(xw[i], b0, b1);
            if (i == 0) mmaS8To(acc[q], a, b0, b1, magic);
            else mmaS8To(acc[q], a, b0, b1, acc[q]);
          }
        }
        const float wa = halfBits(st.w0[j]), wb = halfBits(st.w1[j]);
#pragma unroll
        for (int q = 0; q < NTG; ++q) {
          float v[4];
          groupSum(v, acc[q]);
          fold4(&accF[j][4 * q], v, wa, wb, xs[2 * q], xs[2 * q + 1]);
        }
      }
    } else if (sc < S) {
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        const uint32_t aA[4] = {st.b0[j].x, st.b1[j].x, st.b0[j].y, st.b1[j].y};
        const uint32_t aB[4] = {st.b0[j].z, st.b1[j].z, st.b0[j].w, st.b1[j].w};
        if constexpr (MODE == kW8A8) {
#pragma unroll
          for (int q = 0; q < NTG; ++q) {
            mmaS8To(acc8[j][q], aA, st.a[q].x, st.a[q].y, acc8[j][q]);
            mmaS8To(acc8[j][q], aB, st.a[q].z, st.a[q].w, acc8[j][q]);
          }
        } else {
          // Atom outliers: this 64-value part's exact int32 sum, scaled now (fp32 accumulation
          // order differs from the reference's single scaling by rounding only, ~1e-7).
          const float wa = halfBits(st.w0[j]), wb = halfBits(st.w1[j]);
#pragma unroll
          for (int q = 0; q < NTG; ++q) {
            int acc[4];
            mmaS8To(acc, aA, st.a[q].x, st.a[q].y, zeros);
            mmaS8To(acc, aB, st.a[q].z, st.a[q].w, acc);
            float v[4];
            intSum(v, acc);
            fold4(&accF[j][4 * q], v, wa, wb, halfBits(st.x[2 * q]), halfBits(st.x[2 * q + 1]));
          }
        }
      }
    }
    }
    cSc += KS;
    if (cSc < scEnd) return;
    // ---- last item of the tile: W8A8 scale, split-K reduction, store -------------------------
    const int n0 = cN0;
    cSc = ks;
    cN0 += tileStride;
    if constexpr (MODE == kW8A8) {
      float xs[NX];
#pragma unroll
      for (int i = 0; i < NX; ++i) xs[i] = loadScale8<MODE>(p.as8, tx[i] * p.as8Stride);
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        const int nb = min(n0 + j * 16, p.N - 16);
        const float wa = loadScale8<MODE>(p.bs8, nb + g), wb = loadScale8<MODE>(p.bs8, nb + 8 + g);
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const float xsv = xs[(e & 1) + (e >> 2) * 2], wsv = (e & 2) ? wb : wa;
          accF[j][e] = static_cast<float>(acc8[j][e >> 2][e & 3]) * xsv * wsv;
          acc8[j][e >> 2][e & 3] = 0;
        }
      }
    }
    float* r = red + (C::kBufs == 2 ? (tileCount & 1) * C::kRedFloats : 0);
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < E; ++e) {
        r[((ks * NB + j) * E + e) * 32 + lane] = accF[j][e];
        accF[j][e] = 0.f;
      }
    __syncthreads();  // double buffer: one barrier per tile (the next tile writes the other one)
    constexpr int kVals = NB * E * 32;
#pragma unroll
    for (int v0 = 0; v0 < kVals; v0 += KS * 32) {
      const int v = v0 + (int)threadIdx.x;
      if (kVals % (KS * 32) == 0 || v < kVals) {
        const int j = v / (E * 32), e = (v / 32) % E, l = v & 31;
        const int nb = min(n0 + j * 16, p.N - 16);
        const int col = nb + (l >> 2) + ((e >> 1) & 1) * 8;
        const int tok = 2 * (l & 3) + (e & 1) + (e >> 2) * 8;
        // a clamped last block recomputes columns of the block before it: store only its own
        if (tok < p.M && col >= n0 + j * 16 && col < p.N) {
          float s = 0.f;
#pragma unroll
          for (int q = 0; q < KS; ++q) s += r[q * kVals + v];
          p.y[(size_t)tok * p.N + col] = __float2half_rn(s);
        }
      }
    }
    if constexpr (C::kBufs == 1) __syncthreads();  // one buffer: read before the next writes
    ++tileCount;
  };

  GemvStage<MODE, NB, NTG> buf[D];
#pragma unroll
  for (int d = 0; d < D; ++d) {
#pragma unroll
    for (int q = 0; q < NTA; ++q) buf[d].a[q] = zero;
#pragma unroll
    for (int i = 0; i < NXA; ++i) buf[d].x[i] = 0u;
#pragma unroll
    for (int j = 0; j < NB; ++j) {
      buf[d].b0[j] = zero;
      buf[d].b1[j] = zero;
      buf[d].w0[j] = 0u;
      buf[d].w1[j] = 0u;
    }
  }
  // Prologue. W4A4 with M <= 8 and constant weights: the first D - 1 items' weights before
  // pdlWait (2-4 KiB per warp come in while the quantize before this kernel runs), then their
  // activations: W4A4 + quantize at M = 1 14.8 -> 13.1 us (4096 x 11008), 7.9 -> 6.8 us (4096 x
  // 4096). At M = 16 and for W8A8 the split made the GEMM alone 2-12% slower (NOTES log 28).
  // Otherwise: wait, then load.
  bool early = false;
  if constexpr (MODE != kW8A8 && NTG == 1) early = p.constWeights != 0;
  if (early) {
    const int sc0 = lSc, n00 = lN0, it00 = lIt;
#pragma unroll
    for (int d = 0; d < D - 1; ++d) load(buf[d], std::integral_constant<int, kLoadW>{});
    pdlWait();
    lSc = sc0;
    lN0 = n00;
    lIt = it00;
    setTile();
#pragma unroll
    for (int d = 0; d < D - 1; ++d) load(buf[d], std::integral_constant<int, kLoadA>{});
  } else {
    pdlWait();
#pragma unroll
    for (int d = 0; d < D - 1; ++d) load(buf[d], std::integral_constant<int, kLoadW | kLoadA>{});
  }
  for (int it0 = 0; it0 < total; it0 += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      if (it0 + d < total) {
        load(buf[(d + D - 1) % D], std::integral_constant<int, kLoadW | kLoadA>{});
        compute(buf[d]);
      }
    }
  }
}

// Gemv configurations (explicit list; tile = NB x 16 output columns), measured on H100
// (plugins/NOTES.md, log 7):
//  * K16: KS = 16 warps (512 threads, one CTA per SM), NB = 2 (32 columns), D = 2 (one item of
//    2 KiB per warp in flight while one is multiplied). Default.
//  * K12: KS = 12, D = 3. Fewer warps but balanced when S is just above a multiple of 16 (Atom
//    K = 4096: S = 31 groups + 2 outlier super-chunks = 33, i.e. 3 items for warp 0 and 2 for
//    the others with 16 warps; 3 for every warp with 12), and only pays when a CTA has several
//    tiles (the per-tile barrier then waits for the slowest warp again and again).
// Tried and dropped (slower at every shape): weights through a cp.async ring in shared memory
// (D = 4..5), KS = 4 or 8 with several CTAs per SM, NB = 1 with D = 4, KS = 11, bulk L2
// prefetch (cp.async.bulk.prefetch.L2) of the next tile's rows (+25%).
// Launched as a programmatic dependent of the stream's previous kernel (common/pdl.cuh; sm_90+):
// with the quantize kernels' trigger at their start, W4A4 decode + its quantize took 2-7% less
// and the GEMM alone 1-5% less in CUDA-graph replays (H100, NOTES log 28).
template <int MODE, int KS, int NB, int D, int NTG>
inline int launchGemvWith(const Problem& p, cudaStream_t stream) {
  using C = GemvConfig<KS, NB, NTG>;
  constexpr auto kernel = gemvKernel<MODE, KS, NB, D, NTG>;
  int st = allowDynamicSmem<kernel>(C::kSmemBytes);
  if (st != LOWBIT_OK) return st;
  static int perSm[64] = {0};
  int dev = 0;
  st = cudaStatus(cudaGetDevice(&dev));
  if (st != LOWBIT_OK) return st;
  int& occ = perSm[dev & 63];
  if (occ == 0) {
    st = cudaStatus(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, C::kThreads, C::kSmemBytes));
    if (st != LOWBIT_OK) return st;
    if (occ < 1) occ = 1;
  }
  const int tiles = (p.N + NB * 16 - 1) / (NB * 16);
  const int slots = occ * multiprocessorCount();
  const int grid = tiles < slots ? tiles : slots;
  return launchDependent(kernel, dim3(grid), dim3(C::kThreads), C::kSmemBytes, stream, p);
}

// NTG = 4 / 8 (M = 17..32 / 33..64; NTG = 8 W4A4 only) keep the warp count but one 16-column
// block per tile (NB = 1): with NB = 2 and prefetched activations the W4A4 kernel spilled 296
// bytes (128 registers at 512 threads) and both modes were slower (H100, NOTES log 17: W4A4
// 4096 x 11008 M = 32 23.6 vs 44.8 us, W8A8 26.0 vs 25.1 us); D = 3 and 8-warp CTAs were slower.
template <int MODE, int KS, int NB, int D>
inline int launchGemvM(const Problem& p, cudaStream_t stream) {
  if (p.M <= 8) return launchGemvWith<MODE, KS, NB, D, 1>(p, stream);
  if (p.M <= 16) return launchGemvWith<MODE, KS, NB, D, 2>(p, stream);
  if constexpr (MODE != kW8A8)
    if (p.M > 32) return launchGemvWith<MODE, KS, 1, D, 8>(p, stream);
  return launchGemvWith<MODE, KS, 1, D, 4>(p, stream);
}

// Whether the gemv kernel takes this problem (else the caller falls back to skinny/decode).
template <int MODE>
inline bool gemvFits(const Problem& p) {
  if (MODE == kW4A4G64 || p.M > (MODE == kW8A8 ? 32 : 64) || p.N < 16) return false;
  // 32-bit offsets into every operand (the weights are the largest)
  const uint64_t row = (uint64_t)((p.Kn >> 1) > p.K8 ? (p.Kn >> 1) : p.K8);
  return (uint64_t)p.N * row < (1ull << 31) && (uint64_t)p.ng * p.N < (1ull << 31);
}

// variant: 0 = choose K16 or K12 (rule above), 1 = K16, 2 = K12 (config ids 4..6).
template <int MODE>
inline int launchGemv(const Problem& p, cudaStream_t stream, int variant) {
  if constexpr (MODE == kW4A4G64) {
    return LOWBIT_ERR_UNSUPPORTED;  // a super-chunk would hold two groups
  } else {
    if (!gemvFits<MODE>(p)) return LOWBIT_ERR_UNSUPPORTED;
    if (variant == 0) {
      const int S = (MODE == kW8A8 ? 0 : p.ng) + p.slices8;
      const int tiles = p.M <= 16 ? (p.N + 31) / 32 : (p.N + 15) / 16;
      const bool k12 = (S + 11) / 12 * 12 < (S + 15) / 16 * 16 && tiles > multiprocessorCount();
      variant = k12 ? 2 : 1;
    }
    switch (variant) {
      case 1: return launchGemvM<MODE, 16, 2, 2>(p, stream);
      case 2: return launchGemvM<MODE, 12, 2, 3>(p, stream);
      default: return LOWBIT_ERR_UNSUPPORTED;
    }
  }
}

}  // namespace igemm
}  // namespace lowbit
