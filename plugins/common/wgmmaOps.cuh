// Hopper (sm_90a) primitives for the wgmma GEMMs (device code, header only): mbarriers, TMA
// tile loads, wgmma shared-memory descriptors, warpgroup fences, setmaxnreg, the s8 x s8 -> s32
// wgmma wrappers (m64n256k32 / m64n128k32 with A from shared memory, m64n128k32 with A from
// registers) and the f16 x f16 -> f32 ones of the KV prefill attention (m64n64k16 from shared
// memory; m64n64k16 / m64n128k16 with A from registers and an MN-major B). Every body is
// compiled only for sm_90a (LOWBIT_WGMMA_OK); other architectures get empty bodies and the host
// never launches these kernels there (wgmmaCore.cuh: wgmmaAvailable; kvAttentionKernel.cu:
// prefillWgmma).
//
// Operand layouts used with these wrappers: A and B tiles are K-major ("TN"): rows of M (A) or N
// (B), K contiguous, in the canonical swizzled layouts that TMA writes:
//   * 128B swizzle: rows of 128 bytes, 16-byte chunk c of row r stored at chunk c ^ (r & 7);
//     8-row groups 1024 bytes apart (descriptor SBO = 1024); tile base 1024-byte aligned.
//   * 64B swizzle: rows of 64 bytes, chunk c of row r at c ^ ((r >> 1) & 3); 8-row groups 512
//     bytes apart (SBO = 512); tile base 1024-byte aligned.
// One k32 step (32 int8 values = 32 bytes) inside a swizzled row is selected by adding 32 bytes to
// the descriptor's start address (the hardware applies the swizzle to the computed addresses).
#pragma once

#include <cuda.h>  // CUtensorMap (type only; the encoder is fetched through the runtime)
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/asyncCopy.cuh"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LOWBIT_WGMMA_OK 1
#endif

namespace lowbit {
namespace wg {

__device__ __forceinline__ uint32_t smem32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier -----------------------------------------------------------------------------------
__device__ __forceinline__ void mbarInit(uint32_t bar, int count) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void fenceBarrierInit() {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// Blocks until the phase of parity `parity` of the barrier has completed.
__device__ __forceinline__ void mbarWait(uint32_t bar, uint32_t parity) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "{\n.reg .pred P1;\nLAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
      "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#endif
}
__device__ __forceinline__ void mbarArrive(uint32_t bar) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
__device__ __forceinline__ void mbarExpectTx(uint32_t bar, uint32_t bytes) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
#endif
}

// ---- thread-block clusters (split-K reduction through distributed shared memory) -----------
__device__ __forceinline__ uint32_t clusterCtaRank() {
  uint32_t r = 0;
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
#endif
  return r;
}
__device__ __forceinline__ uint32_t clusterNumCtas() {
  uint32_t r = 1;
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(r));
#endif
  return r;
}
__device__ __forceinline__ uint32_t clusterIdX() {
  uint32_t r = 0;
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("mov.u32 %0, %%clusterid.x;\n" : "=r"(r));
#endif
  return r;
}
__device__ __forceinline__ uint32_t numClustersX() {
  uint32_t r = 1;
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("mov.u32 %0, %%nclusterid.x;\n" : "=r"(r));
#endif
  return r;
}
// All threads of all CTAs of the cluster (every thread must still be running).
__device__ __forceinline__ void clusterSync() {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n"
               ::: "memory");
#endif
}
// Shared::cta address -> shared::cluster address of the same variable in CTA `rank`.
__device__ __forceinline__ uint32_t mapaShared(uint32_t addr, uint32_t rank) {
  uint32_t r = addr;
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(addr), "r"(rank));
#endif
  return r;
}
__device__ __forceinline__ int ldSharedCluster(uint32_t addr) {
  int v = 0;
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("ld.shared::cluster.s32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
#endif
  return v;
}
// Arrive (release, cluster scope) on an mbarrier of another CTA (shared::cluster address).
__device__ __forceinline__ void mbarArriveRemote(uint32_t clusterBar) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(clusterBar)
               : "memory");
#endif
}
// mbarWait with acquire at cluster scope (pairs with mbarArriveRemote).
__device__ __forceinline__ void mbarWaitCluster(uint32_t bar, uint32_t parity) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "{\n.reg .pred P1;\nLAB_WAITC:\n"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 P1, [%0], %1;\n"
      "@P1 bra DONEC;\nbra LAB_WAITC;\nDONEC:\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#endif
}

// ---- TMA: 2-D tile global -> shared, completion counted in bytes on an mbarrier ----------------
// c0 = innermost coordinate (elements along the contiguous dimension), c1 = row.
__device__ __forceinline__ void tmaLoad2d(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                          uint32_t bar) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
#endif
}
__device__ __forceinline__ void tmaPrefetchDesc(const CUtensorMap* map) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
#endif
}

// ---- wgmma bookkeeping ------------------------------------------------------------------------
// Shared-memory matrix descriptor (K-major, swizzled): start address >> 4 in bits 0-13, leading
// byte offset (unused for swizzled K-major, 1) in 16-29, stride byte offset >> 4 in 32-45, base
// offset 0 (tiles are 1024-byte aligned), layout in 62-63 (1 = 128B swizzle, 2 = 64B swizzle).
enum : int { kSw128 = 1, kSw64 = 2 };
// MN-major swizzled operands (the f16 B of wgmmaF16RS*T: rows of 64 N-values per k, 8 k-rows a
// 1024-byte atom) use lbo: the byte offset between 64-value blocks along N (sbo: between 8-k
// groups).
__device__ __forceinline__ uint64_t makeDesc(uint32_t addr, int layout, uint32_t sbo,
                                             uint32_t lbo = 16) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>(lbo >> 4) << 16) | (static_cast<uint64_t>(sbo >> 4) << 32) |
         (static_cast<uint64_t>(layout) << 62);
}
// The descriptor of the operand at byte address addr + off from the one at addr (same layout,
// strides; off a multiple of 16): the start-address field is the low 14 bits of addr >> 4 and
// shared memory stays below 2^18 bytes, so off >> 4 adds to the low word without a carry out of
// the field (one integer add instead of rebuilding the descriptor per wgmma).
__device__ __forceinline__ uint64_t descAdd(uint64_t d, uint32_t off) {
  const uint32_t lo = static_cast<uint32_t>(d) + (off >> 4);
  return (d & 0xFFFFFFFF00000000ull) | lo;
}
__device__ __forceinline__ void wgFence() {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgCommit() {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgWait() {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Keeps the compiler from moving accesses of accumulator registers across wgmma waits.
template <int R>
__device__ __forceinline__ void fenceRegs(int (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(d[i])::"memory");
}
// The same for the f16 wgmma's [N/8][4] float accumulators.
template <int R>
__device__ __forceinline__ void fenceRegs(float (&d)[R][4]) {
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}
// Generic-proxy shared-memory stores made visible to the async proxy (wgmma operand reads).
__device__ __forceinline__ void fenceProxyAsync() {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
template <int R>
__device__ __forceinline__ void setMaxRegsInc() {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
#endif
}
template <int R>
__device__ __forceinline__ void setMaxRegsDec() {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
#endif
}

// ---- generated wgmma wrappers (s8 x s8 -> s32, K-major A and B) ----
// D[64 x 256] (s32) (+)= A[64 x 32] (s8, smem desc) * B[256 x 32]^T (s8, smem desc)
__device__ __forceinline__ void wgmmaSS256(int (&d)[128], uint64_t da, uint64_t db, int scaleD) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7])
        , "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15])
        , "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23])
        , "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
        , "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39])
        , "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47])
        , "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55])
        , "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
        , "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71])
        , "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79])
        , "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87])
        , "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95])
        , "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103])
        , "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111])
        , "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119])
        , "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])
      : "l"(da), "l"(db), "r"(scaleD));
#endif
}

// D[64 x 128] (s32) (+)= A[64 x 32] (s8, smem desc) * B[128 x 32]^T (s8, smem desc)
__device__ __forceinline__ void wgmmaSS128(int (&d)[64], uint64_t da, uint64_t db, int scaleD) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7])
        , "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15])
        , "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23])
        , "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
        , "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39])
        , "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47])
        , "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55])
        , "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "l"(da), "l"(db), "r"(scaleD));
#endif
}

// D[64 x 128] (s32) (+)= A[64 x 32] (s8, registers a[4]) * B[128 x 32]^T (s8, smem desc)
__device__ __forceinline__ void wgmmaRS128(int (&d)[64], const uint32_t (&a)[4], uint64_t db, int scaleD) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, {%64, %65, %66, %67}, %68, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7])
        , "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15])
        , "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23])
        , "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
        , "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39])
        , "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47])
        , "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55])
        , "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scaleD));
#endif
}

// D[64 x 96] (s32) (+)= A[64 x 32] (s8, smem desc) * B[96 x 32]^T (s8, smem desc)
__device__ __forceinline__ void wgmmaSS96(int (&d)[48], uint64_t da, uint64_t db, int scaleD) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n96k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
      "}, %48, %49, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7])
        , "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15])
        , "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23])
        , "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
        , "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39])
        , "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47])
      : "l"(da), "l"(db), "r"(scaleD));
#endif
}

// D[64 x 64] (s32) (+)= A[64 x 32] (s8, smem desc) * B[64 x 32]^T (s8, smem desc)
__device__ __forceinline__ void wgmmaSS64(int (&d)[32], uint64_t da, uint64_t db, int scaleD) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7])
        , "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15])
        , "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23])
        , "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
      : "l"(da), "l"(db), "r"(scaleD));
#endif
}

// D[64 x 32] (s32) (+)= A[64 x 32] (s8, smem desc) * B[32 x 32]^T (s8, smem desc)
__device__ __forceinline__ void wgmmaSS32(int (&d)[16], uint64_t da, uint64_t db, int scaleD) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
      "}, %16, %17, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7])
        , "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15])
      : "l"(da), "l"(db), "r"(scaleD));
#endif
}

// D[64 x 64] (s32) (+)= A[64 x 32] (s8, registers a[4]) * B[64 x 32]^T (s8, smem desc)
__device__ __forceinline__ void wgmmaRS64(int (&d)[32], const uint32_t (&a)[4], uint64_t db, int scaleD) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, {%32, %33, %34, %35}, %36, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7])
        , "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15])
        , "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23])
        , "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scaleD));
#endif
}

// ---- generated wgmma wrappers (f16 x f16 -> f32) ----
// Accumulators as [N/8][4]: d[j][e] = row 16 w + lane / 4 + 8 (e >= 2), column 8 j + 2 (lane % 4)
// + (e & 1) of the warpgroup's 64 x N tile (warp w): the m16n8 C layout of mma.sync, per n8 block.
// D[64 x 64] (f32) (+)= A[64 x 16] (f16, smem desc, K-major) * B[64 x 16]^T (f16, smem desc, K-major)
__device__ __forceinline__ void wgmmaF16SS64(float (&d)[8][4], uint64_t da, uint64_t db, int scaleD) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3])
        , "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
        , "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3])
        , "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(da), "l"(db), "r"(scaleD));
#endif
}

// D[64 x 64] (f32) (+)= A[64 x 16] (f16, registers a[4]: the m16n8k16 A fragment of the warp's 16
// rows) * B[16 x 64] (f16, smem desc, MN-major: N contiguous, transposed by the hardware)
__device__ __forceinline__ void wgmmaF16RS64T(float (&d)[8][4], const uint32_t (&a)[4], uint64_t db, int scaleD) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3])
        , "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
        , "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3])
        , "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scaleD));
#endif
}

// D[64 x 128] (f32) (+)= A[64 x 16] (f16, registers a[4]: the m16n8k16 A fragment of the warp's 16
// rows) * B[16 x 128] (f16, smem desc, MN-major: N contiguous, transposed by the hardware)
__device__ __forceinline__ void wgmmaF16RS128T(float (&d)[16][4], const uint32_t (&a)[4], uint64_t db, int scaleD) {
#if defined(LOWBIT_WGMMA_OK)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3])
        , "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
        , "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3])
        , "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        , "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3])
        , "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3])
        , "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3])
        , "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scaleD));
#endif
}

// ---- host ---------------------------------------------------------------------------------------
// True on a compute capability 9.0 device when Kernel was compiled to sm_90a code (not a JIT of
// older PTX, where the bodies above are empty). Cached per kernel and device, as allowDynamicSmem.
template <auto Kernel>
inline bool sm90aCode() {
  static int cached[64] = {0};  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  int& c = cached[dev & 63];
  if (c == 0) {
    int major = 0, minor = 0;
    cudaFuncAttributes fa{};
    const bool ok =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
        major == 9 && minor == 0 && cudaFuncGetAttributes(&fa, Kernel) == cudaSuccess &&
        fa.ptxVersion >= 90 && fa.binaryVersion == 90;
    if (!ok) cudaGetLastError();
    c = ok ? 1 : 2;
  }
  return c == 1;
}

}  // namespace wg
}  // namespace lowbit
