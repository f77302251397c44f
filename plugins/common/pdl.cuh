// Programmatic dependent launch (PDL, sm_90+). A kernel launched with launchDependent() may be
// scheduled while the kernel before it on the stream is still running: its CTAs become resident
// once every CTA of that kernel has called pdlTrigger() (or exited), and pdlWait() blocks until
// that kernel has completed and its writes are visible. The dependent must call pdlWait() before
// it reads anything the previous kernel wrote. What it saves is part of the launch gap between
// two short kernels (the decode merge: ~0.3 us per batch-1 step on the H100). Works under stream
// capture (CUDA graphs, TensorRT enqueue). On sm_80/89 builds both device calls compile to
// nothing and on devices below compute capability 9 the launch is an ordinary one.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "common/cudaCheck.h"

namespace lowbit {

__device__ __forceinline__ void pdlTrigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::);
#endif
}

__device__ __forceinline__ void pdlWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Compute capability major of the current device (0 if the runtime cannot tell: no PDL).
inline int computeCapabilityMajor() {
  return deviceAttribute<cudaDevAttrComputeCapabilityMajor>(0);
}

// kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent of the stream's
// previous kernel (where the device supports it). Returns a LOWBIT status.
template <class... KArgs, class... Args>
inline int launchDependent(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                           cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = computeCapabilityMajor() >= 9 ? 1 : 0;
  return cudaStatus(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace lowbit
