// Paged INT4 KV cache kernels (contract: docs/engine-io.md; layout: README.md; torch reference:
// python/lowbit/kvcache.py).
//
// Operands (T tokens of B sequences, nh / nkv heads, d = head size, P = 2 (d/gk + d/gv)):
//   qkv        fp16 [T, (nh + 2 nkv) d]   q heads, then k heads, then v heads (bias added)
//   positions  int32 [T]; seq_offsets int32 [B+1]; block_table int32 [B, MB]
//   inv_freq   fp32 [d/2]
//   codes      uint8 [NB, 2, nkv, tpb, d/2]  this layer's slab; [blk, 0/1, h, slot, i] = K/V codes
//              of channels 2i (low nibble) and 2i+1 (high nibble), values 0..15
//   params     fp16 [NB, nkv, tpb, P]       [k_scale(d/gk), k_zero(d/gk), v_scale(d/gv), v_zero]
//   q_out      fp16 [T, nh, d];  out fp16 [T, nh d]
// Rules: d in {64, 128}; gk, gv multiples of 8 dividing d; tpb a power of two >= 8;
// every pointer 16-byte aligned; decode (T == B) has one token per sequence.
//
// kv4RopeAppendKernel: a CTA per (token, 4 PW UPS head units) (cos/sin of the token's d/2 angles
//   once per CTA, in shared memory); units are the nh q heads, nkv k heads and nkv v heads. A lane
//   holds 8 channels [8 li, 8 li + 8) of one unit, a unit spans L = d/8 lanes and a warp step UPS =
//   32/L units; the RoPE partner (j +- d/2) sits in lane li ^ L/2. With a = float(p) * inv_freq[j]
//   (fp32, as torch):
//     j <  d/2: y_j = x_j cos a_j - x_{j+d/2} sin a_j;  j >= d/2: y_j = x_j cos a' + x_{j-d/2} sin a'
//   products and sum rounded separately (__fmul_rn/__fadd_rn: no FMA contraction, like torch), then
//   rounded to fp16 (q written out; k quantized from the fp16 value). Quantize per group of g
//   channels (g/8 lanes, xor-shuffle min/max): scale = fp16((max - min) / 15), zero = fp16(min),
//   code = scale > 0 ? clamp(rint((x - zero) / scale), 0, 15) : 0 (IEEE division, half-even).
//
// kv4AttentionKernel<D, DECODE>: flash attention over 64-token KV tiles (positions aligned to 64)
//   with 4 warps. Per tile: cp.async copies the raw codes + params of the tile (two tiles ahead,
//   two raw stages), all threads dequantize them into fp16 K, V tiles in shared memory
//   (x^ = fp16(code * scale + zero), one hfma2: the only deviation from the fp32 reference,
//   <= 1/2 fp16 ulp per value), then mma.sync m16n8k16 (fp16 in, fp32 accumulate):
//   S = Q K^T, online softmax in fp32 (base 2: s * log2(e)/sqrt(d)), O += fp16(P) V.
//   Query rows are (token, head of the GQA group) pairs, so each KV tile is read once for all
//   heads sharing it.
//   DECODE (T == B, nh/nkv <= 16), the smem path for tiny batches x contexts (decodeRegPath
//     false; else kv4DecodeKernel below): a CTA = (split, kv head, sequence); rows = the nh/nkv
//     heads of the group (padded to 16); the 4 warps take 16 tokens each of every tile and merge
//     their (max, sum, O) in shared memory; the sequence's tiles are split evenly over `splits`
//     CTAs (flash-decoding), whose partials (o = O / l, lse = m + log2 l) go to the workspace and
//     are combined by kv4MergeKernel: out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M).
//   PREFILL: a CTA = (128 rows of one sequence, kv head), 8 warps; warp w owns rows 16w..16w+15
//     and all 64 tokens of each tile; tiles from the window start of the first row to the last
//     row's position. Scores are masked only in tiles not fully visible to all of a warp's rows.
//     On sm_90a the prefill runs kv4PrefillWgmmaKernel instead (the same CTA work items, rows
//     and values, launched in another order; warp-specialized producers and wgmma consumers, see
//     there); this one serves sm_80 / sm_89 and LOWBIT_KV_PREFILL_KERNEL=mma.
//   Masked scores (outside [max(0, p - window + 1), p], or tokens outside the sequence) are -inf;
//   the V rows of tokens outside the CTA's range are zero in shared memory (no NaN from stale
//   pool bytes). Rows with no visible token (padding) are not written.
#include "kvAttention/kvAttentionKernel.h"

#include <cuda_fp16.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "common/asyncCopy.cuh"
#include "common/cudaCheck.h"
#include "common/divConst.cuh"
#include "common/pdl.cuh"
#include "common/wgmmaOps.cuh"

namespace lowbit {
namespace {

constexpr int kTile = 64;       // KV tokens per pipeline stage
constexpr int kThreads = 128;   // 4 warps per CTA (append, decode; prefill: kPrefillThreads)
constexpr int kMaxSplits = 256;

struct AttnArgs {
  const __half* q;
  const int* positions;
  const int* seq_offsets;
  const int* block_table;
  const uint8_t* codes;
  const __half* params;
  __half* out;
  float* ws_o;    // decode: [B nh, splits, d] partials of the (sequence, head) rows
  float* ws_lse;  // [B nh, splits]
  int B, nh, nkv, rep, tpb, gk, gv, P, window, NB, MB;
  int splits;     // decode: workspace slots per row (smem path: CTAs per pair)
  // register-path decode: chunk slots per warp (ChunkSplit; a pair has C = ceil(MB tpb / 32)).
  // Keep this struct at 112 bytes: with one int more, nvcc gave the d = 128 prefill kernel 195
  // registers instead of 215 and 11% more instructions, and it ran ~20% slower (NOTES log 18).
  int per;
  float scale_log2;  // log2(e) / sqrt(d)
};

// ---- PTX helpers ------------------------------------------------------------------------------
// 2^x by the SFU (ex2.approx.ftz: ~2 ulp, 2^-inf = +0, results below 2^-126 flush to 0; exp2f adds
// range fix-ups around the same instruction). The probabilities it feeds are rounded to fp16.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smemAddr(p)));
}
__device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smemAddr(p)));
}
// D += A B, m16n8k16, fp16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t packHalf2(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// Online-softmax max step for the two rows (g, g + 8) a thread of an m16n8 tile holds, in units
// of t = s * c (c = log2(e)/sqrt(d) > 0). mx0 / mx1: the thread's max of the raw scores of the new
// tile (-inf where none is visible); reduced over the quad, scaled once (a positive scale keeps
// the order and rounding is monotone: fl(max s * c) = max fl(s * c)) and merged into the running
// m0 / m1. Returns in u0 / u1 the max to subtract (0 for a row with no visible score yet) and in
// r0 / r1 the factor 2^(m_old - u) for the old sums (0 while m_old = -inf).
__device__ __forceinline__ void rowMaxStep(float& m0, float& m1, float mx0, float mx1, float c,
                                           float& u0, float& u1, float& r0, float& r1) {
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
  mx0 = fmaxf(m0, mx0 * c);
  mx1 = fmaxf(m1, mx1 * c);
  u0 = mx0 == -INFINITY ? 0.f : mx0;
  u1 = mx1 == -INFINITY ? 0.f : mx1;
  r0 = ex2(m0 - u0);
  r1 = ex2(m1 - u1);
  m0 = mx0;
  m1 = mx1;
}

// One online-softmax step of a warp's S tile (rows r, r + 8 of its 16; tokens j0 + 8 i + 2 qd +
// {0, 1}, i < NS): scores outside [lo, hi), after the row's position p or outside its window
// become -inf (VOTE: only when some row of the warp may not see all tokens of the tile: in a
// causal prefill most tiles are fully visible, NOTES log 15; padding rows, p = -1, are never
// stored and do not force the mask); then m, l advance and s becomes P = 2^(fma(s, scale, -u))
// in fp32 (base 2 on t = s log2(e)/sqrt(d), one fma + ex2 per probability). Returns in c0 / c1
// the factors for the rows' O accumulators.
template <int NS, bool VOTE>
__device__ __forceinline__ void softmaxStep(float (&s)[NS][4], int j0, int qd, int pos0,
                                            int pos1, int lo, int hi, int window, float scale,
                                            float& m0, float& m1, float& l0, float& l1,
                                            float& c0, float& c1) {
  bool fullTile = false;
  if constexpr (VOTE) {
    const int j1 = j0 + 8 * NS - 1;
    const bool rowsSee = (pos0 < 0 || (j1 <= pos0 && (window <= 0 || j0 > pos0 - window))) &&
                         (pos1 < 0 || (j1 <= pos1 && (window <= 0 || j0 > pos1 - window)));
    fullTile = __all_sync(0xffffffffu, rowsSee && j0 >= lo && j1 < hi);
  }
  if (!fullTile) {
#pragma unroll
    for (int i = 0; i < NS; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = j0 + i * 8 + 2 * qd + (e & 1);
        const int p = e < 2 ? pos0 : pos1;
        const bool ok = j >= lo && j < hi && j <= p && (window <= 0 || j > p - window);
        if (!ok) s[i][e] = -INFINITY;
      }
    }
  }
  float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
  for (int i = 0; i < NS; ++i) {
    mx0 = fmaxf(mx0, fmaxf(s[i][0], s[i][1]));
    mx1 = fmaxf(mx1, fmaxf(s[i][2], s[i][3]));
  }
  float u0, u1;
  rowMaxStep(m0, m1, mx0, mx1, scale, u0, u1, c0, c1);
  l0 *= c0;
  l1 *= c1;
#pragma unroll
  for (int i = 0; i < NS; ++i) {
    s[i][0] = ex2(fmaf(s[i][0], scale, -u0));
    s[i][1] = ex2(fmaf(s[i][1], scale, -u0));
    s[i][2] = ex2(fmaf(s[i][2], scale, -u1));
    s[i][3] = ex2(fmaf(s[i][3], scale, -u1));
    l0 += s[i][0] + s[i][1];
    l1 += s[i][2] + s[i][3];
  }
}

// Sums of the rows' l over the quad of lanes that share them.
__device__ __forceinline__ void quadSum(float& l0, float& l1) {
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
}
// Prefill epilogue of a warp's rows r, r + 8 (quad-summed l): fp16(O / l) to out + off0 / off1,
// channels 8 i + 2 qd + {0, 1}; padding rows (position -1) are not written.
template <int NO>
__device__ __forceinline__ void storeRows(const float (&o)[NO][4], float l0, float l1, int pos0,
                                          int pos1, int off0, int off1, int qd, __half* out) {
  const float i0 = l0 > 0.f ? 1.f / l0 : 0.f, i1 = l1 > 0.f ? 1.f / l1 : 0.f;
#pragma unroll
  for (int i = 0; i < NO; ++i) {
    const int ch = i * 8 + 2 * qd;
    if (pos0 >= 0)
      *reinterpret_cast<uint32_t*>(out + off0 + ch) = packHalf2(o[i][0] * i0, o[i][1] * i0);
    if (pos1 >= 0)
      *reinterpret_cast<uint32_t*>(out + off1 + ch) = packHalf2(o[i][2] * i1, o[i][3] * i1);
  }
}

__device__ __forceinline__ __half2 u2h2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }
__device__ __forceinline__ uint32_t h22u(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
// (x & MASK) | MAGIC as one LOP3 (written in C++, both constants are immediates and the compiler
// emits two; here MAGIC sits in a register, set once per kernel)
template <uint32_t MASK, uint32_t MAGIC>
__device__ __forceinline__ uint32_t maskOr(uint32_t x) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(x), "n"(MASK), "r"(MAGIC));
  return r;
}
// Nibbles -> exact fp16 codes (as half2 pairs): bits 0-3 of each half under magic 1024 (unit ulp)
// minus 1024, bits 4-7 under magic 64 (ulp 1/16) minus 64.
__device__ __forceinline__ __half2 nibLo(uint32_t x) {
  return __hsub2(u2h2(maskOr<0x000F000Fu, 0x64006400u>(x)), __half2half2(__ushort_as_half(0x6400)));
}
__device__ __forceinline__ __half2 nibHi(uint32_t x) {
  return __hsub2(u2h2(maskOr<0x00F000F0u, 0x54005400u>(x)), __half2half2(__ushort_as_half(0x5400)));
}

// 8 codes of one 32-bit word (channel 2i low nibble of byte i) -> 8 fp16 values code*s + z in
// channel order. nibLo / nibHi of w and w >> 8 give the half2 pairs of codes (c_k, c_{k+4}),
// k = 0..3, exactly; one hfma2 applies scale/zero, two prmt per pair restore the channel order.
// (Shifting by 4k and masking instead cost 72 more instructions in the d = 128 prefill kernel
// and 3% of its time, NOTES log 21. Leaving the pairs in place, with Q permuted to match and O
// stored back through the permutation, was 3% slower in the wgmma kernel, NOTES log 25.)
__device__ __forceinline__ uint4 dequant8(uint32_t w, __half2 s, __half2 z) {
  const uint32_t w8 = w >> 8;
  const uint32_t h[4] = {h22u(__hfma2(nibLo(w), s, z)), h22u(__hfma2(nibHi(w), s, z)),
                         h22u(__hfma2(nibLo(w8), s, z)), h22u(__hfma2(nibHi(w8), s, z))};
  // h[k] = (ch k, ch k+4)
  return make_uint4(prmt(h[0], h[1], 0x5410), prmt(h[2], h[3], 0x5410),
                    prmt(h[0], h[1], 0x7632), prmt(h[2], h[3], 0x7632));
}

// ---- RoPE + quantize-append -------------------------------------------------------------------
// Per-launch constants. Every divisor of the append is a power of two (tpb, the group sizes, d),
// so the kernel shifts and masks: the integer divisions of an earlier version (pos / tpb,
// lane c / g, ...) were a third of its ~310 instructions per head unit (ncu, H100).
struct AppendArgs {
  const __half* qkv;
  const int* positions;
  const int* seq_offsets;
  const int* block_table;
  const float* inv_freq;
  uint8_t* codes;
  __half* params;
  __half* q_out;
  int B, nh, nkv, MB, NB;
  int lgTpb;               // log2 tokens_per_block
  int lgLanesK, lgLanesV;  // log2 lanes per K / V group: log2(g / 8)
  int nGroupsK, nGroupsV;  // d / gk, d / gv
  int P;                   // params per (token, KV head): 2 (d/gk + d/gv)
  int trigger;             // a prefill attention follows as a programmatic dependent
};

inline int log2Exact(int v) {  // v a power of two
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

// Lane geometry of the append: a lane holds 8 consecutive channels of one head unit (one 16-byte
// load), so a unit spans L = D/8 lanes and a warp step covers UPS = 32/L consecutive units (2 at
// d = 128, 4 at d = 64). With one warp per unit and D/32 channels per lane (earlier versions) the
// per-unit fixed work (group shuffles, scale, control, addresses) was most of ~150 instructions
// per K/V unit (ncu, NOTES log 26).
template <int D>
struct AppendGeom {
  static constexpr int L = D / 8;      // lanes per head unit
  static constexpr int UPS = 32 / L;   // head units per warp step
};

// One warp step of kv4RopeAppendKernel: units uS + [0, UPS) of token t (uS warp-uniform), lane
// (sub, li) = unit uS + sub, channels [8 li, 8 li + 8); raw: its 8 fp16 inputs (zero past uEnd).
// Every lane runs the same instructions (q, K and V units may share a step: SmolLM2's 9 q heads);
// roles only predicate the stores. cOff / pOff: the token's slot (KV head 0) in codes / params,
// -1: no valid slot (nothing is written to the cache).
template <int D>
__device__ __forceinline__ void kv4AppendStep(const AppendArgs& a, uint4 raw, int t, int uS,
                                              int sub, int li, int uEnd, long long cOff,
                                              long long pOff, const float* sCos,
                                              const float* sSin) {
  constexpr int L = AppendGeom<D>::L, UPS = AppendGeom<D>::UPS;
  const int nh = a.nh, nkv = a.nkv;
  const int u = uS + sub;
  const bool valid = u < uEnd;
  uint32_t h[4] = {raw.x, raw.y, raw.z, raw.w};  // fp16 pairs (channel 8 li + 2i, + 2i + 1)
  if (uS < nh + nkv) {  // warp-uniform: some unit of the step is q or k (RoPE)
    // partner channel j +- d/2: the same slot of lane li ^ L/2 (sSin carries the sign, -, +)
    float y[8];
    const float4 c0 = *reinterpret_cast<const float4*>(sCos + li * 8);
    const float4 c1 = *reinterpret_cast<const float4*>(sCos + li * 8 + 4);
    const float4 s0 = *reinterpret_cast<const float4*>(sSin + li * 8);
    const float4 s1 = *reinterpret_cast<const float4*>(sSin + li * 8 + 4);
    const float cs[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
    const float sn[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 x = __half22float2(u2h2(h[i]));
      const float2 xp =
          __half22float2(u2h2(__shfl_xor_sync(0xffffffffu, h[i], L / 2)));
      y[2 * i] = __fadd_rn(__fmul_rn(x.x, cs[2 * i]), __fmul_rn(xp.x, sn[2 * i]));
      y[2 * i + 1] = __fadd_rn(__fmul_rn(x.y, cs[2 * i + 1]), __fmul_rn(xp.y, sn[2 * i + 1]));
    }
    uint32_t r[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) r[i] = packHalf2(y[2 * i], y[2 * i + 1]);
    if (valid && u < nh)  // q: written as fp16
      *reinterpret_cast<uint4*>(a.q_out + (static_cast<size_t>(t) * nh + u) * D + li * 8) =
          make_uint4(r[0], r[1], r[2], r[3]);
    if (uS + UPS <= nh) return;  // warp-uniform: q units only
    if (u < nh + nkv) {          // k: quantize the rotated fp16 values
#pragma unroll
      for (int i = 0; i < 4; ++i) h[i] = r[i];
    }
  }
  // K / V lanes quantize h (q lanes of a mixed step compute alongside and store nothing).
  const bool isV = u >= nh + nkv;
  const int lgGl = isV ? a.lgLanesV : a.lgLanesK;  // log2 lanes per group (g / 8)
  // Group (min, max) as one half2 (min, -max): exact on fp16 values (negation flips the sign
  // bit), reduced over the group's lanes with one shuffle per round; rounds beyond the group
  // shuffle with lane offset 0 (the lane's own value), so every lane runs log2 L rounds.
  const __half2 mn2 = __hmin2(__hmin2(u2h2(h[0]), u2h2(h[1])),
                              __hmin2(u2h2(h[2]), u2h2(h[3])));
  const __half2 mx2 = __hmax2(__hmax2(u2h2(h[0]), u2h2(h[1])),
                              __hmax2(u2h2(h[2]), u2h2(h[3])));
  const uint32_t nmx = h22u(mx2) ^ 0x80008000u;
  __half2 m = __hmin2(u2h2(prmt(h22u(mn2), nmx, 0x5410)),   // (min lo, -max lo)
                      u2h2(prmt(h22u(mn2), nmx, 0x7632)));  // (min hi, -max hi)
  const int glMask = (1 << lgGl) - 1;
#pragma unroll
  for (int o = 1; o < L; o <<= 1)
    m = __hmin2(m, u2h2(__shfl_xor_sync(0xffffffffu, h22u(m), o & glMask)));
  const float mn = __low2float(m), mx = -__high2float(m);
  const __half sh = __float2half_rn(divRnConst<15>(__fsub_rn(mx, mn)));  // = fl((mx - mn) / 15)
  const __half zh = __low2half(m);  // == mn
  const float s = __half2float(sh), z = mn;
  // code = clamp(rint((x - z) / s), 0, 15) with IEEE division, computed as one fma
  // (x - z) * rcp(s) + 1.5 * 2^23, whose rounding is round-half-even of the exact product
  // y = (x - z) rcp(s) (the quant8 trick of plugins/quantize). rcp.approx is within 1 ulp, so y
  // is within 3.7e-6 of the quotient for |y| <= 15.5 (the clamp only ever decides beyond): only
  // a y within 4e-5 of a half-integer can round differently; d = y - rint(y) (one more fma)
  // flags it, and the exact division is redone. x - z >= 0 exactly (z is the group's smallest
  // x), so only the upper clamp is needed. s == 0 (a constant group): rcp taken as 0, codes 0.
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: the low byte of kRound + q is q
  float inv;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(inv) : "f"(s));  // s >= 2^-24: a normal fp32
  inv = s > 0.f ? inv : 0.f;
  float xz[8], rq[8], worst = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __half22float2(u2h2(h[i]));
    xz[2 * i] = __fsub_rn(x.x, z);
    xz[2 * i + 1] = __fsub_rn(x.y, z);
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float r = __fmaf_rn(xz[i], inv, kRound);  // kRound + rint(y)
    rq[i] = fminf(r, kRound + 15.f);
    worst = fmaxf(worst, fabsf(__fmaf_rn(xz[i], inv, kRound - r)));
  }
  if (worst > 0.5f - 4e-5f) {
#pragma unroll
    for (int i = 0; i < 8; ++i) rq[i] = fminf(fmaxf(__fdiv_rn(xz[i], s), 0.f), 15.f) + kRound;
  }
  // 8 codes -> one word, nibble i = code of channel 8 li + i: gather the low bytes (q0..q3),
  // fold each odd byte into the nibble above the even one (b | b >> 4), keep bytes 0 and 2.
  uint32_t q[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) q[i] = __float_as_uint(rq[i]);
  const uint32_t x0 = prmt(prmt(q[0], q[1], 0x0040), prmt(q[2], q[3], 0x0040), 0x5410);
  const uint32_t x1 = prmt(prmt(q[4], q[5], 0x0040), prmt(q[6], q[7], 0x0040), 0x5410);
  const uint32_t packed = prmt(x0 | (x0 >> 4), x1 | (x1 >> 4), 0x6420);
  if (!valid || u < nh || cOff < 0) return;
  // codes [NB, 2, nkv, tpb, d/2] (row (K|V, head) = u - nh); params [NB, nkv, tpb, P]
  *reinterpret_cast<uint32_t*>(a.codes + cOff + ((u - nh) << a.lgTpb) * (D / 2) + li * 4) =
      packed;
  if ((li & glMask) == 0) {  // the group's first lane: its scale and zero
    const int hd = u - nh - (isV ? nkv : 0);
    __half* pp = a.params + pOff + (hd << a.lgTpb) * a.P + (isV ? 2 * a.nGroupsK : 0) +
                 (li >> lgGl);
    pp[0] = sh;
    pp[isV ? a.nGroupsV : a.nGroupsK] = zh;
  }
}

// Grid (T, ceil(U / (4 PW UPS))): a CTA per (token, 4 PW UPS head units); warp w takes steps
// w + 4k (k < PW) of UPS units each, PW = 1, 2 or 4 by chunk size (appendPrepare), all loads issued
// first. (__launch_bounds__(128, 12), 40 registers instead of 47-55: no faster at PW 1-2, slower
// at 4.)
// Threads 0..d/2-1 compute the token's cos/sin (shared memory) while thread 64 finds the token's
// sequence and pool block (only CTAs that hold K/V units) and the token's slot offsets; one
// barrier, then the steps.
template <int D, int PW>
__global__ void __launch_bounds__(kThreads) kv4RopeAppendKernel(AppendArgs a) {
  constexpr int L = AppendGeom<D>::L, UPS = AppendGeom<D>::UPS;
  __shared__ __align__(16) float sCos[D];  // channel j: cos a_j
  __shared__ __align__(16) float sSin[D];  // channel j: -+ sin a_j (- for j < d/2)
  __shared__ long long sCodeOff, sParOff;  // the token's slot (KV head 0); -1: none
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane / L, li = lane % L;
  const int U = a.nh + 2 * a.nkv;
  const int t = blockIdx.x;
  constexpr int W = kThreads / 32, kUnits = W * PW * UPS;
  const int ub = blockIdx.y * kUnits;
  const int uEnd = ub + kUnits < U ? ub + kUnits : U;
  // a prefill attention launched as this grid's programmatic dependent may become resident once
  // every CTA has started (it waits for the grid's end before reading q, codes and params); only
  // then: the instruction cost 2% at 64 tokens (NOTES log 25)
  if (a.trigger) pdlTrigger();
  uint4 raw[PW];
#pragma unroll
  for (int k = 0; k < PW; ++k) {
    const int u = ub + (warp + W * k) * UPS + sub;
    raw[k] = make_uint4(0u, 0u, 0u, 0u);
    if (u < uEnd)
      raw[k] = __ldg(reinterpret_cast<const uint4*>(
          a.qkv + (static_cast<size_t>(t) * U + u) * D + li * 8));
  }
  const int pos = a.positions[t];
  if (threadIdx.x < D / 2) {
    const float ang = __fmul_rn(static_cast<float>(pos), a.inv_freq[threadIdx.x]);
    const float cs = cosf(ang), sn = sinf(ang);
    sCos[threadIdx.x] = cs;
    sCos[threadIdx.x + D / 2] = cs;
    sSin[threadIdx.x] = -sn;  // x_j cos - x_{j+d/2} sin == x_j cos + x_{j+d/2} (-sin), exactly
    sSin[threadIdx.x + D / 2] = sn;
  }
  static_assert(kThreads > 64, "thread 64 looks up the pool block");
  if (threadIdx.x == 64 && uEnd > a.nh) {
    // sequence of token t: the b with seq_offsets[b] <= t < seq_offsets[b + 1]
    int lo = 0, hi = a.B;
    while (lo < hi) {
      const int m = (lo + hi) >> 1;
      if (a.seq_offsets[m + 1] <= t) lo = m + 1; else hi = m;
    }
    const int b = lo < a.B ? lo : a.B - 1;
    const int col = pos >> a.lgTpb;
    int blk = -1;
    if (pos >= 0 && col < a.MB) {
      blk = a.block_table[static_cast<size_t>(b) * a.MB + col];
      if (blk >= a.NB) blk = -1;
    }
    const int slot = pos & ((1 << a.lgTpb) - 1);
    sCodeOff = blk < 0 ? -1 : ((static_cast<long long>(blk) * 2 * a.nkv << a.lgTpb) + slot) * (D / 2);
    sParOff = blk < 0 ? -1 : ((static_cast<long long>(blk) * a.nkv << a.lgTpb) + slot) * a.P;
  }
  __syncthreads();
  const long long cOff = uEnd > a.nh ? sCodeOff : -1;
  const long long pOff = uEnd > a.nh ? sParOff : -1;
#pragma unroll
  for (int k = 0; k < PW; ++k) {
    const int uS = ub + (warp + W * k) * UPS;
    if (uS < uEnd) kv4AppendStep<D>(a, raw[k], t, uS, sub, li, uEnd, cOff, pOff, sCos, sSin);
  }
}

// ---- attention --------------------------------------------------------------------------------
template <int D>
struct Smem {
  static constexpr int LD = D + 8;  // halves per K/V/Q row (+16 B: ldmatrix rows hit distinct banks)
  static constexpr int kKV = kTile * LD * 2;  // bytes of one of Ks, Vs
  static constexpr int stageBytes(int P) { return kTile * D + kTile * P * 2; }
  static constexpr int bytes(int qr, int P) {
    return 2 * kKV + qr * LD * 2 + qr * 8 + 2 * stageBytes(P);
  }
};

// Pool block of tile `tile` of sequence b when tpb >= 64 (the tile is one contiguous run of slots
// of one block: one table read per tile), -1 when the tile has nothing to load; 0 for tpb < 64
// (loadTile reads the table per segment). Separate from loadTile so that a caller can read the
// table ahead of the copies (a table read right before them put a dependent global load in front
// of every tile).
__device__ __forceinline__ int tileBlock(const AttnArgs& a, int b, int tile, int lo, int hi) {
  if (a.tpb < kTile) return 0;
  const int base = tile * kTile, col = base >> (__ffs(a.tpb) - 1);  // tpb: a power of two
  if (base >= hi || base + kTile <= lo || col >= a.MB) return -1;
  const int blk = __ldg(a.block_table + static_cast<size_t>(b) * a.MB + col);
  return blk < a.NB ? blk : -1;
}

// Issue the cp.async copies of tile `tile` (positions [64 tile, 64 tile + 64)) into stage `st`:
// K codes [64][d/2], V codes [64][d/2], params [64][P]. A segment (min(tpb, 64) tokens, contiguous
// in one pool block) is copied only if it overlaps [lo, hi), so blocks the sequence does not own
// are never touched. blk: tileBlock(a, b, tile, lo, hi).
template <int D, int NTH>  // NTH: threads of the CTA
__device__ __forceinline__ void loadTile(const AttnArgs& a, int b, int h, int tile, int lo, int hi,
                                         int blk, uint8_t* st, int tid) {
  constexpr int rowB = D / 2;
  constexpr int kvChunks = kTile * rowB / 16;
  const int pChunks = kTile * a.P * 2 / 16;
  const int base = tile * kTile;
  if (a.tpb >= kTile) {
    if (blk < 0) return;
    const int slot0 = base & (a.tpb - 1);
    const size_t slabK = (static_cast<size_t>(blk) * 2 * a.nkv + h) * a.tpb;
    const uint8_t* ksrc = a.codes + (slabK + slot0) * rowB;
    const uint8_t* vsrc = ksrc + static_cast<size_t>(a.nkv) * a.tpb * rowB;  // slab (blk, 1, h)
#pragma unroll
    for (int i = 0; i < (kvChunks + NTH - 1) / NTH; ++i) {  // compile-time trip count
      const int c = tid + i * NTH;
      if (kvChunks % NTH == 0 || c < kvChunks) {
        cpAsync16(st + c * 16, ksrc + c * 16);
        cpAsync16(st + kTile * rowB + c * 16, vsrc + c * 16);
      }
    }
    const uint8_t* psrc = reinterpret_cast<const uint8_t*>(
        a.params + ((static_cast<size_t>(blk) * a.nkv + h) * a.tpb + slot0) * a.P);
    for (int c = tid; c < pChunks; c += NTH)
      cpAsync16(st + 2 * kTile * rowB + c * 16, psrc + c * 16);
    return;
  }
  const int segT = a.tpb;  // < 64: the tile spans 64 / tpb blocks
  for (int c = tid; c < 2 * kvChunks + pChunks; c += NTH) {
    int tok, kv = 0, part = 0, cc = 0;
    if (c < 2 * kvChunks) {
      kv = c / kvChunks;
      const int r = c - kv * kvChunks;
      tok = r / (rowB / 16);
      part = r % (rowB / 16);
    } else {
      cc = c - 2 * kvChunks;
      tok = cc * 8 / a.P;
    }
    const int segStart = base + (tok / segT) * segT;
    if (segStart + segT <= lo || segStart >= hi) continue;
    const int pos = base + tok;
    const int col = pos / a.tpb;
    if (col >= a.MB) continue;
    const int blk = a.block_table[static_cast<size_t>(b) * a.MB + col];
    if (blk < 0 || blk >= a.NB) continue;
    const int slot = pos % a.tpb;
    if (c < 2 * kvChunks) {
      const size_t slab = (static_cast<size_t>(blk) * 2 + kv) * a.nkv + h;
      cpAsync16(st + kv * kTile * rowB + tok * rowB + part * 16,
                a.codes + (slab * a.tpb + slot) * rowB + part * 16);
    } else {
      // chunk = halves [8 cc, 8 cc + 8) of the tile's [64][P] params; linear inside a segment
      const int e = cc * 8 - tok * a.P;
      cpAsync16(st + 2 * kTile * rowB + cc * 16,
                a.params + ((static_cast<size_t>(blk) * a.nkv + h) * a.tpb + slot) * a.P + e);
    }
  }
}

// Prefill CTA x -> (sequence b, QR-row tile): tiles_b = ceil(n_b rep / QR), in sequence order. x
// runs backwards over the grid: per kv head, a sequence's last rows (the most KV tiles under the
// causal mask) start first and the shortest CTAs fill the tail (NOTES log 15; all heads of a row
// tile before the next tile was slower at 512 and 4096 tokens: less L2 reuse of K/V). Threads
// 0 <= tid < QR fill rowPos / rowOff of their row; [lo, hi) = the KV positions some row sees.
// False for a CTA past the last tile (the grid is an upper bound).
template <int D, int QR>
__device__ __forceinline__ bool prefillRows(const AttnArgs& a, int x, int h, int tid, int* rowPos,
                                            int* rowOff, int& b, int& lo, int& hi) {
  b = -1;
  for (int s = 0; s < a.B; ++s) {
    const int nb = a.seq_offsets[s + 1] - a.seq_offsets[s];
    const int tiles = (nb * a.rep + QR - 1) / QR;
    if (x < tiles) { b = s; break; }
    x -= tiles;
  }
  if (b < 0) return false;
  const int off = a.seq_offsets[b], nb = a.seq_offsets[b + 1] - off;
  const int r0 = x * QR;
  if (static_cast<unsigned>(tid) < QR) {  // (tid < 0: a thread that fills no row)
    const int gr = r0 + tid, tok = gr / a.rep;
    rowPos[tid] = tok < nb ? a.positions[off + tok] : -1;
    rowOff[tid] = ((off + tok) * a.nh + h * a.rep + gr % a.rep) * D;
  }
  const int tokLast = (r0 + QR - 1) / a.rep < nb - 1 ? (r0 + QR - 1) / a.rep : nb - 1;
  const int pFirst = a.positions[off + r0 / a.rep], pLast = a.positions[off + tokLast];
  lo = a.window > 0 && pFirst - a.window + 1 > 0 ? pFirst - a.window + 1 : 0;
  hi = pLast + 1;
  return true;
}

// Dequantizes raw stage `st` (tile `tile`) into fp16 K and V tiles: the thread handles code word
// dj (channels 8 dj .. 8 dj + 7) of token rows dt0 + k STEP, k < kTile / STEP (STEP = NTH / (d/8)),
// so its K and V group indices kgi, vgi are fixed; the 8 values of row dt0 + k STEP go to byte
// off0 + k ROWB of Ks and of Vs (ROWB: the destination layout's bytes per STEP rows; off0: row
// dt0, word dj). Tokens outside [lo, hi) are written as zeros (no NaN from stale pool bytes); a
// tile inside [lo, hi), the common case, skips that test (a uniform branch).
template <int D, int NTH, int ROWB>
__device__ __forceinline__ void dequantTile(const AttnArgs& a, const uint8_t* st, int tile, int lo,
                                            int hi, int dj, int dt0, int kgi, int vgi, int ngk,
                                            int ngv, uint8_t* Ks, uint8_t* Vs, int off0) {
  constexpr int rowB = D / 2, STEP = NTH / (D / 8), ROWS = kTile / STEP;
  static_assert(kTile % STEP == 0, "whole rows per thread");
  const __half* pr = reinterpret_cast<const __half*>(st + 2 * kTile * rowB);
  const uint8_t* kw0 = st + dt0 * rowB + dj * 4;
  const __half* pt0 = pr + dt0 * a.P;
  const int pStep = STEP * a.P;  // halves between the thread's rows' params
  auto row = [&](int k, bool sel) {
    const int pos = tile * kTile + dt0 + k * STEP;
    const uint32_t kw = *reinterpret_cast<const uint32_t*>(kw0 + k * STEP * rowB);
    const uint32_t vw = *reinterpret_cast<const uint32_t*>(kw0 + kTile * rowB + k * STEP * rowB);
    const __half* pt = pt0 + k * pStep;
    uint4 kv = dequant8(kw, __half2half2(pt[kgi]), __half2half2(pt[ngk + kgi]));
    uint4 vv =
        dequant8(vw, __half2half2(pt[2 * ngk + vgi]), __half2half2(pt[2 * ngk + ngv + vgi]));
    if (sel && (pos < lo || pos >= hi)) kv = vv = make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(Ks + off0 + k * ROWB) = kv;
    *reinterpret_cast<uint4*>(Vs + off0 + k * ROWB) = vv;
  };
  if (tile * kTile >= lo && tile * kTile + kTile <= hi) {
#pragma unroll
    for (int k = 0; k < ROWS; ++k) row(k, false);
  } else {
    // every row is dequantized and the zeros selected after, so the rows' loads and math
    // interleave (a branch per row kept them apart)
#pragma unroll
    for (int k = 0; k < ROWS; ++k) row(k, true);
  }
}

// Prefill CTAs: 8 warps, 128 query rows (one dequantized K/V tile serves twice the rows of the
// 4-warp decode CTA; NOTES log 15).
constexpr int kPrefillThreads = 256;
constexpr int kPrefillRows = 128;

template <int D, bool DECODE>
__global__ void __launch_bounds__(DECODE ? kThreads : kPrefillThreads)
    kv4AttentionKernel(AttnArgs a) {
  constexpr int kTh = DECODE ? kThreads : kPrefillThreads;  // threads of the CTA
  constexpr int QR = DECODE ? 16 : kPrefillRows;  // query rows per CTA (16 per warp in prefill)
  static_assert(DECODE || QR == 16 * (kTh / 32), "prefill: 16 rows per warp");
  constexpr int NT = DECODE ? 16 : 64;   // tile tokens per warp
  constexpr int LD = Smem<D>::LD;
  constexpr int KS = D / 16;             // k steps of Q K^T
  constexpr int NS = NT / 8;             // n8 tiles of S per warp
  constexpr int NO = D / 8;              // n8 tiles of O
  constexpr int WPR = D / 8;             // code words per token row
  extern __shared__ __align__(16) uint8_t smem[];
  __half* Ks = reinterpret_cast<__half*>(smem);
  __half* Vs = Ks + kTile * LD;
  __half* Qs = Vs + kTile * LD;
  int* rowPos = reinterpret_cast<int*>(Qs + QR * LD);  // position of each row's token, -1 = pad
  int* rowOff = rowPos + QR;                           // element offset of the row in q / out
  uint8_t* raw = reinterpret_cast<uint8_t*>(rowOff + QR);
  const int stageB = kTile * D + kTile * a.P * 2;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int h = blockIdx.y;
  int b, lo, hi, t0, t1, split = 0;
  if constexpr (DECODE) {
    pdlTrigger();  // the merge kernel may become resident now; it waits for this grid's end
    b = blockIdx.z;
    split = blockIdx.x;
    // decode: T == B, one token per sequence, so seq_offsets[b] == b (not read: one dependent
    // global load less before the first tile's copies)
    const int t = b;
    const int p = a.positions[t];
    lo = a.window > 0 && p - a.window + 1 > 0 ? p - a.window + 1 : 0;
    hi = p + 1;
    if (tid < QR) {
      rowPos[tid] = tid < a.rep ? p : -1;
      rowOff[tid] = (t * a.nh + h * a.rep + tid) * D;
    }
    const int first = lo / kTile, n = (hi - 1) / kTile + 1 - first;
    const int per = (n + a.splits - 1) / a.splits;
    t0 = first + split * per;
    t1 = t0 + per < first + n ? t0 + per : first + n;
  } else {
    if (!prefillRows<D, QR>(a, gridDim.x - 1 - blockIdx.x, h, tid, rowPos, rowOff, b, lo, hi))
      return;
    t0 = lo / kTile;
    t1 = (hi - 1) / kTile + 1;
  }
  if (t1 > t0) {
    loadTile<D, kTh>(a, b, h, t0, lo, hi, tileBlock(a, b, t0, lo, hi), raw, tid);
  }
  cpAsyncCommit();
  if (t1 > t0 + 1)
    loadTile<D, kTh>(a, b, h, t0 + 1, lo, hi, tileBlock(a, b, t0 + 1, lo, hi), raw + stageB, tid);
  cpAsyncCommit();
  __syncthreads();  // rowPos / rowOff
  // Q rows -> shared memory (zero rows for padding)
  for (int c = tid; c < QR * (D / 8); c += kTh) {
    const int r = c / (D / 8), j = c % (D / 8);
    uint4 v = make_uint4(0, 0, 0, 0);
    if (rowPos[r] >= 0) v = *reinterpret_cast<const uint4*>(a.q + rowOff[r] + j * 8);
    *reinterpret_cast<uint4*>(Qs + r * LD + j * 8) = v;
  }
  __syncthreads();
  const int rowBase = DECODE ? 0 : warp * 16;
  const int tokBase = DECODE ? warp * 16 : 0;
  uint32_t qf[KS][4];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    const int m = lane >> 3;
    ldsm4(qf[ks], Qs + (rowBase + (m & 1) * 8 + (lane & 7)) * LD + ks * 16 + (m >> 1) * 8);
  }
  const int r = lane >> 2, qd = lane & 3;
  const int pos0 = rowPos[rowBase + r], pos1 = rowPos[rowBase + r + 8];
  float o[NO][4];
#pragma unroll
  for (int i = 0; i < NO; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  // dequantization: thread tid always handles word j = tid % WPR of token rows tid / WPR + k *
  // (kTh / WPR), so its K and V group indices are fixed
  const int dj = tid % WPR, dt0 = tid / WPR;
  const int ngk = D / a.gk, ngv = D / a.gv;
  const int kgi = dj * 8 / a.gk, vgi = dj * 8 / a.gv;
  for (int tile = t0; tile < t1; ++tile) {
    cpAsyncWait<1>();
    __syncthreads();
    dequantTile<D, kTh, kTh / (D / 8) * LD * 2>(
        a, raw + ((tile - t0) & 1) * stageB, tile, lo, hi, dj, dt0, kgi, vgi, ngk, ngv,
        reinterpret_cast<uint8_t*>(Ks), reinterpret_cast<uint8_t*>(Vs), (dt0 * LD + dj * 8) * 2);
    __syncthreads();
    if (tile + 2 < t1)
      loadTile<D, kTh>(a, b, h, tile + 2, lo, hi, tileBlock(a, b, tile + 2, lo, hi),
                       raw + ((tile - t0) & 1) * stageB, tid);
    cpAsyncCommit();

    // S = Q K^T over this warp's NT tokens
    float s[NS][4];
#pragma unroll
    for (int i = 0; i < NS; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
      for (int np = 0; np < NS / 2; ++np) {
        uint32_t kb[4];
        const int m = lane >> 3;
        ldsm4(kb, Ks + (tokBase + np * 16 + (m >> 1) * 8 + (lane & 7)) * LD + ks * 16 +
                      (m & 1) * 8);
        mma16816(s[2 * np], qf[ks], kb[0], kb[1]);
        mma16816(s[2 * np + 1], qf[ks], kb[2], kb[3]);
      }
    }
    // masks (prefill: only in tiles some row of the warp may not fully see; decode, 8 scores per
    // thread, always: the vote gained nothing there) and the online-softmax step
    float c0, c1;
    softmaxStep<NS, !DECODE>(s, tile * kTile + tokBase, qd, pos0, pos1, lo, hi, a.window,
                             a.scale_log2, m0, m1, l0, l1, c0, c1);
#pragma unroll
    for (int i = 0; i < NO; ++i) {
      o[i][0] *= c0; o[i][1] *= c0; o[i][2] *= c1; o[i][3] *= c1;
    }
    // O += P V
#pragma unroll
    for (int kk = 0; kk < NT / 16; ++kk) {
      uint32_t pa[4] = {packHalf2(s[2 * kk][0], s[2 * kk][1]),
                        packHalf2(s[2 * kk][2], s[2 * kk][3]),
                        packHalf2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                        packHalf2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int np = 0; np < NO / 2; ++np) {
        uint32_t vb[4];
        const int m = lane >> 3;
        ldsm4t(vb, Vs + (tokBase + kk * 16 + (m & 1) * 8 + (lane & 7)) * LD + np * 16 +
                       (m >> 1) * 8);
        mma16816(o[2 * np], pa, vb[0], vb[1]);
        mma16816(o[2 * np + 1], pa, vb[2], vb[3]);
      }
    }
    __syncthreads();
  }
  cpAsyncWait<0>();
  quadSum(l0, l1);

  if constexpr (!DECODE) {
    storeRows(o, l0, l1, pos0, pos1, rowOff[rowBase + r], rowOff[rowBase + r + 8], qd, a.out);
  } else {
    // merge the 4 warps' states (same rows, disjoint tokens) through shared memory (Ks/Vs area)
    __syncthreads();
    float* wm = reinterpret_cast<float*>(smem);        // [4][16]
    float* wl = wm + 4 * 16;                           // [4][16]
    float* wo = wl + 4 * 16;                           // [4][16][D]
    if (qd == 0) {
      wm[warp * 16 + r] = m0; wm[warp * 16 + r + 8] = m1;
      wl[warp * 16 + r] = l0; wl[warp * 16 + r + 8] = l1;
    }
#pragma unroll
    for (int i = 0; i < NO; ++i) {
      const int ch = i * 8 + 2 * qd;
      *reinterpret_cast<float2*>(wo + (warp * 16 + r) * D + ch) = make_float2(o[i][0], o[i][1]);
      *reinterpret_cast<float2*>(wo + (warp * 16 + r + 8) * D + ch) =
          make_float2(o[i][2], o[i][3]);
    }
    __syncthreads();
    for (int idx = tid; idx < a.rep * D; idx += kThreads) {
      const int row = idx / D, ch = idx % D;
      float M = -INFINITY;
#pragma unroll
      for (int w = 0; w < 4; ++w) M = fmaxf(M, wm[w * 16 + row]);
      float sum = 0.f, acc = 0.f;
      if (M != -INFINITY) {
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          const float f = exp2f(wm[w * 16 + row] - M);
          sum += f * wl[w * 16 + row];
          acc += f * wo[(w * 16 + row) * D + ch];
        }
      }
      const float val = sum > 0.f ? acc / sum : 0.f;
      if (a.splits == 1) {
        a.out[rowOff[row] + ch] = __float2half_rn(val);
      } else {
        const size_t pi = (static_cast<size_t>(b) * a.nh + h * a.rep + row) * a.splits + split;
        a.ws_o[pi * D + ch] = val;
        if (ch == 0) a.ws_lse[pi] = sum > 0.f ? M + log2f(sum) : -INFINITY;
      }
    }
  }
}

// ---- prefill on wgmma (sm_90a) ----------------------------------------------------------------
// kv4PrefillWgmmaKernel<D>: the prefill CTA of kv4AttentionKernel<D, false> (128 query rows of one
// sequence x kv head: the same rows, tiles, dequantized values, masks and softmax), warp-
// specialized (NOTES log 24):
//   warpgroups 0, 1 (producers, 56 registers): loadTile's cp.async of the raw codes + params two
//     tiles ahead (3 raw stages); all 256 threads dequantize tile i into fp16 stage i % 3 (3
//     stages of K and V), fence.proxy.async, arrive on FULL[i % 3];
//   warpgroups 2, 3 (consumers, 200 registers, rows 0..63 / 64..127): per tile, wait FULL, then
//     S[64 x 64] = Q K^T  wgmma m64n64k16, A = Q, B = K from shared memory (K-major), D/16 steps
//     O[64 x D] += P V    wgmma m64nDk16, A = fp16(P) from registers, B = V from shared memory
//                         (MN-major, transposed by the hardware), 4 steps of 16 tokens
//     and arrive on EMPTY[i % 3] (the producers wait on it before refilling the stage). Consumer
//     warp w keeps rows 16w..16w+15: the wgmma m64nN f32 accumulator is the m16n8 C layout per
//     warp and n8 block, and the register A of m64k16 is the m16n8k16 A fragment, so the fragment
//     code is the mma.sync kernel's.
// Named barriers: FULL[s] (producers arrive, consumers sync), EMPTY[s] (the reverse; only for
// tiles the producers will still write), one for the producers, one for the consumers.
// Grid: one dimension, heads fastest and the row tiles with the most KV tiles first (NOTES log
// 25). Prologue: the producers give up their registers first, read the first tiles' block table
// entries, then (pdlWait) copy; the consumers copy Q by cp.async after pdlWait. The pdlWait
// matters only under lowbit_kv4_rope_append_attention, whose append kernel this one follows as a
// programmatic dependent (its CTAs start while the append drains).
// Shared fp16 tiles (Q of each consumer warpgroup [64 rows][D], K and V [64 tokens][D]) in the
// 128B-swizzled layout: 64-channel blocks of 64 rows x 128 B (8 KiB), row r's 16-byte chunk c at
// c ^ (r & 7). Q and K rows are K-major operands (SBO 1024: 8-row groups); V's rows are its k rows
// of 64 channels (SBO 1024: 8-token groups, LBO 8192: the next 64 channels).
namespace wgp {
constexpr int kBlk = 64 * 128;              // bytes of one 64-channel block of a 64-row tile
constexpr int kProducers = 256;             // 2 producer warpgroups (one: 5% slower, NOTES log 24)
constexpr int kThreads = kProducers + 256;  // + 2 consumer warpgroups
constexpr int kRawStages = 3;               // cp.async two tiles ahead + the one being dequantized
constexpr int kStages = 3;                  // fp16 K/V stages (4: no faster, NOTES log 25)
// named barrier ids: FULL[3], EMPTY[3], the producers', the consumers'. [[maybe_unused]] here and
// below: the sm_80 / sm_89 passes compile the kernel that uses them to nothing (sm_90a only).
[[maybe_unused]] constexpr int kFull = 1, kEmpty = 1 + kStages, kProd = 1 + 2 * kStages,
                               kCons = kProd + 1;
[[maybe_unused]] __device__ __forceinline__ int swz(int row, int chunk) {  // byte offset in a block
  return row * 128 + ((chunk ^ (row & 7)) << 4);
}
template <int D>
struct Smem {
  static constexpr int kTileB = (D / 64) * kBlk;  // one K, V, or warpgroup Q tile
  static constexpr int rawBytes(int P) { return kTile * D + kTile * P * 2; }
  static constexpr int bytes(int P) {  // + 1024: the base is aligned up to 1024
    return 1024 + (2 + 2 * kStages) * kTileB + kRawStages * rawBytes(P) + kPrefillRows * 8;
  }
};
[[maybe_unused]] __device__ __forceinline__ void barSync(int id, int n) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
[[maybe_unused]] __device__ __forceinline__ void barArrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
}  // namespace wgp

template <int D>
__global__ void __launch_bounds__(wgp::kThreads, 1) kv4PrefillWgmmaKernel(AttnArgs a) {
#if defined(LOWBIT_WGMMA_OK)
  constexpr int QR = kPrefillRows, kTh = wgp::kThreads;
  constexpr int KS = D / 16;     // k steps of Q K^T
  constexpr int NS = kTile / 8;  // n8 tiles of S per warp
  constexpr int NO = D / 8;      // n8 tiles of O
  constexpr int WPR = D / 8;     // code words (and 16-byte chunks of fp16) per token row
  constexpr int kTileB = wgp::Smem<D>::kTileB;
  extern __shared__ __align__(16) uint8_t smemRaw[];
  uint8_t* Qs = smemRaw + ((1024u - (smemAddr(smemRaw) & 1023u)) & 1023u);  // [2] Q tiles
  uint8_t* KVs = Qs + 2 * kTileB;  // [kStages] K tile, V tile
  uint8_t* raw = KVs + 2 * wgp::kStages * kTileB;  // [kRawStages]
  const int rawB = wgp::Smem<D>::rawBytes(a.P);
  int* rowPos = reinterpret_cast<int*>(raw + wgp::kRawStages * rawB);
  int* rowOff = rowPos + QR;

  const int tid = threadIdx.x, lane = tid & 31;
  // CTA -> (kv head, row index): heads fastest, row indices descending (prefillRows), so the
  // CTAs with the most KV tiles, of every head, start first and the shortest fill the tail
  // (the mma.sync kernel's order, per head, took 13-21% longer here at 1024 / 2048 tokens and
  // 8% at 4096 with Llama-2-7B heads, NOTES log 25)
  const int h = blockIdx.x % a.nkv, xr = gridDim.x / a.nkv - 1 - blockIdx.x / a.nkv;
  int b, lo, hi;
  // the consumers fill rowPos / rowOff and load Q while the producers start the first tiles.
  // Launched as a programmatic dependent of the append kernel (lowbit_kv4_rope_append_attention),
  // the kernel reads positions, seq_offsets and the block table, which that kernel does not
  // write, before pdlWait and q, codes and params after it; launched plainly, pdlWait returns
  // at once.
  if (!prefillRows<D, QR>(a, xr, h, tid - wgp::kProducers, rowPos, rowOff, b, lo, hi)) return;
  const int t0 = lo / kTile, t1 = (hi - 1) / kTile + 1;
  if (tid < wgp::kProducers) {
    // ---- producers: raw tiles two ahead by cp.async, tile i dequantized into fp16 stage i % 3
    // registers first: the consumers' setmaxnreg.inc waits for them (NOTES log 25)
    wg::setMaxRegsDec<56>();  // 256 x 56 + 256 x 200 registers = the SM's 64 Ki
    {
      const int blk0 = tileBlock(a, b, t0, lo, hi);
      const int blk1 = t1 > t0 + 1 ? tileBlock(a, b, t0 + 1, lo, hi) : -1;
      pdlWait();
      loadTile<D, wgp::kProducers>(a, b, h, t0, lo, hi, blk0, raw, tid);
      cpAsyncCommit();
      if (t1 > t0 + 1)
        loadTile<D, wgp::kProducers>(a, b, h, t0 + 1, lo, hi, blk1, raw + rawB, tid);
      cpAsyncCommit();
    }
    const int dj = tid % WPR, dt0 = tid / WPR;
    const int ngk = D / a.gk, ngv = D / a.gv;
    const int kgi = dj * 8 / a.gk, vgi = dj * 8 / a.gv;
    // the table entry of tile i + 2 is read one iteration ahead of its copies, which are issued
    // after tile i is handed over (a table read right before them put a dependent global load,
    // and the copies' issue, in front of every tile's dequantization)
    int blkNext = t0 + 2 < t1 ? tileBlock(a, b, t0 + 2, lo, hi) : -1;
    for (int tile = t0; tile < t1; ++tile) {
      const int i = tile - t0, s = i % wgp::kStages, rs = i % wgp::kRawStages;
      cpAsyncWait<1>();
      wgp::barSync(wgp::kProd, wgp::kProducers);  // tile i landed (all producers' copies), and
                                                  // all are done reading raw stage (i + 2) % 3
      if (i >= wgp::kStages) wgp::barSync(wgp::kEmpty + s, kTh);  // consumers done with i - 3
      uint8_t* Ks = KVs + s * 2 * kTileB;
      // rows dt0 + 16 k (d = 128) / 32 k (d = 64) keep dt0's swizzle phase (row & 7)
      dequantTile<D, wgp::kProducers, wgp::kProducers / (D / 8) * 128>(
          a, raw + rs * rawB, tile, lo, hi, dj, dt0, kgi, vgi, ngk, ngv, Ks, Ks + kTileB,
          (dj >> 3) * wgp::kBlk + wgp::swz(dt0, dj & 7));
      wg::fenceProxyAsync();  // the generic-proxy stores above -> wgmma's (async proxy) reads
      wgp::barArrive(wgp::kFull + s, kTh);
      if (tile + 2 < t1)
        loadTile<D, wgp::kProducers>(a, b, h, tile + 2, lo, hi, blkNext,
                                     raw + ((i + 2) % wgp::kRawStages) * rawB, tid);
      cpAsyncCommit();
      blkNext = tile + 3 < t1 ? tileBlock(a, b, tile + 3, lo, hi) : -1;
    }
    cpAsyncWait<0>();
    return;
  }
  // ---- consumers ----
  // Software pipeline per tile i (FA3's intra-warpgroup overlap): S_{i+1} = Q K_{i+1} and O +=
  // P_i V_i are issued together; the softmax of S_{i+1} runs while P_i V_i is on the tensor
  // cores, then O *= c_{i+1} once P_i V_i has landed (O_i = O_{i-1} c_i + P_i V_i,
  // c_i = 2^(m_{i-1} - m_i)).
  wg::setMaxRegsInc<200>();
  const int ctid = tid - wgp::kProducers;
  wgp::barSync(wgp::kCons, 256);  // rowPos / rowOff
  // Q rows -> the consumer warpgroups' swizzled tiles by cp.async, all in flight at once (zero
  // fill for padding rows)
  pdlWait();
  for (int c = ctid; c < QR * WPR; c += 256) {
    const int r = c / WPR, j = c % WPR, rr = r & 63;
    const bool ok = rowPos[r] >= 0;
    cpAsync16(Qs + (r >> 6) * kTileB + (j >> 3) * wgp::kBlk + wgp::swz(rr, j & 7),
              ok ? a.q + rowOff[r] + j * 8 : a.q, ok ? 16 : 0);
  }
  cpAsyncCommit();
  cpAsyncWait<0>();
  wg::fenceProxyAsync();
  wgp::barSync(wgp::kCons, 256);
  const int warp = ctid >> 5;
  const int wg = __shfl_sync(0xffffffffu, warp >> 2, 0);  // warp-uniform to the compiler
  // descriptors of Q, of K and of V of stage 0 (V: MN-major, LBO = the next 64 channels); stage
  // st and k step are byte offsets added by descAdd
  const uint64_t qDesc = wg::makeDesc(smemAddr(Qs + wg * kTileB), wg::kSw128, 1024);
  const uint64_t kDesc = wg::makeDesc(smemAddr(KVs), wg::kSw128, 1024);
  const uint64_t vDesc = wg::makeDesc(smemAddr(KVs + kTileB), wg::kSw128, 1024, wgp::kBlk);
  const int rowBase = warp * 16;
  const int r = lane >> 2, qd = lane & 3;
  const int pos0 = rowPos[rowBase + r], pos1 = rowPos[rowBase + r + 8];
  float o[NO][4];
#pragma unroll
  for (int i = 0; i < NO; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  float sc[NS][4];
  uint32_t pa[kTile / 16][4];  // fp16 P of the tile whose P V is issued
  // S = Q K^T of stage st (k step ks: 16 channels = 32 bytes inside a 128-byte row of block ks/4)
  auto issueS = [&](int st) {
    const uint64_t kd = wg::descAdd(kDesc, st * 2 * kTileB);
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const uint32_t off = (ks >> 2) * wgp::kBlk + (ks & 3) * 32;
      wg::wgmmaF16SS64(sc, wg::descAdd(qDesc, off), wg::descAdd(kd, off), ks > 0);
    }
    wg::wgCommit();
  };
  auto softmax = [&](int tile, float& c0, float& c1) {
    softmaxStep<NS, true>(sc, tile * kTile, qd, pos0, pos1, lo, hi, a.window, a.scale_log2, m0,
                          m1, l0, l1, c0, c1);
  };
  // P (fp32 in sc) -> the m16n8k16 A fragments of the P V steps
  auto packP = [&]() {
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      pa[kk][0] = packHalf2(sc[2 * kk][0], sc[2 * kk][1]);
      pa[kk][1] = packHalf2(sc[2 * kk][2], sc[2 * kk][3]);
      pa[kk][2] = packHalf2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      pa[kk][3] = packHalf2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
    }
  };
  {
    float c0, c1;
    wgp::barSync(wgp::kFull, kTh);
    wg::wgFence();
    issueS(0);
    wg::wgWait<0>();
    wg::fenceRegs(sc);
    softmax(t0, c0, c1);  // O = 0: no rescale
    packP();
  }
  // O += P V of stage st (k step kk: tokens 16 kk .. 16 kk + 15 = two 8-token groups, 2048 B)
  auto issuePV = [&](int st) {
    const uint64_t vd = wg::descAdd(vDesc, st * 2 * kTileB);
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      const uint64_t dv = wg::descAdd(vd, kk * 2048);
      if constexpr (D == 128) wg::wgmmaF16RS128T(o, pa[kk], dv, 1);
      else wg::wgmmaF16RS64T(o, pa[kk], dv, 1);
    }
    wg::wgCommit();
  };
  for (int tile = t0; tile + 1 < t1; ++tile) {
    const int i = tile - t0, st = i % wgp::kStages, sn = (i + 1) % wgp::kStages;
    wgp::barSync(wgp::kFull + sn, kTh);
    wg::wgFence();
    issueS(sn);
    issuePV(st);
    float c0, c1;
    wg::wgWait<1>();  // S_{i+1} landed; P_i V_i may still run: it reads pa and writes o, so both
    wg::fenceRegs(sc);  // are touched only after wgWait<0> (else ptxas serializes every wgmma)
    softmax(tile + 1, c0, c1);
    wg::wgWait<0>();
    wg::fenceRegs(o);
    if (tile + wgp::kStages < t1) wgp::barArrive(wgp::kEmpty + st, kTh);
#pragma unroll
    for (int i2 = 0; i2 < NO; ++i2) {
      o[i2][0] *= c0; o[i2][1] *= c0; o[i2][2] *= c1; o[i2][3] *= c1;
    }
    packP();
  }
  wg::wgFence();
  issuePV((t1 - 1 - t0) % wgp::kStages);
  wg::wgWait<0>();
  wg::fenceRegs(o);
  quadSum(l0, l1);
  storeRows(o, l0, l1, pos0, pos1, rowOff[rowBase + r], rowOff[rowBase + r + 8], qd, a.out);
#endif
}

// out[t_b, head] = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M), one CTA per (sequence, head)
// row gh = b nh + head with partials at ws[gh * cap + s]. Smem path: s < cap = splits. Register
// path (per > 0): the warps sharing the row's pair are s < pieces (ChunkSplit below); a pair with
// one piece was written to `out` by its warp and is skipped here. Partials with lse = -inf (no
// visible token in that piece) are skipped (their o is not written).
// The partials are spread over the CTA: thread t owns channels 4u..4u+3 (u = t % (D/4)) of the
// partials s = w, w + W, ... (w = t / (D/4), W = kMergeThreads / (D/4) workers), then the W
// partial sums meet in shared memory. (One thread per channel looping over every split took
// 48.9 us for batch 1 x 32768 tokens, Llama-3-8B heads, 198 splits: as long as the attention.)
constexpr int kMergeThreads = 256;

// Register-path work split (DecodePlan): pair P's C chunk slots are the flat slots [P C, P C + C);
// warp w of the grid owns the flat slots [w per, (w + 1) per). So pair P is shared by the warps
// first(P) = P C / per .. (P C + C - 1) / per, and warp w is piece w - first(P) of it.
struct ChunkSplit {
  long long C, per;
  __device__ __forceinline__ long long firstWarp(int P) const { return P * C / per; }
  __device__ __forceinline__ int pieces(int P) const {
    return static_cast<int>((P * C + C - 1) / per - firstWarp(P) + 1);
  }
};

template <int D>
__global__ void __launch_bounds__(kMergeThreads)
kv4MergeKernel(const float* __restrict__ ws_o, const float* __restrict__ ws_lse, int rep,
               int cap, int C, int per, __half* __restrict__ out) {
  constexpr int U = D / 4, W = kMergeThreads / U;
  __shared__ float red[W][D];
  __shared__ float sums[W];
  __shared__ float warpMax[kMergeThreads / 32];
  const int gh = blockIdx.x, t = threadIdx.x;
  const int n = per > 0 ? ChunkSplit{C, per}.pieces(gh / rep) : cap;  // gh / rep = b nkv + h
  if (n <= 1) return;  // written by the attention kernel (uniform over the CTA)
  pdlWait();  // launched as a programmatic dependent of the attention kernel (ws_o, ws_lse)
  const float* lse = ws_lse + static_cast<size_t>(gh) * cap;
  float M = -INFINITY;
  for (int s = t; s < n; s += kMergeThreads) M = fmaxf(M, lse[s]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
  if ((t & 31) == 0) warpMax[t >> 5] = M;
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kMergeThreads / 32; ++i) M = fmaxf(M, warpMax[i]);

  const int u = t % U, w = t / U;
  float sum = 0.f;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  if (M != -INFINITY) {
    const float4* o4 = reinterpret_cast<const float4*>(ws_o + static_cast<size_t>(gh) * cap * D);
#pragma unroll 4
    for (int s = w; s < n; s += W) {
      const float ls = lse[s];
      if (ls == -INFINITY) continue;  // empty piece: o not written
      const float f = exp2f(ls - M);
      const float4 v = o4[static_cast<size_t>(s) * U + u];
      sum += f;
      acc.x += f * v.x;
      acc.y += f * v.y;
      acc.z += f * v.z;
      acc.w += f * v.w;
    }
  }
  reinterpret_cast<float4*>(red[w])[u] = acc;
  if (u == 0) sums[w] = sum;
  __syncthreads();
  if (t < D) {
    float acc1 = 0.f, l = 0.f;
#pragma unroll
    for (int i = 0; i < W; ++i) {
      acc1 += red[i][t];
      l += sums[i];
    }
    out[static_cast<size_t>(gh) * D + t] = __float2half_rn(l > 0.f ? acc1 / l : 0.f);  // token b
  }
}

// ---- decode, register-dequant path (kv4DecodeKernel) -------------------------------------------
// Work split, stream-K over warps (DecodePlan, ChunkSplit): the B nkv (sequence, kv head) pairs,
// each padded to C = ceil(MB tpb / 32) chunk slots of 32 positions, lie end to end (b nkv + h
// order) and warp w of the 1-D grid (4 warps per CTA) takes the flat slots [w per, (w + 1) per):
// the tail of one pair, whole pairs, the head of another. Slots outside a pair's visible chunks
// (positions [lo, hi)) are skipped. So every warp gets the same number of slots, equal work when
// the sequences fill the table, and the warps are independent: each runs its own kDecStages-deep
// cp.async pipeline of raw chunks (K codes, V codes, params) in its own shared memory, which runs
// on across pair boundaries (the next pair's first chunks fly while the current pair is finished),
// and there is no block barrier in the kernel. A pair inside one warp's range is written to `out`
// by that warp; a pair shared by k warps gets one partial per warp (o = O / l, lse = m + log2 l,
// or lse = -inf for a piece with no visible token) in workspace slots [0, k), combined by
// kv4MergeKernel. (The earlier plan, a CTA per pair with the last partial round of pairs cut into
// pieces, paid ~12 us per CTA for its start and its block-wide merge and left the whole pairs'
// spread, 185-250 us at batch 64 x 8192, as a tail: NOTES logs 14 and 18.)
// A warp's rows = the rep heads of the pair's group (padded to 16); its Q fragments are loaded
// from global memory at each pair start (a thread's 16 bytes x D/64 per row).
//  * Q K^T: thread (g = lane/4, qd = lane%4) takes token g of each n8 tile and the channels
//    [qd d/4, (qd+1) d/4) (one 16- or 8-byte load); the reduction order of channels is permuted
//    (the halves (c, c+4) of a code word pair up without prmt), Q's A fragments are permuted alike.
//  * P V: output channel (d/8) n + np is column n of n-tile np, so thread g needs V channels
//    [g d/8, (g+1) d/8) of the tokens (2qd, 2qd+1) and (2qd+8, 2qd+9): one prmt puts the same
//    byte of two tokens side by side, each nibble pair becomes a half2 (token a, token b); thread
//    (g, qd) ends with the contiguous output channels [2qd d/8, (2qd+2) d/8) of rows g, g + 8.
//  Dequantization is x^ = fp16(code * scale + zero) (hsub2 exact, one hfma2), as the smem path.
//  Tokens of a chunk outside [lo, hi) get scale = zero = 0 in shared memory (finite V, no NaN from
//  poison) and -inf scores.
constexpr int kCh = 32;         // tokens per warp chunk
constexpr int kDecStages = 3;   // cp.async stages per warp

// Chunk slots of one (sequence, kv head) pair in the register path's plan: ceil(MB tpb / 32)
// (32-bit: MB tpb <= 2^30 after checkLayout).
__host__ __device__ __forceinline__ int chunkSlots(int MB, int tpb) {
  return (MB * tpb + kCh - 1) / kCh;
}

template <int D>
struct DecSmem {
  static constexpr int stageBytes(int P) { return kCh * D + kCh * P * 2; }
  static constexpr int pipeBytes(int P) { return 4 * kDecStages * stageBytes(P); }
  static constexpr int qBytes() { return (D / 16) * 32 * 16; }  // a warp's Q fragments
  static constexpr int bytes(int P) { return pipeBytes(P) + 4 * qBytes(); }
};

// A warp's place in its slot range: chunk c (positions [32 c, 32 c + 32)) of pair `pair`, this
// pair's chunks of the range end before cEnd, and the pair's visible positions are [lo, hi).
struct ChunkIter {
  int pair, c, cEnd, lo, hi;
};

// G1: each thread's K channels [qd d/4, (qd+1) d/4) lie in one K group and its V channels
// [g d/8, (g+1) d/8) in one V group (gk >= d/4 and gv >= d/8, e.g. the builder's gk = 32, gv = d):
// one scale/zero pair per token and operand instead of one per code word.
template <int D, bool G1>
__global__ void __launch_bounds__(kThreads, 3) kv4DecodeKernel(AttnArgs a) {
  constexpr int rowB = D / 2;       // code bytes per token row
  constexpr int KS = D / 16;        // k steps of Q K^T
  constexpr int KW = D / 32;        // K code words per thread and token
  constexpr int VB = D / 16;        // V code bytes per thread and token
  constexpr int NO = D / 8;         // n8 tiles of O
  constexpr int CPT = rowB / 16;    // 16-byte copies per token row
  constexpr int NS = kCh / 8;       // n8 tiles of S per chunk
  constexpr int QW = D / 8;         // 32-bit Q words per thread and row
  extern __shared__ __align__(16) uint8_t smem[];
  const int P = a.P;
  const int stageB = kCh * D + kCh * P * 2;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  pdlTrigger();  // the merge kernel may become resident now; it waits for this grid's end
  const int C = chunkSlots(a.MB, a.tpb);
  const ChunkSplit split{C, a.per};
  const long long w = static_cast<long long>(blockIdx.x) * (kThreads / 32) + warp;
  const long long total = static_cast<long long>(a.B) * a.nkv * C;
  const long long f0 = w * a.per;
  if (f0 >= total) return;  // warp-uniform; nothing below synchronizes more than a warp
  const long long f1 = f0 + a.per < total ? f0 + a.per : total;
  const int pFirst = static_cast<int>(f0 / C), pLast = static_cast<int>((f1 - 1) / C);
  // the range starts at slot cFirst of pair pFirst (this warp is its piece pieceFirst) and ends
  // before slot cLast of pair pLast; the pairs after pFirst start inside it (piece 0)
  const int cFirst = static_cast<int>(f0 - static_cast<long long>(pFirst) * C);
  const int cLast = static_cast<int>(f1 - static_cast<long long>(pLast) * C);
  const int pieceFirst = static_cast<int>(w - split.firstWarp(pFirst));
  uint8_t* wst = smem + warp * kDecStages * stageB;
  // this warp's Q A fragments, [k step][lane] (kept in shared memory: in registers they pushed
  // the loop's live state past the 168 registers of 3 CTAs per SM)
  uint4* qs = reinterpret_cast<uint4*>(smem + 4 * kDecStages * stageB) + warp * KS * 32;

  // The visible chunks of pair `pr` within this warp's slots. decode: token b is sequence b
  // (seq_offsets[b] == b, not read).
  auto segment = [&](int pr, ChunkIter& it) {
    const int p = a.positions[pr / a.nkv];
    it.pair = pr;
    it.lo = a.window > 0 && p - a.window + 1 > 0 ? p - a.window + 1 : 0;
    it.hi = p + 1;
    int cb = pr == pFirst ? cFirst : 0;
    int ce = pr == pLast ? cLast : C;
    if (it.hi > it.lo) {
      cb = max(cb, it.lo / kCh);
      ce = min(ce, (it.hi - 1) / kCh + 1);
    } else {
      ce = cb;
    }
    it.c = cb;
    it.cEnd = ce;
  };
  // the next chunk to issue (skipping pairs with none in this range); done when c >= cEnd
  ChunkIter is;
  segment(pFirst, is);
  auto settle = [&]() {
    while (is.c >= is.cEnd && is.pair < pLast) segment(is.pair + 1, is);
  };
  settle();

  int tpbShift = 0;
  while ((1 << tpbShift) < a.tpb) ++tpbShift;
  const bool wholeChunks = a.tpb >= kCh;  // a chunk is one run of slots of one block
  const size_t vOff = static_cast<size_t>(a.nkv) * a.tpb * rowB;  // K slab -> V slab
  // tpb >= 32: block of the chunk (every lane); else: block of 8-token segment `lane` (lanes
  // 0..3). -1 = not to be read. Loaded one chunk ahead of its use (the table read is not waited
  // for).
  auto tableFor = [&](const ChunkIter& it) -> int {
    if (it.c >= it.cEnd) return -1;
    const int sl = wholeChunks ? 0 : lane;
    if (sl >= kCh / 8) return -1;
    const int segStart = it.c * kCh + sl * 8, segLen = wholeChunks ? kCh : 8;
    if (segStart >= it.hi || segStart + segLen <= it.lo) return -1;
    const int col = segStart >> tpbShift;
    if (col >= a.MB) return -1;
    const int blk = __ldg(a.block_table + static_cast<size_t>(it.pair / a.nkv) * a.MB + col);
    return blk >= 0 && blk < a.NB ? blk : -1;
  };
  int tbNext = tableFor(is);
  int issueStage = 0;
  auto issue = [&]() {
    const int tb = tbNext;
    const bool live = is.c < is.cEnd;
    const int h = is.pair % a.nkv, cpos = is.c * kCh;
    if (live) {
      ++is.c;
      settle();
      tbNext = tableFor(is);
    }
    uint8_t* st = wst + issueStage * stageB;
    issueStage = issueStage + 1 == kDecStages ? 0 : issueStage + 1;
    if (live && wholeChunks) {
      if (tb >= 0) {
        const int slot0 = cpos & (a.tpb - 1);
        const uint8_t* ks = a.codes + ((static_cast<size_t>(tb) * 2 * a.nkv + h) * a.tpb + slot0) * rowB;
#pragma unroll
        for (int i = 0; i < kCh * CPT / 32; ++i) {
          cpAsync16(st + (lane + 32 * i) * 16, ks + (lane + 32 * i) * 16);
          cpAsync16(st + kCh * rowB + (lane + 32 * i) * 16, ks + vOff + (lane + 32 * i) * 16);
        }
        const uint8_t* ps = reinterpret_cast<const uint8_t*>(
            a.params + ((static_cast<size_t>(tb) * a.nkv + h) * a.tpb + slot0) * P);
        for (int cc = lane; cc < 4 * P; cc += 32) cpAsync16(st + kCh * D + cc * 16, ps + cc * 16);
      }
    } else if (live) {
      const int bs0 = __shfl_sync(0xffffffffu, tb, 0), bs1 = __shfl_sync(0xffffffffu, tb, 1);
      const int bs2 = __shfl_sync(0xffffffffu, tb, 2), bs3 = __shfl_sync(0xffffffffu, tb, 3);
      auto blkOf = [&](int seg) { return seg == 0 ? bs0 : seg == 1 ? bs1 : seg == 2 ? bs2 : bs3; };
#pragma unroll
      for (int i = 0; i < kCh * CPT / 32; ++i) {
        const int ci = lane + 32 * i, tok = ci / CPT, part = ci % CPT, seg = tok >> 3;
        const int blk = blkOf(seg);
        if (blk >= 0) {
          const int slot = (cpos + tok) & (a.tpb - 1);
          const size_t slabK = (static_cast<size_t>(blk) * 2 * a.nkv + h) * a.tpb + slot;
          const uint8_t* ks = a.codes + slabK * rowB + part * 16;
          cpAsync16(st + tok * rowB + part * 16, ks);
          cpAsync16(st + kCh * rowB + tok * rowB + part * 16, ks + vOff);
        }
      }
      for (int cc = lane; cc < 4 * P; cc += 32) {  // P 16-byte copies per 8-token segment
        const int seg = cc / P, e = cc - seg * P;
        const int blk = blkOf(seg);
        if (blk >= 0) {
          const int slot = (cpos + seg * 8) & (a.tpb - 1);
          cpAsync16(st + kCh * D + (seg * P + e) * 16,
                    a.params + ((static_cast<size_t>(blk) * a.nkv + h) * a.tpb + slot) * P + e * 8);
        }
      }
    }
    cpAsyncCommit();
  };
#pragma unroll
  for (int s = 0; s < kDecStages - 1; ++s) issue();

  const int g = lane >> 2, qd = lane & 3;
  // parameter offsets (halves within a token's P) of this thread's K words and V bytes
  const int ngk = D / a.gk;
  int kgo[KW];
#pragma unroll
  for (int kw = 0; kw < KW; ++kw) kgo[kw] = (qd * (D / 4) + 8 * kw) / a.gk;
  const int vgo0 = 2 * ngk + (g * (D / 8)) / a.gv;
  const int vgo1 = 2 * ngk + (g * (D / 8) + (D / 8) - 1) / a.gv;  // last channel's group
  const int ngv = D / a.gv;

  int readStage = 0;
  for (int pr = pFirst; pr <= pLast; ++pr) {
    ChunkIter ct;
    segment(pr, ct);
    const int b = pr / a.nkv, h = pr % a.nkv;
    const int row0 = b * a.nh + h * a.rep;  // (token b, head h rep): rows of q / out
    // Q A fragments of rows g, g + 8 (zero past rep): thread channels [qd d/4, (qd+1) d/4) as
    // words (2 channels each); k step ks takes channels c, c + 4 (a0, a1) and c + 1, c + 5 (a2,
    // a3) with c = 8 (ks / 2) + 2 (ks % 2), i.e. the halves of words c/2 and c/2 + 2.
    {
      uint32_t qw[2][QW];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = g + 8 * r;
#pragma unroll
        for (int v = 0; v < QW / 4; ++v) {
          uint4 x = make_uint4(0, 0, 0, 0);
          if (row < a.rep)
            x = *reinterpret_cast<const uint4*>(a.q + static_cast<size_t>(row0 + row) * D +
                                                qd * (D / 4) + 8 * v);
          qw[r][4 * v] = x.x;
          qw[r][4 * v + 1] = x.y;
          qw[r][4 * v + 2] = x.z;
          qw[r][4 * v + 3] = x.w;
        }
      }
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {  // each lane reads back only its own entries
        const int wi = 4 * (ks >> 1) + (ks & 1);
        qs[ks * 32 + lane] = make_uint4(prmt(qw[0][wi], qw[0][wi + 2], 0x5410),
                                        prmt(qw[1][wi], qw[1][wi + 2], 0x5410),
                                        prmt(qw[0][wi], qw[0][wi + 2], 0x7632),
                                        prmt(qw[1][wi], qw[1][wi + 2], 0x7632));
      }
    }
    float o[NO][4];
#pragma unroll
    for (int i = 0; i < NO; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

    for (; ct.c < ct.cEnd; ++ct.c) {
      cpAsyncWait<kDecStages - 2>();
      __syncwarp();
      uint8_t* st = wst + readStage * stageB;
      readStage = readStage + 1 == kDecStages ? 0 : readStage + 1;
      __half* pr_ = reinterpret_cast<__half*>(st + kCh * D);
      const int cpos = ct.c * kCh, lo = ct.lo, hi = ct.hi;
      const bool partial = cpos < lo || cpos + kCh > hi;
      if (partial) {
        if (cpos + lane < lo || cpos + lane >= hi)
          for (int e = 0; e < P; ++e) pr_[lane * P + e] = __ushort_as_half(0);
        __syncwarp();
      }
      // S = Q K^T over the chunk's 32 tokens
      float s[NS][4];
#pragma unroll
      for (int i = 0; i < NS; ++i) {
        s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
        const int tok = i * 8 + g;
        uint32_t kw[KW];
        if constexpr (KW == 4) {
          const uint4 v = *reinterpret_cast<const uint4*>(st + tok * rowB + qd * 16);
          kw[0] = v.x; kw[1] = v.y; kw[2] = v.z; kw[3] = v.w;
        } else {
          const uint2 v = *reinterpret_cast<const uint2*>(st + tok * rowB + qd * 8);
          kw[0] = v.x; kw[1] = v.y;
        }
        const __half* pt = pr_ + tok * P;
        __half2 sc = __half2half2(pt[kgo[0]]), zr = __half2half2(pt[ngk + kgo[0]]);
#pragma unroll
        for (int x = 0; x < KW; ++x) {
          if (!G1 && x > 0) {
            sc = __half2half2(pt[kgo[x]]);
            zr = __half2half2(pt[ngk + kgo[x]]);
          }
          // nibble k of both halves: k = 0 / 2 from bits 0-3, k = 1 / 3 from bits 4-7, k = 2 / 3
          // after >> 8
          const uint32_t w8 = kw[x] >> 8;
          uint32_t hb[4];
          hb[0] = h22u(__hfma2(nibLo(kw[x]), sc, zr));
          hb[1] = h22u(__hfma2(nibHi(kw[x]), sc, zr));
          hb[2] = h22u(__hfma2(nibLo(w8), sc, zr));
          hb[3] = h22u(__hfma2(nibHi(w8), sc, zr));
          const uint4 qa = qs[(2 * x) * 32 + lane], qb = qs[(2 * x + 1) * 32 + lane];
          mma16816(s[i], {qa.x, qa.y, qa.z, qa.w}, hb[0], hb[1]);
          mma16816(s[i], {qb.x, qb.y, qb.z, qb.w}, hb[2], hb[3]);
        }
      }
      // online softmax (base 2, rowMaxStep): the probabilities are 2^(fma(s, c, -m)) by
      // ex2.approx (~2 ulp, rounded to fp16 for P V anyway; masked scores are -inf and give +0)
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int i = 0; i < NS; ++i) {
        if (partial) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int jpos = cpos + i * 8 + 2 * qd + (e & 1);
            if (jpos < lo || jpos >= hi) s[i][e] = -INFINITY;
          }
        }
        mx0 = fmaxf(mx0, fmaxf(s[i][0], s[i][1]));
        mx1 = fmaxf(mx1, fmaxf(s[i][2], s[i][3]));
      }
      float u0, u1, cr0, cr1;
      rowMaxStep(m0, m1, mx0, mx1, a.scale_log2, u0, u1, cr0, cr1);
      l0 *= cr0;
      l1 *= cr1;
      if (__any_sync(0xffffffffu, cr0 != 1.f || cr1 != 1.f)) {  // rare once the max settles
#pragma unroll
        for (int i = 0; i < NO; ++i) {
          o[i][0] *= cr0; o[i][1] *= cr0; o[i][2] *= cr1; o[i][3] *= cr1;
        }
      }
#pragma unroll
      for (int i = 0; i < NS; ++i) {
        s[i][0] = ex2(fmaf(s[i][0], a.scale_log2, -u0));
        s[i][1] = ex2(fmaf(s[i][1], a.scale_log2, -u0));
        s[i][2] = ex2(fmaf(s[i][2], a.scale_log2, -u1));
        s[i][3] = ex2(fmaf(s[i][3], a.scale_log2, -u1));
        l0 += s[i][0] + s[i][1];
        l1 += s[i][2] + s[i][3];
      }
      // O += P V
#pragma unroll
      for (int kk = 0; kk < kCh / 16; ++kk) {
        const uint32_t pa[4] = {packHalf2(s[2 * kk][0], s[2 * kk][1]),
                                packHalf2(s[2 * kk][2], s[2 * kk][3]),
                                packHalf2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                packHalf2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
        // b[0]: tokens (2qd, 2qd+1), b[1]: (2qd+8, 2qd+9) of the 16
        uint32_t vb[2][NO];
#pragma unroll
        for (int pp = 0; pp < 2; ++pp) {
          const int ta = kk * 16 + pp * 8 + 2 * qd, tb2 = ta + 1;
          const uint8_t* va = st + kCh * rowB + ta * rowB + g * VB;
          const uint8_t* vbp = va + rowB;
          uint32_t wa[VB / 4], wb[VB / 4];
          if constexpr (VB == 8) {
            const uint2 x = *reinterpret_cast<const uint2*>(va);
            const uint2 y = *reinterpret_cast<const uint2*>(vbp);
            wa[0] = x.x; wa[1] = x.y; wb[0] = y.x; wb[1] = y.y;
          } else {
            wa[0] = *reinterpret_cast<const uint32_t*>(va);
            wb[0] = *reinterpret_cast<const uint32_t*>(vbp);
          }
          const __half* pa_ = pr_ + ta * P;
          const __half* pb_ = pr_ + tb2 * P;
          const __half2 s0 = __halves2half2(pa_[vgo0], pb_[vgo0]);
          const __half2 z0 = __halves2half2(pa_[vgo0 + ngv], pb_[vgo0 + ngv]);
          __half2 s1 = s0, z1 = z0;
          if (!G1) {
            s1 = __halves2half2(pa_[vgo1], pb_[vgo1]);
            z1 = __halves2half2(pa_[vgo1 + ngv], pb_[vgo1 + ngv]);
          }
#pragma unroll
          for (int jb = 0; jb < VB; ++jb) {
            const uint32_t x = prmt(wa[jb >> 2], wb[jb >> 2], (jb & 3) | ((4 + (jb & 3)) << 8));
            const bool second = jb >= 4;  // channels g d/8 + 8.. (d = 128 only)
            const __half2 sc = second ? s1 : s0, zr = second ? z1 : z0;
            vb[pp][2 * jb] = h22u(__hfma2(nibLo(x), sc, zr));
            vb[pp][2 * jb + 1] = h22u(__hfma2(nibHi(x), sc, zr));
          }
        }
#pragma unroll
        for (int np = 0; np < NO; ++np) mma16816(o[np], pa, vb[0][np], vb[1][np]);
      }
      __syncwarp();
      issue();
    }

    // The pair's result over this warp's chunks: rows g, g + 8, channels [2qd d/8, (2qd+2) d/8)
    // (o[np][e]: channel (2qd + (e & 1)) d/8 + np).
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const int pieces = split.pieces(pr);
    const int piece = pr == pFirst ? pieceFirst : 0;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = g + 8 * r;
      if (row >= a.rep) continue;
      const float l = r ? l1 : l0, m = r ? m1 : m0;
      const float inv = l > 0.f ? 1.f / l : 0.f;
      if (pieces == 1) {
        __half* dst = a.out + static_cast<size_t>(row0 + row) * D + 2 * qd * (D / 8);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
#pragma unroll
          for (int v = 0; v < NO / 8; ++v) {
            uint32_t u[4];
#pragma unroll
            for (int k = 0; k < 4; ++k)
              u[k] = packHalf2(o[8 * v + 2 * k][2 * r + half] * inv,
                               o[8 * v + 2 * k + 1][2 * r + half] * inv);
            *reinterpret_cast<uint4*>(dst + half * (D / 8) + 8 * v) =
                make_uint4(u[0], u[1], u[2], u[3]);
          }
        }
      } else {
        const size_t pi = static_cast<size_t>(row0 + row) * a.splits + piece;
        if (l > 0.f) {
          float* dst = a.ws_o + pi * D + 2 * qd * (D / 8);
#pragma unroll
          for (int half = 0; half < 2; ++half) {
#pragma unroll
            for (int v = 0; v < NO / 4; ++v)
              *reinterpret_cast<float4*>(dst + half * (D / 8) + 4 * v) =
                  make_float4(o[4 * v][2 * r + half] * inv, o[4 * v + 1][2 * r + half] * inv,
                              o[4 * v + 2][2 * r + half] * inv, o[4 * v + 3][2 * r + half] * inv);
          }
        }
        if (qd == 0) a.ws_lse[pi] = l > 0.f ? m + log2f(l) : -INFINITY;
      }
    }
  }
  cpAsyncWait<0>();  // nothing left in flight at exit (the last commits are empty)
}

// ---- launchers --------------------------------------------------------------------------------
int checkLayout(const lowbitKv4Layout* L) {
  if (!L) return LOWBIT_ERR_NULL_POINTER;
  const int d = L->head_size;
  if (L->num_heads <= 0 || L->num_kv_heads <= 0 || L->tokens_per_block <= 0 ||
      L->num_blocks <= 0 || L->max_blocks_per_seq <= 0 || L->sliding_window < 0 ||
      L->k_group_size <= 0 || L->v_group_size <= 0)
    return LOWBIT_ERR_BAD_SHAPE;
  if (d != 64 && d != 128) return LOWBIT_ERR_UNSUPPORTED;
  if (L->num_heads % L->num_kv_heads) return LOWBIT_ERR_DIVISIBILITY;
  for (int g : {L->k_group_size, L->v_group_size})
    if (g % 8 || d % g) return LOWBIT_ERR_DIVISIBILITY;
  const int tpb = L->tokens_per_block;
  if (tpb < 8 || (tpb & (tpb - 1))) return LOWBIT_ERR_UNSUPPORTED;
  if (static_cast<long long>(L->max_blocks_per_seq) * tpb > (1ll << 30)) return LOWBIT_ERR_BAD_SHAPE;
  return LOWBIT_OK;
}

int paramsPerToken(const lowbitKv4Layout* L) {
  return 2 * (L->head_size / L->k_group_size + L->head_size / L->v_group_size);
}

bool decodePath(int T, int B, const lowbitKv4Layout* L) {
  return T == B && L->num_heads / L->num_kv_heads <= 16;
}

// CTAs of either decode kernel resident at once: 3 per SM of a 132-SM H100 (168 registers, ~61 KB
// of shared memory each). The split plans below depend only on (B, layout), not on the device:
// the workspace size must be deterministic.
constexpr int kResidentCtas = 3 * 132;
constexpr int kSmemTargetCtas = 1584;  // smem path: ~12 CTAs per SM of a 132-SM H100 (waves)

// Which decode kernel: the register-dequant kv4DecodeKernel (stream-K over warps) from
// kRegMinSlots chunk slots (B nkv ceil(MB tpb / 32)) on; below, the smem-dequant
// kv4AttentionKernel<D, true>, whose one-tile splits spread a tiny batch over more CTAs. From (B,
// layout) only. H100 (NOTES log 18): batch 1 x 512 tokens, Llama-3-8B heads (128 slots) 7.0 us
// smem path vs 10.3 register path; Llama-2-7B heads x 2048 (2048 slots) 15.3 vs 11.2 us; batch 64
// x 2048 462 vs 254 us.
constexpr long long kRegMinSlots = 2048;

bool decodeRegPath(int B, const lowbitKv4Layout* L) {
  const long long C = chunkSlots(L->max_blocks_per_seq, L->tokens_per_block);
  return static_cast<long long>(B) * L->num_kv_heads * C >= kRegMinSlots;
}

// Smem path: at least one wave of kResidentCtas, about kSmemTilesPerSplit tiles per split where
// that does not exceed kSmemTargetCtas, at most tiles / 2 and kMaxSplits, rounded down to whole
// waves (H100, batch 1 x 32768 tokens, Llama-3-8B heads: 198 splits of 2.6 tiles 54.1 us, 50
// splits of 10 tiles 39.9 us; 16 x 2048: 13 splits 53.3 us, 4 splits 45.4 us).
constexpr int kSmemTilesPerSplit = 10;

int decodeSplitsSmem(int B, const lowbitKv4Layout* L) {
  const long long ctas = static_cast<long long>(B) * L->num_kv_heads;
  const long long tiles =
      (static_cast<long long>(L->max_blocks_per_seq) * L->tokens_per_block + kTile - 1) / kTile;
  // Latency-bound small grids: a tile per split when that is still at most one wave.
  if (ctas * tiles <= kResidentCtas)
    return tiles < kMaxSplits ? static_cast<int>(tiles) : kMaxSplits;
  long long s = (kResidentCtas + ctas - 1) / ctas;
  const long long byWork = (tiles + kSmemTilesPerSplit - 1) / kSmemTilesPerSplit;
  if (byWork > s) s = byWork;
  long long cap = (kSmemTargetCtas + ctas - 1) / ctas;
  if (tiles / 2 < cap) cap = tiles / 2 > 1 ? tiles / 2 : 1;  // >= 2 tiles per split
  if (kMaxSplits < cap) cap = kMaxSplits;
  if (s > cap) s = cap;
  // Whole waves only: 52 splits x 8 heads = 416 CTAs ran a second wave of 20 (55.2 us vs 39.9).
  const long long waves = ctas * s / kResidentCtas;
  if (waves >= 1) s = waves * kResidentCtas / ctas;
  return s < 1 ? 1 : static_cast<int>(s);
}

// How a decode grid covers the B nkv (sequence, kv head) pairs. Smem path: `splits` CTAs per pair
// (per == 0). Register path: per > 0 chunk slots per warp over the pairs' C = ceil(MB tpb / 32)
// slots laid end to end (ChunkSplit), `warps` warps; `splits` is then the most warps that share a
// pair (the workspace's slots per (sequence, head) row). 1 = no merge.
struct DecodePlan {
  int splits = 1, per = 0;
};

// Register path, stream-K over all warps of one round (kResidentCtas CTAs of 4 warps): per =
// ceil(B nkv C / warps), at least kMinChunksPerWarp (a warp's start costs a few us: the dependent
// loads positions -> block table -> codes, NOTES log 14; H100, batch 1 x 2048 tokens, Llama-2-7B
// heads: at least 2 / 4 / 8 chunks 11.5 / 13.0 / 19.1 us, x 8192 Llama-3-8B heads 15.5 / 14.6 /
// 20.3 us). A range of C slots meets at most ceil((C - 1) / per) + 1 ranges of per slots.
constexpr int kMinChunksPerWarp = 4;

DecodePlan decodePlanReg(int B, const lowbitKv4Layout* L) {
  DecodePlan p;
  const long long C = chunkSlots(L->max_blocks_per_seq, L->tokens_per_block);
  const long long total = static_cast<long long>(B) * L->num_kv_heads * C;
  const long long warps = kResidentCtas * (kThreads / 32);
  long long per = (total + warps - 1) / warps;
  if (per < kMinChunksPerWarp) per = kMinChunksPerWarp;
  if (per > 0x7fffffffLL) per = 0x7fffffffLL;  // bounded by the grid check of the launcher
  p.per = static_cast<int>(per);
  p.splits = static_cast<int>((C - 1 + per - 1) / per + 1);
  return p;
}

DecodePlan decodePlan(int B, const lowbitKv4Layout* L) {
  if (decodeRegPath(B, L)) return decodePlanReg(B, L);
  DecodePlan p;
  p.splits = decodeSplitsSmem(B, L);
  return p;
}

// True on a compute capability 9.0 device when this library carries sm_90a code for the wgmma
// prefill kernel (elsewhere its body is empty and the mma.sync kernel runs), unless the
// environment sets LOWBIT_KV_PREFILL_KERNEL=mma (read at every call: the tests run the portable
// kernel on a Hopper GPU with it).
inline bool prefillWgmma() {
  const char* force = std::getenv("LOWBIT_KV_PREFILL_KERNEL");
  if (force && std::strcmp(force, "mma") == 0) return false;
  return wg::sm90aCode<kv4PrefillWgmmaKernel<128>>();
}

// dependent: the prefill wgmma kernel is launched as a programmatic dependent of the stream's
// previous kernel, which must not write positions, seq_offsets or the block table (it is the
// append kernel of lowbit_kv4_rope_append_attention); the mma.sync kernel ignores it.
template <int D, bool DECODE>
int launchAttention(const AttnArgs& a, int T, bool regPath, bool dependent, cudaStream_t stream) {
  int st;
  if (DECODE && !regPath) {
    const int smem = Smem<D>::bytes(16, a.P);
    st = allowDynamicSmem<kv4AttentionKernel<D, true>>(smem);
    if (st != LOWBIT_OK) return st;
    kv4AttentionKernel<D, true><<<dim3(a.splits, a.nkv, a.B), kThreads, smem, stream>>>(a);
  } else if constexpr (DECODE) {
    const int smem = DecSmem<D>::bytes(a.P);
    const bool g1 = a.gk >= D / 4 && a.gv >= D / 8;
    auto kernel = g1 ? kv4DecodeKernel<D, true> : kv4DecodeKernel<D, false>;
    st = g1 ? allowDynamicSmem<kv4DecodeKernel<D, true>>(smem)
            : allowDynamicSmem<kv4DecodeKernel<D, false>>(smem);
    if (st != LOWBIT_OK) return st;
    const long long C = chunkSlots(a.MB, a.tpb);
    const long long warps = (static_cast<long long>(a.B) * a.nkv * C + a.per - 1) / a.per;
    const long long grid = (warps + kThreads / 32 - 1) / (kThreads / 32);  // 4 warps per CTA
    if (grid > 0x7fffffffLL) return LOWBIT_ERR_BAD_SHAPE;
    kernel<<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(a);
  } else {
    constexpr int R = kPrefillRows;
    // row tiles: sum_b ceil(n_b rep / R) < T rep / R + B, so at most ceil(T rep / R) + B - 1
    // (exact for one sequence; CTAs past the last tile return at once)
    const long long rows = (static_cast<long long>(T) * a.rep + R - 1) / R + a.B - 1;
    if (rows > 0x7fffffffLL) return LOWBIT_ERR_BAD_SHAPE;
    const dim3 grid(static_cast<unsigned>(rows), a.nkv, 1);
    if (prefillWgmma()) {
      if (rows * a.nkv > 0x7fffffffLL) return LOWBIT_ERR_BAD_SHAPE;
      const dim3 grid1(static_cast<unsigned>(rows * a.nkv));  // heads fastest (kernel)
      const int smem = wgp::Smem<D>::bytes(a.P);
      st = allowDynamicSmem<kv4PrefillWgmmaKernel<D>>(smem);
      if (st != LOWBIT_OK) return st;
      if (dependent) {
        st = launchDependent(kv4PrefillWgmmaKernel<D>, grid1, dim3(wgp::kThreads), smem, stream,
                             a);
        if (st != LOWBIT_OK) return st;
      } else {
        kv4PrefillWgmmaKernel<D><<<grid1, wgp::kThreads, smem, stream>>>(a);
      }
    } else {
      const int smem = Smem<D>::bytes(R, a.P);
      st = allowDynamicSmem<kv4AttentionKernel<D, false>>(smem);
      if (st != LOWBIT_OK) return st;
      kv4AttentionKernel<D, false><<<grid, kPrefillThreads, smem, stream>>>(a);
    }
  }
  st = launchStatus();
  if (st != LOWBIT_OK || !DECODE || a.splits == 1) return st;
  // programmatic dependent launch: the merge's CTAs start while the attention grid drains; one
  // CTA per (sequence, head) row (register path: rows of unshared pairs return at once)
  return launchDependent(kv4MergeKernel<D>, dim3(a.B * a.nh), dim3(kMergeThreads), 0, stream,
                         static_cast<const float*>(a.ws_o), static_cast<const float*>(a.ws_lse),
                         a.rep, a.splits, chunkSlots(a.MB, a.tpb), a.per, a.out);
}

// Workspace of a plan: n partials (B nh rows x splits slots), ws_o = n x d floats, then ws_lse =
// n floats at byte lseOffset (both 256-byte aligned).
size_t planPartials(int B, const lowbitKv4Layout* L, const DecodePlan& plan) {
  return plan.splits > 1 ? static_cast<size_t>(B) * L->num_heads * plan.splits : 0;
}
size_t lseOffset(size_t n, const lowbitKv4Layout* L) {
  return (n * L->head_size * sizeof(float) + 255) / 256 * 256;
}

size_t workspaceBytes(int T, int B, const lowbitKv4Layout* L, DecodePlan* plan) {
  *plan = DecodePlan{};
  if (!decodePath(T, B, L)) return 0;
  *plan = decodePlan(B, L);
  const size_t n = planPartials(B, L, *plan);
  if (n == 0) return 0;
  return lseOffset(n, L) + (n * sizeof(float) + 255) / 256 * 256;
}

// Checks the append's arguments and fills its kernel arguments (nothing is launched). T == 0 is
// valid and launches nothing.
int appendPrepare(const void* qkv, const int* positions, const int* seq_offsets, int T, int B,
                  const int* block_table, const float* inv_freq, const lowbitKv4Layout* layout,
                  void* codes, void* params, void* q_out, AppendArgs& a, dim3& blocks, int& pw) {
  int st = checkLayout(layout);
  if (st != LOWBIT_OK) return st;
  if (T < 0 || B < 1) return LOWBIT_ERR_BAD_SHAPE;
  if (T == 0) return LOWBIT_OK;
  if (!qkv || !positions || !seq_offsets || !block_table || !inv_freq || !codes || !params ||
      !q_out)
    return LOWBIT_ERR_NULL_POINTER;
  if (!aligned16(qkv) || !aligned16(codes) || !aligned16(params) || !aligned16(q_out))
    return LOWBIT_ERR_MISALIGNED;
  const int U = layout->num_heads + 2 * layout->num_kv_heads;
  const int sms = multiprocessorCount();
  const int ups = 256 / layout->head_size;  // head units per warp step (AppendGeom)
  auto ctas = [&](int p) {  // grid size with p steps per warp
    return static_cast<long long>(T) * ((U + 4 * p * ups - 1) / (4 * p * ups));
  };
  // steps per warp: the largest of 4, 2, 1 that still gives >= 20 CTAs per SM (~2 waves at the
  // 9-10 resident per SM). H100 sweep (NOTES log 26): 1 at 64 tokens, 2 at 512 (Llama-2-7B heads;
  // 1 for Llama-3-8B's 48 units), 4 at 4096; 8 steps per warp was never the fastest.
  pw = 4;
  while (pw > 1 && ctas(pw) < 20ll * sms) pw /= 2;
  const int unitCtas = (U + 4 * pw * ups - 1) / (4 * pw * ups);  // grid (T, unitCtas)
  if (unitCtas > 65535) return LOWBIT_ERR_BAD_SHAPE;
  // the kernel's offsets within one pool block (2 nkv tpb d/2 code bytes) are 32-bit
  if (static_cast<long long>(layout->num_kv_heads) * layout->tokens_per_block *
          layout->head_size > (1ll << 30))
    return LOWBIT_ERR_BAD_SHAPE;
  blocks = dim3(static_cast<unsigned>(T), static_cast<unsigned>(unitCtas));
  const int d = layout->head_size;
  a = AppendArgs{};
  a.qkv = static_cast<const __half*>(qkv);
  a.positions = positions;
  a.seq_offsets = seq_offsets;
  a.block_table = block_table;
  a.inv_freq = inv_freq;
  a.codes = static_cast<uint8_t*>(codes);
  a.params = static_cast<__half*>(params);
  a.q_out = static_cast<__half*>(q_out);
  a.B = B;
  a.nh = layout->num_heads;
  a.nkv = layout->num_kv_heads;
  a.MB = layout->max_blocks_per_seq;
  a.NB = layout->num_blocks;
  a.lgTpb = log2Exact(layout->tokens_per_block);
  a.lgLanesK = log2Exact(layout->k_group_size) - 3;  // gk, gv: powers of two >= 8 dividing d
  a.lgLanesV = log2Exact(layout->v_group_size) - 3;
  a.nGroupsK = d / layout->k_group_size;
  a.nGroupsV = d / layout->v_group_size;
  a.P = paramsPerToken(layout);
  return LOWBIT_OK;
}

int appendLaunch(const AppendArgs& a, dim3 blocks, int pw, int d, cudaStream_t s) {
  auto launch = [&](auto kernel) { kernel<<<blocks, kThreads, 0, s>>>(a); };
  if (d == 128)
    pw == 4   ? launch(kv4RopeAppendKernel<128, 4>)
    : pw == 2 ? launch(kv4RopeAppendKernel<128, 2>) : launch(kv4RopeAppendKernel<128, 1>);
  else
    pw == 4   ? launch(kv4RopeAppendKernel<64, 4>)
    : pw == 2 ? launch(kv4RopeAppendKernel<64, 2>) : launch(kv4RopeAppendKernel<64, 1>);
  return launchStatus();
}


// Checks the attention's arguments and fills its kernel arguments (nothing is launched); dec:
// the decode path, reg: its register path. T == 0 is valid and launches nothing.
int attentionPrepare(const void* q, const int* positions, const int* seq_offsets, int T, int B,
                     const int* block_table, const lowbitKv4Layout* layout, const void* codes,
                     const void* params, void* out, void* workspace, size_t workspace_bytes,
                     AttnArgs& a, bool& dec, bool& reg) {
  int st = checkLayout(layout);
  if (st != LOWBIT_OK) return st;
  if (T < 0 || B < 1) return LOWBIT_ERR_BAD_SHAPE;
  if (T == 0) return LOWBIT_OK;
  if (!q || !positions || !seq_offsets || !block_table || !codes || !params || !out)
    return LOWBIT_ERR_NULL_POINTER;
  if (!aligned16(q) || !aligned16(codes) || !aligned16(params) || !aligned16(out))
    return LOWBIT_ERR_MISALIGNED;
  if (static_cast<long long>(T) * layout->num_heads * layout->head_size > 0x7fffffffLL)
    return LOWBIT_ERR_BAD_SHAPE;  // 32-bit row offsets
  DecodePlan plan;
  const size_t need = workspaceBytes(T, B, layout, &plan);
  if (need > 0 && (!workspace || workspace_bytes < need)) return LOWBIT_ERR_BAD_SHAPE;
  if (need > 0 && !aligned16(workspace)) return LOWBIT_ERR_MISALIGNED;
  a = AttnArgs{};
  a.q = static_cast<const __half*>(q);
  a.positions = positions;
  a.seq_offsets = seq_offsets;
  a.block_table = block_table;
  a.codes = static_cast<const uint8_t*>(codes);
  a.params = static_cast<const __half*>(params);
  a.out = static_cast<__half*>(out);
  a.ws_o = static_cast<float*>(workspace);
  a.ws_lse = need ? reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) +
                                             lseOffset(planPartials(B, layout, plan), layout))
                  : nullptr;
  a.B = B;
  a.nh = layout->num_heads;
  a.nkv = layout->num_kv_heads;
  a.rep = a.nh / a.nkv;
  a.tpb = layout->tokens_per_block;
  a.gk = layout->k_group_size;
  a.gv = layout->v_group_size;
  a.P = paramsPerToken(layout);
  a.window = layout->sliding_window;
  a.NB = layout->num_blocks;
  a.MB = layout->max_blocks_per_seq;
  a.splits = plan.splits;
  a.per = plan.per;
  a.scale_log2 = 1.4426950408889634f / sqrtf(static_cast<float>(layout->head_size));
  dec = decodePath(T, B, layout);
  reg = dec && decodeRegPath(B, layout);
  return LOWBIT_OK;
}

int attentionLaunch(const AttnArgs& a, int T, int d, bool dec, bool reg, bool dependent,
                    cudaStream_t s) {
  if (d == 128)
    return dec ? launchAttention<128, true>(a, T, reg, dependent, s)
               : launchAttention<128, false>(a, T, reg, dependent, s);
  return dec ? launchAttention<64, true>(a, T, reg, dependent, s)
             : launchAttention<64, false>(a, T, reg, dependent, s);
}

}  // namespace
}  // namespace lowbit

using namespace lowbit;

// Decode (T == B): the largest need of any batch <= B (the split rule is not monotone in B), so
// a workspace sized at the profile's largest decode batch serves every smaller one.
extern "C" size_t lowbit_kv4_attention_workspace(int T, int B, const lowbitKv4Layout* layout) {
  if (checkLayout(layout) != LOWBIT_OK || T < 0 || B < 1) return 0;
  DecodePlan plan;
  if (T != B) return workspaceBytes(T, B, layout, &plan);
  size_t mx = 0;
  for (int bb = 1; bb <= B; ++bb) {
    const size_t w = workspaceBytes(bb, bb, layout, &plan);
    if (w > mx) mx = w;
  }
  return mx;
}

extern "C" int lowbit_kv4_rope_append(const void* qkv, const int* positions,
                                      const int* seq_offsets, int T, int B,
                                      const int* block_table, const float* inv_freq,
                                      const lowbitKv4Layout* layout, void* codes, void* params,
                                      void* q_out, void* stream) {
  AppendArgs a;
  dim3 blocks;
  int pw = 0;
  const int st = appendPrepare(qkv, positions, seq_offsets, T, B, block_table, inv_freq, layout,
                               codes, params, q_out, a, blocks, pw);
  if (st != LOWBIT_OK || T == 0) return st;
  return appendLaunch(a, blocks, pw, layout->head_size, static_cast<cudaStream_t>(stream));
}

extern "C" int lowbit_kv4_attention(const void* q, const int* positions, const int* seq_offsets,
                                    int T, int B, const int* block_table,
                                    const lowbitKv4Layout* layout, const void* codes,
                                    const void* params, void* out, void* workspace,
                                    size_t workspace_bytes, void* stream) {
  AttnArgs a;
  bool dec = false, reg = false;
  const int st = attentionPrepare(q, positions, seq_offsets, T, B, block_table, layout, codes,
                                  params, out, workspace, workspace_bytes, a, dec, reg);
  if (st != LOWBIT_OK || T == 0) return st;
  return attentionLaunch(a, T, layout->head_size, dec, reg, false,
                         static_cast<cudaStream_t>(stream));
}

// Both argument sets are checked before anything is launched.
extern "C" int lowbit_kv4_rope_append_attention(
    const void* qkv, const int* positions, const int* seq_offsets, int T, int B,
    const int* block_table, const float* inv_freq, const lowbitKv4Layout* layout, void* codes,
    void* params, void* q_buf, void* out, void* workspace, size_t workspace_bytes, void* stream) {
  AppendArgs ap;
  dim3 blocks;
  int pw = 0;
  int st = appendPrepare(qkv, positions, seq_offsets, T, B, block_table, inv_freq, layout, codes,
                         params, q_buf, ap, blocks, pw);
  if (st != LOWBIT_OK) return st;
  AttnArgs a;
  bool dec = false, reg = false;
  st = attentionPrepare(q_buf, positions, seq_offsets, T, B, block_table, layout, codes, params,
                        out, workspace, workspace_bytes, a, dec, reg);
  if (st != LOWBIT_OK || T == 0) return st;
  auto s = static_cast<cudaStream_t>(stream);
  ap.trigger = dec ? 0 : 1;  // prefill: launchAttention takes the wgmma kernel as a dependent
  st = appendLaunch(ap, blocks, pw, layout->head_size, s);
  if (st != LOWBIT_OK) return st;
  return attentionLaunch(a, T, layout->head_size, dec, reg, !dec, s);
}
