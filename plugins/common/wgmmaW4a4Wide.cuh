// W4A4 (Atom, G = 128) prefill on wgmma with the roles swapped (sm_90a; included by
// wgmmaCore.cuh, whose header describes the operands and the int4 widening).
//
//   y[M, N] fp16 = sum_g xs4[m,g] ws4t[g,n] * sum_{k in g} x4 w4  +  xs8[m] ws8[n] * sum_k x8 w8
//
// Why: w4a4WgmmaKernel (config 7) is issue-bound (NOTES logs 11, 15): per consumer warp and
// 64 x 256 x 128 slice ~480 instructions against the tensor cores' ~512 cycles, of which the
// widening of the int4 weights into a shared int8 B buffer (+ its proxy fence and barrier) is
// ~20% and the per-group fold ~50%. wgmma takes only its A operand from registers, so here the
// WEIGHTS are A (ldmatrix of the packed int4 rows, widened in registers: loadA4) and the
// activations are B, read by the tensor cores straight from the TMA stage because they were
// widened once, before this kernel, into the workspace by w4a4WidenKernel:
//
//   xw  int8 [M, Kn + Ko]: int4 part = 16 x value, in the K order of loadA4's fragments: 32-value
//       chunk c (x4 bytes 16c..16c+15, words w0..w3) -> xw bytes 32c..32c+31 =
//       [lo(w0) lo(w1) lo(w2) lo(w3) | hi(w0) .. hi(w3)] (widen4: even nibbles, then odd ones);
//       outlier part (the last Ko bytes) = x8 unchanged.
//   xsT fp32 [ng, Mp] (Mp = M rounded up to 4, pad = 0): xs4[m, g] / 256 (exact: a power of two;
//       the 1/256 undoes the two x16 widenings).
//
// The accumulator tile is therefore y^T: rows = weight rows n, columns = tokens m.
//   CTA tile 128 weight rows x 128 tokens; consumer warpgroup c owns weight rows 64c..64c+63
//   (m64n128k32, 64 int32 + 64 fp32 accumulators per thread); slice = one int4 group of K
//   (X 128 tokens x 128 B, 128B swizzle; W 128 rows x 64 B packed, 64B swizzle; the group's 128
//   ws4t values and 128 xsT values), or 64 bytes of outliers (X and W both 64B swizzle, SS).
//   Per int4 slice and thread: 2 ldmatrix.x4 + 24 shift/mask ops (A fragments of the next slice,
//   while the tensor cores run this one), then wait and fold 64 values:
//   accF += float(acc) * (ws * xsT). Stages are released per warp (8 arrivals), no named barrier
//   per slice. Epilogue: y[m][n] pairs (n, n+1) formed by one shuffle with the neighbouring row's
//   lane. The GEMM is a programmatic dependent (PDL) of the widen kernel; only its TMA thread
//   waits for it. H100: ~30% fewer instructions per slice than config 7, 1.41x faster at
//   M = 4096 (NOTES log 29).
#pragma once

#include "common/pdl.cuh"

namespace lowbit {
namespace wg {

struct W4WArgs {
  const __half* xs8;  // [M] (unused when slices8 == 0)
  const __half* ws8;  // [N]
  __half* y;          // [M, N]
  int M, N, slices4, slices8, tilesM, tilesN, kn;  // kn: byte column of the outliers in xw
};

// Stage: X 16 KiB | W 8 KiB | ws 128 fp16 | xsT 128 fp32  (25 KiB, 1024-aligned pieces first)
struct W4WCfg {
  static constexpr int BM = 128, BN = 128, STAGES = 8;
  static constexpr int kXBytes = BM * 128, kWBytes = BN * 64, kWsBytes = BN * 2, kXsBytes = BM * 4;
  static constexpr int kWOff = kXBytes, kWsOff = kWOff + kWBytes, kXsOff = kWsOff + kWsBytes;
  static constexpr int kStageBytes = 25 * 1024;
  static constexpr int kBarBytes = 256;
  static constexpr int kSmemBytes = STAGES * kStageBytes + 1024 + kBarBytes;
  static_assert(kXsOff + kXsBytes <= kStageBytes, "stage overflow");
};

// Workspace layout (bytes): xw at 0, xsT at xsTOffset (256-aligned).
inline size_t w4aWideXwBytes(int M, int Kn, int Ko) {
  return ((size_t)M * (Kn + Ko) + 255) / 256 * 256;
}
inline int w4aWideMp(int M) { return (M + 3) / 4 * 4; }
inline size_t w4aWideWorkspace(int M, int Kn, int Ko, int ng) {
  return w4aWideXwBytes(M, Kn, Ko) + (size_t)ng * w4aWideMp(M) * 4;
}

// xw and xsT from x4 / xs4 / x8 (layouts above). Items: per row Kn/32 int4 chunks (16 B in,
// 32 B out) then Ko/16 outlier pieces (16 B copies); then ng * Mp scale entries.
template <int G>  // group size; only 128 is instantiated (a template: this header is in two TUs)
__global__ void __launch_bounds__(256) w4a4WidenKernel(const uint4* __restrict__ x4,
                                                       const __half* __restrict__ xs4,
                                                       const uint4* __restrict__ x8, int M,
                                                       int Kn, int Ko, int ng, int Mp,
                                                       uint4* __restrict__ xw,
                                                       float* __restrict__ xsT) {
  pdlTrigger();  // the GEMM (a programmatic dependent) may start its prologue: common/pdl.cuh
  const int c4 = Kn / 32, c8 = Ko / 16, per = c4 + c8;
  const long items = (long)M * per, total = items + (long)ng * Mp;
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total;
       i += (long)gridDim.x * blockDim.x) {
    if (i < items) {
      const int row = static_cast<int>(i / per), c = static_cast<int>(i - (long)row * per);
      uint4* dst = xw + ((size_t)row * (Kn + Ko)) / 16;
      if (c < c4) {
        const uint4 w = x4[(size_t)row * c4 + c];
        uint4 lo, hi;
        igemm::widen4(w.x, lo.x, hi.x);
        igemm::widen4(w.y, lo.y, hi.y);
        igemm::widen4(w.z, lo.z, hi.z);
        igemm::widen4(w.w, lo.w, hi.w);
        dst[2 * c] = lo;
        dst[2 * c + 1] = hi;
      } else {
        dst[2 * c4 + (c - c4)] = x8[(size_t)row * c8 + (c - c4)];
      }
    } else {
      const long j = i - items;
      const int g = static_cast<int>(j / Mp), m = static_cast<int>(j - (long)g * Mp);
      xsT[j] = m < M ? __half2float(xs4[(size_t)m * ng + g]) * (1.f / 256.f) : 0.f;
    }
  }
}

template <int G>  // group size; only 128 is instantiated
__global__ void __launch_bounds__(kThreads, 1)
    w4a4WideKernel(const __grid_constant__ CUtensorMap tmX, const __grid_constant__ CUtensorMap tmX8,
                   const __grid_constant__ CUtensorMap tmW4, const __grid_constant__ CUtensorMap tmWs,
                   const __grid_constant__ CUtensorMap tmXs, const __grid_constant__ CUtensorMap tmW8,
                   const W4WArgs p) {
#if defined(LOWBIT_WGMMA_OK)
  using C = W4WCfg;
  extern __shared__ uint8_t smemRaw[];
  uint8_t* smem = align1024(smemRaw);
  const uint32_t sbase = smem32(smem);
  const uint32_t fullBar = sbase + C::STAGES * C::kStageBytes;
  const uint32_t emptyBar = fullBar + 8 * C::STAGES;
  const int wgi = threadIdx.x / 128;
  const int tiles = p.tilesM * p.tilesN;
  const int S = p.slices4 + p.slices8;
  if (threadIdx.x == 0) {
    initStageRing<C::STAGES>(fullBar, emptyBar, 8);  // one arrival per consumer warp
    fenceBarrierInit();
  }
  __syncthreads();

  if (wgi == 0) {  // ---------------- producer ----------------
    setMaxRegsDec<40>();
    if (threadIdx.x == 0) {
      // xw / xsT come from w4a4WidenKernel, this kernel's PDL primary: wait for it before the
      // first TMA (the consumers read nothing it writes except through these stages)
      pdlWait();
      tmaPrefetchDesc(&tmX);
      tmaPrefetchDesc(&tmW4);
      tmaPrefetchDesc(&tmWs);
      tmaPrefetchDesc(&tmXs);
      // token tile mt, weight tile nt
      produceStages<C::STAGES, C::kStageBytes>(
          p.tilesM, p.tilesN, blockIdx.x, gridDim.x, 0, S, sbase, fullBar, emptyBar,
          [&](int i, int mt, int nt, uint32_t st, uint32_t fb) {
            if (i < p.slices4) {
              mbarExpectTx(fb, C::kXBytes + C::kWBytes + C::kWsBytes + C::kXsBytes);
              tmaLoad2d(st, &tmX, i * 128, mt * C::BM, fb);
              tmaLoad2d(st + C::kWOff, &tmW4, i * 64, nt * C::BN, fb);
              tmaLoad2d(st + C::kWsOff, &tmWs, nt * C::BN, i, fb);
              tmaLoad2d(st + C::kXsOff, &tmXs, mt * C::BM, i, fb);
            } else {
              const int j = i - p.slices4;
              mbarExpectTx(fb, C::BM * 64 + C::kWBytes);
              tmaLoad2d(st, &tmX8, p.kn + j * 64, mt * C::BM, fb);
              tmaLoad2d(st + C::kWOff, &tmW8, j * 64, nt * C::BN, fb);
            }
          });
    }
  } else {  // ---------------- consumers ----------------
    setMaxRegsInc<232>();
    const int cw = wgi - 1, tid = threadIdx.x & 127;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int wr0 = cw * 64 + warp * 16 + g;  // this thread's weight rows in the tile: wr0, wr0 + 8
    int stage = 0;
    uint32_t phase = 0;
    int accI[64];
    float accF[64];
    uint32_t aCur[4][4], aNext[4][4];
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      int mt, nt;
      tileCoords(tile, p.tilesM, p.tilesN, mt, nt);
#pragma unroll
      for (int i = 0; i < 64; ++i) {
        accI[i] = 0;
        accF[i] = 0.f;
      }
      // prologue: slice 0's A fragments (the first slice is int4: slices4 >= 1)
      mbarWait(fullBar + 8 * stage, phase);
      loadA4(smem + stage * C::kStageBytes + C::kWOff + cw * 64 * 64, warp, lane, aCur);
      // one slice; aC = its A fragments (read by the wgmma in flight), aN = the next slice's.
      // The loop runs two slices per trip with the fragment sets swapped (no copies).
      auto step = [&](int i, uint32_t (&aC)[4][4], uint32_t (&aN)[4][4]) {
        const int cur = stage;
        const uint32_t st = sbase + cur * C::kStageBytes;
        const bool int4 = i < p.slices4;
        wgFence();
        if (int4) {
          const uint64_t db = makeDesc(st, kSw128, 1024);
#pragma unroll
          for (int s = 0; s < 4; ++s) wgmmaRS128(accI, aC[s], db + 2 * s, s > 0);
        } else {  // outliers: A = W8 rows (SS), accumulated over all int8 slices from 0
          const uint64_t da = makeDesc(st + C::kWOff + cw * 64 * 64, kSw64, 512);
          const uint64_t db = makeDesc(st, kSw64, 512);
          const int first = i == p.slices4;
#pragma unroll
          for (int s = 0; s < 2; ++s) wgmmaSS128(accI, da + 2 * s, db + 2 * s, !(first && s == 0));
        }
        wgCommit();
        // prepare slice i + 1 while the tensor cores work on slice i
        if (++stage == C::STAGES) { stage = 0; phase ^= 1; }
        if (i + 1 < S) {
          mbarWait(fullBar + 8 * stage, phase);
          if (i + 1 < p.slices4)
            loadA4(smem + stage * C::kStageBytes + C::kWOff + cw * 64 * 64, warp, lane, aN);
        }
        float wa = 0.f, wb = 0.f;
        if (int4) {
          const __half* wsS = reinterpret_cast<const __half*>(smem + cur * C::kStageBytes + C::kWsOff);
          wa = __half2float(wsS[wr0]);
          wb = __half2float(wsS[wr0 + 8]);
        }
        wgWait<0>();
        fenceRegs(accI);
#pragma unroll
        for (int s = 0; s < 4; ++s)
#pragma unroll
          for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(aC[s][e])::"memory");
        // Between the commit and the wait only the next slice's A fragments and this slice's two
        // weight scales: more work there made the kernel slower (the 32 token scales or all 64
        // scale products before the wait: +6-12%), and so did less (the fragments loaded after
        // the fold: +5%; NOTES log 29).
        if (int4) {
          const float2* xsS =
              reinterpret_cast<const float2*>(smem + cur * C::kStageBytes + C::kXsOff);
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            const float2 x = xsS[j * 4 + t];  // tokens 8j + 2t, 8j + 2t + 1
            accF[4 * j + 0] = fmaf(static_cast<float>(accI[4 * j + 0]), wa * x.x, accF[4 * j + 0]);
            accF[4 * j + 1] = fmaf(static_cast<float>(accI[4 * j + 1]), wa * x.y, accF[4 * j + 1]);
            accF[4 * j + 2] = fmaf(static_cast<float>(accI[4 * j + 2]), wb * x.x, accF[4 * j + 2]);
            accF[4 * j + 3] = fmaf(static_cast<float>(accI[4 * j + 3]), wb * x.y, accF[4 * j + 3]);
          }
        }
        __syncwarp();  // every lane of this warp is done with stage `cur`
        if (lane == 0) mbarArrive(emptyBar + 8 * cur);
      };
      for (int i = 0; i < S; i += 2) {
        step(i, aCur, aNext);
        if (i + 1 < S) step(i + 1, aNext, aCur);
      }

      // accI[4j + e]: weight row n0 = nt*BN + wr0 (e = 0, 1) / n0 + 8 (e = 2, 3), token
      // m = mt*BM + 8j + 2t (e = 0, 2) / m + 1 (e = 1, 3)
      const int n0 = nt * C::BN + wr0;
      const int mBase = mt * C::BM + 2 * t;
      if (p.slices8 > 0) {  // outliers: one scale for the whole int8 sum
        const float w0 = __half2float(p.ws8[min(n0, p.N - 1)]);
        const float w1 = __half2float(p.ws8[min(n0 + 8, p.N - 1)]);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const int m = mBase + 8 * j;  // clamped: tokens past M are not stored
          const float x0 = __half2float(p.xs8[min(m, p.M - 1)]);
          const float x1 = __half2float(p.xs8[min(m + 1, p.M - 1)]);
          accF[4 * j + 0] = fmaf(static_cast<float>(accI[4 * j + 0]), w0 * x0, accF[4 * j + 0]);
          accF[4 * j + 1] = fmaf(static_cast<float>(accI[4 * j + 1]), w0 * x1, accF[4 * j + 1]);
          accF[4 * j + 2] = fmaf(static_cast<float>(accI[4 * j + 2]), w1 * x0, accF[4 * j + 2]);
          accF[4 * j + 3] = fmaf(static_cast<float>(accI[4 * j + 3]), w1 * x1, accF[4 * j + 3]);
        }
      }
      // Stores: the lane of row n0 ^ 1 (lane ^ 4) holds the other half of each (n, n + 1) pair.
      // Even g keeps token m and stores (n0, n0 + 1) and (n0 + 8, n0 + 9); odd g keeps m + 1 and
      // stores (n0 - 1, n0) and (n0 + 7, n0 + 8).
      const bool even = (g & 1) == 0;
      const int nP = even ? n0 : n0 - 1;  // first column of this lane's pairs (N % 8 == 0)
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const float s0 = even ? accF[4 * j + 1] : accF[4 * j + 0];
        const float s1 = even ? accF[4 * j + 3] : accF[4 * j + 2];
        const float r0 = __shfl_xor_sync(0xffffffffu, s0, 4);
        const float r1 = __shfl_xor_sync(0xffffffffu, s1, 4);
        const int m = mBase + 8 * j + (even ? 0 : 1);
        if (m < p.M) {
          __half* yr = p.y + (size_t)m * p.N;
          if (nP < p.N)
            *reinterpret_cast<__half2*>(yr + nP) =
                even ? __floats2half2_rn(accF[4 * j + 0], r0) : __floats2half2_rn(r0, accF[4 * j + 1]);
          if (nP + 8 < p.N)
            *reinterpret_cast<__half2*>(yr + nP + 8) =
                even ? __floats2half2_rn(accF[4 * j + 2], r1) : __floats2half2_rn(r1, accF[4 * j + 3]);
        }
      }
    }
  }
#endif
}

struct W4WideMaps {
  CUtensorMap x, x8, w4, ws, xs, w8;
};

inline bool makeW4WideMaps(const igemm::Problem& p, const int8_t* xw, const float* xsT,
                           W4WideMaps& m) {
  using C = W4WCfg;
  const uint64_t kw = (uint64_t)p.Kn + p.K8;
  bool ok = makeMap(&m.x, xw, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, kw, p.M, 128, C::BM,
                    CU_TENSOR_MAP_SWIZZLE_128B) &&
            makeMap(&m.xs, xsT, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, w4aWideMp(p.M), p.ng, C::BM, 1,
                    CU_TENSOR_MAP_SWIZZLE_NONE) &&
            makeW4WeightMaps(p, C::BN, m.w4, m.ws, m.w8);
  if (ok && p.K8 > 0)
    ok = makeMap(&m.x8, xw, CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, kw, p.M, 64, C::BM,
                 CU_TENSOR_MAP_SWIZZLE_64B);
  else
    m.x8 = m.x;  // never read (slices8 == 0)
  return ok;
}

// The wide kernel needs G = 128, ng = Kn / 128 (one group per slice), a 16-byte aligned ws4t and
// a workspace of w4aWideWorkspace bytes (16-byte aligned).
inline bool w4a4WideFits(const igemm::Problem& p) {
  return p.ng * 128 == p.Kn && aligned16(p.bs4t) && (p.K8 == 0 || (p.a8 && p.b8)) &&
         aligned16(p.workspace) &&
         p.workspaceBytes >= w4aWideWorkspace(p.M, p.Kn, p.K8, p.ng);
}

inline int launchW4a4Wide(const igemm::Problem& p, cudaStream_t stream) {
  using C = W4WCfg;
  int8_t* xw = static_cast<int8_t*>(p.workspace);
  float* xsT = reinterpret_cast<float*>(xw + w4aWideXwBytes(p.M, p.Kn, p.K8));
  const int Mp = w4aWideMp(p.M);
  {
    const long items = (long)p.M * (p.Kn / 32 + p.K8 / 16) + (long)p.ng * Mp;
    const long want = (items + 255) / 256;
    const int grid = static_cast<int>(want < 8L * multiprocessorCount() ? want
                                                                        : 8L * multiprocessorCount());
    w4a4WidenKernel<128><<<grid, 256, 0, stream>>>(
        reinterpret_cast<const uint4*>(p.a4), p.as4, reinterpret_cast<const uint4*>(p.a8), p.M,
        p.Kn, p.K8, p.ng, Mp, reinterpret_cast<uint4*>(xw), xsT);
    const int st = launchStatus();
    if (st != LOWBIT_OK) return st;
  }
  W4WideMaps m;
  if (!makeW4WideMaps(p, xw, xsT, m)) return LOWBIT_ERR_UNSUPPORTED;
  const W4WArgs a{static_cast<const __half*>(p.as8), static_cast<const __half*>(p.bs8), p.y,
                  p.M, p.N, p.slices4, p.slices8, (p.M + C::BM - 1) / C::BM,
                  (p.N + C::BN - 1) / C::BN, p.Kn};
  const int st = allowDynamicSmem<w4a4WideKernel<128>>(C::kSmemBytes);
  if (st != LOWBIT_OK) return st;
  const int tiles = a.tilesM * a.tilesN;
  const int grid = tiles < multiprocessorCount() ? tiles : multiprocessorCount();
  return launchDependent(w4a4WideKernel<128>, grid, kThreads, C::kSmemBytes, stream, m.x, m.x8,
                         m.w4, m.ws, m.xs, m.w8, a);
}

}  // namespace wg
}  // namespace lowbit
