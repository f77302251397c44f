"""TensorRT-LLM checkpoint: writer (with tensor-parallel sharding) and reader (merging shards).

Layout (docs/checkpoint-format.md documents every tensor):
    DIR/config.json           architecture + mapping + quantization, TensorRT-LLM field names
    DIR/rank{r}.safetensors   r in [0, tp_size)
    DIR/tokenizer*.json ...   the tokenizer, so later commands need no model directory

Sharding follows TensorRT-LLM: column-parallel layers (qkv, fc, gate, lm_head) split their
output rows (dim 0), qkv per rank as cat(q_r, k_r, v_r), KV heads duplicated when
num_key_value_heads < tp_size; row-parallel layers (dense, proj) split their input columns
(dim 1); norms and the embedding are replicated; lm_head rows are padded to a multiple of
tp_size.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from converters.architectures import GLOBAL_TENSORS, HF_LAYER_PREFIX, LAYER_TENSORS, QKV_BIAS
from converters.errors import UserError
from converters.loader import ModelSpec, SourceModel

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
}
LAYER_PREFIX = "transformer.layers.{i}."

# How a tensor is split across tensor-parallel ranks, by the name below the layer prefix.
#   "qkv":  indexed by qkv output rows along `dim` (split per head group, see split_qkv)
#   "col":  split evenly along dim 0 (output rows)       "row": split along dim 1 (inputs)
#   "rep":  replicated on every rank
# Quantized schemes add their tensors here (one table for writer and reader).
SHARDING: dict[str, tuple[str, int]] = {
    "attention.qkv.weight": ("qkv", 0),
    "attention.qkv.bias": ("qkv", 0),
    "attention.dense.weight": ("row", 1),
    "mlp.fc.weight": ("col", 0),
    "mlp.gate.weight": ("col", 0),
    "mlp.proj.weight": ("row", 1),
    "input_layernorm.weight": ("rep", 0),
    "post_layernorm.weight": ("rep", 0),
    # SmoothQuant (TensorRT-LLM names): per_channel_scale [1, N] follows the output rows
    "attention.qkv.per_channel_scale": ("qkv", 1),
    "mlp.fc.per_channel_scale": ("col", 1),
    "mlp.gate.per_channel_scale": ("col", 1),
    "attention.dense.per_channel_scale": ("rep", 0),
    "mlp.proj.per_channel_scale": ("rep", 0),
    "attention.dense.smoother": ("row", 1),  # [1, K] follows the input columns
    "mlp.proj.smoother": ("row", 1),
}
for _p in ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj"):
    SHARDING[f"{_p}.act_scale"] = ("rep", 0)
for _n in ("input_layernorm.scale_to_int", "post_layernorm.scale_to_int",
           "attention.quantization_scaling_factor", "mlp.quantization_scaling_factor",
           "attention.kv_cache_scaling_factor"):
    SHARDING[_n] = ("rep", 0)
# Atom tensors exist only with tp_size 1 (converters/quantize.py refuses more): replicated.
for _p in ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj"):
    for _s in ("weights_scaling_factor", "outlier_weight", "outlier_scaling_factor"):
        SHARDING[f"{_p}.{_s}"] = ("rep", 0)
for _n in ("input_layernorm.reorder_index", "post_layernorm.reorder_index",
           "attention.dense.reorder_index"):
    SHARDING[_n] = ("rep", 0)

# Tensors whose dtype is part of the format and is kept whatever --dtype says (scales that
# TensorRT-LLM stores as float32, Atom's fp16 scales, integer codes and indices).
KEEP_DTYPE_SUFFIXES = ("per_channel_scale", "act_scale", "smoother", "scale_to_int",
                       "quantization_scaling_factor", "kv_cache_scaling_factor",
                       "weights_scaling_factor", "outlier_scaling_factor", "reorder_index")
GLOBAL_SHARDING: dict[str, tuple[str, int]] = {
    "transformer.vocab_embedding.weight": ("rep", 0),
    "transformer.ln_f.weight": ("rep", 0),
    "lm_head.weight": ("vocab", 0),
}

# A per-layer transform (quantizer): (layer index, float32 TensorRT-LLM tensors) -> tensors.
LayerTransform = Callable[[int, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def trtllm_config(spec: ModelSpec, dtype: str, tp_size: int = 1,
                  quantization: dict[str, Any] | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config.json of a TensorRT-LLM checkpoint for `spec`."""
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, found {dtype!r}")
    cfg: dict[str, Any] = {
        "architecture": spec.architecture,
        "dtype": dtype,
        "logits_dtype": "float32",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_size": spec.head_size,
        "intermediate_size": spec.intermediate_size,
        "hidden_act": spec.hidden_act,
        "norm_epsilon": spec.norm_epsilon,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": spec.rotary_base,
        "rotary_scaling": spec.rotary_scaling,
        "max_position_embeddings": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "attn_bias": spec.attn_bias,
        "mlp_bias": False,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "mapping": {"world_size": tp_size, "tp_size": tp_size, "pp_size": 1},
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": None, "group_size": 128,
                         **(quantization or {})},
    }
    if spec.sliding_window:
        cfg["sliding_window"] = spec.sliding_window
    cfg.update(extra or {})
    return cfg


def spec_from_config(cfg: dict[str, Any]) -> ModelSpec:
    fields = ModelSpec.__dataclass_fields__
    return ModelSpec(**{k: cfg.get(k) for k in fields if k in cfg or k != "sliding_window"})


def check_tp(spec: ModelSpec, tp: int) -> None:
    nh, nkv = spec.num_attention_heads, spec.num_key_value_heads
    if tp < 1:
        raise UserError(f"--tp-size must be >= 1, found {tp}")
    problems = []
    if nh % tp:
        problems.append(f"num_attention_heads {nh}")
    if nkv >= tp and nkv % tp or nkv < tp and tp % nkv:
        problems.append(f"num_key_value_heads {nkv} (needs nkv % tp == 0 or tp % nkv == 0)")
    if spec.intermediate_size % tp:
        problems.append(f"intermediate_size {spec.intermediate_size}")
    if spec.hidden_size % tp:
        problems.append(f"hidden_size {spec.hidden_size}")
    if problems:
        raise UserError(f"--tp-size {tp} does not divide " + ", ".join(problems))


def _qkv_sizes(spec: ModelSpec) -> tuple[int, int]:
    return spec.num_attention_heads * spec.head_size, spec.num_key_value_heads * spec.head_size


def split_qkv(t: torch.Tensor, spec: ModelSpec, tp: int, rank: int, dim: int) -> torch.Tensor:
    """Rank `rank`'s cat(q_r, k_r, v_r) along `dim` of a tensor indexed by qkv output rows."""
    nq, nkv_rows = _qkv_sizes(spec)
    q, k, v = torch.split(t, [nq, nkv_rows, nkv_rows], dim=dim)
    d, nkv = spec.head_size, spec.num_key_value_heads
    q_r = torch.chunk(q, tp, dim=dim)[rank]
    if nkv >= tp:
        k_r, v_r = torch.chunk(k, tp, dim=dim)[rank], torch.chunk(v, tp, dim=dim)[rank]
    else:  # one KV head per rank, each head serving tp // nkv ranks
        head = rank // (tp // nkv)
        k_r = k.narrow(dim, head * d, d)
        v_r = v.narrow(dim, head * d, d)
    return torch.cat((q_r, k_r, v_r), dim=dim)


def merge_qkv(parts: list[torch.Tensor], spec: ModelSpec, dim: int) -> torch.Tensor:
    """Inverse of split_qkv over all ranks (duplicated KV heads are taken once)."""
    tp = len(parts)
    nq, nkv_rows = _qkv_sizes(spec)
    d, nkv = spec.head_size, spec.num_key_value_heads
    kv_r = nkv_rows // tp if nkv >= tp else d
    split = [torch.split(p, [nq // tp, kv_r, kv_r], dim=dim) for p in parts]
    owners = range(tp) if nkv >= tp else range(0, tp, tp // nkv)
    q = torch.cat([s[0] for s in split], dim=dim)
    k = torch.cat([split[r][1] for r in owners], dim=dim)
    v = torch.cat([split[r][2] for r in owners], dim=dim)
    return torch.cat((q, k, v), dim=dim)


def shard(t: torch.Tensor, rule: tuple[str, int], spec: ModelSpec, tp: int,
          rank: int) -> torch.Tensor:
    kind, dim = rule
    if tp == 1 or kind == "rep":
        return t
    if kind == "qkv":
        return split_qkv(t, spec, tp, rank, dim)
    if kind == "vocab":  # pad rows to a multiple of tp, as TensorRT-LLM does
        pad = (-t.shape[dim]) % tp
        if pad:
            t = torch.cat((t, t.new_zeros(*t.shape[:dim], pad, *t.shape[dim + 1:])), dim=dim)
        return torch.chunk(t, tp, dim=dim)[rank]
    if t.shape[dim] % tp:
        raise UserError(f"cannot split dimension {dim} of size {t.shape[dim]} over {tp} ranks")
    return torch.chunk(t, tp, dim=dim)[rank]


def unshard(parts: list[torch.Tensor], rule: tuple[str, int], spec: ModelSpec) -> torch.Tensor:
    kind, dim = rule
    if len(parts) == 1 or kind == "rep":
        return parts[0]
    if kind == "qkv":
        return merge_qkv(parts, spec, dim)
    t = torch.cat(parts, dim=dim)
    if kind == "vocab":
        t = t.narrow(dim, 0, spec.vocab_size)
    return t


def sharding_rule(name: str) -> tuple[str, int]:
    """The sharding of a full TensorRT-LLM tensor name."""
    if name in GLOBAL_SHARDING:
        return GLOBAL_SHARDING[name]
    if name.startswith("transformer.layers."):
        local = name.split(".", 3)[3]
        if local in SHARDING:
            return SHARDING[local]
    raise UserError(f"no tensor-parallel sharding rule for tensor {name!r}")


def float_layer(src: SourceModel, i: int) -> dict[str, torch.Tensor]:
    """Layer i in TensorRT-LLM names, float32: qkv assembled as cat(q, k, v) on dim 0."""
    pre = HF_LAYER_PREFIX.format(i=i)
    hf = {ours: src.get(pre + theirs).float() for ours, theirs in LAYER_TENSORS.items()}
    out = {
        "attention.qkv.weight": torch.cat(
            (hf.pop("attention.q.weight"), hf.pop("attention.k.weight"),
             hf.pop("attention.v.weight"))),
        **hf,
    }
    if src.spec.attn_bias:
        b = [src.get(pre + QKV_BIAS[f"attention.{p}.bias"]).float() for p in "qkv"]
        out["attention.qkv.bias"] = torch.cat(b)
    return out


def release_layer(src: SourceModel, i: int) -> None:
    release = getattr(src, "release", None)
    if release is None:
        return
    pre = HF_LAYER_PREFIX.format(i=i)
    for theirs in list(LAYER_TENSORS.values()) + list(QKV_BIAS.values()):
        release(pre + theirs)


def _cast(t: torch.Tensor, dtype: torch.dtype, name: str = "") -> torch.Tensor:
    if not t.is_floating_point() or name.endswith(KEEP_DTYPE_SUFFIXES):
        return t
    return t.to(dtype)


def check_output_dir(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise UserError(f"output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise UserError(f"output directory {output} is not empty; pass --force to replace it")


def write_atomically(output: Path, force: bool, fill: Callable[[Path], None]) -> None:
    """Call fill(tmp_dir) and move tmp_dir to `output` only when it returned: nothing is left
    half-written, whatever fails."""
    output = Path(output)
    check_output_dir(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        fill(tmp)
        mask = os.umask(0)
        os.umask(mask)  # mkdtemp makes 0700 dirs; give the result the usual permissions
        os.chmod(tmp, 0o777 & ~mask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            os.replace(output, old / "d")
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_rank(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory (tied lm_head): give each its own.
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        v = v.contiguous()
        if v.data_ptr() in seen:
            v = v.clone()
        seen.add(v.data_ptr())
        out[k] = v
    save_file(out, str(path), metadata={"format": "pt"})


def convert(src: SourceModel, output: Path, dtype: str = "float16", tp_size: int = 1,
            force: bool = False, transform: LayerTransform | None = None,
            quantization: dict[str, Any] | None = None, extra_config: dict[str, Any] | None = None,
            finalize: Callable[[dict[str, Any]], dict[str, bytes]] | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Write `src` as a TensorRT-LLM checkpoint in `output`. Returns the config written.

    Streams layer by layer: each float layer is read, transformed, cast, sharded into the rank
    dicts and released, so the peak is about one copy of the output plus one float layer.
    finalize(config), called after the last layer, may complete the config and returns extra
    files to write beside it.
    """
    spec = src.spec
    check_tp(spec, tp_size)
    config = trtllm_config(spec, dtype, tp_size, quantization, extra_config)
    out_dtype = DTYPES[dtype]
    check_output_dir(Path(output), force)
    src.check_complete()
    tokenizer = src.load_tokenizer()
    ranks: list[dict[str, torch.Tensor]] = [{} for _ in range(tp_size)]

    def put(name: str, t: torch.Tensor) -> None:
        rule = sharding_rule(name)
        for r in range(tp_size):
            ranks[r][name] = shard(t, rule, spec, tp_size, r).contiguous()

    embed = src.get(GLOBAL_TENSORS["transformer.vocab_embedding.weight"])
    put("transformer.vocab_embedding.weight", _cast(embed, out_dtype))
    for i in tqdm(range(spec.num_hidden_layers), desc="convert", unit="layer",
                  disable=not progress):
        layer = float_layer(src, i)
        if transform is not None:
            layer = transform(i, layer)
        for local, t in layer.items():
            put(LAYER_PREFIX.format(i=i) + local, _cast(t, out_dtype, local))
        del layer
        release_layer(src, i)
    put("transformer.ln_f.weight", _cast(src.get(GLOBAL_TENSORS["transformer.ln_f.weight"]),
                                         out_dtype))
    lm = embed if spec.tie_word_embeddings else src.get("lm_head.weight")
    put("lm_head.weight", _cast(lm, out_dtype))

    extra_files = finalize(config) if finalize is not None else {}

    def fill(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for r in range(tp_size):
            save_rank(ranks[r], tmp / f"rank{r}.safetensors")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)

    write_atomically(Path(output), force, fill)
    return config


@dataclass
class Checkpoint:
    """A checkpoint read back: its config and the merged (tp=1) tensors."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def spec(self) -> ModelSpec:
        return spec_from_config(self.config)

    def layer(self, i: int) -> dict[str, torch.Tensor]:
        pre = LAYER_PREFIX.format(i=i)
        return {k[len(pre):]: v for k, v in self.tensors.items() if k.startswith(pre)}

    def load_tokenizer(self) -> Any:
        return load_tokenizer(self.path)


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The tokenizer saved beside a checkpoint (no tensors are read)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer_config.json").is_file():
        raise UserError(f"checkpoint {path} has no tokenizer (tokenizer_config.json); "
                        f"convert from a model that ships one")
    return AutoTokenizer.from_pretrained(str(path))


REQUIRED_CONFIG = ("architecture", "dtype", "vocab_size", "hidden_size", "num_hidden_layers",
                   "num_attention_heads", "num_key_value_heads", "head_size",
                   "intermediate_size", "norm_epsilon", "rotary_base", "mapping")


def read_config(path: Path) -> dict[str, Any]:
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path}: expected a checkpoint directory with config.json, found none")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_file}: not valid JSON ({e})") from None
    missing = [k for k in REQUIRED_CONFIG if k not in cfg]
    if missing:
        raise UserError(f"{cfg_file}: not a TensorRT-LLM checkpoint config, missing {missing}")
    return cfg


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint and merge its tensor-parallel shards."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_config(path)
    spec = spec_from_config(cfg)
    tp = int(cfg["mapping"].get("tp_size", 1))
    parts: list[dict[str, torch.Tensor]] = []
    for r in range(tp):
        f = path / f"rank{r}.safetensors"
        if not f.is_file():
            raise UserError(f"{path}: tp_size is {tp} but {f.name} is missing")
        try:
            parts.append(load_file(str(f)))
        except Exception as e:
            raise UserError(f"{f}: not a readable safetensors file ({e})") from None
    names = list(parts[0])
    for r, p in enumerate(parts[1:], 1):
        if set(p) != set(names):
            raise UserError(f"{path}: rank{r} holds other tensor names than rank0")
    tensors = {n: unshard([p[n] for p in parts], sharding_rule(n), spec) for n in names}
    return Checkpoint(path=path, config=cfg, tensors=tensors)
