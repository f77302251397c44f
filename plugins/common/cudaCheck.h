// CUDA helpers shared by the launchers: error capture into status codes, alignment checks,
// one-time opt-in to large dynamic shared memory. Nothing scheme- or model-specific.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status.h"

namespace lowbit {

extern thread_local const char* tLastCudaError;

// Converts a CUDA error into LOWBIT_ERR_CUDA and remembers its message for lowbit_last_cuda_error.
inline int cudaStatus(cudaError_t e) {
  if (e == cudaSuccess) return LOWBIT_OK;
  tLastCudaError = cudaGetErrorString(e);
  return LOWBIT_ERR_CUDA;
}

// After a <<<>>> launch: configuration errors show up here (not sticky errors of earlier work).
inline int launchStatus() { return cudaStatus(cudaGetLastError()); }

// Attribute Attr of the current device, cached per device; `fallback` if the runtime cannot tell.
template <cudaDeviceAttr Attr>
inline int deviceAttribute(int fallback) {
  static int cached[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return fallback;
  int& c = cached[dev & 63];
  if (c == 0 && cudaDeviceGetAttribute(&c, Attr, dev) != cudaSuccess) c = fallback;
  return c;
}

// SMs of the current device (132, the H100's, if the runtime cannot tell).
inline int multiprocessorCount() { return deviceAttribute<cudaDevAttrMultiProcessorCount>(132); }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Kernels with more than 48 KiB of dynamic shared memory must opt in, per kernel and device.
// Templated on the kernel itself (not its type: kernels of one signature share a type), so each
// kernel remembers the largest size it was opened to. The attribute is a property of the
// function, not a stream operation, so this is legal during CUDA graph capture. 64 devices max.
template <auto Kernel>
inline int allowDynamicSmem(int bytes) {
  if (bytes <= 48 * 1024) return LOWBIT_OK;
  static int opened[64] = {0};
  int dev = 0;
  int st = cudaStatus(cudaGetDevice(&dev));
  if (st != LOWBIT_OK) return st;
  int& o = opened[dev & 63];
  if (bytes <= o) return LOWBIT_OK;
  st = cudaStatus(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  if (st == LOWBIT_OK) o = bytes;
  return st;
}

}  // namespace lowbit
