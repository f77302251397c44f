"""The exact (float) transforms: SmoothQuant folds, Atom reorder folds and K smoothing leave
the model's function unchanged before any rounding."""

from __future__ import annotations

import pytest
import torch

from builder.runtime import ReferenceModel
from converters import atom as A
from converters import kvquant as KV
from converters import smoothquant as SQ
from converters.checkpoint import Checkpoint, convert, read_checkpoint
from converters.loader import open_model
from tests.conftest import tiny_hf_model


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A float32 Qwen2 (qkv bias, GQA 4/2) checkpoint read back."""
    tiny_hf_model("qwen2", hidden_size=128, intermediate_size=192).save_pretrained(tmp_path / "h")
    convert(open_model(tmp_path / "h"), tmp_path / "ck", dtype="float32", progress=False)
    return read_checkpoint(tmp_path / "ck")


def _with_layers(ck: Checkpoint, fn) -> Checkpoint:
    t = dict(ck.tensors)
    for i in range(ck.spec.num_hidden_layers):
        pre = f"transformer.layers.{i}."
        new = fn(ck.layer(i))
        for k in [k for k in t if k.startswith(pre)]:
            del t[k]
        t.update({pre + k: v for k, v in new.items()})
    return Checkpoint(ck.path, ck.config, t)


def _logits(ck: Checkpoint, ids):
    m = ReferenceModel(ck, device="cpu")
    return m.forward(ids, m.new_cache(*ids.shape))


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_smoothing_folds_are_exact(tiny_ckpt):
    s = tiny_ckpt.spec
    g = torch.Generator().manual_seed(0)
    h, i = s.hidden_size, s.intermediate_size

    def fold(layer):
        scales = {"qkv": torch.rand(h, generator=g) * 4 + 0.1,
                  "fc": torch.rand(h, generator=g) * 4 + 0.1,
                  "proj": torch.rand(i, generator=g) * 4 + 0.1,
                  "dense": SQ.group_shared(torch.rand(h, generator=g) * 4 + 0.1,
                                           s.num_attention_heads, s.num_key_value_heads,
                                           s.head_size)}
        return SQ.fold_layer(layer, scales, s.num_attention_heads, s.num_key_value_heads,
                             s.head_size)

    ids = torch.randint(0, 128, (2, 20), generator=g)
    ref = _logits(tiny_ckpt, ids)
    assert _rel(_logits(_with_layers(tiny_ckpt, fold), ids), ref) < 1e-5


def test_reorder_folds_are_exact(tiny_ckpt):
    s = tiny_ckpt.spec
    g = torch.Generator().manual_seed(1)

    def fold(layer):
        perms = {t: torch.randperm(n, generator=g).to(torch.int32) for t, n in (
            ("qkv_in", s.hidden_size), ("fc_in", s.hidden_size), ("dense_in", s.hidden_size),
            ("proj_in", s.intermediate_size))}
        return A.fold_layer(layer, perms)

    ids = torch.randint(0, 128, (2, 20), generator=g)
    ref = _logits(tiny_ckpt, ids)
    assert _rel(_logits(_with_layers(tiny_ckpt, fold), ids), ref) < 1e-5


def test_k_smoothing_is_exact_through_rope(tiny_ckpt):
    s = tiny_ckpt.spec
    g = torch.Generator().manual_seed(2)

    def fold(layer):
        lam = KV.k_smoothing_scales(torch.rand(s.num_key_value_heads * s.head_size,
                                               generator=g) * 10, s.num_key_value_heads,
                                    s.head_size, 0.7)
        return KV.fold_k_smoothing(layer, lam, s.num_attention_heads, s.num_key_value_heads,
                                   s.head_size)

    ids = torch.randint(0, 128, (2, 20), generator=g)
    ref = _logits(tiny_ckpt, ids)
    assert _rel(_logits(_with_layers(tiny_ckpt, fold), ids), ref) < 1e-5


def test_k_smoothing_pairs_share_scales():
    lam = KV.k_smoothing_scales(torch.arange(1.0, 17.0), 2, 8, 1.0).reshape(2, 2, 4)
    assert torch.equal(lam[:, 0], lam[:, 1])


def test_outlier_count_rounds_up_to_whole_groups():
    assert A.outlier_count(576, 128, 128) == 192
    assert A.outlier_count(576, 128, 64) == 128
    assert A.outlier_count(1536, 128, 128) == 128
    assert A.outlier_count(4096, 128, 128) == 128
    assert A.outlier_count(11008, 128, 128) == 128 + (11008 - 128) % 128
    with pytest.raises(ValueError, match="larger than the input size"):
        A.outlier_count(576, 600, 128)
