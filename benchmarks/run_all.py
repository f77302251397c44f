"""Run every lowbit benchmark on the current GPU; write JSON + plot under --out; print tables last.

Run: PYTHONPATH=python python benchmarks/run_all.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention  # noqa: E402
import bench_gemm  # noqa: E402
import bench_quantize  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--quick", action="store_true", help="fewer M values")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("run_all.py needs a CUDA GPU")
    q_rows = bench_quantize.run(args.out, ms=(1, 4096) if args.quick else bench_quantize.MS)
    g_rows = bench_gemm.run(args.out, ms=(1, 16, 4096) if args.quick else bench_gemm.MS)
    print(bench_attention.tables(bench_attention.run(args.out, quick=args.quick)))  # issue 5
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(bench_quantize.table(q_rows))
    print()
    print(bench_gemm.table(g_rows))


if __name__ == "__main__":
    main()
