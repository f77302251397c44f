"""Weight quantization: round-to-nearest, clipping-ratio search, and GPTQ (Frantar et al. 2022).

All functions are pure: tensors in, tensors out. A weight W [N, K] is split along K into
column groups, each quantized symmetrically per output row:
    scale[n, g] = clip * max_k |W[n, k in g]| / qmax   (stored fp16, used as stored)
    q = clamp(round(W / scale), -qmax-1 (int4) | -qmax (int8), qmax)
`ColumnGroups` lists the groups: Atom's layout is K_n/G int4 groups of G columns followed by
one int8 group of the K_o outlier columns; SmoothQuant's is one int8 group of all K columns.

GPTQ minimizes ||(W - Q) X^T||^2 for calibration inputs X (Hessian H = X^T X / n): columns are
quantized left to right and each column's rounding error is spread onto the columns not yet
quantized through the inverse Hessian's Cholesky factor. Deviation from the paper's code:
none in the math; group scales are computed when the sweep reaches each group (as the
reference code does with `static_groups=False`), from the error-updated weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT4_MAX = 7
INT8_MAX = 127


@dataclass(frozen=True)
class ColumnGroups:
    """Column groups of a K-column weight: (start, end, qmax) triples, in order, covering K."""

    groups: tuple[tuple[int, int, int], ...]

    @staticmethod
    def atom(k: int, n_outliers: int, group_size: int) -> ColumnGroups:
        kn = k - n_outliers
        if kn % group_size:
            raise ValueError(f"{kn} normal channels are not a multiple of group {group_size}")
        g = [(s, s + group_size, INT4_MAX) for s in range(0, kn, group_size)]
        if n_outliers:
            g.append((kn, k, INT8_MAX))
        return ColumnGroups(tuple(g))

    @staticmethod
    def per_channel_int8(k: int) -> ColumnGroups:
        return ColumnGroups(((0, k, INT8_MAX),))


def _qmin(qmax: int) -> int:
    return -qmax - 1 if qmax == INT4_MAX else -qmax


def group_scale(w: torch.Tensor, qmax: int, clip: float) -> torch.Tensor:
    """w [N, g] -> fp16 scale [N] (as stored; 0 for an all-zero row)."""
    return (w.abs().amax(-1) * clip / qmax).to(torch.float16)


def quantize_with_scale(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """w [N, c], scale fp16 [N] -> integer codes (float tensor) [N, c]."""
    s = scale.float()[:, None]
    q = torch.clamp(torch.round(w / torch.where(s > 0, s, torch.ones_like(s))), _qmin(qmax), qmax)
    return torch.where(s > 0, q, torch.zeros_like(q))


@dataclass
class QuantizedWeight:
    codes: torch.Tensor  # int8 [N, K], values within each group's range
    scales: list[torch.Tensor]  # one fp16 [N] per group, in ColumnGroups order

    def dequantize(self, groups: ColumnGroups) -> torch.Tensor:
        out = torch.empty(self.codes.shape, dtype=torch.float32)
        for (s, e, _), sc in zip(groups.groups, self.scales):
            out[:, s:e] = self.codes[:, s:e].float() * sc.float()[:, None]
        return out


def rtn(w: torch.Tensor, groups: ColumnGroups, clip: float | list[float] = 1.0
        ) -> QuantizedWeight:
    """Round-to-nearest. clip: one ratio for all int4 groups (int8 groups are never clipped),
    or one per group."""
    clips = clip if isinstance(clip, list) else [clip if q == INT4_MAX else 1.0
                                                for _, _, q in groups.groups]
    codes = torch.empty(w.shape, dtype=torch.int8)
    scales = []
    for (s, e, qmax), c in zip(groups.groups, clips):
        sc = group_scale(w[:, s:e].float(), qmax, c)
        codes[:, s:e] = quantize_with_scale(w[:, s:e].float(), sc, qmax).to(torch.int8)
        scales.append(sc)
    return QuantizedWeight(codes, scales)


def output_error(w: torch.Tensor, wq: torch.Tensor, h: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)^T): the summed squared output error over the calibration inputs
    (H = X^T X / n)."""
    d = (w.double() - wq.double())
    return float(torch.einsum("nk,kl,nl->", d, h.double(), d))


def search_clip(w: torch.Tensor, groups: ColumnGroups, h: torch.Tensor,
                ratios: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
                ) -> tuple[float, dict[float, float]]:
    """The int4 clipping ratio (one per weight) minimizing the Hessian-weighted output error
    of round-to-nearest. returns (best ratio, {ratio: error})."""
    errs = {r: output_error(w, rtn(w, groups, r).dequantize(groups), h) for r in ratios}
    return min(errs, key=errs.get), errs


def gptq(w: torch.Tensor, h: torch.Tensor, groups: ColumnGroups, clip: float = 1.0,
         block_size: int = 128, damp: float = 0.01) -> QuantizedWeight:
    """GPTQ of w [N, K] with Hessian h [K, K] (X^T X / n). Each block of columns is processed
    with the exact in-block update, the rest of the matrix updated once per block ("lazy batch").
    A group's scale is computed when the sweep reaches its first column, from the weights as
    updated so far (groups must start at block boundaries or inside a block: both work)."""
    n, k = w.shape
    W = w.double().clone()
    H = h.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(k, dtype=H.dtype)
    try:
        L = torch.linalg.cholesky(H)
    except RuntimeError:  # not positive definite even after damping: more damping
        H += 0.1 * torch.mean(torch.diag(H)) * torch.eye(k, dtype=H.dtype)
        L = torch.linalg.cholesky(H)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)

    starts = {s: (e, qmax) for s, e, qmax in groups.groups}
    col_scale = torch.empty(n, k, dtype=torch.float64)
    col_qmax = [0] * k
    codes = torch.empty(n, k, dtype=torch.int8)
    scales: list[torch.Tensor] = []
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        W1 = W[:, b0:b1].clone()
        err1 = torch.zeros_like(W1)
        hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            c = b0 + i
            if c in starts:
                e, qmax = starts[c]
                # the group's columns: those in this block are in W1 (updated), the rest in W
                cur = torch.cat((W1[:, i:min(e, b1) - b0], W[:, b1:e]), dim=1) if e > b1 \
                    else W1[:, i:e - b0]
                sc = group_scale(cur.float(), qmax, clip if qmax == INT4_MAX else 1.0)
                scales.append(sc)
                col_scale[:, c:e] = sc.double()[:, None]
                for j in range(c, e):
                    col_qmax[j] = qmax
            col = W1[:, i]
            s = col_scale[:, c]
            qmax = col_qmax[c]
            q = torch.clamp(torch.round(col / torch.where(s > 0, s, torch.ones_like(s))),
                            _qmin(qmax), qmax)
            q = torch.where(s > 0, q, torch.zeros_like(q))
            codes[:, c] = q.to(torch.int8)
            e_col = (col - q * s) / hb[i, i]
            W1[:, i:] -= e_col[:, None] * hb[i, i:][None, :]
            err1[:, i] = e_col
        W[:, b1:] -= err1 @ hinv[b0:b1, b1:]
    return QuantizedWeight(codes, scales)
