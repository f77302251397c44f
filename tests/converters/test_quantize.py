"""Quantized conversion end to end on tiny models: TensorRT-LLM names, shapes and dtypes for
both schemes, settings in config.json, statistics reuse, and clear errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch

from converters.checkpoint import read_checkpoint
from converters.errors import UserError
from converters.loader import open_model
from converters.quantize import calibration_windows, quantize_model
from converters.schemes import (
    AtomConfig,
    CalibrationConfig,
    KVCacheConfig,
    QuantizeConfig,
    SmoothQuantConfig,
)
from tests.conftest import tiny_hf_model

H, INTER, NH, NKV, D = 128, 192, 4, 2, 32
CAL = CalibrationConfig(num_samples=8, seq_len=32, batch_size=4, hessian_every=2,
                        sample_tokens=128)


@pytest.fixture
def hf_dir(tmp_path):
    tiny_hf_model("qwen2", hidden_size=H, intermediate_size=INTER).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _windows(seed=0):
    return torch.randint(0, 128, (CAL.num_samples, CAL.seq_len),
                         generator=torch.Generator().manual_seed(seed))


def _layer0(path):
    return read_checkpoint(path).layer(0)


@pytest.mark.parametrize("act, kv", [("per-token", "fp16"), ("per-tensor", "int8")])
def test_smoothquant_tensors(hf_dir, tmp_path, act, kv):
    cfg = QuantizeConfig(scheme="smoothquant-w8a8", kv=KVCacheConfig(kind=kv),
                         smoothquant=SmoothQuantConfig(alpha=0.6, act_quant=act),
                         calibration=CAL)
    conf = quantize_model(open_model(hf_dir), tmp_path / "sq", cfg, _windows(), progress=False)
    assert conf["quantization"]["quant_algo"] == (
        "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN" if act == "per-token"
        else "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN")
    assert conf["quantization"]["kv_cache_quant_algo"] == (None if kv == "fp16" else "INT8")
    t = _layer0(tmp_path / "sq")
    qkv_n = (NH + 2 * NKV) * D
    want = {
        "attention.qkv.weight": ((qkv_n, H), torch.int8),
        "attention.qkv.per_channel_scale": ((1, qkv_n), torch.float32),
        "attention.qkv.bias": ((qkv_n,), torch.float16),
        "attention.dense.weight": ((H, NH * D), torch.int8),
        "attention.dense.smoother": ((1, NH * D), torch.float32),
        "mlp.fc.weight": ((INTER, H), torch.int8),
        "mlp.gate.per_channel_scale": ((1, INTER), torch.float32),
        "mlp.proj.weight": ((H, INTER), torch.int8),
        "mlp.proj.smoother": ((1, INTER), torch.float32),
        "input_layernorm.weight": ((H,), torch.float16),
        "input_layernorm.scale_to_int": ((1,), torch.float32),
        "post_layernorm.scale_to_int": ((1,), torch.float32),
        "attention.quantization_scaling_factor": ((1,), torch.float32),
        "mlp.quantization_scaling_factor": ((1,), torch.float32),
    }
    if act == "per-tensor":
        want["attention.qkv.act_scale"] = ((1, 1), torch.float32)
        want["mlp.proj.act_scale"] = ((1, 1), torch.float32)
    if kv == "int8":
        want["attention.kv_cache_scaling_factor"] = ((1,), torch.float32)
    for name, (shape, dtype) in want.items():
        assert tuple(t[name].shape) == shape and t[name].dtype == dtype, name
    if act == "per-token":  # TensorRT-LLM writes 1.0 placeholders for dynamic scales
        assert t["input_layernorm.scale_to_int"].item() == 1.0
    else:
        assert t["input_layernorm.scale_to_int"].item() > 1.0
    assert (tmp_path / "sq" / "calib_stats.safetensors").is_file()


def test_atom_tensors_and_config(hf_dir, tmp_path):
    cfg = QuantizeConfig(scheme="atom-w4a4", atom=AtomConfig(outliers=16, group_size=32),
                         kv=KVCacheConfig(kind="int4", k_group_size=16, smooth_k=0.5),
                         calibration=CAL)
    conf = quantize_model(open_model(hf_dir), tmp_path / "atom", cfg, _windows(), progress=False)
    assert conf["quantization"]["quant_algo"] == "W4A4_ATOM"
    assert conf["quantization"]["kv_cache_quant_algo"] == "INT4"
    assert conf["atom"]["group_size"] == 32 and conf["atom"]["act_clip"] == 0.9
    assert conf["kv_cache_int4"] == {"k_group_size": 16, "v_group_size": D, "smooth_k": 0.5}
    on_disk = json.loads((tmp_path / "atom" / "config.json").read_text())
    assert set(on_disk["quantization"]) <= {"quant_algo", "kv_cache_quant_algo", "group_size"}
    t = _layer0(tmp_path / "atom")
    ko_h = 32  # 128 - 16 = 112 is not a multiple of 32: rounded up to 32 outliers
    ko_i = 32  # 192 - 16 = 176 -> 160 normal channels, 32 outliers
    for prefix, n, k, ko in (("attention.qkv", (NH + 2 * NKV) * D, H, ko_h),
                             ("attention.dense", H, NH * D, ko_h), ("mlp.fc", INTER, H, ko_h),
                             ("mlp.gate", INTER, H, ko_h), ("mlp.proj", H, INTER, ko_i)):
        kn = k - ko
        assert tuple(t[f"{prefix}.weight"].shape) == (n, kn // 2), prefix
        assert t[f"{prefix}.weight"].dtype == torch.int8
        assert tuple(t[f"{prefix}.weights_scaling_factor"].shape) == (n, kn // 32)
        assert t[f"{prefix}.weights_scaling_factor"].dtype == torch.float16
        assert tuple(t[f"{prefix}.outlier_weight"].shape) == (n, ko)
        assert t[f"{prefix}.outlier_scaling_factor"].dtype == torch.float16
    for name in ("input_layernorm.reorder_index", "post_layernorm.reorder_index",
                 "attention.dense.reorder_index"):
        assert t[name].dtype == torch.int32
        assert torch.equal(t[name].sort().values, torch.arange(H, dtype=torch.int32))
    assert "mlp.proj.reorder_index" not in t  # folded into fc/gate rows


def test_calib_stats_reuse_gives_same_checkpoint(hf_dir, tmp_path):
    # fixed alpha, no GPTQ: the saved statistics are all it needs (no calibration pass)
    cfg = QuantizeConfig(scheme="smoothquant-w8a8", calibration=CAL,
                         smoothquant=SmoothQuantConfig(alpha=0.6, gptq=False))
    quantize_model(open_model(hf_dir), tmp_path / "a", cfg, _windows(), progress=False)
    quantize_model(open_model(hf_dir), tmp_path / "b", cfg, _windows(5), progress=False,
                   calib_stats=tmp_path / "a" / "calib_stats.safetensors")
    a, b = read_checkpoint(tmp_path / "a").tensors, read_checkpoint(tmp_path / "b").tensors
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- bad input ------------------------------------------------------------------------------
def test_calibration_text_too_short():
    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return type("E", (), {"input_ids": list(range(len(text.split())))})()

    with pytest.raises(UserError, match="calibration text has 3 tokens; --num-samples 2 x "
                                        "--seq-len 4 needs 8"):
        calibration_windows(Tok(), "a b c", 2, 4)


def test_outliers_larger_than_hidden(hf_dir, tmp_path):
    cfg = QuantizeConfig(scheme="atom-w4a4", atom=AtomConfig(outliers=1000, group_size=32),
                         calibration=CAL)
    with pytest.raises(UserError, match="--outliers 1000 is larger than the input size 128"):
        quantize_model(open_model(hf_dir), tmp_path / "x", cfg, _windows(), progress=False)
    assert not (tmp_path / "x").exists()


def test_kv_group_must_divide_head(hf_dir, tmp_path):
    cfg = QuantizeConfig(kv=KVCacheConfig(kind="int4", k_group_size=24), calibration=CAL)
    with pytest.raises(UserError, match="KV group size 24 must divide head_size 32"):
        quantize_model(open_model(hf_dir), tmp_path / "x", cfg, _windows(), progress=False)


def test_nan_calibration_activations(tmp_path):
    model = tiny_hf_model("llama", hidden_size=H, intermediate_size=INTER)
    with torch.no_grad():
        model.model.embed_tokens.weight[7] = float("inf")
    model.save_pretrained(tmp_path / "hf")
    cfg = QuantizeConfig(scheme="smoothquant-w8a8", calibration=CAL)
    w = _windows()
    w[0, 0] = 7
    src = open_model(tmp_path / "hf")
    src.get = lambda name, _g=src.get: _g.__self__._read(name) if "embed" in name else _g(name)
    with pytest.raises(UserError, match="calibration activations at .* contain NaN or Inf"):
        quantize_model(src, tmp_path / "x", cfg, w, progress=False)
    assert not (tmp_path / "x").exists()


def test_atom_refuses_tensor_parallel(hf_dir, tmp_path):
    cfg = QuantizeConfig(scheme="atom-w4a4", atom=AtomConfig(outliers=16, group_size=32),
                         calibration=CAL)
    with pytest.raises(UserError, match="--tp-size 1 only"):
        quantize_model(open_model(hf_dir), tmp_path / "x", cfg, _windows(), tp_size=2,
                       progress=False)


def test_smoothquant_gptq_tensors(hf_dir, tmp_path):
    cfg = QuantizeConfig(scheme="smoothquant-w8a8", calibration=CAL,
                         smoothquant=SmoothQuantConfig(alpha=0.6, gptq=True))
    conf = quantize_model(open_model(hf_dir), tmp_path / "g", cfg, _windows(), progress=False)
    assert conf["lowbit"]["settings"]["gptq"] is True
    t = _layer0(tmp_path / "g")
    assert t["mlp.proj.weight"].dtype == torch.int8
    assert int(t["mlp.proj.weight"].abs().max()) <= 127
    assert t["mlp.proj.per_channel_scale"].dtype == torch.float32
    assert tuple(t["mlp.proj.per_channel_scale"].shape) == (1, H)
