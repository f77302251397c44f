"""Checkpoint -> ONNX graph with the engine I/O of docs/engine-io.md (pure construction).

One graph per checkpoint, flat tokens (no padding in the linears):

    x = Gather(embedding, input_ids)                                        [T, H]
    per layer:  qkv = QKV(x)        float: RMSNorm -> Gemm;  SmoothQuant: LowbitQuantInt8(norm)
                                    -> LowbitW8A8Gemm;  Atom: LowbitAtomQuant(norm + reorder)
                                    -> LowbitW4A4Gemm;  (+ Add bias: Qwen2)
                a   = attention     INT4 KV: LowbitKv4Attention (RoPE, append, attend in place);
                                    float / INT8 KV: standard ops (below)
                x  += DENSE(a);  x += PROJ(silu(FC(n2)) * GATE(n2)),  n2 from post_layernorm
    logits = Cast<float>(Gemm(RMSNorm(x[last token of each sequence]), lm_head))  [B, V]

Attention with standard ops (float or INT8 cache `kv_cache` [L, NB, 2, nkv, tpb, d]): RoPE from a
cos/sin table [max_positions, d] computed as the reference runtime computes it (fp32) and
gathered by position; each sequence's past is gathered through the block table into
[B, 2, nkv, S = MB*tpb, d], the new tokens' K/V scattered into that copy (quantized first for
INT8, so attention reads them back quantized, as the runtime does), queries padded per sequence
to T - B + 1 rows (an upper bound of any sequence's new tokens that depends on shapes only), a
causal (+ sliding window) mask from the positions, scores / softmax / weighted sum in fp32, and
the rows gathered back to [T, nh*d]. The pool is written once per step: one ScatterND of every
layer's new K/V, output `kv_cache_out` (a new tensor: bind another buffer and swap).

`dtype` is the activation dtype: float16 for TensorRT; float32 for the CPU verification, which
exports this same graph with float32 activations and float caches (docs/building.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from builder.onnx_ops import DOMAIN, OPSET, plugin_node, register_schemas
from converters.checkpoint import Checkpoint, read_checkpoint, spec_from_config, write_atomically
from converters.errors import UserError
from converters.loader import rope_inv_freq
from converters.schemes import ATOM_ALGO, SQ_PER_TENSOR, SQ_PER_TOKEN
from lowbit.packing import pack_w4a4_scales

ONNX_OPSET = 17
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
GRAPH_CONFIG = "graph_config.json"
DTYPES = {"float16": (TensorProto.FLOAT16, np.float16, torch.float16),
          "float32": (TensorProto.FLOAT, np.float32, torch.float32)}
INT64_MAX = np.iinfo(np.int64).max


def checkpoint_scheme(config: dict[str, Any]) -> str:
    """The build scheme of a checkpoint config (fp16 = float weights, any KV cache)."""
    qa = (config.get("quantization") or {}).get("quant_algo")
    if qa is None:
        return "fp16"
    if qa in (SQ_PER_TOKEN, SQ_PER_TENSOR):
        return "smoothquant-w8a8"
    if qa == ATOM_ALGO:
        return "atom-w4a4"
    raise UserError(f"checkpoint quant_algo {qa!r} has no ONNX export; supported: None (float), "
                    f"{SQ_PER_TOKEN}, {SQ_PER_TENSOR}, {ATOM_ALGO}")


@dataclass
class PoolSpec:
    """One cache pool input (its aliased output is `{name}_out`)."""

    name: str
    dtype: str  # numpy dtype name
    shape: list[Any]  # ints and the symbol "num_blocks"


@dataclass
class GraphInfo:
    """What a graph was exported from and how to feed it (graph_config.json)."""

    scheme: str
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    dtype: str
    all_logits: bool
    tokens_per_block: int
    max_positions: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    hidden_size: int
    vocab_size: int
    sliding_window: int
    pools: list[PoolSpec]
    plugin_ops: list[str]
    checkpoint: str = ""
    fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @staticmethod
    def from_dict(d: dict[str, Any]) -> GraphInfo:
        d = dict(d)
        d["pools"] = [PoolSpec(**p) for p in d["pools"]]
        return GraphInfo(**d)


def read_graph_info(onnx_path: str | os.PathLike[str]) -> GraphInfo:
    p = Path(onnx_path).parent / GRAPH_CONFIG
    if not p.is_file():
        raise UserError(f"{onnx_path}: expected {GRAPH_CONFIG} beside the ONNX file (written by "
                        f"`python -m builder build --target onnx`), found none")
    return GraphInfo.from_dict(json.loads(p.read_text()))


def pool_specs(config: dict[str, Any], dtype: str, tokens_per_block: int) -> list[PoolSpec]:
    s = spec_from_config(config)
    L, nkv, d, tpb = s.num_hidden_layers, s.num_key_value_heads, s.head_size, tokens_per_block
    kv = (config.get("quantization") or {}).get("kv_cache_quant_algo")
    if kv == "INT4":
        c = config["kv_cache_int4"]
        p = 2 * (d // int(c["k_group_size"]) + d // int(c["v_group_size"]))
        return [PoolSpec("kv_codes", "uint8", [L, "num_blocks", 2, nkv, tpb, d // 2]),
                PoolSpec("kv_params", "float16", [L, "num_blocks", nkv, tpb, p])]
    if kv == "INT8":
        return [PoolSpec("kv_cache", "int8", [L, "num_blocks", 2, nkv, tpb, d])]
    if kv is not None:
        raise UserError(f"kv_cache_quant_algo {kv!r} has no ONNX export; supported: null, INT8, "
                        f"INT4")
    return [PoolSpec("kv_cache", np.dtype(DTYPES[dtype][1]).name,
                     [L, "num_blocks", 2, nkv, tpb, d])]


class _Graph:
    """Nodes and initializers under construction, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.k = 0
        self._consts: dict[Any, str] = {}

    def fresh(self, base: str) -> str:
        self.k += 1
        return f"{base}__{self.k}"

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, name: str = "",
           outputs: list[str] | None = None, **attrs: Any) -> Any:
        base = name or op_type
        outs = outputs or [self.fresh(base) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(base), **attrs))
        return outs[0] if len(outs) == 1 else outs

    def plugin(self, op: str, inputs: list[str], n_out: int, name: str,
               outputs: list[str] | None = None, **attrs: Any) -> Any:
        outs = outputs or [self.fresh(name) for _ in range(n_out)]
        self.nodes.append(plugin_node(op, inputs, outs, self.fresh(name), **attrs))
        return outs[0] if len(outs) == 1 else outs

    def init(self, name: str, arr: np.ndarray) -> str:
        if name in self.inits:
            raise ValueError(f"duplicate initializer {name}")
        # (not np.ascontiguousarray: it turns a 0-d array into [1])
        self.inits[name] = numpy_helper.from_array(np.require(arr, requirements="C"), name)
        return name

    def const(self, arr: Any, dtype: Any) -> str:
        a = np.asarray(arr, dtype=dtype)
        key = (a.dtype.str, a.shape, a.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self.fresh("const"), a)
        return self._consts[key]

    def i64(self, *vals: int) -> str:
        return self.const(list(vals), np.int64)


class _Exporter:
    def __init__(self, ckpt: Checkpoint, dtype: str, all_logits: bool, tokens_per_block: int,
                 max_positions: int | None):
        if dtype not in DTYPES:
            raise UserError(f"graph dtype must be one of {list(DTYPES)}, found {dtype!r}")
        if tokens_per_block < 1:
            raise UserError(f"tokens_per_block must be >= 1, found {tokens_per_block}")
        self.ck = ckpt
        self.cfg = ckpt.config
        self.s = spec_from_config(self.cfg)
        self.scheme = checkpoint_scheme(self.cfg)
        q = self.cfg.get("quantization") or {}
        self.quant_algo = q.get("quant_algo")
        self.kv_algo = q.get("kv_cache_quant_algo")
        self.dtype = dtype
        self.elem, self.np_dtype, self.torch_dtype = DTYPES[dtype]
        self.all_logits = all_logits
        self.tpb = tokens_per_block
        self.max_positions = int(max_positions or self.s.max_position_embeddings)
        self.g = _Graph()
        self.pools = pool_specs(self.cfg, dtype, tokens_per_block)
        self.plugin_ops: set[str] = set()
        s = self.s
        if s.num_attention_heads % s.num_key_value_heads:
            raise UserError(f"num_attention_heads {s.num_attention_heads} is not a multiple of "
                            f"num_key_value_heads {s.num_key_value_heads}")
        if self.scheme == "atom-w4a4" and "atom" not in self.cfg:
            raise UserError("W4A4_ATOM checkpoint without the top-level 'atom' settings")

    # -- tensors -------------------------------------------------------------------------------
    def act(self, name: str, t: torch.Tensor) -> str:
        """A float tensor of the checkpoint as an initializer in the activation dtype."""
        return self.g.init(name, t.detach().float().numpy().astype(self.np_dtype))

    def f32(self, name: str, t: torch.Tensor) -> str:
        return self.g.init(name, t.detach().float().numpy().astype(np.float32))

    def raw(self, name: str, t: torch.Tensor) -> str:
        """Kept in its stored dtype (int8 codes, fp16 scales, int32 indices)."""
        a = t.detach().contiguous()
        if a.dtype == torch.bfloat16:
            raise UserError(f"{name}: bfloat16 is not a format dtype for this tensor")
        return self.g.init(name, a.numpy())

    def to_f32(self, x: str) -> str:
        return x if self.dtype == "float32" else self.g.op("Cast", [x], to=TensorProto.FLOAT)

    def to_act(self, x: str) -> str:
        return x if self.dtype == "float32" else self.g.op("Cast", [x], to=self.elem)

    # -- pieces --------------------------------------------------------------------------------
    def rmsnorm(self, x: str, w: str, name: str) -> str:
        """Runtime's rms_norm: x in fp32, x * (1/sqrt(mean(x^2) + eps)) * w, back to dtype."""
        g = self.g
        xf = self.to_f32(x)
        ms = g.op("ReduceMean", [g.op("Mul", [xf, xf])], axes=[-1], keepdims=1, name=name)
        eps = g.const(self.s.norm_epsilon, np.float32)
        r = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [ms, eps])])])
        return self.to_act(g.op("Mul", [g.op("Mul", [xf, r]), w], name=name))

    def gemm_out_attrs(self) -> dict[str, Any]:
        return {} if self.dtype == "float16" else {"out_dtype": self.elem}

    def add_bias(self, y: str, lt: dict[str, torch.Tensor], p: str, pre: str) -> str:
        b = lt.get(f"{p}.bias")
        if b is None:
            return y
        return self.g.op("Add", [y, self.act(f"{pre}{p}.bias", b)])

    # float linears
    def float_linear(self, x: str, lt: dict[str, torch.Tensor], p: str, pre: str) -> str:
        if f"{p}.reorder_index" in lt:
            raise UserError(f"{pre}{p}.reorder_index in a float checkpoint is not supported")
        ins = [x, self.act(f"{pre}{p}.weight", lt[f"{p}.weight"])]
        if f"{p}.bias" in lt:
            ins.append(self.act(f"{pre}{p}.bias", lt[f"{p}.bias"]))
        return self.g.op("Gemm", ins, transB=1, name=f"{pre}{p}")

    # SmoothQuant
    def sq_quant(self, x: str, lt: dict[str, torch.Tensor], pre: str, norm: str | None,
                 scale_name: str, p: str) -> tuple[str, str | None]:
        """LowbitQuantInt8: returns (q, xs or None when static)."""
        static = self.quant_algo == SQ_PER_TENSOR
        ins = [x]
        if norm is not None:
            ins.append(self.act(f"{pre}{norm}.weight", lt[f"{norm}.weight"]))
        if static:
            # the divisor s = 1 / scale_to_int, computed as the runtime computes it (fp32)
            s = 1.0 / lt[scale_name].float().reshape(1)
            ins.append(self.f32(f"{pre}{p}.input_scale", s))
        self.plugin_ops.add("LowbitQuantInt8")
        outs = self.g.plugin("LowbitQuantInt8", ins, 1 if static else 2, f"{pre}{p}.quant",
                             norm=int(norm is not None), static=int(static),
                             eps=self.s.norm_epsilon)
        return (outs, None) if static else (outs[0], outs[1])

    def sq_gemm(self, q: str, xs: str | None, lt: dict[str, torch.Tensor], p: str,
                pre: str) -> str:
        w = lt[f"{p}.weight"]
        if w.dtype != torch.int8:
            raise UserError(f"{pre}{p}.weight: expected int8 for SmoothQuant, found {w.dtype}")
        if xs is None:
            xs = self.f32(f"{pre}{p}.act_scale", lt[f"{p}.act_scale"].reshape(1))
        ws = self.f32(f"{pre}{p}.per_channel_scale", lt[f"{p}.per_channel_scale"].reshape(-1))
        self.plugin_ops.add("LowbitW8A8Gemm")
        y = self.g.plugin("LowbitW8A8Gemm", [q, xs, self.raw(f"{pre}{p}.weight", w), ws], 1,
                          f"{pre}{p}", per_token=int(self.quant_algo == SQ_PER_TOKEN),
                          **self.gemm_out_attrs())
        return self.add_bias(y, lt, p, pre)

    def sq_input(self, x: str, lt: dict[str, torch.Tensor], p: str, pre: str) -> str:
        """A dense / proj input divided by its smoother (an identity, all ones, in the
        checkpoints lowbit-trt writes: then no node)."""
        sm = lt.get(f"{p}.smoother")
        if sm is None or bool(torch.all(sm == 1)):
            return x
        return self.g.op("Div", [x, self.act(f"{pre}{p}.smoother", sm.reshape(-1))])

    # Atom
    def atom_quant(self, x: str, lt: dict[str, torch.Tensor], pre: str, norm: str | None,
                   perm_name: str | None, p: str) -> list[str]:
        a = self.cfg["atom"]
        ins = [x]
        if norm is not None:
            ins.append(self.act(f"{pre}{norm}.weight", lt[f"{norm}.weight"]))
        reorder = perm_name is not None and perm_name in lt
        if reorder:
            ins.append(self.raw(f"{pre}{perm_name}", lt[perm_name].to(torch.int32)))
        self.plugin_ops.add("LowbitAtomQuant")
        return self.g.plugin("LowbitAtomQuant", ins, 4, f"{pre}{p}.quant",
                             norm=int(norm is not None), reorder=int(reorder),
                             eps=self.s.norm_epsilon,
                             n_outliers=int(lt[f"{p}.outlier_weight"].shape[1]),
                             group_size=int(a["group_size"]), clip=float(a["act_clip"]))

    def atom_gemm(self, a4: list[str], lt: dict[str, torch.Tensor], p: str, pre: str) -> str:
        group = int(self.cfg["atom"]["group_size"])
        ws4t = pack_w4a4_scales(lt[f"{p}.weights_scaling_factor"].to(torch.float16))
        ins = list(a4) + [
            self.raw(f"{pre}{p}.weight", lt[f"{p}.weight"]),
            self.raw(f"{pre}{p}.weights_scaling_factor_t", ws4t),
            self.raw(f"{pre}{p}.outlier_weight", lt[f"{p}.outlier_weight"]),
            self.raw(f"{pre}{p}.outlier_scaling_factor",
                     lt[f"{p}.outlier_scaling_factor"].to(torch.float16).reshape(-1)),
        ]
        self.plugin_ops.add("LowbitW4A4Gemm")
        y = self.g.plugin("LowbitW4A4Gemm", ins, 1, f"{pre}{p}", group_size=group,
                          **self.gemm_out_attrs())
        return self.add_bias(y, lt, p, pre)

    # -- layer pieces by scheme ----------------------------------------------------------------
    def qkv(self, x: str, lt: dict[str, torch.Tensor], pre: str) -> str:
        p = "attention.qkv"
        if self.scheme == "fp16":
            n1 = self.rmsnorm(x, self.f32(f"{pre}input_layernorm.weight",
                                          lt["input_layernorm.weight"]), f"{pre}norm1")
            return self.float_linear(n1, lt, p, pre)
        if self.scheme == "smoothquant-w8a8":
            q, xs = self.sq_quant(x, lt, pre, "input_layernorm", "input_layernorm.scale_to_int",
                                  p)
            return self.sq_gemm(q, xs, lt, p, pre)
        a4 = self.atom_quant(x, lt, pre, "input_layernorm", "input_layernorm.reorder_index", p)
        return self.atom_gemm(a4, lt, p, pre)

    def dense_or_proj(self, x: str, lt: dict[str, torch.Tensor], pre: str, p: str,
                      scale_name: str) -> str:
        if self.scheme == "fp16":
            return self.float_linear(x, lt, p, pre)
        if self.scheme == "smoothquant-w8a8":
            q, xs = self.sq_quant(self.sq_input(x, lt, p, pre), lt, pre, None, scale_name, p)
            return self.sq_gemm(q, xs, lt, p, pre)
        a4 = self.atom_quant(x, lt, pre, None, f"{p}.reorder_index", p)
        return self.atom_gemm(a4, lt, p, pre)

    def mlp(self, h: str, lt: dict[str, torch.Tensor], pre: str) -> str:
        g = self.g
        if self.scheme == "fp16":
            n2 = self.rmsnorm(h, self.f32(f"{pre}post_layernorm.weight",
                                          lt["post_layernorm.weight"]), f"{pre}norm2")
            f, gt = (self.float_linear(n2, lt, p, pre) for p in ("mlp.fc", "mlp.gate"))
        elif self.scheme == "smoothquant-w8a8":
            q, xs = self.sq_quant(h, lt, pre, "post_layernorm", "post_layernorm.scale_to_int",
                                  "mlp.fc_gate")
            f, gt = (self.sq_gemm(q, xs, lt, p, pre) for p in ("mlp.fc", "mlp.gate"))
        else:
            if lt["mlp.fc.outlier_weight"].shape[1] != lt["mlp.gate.outlier_weight"].shape[1]:
                raise UserError(f"{pre}mlp.fc and mlp.gate have different outlier counts; they "
                                f"share one quantized input")
            a4 = self.atom_quant(h, lt, pre, "post_layernorm", "post_layernorm.reorder_index",
                                 "mlp.fc")
            f, gt = (self.atom_gemm(a4, lt, p, pre) for p in ("mlp.fc", "mlp.gate"))
        m = g.op("Mul", [g.op("Mul", [f, g.op("Sigmoid", [f])]), gt], name=f"{pre}mlp.act")
        return self.dense_or_proj(m, lt, pre, "mlp.proj", "mlp.quantization_scaling_factor")

    # -- attention with standard ops -------------------------------------------------------------
    def attention_setup(self) -> None:
        """Index tensors shared by every layer (standard-op attention)."""
        g, s, tpb = self.g, self.s, self.tpb
        nkv, d = s.num_key_value_heads, s.head_size
        pool = self.pools[0].name
        # RoPE table, computed exactly as Decoder.rope computes cos/sin (fp32)
        inv = rope_inv_freq(self.cfg)
        pos = torch.arange(self.max_positions).float()
        freqs = pos[:, None] * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos_t = g.init("rope.cos", emb.cos().numpy())
        sin_t = g.init("rope.sin", emb.sin().numpy())
        pos64 = g.op("Cast", ["positions"], to=TensorProto.INT64, name="pos64")
        self.cos = g.op("Unsqueeze", [g.op("Gather", [cos_t, pos64]), g.i64(1)])  # [T, 1, d]
        self.sin = g.op("Unsqueeze", [g.op("Gather", [sin_t, pos64]), g.i64(1)])

        t1 = g.op("Shape", ["input_ids"], name="T")  # [1]
        tok = g.op("Range", [g.const(0, np.int64), g.op("Squeeze", [t1]),
                             g.const(1, np.int64)], name="tok")  # [T]
        offs = g.op("Cast", ["seq_offsets"], to=TensorProto.INT64)
        starts = g.op("Slice", [offs, g.i64(0), g.i64(-1)], name="starts")  # [B]
        ends = g.op("Slice", [offs, g.i64(1), g.i64(INT64_MAX)], name="ends")
        ge = g.op("GreaterOrEqual", [g.op("Unsqueeze", [tok, g.i64(1)]),
                                     g.op("Unsqueeze", [ends, g.i64(0)])])
        cnt = g.op("ReduceSum", [g.op("Cast", [ge], to=TensorProto.FLOAT), g.i64(1)],
                   keepdims=0)
        seq_id = g.op("Cast", [cnt], to=TensorProto.INT64, name="seq_id")  # [T]
        local = g.op("Sub", [tok, g.op("Gather", [starts, seq_id])], name="local")
        bshape = g.op("Shape", ["block_table"])
        b1 = g.op("Slice", [bshape, g.i64(0), g.i64(1)], name="B")
        mb1 = g.op("Slice", [bshape, g.i64(1), g.i64(2)], name="MB")
        tpad1 = g.op("Add", [g.op("Sub", [t1, b1]), g.i64(1)], name="Tpad")
        j = g.op("Range", [g.const(0, np.int64), g.op("Squeeze", [tpad1]), g.const(1, np.int64)])
        qidx = g.op("Min", [g.op("Add", [g.op("Unsqueeze", [starts, g.i64(1)]),
                                         g.op("Unsqueeze", [j, g.i64(0)])]),
                            g.op("Sub", [t1, g.i64(1)])], name="qidx")  # [B, Tpad]
        pos_pad = g.op("Gather", [pos64, qidx], name="pos_pad")
        last_pos = g.op("Gather", [pos64, g.op("Sub", [ends, g.i64(1)])], name="last_pos")
        s1 = g.op("Mul", [mb1, g.i64(tpb)], name="S")
        kpos = g.op("Range", [g.const(0, np.int64), g.op("Squeeze", [s1]),
                              g.const(1, np.int64)], name="kpos")
        pp = g.op("Unsqueeze", [pos_pad, g.i64(2)])  # [B, Tpad, 1]
        allowed = g.op("LessOrEqual", [kpos, pp])  # [B, Tpad, S]
        if s.sliding_window:
            inside = g.op("Less", [g.op("Sub", [pp, kpos]), g.i64(int(s.sliding_window))])
            allowed = g.op("And", [allowed, inside])
        self.allowed = g.op("Unsqueeze", [allowed, g.i64(1, 2)], name="mask")  # [B,1,1,Tpad,S]
        valid = g.op("LessOrEqual", [kpos, g.op("Unsqueeze", [last_pos, g.i64(1)])])  # [B, S]
        self.kv_valid = g.op("Unsqueeze", [valid, g.i64(1, 3)])  # [B, 1, S, 1]
        self.qidx, self.seq_id, self.local = qidx, seq_id, local
        # blocks: pool viewed as [L*NB, 2, nkv, tpb, d]; block_table clamped into [0, NB)
        nb1 = g.op("Slice", [g.op("Shape", [pool]), g.i64(1), g.i64(2)], name="NB")
        self.nb1 = nb1
        self.pool_flat = g.op("Reshape", [pool, g.i64(-1, 2, nkv, tpb, d)], name="pool_flat")
        bt = g.op("Cast", ["block_table"], to=TensorProto.INT64)
        self.bt = g.op("Max", [g.op("Min", [bt, g.op("Sub", [nb1, g.i64(1)])]), g.i64(0)],
                       name="bt")  # [B, MB]
        blk_col = g.op("Div", [pos64, g.i64(tpb)])
        blk = g.op("Gather", [g.op("Reshape", [self.bt, g.i64(-1)]),
                              g.op("Add", [g.op("Mul", [seq_id, g.op("Squeeze", [mb1])]),
                                           blk_col])], name="blk")  # [T]
        slot = g.op("Sub", [pos64, g.op("Mul", [blk_col, g.i64(tpb)])], name="slot")
        shp = g.op("Concat", [t1, g.i64(2, nkv)], axis=0)  # [T, 2, nkv]

        def comp(v: str, shape3: tuple[int, int, int]) -> str:
            e = g.op("Expand", [g.op("Reshape", [v, g.i64(*shape3)]), shp])
            return g.op("Unsqueeze", [e, g.i64(3)])  # [T, 2, nkv, 1]

        kvi = g.const(np.arange(2), np.int64)
        hh = g.const(np.arange(nkv), np.int64)
        c_kv, c_h = comp(kvi, (1, 2, 1)), comp(hh, (1, 1, nkv))
        # into the gathered per-sequence cache [B, 2, nkv, S, d]: (seq, kv, head, position)
        self.idx_seq = g.op("Concat", [comp(seq_id, (-1, 1, 1)), c_kv, c_h,
                                       comp(pos64, (-1, 1, 1))], axis=3, name="idx_seq")
        # into the flat pool: (layer*NB + block, kv, head, slot), layer added per layer
        self.idx_pool = g.op("Concat", [comp(blk, (-1, 1, 1)), c_kv, c_h,
                                        comp(slot, (-1, 1, 1))], axis=3, name="idx_pool")
        self.pool_writes: list[tuple[str, str]] = []

    def rope(self, x: str, heads: int) -> str:
        """x [T, heads*d] (dtype) -> [T, heads, d] rotated in fp32 (GPT-NeoX halves)."""
        g, d = self.g, self.s.head_size
        xf = self.to_f32(g.op("Reshape", [x, g.i64(-1, heads, d)]))
        x1, x2 = g.op("Split", [xf, g.i64(d // 2, d // 2)], n_out=2, axis=2)
        rot = g.op("Concat", [g.op("Neg", [x2]), x1], axis=2)
        y = g.op("Add", [g.op("Mul", [xf, self.cos]), g.op("Mul", [rot, self.sin])])
        return self.to_act(y)

    def std_attention(self, qkv: str, i: int, lt: dict[str, torch.Tensor], pre: str) -> str:
        g, s = self.g, self.s
        nh, nkv, d = s.num_attention_heads, s.num_key_value_heads, s.head_size
        rep = nh // nkv
        q, k, v = g.op("Split", [qkv, g.i64(nh * d, nkv * d, nkv * d)], n_out=3, axis=1,
                       name=f"{pre}qkv_split")
        q = self.rope(q, nh)  # [T, nh, d]
        k = self.rope(k, nkv)
        v = g.op("Reshape", [v, g.i64(-1, nkv, d)])
        kv_new = g.op("Concat", [g.op("Unsqueeze", [k, g.i64(1)]),
                                 g.op("Unsqueeze", [v, g.i64(1)])], axis=1)  # [T, 2, nkv, d]
        int8 = self.kv_algo == "INT8"
        if int8:
            sc = self.f32(f"{pre}attention.kv_cache_scaling_factor",
                          lt["attention.kv_cache_scaling_factor"].reshape(1))
            r = g.op("Round", [g.op("Div", [self.to_f32(kv_new), sc])])
            kv_new = g.op("Cast", [g.op("Clip", [r, g.const(-127, np.float32),
                                                 g.const(127, np.float32)])],
                          to=TensorProto.INT8, name=f"{pre}kv_quant")
        # this layer's blocks of every sequence: [B, MB, 2, nkv, tpb, d] -> [B, 2, nkv, S, d]
        rows = g.op("Add", [self.bt, g.op("Mul", [self.nb1, g.i64(i)])])
        blocks = g.op("Gather", [self.pool_flat, rows], name=f"{pre}kv_gather")
        seq = g.op("Reshape", [g.op("Transpose", [blocks], perm=[0, 2, 3, 1, 4, 5]),
                               g.i64(0, 2, nkv, -1, d)])
        seq = g.op("ScatterND", [seq, self.idx_seq, kv_new], name=f"{pre}kv_append")
        kk = g.op("Gather", [seq, g.const(0, np.int64)], axis=1)  # [B, nkv, S, d]
        vv = g.op("Gather", [seq, g.const(1, np.int64)], axis=1)
        if int8:
            kk = g.op("Mul", [g.op("Cast", [kk], to=TensorProto.FLOAT), sc])
            vv = g.op("Mul", [g.op("Cast", [vv], to=TensorProto.FLOAT), sc])
        else:
            kk, vv = self.to_f32(kk), self.to_f32(vv)
        # slots past each sequence's last position may hold anything (never-written memory)
        vv = g.op("Where", [self.kv_valid, vv, g.const(0.0, np.float32)])
        qp = g.op("Gather", [q, self.qidx])  # [B, Tpad, nh, d]
        qp = g.op("Transpose", [g.op("Reshape", [qp, g.i64(0, 0, nkv, rep, d)])],
                  perm=[0, 2, 3, 1, 4])  # [B, nkv, rep, Tpad, d]
        kt = g.op("Unsqueeze", [g.op("Transpose", [kk], perm=[0, 1, 3, 2]), g.i64(2)])
        sc_ = g.op("Mul", [g.op("MatMul", [self.to_f32(qp), kt]),
                           g.const(1.0 / math.sqrt(d), np.float32)], name=f"{pre}scores")
        sc_ = g.op("Where", [self.allowed, sc_, g.const(-np.inf, np.float32)])
        pr = g.op("Softmax", [sc_], axis=-1, name=f"{pre}softmax")
        o = g.op("MatMul", [pr, g.op("Unsqueeze", [vv, g.i64(2)])])  # [B, nkv, rep, Tpad, d]
        o = g.op("Reshape", [g.op("Transpose", [o], perm=[0, 3, 1, 2, 4]),
                             g.i64(0, 0, nh * d)])  # [B, Tpad, nh*d]
        idx = g.op("Concat", [g.op("Unsqueeze", [self.seq_id, g.i64(1)]),
                              g.op("Unsqueeze", [self.local, g.i64(1)])], axis=1)
        out = g.op("GatherND", [o, idx], name=f"{pre}attn_out")  # [T, nh*d]
        # the pool write of this layer, done once for all layers at the end
        off = g.op("Concat", [g.op("Mul", [self.nb1, g.i64(i)]), g.i64(0, 0, 0)], axis=0)
        self.pool_writes.append((g.op("Add", [self.idx_pool, off]), kv_new))
        return self.to_act(out)

    def write_pool(self) -> None:
        g = self.g
        idx = g.op("Concat", [w[0] for w in self.pool_writes], axis=0)
        upd = g.op("Concat", [w[1] for w in self.pool_writes], axis=0)
        out = g.op("ScatterND", [self.pool_flat, idx, upd], name="kv_write")
        pool = self.pools[0].name
        g.op("Reshape", [out, g.op("Shape", [pool])], outputs=[f"{pool}_out"])

    def kv4_attention(self, qkv: str, i: int, codes: str, params: str, last: bool,
                      pre: str) -> tuple[str, str, str]:
        c = self.cfg["kv_cache_int4"]
        s = self.s
        outs = ["kv_codes_out", "kv_params_out"] if last else [
            self.g.fresh(f"{pre}kv_codes"), self.g.fresh(f"{pre}kv_params")]
        self.plugin_ops.add("LowbitKv4Attention")
        attn = self.g.fresh(f"{pre}attn")
        self.g.plugin("LowbitKv4Attention",
                      [qkv, "positions", "seq_offsets", "block_table", self.inv_freq, codes,
                       params], 3, f"{pre}attention", outputs=[attn] + outs, layer=i,
                      num_heads=s.num_attention_heads, num_kv_heads=s.num_key_value_heads,
                      head_size=s.head_size, tokens_per_block=self.tpb,
                      k_group_size=int(c["k_group_size"]), v_group_size=int(c["v_group_size"]),
                      sliding_window=int(s.sliding_window or 0))
        return attn, outs[0], outs[1]

    # -- whole graph ---------------------------------------------------------------------------
    def build(self) -> onnx.ModelProto:
        g, s, t = self.g, self.s, self.ck.tensors
        emb_w = t["transformer.vocab_embedding.weight"]
        lm_w = t["lm_head.weight"]
        emb = self.act("transformer.vocab_embedding.weight", emb_w)
        tied = bool(self.cfg.get("tie_word_embeddings")) and emb_w.shape == lm_w.shape \
            and torch.equal(emb_w, lm_w)
        lm = emb if tied else self.act("lm_head.weight", lm_w)
        x = g.op("Gather", [emb, "input_ids"], name="embedding")
        if self.kv_algo == "INT4":
            self.inv_freq = self.f32("rope.inv_freq", rope_inv_freq(self.cfg))
            codes, params = "kv_codes", "kv_params"
        else:
            self.attention_setup()
        for i in range(s.num_hidden_layers):
            pre = f"layers.{i}."
            lt = self.ck.layer(i)
            qkv = self.qkv(x, lt, pre)
            if self.kv_algo == "INT4":
                a, codes, params = self.kv4_attention(qkv, i, codes, params,
                                                      i == s.num_hidden_layers - 1, pre)
            else:
                a = self.std_attention(qkv, i, lt, pre)
            o = self.dense_or_proj(a, lt, pre, "attention.dense",
                                   "attention.quantization_scaling_factor")
            h = g.op("Add", [x, o], name=f"{pre}residual1")
            x = g.op("Add", [h, self.mlp(h, lt, pre)], name=f"{pre}residual2")
        if self.kv_algo != "INT4":
            self.write_pool()
        if not self.all_logits:
            offs = g.op("Cast", ["seq_offsets"], to=TensorProto.INT64)
            last = g.op("Sub", [g.op("Slice", [offs, g.i64(1), g.i64(INT64_MAX)]), g.i64(1)])
            x = g.op("Gather", [x, last], name="last_tokens")
        hf = self.rmsnorm(x, self.f32("transformer.ln_f.weight", t["transformer.ln_f.weight"]),
                          "ln_f")
        y = g.op("Gemm", [hf, lm], transB=1, name="lm_head")
        g.op("Cast", [y], to=TensorProto.FLOAT, outputs=["logits"])
        return self.model()

    def model(self) -> onnx.ModelProto:
        s = self.s
        vi = helper.make_tensor_value_info
        inputs = [vi("input_ids", TensorProto.INT32, ["num_tokens"]),
                  vi("positions", TensorProto.INT32, ["num_tokens"]),
                  vi("seq_offsets", TensorProto.INT32, ["batch_plus_one"]),
                  vi("block_table", TensorProto.INT32, ["batch", "max_blocks"])]
        outputs = [vi("logits", TensorProto.FLOAT,
                      ["num_tokens" if self.all_logits else "batch", s.vocab_size])]
        for p in self.pools:
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(p.dtype))
            inputs.append(vi(p.name, elem, p.shape))
            outputs.append(vi(f"{p.name}_out", elem, p.shape))
        graph = helper.make_graph(self.g.nodes, "lowbit_decoder", inputs, outputs,
                                  initializer=list(self.g.inits.values()))
        opsets = [helper.make_opsetid("", ONNX_OPSET)]
        if self.plugin_ops:
            opsets.append(helper.make_opsetid(DOMAIN, OPSET))
        m = helper.make_model(graph, opset_imports=opsets, producer_name="lowbit-trt")
        m.ir_version = 8  # ONNX 1.10+ readers (TensorRT 10 / 11, onnxruntime >= 1.10)
        return m

    def info(self) -> GraphInfo:
        s = self.s
        return GraphInfo(
            scheme=self.scheme, quant_algo=self.quant_algo, kv_cache_quant_algo=self.kv_algo,
            dtype=self.dtype, all_logits=self.all_logits, tokens_per_block=self.tpb,
            max_positions=self.max_positions, num_layers=s.num_hidden_layers,
            num_heads=s.num_attention_heads, num_kv_heads=s.num_key_value_heads,
            head_size=s.head_size, hidden_size=s.hidden_size, vocab_size=s.vocab_size,
            sliding_window=int(s.sliding_window or 0), pools=self.pools,
            plugin_ops=sorted(self.plugin_ops), checkpoint=str(self.ck.path))


def build_model(ckpt: Checkpoint, *, dtype: str = "float16", all_logits: bool = False,
                tokens_per_block: int = 64, max_positions: int | None = None
                ) -> tuple[onnx.ModelProto, GraphInfo]:
    """The ONNX model (weights inline) and its GraphInfo. max_positions: rows of the RoPE table
    of the standard-op attention (default max_position_embeddings): positions must be below."""
    register_schemas()
    ex = _Exporter(ckpt, dtype, all_logits, tokens_per_block, max_positions)
    model = ex.build()
    return model, ex.info()


TOKENIZER_SKIP = ("config.json", "calib_stats.safetensors")


def tokenizer_files(ckpt_dir: Path) -> list[Path]:
    """The tokenizer files saved beside a checkpoint (everything but config and tensors)."""
    return sorted(p for p in Path(ckpt_dir).iterdir()
                  if p.is_file() and p.name not in TOKENIZER_SKIP
                  and not p.name.endswith(".safetensors") and not p.name.startswith("."))


def fingerprint(ckpt_dir: str | os.PathLike[str]) -> str:
    """sha256 over config.json and every rank*.safetensors (name, size, content)."""
    d = Path(ckpt_dir)
    h = hashlib.sha256()
    h.update((d / "config.json").read_bytes())
    for f in sorted(d.glob("rank*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}:".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def save_model(model: onnx.ModelProto, out_dir: Path) -> None:
    """model.onnx + model.onnx.data (every initializer above 1 KiB) in out_dir."""
    onnx.save_model(model, str(out_dir / MODEL_FILE), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)


def export_onnx(checkpoint: Checkpoint | str | os.PathLike[str], out_dir: str | os.PathLike[str],
                *, dtype: str = "float16", all_logits: bool = False, tokens_per_block: int = 64,
                max_positions: int | None = None, force: bool = False,
                extra: dict[str, Any] | None = None, check: bool = True) -> GraphInfo:
    """Write out_dir/{model.onnx, model.onnx.data, graph_config.json, tokenizer files}, into a
    temporary directory renamed when complete. check: onnx.checker full check (with shape
    inference) of the written model. Returns the GraphInfo written."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    model, info = build_model(ckpt, dtype=dtype, all_logits=all_logits,
                              tokens_per_block=tokens_per_block, max_positions=max_positions)
    if (Path(ckpt.path) / "config.json").is_file():
        info.fingerprint = fingerprint(ckpt.path)
    info.extra = dict(extra or {})

    def fill(tmp: Path) -> None:
        save_model(model, tmp)
        if check:
            onnx.checker.check_model(str(tmp / MODEL_FILE), full_check=True)
        (tmp / GRAPH_CONFIG).write_text(info.to_json())
        if Path(ckpt.path).is_dir():
            for f in tokenizer_files(Path(ckpt.path)):
                shutil.copyfile(f, tmp / f.name)

    write_atomically(Path(out_dir), force, fill)
    return info
