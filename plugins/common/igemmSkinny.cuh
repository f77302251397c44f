// Skinny int8 tensor-core GEMM for M <= 16 (decode), shared by w4a4Gemm and w8a8Gemm.
// Included by igemmCore.cuh (uses its Problem, Mode, PTX wrappers); same operands and math.
//
// Memory-bound: the weights must stream at HBM speed. No shared-memory tiles of A or B:
//  * Lane (g, t) of a warp copies the 16-byte chunk t of a 64-byte "super-chunk" of weight row
//    n0 + g (one warp copy = 8 rows x 64 contiguous bytes), the same chunk of activation rows g
//    and g + 8 and their group scales with cp.async into a per-warp ring of D batches (D - 1
//    batches in flight while one is multiplied, no registers held; nothing waits on a load that
//    was issued in the same iteration). In mma step i each lane supplies word i of ITS chunk (int4: 4 steps of k32;
//    int8: 2 steps, words 2i and 2i + 1), so A and B agree on which K value sits in each mma
//    slot and the canonical layouts need no repacking. An int4 super-chunk is 128 values = one
//    group of G = 128 (G = 64 would mix two groups in one mma: it uses the tiled decode kernel).
//  * A warp multiplies one A super-chunk against NT 8-row weight blocks (tile = NT * 8 output
//    columns), so the activation loads, widening and scale loads are amortized over NT mma sets.
//  * The KS warps of a CTA take the super-chunks of a tile round-robin, U per batch, and reduce
//    their fp32 partials through shared memory. The grid is persistent (as many CTAs as fit) and
//    strides over the N / (NT * 8) tiles; the cp.async ring runs across tile boundaries.
#pragma once

namespace lowbit {
namespace igemm {

// 4-byte async copy (weight group scales); srcBytes = 0 zero-fills.
__device__ __forceinline__ void cpAsync4(void* dst, const void* src, int srcBytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smemAddr(dst)), "l"(src),
               "r"(srcBytes));
}

// R: activation rows per lane kept in the ring (2: rows g and g + 8; 1 when M <= 8).
template <int KS, int NT, int U, int D, int R>
struct SkinnyConfig {
  static constexpr int kWarps = KS, kThreads = KS * 32;
  static constexpr int kRedBytes = KS * NT * 4 * 32 * 4;    // fp32 partials [KS][NT*4][32]
  static constexpr int kRingB = KS * D * U * NT * 32 * 16;  // uint4  [KS][D][U][NT][32]
  static constexpr int kRingW = KS * D * U * NT * 32 * 4;   // half2  [KS][D][U][NT][32]
  static constexpr int kRingA = KS * D * U * R * 32 * 16;   // uint4  [KS][D][U][R rows][32]
  static constexpr int kRingX = KS * D * U * R * 32 * 4;    // u32    [KS][D][U][R rows][32]
  static constexpr int kSmemBytes = kRedBytes + kRingB + kRingW + kRingA + kRingX;
};

// kHalf: M <= 8, so activation rows g + 8 never exist: their widening and scaling are skipped.
template <int MODE, int KS, int NT, int U, int D, bool kHalf>
__global__ void __launch_bounds__(KS * 32, (16 / KS) > 0 ? (16 / KS) : 1) skinnyKernel(const Problem p) {
  constexpr int R = kHalf ? 1 : 2;
  using C = SkinnyConfig<KS, NT, U, D, R>;
  extern __shared__ __align__(128) uint8_t smem[];
  const int lane = threadIdx.x & 31, ks = threadIdx.x >> 5;
  float* red = reinterpret_cast<float*>(smem);
  uint4* ringB = reinterpret_cast<uint4*>(smem + C::kRedBytes) + ks * D * U * NT * 32;
  __half2* ringW =
      reinterpret_cast<__half2*>(smem + C::kRedBytes + C::kRingB) + ks * D * U * NT * 32;
  uint4* ringA = reinterpret_cast<uint4*>(smem + C::kRedBytes + C::kRingB + C::kRingW) +
                 ks * D * U * R * 32;
  uint32_t* ringX = reinterpret_cast<uint32_t*>(smem + C::kRedBytes + C::kRingB + C::kRingW +
                                                C::kRingA) + ks * D * U * R * 32;
  const int g = lane >> 2, t = lane & 3;
  const int S4 = (MODE == kW8A8) ? 0 : p.ng;  // int4 super-chunks (= groups of 128)
  const int S = S4 + p.slices8;
  const int nb = (S + KS * U - 1) / (KS * U);  // batches per tile, the same for every warp
  const bool r0 = g < p.M, r1 = !kHalf && g + 8 < p.M;
  const int rowBytes4 = p.Kn >> 1;
  const int tiles = (p.N + NT * 8 - 1) / (NT * 8);
  const int myTiles = (tiles - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
  const int total = myTiles * nb;  // iterations (tile, batch) of this CTA, uniform over warps
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);

  auto issue = [&](int it) {
    if (it < total) {
      const int slot = it % D;
      const int n0 = (blockIdx.x + (it / nb) * gridDim.x) * NT * 8;
      const int base = (it % nb) * KS * U + ks;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int sc = base + u * KS;
        if (sc >= S) continue;
        // activations (rows g, g + 8) and, for int4, their group scales: the 4-byte aligned pair
        // of fp16 that holds as4[row, sc] (the half is picked in compute)
        const int ia = ((slot * U + u) * R) * 32 + lane;
        if (sc < S4) {
          const size_t off = (size_t)sc * kSliceBytes + t * 16;
          const size_t x0 = ((size_t)g * p.ng + sc) & ~size_t(1);
          const size_t x1 = ((size_t)(g + 8) * p.ng + sc) & ~size_t(1);
          cpAsync16(ringA + ia, r0 ? p.a4 + (size_t)g * rowBytes4 + off : p.a4, r0 ? 16 : 0);
          cpAsync4(ringX + ia, r0 ? p.as4 + x0 : p.as4, r0 ? 4 : 0);
          if (!kHalf) {
            cpAsync16(ringA + ia + 32, r1 ? p.a4 + (size_t)(g + 8) * rowBytes4 + off : p.a4,
                      r1 ? 16 : 0);
            cpAsync4(ringX + ia + 32, r1 ? p.as4 + x1 : p.as4, r1 ? 4 : 0);
          }
        } else {
          const int off = (sc - S4) * kSliceBytes + t * 16;
          const bool k8 = off < p.K8;
          cpAsync16(ringA + ia, (r0 && k8) ? p.a8 + (size_t)g * p.K8 + off : p.a8,
                    (r0 && k8) ? 16 : 0);
          if (!kHalf)
            cpAsync16(ringA + ia + 32, (r1 && k8) ? p.a8 + (size_t)(g + 8) * p.K8 + off : p.a8,
                      (r1 && k8) ? 16 : 0);
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const int nb0 = n0 + j * 8;
          const bool ok = nb0 < p.N;
          const int idx = ((slot * U + u) * NT + j) * 32 + lane;
          if (sc < S4) {
            const int8_t* src = p.b4 + (size_t)(nb0 + g) * rowBytes4 + sc * kSliceBytes + t * 16;
            cpAsync16(ringB + idx, ok ? src : p.b4, ok ? 16 : 0);
            cpAsync4(ringW + idx, ok ? p.bs4t + (size_t)sc * p.N + nb0 + 2 * t : p.bs4t, ok ? 4 : 0);
          } else {
            const int off = (sc - S4) * kSliceBytes + t * 16;
            const bool ok8 = ok && off < p.K8;
            cpAsync16(ringB + idx, ok8 ? p.b8 + (size_t)(nb0 + g) * p.K8 + off : p.b8, ok8 ? 16 : 0);
          }
        }
      }
    }
    cpAsyncCommit();  // one group per iteration, empty or not, keeps the wait count uniform
  };

  float accF[NT][4];
  int acc8[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      accF[j][e] = 0.f;
      acc8[j][e] = kMagic;
    }

  auto compute = [&](int it) {
    const int slot = it % D;
    const int tile = blockIdx.x + (it / nb) * gridDim.x;
    const int n0 = tile * NT * 8;
    const int base = (it % nb) * KS * U + ks;
    uint4 A0[U], A1[U];
    float xa[U], xb[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {  // activations + their scales, from the ring
      const int sc = base + u * KS;
      const int ia = ((slot * U + u) * R) * 32 + lane;
      A0[u] = ringA[ia];
      A1[u] = kHalf ? zero : ringA[ia + 32];
      xa[u] = 0.f;
      xb[u] = 0.f;
      if (sc < S4) {
        const uint32_t p0 = ringX[ia];
        const int sh0 = (int)((((size_t)g * p.ng + sc) & 1) * 16);
        xa[u] = r0 ? __half2float(__ushort_as_half((unsigned short)(p0 >> sh0))) * (1.f / 256.f)
                   : 0.f;
        if (!kHalf) {
          const uint32_t p1 = ringX[ia + 32];
          const int sh1 = (int)((((size_t)(g + 8) * p.ng + sc) & 1) * 16);
          xb[u] = r1 ? __half2float(__ushort_as_half((unsigned short)(p1 >> sh1))) * (1.f / 256.f)
                     : 0.f;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int sc = base + u * KS;
      const uint32_t aw0[4] = {A0[u].x, A0[u].y, A0[u].z, A0[u].w};
      const uint32_t aw1[4] = {A1[u].x, A1[u].y, A1[u].z, A1[u].w};
      if (sc < S4) {
        uint32_t a[4][4];  // widened A of the 4 k32 steps, reused by the NT weight blocks
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          widen4(aw0[i], a[i][0], a[i][2]);
          if constexpr (kHalf) {
            a[i][1] = 0u;
            a[i][3] = 0u;
          } else {
            widen4(aw1[i], a[i][1], a[i][3]);
          }
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const int idx = ((slot * U + u) * NT + j) * 32 + lane;
          const uint4 bv = ringB[idx];
          const float2 wsv = __half22float2(ringW[idx]);
          const uint32_t bw[4] = {bv.x, bv.y, bv.z, bv.w};
          int acc[4] = {kMagic, kMagic, kMagic, kMagic};
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            uint32_t b0, b1;
            widen4(bw[i], b0, b1);
            mmaS8(acc, a[i], b0, b1);
          }
          const float s00 = xa[u] * wsv.x, s01 = xa[u] * wsv.y;
          const float s10 = xb[u] * wsv.x, s11 = xb[u] * wsv.y;
          accF[j][0] = fmaf(__int_as_float(acc[0]) - kMagicF, s00, accF[j][0]);
          accF[j][1] = fmaf(__int_as_float(acc[1]) - kMagicF, s01, accF[j][1]);
          if constexpr (!kHalf) {
            accF[j][2] = fmaf(__int_as_float(acc[2]) - kMagicF, s10, accF[j][2]);
            accF[j][3] = fmaf(__int_as_float(acc[3]) - kMagicF, s11, accF[j][3]);
          }
        }
      } else if (sc < S) {
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint4 bv = ringB[((slot * U + u) * NT + j) * 32 + lane];
          const uint32_t a0[4] = {aw0[0], aw1[0], aw0[1], aw1[1]};
          const uint32_t a1[4] = {aw0[2], aw1[2], aw0[3], aw1[3]};
          mmaS8(acc8[j], a0, bv.x, bv.y);
          mmaS8(acc8[j], a1, bv.z, bv.w);
        }
      }
    }
    if (it % nb != nb - 1) return;
    // ---- last batch of the tile: region-8 scale, split-K reduction, store ----------------------
    const int ra = min(g, p.M - 1), rb = min(g + 8, p.M - 1);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int col = min(n0 + j * 8 + 2 * t, p.N - 2);
      if (p.slices8 > 0) {
        const float x0 = loadScale8<MODE>(p.as8, ra * p.as8Stride);
        const float x1 = loadScale8<MODE>(p.as8, rb * p.as8Stride);
        const float w0 = loadScale8<MODE>(p.bs8, col);
        const float w1 = loadScale8<MODE>(p.bs8, col + 1);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float v = static_cast<float>(acc8[j][e] - kMagic);
          const float xs = (e >> 1) ? x1 : x0, wsc = (e & 1) ? w1 : w0;
          if constexpr (MODE == kW8A8) accF[j][e] += v * xs * wsc;
          else accF[j][e] = fmaf(v, xs * wsc, accF[j][e]);
          acc8[j][e] = kMagic;
        }
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) red[((ks * NT + j) * 4 + e) * 32 + lane] = accF[j][e];
    }
    __syncthreads();
    if (ks == 0) {
#pragma unroll
      for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int q = 1; q < KS; ++q)
#pragma unroll
          for (int e = 0; e < 4; ++e) accF[j][e] += red[((q * NT + j) * 4 + e) * 32 + lane];
        const int col = n0 + j * 8 + 2 * t;
        if (col < p.N) {
          if (r0)
            *reinterpret_cast<__half2*>(p.y + (size_t)g * p.N + col) =
                __floats2half2_rn(accF[j][0], accF[j][1]);
          if (r1)
            *reinterpret_cast<__half2*>(p.y + (size_t)(g + 8) * p.N + col) =
                __floats2half2_rn(accF[j][2], accF[j][3]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) accF[j][e] = 0.f;
    __syncthreads();  // red is reused by the next tile
  };

#pragma unroll
  for (int d = 0; d < D - 1; ++d) issue(d);
  for (int it = 0; it < total; ++it) {
    issue(it + D - 1);
    cpAsyncWait<D - 1>();  // this lane's copies of iteration it have landed (each lane reads
    compute(it);           // only the ring entries it copied itself: no barrier needed)
  }
  cpAsyncWait<0>();
}

// Skinny configurations (tile = 4 x 8 = 32 output columns, batches of 1 super-chunk per warp,
// ring depth 3 = 2 batches in flight while one is multiplied):
//  * Big:   16 warps split K, one CTA per SM: 16 x 2 x 2 KiB = 64 KiB of weights in flight per SM;
//           shared memory 32 + 180 = 212 KiB (H100).
//  * Wide:  17 warps, M <= 8 only (one activation row per lane: 198 KiB; 120 registers): for
//           K = 4096 W4A4 (31 groups + 2 outlier super-chunks = 33) a tile takes 2 batches
//           instead of 3 with 16 warps.
//  * Small: 8 warps, up to two CTAs per SM; shared memory 106 KiB (A100).
// GPUs with less per-block shared memory (sm_89: 99 KiB) use the tiled decode kernel instead.
template <int KS, bool kHalf>
using SkinnyCfg = SkinnyConfig<KS, 4, 1, 3, kHalf ? 1 : 2>;

template <int MODE, int KS, bool kHalf>
inline int launchSkinnyWith(const Problem& p, cudaStream_t stream, int dev) {
  using C = SkinnyCfg<KS, kHalf>;
  constexpr auto kernel = skinnyKernel<MODE, KS, 4, 1, 3, kHalf>;
  int st = allowDynamicSmem<kernel>(C::kSmemBytes);
  if (st != LOWBIT_OK) return st;
  static int perSm[64] = {0};
  int& occ = perSm[dev & 63];
  if (occ == 0) {
    st = cudaStatus(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kernel, C::kThreads, C::kSmemBytes));
    if (st != LOWBIT_OK) return st;
    if (occ < 1) occ = 1;
  }
  const int tiles = (p.N + 31) / 32;
  const int slots = occ * multiprocessorCount();
  const int grid = tiles < slots ? tiles : slots;
  kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(p);
  return launchStatus();
}

// Launches the skinny kernel; *used = false (and LOWBIT_OK) when this GPU cannot host it.
template <int MODE>
inline int launchSkinny(const Problem& p, cudaStream_t stream, bool* used) {
  *used = false;
  if constexpr (MODE == kW4A4G64) {
    return LOWBIT_ERR_UNSUPPORTED;
  } else {
    if (p.M > 16) return LOWBIT_ERR_UNSUPPORTED;
    static int optin[64] = {0};
    int dev = 0;
    int st = cudaStatus(cudaGetDevice(&dev));
    if (st != LOWBIT_OK) return st;
    int& o = optin[dev & 63];
    if (o == 0) {
      st = cudaStatus(cudaDeviceGetAttribute(&o, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
      if (st != LOWBIT_OK) return st;
    }
    const bool half = p.M <= 8;
    const int S = (MODE == kW8A8 ? 0 : p.ng) + p.slices8;  // super-chunks per tile
    *used = true;
    if (half && (S + 16) / 17 < (S + 15) / 16 && o >= SkinnyCfg<17, true>::kSmemBytes)
      return launchSkinnyWith<MODE, 17, true>(p, stream, dev);
    if (o >= SkinnyCfg<16, false>::kSmemBytes)
      return half ? launchSkinnyWith<MODE, 16, true>(p, stream, dev)
                  : launchSkinnyWith<MODE, 16, false>(p, stream, dev);
    if (o >= SkinnyCfg<8, false>::kSmemBytes)
      return half ? launchSkinnyWith<MODE, 8, true>(p, stream, dev)
                  : launchSkinnyWith<MODE, 8, false>(p, stream, dev);
    *used = false;
    return LOWBIT_OK;
  }
}

}  // namespace igemm
}  // namespace lowbit
