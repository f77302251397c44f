"""Exact execution of quantized checkpoints by the reference runtime."""

from __future__ import annotations

import pytest
import torch

from builder.runtime import ReferenceModel
from converters.checkpoint import read_checkpoint
from converters.errors import UserError
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


def _greedy(m, cache, prompt, steps, feed=None):
    """Prefill `prompt` [B, P], then `steps` decode steps of one token per sequence: the argmax
    of the last logits, or feed[:, j] (teacher forcing). -> (prefill logits [B, P, V], decode
    logits [steps, B, V] (entry j: the logits after feeding token j, which choose token j + 1),
    tokens fed [B, steps])."""
    pre = m.forward(prompt, cache)
    last, outs, toks = pre[:, -1], [], []
    for j in range(steps):
        tok = last.argmax(-1) if feed is None else feed[:, j]
        toks.append(tok)
        outs.append(last)
        last = m.forward(tok[:, None], cache)[:, 0]
    outs.append(last)
    return pre, torch.stack(outs[1:]), torch.stack(toks, 1)


def test_cpu_int4_kv_uses_torch_cache(checkpoints):
    """On CPU the INT4 KV cache stays the torch cache (QuantizedKVCache, no attend hook),
    whatever LOWBIT_USE_KERNELS says: the kernels need CUDA."""
    from builder.quantized import QuantizedKVCache, kv4_kernels_usable

    for name in ("fp-kv4", "atom-kv4"):
        m = ReferenceModel(read_checkpoint(checkpoints / name), device="cpu")
        cache = m.new_cache(2, 8)
        assert type(cache) is QuantizedKVCache and cache.kind == "int4"
        assert not hasattr(cache, "attend") and not kv4_kernels_usable(m)


@pytest.mark.parametrize("name", ["fp-kv4", "atom-kv4"])
def test_paged_int4_cache_matches_torch_cache(checkpoints, name):
    """The paged cache's attend hook (block allocator, block table, flat positions and offsets),
    run by the torch reference of the pool (lowbit.kvcache) on CPU, gives the torch cache's
    logits: prefill 13 then 6 decode steps, batch 2, blocks of 8 tokens (so both sequences
    cross blocks: [0, 1] and [2, 3], then 4 and 5). float32 throughout: the two differ
    only in the order of float32 operations."""
    from builder.quantized import PagedInt4KVCache

    m = ReferenceModel(read_checkpoint(checkpoints / name), device="cpu")
    prompt = torch.randint(0, 128, (2, 13), generator=torch.Generator().manual_seed(7))
    paged = PagedInt4KVCache(m, 2, 19, kernels=False, tokens_per_block=8)
    got = _greedy(m, paged, prompt, 6)
    want = _greedy(m, m.new_cache(2, 19), prompt, 6, feed=got[2])
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
    assert paged.blocks == [[0, 1, 4], [2, 3, 5]] and paged.length == 19
    assert paged.block_table.tolist() == [[0, 1, 4], [2, 3, 5]]
    with pytest.raises(UserError, match="exceeds the KV cache"):
        m.forward(prompt[:, :1], paged)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["fp-kv4"])
def test_cuda_int4_kv_kernels_match_torch_cache(tmp_path, monkeypatch, name):
    """On CUDA an INT4-KV checkpoint runs its cache on the kernels (paged pool, RoPE +
    quantize-append + attention by lowbit.ops); with LOWBIT_USE_KERNELS=0 the same checkpoint
    runs the torch cache (and, for Atom, the reference linears), same device, fp16 compute.
    Batch 2, prefill 61 then 8 greedy decode steps (crossing the 64-token block).

    The two agree but for rounding: the attention kernel rounds the softmax weights to fp16
    before the V product (and dequantizes to fp16 by one fma, vs the torch path's fp32
    product rounded to fp16), <= 1 fp16 ulp per weight, ~1e-3 of each attention output; RoPE
    and the quantized codes agree bit for bit but for last-ulp cos/sin differences. This tiny
    model (random weights, initializer_range 0.1) amplifies such last-bit noise: measured on
    the H100, kernels vs torch cache 0.9e-2 of the logits' norm over the prefill and 0.6-1.8e-2
    per decode step, the same as the torch reference of the paged pool (lowbit.kvcache) vs the
    torch cache (1.3e-2 / 0.7-2.0e-2); a wrong block table or position gives O(1). Bound:
    3e-2 per step. Atom is not compared here: its per-token INT4 activation codes flip on such
    noise and the logits then differ by ~0.14 of their norm (measured), which tests nothing.
    Greedy tokens: the torch path, fed the kernel path's tokens, picks the same ones wherever
    its top-2 logit margin exceeds twice the largest logit difference seen."""
    from builder.quantized import PagedInt4KVCache, QuantizedKVCache, kernels_available

    monkeypatch.setenv("LOWBIT_USE_KERNELS", "1")
    kernels_available.cache_clear()
    if not kernels_available():
        pytest.skip("the kernel library is not built (cmake --build build)")
    # initializer_range 0.1: scores of a few units, so attention is far from uniform and
    # positions / RoPE / the block table matter to the logits
    tiny_hf_model("llama", hidden_size=256, intermediate_size=384, num_attention_heads=4,
                  num_key_value_heads=2, initializer_range=0.1).save_pretrained(tmp_path / "hf")
    cfg = QuantizeConfig(kv=KVCacheConfig(kind="int4", k_group_size=16, smooth_k=0.5),
                         calibration=CAL)
    w = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(5))
    quantize_model(open_model(tmp_path / "hf"), tmp_path / "q", cfg, w, progress=False)
    prompt = torch.randint(0, 128, (2, 61), generator=torch.Generator().manual_seed(8))
    steps = 8

    def run(use_kernels: bool, feed=None):
        monkeypatch.setenv("LOWBIT_USE_KERNELS", "1" if use_kernels else "0")
        kernels_available.cache_clear()
        m = ReferenceModel(read_checkpoint(tmp_path / "q"), device="cuda")
        assert m.dtype == torch.float16
        cache = m.new_cache(2, 61 + steps)
        return cache, _greedy(m, cache, prompt, steps, feed)

    try:
        kc, (kpre, kdec, ktok) = run(True)
        tc, (tpre, tdec, _) = run(False, feed=ktok)
    finally:
        monkeypatch.delenv("LOWBIT_USE_KERNELS")
        kernels_available.cache_clear()
    assert isinstance(kc, PagedInt4KVCache) and kc.kernels and isinstance(tc, QuantizedKVCache)
    assert kc.block_table.tolist() == [[0, 2], [1, 3]]
    got = torch.cat((kpre, kdec.transpose(0, 1)), 1)  # [B, 61 + steps, V]
    want = torch.cat((tpre, tdec.transpose(0, 1)), 1)
    assert torch.isfinite(got).all()
    diff = (got - want).abs()
    rel = ((got - want).norm() / want.norm()).item()
    # tdec[j] are the logits after feeding token j: they chose the kernel run's token j + 1
    top2 = tdec[:-1].topk(2, -1).values
    margin = top2[..., 0] - top2[..., 1]  # [steps - 1, B]
    sure = margin > 2 * diff.max()
    agree = tdec[:-1].argmax(-1) == ktok.T[1:]
    print(f"\n{name}: max |logit diff| {diff.max().item():.3e} (max |logit| "
          f"{want.abs().max().item():.3f}), rel norm {rel:.3e}, greedy tokens agree "
          f"{int(agree.sum())}/{agree.numel()} ({int(sure.sum())} with a clear margin)")
    assert ((kpre - tpre).norm() / tpre.norm()).item() < 3e-2
    for j in range(steps):
        step_rel = ((kdec[j] - tdec[j]).norm() / tdec[j].norm()).item()
        assert step_rel < 3e-2, f"decode step {j}: relative logit difference {step_rel:.3e}"
    assert agree[sure].all()
