"""Checkpoint -> ONNX graph: schemas and checker, and the graph's logits against the reference
runtime (prefill of a ragged batch, then decode steps, pools fed output -> input)."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from builder.onnx_graph import DATA_FILE, GRAPH_CONFIG, MODEL_FILE, build_model, export_onnx
from builder.onnx_ops import DOMAIN, FIELDS, ONNX_ONLY
from builder.verify import verify_checkpoint
from converters.checkpoint import Checkpoint, convert, read_checkpoint
from converters.loader import open_model
from converters.quantize import quantize_model
from converters.schemes import (
    AtomConfig,
    CalibrationConfig,
    KVCacheConfig,
    QuantizeConfig,
    SmoothQuantConfig,
)
from tests.conftest import tiny_hf_model

CAL = CalibrationConfig(num_samples=8, seq_len=32, batch_size=4, hessian_every=2,
                        sample_tokens=128)
ATOM = AtomConfig(outliers=16, group_size=32, gptq=False, weight_clip_search=False)
SQ = SmoothQuantConfig(gptq=False)
# (architecture, quantization): Llama = GQA + llama3 RoPE scaling, Qwen2 = qkv bias,
# Mistral = sliding window 6 (shorter than the test sequences)
CASES = {
    "llama-fp16": ("llama", None),
    "mistral-fp16": ("mistral", None),
    "qwen2-fp16": ("qwen2", None),
    "qwen2-sq-token": ("qwen2", QuantizeConfig(scheme="smoothquant-w8a8", smoothquant=SQ,
                                             calibration=CAL)),
    "mistral-sq-tensor-kv8": ("mistral", QuantizeConfig(
        scheme="smoothquant-w8a8", kv=KVCacheConfig(kind="int8"),
        smoothquant=SmoothQuantConfig(act_quant="per-tensor", gptq=False), calibration=CAL)),
    "llama-atom-kv4": ("llama", QuantizeConfig(
        scheme="atom-w4a4", atom=ATOM, kv=KVCacheConfig(kind="int4", k_group_size=16,
                                                         smooth_k=0.5), calibration=CAL)),
    "qwen2-atom-kv4": ("qwen2", QuantizeConfig(
        scheme="atom-w4a4", atom=ATOM, kv=KVCacheConfig(kind="int4", k_group_size=16),
        calibration=CAL)),
    "mistral-atom-fp16kv": ("mistral", QuantizeConfig(scheme="atom-w4a4", atom=ATOM,
                                                      calibration=CAL)),
    "mistral-fp16-kv4": ("mistral", QuantizeConfig(kv=KVCacheConfig(kind="int4"),
                                                   calibration=CAL)),
}
# two sequences of different lengths in one prefill step (the Mistral window is 6)
PROMPTS = [[1, 5, 7, 9, 11], list(range(3, 17))]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("graph")
    calib = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    for arch in ("llama", "mistral", "qwen2"):
        tiny_hf_model(arch, hidden_size=128, intermediate_size=192).save_pretrained(d / arch)
    out = {}
    for name, (arch, cfg) in CASES.items():
        if cfg is None:
            convert(open_model(d / arch), d / name, dtype="float32", progress=False)
        else:
            quantize_model(open_model(d / arch), d / name, cfg, calib, dtype="float32",
                           progress=False)
        out[name] = d / name
    return out


def _nodes(model: onnx.ModelProto, domain: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == domain]


@pytest.mark.parametrize("name", ["qwen2-fp16", "mistral-sq-tensor-kv8", "llama-atom-kv4"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_checker_full_check_and_plugin_nodes(ckpts, tmp_path, name, dtype):
    """The written model passes onnx.checker's full check (with shape inference); quantized
    layers are `lowbit` nodes carrying exactly the plugin fields + plugin_version/namespace."""
    info = export_onnx(ckpts[name], tmp_path / "g", dtype=dtype, tokens_per_block=8)
    path = tmp_path / "g" / MODEL_FILE
    assert (tmp_path / "g" / DATA_FILE).stat().st_size > path.stat().st_size  # weights outside
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    vi = {v.name: v for v in inferred.graph.value_info}
    plugin = _nodes(model, DOMAIN)
    assert sorted({n.op_type for n in plugin}) == info.plugin_ops
    assert {n.domain for n in model.graph.node} <= {"", DOMAIN}
    if name.endswith("fp16"):
        assert plugin == []
    for n in plugin:
        attrs = {a.name: a for a in n.attribute}
        assert attrs.pop("plugin_version").s == b"1"
        assert attrs.pop("plugin_namespace").s == b"lowbit"
        extra = set(attrs) - set(FIELDS[n.op_type])
        assert extra <= set(ONNX_ONLY.get(n.op_type, ()))
        assert set(FIELDS[n.op_type]) <= set(attrs)
        for a in attrs.values():  # ints INT32-representable, floats FLOAT32
            assert a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT)
        # GEMMs of a float16 graph (TensorRT's) carry no ONNX-only attribute
        if dtype == "float16":
            assert not extra
        for o in n.output:  # shape inference typed every plugin output
            if o in vi:
                assert vi[o].type.tensor_type.elem_type != 0
    cfg = json.loads((tmp_path / "g" / GRAPH_CONFIG).read_text())
    assert cfg["scheme"] == info.scheme and cfg["fingerprint"].startswith("sha256:")
    assert (tmp_path / "g" / "tokenizer_config.json").is_file() is \
        (ckpts[name] / "tokenizer_config.json").is_file()


def test_schemes_use_the_expected_ops(ckpts):
    ops = {}
    for name in ("qwen2-fp16", "qwen2-sq-token", "qwen2-atom-kv4", "mistral-sq-tensor-kv8"):
        model, _ = build_model(read_checkpoint(ckpts[name]), dtype="float16")
        ops[name] = {n.op_type for n in model.graph.node}
    assert "ScatterND" in ops["qwen2-fp16"] and "Softmax" in ops["qwen2-fp16"]
    assert {"LowbitQuantInt8", "LowbitW8A8Gemm"} <= ops["qwen2-sq-token"]
    assert {"LowbitAtomQuant", "LowbitW4A4Gemm", "LowbitKv4Attention"} <= ops["qwen2-atom-kv4"]
    assert "ScatterND" not in ops["qwen2-atom-kv4"]  # the INT4 pool is the plugin's
    # INT8 KV with standard ops: quantize with Round (half to even) and Clip
    assert {"Round", "Clip"} <= ops["mistral-sq-tensor-kv8"]


@pytest.mark.parametrize("name", list(CASES))
def test_graph_logits_match_reference_runtime(ckpts, name):
    """Ragged prefill of two sequences + 2 decode steps through a shuffled block table of
    4-token blocks; float pools start as NaN. fp16 scheme: rel 1e-3 (onnxruntime); quantized:
    rel 1e-5 (onnx.reference with the lowbit ops' reference functions)."""
    res = verify_checkpoint(ckpts[name], PROMPTS, decode_steps=2, tokens_per_block=4)
    assert [k for k, _ in res.steps] == ["prefill", "decode1", "decode2"]
    assert res.passed, res.summary()
    assert res.runner == ("onnxruntime" if name.endswith("fp16") else "onnx.reference")
    if CASES[name][1] is not None and CASES[name][1].scheme != "fp16":
        assert res.max_rel <= 1e-5, res.summary()  # strict even with standard-op attention


@pytest.mark.parametrize("name", ["qwen2-sq-token", "mistral-sq-tensor-kv8",
                                  "mistral-atom-fp16kv"])
def test_fuse_attention_replaces_every_layers_attention(ckpts, name):
    """The CPU copy's attention rewrite (builder/verify.py) finds the standard-op attention of
    every layer; the softmax is gone. A rename in onnx_graph that broke the pattern would
    otherwise silently leave numpy's attention in place."""
    from builder.verify import VERIFY_DOMAIN, fuse_attention

    ck = read_checkpoint(ckpts[name])
    model, _ = build_model(ck, dtype="float32")
    layers = ck.config["num_hidden_layers"]
    assert sum(n.op_type == "Softmax" for n in model.graph.node) == layers
    fused = fuse_attention(model)
    assert [n.op_type for n in fused.graph.node if n.domain == VERIFY_DOMAIN] == \
        ["RuntimeAttention"] * layers
    assert not any(n.op_type == "Softmax" for n in fused.graph.node)


def test_all_logits(ckpts):
    res = verify_checkpoint(ckpts["qwen2-sq-token"], PROMPTS, tokens_per_block=4,
                            all_logits=True)
    assert res.passed, res.summary()


def _edited(path, edit) -> Checkpoint:
    ck = read_checkpoint(path)
    ck = Checkpoint(ck.path, copy.deepcopy(ck.config), dict(ck.tensors))
    edit(ck)
    return ck


def test_wrong_graphs_fail_verification(ckpts):
    """The comparison has teeth: a graph without the sliding window, and an Atom graph whose
    dense input is not reordered, are both caught."""
    no_window = _edited(ckpts["mistral-fp16"], lambda c: c.config.pop("sliding_window"))
    res = verify_checkpoint(ckpts["mistral-fp16"], PROMPTS, tokens_per_block=4,
                            graph_from=no_window)
    assert not res.passed and res.max_rel > 1e-2, res.summary()

    def drop_perm(c: Checkpoint) -> None:
        for i in range(c.config["num_hidden_layers"]):
            del c.tensors[f"transformer.layers.{i}.attention.dense.reorder_index"]

    res = verify_checkpoint(ckpts["llama-atom-kv4"], PROMPTS, tokens_per_block=4,
                            graph_from=_edited(ckpts["llama-atom-kv4"], drop_perm))
    assert not res.passed and res.max_rel > 1e-3, res.summary()


def test_smoother_divides_the_input(ckpts):
    """A checkpoint whose smoother is not all ones (TensorRT-LLM's meaning: divide the dense /
    proj input) gets a Div node, and still matches the runtime, which divides too."""
    def scale(c: Checkpoint) -> None:
        for i in range(c.config["num_hidden_layers"]):
            for p in ("attention.dense", "mlp.proj"):
                k = f"transformer.layers.{i}.{p}.smoother"
                c.tensors[k] = torch.full_like(c.tensors[k], 2.0)

    ck = _edited(ckpts["qwen2-sq-token"], scale)
    model, _ = build_model(ck, dtype="float32")
    divs = [n for n in model.graph.node if n.op_type == "Div" and n.input[1].endswith("smoother")]
    assert len(divs) == 2 * 2  # 2 layers x (dense, proj)
    res = verify_checkpoint(ck, PROMPTS, tokens_per_block=4)
    assert res.passed, res.summary()


def test_tied_embeddings_share_one_initializer(tmp_path):
    tiny_hf_model("llama", tie_word_embeddings=True).save_pretrained(tmp_path / "hf")
    convert(open_model(tmp_path / "hf"), tmp_path / "ck", dtype="float32", progress=False)
    ck = read_checkpoint(tmp_path / "ck")
    model, _ = build_model(ck, dtype="float32")
    names = {i.name for i in model.graph.initializer}
    assert "transformer.vocab_embedding.weight" in names and "lm_head.weight" not in names
    lm = [n for n in model.graph.node if n.op_type == "Gemm" and n.name.startswith("lm_head")]
    assert lm[0].input[1] == "transformer.vocab_embedding.weight"
    assert verify_checkpoint(ck, PROMPTS, tokens_per_block=4).passed


def test_tensor_parallel_checkpoint_is_merged(tmp_path):
    """A tp_size 2 checkpoint (KV heads duplicated per rank) exports as one single-GPU graph of
    the merged model."""
    tiny_hf_model("qwen2", num_key_value_heads=1).save_pretrained(tmp_path / "hf")
    convert(open_model(tmp_path / "hf"), tmp_path / "ck", dtype="float32", tp_size=2,
            progress=False)
    res = verify_checkpoint(tmp_path / "ck", PROMPTS, tokens_per_block=4)
    assert res.passed, res.summary()


def test_export_refuses_non_empty_output(ckpts, tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty; pass --force"):
        export_onnx(ckpts["qwen2-fp16"], tmp_path / "g")
    export_onnx(ckpts["qwen2-fp16"], tmp_path / "g", force=True)
    assert not (tmp_path / "g" / "x").exists()


def test_smollm2_fp16_graph(smollm2_checkpoint):
    res = verify_checkpoint(smollm2_checkpoint, [list(range(100, 109)),
                                                 list(range(200, 222))], tokens_per_block=16)
    assert res.passed, res.summary()


@pytest.mark.slow
def test_smollm2_atom_kv4_graph(smollm2_atom_checkpoint):
    res = verify_checkpoint(smollm2_atom_checkpoint, [list(range(100, 109)),
                                                      list(range(200, 222))],
                            tokens_per_block=16)
    assert res.passed, res.summary()


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["smollm2_sq_checkpoint",
                                     "smollm2_sq_static_int8kv_checkpoint"])
def test_smollm2_smoothquant_graph(fixture, request):
    """Standard-op attention in front of int8 quantizers on a model with massive activations:
    1e-5 holds only because the CPU copy runs attention as the runtime does (fuse_attention)."""
    res = verify_checkpoint(request.getfixturevalue(fixture),
                            [list(range(100, 109)), list(range(200, 222))], tokens_per_block=16)
    assert res.passed, res.summary()
    assert res.greedy_agree, res.summary()


def test_rope_table_is_the_runtime_rope():
    """The cos/sin table the standard-op graph gathers is bit-identical to what the reference
    runtime computes for the same positions."""
    from builder.runtime import Decoder

    cfg = json.loads(json.dumps({
        "architecture": "LlamaForCausalLM", "dtype": "float32", "vocab_size": 8,
        "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1,
        "num_key_value_heads": 1, "head_size": 8, "intermediate_size": 8, "hidden_act": "silu",
        "norm_epsilon": 1e-5, "rotary_base": 10000.0, "rotary_scaling": None,
        "max_position_embeddings": 64, "tie_word_embeddings": False, "attn_bias": False,
        "mapping": {"tp_size": 1}}))
    dec = Decoder(cfg, device="cpu")
    x = torch.randn(1, 1, 64, 8)
    pos = torch.arange(64)
    ref = dec.rope(x, pos)[0, 0]
    t = {"transformer.vocab_embedding.weight": torch.zeros(8, 8),
         "lm_head.weight": torch.zeros(8, 8), "transformer.ln_f.weight": torch.ones(8)}
    for n, shape in (("input_layernorm.weight", [8]), ("post_layernorm.weight", [8]),
                     ("attention.qkv.weight", [24, 8]), ("attention.dense.weight", [8, 8]),
                     ("mlp.fc.weight", [8, 8]), ("mlp.gate.weight", [8, 8]),
                     ("mlp.proj.weight", [8, 8])):
        t[f"transformer.layers.0.{n}"] = torch.zeros(shape)
    model, _ = build_model(Checkpoint(None, cfg, t), dtype="float32")
    init = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    cos, sin = torch.from_numpy(init["rope.cos"]), torch.from_numpy(init["rope.sin"])
    xf = x[0, 0]
    rot = torch.cat((-xf[:, 4:], xf[:, :4]), dim=-1)
    assert torch.equal(xf * cos + rot * sin, ref)
    assert np.all(init["rope.cos"].shape == np.array([64, 8]))
