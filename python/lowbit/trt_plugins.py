"""Loader of the TensorRT plugin library ``liblowbit_plugins.so`` (IPluginV3, built by CMake where
TensorRT is installed; see plugins/README.md).

`load()` loads it once, with ``RTLD_GLOBAL`` (its creators register themselves with TensorRT's
plugin registry when it is loaded), from the first existing path of:
  1. the file named by the environment variable ``LOWBIT_PLUGINS_LIB``;
  2. ``<repo>/build/liblowbit_plugins.so`` (the default CMake build folder);
  3. ``liblowbit_plugins.so`` next to this package.
Where the ``tensorrt`` package imports, it is imported first (so the wheel's libnvinfer is the one
the plugin library binds to) and the registry is checked to hold every op of docs/engine-io.md.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

ENV_VAR = "LOWBIT_PLUGINS_LIB"
LIB_NAME = "liblowbit_plugins.so"
PLUGIN_NAMESPACE = "lowbit"
PLUGIN_VERSION = "1"
# The ops of docs/engine-io.md, in its order (tests/plugins/test_registry.py checks both agree).
PLUGIN_NAMES = (
    "LowbitQuantInt8",
    "LowbitAtomQuant",
    "LowbitW8A8Gemm",
    "LowbitW4A4Gemm",
    "LowbitKv4Attention",
)
BUILD_HINT = (
    "Build it on a machine with TensorRT: `cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "
    "[-DTensorRT_ROOT=/path/to/TensorRT] && cmake --build build -j` (plugins/README.md)"
)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


class PluginLibraryNotFoundError(RuntimeError):
    """The plugin library could not be found or loaded, or lacks a creator."""


def candidate_paths() -> list[Path]:
    """The paths `load()` tries, in order."""
    paths = []
    env = os.environ.get(ENV_VAR)
    if env:
        paths.append(Path(env))
    here = Path(__file__).resolve().parent
    paths.append(here.parent.parent / "build" / LIB_NAME)
    paths.append(here / LIB_NAME)
    return paths


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _open(paths: list[Path]) -> tuple[ctypes.CDLL, Path]:
    errors = []
    for path in paths:
        if not path.is_file():
            errors.append(f"{path} (absent)")
            continue
        try:
            return ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL), path
        except OSError as e:  # e.g. libnvinfer.so.N missing: TensorRT not installed
            errors.append(f"{path} ({e})")
    raise PluginLibraryNotFoundError(
        f"{LIB_NAME} not found or not loadable; tried: " + "; ".join(errors)
        + f". {BUILD_HINT}, or set {ENV_VAR} to its path."
    )


def load(paths: list[Path] | None = None, check_registry: bool = True) -> ctypes.CDLL:
    """Load (once) and return the plugin library.

    paths: where to look (default `candidate_paths()`). check_registry: where `tensorrt` imports,
    verify that its plugin registry now holds every op of `PLUGIN_NAMES` (raises
    PluginLibraryNotFoundError naming the missing ones).
    """
    global _lib
    with _lock:
        if paths is None and _lib is not None:
            lib = _lib
        else:
            if tensorrt_available():
                import tensorrt  # noqa: F401  (loads libnvinfer before the plugins bind to it)
            lib, _ = _open(candidate_paths() if paths is None else list(paths))
            if paths is None:
                _lib = lib
    if check_registry and tensorrt_available():
        creators()
    return lib


def creators() -> dict[str, Any]:
    """{op name: TensorRT creator} for every op, from the global plugin registry (needs tensorrt
    and a loaded library). Raises PluginLibraryNotFoundError naming what is missing."""
    import tensorrt as trt

    registry = trt.get_plugin_registry()
    found, missing = {}, []
    for name in PLUGIN_NAMES:
        creator = registry.get_creator(name, PLUGIN_VERSION, PLUGIN_NAMESPACE)
        if creator is None:
            missing.append(name)
        else:
            found[name] = creator
    if missing:
        present = sorted(
            f"{c.plugin_namespace}::{c.name}" for c in registry.all_creators
            if getattr(c, "plugin_namespace", "") == PLUGIN_NAMESPACE
        )
        raise PluginLibraryNotFoundError(
            f"TensorRT's plugin registry lacks {missing} (namespace {PLUGIN_NAMESPACE!r}, version "
            f"{PLUGIN_VERSION!r}); lowbit creators present: {present or 'none'}. Was "
            f"{LIB_NAME} built with -DLOWBIT_PLUGINS_STATIC_REGISTRATION=OFF? Then load it with "
            "trt.get_plugin_registry().load_library(path) instead."
        )
    return found
