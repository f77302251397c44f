"""Reference runtime vs transformers: logits through prefill and 8 cached decode steps, and
perplexity on the same windows."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from builder.evaluate import perplexity, windows
from builder.runtime import ReferenceModel
from converters.checkpoint import convert, read_checkpoint
from converters.errors import UserError
from converters.loader import open_model


def _hf_cache_name(hf) -> str:
    """The KV-cache argument and output field of a transformers model: `cache` from 5.24 on (where
    `past_key_values` is deprecated, to go in 5.40), `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def _compare_with_transformers(hf, ref, ids, steps=8, tol=1e-4):
    """Prefill `ids` [B, T] then `steps` greedy tokens through both models' KV caches."""
    kv = _hf_cache_name(hf)
    cache = ref.new_cache(ids.shape[0], ids.shape[1] + steps)
    got = ref.forward(ids, cache)
    with torch.no_grad():
        out = hf(ids, use_cache=True)
    worst = (got - out.logits).abs().max().item()
    pkv = getattr(out, kv)
    for _ in range(steps):
        nxt = out.logits[:, -1:].argmax(-1)
        got = ref.forward(nxt, cache)
        with torch.no_grad():
            out = hf(nxt, use_cache=True, **{kv: pkv})
        pkv = getattr(out, kv)
        worst = max(worst, (got - out.logits).abs().max().item())
    assert worst <= tol, f"max |logits - transformers| = {worst}"
    return worst


@pytest.mark.parametrize("tp", [1, 2])
def test_tiny_models_match_transformers(tiny_model_dir, tmp_path, tp):
    """Llama (llama3 RoPE scaling), Mistral (sliding window 6 < 17 tokens), Qwen2 (qkv bias);
    via a TP=2 checkpoint too, merged back by the reader."""
    arch, hf, d = tiny_model_dir
    convert(open_model(d), tmp_path / "ck", dtype="float32", tp_size=tp, progress=False)
    ref = ReferenceModel(read_checkpoint(tmp_path / "ck"), device="cpu")
    torch.manual_seed(1)
    _compare_with_transformers(hf, ref, torch.randint(0, 128, (2, 9)))


def test_smollm2_matches_transformers(smollm2_checkpoint, smollm2_hf):
    ck = read_checkpoint(smollm2_checkpoint)
    ref = ReferenceModel(ck, device="cpu")
    tok = ck.load_tokenizer()
    ids = torch.tensor([tok("The quick brown fox jumps over the lazy dog because").input_ids])
    _compare_with_transformers(smollm2_hf, ref, ids)


def test_smollm2_perplexity_matches_transformers(smollm2_checkpoint, smollm2_hf):
    from converters.data import evaluation_text

    ck = read_checkpoint(smollm2_checkpoint)
    tok = ck.load_tokenizer()
    wins = windows(tok(evaluation_text(), add_special_tokens=False).input_ids, 256)[:3]
    ppl, _, n = perplexity(ReferenceModel(ck, device="cpu"), wins, batch_size=2, progress=False)
    with torch.no_grad():
        logits = smollm2_hf(wins).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), wins[:, 1:].reshape(-1),
                          reduction="sum").item()
    ref_ppl = math.exp(nll / n)
    assert n == 3 * 255
    assert abs(ppl / ref_ppl - 1) < 1e-3, (ppl, ref_ppl)
    assert 2 < ppl < 100  # a real model on real text, not noise (vocab 49152)


def test_windows_refuse_short_text():
    with pytest.raises(UserError, match="10 tokens, shorter than one window of --seq-len 512"):
        windows(list(range(10)), 512)
    assert windows(list(range(1100)), 512).shape == (2, 512)


def test_cache_overflow_is_an_error(tmp_path):
    from tests.conftest import tiny_hf_model

    tiny_hf_model("llama").save_pretrained(tmp_path / "hf")
    convert(open_model(tmp_path / "hf"), tmp_path / "ck", dtype="float32", progress=False)
    ref = ReferenceModel(read_checkpoint(tmp_path / "ck"), device="cpu")
    cache = ref.new_cache(1, 4)
    with pytest.raises(UserError, match="exceeds the KV cache"):
        ref.forward(torch.zeros(1, 5, dtype=torch.long), cache)
