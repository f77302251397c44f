// Fused activation quantizers, exactly lowbit.reference up to the fp32 order of the RMSNorm sum
// of squares (a last-ulp change of rstd can move a value that sits on a rounding boundary by one
// integer step; the tests bound that fraction).
//
// atomQuantizeKernel (lowbit.reference.atom_rmsnorm_quantize / atom_reorder_quantize):
//   rstd = rsqrt(mean(x^2) + eps)                       (fp32; skipped when gamma is null)
//   h[j] = (x[perm[j]] * rstd) * gamma[j]               (fp32; h = x[perm[j]] without gamma)
//   normal j < Kn, groups of G:  s = fp16(amax * clip / 7);  q = clamp(rint(h / s), -8, 7)
//   outlier j >= Kn (one group): s = fp16(amax / 127);       q = clamp(rint(h / s), -127, 127)
//   a scale that is 0 gives q = 0. Divisions are IEEE (__fdiv_rn; by 7 / 127: divRnConst, the
//   same results), rint = round half to even.
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
// atomQuantizeFastKernel (below) computes the same as atomQuantizeKernel for the common shapes,
// with its tables set up once per CTA (see its comment); the launcher picks.
// Layout of the work (atomQuantizeKernel, rmsnormQuantizeInt8Kernel): one CTA per token row,
// 128..1024 threads (about 4 16-byte vectors of the row per thread, all loads issued before
// first use). The Atom kernel also stages the row in shared memory (K * 2 bytes) because the
// reorder gathers it in perm order; each thread then produces 8 consecutive output channels
// ("chunk"), G/8 consecutive lanes share a group and reduce its amax with xor shuffles, so h
// never leaves registers. The int8 kernel keeps the row in registers.
// Every kernel here calls pdlTrigger() at its start: the decode GEMM (gemv) that follows is a
// programmatic dependent and may become resident meanwhile (it waits for this grid's end).
// Division: q = rint(h * (1/s)) with an exact __fdiv_rn fallback near half-integers (quant8), so
// the result equals rint(h / s) with IEEE division.
#include "quantize/quantizeKernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/asyncCopy.cuh"
#include "common/cudaCheck.h"
#include "common/divConst.cuh"
#include "common/pdl.cuh"

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
  pdlTrigger();  // the gemv that follows (a programmatic dependent) may start: common/pdl.cuh
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
      const __half s16 = __float2half_rn(divRnConst<7>(__fmul_rn(a, clip)));
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
      const __half s16 = __float2half_rn(divRnConst<127>(a));
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

// ---- Atom, set-up-once variant (K_o <= 128, K <= 16384: every Llama shape) --------------------
// atomQuantizeKernel above spends ~190 instructions per 8-channel chunk (ncu, K = 4096): each
// chunk reloads perm and gamma from global memory and converts them, and the last warp walks the
// outliers twice. Here what does not depend on x is set up once per CTA in shared memory:
//   so[j] = 2 * perm[j]  byte offsets of the gathered values in a staged fp16/bf16 row
//   sg[j] = gamma[j]     fp32
// and the outlier chunks are ordinary chunks: K_o <= 128 puts them in one 16-lane span (K_n / 8
// is a multiple of 16), so the 4 xor rounds that reduce an int4 group of 128 give their amax too
// (idle lanes contribute 0); only the scale divisor (7 / clip vs 127) and the clamp differ.
// Work layout: a CTA holds R row groups of Tg threads (a multiple of 32, about 128); each group
// works on its own rows (row = blockIdx.x * R + g, stride gridDim.x * R) with named barriers, so
// groups never wait for each other. Thread t of a group owns the CPT chunks j = t + c * Tg. Rows
// arrive by cp.async into a 2-slot ring per group: row i + 1 is in flight while row i is worked
// on (no registers held for it). A barrier after the sum of squares publishes the staged row and
// the per-warp sums; CPT = 1 and 8 have a second one at the end of the row (the slot and the sums
// are free again), CPT = 2, 4 and 5 instead issue row i + 1's copies after row i's first barrier
// and alternate two sets of sums (kOneBar).
// Quantization of one element is 6 instructions: r = fma(h, 1/s, 1.5 * 2^23) holds
// kRound + rint(h * (1/s)); the residual d = fma(h, 1/s, -rint) (one rounding) flags a chunk
// whose quotient lies within 4e-5 of a half-integer, redone with IEEE division (bound as in
// quant8: |h * rcp.approx(s) - fl(h / s)| <= 128 * 2^-23 + 2^-18 < 2e-5 for |t| < 128); the
// clamp is applied to r (lo, hi are integers: clamping before or after rounding agree).
// ncu history (K = 4096, M = 8192): the old kernel 38.3 M warp instructions, 61.7 us; one chunk
// per thread with the row in registers 38.3 M (the per-row reduction paid by 4x the threads);
// one CTA per row with fp32 staging 29.5 M but 16 warps per SM, latency-bound, 76.6 us.
// NT = threads per CTA: 512 (two CTAs per SM) or 1024 (one CTA per SM sharing one set of tables:
// K = 11008 reorder-only at M = 8192 146 -> 116 us against the one-row-per-CTA kernel, NOTES log
// 16); for K > 4096 the launcher picks CPT (4, 5 or 8) and NT by the threads at work per SM (logs
// 22, 23).
// 64 registers either way. R <= kFastMaxGroups (named barriers 1..R).
constexpr int kFastMaxCpt = 8, kFastMaxGroupThreads = 256, kFastMaxGroups = 8;

template <typename T, int G, int CPT, int NT>
__global__ void __launch_bounds__(NT, 1024 / NT) atomQuantizeFastKernel(
    const T* __restrict__ x, const T* __restrict__ gamma, const int* __restrict__ perm, float eps,
    int M, int K, int Ko, float clip, int Tg, uint32_t* __restrict__ x4, __half* __restrict__ xs4,
    int8_t* __restrict__ x8, __half* __restrict__ xs8) {
  pdlTrigger();  // the gemv that follows (a programmatic dependent) may start: common/pdl.cuh
  // Shared memory (all dynamic): so int32 [K] | partial fp32 [R][2][8] | sg fp32 [K] (with gamma)
  // | slots T [R][2][K].
  extern __shared__ __align__(16) uint8_t smemRaw[];
  const int R = blockDim.x / Tg;
  int* so = reinterpret_cast<int*>(smemRaw);
  float* partialAll = reinterpret_cast<float*>(so + K);
  float* sg = partialAll + 16 * R;
  T* slotsAll = reinterpret_cast<T*>(sg + (gamma ? K : 0));
  constexpr int kLanes = G / 8;          // lanes per int4 group
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  // One barrier per row (CPT = 2, 4, 5): the next row's copies are issued after this row's barrier,
  // into the slot every thread finished reading before it, and the warp sums alternate between
  // two sets, so the end-of-row barrier goes. K = 4096, M = 4096 / 8192: 24.4 -> 23.8 us /
  // 44.3 -> 43.0 us (NOTES log 20). CPT = 8 keeps two barriers: with one, ptxas spilled (32-byte
  // stack) and K = 11008 took 78 -> 86 us (RMSNorm, M = 4096); CPT = 1 (K <= 1024) too, as it
  // got an 8-byte stack with it.
  constexpr bool kOneBar = CPT == 2 || CPT == 4 || CPT == 5;
  const int C = K / 8, Cn = (K - Ko) / 8;  // chunks: all, normal (a multiple of 16)
  const bool norm = gamma != nullptr;

  const int g = threadIdx.x / Tg, tid = threadIdx.x - g * Tg, nw = Tg >> 5;
  float* partialG = partialAll + 16 * g;  // two sets of 8 warp sums (kOneBar: rows alternate)
  T* slots = slotsAll + (size_t)g * 2 * K;
  const int stride = gridDim.x * R;
  auto fetch = [&](int row, int slot) {  // this thread's CPT vectors of row -> slot
    const uint4* src = reinterpret_cast<const uint4*>(x + (size_t)row * K);
    uint4* dst = reinterpret_cast<uint4*>(slots + slot * K);
#pragma unroll
    for (int c = 0; c < CPT; ++c)
      if (tid + c * Tg < C) cpAsync16(dst + tid + c * Tg, src + tid + c * Tg);
  };
  int row = blockIdx.x * R + g;
  // This thread's first table entries are loaded before the first row's copies are issued:
  // behind them they waited for a whole round of rows (~8 MB, ~3 us at M >= 1056 rows).
  int4 rawP0 = make_int4(0, 0, 0, 0), rawP1 = rawP0;
  uint4 rawG = make_uint4(0u, 0u, 0u, 0u);
  auto loadRaw = [&](int j) {
    if (perm) {
      rawP0 = reinterpret_cast<const int4*>(perm)[2 * j];
      rawP1 = reinterpret_cast<const int4*>(perm)[2 * j + 1];
    }
    if (norm) rawG = reinterpret_cast<const uint4*>(gamma)[j];
  };
  if ((int)threadIdx.x < C) loadRaw(threadIdx.x);
  if (row < M) fetch(row, 0);  // the first row's copies fly while the tables are set up
  cpAsyncCommit();

  // Per-CTA setup (all threads), then one CTA barrier. Chunk j's 8 entries are stored rotated by
  // rot(j) = (j / 4) % 8 (slot e holds channel 8j + (e + rot) % 8) and split in two planes (slots
  // 0-3 at [j], 4-7 at [C + j]): lanes read consecutive 16 B (no bank conflicts), and for
  // perms that keep runs in order (Atom's: only K_o channels move) the 32 lanes of a gather step
  // hit 32 different banks (without the rotation they read the same sub-word of 16-byte-strided
  // chunks: a 4-way conflict; ncu showed shared-memory wavefronts, not instructions, bounding
  // the kernel). The codes come out rotated too and are rotated back when packed.
  for (int j = threadIdx.x; j < C; j += blockDim.x) {
    int o[8];
    const int4 o0 = rawP0, o1 = rawP1;
    const uint4 gRaw = rawG;
    if (j + (int)blockDim.x < C) loadRaw(j + blockDim.x);
    if (perm) {
      o[0] = o0.x; o[1] = o0.y; o[2] = o0.z; o[3] = o0.w;
      o[4] = o1.x; o[5] = o1.y; o[6] = o1.z; o[7] = o1.w;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) o[e] = 8 * j + e;
    }
    float g8[8];
    if (norm) toF8<T>(gRaw, g8);
    // ro[e] = sizeof(T) * o[(e + rot) % 8], rg[e] = g8[(e + rot) % 8]: a barrel rotation in
    // registers, three select stages (dynamic indexing put both arrays in local memory)
    const int rot = (j >> 2) & 7;
    int ro[8];
    float rg[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      ro[e] = static_cast<int>(sizeof(T)) * o[e];
      rg[e] = norm ? g8[e] : 0.f;
    }
#pragma unroll
    for (int k = 1; k < 8; k <<= 1) {
      if (rot & k) {
        int to[8];
        float tg[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          to[e] = ro[(e + k) & 7];
          tg[e] = rg[(e + k) & 7];
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          ro[e] = to[e];
          rg[e] = tg[e];
        }
      }
    }
    reinterpret_cast<int4*>(so)[j] = make_int4(ro[0], ro[1], ro[2], ro[3]);
    reinterpret_cast<int4*>(so)[C + j] = make_int4(ro[4], ro[5], ro[6], ro[7]);
    if (norm) {
      reinterpret_cast<float4*>(sg)[j] = make_float4(rg[0], rg[1], rg[2], rg[3]);
      reinterpret_cast<float4*>(sg)[C + j] = make_float4(rg[4], rg[5], rg[6], rg[7]);
    }
  }
  if (tid >= nw && tid < 8) partialG[tid] = partialG[8 + tid] = 0.f;  // the sum reads 8 entries
  __syncthreads();

  for (int it = 0; row < M; row += stride, ++it) {
    const int slot = it & 1;
    float* partial = partialG + (kOneBar ? 8 * slot : 0);
    auto fetchNext = [&]() {  // the next row of this group -> the other slot
      if (row + stride < M) fetch(row + stride, slot ^ 1);
      cpAsyncCommit();
    };
    if constexpr (kOneBar) {
      cpAsyncWait<0>();  // this thread's copies of `row` have landed (the only ones in flight)
    } else {
      fetchNext();
      cpAsyncWait<1>();  // this thread's copies of `row` have landed
    }
    const uint8_t* sx = reinterpret_cast<const uint8_t*>(slots + slot * K);
    uint32_t* x4row = x4 + (size_t)row * Cn;  // output rows (64-bit math once per row)
    __half* xs4row = xs4 + (size_t)row * (Cn / kLanes);
    int8_t* x8row = x8 + (size_t)row * Ko;

    // Sum of squares over this thread's own vectors, then over the group.
    float ss = 0.f;
    if (norm) {
#pragma unroll
      for (int c = 0; c < CPT; ++c) {
        const int j = tid + c * Tg;
        if (j >= C) continue;
        float f[8];
        toF8<T>(lds128(sx + 16 * j), f);
#pragma unroll
        for (int e = 0; e < 8; ++e) ss = fmaf(f[e], f[e], ss);
      }
      ss = warpSum(ss);
      if ((tid & 31) == 0) partial[tid >> 5] = ss;
    }
    namedBarrier(1 + g, Tg);  // the row (every thread's copies) and the warp sums are visible
    float rstd = 1.f;
    if (norm) {
      const float4 p = reinterpret_cast<const float4*>(partial)[0];
      const float4 q = reinterpret_cast<const float4*>(partial)[1];
      const float total = ((p.x + p.y) + (p.z + p.w)) + ((q.x + q.y) + (q.z + q.w));
      // torch's CUDA mean multiplies the sum by 1/K; rsqrtf is what torch.rsqrt calls on CUDA.
      rstd = rsqrtf(total * (1.f / static_cast<float>(K)) + eps);
    }
    if constexpr (kOneBar) fetchNext();  // slot ^ 1 was last read before this row's barrier

    // Chunk c of this thread. kMay: some thread's chunk c may be an outlier chunk (the span
    // c * Tg .. c * Tg + Tg - 1 reaches Cn); spans of normal chunks only take the kMay = false
    // copy, where the outlier selects (divisor, clamp, store path) compile away: ~6% fewer
    // instructions per chunk at K = 4096 (NOTES log 19). CPT = 5 and 8 keep one copy: with two,
    // ptxas spilled (CPT 8: 64-byte stack, K = 11008 82 -> 100 us at M = 4096; CPT 5: 12-20 bytes,
    // log 23).
    auto chunk = [&](int c, auto mayOutlier) {
      constexpr bool kMay = decltype(mayOutlier)::value;
      const int j = tid + c * Tg;
      const bool active = j < C, outlier = kMay && j >= Cn;
      float h[8];  // set only where active (zero-filling it cost 8 moves per chunk)
      if (active) {
        const int4 o0 = reinterpret_cast<const int4*>(so)[j];
        const int4 o1 = reinterpret_cast<const int4*>(so)[C + j];
        const int off[8] = {o0.x, o0.y, o0.z, o0.w, o1.x, o1.y, o1.z, o1.w};
#pragma unroll
        for (int e = 0; e < 8; ++e) h[e] = toF(*reinterpret_cast<const T*>(sx + off[e]));
        if (norm) {
          const float4 ga = reinterpret_cast<const float4*>(sg)[j];
          const float4 gb = reinterpret_cast<const float4*>(sg)[C + j];
          const float g8[8] = {ga.x, ga.y, ga.z, ga.w, gb.x, gb.y, gb.z, gb.w};
#pragma unroll
          for (int e = 0; e < 8; ++e) h[e] = __fmul_rn(__fmul_rn(h[e], rstd), g8[e]);
        }
      }
      // Group amax over aligned spans of kLanes (normal) or 16 (outlier) lanes (Tg is a multiple
      // of 32, so chunk c's spans are aligned too).
      float a = active ? amax8(h) : 0.f;
#pragma unroll
      for (int o = 8; o > 0; o >>= 1) {
        const float t = __shfl_xor_sync(0xffffffffu, a, o);
        if (o < kLanes || outlier) a = fmaxf(a, t);
      }
      if (!active) return;
      // Scale as the reference: fp16(amax * clip / 7) (int4), fp16(amax / 127) (int8 outliers).
      const __half s16 = __float2half_rn(outlier ? divRnConst<127>(a)
                                                 : divRnConst<7>(__fmul_rn(a, clip)));
      const float s = __half2float(s16);
      const float lo = outlier ? kRound - 127.f : kRound - 8.f;
      const float hi = outlier ? kRound + 127.f : kRound + 7.f;
      // A scale of 0 (every h of the group rounds to 0 in fp16) takes inv = 0: h * 0 = 0 gives
      // code 0 and never the redo, without a branch (which cost 7 zero moves per chunk).
      float inv;
      asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(inv) : "f"(s));  // s: a normal fp32 (fp16 > 0)
      inv = s > 0.f ? inv : 0.f;
      int q[8];
      float worst = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float r = fmaf(h[e], inv, kRound);
        worst = fmaxf(worst, fabsf(fmaf(h[e], inv, kRound - r)));
        q[e] = __float_as_int(fminf(fmaxf(r, lo), hi));
      }
      if (worst > 0.5f - 4e-5f) {
#pragma unroll
        for (int e = 0; e < 8; ++e)
          q[e] = __float_as_int(fminf(fmaxf(__fdiv_rn(h[e], s) + kRound, lo), hi));
      }
      const int rot = (j >> 2) & 7;  // code e is channel 8j + (e + rot) % 8: rotate it back
      if (!outlier) {
        const uint32_t w = pack4x8(q);
        x4row[j] = __funnelshift_l(w, w, 4 * rot);
        if ((j & (kLanes - 1)) == 0) xs4row[j / kLanes] = s16;
      } else {
        uint2 w = pack8x8(q);  // 64-bit rotate left by 8 * rot bits
        if (rot & 4) w = make_uint2(w.y, w.x);
        const int sh = 8 * (rot & 3);
        w = make_uint2(__funnelshift_l(w.y, w.x, sh), __funnelshift_l(w.x, w.y, sh));
        *reinterpret_cast<uint2*>(x8row + (j - Cn) * 8) = w;
        if (j == Cn) xs8[row] = s16;
      }
    };
#pragma unroll
    for (int c = 0; c < CPT; ++c) {
      if (c * Tg >= C) break;  // uniform: no thread has a chunk c
      if (CPT <= 4 && (c + 1) * Tg <= Cn) chunk(c, std::false_type{});
      else chunk(c, std::true_type{});
    }
    if (Ko == 0 && xs8 != nullptr && tid == 0) xs8[row] = __float2half_rn(0.f);
    if constexpr (!kOneBar)
      namedBarrier(1 + g, Tg);  // the slot and the warp sums may be overwritten from here on
  }  // row
  cpAsyncWait<0>();  // nothing left in flight at exit (the last commit may be empty)
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
  pdlTrigger();  // the gemv that follows (a programmatic dependent) may start: common/pdl.cuh
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
  int perSm = 0;
  const int st =
      cudaStatus(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, kernel, threads, smem));
  if (st != LOWBIT_OK) return st;
  const long full = (long)(perSm < 1 ? 1 : perSm) * multiprocessorCount();
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

// Fastest configuration: Tg threads per row group (CPT chunks each), R groups per CTA.
struct FastPlan {
  int Tg, R, smem;
};
template <typename T>
inline FastPlan fastPlan(int K, int cpt, bool norm, int nt) {
  FastPlan p;
  p.Tg = ((K / 8 + cpt - 1) / cpt + 31) / 32 * 32;
  const int slot = K * static_cast<int>(sizeof(T));
  auto bytes = [&](int r) { return K * 4 + r * 64 + (norm ? K * 4 : 0) + r * 2 * slot; };
  // As many groups as the CTA's nt threads hold while 1024 / nt CTAs fit in an SM's shared
  // memory (H100: 228 KiB per SM, 227 per block; 1 KiB per CTA is the runtime's).
  const int perSm = deviceAttribute<cudaDevAttrMaxSharedMemoryPerMultiprocessor>(228 * 1024);
  const int perBlock = deviceAttribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(227 * 1024);
  const int limit = std::min(perBlock, perSm / (1024 / nt) - 1024);
  p.R = std::min(kFastMaxGroups, nt / p.Tg);
  while (p.R > 1 && bytes(p.R) > limit) --p.R;
  p.smem = bytes(p.R);
  return p;
}

template <typename T, int G, int CPT, int NT>
int launchAtomFast(const FastPlan& p, const void* x, const void* gamma, const int* perm, float eps,
                   int M, int K, int Ko, float clip, void* x4, void* xs4, void* x8, void* xs8,
                   cudaStream_t stream) {
  auto kernel = atomQuantizeFastKernel<T, G, CPT, NT>;
  int st = allowDynamicSmem<atomQuantizeFastKernel<T, G, CPT, NT>>(p.smem);
  if (st != LOWBIT_OK) return st;
  int grid = 0;
  st = persistentGrid(kernel, p.R * p.Tg, p.smem, (M + p.R - 1) / p.R, &grid);
  if (st != LOWBIT_OK) return st;
  kernel<<<grid, p.R * p.Tg, p.smem, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(gamma), perm, eps, M, K, Ko, clip, p.Tg,
      static_cast<uint32_t*>(x4), static_cast<__half*>(xs4), static_cast<int8_t*>(x8),
      static_cast<__half*>(xs8));
  return launchStatus();
}

// Threads per row group the set-up-once kernel aims at: CPT (chunks per thread) is the smallest
// of 1, 2, 4, 8 that gives at most this many.
constexpr int kFastTargetThreads = 128;

template <typename T, int G>
int launchAtom(const void* x, const void* gamma, const int* perm, float eps, int M, int K, int Ko,
               float clip, void* x4, void* xs4, void* x8, void* xs8, cudaStream_t stream) {
  const int C = K / 8;
  constexpr int t = kFastTargetThreads;
  const int cpt = C <= t ? 1 : C <= 2 * t ? 2 : C <= 4 * t ? 4 : 8;
  // The set-up-once kernel where at least two row groups share a CTA's tables (one group per
  // CTA was slower than the one-row-per-CTA kernel: K = 11008, 172.9 vs 151.7 us at M = 8192).
  if (Ko <= 128 && C <= kFastMaxCpt * kFastMaxGroupThreads) {
    const bool norm = gamma != nullptr;
    const int sms = multiprocessorCount();
    // K <= 4096: CPT as above, 512-thread CTAs (faster than 1024 at K = 4096). K > 4096: shared
    // memory, not threads, bounds the row groups (two staged rows each), so of CPT 4 / 5 / 8 (4
    // and 5 while their groups stay <= 256 threads, K <= 8192 / 10240) and 512 / 1024-thread CTAs
    // the plan with the most threads at work per SM, in this order on ties. The rule before (CPT
    // 8, 512-thread CTAs first) ran K = 5120 as 3 groups of 96 threads per CTA: RMSNorm M = 4096
    // 39.8 -> 31.9 us, K = 8192 58.7 -> 45.2 us (NOTES log 22). CPT 5 (1024 threads only: at 512
    // shared memory leaves 3 groups) gives K = 5120 eight groups of 128 threads, 1024 per SM where
    // CPT 4 had 6 x 160 = 960, and rows in rounds of 1056 instead of 792 groups (M = 4096: 3.9
    // rounds, not 5.2 -> 6): RMSNorm M = 4096 / 8192 31.8 / 58.3 -> 30.5 / 54.4 us (log 23).
    struct Cand {
      int cpt, nt;
      FastPlan p;
    };
    Cand cands[5];
    int n = 0;
    if (cpt < 8) {
      cands[n++] = {cpt, 512, fastPlan<T>(K, cpt, norm, 512)};
    } else {
      if (C <= 4 * kFastMaxGroupThreads) {
        cands[n++] = {4, 512, fastPlan<T>(K, 4, norm, 512)};
        cands[n++] = {4, 1024, fastPlan<T>(K, 4, norm, 1024)};
      }
      if (C <= 5 * kFastMaxGroupThreads) cands[n++] = {5, 1024, fastPlan<T>(K, 5, norm, 1024)};
      cands[n++] = {8, 512, fastPlan<T>(K, 8, norm, 512)};
      cands[n++] = {8, 1024, fastPlan<T>(K, 8, norm, 1024)};
    }
    // From 3/4 of a row per group: the measured break-even against the general kernel lies
    // between 1/2 and 1 row. At M = 1024 every K gains or ties (K = 4096 11.9 -> 9.0 us, K = 8192
    // 20.9 -> 15.3; K = 4096 M = 2048 19.3 -> 14.3); K = 8192 / 11008 at M = 256, below 1/2, were
    // 20-40% slower with it (log 23; the rule before asked for two rows per group).
    int best = -1, bestThreads = 0;
    for (int i = 0; i < n; ++i) {
      const int ctas = 1024 / cands[i].nt, r = cands[i].p.R;  // CTAs per SM, groups per CTA
      const int threads = r * cands[i].p.Tg * ctas;
      if (r >= 2 && 4 * M >= 3 * r * ctas * sms && threads > bestThreads) {
        best = i;
        bestThreads = threads;
      }
    }
    // Fewer rows (decode, short chunks): latency, not bandwidth. Where groups of <= 256 threads
    // hold a row in 1 or 2 chunks per thread (K <= 4096), the set-up-once kernel with those
    // groups: a row's chunks are 2 steps per thread where the general kernel (128 threads) takes
    // 4, each waiting on its perm / gamma loads. K = 4096 RMSNorm M = 1 / 16 / 256: 4.3 / 4.6 /
    // 6.0 -> 3.3 / 4.0 / 4.6 us; K = 1536 M = 1: 3.2 -> 2.6 us. Wider rows keep the general kernel
    // (CPT 4 groups were as slow or slower there; log 23).
    if (best < 0 && C <= 2 * kFastMaxGroupThreads) {
      const int lat = C <= kFastMaxGroupThreads ? 1 : 2;
      cands[0] = {lat, 512, fastPlan<T>(K, lat, norm, 512)};
      best = 0;
    }
    if (best >= 0) {
      const Cand& c = cands[best];
#define LOWBIT_FAST(cp, nt) \
  launchAtomFast<T, G, cp, nt>(c.p, x, gamma, perm, eps, M, K, Ko, clip, x4, xs4, x8, xs8, stream)
      if (c.nt == 1024)
        return c.cpt == 4 ? LOWBIT_FAST(4, 1024) : c.cpt == 5 ? LOWBIT_FAST(5, 1024)
                                                              : LOWBIT_FAST(8, 1024);
      return c.cpt == 1   ? LOWBIT_FAST(1, 512)
             : c.cpt == 2 ? LOWBIT_FAST(2, 512)
             : c.cpt == 4 ? LOWBIT_FAST(4, 512)
                          : LOWBIT_FAST(8, 512);
#undef LOWBIT_FAST
    }
  }
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
