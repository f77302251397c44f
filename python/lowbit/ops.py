"""The native kernels as functions on CUDA torch tensors.

Every function launches on ``torch.cuda.current_stream()``, never synchronizes the host and
allocates nothing but its outputs (through torch, or none when ``out`` is given), so it can be
captured in a CUDA graph. Inputs are validated (device, dtype, shape, contiguity, divisibility)
with ValueErrors that say what was expected and what was found; the library is loaded at the
first call (lowbit.library), never at import.

Numeric contract: lowbit.reference (same names). Tensor formats: lowbit.reference docstring;
weight scales of the W4A4 GEMM in the kernel layout of lowbit.packing.pack_w4a4_scales.
"""

from __future__ import annotations

import torch

from lowbit import library
from lowbit.reference import AtomActivation

_DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1}  # plugins/quantize/quantizeKernel.h
# kernel choice of the GEMM launchers (plugins/common/igemmCore.cuh, ConfigId)
CONFIGS = {"auto": -1, "decode": 0, "mid": 1, "large": 2, "skinny": 3,
           "gemv": 4, "gemv_k16": 5, "gemv_k12": 6, "wgmma": 7, "wgmma_n128": 8,
           "wgmma_n64": 9, "wgmma_n32": 10, "wgmma_sk": 11,
           "wgmma_sk64x2": 12, "wgmma_sk64x3": 13, "wgmma_sk64x4": 14,
           "wgmma_sk32x2": 15, "wgmma_sk32x3": 16, "wgmma_sk32x4": 17,
           "wgmma_n96": 18, "wgmma_wide": 19}


def _check(t: torch.Tensor, name: str, dtype: torch.dtype | tuple, shape: tuple,
           device: torch.device | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, found {type(t).__name__}")
    if t.device.type != "cuda":
        raise ValueError(f"{name}: expected a CUDA tensor, found device {t.device}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected device {device} (like the first operand), "
                         f"found {t.device}")
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if t.dtype not in dtypes:
        raise ValueError(f"{name}: expected dtype {' or '.join(map(str, dtypes))}, found {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, found {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, found strides {t.stride()}")


def _rank(t: torch.Tensor, name: str, ndim: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != ndim:
        found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name}: expected a {ndim}-D tensor, found {found}")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None or t.numel() == 0 else t.data_ptr()


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _f16_out(out: torch.Tensor | None, name: str, shape: tuple, dev) -> torch.Tensor:
    """out checked (fp16, shape, device, contiguous), or a new fp16 tensor of that shape."""
    if out is None:
        return torch.empty(shape, dtype=torch.float16, device=dev)
    _check(out, name, torch.float16, shape, dev)
    return out


def _workspace(workspace: torch.Tensor | None, need: int, dev, *, at_least: bool = True):
    """(tensor, bytes) of a kernel's scratch: the given tensor, checked (contiguous, on dev, and
    >= need bytes when at_least), or a new one of need bytes when none was given and need > 0;
    (None, 0) when neither."""
    if workspace is None and need:
        workspace = torch.empty(need, dtype=torch.uint8, device=dev)
    if workspace is None:
        return None, 0
    if workspace.device != dev or not workspace.is_contiguous():
        raise ValueError(f"workspace: expected a contiguous tensor on {dev}, found "
                         f"{workspace.device} with strides {workspace.stride()}")
    ws_bytes = workspace.numel() * workspace.element_size()
    if at_least and ws_bytes < need:
        raise ValueError(f"workspace: expected >= {need} bytes, found {ws_bytes}")
    return workspace, ws_bytes


def _config(config: str) -> int:
    if config not in CONFIGS:
        raise ValueError(f"config: expected one of {sorted(CONFIGS)}, found {config!r}")
    return CONFIGS[config]


def _on_device(device: torch.device):
    # The launch goes to the current device; switch only when needed (the guard costs host time).
    if device.index == torch.cuda.current_device():
        return _NullCtx()
    return torch.cuda.device(device)


class _NullCtx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def w4a4_gemm(
    x4: torch.Tensor, xs4: torch.Tensor, x8: torch.Tensor, xs8: torch.Tensor,
    w4: torch.Tensor, ws4t: torch.Tensor, w8: torch.Tensor, ws8: torch.Tensor,
    group_size: int = 128, *, out: torch.Tensor | None = None, config: str = "auto",
    weights_constant: bool = False, workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """Atom W4A4 mixed-precision group GEMM (lowbit.reference.atom_gemm, rounded to fp16).

    x4 int8 [M, K_n/2] packed int4; xs4 fp16 [M, K_n/G]; x8 int8 [M, K_o]; xs8 fp16 [M];
    w4 int8 [N, K_n/2]; ws4t fp16 [K_n/G, N] (lowbit.packing.pack_w4a4_scales);
    w8 int8 [N, K_o]; ws8 fp16 [N].  Rules: K_n % 128 == 0, K_o % 16 == 0, N % 8 == 0,
    G in (64, 128). out: optional fp16 [M, N]. config: "auto", or force a kernel:
    "gemv" (M <= 64, G = 128; "gemv_k16" / "gemv_k12" force its warp count), "skinny"
    (M <= 16, G = 128), "decode" (16 x 32 tiles), "mid" (64 x 64), "large" (128 x 128).
    weights_constant: promise that w4, ws4t, w8, ws8 were not written by the CUDA kernel queued
    right before this call (true of loaded weights); the decode kernel then reads its first
    weights while that kernel (the activations' quantize) still runs (LOWBIT_GEMM_CONST_WEIGHTS).
    workspace: optional contiguous tensor of >= w4a4_gemm_workspace(M, N, K_n, K_o, G) bytes for
    the Hopper prefill kernel ("wgmma_wide", auto where "wgmma" would run); allocated here when
    None and M > 64 (the decode kernels need none).
    returns fp16 [M, N].
    """
    for t, n in ((x4, "x4"), (xs4, "xs4"), (x8, "x8"), (w4, "w4"), (ws4t, "ws4t"), (w8, "w8")):
        _rank(t, n, 2)
    m, kn2 = x4.shape
    n = w4.shape[0]
    kn, ko = 2 * kn2, x8.shape[1]
    if group_size not in (64, 128):
        raise ValueError(f"group_size: expected 64 or 128, found {group_size}")
    if kn == 0 or kn % 128:
        raise ValueError(f"K_n = 2 * x4.shape[1] must be a positive multiple of 128, found {kn}")
    if ko % 16:
        raise ValueError(f"K_o = x8.shape[1] must be a multiple of 16, found {ko}")
    if n < 8 or n % 8:
        raise ValueError(f"N = w4.shape[0] must be a multiple of 8 (>= 8), found {n}")
    dev = x4.device
    ng = kn // group_size
    _check(x4, "x4", torch.int8, (m, kn // 2), dev)
    _check(xs4, "xs4", torch.float16, (m, ng), dev)
    _check(x8, "x8", torch.int8, (m, ko), dev)
    _check(xs8, "xs8", torch.float16, (m,), dev)
    _check(w4, "w4", torch.int8, (n, kn // 2), dev)
    _check(ws4t, "ws4t", torch.float16, (ng, n), dev)
    _check(w8, "w8", torch.int8, (n, ko), dev)
    _check(ws8, "ws8", torch.float16, (n,), dev)
    out = _f16_out(out, "out", (m, n), dev)
    cfg = _config(config)
    if m == 0:
        return out
    lib = library.load()
    ws_bytes = 0
    if workspace is not None or m > 64 or config == "wgmma_wide":
        # a smaller one is passed on as it is: auto then runs config 7, the forced one refuses it
        workspace, ws_bytes = _workspace(workspace, w4a4_gemm_workspace(m, n, kn, ko, group_size),
                                         dev, at_least=False)
    with _on_device(dev):
        st = lib.lowbit_w4a4_gemm(
            _ptr(x4), _ptr(xs4), _ptr(x8), _ptr(xs8), _ptr(w4), _ptr(ws4t), _ptr(w8), _ptr(ws8),
            _ptr(out), m, n, kn, ko, group_size, cfg,
            library.GEMM_CONST_WEIGHTS if weights_constant else 0, _ptr(workspace), ws_bytes,
            _stream(dev))
    library.check(st, "lowbit_w4a4_gemm")
    return out


def w4a4_gemm_workspace(m: int, n: int, kn: int, ko: int, group_size: int = 128) -> int:
    """Bytes of workspace w4a4_gemm's Hopper prefill kernel takes for these sizes (0: none;
    lowbit_w4a4_gemm_workspace_size): M (K_n + K_o) int8 activations + K_n/128 x M fp32 scales."""
    return int(library.load().lowbit_w4a4_gemm_workspace_size(m, n, kn, ko, group_size))


def w8a8_gemm(
    xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor,
    *, out: torch.Tensor | None = None, config: str = "auto",
) -> torch.Tensor:
    """SmoothQuant W8A8 GEMM (lowbit.reference.w8a8_gemm, rounded to fp16).

    xq int8 [M, K]; xs fp32 [M] (per token) or [1] (static); wq int8 [N, K]; ws fp32 [N].
    Rules: K % 16 == 0, N % 8 == 0. out: optional fp16 [M, N]. returns fp16 [M, N].
    """
    _rank(xq, "xq", 2)
    _rank(wq, "wq", 2)
    m, k = xq.shape
    n = wq.shape[0]
    if k == 0 or k % 16:
        raise ValueError(f"K = xq.shape[1] must be a positive multiple of 16, found {k}")
    if n < 8 or n % 8:
        raise ValueError(f"N = wq.shape[0] must be a multiple of 8 (>= 8), found {n}")
    dev = xq.device
    _check(xq, "xq", torch.int8, (m, k), dev)
    per_token = not (xs.dim() == 1 and xs.shape[0] == 1 and m != 1)
    _check(xs, "xs", torch.float32, (m,) if per_token else (1,), dev)
    _check(wq, "wq", torch.int8, (n, k), dev)
    _check(ws, "ws", torch.float32, (n,), dev)
    out = _f16_out(out, "out", (m, n), dev)
    cfg = _config(config)
    if m == 0:
        return out
    lib = library.load()
    with _on_device(dev):
        st = lib.lowbit_w8a8_gemm(_ptr(xq), _ptr(xs), int(per_token), _ptr(wq), _ptr(ws),
                                  _ptr(out), m, n, k, cfg, _stream(dev))
    library.check(st, "lowbit_w8a8_gemm")
    return out


def stream_read(src: torch.Tensor, *, ctas_per_sm: int = 2, unroll: int = 4,
                sink: torch.Tensor | None = None) -> torch.Tensor:
    """Reads every byte of src once and nothing else (lowbit_stream_read): the floor of a kernel
    that streams these bytes, for benchmarks (bench_gemm's decode floor). Not a model op.

    src: contiguous CUDA tensor, 16-byte aligned, a multiple of 16 bytes. Runs
    min(ctas_per_sm * SMs, sink.numel()) CTAs (ctas_per_sm 1..8, unroll 2 / 4 / 8 loads in flight
    per thread). Returns sink int32 [CTAs]: XOR of the 32-bit words each CTA read (their XOR is
    the XOR of all words of src).
    """
    if not isinstance(src, torch.Tensor) or src.device.type != "cuda" or not src.is_contiguous():
        found = (f"{src.device}, strides {src.stride()}" if isinstance(src, torch.Tensor)
                 else type(src).__name__)
        raise ValueError(f"src: expected a contiguous CUDA tensor, found {found}")
    nbytes = src.numel() * src.element_size()
    if nbytes == 0 or nbytes % 16 or src.data_ptr() % 16:
        raise ValueError(f"src: expected a 16-byte aligned tensor of a positive multiple of 16 "
                         f"bytes, found {nbytes} bytes at address {src.data_ptr():#x}")
    if not 1 <= ctas_per_sm <= 8:
        raise ValueError(f"ctas_per_sm: expected 1..8, found {ctas_per_sm}")
    if unroll not in (2, 4, 8):
        raise ValueError(f"unroll: expected 2, 4 or 8, found {unroll}")
    dev = src.device
    grid = ctas_per_sm * torch.cuda.get_device_properties(dev).multi_processor_count
    if sink is None:
        sink = torch.empty(grid, dtype=torch.int32, device=dev)
    _check(sink, "sink", torch.int32, (sink.numel(),), dev)
    if sink.numel() == 0:
        raise ValueError("sink: expected at least one element, found 0")
    lib = library.load()
    with _on_device(dev):
        st = lib.lowbit_stream_read(_ptr(src), nbytes, _ptr(sink), sink.numel(), ctas_per_sm,
                                    unroll, _stream(dev))
    library.check(st, "lowbit_stream_read")
    return sink[:grid]


def _atom_quantize(x, gamma, perm, eps, n_outliers, group_size, clip, out, what):
    _rank(x, "x", 2)
    m, k = x.shape
    dev = x.device
    _check(x, "x", tuple(_DTYPE_CODE), (m, k))
    if group_size not in (64, 128):
        raise ValueError(f"group_size: expected 64 or 128, found {group_size}")
    kn = k - n_outliers
    if not 0 <= n_outliers < k or n_outliers % 16:
        raise ValueError(f"n_outliers: expected a multiple of 16 in [0, {k}), found {n_outliers}")
    if kn % 128:
        raise ValueError(f"normal channels K - n_outliers = {kn} must be a multiple of 128")
    if k % 8 or k > 32768:
        raise ValueError(f"K = x.shape[1] must be a multiple of 8 and <= 32768, found {k}")
    if gamma is not None:
        _check(gamma, "gamma", x.dtype, (k,), dev)
    if perm is not None:
        _check(perm, "perm", torch.int32, (k,), dev)
    if out is None:
        out = AtomActivation(
            torch.empty((m, kn // 2), dtype=torch.int8, device=dev),
            torch.empty((m, kn // group_size), dtype=torch.float16, device=dev),
            torch.empty((m, n_outliers), dtype=torch.int8, device=dev),
            torch.empty((m,), dtype=torch.float16, device=dev),
        )
    else:
        out = AtomActivation(*out)
        _check(out.x4, "out.x4", torch.int8, (m, kn // 2), dev)
        _check(out.xs4, "out.xs4", torch.float16, (m, kn // group_size), dev)
        _check(out.x8, "out.x8", torch.int8, (m, n_outliers), dev)
        _check(out.xs8, "out.xs8", torch.float16, (m,), dev)
    if m == 0:
        return out
    lib = library.load()
    with _on_device(dev):
        st = lib.lowbit_atom_quantize(
            _ptr(x), _DTYPE_CODE[x.dtype], _ptr(gamma), _ptr(perm), float(eps), m, k,
            n_outliers, group_size, float(clip), _ptr(out.x4), _ptr(out.xs4), _ptr(out.x8),
            _ptr(out.xs8), _stream(dev))
    library.check(st, what)
    return out


def atom_rmsnorm_quantize(
    x: torch.Tensor, gamma: torch.Tensor, perm: torch.Tensor | None, eps: float,
    n_outliers: int, group_size: int, clip: float, *, out: AtomActivation | None = None,
) -> AtomActivation:
    """Fused RMSNorm + Atom reorder + per-token quantize (lowbit.reference.atom_rmsnorm_quantize).

    x fp16/bf16 [M, K] (original channel order); gamma [K], same dtype, already permuted;
    perm int32 [K] or None (identity). Rules: n_outliers % 16 == 0, (K - n_outliers) % 128 == 0.
    returns AtomActivation(x4 int8 [M, K_n/2], xs4 fp16 [M, K_n/G], x8 int8 [M, K_o], xs8 [M]).
    """
    if gamma is None:
        raise ValueError("gamma: expected a [K] tensor, found None")
    return _atom_quantize(x, gamma, perm, eps, n_outliers, group_size, clip, out,
                          "lowbit_atom_quantize (rmsnorm)")


def atom_reorder_quantize(
    x: torch.Tensor, perm: torch.Tensor | None, n_outliers: int, group_size: int, clip: float,
    *, out: AtomActivation | None = None,
) -> AtomActivation:
    """Standalone reorder + quantize (lowbit.reference.atom_reorder_quantize); perm None = id.

    x fp16/bf16 [M, K]; perm int32 [K] or None. Outputs as atom_rmsnorm_quantize.
    """
    return _atom_quantize(x, None, perm, 0.0, n_outliers, group_size, clip, out,
                          "lowbit_atom_quantize (reorder)")


def rmsnorm_quantize_int8(
    x: torch.Tensor, gamma: torch.Tensor | None, eps: float,
    static_scale: torch.Tensor | None = None,
    *, out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused RMSNorm + int8 quantize (lowbit.reference.rmsnorm_quantize_int8); gamma None: no
    norm (lowbit.reference.quantize_per_token_int8 / quantize_static_int8).

    x fp16/bf16 [M, K] (K % 8 == 0); gamma [K] same dtype or None; static_scale fp32 [1] or None.
    returns (q int8 [M, K], scale fp32 [M]; or static_scale itself, [1]).
    out: optional (q, xs) to write into (xs ignored, may be None, for a static scale).
    """
    _rank(x, "x", 2)
    m, k = x.shape
    dev = x.device
    _check(x, "x", tuple(_DTYPE_CODE), (m, k))
    if k % 8 or k > 32768:
        raise ValueError(f"K = x.shape[1] must be a multiple of 8 and <= 32768, found {k}")
    if gamma is not None:
        _check(gamma, "gamma", x.dtype, (k,), dev)
    if static_scale is not None:
        _check(static_scale.reshape(-1) if static_scale.dim() == 0 else static_scale,
               "static_scale", torch.float32, (1,), dev)
        static_scale = static_scale.reshape(1)
    if out is None:
        q = torch.empty((m, k), dtype=torch.int8, device=dev)
        xs = None if static_scale is not None else torch.empty((m,), dtype=torch.float32,
                                                                device=dev)
    else:
        q, xs = out
        _check(q, "out[0]", torch.int8, (m, k), dev)
        if static_scale is None:
            _check(xs, "out[1]", torch.float32, (m,), dev)
    if m == 0:
        return q, (static_scale if static_scale is not None else xs)
    lib = library.load()
    with _on_device(dev):
        st = lib.lowbit_rmsnorm_quantize_int8(
            _ptr(x), _DTYPE_CODE[x.dtype], _ptr(gamma), float(eps), _ptr(static_scale), m, k,
            _ptr(q), _ptr(xs), _stream(dev))
    library.check(st, "lowbit_rmsnorm_quantize_int8")
    return q, (static_scale if static_scale is not None else xs)


# ---- paged INT4 KV cache (plugins/kvAttention; reference lowbit.kvcache) ----------------------


def _kv4_layout(layout, codes: torch.Tensor, block_table: torch.Tensor):
    """ctypes lowbitKv4Layout of a lowbit.kvcache.KvLayout and the pool / block table shapes."""
    return library.Kv4Layout(layout.num_heads, layout.num_kv_heads, layout.head_size,
                             layout.tokens_per_block, layout.k_group_size, layout.v_group_size,
                             layout.sliding_window, codes.shape[1], block_table.shape[1])


def _kv4_check(layout, positions, seq_offsets, block_table, codes, params, layer, t, dev):
    lo = layout
    if lo.head_size not in (64, 128):
        raise ValueError(f"head_size: the kernels support 64 and 128, found {lo.head_size}")
    for name, g in (("k_group_size", lo.k_group_size), ("v_group_size", lo.v_group_size)):
        if g % 8:
            raise ValueError(f"{name}: the kernels need a multiple of 8, found {g}")
    tpb = lo.tokens_per_block
    if tpb < 8 or tpb & (tpb - 1):
        raise ValueError(f"tokens_per_block: the kernels need a power of two >= 8, found {tpb}")
    _rank(codes, "codes", 6)
    _rank(block_table, "block_table", 2)
    _rank(seq_offsets, "seq_offsets", 1)
    nl, nb = codes.shape[0], codes.shape[1]
    nkv, d = lo.num_kv_heads, lo.head_size
    _check(codes, "codes", torch.uint8, (nl, nb, 2, nkv, tpb, d // 2), dev)
    _check(params, "params", torch.float16, (nl, nb, nkv, tpb, lo.params_per_token), dev)
    if not 0 <= layer < nl:
        raise ValueError(f"layer: expected 0 <= layer < {nl}, found {layer}")
    b = seq_offsets.shape[0] - 1
    if b < 1:
        raise ValueError(f"seq_offsets: expected [B+1] with B >= 1, found "
                         f"{tuple(seq_offsets.shape)}")
    _check(positions, "positions", torch.int32, (t,), dev)
    _check(seq_offsets, "seq_offsets", torch.int32, (b + 1,), dev)
    _check(block_table, "block_table", torch.int32, (b, block_table.shape[1]), dev)
    return b


def _kv4_append_check(qkv, positions, seq_offsets, block_table, inv_freq, codes, params, layer,
                      layout) -> tuple[int, torch.device, int]:
    """Checks the operands of kv4_rope_append; returns (T, device, B)."""
    _rank(qkv, "qkv", 2)
    t, dev = qkv.shape[0], qkv.device
    _check(qkv, "qkv", torch.float16, (t, layout.qkv_width))
    b = _kv4_check(layout, positions, seq_offsets, block_table, codes, params, layer, t, dev)
    _check(inv_freq, "inv_freq", torch.float32, (layout.head_size // 2,), dev)
    return t, dev, b


def kv4_rope_append(
    qkv: torch.Tensor, positions: torch.Tensor, seq_offsets: torch.Tensor,
    block_table: torch.Tensor, inv_freq: torch.Tensor, codes: torch.Tensor, params: torch.Tensor,
    layer: int, layout, *, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """RoPE + quantize-append into the INT4 pool (lowbit.kvcache.rope_append), in place.

    qkv fp16 [T, (nh + 2 nkv) d]; positions, seq_offsets [B+1], block_table [B, MB] int32;
    inv_freq fp32 [d/2]; codes uint8 [L, NB, 2, nkv, tpb, d/2], params fp16 [L, NB, nkv, tpb, P]
    (lowbit.kvcache.new_pool); layout a lowbit.kvcache.KvLayout. Positions must lie in
    [0, MB * tpb) and their blocks in [0, NB) (not checked on the device: out-of-range tokens are
    skipped). out: optional fp16 [T, nh, d]. returns q fp16 [T, nh, d].
    """
    t, dev, b = _kv4_append_check(qkv, positions, seq_offsets, block_table, inv_freq, codes,
                                  params, layer, layout)
    out = _f16_out(out, "out", (t, layout.num_heads, layout.head_size), dev)
    if t == 0:
        return out
    lib = library.load()
    lay = _kv4_layout(layout, codes, block_table)
    import ctypes

    with _on_device(dev):
        st = lib.lowbit_kv4_rope_append(
            _ptr(qkv), _ptr(positions), _ptr(seq_offsets), t, b, _ptr(block_table),
            _ptr(inv_freq), ctypes.byref(lay), codes[layer].data_ptr(), params[layer].data_ptr(),
            _ptr(out), _stream(dev))
    library.check(st, "lowbit_kv4_rope_append")
    return out


def kv4_attention_workspace(t: int, b: int, layout, num_blocks: int, max_blocks: int) -> int:
    """Bytes of scratch kv4_attention needs for T tokens of B sequences (0 for prefill)."""
    import ctypes

    lay = library.Kv4Layout(layout.num_heads, layout.num_kv_heads, layout.head_size,
                            layout.tokens_per_block, layout.k_group_size, layout.v_group_size,
                            layout.sliding_window, num_blocks, max_blocks)
    return int(library.load().lowbit_kv4_attention_workspace(t, b, ctypes.byref(lay)))


def kv4_attention(
    q: torch.Tensor, positions: torch.Tensor, seq_offsets: torch.Tensor,
    block_table: torch.Tensor, codes: torch.Tensor, params: torch.Tensor, layer: int, layout,
    *, out: torch.Tensor | None = None, workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention over the INT4 pool (lowbit.kvcache.attention; K/V dequantized to fp16 in the
    kernel, see plugins/kvAttention/README.md). T == B: decode (one token per sequence), else
    prefill. q fp16 [T, nh, d]; other operands as kv4_rope_append. out: optional fp16
    [T, nh * d]; workspace: optional uint8 tensor of >= kv4_attention_workspace(...) bytes
    (allocated here when needed and not given). returns fp16 [T, nh * d].
    """
    _rank(q, "q", 3)
    t, dev = q.shape[0], q.device
    _check(q, "q", torch.float16, (t, layout.num_heads, layout.head_size))
    b = _kv4_check(layout, positions, seq_offsets, block_table, codes, params, layer, t, dev)
    out = _f16_out(out, "out", (t, layout.num_heads * layout.head_size), dev)
    if t == 0:
        return out
    import ctypes

    lib, lay, workspace, ws_bytes = _kv4_attention_setup(layout, codes, block_table, t, b,
                                                         workspace, dev)
    with _on_device(dev):
        st = lib.lowbit_kv4_attention(
            _ptr(q), _ptr(positions), _ptr(seq_offsets), t, b, _ptr(block_table),
            ctypes.byref(lay), codes[layer].data_ptr(), params[layer].data_ptr(), _ptr(out),
            _ptr(workspace), ws_bytes, _stream(dev))
    library.check(st, "lowbit_kv4_attention")
    return out


def _kv4_attention_setup(layout, codes, block_table, t: int, b: int, workspace, dev):
    """(library, lowbitKv4Layout, workspace, bytes) for the attention of t tokens of b sequences:
    the workspace is the given tensor, checked, or one allocated here when the kernels need
    scratch and none was given."""
    import ctypes

    lib = library.load()
    lay = _kv4_layout(layout, codes, block_table)
    need = int(lib.lowbit_kv4_attention_workspace(t, b, ctypes.byref(lay)))
    workspace, ws_bytes = _workspace(workspace, need, dev)
    return lib, lay, workspace, ws_bytes


def kv4_rope_append_attention(
    qkv: torch.Tensor, positions: torch.Tensor, seq_offsets: torch.Tensor,
    block_table: torch.Tensor, inv_freq: torch.Tensor, codes: torch.Tensor, params: torch.Tensor,
    layer: int, layout, *, q_out: torch.Tensor | None = None, out: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """kv4_rope_append then kv4_attention in one call (one C entry; the same results): operands
    as those two; q_out: optional fp16 [T, nh, d] for q (scratch otherwise). On sm_90a the
    prefill attention starts while the append drains (plugins/kvAttention/README.md).
    returns fp16 [T, nh * d]."""
    t, dev, b = _kv4_append_check(qkv, positions, seq_offsets, block_table, inv_freq, codes,
                                  params, layer, layout)
    q_out = _f16_out(q_out, "q_out", (t, layout.num_heads, layout.head_size), dev)
    out = _f16_out(out, "out", (t, layout.num_heads * layout.head_size), dev)
    if t == 0:
        return out
    import ctypes

    lib, lay, workspace, ws_bytes = _kv4_attention_setup(layout, codes, block_table, t, b,
                                                         workspace, dev)
    with _on_device(dev):
        st = lib.lowbit_kv4_rope_append_attention(
            _ptr(qkv), _ptr(positions), _ptr(seq_offsets), t, b, _ptr(block_table),
            _ptr(inv_freq), ctypes.byref(lay), codes[layer].data_ptr(), params[layer].data_ptr(),
            _ptr(q_out), _ptr(out), _ptr(workspace), ws_bytes, _stream(dev))
    library.check(st, "lowbit_kv4_rope_append_attention")
    return out
