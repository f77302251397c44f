"""TensorRT-LLM checkpoint writer/reader: names, shapes, dtypes, TP shards, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from converters.checkpoint import convert, read_checkpoint
from converters.errors import UserError
from converters.loader import open_model
from tests.conftest import tiny_hf_model


def _expected(model):
    """TensorRT-LLM tensors computed directly from the HF state dict."""
    sd = model.state_dict()
    cfg = model.config
    out = {"transformer.vocab_embedding.weight": sd["model.embed_tokens.weight"],
           "transformer.ln_f.weight": sd["model.norm.weight"],
           "lm_head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    for i in range(cfg.num_hidden_layers):
        p, q = f"model.layers.{i}.", f"transformer.layers.{i}."
        out[q + "attention.qkv.weight"] = torch.cat(
            [sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        if p + "self_attn.q_proj.bias" in sd:
            out[q + "attention.qkv.bias"] = torch.cat(
                [sd[p + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        out[q + "attention.dense.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[q + "mlp.fc.weight"] = sd[p + "mlp.gate_proj.weight"]
        out[q + "mlp.gate.weight"] = sd[p + "mlp.up_proj.weight"]
        out[q + "mlp.proj.weight"] = sd[p + "mlp.down_proj.weight"]
        out[q + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"]
        out[q + "post_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"]
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_names_shapes_dtypes(tiny_model_dir, tmp_path, dtype):
    arch, model, d = tiny_model_dir
    cfg = convert(open_model(d), tmp_path / "ck", dtype=dtype, progress=False)
    ck = read_checkpoint(tmp_path / "ck")
    want = _expected(model)
    assert set(ck.tensors) == set(want)
    tdt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    for name, t in want.items():
        assert ck.tensors[name].dtype == tdt, name
        assert torch.equal(ck.tensors[name], t.to(tdt)), name
    on_disk = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert on_disk == cfg
    for key, value in {"architecture": type(model).__name__, "dtype": dtype, "vocab_size": 128,
                       "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "head_size": 16, "intermediate_size": 96,
                       "hidden_act": "silu", "position_embedding_type": "rope_gpt_neox",
                       "attn_bias": arch == "qwen2", "tie_word_embeddings": False,
                       "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1}}.items():
        assert on_disk[key] == value, key
    assert on_disk["quantization"]["quant_algo"] is None
    assert on_disk["rotary_base"] == model.config.rope_parameters["rope_theta"] if hasattr(
        model.config, "rope_parameters") else True
    assert (on_disk["rotary_scaling"] or {}).get("type") == ("llama3" if arch == "llama" else None)


@pytest.mark.parametrize("tp, nkv", [(2, 2), (4, 2), (2, 1)])
def test_tp_shards_merge_back_exactly(tmp_path, tp, nkv):
    """nkv < tp duplicates KV heads; vocab 127 is padded to a multiple of tp for lm_head."""
    model = tiny_hf_model("qwen2", num_key_value_heads=nkv, vocab_size=127)
    model.save_pretrained(tmp_path / "hf")
    convert(open_model(tmp_path / "hf"), tmp_path / "tp", dtype="float32", tp_size=tp,
            progress=False)
    shards = [load_file(str(tmp_path / "tp" / f"rank{r}.safetensors")) for r in range(tp)]
    d = 16
    kv_rows = max(nkv // tp, 1) * d
    for s in shards:  # per-rank cat(q_r, k_r, v_r)
        assert s["transformer.layers.0.attention.qkv.weight"].shape == (4 * d // tp + 2 * kv_rows,
                                                                          64)
        assert s["transformer.layers.0.attention.dense.weight"].shape == (64, 64 // tp)
        assert s["lm_head.weight"].shape[0] == -(-127 // tp)
    sd = model.state_dict()
    if nkv < tp:  # rank r holds KV head r // (tp // nkv)
        k = sd["model.layers.0.self_attn.k_proj.weight"]
        for r in range(tp):
            got = shards[r]["transformer.layers.0.attention.qkv.weight"][4 * d // tp:][:d]
            head = r // (tp // nkv)
            assert torch.equal(got, k[head * d:(head + 1) * d])
    ck = read_checkpoint(tmp_path / "tp")
    want = _expected(model)
    assert set(ck.tensors) == set(want)
    for name, t in want.items():
        assert torch.equal(ck.tensors[name], t), name


def test_tp_size_must_divide_heads(tmp_path):
    model = tiny_hf_model("llama")
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(UserError, match="does not divide num_attention_heads 4"):
        convert(open_model(tmp_path / "hf"), tmp_path / "ck", tp_size=3, progress=False)
    assert not (tmp_path / "ck").exists()


def test_non_empty_output_refused_then_forced(tmp_path):
    model = tiny_hf_model("llama")
    model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "ck"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(UserError, match="not empty; pass --force"):
        convert(open_model(tmp_path / "hf"), out, progress=False)
    assert (out / "keep.txt").read_text() == "user data"
    convert(open_model(tmp_path / "hf"), out, force=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "rank0.safetensors").is_file()


def test_failure_leaves_nothing_half_written(tmp_path):
    model = tiny_hf_model("llama")
    model.save_pretrained(tmp_path / "hf")

    def failing(i, layer):
        if i == 1:
            raise RuntimeError("boom in layer 1")
        return layer

    with pytest.raises(RuntimeError, match="boom"):
        convert(open_model(tmp_path / "hf"), tmp_path / "ck", transform=failing, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_tied_embeddings_write_lm_head(tmp_path):
    model = tiny_hf_model("llama", tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "hf")
    cfg = convert(open_model(tmp_path / "hf"), tmp_path / "ck", dtype="float32", progress=False)
    ck = read_checkpoint(tmp_path / "ck")
    assert cfg["tie_word_embeddings"] is True
    assert torch.equal(ck.tensors["lm_head.weight"],
                       ck.tensors["transformer.vocab_embedding.weight"])


def test_reader_errors(tmp_path):
    with pytest.raises(UserError, match="expected a checkpoint directory with config.json"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "LlamaForCausalLM"}))
    with pytest.raises(UserError, match="missing"):
        read_checkpoint(tmp_path)


def test_tokenizer_saved_beside_checkpoint(smollm2_checkpoint):
    from converters.checkpoint import load_tokenizer

    names = {p.name for p in smollm2_checkpoint.iterdir()}
    assert {"config.json", "rank0.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    tok = load_tokenizer(smollm2_checkpoint)
    assert tok.decode(tok("Hello world").input_ids) == "Hello world"
