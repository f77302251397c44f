"""Integer-exact torch reference of every lowbit kernel (runs on CPU or CUDA).

This module *defines* the numeric contract. The quantizers produce tensors in these formats,
the reference runtime executes checkpoints with these functions, and every CUDA kernel is
tested against them. Rules shared by all functions:

- Activations are quantized from float32 values. A scale is computed in float32, rounded to
  its storage dtype (fp16 for Atom, fp32 for SmoothQuant), and the integer value is then
  q = clamp(round_half_even(h / float(scale_stored)), -qmax_neg, qmax): the stored scale is
  the one used to divide, so dequantization q * scale is consistent bit for bit.
  A group whose scale rounds to 0 (all-zero input) gets q = 0.
- Integer products are summed exactly (int32 range). Here they are summed in float32 per group
  (|sum| <= 8*8*group_size and 127*127*128 stay below 2**24, so float32 is exact) or in
  float64 for full-K int8 sums; integer valued either way.
- Per-group partial sums are scaled in float32 (x_scale * w_scale, each fp16 -> fp32, the
  product exact) and accumulated; the kernels accumulate in fp32 in another order, so results
  agree to ~1e-6 relative before the final fp16 rounding.

Atom W4A4 operand formats (K input channels in reordered layout: K_n = K - K_o normal
channels first, in groups of G; K_o outlier channels last):
    x4  int8 [M, K_n/2]   packed int4 (lowbit.packing, low nibble first)
    xs4 fp16 [M, K_n/G]   per token and group
    x8  int8 [M, K_o]     int8 outliers, values in [-127, 127]
    xs8 fp16 [M]          per token
    w4  int8 [N, K_n/2], ws4 fp16 [N, K_n/G], w8 int8 [N, K_o], ws8 fp16 [N]  (same roles)
    y[m, n] = sum_g xs4[m,g]*ws4[n,g] * sum_{k in g} x4[m,k]*w4[n,k]
            + xs8[m]*ws8[n] * sum_{k < K_o} x8[m,k]*w8[n,k]

SmoothQuant W8A8:
    xq int8 [M, K], xs fp32 [M] (per token) or [1] (static per tensor),
    wq int8 [N, K], ws fp32 [N];  y[m, n] = xs[m] * ws[n] * sum_k xq[m,k]*wq[n,k]
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lowbit.packing import pack_int4, unpack_int4

INT4_MAX = 7  # symmetric int4 uses [-8, 7]; the scale maps clip*amax to 7
INT8_MAX = 127  # symmetric int8 uses [-127, 127]


class AtomActivation(NamedTuple):
    x4: torch.Tensor  # int8 [M, K_n/2] packed int4
    xs4: torch.Tensor  # fp16 [M, K_n/G]
    x8: torch.Tensor  # int8 [M, K_o]
    xs8: torch.Tensor  # fp16 [M]


class AtomWeight(NamedTuple):
    w4: torch.Tensor  # int8 [N, K_n/2] packed int4
    ws4: torch.Tensor  # fp16 [N, K_n/G]
    w8: torch.Tensor  # int8 [N, K_o]
    ws8: torch.Tensor  # fp16 [N]


def _div(a: torch.Tensor, b: float) -> torch.Tensor:
    """a / b correctly rounded (IEEE), as the kernels' __fdiv_rn. torch computes a CUDA tensor
    divided by a Python scalar as a * (1/b), which can be 1 ulp off (72/127 is); dividing by a
    tensor is IEEE division on every device."""
    return a / torch.full_like(a, float(b))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """h = x * rsqrt(mean(x^2) + eps) * weight, all in float32. x [M, K], weight [K] -> f32."""
    x = x.float()
    rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x * rstd * weight.float()


def quantize_symmetric(
    h: torch.Tensor,
    qmax: int,
    group_size: int | None = None,
    clip: float | torch.Tensor = 1.0,
    scale_dtype: torch.dtype = torch.float16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest quantization along the last dimension.

    h: float [R, K]; group_size None = one group of K per row, else K % group_size == 0.
    clip: ratio (scalar, or broadcastable to [R, K/G]) applied to each group's abs-max.
    scale = clip * amax / qmax (fp32, then stored as scale_dtype);
    q = clamp(round(h / scale), -qmax-1 if qmax == 7 else -qmax, qmax).
    returns q int8 [R, K] and scale [R, K/G] (scale_dtype).
    """
    r, k = h.shape
    g = k if group_size is None else group_size
    if k % g:
        raise ValueError(f"group size {g} does not divide the last dimension {k}")
    hg = h.float().reshape(r, k // g, g)
    amax = hg.abs().amax(-1)
    scale = _div(amax * clip, qmax).to(scale_dtype)
    s = scale.float().unsqueeze(-1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    qmin = -qmax - 1 if qmax == INT4_MAX else -qmax
    q = torch.clamp(torch.round(hg / safe), qmin, qmax)
    q = torch.where(s > 0, q, torch.zeros_like(q))
    return q.reshape(r, k).to(torch.int8), scale


def atom_quantize_activation(
    h: torch.Tensor, n_outliers: int, group_size: int, clip: float
) -> AtomActivation:
    """Per-token dynamic Atom quantization of reordered activations.

    h: float [M, K], channels already reordered (outliers last). Normal part: int4 groups with
    clipping ratio `clip`; outlier part: int8 per token, no clipping.
    """
    k = h.shape[-1]
    kn = k - n_outliers
    if kn % group_size:
        raise ValueError(f"normal channels {kn} (= {k} - {n_outliers}) not a multiple of "
                         f"group size {group_size}")
    q4, s4 = quantize_symmetric(h[:, :kn], INT4_MAX, group_size, clip, torch.float16)
    if n_outliers == 0:  # no outlier block: empty codes, scale 0 (as the kernels write)
        m = h.shape[0]
        return AtomActivation(pack_int4(q4), s4, h.new_zeros(m, 0, dtype=torch.int8),
                              h.new_zeros(m, dtype=torch.float16))
    q8, s8 = quantize_symmetric(h[:, kn:], INT8_MAX, None, 1.0, torch.float16)
    return AtomActivation(pack_int4(q4), s4, q8, s8.reshape(-1))


def atom_rmsnorm_quantize(
    x: torch.Tensor, gamma: torch.Tensor, perm: torch.Tensor, eps: float,
    n_outliers: int, group_size: int, clip: float,
) -> AtomActivation:
    """Fused RMSNorm + reorder + quantize. x [M, K] (original channel order), gamma [K]
    already permuted (gamma_p = gamma[perm]), perm int32 [K]: h[:, j] = norm(x)[:, perm[j]]."""
    x = x.float()
    rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    h = x[:, perm.long()] * rstd * gamma.float()
    return atom_quantize_activation(h, n_outliers, group_size, clip)


def atom_reorder_quantize(
    x: torch.Tensor, perm: torch.Tensor | None, n_outliers: int, group_size: int, clip: float
) -> AtomActivation:
    """Standalone reorder + quantize (o_proj / down_proj inputs). perm None = identity."""
    h = x.float() if perm is None else x.float()[:, perm.long()]
    return atom_quantize_activation(h, n_outliers, group_size, clip)


def atom_gemm(a: AtomActivation, w: AtomWeight, group_size: int,
              w_codes: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Mixed-precision group GEMM. returns float32 [M, N] (kernels round it to fp16).
    w_codes: optionally (unpack_int4(w.w4).float(), w.w8.float()), computed once by a caller
    that multiplies by the same weight many times."""
    xq = unpack_int4(a.x4).float()
    wq, w8 = w_codes if w_codes is not None else (unpack_int4(w.w4).float(), w.w8.float())
    m, kn = xq.shape
    n = wq.shape[0]
    ng = kn // group_size
    y = torch.zeros(m, n, dtype=torch.float64, device=xq.device)
    for g in range(ng):  # one exact float32 integer matmul per group
        sl = slice(g * group_size, (g + 1) * group_size)
        part = xq[:, sl] @ wq[:, sl].T
        y += (part * (a.xs4[:, g].float()[:, None] * w.ws4[:, g].float()[None, :])).double()
    if a.x8.shape[-1]:
        part = a.x8.float() @ w8.T
        y += (part * (a.xs8.float()[:, None] * w.ws8.float()[None, :])).double()
    return y.float()


def dequantize_atom_weight(w: AtomWeight, group_size: int) -> torch.Tensor:
    """float32 [N, K] in reordered layout (for fake-quant comparisons and tests)."""
    q4 = unpack_int4(w.w4).float()
    n, kn = q4.shape
    s4 = w.ws4.float().repeat_interleave(group_size, dim=1)
    return torch.cat((q4 * s4, w.w8.float() * w.ws8.float()[:, None]), dim=1)


def dequantize_atom_activation(a: AtomActivation, group_size: int) -> torch.Tensor:
    q4 = unpack_int4(a.x4).float()
    s4 = a.xs4.float().repeat_interleave(group_size, dim=1)
    return torch.cat((q4 * s4, a.x8.float() * a.xs8.float()[:, None]), dim=1)


def quantize_per_token_int8(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SmoothQuant dynamic activation quantization: h [M, K] -> (int8 [M, K], fp32 [M])."""
    q, s = quantize_symmetric(h, INT8_MAX, None, 1.0, torch.float32)
    return q, s.reshape(-1)


def quantize_static_int8(h: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """SmoothQuant static per-tensor quantization: q = clamp(round(h / scale), -127, 127).
    scale must be > 0 (a calibrated scale of an all-zero input is refused)."""
    s = scale.float().reshape(())
    if not float(s) > 0:
        raise ValueError(f"static activation scale must be > 0, found {float(s)}")
    return torch.clamp(torch.round(h.float() / s), -INT8_MAX, INT8_MAX).to(torch.int8)


def rmsnorm_quantize_int8(
    x: torch.Tensor, gamma: torch.Tensor, eps: float, static_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused RMSNorm + int8 quantize (per token, or per tensor when static_scale is given).
    returns (int8 [M, K], fp32 scale [M] or [1])."""
    h = rms_norm(x, gamma, eps)
    if static_scale is None:
        return quantize_per_token_int8(h)
    return quantize_static_int8(h, static_scale), static_scale.float().reshape(1)


def w8a8_gemm(
    xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor,
    wq_float: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = xs[m] * ws[n] * (xq @ wq^T). returns float32 [M, N].

    The int32 sum is formed exactly: float32 matmuls over chunks of at most 1024 channels
    (|sum| <= 127*127*1024 < 2**24, exact in float32), the chunks added in float64.
    wq_float: optionally wq.float(), computed once by a caller that reuses the weight."""
    k = xq.shape[-1]
    wf = wq.float() if wq_float is None else wq_float
    acc = torch.zeros(xq.shape[0], wq.shape[0], dtype=torch.float64, device=xq.device)
    for c in range(0, k, 1024):
        acc += (xq[:, c:c + 1024].float() @ wf[:, c:c + 1024].T).double()
    return (acc * xs.double().reshape(-1, 1) * ws.double().reshape(1, -1)).float()


# -- KV cache ---------------------------------------------------------------------------------
# INT4 (Atom): asymmetric, per (token, KV head, group of `group_size` channels of head_dim):
#     scale = (max - min) / 15 (stored fp16), zero = min (stored fp16)
#     q = clamp(round((x - zero) / scale), 0, 15),   x^ = q * scale + zero
# INT8 (SmoothQuant, TensorRT-LLM's kv_cache_scaling_factor): symmetric, one static fp32 scale
# per layer for K and V: q = clamp(round(x / s), -127, 127), x^ = q * s.
# Attention always reads K/V back from the quantized cache, the current chunk's own tokens
# included (quantize, then attend), in prefill and in decode alike.


def kv_quantize_int4(x: torch.Tensor, group_size: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x float [..., d] -> (q uint8 [..., d] in [0, 15], scale fp16 [..., d/g], zero fp16)."""
    d = x.shape[-1]
    if d % group_size:
        raise ValueError(f"KV group size {group_size} does not divide head_size {d}")
    xg = x.float().reshape(*x.shape[:-1], d // group_size, group_size)
    mn, mx = xg.amin(-1), xg.amax(-1)
    scale = _div(mx - mn, 15).to(torch.float16)
    zero = mn.to(torch.float16)
    s = scale.float()[..., None]
    z = zero.float()[..., None]
    q = torch.clamp(torch.round((xg - z) / torch.where(s > 0, s, torch.ones_like(s))), 0, 15)
    q = torch.where(s > 0, q, torch.zeros_like(q))
    return q.reshape(x.shape).to(torch.uint8), scale, zero


def kv_dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Inverse of kv_quantize_int4 -> float32 [..., d]."""
    g = scale.shape[-1]
    qg = q.float().reshape(*q.shape[:-1], g, q.shape[-1] // g)
    return (qg * scale.float()[..., None] + zero.float()[..., None]).reshape(q.shape)


def kv_quantize_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    s = scale.float().reshape(())
    return torch.clamp(torch.round(x.float() / s), -INT8_MAX, INT8_MAX).to(torch.int8)
