// Hopper (sm_90a) int8 GEMMs on wgmma for prefill shapes: W8A8 (SmoothQuant) and W4A4 (Atom).
// Included by igemmCore.cuh, whose dispatch() picks these on compute capability 9.0 devices
// when the library holds sm_90a code (wgmmaAvailable); everywhere else the mma.sync path runs.
//
// Both kernels are persistent and warp-specialized, 384 threads per CTA, one CTA per SM:
//   warpgroup 0 = producer: one thread issues TMA tile loads (cp.async.bulk.tensor.2d, built on
//                 the host with cuTensorMapEncodeTiled fetched through the runtime's driver
//                 entry point: no -lcuda) into a STAGES-deep ring of shared-memory stages,
//                 full/empty mbarrier pairs per stage; setmaxnreg.dec to 40 registers.
//   warpgroups 1, 2 = consumers (setmaxnreg.inc to 232): wgmma.mma_async s32.s8.s8 from shared-
//                 memory descriptors (and, W4A4, A from registers), epilogue straight from the
//                 accumulator registers to global memory (fp16 pairs).
// Tiles are visited in groups of kGroupM M-tiles (all N-tiles of a group before the next group),
// CTA b takes tiles b, b + grid, ...; the producer runs ahead into the next tile while the
// consumers store the previous one. TMA zero-fills rows past M / N and K past the end, so ragged
// shapes need no special cases (stores are guarded).
//
// W8A8 (w8a8WgmmaKernel<BN>), y[M, N] fp16 = xs[m] * ws[n] * sum_k x[m, k] w[n, k]:
//   x int8 [M, K] row-major, w int8 [N, K] row-major (K % 16 == 0), xs fp32 [M] or [1] (static),
//   ws fp32 [N]. Tile 128 x BN (BN = 256 or 128), K step 128 bytes per stage, 128B swizzle;
//   consumer c computes rows 64c..64c+63 of the tile: 4 x m64nBNk32 per stage, int32 accumulators
//   (BN / 2 registers), scaled once in the epilogue (float(sum) * xs * ws, like igemm kDirect).
//
// W4A4 (w4a4WgmmaKernel), Atom with G = 128:
//   y = sum_g xs4[m,g] ws4t[g,n] * sum_{k in g} x4 w4  +  xs8[m] ws8[n] * sum_k x8 w8
//   x4 int8 [M, Kn/2] packed int4 (low nibble first), w4 int8 [N, Kn/2], xs4 fp16 [M, Kn/128],
//   ws4t fp16 [Kn/128, N] (transposed), x8 int8 [M, Ko], w8 int8 [N, Ko], xs8/ws8 fp16.
//   Tile 64 x 256; the pipeline unit is a "slice" of 64 bytes of K per row (one int4 group of
//   128 values, or 64 int8 outlier values), 64B swizzle; an int4 stage also carries the 256 ws4t
//   values of its group. Consumer c owns columns 128c..128c+127 of the tile (all 64 rows), so the
//   two consumer warpgroups never wait for each other (only the stage release counts both):
//     * B (weights): its 128 rows x 64 B of int4 are widened by the warpgroup's 128 threads (one
//       row each) into int8 lanes holding 16 x value, in a private double-buffered 128B-swizzled
//       buffer [128 rows][128 B], fence.proxy.async + a 128-thread named barrier;
//     * A (activations): ldmatrix of the packed rows, widened in registers = the wgmma A fragment.
//     The K order inside each k32 step is permuted identically for A and B (even nibbles of the
//     4 words of a 16-byte chunk first, then odd ones; see widenRow), which leaves the sum intact.
//     Products are 256 x the int4 products; the group sum |s| <= 256*8*8*128 = 2^21 < 2^24, so
//     its int32 -> fp32 conversion is exact. Per group: wgmma(g) is issued (its first k32 step
//     with scale-d = 0: no reset moves), then B(g+1)/A(g+1) are widened while it runs, then wait
//     and fold accF += float(acc) * (xs4/256 * ws4t) (fp32, the product of two fp16 is exact).
//     (Before: accumulators started at the fp32 bits of 1.5*2^23 and a FADD recovered s, plus 64
//     reset moves per group: one instruction more per element, NOTES log 11.) The int8 outlier
//     slices then run as plain SS wgmma into the same integer accumulators (from 0 at the first),
//     scaled once by xs8 * ws8 at the end.
#pragma once

#include "common/wgmmaOps.cuh"

namespace lowbit {
namespace wg {

constexpr int kThreads = 384;  // warpgroup 0 producer, 1..2 consumers
constexpr int kGroupM = 8;     // tile raster: M-tiles per group

__device__ __forceinline__ void tileCoords(int tile, int tilesM, int tilesN, int& mt, int& nt) {
  const int perGroup = kGroupM * tilesN;
  const int grp = tile / perGroup, first = grp * kGroupM;
  const int gsz = min(tilesM - first, kGroupM);
  const int r = tile - grp * perGroup;
  mt = first + r % gsz;
  nt = r / gsz;
}

// The stage ring of the warp-specialized kernels (thread 0 sets it up, then fences and syncs):
// FULL[s] completes on the producer's arrive.expect_tx plus the TMA bytes, EMPTY[s] on
// `consumers` arrivals (consumer warpgroups, or warps in the wide W4A4 kernel).
template <int STAGES>
__device__ __forceinline__ void initStageRing(uint32_t fullBar, uint32_t emptyBar, int consumers) {
  for (int s = 0; s < STAGES; ++s) {
    mbarInit(fullBar + 8 * s, 1);
    mbarInit(emptyBar + 8 * s, consumers);
  }
}

// The producer's walk (one thread): for tiles tile0, tile0 + step, ... and slices [i0, i1) of
// each, one stage per slice in ring order: wait until the stage is empty, then load(i, mt, nt,
// stage address, its FULL barrier) arms the barrier and issues the stage's TMA loads.
template <int STAGES, int STAGE_BYTES, class Load>
__device__ __forceinline__ void produceStages(int tilesM, int tilesN, int tile0, int step, int i0,
                                              int i1, uint32_t sbase, uint32_t fullBar,
                                              uint32_t emptyBar, Load&& load) {
  const int tiles = tilesM * tilesN;
  int stage = 0;
  uint32_t phase = 0;
  for (int tile = tile0; tile < tiles; tile += step) {
    int mt, nt;
    tileCoords(tile, tilesM, tilesN, mt, nt);
    for (int i = i0; i < i1; ++i) {
      mbarWait(emptyBar + 8 * stage, phase ^ 1);
      load(i, mt, nt, sbase + stage * STAGE_BYTES, fullBar + 8 * stage);
      if (++stage == STAGES) { stage = 0; phase ^= 1; }
    }
  }
}

// The first 1024-byte aligned address (of the shared window) at or after p. Pointer arithmetic on
// the __shared__ array itself: a round trip through uintptr_t hid the address space from the
// compiler, which then emitted generic LD/ST with 64-bit address math for every shared access
// through the result (widenRow, the ws4t loads of the fold; NOTES log 11).
__device__ __forceinline__ uint8_t* align1024(uint8_t* p) {
  return p + ((1024u - (smem32(p) & 1023u)) & 1023u);
}

// ================================ W8A8 ========================================================
struct W8Args {
  const void* xs;   // fp32 [M] (xsStride 1) or [1] (xsStride 0)
  const float* ws;  // fp32 [N]
  __half* y;        // fp16 [M, N]
  int M, N, kBlocks, xsStride, tilesM, tilesN;
  int aRows;  // rows of the A box TMA loads per stage: 128, or 32 / 64 when M fits (one M-tile;
              // the rest of the 128-row A stage is left stale: those rows are never stored)
};

// Explicit tile configurations: 128 x BN output tile, 128 bytes of K per stage.
//   BN = 256: 48 KiB stages x 4 = 192 KiB (m64n256k32, 128 accumulator registers per thread)
//   BN = 128: 32 KiB stages x 6 = 192 KiB (m64n128k32, 64 registers; twice the tiles)
//   BN = 96 / 64 / 32: small M (one M-tile): more CTAs streaming weights; 28 / 24 / 20 KiB
//   stages x 7 / 8 / 8 (96: N = 11008 gives 115 tiles, one wave on 132 SMs, where 128 leaves 46
//   SMs idle and 64 needs two rounds)
template <int BN>
struct W8Cfg {
  static constexpr int BM = 128, BK = 128;
  static constexpr int STAGES = BN == 256 ? 4 : BN == 128 ? 6 : BN == 96 ? 7 : 8;
  static constexpr int kABytes = BM * BK, kBBytes = BN * BK;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kSmemBytes = STAGES * kStageBytes + 1024 + 256;  // + alignment, barriers
};

template <int BN>
__device__ __forceinline__ void wgmmaSSN(int (&d)[BN / 2], uint64_t da, uint64_t db, int sc) {
  if constexpr (BN == 256) wgmmaSS256(d, da, db, sc);
  else if constexpr (BN == 128) wgmmaSS128(d, da, db, sc);
  else if constexpr (BN == 96) wgmmaSS96(d, da, db, sc);
  else if constexpr (BN == 64) wgmmaSS64(d, da, db, sc);
  else wgmmaSS32(d, da, db, sc);
}

// The W8A8 producer (one thread): for tiles tile0, tile0 + step, ... and k-blocks [kbBeg, kbEnd)
// of each, wait for a free stage, then TMA the A box (p.aRows rows) and the B box into it.
// Shared by w8a8WgmmaKernel (all k-blocks) and w8a8WgmmaSplitKernel (this CTA's K range).
template <class C, int BN, class Args>
__device__ __forceinline__ void w8aProducer(const CUtensorMap* tmA, const CUtensorMap* tmB,
                                            const Args& p, uint32_t sbase, uint32_t fullBar,
                                            uint32_t emptyBar, int tile0, int step, int kbBeg,
                                            int kbEnd) {
  tmaPrefetchDesc(tmA);
  tmaPrefetchDesc(tmB);
  produceStages<C::STAGES, C::kStageBytes>(
      p.tilesM, p.tilesN, tile0, step, kbBeg, kbEnd, sbase, fullBar, emptyBar,
      [&](int kb, int mt, int nt, uint32_t sA, uint32_t fb) {
        mbarExpectTx(fb, p.aRows * C::BK + C::kBBytes);
        tmaLoad2d(sA, tmA, kb * C::BK, mt * C::BM, fb);
        tmaLoad2d(sA + C::kABytes, tmB, kb * C::BK, nt * BN, fb);
      });
}

// The W4A4 producer of configs 7 and 8 (one thread): per slice of 64 bytes of K, an int4 slice
// (the packed activations, weights and the weight group scales) or an int8 outlier slice.
template <class C, class Args>
__device__ __forceinline__ void w4aProducer(const CUtensorMap* tmX4, const CUtensorMap* tmW4,
                                            const CUtensorMap* tmWs, const CUtensorMap* tmX8,
                                            const CUtensorMap* tmW8, const Args& p,
                                            uint32_t sbase, uint32_t fullBar, uint32_t emptyBar) {
  tmaPrefetchDesc(tmX4);
  tmaPrefetchDesc(tmW4);
  tmaPrefetchDesc(tmWs);
  produceStages<C::STAGES, C::kStageBytes>(
      p.tilesM, p.tilesN, blockIdx.x, gridDim.x, 0, p.slices4 + p.slices8, sbase, fullBar,
      emptyBar, [&](int i, int mt, int nt, uint32_t sA, uint32_t fb) {
        if (i < p.slices4) {
          mbarExpectTx(fb, C::kABytes + C::kBBytes + C::kWsBytes);
          tmaLoad2d(sA, tmX4, i * 64, mt * C::BM, fb);
          tmaLoad2d(sA + C::kABytes, tmW4, i * 64, nt * C::BN, fb);
          tmaLoad2d(sA + C::kABytes + C::kBBytes, tmWs, nt * C::BN, i, fb);
        } else {
          const int j = i - p.slices4;
          mbarExpectTx(fb, C::kABytes + C::kBBytes);
          tmaLoad2d(sA, tmX8, j * 64, mt * C::BM, fb);
          tmaLoad2d(sA + C::kABytes, tmW8, j * 64, nt * C::BN, fb);
        }
      });
}

template <int BN>
__global__ void __launch_bounds__(kThreads, 1)
    w8a8WgmmaKernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmB,
                    const W8Args p) {
#if defined(LOWBIT_WGMMA_OK)
  using C = W8Cfg<BN>;
  extern __shared__ uint8_t smemRaw[];
  uint8_t* smem = align1024(smemRaw);
  const uint32_t sbase = smem32(smem);
  const uint32_t fullBar = sbase + C::STAGES * C::kStageBytes;
  const uint32_t emptyBar = fullBar + 8 * C::STAGES;
  const int wgi = threadIdx.x / 128;
  const int tiles = p.tilesM * p.tilesN;
  if (threadIdx.x == 0) {
    initStageRing<C::STAGES>(fullBar, emptyBar, 2);  // one arrival per consumer warpgroup
    fenceBarrierInit();
  }
  __syncthreads();

  if (wgi == 0) {  // ---------------- producer ----------------
    setMaxRegsDec<40>();
    if (threadIdx.x == 0)
      w8aProducer<C, BN>(&tmA, &tmB, p, sbase, fullBar, emptyBar, blockIdx.x, gridDim.x, 0,
                         p.kBlocks);
  } else {  // ---------------- consumers ----------------
    setMaxRegsInc<232>();
    const int cw = wgi - 1, tid = threadIdx.x & 127;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int stage = 0;
    uint32_t phase = 0;
    int acc[BN / 2];
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      int mt, nt;
      tileCoords(tile, p.tilesM, p.tilesN, mt, nt);
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) acc[i] = 0;
      int prev = 0;
      // A consumer whose 64 rows all lie past M (M <= 64: the second one) only releases the
      // stages: half the tensor work, 4096 x 11008 M = 32 22.6 -> 21.7 us (NOTES log 19).
      if (mt * C::BM + cw * 64 >= p.M) {
        for (int kb = 0; kb < p.kBlocks; ++kb) {
          mbarWait(fullBar + 8 * stage, phase);
          if (tid == 0) mbarArrive(emptyBar + 8 * stage);
          if (++stage == C::STAGES) { stage = 0; phase ^= 1; }
        }
        continue;
      }
      const int r0 = mt * C::BM + cw * 64 + warp * 16 + g, r1 = r0 + 8;
      // The epilogue's scales: loaded in one batch (in the store loop each load waited for the
      // store before it, which may alias: BN / 8 DRAM round trips), and for BN <= 128 (small M,
      // one tile per CTA) before the main loop, so that the latency hides behind the weight
      // stream: 4096 x 11008 M = 32 22.1 -> 19.3 us, K = 512 8.6 -> 5.6 us (NOTES log 19).
      float xs0, xs1, wsc[BN / 8][2];
      auto loadScales = [&]() {
        const float* xsp = static_cast<const float*>(p.xs);
        xs0 = xsp[min(r0, p.M - 1) * p.xsStride];
        xs1 = xsp[min(r1, p.M - 1) * p.xsStride];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          const int col = min(nt * BN + j * 8 + 2 * t, p.N - 2);  // in range; unused past N
          wsc[j][0] = __ldg(p.ws + col);
          wsc[j][1] = __ldg(p.ws + col + 1);
        }
      };
      if constexpr (BN <= 128) loadScales();
      for (int kb = 0; kb < p.kBlocks; ++kb) {
        mbarWait(fullBar + 8 * stage, phase);
        const uint32_t sA = sbase + stage * C::kStageBytes + cw * 64 * C::BK;
        const uint32_t sB = sbase + stage * C::kStageBytes + C::kABytes;
        const uint64_t da = makeDesc(sA, kSw128, 1024), db = makeDesc(sB, kSw128, 1024);
        wgFence();
#pragma unroll
        for (int kk = 0; kk < C::BK / 32; ++kk) wgmmaSSN<BN>(acc, da + 2 * kk, db + 2 * kk, 1);
        wgCommit();
        wgWait<1>();  // the previous stage's wgmmas are done: release it
        fenceRegs(acc);
        if (kb > 0 && tid == 0) mbarArrive(emptyBar + 8 * prev);
        prev = stage;
        if (++stage == C::STAGES) { stage = 0; phase ^= 1; }
      }
      wgWait<0>();
      fenceRegs(acc);
      if (tid == 0) mbarArrive(emptyBar + 8 * prev);

      // epilogue: float(sum) * xs * ws -> fp16 pairs (N % 8 == 0: a pair is in or out)
      if constexpr (BN > 128) loadScales();
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        const int col = nt * BN + j * 8 + 2 * t;
        if (col < p.N) {
          const float w0 = wsc[j][0], w1 = wsc[j][1];
          if (r0 < p.M)
            *reinterpret_cast<__half2*>(p.y + (size_t)r0 * p.N + col) =
                __floats2half2_rn(static_cast<float>(acc[4 * j]) * xs0 * w0,
                                  static_cast<float>(acc[4 * j + 1]) * xs0 * w1);
          if (r1 < p.M)
            *reinterpret_cast<__half2*>(p.y + (size_t)r1 * p.N + col) =
                __floats2half2_rn(static_cast<float>(acc[4 * j + 2]) * xs1 * w0,
                                  static_cast<float>(acc[4 * j + 3]) * xs1 * w1);
        }
      }
    }
  }
#endif
}

// ---- W8A8 split-K over a thread-block cluster (small M: weight streaming) --------------------
// w8a8WgmmaSplitKernel<BN>: same tile, ring and wgmma as w8a8WgmmaKernel, launched in clusters of
// S = 2..4 CTAs (cluster dims at launch). Cluster c takes tiles c, c + nClusters, ...; CTA rank r
// of the cluster runs k-blocks [r KB / S, (r + 1) KB / S) of each, so S SMs stream disjoint parts
// of the same weight rows. Reduction through distributed shared memory, exact (int32):
//   each CTA stores its int32 partials in its own buffer [consumer][acc index][thread], arrives on
//   every peer's `ready` mbarrier (release.cluster), waits for its own (acquire.cluster), then
//   sums, for its 1/S share of the 8-column groups, its registers + the peers' buffers
//   (ld.shared::cluster) and writes those columns; then arrives on every peer's `free` mbarrier.
//   A CTA waits for `free` before rewriting its buffer (next tile) and before exiting.
// A consumer whose 64 rows lie past M skips the buffer traffic and the epilogue.
// Shared memory: BN = 64: 6 stages x 24 KiB + 64 KiB buffer; BN = 32: 8 x 20 KiB + 32 KiB.
template <int BN>
struct W8SplitCfg {
  static constexpr int BM = 128, BK = 128;
  static constexpr int STAGES = BN == 64 ? 6 : 8;
  static constexpr int kABytes = BM * BK, kBBytes = BN * BK;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kRedBytes = 2 * (BN / 2) * 128 * 4;
  static constexpr int kSmemBytes = STAGES * kStageBytes + kRedBytes + 1024 + 256;
  static_assert(BN == 64 || BN == 32, "split-K tiles: 128 x 64 or 128 x 32");
};

template <int BN>
__global__ void __launch_bounds__(kThreads, 1)
    w8a8WgmmaSplitKernel(const __grid_constant__ CUtensorMap tmA,
                         const __grid_constant__ CUtensorMap tmB, const W8Args p) {
#if defined(LOWBIT_WGMMA_OK)
  using C = W8SplitCfg<BN>;
  extern __shared__ uint8_t smemRaw[];
  uint8_t* smem = align1024(smemRaw);
  const uint32_t sbase = smem32(smem);
  const uint32_t redBuf = sbase + C::STAGES * C::kStageBytes;
  const uint32_t fullBar = redBuf + C::kRedBytes;
  const uint32_t emptyBar = fullBar + 8 * C::STAGES;
  const uint32_t readyBar = emptyBar + 8 * C::STAGES;
  const uint32_t freeBar = readyBar + 8;
  const int wgi = threadIdx.x / 128;
  const int tiles = p.tilesM * p.tilesN;
  const int S = static_cast<int>(clusterNumCtas());
  const int rank = static_cast<int>(clusterCtaRank());
  const int cid = static_cast<int>(clusterIdX()), ncl = static_cast<int>(numClustersX());
  const int kbBeg = static_cast<int>((long)rank * p.kBlocks / S);
  const int kbEnd = static_cast<int>((long)(rank + 1) * p.kBlocks / S);
  if (threadIdx.x == 0) {
    initStageRing<C::STAGES>(fullBar, emptyBar, 2);
    mbarInit(readyBar, S - 1 > 0 ? S - 1 : 1);
    mbarInit(freeBar, S - 1 > 0 ? S - 1 : 1);
    fenceBarrierInit();
  }
  clusterSync();  // barriers initialized cluster-wide before any remote arrival

  if (wgi == 0) {  // ---------------- producer ----------------
    setMaxRegsDec<40>();
    if (threadIdx.x == 0)
      w8aProducer<C, BN>(&tmA, &tmB, p, sbase, fullBar, emptyBar, cid, ncl, kbBeg, kbEnd);
  } else {  // ---------------- consumers ----------------
    setMaxRegsInc<232>();
    const int cw = wgi - 1, tid = threadIdx.x & 127;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    constexpr int J = BN / 8;  // 8-column groups of the tile
    const int jBeg = rank * J / S, jEnd = (rank + 1) * J / S;
    int stage = 0;
    uint32_t phase = 0;
    int acc[BN / 2];
    int it = 0;
    for (int tile = cid; tile < tiles; tile += ncl, ++it) {
      int mt, nt;
      tileCoords(tile, p.tilesM, p.tilesN, mt, nt);
      const bool live = mt * C::BM + cw * 64 < p.M;  // warpgroup-uniform
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) acc[i] = 0;
      int prev = 0;
      for (int kb = kbBeg; kb < kbEnd; ++kb) {
        mbarWait(fullBar + 8 * stage, phase);
        {  // (dead halves run their wgmmas too: a branch around them serializes wgmma, C7518)
          const uint32_t sA = sbase + stage * C::kStageBytes + cw * 64 * C::BK;
          const uint32_t sB = sbase + stage * C::kStageBytes + C::kABytes;
          const uint64_t da = makeDesc(sA, kSw128, 1024), db = makeDesc(sB, kSw128, 1024);
          wgFence();
#pragma unroll
          for (int kk = 0; kk < C::BK / 32; ++kk) wgmmaSSN<BN>(acc, da + 2 * kk, db + 2 * kk, 1);
          wgCommit();
          wgWait<1>();
          fenceRegs(acc);
        }
        if (kb > kbBeg && tid == 0) mbarArrive(emptyBar + 8 * prev);
        prev = stage;
        if (++stage == C::STAGES) { stage = 0; phase ^= 1; }
      }
      if (kbEnd > kbBeg) {
        wgWait<0>();
        fenceRegs(acc);
        if (tid == 0) mbarArrive(emptyBar + 8 * prev);
      }

      const int r0 = mt * C::BM + cw * 64 + warp * 16 + g, r1 = r0 + 8;
      int j0 = 0, j1 = J;
      if (S > 1) {
        if (it > 0) mbarWaitCluster(freeBar, (it - 1) & 1);  // peers done with my last buffer
        const uint32_t mine = redBuf + (cw * (BN / 2) * 128 + tid) * 4;
        if (live) {
#pragma unroll
          for (int i = 0; i < BN / 2; ++i)
            asm volatile("st.shared.s32 [%0], %1;\n" ::"r"(mine + i * 512), "r"(acc[i]) : "memory");
        }
        namedBarrier(1, 256);
        if (threadIdx.x == 128)
          for (int q = 0; q < S; ++q)
            if (q != rank) mbarArriveRemote(mapaShared(readyBar, q));
        mbarWaitCluster(readyBar, it & 1);  // every peer's partials are in its buffer
        if (live) {
          for (int q = 0; q < S; ++q) {
            if (q == rank) continue;
            const uint32_t rb = mapaShared(mine, q);
#pragma unroll
            for (int j = 0; j < J; ++j)
              if (j >= jBeg && j < jEnd)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[4 * j + e] += ldSharedCluster(rb + (4 * j + e) * 512);
          }
        }
        namedBarrier(1, 256);
        if (threadIdx.x == 128)
          for (int q = 0; q < S; ++q)
            if (q != rank) mbarArriveRemote(mapaShared(freeBar, q));
        j0 = jBeg;
        j1 = jEnd;
      }
      if (live) {
        const float* xsp = static_cast<const float*>(p.xs);
        const float xs0 = xsp[min(r0, p.M - 1) * p.xsStride];
        const float xs1 = xsp[min(r1, p.M - 1) * p.xsStride];
#pragma unroll
        for (int j = 0; j < J; ++j) {
          const int col = nt * BN + j * 8 + 2 * t;
          if (j >= j0 && j < j1 && col < p.N) {
            const float w0 = __ldg(p.ws + col), w1 = __ldg(p.ws + col + 1);
            if (r0 < p.M)
              *reinterpret_cast<__half2*>(p.y + (size_t)r0 * p.N + col) =
                  __floats2half2_rn(static_cast<float>(acc[4 * j]) * xs0 * w0,
                                    static_cast<float>(acc[4 * j + 1]) * xs0 * w1);
            if (r1 < p.M)
              *reinterpret_cast<__half2*>(p.y + (size_t)r1 * p.N + col) =
                  __floats2half2_rn(static_cast<float>(acc[4 * j + 2]) * xs1 * w0,
                                    static_cast<float>(acc[4 * j + 3]) * xs1 * w1);
          }
        }
      }
    }
    // peers may still read my buffer of the last tile: stay until they are done
    if (S > 1 && it > 0) mbarWaitCluster(freeBar, (it - 1) & 1);
  }
#endif
}

// ================================ W4A4 ========================================================
struct W4Args {
  const __half* xs4;  // [M, ng]
  const __half* xs8;  // [M] (unused when slices8 == 0)
  const __half* ws8;  // [N]
  __half* y;          // [M, N]
  int M, N, ng, slices4, slices8, tilesM, tilesN;
};

// Explicit tile configuration: 64 x 256 output tile, 64-byte K slices, 6 stages of
// A 64 x 64 B + B 256 x 64 B + ws 256 x fp16 (21 KiB, 1024-aligned) = 126 KiB, plus per consumer
// warpgroup two widened-B buffers of 128 rows x 128 B (64 KiB) and an xs4 staging buffer
// (4.25 KiB): 200 KiB.
struct W4Cfg {
  static constexpr int BM = 64, BN = 256, STAGES = 6;
  static constexpr int kABytes = BM * 64, kBBytes = BN * 64, kWsBytes = BN * 2;
  static constexpr int kStageBytes = 21 * 1024;
  static constexpr int kWbufBytes = 128 * 128;
  // xs4 staging per consumer warpgroup: [64 rows][kXsGroups] fp16, rows kXsStride halves apart
  // (17 words: the 8 rows a warp's quads read at once fall in 8 different banks)
  static constexpr int kXsGroups = 32, kXsStride = 34, kXsBytes = 64 * kXsStride * 2;
  static constexpr int kBarBytes = 256;
  static constexpr int kSmemBytes =
      STAGES * kStageBytes + 4 * kWbufBytes + 1024 + kBarBytes + 2 * kXsBytes;
  static_assert(kABytes + kBBytes + kWsBytes <= kStageBytes, "stage overflow");
};

// Widens one row of a packed int4 slice (64 B, 64B-swizzled, row r) into 128 int8 bytes of a
// 128B-swizzled row: k32 step s takes chunk s's words w0..w3 -> [lo(w0..w3) | hi(w0..w3)].
__device__ __forceinline__ void widenRow(const uint8_t* src, int r, uint8_t* dst) {
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const uint4 w = *reinterpret_cast<const uint4*>(src + r * 64 + ((s ^ ((r >> 1) & 3)) << 4));
    uint4 lo, hi;
    lo.x = (w.x << 4) & 0xF0F0F0F0u; hi.x = w.x & 0xF0F0F0F0u;
    lo.y = (w.y << 4) & 0xF0F0F0F0u; hi.y = w.y & 0xF0F0F0F0u;
    lo.z = (w.z << 4) & 0xF0F0F0F0u; hi.z = w.z & 0xF0F0F0F0u;
    lo.w = (w.w << 4) & 0xF0F0F0F0u; hi.w = w.w & 0xF0F0F0F0u;
    *reinterpret_cast<uint4*>(dst + r * 128 + (((2 * s) ^ (r & 7)) << 4)) = lo;
    *reinterpret_cast<uint4*>(dst + r * 128 + (((2 * s + 1) ^ (r & 7)) << 4)) = hi;
  }
}

// A fragments of the 4 k32 steps of one packed int4 slice (64B-swizzled [64][64 B]) for warp
// `warp` (rows 16 warp .. + 15): a[s] = {lo(row g), lo(row g+8), hi(row g), hi(row g+8)} of
// word t of chunk s, matching widenRow's K order.
__device__ __forceinline__ void loadA4(const uint8_t* sA, int warp, int lane, uint32_t (&a)[4][4]) {
#pragma unroll
  for (int kc = 0; kc < 2; ++kc) {
    const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
    const int c = kc * 2 + (lane >> 4);
    uint32_t f[4];
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(f[0]), "=r"(f[1]), "=r"(f[2]), "=r"(f[3])
                 : "r"(smem32(sA + r * 64 + ((c ^ ((r >> 1) & 3)) << 4))));
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t* d = a[kc * 2 + h];
      d[0] = (f[2 * h] << 4) & 0xF0F0F0F0u;
      d[2] = f[2 * h] & 0xF0F0F0F0u;
      d[1] = (f[2 * h + 1] << 4) & 0xF0F0F0F0u;
      d[3] = f[2 * h + 1] & 0xF0F0F0F0u;
    }
  }
}

template <int G>  // group size; only 128 is instantiated
__global__ void __launch_bounds__(kThreads, 1)
    w4a4WgmmaKernel(const __grid_constant__ CUtensorMap tmX4, const __grid_constant__ CUtensorMap tmW4,
                    const __grid_constant__ CUtensorMap tmWs, const __grid_constant__ CUtensorMap tmX8,
                    const __grid_constant__ CUtensorMap tmW8, const W4Args p) {
#if defined(LOWBIT_WGMMA_OK)
  using C = W4Cfg;
  extern __shared__ uint8_t smemRaw[];
  uint8_t* smem = align1024(smemRaw);
  uint8_t* wbufBase = smem + C::STAGES * C::kStageBytes;
  const uint32_t sbase = smem32(smem);
  const uint32_t fullBar = sbase + C::STAGES * C::kStageBytes + 4 * C::kWbufBytes;
  const uint32_t emptyBar = fullBar + 8 * C::STAGES;
  const int wgi = threadIdx.x / 128;
  const int tiles = p.tilesM * p.tilesN;
  const int S = p.slices4 + p.slices8;
  if (threadIdx.x == 0) {
    initStageRing<C::STAGES>(fullBar, emptyBar, 2);
    fenceBarrierInit();
  }
  __syncthreads();

  if (wgi == 0) {  // ---------------- producer ----------------
    setMaxRegsDec<40>();
    if (threadIdx.x == 0) {
      w4aProducer<C>(&tmX4, &tmW4, &tmWs, &tmX8, &tmW8, p, sbase, fullBar, emptyBar);
    }
  } else {  // ---------------- consumers ----------------
    setMaxRegsInc<232>();
    const int cw = wgi - 1, tid = threadIdx.x & 127;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    uint8_t* wbuf = wbufBase + cw * 2 * C::kWbufBytes;  // this warpgroup's two buffers
    // this warpgroup's xs4 staging; warp w's quads write and read only rows 16w .. 16w + 15
    __half* xsS = reinterpret_cast<__half*>(wbufBase + 4 * C::kWbufBytes + C::kBarBytes) +
                  cw * 64 * C::kXsStride;
    const int lr0 = (warp * 16 + g) * C::kXsStride, lr1 = lr0 + 8 * C::kXsStride;
    int stage = 0;
    uint32_t phase = 0;
    int accI[64];
    float accF[64];
    uint32_t aCur[4][4], aNext[4][4];
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      int mt, nt;
      tileCoords(tile, p.tilesM, p.tilesN, mt, nt);
      const int r0 = mt * C::BM + warp * 16 + g, r1 = r0 + 8;
      const int r0c = min(r0, p.M - 1), r1c = min(r1, p.M - 1);
#pragma unroll
      for (int i = 0; i < 64; ++i) {
        accI[i] = 0;
        accF[i] = 0.f;
      }
      // prologue: slice 0 (the first slice is int4: slices4 >= 1)
      mbarWait(fullBar + 8 * stage, phase);
      {
        const uint8_t* st = smem + stage * C::kStageBytes;
        widenRow(st + C::kABytes + cw * 128 * 64, tid, wbuf);
        loadA4(st, warp, lane, aCur);
        fenceProxyAsync();
      }
      namedBarrier(1 + cw, 128);
      int wb = 0;
      // one slice; aC = its A fragments (read by the wgmma in flight), aN = the next slice's.
      // The loop runs two slices per trip with the fragment sets swapped (no copies).
      auto step = [&](int i, uint32_t (&aC)[4][4], uint32_t (&aN)[4][4]) {
        const int cur = stage;
        const uint32_t stA = sbase + cur * C::kStageBytes;
        const bool int4 = i < p.slices4;
        wgFence();
        if (int4) {
          const uint64_t db = makeDesc(smem32(wbuf + wb * C::kWbufBytes), kSw128, 1024);
#pragma unroll
          for (int s = 0; s < 4; ++s) wgmmaRS128(accI, aC[s], db + 2 * s, s > 0);
        } else {  // the outliers accumulate over all int8 slices, from 0 at the first
          const uint64_t da = makeDesc(stA, kSw64, 512);
          const uint64_t db = makeDesc(stA + C::kABytes + cw * 128 * 64, kSw64, 512);
          const int first = i == p.slices4;
#pragma unroll
          for (int s = 0; s < 2; ++s) wgmmaSS128(accI, da + 2 * s, db + 2 * s, !(first && s == 0));
        }
        wgCommit();
        // xs4 of groups [i, i + 32) into shared memory, once per 32 int4 slices. Loaded from
        // global memory in every slice, ptxas hoisted the two loads above the proxy fence below
        // (MEMBAR.ALL.CTA), which then waited for them once per slice (NOTES log 15).
        if (int4 && i % C::kXsGroups == 0) {
          __syncwarp();  // every lane of the warp has folded the groups before i
          const int n = min(C::kXsGroups, p.ng - i);
#pragma unroll
          for (int e = 0; e < C::kXsGroups / 4; ++e) {
            const int gg = t * (C::kXsGroups / 4) + e;
            if (gg < n) {
              xsS[lr0 + gg] = p.xs4[(size_t)r0c * p.ng + i + gg];
              xsS[lr1 + gg] = p.xs4[(size_t)r1c * p.ng + i + gg];
            }
          }
          __syncwarp();
        }
        float xa = 0.f, xb = 0.f;
        if (int4) {
          xa = __half2float(xsS[lr0 + i % C::kXsGroups]) * (1.f / 256.f);
          xb = __half2float(xsS[lr1 + i % C::kXsGroups]) * (1.f / 256.f);
        }
        // prepare slice i + 1 while the tensor cores work on slice i
        if (++stage == C::STAGES) { stage = 0; phase ^= 1; }
        if (i + 1 < S) {
          mbarWait(fullBar + 8 * stage, phase);
          if (i + 1 < p.slices4) {
            const uint8_t* st = smem + stage * C::kStageBytes;
            widenRow(st + C::kABytes + cw * 128 * 64, tid, wbuf + (wb ^ 1) * C::kWbufBytes);
            loadA4(st, warp, lane, aN);
            fenceProxyAsync();
          }
        }
        wgWait<0>();
        fenceRegs(accI);
#pragma unroll
        for (int s = 0; s < 4; ++s)
#pragma unroll
          for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(aC[s][e])::"memory");
        if (int4) {
          const __half2* wsS = reinterpret_cast<const __half2*>(smem + cur * C::kStageBytes +
                                                                 C::kABytes + C::kBBytes);
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            const float2 w = __half22float2(wsS[cw * 64 + j * 4 + t]);
            const float s00 = xa * w.x, s01 = xa * w.y, s10 = xb * w.x, s11 = xb * w.y;
            accF[4 * j + 0] = fmaf(static_cast<float>(accI[4 * j + 0]), s00, accF[4 * j + 0]);
            accF[4 * j + 1] = fmaf(static_cast<float>(accI[4 * j + 1]), s01, accF[4 * j + 1]);
            accF[4 * j + 2] = fmaf(static_cast<float>(accI[4 * j + 2]), s10, accF[4 * j + 2]);
            accF[4 * j + 3] = fmaf(static_cast<float>(accI[4 * j + 3]), s11, accF[4 * j + 3]);
          }
        }
        namedBarrier(1 + cw, 128);  // this warpgroup is done with stage `cur` and buffer wb
        if (tid == 0) mbarArrive(emptyBar + 8 * cur);
        wb ^= 1;
      };
      for (int i = 0; i < S; i += 2) {
        step(i, aCur, aNext);
        if (i + 1 < S) step(i + 1, aNext, aCur);
      }

      // outliers: one scale for the whole int8 sum (exact int32 -> fp32 conversion)
      const int colBase = nt * C::BN + cw * 128 + 2 * t;
      if (p.slices8 > 0) {
        const float x0 = __half2float(p.xs8[r0c]), x1 = __half2float(p.xs8[r1c]);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const int col = min(colBase + j * 8, p.N - 2);
          const float w0 = __half2float(p.ws8[col]), w1 = __half2float(p.ws8[col + 1]);
          accF[4 * j + 0] = fmaf(static_cast<float>(accI[4 * j + 0]), x0 * w0, accF[4 * j + 0]);
          accF[4 * j + 1] = fmaf(static_cast<float>(accI[4 * j + 1]), x0 * w1, accF[4 * j + 1]);
          accF[4 * j + 2] = fmaf(static_cast<float>(accI[4 * j + 2]), x1 * w0, accF[4 * j + 2]);
          accF[4 * j + 3] = fmaf(static_cast<float>(accI[4 * j + 3]), x1 * w1, accF[4 * j + 3]);
        }
      }
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int col = colBase + j * 8;
        if (col < p.N) {
          if (r0 < p.M)
            *reinterpret_cast<__half2*>(p.y + (size_t)r0 * p.N + col) =
                __floats2half2_rn(accF[4 * j], accF[4 * j + 1]);
          if (r1 < p.M)
            *reinterpret_cast<__half2*>(p.y + (size_t)r1 * p.N + col) =
                __floats2half2_rn(accF[4 * j + 2], accF[4 * j + 3]);
        }
      }
    }
  }
#endif
}

}  // namespace wg
}  // namespace lowbit

// ================================ host side ===================================================
// Needs igemm::Problem (igemmCore.cuh includes this file after defining it).
namespace lowbit {
namespace wg {

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled through the runtime's driver entry point (no -lcuda); null if absent.
inline EncodeTiledFn encodeTiled() {
  static const EncodeTiledFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<EncodeTiledFn>(nullptr);
    }
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

// 2-D row-major tensor [rows, cols] of elemBytes-sized elements, box [boxRows, boxCols].
inline bool makeMap(CUtensorMap* m, const void* base, CUtensorMapDataType dt, int elemBytes,
                    uint64_t cols, uint64_t rows, uint32_t boxCols, uint32_t boxRows,
                    CUtensorMapSwizzle sw) {
  const cuuint64_t dims[2] = {cols, rows};
  const cuuint64_t strides[1] = {cols * elemBytes};
  const cuuint32_t box[2] = {boxCols, boxRows};
  const cuuint32_t es[2] = {1, 1};
  return encodeTiled()(m, dt, 2, const_cast<void*>(base), dims, strides, box, es,
                       CU_TENSOR_MAP_INTERLEAVE_NONE, sw, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                       CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// True on a compute capability 9.0 device when this library carries sm_90a code for the kernels
// (not a JIT of older PTX, where their bodies are empty) and the driver has the TMA encoder.
inline bool wgmmaAvailable() {
  return encodeTiled() != nullptr && wg::sm90aCode<w8a8WgmmaKernel<256>>();
}

// A box rows of the W8A8 kernels: a single M-tile loads only 32 / 64 rows (TMA counts the zero
// fill of rows past M as transferred bytes: a 128-row box at M = 32 was 3/4 padding).
inline int w8aRows(int M) { return M <= 32 ? 32 : M <= 64 ? 64 : 128; }

template <int BN>
inline int launchW8a8(const igemm::Problem& p, cudaStream_t stream) {
  using C = W8Cfg<BN>;
  CUtensorMap ta, tb;
  if (!makeMap(&ta, p.a8, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, p.K8, p.M, C::BK, w8aRows(p.M),
               CU_TENSOR_MAP_SWIZZLE_128B) ||
      !makeMap(&tb, p.b8, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, p.K8, p.N, C::BK, BN,
               CU_TENSOR_MAP_SWIZZLE_128B))
    return LOWBIT_ERR_UNSUPPORTED;
  W8Args a{p.as8, static_cast<const float*>(p.bs8), p.y, p.M, p.N, (p.K8 + C::BK - 1) / C::BK,
           p.as8Stride, (p.M + C::BM - 1) / C::BM, (p.N + BN - 1) / BN, w8aRows(p.M)};
  const int st = allowDynamicSmem<w8a8WgmmaKernel<BN>>(C::kSmemBytes);
  if (st != LOWBIT_OK) return st;
  const int tiles = a.tilesM * a.tilesN;
  const int grid = tiles < multiprocessorCount() ? tiles : multiprocessorCount();
  w8a8WgmmaKernel<BN><<<grid, kThreads, C::kSmemBytes, stream>>>(ta, tb, a);
  return launchStatus();
}

// Co-resident clusters of S CTAs of the split-K kernel (occupancy query, cached per device).
template <int BN>
inline int maxActiveClusters(int S) {
  static int cached[64][5] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  int& c = cached[dev & 63][S];
  if (c == 0) {
    using C = W8SplitCfg<BN>;
    if (allowDynamicSmem<w8a8WgmmaSplitKernel<BN>>(C::kSmemBytes) != LOWBIT_OK) return 0;
    cudaLaunchConfig_t cfg{};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = S;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.gridDim = dim3(S * multiprocessorCount());
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = C::kSmemBytes;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    int n = 0;
    if (cudaOccupancyMaxActiveClusters(&n, w8a8WgmmaSplitKernel<BN>, &cfg) != cudaSuccess || n <= 0) {
      cudaGetLastError();
      n = -1;
    }
    c = n;
  }
  return c > 0 ? c : 0;
}

// Split-K launch: clusters of S CTAs (2..4), persistent over min(tiles, co-resident clusters).
template <int BN>
inline int launchW8a8Split(const igemm::Problem& p, int S, cudaStream_t stream) {
  using C = W8SplitCfg<BN>;
  if (S < 2 || S > 4) return LOWBIT_ERR_UNSUPPORTED;
  CUtensorMap ta, tb;
  if (!makeMap(&ta, p.a8, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, p.K8, p.M, C::BK, w8aRows(p.M),
               CU_TENSOR_MAP_SWIZZLE_128B) ||
      !makeMap(&tb, p.b8, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, p.K8, p.N, C::BK, BN,
               CU_TENSOR_MAP_SWIZZLE_128B))
    return LOWBIT_ERR_UNSUPPORTED;
  W8Args a{p.as8, static_cast<const float*>(p.bs8), p.y, p.M, p.N, (p.K8 + C::BK - 1) / C::BK,
           p.as8Stride, (p.M + C::BM - 1) / C::BM, (p.N + BN - 1) / BN, w8aRows(p.M)};
  const int st = allowDynamicSmem<w8a8WgmmaSplitKernel<BN>>(C::kSmemBytes);
  if (st != LOWBIT_OK) return st;
  const int maxCl = maxActiveClusters<BN>(S);
  if (maxCl <= 0) return LOWBIT_ERR_UNSUPPORTED;
  const int tiles = a.tilesM * a.tilesN;
  const int ncl = tiles < maxCl ? tiles : maxCl;
  cudaLaunchConfig_t cfg{};
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = S;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.gridDim = dim3(ncl * S);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = C::kSmemBytes;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, w8a8WgmmaSplitKernel<BN>, ta, tb, a);
  return e == cudaSuccess ? launchStatus() : cudaStatus(e);
}

// Small-M (weight-streaming) choice among 128 x 128 / 128 x 96 (S = 1) / 128 x 64 / 128 x 32
// tiles, split S = 1..maxSplit: the time of the busiest CTA in k-block units,
// rounds x (k-blocks x (BN + A rows) [+ reduction]), A rows being the per-k-block A box
// (w8aRows). *bn = 128, 96, 64 or 32, *split = 1..4 (split only for 64 / 32).
inline void pickW8a8Split(int M, int N, int K, int maxSplit, int* bn, int* split) {
  const int kb = (K + 127) / 128, tm = (M + 127) / 128, ar = w8aRows(M);
  long best = -1;
  *bn = 64;
  *split = 1;
  for (int b : {128, 96, 64, 32}) {
    for (int s = 1; s <= (b >= 96 ? 1 : maxSplit); ++s) {  // S = 3/4 measured slower (log 10)
      const int tiles = tm * ((N + b - 1) / b);
      const int slots = s == 1 ? multiprocessorCount()
                               : (b == 64 ? maxActiveClusters<64>(s) : maxActiveClusters<32>(s));
      if (slots <= 0) continue;
      const long rounds = (tiles + slots - 1) / slots;
      const long per = (long)((kb + s - 1) / s) * (b + ar) + (s > 1 ? 2L * (b + ar) : 0);
      const long cost = rounds * per;
      if (best < 0 || cost < best) {
        best = cost;
        *bn = b;
        *split = s;
      }
    }
  }
}

// W4A4 needs G = 128 and a 16-byte aligned ws4t (TMA global addresses).
inline bool w4a4Fits(const igemm::Problem& p, int groupSize) {
  return groupSize == 128 && aligned16(p.bs4t) && (p.K8 == 0 || (p.a8 && p.b8));
}

struct W4Maps {
  CUtensorMap x4, w4, ws, x8, w8;
};

// The W4A4 weight operands' maps, for every W4A4 wgmma kernel: int4 rows b4 [N, Kn/2] and int8
// outlier rows b8 [N, K8] in 64-byte K slices (64B swizzle), the group scales bs4t [Kn/128, N];
// bn weight rows per box. w8 aliases w4 when there are no outliers (never read then).
inline bool makeW4WeightMaps(const igemm::Problem& p, uint32_t bn, CUtensorMap& w4,
                             CUtensorMap& ws, CUtensorMap& w8) {
  bool ok = makeMap(&w4, p.b4, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, p.Kn / 2, p.N, 64, bn,
                    CU_TENSOR_MAP_SWIZZLE_64B) &&
            makeMap(&ws, p.bs4t, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, p.N, p.ng, bn, 1,
                    CU_TENSOR_MAP_SWIZZLE_NONE);
  if (ok && p.K8 > 0)
    ok = makeMap(&w8, p.b8, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, p.K8, p.N, 64, bn,
                 CU_TENSOR_MAP_SWIZZLE_64B);
  else
    w8 = w4;
  return ok;
}

inline bool makeW4Maps(const igemm::Problem& p, W4Maps& m) {
  using C = W4Cfg;
  bool ok = makeMap(&m.x4, p.a4, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, p.Kn / 2, p.M, 64, C::BM,
                    CU_TENSOR_MAP_SWIZZLE_64B) &&
            makeW4WeightMaps(p, C::BN, m.w4, m.ws, m.w8);
  if (ok && p.K8 > 0)
    ok = makeMap(&m.x8, p.a8, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, p.K8, p.M, 64, C::BM,
                 CU_TENSOR_MAP_SWIZZLE_64B);
  else
    m.x8 = m.x4;  // never read (slices8 == 0)
  return ok;
}

inline W4Args w4Args(const igemm::Problem& p) {
  using C = W4Cfg;
  return W4Args{p.as4, static_cast<const __half*>(p.as8), static_cast<const __half*>(p.bs8),
                p.y, p.M, p.N, p.ng, p.slices4, p.slices8, (p.M + C::BM - 1) / C::BM,
                (p.N + C::BN - 1) / C::BN};
}

template <int G>
inline int launchW4a4(const igemm::Problem& p, cudaStream_t stream) {
  W4Maps m;
  if (!makeW4Maps(p, m)) return LOWBIT_ERR_UNSUPPORTED;
  const W4Args a = w4Args(p);
  const int st = allowDynamicSmem<w4a4WgmmaKernel<G>>(W4Cfg::kSmemBytes);
  if (st != LOWBIT_OK) return st;
  const int tiles = a.tilesM * a.tilesN;
  const int grid = tiles < multiprocessorCount() ? tiles : multiprocessorCount();
  w4a4WgmmaKernel<G><<<grid, kThreads, W4Cfg::kSmemBytes, stream>>>(m.x4, m.w4, m.ws, m.x8, m.w8,
                                                                     a);
  return launchStatus();
}

}  // namespace wg
}  // namespace lowbit

#include "common/wgmmaW4a4.cuh"
#include "common/wgmmaW4a4Wide.cuh"
