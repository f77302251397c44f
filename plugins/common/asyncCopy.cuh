// PTX helpers shared by the kernels (device code, header only): cp.async global -> shared, a
// 16-byte shared load and named barriers. sm_80 and later (every architecture the library
// builds for).
#pragma once

#include <cstdint>

namespace lowbit {

__device__ __forceinline__ uint32_t smemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared (L2 only); srcBytes = 0 zero-fills the destination (no
// global read).
__device__ __forceinline__ void cpAsync16(void* dst, const void* src, int srcBytes = 16) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smemAddr(dst)), "l"(src),
               "r"(srcBytes));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// One 16-byte shared-memory load (the compiler may otherwise split a uint4 load whose bytes are
// consumed as halves into 16-bit loads).
__device__ __forceinline__ uint4 lds128(const void* p) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(smemAddr(p)));
  return v;
}

// Named barrier over `count` threads (a multiple of 32; ids 1..15, 0 is __syncthreads).
__device__ __forceinline__ void namedBarrier(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

}  // namespace lowbit
