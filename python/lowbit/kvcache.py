"""The paged INT4 KV cache: pool layout, RoPE + quantize-append, attention (torch reference).

The one home of the pool layout in Python (docs/engine-io.md, plugins/kvAttention/README.md).
Runs on CPU and CUDA; the kernels (lowbit.ops.kv4_rope_append / kv4_attention) are tested
against these functions, and the ONNX graph's verification executes them.

Pool of one model (L layers, NB blocks of tpb tokens, nkv KV heads, head size d):
    codes  uint8 [L, NB, 2, nkv, tpb, d/2]  [l, blk, 0, h, s] = K codes of the token in slot s,
                                            [l, blk, 1, h, s] = V codes; channel 2i in the low
                                            nibble of byte i, 2i+1 in the high nibble (0..15)
    params fp16  [L, NB, nkv, tpb, P]       P = 2 (d/gk + d/gv):
                                            [k_scale(d/gk), k_zero(d/gk), v_scale(d/gv),
                                             v_zero(d/gv)]
Numbers: lowbit.reference.kv_quantize_int4 / kv_dequantize_int4 per (token, head, group).
A token at position p of sequence b lives in slot p % tpb of block block_table[b, p // tpb].

Semantics (the reference runtime, builder/runtime.py + builder/quantized.py, computes the same):
q and k are RoPE'd in float32 (GPT-NeoX halves, angle = position * inv_freq[j]) and rounded to
qkv.dtype; the new k and v are quantized and written first; attention then reads every position
of the sequence, the new tokens included, back from the cache (dequantized to float32), with
scores q.k / sqrt(d), a causal (and sliding-window) mask, softmax and the weighted sum of V in
float32; the output is rounded to q.dtype. With float32 qkv nothing is rounded but the cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lowbit.reference import kv_dequantize_int4, kv_quantize_int4


@dataclass(frozen=True)
class KvLayout:
    """Shape of one model's INT4 KV pool (the `LowbitKv4Attention` plugin fields)."""

    num_heads: int  # nh, query heads
    num_kv_heads: int  # nkv; query head i reads KV head i // (nh / nkv)
    head_size: int  # d (even; both group sizes divide it)
    k_group_size: int  # gk: K channels per (scale, zero)
    v_group_size: int  # gv: V channels per (scale, zero)
    tokens_per_block: int = 64  # tpb
    sliding_window: int = 0  # 0 = none; else a query at p sees positions > p - window

    def __post_init__(self):
        nh, nkv, d = self.num_heads, self.num_kv_heads, self.head_size
        if nkv <= 0 or nh <= 0 or nh % nkv:
            raise ValueError(f"num_heads ({nh}) must be a positive multiple of num_kv_heads "
                             f"({nkv})")
        if d <= 0 or d % 2:
            raise ValueError(f"head_size must be positive and even, found {d}")
        for name, g in (("k_group_size", self.k_group_size), ("v_group_size", self.v_group_size)):
            if g <= 0 or d % g:
                raise ValueError(f"{name} ({g}) must divide head_size ({d})")
        if self.tokens_per_block <= 0:
            raise ValueError(f"tokens_per_block must be positive, found {self.tokens_per_block}")
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window must be >= 0, found {self.sliding_window}")

    @property
    def params_per_token(self) -> int:
        """P = 2 (d/gk + d/gv) fp16 values per (token, KV head)."""
        d = self.head_size
        return 2 * (d // self.k_group_size + d // self.v_group_size)

    @property
    def qkv_width(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_size


def new_pool(layout: KvLayout, num_layers: int, num_blocks: int,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-filled pool: (codes uint8 [L, NB, 2, nkv, tpb, d/2],
    params fp16 [L, NB, nkv, tpb, P])."""
    if num_layers <= 0 or num_blocks <= 0:
        raise ValueError(f"num_layers and num_blocks must be positive, found {num_layers}, "
                         f"{num_blocks}")
    lo = layout
    codes = torch.zeros((num_layers, num_blocks, 2, lo.num_kv_heads, lo.tokens_per_block,
                         lo.head_size // 2), dtype=torch.uint8, device=device)
    params = torch.zeros((num_layers, num_blocks, lo.num_kv_heads, lo.tokens_per_block,
                          lo.params_per_token), dtype=torch.float16, device=device)
    return codes, params


# ---- packing of codes and params -------------------------------------------------------------


def pack_codes(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes [..., d] in 0..15 -> uint8 [..., d/2]: byte i = q[2i] | q[2i+1] << 4."""
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_codes(p: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_codes: uint8 [..., d/2] -> uint8 [..., d] in 0..15."""
    return torch.stack((p & 0xF, p >> 4), dim=-1).flatten(-2)


def quantize_kv(k: torch.Tensor, v: torch.Tensor, layout: KvLayout
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v float [..., d] -> (codes uint8 [..., 2, d/2] (K then V), params fp16 [..., P])."""
    qk, sk, zk = kv_quantize_int4(k, layout.k_group_size)
    qv, sv, zv = kv_quantize_int4(v, layout.v_group_size)
    codes = torch.stack((pack_codes(qk), pack_codes(qv)), dim=-2)
    return codes, torch.cat((sk, zk, sv, zv), dim=-1)


def dequantize_kv(codes: torch.Tensor, params: torch.Tensor, layout: KvLayout
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of quantize_kv: codes [..., 2, d/2], params [..., P] -> (k^, v^) float32 [..., d]."""
    nk, nv = layout.head_size // layout.k_group_size, layout.head_size // layout.v_group_size
    sk, zk, sv, zv = torch.split(params, [nk, nk, nv, nv], dim=-1)
    k = kv_dequantize_int4(unpack_codes(codes[..., 0, :]), sk, zk)
    v = kv_dequantize_int4(unpack_codes(codes[..., 1, :]), sv, zv)
    return k, v


def pack_sequence(k: torch.Tensor, v: torch.Tensor, layout: KvLayout
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole sequence's cache into blocks.

    k (after RoPE), v: float [nkv, S, d]. returns (codes uint8 [nb, 2, nkv, tpb, d/2],
    params fp16 [nb, nkv, tpb, P]) with nb = ceil(S / tpb); slots past S are zero.
    Copy them into a pool with codes[l, blocks] = ..., params[l, blocks] = ...
    """
    lo = layout
    if k.dim() != 3 or k.shape != v.shape or k.shape[0] != lo.num_kv_heads \
            or k.shape[2] != lo.head_size:
        raise ValueError(f"k, v: expected [nkv={lo.num_kv_heads}, S, d={lo.head_size}] each, "
                         f"found {tuple(k.shape)} and {tuple(v.shape)}")
    s, tpb = k.shape[1], lo.tokens_per_block
    nb = max(1, -(-s // tpb))
    codes, params = quantize_kv(k.transpose(0, 1), v.transpose(0, 1), lo)  # [S, nkv, 2, d/2]
    c = torch.zeros((nb * tpb, lo.num_kv_heads, 2, lo.head_size // 2), dtype=torch.uint8,
                    device=k.device)
    p = torch.zeros((nb * tpb, lo.num_kv_heads, lo.params_per_token), dtype=torch.float16,
                    device=k.device)
    c[:s], p[:s] = codes, params
    c = c.reshape(nb, tpb, lo.num_kv_heads, 2, -1).permute(0, 3, 2, 1, 4).contiguous()
    p = p.reshape(nb, tpb, lo.num_kv_heads, -1).permute(0, 2, 1, 3).contiguous()
    return c, p


def unpack_sequence(codes: torch.Tensor, params: torch.Tensor, length: int, layout: KvLayout
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of one sequence (codes [nb, 2, nkv, tpb, d/2], params [nb, nkv, tpb, P], e.g.
    pool[l, block_table[b, :nb]]) -> dequantized (k^, v^) float32 [nkv, length, d]."""
    lo = layout
    nb, tpb = codes.shape[0], lo.tokens_per_block
    want_c = (nb, 2, lo.num_kv_heads, tpb, lo.head_size // 2)
    want_p = (nb, lo.num_kv_heads, tpb, lo.params_per_token)
    if tuple(codes.shape) != want_c or tuple(params.shape) != want_p:
        raise ValueError(f"codes, params: expected {want_c} and {want_p}, found "
                         f"{tuple(codes.shape)} and {tuple(params.shape)}")
    if not 0 <= length <= nb * tpb:
        raise ValueError(f"length must be in [0, {nb * tpb}] for {nb} blocks, found {length}")
    c = codes.permute(2, 0, 3, 1, 4).reshape(lo.num_kv_heads, nb * tpb, 2, -1)[:, :length]
    p = params.permute(1, 0, 2, 3).reshape(lo.num_kv_heads, nb * tpb, -1)[:, :length]
    return dequantize_kv(c, p, lo)


# ---- checks ----------------------------------------------------------------------------------


def _check_pool(codes: torch.Tensor, params: torch.Tensor, layer: int, lo: KvLayout) -> None:
    if codes.dtype != torch.uint8 or codes.dim() != 6 or tuple(codes.shape[2:]) != (
            2, lo.num_kv_heads, lo.tokens_per_block, lo.head_size // 2):
        raise ValueError(f"codes: expected uint8 [L, NB, 2, {lo.num_kv_heads}, "
                         f"{lo.tokens_per_block}, {lo.head_size // 2}], found {codes.dtype} "
                         f"{tuple(codes.shape)}")
    want = (codes.shape[0], codes.shape[1], lo.num_kv_heads, lo.tokens_per_block,
            lo.params_per_token)
    if params.dtype != torch.float16 or tuple(params.shape) != want:
        raise ValueError(f"params: expected float16 {want}, found {params.dtype} "
                         f"{tuple(params.shape)}")
    if not 0 <= layer < codes.shape[0]:
        raise ValueError(f"layer must be in [0, {codes.shape[0]}), found {layer}")


def _check_tokens(positions: torch.Tensor, seq_offsets: torch.Tensor, block_table: torch.Tensor,
                  t: int) -> int:
    if positions.dim() != 1 or positions.shape[0] != t or positions.is_floating_point():
        raise ValueError(f"positions: expected an integer [T={t}] tensor, found "
                         f"{positions.dtype} {tuple(positions.shape)}")
    if seq_offsets.dim() != 1 or seq_offsets.shape[0] < 2 or seq_offsets.is_floating_point():
        raise ValueError(f"seq_offsets: expected an integer [B+1] tensor (B >= 1), found "
                         f"{seq_offsets.dtype} {tuple(seq_offsets.shape)}")
    b = seq_offsets.shape[0] - 1
    if block_table.dim() != 2 or block_table.shape[0] != b or block_table.is_floating_point():
        raise ValueError(f"block_table: expected an integer [B={b}, MB] tensor, found "
                         f"{block_table.dtype} {tuple(block_table.shape)}")
    offs = seq_offsets.tolist()
    if offs[0] != 0 or offs[-1] != t or any(a > c for a, c in zip(offs, offs[1:])):
        raise ValueError(f"seq_offsets must rise from 0 to T={t}, found {offs}")
    return b


def _slots(positions: torch.Tensor, seq_offsets: torch.Tensor, block_table: torch.Tensor,
           lo: KvLayout, num_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool block and slot of every token: [T] each (long)."""
    t = positions.shape[0]
    counts = seq_offsets[1:].long() - seq_offsets[:-1].long()
    seq = torch.repeat_interleave(torch.arange(counts.shape[0], device=positions.device),
                                  counts.to(positions.device), output_size=t)
    pos = positions.long()
    mb = block_table.shape[1]
    col = pos // lo.tokens_per_block
    if t and (int(pos.min()) < 0 or int(col.max()) >= mb):
        raise ValueError(f"positions must be in [0, MB * tpb = {mb * lo.tokens_per_block}), "
                         f"found [{int(pos.min())}, {int(pos.max())}]")
    blk = block_table.to(positions.device).long()[seq, col]
    if t and (int(blk.min()) < 0 or int(blk.max()) >= num_blocks):
        raise ValueError(f"block_table entries used must be in [0, NB = {num_blocks}), found "
                         f"[{int(blk.min())}, {int(blk.max())}]")
    return blk, pos % lo.tokens_per_block


# ---- the two operations of LowbitKv4Attention ------------------------------------------------


def rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x [T, heads, d], positions [T] -> GPT-NeoX RoPE in float32, returned in x.dtype.

    Same operations as builder.runtime.Decoder.rope: angle = float(p) * inv_freq[j],
    out = x * cos + rotate_half(x) * sin with cos, sin of cat(angle, angle)."""
    freqs = positions.float()[:, None] * inv_freq.float().to(x.device)[None, :]  # [T, d/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    cos, sin = emb.cos(), emb.sin()
    xf = x.float()
    half = xf.shape[-1] // 2
    rot = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rot * sin).to(x.dtype)


def rope_append(qkv: torch.Tensor, positions: torch.Tensor, seq_offsets: torch.Tensor,
                block_table: torch.Tensor, inv_freq: torch.Tensor, codes: torch.Tensor,
                params: torch.Tensor, layer: int, layout: KvLayout) -> torch.Tensor:
    """RoPE q and k, quantize k and v into the pool of `layer` (in place), return q.

    qkv fp16/float32 [T, (nh + 2 nkv) d] (q heads, then k heads, then v heads); positions int
    [T]; seq_offsets int [B+1]; block_table int [B, MB]; inv_freq float32 [d/2];
    codes / params: the whole pool (new_pool). returns q [T, nh, d] in qkv.dtype.
    """
    lo = layout
    if qkv.dim() != 2 or qkv.shape[1] != lo.qkv_width or not qkv.is_floating_point():
        raise ValueError(f"qkv: expected a float [T, (nh + 2 nkv) d = {lo.qkv_width}] tensor, "
                         f"found {qkv.dtype} {tuple(qkv.shape)}")
    if inv_freq.shape != (lo.head_size // 2,):
        raise ValueError(f"inv_freq: expected [d/2 = {lo.head_size // 2}], found "
                         f"{tuple(inv_freq.shape)}")
    _check_pool(codes, params, layer, lo)
    t = qkv.shape[0]
    _check_tokens(positions, seq_offsets, block_table, t)
    nh, nkv, d = lo.num_heads, lo.num_kv_heads, lo.head_size
    q, k, v = torch.split(qkv, [nh * d, nkv * d, nkv * d], dim=-1)
    q = rope(q.reshape(t, nh, d), positions, inv_freq)
    k = rope(k.reshape(t, nkv, d), positions, inv_freq)
    v = v.reshape(t, nkv, d)
    if t == 0:
        return q
    blk, slot = _slots(positions, seq_offsets, block_table, lo, codes.shape[1])
    c, p = quantize_kv(k, v, lo)  # [T, nkv, 2, d/2], [T, nkv, P]
    # advanced indices (blk, slot) around a slice put the token dimension first
    codes[layer][blk.to(codes.device), :, :, slot.to(codes.device)] = \
        c.transpose(1, 2).to(codes.device)
    params[layer][blk.to(params.device), :, slot.to(params.device)] = p.to(params.device)
    return q


def attention(q: torch.Tensor, positions: torch.Tensor, seq_offsets: torch.Tensor,
              block_table: torch.Tensor, codes: torch.Tensor, params: torch.Tensor, layer: int,
              layout: KvLayout) -> torch.Tensor:
    """Causal attention of the new tokens over the quantized cache of `layer`.

    q [T, nh, d] (after RoPE, as rope_append returns it); a token at position p of sequence b
    attends to positions [0, p] (and > p - sliding_window) of b, read from the pool.
    returns [T, nh * d] in q.dtype (float32 math inside, as builder.runtime.Decoder.attention).
    """
    lo = layout
    nh, nkv, d, tpb = lo.num_heads, lo.num_kv_heads, lo.head_size, lo.tokens_per_block
    if q.dim() != 3 or tuple(q.shape[1:]) != (nh, d) or not q.is_floating_point():
        raise ValueError(f"q: expected a float [T, nh={nh}, d={d}] tensor, found {q.dtype} "
                         f"{tuple(q.shape)}")
    _check_pool(codes, params, layer, lo)
    t = q.shape[0]
    nb_seq = _check_tokens(positions, seq_offsets, block_table, t)
    out = torch.empty((t, nh * d), dtype=q.dtype, device=q.device)
    if t == 0:
        return out
    _slots(positions, seq_offsets, block_table, lo, codes.shape[1])  # range checks
    offs = seq_offsets.tolist()
    pos_all = positions.long().to(q.device)
    rep = nh // nkv
    for b in range(nb_seq):
        a, e = offs[b], offs[b + 1]
        if a == e:
            continue
        qpos = pos_all[a:e]
        s = int(qpos.max()) + 1
        nb = -(-s // tpb)
        blocks = block_table[b, :nb].long().to(codes.device)
        k, v = unpack_sequence(codes[layer][blocks], params[layer][blocks], s, lo)
        k, v = k.to(q.device), v.to(q.device)
        if rep > 1:
            k = k.repeat_interleave(rep, dim=0)
            v = v.repeat_interleave(rep, dim=0)
        kpos = torch.arange(s, device=q.device)[None, :]
        allowed = kpos <= qpos[:, None]
        if lo.sliding_window:
            allowed &= qpos[:, None] - kpos < lo.sliding_window
        qb = q[a:e].float().transpose(0, 1)[None]  # [1, nh, n, d]
        o = F.scaled_dot_product_attention(qb, k[None], v[None], attn_mask=allowed)
        out[a:e] = o[0].transpose(0, 1).reshape(e - a, nh * d).to(q.dtype)
    return out


def softmax_scale(layout: KvLayout) -> float:
    """The score scale 1 / sqrt(d) (SDPA's default, which the runtime uses)."""
    return 1.0 / math.sqrt(layout.head_size)


# ---- block allocation ------------------------------------------------------------------------


class BlockAllocator:
    """Free list of the pool's blocks (the caller of the engine owns allocation)."""

    def __init__(self, num_blocks: int):
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, found {num_blocks}")
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out 0, 1, 2, ...
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        """n distinct free blocks; raises RuntimeError when fewer than n are free."""
        if n < 0:
            raise ValueError(f"n must be >= 0, found {n}")
        if n > len(self._free):
            raise RuntimeError(f"KV pool exhausted: {n} blocks requested, {len(self._free)} of "
                               f"{self.num_blocks} free")
        out = [self._free.pop() for _ in range(n)]
        self._used.update(out)
        return out

    def free(self, blocks: list[int]) -> None:
        """Return blocks to the free list; raises ValueError for a block not allocated."""
        blocks = [int(x) for x in blocks]
        bad = [x for x in blocks if x not in self._used]
        if bad or len(set(blocks)) != len(blocks):
            raise ValueError(f"free: blocks {bad or blocks} are not allocated (or repeated)")
        for x in blocks:
            self._used.remove(x)
            self._free.append(x)
