"""The `lowbit` ONNX domain: schemas of the five plugin ops, and their CPU reference execution.

Each op is a TensorRT plugin (docs/engine-io.md): the node's op_type is the plugin name, its
attributes are the plugin fields (ints INT32, floats FLOAT32) plus `plugin_version` ("1") and
`plugin_namespace` ("lowbit"), which TensorRT's ONNX parser reads to find the creator (it passes
a creator only the fields the creator lists, so other attributes are ignored by TensorRT).

Schemas (`register_schemas`) make `onnx.checker.check_model(..., full_check=True)` and shape
inference accept the graph. The optional tensors of the quantize ops (gamma, scale, perm) are
listed only when present, exactly as the plugin receives them, so those ops take a variadic
tail after `x` whose meaning the fields give.

The activation dtype T is float16 (what the TensorRT plugins take) or float32 (accepted by these
schemas and the references only: the CPU verification exports the same graph with float32
activations). The two GEMM ops have no float input to carry T, so their output dtype is the
ONNX-only attribute `out_dtype` (a TensorProto data type, default FLOAT16; graphs for TensorRT
leave it unset).

`OPS` are onnx.reference operators that execute each node with the reference function the
contract names (numpy in, torch reference, numpy out); `ReferenceEvaluator(model,
new_ops=OPS)` runs a whole quantized graph on CPU.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, defs, helper
from onnx.defs import OpSchema
from onnx.reference.op_run import OpRun

DOMAIN = "lowbit"
OPSET = 1
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "lowbit"

# The plugin fields of each op (attributes TensorRT passes to the creator), in contract order.
FIELDS: dict[str, dict[str, int]] = {
    "LowbitQuantInt8": {"norm": OpSchema.AttrType.INT, "static": OpSchema.AttrType.INT,
                        "eps": OpSchema.AttrType.FLOAT},
    "LowbitAtomQuant": {"norm": OpSchema.AttrType.INT, "reorder": OpSchema.AttrType.INT,
                        "eps": OpSchema.AttrType.FLOAT, "n_outliers": OpSchema.AttrType.INT,
                        "group_size": OpSchema.AttrType.INT, "clip": OpSchema.AttrType.FLOAT},
    "LowbitW8A8Gemm": {"per_token": OpSchema.AttrType.INT},
    "LowbitW4A4Gemm": {"group_size": OpSchema.AttrType.INT},
    "LowbitKv4Attention": {n: OpSchema.AttrType.INT for n in (
        "layer", "num_heads", "num_kv_heads", "head_size", "tokens_per_block", "k_group_size",
        "v_group_size", "sliding_window")},
}
# ONNX-only attributes (not plugin fields): the GEMMs' output dtype for float32 CPU graphs.
ONNX_ONLY = {"LowbitW8A8Gemm": ("out_dtype",), "LowbitW4A4Gemm": ("out_dtype",)}

_ACT = ["tensor(float16)", "tensor(float)"]
_P = OpSchema.FormalParameter
_VARIADIC = OpSchema.FormalParameterOption.Variadic
_OPTIONAL = OpSchema.FormalParameterOption.Optional


def plugin_node(op: str, inputs: list[str], outputs: list[str], name: str,
                **attrs: Any) -> onnx.NodeProto:
    """A `lowbit` node with exactly the plugin fields of `op` (all required) plus
    plugin_version / plugin_namespace, and the ONNX-only attributes given."""
    fields = FIELDS[op]
    missing = [f for f in fields if f not in attrs]
    unknown = [a for a in attrs if a not in fields and a not in ONNX_ONLY.get(op, ())]
    if missing or unknown:
        raise ValueError(f"{op}: fields {list(fields)} expected; missing {missing}, "
                         f"unknown {unknown}")
    typed = {}
    for k, v in attrs.items():
        if k in fields:
            v = float(v) if fields[k] == OpSchema.AttrType.FLOAT else int(v)
        typed[k] = v
    return helper.make_node(op, inputs, outputs, name=name, domain=DOMAIN,
                            plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE,
                            **typed)


# -- schemas ---------------------------------------------------------------------------------

def _attr_int(ctx: Any, name: str, default: int | None = None) -> int:
    a = ctx.get_attribute(name)
    if a is None:
        if default is None:
            raise ValueError(f"attribute {name!r} is required")
        return default
    return int(a.i)


def _dims(t: onnx.TypeProto) -> list[onnx.TensorShapeProto.Dimension] | None:
    if not t.tensor_type.HasField("shape"):
        return None
    return list(t.tensor_type.shape.dim)


def _out(ctx: Any, i: int, elem: int, dims: list[Any] | None) -> None:
    """Set output i to elem type and dims (each a Dimension, an int, a str or None)."""
    tp = onnx.TypeProto()
    tp.tensor_type.elem_type = elem
    if dims is not None:
        shape = tp.tensor_type.shape
        for d in dims:
            nd = shape.dim.add()
            if isinstance(d, onnx.TensorShapeProto.Dimension):
                nd.CopyFrom(d)
            elif isinstance(d, int):
                nd.dim_value = d
            elif isinstance(d, str):
                nd.dim_param = d
    ctx.set_output_type(i, tp)


def _dim_div(d: onnx.TensorShapeProto.Dimension, k: int, sub: int = 0) -> Any:
    """(d - sub) / k when d is known, else an unknown dim."""
    if d.HasField("dim_value"):
        return (d.dim_value - sub) // k
    return None


def _infer_quant_int8(ctx: Any) -> None:
    x = ctx.get_input_type(0)
    dims = _dims(x)
    _out(ctx, 0, TensorProto.INT8, dims)
    if ctx.get_num_outputs() > 1:
        _out(ctx, 1, TensorProto.FLOAT, None if dims is None else dims[:1])


def _infer_atom_quant(ctx: Any) -> None:
    dims = _dims(ctx.get_input_type(0))
    ko, g = _attr_int(ctx, "n_outliers"), _attr_int(ctx, "group_size")
    t = k = None
    if dims is not None:
        t, k = dims[0], dims[1]
    kn2 = None if k is None else _dim_div(k, 2, ko)
    kng = None if k is None else _dim_div(k, g, ko)
    shapes = [(TensorProto.INT8, [t, kn2]), (TensorProto.FLOAT16, [t, kng]),
              (TensorProto.INT8, [t, ko]), (TensorProto.FLOAT16, [t])]
    for i, (elem, d) in enumerate(shapes):
        _out(ctx, i, elem, None if dims is None else d)


def _infer_gemm(n_in_w: int) -> Any:
    def infer(ctx: Any) -> None:
        x, w = _dims(ctx.get_input_type(0)), _dims(ctx.get_input_type(n_in_w))
        elem = _attr_int(ctx, "out_dtype", TensorProto.FLOAT16)
        dims = None if x is None or w is None else [x[0], w[0]]
        _out(ctx, 0, elem, dims)
    return infer


def _infer_kv4(ctx: Any) -> None:
    qkv = ctx.get_input_type(0)
    dims = _dims(qkv)
    nh, d = _attr_int(ctx, "num_heads"), _attr_int(ctx, "head_size")
    _out(ctx, 0, qkv.tensor_type.elem_type, None if dims is None else [dims[0], nh * d])
    for i, j in ((1, 5), (2, 6)):
        t = ctx.get_input_type(j)
        _out(ctx, i, t.tensor_type.elem_type, _dims(t))


def _schema(name: str, doc: str, inputs: list[Any], outputs: list[Any],
            constraints: list[tuple[str, list[str], str]], infer: Any) -> OpSchema:
    attrs = [OpSchema.Attribute(f, t, f"plugin field {f}", required=True)
             for f, t in FIELDS[name].items()]
    attrs += [OpSchema.Attribute("plugin_version", helper.make_attribute("plugin_version",
                                                                          PLUGIN_VERSION),
                                 "TensorRT plugin version (read by TensorRT's ONNX parser)"),
              OpSchema.Attribute("plugin_namespace", helper.make_attribute("plugin_namespace",
                                                                            PLUGIN_NAMESPACE),
                                 "TensorRT plugin namespace (read by TensorRT's ONNX parser)")]
    for a in ONNX_ONLY.get(name, ()):
        attrs.append(OpSchema.Attribute(
            a, helper.make_attribute(a, TensorProto.FLOAT16),
            "ONNX-only (not a plugin field): output dtype, FLOAT16 (TensorRT) or FLOAT (CPU "
            "verification graphs)"))
    s = OpSchema(name, DOMAIN, OPSET, doc=doc, inputs=inputs, outputs=outputs,
                 type_constraints=constraints, attributes=attrs)
    s.set_type_and_shape_inference_function(infer)
    return s


def schemas() -> list[OpSchema]:
    act = ("T", _ACT, "activation dtype (TensorRT plugins: float16)")
    gemm_out = ("Y", _ACT, "output dtype: attribute out_dtype")
    return [
        _schema("LowbitQuantInt8", "SmoothQuant activation quantize (docs/engine-io.md)",
                [_P("x", "T"), _P("extra", "E", param_option=_VARIADIC, is_homogeneous=False,
                                  min_arity=0)],
                [_P("q", "tensor(int8)"), _P("xs", "tensor(float)", param_option=_OPTIONAL)],
                [act, ("E", _ACT, "gamma (T) if norm, scale (float) if static")],
                _infer_quant_int8),
        _schema("LowbitAtomQuant", "Atom activation quantize (docs/engine-io.md)",
                [_P("x", "T"), _P("extra", "E", param_option=_VARIADIC, is_homogeneous=False,
                                  min_arity=0)],
                [_P("x4", "tensor(int8)"), _P("xs4", "tensor(float16)"),
                 _P("x8", "tensor(int8)"), _P("xs8", "tensor(float16)")],
                [act, ("E", _ACT + ["tensor(int32)"], "gamma (T) if norm, perm if reorder")],
                _infer_atom_quant),
        _schema("LowbitW8A8Gemm", "SmoothQuant W8A8 GEMM (docs/engine-io.md)",
                [_P("xq", "tensor(int8)"), _P("xs", "tensor(float)"), _P("wq", "tensor(int8)"),
                 _P("ws", "tensor(float)")],
                [_P("y", "Y")], [gemm_out], _infer_gemm(2)),
        _schema("LowbitW4A4Gemm", "Atom W4A4 mixed-precision group GEMM (docs/engine-io.md)",
                [_P("x4", "tensor(int8)"), _P("xs4", "tensor(float16)"), _P("x8", "tensor(int8)"),
                 _P("xs8", "tensor(float16)"), _P("w4", "tensor(int8)"),
                 _P("ws4t", "tensor(float16)"), _P("w8", "tensor(int8)"),
                 _P("ws8", "tensor(float16)")],
                [_P("y", "Y")], [gemm_out], _infer_gemm(4)),
        _schema("LowbitKv4Attention", "RoPE + INT4 KV append + attention (docs/engine-io.md)",
                [_P("qkv", "T"), _P("positions", "tensor(int32)"),
                 _P("seq_offsets", "tensor(int32)"), _P("block_table", "tensor(int32)"),
                 _P("inv_freq", "tensor(float)"), _P("kv_codes", "tensor(uint8)"),
                 _P("kv_params", "tensor(float16)")],
                [_P("attn", "T"), _P("kv_codes_out", "tensor(uint8)"),
                 _P("kv_params_out", "tensor(float16)")],
                [act], _infer_kv4),
    ]


def register_schemas() -> None:
    """Register the `lowbit` schemas with onnx (once per process)."""
    for s in schemas():
        if not defs.has(s.name, DOMAIN):
            defs.register_schema(s)


# -- reference execution (onnx.reference) ------------------------------------------------------

def _t(a: np.ndarray) -> torch.Tensor:
    # onnx.reference hands over read-only arrays (initializers); the references never write
    # their inputs, and the KV op copies its pools first, so no copy is needed here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.require(a, requirements="C"))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


_OUT_DTYPES = {TensorProto.FLOAT16: torch.float16, TensorProto.FLOAT: torch.float32}


def _out_dtype(code: int | None) -> torch.dtype:
    code = TensorProto.FLOAT16 if code is None else int(code)
    if code not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be FLOAT16 (10) or FLOAT (1), found {code}")
    return _OUT_DTYPES[code]


class LowbitQuantInt8(OpRun):
    """lowbit.reference.rmsnorm_quantize_int8 (norm) / quantize_per_token_int8 /
    quantize_static_int8."""

    op_domain = DOMAIN

    def _run(self, x, *extra, norm=None, static=None, eps=None, **_):  # noqa: ANN001
        from lowbit import reference as R

        need = int(norm) + int(static)
        if len(extra) != need:
            raise ValueError(f"LowbitQuantInt8(norm={norm}, static={static}) takes "
                             f"{1 + need} inputs, found {1 + len(extra)}")
        h = _t(x)
        scale = _t(extra[-1]).float() if static else None
        if norm:
            q, xs = R.rmsnorm_quantize_int8(h, _t(extra[0]), float(eps), scale)
        elif static:
            q = R.quantize_static_int8(h.float(), scale)
        else:
            q, xs = R.quantize_per_token_int8(h.float())
        return (_np(q),) if static else (_np(q), _np(xs.float()))


class LowbitAtomQuant(OpRun):
    """lowbit.reference.atom_rmsnorm_quantize (norm) / atom_reorder_quantize."""

    op_domain = DOMAIN

    def _run(self, x, *extra, norm=None, reorder=None, eps=None, n_outliers=None,  # noqa: ANN001
             group_size=None, clip=None, **_):
        from lowbit import reference as R

        need = int(norm) + int(reorder)
        if len(extra) != need:
            raise ValueError(f"LowbitAtomQuant(norm={norm}, reorder={reorder}) takes "
                             f"{1 + need} inputs, found {1 + len(extra)}")
        h = _t(x)
        perm = _t(extra[-1]) if reorder else None
        if norm:
            if perm is None:
                perm = torch.arange(h.shape[-1], dtype=torch.int32)
            a = R.atom_rmsnorm_quantize(h, _t(extra[0]), perm, float(eps), int(n_outliers),
                                        int(group_size), float(clip))
        else:
            a = R.atom_reorder_quantize(h, perm, int(n_outliers), int(group_size), float(clip))
        return tuple(_np(v) for v in a)


class LowbitW8A8Gemm(OpRun):
    """lowbit.reference.w8a8_gemm, rounded to the output dtype."""

    op_domain = DOMAIN

    def _run(self, xq, xs, wq, ws, per_token=None, out_dtype=None, **_):  # noqa: ANN001
        from lowbit import reference as R

        xs_t = _t(xs).float().reshape(-1)
        if not per_token and xs_t.numel() != 1:
            raise ValueError(f"LowbitW8A8Gemm(per_token=0) needs xs [1], found {xs.shape}")
        y = R.w8a8_gemm(_t(xq), xs_t, _t(wq), _t(ws).float().reshape(-1))
        return (_np(y.to(_out_dtype(out_dtype))),)


class LowbitW4A4Gemm(OpRun):
    """lowbit.reference.atom_gemm (ws4t unpacked by lowbit.packing), rounded to the output
    dtype."""

    op_domain = DOMAIN

    def _run(self, x4, xs4, x8, xs8, w4, ws4t, w8, ws8, group_size=None, out_dtype=None,  # noqa: ANN001
             **_):
        from lowbit import reference as R
        from lowbit.packing import unpack_w4a4_scales

        a = R.AtomActivation(_t(x4), _t(xs4), _t(x8), _t(xs8))
        w = R.AtomWeight(_t(w4), unpack_w4a4_scales(_t(ws4t)), _t(w8), _t(ws8))
        y = R.atom_gemm(a, w, int(group_size))
        return (_np(y.to(_out_dtype(out_dtype))),)


class LowbitKv4Attention(OpRun):
    """lowbit.kvcache.rope_append then lowbit.kvcache.attention on copies of the pools (the
    plugin updates them in place; here the outputs are new arrays)."""

    op_domain = DOMAIN

    def _run(self, qkv, positions, seq_offsets, block_table, inv_freq, kv_codes,  # noqa: ANN001
             kv_params, layer=None, num_heads=None, num_kv_heads=None, head_size=None,
             tokens_per_block=None, k_group_size=None, v_group_size=None, sliding_window=None,
             **_):
        from lowbit import kvcache

        lay = kvcache.KvLayout(num_heads=int(num_heads), num_kv_heads=int(num_kv_heads),
                               head_size=int(head_size), k_group_size=int(k_group_size),
                               v_group_size=int(v_group_size),
                               tokens_per_block=int(tokens_per_block),
                               sliding_window=int(sliding_window))
        codes, params = _t(kv_codes.copy()), _t(kv_params.copy())
        pos, offs, bt = _t(positions), _t(seq_offsets), _t(block_table)
        x = _t(qkv)
        q = kvcache.rope_append(x, pos, offs, bt, _t(inv_freq).float(), codes, params,
                                int(layer), lay)
        out = kvcache.attention(q, pos, offs, bt, codes, params, int(layer), lay)
        return _np(out.to(x.dtype)), _np(codes), _np(params)


OPS: list[type[OpRun]] = [LowbitQuantInt8, LowbitAtomQuant, LowbitW8A8Gemm, LowbitW4A4Gemm,
                          LowbitKv4Attention]
