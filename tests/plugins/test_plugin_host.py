"""Host-side test of the plugin glue (no TensorRT library, no GPU): tests/plugins/host_harness.cpp
is compiled with the plugin sources against TensorRT's headers, with stub launchers and a stub
logger, and run. Needs the headers: set TensorRT_ROOT (or TENSORRT_ROOT) to a folder with
include/NvInfer.h, e.g. the one ../shared/tools/trt-headers extracts; skipped with a reason
otherwise. It checks field parsing and errors, serialization round trips, dtype negotiation,
configure-time shape errors, launcher status -> enqueue result, aliasing, the attention workspace
and the layer slab offset."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SOURCES = [
    "common/pluginUtils.cpp", "quantize/quantInt8Plugin.cpp", "quantize/atomQuantPlugin.cpp",
    "w8a8Gemm/w8a8GemmPlugin.cpp", "w4a4Gemm/w4a4GemmPlugin.cpp",
    "kvAttention/kvAttentionPlugin.cpp", "registry.cpp",
]


def _trt_include() -> Path | None:
    for var in ("TensorRT_ROOT", "TENSORRT_ROOT"):
        root = os.environ.get(var)
        if root and (Path(root) / "include" / "NvInfer.h").is_file():
            return Path(root) / "include"
    return None


def _cuda_include() -> Path | None:
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_runtime_api.h").is_file():
            return Path(root) / "include"
    return None


def test_plugin_glue_on_host(tmp_path):
    trt_inc, cuda_inc, cxx = _trt_include(), _cuda_include(), shutil.which("g++")
    if trt_inc is None:
        pytest.skip("needs TensorRT headers: set TensorRT_ROOT to a folder with include/NvInfer.h "
                    "(../shared/tools/trt-headers extracts them)")
    if cuda_inc is None or cxx is None:
        pytest.skip("needs g++ and the CUDA headers (cuda_runtime_api.h; set CUDA_HOME)")
    exe = tmp_path / "host_harness"
    cmd = [cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-O1",
           "-DLOWBIT_PLUGINS_STATIC_REGISTRATION=0", f"-I{ROOT / 'plugins'}",
           "-isystem", str(trt_inc), "-isystem", str(cuda_inc),
           str(ROOT / "tests" / "plugins" / "host_harness.cpp"),
           *[str(ROOT / "plugins" / s) for s in PLUGIN_SOURCES], "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"compile failed:\n{build.stderr[-4000:]}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("PASS"), run.stdout + run.stderr
