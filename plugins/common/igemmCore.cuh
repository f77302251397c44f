// Int8 tensor-core GEMM core shared by w4a4Gemm and w8a8Gemm (device code, header only).
//
// Computes y[M, N] (fp16) = sum over a sequence of K "slices" of row x column products, where a
// slice is 64 bytes of K for every row of A [M, .] and B [N, .] (both K-contiguous, "TN"):
//   * region 4: packed int4 (two values per byte, low nibble first, lowbit.packing), 128 values
//     per slice; every group of G = 128 (or 64) values is scaled by as4[m, g] * bs4t[g, n]
//     (fp16 -> fp32) after its exact integer sum (Atom's group GEMM);
//   * region 8: int8, 64 values per slice; the integer sum over the whole region is scaled once
//     by as8[m] * bs8[n] (fp16 for Atom outliers, fp32 for SmoothQuant; as8 may be a single
//     static value).
// The slice sequence is region 4 first (Kn/128 slices), then region 8 (ceil(K8/64) slices).
//
// Why this works on Hopper: int4 mma.sync is ~25x slower than int8 there, so int4 operands stay
// 4-bit in memory/shared memory and are widened in registers: a 32-bit word of 8 nibbles becomes
// lo = (w << 4) & 0xF0F0F0F0 and hi = w & 0xF0F0F0F0, i.e. int8 lanes holding 16 * value. Both A
// and B are widened the same way, so each int8 product is 256 * the int4 product (folded back into
// the scale, exact). Inside one mma the order of the K values is irrelevant as long as A and B use
// the same order, so a thread's nibbles from the same 32-bit word position of A and B meet in the
// same mma lane (see compute4): no weight repacking is needed for the tensor-core fragment layout.
//
// Exact fp32 conversion of per-group sums ("magic number"): accumulators start at the bit pattern
// of 1.5 * 2^23 (0x4B400000). A group sum |s| <= 256 * 8 * 8 * 128 = 2^21 < 2^22, so acc = magic + s
// reinterpreted as float is exactly 12582912 + s, and one FADD recovers s: this replaces the
// quarter-rate I2F per accumulator per group. Region 8 uses (float)(acc - magic) once at the end,
// exact for any int32 sum.
//
// Pipeline: cp.async (16 B, L2-only) into a STAGES-deep ring of shared-memory stages; each stage
// holds WK slices; warp (wm, wn, wk) multiplies slice wk of each stage for its WTM x WTN sub-tile
// (WK > 1 = split-K across the warps of one CTA, reduced through shared memory at the end: used by
// the memory-bound decode tile). Shared-memory rows are 64 B (four 16 B chunks); chunk c of row r
// is stored at chunk c ^ ((r >> 1) & 3) so the eight rows read by one ldmatrix phase hit eight
// distinct 16 B bank groups (conflict-free) and cp.async writes stay conflict-free too.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "common/asyncCopy.cuh"

namespace lowbit {
namespace igemm {

constexpr int kSliceBytes = 64;          // K bytes per row per slice: 128 int4 or 64 int8 values
constexpr int kMagic = 0x4B400000;       // bits of 1.5 * 2^23 as fp32
constexpr float kMagicF = 12582912.0f;   // 1.5 * 2^23

enum Mode { kW4A4G128 = 0, kW4A4G64 = 1, kW8A8 = 2 };

// Tile configuration. BM x BN output tile per CTA; WM x WN x WK warps; each stage of the
// STAGES-deep cp.async ring holds WK * SPS slices (SPS consecutive slices per warp group).
template <int BM_, int BN_, int WM_, int WN_, int WK_, int SPS_, int STAGES_, int MINB_>
struct TileConfig {
  static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, WK = WK_, STAGES = STAGES_;
  static constexpr int SPS = SPS_;
  static constexpr int kSlicesPerStage = WK * SPS;
  static constexpr int kMinBlocks = MINB_;
  static constexpr int kWarps = WM * WN * WK;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int WTM = BM / WM, WTN = BN / WN;  // warp tile
  static constexpr int MT = WTM / 16, NT = WTN / 8;   // mma tiles per warp
  static constexpr int kStageBytes = kSlicesPerStage * (BM + BN) * kSliceBytes;
  static constexpr int kSmemBytes = STAGES * kStageBytes;
  static constexpr int kReduceBytes = (WK - 1) * WM * WN * MT * NT * 4 * 32 * 4;
  static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile must be a multiple of 16 x 16");
  static_assert((kSlicesPerStage * BM * 4) % kThreads == 0 &&
                    (kSlicesPerStage * BN * 4) % kThreads == 0,
                "each thread must issue the same number of 16 B copies per stage");
  static_assert(kReduceBytes <= kSmemBytes, "split-K reduction must fit in the stage ring");
  static_assert(STAGES >= 2, "need at least double buffering");
};

// Operands of one launch (device pointers; see the kernel headers for shapes and rules).
struct Problem {
  const int8_t* a4;    // [M, Kn/2] packed int4 (region 4), row stride Kn/2 bytes
  const int8_t* b4;    // [N, Kn/2]
  const __half* as4;   // [M, Kn/G] fp16 group scales of A
  const __half* bs4t;  // [Kn/G, N] fp16 group scales of B, transposed (lowbit.packing)
  const int8_t* a8;    // [M, K8] int8 (region 8), row stride K8 bytes
  const int8_t* b8;    // [N, K8]
  const void* as8;     // [M] (or [1] when as8Stride == 0): fp16 (Atom) / fp32 (W8A8)
  const void* bs8;     // [N]: fp16 (Atom) / fp32 (W8A8)
  __half* y;           // [M, N] fp16 output
  int M, N, Kn, K8;
  int ng;              // Kn / G
  int slices4;         // Kn / 128
  int slices8;         // ceil(K8 / 64)
  int as8Stride;       // 1: per-row scale, 0: one static scale
  int constWeights;    // 1: b4 / bs4t / b8 / bs8 not written by the previous kernel (gemv)
  void* workspace;     // W4A4: scratch of the wide wgmma kernel (wgmmaW4a4Wide.cuh), or null
  size_t workspaceBytes;
};

// Four 8x(16 B) matrices; lane L gives the row address of matrix L/8, row L%8; register j of
// lane (g = L/4, t = L%4) receives bytes 4t..4t+3 of row g of matrix j.
__device__ __forceinline__ void ldmatrixX4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smemAddr(p)));
}

__device__ __forceinline__ void mmaS8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                      uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 8 packed int4 -> two int8x4 words of 16 * value (even nibbles in lo, odd nibbles in hi).
__device__ __forceinline__ void widen4(uint32_t w, uint32_t& lo, uint32_t& hi) {
  lo = (w << 4) & 0xF0F0F0F0u;
  hi = w & 0xF0F0F0F0u;
}

// Swizzled byte offset of (row, 16 B chunk) in a 64 B-row shared-memory block.
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * kSliceBytes + ((chunk ^ ((row >> 1) & 3)) << 4);
}

template <int MODE>
__device__ __forceinline__ float loadScale8(const void* p, int i) {
  if constexpr (MODE == kW8A8) return static_cast<const float*>(p)[i];
  else return __half2float(static_cast<const __half*>(p)[i]);
}

template <class C, int MODE>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) igemmKernel(const Problem p) {
  extern __shared__ __align__(128) uint8_t smem[];
  constexpr int BM = C::BM, BN = C::BN, WK = C::WK, MT = C::MT, NT = C::NT;
  constexpr int SPS = C::SPS, SPG = C::kSlicesPerStage;
  // W8A8 without split-K: the single int32 sum is scaled once, so no fp32 accumulator array.
  constexpr bool kDirect = (MODE == kW8A8 && WK == 1);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wk = warp / (C::WM * C::WN);
  const int wmn = warp % (C::WM * C::WN);
  const int wm = wmn / C::WN, wn = wmn % C::WN;
  const int g = lane >> 2, t = lane & 3;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int slices4 = (MODE == kW8A8) ? 0 : p.slices4;
  const int totalSlices = slices4 + p.slices8;
  const int numStages = (totalSlices + SPG - 1) / SPG;
  const int rowBytes4 = p.Kn >> 1;

  // ---- producer: all threads copy one stage (SPG slices of A and B) -------------------------
  auto loadStage = [&](int stage, int buf) {
    uint8_t* sA = smem + buf * C::kStageBytes;  // [SPG][BM][64 B]
    uint8_t* sB = sA + SPG * BM * kSliceBytes;  // [SPG][BN][64 B]
#pragma unroll
    for (int it = 0; it < (SPG * BM * 4) / C::kThreads; ++it) {
      const int j = tid + it * C::kThreads;
      const int c = j & 3, r = (j >> 2) % BM, w = (j >> 2) / BM;
      const int sl = stage * SPG + w;
      if (sl >= totalSlices) continue;
      const int row = m0 + r;
      const int8_t* src;
      bool ok = row < p.M;
      if (sl < slices4) {
        src = p.a4 + (size_t)row * rowBytes4 + sl * kSliceBytes + c * 16;
      } else {
        const int off = (sl - slices4) * kSliceBytes + c * 16;
        ok = ok && off < p.K8;
        src = p.a8 + (size_t)row * p.K8 + off;
      }
      cpAsync16(sA + swz(w * BM + r, c), ok ? src : (sl < slices4 ? p.a4 : p.a8), ok ? 16 : 0);
    }
#pragma unroll
    for (int it = 0; it < (SPG * BN * 4) / C::kThreads; ++it) {
      const int j = tid + it * C::kThreads;
      const int c = j & 3, r = (j >> 2) % BN, w = (j >> 2) / BN;
      const int sl = stage * SPG + w;
      if (sl >= totalSlices) continue;
      const int row = n0 + r;
      const int8_t* src;
      bool ok = row < p.N;
      if (sl < slices4) {
        src = p.b4 + (size_t)row * rowBytes4 + sl * kSliceBytes + c * 16;
      } else {
        const int off = (sl - slices4) * kSliceBytes + c * 16;
        ok = ok && off < p.K8;
        src = p.b8 + (size_t)row * p.K8 + off;
      }
      cpAsync16(sB + swz(w * BN + r, c), ok ? src : (sl < slices4 ? p.b4 : p.b8), ok ? 16 : 0);
    }
  };

  int accI[MT][NT][4];
  float accF[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        accI[i][j][e] = kMagic;
        accF[i][j][e] = 0.f;
      }

  // Rows/cols of this thread's accumulators (clamped for scale loads; stores are guarded).
  int rowIdx[MT][2], colIdx[NT];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) rowIdx[i][h] = min(m0 + wm * C::WTM + i * 16 + g + h * 8, p.M - 1);
#pragma unroll
  for (int j = 0; j < NT; ++j) colIdx[j] = min(n0 + wn * C::WTN + j * 8 + t * 2, p.N - 2);

  // Adds the finished group sums (acc = magic + 256 * sum) scaled by as4 * bs4t / 256.
  auto foldGroup = [&](int grp) {
    float xs[MT][2];
    float2 ws[NT];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        xs[i][h] = __half2float(p.as4[(size_t)rowIdx[i][h] * p.ng + grp]) * (1.f / 256.f);
#pragma unroll
    for (int j = 0; j < NT; ++j)
      ws[j] = __half22float2(*reinterpret_cast<const __half2*>(p.bs4t + (size_t)grp * p.N + colIdx[j]));
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float s = xs[i][e >> 1] * ((e & 1) ? ws[j].y : ws[j].x);
          const float v = __int_as_float(accI[i][j][e]) - kMagicF;
          accF[i][j][e] = fmaf(v, s, accF[i][j][e]);
          accI[i][j][e] = kMagic;
        }
  };

  // One 32-byte K chunk pair (kc) of this warp's A and B sub-tiles -> fragments.
  auto loadFrags = [&](const uint8_t* sA, const uint8_t* sB, int kc, uint32_t (&fa)[MT][4],
                       uint32_t (&fb)[NT / 2][4]) {
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      const int r = i * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
      ldmatrixX4(fa[i], sA + swz(r, kc * 2 + (lane >> 4)));
    }
#pragma unroll
    for (int j = 0; j < NT / 2; ++j) {
      const int r = j * 16 + (lane & 7) + (lane >> 4) * 8;
      ldmatrixX4(fb[j], sB + swz(r, kc * 2 + ((lane >> 3) & 1)));
    }
  };

  // ---- main loop ------------------------------------------------------------------------------
#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < numStages) loadStage(s, s);
    cpAsyncCommit();
  }

  for (int s = 0; s < numStages; ++s) {
    cpAsyncWait<C::STAGES - 2>();
    __syncthreads();  // stage s landed for everyone; everyone is done with stage s-1's buffer
    {
      const int ps = s + C::STAGES - 1;
      if (ps < numStages) loadStage(ps, ps % C::STAGES);
      cpAsyncCommit();
    }
    const uint8_t* base = smem + (s % C::STAGES) * C::kStageBytes;
#pragma unroll
    for (int sp = 0; sp < SPS; ++sp) {
      const int w = wk * SPS + sp;
      const int sl = s * SPG + w;
      if (sl >= totalSlices) break;
      const uint8_t* sA = base + (w * BM + wm * C::WTM) * kSliceBytes;
      const uint8_t* sB = base + SPG * BM * kSliceBytes + (w * BN + wn * C::WTN) * kSliceBytes;
      if (sl < slices4) {
        // Packed int4: each 16 B chunk holds 32 K values = one k32 mma step.
#pragma unroll
        for (int kc = 0; kc < 2; ++kc) {
          uint32_t fa[MT][4], fb[NT / 2][4];
          loadFrags(sA, sB, kc, fa, fb);
#pragma unroll
          for (int h = 0; h < 2; ++h) {  // chunk 2*kc + h
            uint32_t a[MT][4];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
              // a0/a2: row g (even/odd nibbles), a1/a3: row g + 8. The B fragment below pairs
              // b0 with even and b1 with odd nibbles of the same word position t.
              widen4(fa[i][h * 2 + 0], a[i][0], a[i][2]);
              widen4(fa[i][h * 2 + 1], a[i][1], a[i][3]);
            }
#pragma unroll
            for (int j = 0; j < NT; ++j) {
              uint32_t b0, b1;
              widen4(fb[j >> 1][(j & 1) * 2 + h], b0, b1);
#pragma unroll
              for (int i = 0; i < MT; ++i) mmaS8(accI[i][j], a[i], b0, b1);
            }
          }
          if constexpr (MODE == kW4A4G64) foldGroup(sl * 2 + kc);
        }
        if constexpr (MODE == kW4A4G128) foldGroup(sl);
      } else {
        // int8: one k32 step per 32 B; fragments are the standard mma layout.
#pragma unroll
        for (int kc = 0; kc < 2; ++kc) {
          uint32_t fa[MT][4], fb[NT / 2][4];
          loadFrags(sA, sB, kc, fa, fb);
#pragma unroll
          for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int i = 0; i < MT; ++i)
              mmaS8(accI[i][j], fa[i], fb[j >> 1][(j & 1) * 2 + 0], fb[j >> 1][(j & 1) * 2 + 1]);
        }
      }
    }  // sp
  }
  cpAsyncWait<0>();

  // ---- region 8: one scale for the whole integer sum ------------------------------------------
  if (p.slices8 > 0) {
    float xs[MT][2], ws[NT][2];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) xs[i][h] = loadScale8<MODE>(p.as8, rowIdx[i][h] * p.as8Stride);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      ws[j][0] = loadScale8<MODE>(p.bs8, colIdx[j]);
      ws[j][1] = loadScale8<MODE>(p.bs8, colIdx[j] + 1);
    }
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float v = static_cast<float>(accI[i][j][e] - kMagic);
          if constexpr (kDirect) {
            // the result replaces the integer in place: no second register array
            accI[i][j][e] = __float_as_int(v * xs[i][e >> 1] * ws[j][e & 1]);
          } else if constexpr (MODE == kW8A8) {
            accF[i][j][e] += v * xs[i][e >> 1] * ws[j][e & 1];
          } else {
            accF[i][j][e] = fmaf(v, xs[i][e >> 1] * ws[j][e & 1], accF[i][j][e]);
          }
        }
  }

  // ---- split-K reduction across the WK warp groups --------------------------------------------
  if constexpr (WK > 1) {
    __syncthreads();  // all warps are done reading the stage ring
    float* red = reinterpret_cast<float*>(smem);
    constexpr int kPer = MT * NT * 4;
    if (wk > 0) {
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            red[(((wk - 1) * C::WM * C::WN + wmn) * kPer + (i * NT + j) * 4 + e) * 32 + lane] =
                accF[i][j][e];
    }
    __syncthreads();
    if (wk > 0) return;
#pragma unroll
    for (int q = 1; q < WK; ++q)
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            accF[i][j][e] +=
                red[(((q - 1) * C::WM * C::WN + wmn) * kPer + (i * NT + j) * 4 + e) * 32 + lane];
  }

  // ---- store fp16 (N % 8 == 0, so a column pair is either fully inside or outside) ------------
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = m0 + wm * C::WTM + i * 16 + g + h * 8;
      if (row >= p.M) continue;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int col = n0 + wn * C::WTN + j * 8 + t * 2;
        if (col < p.N)
          *reinterpret_cast<__half2*>(p.y + (size_t)row * p.N + col) =
              kDirect ? __floats2half2_rn(__int_as_float(accI[i][j][h * 2]),
                                          __int_as_float(accI[i][j][h * 2 + 1]))
                      : __floats2half2_rn(accF[i][j][h * 2], accF[i][j][h * 2 + 1]);
      }
    }
}

// ---- explicit tile configurations (the only ones instantiated) --------------------------------
//  Decode: M <= 16, memory-bound. 16 x 32 tile, 8 warps split K 8 ways (each warp one 64 B slice
//          per stage, so one stage streams 32 rows x 512 B of weights), 3 stages = 72 KiB;
//          N/32 CTAs (344 for N = 11008), up to 3 resident per SM to keep enough bytes in flight.
using CfgDecode = TileConfig<16, 32, 1, 1, 8, 1, 3, 2>;
//  Mid:    17 <= M and too few 128 x 128 tiles to fill the GPU twice. 64 x 64 tile, 2 x 2 warps,
//          2-way split K (warp tile 32 x 32), 4 stages x 16 KiB.
using CfgMid = TileConfig<64, 64, 2, 2, 2, 1, 4, 2>;
//  Large:  prefill. 128 x 128 tile, 2 x 4 warps (warp tile 64 x 32), 2 slices (128 B of K) per
//          stage to halve the barriers, 3 stages x 32 KiB = 96 KiB (fits sm_89's 99 KiB).
using CfgLarge = TileConfig<128, 128, 2, 4, 1, 2, 3, 1>;
//  Large8: W8A8 prefill. 128 x 256 tile, 2 x 4 warps (warp tile 64 x 64: half the shared-memory
//          reads per mma of 64 x 32, which int8 needs; W4A4 reads half the bytes already and has
//          no registers left for it), 4 stages x 24 KiB = 96 KiB.
using CfgLarge8 = TileConfig<128, 256, 2, 4, 1, 1, 4, 1>;

enum ConfigId {
  kCfgAuto = -1, kCfgDecode = 0, kCfgMid = 1, kCfgLarge = 2, kCfgSkinny = 3,
  kCfgGemv = 4, kCfgGemvK16 = 5, kCfgGemvK12 = 6,  // gemv: K16 or K12 by shape; or forced
  // sm_90a wgmma kernels (wgmmaCore.cuh), compute capability 9.0 only (else UNSUPPORTED):
  // W8A8 128x256 tile / W4A4 64x256 tile (G = 128, 16-byte aligned ws4t)
  kCfgWgmma = 7,
  kCfgWgmmaN128 = 8,  // W8A8 128x128 tile; W4A4: the ping-pong variant (slower, never auto)
  kCfgWgmmaN64 = 9,   // W8A8 128x64 tile (small M); W4A4: unsupported
  kCfgWgmmaN32 = 10,  // W8A8 128x32 tile (small M); W4A4: unsupported
  // W8A8 only (W4A4: unsupported): split-K over thread-block clusters (wgmmaCore.cuh,
  // w8a8WgmmaSplitKernel), for weight-streaming small M. 11: tile width and split by
  // pickW8a8Split, S <= 2 (may take S = 1, a plain kernel); never auto; 12/13/14: 128x64 tile,
  // S = 2/3/4; 15/16/17: 128x32 tile, S = 2/3/4.
  kCfgWgmmaSplit = 11,
  kCfgWgmmaSk64x2 = 12, kCfgWgmmaSk64x3 = 13, kCfgWgmmaSk64x4 = 14,
  kCfgWgmmaSk32x2 = 15, kCfgWgmmaSk32x3 = 16, kCfgWgmmaSk32x4 = 17,
  kCfgWgmmaN96 = 18,  // W8A8 128x96 tile (small M, N = 11008: one wave); W4A4: unsupported
  // W4A4 (G = 128) only: weights as the register operand, activations widened once into the
  // caller's workspace (wgmmaW4a4Wide.cuh); auto in place of 7 when the workspace is given
  kCfgWgmmaWide = 19
};


}  // namespace igemm
}  // namespace lowbit

// ---- host side: configuration choice and launch -----------------------------------------------
#include "common/cudaCheck.h"

#include "common/igemmSkinny.cuh"
#include "common/igemmGemv.cuh"
#include "common/wgmmaCore.cuh"

namespace lowbit {
namespace igemm {

// W8A8 wgmma tile width, from the H100 sweep (benchmarks/bench_gemm.py --sweep, NOTES.md log 9):
// one M-tile streams weights best with 128-wide tiles when N is large (>= 64 CTAs), else 64/32;
// M <= 512 wants many CTAs (64); from M ~ 1024 the widest tile that still fills 60% of the SMs.
// M <= 64 (one M-tile, A box of 32/64 rows): the plain tile width of least modelled time
// (pickW8a8Split with S = 1: the cluster split-K kernels measured no faster, NOTES log 10).
inline int pickW8a8WgmmaConfig(int M, int N, int K) {
  if (M <= 64) {
    int bn = 128, s = 1;
    wg::pickW8a8Split(M, N, K, 1, &bn, &s);
    return bn == 128 ? kCfgWgmmaN128 : bn == 96 ? kCfgWgmmaN96
                                      : bn == 64 ? kCfgWgmmaN64 : kCfgWgmmaN32;
  }
  if (M <= 128) return N >= 8192 ? kCfgWgmmaN128 : (M <= 64 ? kCfgWgmmaN64 : kCfgWgmmaN32);
  if (M <= 512) return kCfgWgmmaN64;
  const long tiles256 = (long)((M + 127) / 128) * ((N + 255) / 256);
  return tiles256 * 5 >= 3L * multiprocessorCount() ? kCfgWgmma : kCfgWgmmaN128;
}

// Gemv kernel for M <= 16 (tiled decode for G = 64; gemv falls back to skinny where it does not
// fit), W4A4 (G = 128) M <= 64 and W8A8 M <= 32 where no wgmma kernel runs; the 128 x 128 tile
// once it yields at least two waves; else 64 x 64.
// wideReady: the W4A4 call gave the wide kernel's workspace (wg::w4a4WideFits).
inline int pickConfig(int M, int N, int K, int mode, bool wideReady = false) {
  if (M <= 16) return mode == kW4A4G64 ? kCfgDecode : kCfgGemv;
  // wgmma (sm_90a) beats every mma.sync tile for W8A8 from M = 17 (M = 17..32: 128 x 96 / 64 /
  // 32 tiles with a 32-row A box, 22.8 vs gemv 23.2-26.0 us at 4096 x 11008, NOTES log 17)
  if (mode == kW8A8 && wg::wgmmaAvailable()) return pickW8a8WgmmaConfig(M, N, K);
  // gemv with four / eight token groups: W4A4 M <= 64 (4096 x 11008 M = 32: ~20 vs 35.9 us for
  // `mid`; 11008 x 4096 M = 64: ~30 vs 61.7 us), W8A8 M <= 32 (GPUs without the wgmma kernels)
  // (where it does not fit, e.g. N < 16, dispatch falls back to `mid`)
  if (M <= (mode == kW8A8 ? 32 : 64) && mode != kW4A4G64) return kCfgGemv;
  // W4A4 wgmma (64 x 256 tiles, one wave up to 132 tiles): from M = 512 (also for N not
  // measured), and for M = 65..511 once its tiles fill at least half the SMs; below that the
  // 64 x 64 tiles of `mid` spread over more SMs (H100 sweep, NOTES log 17: 4096 x 11008 M = 128
  // 39.6 vs 54.7 us, 11008 x 4096 M = 128 89.1 vs 59.0 us)
  // With the workspace, dispatch runs the wide kernel in place of 7 (128 x 128 tiles), which also
  // beats `mid` from M = 256 where N is small (11008 x 4096 M = 256: 63.5 vs 85.3 us, 4096 x 4096:
  // 27.7 vs 34.3; at M = 128 `mid` stays ahead there, 58.7 vs 62.7 us: NOTES log 29).
  if (mode == kW4A4G128 && wg::wgmmaAvailable()) {
    const long tilesW = (long)((M + 63) / 64) * ((N + 255) / 256);
    if (M >= 512 || 2 * tilesW >= multiprocessorCount() || (wideReady && M >= 256))
      return kCfgWgmma;
  }
  const long tiles = (long)((M + 127) / 128) * ((N + 127) / 128);
  return tiles >= 2L * multiprocessorCount() ? kCfgLarge : kCfgMid;
}

template <class C, int MODE>
inline int launchConfig(const Problem& p, cudaStream_t stream) {
  auto kernel = igemmKernel<C, MODE>;
  int st = allowDynamicSmem<igemmKernel<C, MODE>>(C::kSmemBytes);
  if (st != LOWBIT_OK) return st;
  const dim3 grid((p.N + C::BN - 1) / C::BN, (p.M + C::BM - 1) / C::BM);
  if (grid.y > 65535) return LOWBIT_ERR_BAD_SHAPE;
  kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(p);
  return launchStatus();
}

template <int MODE>
inline int dispatch(const Problem& p, int config, cudaStream_t stream) {
  const bool autoPick = config == kCfgAuto;
  bool wideReady = false;  // W4A4 G = 128 with the wide kernel's workspace
  if constexpr (MODE == kW4A4G128) wideReady = wg::w4a4WideFits(p);
  if (autoPick) config = pickConfig(p.M, p.N, p.K8, MODE, wideReady);
  switch (config) {
    case kCfgGemv:
    case kCfgGemvK16:
    case kCfgGemvK12:
      if (gemvFits<MODE>(p)) return launchGemv<MODE>(p, stream, config - kCfgGemv);
      if (!autoPick) return LOWBIT_ERR_UNSUPPORTED;
      // auto, > 2 GiB operands: M > 16 takes the 64 x 64 tiles, M <= 16 (also N < 16) the
      // skinny/decode path
      if (p.M > 16) return launchConfig<CfgMid, MODE>(p, stream);
      [[fallthrough]];
    case kCfgSkinny: {
      bool used = false;
      const int st = launchSkinny<MODE>(p, stream, &used);
      if (st != LOWBIT_OK || used) return st;
      return launchConfig<CfgDecode, MODE>(p, stream);  // GPU without enough shared memory
    }
    case kCfgDecode: return launchConfig<CfgDecode, MODE>(p, stream);
    case kCfgMid: return launchConfig<CfgMid, MODE>(p, stream);
    case kCfgLarge:
      if constexpr (MODE == kW8A8) return launchConfig<CfgLarge8, MODE>(p, stream);
      else return launchConfig<CfgLarge, MODE>(p, stream);
    case kCfgWgmmaSplit:
    case kCfgWgmmaSk64x2:
    case kCfgWgmmaSk64x3:
    case kCfgWgmmaSk64x4:
    case kCfgWgmmaSk32x2:
    case kCfgWgmmaSk32x3:
    case kCfgWgmmaSk32x4:
      if (!wg::wgmmaAvailable()) return LOWBIT_ERR_UNSUPPORTED;
      if constexpr (MODE == kW8A8) {
        int bn = 64, s = 2;
        if (config == kCfgWgmmaSplit) {
          wg::pickW8a8Split(p.M, p.N, p.K8, 2, &bn, &s);
          if (s == 1)
            return bn == 128  ? wg::launchW8a8<128>(p, stream)
                   : bn == 96 ? wg::launchW8a8<96>(p, stream)
                   : bn == 64 ? wg::launchW8a8<64>(p, stream)
                              : wg::launchW8a8<32>(p, stream);
        } else {
          bn = config <= kCfgWgmmaSk64x4 ? 64 : 32;
          s = 2 + (config - (bn == 64 ? kCfgWgmmaSk64x2 : kCfgWgmmaSk32x2));
        }
        const int st = bn == 64 ? wg::launchW8a8Split<64>(p, s, stream)
                                : wg::launchW8a8Split<32>(p, s, stream);
        if (st == LOWBIT_ERR_UNSUPPORTED && autoPick) return wg::launchW8a8<64>(p, stream);
        return st;
      } else {
        return LOWBIT_ERR_UNSUPPORTED;
      }
    case kCfgWgmma:
    case kCfgWgmmaN128:
    case kCfgWgmmaN96:
    case kCfgWgmmaN64:
    case kCfgWgmmaN32:
      if (!wg::wgmmaAvailable()) return LOWBIT_ERR_UNSUPPORTED;
      if constexpr (MODE == kW8A8) {
        switch (config) {
          case kCfgWgmma: return wg::launchW8a8<256>(p, stream);
          case kCfgWgmmaN128: return wg::launchW8a8<128>(p, stream);
          case kCfgWgmmaN96: return wg::launchW8a8<96>(p, stream);
          case kCfgWgmmaN64: return wg::launchW8a8<64>(p, stream);
          default: return wg::launchW8a8<32>(p, stream);
        }
      } else if constexpr (MODE == kW4A4G128) {
        if (config == kCfgWgmmaN96 || config == kCfgWgmmaN64 || config == kCfgWgmmaN32)
          return LOWBIT_ERR_UNSUPPORTED;
        if (!wg::w4a4Fits(p, 128)) {
          if (!autoPick) return LOWBIT_ERR_UNSUPPORTED;
          return launchConfig<CfgLarge, MODE>(p, stream);
        }
        if (config == kCfgWgmma && autoPick && wideReady) return wg::launchW4a4Wide(p, stream);
        return config == kCfgWgmma ? wg::launchW4a4<128>(p, stream)
                                   : wg::launchW4a4PingPong(p, stream);
      } else {
        return LOWBIT_ERR_UNSUPPORTED;  // G = 64 has no wgmma kernel
      }
    case kCfgWgmmaWide:
      if (!wideReady || !wg::wgmmaAvailable()) return LOWBIT_ERR_UNSUPPORTED;  // W4A4 G = 128 only
      if constexpr (MODE == kW4A4G128) return wg::launchW4a4Wide(p, stream);
      return LOWBIT_ERR_UNSUPPORTED;
    default: return LOWBIT_ERR_UNSUPPORTED;
  }
}

}  // namespace igemm
}  // namespace lowbit
