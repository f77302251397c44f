// Read-only HBM streaming: the floor of any kernel that must read a given number of bytes once
// (benchmarks/bench_gemm.py sets the decode GEMMs against it). Not a model op; no plugin.
#pragma once

#include <stdint.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

// Reads bytes of src once (16-byte loads, no L1 allocation, `unroll` loads in flight per thread,
// grid = min(ctas_per_sm * SMs, sink_len) CTAs of 256 threads, launched as a programmatic
// dependent like the decode GEMMs) and folds them with XOR: sink[c] = XOR of the 32-bit words CTA
// c read, for c < grid (entries past the grid are not written). The XOR of sink[0 .. grid) is
// the XOR of all 32-bit words of src.
// Rules: src 16-byte aligned, bytes > 0 and a multiple of 16; sink uint32 [sink_len] with
//        sink_len >= 1 (the grid is capped at sink_len); ctas_per_sm 1..8; unroll 2, 4 or 8.
LOWBIT_API int lowbit_stream_read(const void* src, int64_t bytes, uint32_t* sink, int sink_len,
                                  int ctas_per_sm, int unroll, void* stream);

#ifdef __cplusplus
}
#endif
