"""Decode GEMM kernels (W4A4 M <= 64, W8A8 M <= 32) side by side: every forced decode
configuration vs cuBLAS fp16 (and torch._int_mm, which needs M > 16).

Quick iteration benchmark for the memory-bound skinny/gemv kernels (the full table is
bench_gemm.py). Same timing method (CUDA-graph replays, inputs rotated beyond L2) and operands
(Atom K_o = 128, G = 128; Llama-2-7B shapes). Ratios are speed-ups over cuBLAS fp16.

Run: PYTHONPATH=python python benchmarks/bench_decode.py [--configs skinny,gemv] [--ms 1,16]
     ncu -k regex:'gemv|skinny' python benchmarks/bench_decode.py --profile   (one launch each)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gemm import GS, KO, SHAPES, _i8, _sc  # noqa: E402
from common import atom_perm, copies_for, time_graph  # noqa: E402

from lowbit import ops, packing  # noqa: E402


def bench(m: int, k: int, n: int, configs: list[str]) -> dict:
    kn = k - KO
    r: dict = {"M": m, "K": k, "N": n}
    x16 = torch.randn(m, k, device="cuda", dtype=torch.float16)
    ws16 = [torch.randn(k, n, device="cuda", dtype=torch.float16)
            for _ in range(copies_for(k * n * 2))]
    r["fp16"] = time_graph([lambda w=w: torch.matmul(x16, w) for w in ws16])
    del ws16
    if m > 16:  # torch._int_mm needs M > 16
        xi = _i8((m, k))
        wi = [_i8((n, k)).t() for _ in range(copies_for(k * n))]
        r["int_mm"] = time_graph([lambda w=w: torch._int_mm(xi, w) for w in wi])
        del wi
    gamma = (torch.rand(k, device="cuda") + 0.5).half()
    perm = atom_perm(k, KO)
    a = ops.atom_rmsnorm_quantize(x16, gamma, perm, 1e-5, KO, GS, 0.9)
    wbytes4 = n * kn // 2 + n * (kn // GS) * 2 + n * KO + n * 2
    w4s = [(_i8((n, kn // 2), -128, 127), packing.pack_w4a4_scales(_sc((n, kn // GS))),
            _i8((n, KO)), _sc((n,))) for _ in range(copies_for(wbytes4))]
    y = torch.empty(m, n, device="cuda", dtype=torch.float16)
    for c in configs:
        r["w4a4_" + c] = time_graph(
            [lambda w=w, c=c: ops.w4a4_gemm(*a, *w, GS, out=y, config=c) for w in w4s])
    del w4s
    xq, xs = ops.rmsnorm_quantize_int8(x16, gamma, 1e-5)
    w8s = [(_i8((n, k)), torch.rand(n, device="cuda") * 0.01) for _ in range(copies_for(n * k))]
    for c in configs:
        if m > 32 and c.startswith(("gemv", "skinny")):
            continue  # W8A8 gemv serves M <= 32
        r["w8a8_" + c] = time_graph(
            [lambda w=w, c=c: ops.w8a8_gemm(xq, xs, w[0], w[1], out=y, config=c) for w in w8s])
    del w8s
    r["w4a4_bytes"] = wbytes4
    r["w8a8_bytes"] = n * k + n * 4
    torch.cuda.empty_cache()
    return r


def profile(m: int, k: int, n: int, configs: list[str]) -> None:
    """One launch of each configuration (W4A4 and W8A8), no timing: for ncu."""
    kn = k - KO
    a = (_i8((m, kn // 2), -128, 127), _sc((m, kn // GS)), _i8((m, KO)), _sc((m,)))
    w = (_i8((n, kn // 2), -128, 127), packing.pack_w4a4_scales(_sc((n, kn // GS))),
         _i8((n, KO)), _sc((n,)))
    xq, xs = _i8((m, k)), torch.rand(m, device="cuda") * 0.01
    wq, ws = _i8((n, k)), torch.rand(n, device="cuda") * 0.01
    for c in configs:
        ops.w4a4_gemm(*a, *w, GS, config=c)
        ops.w8a8_gemm(xq, xs, wq, ws, config=c)
    torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", default="skinny,gemv,gemv_k16,gemv_k12")
    p.add_argument("--ms", default="1,16")
    p.add_argument("--profile", action="store_true",
                   help="launch each config once on 4096x11008 (for ncu) instead of timing")
    args = p.parse_args()
    configs = args.configs.split(",")
    if args.profile:
        for m in map(int, args.ms.split(",")):
            profile(m, 4096, 11008, configs)
        return
    rows = [bench(m, k, n, configs) for k, n in SHAPES for m in map(int, args.ms.split(","))]
    print(f"device: {torch.cuda.get_device_name()}")
    print("us (speed-up vs cuBLAS fp16) [weight TB/s] {speed-up vs torch._int_mm, W8A8, M > 16}")
    for r in rows:
        for kind in ("w4a4", "w8a8"):
            cells = []
            for c in configs:
                if kind + "_" + c not in r:
                    continue
                t = r[kind + "_" + c]
                cell = (f"{c}={t * 1e6:6.1f} ({r['fp16'] / t:4.2f}x)"
                        f"[{r[kind + '_bytes'] / t / 1e12:4.2f}]")
                if kind == "w8a8" and "int_mm" in r:
                    cell += f"{{{r['int_mm'] / t:4.2f}}}"
                cells.append(cell)
            ref = f" int_mm={r['int_mm'] * 1e6:5.1f}" if "int_mm" in r else ""
            head = f"{kind} M={r['M']:>2} {r['K']:>5}x{r['N']:<5} fp16={r['fp16'] * 1e6:5.1f}"
            print(f"{head}{ref} | " + " ".join(cells))


if __name__ == "__main__":
    main()
