// W4A4 (Atom, G = 128) wgmma kernel with in-warpgroup ping-pong (sm_90a; included by
// wgmmaCore.cuh, whose header describes the operands, the int4 widening and the tile raster).
//
//   y[M, N] fp16 = sum_g xs4[m,g] ws4t[g,n] * sum_{k in g} x4 w4  +  xs8[m] ws8[n] * sum_k x8 w8
//   x4 int8 [M, Kn/2] packed int4, w4 int8 [N, Kn/2], xs4 fp16 [M, Kn/128], ws4t fp16 [Kn/128, N],
//   x8 int8 [M, Ko], w8 int8 [N, Ko], xs8 fp16 [M], ws8 fp16 [N]; all row-major, contiguous.
//
// Same producer, stages and 64 x 256 tile as w4a4WgmmaKernel (W4Cfg). What changes is the
// consumer schedule: each consumer warpgroup splits its 128 columns into two 64-column halves
// with their own int32 accumulators (acc0, acc1: 32 registers each), so that the tensor cores
// work on one half while the warps fold the other:
//     issue W(i,0), W(i,1)                      (4 x m64n64k32, A from registers)
//     widen B(i+1) / load A(i+1)                (while W(i,*) run)
//     wait W(i,0); fold half 0 of slice i; barrier; issue W(i+1,0)
//     wait W(i,1); fold half 1 of slice i; barrier; release stage i; issue W(i+1,1)
// Each int4 group starts its accumulators with scale-d = 0 (no reset moves) and is folded as
// accF += float(acc) * (xs4/256 * ws4t) (exact int -> fp32 conversion, |sum| <= 2^21); the
// int8 outlier slices accumulate across slices and are folded once at the end with xs8 * ws8.
// The A fragments alternate between two register sets (aX / aY, the loop is unrolled by two)
// because wgmma reads them asynchronously.
// ptxas serializes this kernel's wgmma (C7514, NOTES logs 9 and 30: the loop head is reached
// with different groups in flight), so it runs as a serialized kernel; never auto.
#pragma once

namespace lowbit {
namespace wg {

template <int G>
__global__ void __launch_bounds__(kThreads, 1)
    w4a4PingPongKernel(const __grid_constant__ CUtensorMap tmX4,
                       const __grid_constant__ CUtensorMap tmW4,
                       const __grid_constant__ CUtensorMap tmWs,
                       const __grid_constant__ CUtensorMap tmX8,
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

  if (wgi == 0) {  // ---------------- producer (w4aProducer, as config 7) ---------------
    setMaxRegsDec<40>();
    if (threadIdx.x == 0) {
      w4aProducer<C>(&tmX4, &tmW4, &tmWs, &tmX8, &tmW8, p, sbase, fullBar, emptyBar);
    }
  } else {  // ---------------- consumers ----------------
    setMaxRegsInc<232>();
    const int cw = wgi - 1, tid = threadIdx.x & 127;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    uint8_t* wbuf = wbufBase + cw * 2 * C::kWbufBytes;
    int stage = 0;
    uint32_t phase = 0;
    int acc0[32], acc1[32];
    float accF[64];
    uint32_t aX[4][4], aY[4][4];

    // W(i, h): the k32 steps of slice i for column half h into acc_h.
    auto issue = [&](int i, int h, const uint32_t (&a)[4][4], int wbIdx, int st) {
      wgFence();
      if (i < p.slices4) {
        const uint64_t db =
            makeDesc(smem32(wbuf + wbIdx * C::kWbufBytes + h * 64 * 128), kSw128, 1024);
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          if (h == 0) wgmmaRS64(acc0, a[s], db + 2 * s, s > 0);
          else wgmmaRS64(acc1, a[s], db + 2 * s, s > 0);
        }
      } else {
        const uint32_t stA = sbase + st * C::kStageBytes;
        const uint64_t da = makeDesc(stA, kSw64, 512);
        const uint64_t db =
            makeDesc(stA + C::kABytes + cw * 128 * 64 + h * 64 * 64, kSw64, 512);
        const int first = i == p.slices4;
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          if (h == 0) wgmmaSS64(acc0, da + 2 * s, db + 2 * s, !(first && s == 0));
          else wgmmaSS64(acc1, da + 2 * s, db + 2 * s, !(first && s == 0));
        }
      }
      wgCommit();
    };
    auto prepare = [&](int st, uint32_t (&a)[4][4], int wbIdx) {
      const uint8_t* sp = smem + st * C::kStageBytes;
      widenRow(sp + C::kABytes + cw * 128 * 64, tid, wbuf + wbIdx * C::kWbufBytes);
      loadA4(sp, warp, lane, a);
      fenceProxyAsync();
    };
    auto fold = [&](int st, int h, const int (&acc)[32], float xa, float xb) {
      const __half2* wsS =
          reinterpret_cast<const __half2*>(smem + st * C::kStageBytes + C::kABytes + C::kBBytes);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float2 w = __half22float2(wsS[cw * 64 + h * 32 + j * 4 + t]);
        float* f = accF + h * 32 + 4 * j;
        f[0] = fmaf(static_cast<float>(acc[4 * j + 0]), xa * w.x, f[0]);
        f[1] = fmaf(static_cast<float>(acc[4 * j + 1]), xa * w.y, f[1]);
        f[2] = fmaf(static_cast<float>(acc[4 * j + 2]), xb * w.x, f[2]);
        f[3] = fmaf(static_cast<float>(acc[4 * j + 3]), xb * w.y, f[3]);
      }
    };

    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      int mt, nt;
      tileCoords(tile, p.tilesM, p.tilesN, mt, nt);
      const int r0 = mt * C::BM + warp * 16 + g, r1 = r0 + 8;
      const int r0c = min(r0, p.M - 1), r1c = min(r1, p.M - 1);
#pragma unroll
      for (int i = 0; i < 64; ++i) accF[i] = 0.f;
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        acc0[i] = 0;
        acc1[i] = 0;
      }
      // prologue: slice 0 (int4, slices4 >= 1) prepared and issued
      mbarWait(fullBar + 8 * stage, phase);
      prepare(stage, aX, 0);
      namedBarrier(1 + cw, 128);
      issue(0, 0, aX, 0, stage);
      issue(0, 1, aX, 0, stage);
      int cur = stage;
      if (++stage == C::STAGES) { stage = 0; phase ^= 1; }
      int wb = 0;

      // one slice: aC = this slice's A fragments (in flight), aN = the next slice's
      auto step = [&](int i, uint32_t (&aC)[4][4], uint32_t (&aN)[4][4]) {
        const bool int4 = i < p.slices4;
        const bool more = i + 1 < S;
        float xa = 0.f, xb = 0.f;
        if (int4) {
          xa = __half2float(p.xs4[(size_t)r0c * p.ng + i]) * (1.f / 256.f);
          xb = __half2float(p.xs4[(size_t)r1c * p.ng + i]) * (1.f / 256.f);
        }
        if (more) {
          mbarWait(fullBar + 8 * stage, phase);
          if (i + 1 < p.slices4) prepare(stage, aN, wb ^ 1);
        }
        wgWait<1>();  // W(i, 0) done
        fenceRegs(acc0);
        if (int4) fold(cur, 0, acc0, xa, xb);
        namedBarrier(1 + cw, 128);  // B(i+1) widened by every thread of the warpgroup
        if (more) issue(i + 1, 0, aN, wb ^ 1, stage);
        if (more) wgWait<1>();  // W(i, 1) done
        else wgWait<0>();
        fenceRegs(acc1);
#pragma unroll
        for (int s = 0; s < 4; ++s)
#pragma unroll
          for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(aC[s][e])::"memory");
        if (int4) fold(cur, 1, acc1, xa, xb);
        namedBarrier(1 + cw, 128);  // every thread is done with stage `cur`
        if (tid == 0) mbarArrive(emptyBar + 8 * cur);
        if (more) {
          issue(i + 1, 1, aN, wb ^ 1, stage);
          cur = stage;
          if (++stage == C::STAGES) { stage = 0; phase ^= 1; }
        }
        wb ^= 1;
      };
      for (int i = 0; i < S; i += 2) {
        step(i, aX, aY);
        if (i + 1 < S) step(i + 1, aY, aX);
      }

      wgWait<0>();  // (already complete; tells the compiler the accumulators are final)
      fenceRegs(acc0);
      fenceRegs(acc1);
      // outliers: one scale for the whole int8 sum; then store fp16 pairs
      const int colBase = nt * C::BN + cw * 128 + 2 * t;
      if (p.slices8 > 0) {
        const float x0 = __half2float(p.xs8[r0c]), x1 = __half2float(p.xs8[r1c]);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const int col = min(colBase + j * 8, p.N - 2);
          const float w0 = __half2float(p.ws8[col]), w1 = __half2float(p.ws8[col + 1]);
          const int* a = j < 8 ? acc0 + 4 * j : acc1 + 4 * (j - 8);
          accF[4 * j + 0] = fmaf(static_cast<float>(a[0]), x0 * w0, accF[4 * j + 0]);
          accF[4 * j + 1] = fmaf(static_cast<float>(a[1]), x0 * w1, accF[4 * j + 1]);
          accF[4 * j + 2] = fmaf(static_cast<float>(a[2]), x1 * w0, accF[4 * j + 2]);
          accF[4 * j + 3] = fmaf(static_cast<float>(a[3]), x1 * w1, accF[4 * j + 3]);
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

inline int launchW4a4PingPong(const igemm::Problem& p, cudaStream_t stream) {
  W4Maps m;
  if (!makeW4Maps(p, m)) return LOWBIT_ERR_UNSUPPORTED;
  const W4Args a = w4Args(p);
  const int st = allowDynamicSmem<w4a4PingPongKernel<128>>(W4Cfg::kSmemBytes);
  if (st != LOWBIT_OK) return st;
  const int tiles = a.tilesM * a.tilesN;
  const int grid = tiles < multiprocessorCount() ? tiles : multiprocessorCount();
  w4a4PingPongKernel<128><<<grid, kThreads, W4Cfg::kSmemBytes, stream>>>(m.x4, m.w4, m.ws, m.x8,
                                                                          m.w8, a);
  return launchStatus();
}

}  // namespace wg
}  // namespace lowbit
