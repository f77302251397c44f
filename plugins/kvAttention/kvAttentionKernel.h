// Paged INT4 KV cache: fused RoPE + quantize-append, and attention over the cache (decode:
// split-K flash-decoding with a merge; prefill: causal, a chunk over the quantized past and
// itself). Layout, numbers and semantics: docs/engine-io.md (the contract) and this folder's
// README.md; torch reference: python/lowbit/kvcache.py. C ABI: no torch, no TensorRT.
#pragma once

#include <stddef.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lowbitKv4Layout {
  int num_heads, num_kv_heads, head_size, tokens_per_block, k_group_size, v_group_size;
  int sliding_window;       // 0 = none
  int num_blocks;           // NB of the pool
  int max_blocks_per_seq;   // MB = block_table row stride; MB * tpb bounds every position + 1
} lowbitKv4Layout;

// Supported by the kernels (else LOWBIT_ERR_UNSUPPORTED / _DIVISIBILITY): head_size 64 or 128;
// num_heads % num_kv_heads == 0; k/v group sizes multiples of 8 that divide head_size;
// tokens_per_block a power of two >= 8; codes, params, qkv, q, out 16-byte aligned.
// Decode (T == B) needs exactly one token per sequence (seq_offsets = 0..B; the decode kernels
// take token b as sequence b and do not read it).

// codes/params: THIS layer's slab of the pool (layer l starts at codes + l*NB*2*nkv*tpb*d/2 bytes,
// params + l*NB*nkv*tpb*P halves).
// RoPE q and k (fp32, rounded to fp16), quantize k and v into their slots, write q.
LOWBIT_API int lowbit_kv4_rope_append(const void* qkv /*fp16 [T,(nh+2nkv)d]*/,
                                      const int* positions /*[T]*/,
                                      const int* seq_offsets /*[B+1]*/, int T, int B,
                                      const int* block_table /*[B,MB]*/,
                                      const float* inv_freq /*[d/2]*/,
                                      const lowbitKv4Layout* layout, void* codes, void* params,
                                      void* q_out /*fp16 [T, nh, d]*/, void* stream);

// Bytes of scratch lowbit_kv4_attention needs (0 for prefill, T != B); depends only on its
// arguments (not on the device). For decode (T == B) it covers every decode batch <= B.
LOWBIT_API size_t lowbit_kv4_attention_workspace(int T, int B, const lowbitKv4Layout* layout);

// out[t, h*d:(h+1)*d] = softmax(q[t,h] . K^ / sqrt(d)) V^ over positions [0, p_t] (and
// > p_t - sliding_window) of t's sequence, K^/V^ read from the cache. T == B: decode path;
// else the prefill path. workspace: >= lowbit_kv4_attention_workspace(T, B, layout) bytes
// (may be null when that is 0).
LOWBIT_API int lowbit_kv4_attention(const void* q /*fp16 [T,nh,d]*/, const int* positions,
                                    const int* seq_offsets, int T, int B,
                                    const int* block_table, const lowbitKv4Layout* layout,
                                    const void* codes, const void* params,
                                    void* out /*fp16 [T, nh*d]*/, void* workspace,
                                    size_t workspace_bytes, void* stream);

// lowbit_kv4_rope_append (q into q_buf) then lowbit_kv4_attention on the same stream, both
// argument sets checked before anything is launched; the result equals the two calls'. Prefill
// on sm_90a launches the attention kernel as a programmatic dependent of the append kernel: its
// CTAs start while the append drains and read positions, seq_offsets and block_table (which the
// append does not write) before waiting for it (the wait covers q, codes and params).
LOWBIT_API int lowbit_kv4_rope_append_attention(
    const void* qkv /*fp16 [T,(nh+2nkv)d]*/, const int* positions, const int* seq_offsets, int T,
    int B, const int* block_table, const float* inv_freq, const lowbitKv4Layout* layout,
    void* codes, void* params, void* q_buf /*fp16 [T, nh, d]*/, void* out /*fp16 [T, nh*d]*/,
    void* workspace, size_t workspace_bytes, void* stream);

#ifdef __cplusplus
}
#endif
