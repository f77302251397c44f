// Fused activation quantizers, exactly lowbit.reference up to the fp32 order of the RMSNorm sum
// of squares (a last-ulp change of rstd can move a value that sits on a rounding boundary by one
// integer step; the tests bound that fraction).
//
// atomQuantizeKernel (lowbit.reference.atom_rmsnorm_quantize / atom_reorder_quantize):
//   rstd = rsqrt(mean(x^2) + eps)                       (fp32; skipped when gamma is null)
//   h[j] = (x[perm[j]] * rstd) * gamma[j]               (fp32; h = x[perm[j]] without gamma)
//   normal j < Kn, groups of G:  s = fp16(amax * clip / 7);  q = clamp(rint(h / s), -8, 7)
//   outlier j >= Kn (one group): s = fp16(amax / 127);       q = clamp(rint(h / s), -127, 127)
//   a scale that is 0 gives q = 0. Divisions are IEEE (__fdiv_rn), rint = round half to even.
//   x    fp16/bf16 [M, K] (K % 8 == 0), gamma same dtype [K] or null, perm int32 [K] or null
//   x4   int8 [M, Kn/2] packed int4, low nibble first (lowbit.packing)   Kn = K - Ko, % 128 == 0
//   xs4  fp16 [M, Kn/G]; x8 int8 [M, Ko] (Ko % 16 == 0); xs8 fp16 [M] (0 when Ko == 0;
//   the reference raises for n_outliers = 0, see plugins/NOTES.md)
//
// rmsnormQuantizeInt8Kernel (lowbit.reference.rmsnorm_quantize_int8):
//   h = (x * rstd) * gamma;  dynamic: s = amax / 127 (fp32), q = s > 0 ? clamp(rint(h/s)) : 0
//   static: s = *static_scale, q = clamp(rint(h / s), -127, 127)
//   x fp16/bf16 [M, K] (K % 8 == 0), gamma [K]; q int8 [M, K]; xs fp32 [M] (dynamic only)
//
// Layout of the work: one CTA per token row, 128..1024 threads (about 4 16-byte vectors of the row
// per thread, all loads issued before first use). The Atom kernel also stages the row in shared
// memory (K * 2 bytes) because the reorder gathers it in perm order; each thread then produces 8
// consecutive output channels ("chunk"), G/8 consecutive lanes share a group and reduce its amax
// with xor shuffles, so h never leaves registers. The int8 kernel keeps the row in registers.
// Division: q = rint(h * (1/s)) with an exact __fdiv_rn fallback near half-integers (quant8), so
// the result equals rint(h / s) with IEEE division.
#include "quantize/quantizeKernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/cudaCheck.h"

namespace lowbit {
namespace {

// Each thread keeps up to kMaxVec 16-byte vectors (8 values each) of its row in registers, so
// a CTA of blockDim threads covers K <= 32 * blockDim. The launcher picks blockDim (a multiple of
// 32, 128..1024) for up to 4 vectors per thread; K up to 32768 fits. CTAs are persistent: each
// loops over rows blockIdx.x, + gridDim.x, ... and issues the loads of its next row before working
// on the current one, so DRAM latency overlaps the reductions and the math.
constexpr int kMaxVec = 4;
constexpr int kMinThreads = 128, kMaxThreads = 1024;
// Each kernel is built twice, for at most kSmallThreads threads (K <= 16384, every Llama shape;
// __launch_bounds__(512) lets ptxas use up to 128 registers, so the row vectors, h and the
// prefetched perm/gamma stay in registers) and for up to 1024 threads (64 registers: spills).
#ifndef LOWBIT_QUANT_SMALL_THREADS
#define LOWBIT_QUANT_SMALL_THREADS 384
#endif
#ifndef LOWBIT_QUANT_MIN_BLOCKS
#define LOWBIT_QUANT_MIN_BLOCKS 2
#endif
constexpr int kSmallThreads = LOWBIT_QUANT_SMALL_THREADS;

__device__ __forceinline__ float toF(__half v) { return __half2float(v); }
__device__ __forceinline__ float toF(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ void toF8(const uint4& v, float (&f)[8]) {
  const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i) f[i] = toF(e[i]);
}

__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reduction (sum or max) of one float; every thread gets the result.
template <bool kMax>
__device__ float blockReduce(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = kMax ? warpMax(v) : warpSum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : 0.f;
  return kMax ? warpMax(v) : warpSum(v);
}

// Issues the loads of row x[K] into registers: v[u] = vector threadIdx.x + u * blockDim.
template <typename T>
__device__ __forceinline__ void issueRow(const T* __restrict__ x, int K, uint4 (&v)[kMaxVec]) {
  const uint4* src = reinterpret_cast<const uint4*>(x);
  const int nv = K / 8;
#pragma unroll
  for (int u = 0; u < kMaxVec; ++u) {
    const int i = threadIdx.x + u * blockDim.x;
    if (i < nv) v[u] = src[i];
  }
}

// Stages the row held in v into shared memory (when sx is given) and returns rstd (1 when
// !norm). Ends with a barrier: sx is complete.
template <typename T>
__device__ float consumeRow(const uint4 (&v)[kMaxVec], T* sx, int K, bool norm, float eps,
                            float* scratch) {
  const int nv = K / 8;
  float ss = 0.f;
#pragma unroll
  for (int u = 0; u < kMaxVec; ++u) {
    const int i = threadIdx.x + u * blockDim.x;
    if (i >= nv) continue;
    if (sx) reinterpret_cast<uint4*>(sx)[i] = v[u];
    if (norm) {
      float f[8];
      toF8<T>(v[u], f);
#pragma unroll
      for (int e = 0; e < 8; ++e) ss = fmaf(f[e], f[e], ss);
    }
  }
  if (!norm) {
    __syncthreads();
    return 1.f;
  }
  const float total = blockReduce<false>(ss, scratch);  // contains __syncthreads: row staged
  // torch's CUDA mean multiplies the sum by 1/K; rsqrtf is what torch.rsqrt calls on CUDA.
  return rsqrtf(total * (1.f / static_cast<float>(K)) + eps);
}

// Codes of clamp(rint(h[e] / s), lo, hi) for a scale s > 0, with IEEE-division semantics.
// Fast path: t = clamp(h * (1/s)); adding 1.5 * 2^23 rounds t to an integer (round half to even,
// like rint) whose two's complement sits in the low mantissa bits of r, so packing needs no F2I,
// no FRND (both quarter-rate) and not even the subtraction of the bias: q[e] returns the raw bits
// of r, whose low byte (0x4B400000 has a zero low byte) is the code's two's complement; the
// packers below read only those low bits. h * (1/s) is within |h/s| * 2^-22 of the IEEE quotient
// fl(h / s) (1/s: 1 ulp with rcp.approx, 0.5 ulp with __frcp_rn; + two roundings of 0.5 ulp):
// <= 1.6e-5 for int8 (|t| <= 128) with __frcp_rn, <= 2.1e-6 for int4 (|t| <= 8.5 matters;
// beyond it the clamp wins either way) even with the 1-instruction rcp.approx. So the two can
// round differently only when t is within 4e-5 of a half-integer: such a chunk is redone with
// exact division (clamping first is exact because lo and hi are integers).
template <bool kApproxRcp>
__device__ __forceinline__ void quant8(const float (&h)[8], float s, float lo, float hi,
                                       int (&q)[8]) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  float inv;
  if (kApproxRcp) {
    // s is an fp16 value > 0 (>= 2^-24), a normal fp32: ftz changes nothing.
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(inv) : "f"(s));
  } else {
    inv = __frcp_rn(s);
  }
  float worst = 0.f;  // largest |t - rint(t)| of the chunk, <= 0.5
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float t = fminf(fmaxf(h[e] * inv, lo), hi);
    const float r = t + kRound;
    q[e] = __float_as_int(r);
    worst = fmaxf(worst, fabsf(t - (r - kRound)));
  }
  if (worst > 0.5f - 4e-5f) {
#pragma unroll
    for (int e = 0; e < 8; ++e)
      q[e] = __float_as_int(fminf(fmaxf(__fdiv_rn(h[e], s), lo), hi) + kRound);
  }
}

// Packs 8 int4 codes (low nibble first) / 8 int8 codes into 32 / 64 bits, reading only the low
// byte of each q (see quant8).
// byte_perm(a, b, 0x0040): byte0 = a.byte0, byte1 = b.byte0; then 0x5410 joins two halves.
__device__ __forceinline__ uint32_t bytes4(int a, int b, int c, int d) {
  return __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
}
__device__ __forceinline__ uint32_t pack4x8(const int (&q)[8]) {
  // Byte k of the word holds code 2k in its low and code 2k+1 in its high nibble: gather the
  // even and the odd codes' low bytes into two words, then merge the nibbles with one LOP3.
  const uint32_t even = bytes4(q[0], q[2], q[4], q[6]);
  const uint32_t odd = bytes4(q[1], q[3], q[5], q[7]);
  return (even & 0x0F0F0F0Fu) | ((odd << 4) & 0xF0F0F0F0u);
}
__device__ __forceinline__ uint2 pack8x8(const int (&q)[8]) {
  return make_uint2(bytes4(q[0], q[1], q[2], q[3]), bytes4(q[4], q[5], q[6], q[7]));
}

__device__ __forceinline__ float amax8(const float (&h)[8]) {
  float a = 0.f;
#pragma unroll
  for (int e = 0; e < 8; ++e) a = fmaxf(a, fabsf(h[e]));
  return a;
}

// Per-chunk operands that do not depend on x (perm, gamma): loaded ahead of use.
template <typename T>
struct ChunkAux {
  int4 p0, p1;
  uint4 g;
};

template <typename T>
__device__ __forceinline__ void loadAux(const T* __restrict__ gamma, const int* __restrict__ perm,
                                        int c, ChunkAux<T>& a) {
  if (perm) {
    a.p0 = reinterpret_cast<const int4*>(perm + c)[0];
    a.p1 = reinterpret_cast<const int4*>(perm + c)[1];
  } else {
    a.p0 = make_int4(c, c + 1, c + 2, c + 3);
    a.p1 = make_int4(c + 4, c + 5, c + 6, c + 7);
  }
  if (gamma) a.g = *reinterpret_cast<const uint4*>(gamma + c);
}

// h for output channels c..c+7 from the staged row: (x[perm[j]] * rstd) * gamma[j].
template <typename T>
__device__ __forceinline__ void gatherH(const T* sx, const ChunkAux<T>& a, bool norm, float rstd,
                                        float (&h)[8]) {
  const int src[8] = {a.p0.x, a.p0.y, a.p0.z, a.p0.w, a.p1.x, a.p1.y, a.p1.z, a.p1.w};
#pragma unroll
  for (int e = 0; e < 8; ++e) h[e] = toF(sx[src[e]]);
  if (norm) {
    float gf[8];
    toF8<T>(a.g, gf);
#pragma unroll
    for (int e = 0; e < 8; ++e) h[e] = __fmul_rn(__fmul_rn(h[e], rstd), gf[e]);
  }
}

template <typename T, int G, int kMaxT>
__global__ void __launch_bounds__(kMaxT, kMaxT == kSmallThreads ? LOWBIT_QUANT_MIN_BLOCKS : 1)
atomQuantizeKernel(
    const T* __restrict__ x, const T* __restrict__ gamma, const int* __restrict__ perm, float eps,
    int M, int K, int Ko, float clip, uint32_t* __restrict__ x4, __half* __restrict__ xs4,
    int8_t* __restrict__ x8, __half* __restrict__ xs8) {
  extern __shared__ __align__(16) uint8_t smemRaw[];
  __shared__ float scratch[32];
  T* sx = reinterpret_cast<T*>(smemRaw);
  const int Kn = K - Ko;
  const int chunks = Kn / 8;  // multiple of 16, so a group's lanes are all active or all idle
  const bool norm = gamma != nullptr;
  uint4 v[kMaxVec];
  if ((int)blockIdx.x < M) issueRow<T>(x + (size_t)blockIdx.x * K, K, v);
  for (int row = blockIdx.x; row < M; row += gridDim.x) {
    // perm/gamma of this thread's first chunk do not depend on x (L2-resident): load them early.
    ChunkAux<T> aux;
    if ((int)threadIdx.x < chunks) loadAux<T>(gamma, perm, threadIdx.x * 8, aux);
    const float rstd = consumeRow<T>(v, sx, K, norm, eps, scratch);
    // v is staged in sx: reuse it for the next row's loads, in flight during this row's math.
    if (row + (int)gridDim.x < M) issueRow<T>(x + (size_t)(row + gridDim.x) * K, K, v);

    // ---- normal channels: int4 groups of G (G/8 consecutive lanes per group) ----------------------
    constexpr int kLanes = G / 8;
    for (int base = 0; base < chunks; base += blockDim.x) {
      const int j = base + threadIdx.x;
      const bool active = j < chunks;
      float h[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      if (active) gatherH<T>(sx, aux, norm, rstd, h);
      if (j + (int)blockDim.x < chunks) loadAux<T>(gamma, perm, (j + blockDim.x) * 8, aux);
      float a = amax8(h);
#pragma unroll
      for (int o = kLanes / 2; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
      if (!active) continue;
      const __half s16 = __float2half_rn(__fdiv_rn(__fmul_rn(a, clip), 7.f));
      const float s = __half2float(s16);
      uint32_t word = 0;
      if (s > 0.f) {
        int q[8];
        quant8<true>(h, s, -8.f, 7.f, q);
        word = pack4x8(q);
      }
      x4[(size_t)row * (Kn / 8) + j] = word;
      if ((j % kLanes) == 0) xs4[(size_t)row * (Kn / G) + j / kLanes] = s16;
    }

    // ---- outlier channels: one int8 group per token, handled by the last warp ------------------
    const int lastWarp = (blockDim.x >> 5) - 1;
    if (Ko > 0 && (int)(threadIdx.x >> 5) == lastWarp) {
      const int lane = threadIdx.x & 31;
      float a = 0.f;
      for (int j = lane; j < Ko / 8; j += 32) {
        ChunkAux<T> ax;
        loadAux<T>(gamma, perm, Kn + j * 8, ax);
        float h[8];
        gatherH<T>(sx, ax, norm, rstd, h);
        a = fmaxf(a, amax8(h));
      }
      a = warpMax(a);
      const __half s16 = __float2half_rn(__fdiv_rn(a, 127.f));
      const float s = __half2float(s16);
      for (int j = lane; j < Ko / 8; j += 32) {
        ChunkAux<T> ax;
        loadAux<T>(gamma, perm, Kn + j * 8, ax);
        float h[8];
        gatherH<T>(sx, ax, norm, rstd, h);
        uint2 w = make_uint2(0u, 0u);
        if (s > 0.f) {
          int q[8];
          quant8<false>(h, s, -127.f, 127.f, q);
          w = pack8x8(q);
        }
        *reinterpret_cast<uint2*>(x8 + (size_t)row * Ko + j * 8) = w;
      }
      if (lane == 0) xs8[row] = s16;
    } else if (Ko == 0 && xs8 != nullptr && threadIdx.x == 0) {
      xs8[row] = __float2half_rn(0.f);  // an empty outlier group has amax 0, hence scale 0
    }
    __syncthreads();  // everyone is done reading sx before the next row is staged
  }  // row
}

// h of register vector u: (x * rstd) * gamma.
template <typename T>
__device__ __forceinline__ void normH(const uint4& xv, const T* __restrict__ gamma, int i,
                                      float rstd, float (&h)[8]) {
  float gf[8];
  toF8<T>(xv, h);
  if (!gamma) return;  // no RMSNorm: h = x (SmoothQuant dense / proj inputs)
  toF8<T>(reinterpret_cast<const uint4*>(gamma)[i], gf);
#pragma unroll
  for (int e = 0; e < 8; ++e) h[e] = __fmul_rn(__fmul_rn(h[e], rstd), gf[e]);
}

template <typename T, int kMaxT>
__global__ void __launch_bounds__(kMaxT, kMaxT == kSmallThreads ? LOWBIT_QUANT_MIN_BLOCKS : 1)
rmsnormQuantizeInt8Kernel(
    const T* __restrict__ x, const T* __restrict__ gamma, float eps,
    const float* __restrict__ staticScale, int M, int K, int8_t* __restrict__ q,
    float* __restrict__ xs) {
  __shared__ float scratch[32];
  const int nv = K / 8;
  uint4 v[kMaxVec];
  if ((int)blockIdx.x < M) issueRow<T>(x + (size_t)blockIdx.x * K, K, v);
  for (int row = blockIdx.x; row < M; row += gridDim.x) {
    const float rstd = consumeRow<T>(v, static_cast<T*>(nullptr), K, gamma != nullptr, eps,
                                     scratch);
    // h is computed once and kept in registers (32 floats) for the amax and the quantization;
    // v is then free and takes the next row's loads, in flight during this row's reduction/math.
    float h[kMaxVec][8];
    float a = 0.f;
#pragma unroll
    for (int u = 0; u < kMaxVec; ++u) {
      const int i = threadIdx.x + u * blockDim.x;
      if (i >= nv) continue;
      normH<T>(v[u], gamma, i, rstd, h[u]);
      a = fmaxf(a, amax8(h[u]));
    }
    if (row + (int)gridDim.x < M) issueRow<T>(x + (size_t)(row + gridDim.x) * K, K, v);
    float s;
    bool guardZero;
    if (staticScale) {
      s = *staticScale;
      guardZero = false;  // reference: plain clamp(round(h / s)) for the static scale
    } else {
      a = blockReduce<true>(a, scratch);
      s = __fdiv_rn(a, 127.f);
      guardZero = true;
      if (threadIdx.x == 0) xs[row] = s;
    }
#pragma unroll
    for (int u = 0; u < kMaxVec; ++u) {
      const int i = threadIdx.x + u * blockDim.x;
      if (i >= nv) continue;
      uint2 w = make_uint2(0u, 0u);
      if (!(guardZero && !(s > 0.f))) {
        int qv[8];
        quant8<false>(h[u], s, -127.f, 127.f, qv);
        w = pack8x8(qv);
      }
      *reinterpret_cast<uint2*>(q + (size_t)row * K + i * 8) = w;
    }
  }
}

// Threads per row: a multiple of 32 in [128, 1024], kVecs row vectors per thread where that stays
// within the small (register-rich) variant, else up to kMaxVec.
#ifndef LOWBIT_QUANT_VECS
#define LOWBIT_QUANT_VECS 4
#endif
inline int threadsFor(int K) {
  const int vecs = K / 8;
  int t = ((vecs + LOWBIT_QUANT_VECS - 1) / LOWBIT_QUANT_VECS + 31) / 32 * 32;
  if (t > kSmallThreads) t = ((vecs + kMaxVec - 1) / kMaxVec + 31) / 32 * 32;
  return t < kMinThreads ? kMinThreads : (t > kMaxThreads ? kMaxThreads : t);
}

// Persistent grid: as many CTAs as fit on the device at once (at most one per row).
template <typename Kernel>
inline int persistentGrid(Kernel kernel, int threads, int smem, int M, int* grid) {
  int perSm = 0, dev = 0, sms = 0;
  int st = cudaStatus(cudaGetDevice(&dev));
  if (st == LOWBIT_OK) st = cudaStatus(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (st == LOWBIT_OK)
    st = cudaStatus(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, kernel, threads, smem));
  if (st != LOWBIT_OK) return st;
  const long full = (long)(perSm < 1 ? 1 : perSm) * sms;
  *grid = (int)(M < full ? M : full);
  return LOWBIT_OK;
}

template <typename T, int G, int kMaxT>
int launchAtomT(const void* x, const void* gamma, const int* perm, float eps, int M, int K, int Ko,
                float clip, void* x4, void* xs4, void* x8, void* xs8, int threads,
                cudaStream_t stream) {
  const int smem = K * static_cast<int>(sizeof(T));
  int st = allowDynamicSmem<atomQuantizeKernel<T, G, kMaxT>>(smem);
  if (st != LOWBIT_OK) return st;
  int grid = 0;
  st = persistentGrid(atomQuantizeKernel<T, G, kMaxT>, threads, smem, M, &grid);
  if (st != LOWBIT_OK) return st;
  atomQuantizeKernel<T, G, kMaxT><<<grid, threads, smem, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(gamma), perm, eps, M, K, Ko, clip,
      static_cast<uint32_t*>(x4), static_cast<__half*>(xs4), static_cast<int8_t*>(x8),
      static_cast<__half*>(xs8));
  return launchStatus();
}

template <typename T, int G>
int launchAtom(const void* x, const void* gamma, const int* perm, float eps, int M, int K, int Ko,
               float clip, void* x4, void* xs4, void* x8, void* xs8, cudaStream_t stream) {
  const int threads = threadsFor(K);
  return threads <= kSmallThreads
             ? launchAtomT<T, G, kSmallThreads>(x, gamma, perm, eps, M, K, Ko, clip, x4, xs4, x8,
                                                xs8, threads, stream)
             : launchAtomT<T, G, kMaxThreads>(x, gamma, perm, eps, M, K, Ko, clip, x4, xs4, x8,
                                              xs8, threads, stream);
}

template <typename T, int kMaxT>
int launchInt8T(const void* x, const void* gamma, float eps, const float* staticScale, int M,
                int K, void* q, float* xs, int threads, cudaStream_t stream) {
  int grid = 0;
  int st = persistentGrid(rmsnormQuantizeInt8Kernel<T, kMaxT>, threads, 0, M, &grid);
  if (st != LOWBIT_OK) return st;
  rmsnormQuantizeInt8Kernel<T, kMaxT><<<grid, threads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(gamma), eps, staticScale, M, K,
      static_cast<int8_t*>(q), xs);
  return launchStatus();
}

template <typename T>
int launchInt8(const void* x, const void* gamma, float eps, const float* staticScale, int M, int K,
               void* q, float* xs, cudaStream_t stream) {
  const int threads = threadsFor(K);
  return threads <= kSmallThreads
             ? launchInt8T<T, kSmallThreads>(x, gamma, eps, staticScale, M, K, q, xs, threads,
                                             stream)
             : launchInt8T<T, kMaxThreads>(x, gamma, eps, staticScale, M, K, q, xs, threads,
                                           stream);
}

// kMaxVec * 8 values per thread x 1024 threads; the Atom kernel also stages the row in shared
// memory (64 KiB at K = 32768, fp16).
constexpr int kMaxK = kMaxVec * 8 * kMaxThreads;

}  // namespace
}  // namespace lowbit

using namespace lowbit;

extern "C" int lowbit_atom_quantize(const void* x, int dtype, const void* gamma, const int* perm,
                                    float eps, int M, int K, int Ko, int group_size, float clip,
                                    void* x4, void* xs4, void* x8, void* xs8, void* stream) {
  if (M < 0 || K <= 0 || K > kMaxK || Ko < 0 || Ko >= K) return LOWBIT_ERR_BAD_SHAPE;
  if (K % 8 || Ko % 16 || (K - Ko) % 128) return LOWBIT_ERR_DIVISIBILITY;
  if (group_size != 128 && group_size != 64) return LOWBIT_ERR_UNSUPPORTED;
  if (dtype != LOWBIT_DTYPE_FP16 && dtype != LOWBIT_DTYPE_BF16) return LOWBIT_ERR_UNSUPPORTED;
  if (!x || !x4 || !xs4) return LOWBIT_ERR_NULL_POINTER;
  if (Ko > 0 && (!x8 || !xs8)) return LOWBIT_ERR_NULL_POINTER;
  if (!aligned16(x) || (gamma && !aligned16(gamma)) || (perm && !aligned16(perm)) ||
      (Ko > 0 && !aligned16(x8)) || (reinterpret_cast<uintptr_t>(x4) & 3))
    return LOWBIT_ERR_MISALIGNED;
  if (M == 0) return LOWBIT_OK;
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == LOWBIT_DTYPE_FP16)
    return group_size == 128
               ? launchAtom<__half, 128>(x, gamma, perm, eps, M, K, Ko, clip, x4, xs4, x8, xs8, s)
               : launchAtom<__half, 64>(x, gamma, perm, eps, M, K, Ko, clip, x4, xs4, x8, xs8, s);
  return group_size == 128
             ? launchAtom<__nv_bfloat16, 128>(x, gamma, perm, eps, M, K, Ko, clip, x4, xs4, x8, xs8, s)
             : launchAtom<__nv_bfloat16, 64>(x, gamma, perm, eps, M, K, Ko, clip, x4, xs4, x8, xs8, s);
}

extern "C" int lowbit_rmsnorm_quantize_int8(const void* x, int dtype, const void* gamma, float eps,
                                            const float* static_scale, int M, int K, void* q,
                                            float* xs, void* stream) {
  if (M < 0 || K <= 0 || K > kMaxK) return LOWBIT_ERR_BAD_SHAPE;
  if (K % 8) return LOWBIT_ERR_DIVISIBILITY;
  if (dtype != LOWBIT_DTYPE_FP16 && dtype != LOWBIT_DTYPE_BF16) return LOWBIT_ERR_UNSUPPORTED;
  if (!x || !q || (!static_scale && !xs)) return LOWBIT_ERR_NULL_POINTER;
  if (!aligned16(x) || (gamma && !aligned16(gamma)) || !aligned16(q)) return LOWBIT_ERR_MISALIGNED;
  if (M == 0) return LOWBIT_OK;
  auto s = static_cast<cudaStream_t>(stream);
  return dtype == LOWBIT_DTYPE_FP16
             ? launchInt8<__half>(x, gamma, eps, static_scale, M, K, q, xs, s)
             : launchInt8<__nv_bfloat16>(x, gamma, eps, static_scale, M, K, q, xs, s);
}
