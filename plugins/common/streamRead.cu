// Read-only streaming kernel: a measured floor for weight-streaming kernels (streamRead.h).
// Grid-stride over 16-byte vectors; each thread keeps U loads in flight (the loop body issues U
// independent loads before using any), then XOR-folds them. The load is the gemv's weight load
// without its L2 hint (ldgOnce16: read-only, no L1 allocation). One CTA-wide XOR at the end
// and one plain store per CTA: no atomics, so nothing serializes at the end of the stream.
#include "common/streamRead.h"

#include <cuda_runtime.h>

#include "common/cudaCheck.h"
#include "common/ldg.cuh"
#include "common/pdl.cuh"

namespace lowbit {
namespace {

constexpr int kStreamThreads = 256;

template <int U>
__global__ void __launch_bounds__(kStreamThreads) streamReadKernel(const uint4* __restrict__ src,
                                                                   int64_t n16,
                                                                   uint32_t* __restrict__ sink) {
  pdlWait();  // as a dependent: src may be the previous kernel's output
  const int64_t stride = (int64_t)gridDim.x * kStreamThreads;
  int64_t i = (int64_t)blockIdx.x * kStreamThreads + threadIdx.x;
  uint32_t acc = 0;
  for (; i + (U - 1) * stride < n16; i += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = ldgOnce16(src + i + u * stride);
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n16; i += stride) {
    const uint4 v = ldgOnce16(src + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  __shared__ uint32_t warpAcc[kStreamThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc ^= __shfl_xor_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0) warpAcc[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t a = 0;
#pragma unroll
    for (int w = 0; w < kStreamThreads / 32; ++w) a ^= warpAcc[w];
    sink[blockIdx.x] = a;
  }
}

template <int U>
int launchStreamRead(const void* src, int64_t bytes, uint32_t* sink, int grid, cudaStream_t s) {
  return launchDependent(streamReadKernel<U>, dim3(grid), dim3(kStreamThreads), 0, s,
                         static_cast<const uint4*>(src), bytes / 16, sink);
}

}  // namespace
}  // namespace lowbit

extern "C" int lowbit_stream_read(const void* src, int64_t bytes, uint32_t* sink, int sink_len,
                                  int ctas_per_sm, int unroll, void* stream) {
  using namespace lowbit;
  if (!src || !sink) return LOWBIT_ERR_NULL_POINTER;
  if (bytes <= 0 || sink_len < 1 || ctas_per_sm < 1 || ctas_per_sm > 8) return LOWBIT_ERR_BAD_SHAPE;
  if (bytes % 16 != 0) return LOWBIT_ERR_DIVISIBILITY;
  if (!aligned16(src)) return LOWBIT_ERR_MISALIGNED;
  if (unroll != 2 && unroll != 4 && unroll != 8) return LOWBIT_ERR_UNSUPPORTED;
  auto s = static_cast<cudaStream_t>(stream);
  int grid = ctas_per_sm * multiprocessorCount();
  if (grid > sink_len) grid = sink_len;
  if (unroll == 8) return launchStreamRead<8>(src, bytes, sink, grid, s);
  if (unroll == 4) return launchStreamRead<4>(src, bytes, sink, grid, s);
  return launchStreamRead<2>(src, bytes, sink, grid, s);
}
