"""Exact execution of quantized checkpoints in the reference runtime (registered into the
runtime's factories). Integer semantics are those of lowbit.reference, which the kernels share:
activations quantized per token (or per tensor), integer products summed exactly, scales
applied per token, channel and group; the KV cache stored quantized.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from builder.runtime import CACHE_FACTORIES, LINEAR_FACTORIES, Linear
from converters.errors import UserError
from converters.loader import rope_inv_freq
from converters.schemes import ATOM_ALGO, SQ_PER_TENSOR, SQ_PER_TOKEN
from lowbit import kvcache
from lowbit import reference as R
from lowbit.packing import unpack_int4


@functools.cache
def kernels_available() -> bool:
    """On CUDA, linears run on the native kernels (lowbit.ops) when the library loads, unless
    LOWBIT_USE_KERNELS=0; elsewhere, and for shapes the kernels refuse, on lowbit.reference."""
    if os.environ.get("LOWBIT_USE_KERNELS", "1") == "0" or not torch.cuda.is_available():
        return False
    from lowbit import library

    try:
        library.load()
    except Exception:  # no library built: the reference path still runs on the GPU
        return False
    return True


# The static input scale of each linear (TensorRT-LLM SmoothQuant names).
_SQ_INPUT_SCALE = {"attention.qkv": "input_layernorm.scale_to_int",
                   "mlp.fc": "post_layernorm.scale_to_int",
                   "mlp.gate": "post_layernorm.scale_to_int",
                   "attention.dense": "attention.quantization_scaling_factor",
                   "mlp.proj": "mlp.quantization_scaling_factor"}


class W8A8Linear:
    """SmoothQuant: y = dequant(int8(x / smoother) @ W_int8^T) + b.

    per token : xq, xs = quantize_per_token_int8(x);  y = acc * xs[m] * per_channel_scale[n]
    per tensor: s = 1 / scale_to_int; xq = clamp(round(x / s));
                y = acc * act_scale * per_channel_scale[n]  (TensorRT-LLM's meanings)
    """

    def __init__(self, t: dict[str, torch.Tensor], name: str, static: bool, device: Any,
                 dtype: torch.dtype):
        self.w = t[f"{name}.weight"].to(device)
        if self.w.dtype != torch.int8:
            raise UserError(f"{name}.weight: expected int8 for SmoothQuant, found {self.w.dtype}")
        self.ws = t[f"{name}.per_channel_scale"].float().reshape(-1).to(device)
        sm = t.get(f"{name}.smoother")
        self.smoother = None if sm is None else sm.float().reshape(-1).to(device)
        self.static = static
        if static:
            self.x_scale = (1.0 / t[_SQ_INPUT_SCALE[name]].float().reshape(1)).to(device)
            self.act_scale = t[f"{name}.act_scale"].float().reshape(1).to(device)
        b = t.get(f"{name}.bias")
        self.bias = None if b is None else b.float().to(device)
        self.dtype = dtype
        n, k = self.w.shape
        self.kernel = (torch.device(device).type == "cuda" and kernels_available()
                       and k % 16 == 0 and n % 8 == 0)
        self.w_float: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        if self.smoother is not None:
            h = h / self.smoother
        if self.static:
            xq, xs = R.quantize_static_int8(h, self.x_scale), self.act_scale
        else:
            xq, xs = R.quantize_per_token_int8(h)
        if self.kernel:
            from lowbit import ops

            y = ops.w8a8_gemm(xq.contiguous(), xs.float().contiguous(), self.w, self.ws).float()
        else:
            if self.w_float is None:  # widened once, on first use of the reference path
                self.w_float = self.w.float()
            y = R.w8a8_gemm(xq, xs, self.w, self.ws, self.w_float)
        if self.bias is not None:
            y = y + self.bias
        return y.to(self.dtype)


class AtomLinear:
    """Atom W4A4: (optional reorder) -> per-token INT4 groups + INT8 outliers -> group GEMM."""

    def __init__(self, t: dict[str, torch.Tensor], name: str, cfg: dict[str, Any], device: Any,
                 dtype: torch.dtype):
        self.weight = R.AtomWeight(
            t[f"{name}.weight"].to(device), t[f"{name}.weights_scaling_factor"].to(device),
            t[f"{name}.outlier_weight"].to(device), t[f"{name}.outlier_scaling_factor"].to(device))
        self.n_outliers = self.weight.w8.shape[1]
        self.group = int(cfg["group_size"])
        self.clip = float(cfg["act_clip"])
        perm = t.get(f"{name}.reorder_index")
        self.perm = None if perm is None else perm.to(device)
        b = t.get(f"{name}.bias")
        self.bias = None if b is None else b.float().to(device)
        self.dtype = dtype
        n, kn = self.weight.w4.shape[0], 2 * self.weight.w4.shape[1]
        self.kernel = (torch.device(device).type == "cuda" and kernels_available()
                       and kn > 0 and kn % 128 == 0 and self.n_outliers % 16 == 0
                       and n % 8 == 0 and self.group in (64, 128))
        self.codes: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.kernel:
            from lowbit.packing import pack_w4a4_scales

            self.ws4t = pack_w4a4_scales(self.weight.ws4)  # the kernel's scale layout, once

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel:
            from lowbit import ops

            a = ops.atom_reorder_quantize(x.half().contiguous(), self.perm, self.n_outliers,
                                          self.group, self.clip)
            w = self.weight
            # weights packed once at construction; the kernel right before is the quantize above
            y = ops.w4a4_gemm(*a, w.w4, self.ws4t, w.w8, w.ws8, self.group,
                              weights_constant=True).float()
        else:
            a = R.atom_reorder_quantize(x, self.perm, self.n_outliers, self.group, self.clip)
            if self.codes is None:  # widened once, on first use of the reference path
                self.codes = (unpack_int4(self.weight.w4).float(), self.weight.w8.float())
            y = R.atom_gemm(a, self.weight, self.group, self.codes)
        if self.bias is not None:
            y = y + self.bias
        return y.to(self.dtype)


def _sq_factory(static: bool):
    def make(t: dict[str, torch.Tensor], name: str, model: Any) -> Linear:
        return W8A8Linear(t, name, static, model.device, model.dtype)
    return make


def _atom_factory(t: dict[str, torch.Tensor], name: str, model: Any) -> Linear:
    if "atom" not in model.config:
        raise UserError("W4A4_ATOM checkpoint without the top-level 'atom' settings in "
                        "config.json")
    return AtomLinear(t, name, model.config["atom"], model.device, model.dtype)


LINEAR_FACTORIES[SQ_PER_TOKEN] = _sq_factory(False)
LINEAR_FACTORIES[SQ_PER_TENSOR] = _sq_factory(True)
LINEAR_FACTORIES[ATOM_ALGO] = _atom_factory


class QuantizedKVCache:
    """KV cache stored quantized (lowbit.reference formats); append returns it dequantized.

    int4: per (token, head, group) asymmetric codes + fp16 scale/zero; int8: static per-layer
    scale (kv_cache_scaling_factor). Storage here is unpacked codes for clarity; the attention
    kernels pack two codes per byte (plugins/ README)."""

    def __init__(self, model: Any, batch: int, max_len: int, kind: str):
        s = model.spec
        self.kind = kind
        self.length = 0
        self.max_len = max_len
        self.dtype = model.dtype
        n = s.num_hidden_layers
        shape = (batch, s.num_key_value_heads, max_len, s.head_size)
        dev = model.device
        if kind == "int4":
            c = model.config["kv_cache_int4"]
            self.groups = (int(c["k_group_size"]), int(c["v_group_size"]))
            self.q = [[torch.zeros(shape, dtype=torch.uint8, device=dev) for _ in range(2)]
                      for _ in range(n)]
            self.sz = [[(torch.zeros(*shape[:3], s.head_size // g, dtype=torch.float16,
                                     device=dev),
                         torch.zeros(*shape[:3], s.head_size // g, dtype=torch.float16,
                                     device=dev)) for g in self.groups] for _ in range(n)]
        else:
            self.scales = [model.layer_kv_scale[i].to(dev) for i in range(n)]
            self.q = [[torch.zeros(shape, dtype=torch.int8, device=dev) for _ in range(2)]
                      for _ in range(n)]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        a, e = self.length, self.length + t
        if e > self.max_len:
            raise UserError(f"sequence of {e} tokens exceeds the KV cache ({self.max_len})")
        out = []
        for j, x in enumerate((k, v)):
            if self.kind == "int4":
                q, sc, z = R.kv_quantize_int4(x, self.groups[j])
                self.q[layer][j][:, :, a:e] = q
                self.sz[layer][j][0][:, :, a:e] = sc
                self.sz[layer][j][1][:, :, a:e] = z
                deq = R.kv_dequantize_int4(self.q[layer][j][:, :, :e],
                                           self.sz[layer][j][0][:, :, :e],
                                           self.sz[layer][j][1][:, :, :e])
            else:
                self.q[layer][j][:, :, a:e] = R.kv_quantize_int8(x, self.scales[layer])
                deq = self.q[layer][j][:, :, :e].float() * self.scales[layer].float()
            out.append(deq.to(self.dtype))
        return out[0], out[1]

    def advance(self, t: int) -> None:
        self.length += t


class PagedInt4KVCache:
    """INT4 KV cache on the paged pool of lowbit.kvcache (docs/engine-io.md), for B sequences
    advancing together (the runtime's batches).

    Offers attend(layer, qkv, positions): RoPE of q and k, quantize-append of the new k and v
    into their pages, then attention over the quantized cache (the new tokens included), in one
    call; Decoder.layer_forward uses it instead of rope + append + attention. With kernels=True
    (CUDA, fp16) these are the kernels (lowbit.ops.kv4_rope_append_attention: rope_append then
    attention in one call), else the torch reference lowbit.kvcache.rope_append / attention
    (same semantics; any device, dtype).

    Blocks come from a lowbit.kvcache.BlockAllocator over a pool of B * ceil(max_len / tpb)
    blocks, taken as the sequences grow (so the sequences' blocks interleave in the pool);
    block_table [B, MB] int32 (unused entries 0). No k_pre / k / v taps (calibration always
    runs on float caches)."""

    def __init__(self, model: Any, batch: int, max_len: int, *, kernels: bool,
                 tokens_per_block: int = 64):
        s = model.spec
        c = model.config["kv_cache_int4"]
        self.layout = kvcache.KvLayout(s.num_attention_heads, s.num_key_value_heads,
                                       s.head_size, int(c["k_group_size"]),
                                       int(c["v_group_size"]), tokens_per_block,
                                       s.sliding_window or 0)
        self.kernels = kernels  # else the torch reference (kvcache.rope_append / attention)
        dev = torch.device(model.device)
        self.device = dev
        self.batch = batch
        self.length = 0
        self.max_len = max_len
        self.max_blocks = max(1, -(-max_len // tokens_per_block))
        self.allocator = kvcache.BlockAllocator(batch * self.max_blocks)
        self.blocks: list[list[int]] = [[] for _ in range(batch)]
        self.block_table = torch.zeros((batch, self.max_blocks), dtype=torch.int32, device=dev)
        self.codes, self.params = kvcache.new_pool(self.layout, s.num_hidden_layers,
                                                   self.allocator.num_blocks, dev)
        self.inv_freq = rope_inv_freq(model.config).float().to(dev)
        self._step: tuple[tuple[int, int], tuple[torch.Tensor, ...]] | None = None
        self._workspace = torch.empty(0, dtype=torch.uint8, device=dev)

    def _prepare(self, t: int, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Blocks, flat positions, seq_offsets (and the kernels' workspace) of the step adding
        t tokens to every sequence; made once per step, on its first layer."""
        key = (self.length, t)
        if self._step is not None and self._step[0] == key:
            return self._step[1]
        end = self.length + t
        if end > self.max_len:
            raise UserError(f"sequence of {end} tokens exceeds the KV cache ({self.max_len})")
        pos = positions.to(device=self.device, dtype=torch.int32).reshape(-1)
        want = torch.arange(self.length, end, dtype=torch.int32, device=self.device)
        if pos.shape != want.shape or not torch.equal(pos, want):
            raise ValueError(f"positions must continue the cache: [{self.length}, {end})")
        need = -(-end // self.layout.tokens_per_block)
        for b, blocks in enumerate(self.blocks):
            if len(blocks) < need:
                new = self.allocator.allocate(need - len(blocks))
                self.block_table[b, len(blocks):need] = torch.tensor(new, dtype=torch.int32)
                blocks.extend(new)
        flat = pos.repeat(self.batch)  # sequence after sequence, as qkv's rows
        offs = torch.arange(0, self.batch * t + 1, t, dtype=torch.int32, device=self.device)
        extra: tuple[torch.Tensor, ...] = ()
        if self.kernels:
            from lowbit import ops

            n = ops.kv4_attention_workspace(self.batch * t, self.batch, self.layout,
                                            self.allocator.num_blocks, self.max_blocks)
            if n > self._workspace.numel():
                self._workspace = torch.empty(n, dtype=torch.uint8, device=self.device)
            extra = (self._workspace if n else None,)  # prefill needs none
        self._step = (key, (flat, offs, *extra))
        return self._step[1]

    def attend(self, layer: int, qkv: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """qkv [B*T, (nh + 2 nkv) d] (rows sequence after sequence, bias added), positions [T]
        (= length .. length + T - 1) -> attention output [B*T, nh d] in qkv.dtype. Writes the
        new tokens' K/V of `layer`; advance(T) after the step's last layer."""
        t = qkv.shape[0] // self.batch
        flat, offs, *ws = self._prepare(t, positions)
        a = (flat, offs, self.block_table)
        if self.kernels:
            from lowbit import ops

            return ops.kv4_rope_append_attention(qkv.contiguous(), *a, self.inv_freq, self.codes,
                                                 self.params, layer, self.layout,
                                                 workspace=ws[0])
        q = kvcache.rope_append(qkv.contiguous(), *a, self.inv_freq, self.codes, self.params,
                                layer, self.layout)
        return kvcache.attention(q, *a, self.codes, self.params, layer, self.layout)

    def advance(self, t: int) -> None:
        self.length += t


def kv4_kernels_usable(model: Any) -> bool:
    """Whether an INT4-KV model runs its cache on the kernels: CUDA, fp16 compute, the kernel
    library loadable (kernels_available: LOWBIT_USE_KERNELS=0 turns it off), and a shape the
    kernels take (head_size 64 or 128, group sizes multiples of 8)."""
    c = model.config["kv_cache_int4"]
    return (torch.device(model.device).type == "cuda" and model.dtype == torch.float16
            and model.spec.head_size in (64, 128)
            and int(c["k_group_size"]) % 8 == 0 and int(c["v_group_size"]) % 8 == 0
            and kernels_available())


def _int8_cache(model: Any, batch: int, max_len: int) -> QuantizedKVCache:
    return QuantizedKVCache(model, batch, max_len, "int8")


def _int4_cache(model: Any, batch: int, max_len: int) -> QuantizedKVCache | PagedInt4KVCache:
    """On CUDA with the kernels (kv4_kernels_usable): the paged pool run by lowbit.ops; else
    the torch cache (QuantizedKVCache, the CPU reference)."""
    if "kv_cache_int4" not in model.config:
        raise UserError("INT4 KV cache checkpoint without 'kv_cache_int4' in config.json")
    if kv4_kernels_usable(model):
        return PagedInt4KVCache(model, batch, max_len, kernels=True)
    return QuantizedKVCache(model, batch, max_len, "int4")


CACHE_FACTORIES["INT8"] = _int8_cache
CACHE_FACTORIES["INT4"] = _int4_cache
