"""Fused activation quantizers vs a plain device copy of the same number of bytes.

For each kernel the bytes it must move are counted (x read once, outputs written once; gamma and
perm are K-sized and L2-resident, not counted) and compared with torch's copy of a uint8 buffer
of half that size (a copy reads and writes each byte: same total traffic). Times: median of
CUDA-graph replays with inputs rotated beyond L2. ratio = t_kernel / t_copy (target <= 1.5).

Run: PYTHONPATH=python python benchmarks/bench_quantize.py [--out DIR] [--ms M ...] [--ks K ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import atom_perm, copies_for, fmt_us, time_graph  # noqa: E402

from lowbit import ops  # noqa: E402

MS = (1, 16, 256, 1024, 2048, 4096, 8192)
KS = (4096, 5120, 8192, 11008)  # hidden sizes of Llama 7B / 13B / 70B, and the 7B MLP width
KO, GS = 128, 128


def bench(m: int, k: int) -> list[dict]:
    rows = []
    nc = copies_for(m * k * 2)
    xs = [torch.randn(m, k, device="cuda", dtype=torch.float16) for _ in range(nc)]
    gamma = (torch.rand(k, device="cuda") + 0.5).half()
    perm = atom_perm(k, KO)
    kn = k - KO
    atom_out = m * (kn // 2 + (kn // GS) * 2 + KO + 2)
    cases = {
        "atom_rmsnorm_quantize": (
            lambda x: ops.atom_rmsnorm_quantize(x, gamma, perm, 1e-5, KO, GS, 0.9), atom_out),
        "atom_reorder_quantize": (
            lambda x: ops.atom_reorder_quantize(x, perm, KO, GS, 0.9), atom_out),
        "rmsnorm_quantize_int8": (
            lambda x: ops.rmsnorm_quantize_int8(x, gamma, 1e-5), m * (k + 4)),
    }
    for name, (fn, out_bytes) in cases.items():
        moved = m * k * 2 + out_bytes
        t = time_graph([lambda x=x, fn=fn: fn(x) for x in xs])
        bufs = [torch.empty(moved // 2, dtype=torch.uint8, device="cuda") for _ in range(2 * nc)]
        tc = time_graph([lambda i=i, b=bufs: b[2 * i + 1].copy_(b[2 * i]) for i in range(nc)])
        rows.append({"kernel": name, "M": m, "K": k, "bytes": moved, "t": t, "t_copy": tc,
                     "tbs": moved / t / 1e12, "copy_tbs": moved / tc / 1e12, "ratio": t / tc})
        del bufs
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'kernel':<22} {'M':>5} {'K':>5} | {'us':>7} {'TB/s':>5} | {'copy us':>7} "
            f"{'TB/s':>5} | {'ratio':>5}")
    lines = ["Quantize kernels vs a copy of the same bytes (ratio = t / t_copy, target <= 1.5)",
             head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['kernel']:<22} {r['M']:>5} {r['K']:>5} | {fmt_us(r['t'])} "
                     f"{r['tbs']:5.2f} | {fmt_us(r['t_copy'])} {r['copy_tbs']:5.2f} | "
                     f"{r['ratio']:5.2f}")
    return "\n".join(lines)


def run(out: Path, ms=MS, ks=KS) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rows = []
    for k in ks:
        for m in ms:
            rows += bench(m, k)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    (out / "bench_quantize.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--ms", type=int, nargs="+", default=list(MS), help="token counts M")
    p.add_argument("--ks", type=int, nargs="+", default=list(KS), help="hidden sizes K")
    args = p.parse_args()
    print(table(run(args.out, tuple(args.ms), tuple(args.ks))))


if __name__ == "__main__":
    main()
