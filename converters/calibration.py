"""Calibration: the one stateful module. Runs the float model over calibration windows one
decoder layer at a time and records, through taps on the runtime's layer forward:

    per linear input (qkv_in, dense_in, fc_in, proj_in), channels K:
        absmax [K], meansq [K] (over all calibration tokens)
        hessian [K, K] = X^T X / n over the Hessian tokens (every `hessian_every`-th window;
                         what GPTQ needs, computed layer by layer so only one layer's are held)
        sample [S, K]  a fixed random subset of tokens plus every window's first token, for
                       searches (alpha, clipping)
    per linear output (qkv_out, dense_out, fc_out, gate_out, proj_out): absmax [N]
    k_pre (K before RoPE), k (after RoPE), v: per-channel absmax [nkv*d]

Layers see the float outputs of the layers before them (the float model's activations), so the
statistics do not depend on the scheme and can be saved and reused (`--calib-stats`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from converters.errors import UserError

LINEAR_INPUTS = ("qkv_in", "dense_in", "fc_in", "proj_in")
LINEAR_OUTPUTS = ("qkv_out", "dense_out", "fc_out", "gate_out", "proj_out")
KV_TAPS = ("k_pre", "k", "v")


@dataclass
class LayerStats:
    absmax: dict[str, torch.Tensor] = field(default_factory=dict)  # all taps, per channel
    meansq: dict[str, torch.Tensor] = field(default_factory=dict)  # linear inputs
    hessian: dict[str, torch.Tensor] = field(default_factory=dict)  # linear inputs (optional)
    sample: dict[str, torch.Tensor] = field(default_factory=dict)  # linear inputs (optional)

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}absmax.{k}": v for k, v in self.absmax.items()}
        out.update({f"{prefix}meansq.{k}": v for k, v in self.meansq.items()})
        return out

    @staticmethod
    def from_tensors(t: dict[str, torch.Tensor], prefix: str) -> LayerStats:
        s = LayerStats()
        for k, v in t.items():
            if k.startswith(prefix):
                kind, name = k[len(prefix):].split(".", 1)
                getattr(s, kind)[name] = v
        return s


class _Accumulator:
    """Receives the taps of one layer's forward over one batch of windows."""

    def __init__(self, want_hessian: bool):
        self.absmax: dict[str, torch.Tensor] = {}
        self.sumsq: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}
        self.hess: dict[str, torch.Tensor] = {}
        self.hess_n: dict[str, int] = {}
        self.want_hessian = want_hessian

    def __call__(self, name: str, t: torch.Tensor) -> None:
        if name in KV_TAPS:  # [B, nkv, T, d] -> channels nkv*d
            t = t.transpose(1, 2).reshape(-1, t.shape[1] * t.shape[3])
        t = t.float()
        if self.want_hessian:  # only the Hessian (statistics come from the full pass)
            self.hess[name] = self.hess.get(name, 0) + (t.T @ t).double()
            self.hess_n[name] = self.hess_n.get(name, 0) + t.shape[0]
            return
        am = t.abs().amax(0)
        if not torch.isfinite(am).all():
            raise UserError(f"calibration activations at {name} contain NaN or Inf")
        self.absmax[name] = am if name not in self.absmax else torch.maximum(
            self.absmax[name], am)
        if name not in LINEAR_INPUTS:
            return
        # float32 partial sums per batch (<= a few thousand rows), accumulated in float64
        self.sumsq[name] = self.sumsq.get(name, 0) + t.square().sum(0).double()
        self.count[name] = self.count.get(name, 0) + t.shape[0]


class Calibrator:
    """Holds the calibration activations [S, T, H] and advances them layer by layer.

    windows: int64 [S, T] token windows. decoder: a builder.runtime.Decoder of the float config.
    hessian_every: Hessians from windows 0, e, 2e, ... (0 = no Hessians).
    sample_tokens: size of the random token subset kept per linear input for searches.
    """

    def __init__(self, decoder, embedding: torch.Tensor, windows: torch.Tensor,
                 batch_size: int = 8, hessian_every: int = 0, sample_tokens: int = 1024,
                 seed: int = 0, progress: bool = True):
        self.decoder = decoder
        self.windows = windows
        self.batch_size = batch_size
        self.hessian_every = hessian_every
        self.progress = progress
        with torch.inference_mode():
            self.x = F.embedding(windows, embedding.float())  # [S, T, H]
        s, t = windows.shape
        g = torch.Generator().manual_seed(seed)
        n = min(sample_tokens, s * t)
        # random tokens plus the first token of every window: those carry the massive
        # "attention sink" activations that static scales must account for
        idx = torch.cat((torch.randperm(s * t, generator=g)[:n], torch.arange(s) * t))
        self.sample_idx = torch.unique(idx) if n else None

    @torch.inference_mode()
    def run_layer(self, i: int, float_layer: dict[str, torch.Tensor]) -> LayerStats:
        """Statistics of layer i's inputs/outputs; advances the activations to its outputs."""
        from builder.runtime import KVCache

        dec = self.decoder
        spec = dec.spec
        layer = dec.make_layer(float_layer)
        s, t = self.windows.shape
        acc_all = _Accumulator(False)
        acc_h = _Accumulator(True)
        positions = torch.arange(t)
        samples: dict[str, list[torch.Tensor]] = {}
        bar = tqdm(total=s, desc=f"calibrate layer {i}", unit="win", leave=False,
                   disable=not self.progress)
        for b0 in range(0, s, self.batch_size):
            b1 = min(b0 + self.batch_size, s)
            rows = None
            if self.sample_idx is not None:
                sel = self.sample_idx[(self.sample_idx >= b0 * t) & (self.sample_idx < b1 * t)]
                rows = sel - b0 * t
            hess_rows = [w - b0 for w in range(b0, b1)
                         if self.hessian_every and w % self.hessian_every == 0]

            def tap(name: str, x: torch.Tensor, rows=rows, hess_rows=hess_rows, nb=b1 - b0
                    ) -> None:
                acc_all(name, x)
                if name not in LINEAR_INPUTS:
                    return
                if rows is not None:
                    samples.setdefault(name, []).append(x[rows].float())
                if hess_rows:
                    acc_h(name, x.reshape(nb, t, -1)[hess_rows].reshape(-1, x.shape[-1]))

            cache = KVCache(1, b1 - b0, spec.num_key_value_heads, spec.head_size, t,
                            torch.float32, torch.device("cpu"))
            out = dec.layer_forward(0, layer, self.x[b0:b1], cache, positions, taps=tap)
            self.x[b0:b1] = out
            bar.update(b1 - b0)
        bar.close()
        stats = LayerStats(absmax=acc_all.absmax)
        for k in LINEAR_INPUTS:
            stats.meansq[k] = (acc_all.sumsq[k] / acc_all.count[k]).float()
            if k in acc_h.hess:
                stats.hessian[k] = (acc_h.hess[k] / acc_h.hess_n[k]).float()
            if k in samples:
                stats.sample[k] = torch.cat(samples[k])
        return stats


def load_stats(path: Path, num_layers: int) -> tuple[dict[int, LayerStats], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise UserError(f"--calib-stats {path} does not exist")
    try:
        t = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise UserError(f"{path}: not a readable calibration statistics file ({e})") from None
    stats = {i: LayerStats.from_tensors(t, f"layers.{i}.") for i in range(num_layers)}
    if any(not s.absmax for s in stats.values()):
        raise UserError(f"{path}: expected statistics for {num_layers} layers, some are missing")
    return stats, meta
