"""Graph verification on CPU: the exported graph computes the model (issue 6, item 4).

The checkpoint is exported with float32 activations (the same graph TensorRT gets, in float32)
and executed on CPU -- by onnxruntime when it holds standard ops only, else by
onnx.reference.ReferenceEvaluator with the `lowbit` ops executed by their reference functions
(builder/onnx_ops.py) -- for a ragged prefill of several sequences in one step, then decode
steps of one token per sequence, the cache pools fed from each step's outputs to the next
step's inputs through a shuffled block table. Each sequence also runs alone in the reference
runtime (ReferenceModel, float32, CPU, its own cache); the logits must agree:

    rel = max |logits_graph - logits_runtime| / max |logits_runtime|   per step
    tolerance: 1e-3 for float weights (fp16 scheme), 1e-5 for quantized schemes

Float cache pools start poisoned with NaN, so a read of a slot that was never written shows.
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnx.reference.op_run import OpRun

from builder.onnx_graph import MODEL_FILE, GraphInfo, export_onnx
from converters.checkpoint import Checkpoint, read_checkpoint

TOLERANCE = {"fp16": 1e-3, "smoothquant-w8a8": 1e-5, "atom-w4a4": 1e-5}
# The CPU copy of a quantized graph runs every float op in front of a quantizer as the runtime runs
# it (fuse_silu, fuse_attention): a last-bit difference there flips an int8 code at a rounding
# boundary now and then, and models with massive activations (SmolLM2: |x| ~ 750) amplify each
# flip (measured on SmolLM2 SmoothQuant with numpy's attention: 2.5e-2 to 6.7e-2; with
# fuse_attention: 1.4e-6).
VERIFY_DOMAIN = "lowbit.verify"


class VerificationError(RuntimeError):
    """The exported graph's logits differ from the reference runtime's beyond tolerance."""


@dataclass
class VerifyResult:
    scheme: str
    runner: str  # "onnxruntime" or "onnx.reference"
    steps: list[tuple[str, float]] = field(default_factory=list)  # (label, rel diff)
    tolerance: float = 0.0
    export_s: float = 0.0
    run_s: float = 0.0
    greedy_agree: bool = True  # the greedy token of every step is the runtime's

    @property
    def max_rel(self) -> float:
        return max(r for _, r in self.steps)

    @property
    def passed(self) -> bool:
        return all(math.isfinite(r) and r <= self.tolerance for _, r in self.steps)

    def summary(self) -> str:
        steps = ", ".join(f"{k} {v:.2e}" for k, v in self.steps)
        if not self.greedy_agree:
            steps += "; a greedy token differs"
        return (f"max rel diff {self.max_rel:.2e} vs the reference runtime (tolerance "
                f"{self.tolerance:.0e}, {self.runner}; {steps}); export {self.export_s:.1f} s, "
                f"run {self.run_s:.1f} s")


class GraphRunner:
    """Runs an exported graph on CPU: onnxruntime for standard ops, else onnx.reference."""

    def __init__(self, path: Path, info: GraphInfo, threads: int = 0):
        self.info = info
        if info.plugin_ops:
            import onnx
            from onnx.reference import ReferenceEvaluator

            from builder.onnx_ops import OPS, register_schemas

            register_schemas()
            self.runner = "onnx.reference"
            model = fuse_attention(fuse_silu(onnx.load(str(path))))
            self.sess = ReferenceEvaluator(model, new_ops=OPS + [Silu, RuntimeAttention])
            self.outputs = list(self.sess.output_names)
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            self.runner = "onnxruntime"
            self.sess = ort.InferenceSession(str(path), opts,
                                             providers=["CPUExecutionProvider"])
            self.outputs = [o.name for o in self.sess.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.sess.run(None, feeds), strict=True))


class Silu(OpRun):
    """y = silu(x) by torch.nn.functional.silu, the reference runtime's own kernel (its
    rounding differs from x * sigmoid(x) in the last bit, which a quantizer downstream would
    turn into a flipped code)."""

    op_domain = VERIFY_DOMAIN

    def _run(self, x):  # noqa: ANN001
        return (torch.nn.functional.silu(torch.from_numpy(np.array(x))).numpy(),)


def fuse_silu(model: Any) -> Any:
    """For CPU evaluation only: every Mul(f, Sigmoid(f)) of the graph becomes one
    `lowbit.verify` Silu node (the same function, executed as the runtime executes it). The
    exported model.onnx keeps Sigmoid * Mul."""
    from onnx import helper

    nodes = list(model.graph.node)
    sig = {n.output[0]: n for n in nodes if n.op_type == "Sigmoid"}
    users: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    out, drop = [], set()
    for n in nodes:
        if n.op_type == "Mul" and len(n.input) == 2:
            a, b = n.input
            s = sig.get(b) or sig.get(a)
            x = a if s is sig.get(b) else b
            if s is not None and s.input[0] == x and users[s.output[0]] == 1:
                out.append(helper.make_node("Silu", [x], list(n.output), name=n.name,
                                            domain=VERIFY_DOMAIN))
                drop.add(id(s))
                continue
        out.append(n)
    del model.graph.node[:]
    model.graph.node.extend(n for n in out if id(n) not in drop)
    if drop:
        model.opset_import.append(helper.make_opsetid(VERIFY_DOMAIN, 1))
    return model


def new_pools(info: GraphInfo, num_blocks: int, poison: bool = True) -> dict[str, np.ndarray]:
    """Zeroed cache pools (float pools filled with NaN when poison)."""
    out = {}
    for p in info.pools:
        shape = [num_blocks if d == "num_blocks" else int(d) for d in p.shape]
        a = np.zeros(shape, dtype=np.dtype(p.dtype))
        if poison and a.dtype.kind == "f" and p.name == "kv_cache":
            a[:] = np.nan
        out[p.name] = a
    return out


def allocate_blocks(lengths: list[int], tpb: int, seed: int = 0
                    ) -> tuple[np.ndarray, int]:
    """A block table [B, MB] (int32) for sequences of `lengths` tokens with the blocks handed
    out in a shuffled order (so sequences interleave in the pool); unused entries are 0.
    Returns (table, number of blocks in the pool)."""
    need = [-(-n // tpb) for n in lengths]
    nb = sum(need) + 1  # one spare block nobody owns
    order = np.random.default_rng(seed).permutation(nb)
    table = np.zeros((len(lengths), max(need)), dtype=np.int32)
    k = 0
    for b, n in enumerate(need):
        table[b, :n] = order[k:k + n]
        k += n
    return table, nb


def rel_diff(got: np.ndarray, ref: np.ndarray) -> float:
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


class RuntimeAttention(OpRun):
    """The standard-op attention of one layer (fuse_attention), computed as the reference
    runtime computes it: per sequence, torch's scaled_dot_product_attention over that
    sequence's own keys [0, last position], query heads reading KV head h // rep.

    inputs: qp f32 [B, nkv, rep, Tpad, d] (queries padded per sequence), kt [B, nkv, 1, d, S],
    allowed bool [B, 1, 1, Tpad, S], vu [B, nkv, 1, S, d], idx int64 [T, 2] (sequence, row of
    each token) -> f32 [T, nh d]."""

    op_domain = VERIFY_DOMAIN

    def _run(self, qp, kt, allowed, vu, idx):  # noqa: ANN001
        f = torch.nn.functional
        qp, kt, vu = (torch.from_numpy(np.array(a)) for a in (qp, kt, vu))
        allowed, idx = torch.from_numpy(np.array(allowed)), torch.from_numpy(np.array(idx))
        _, nkv, rep, _, d = qp.shape
        out = torch.empty(idx.shape[0], nkv * rep * d, dtype=qp.dtype)
        for b in torch.unique(idx[:, 0]).tolist():
            rows = (idx[:, 0] == b).nonzero().reshape(-1)
            n = int(idx[rows, 1].max()) + 1
            mask = allowed[b, 0, 0, :n]  # [n, S]
            total = int(mask[n - 1].nonzero().max()) + 1  # the last query's position + 1
            q = qp[b, :, :, :n].reshape(1, nkv * rep, n, d)
            k = kt[b, :, 0, :, :total].transpose(-1, -2).repeat_interleave(rep, dim=0)[None]
            v = vu[b, :, 0, :total].repeat_interleave(rep, dim=0)[None]
            o = f.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, :total])
            out[rows] = o[0].transpose(0, 1).reshape(n, -1)[idx[rows, 1]]
        return (out.numpy(),)


def fuse_attention(model: Any) -> Any:
    """For CPU evaluation only: each layer's standard-op attention core (MatMul, scale, mask,
    Softmax, MatMul, gather of the token rows; onnx_graph.std_attention) becomes one
    `lowbit.verify` RuntimeAttention node executed as the reference runtime executes it. numpy's
    matmul / softmax round differently from torch's SDPA in the last bit, and a quantizer
    downstream turns that into flipped codes. The exported model.onnx is unchanged; the fp16
    graph's standard ops are verified by onnxruntime."""
    from onnx import helper

    nodes = list(model.graph.node)
    by_out = {o: n for n in nodes for o in n.output}
    drop: set[int] = set()
    new: dict[int, Any] = {}
    for n in nodes:
        if n.op_type != "GatherND" or not re.fullmatch(r"layers\.\d+\.attn_out(__\d+)?", n.name):
            continue
        reshape = by_out[n.input[0]]
        transpose = by_out[reshape.input[0]]
        pv = by_out[transpose.input[0]]  # MatMul(pr, vu)
        softmax = by_out[pv.input[0]]
        where = by_out[softmax.input[0]]
        scale = by_out[where.input[1]]
        qk = by_out[scale.input[0]]  # MatMul(qp, kt)
        chain = (reshape, transpose, pv, softmax, where, scale, qk)
        kinds = ("Reshape", "Transpose", "MatMul", "Softmax", "Where", "Mul", "MatMul")
        if tuple(c.op_type for c in chain) != kinds:
            raise ValueError(f"fuse_attention: unexpected attention pattern at {n.name}")
        new[id(n)] = helper.make_node(
            "RuntimeAttention", [qk.input[0], qk.input[1], where.input[0], pv.input[1], n.input[1]],
            list(n.output), name=n.name, domain=VERIFY_DOMAIN)
        drop.update(id(c) for c in chain)
    if new:
        out = [new.get(id(n), n) for n in nodes if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(out)
        if all(o.domain != VERIFY_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(VERIFY_DOMAIN, 1))
    return model


def verify_checkpoint(checkpoint: Checkpoint | str | Path, prompts: list[list[int]], *,
                      decode_steps: int = 2, tokens_per_block: int = 64,
                      all_logits: bool = False, workdir: str | Path | None = None,
                      threads: int = 0, graph_from: Checkpoint | None = None) -> VerifyResult:
    """Export `checkpoint` with float32 activations, run prefill + decode steps of `prompts`
    (one sequence each, ragged) on CPU and compare with the reference runtime. The graph is
    written to a temporary directory (inside workdir if given) and removed afterwards.
    graph_from: export this checkpoint instead (tests: a deliberately wrong graph must fail)."""
    from builder.runtime import ReferenceModel

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("verification needs at least one non-empty prompt")
    with tempfile.TemporaryDirectory(prefix="lowbit-verify-", dir=workdir) as tmp:
        t0 = time.perf_counter()
        out = Path(tmp) / "graph"
        info = export_onnx(graph_from or ckpt, out, dtype="float32", all_logits=all_logits,
                           tokens_per_block=tokens_per_block, check=False)
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        runner = GraphRunner(out / MODEL_FILE, info, threads)
        res = VerifyResult(info.scheme, runner.runner, tolerance=TOLERANCE[info.scheme],
                           export_s=export_s)
        model = ReferenceModel(ckpt, device="cpu", dtype=torch.float32)
        lengths = [len(p) + decode_steps for p in prompts]
        caches = [model.new_cache(1, n) for n in lengths]
        table, nb = allocate_blocks(lengths, tokens_per_block)
        pools = new_pools(info, nb)
        seqs = [list(p) for p in prompts]
        new = [list(p) for p in prompts]  # tokens of this step, per sequence
        for step in range(decode_steps + 1):
            ids = np.array([t for n in new for t in n], dtype=np.int32)
            pos = np.concatenate([np.arange(len(s) - len(n), len(s))
                                  for s, n in zip(seqs, new, strict=True)]).astype(np.int32)
            offs = np.cumsum([0] + [len(n) for n in new]).astype(np.int32)
            feeds = {"input_ids": ids, "positions": pos, "seq_offsets": offs,
                     "block_table": table, **pools}
            got = runner(feeds)
            pools = {p.name: got[f"{p.name}_out"] for p in info.pools}
            refs = []
            for b, n in enumerate(new):
                lg = model.forward(torch.tensor([n]), caches[b])[0]  # [t, V]
                refs.append(lg if all_logits else lg[-1:])
            ref = torch.cat(refs).numpy()
            label = "prefill" if step == 0 else f"decode{step}"
            res.steps.append((label, rel_diff(got["logits"], ref)))
            res.greedy_agree &= bool(np.array_equal(got["logits"].argmax(-1),
                                                    ref.argmax(-1)))
            nxt = [int(r[-1].argmax()) for r in refs]
            for b in range(len(seqs)):
                seqs[b].append(nxt[b])
            new = [[t] for t in nxt]
        res.run_s = time.perf_counter() - t0
    return res


def default_prompts(tokenizer: Any) -> list[list[int]]:
    """Two short real prompts of different lengths (the CLI's verification)."""
    texts = ["The capital of France is", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci "
             "number.\"\"\"\n    if n < 2:"]
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]

