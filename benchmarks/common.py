"""Timing helpers shared by the benchmarks.

Every measured function is replayed from a CUDA graph (so Python/ctypes launch overhead is
excluded for every contender alike), cycling through several copies of its inputs so that the
bytes it streams exceed the L2 cache (50 MB on H100) and the timing reflects HBM, not L2.
The figure is the median over replays of (graph time / calls in the graph), timed with CUDA events.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

L2_BYTES = 50 * 2**20
ROTATE_TARGET = 3 * L2_BYTES  # stream at least this many distinct bytes per cycle


def atom_perm(k: int, n_outliers: int) -> torch.Tensor:
    """An Atom channel order as the converter builds it (lowbit.packing.outliers_last_permutation:
    normal channels keep their order, n_outliers channels of random importance go last), on CUDA.
    The quantize kernel's gather is conflict-free for such orders; a fully random perm is its
    worst case (about 3.5-way shared-memory bank conflicts) and is not what a checkpoint holds."""
    from lowbit import packing

    g = torch.Generator().manual_seed(k)
    return packing.outliers_last_permutation(torch.rand(k, generator=g), n_outliers).cuda()


def copies_for(bytes_per_call: int, cap: int = 64) -> int:
    """How many input sets to rotate so that one cycle touches >= ROTATE_TARGET bytes."""
    return max(1, min(cap, -(-ROTATE_TARGET // max(1, bytes_per_call))))


def time_graph(fns: list[Callable[[], object]], calls: int = 0, replays: int = 15) -> float:
    """Median seconds per call of fns (cycled) replayed from one CUDA graph."""
    calls = calls or max(len(fns), 20)
    calls = -(-calls // len(fns)) * len(fns)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:  # warm-up: module load, cuBLAS handles, smem attributes
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fns[i % len(fns)]()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(replays):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e-3 / calls)
    del graph
    return statistics.median(times)


def fmt_us(t: float | None) -> str:
    return "   n/a" if t is None else f"{t * 1e6:7.1f}"


def fmt_ratio(r: float | None) -> str:
    return "  n/a" if r is None else f"{r:5.2f}"
