// Read-only global loads with cache hints, shared by the decode GEMM (igemmGemv.cuh) and the
// read floor it is benchmarked against (streamRead.cu).
#pragma once

#include <cstdint>

namespace lowbit {

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
// The same without the L2 hint: the read floor (streamRead.cu), a purely sequential stream,
// where the 256-byte fetches made no consistent difference across three full runs (log 32).
__device__ __forceinline__ uint4 ldgOnce16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
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

}  // namespace lowbit
