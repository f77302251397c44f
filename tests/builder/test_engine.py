"""Engine build: profile limits and plugin-library lookup (CPU), and TensorRT engines compared
with the references (marked `tensorrt`: they run where TensorRT, a GPU and the plugin library
are present, and skip with a reason elsewhere)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from builder.engine import Profile, find_plugin_library
from builder.onnx_graph import GraphInfo, PoolSpec
from converters.errors import UserError


def _info(**kw) -> GraphInfo:
    base = dict(scheme="atom-w4a4", quant_algo="W4A4_ATOM", kv_cache_quant_algo="INT4",
                dtype="float16", all_logits=False, tokens_per_block=64, max_positions=8192,
                num_layers=30, num_heads=9, num_kv_heads=3, head_size=64, hidden_size=576,
                vocab_size=49152, sliding_window=0,
                pools=[PoolSpec("kv_codes", "uint8", [30, "num_blocks", 2, 3, 64, 32]),
                       PoolSpec("kv_params", "float16", [30, "num_blocks", 3, 64, 8])],
                plugin_ops=["LowbitAtomQuant", "LowbitKv4Attention", "LowbitW4A4Gemm"])
    base.update(kw)
    return GraphInfo(**base)


def test_profile_shapes():
    p = Profile(max_batch_size=4, max_input_len=100, max_seq_len=130).resolve(_info())
    assert p.max_num_tokens == 100 and p.num_blocks == 4 * 3  # ceil(130 / 64) = 3 blocks
    s = p.shapes(_info())
    assert s["input_ids"] == ([1], [4], [100])
    assert s["seq_offsets"] == ([2], [5], [5])
    assert s["block_table"] == ([1, 1], [4, 3], [4, 3])
    assert s["kv_codes"] == ([30, 1, 2, 3, 64, 32], [30, 12, 2, 3, 64, 32],
                             [30, 12, 2, 3, 64, 32])
    assert s["kv_params"][2] == [30, 12, 3, 64, 8]


@pytest.mark.parametrize("kw, msg", [
    (dict(max_input_len=4096, max_seq_len=2048), "--max-input-len 4096 exceeds --max-seq-len"),
    (dict(max_batch_size=16, max_num_tokens=8), "--max-num-tokens 8 is below --max-batch-size"),
    (dict(max_batch_size=0), "--max-batch-size must be >= 1, found 0"),
])
def test_profile_inconsistent_limits(kw, msg):
    with pytest.raises(UserError, match=msg):
        Profile(**kw).resolve(_info())


def test_profile_beyond_rope_table_of_a_standard_attention_graph():
    info = _info(plugin_ops=[], scheme="fp16", max_positions=1024)
    with pytest.raises(UserError, match="exceeds the graph's RoPE table"):
        Profile(max_seq_len=2048).resolve(info)
    Profile(max_seq_len=2048).resolve(_info(max_positions=1024))  # KV4: RoPE in the plugin


def test_missing_plugin_library(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_PLUGINS_LIB", str(tmp_path / "missing.so"))
    with pytest.raises(UserError, match="expected the TensorRT plugin library"):
        find_plugin_library()


# -- TensorRT ---------------------------------------------------------------------------------

def _single_op_model(op: str, feeds: dict[str, np.ndarray], consts: dict[str, np.ndarray],
                     outputs: list[tuple[str, int]], **attrs) -> onnx.ModelProto:
    from builder.onnx_ops import DOMAIN, OPSET, plugin_node, register_schemas

    register_schemas()
    vi = helper.make_tensor_value_info
    ins = [vi(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
           for k, v in feeds.items()]
    outs = [vi(n, t, None) for n, t in outputs]
    node = plugin_node(op, list(feeds) + list(consts), [n for n, _ in outputs], "op", **attrs)
    g = helper.make_graph([node], "one", ins, outs,
                          initializer=[onnx.numpy_helper.from_array(v, k)
                                       for k, v in consts.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                               helper.make_opsetid(DOMAIN, OPSET)])


def _run_one(tmp_path, model, feeds, op):
    """Build a one-node engine (exact shapes) and run it; returns outputs as numpy."""
    from builder.engine import EngineRunner, build_serialized

    path = tmp_path / "one.onnx"
    onnx.save(model, str(path))
    shapes = {k: (list(v.shape),) * 3 for k, v in feeds.items()}
    blob, _ = build_serialized(path, shapes, [op], progress=False)
    run = EngineRunner(blob, [op])
    out = run({k: torch.from_numpy(v) for k, v in feeds.items()})
    return {k: v.cpu().numpy() for k, v in out.items()}


def _ref_one(model, feeds):
    from onnx.reference import ReferenceEvaluator

    from builder.onnx_ops import OPS

    ev = ReferenceEvaluator(model, new_ops=OPS)
    return dict(zip(ev.output_names, ev.run(None, feeds), strict=True))


def _rel(a, b) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("op", ["LowbitQuantInt8", "LowbitAtomQuant", "LowbitW8A8Gemm",
                                "LowbitW4A4Gemm", "LowbitKv4Attention"])
def test_one_plugin_engine_matches_reference(tmp_path, op):
    """Each plugin alone in an engine gives its reference function's result: integer outputs
    equal, float outputs to rel 1e-3 (fp16 rounding order)."""
    from lowbit import reference as R
    from lowbit.packing import pack_int4, pack_w4a4_scales

    g = torch.Generator().manual_seed(0)
    m, k, n = 37, 512, 256
    x = (torch.randn(m, k, generator=g) * 3).half().numpy()
    gamma = (torch.rand(k, generator=g) + 0.5).half().numpy()
    if op == "LowbitQuantInt8":
        model = _single_op_model(op, {"x": x}, {"gamma": gamma},
                                 [("q", TensorProto.INT8), ("xs", TensorProto.FLOAT)],
                                 norm=1, static=0, eps=1e-5)
        feeds = {"x": x}
    elif op == "LowbitAtomQuant":
        perm = torch.randperm(k, generator=g).int().numpy()
        model = _single_op_model(op, {"x": x}, {"gamma": gamma, "perm": perm},
                                 [("x4", TensorProto.INT8), ("xs4", TensorProto.FLOAT16),
                                  ("x8", TensorProto.INT8), ("xs8", TensorProto.FLOAT16)],
                                 norm=1, reorder=1, eps=1e-5, n_outliers=128, group_size=128,
                                 clip=0.9)
        feeds = {"x": x}
    elif op == "LowbitW8A8Gemm":
        xq, xs = R.quantize_per_token_int8(torch.from_numpy(x).float())
        wq = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        ws = torch.rand(n, generator=g) * 1e-3
        model = _single_op_model(op, {"xq": xq.numpy(), "xs": xs.numpy()},
                                 {"wq": wq.numpy(), "ws": ws.numpy()},
                                 [("y", TensorProto.FLOAT16)], per_token=1)
        feeds = {"xq": xq.numpy(), "xs": xs.numpy()}
    elif op == "LowbitW4A4Gemm":
        a = R.atom_reorder_quantize(torch.from_numpy(x), None, 128, 128, 0.9)
        w4 = pack_int4(torch.randint(-8, 8, (n, k - 128), generator=g))
        ws4 = (torch.rand(n, (k - 128) // 128, generator=g) * 1e-2).half()
        w8 = torch.randint(-127, 128, (n, 128), generator=g, dtype=torch.int8)
        ws8 = (torch.rand(n, generator=g) * 1e-3).half()
        feeds = {"x4": a.x4.numpy(), "xs4": a.xs4.numpy(), "x8": a.x8.numpy(),
                 "xs8": a.xs8.numpy()}
        model = _single_op_model(op, feeds, {"w4": w4.numpy(),
                                             "ws4t": pack_w4a4_scales(ws4).numpy(),
                                             "w8": w8.numpy(), "ws8": ws8.numpy()},
                                 [("y", TensorProto.FLOAT16)], group_size=128)
    else:
        from lowbit.kvcache import KvLayout, new_pool

        lay = KvLayout(num_heads=8, num_kv_heads=2, head_size=64, k_group_size=32,
                       v_group_size=64, tokens_per_block=16)
        codes, params = new_pool(lay, 2, 6)
        lens = [5, 21]
        feeds = {"qkv": torch.randn(sum(lens), lay.qkv_width, generator=g).half().numpy(),
                 "positions": np.concatenate([np.arange(n_) for n_ in lens]).astype(np.int32),
                 "seq_offsets": np.array([0, 5, 26], np.int32),
                 "block_table": np.array([[4, 0], [1, 3]], np.int32),
                 "kv_codes": codes.numpy(), "kv_params": params.numpy()}
        inv = (1.0 / 10000 ** (np.arange(0, 64, 2) / 64)).astype(np.float32)
        model = _single_op_model(op, feeds, {"inv_freq": inv},
                                 [("attn", TensorProto.FLOAT16),
                                  ("kv_codes_out", TensorProto.UINT8),
                                  ("kv_params_out", TensorProto.FLOAT16)],
                                 layer=1, num_heads=8, num_kv_heads=2, head_size=64,
                                 tokens_per_block=16, k_group_size=32, v_group_size=64,
                                 sliding_window=0)
        # inputs before outputs: the TensorRT plugin writes the pools in place
        feeds = {k_: v.copy() for k_, v in feeds.items()}
    ref = _ref_one(model, {k_: v.copy() for k_, v in feeds.items()})
    got = _run_one(tmp_path, model, feeds, op)
    for name, r in ref.items():
        if r.dtype.kind in "iu":
            assert np.array_equal(got[name], r), name
        else:
            assert _rel(got[name], r) < 1e-3, name


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["fp16", "atom-w4a4"])
def test_smollm2_engine_matches_reference_runtime(tmp_path, scheme, smollm2_path,
                                                  smollm2_atom_checkpoint):
    """A whole SmolLM2 engine: prefill of two ragged prompts + 2 decode steps against the
    reference runtime on the GPU in float16 (rel 3e-2 of the logits, same greedy tokens)."""
    from builder.engine import EngineRunner, build_engine
    from builder.onnx_graph import MODEL_FILE, export_onnx
    from builder.runtime import ReferenceModel
    from builder.verify import allocate_blocks, new_pools
    from converters.checkpoint import convert, read_checkpoint
    from converters.loader import open_model

    if scheme == "fp16":
        ck = tmp_path / "ck"
        convert(open_model(smollm2_path), ck, dtype="float16", progress=False)
    else:
        ck = smollm2_atom_checkpoint
    info = export_onnx(ck, tmp_path / "onnx", dtype="float16", tokens_per_block=64)
    build_engine(tmp_path / "onnx" / MODEL_FILE, tmp_path / "engine",
                 Profile(max_batch_size=2, max_input_len=64, max_seq_len=128), progress=False)
    run = EngineRunner.from_dir(tmp_path / "engine")
    model = ReferenceModel(read_checkpoint(ck), device="cuda", dtype=torch.float16)
    prompts = [list(range(100, 109)), list(range(200, 222))]
    table, nb = allocate_blocks([len(p) + 2 for p in prompts], 64)
    pools = {k: torch.from_numpy(v).cuda() for k, v in new_pools(info, nb, poison=False).items()}
    caches = [model.new_cache(1, len(p) + 2) for p in prompts]
    new, done = [list(p) for p in prompts], [0, 0]
    for _ in range(3):
        feeds = {"input_ids": torch.tensor([t for n in new for t in n], dtype=torch.int32),
                 "positions": torch.tensor([d + i for d, n in zip(done, new, strict=True)
                                            for i in range(len(n))], dtype=torch.int32),
                 "seq_offsets": torch.tensor(np.cumsum([0] + [len(n) for n in new]),
                                             dtype=torch.int32),
                 "block_table": torch.from_numpy(table), **pools}
        out = run(feeds)
        pools = {p.name: out[f"{p.name}_out"] for p in info.pools}
        ref = torch.stack([model.forward(torch.tensor([n], device="cuda"), c)[0, -1]
                           for n, c in zip(new, caches, strict=True)]).float().cpu().numpy()
        got = out["logits"].float().cpu().numpy()
        assert _rel(got, ref) < 3e-2
        assert np.array_equal(got.argmax(-1), ref.argmax(-1))
        done = [d + len(n) for d, n in zip(done, new, strict=True)]
        new = [[int(t)] for t in ref.argmax(-1)]
