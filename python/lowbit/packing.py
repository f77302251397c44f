"""Packing of low-bit integers: the one home of every pack/unpack and permutation.

Canonical stored layout (checkpoint, docs/checkpoint-format.md): two signed int4 values per
int8 byte, **low nibble first**: byte[k//2] = (q[2*(k//2)] & 0xF) | (q[2*(k//2)+1] << 4).
A tensor of int4 values [..., K] is stored as int8 [..., K/2]. K must be even.
"""

from __future__ import annotations

import torch


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack signed int4 values into bytes, low nibble first.

    q: integer tensor [..., K], values in [-8, 7], K even.
    returns int8 [..., K/2].
    """
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even last dimension, found {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError(
            f"pack_int4 needs values in [-8, 7], found [{int(q.min())}, {int(q.max())}]"
        )
    q = q.to(torch.int16)
    lo = q[..., 0::2] & 0xF
    hi = (q[..., 1::2] & 0xF) << 4
    # (hi | lo) is in [0, 255]; reinterpret as int8 via two's complement.
    return ((hi | lo) - ((hi | lo) >= 128).to(torch.int16) * 256).to(torch.int8)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4. p: int8 [..., K/2] -> int8 [..., K], values in [-8, 7]."""
    if p.dtype != torch.int8:
        raise ValueError(f"unpack_int4 needs int8 packed bytes, found {p.dtype}")
    b = p.to(torch.int16) & 0xFF
    lo = b & 0xF
    hi = (b >> 4) & 0xF
    lo = lo - (lo >= 8).to(torch.int16) * 16  # sign-extend the nibble
    hi = hi - (hi >= 8).to(torch.int16) * 16
    return torch.stack((lo, hi), dim=-1).flatten(-2).to(torch.int8)


def invert_permutation(perm: torch.Tensor) -> torch.Tensor:
    """perm: int [K], a permutation. returns inv with inv[perm[j]] = j."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), dtype=perm.dtype, device=perm.device)
    return inv


def outliers_last_permutation(importance: torch.Tensor, n_outliers: int) -> torch.Tensor:
    """Atom's channel reorder: the n_outliers channels of largest importance go to the end.

    importance: float [K] (calibration mean square of each input channel).
    returns int32 perm [K]: reordered[:, j] = original[:, perm[j]]. Normal channels keep their
    original relative order; outliers are placed in ascending importance, the largest last.
    """
    k = importance.numel()
    if not 0 <= n_outliers <= k:
        raise ValueError(f"n_outliers must be in [0, {k}], found {n_outliers}")
    order = torch.argsort(importance.double(), stable=True)  # ascending
    outl = order[k - n_outliers:] if n_outliers else order[:0]
    mask = torch.ones(k, dtype=torch.bool)
    mask[outl] = False
    normal = torch.nonzero(mask).flatten()
    return torch.cat((normal, outl)).to(torch.int32)


# ---- kernel layouts (lowbit_kernels: plugins/w4a4Gemm) ----------------------------------------
# The W4A4 GEMM streams w4 [N, K_n/2] and w8 [N, K_o] in the canonical layout above: its
# tensor-core fragments are built in registers from 16-byte copies of any row segment, so the
# int4 bytes need no reordering. Only the weight group scales change layout: the kernel reads
# them transposed, ws4t [K_n/G, N], so the two adjacent output columns a thread owns share one
# 4-byte load per group.


def pack_w4a4_scales(ws4: torch.Tensor) -> torch.Tensor:
    """Weight group scales into the W4A4 kernel layout.

    ws4: fp16 [N, K_n/G] (lowbit.reference.AtomWeight.ws4).
    returns fp16 [K_n/G, N], contiguous (the ws4t operand of lowbit.ops.w4a4_gemm).
    """
    if ws4.dim() != 2:
        raise ValueError(
            f"pack_w4a4_scales needs a 2-D [N, K_n/G] tensor, found {tuple(ws4.shape)}"
        )
    if ws4.dtype != torch.float16:
        raise ValueError(f"pack_w4a4_scales needs float16 scales, found {ws4.dtype}")
    return ws4.t().contiguous()


def unpack_w4a4_scales(ws4t: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_w4a4_scales. ws4t: fp16 [K_n/G, N] -> fp16 [N, K_n/G], contiguous."""
    if ws4t.dim() != 2:
        raise ValueError(
            f"unpack_w4a4_scales needs a 2-D [K_n/G, N] tensor, found {tuple(ws4t.shape)}"
        )
    if ws4t.dtype != torch.float16:
        raise ValueError(f"unpack_w4a4_scales needs float16 scales, found {ws4t.dtype}")
    return ws4t.t().contiguous()
