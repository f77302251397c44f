"""Shared fixtures: tiny random models of each architecture, the real SmolLM2 checkpoint, and the
marker rules (gpu / tensorrt tests skip with a reason where the hardware or package is absent)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs the `tensorrt` Python package, "
                                                    "which is not installed"))


TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def tiny_hf_model(arch: str, seed: int = 0, **overrides):
    """A random transformers model of `arch` (Llama / Mistral / Qwen2), float32, eval mode."""
    import transformers as tf

    cfg_cls, model_cls = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
    }[arch]
    kw = {**TINY, "tie_word_embeddings": False}
    if arch == "llama":
        kw["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    if arch == "mistral":
        kw["sliding_window"] = 6
    kw.update(overrides)
    torch.manual_seed(seed)
    return model_cls(cfg_cls(**kw)).eval()


@pytest.fixture(params=["llama", "mistral", "qwen2"])
def tiny_model_dir(request, tmp_path):
    """(arch, transformers model, directory it was saved to as safetensors)."""
    m = tiny_hf_model(request.param)
    d = tmp_path / f"hf-{request.param}"
    m.save_pretrained(d)
    return request.param, m, d


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from converters.loader import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory, smollm2_path) -> Path:
    """The embedded default model converted once per session (float32)."""
    from converters.checkpoint import convert
    from converters.loader import open_model

    out = tmp_path_factory.mktemp("smol") / "ckpt-f32"
    convert(open_model(smollm2_path), out, dtype="float32", progress=False)
    return out


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_path):
    """transformers' own load of the same GGUF: the reference we compare with."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32).eval()


def _smollm2_quantized(tmp_path_factory, smollm2_path, name: str, cfg) -> Path:
    from converters.data import calibration_text
    from converters.loader import open_model
    from converters.quantize import quantize_model

    out = tmp_path_factory.mktemp("smolq") / name
    quantize_model(open_model(smollm2_path), out, cfg, calibration_text(), dtype="float16",
                   progress=False)
    return out


# Small calibration (4 windows of 64 tokens, no GPTQ, no searches): quick checkpoints with the
# real shapes and formats, for graph and engine tests (not for accuracy).
SMALL_CALIBRATION = dict(num_samples=4, seq_len=64, batch_size=4, hessian_every=1,
                         sample_tokens=128)


@pytest.fixture(scope="session")
def smollm2_atom_checkpoint(tmp_path_factory, smollm2_path) -> Path:
    """SmolLM2 quantized with Atom W4A4 + INT4 KV (float16 checkpoint, small calibration)."""
    from converters.schemes import AtomConfig, CalibrationConfig, KVCacheConfig, QuantizeConfig

    cfg = QuantizeConfig(scheme="atom-w4a4",
                         atom=AtomConfig(gptq=False, weight_clip_search=False),
                         kv=KVCacheConfig(kind="int4", k_group_size=32, smooth_k=0.5),
                         calibration=CalibrationConfig(**SMALL_CALIBRATION))
    return _smollm2_quantized(tmp_path_factory, smollm2_path, "atom", cfg)


@pytest.fixture(scope="session")
def smollm2_sq_checkpoint(tmp_path_factory, smollm2_path) -> Path:
    """SmolLM2 quantized with SmoothQuant W8A8 per token (float16 checkpoint, small
    calibration, no GPTQ)."""
    from converters.schemes import CalibrationConfig, QuantizeConfig, SmoothQuantConfig

    cfg = QuantizeConfig(scheme="smoothquant-w8a8", smoothquant=SmoothQuantConfig(gptq=False),
                         calibration=CalibrationConfig(**SMALL_CALIBRATION))
    return _smollm2_quantized(tmp_path_factory, smollm2_path, "sq", cfg)


@pytest.fixture(scope="session")
def smollm2_sq_static_int8kv_checkpoint(tmp_path_factory, smollm2_path) -> Path:
    """SmolLM2 quantized with SmoothQuant W8A8, static per-tensor activation scales and an INT8
    KV cache (float16 checkpoint, small calibration, no GPTQ)."""
    from converters.schemes import (
        CalibrationConfig,
        KVCacheConfig,
        QuantizeConfig,
        SmoothQuantConfig,
    )

    cfg = QuantizeConfig(scheme="smoothquant-w8a8",
                         smoothquant=SmoothQuantConfig(gptq=False, act_quant="per-tensor"),
                         kv=KVCacheConfig(kind="int8"),
                         calibration=CalibrationConfig(**SMALL_CALIBRATION))
    return _smollm2_quantized(tmp_path_factory, smollm2_path, "sq-static-int8kv", cfg)
