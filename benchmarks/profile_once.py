"""Launch lowbit kernels once on representative shapes (for `ncu`; no timing here).

Run: PYTHONPATH=python ncu --clock-control none -k regex:'skinny|igemm|Quantize' \
         python benchmarks/profile_once.py [which ...]
which: decode prefill quant w8a8 append kvdecode (append: rope_append of 4096 tokens, Llama-2-7B
heads; kvdecode: INT4 decode attention, batch 64 x context 8192, Llama-3-8B heads; kvdecode=BxCTX
another batch and context).
prefill=CONFIG forces a W4A4 configuration (ops.CONFIGS), e.g. prefill=wgmma_alt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lowbit import ops, packing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import atom_perm  # noqa: E402


def main(which: list[str]) -> None:
    torch.manual_seed(0)
    k, n, ko, gs = 4096, 11008, 128, 128
    kn = k - ko

    def i8(shape, lo=-127, hi=127):
        return torch.randint(lo, hi + 1, shape, device="cuda", dtype=torch.int8)

    def sc(shape):
        return (torch.rand(shape, device="cuda") * 0.02 + 1e-3).half()

    w = (i8((n, kn // 2), -128, 127), packing.pack_w4a4_scales(sc((n, kn // gs))), i8((n, ko)),
         sc((n,)))
    gamma = (torch.rand(k, device="cuda") + 0.5).half()
    perm = atom_perm(k, ko)
    x = torch.randn(8192, k, device="cuda", dtype=torch.float16)
    if "decode" in which:
        a = ops.atom_reorder_quantize(x[:1], perm, ko, gs, 0.9)
        ops.w4a4_gemm(*a, *w, gs)
    for item in which:
        if item == "prefill" or item.startswith("prefill="):
            a = ops.atom_reorder_quantize(x[:4096], perm, ko, gs, 0.9)
            ops.w4a4_gemm(*a, *w, gs, config=item.partition("=")[2] or "auto")
    if "quant" in which:
        ops.atom_rmsnorm_quantize(x, gamma, perm, 1e-5, ko, gs, 0.9)
        ops.rmsnorm_quantize_int8(x, gamma, 1e-5)
    if "w8a8" in which:
        wq = i8((n, k))
        ws = torch.rand(n, device="cuda")
        xq, xs = ops.rmsnorm_quantize_int8(x[:1], gamma, 1e-5)
        ops.w8a8_gemm(xq, xs, wq, ws)
    if any(w == "append" or w.startswith("kvdecode") for w in which):
        _kv(which)
    torch.cuda.synchronize()


def _kv(which: list[str]) -> None:
    import bench_attention as ba  # benchmarks/ is on sys.path when this file is run

    from lowbit import kvcache as kv

    if "append" in which:
        lay, codes, params, table, qkv, pos, offs, inv = ba.chunk_inputs("llama2-7b", 4096)
        ops.kv4_rope_append(qkv, pos, offs, table, inv, codes, params, 0, lay)
    for item in which:
        if item != "kvdecode" and not item.startswith("kvdecode="):
            continue
        b, ctx = (int(v) for v in (item.partition("=")[2] or "64x8192").split("x"))
        lay = kv.KvLayout(32, 8, ba.D, ba.GK, ba.GV)
        codes, params, table = ba.random_pool(lay, b, ctx)
        q = torch.randn(b, 32, ba.D, device="cuda").half()
        pos = torch.full((b,), ctx - 1, dtype=torch.int32, device="cuda")
        offs = torch.arange(b + 1, dtype=torch.int32, device="cuda")
        ops.kv4_attention(q, pos, offs, table, codes, params, 0, lay)


if __name__ == "__main__":
    main(sys.argv[1:] or ["decode", "prefill", "quant", "w8a8"])
