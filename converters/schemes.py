"""Quantization schemes and their settings, as frozen dataclasses with commented defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMES = ("fp16", "smoothquant-w8a8", "atom-w4a4")
KV_KINDS = ("fp16", "int8", "int4")

# quant_algo values written to config.json. The SmoothQuant ones are TensorRT-LLM's own;
# W4A4_ATOM and the INT4 KV cache are lowbit-trt's (TensorRT-LLM has no W4A4 or INT4 KV).
SQ_PER_TOKEN = "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"
SQ_PER_TENSOR = "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN"
ATOM_ALGO = "W4A4_ATOM"
KV_ALGOS = {"fp16": None, "int8": "INT8", "int4": "INT4"}


@dataclass(frozen=True)
class CalibrationConfig:
    num_samples: int = 128  # calibration windows
    seq_len: int = 512  # tokens per window
    batch_size: int = 8  # windows per forward pass
    hessian_every: int = 4  # GPTQ Hessians from every 4th window (32 x 512 = 16k tokens)
    sample_tokens: int = 1024  # random tokens kept per linear input for alpha/clip searches
    seed: int = 0


@dataclass(frozen=True)
class KVCacheConfig:
    kind: str = "fp16"  # fp16 | int8 (static per-layer scale) | int4 (asymmetric, dynamic)
    k_group_size: int | None = None  # int4: K channels per scale/zero; None = head_size
    v_group_size: int | None = None  # int4: V channels per scale/zero; None = head_size
    smooth_k: float | None = None  # int4: K smoothing strength beta (kvquant.py); None = off


@dataclass(frozen=True)
class SmoothQuantConfig:
    alpha: float | None = None  # migration strength; None = the architecture's default
    alpha_auto: bool = False  # per-layer grid search minimizing quantized output error
    act_quant: str = "per-token"  # per-token (dynamic) | per-tensor (static, calibrated)
    # GPTQ for the INT8 weights (Hessian of the smoothed input): +1.44% -> +1.08% perplexity
    # per-token on SmolLM2 (docs/accuracy.md), for about a minute more of calibration
    gptq: bool = True
    # The grid searched by --alpha auto, and the clipping ratios tried for static scales.
    alpha_grid: tuple[float, ...] = tuple(round(0.3 + 0.05 * i, 2) for i in range(14))
    static_clip_grid: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)


@dataclass(frozen=True)
class AtomConfig:
    outliers: int = 128  # outlier channels kept INT8 (rounded up so the rest fill groups)
    group_size: int = 128  # INT4 group size, weights and activations
    act_clip: float = 0.9  # activation INT4 clipping ratio (of each group's abs-max)
    gptq: bool = True  # GPTQ in the reordered layout (else round-to-nearest)
    weight_clip_search: bool = True  # per-linear clipping ratio search for INT4 weights
    weight_clip_grid: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


@dataclass(frozen=True)
class QuantizeConfig:
    scheme: str = "fp16"
    kv: KVCacheConfig = field(default_factory=KVCacheConfig)
    smoothquant: SmoothQuantConfig = field(default_factory=SmoothQuantConfig)
    atom: AtomConfig = field(default_factory=AtomConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def settings(self) -> dict[str, Any]:
        """The settings that matter for this scheme (for config.json and reports)."""
        out: dict[str, Any] = {}
        if self.scheme == "smoothquant-w8a8":
            sq = self.smoothquant
            out.update(alpha="auto" if sq.alpha_auto else sq.alpha, act_quant=sq.act_quant,
                       gptq=sq.gptq)
        if self.scheme == "atom-w4a4":
            a = self.atom
            out.update(outliers=a.outliers, group_size=a.group_size, act_clip=a.act_clip,
                       gptq=a.gptq)
        if self.kv.kind != "fp16":
            out["kv"] = self.kv.kind
            if self.kv.kind == "int4":
                out.update(k_group=self.kv.k_group_size, v_group=self.kv.v_group_size or "head",
                           smooth_k=self.kv.smooth_k)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
