"""SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights.

For a linear layer y = x W^T with input channel j:
    s_j = max|X_j|^a / max|W_:,j|^(1-a)        (max over calibration tokens / weight rows)
    y = (x / s) (W * s)^T                       exact in float
x / s is folded into whatever produces x (RMSNorm weight, the rows of the previous linear), so
nothing is computed at run time. Folds used here (pure functions on float tensors):
    qkv input   -> input_layernorm.weight / s,   qkv.weight * s
    fc/gate in  -> post_layernorm.weight / s,    fc.weight * s, gate.weight * s
    proj input  -> rows of mlp.gate (HF up_proj) / s (silu(fc x) * (gate x) is linear in gate's
                   output), proj.weight * s
    dense input -> rows of v / s (attention output of head h is a convex combination of its KV
                   head's v rows), dense.weight * s, with s shared by the query heads of a KV
                   group (GQA: s[(h, e)] = s_kv[(h // rep, e)]) so that the fold stays exact.
"""

from __future__ import annotations

import torch


def smooth_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float,
                  eps: float = 1e-5) -> torch.Tensor:
    """s [K] (float32) from activation and weight per-input-channel abs-max [K]."""
    x = x_absmax.float().clamp(min=eps)
    w = w_absmax.float().clamp(min=eps)
    s = x.pow(alpha) / w.pow(1 - alpha)
    return s.clamp(min=eps)


def weight_absmax(*weights: torch.Tensor) -> torch.Tensor:
    """Per-input-channel abs-max over the rows of all weights sharing an input. [N_i, K] -> [K]."""
    return torch.stack([w.abs().amax(0) for w in weights]).amax(0)


def group_shared(v: torch.Tensor, num_heads: int, num_kv_heads: int, head_size: int
                 ) -> torch.Tensor:
    """For the dense input [nh*d]: the max over the query heads sharing a KV head, expanded back
    to [nh*d], so that a scale computed from it can be folded into the v rows ([nkv*d])."""
    rep = num_heads // num_kv_heads
    g = v.reshape(num_kv_heads, rep, head_size).amax(1)  # [nkv, d]
    return g[:, None, :].expand(num_kv_heads, rep, head_size).reshape(-1)


def kv_rows(s_dense: torch.Tensor, num_heads: int, num_kv_heads: int, head_size: int
            ) -> torch.Tensor:
    """[nh*d] group-shared scale -> the [nkv*d] scale of the v rows."""
    rep = num_heads // num_kv_heads
    return s_dense.reshape(num_kv_heads, rep, head_size)[:, 0, :].reshape(-1)


def fold_layer(layer: dict[str, torch.Tensor], s: dict[str, torch.Tensor], num_heads: int,
               num_kv_heads: int, head_size: int) -> dict[str, torch.Tensor]:
    """Apply smoothing scales to a float layer (TensorRT-LLM names). s keys: 'qkv', 'fc',
    'proj', 'dense' (any subset), each [K] of that input. Returns a new dict; exact in float."""
    out = dict(layer)
    nq = num_heads * head_size
    nkv = num_kv_heads * head_size
    if "qkv" in s:
        out["input_layernorm.weight"] = layer["input_layernorm.weight"] / s["qkv"]
        out["attention.qkv.weight"] = layer["attention.qkv.weight"] * s["qkv"][None, :]
    if "fc" in s:
        out["post_layernorm.weight"] = layer["post_layernorm.weight"] / s["fc"]
        out["mlp.fc.weight"] = layer["mlp.fc.weight"] * s["fc"][None, :]
        out["mlp.gate.weight"] = layer["mlp.gate.weight"] * s["fc"][None, :]
    if "proj" in s:
        out["mlp.gate.weight"] = out["mlp.gate.weight"] / s["proj"][:, None]
        out["mlp.proj.weight"] = layer["mlp.proj.weight"] * s["proj"][None, :]
    if "dense" in s:
        sv = kv_rows(s["dense"], num_heads, num_kv_heads, head_size)
        w = out["attention.qkv.weight"].clone()
        w[nq + nkv:] = w[nq + nkv:] / sv[:, None]
        out["attention.qkv.weight"] = w
        if "attention.qkv.bias" in layer:
            b = layer["attention.qkv.bias"].clone()
            b[nq + nkv:] = b[nq + nkv:] / sv
            out["attention.qkv.bias"] = b
        out["attention.dense.weight"] = layer["attention.dense.weight"] * s["dense"][None, :]
    return out


def int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] -> (int8 [N, K], fp32 scale [N]): scale = max|W_n| / 127, q = round(W / scale)."""
    scale = (w.abs().amax(1) / 127.0).float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(w / safe[:, None]), -127, 127).to(torch.int8)
    return q, scale


def fake_w8a8_error(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor,
                    static_clip: float | None, ref: torch.Tensor | None = None) -> float:
    """Output error ||Q(x/s) Q(W*s)^T - x W^T||^2 on sample tokens x [T, K], W [N, K].
    static_clip None = per-token dynamic activations; else one static scale
    static_clip * max|x/s| / 127 for the whole tensor (as calibrated).
    ref: x W^T, when the caller evaluates many scales for the same x and W."""
    xs = x / s
    ws = w * s
    qw, sw = int8_per_channel(ws)
    if static_clip is None:
        sx = (xs.abs().amax(1, keepdim=True) / 127.0).clamp(min=1e-12)
    else:
        sx = (xs.abs().max() * static_clip / 127.0).clamp(min=1e-12)
    qx = torch.clamp(torch.round(xs / sx), -127, 127)
    y = (qx @ qw.float().T) * sx * sw[None, :]
    if ref is None:
        ref = x @ w.T
    return float((y - ref).pow(2).sum())
