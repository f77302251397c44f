"""Loader of the native kernel library ``liblowbit_kernels.so`` (C ABI, built by CMake).

The library is loaded once, at the first call of `load()` (never at import), from the first
existing path of:
  1. the file named by the environment variable ``LOWBIT_KERNELS_LIB``;
  2. ``<repo>/build/liblowbit_kernels.so`` (the default CMake build folder);
  3. ``liblowbit_kernels.so`` next to this package.
Build it with: ``cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2``.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

ENV_VAR = "LOWBIT_KERNELS_LIB"
LIB_NAME = "liblowbit_kernels.so"

# Status codes of plugins/common/status.h.
OK = 0

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None

_P = ctypes.c_void_p
_I = ctypes.c_int
_F = ctypes.c_float
GEMM_CONST_WEIGHTS = 1  # LOWBIT_GEMM_CONST_WEIGHTS (w4a4GemmKernel.h): lowbit_w4a4_gemm's flags

# name -> argtypes (all functions return int status, except the string getters)
_SIGNATURES: dict[str, list] = {
    # x4, xs4, x8, xs8, w4, ws4t, w8, ws8, y, M, N, Kn, Ko, group_size, config, flags,
    # workspace, workspace_bytes, stream
    "lowbit_w4a4_gemm": [_P] * 9 + [_I] * 7 + [_P, ctypes.c_size_t, _P],
    # M, N, Kn, Ko, group_size -> size_t (restype set in _configure)
    "lowbit_w4a4_gemm_workspace_size": [_I] * 5,
    # xq, xs, xs_per_token, wq, ws, y, M, N, K, config, stream
    "lowbit_w8a8_gemm": [_P, _P, _I, _P, _P, _P, _I, _I, _I, _I, _P],
    # x, dtype, gamma, perm, eps, M, K, Ko, group_size, clip, x4, xs4, x8, xs8, stream
    "lowbit_atom_quantize": [_P, _I, _P, _P, _F, _I, _I, _I, _I, _F, _P, _P, _P, _P, _P],
    # x, dtype, gamma, eps, static_scale, M, K, q, xs, stream
    "lowbit_rmsnorm_quantize_int8": [_P, _I, _P, _F, _P, _I, _I, _P, _P, _P],
    # qkv, positions, seq_offsets, T, B, block_table, inv_freq, layout*, codes, params, q_out,
    # stream (plugins/kvAttention/kvAttentionKernel.h)
    "lowbit_kv4_rope_append": [_P, _P, _P, _I, _I, _P, _P, _P, _P, _P, _P, _P],
    # T, B, layout* -> size_t (restype set in _configure)
    "lowbit_kv4_attention_workspace": [_I, _I, _P],
    # q, positions, seq_offsets, T, B, block_table, layout*, codes, params, out, workspace,
    # workspace_bytes, stream
    "lowbit_kv4_attention": [_P, _P, _P, _I, _I, _P, _P, _P, _P, _P, _P, ctypes.c_size_t, _P],
    # qkv, positions, seq_offsets, T, B, block_table, inv_freq, layout*, codes, params, q_buf,
    # out, workspace, workspace_bytes, stream
    "lowbit_kv4_rope_append_attention": [_P, _P, _P, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P,
                                         ctypes.c_size_t, _P],
    # src, bytes, sink, sink_len, ctas_per_sm, unroll, stream (plugins/common/streamRead.h)
    "lowbit_stream_read": [_P, ctypes.c_int64, _P, _I, _I, _I, _P],
}
# functions whose return type is not the int status
_RESTYPES = {"lowbit_kv4_attention_workspace": ctypes.c_size_t,
             "lowbit_w4a4_gemm_workspace_size": ctypes.c_size_t}


class Kv4Layout(ctypes.Structure):
    """lowbitKv4Layout of plugins/kvAttention/kvAttentionKernel.h (passed by pointer)."""

    _fields_ = [(n, ctypes.c_int) for n in (
        "num_heads", "num_kv_heads", "head_size", "tokens_per_block", "k_group_size",
        "v_group_size", "sliding_window", "num_blocks", "max_blocks_per_seq")]


class LibraryNotFoundError(RuntimeError):
    """The native kernel library could not be found or loaded."""


def candidate_paths() -> list[Path]:
    """The paths tried by `load()`, in order."""
    paths = []
    env = os.environ.get(ENV_VAR)
    if env:
        paths.append(Path(env))
    here = Path(__file__).resolve().parent
    paths.append(here.parent.parent / "build" / LIB_NAME)
    paths.append(here / LIB_NAME)
    return paths


def _configure(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = _RESTYPES.get(name, ctypes.c_int)
    for name in ("lowbit_status_string", "lowbit_last_cuda_error"):
        getattr(lib, name).restype = ctypes.c_char_p
    lib.lowbit_status_string.argtypes = [ctypes.c_int]
    lib.lowbit_last_cuda_error.argtypes = []
    return lib


def load() -> ctypes.CDLL:
    """Load (once) and return the kernel library; raises LibraryNotFoundError naming the paths."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = candidate_paths()
        errors = []
        for path in tried:
            if not path.is_file():
                errors.append(f"{path} (absent)")
                continue
            try:
                _lib = _configure(ctypes.CDLL(str(path)))
                return _lib
            except (OSError, AttributeError) as e:
                errors.append(f"{path} ({e})")
        raise LibraryNotFoundError(
            f"{LIB_NAME} not found or not loadable; tried: " + "; ".join(errors)
            + f". Build it with `cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && "
            f"cmake --build build -j2`, or set {ENV_VAR} to its path."
        )


def is_available() -> bool:
    """True when the library can be loaded (loads it)."""
    try:
        load()
        return True
    except LibraryNotFoundError:
        return False


def check(status: int, what: str) -> None:
    """Raise RuntimeError for a non-OK launcher status."""
    if status == OK:
        return
    lib = load()
    msg = lib.lowbit_status_string(status).decode()
    if msg == "CUDA runtime error":
        msg += ": " + lib.lowbit_last_cuda_error().decode()
    raise RuntimeError(f"{what} failed with status {status} ({msg})")
