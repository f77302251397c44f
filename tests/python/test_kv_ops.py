"""INT4 KV-cache kernels (lowbit.ops.kv4_*) vs the torch reference lowbit.kvcache on the GPU.

Outputs and untouched pool slots are poisoned first. Tolerances: rope_append is exact up to
last-ulp differences of cos/sin (a rare code may move by one step); attention dequantizes K/V to
fp16 and rounds P to fp16 before the PV product (plugins/kvAttention/README.md), so it is
compared with a relative error bound: max |got - ref| <= 1e-2 * max |ref| (scores are made
peaky with q ~ 3 N(0, 1), so outputs do not average out to ~0 at long contexts).
"""

from __future__ import annotations

import pytest
import torch

from lowbit import kvcache as kv

pytestmark = pytest.mark.gpu

HEADS = [(32, 32, 128), (32, 8, 128), (9, 3, 64), (32, 32, 64)]  # (nh, nkv, d)
CONTEXTS = [1, 17, 63, 64, 65, 1000, 4096]


def _inv_freq(d: int, base: float = 10000.0) -> torch.Tensor:
    return (1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)).cuda()


def _pool(lay: kv.KvLayout, lens: list[int], cap: list[int] | None = None, layers: int = 2,
          layer: int = 1, seed: int = 0):
    """Random K/V at positions [0, lens[b]) of each sequence, packed into scattered blocks (enough
    for cap[b] positions) of `layer`; every other byte of the pool is poison (0xFF codes, NaN
    params). returns codes, params, block_table (unused entries -1)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    tpb = lay.tokens_per_block
    cap = cap or lens
    nblk = [max(1, -(-n // tpb)) for n in cap]
    nb = sum(nblk) + 3
    codes = torch.full((layers, nb, 2, lay.num_kv_heads, tpb, lay.head_size // 2), 0xFF,
                       dtype=torch.uint8, device="cuda")
    params = torch.full((layers, nb, lay.num_kv_heads, tpb, lay.params_per_token), float("nan"),
                        dtype=torch.float16, device="cuda")
    perm = torch.randperm(nb, generator=g, device="cuda").tolist()
    table = torch.full((len(lens), max(nblk) + 1), -1, dtype=torch.int32)
    i = 0
    for b, n in enumerate(lens):
        blocks = perm[i:i + nblk[b]]
        i += nblk[b]
        table[b, :nblk[b]] = torch.tensor(blocks, dtype=torch.int32)
        if n == 0:
            continue
        k = torch.randn(lay.num_kv_heads, n, lay.head_size, generator=g, device="cuda")
        v = torch.randn(lay.num_kv_heads, n, lay.head_size, generator=g, device="cuda")
        c, p = kv.pack_sequence(k.half().float(), v.half().float(), lay)
        used = c.shape[0]
        if n % tpb:  # slots past the end of the sequence stay poisoned
            c[used - 1, :, :, n % tpb:] = 0xFF
            p[used - 1, :, n % tpb:] = float("nan")
        idx = torch.tensor(blocks[:used], device="cuda")
        codes[layer][idx] = c
        params[layer][idx] = p
    return codes, params, table.cuda()


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(got).any(), "NaN in the kernel output (poison not overwritten?)"
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)
            ).item()


def _decode_case(lay: kv.KvLayout, lens: list[int], seed: int = 0, tol: float = 1e-2):
    from lowbit import ops

    codes, params, table = _pool(lay, lens, seed=seed)
    b = len(lens)
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    q = (torch.randn(b, lay.num_heads, lay.head_size, generator=g, device="cuda") * 3).half()
    pos = torch.tensor([n - 1 for n in lens], dtype=torch.int32, device="cuda")
    offs = torch.arange(b + 1, dtype=torch.int32, device="cuda")
    out = torch.full((b, lay.num_heads * lay.head_size), float("nan"), dtype=torch.float16,
                     device="cuda")
    ops.kv4_attention(q, pos, offs, table, codes, params, 1, lay, out=out)
    ref = kv.attention(q, pos, offs, table, codes, params, 1, lay)
    for j in range(b):  # per sequence: short and long contexts have different magnitudes
        err = _rel_err(out[j], ref[j])
        assert err <= tol, f"sequence {j} (context {lens[j]}): relative error {err:.2e}"


@pytest.mark.parametrize("nh,nkv,d", HEADS)
def test_decode_curated_contexts(cuda_lib, nh, nkv, d):
    lay = kv.KvLayout(nh, nkv, d, 32, d)
    _decode_case(lay, CONTEXTS)


@pytest.mark.parametrize("nh,nkv,d", [(32, 8, 128), (9, 3, 64)])
def test_decode_context_32768(cuda_lib, nh, nkv, d):
    lay = kv.KvLayout(nh, nkv, d, d, d)
    _decode_case(lay, [32768, 3])


def test_decode_batch_128_mixed_lengths(cuda_lib):
    g = torch.Generator().manual_seed(3)
    lens = torch.randint(1, 700, (128,), generator=g).tolist()
    _decode_case(kv.KvLayout(32, 8, 128, 32, 128), lens, seed=3)


@pytest.mark.parametrize("tpb,gk,gv", [(16, 16, 64), (128, 8, 32), (8, 64, 64)])
def test_decode_block_sizes_and_groups(cuda_lib, tpb, gk, gv):
    _decode_case(kv.KvLayout(32, 8, 64, gk, gv, tokens_per_block=tpb), [1, 70, 300, 129])


@pytest.mark.parametrize("nh,nkv,d,tpb,gk,gv,win", [(32, 8, 128, 32, 8, 8, 0),
                                                     (32, 32, 128, 256, 16, 64, 0),
                                                     (12, 4, 128, 8, 128, 16, 0),
                                                     (9, 3, 64, 16, 32, 8, 0),
                                                     (32, 8, 128, 64, 32, 128, 1000)])
def test_decode_register_path(cuda_lib, nh, nkv, d, tpb, gk, gv, win):
    # the register-dequant decode kernel (kv4DecodeKernel: from 2048 chunk slots B nkv
    # ceil(MB tpb / 32) on): V groups of 8 (two per thread at d = 128: the per-word scale path),
    # blocks of exactly one 32-token chunk, blocks larger than a chunk, 8- and 16-token blocks
    # (per-segment table reads), d = 64, a window (warp ranges with no visible token: lse = -inf)
    b = max(16, -(-128 // nkv))
    lens = [1, 31, 32, 33, 95, 700, 2049, 8192] + [1 + (37 * i) % 3000 for i in range(b - 8)]
    _decode_case(kv.KvLayout(nh, nkv, d, gk, gv, tokens_per_block=tpb, sliding_window=win), lens,
                 seed=5)


@pytest.mark.parametrize("nh,nkv", [(32, 8), (32, 32)])
def test_decode_register_path_pairs_split_over_warps(cuda_lib, nh, nkv):
    # stream-K over warps: 64 x 8 or 16 x 32 = 512 pairs of 258 chunk slots (MB tpb = 8256) over
    # 1584 warps of 84 slots, so every pair is shared by 4-5 warps whose partials kv4MergeKernel
    # combines, and a warp's range holds the tail of one pair and the head of the next; long and
    # short sequences next to each other
    b = 64 if nkv == 8 else 16
    g = torch.Generator().manual_seed(11)
    lens = torch.randint(1, 8193, (b,), generator=g).tolist()
    lens[0], lens[-1], lens[-2], lens[b // 2] = 8192, 8192, 1, 33
    _decode_case(kv.KvLayout(nh, nkv, 128, 32, 128), lens, seed=11)


def test_decode_register_path_several_pairs_per_warp(cuda_lib):
    # 200 x 8 pairs of 8 chunk slots (lengths up to 150, MB tpb = 256): 9 slots per warp, so most
    # pairs lie inside one warp's range (written directly), the others are split in two, and
    # ranges that cover only slots past a short sequence's end leave empty partials
    g = torch.Generator().manual_seed(13)
    lens = torch.randint(1, 151, (200,), generator=g).tolist()
    lens[0], lens[1], lens[-1] = 150, 1, 150
    _decode_case(kv.KvLayout(32, 8, 128, 32, 128), lens, seed=13)


@pytest.mark.parametrize("nh,nkv,d", [(32, 8, 128), (9, 3, 64)])
def test_decode_smem_path_small_batches(cuda_lib, nh, nkv, d):
    # fewer than 2048 chunk slots (6 x 8 or 6 x 3 pairs of 34 slots): kv4AttentionKernel<D, true>,
    # a tile per split, merged by kv4MergeKernel
    _decode_case(kv.KvLayout(nh, nkv, d, 32, d), [1, 17, 63, 64, 65, 1000])


def test_decode_many_heads_per_kv_head_uses_prefill_path(cuda_lib):
    _decode_case(kv.KvLayout(32, 1, 128, 32, 128), [5, 200, 1000])


def _prefill_case(lay: kv.KvLayout, past: list[int], new: list[int], seed: int = 0,
                  tol: float = 1e-2):
    """rope_append + attention kernels vs the reference on copies of the same poisoned pool; the
    one-call kv4_rope_append_attention on a third copy must give the same bits as the two calls
    (on sm_90a its attention kernel starts before the append ends: a missing wait would show)."""
    from lowbit import ops

    tot = [p + n for p, n in zip(past, new)]
    codes, params, table = _pool(lay, past, cap=tot, seed=seed)
    g = torch.Generator(device="cuda").manual_seed(seed + 7)
    t = sum(new)
    qkv = (torch.randn(t, lay.qkv_width, generator=g, device="cuda") * 2).half()
    qkv[:, :lay.num_heads * lay.head_size] *= 1.5
    pos = torch.cat([torch.arange(p, p + n) for p, n in zip(past, new)]).to(torch.int32).cuda()
    offs = torch.tensor([0] + torch.tensor(new).cumsum(0).tolist(), dtype=torch.int32,
                        device="cuda")
    inv = _inv_freq(lay.head_size)
    c_ref, p_ref = codes.clone(), params.clone()
    c_one, p_one = codes.clone(), params.clone()
    q_ref = kv.rope_append(qkv, pos, offs, table, inv, c_ref, p_ref, 1, lay)
    ref = kv.attention(q_ref, pos, offs, table, c_ref, p_ref, 1, lay)
    q_out = torch.full_like(q_ref, float("nan"))
    q = ops.kv4_rope_append(qkv, pos, offs, table, inv, codes, params, 1, lay, out=q_out)
    # q: equal up to a last-ulp cos/sin difference
    torch.testing.assert_close(q, q_ref, rtol=2e-3, atol=1e-3)
    # cache: poison outside the written slots kept; codes equal but for rare one-step moves
    diff = (codes.int() - c_ref.int()).abs()
    lo_d, hi_d = diff & 0xF, diff >> 4
    assert (codes != c_ref).float().mean().item() < 1e-3, "too many differing code bytes"
    assert int(torch.maximum(lo_d, hi_d).max()) <= 1 or (codes != c_ref).sum() < 4
    same_nan = torch.isnan(params) == torch.isnan(p_ref)
    assert same_nan.all(), "param poison overwritten / slot not written"
    torch.testing.assert_close(params[~torch.isnan(params)], p_ref[~torch.isnan(p_ref)],
                               rtol=2e-3, atol=1e-4)
    out = torch.full((t, lay.num_heads * lay.head_size), float("nan"), dtype=torch.float16,
                     device="cuda")
    ops.kv4_attention(q, pos, offs, table, codes, params, 1, lay, out=out)
    q_one = torch.full_like(q_ref, float("nan"))
    out_one = torch.full_like(out, float("nan"))
    ops.kv4_rope_append_attention(qkv, pos, offs, table, inv, c_one, p_one, 1, lay, q_out=q_one,
                                  out=out_one)
    assert torch.equal(q_one, q) and torch.equal(c_one, codes)
    assert torch.equal(torch.isnan(p_one), torch.isnan(params))
    assert torch.equal(p_one.nan_to_num(), params.nan_to_num())
    assert torch.equal(out_one, out), "one-call path differs from rope_append + attention"
    for b in range(len(new)):
        a, e = int(offs[b]), int(offs[b + 1])
        if a == e:
            continue
        err = _rel_err(out[a:e], ref[a:e])
        assert err <= tol, f"sequence {b} (past {past[b]}, new {new[b]}): relative error {err:.2e}"


@pytest.mark.parametrize("nh,nkv,d", HEADS)
def test_prefill_chunks_over_quantized_past(cuda_lib, nh, nkv, d):
    _prefill_case(kv.KvLayout(nh, nkv, d, 32, d), past=[0, 1000, 63, 64], new=[77, 65, 1, 17])


def test_prefill_long_chunk_and_sliding_window(cuda_lib):
    _prefill_case(kv.KvLayout(32, 8, 128, 32, 128), past=[0], new=[1000])
    _prefill_case(kv.KvLayout(9, 3, 64, 16, 64, sliding_window=100), past=[0, 300],
                  new=[257, 40])


def test_prefill_block_segments(cuda_lib):
    # tokens_per_block 16 / 32: a 64-token tile spans 4 / 2 pool blocks (loadTile's per-chunk
    # path), some of them before a past sequence's first chunk token or outside the window
    _prefill_case(kv.KvLayout(32, 8, 128, 32, 128, tokens_per_block=16), past=[100, 0],
                  new=[200, 129])
    _prefill_case(kv.KvLayout(9, 3, 64, 16, 64, tokens_per_block=32, sliding_window=70),
                  past=[33, 0], new=[150, 64])


@pytest.mark.parametrize("d", [64, 128])
def test_prefill_portable_kernel(cuda_lib, monkeypatch, d):
    # LOWBIT_KV_PREFILL_KERNEL=mma: the mma.sync prefill kernel (the only one below sm_90a; on a
    # Hopper GPU the wgmma kernel runs unless this is set)
    monkeypatch.setenv("LOWBIT_KV_PREFILL_KERNEL", "mma")
    _prefill_case(kv.KvLayout(32, 8, d, 32, d), past=[0, 1000, 63], new=[300, 65, 17])
    _prefill_case(kv.KvLayout(9, 3, d, 16, d, sliding_window=100), past=[0], new=[257])


def test_decode_step_through_both_kernels_sliding_window(cuda_lib):
    # T == B (one token each) through rope_append then the decode path, window 64
    _prefill_case(kv.KvLayout(32, 8, 128, 32, 128, sliding_window=64), past=[0, 65, 1000],
                  new=[1, 1, 1])
    _prefill_case(kv.KvLayout(32, 8, 128, 128, 128, tokens_per_block=16), past=[5, 4095],
                  new=[1, 1])


def test_append_smallest_groups_and_blocks(cuda_lib):
    # one lane per K group (gk = 8: 8 channels per lane), V groups of 2 and 4 lanes;
    # tokens_per_block 8 and 256; a warp step holds 256 / d units: (6, 3, 128) puts a K and a V
    # unit with different group sizes in one step, (9, 3, 64) a q and three K units
    _prefill_case(kv.KvLayout(32, 8, 128, 8, 16, tokens_per_block=8), past=[0, 9], new=[30, 7])
    _prefill_case(kv.KvLayout(9, 3, 64, 8, 32, tokens_per_block=256), past=[250], new=[20])
    _prefill_case(kv.KvLayout(6, 3, 128, 8, 32, tokens_per_block=16), past=[3, 40], new=[50, 9])


def test_bad_inputs_raise(cuda_lib):
    from lowbit import ops

    lay = kv.KvLayout(8, 2, 96, 32, 96)
    codes, params = kv.new_pool(lay, 1, 4, device="cuda")
    z = torch.zeros(1, dtype=torch.int32, device="cuda")
    offs = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
    table = torch.zeros(1, 2, dtype=torch.int32, device="cuda")
    q = torch.zeros(1, 8, 96, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="head_size: the kernels support 64 and 128, found 96"):
        ops.kv4_attention(q, z, offs, table, codes, params, 0, lay)
    lay = kv.KvLayout(8, 2, 64, 32, 64)
    codes, params = kv.new_pool(lay, 1, 4, device="cuda")
    q = torch.zeros(1, 8, 64, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="positions: expected dtype torch.int32"):
        ops.kv4_attention(q, z.long(), offs, table, codes, params, 0, lay)
    with pytest.raises(ValueError, match=r"qkv: expected shape \(1, 768\), found \(1, 512\)"):
        ops.kv4_rope_append(torch.zeros(1, 512, dtype=torch.float16, device="cuda"), z, offs,
                            table, _inv_freq(64), codes, params, 0, lay)
    with pytest.raises(ValueError, match="layer: expected 0 <= layer < 1, found 1"):
        ops.kv4_attention(q, z, offs, table, codes, params, 1, lay)
    qkv = torch.zeros(1, 768, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match=r"q_out: expected shape \(1, 8, 64\), found \(1, 8, 32\)"):
        ops.kv4_rope_append_attention(qkv, z, offs, table, _inv_freq(64), codes, params, 0, lay,
                                      q_out=torch.zeros(1, 8, 32, dtype=torch.float16,
                                                        device="cuda"))
