"""Reference runtime: executes a TensorRT-LLM checkpoint in PyTorch, with a KV cache.

Every later result (quantized schemes, kernels, the ONNX graph, TensorRT engines) is compared
with this. Llama-family decoder, per layer (pre-norm):
    h   = x + Wo · attn(rope(Wq·n1), rope(Wk·n1), Wv·n1),   n1 = rmsnorm(x) * g1
    out = h + Wproj · (silu(Wfc·n2) * (Wgate·n2)),            n2 = rmsnorm(h) * g2
rmsnorm(x) = x / sqrt(mean(x^2) + eps), computed in float32. RoPE is GPT-NeoX style
(rotate_half over the two halves of head_dim). GQA: query head h reads KV head
h // (nh / nkv). Softmax in float32.

Linear layers and KV caches are made by factories keyed on the checkpoint's quantization, so
quantized schemes plug in without touching the model code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from converters.checkpoint import Checkpoint, spec_from_config
from converters.errors import UserError
from converters.loader import rope_inv_freq


class Linear(Protocol):
    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [T, K] -> [T, N]
        ...


class FloatLinear:
    """y = x[:, perm] W^T + b in the compute dtype. W [N, K], b [N] or None, perm [K] or None
    (a reorder_index whose permutation was applied to W's columns)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                 device: torch.device, perm: torch.Tensor | None = None):
        self.weight = weight.to(device=device, dtype=dtype)
        self.bias = None if bias is None else bias.to(device=device, dtype=dtype)
        self.perm = None if perm is None else perm.to(device).long()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x[..., self.perm]
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)


class KVCache:
    """Float KV cache: per layer K and V [B, nkv, max_len, d]; all sequences advance together.

    append(layer, k, v) stores the new tokens' k (after RoPE) and v at positions
    [length, length + T) and returns the cache's K, V for positions [0, length + T).
    """

    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, head_size: int,
                 max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (batch, num_kv_heads, max_len, head_size)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = 0
        self.max_len = max_len

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        end = self.length + t
        if end > self.max_len:
            raise UserError(f"sequence of {end} tokens exceeds the KV cache ({self.max_len})")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, t: int) -> None:
        self.length += t


# Factories for the schemes of a checkpoint, keyed by quantization["quant_algo"] (None = float).
# make_linear(tensors of one layer, name like "attention.qkv", model) -> Linear
LINEAR_FACTORIES: dict[Any, Callable[..., Linear]] = {}
# make_cache(model, batch, max_len) -> cache with length, advance and either append (as
# KVCache) or attend (see Decoder.layer_forward)
CACHE_FACTORIES: dict[Any, Callable[..., Any]] = {}


def _float_linear(t: dict[str, torch.Tensor], name: str, model: ReferenceModel) -> Linear:
    return FloatLinear(t[f"{name}.weight"], t.get(f"{name}.bias"), model.dtype, model.device,
                       t.get(f"{name}.reorder_index"))


LINEAR_FACTORIES[None] = _float_linear


Taps = Callable[[str, torch.Tensor], None]


def _no_tap(name: str, t: torch.Tensor) -> None:
    pass


@dataclass
class Layer:
    norm1: Callable[[torch.Tensor], torch.Tensor]  # input_layernorm (maybe with a reorder)
    norm2: Callable[[torch.Tensor], torch.Tensor]  # post_layernorm
    qkv: Linear
    dense: Linear
    fc: Linear
    gate: Linear
    proj: Linear


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Decoder:
    """The decoder math of a checkpoint config, without weights: norms, RoPE, attention, one
    layer's forward. ReferenceModel adds the weights; calibration runs layers one at a time."""

    def __init__(self, config: dict[str, Any], device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None):
        self.config = config
        self.spec = spec_from_config(config)
        self.device = torch.device(device) if device is not None else default_device()
        if dtype is None:
            ck = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(config["dtype"],
                                                                            torch.float32)
            dtype = ck if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        q = config.get("quantization", {}) or {}
        self.quant_algo = q.get("quant_algo")
        self.kv_algo = q.get("kv_cache_quant_algo")
        self.inv_freq = rope_inv_freq(config).to(self.device)

    # -- pieces ---------------------------------------------------------------------------
    def rms_norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.spec.norm_epsilon)
        return (xf * w).to(self.dtype)

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, heads, T, d], positions [T] -> rotated x (GPT-NeoX halves), float32 math."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [T, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        xf = x.float()
        half = xf.shape[-1] // 2
        rot = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
        return (xf * cos + rot * sin).to(x.dtype)

    def new_cache(self, batch: int, max_len: int) -> Any:
        factory = CACHE_FACTORIES.get(self.kv_algo)
        if factory is not None:
            return factory(self, batch, max_len)
        if self.kv_algo is not None:
            raise UserError(f"kv_cache_quant_algo {self.kv_algo!r} is not supported by the "
                            f"reference runtime")
        s = self.spec
        return KVCache(s.num_hidden_layers, batch, s.num_key_value_heads, s.head_size, max_len,
                       self.dtype, self.device)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int
                  ) -> torch.Tensor:
        """q [B, nh, T, d] at positions start..start+T-1; k, v [B, nkv, S, d], S = start+T."""
        s = self.spec
        rep = s.num_attention_heads // s.num_key_value_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        t, total = q.shape[2], k.shape[2]
        qpos = torch.arange(start, start + t, device=q.device)[:, None]
        kpos = torch.arange(total, device=q.device)[None, :]
        allowed = kpos <= qpos
        if s.sliding_window:
            allowed &= qpos - kpos < s.sliding_window
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)
        return out.to(self.dtype)

    # -- forward --------------------------------------------------------------------------
    def layer_forward(self, i: int, layer: Layer, x: torch.Tensor, cache: Any,
                      positions: torch.Tensor, taps: Taps | None = None) -> torch.Tensor:
        """One decoder layer. x [B, T, H] -> [B, T, H]. `taps`, if given, is called with
        (name, tensor) at every linear input (qkv_in, dense_in, fc_in, proj_in, as [B*T, K]),
        linear output (qkv_out, dense_out, fc_out, gate_out, proj_out) and at k_pre (k before
        RoPE), k and v ([B, nkv, T, d]); calibration records statistics there.

        A cache offering attend(i, qkv [B*T, (nh + 2 nkv) d], positions) -> [B*T, nh d] does
        RoPE + append + attention itself (builder.quantized.PagedInt4KVCache, the INT4 kernels);
        then k_pre, k and v are not tapped."""
        s = self.spec
        b, t, _ = x.shape
        start = cache.length
        nq, nkv, d = s.num_attention_heads, s.num_key_value_heads, s.head_size
        tap = taps or _no_tap
        n1 = layer.norm1(x).reshape(b * t, -1)
        tap("qkv_in", n1)
        qkv = layer.qkv(n1)
        tap("qkv_out", qkv)
        attend = getattr(cache, "attend", None)
        if attend is not None:  # the cache does RoPE + append + attention (no k_pre/k/v taps)
            a = attend(i, qkv, positions)
        else:
            q, k, v = torch.split(qkv.reshape(b, t, -1), [nq * d, nkv * d, nkv * d], dim=-1)
            k = k.reshape(b, t, nkv, d).transpose(1, 2)
            tap("k_pre", k)
            q = self.rope(q.reshape(b, t, nq, d).transpose(1, 2), positions)
            k = self.rope(k, positions)
            v = v.reshape(b, t, nkv, d).transpose(1, 2)
            tap("k", k)
            tap("v", v)
            k_all, v_all = cache.append(i, k, v)
            a = self.attention(q, k_all, v_all, start).transpose(1, 2).reshape(b * t, nq * d)
        tap("dense_in", a)
        o = layer.dense(a)
        tap("dense_out", o)
        x = x + o.reshape(b, t, -1).to(x.dtype)
        n2 = layer.norm2(x).reshape(b * t, -1)
        tap("fc_in", n2)
        f, g = layer.fc(n2), layer.gate(n2)
        tap("fc_out", f)
        tap("gate_out", g)
        m = F.silu(f) * g
        tap("proj_in", m)
        p = layer.proj(m)
        tap("proj_out", p)
        return x + p.reshape(b, t, -1).to(x.dtype)

    def make_layer(self, lt: dict[str, torch.Tensor],
                   make_linear: Callable[..., Linear] | None = None) -> Layer:
        """A Layer from one layer's tensors (TensorRT-LLM names below the layer prefix)."""
        make_linear = make_linear or LINEAR_FACTORIES[None]
        return Layer(
            norm1=self.make_norm(lt, "input_layernorm"),
            norm2=self.make_norm(lt, "post_layernorm"),
            **{n: make_linear(lt, p, self) for n, p in (
                ("qkv", "attention.qkv"), ("dense", "attention.dense"), ("fc", "mlp.fc"),
                ("gate", "mlp.gate"), ("proj", "mlp.proj"))},
        )

    def make_norm(self, lt: dict[str, torch.Tensor], name: str
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
        """RMSNorm; with `{name}.reorder_index` (Atom) the output channels come out permuted:
        out[..., j] = rmsnorm(x)[..., perm[j]] (the stored weight is already permuted)."""
        w = lt[f"{name}.weight"].to(self.device, torch.float32)
        perm = lt.get(f"{name}.reorder_index")
        if perm is None:
            return lambda x: self.rms_norm(x, w)
        idx = perm.to(self.device).long()
        eps = self.spec.norm_epsilon

        def norm(x: torch.Tensor) -> torch.Tensor:
            # The mean square is summed in the input's own channel order, then the channels are
            # gathered: exactly lowbit.reference.atom_rmsnorm_quantize (and the fused kernel), so
            # a code never flips on a last-bit difference of the sum order.
            xf = x.float()
            rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            return ((xf * rstd)[..., idx] * w).to(self.dtype)
        return norm


class ReferenceModel(Decoder):
    """A checkpoint ready to run. dtype: compute dtype (float32 on CPU by default)."""

    def __init__(self, ckpt: Checkpoint, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(ckpt.config, device, dtype)
        if self.quant_algo not in LINEAR_FACTORIES:
            raise UserError(f"checkpoint quant_algo {self.quant_algo!r} is not supported by the "
                            f"reference runtime; supported: {list(LINEAR_FACTORIES)}")
        t = ckpt.tensors
        to = {"device": self.device, "dtype": self.dtype}
        self.embedding = t["transformer.vocab_embedding.weight"].to(**to)
        self.ln_f = t["transformer.ln_f.weight"].to(device=self.device, dtype=torch.float32)
        self.lm_head = t["lm_head.weight"].to(**to)
        make_linear = LINEAR_FACTORIES[self.quant_algo]
        layers = [ckpt.layer(i) for i in range(self.spec.num_hidden_layers)]
        self.layers = [self.make_layer(lt, make_linear) for lt in layers]
        # static per-layer INT8 KV scales (kv_cache_scaling_factor), when the cache is INT8
        self.layer_kv_scale = [lt.get("attention.kv_cache_scaling_factor") for lt in layers]

    def hidden_states(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """ids int [B, T] (new tokens, continuing the cache) -> final-norm hidden [B, T, H]."""
        t = ids.shape[1]
        positions = torch.arange(cache.length, cache.length + t, device=self.device)
        x = F.embedding(ids.to(self.device), self.embedding)
        for i, layer in enumerate(self.layers):
            x = self.layer_forward(i, layer, x, cache, positions)
        cache.advance(t)
        return self.rms_norm(x, self.ln_f)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.lm_head).float()

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """ids int [B, T] -> logits float32 [B, T, vocab]."""
        return self.logits(self.hidden_states(ids, cache))


# The quantized schemes register their linears and caches into the factories above.
import builder.quantized  # noqa: E402,F401
