"""Shared setup of the binding/kernel tests: the `gpu` marker and the GPU skip fixture."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

try:
    import lowbit  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))


def pytest_configure(config):
    # Declared here too so these tests run the same with or without the project's pyproject.
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU and the built kernel library")


@pytest.fixture(scope="session")
def cuda_lib():
    """Skip unless a CUDA device and liblowbit_kernels.so are both present."""
    import torch

    from lowbit import library

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    try:
        return library.load()
    except library.LibraryNotFoundError as e:
        pytest.skip(f"kernel library not built: {e}")
