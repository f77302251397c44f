"""INT4 paged KV-cache attention vs torch SDPA (flash backend) over a contiguous fp16 cache.

decode : one query token per sequence, batch x context, Llama-2-7B (32/32 heads) and Llama-3-8B
         (32/8) head shapes, d = 128, groups gk = 32, gv = 128 (P = 10). TB/s over the bytes the
         kernel must read: codes (d bytes per token and KV head for K + V) + params (2P bytes)
         + q + out. SDPA reads K/V fp16 (4d bytes per token and KV head; GQA through
         enable_gqa, no copies). Configurations whose fp16 cache exceeds 16 GB are skipped.
prefill: one sequence, a chunk of T new tokens from position 0: ours = rope_append + attention
         (writing the quantized cache included); SDPA = causal attention on fp16 q, k, v.
append : rope_append alone vs a copy of the same number of bytes (qkv read, q written, codes and
         params written).
Times: median of CUDA-graph replays (benchmarks/common.py); each contender of a ratio timed twice,
in the order ours, theirs, theirs, ours, the smaller figure kept (common.time_pair: clocks drift
after the decode sweep). ratio = t_sdpa / t_ours (speed-up).

Run: PYTHONPATH=python python benchmarks/bench_attention.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copies_for, fmt_us, time_graph, time_pair  # noqa: E402

from lowbit import kvcache as kv  # noqa: E402
from lowbit import ops  # noqa: E402

HEADS = {"llama2-7b": (32, 32), "llama3-8b": (32, 8)}
D, GK, GV = 128, 32, 128
BATCHES = (1, 16, 64, 256)
CONTEXTS = (512, 2048, 4096, 8192, 32768)  # the grid plus 4096 (its target's low end)
CHUNKS = (512, 1024, 2048, 4096)
FP16_CAP = 16e9


def _sdpa(q, k, v, causal=False):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                              enable_gqa=k.shape[1] != q.shape[1])


def random_pool(lay: kv.KvLayout, b: int, ctx: int):
    """A pool holding b sequences of ctx tokens in shuffled blocks (random codes, sane params)."""
    tpb = lay.tokens_per_block
    nblk = -(-ctx // tpb)
    nb = b * nblk
    codes = torch.randint(0, 256, (1, nb, 2, lay.num_kv_heads, tpb, D // 2), dtype=torch.uint8,
                          device="cuda")
    params = (torch.rand(1, nb, lay.num_kv_heads, tpb, lay.params_per_token, device="cuda")
              * 0.1 - 0.05).half()
    table = torch.randperm(nb, device="cuda").to(torch.int32).reshape(b, nblk)
    return codes, params, table


def bench_decode(name: str, b: int, ctx: int) -> dict | None:
    nh, nkv = HEADS[name]
    if b * ctx * nkv * 4 * D > FP16_CAP:
        return None
    lay = kv.KvLayout(nh, nkv, D, GK, GV)
    codes, params, table = random_pool(lay, b, ctx)
    q = torch.randn(b, nh, D, device="cuda").half()
    pos = torch.full((b,), ctx - 1, dtype=torch.int32, device="cuda")
    offs = torch.arange(b + 1, dtype=torch.int32, device="cuda")
    out = torch.empty(b, nh * D, dtype=torch.float16, device="cuda")
    need = ops.kv4_attention_workspace(b, b, lay, codes.shape[1], table.shape[1])
    ws = torch.empty(max(need, 16), dtype=torch.uint8, device="cuda")
    moved = b * ctx * nkv * (D + 2 * lay.params_per_token) + 2 * b * nh * D * 2
    k = torch.randn(b, nkv, ctx, D, device="cuda", dtype=torch.float16)
    v = torch.randn(b, nkv, ctx, D, device="cuda", dtype=torch.float16)
    qs = q.reshape(b, nh, 1, D)
    t, ts = time_pair([lambda: ops.kv4_attention(q, pos, offs, table, codes, params, 0, lay,
                                                 out=out, workspace=ws)],
                      [lambda: _sdpa(qs, k, v)])
    return {"kind": "decode", "model": name, "batch": b, "context": ctx, "t": t, "t_sdpa": ts,
            "bytes": moved, "tbs": moved / t / 1e12,
            "sdpa_tbs": (b * ctx * nkv * 4 * D) / ts / 1e12, "speedup": ts / t}


def chunk_inputs(name: str, t_new: int):
    """One sequence's chunk of t_new tokens from position 0 into an empty pool: (layout, codes,
    params, block_table, qkv, positions, seq_offsets, inv_freq)."""
    nh, nkv = HEADS[name]
    lay = kv.KvLayout(nh, nkv, D, GK, GV)
    nblk = -(-t_new // lay.tokens_per_block)
    codes, params = kv.new_pool(lay, 1, nblk, device="cuda")
    table = torch.arange(nblk, dtype=torch.int32, device="cuda").reshape(1, nblk)
    qkv = torch.randn(t_new, lay.qkv_width, device="cuda").half()
    pos = torch.arange(t_new, dtype=torch.int32, device="cuda")
    offs = torch.tensor([0, t_new], dtype=torch.int32, device="cuda")
    inv = (1.0 / 10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D)).cuda()
    return lay, codes, params, table, qkv, pos, offs, inv


def bench_prefill(name: str, t_new: int) -> dict:
    nh, nkv = HEADS[name]
    lay, codes, params, table, qkv, pos, offs, inv = chunk_inputs(name, t_new)
    qo = torch.empty(t_new, nh, D, dtype=torch.float16, device="cuda")
    out = torch.empty(t_new, nh * D, dtype=torch.float16, device="cuda")

    def ours():  # the one call the plugin makes: rope_append, then attention
        ops.kv4_rope_append_attention(qkv, pos, offs, table, inv, codes, params, 0, lay,
                                      q_out=qo, out=out)

    ta = time_graph([lambda: ops.kv4_rope_append(qkv, pos, offs, table, inv, codes, params, 0,
                                                 lay, out=qo)])
    q = torch.randn(1, nh, t_new, D, device="cuda", dtype=torch.float16)
    k = torch.randn(1, nkv, t_new, D, device="cuda", dtype=torch.float16)
    v = torch.randn(1, nkv, t_new, D, device="cuda", dtype=torch.float16)
    t, ts = time_pair([ours], [lambda: _sdpa(q, k, v, causal=True)])
    flops = 4 * nh * D * t_new * (t_new + 1) / 2
    return {"kind": "prefill", "model": name, "tokens": t_new, "t": t, "t_append": ta,
            "t_sdpa": ts, "tflops": flops / t / 1e12, "sdpa_tflops": flops / ts / 1e12,
            "ratio_vs_sdpa": t / ts}


def bench_append(name: str, t_new: int) -> dict:
    nh, nkv = HEADS[name]
    lay, codes, params, table, qkv, pos, offs, inv = chunk_inputs(name, t_new)
    moved = t_new * (lay.qkv_width * 2 + nh * D * 2 + nkv * (D + 2 * lay.params_per_token))
    nc = copies_for(moved)
    sets = [(qkv, codes, params)]
    for _ in range(nc - 1):  # more input sets than fit in L2, taken in turn
        _, c, p, _, x, _, _, _ = chunk_inputs(name, t_new)
        sets.append((x, c, p))
    sets = [(x, c, p, torch.empty(t_new, nh, D, dtype=torch.float16, device="cuda"))
            for x, c, p in sets]
    bufs = [torch.empty(moved // 2, dtype=torch.uint8, device="cuda") for _ in range(2 * nc)]
    t, tc = time_pair([lambda s=s: ops.kv4_rope_append(s[0], pos, offs, table, inv, s[1], s[2],
                                                       0, lay, out=s[3]) for s in sets],
                      [lambda i=i: bufs[2 * i + 1].copy_(bufs[2 * i]) for i in range(nc)])
    return {"kind": "append", "model": name, "tokens": t_new, "t": t, "t_copy": tc,
            "bytes": moved, "tbs": moved / t / 1e12, "ratio_vs_copy": t / tc}


def tables(rows: list[dict]) -> str:
    out = ["Decode attention, INT4 paged cache vs SDPA flash fp16 (speed-up = t_sdpa / t; "
           "targets: >= 3x and >= 2.1 TB/s at batch 64, ctx >= 4096)",
           f"{'model':<10} {'batch':>5} {'ctx':>6} | {'us':>8} {'TB/s':>5} | {'sdpa us':>8} "
           f"{'TB/s':>5} | {'speed-up':>8}"]
    for r in rows:
        if r["kind"] == "decode":
            out.append(f"{r['model']:<10} {r['batch']:>5} {r['context']:>6} | "
                       f"{fmt_us(r['t']):>8} {r['tbs']:5.2f} | {fmt_us(r['t_sdpa']):>8} "
                       f"{r['sdpa_tbs']:5.2f} | {r['speedup']:8.2f}")
    out += ["", "Prefill (rope_append + attention) vs SDPA flash causal fp16 (target t/t_sdpa "
            "<= 1.3)",
            f"{'model':<10} {'T':>5} | {'us':>8} {'TFLOP/s':>7} | {'sdpa us':>8} {'TFLOP/s':>7} | "
            f"{'t/t_sdpa':>8}"]
    for r in rows:
        if r["kind"] == "prefill":
            out.append(f"{r['model']:<10} {r['tokens']:>5} | {fmt_us(r['t']):>8} "
                       f"{r['tflops']:7.1f} | {fmt_us(r['t_sdpa']):>8} {r['sdpa_tflops']:7.1f} | "
                       f"{r['ratio_vs_sdpa']:8.2f}")
    out += ["", "RoPE + quantize-append vs a copy of the same bytes (target t/t_copy <= 1.5)",
            f"{'model':<10} {'T':>5} | {'us':>8} {'TB/s':>5} | {'copy us':>8} | {'ratio':>5}"]
    for r in rows:
        if r["kind"] == "append":
            out.append(f"{r['model']:<10} {r['tokens']:>5} | {fmt_us(r['t']):>8} "
                       f"{r['tbs']:5.2f} | {fmt_us(r['t_copy']):>8} | {r['ratio_vs_copy']:5.2f}")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, model in zip(axes, HEADS):
        for b in BATCHES:
            pts = [r for r in rows if r["kind"] == "decode" and r["model"] == model
                   and r["batch"] == b]
            if pts:
                ax.plot([r["context"] for r in pts], [r["speedup"] for r in pts], "o-",
                        label=f"batch {b}")
        ax.axhline(3.0, color="gray", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context")
        ax.set_ylabel("speed-up vs SDPA fp16")
        ax.set_title(f"INT4 KV decode, {model}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(out: Path, quick: bool = False) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rows = []
    batches, contexts = ((1, 64), (512, 4096)) if quick else (BATCHES, CONTEXTS)
    for name in HEADS:
        for b in batches:
            for ctx in contexts:
                r = bench_decode(name, b, ctx)
                if r:
                    rows.append(r)
                    torch.cuda.empty_cache()
    for name in HEADS:
        for t in (CHUNKS[:1] + CHUNKS[-1:]) if quick else CHUNKS:
            rows.append(bench_prefill(name, t))
        for t in (64, 4096):
            rows.append(bench_append(name, t))
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    (out / "bench_attention.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plot(rows, out / "bench_attention.png")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--quick", action="store_true", help="a few points only")
    args = p.parse_args()
    print(tables(run(args.out, args.quick)))


if __name__ == "__main__":
    main()
