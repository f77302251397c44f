"""Exact execution of quantized checkpoints by the reference runtime."""

from __future__ import annotations

import pytest
import torch

from builder.runtime import ReferenceModel
from converters.checkpoint import read_checkpoint
from converters.loader import open_model
from converters.quantize import quantize_model
from converters.schemes import (
    AtomConfig,
    CalibrationConfig,
    KVCacheConfig,
    QuantizeConfig,
    SmoothQuantConfig,
)
from lowbit.packing import unpack_int4
from tests.conftest import tiny_hf_model

CAL = CalibrationConfig(num_samples=8, seq_len=32, batch_size=4, hessian_every=2,
                        sample_tokens=128)
SCHEMES = {
    "sq-token": QuantizeConfig(scheme="smoothquant-w8a8", calibration=CAL),
    "sq-tensor-kv8": QuantizeConfig(scheme="smoothquant-w8a8", kv=KVCacheConfig(kind="int8"),
                                    smoothquant=SmoothQuantConfig(act_quant="per-tensor",
                                                                  alpha_auto=True),
                                    calibration=CAL),
    "atom-kv4": QuantizeConfig(scheme="atom-w4a4", atom=AtomConfig(outliers=16, group_size=32),
                               kv=KVCacheConfig(kind="int4", k_group_size=16, smooth_k=0.5),
                               calibration=CAL),
    "fp-kv4": QuantizeConfig(kv=KVCacheConfig(kind="int4"), calibration=CAL),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    tiny_hf_model("qwen2", hidden_size=128, intermediate_size=192).save_pretrained(d / "hf")
    w = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    from converters.checkpoint import convert

    convert(open_model(d / "hf"), d / "float", dtype="float32", progress=False)
    for name, cfg in SCHEMES.items():
        quantize_model(open_model(d / "hf"), d / name, cfg, w, dtype="float32", progress=False)
    return d


def _logits(path, ids):
    m = ReferenceModel(read_checkpoint(path), device="cpu")
    return m, m.forward(ids, m.new_cache(*ids.shape))


@pytest.mark.parametrize("name", list(SCHEMES))
def test_quantized_close_to_float(checkpoints, name):
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    _, ref = _logits(checkpoints / "float", ids)
    _, got = _logits(checkpoints / name, ids)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.3, rel  # quantized (not identical), and still the same model


@pytest.mark.parametrize("name", list(SCHEMES))
def test_prefill_equals_incremental_decode(checkpoints, name):
    """Every quantization step is per token (or static), and attention always reads the
    quantized cache: prefilling T+1 tokens equals prefilling T and decoding one."""
    ids = torch.randint(0, 128, (2, 13), generator=torch.Generator().manual_seed(2))
    m, full = _logits(checkpoints / name, ids)
    cache = m.new_cache(2, 13)
    m.forward(ids[:, :12], cache)
    step = m.forward(ids[:, 12:], cache)
    assert torch.allclose(step[:, 0], full[:, 12], rtol=1e-5, atol=1e-5)


def test_w8a8_linear_is_integer_exact(checkpoints):
    """The runtime's qkv output equals an independent float64 computation from the stored
    int8 weight, per-channel scales and per-token activation quantization."""
    m = ReferenceModel(read_checkpoint(checkpoints / "sq-token"), device="cpu")
    t = read_checkpoint(checkpoints / "sq-token").layer(0)
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(3))
    got = m.layers[0].qkv(x)
    s = x.abs().amax(1, keepdim=True) / 127
    xq = torch.clamp(torch.round(x / s), -127, 127)
    acc = xq.double() @ t["attention.qkv.weight"].double().T
    want = acc * s.double() * t["attention.qkv.per_channel_scale"].double() + \
        t["attention.qkv.bias"].double()
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-6)


def test_atom_linear_matches_dequantized_product(checkpoints):
    ck = read_checkpoint(checkpoints / "atom-kv4")
    m = ReferenceModel(ck, device="cpu")
    t = ck.layer(0)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(4))
    got = m.layers[0].dense(x)
    perm = t["attention.dense.reorder_index"].long()
    xr = x[:, perm]
    ko = t["attention.dense.outlier_weight"].shape[1]
    kn = 128 - ko
    # independent dequantization of activations (clip 0.9, groups of 32) and weights
    xg = xr[:, :kn].reshape(3, -1, 32)
    s4 = (xg.abs().amax(-1) * 0.9 / 7).half().float()
    xq4 = torch.clamp(torch.round(xg / s4[..., None]), -8, 7) * s4[..., None]
    s8 = (xr[:, kn:].abs().amax(-1) / 127).half().float()
    xq8 = torch.clamp(torch.round(xr[:, kn:] / s8[:, None]), -127, 127) * s8[:, None]
    w4 = unpack_int4(t["attention.dense.weight"]).float().reshape(128, -1, 32) * \
        t["attention.dense.weights_scaling_factor"].float()[..., None]
    w8 = t["attention.dense.outlier_weight"].float() * \
        t["attention.dense.outlier_scaling_factor"].float()[:, None]
    want = xq4.reshape(3, kn).double() @ w4.reshape(128, kn).double().T + \
        xq8.double() @ w8.double().T
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", ["smoothquant-w8a8", "atom-w4a4"])
def test_cuda_kernels_match_reference_path(tmp_path, scheme):
    """On the GPU the quantized linears run on lowbit.ops; the same model with every linear
    forced onto lowbit.reference (same device, same fp16 compute) gives the same logits."""
    from builder.quantized import kernels_available

    if not kernels_available():
        pytest.skip("the kernel library is not built (cmake --build build)")
    tiny_hf_model("llama", hidden_size=256, intermediate_size=384, num_attention_heads=4,
                  num_key_value_heads=2).save_pretrained(tmp_path / "hf")
    cfg = QuantizeConfig(scheme=scheme, atom=AtomConfig(outliers=128, group_size=128),
                         calibration=CAL)
    w = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(5))
    quantize_model(open_model(tmp_path / "hf"), tmp_path / "q", cfg, w, progress=False)
    m = ReferenceModel(read_checkpoint(tmp_path / "q"), device="cuda")
    linears = [getattr(layer, n) for layer in m.layers
               for n in ("qkv", "dense", "fc", "gate", "proj")]
    assert all(lin.kernel for lin in linears)
    ids = torch.randint(0, 128, (2, 37), generator=torch.Generator().manual_seed(6))
    got = m.forward(ids, m.new_cache(2, 37))
    for lin in linears:
        lin.kernel = False
    want = m.forward(ids, m.new_cache(2, 37))
    assert torch.isfinite(got).all()
    assert ((got - want).norm() / want.norm()).item() < 1e-2
