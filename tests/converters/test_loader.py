"""Model loading: every source format, the GGUF path, and clear errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from converters.errors import UserError
from converters.loader import expected_hf_shapes, open_model, spec_from_hf_config
from tests.conftest import tiny_hf_model


def _same_tensors(src, model):
    sd = model.state_dict()
    for name in expected_hf_shapes(src.spec):
        assert torch.equal(src.get(name), sd[name]), name


def test_safetensors_single(tiny_model_dir):
    arch, model, d = tiny_model_dir
    src = open_model(d)
    assert src.spec.architecture == type(model).__name__
    assert src.spec.attn_bias == (arch == "qwen2")
    assert src.spec.num_key_value_heads == 2 and src.spec.head_size == 16
    _same_tensors(src, model)


def test_sharded_safetensors_and_bin(tmp_path):
    model = tiny_hf_model("llama")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _same_tensors(open_model(tmp_path / "sharded"), model)
    # transformers 5 no longer writes .bin files; older checkpoints on the hub still have them
    model.config.save_pretrained(tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    _same_tensors(open_model(tmp_path / "bin"), model)


def test_llama3_rope_scaling_and_tied_embeddings(tmp_path):
    model = tiny_hf_model("llama", tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "m")
    spec = open_model(tmp_path / "m").spec
    assert spec.tie_word_embeddings
    assert spec.rotary_scaling == {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 16}


def test_gguf_reader_matches_transformers(smollm2_path, smollm2_hf):
    """Our one-parse GGUF reader (config + q/k un-permute) equals transformers' GGUF load."""
    src = open_model(smollm2_path)
    assert src.spec == spec_from_hf_config(smollm2_hf.config)
    sd = smollm2_hf.state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.3.self_attn.k_proj.weight",
                 "model.layers.29.mlp.down_proj.weight", "model.embed_tokens.weight"):
        assert torch.equal(src.get(name), sd[name]), name
    assert src.spec.tie_word_embeddings and src.spec.num_key_value_heads == 3


def test_default_model_is_smollm2(smollm2_path):
    assert smollm2_path.suffix == ".gguf" and "SmolLM2" in smollm2_path.name


# -- bad input ------------------------------------------------------------------------------
def test_unsupported_architecture_lists_supported(tmp_path):
    model = tiny_hf_model("llama")
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"):
        open_model(tmp_path)


def test_corrupt_safetensors(tmp_path):
    tiny_hf_model("llama").save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        open_model(tmp_path)


def test_missing_shard(tmp_path):
    tiny_hf_model("llama").save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(UserError, match="missing"):
        open_model(tmp_path)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    model = tiny_hf_model("llama")
    model.save_pretrained(tmp_path)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(95, 64)
    save_file(sd, str(tmp_path / "model.safetensors"))
    src = open_model(tmp_path)
    with pytest.raises(UserError, match=r"up_proj.weight.*\(95, 64\).*\(96, 64\)"):
        src.get("model.layers.1.mlp.up_proj.weight")


def test_nan_weights_refused(tmp_path):
    model = tiny_hf_model("llama")
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["model.layers.0.self_attn.v_proj.weight"][3, 3] = float("nan")
    model.save_pretrained(tmp_path)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="NaN or Inf"):
        open_model(tmp_path).get("model.layers.0.self_attn.v_proj.weight")


def test_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_model(tmp_path / "nope")
    with pytest.raises(UserError, match="expected config.json"):
        open_model(tmp_path)
