"""ONNX graph -> serialized TensorRT engine (the only module that imports tensorrt, lazily).

    DIR/model.engine         the serialized engine (one optimization profile)
    DIR/engine_config.json   scheme, graph settings, profile shapes, TensorRT and plugin
                             library versions, checkpoint fingerprint
    DIR/tokenizer files      copied from the ONNX directory

The network is strongly typed (tensor types come from the graph: TensorRT 11 has no precision
flags); the KV4 attention plugin's pools are inputs aliased to outputs, which needs the preview
feature ALIASED_PLUGIN_IO_10_03. Profile limits are checked before anything is built.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from builder.onnx_graph import GraphInfo, read_graph_info, tokenizer_files
from converters.checkpoint import write_atomically
from converters.errors import UserError

ENGINE_FILE = "model.engine"
ENGINE_CONFIG = "engine_config.json"
PLUGIN_ENV = "LOWBIT_PLUGINS_LIB"
PLUGIN_LIB = "liblowbit_plugins.so"


# -- availability ----------------------------------------------------------------------------

def tensorrt_status() -> tuple[bool, str]:
    """(importable, description): the TensorRT version, or why it cannot be imported."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or a broken install failing at load time
        return False, f"the `tensorrt` Python package cannot be imported ({e})"
    if not hasattr(trt, "Builder"):  # e.g. a folder named tensorrt on sys.path
        return False, (f"the `tensorrt` Python package cannot be imported (found "
                       f"{getattr(trt, '__path__', trt)}, which is not TensorRT)")
    return True, f"TensorRT {trt.__version__}"


def plugin_library_candidates() -> list[Path]:
    paths = []
    env = os.environ.get(PLUGIN_ENV)
    if env:
        paths.append(Path(env))
    here = Path(__file__).resolve().parent.parent
    paths += [here / "build" / PLUGIN_LIB, here / "python" / "lowbit" / PLUGIN_LIB]
    return paths


def find_plugin_library() -> Path:
    """The plugin library's path (not loaded): lowbit.trt_plugins decides when it exists, else
    $LOWBIT_PLUGINS_LIB, build/liblowbit_plugins.so, python/lowbit/liblowbit_plugins.so."""
    try:
        from lowbit import trt_plugins  # the plugin engineer's loader, when present
    except ImportError:
        trt_plugins = None
    if trt_plugins is not None and hasattr(trt_plugins, "library_path"):
        try:
            return Path(trt_plugins.library_path())
        except Exception as e:
            raise UserError(f"TensorRT plugin library: {e}") from None
    env = os.environ.get(PLUGIN_ENV)
    if env and not Path(env).is_file():
        raise UserError(f"{PLUGIN_ENV}={env}: expected the TensorRT plugin library "
                        f"({PLUGIN_LIB}), found no such file")
    for p in plugin_library_candidates():
        if p.is_file():
            return p
    tried = ", ".join(str(p) for p in plugin_library_candidates())
    raise UserError(f"the TensorRT plugin library {PLUGIN_LIB} was not found (tried {tried}); "
                    f"build it with `cmake -S . -B build -DTensorRT_ROOT=... && cmake --build "
                    f"build` or set {PLUGIN_ENV}")


def load_plugins(needed: list[str]) -> dict[str, Any]:
    """Load the plugin library into TensorRT's registry and check that every op in `needed`
    has a creator (name, version "1", namespace "lowbit"). Returns what engine_config.json
    records about the library."""
    import tensorrt as trt

    from builder.onnx_ops import PLUGIN_NAMESPACE, PLUGIN_VERSION

    path = find_plugin_library()
    info: dict[str, Any] = {"path": str(path), "sha256": _sha256(path)}
    try:
        from lowbit import trt_plugins
    except ImportError:
        trt_plugins = None
    if trt_plugins is not None and hasattr(trt_plugins, "load"):
        trt_plugins.load()
        if hasattr(trt_plugins, "version"):
            info["version"] = str(trt_plugins.version())
    else:
        # static REGISTER_TENSORRT_PLUGIN registration runs when the library is loaded
        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    reg = trt.get_plugin_registry()
    missing = []
    for op in needed:
        get = getattr(reg, "get_creator", None) or reg.get_plugin_creator
        if get(op, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
            missing.append(op)
    if missing:
        raise UserError(f"the plugin library {path} registers no creator for {missing} "
                        f"(version {PLUGIN_VERSION}, namespace {PLUGIN_NAMESPACE!r}); rebuild it "
                        f"from this checkout")
    return info


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# -- profile ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Profile:
    """The engine's optimization profile limits (one profile, tuned for a full decode step)."""

    max_batch_size: int = 8  # sequences per step
    max_input_len: int = 1024  # tokens of one prompt
    max_seq_len: int = 2048  # prompt + generated tokens of one sequence
    max_num_tokens: int | None = None  # tokens per step (all sequences); None: see resolve
    num_blocks: int | None = None  # cache pool blocks; None: every sequence at max_seq_len

    def check(self) -> None:
        """The limits against each other (no graph needed): UserError when inconsistent."""
        for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens",
                     "num_blocks"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, found {v}")
        if self.max_input_len > self.max_seq_len:
            raise UserError(f"--max-input-len {self.max_input_len} exceeds --max-seq-len "
                            f"{self.max_seq_len}: a prompt must fit in its sequence")
        if self.max_num_tokens is not None and self.max_num_tokens < self.max_batch_size:
            raise UserError(f"--max-num-tokens {self.max_num_tokens} is below --max-batch-size "
                            f"{self.max_batch_size}: a decode step of every sequence needs "
                            f"{self.max_batch_size} tokens")

    def resolve(self, info: GraphInfo) -> Profile:
        """Check the limits against each other and the graph; fill the defaults."""
        self.check()
        tokens = self.max_num_tokens
        if tokens is None:  # a full prompt, or a decode step of every sequence
            tokens = max(self.max_input_len, self.max_batch_size)
        if not info.plugin_ops or "LowbitKv4Attention" not in info.plugin_ops:
            if self.max_seq_len > info.max_positions:
                raise UserError(f"--max-seq-len {self.max_seq_len} exceeds the graph's RoPE "
                                f"table ({info.max_positions} positions); export the graph "
                                f"again with this --max-seq-len")
        blocks = self.num_blocks
        if blocks is None:
            blocks = self.max_batch_size * self.max_blocks(info)
        return Profile(self.max_batch_size, self.max_input_len, self.max_seq_len, tokens,
                       blocks)

    def max_blocks(self, info: GraphInfo) -> int:
        return -(-self.max_seq_len // info.tokens_per_block)

    def shapes(self, info: GraphInfo) -> dict[str, tuple[list[int], list[int], list[int]]]:
        """(min, opt, max) of every input; opt is a decode step of max_batch_size sequences."""
        if self.max_num_tokens is None or self.num_blocks is None:
            raise ValueError("resolve() the profile first")
        b, mb = self.max_batch_size, self.max_blocks(info)
        t_opt = min(b, self.max_num_tokens)
        out = {
            "input_ids": ([1], [t_opt], [self.max_num_tokens]),
            "positions": ([1], [t_opt], [self.max_num_tokens]),
            "seq_offsets": ([2], [b + 1], [b + 1]),
            "block_table": ([1, 1], [b, mb], [b, mb]),
        }
        for p in info.pools:
            def dims(nb: int, shape: list[Any] = p.shape) -> list[int]:
                return [nb if d == "num_blocks" else int(d) for d in shape]
            out[p.name] = (dims(1), dims(self.num_blocks), dims(self.num_blocks))
        return out


# -- build -----------------------------------------------------------------------------------

def _progress_monitor(trt: Any) -> Any:
    """A TensorRT IProgressMonitor drawing one tqdm bar per top-level phase (None when this
    TensorRT has no progress monitor)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None
    from tqdm import tqdm

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                self.bars[phase_name] = tqdm(total=num_steps, desc=phase_name, unit="step",
                                             leave=False)

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.n = step + 1
                bar.refresh()
            return True

        def phase_finish(self, phase_name: str) -> None:
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()


def build_serialized(onnx_path: str | os.PathLike[str],
                     shapes: dict[str, tuple[list[int], list[int], list[int]]],
                     plugin_ops: list[str], *, workspace_gib: float = 8.0,
                     timing_cache: str | os.PathLike[str] | None = None, progress: bool = True,
                     verbose: bool = False) -> tuple[bytes, dict[str, Any] | None]:
    """Parse an ONNX file into a strongly typed network and build it with one optimization
    profile `shapes` {input: (min, opt, max)}. Returns (serialized engine, plugin library
    record or None)."""
    ok, why = tensorrt_status()
    if not ok:
        raise UserError(f"building an engine needs TensorRT: {why}")
    import tensorrt as trt

    plugin = load_plugins(plugin_ops) if plugin_ops else None
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UserError(f"TensorRT's ONNX parser refused {onnx_path}: " + " | ".join(errs[:5]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if "LowbitKv4Attention" in plugin_ops:  # pools are plugin inputs aliased to outputs
        config.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, True)
    prof = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise UserError(f"{onnx_path}: unexpected engine input {name!r} (the profile has "
                            f"{sorted(shapes)})")
        prof.set_shape(name, *shapes[name])
    config.add_optimization_profile(prof)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    monitor = _progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (its log above says why)")
    if cache_path is not None:
        tmp = cache_path.with_name(f".{cache_path.name}.partial")
        tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
        os.replace(tmp, cache_path)
    return bytes(memoryview(serialized)), plugin


def build_engine(onnx_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 profile: Profile, *, workspace_gib: float = 8.0,
                 timing_cache: str | os.PathLike[str] | None = None, force: bool = False,
                 progress: bool = True, verbose: bool = False) -> dict[str, Any]:
    """Parse `onnx_path` (with graph_config.json beside it) and write the engine directory.
    Returns the engine_config written."""
    onnx_path = Path(onnx_path)
    info = read_graph_info(onnx_path)
    profile = profile.resolve(info)
    t0 = time.perf_counter()
    shapes = profile.shapes(info)
    serialized, plugin = build_serialized(onnx_path, shapes, info.plugin_ops,
                                          workspace_gib=workspace_gib, timing_cache=timing_cache,
                                          progress=progress, verbose=verbose)
    engine_config = {
        "scheme": info.scheme,
        "graph": {k: v for k, v in asdict(info).items() if k != "extra"},
        "verification": info.extra.get("verification"),
        "profile": asdict(profile),
        "shapes": {k: {"min": v[0], "opt": v[1], "max": v[2]} for k, v in shapes.items()},
        "tensorrt_version": _trt_version(),
        "plugin_library": plugin,
        "checkpoint_fingerprint": info.fingerprint,
        "onnx": str(onnx_path.resolve()),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }

    def fill(tmp: Path) -> None:
        (tmp / ENGINE_FILE).write_bytes(serialized)
        (tmp / ENGINE_CONFIG).write_text(json.dumps(engine_config, indent=2) + "\n")
        for f in tokenizer_files(onnx_path.parent):
            if f.name not in ("model.onnx", "model.onnx.data", "graph_config.json"):
                shutil.copyfile(f, tmp / f.name)

    write_atomically(Path(out_dir), force, fill)
    return engine_config


def _trt_version() -> str:
    import tensorrt as trt

    return trt.__version__


# -- execution (tests and tools) ------------------------------------------------------------

class EngineRunner:
    """Runs a built engine on torch CUDA tensors: feeds by name, outputs allocated per call
    (aliased plugin outputs share their input's buffer)."""

    def __init__(self, serialized: bytes, plugin_ops: list[str]):
        import tensorrt as trt
        import torch

        if plugin_ops:
            load_plugins(plugin_ops)
        self.trt, self.torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    @classmethod
    def from_dir(cls, engine_dir: str | os.PathLike[str]) -> EngineRunner:
        d = Path(engine_dir)
        config = json.loads((d / ENGINE_CONFIG).read_text())
        runner = cls((d / ENGINE_FILE).read_bytes(), config["graph"]["plugin_ops"])
        runner.config = config
        return runner

    def __call__(self, feeds: dict[str, Any]) -> dict[str, Any]:
        trt, torch = self.trt, self.torch
        ctx = self.context
        keep = {}
        for n in self.names:
            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                t = feeds[n].contiguous().cuda()
                keep[n] = t
                ctx.set_input_shape(n, tuple(t.shape))
                ctx.set_tensor_address(n, t.data_ptr())
        outs = {}
        for n in self.names:
            if self.engine.get_tensor_mode(n) != trt.TensorIOMode.OUTPUT:
                continue
            alias = ctx.get_aliased_input_tensor(n) if hasattr(ctx, "get_aliased_input_tensor") \
                else None
            if alias:
                outs[n] = keep[alias]
            else:
                dt = _torch_dtype(torch, self.engine.get_tensor_dtype(n))
                outs[n] = torch.empty(tuple(ctx.get_tensor_shape(n)), dtype=dt, device="cuda")
            ctx.set_tensor_address(n, outs[n].data_ptr())
        stream = torch.cuda.current_stream()
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return outs


def _torch_dtype(torch: Any, dt: Any) -> Any:
    import tensorrt as trt

    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8,
            trt.int32: torch.int32, trt.int64: torch.int64, trt.uint8: torch.uint8,
            trt.bool: torch.bool}[dt]
