"""Quantized conversion: calibration + per-layer scheme transforms + the checkpoint writer.

`quantize_model` streams the model layer by layer: the calibrator runs the float layer over the
calibration windows (statistics of its inputs), the scheme turns the float layer into quantized
tensors (TensorRT-LLM names, docs/checkpoint-format.md), and the writer shards and saves them.
The math lives in pure modules (smoothquant, atom, gptq, kvquant); this module only wires.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from converters import atom as A
from converters import kvquant as KV
from converters import smoothquant as SQ
from converters.calibration import Calibrator, LayerStats, load_stats
from converters.checkpoint import convert, trtllm_config
from converters.errors import UserError
from converters.gptq import ColumnGroups, gptq, rtn, search_clip
from converters.loader import SourceModel
from converters.schemes import (
    ATOM_ALGO,
    KV_ALGOS,
    SQ_PER_TENSOR,
    SQ_PER_TOKEN,
    CalibrationConfig,
    QuantizeConfig,
)
from lowbit.packing import pack_int4

LINEARS = {  # TensorRT-LLM linear prefix -> the calibration tap of its input
    "attention.qkv": "qkv_in", "attention.dense": "dense_in", "mlp.fc": "fc_in",
    "mlp.gate": "fc_in", "mlp.proj": "proj_in",
}
OUTPUT_TAP = {"attention.qkv": "qkv_out", "attention.dense": "dense_out", "mlp.fc": "fc_out",
              "mlp.gate": "gate_out", "mlp.proj": "proj_out"}
_SQ_GROUP = {"qkv_in": "qkv", "fc_in": "fc", "proj_in": "proj", "dense_in": "dense"}
# Where a linear's static input scale lives in TensorRT-LLM's SmoothQuant checkpoints.
SQ_INPUT_SCALE = {"qkv_in": "input_layernorm.scale_to_int", "fc_in": "post_layernorm.scale_to_int",
                  "dense_in": "attention.quantization_scaling_factor",
                  "proj_in": "mlp.quantization_scaling_factor"}


def calibration_windows(tokenizer: Any, text: str, num_samples: int, seq_len: int
                        ) -> torch.Tensor:
    if tokenizer is None:
        raise UserError("calibration needs the model's tokenizer, and this model has none")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)
    need = num_samples * seq_len
    if ids.numel() < need:
        raise UserError(f"calibration text has {ids.numel()} tokens; --num-samples "
                        f"{num_samples} x --seq-len {seq_len} needs {need}")
    return ids[:need].view(num_samples, seq_len)


# -- K smoothing and the KV cache ------------------------------------------------------------
def _kv_transform(layer: dict[str, torch.Tensor], stats: LayerStats, cfg: QuantizeConfig,
                  spec: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    info: dict[str, Any] = {}
    if cfg.kv.kind == "int4" and cfg.kv.smooth_k is not None:
        lam = KV.k_smoothing_scales(stats.absmax["k_pre"], spec.num_key_value_heads,
                                    spec.head_size, cfg.kv.smooth_k)
        layer = KV.fold_k_smoothing(layer, lam, spec.num_attention_heads,
                                    spec.num_key_value_heads, spec.head_size)
    return layer, info


def _kv_int8_scale(stats: LayerStats, v_div: torch.Tensor | None) -> torch.Tensor:
    """TensorRT-LLM kv_cache_scaling_factor [1]: max(|K|, |V|) / 127 (V after any smoothing)."""
    v = stats.absmax["v"] if v_div is None else stats.absmax["v"] / v_div
    return (torch.maximum(stats.absmax["k"].max(), v.max()) / 127.0).reshape(1).float()


# -- SmoothQuant ---------------------------------------------------------------------------
def _sq_layer(layer: dict[str, torch.Tensor], stats: LayerStats, cfg: QuantizeConfig,
              spec: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sq = cfg.smoothquant
    nh, nkv, d = spec.num_attention_heads, spec.num_key_value_heads, spec.head_size
    static = sq.act_quant == "per-tensor"
    groups = {"qkv": ("qkv_in", ["attention.qkv"]), "fc": ("fc_in", ["mlp.fc", "mlp.gate"]),
              "proj": ("proj_in", ["mlp.proj"]), "dense": ("dense_in", ["attention.dense"])}
    scales: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {}
    clips: dict[str, float] = {}
    for g, (tap, prefixes) in groups.items():
        w = torch.cat([layer[f"{p}.weight"] for p in prefixes])
        x_am = stats.absmax[tap]
        w_am = SQ.weight_absmax(w)
        if g == "dense":  # one scale per KV group so it folds into v rows
            x_am = SQ.group_shared(x_am, nh, nkv, d)
            w_am = SQ.group_shared(w_am, nh, nkv, d)
        if sq.alpha_auto:
            x = stats.sample[tap]
            ref = x @ w.T
            best = None
            for a in sq.alpha_grid:
                s = SQ.smooth_scales(x_am, w_am, a)
                err = SQ.fake_w8a8_error(x, w, s, 1.0 if static else None, ref)
                if best is None or err < best[0]:
                    best = (err, a, s)
            _, alpha, s = best
        else:
            alpha = sq.alpha
            s = SQ.smooth_scales(x_am, w_am, alpha)
        if static:  # clipping ratio of the static activation scale, searched on samples
            x = stats.sample[tap]
            ref = x @ w.T
            errs = {c: SQ.fake_w8a8_error(x, w, s, c, ref) for c in sq.static_clip_grid}
            clips[tap] = min(errs, key=errs.get)
        scales[g] = s
        info[f"alpha_{g}"] = alpha
    layer = SQ.fold_layer(layer, scales, nh, nkv, d)
    out: dict[str, torch.Tensor] = {k: v for k, v in layer.items() if not k.endswith(".weight")
                                    or k.endswith("layernorm.weight")}
    in_scale = {}  # the static dequant scale of each linear input: clip * max|x / s| / 127
    for tap, g in (("qkv_in", "qkv"), ("fc_in", "fc"), ("proj_in", "proj"),
                   ("dense_in", "dense")):
        in_scale[tap] = (stats.absmax[tap] / scales[g]).max() * clips.get(tap, 1.0) / 127.0
    for prefix, tap in LINEARS.items():
        if sq.gptq and tap in stats.hessian:
            # the smoothed input is x / s: its Hessian is diag(1/s) H diag(1/s)
            inv = 1.0 / scales[_SQ_GROUP[tap]]
            h = stats.hessian[tap] * inv[:, None] * inv[None, :]
            w = layer[f"{prefix}.weight"]
            qw = gptq(w, h, ColumnGroups.per_channel_int8(w.shape[1]))
            q, ws = qw.codes, qw.scales[0].float()
        else:
            q, ws = SQ.int8_per_channel(layer[f"{prefix}.weight"])
        out[f"{prefix}.weight"] = q
        if static:
            # TensorRT-LLM's meanings: act_scale = output scale y_max/127; per_channel_scale =
            # x_scale * w_scale / y_scale, so act_scale * per_channel_scale dequantizes the
            # int32 accumulator; scale_to_int = 1 / x_scale multiplies the input.
            y_s = (stats.absmax[OUTPUT_TAP[prefix]].max() / 127.0).clamp(min=1e-12)
            out[f"{prefix}.per_channel_scale"] = (in_scale[tap] * ws / y_s).reshape(1, -1).float()
            out[f"{prefix}.act_scale"] = y_s.reshape(1, 1).float()
        else:
            out[f"{prefix}.per_channel_scale"] = ws.reshape(1, -1).float()
    for tap, name in SQ_INPUT_SCALE.items():
        out[name] = (1.0 / in_scale[tap] if static else torch.tensor(1.0)).reshape(1).float()
    for prefix, tap in (("attention.dense", "dense_in"), ("mlp.proj", "proj_in")):
        out[f"{prefix}.smoother"] = torch.ones(1, stats.absmax[tap].numel())  # folded
    if cfg.kv.kind == "int8":
        sv = SQ.kv_rows(scales["dense"], nh, nkv, d)
        out["attention.kv_cache_scaling_factor"] = _kv_int8_scale(stats, sv)
    info.update({f"static_clip_{k}": v for k, v in clips.items()})
    return out, info


# -- Atom ------------------------------------------------------------------------------------
def _atom_layer(layer: dict[str, torch.Tensor], stats: LayerStats, cfg: QuantizeConfig,
                spec: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    a = cfg.atom
    counts = {tap: A.outlier_count(stats.meansq[tap].numel(), a.outliers, a.group_size)
              for tap in A.INPUT_GROUPS}
    perms = A.permutations({t: stats.meansq[t] for t in A.INPUT_GROUPS}, counts)
    layer = A.fold_layer(layer, perms)
    out = {k: v for k, v in layer.items() if k.endswith(("layernorm.weight", "reorder_index",
                                                          ".bias"))}
    info: dict[str, Any] = {}
    for prefix, tap in LINEARS.items():
        w = layer[f"{prefix}.weight"]
        k = w.shape[1]
        groups = ColumnGroups.atom(k, counts[tap], a.group_size)
        if tap in stats.hessian:
            h = A.permute_hessian(stats.hessian[tap], perms[tap])
        else:  # no Hessian: weight columns by their mean square input (diagonal approximation)
            h = torch.diag(stats.meansq[tap][perms[tap].long()])
        clip = search_clip(w, groups, h, a.weight_clip_grid)[0] if a.weight_clip_search else 1.0
        qw = gptq(w, h, groups, clip) if a.gptq and tap in stats.hessian else rtn(w, groups, clip)
        kn = k - counts[tap]
        out[f"{prefix}.weight"] = pack_int4(qw.codes[:, :kn])
        n4 = kn // a.group_size
        out[f"{prefix}.weights_scaling_factor"] = (torch.stack(qw.scales[:n4], 1) if n4 else
                                                    torch.zeros(w.shape[0], 0, dtype=torch.float16))
        out[f"{prefix}.outlier_weight"] = qw.codes[:, kn:].contiguous()
        out[f"{prefix}.outlier_scaling_factor"] = (qw.scales[n4] if counts[tap] else
                                                   torch.zeros(w.shape[0], dtype=torch.float16))
        info[f"clip_{prefix}"] = clip
    if cfg.kv.kind == "int8":
        out["attention.kv_cache_scaling_factor"] = _kv_int8_scale(stats, None)
    info["outliers"] = counts
    return out, info


def _float_kv_layer(layer: dict[str, torch.Tensor], stats: LayerStats, cfg: QuantizeConfig
                    ) -> dict[str, torch.Tensor]:
    out = dict(layer)
    if cfg.kv.kind == "int8":
        out["attention.kv_cache_scaling_factor"] = _kv_int8_scale(stats, None)
    return out


def scheme_config(cfg: QuantizeConfig, spec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(quantization dict, extra top-level config) for config.json."""
    kv_algo = KV_ALGOS[cfg.kv.kind]
    q: dict[str, Any] = {"quant_algo": None, "kv_cache_quant_algo": kv_algo}
    extra: dict[str, Any] = {}
    if cfg.scheme == "smoothquant-w8a8":
        sq = cfg.smoothquant
        q["quant_algo"] = SQ_PER_TOKEN if sq.act_quant == "per-token" else SQ_PER_TENSOR
        q["smoothquant_val"] = None if sq.alpha_auto else sq.alpha
    elif cfg.scheme == "atom-w4a4":
        a = cfg.atom
        q["quant_algo"] = ATOM_ALGO
        q["group_size"] = a.group_size
        extra["atom"] = {"group_size": a.group_size, "act_clip": a.act_clip,
                         "outliers_requested": a.outliers, "gptq": a.gptq,
                         "weight_clip_search": a.weight_clip_search}
    if cfg.kv.kind == "int4":
        extra["kv_cache_int4"] = {
            "k_group_size": cfg.kv.k_group_size or spec.head_size,
            "v_group_size": cfg.kv.v_group_size or spec.head_size,
            "smooth_k": cfg.kv.smooth_k,
        }
    return q, extra


def validate(cfg: QuantizeConfig, spec: Any, tp_size: int) -> None:
    """Refuse impossible settings before any work is done."""
    if cfg.scheme == "atom-w4a4":
        a = cfg.atom
        if tp_size != 1:
            raise UserError("atom-w4a4 supports --tp-size 1 only (its reorder permutations are "
                            f"per whole input); found --tp-size {tp_size}")
        if a.group_size < 2 or a.group_size % 2:
            raise UserError(f"--group-size must be an even number >= 2, found {a.group_size}")
        for k in (spec.hidden_size, spec.num_attention_heads * spec.head_size,
                  spec.intermediate_size):
            try:
                ko = A.outlier_count(k, a.outliers, a.group_size)
            except ValueError as e:
                raise UserError(str(e)) from None
            if ko == k:
                raise UserError(f"--group-size {a.group_size} leaves no INT4 channels in an "
                                f"input of {k} channels (with --outliers {a.outliers}); "
                                f"expected a group size of at most {k - a.outliers}")
        if not 0 < a.act_clip <= 1:
            raise UserError(f"--act-clip must be in (0, 1], found {a.act_clip}")
    if cfg.kv.kind == "int4":
        for g in (cfg.kv.k_group_size, cfg.kv.v_group_size):
            if g is not None and (g <= 0 or spec.head_size % g):
                raise UserError(f"KV group size {g} must divide head_size {spec.head_size}")
    if cfg.scheme == "smoothquant-w8a8" and cfg.smoothquant.alpha is not None and not (
            0 <= cfg.smoothquant.alpha <= 1):
        raise UserError(f"--alpha must be in [0, 1] or 'auto', found {cfg.smoothquant.alpha}")


def needs_calibration(cfg: QuantizeConfig) -> bool:
    return cfg.scheme != "fp16" or cfg.kv.kind != "fp16"


def quantize_model(src: SourceModel, output: Path, cfg: QuantizeConfig,
                   text: str | torch.Tensor,
                   dtype: str = "float16", tp_size: int = 1, force: bool = False,
                   calib_stats: Path | None = None, progress: bool = True,
                   extra_config: dict[str, Any] | None = None,
                   precomputed: dict[int, LayerStats] | None = None) -> dict[str, Any]:
    """Calibrate, quantize and write `src` with scheme `cfg`. Returns the config written.
    text: calibration text, or already tokenized windows (int64 [num_samples, seq_len]).
    precomputed: statistics of every layer from `calibrate` (with Hessians and samples), to
    quantize several schemes from one calibration pass."""
    from builder.runtime import Decoder
    from converters.architectures import get_architecture

    spec = src.spec
    validate(cfg, spec, tp_size)
    default_alpha = get_architecture(spec.architecture).smoothquant_alpha
    if cfg.scheme == "smoothquant-w8a8" and cfg.smoothquant.alpha is None and \
            not cfg.smoothquant.alpha_auto:
        sq = (replace(cfg.smoothquant, alpha_auto=True) if default_alpha == "auto" else
              replace(cfg.smoothquant, alpha=float(default_alpha)))
        cfg = replace(cfg, smoothquant=sq)
    quantization, extra = scheme_config(cfg, spec)
    extra.update(extra_config or {})
    extra.setdefault("lowbit", {})["settings"] = cfg.settings()
    t0 = time.perf_counter()
    stats_all: dict[int, LayerStats] = {}
    layer_info: dict[int, dict[str, Any]] = {}
    loaded = None
    c = cfg.calibration
    searches = cfg.scheme == "smoothquant-w8a8" and (cfg.smoothquant.alpha_auto or
                                                      cfg.smoothquant.act_quant == "per-tensor")
    need_hess = (cfg.scheme == "atom-w4a4" and cfg.atom.gptq) or (
        cfg.scheme == "smoothquant-w8a8" and cfg.smoothquant.gptq)
    if calib_stats is not None:
        loaded, _ = load_stats(Path(calib_stats), spec.num_hidden_layers)
    calibrator = None
    if precomputed is not None:
        loaded = precomputed
    elif loaded is None or searches or need_hess:
        windows = (text if isinstance(text, torch.Tensor) else
                   calibration_windows(src.load_tokenizer(), text, c.num_samples, c.seq_len))
        emb = src.get("model.embed_tokens.weight")
        dec = Decoder(trtllm_config(spec, "float32"), device="cpu", dtype=torch.float32)
        calibrator = Calibrator(dec, emb, windows, c.batch_size,
                                c.hessian_every if need_hess else 0,
                                c.sample_tokens if searches else 0, c.seed, progress)

    def transform(i: int, layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if calibrator is not None:
            stats = calibrator.run_layer(i, layer)
            if loaded is not None:  # keep the reused statistics, add Hessians / samples
                stats = LayerStats(loaded[i].absmax, loaded[i].meansq, stats.hessian,
                                   stats.sample)
        else:
            stats = loaded[i]
        stats_all[i] = LayerStats(stats.absmax, stats.meansq)
        layer, info = _kv_transform(layer, stats, cfg, spec)
        if cfg.scheme == "smoothquant-w8a8":
            out, more = _sq_layer(layer, stats, cfg, spec)
        elif cfg.scheme == "atom-w4a4":
            out, more = _atom_layer(layer, stats, cfg, spec)
        else:
            out, more = _float_kv_layer(layer, stats, cfg), {}
        layer_info[i] = {**info, **more}
        return out

    def finalize(config: dict[str, Any]) -> dict[str, bytes]:
        from safetensors.torch import save

        config.setdefault("lowbit", {})["layers"] = {str(k): v for k, v in layer_info.items()}
        config["lowbit"]["quantize_seconds"] = round(time.perf_counter() - t0, 1)
        tensors: dict[str, torch.Tensor] = {}
        for i, st in stats_all.items():
            tensors.update(st.to_tensors(f"layers.{i}."))
        meta = {"model": src.description, "num_samples": str(c.num_samples),
                "seq_len": str(c.seq_len)}
        return {"calib_stats.safetensors": save({k: v.contiguous() for k, v in tensors.items()},
                                                metadata=meta)}

    return convert(src, output, dtype=dtype, tp_size=tp_size, force=force, transform=transform,
                   quantization=quantization, extra_config=extra, finalize=finalize,
                   progress=progress)


def calibrate(src: SourceModel, text: str | torch.Tensor, c: CalibrationConfig,
              progress: bool = True) -> dict[int, LayerStats]:
    """Statistics of every layer (Hessians and samples included), for `precomputed`."""
    from builder.runtime import Decoder
    from converters.checkpoint import float_layer

    spec = src.spec
    windows = (text if isinstance(text, torch.Tensor) else
               calibration_windows(src.load_tokenizer(), text, c.num_samples, c.seq_len))
    dec = Decoder(trtllm_config(spec, "float32"), device="cpu", dtype=torch.float32)
    cal = Calibrator(dec, src.get("model.embed_tokens.weight"), windows, c.batch_size,
                     c.hessian_every, c.sample_tokens, c.seed, progress)
    return {i: cal.run_layer(i, float_layer(src, i))
            for i in tqdm(range(spec.num_hidden_layers), desc="calibrate", disable=not progress)}
