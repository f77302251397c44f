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

from converters.checkpoint import Checkpoint
from converters.errors import UserError
from converters.loader import rope_inv_freq


class Linear(Protocol):
    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [T, K] -> [T, N]
        ...


class FloatLinear:
    """y = x W^T + b in the compute dtype. W [N, K], b [N] or None."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                 device: torch.device):
        self.weight = weight.to(device=device, dtype=dtype)
        self.bias = None if bias is None else bias.to(device=device, dtype=dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
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
# make_cache(model, batch, max_len) -> cache with append/advance/length
CACHE_FACTORIES: dict[Any, Callable[..., Any]] = {}


def _float_linear(t: dict[str, torch.Tensor], name: str, model: ReferenceModel) -> Linear:
    return FloatLinear(t[f"{name}.weight"], t.get(f"{name}.bias"), model.dtype, model.device)


LINEAR_FACTORIES[None] = _float_linear


@dataclass
class Layer:
    input_layernorm: torch.Tensor
    post_layernorm: torch.Tensor
    qkv: Linear
    dense: Linear
    fc: Linear
    gate: Linear
    proj: Linear


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ReferenceModel:
    """A checkpoint ready to run. dtype: compute dtype (float32 on CPU by default)."""

    def __init__(self, ckpt: Checkpoint, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None):
        self.config = ckpt.config
        self.spec = ckpt.spec
        self.device = torch.device(device) if device is not None else default_device()
        if dtype is None:
            ck = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(ckpt.config["dtype"],
                                                                            torch.float32)
            dtype = ck if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        q = ckpt.config.get("quantization", {}) or {}
        self.quant_algo = q.get("quant_algo")
        self.kv_algo = q.get("kv_cache_quant_algo")
        if self.quant_algo not in LINEAR_FACTORIES:
            raise UserError(f"checkpoint quant_algo {self.quant_algo!r} is not supported by the "
                            f"reference runtime; supported: {list(LINEAR_FACTORIES)}")
        make_linear = LINEAR_FACTORIES[self.quant_algo]
        s = self.spec
        t = ckpt.tensors
        to = {"device": self.device, "dtype": self.dtype}
        self.embedding = t["transformer.vocab_embedding.weight"].to(**to)
        self.ln_f = t["transformer.ln_f.weight"].to(device=self.device, dtype=torch.float32)
        self.lm_head = t["lm_head.weight"].to(**to)
        self.layers: list[Layer] = []
        for i in range(s.num_hidden_layers):
            lt = ckpt.layer(i)
            self.layers.append(Layer(
                input_layernorm=lt["input_layernorm.weight"].to(self.device, torch.float32),
                post_layernorm=lt["post_layernorm.weight"].to(self.device, torch.float32),
                **{n: make_linear(lt, p, self) for n, p in (
                    ("qkv", "attention.qkv"), ("dense", "attention.dense"), ("fc", "mlp.fc"),
                    ("gate", "mlp.gate"), ("proj", "mlp.proj"))},
            ))
        self.inv_freq = rope_inv_freq(self.config).to(self.device)

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
    def hidden_states(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """ids int [B, T] (new tokens, continuing the cache) -> final-norm hidden [B, T, H]."""
        s = self.spec
        b, t = ids.shape
        start = cache.length
        positions = torch.arange(start, start + t, device=self.device)
        x = F.embedding(ids.to(self.device), self.embedding)
        nq, nkv, d = s.num_attention_heads, s.num_key_value_heads, s.head_size
        for i, layer in enumerate(self.layers):
            n1 = self.rms_norm(x, layer.input_layernorm)
            qkv = layer.qkv(n1.reshape(b * t, -1)).reshape(b, t, -1)
            q, k, v = torch.split(qkv, [nq * d, nkv * d, nkv * d], dim=-1)
            q = self.rope(q.reshape(b, t, nq, d).transpose(1, 2), positions)
            k = self.rope(k.reshape(b, t, nkv, d).transpose(1, 2), positions)
            v = v.reshape(b, t, nkv, d).transpose(1, 2)
            k_all, v_all = cache.append(i, k, v)
            a = self.attention(q, k_all, v_all, start).transpose(1, 2).reshape(b * t, nq * d)
            x = x + layer.dense(a).reshape(b, t, -1).to(x.dtype)
            n2 = self.rms_norm(x, layer.post_layernorm).reshape(b * t, -1)
            m = F.silu(layer.fc(n2)) * layer.gate(n2)
            x = x + layer.proj(m).reshape(b, t, -1).to(x.dtype)
        cache.advance(t)
        return self.rms_norm(x, self.ln_f)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.lm_head).float()

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """ids int [B, T] -> logits float32 [B, T, vocab]."""
        return self.logits(self.hidden_states(ids, cache))
