// Register-streaming int8 tensor-core GEMV/GEMM for M <= 16 (decode), shared by w4a4Gemm and
// w8a8Gemm. Included by igemmCore.cuh (uses its Problem, Mode, widen4, loadScale8); same operands
// and math as the tiled kernels.
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
//    second mma (tokens 8..15) sharing the widened weights.
//  * out-of-range rows/columns are clamped, not predicated (their sums are never stored).
//
// Work split: a tile is NB blocks of 16 output columns (16 weight rows). A "super-chunk" is 64
// bytes of K per row: 128 int4 values = one group of G = 128 (region 4), or 64 int8 values
// (region 8: W8A8, or Atom's outliers). The KS warps of a CTA take the S super-chunks of a tile
// round-robin (warp ks: ks, ks + KS, ...; cnt = ceil((S - ks) / KS) of them, at least 1 so that
// every warp meets every tile's barrier). Work item = (tile, one super-chunk): lane (g, t) loads
// 16-byte chunk t of weight rows nb + g and nb + 8 + g of each block, the same chunk of
// activation rows (tokens) g (and g + 8), and the scales. In mma step i each lane supplies word i
// of ITS chunk for A and B alike, so the K order inside an mma agrees and no repacking is needed:
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

namespace lowbit {
namespace igemm {

// 16-byte streaming load: read-only path, no L1 allocation (weights are read exactly once); the
// L2::256B hint makes L2 fetch the surrounding 256 B (a row's neighbouring super-chunks, which
// other warps of the CTA read next) in one DRAM request (log 8 of plugins/NOTES.md: -0..7%).
// volatile keeps the prefetch ahead of the multiplications that do not depend on it.
__device__ __forceinline__ uint4 ldgStream16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
// 16-byte / 2-byte read-only loads that allocate in L1 (activations: reused per tile).
__device__ __forceinline__ uint4 ldgCached16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
__device__ __forceinline__ uint32_t ldgCached2(const void* p) {
  unsigned short v;
  asm volatile("ld.global.nc.u16 %0, [%1];\n" : "=h"(v) : "l"(p));
  return v;
}

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
// group scales, raw fp16 bits in the low half), the activation chunks of tokens g and g + 8 and
// the activation scales of tokens 2t, 2t + 1 (+ 8).
template <int NB>
struct GemvStage {
  uint4 b0[NB], b1[NB];
  uint32_t w0[NB], w1[NB];
  uint4 a0, a1;
  uint32_t x[4];
};

template <int KS, int NB, bool kHalf>
struct GemvConfig {
  static constexpr int kThreads = KS * 32;
  static constexpr int kE = kHalf ? 4 : 8;                 // accumulators per lane per block
  static constexpr int kRedFloats = KS * NB * kE * 32;     // [KS][NB][kE][32] per buffer
  static constexpr int kSmemBytes = 2 * kRedFloats * 4;    // double-buffered
};

__device__ __forceinline__ float halfBits(uint32_t h) {
  return __half2float(__ushort_as_half((unsigned short)h));
}

// kHalf: M <= 8, tokens 8..15 never exist (not loaded, no second mma).
template <int MODE, int KS, int NB, int D, bool kHalf>
__global__ void __launch_bounds__(KS * 32, KS < 16 ? 16 / KS : 1) gemvKernel(const Problem p) {
  using C = GemvConfig<KS, NB, kHalf>;
  constexpr int E = C::kE;
  extern __shared__ __align__(16) float red[];
  const int lane = threadIdx.x & 31, ks = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int S4 = (MODE == kW8A8) ? 0 : p.ng;  // int4 super-chunks (= groups of 128)
  const int S = S4 + p.slices8;
  const int cnt = S > ks ? (S - ks + KS - 1) / KS : 1;  // items per tile for this warp
  const int scEnd = ks + cnt * KS;
  const int tiles = (p.N + NB * 16 - 1) / (NB * 16);
  const int myTiles = (tiles - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
  const int total = myTiles * cnt;
  const uint32_t rowB4 = (uint32_t)p.Kn >> 1, rowB8 = (uint32_t)p.K8;
  // tokens (clamped: rows >= M compute sums that are never stored)
  const uint32_t ta = (uint32_t)min(g, p.M - 1), tb = (uint32_t)min(g + 8, p.M - 1);
  uint32_t tx[4];  // tokens whose scales this lane applies: 2t, 2t + 1, 2t + 8, 2t + 9
#pragma unroll
  for (int i = 0; i < 4; ++i) tx[i] = (uint32_t)min(2 * t + (i & 1) + (i >> 1) * 8, p.M - 1);
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
  auto load = [&](GemvStage<NB>& st) {
    const int sc = lSc;
    if (lIt < total) {
      if (sc < S4) {
        const uint32_t o = (uint32_t)sc * kSliceBytes;
        st.a0 = ldgCached16(p.a4 + (ta * rowB4 + t * 16 + o));
        if constexpr (!kHalf) st.a1 = ldgCached16(p.a4 + (tb * rowB4 + t * 16 + o));
#pragma unroll
        for (int i = 0; i < (kHalf ? 2 : 4); ++i) st.x[i] = ldgCached2(p.as4 + (tx[i] * p.ng + sc));
        const __half* ws = p.bs4t + (size_t)sc * p.N + g;
#pragma unroll
        for (int j = 0; j < NB; ++j) {
          const int nb = min(lN0 + j * 16, p.N - 16);
          st.b0[j] = ldgStream16(p.b4 + (row4[j] + o));
          st.b1[j] = ldgStream16(p.b4 + (row4[j] + 8 * rowB4 + o));
          st.w0[j] = ldgCached2(ws + nb);
          st.w1[j] = ldgCached2(ws + nb + 8);
        }
      } else if (sc < S) {
        const uint32_t o = (uint32_t)(sc - S4) * kSliceBytes + t * 16;
        if (o < rowB8) {  // K8 % 16 == 0: a chunk is all in or all out
          st.a0 = ldgCached16(p.a8 + (ta * rowB8 + o));
          if constexpr (!kHalf) st.a1 = ldgCached16(p.a8 + (tb * rowB8 + o));
#pragma unroll
          for (int j = 0; j < NB; ++j) {
            const uint32_t r = (uint32_t)min(lN0 + j * 16, p.N - 16) + g;
            st.b0[j] = ldgStream16(p.b8 + (r * rowB8 + o));
            st.b1[j] = ldgStream16(p.b8 + ((r + 8) * rowB8 + o));
          }
        } else {
          st.a0 = zero;
          st.a1 = zero;
#pragma unroll
          for (int j = 0; j < NB; ++j) {
            st.b0[j] = zero;
            st.b1[j] = zero;
          }
        }
        if constexpr (MODE != kW8A8) {  // Atom outliers are folded per item: fp16 scales now
          const __half* xs8 = static_cast<const __half*>(p.as8);
          const __half* ws8 = static_cast<const __half*>(p.bs8);
#pragma unroll
          for (int i = 0; i < (kHalf ? 2 : 4); ++i) st.x[i] = ldgCached2(xs8 + tx[i]);
#pragma unroll
          for (int j = 0; j < NB; ++j) {
            const int nb = min(lN0 + j * 16, p.N - 16);
            st.w0[j] = ldgCached2(ws8 + nb + g);
            st.w1[j] = ldgCached2(ws8 + nb + 8 + g);
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
  // acc8: W8A8's exact int32 sum, scaled once at the end of the tile. Index e: 0..3 = c0..c3 of
  // tokens 2t, 2t+1; 4..7 = the same for tokens 2t+8, 2t+9 (only when M > 8).
  float accF[NB][E];
  int acc8[NB][2][4];
#pragma unroll
  for (int j = 0; j < NB; ++j)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      if (e < E) accF[j][e] = 0.f;
      acc8[j][e >> 2][e & 3] = 0;
    }

  // Multiplier position.
  int cSc = ks, cN0 = (int)blockIdx.x * NB * 16, tileCount = 0;
  auto compute = [&](const GemvStage<NB>& st) {
    const int sc = cSc;
    if (sc < S4) {
      float xs[4];  // activation scales / 256 (both operands carry 16 x value)
#pragma unroll
      for (int i = 0; i < (kHalf ? 2 : 4); ++i) xs[i] = halfBits(st.x[i]) * (1.f / 256.f);
      const uint32_t xw0[4] = {st.a0.x, st.a0.y, st.a0.z, st.a0.w};
      const uint32_t xw1[4] = {st.a1.x, st.a1.y, st.a1.z, st.a1.w};
      uint32_t xb[4][2], xb8[4][2];  // widened activations (B operand), reused by the blocks
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        widen4(xw0[i], xb[i][0], xb[i][1]);
        if constexpr (!kHalf) widen4(xw1[i], xb8[i][0], xb8[i][1]);
      }
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        const uint32_t w0[4] = {st.b0[j].x, st.b0[j].y, st.b0[j].z, st.b0[j].w};
        const uint32_t w1[4] = {st.b1[j].x, st.b1[j].y, st.b1[j].z, st.b1[j].w};
        int acc[4], accH[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          uint32_t a[4];
          widen4(w0[i], a[0], a[2]);
          widen4(w1[i], a[1], a[3]);
          if (i == 0) {
            mmaS8To(acc, a, xb[i][0], xb[i][1], magic);
            if constexpr (!kHalf) mmaS8To(accH, a, xb8[i][0], xb8[i][1], magic);
          } else {
            mmaS8To(acc, a, xb[i][0], xb[i][1], acc);
            if constexpr (!kHalf) mmaS8To(accH, a, xb8[i][0], xb8[i][1], accH);
          }
        }
        const float wa = halfBits(st.w0[j]), wb = halfBits(st.w1[j]);
        accF[j][0] = fmaf(__int_as_float(acc[0]) - kMagicF, wa * xs[0], accF[j][0]);
        accF[j][1] = fmaf(__int_as_float(acc[1]) - kMagicF, wa * xs[1], accF[j][1]);
        accF[j][2] = fmaf(__int_as_float(acc[2]) - kMagicF, wb * xs[0], accF[j][2]);
        accF[j][3] = fmaf(__int_as_float(acc[3]) - kMagicF, wb * xs[1], accF[j][3]);
        if constexpr (!kHalf) {
          accF[j][4] = fmaf(__int_as_float(accH[0]) - kMagicF, wa * xs[2], accF[j][4]);
          accF[j][5] = fmaf(__int_as_float(accH[1]) - kMagicF, wa * xs[3], accF[j][5]);
          accF[j][6] = fmaf(__int_as_float(accH[2]) - kMagicF, wb * xs[2], accF[j][6]);
          accF[j][7] = fmaf(__int_as_float(accH[3]) - kMagicF, wb * xs[3], accF[j][7]);
        }
      }
    } else if (sc < S) {
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        const uint32_t aA[4] = {st.b0[j].x, st.b1[j].x, st.b0[j].y, st.b1[j].y};
        const uint32_t aB[4] = {st.b0[j].z, st.b1[j].z, st.b0[j].w, st.b1[j].w};
        if constexpr (MODE == kW8A8) {
          mmaS8To(acc8[j][0], aA, st.a0.x, st.a0.y, acc8[j][0]);
          mmaS8To(acc8[j][0], aB, st.a0.z, st.a0.w, acc8[j][0]);
          if constexpr (!kHalf) {
            mmaS8To(acc8[j][1], aA, st.a1.x, st.a1.y, acc8[j][1]);
            mmaS8To(acc8[j][1], aB, st.a1.z, st.a1.w, acc8[j][1]);
          }
        } else {
          // Atom outliers: this 64-value part's exact int32 sum, scaled now (fp32 accumulation
          // order differs from the reference's single scaling by rounding only, ~1e-7).
          const float wa = halfBits(st.w0[j]), wb = halfBits(st.w1[j]);
          int acc[4];
          mmaS8To(acc, aA, st.a0.x, st.a0.y, zeros);
          mmaS8To(acc, aB, st.a0.z, st.a0.w, acc);
          const float x0 = halfBits(st.x[0]), x1 = halfBits(st.x[1]);
          accF[j][0] = fmaf(static_cast<float>(acc[0]), wa * x0, accF[j][0]);
          accF[j][1] = fmaf(static_cast<float>(acc[1]), wa * x1, accF[j][1]);
          accF[j][2] = fmaf(static_cast<float>(acc[2]), wb * x0, accF[j][2]);
          accF[j][3] = fmaf(static_cast<float>(acc[3]), wb * x1, accF[j][3]);
          if constexpr (!kHalf) {
            mmaS8To(acc, aA, st.a1.x, st.a1.y, zeros);
            mmaS8To(acc, aB, st.a1.z, st.a1.w, acc);
            const float x2 = halfBits(st.x[2]), x3 = halfBits(st.x[3]);
            accF[j][4] = fmaf(static_cast<float>(acc[0]), wa * x2, accF[j][4]);
            accF[j][5] = fmaf(static_cast<float>(acc[1]), wa * x3, accF[j][5]);
            accF[j][6] = fmaf(static_cast<float>(acc[2]), wb * x2, accF[j][6]);
            accF[j][7] = fmaf(static_cast<float>(acc[3]), wb * x3, accF[j][7]);
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
      float xs[4];
#pragma unroll
      for (int i = 0; i < (kHalf ? 2 : 4); ++i)
        xs[i] = loadScale8<MODE>(p.as8, tx[i] * p.as8Stride);
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
    float* r = red + (tileCount & 1) * C::kRedFloats;
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < E; ++e) {
        r[((ks * NB + j) * E + e) * 32 + lane] = accF[j][e];
        accF[j][e] = 0.f;
      }
    __syncthreads();  // one barrier per tile: the other buffer is written by the next tile
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
    ++tileCount;
  };

  GemvStage<NB> buf[D];
#pragma unroll
  for (int d = 0; d < D; ++d) {
    buf[d].a0 = zero;
    buf[d].a1 = zero;
#pragma unroll
    for (int i = 0; i < 4; ++i) buf[d].x[i] = 0u;
#pragma unroll
    for (int j = 0; j < NB; ++j) {
      buf[d].b0[j] = zero;
      buf[d].b1[j] = zero;
      buf[d].w0[j] = 0u;
      buf[d].w1[j] = 0u;
    }
  }
#pragma unroll
  for (int d = 0; d < D - 1; ++d) load(buf[d]);
  for (int it0 = 0; it0 < total; it0 += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      if (it0 + d < total) {
        load(buf[(d + D - 1) % D]);
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
template <int MODE, int KS, int NB, int D, bool kHalf>
inline int launchGemvWith(const Problem& p, cudaStream_t stream) {
  using C = GemvConfig<KS, NB, kHalf>;
  constexpr auto kernel = gemvKernel<MODE, KS, NB, D, kHalf>;
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
  kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(p);
  return launchStatus();
}

template <int MODE, int KS, int NB, int D>
inline int launchGemvM(const Problem& p, cudaStream_t stream) {
  return p.M <= 8 ? launchGemvWith<MODE, KS, NB, D, true>(p, stream)
                  : launchGemvWith<MODE, KS, NB, D, false>(p, stream);
}

// Whether the gemv kernel takes this problem (else the caller falls back to skinny/decode).
template <int MODE>
inline bool gemvFits(const Problem& p) {
  if (MODE == kW4A4G64 || p.M > 16 || p.N < 16) return false;
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
      const int tiles = (p.N + 31) / 32;
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
