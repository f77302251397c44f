"""Timing helpers shared by the benchmarks.

Every measured function is replayed from a CUDA graph (so Python/ctypes launch overhead is
excluded for every contender alike), cycling through several copies of its inputs so that the
bytes it streams exceed the L2 cache (50 MB on H100) and the timing reflects HBM, not L2.
The figure is the median over replays of (graph time / calls in the graph), timed with CUDA events,
after WARM_S seconds of warm-up replays (LOWBIT_BENCH_WARM_S; clocks sit under the power cap for a
while after heavy work: measured 1575 MHz right after the attention decode sweep vs 1980 settled).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

import torch

L2_BYTES = 50 * 2**20
ROTATE_TARGET = 3 * L2_BYTES  # stream at least this many distinct bytes per cycle
WARM_S = float(os.environ.get("LOWBIT_BENCH_WARM_S", "0.03"))  # warm-up replays before timing (s)


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

    def replay_s() -> float:  # seconds of one timed replay
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) * 1e-3

    # warm-up: replay for >= WARM_S of GPU time so clocks settle after whatever ran before (the
    # first prefill point after the decode sweep: 30.8 us with 3 warm-up replays, 27.9 with 30 ms)
    for _ in range(min(500, max(2, int(WARM_S / max(replay_s(), 1e-6))))):
        graph.replay()
    times = [replay_s() / calls for _ in range(replays)]
    return statistics.median(times)


def time_pair(fa: list[Callable[[], object]], fb: list[Callable[[], object]],
              **kw) -> tuple[float, float]:
    """time_graph of fa and of fb, measured in the order fa, fb, fb, fa; each figure is the
    smaller of its two. Clocks drift after heavy work (H100: 1.5 GHz under its power cap right
    after the decode sweep, back to 1.98 GHz within ~1 s), and a contender always timed first got
    the slower clocks."""
    ta = time_graph(fa, **kw)
    tb = time_graph(fb, **kw)
    tb = min(tb, time_graph(fb, **kw))
    return min(ta, time_graph(fa, **kw)), tb


def fmt_us(t: float | None) -> str:
    return "   n/a" if t is None else f"{t * 1e6:7.1f}"


def fmt_ratio(r: float | None) -> str:
    return "  n/a" if r is None else f"{r:5.2f}"
