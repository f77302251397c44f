"""KV-cache quantization helpers (pure functions). The numeric format itself is defined in
lowbit.reference (kv_quantize_int4 / kv_quantize_int8).

K smoothing (as QServe's SmoothAttention): K has a few channels that are large for every
token, which per-token quantization handles badly. Dividing K channel j by lam_j and multiplying
the same channel of Q by lam_j leaves q . k unchanged. Folded into the q/k rows of qkv *before*
RoPE, it stays exact only if lam_j = lam_{j + d/2} (RoPE rotates the pairs (j, j + d/2) of the
GPT-NeoX layout, and a rotation commutes with an equal scale of both coordinates):
    lam_j = max(|K_pre_j|, |K_pre_{j+d/2}|)^beta, normalized to geometric mean 1
Each query head multiplies by the lam of its KV head (GQA).
"""

from __future__ import annotations

import torch


def k_smoothing_scales(k_pre_absmax: torch.Tensor, num_kv_heads: int, head_size: int,
                       beta: float) -> torch.Tensor:
    """lam [nkv*d] from the per-channel abs-max of K before RoPE [nkv*d]."""
    a = k_pre_absmax.float().reshape(num_kv_heads, 2, head_size // 2).clamp(min=1e-5)
    pair = a.amax(1, keepdim=True).expand_as(a)  # RoPE pairs share one scale
    lam = pair.pow(beta)
    lam = lam / torch.exp(torch.log(lam).mean(dim=(1, 2), keepdim=True))
    return lam.reshape(-1)


def fold_k_smoothing(layer: dict[str, torch.Tensor], lam: torch.Tensor, num_heads: int,
                     num_kv_heads: int, head_size: int) -> dict[str, torch.Tensor]:
    """k rows / lam, q rows * lam (each query head with its KV head's lam). Exact in float."""
    out = dict(layer)
    nkv = num_kv_heads * head_size
    rep = num_heads // num_kv_heads
    lam_q = lam.reshape(num_kv_heads, 1, head_size).expand(num_kv_heads, rep, head_size)
    lam_q = lam_q.reshape(-1)
    scale = torch.cat((lam_q, 1.0 / lam, torch.ones(nkv)))
    out["attention.qkv.weight"] = layer["attention.qkv.weight"] * scale[:, None]
    if "attention.qkv.bias" in layer:
        out["attention.qkv.bias"] = layer["attention.qkv.bias"] * scale
    return out
