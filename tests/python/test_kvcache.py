"""lowbit.kvcache (paged INT4 KV cache reference) vs the reference runtime's attention
(builder.runtime.Decoder + builder.quantized.QuantizedKVCache, kind int4) on the same data;
pack/unpack round trip; the block allocator; input errors. CPU only."""

from __future__ import annotations

import types

import pytest
import torch

from lowbit import kvcache as kv
from lowbit.reference import kv_dequantize_int4, kv_quantize_int4


def _decoder(nh, nkv, d, window=0, gk=32, gv=None, scaling=None):
    from builder.runtime import Decoder

    cfg = {"architecture": "LlamaForCausalLM", "vocab_size": 64, "hidden_size": nh * d,
           "num_hidden_layers": 2, "num_attention_heads": nh, "num_key_value_heads": nkv,
           "head_size": d, "intermediate_size": 64, "hidden_act": "silu",
           "norm_epsilon": 1e-5, "rotary_base": 10000.0, "rotary_scaling": scaling,
           "max_position_embeddings": 4096, "tie_word_embeddings": False, "attn_bias": False,
           "sliding_window": window or None, "dtype": "float32",
           "quantization": {"kv_cache_quant_algo": "INT4"},
           "kv_cache_int4": {"k_group_size": gk, "v_group_size": gv or d}}
    return Decoder(cfg, device="cpu", dtype=torch.float32)


def _runtime_cache(dec, batch, max_len):
    from builder.quantized import QuantizedKVCache

    model = types.SimpleNamespace(spec=dec.spec, config=dec.config, dtype=dec.dtype,
                                  device=dec.device)
    return QuantizedKVCache(model, batch, max_len, "int4")


def _runtime_step(dec, cache, layer, qkv, positions):
    """The runtime's attention path of layer_forward, from qkv [B, t, (nh+2nkv) d]."""
    s = dec.spec
    b, t, _ = qkv.shape
    nq, nkv, d = s.num_attention_heads, s.num_key_value_heads, s.head_size
    q, k, v = torch.split(qkv, [nq * d, nkv * d, nkv * d], dim=-1)
    q = dec.rope(q.reshape(b, t, nq, d).transpose(1, 2), positions)
    k = dec.rope(k.reshape(b, t, nkv, d).transpose(1, 2), positions)
    v = v.reshape(b, t, nkv, d).transpose(1, 2)
    k_all, v_all = cache.append(layer, k, v)
    return dec.attention(q, k_all, v_all, cache.length).transpose(1, 2).reshape(b * t, nq * d)


def _lay(dec):
    s, c = dec.spec, dec.config["kv_cache_int4"]
    return kv.KvLayout(s.num_attention_heads, s.num_key_value_heads, s.head_size,
                       c["k_group_size"], c["v_group_size"], tokens_per_block=8,
                       sliding_window=s.sliding_window or 0)


@pytest.mark.parametrize("nh,nkv,d,window,gk", [(4, 4, 16, 0, 16), (6, 2, 32, 0, 8),
                                                (4, 1, 16, 5, 16)])
def test_matches_runtime_prefill_then_decode(nh, nkv, d, window, gk):
    """Chunks of 11, 1, 1, 9 tokens (crossing blocks of 8) for 3 sequences advancing together,
    stored in scattered blocks; layer 1 of a 2-layer pool; float32 math throughout."""
    torch.manual_seed(0)
    scaling = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    dec = _decoder(nh, nkv, d, window, gk, scaling=scaling)
    lay = _lay(dec)
    b, chunks = 3, [11, 1, 1, 9]
    total = sum(chunks)
    cache = _runtime_cache(dec, b, total)
    nblk = -(-total // lay.tokens_per_block)
    alloc = kv.BlockAllocator(b * nblk + 3)
    alloc.allocate(3)  # so that no sequence starts at block 0
    table = torch.tensor([alloc.allocate(nblk)[::-1] for _ in range(b)], dtype=torch.int32)
    codes, params = kv.new_pool(lay, 2, alloc.num_blocks)
    start = 0
    for t in chunks:
        qkv = torch.randn(b, t, lay.qkv_width) * 2
        pos = torch.arange(start, start + t)
        want = _runtime_step(dec, cache, 1, qkv, pos).reshape(b, t, -1)
        cache.advance(t)
        flat = qkv.reshape(b * t, -1)
        positions = pos.repeat(b).to(torch.int32)
        offs = torch.arange(0, b * t + 1, t, dtype=torch.int32)
        q = kv.rope_append(flat, positions, offs, table, dec.inv_freq, codes, params, 1, lay)
        got = kv.attention(q, positions, offs, table, codes, params, 1, lay)
        assert got.dtype == torch.float32 and got.shape == (b * t, nh * d)
        torch.testing.assert_close(got.reshape(b, t, -1), want, rtol=1e-5, atol=1e-5)
        start += t
    assert not codes[0].any() and not params[0].any()  # other layer untouched
    # the pool holds exactly the runtime cache's codes and scales
    for j in range(b):
        kh, vh = kv.unpack_sequence(codes[1][table[j].long()], params[1][table[j].long()],
                                    total, lay)
        rk = kv_dequantize_int4(cache.q[1][0][j], cache.sz[1][0][0][j], cache.sz[1][0][1][j])
        rv = kv_dequantize_int4(cache.q[1][1][j], cache.sz[1][1][0][j], cache.sz[1][1][1][j])
        assert torch.equal(kh, rk) and torch.equal(vh, rv)


def test_ragged_batch_equals_one_sequence_at_a_time():
    """A flat batch with different lengths, a decode token and an empty sequence gives the same
    q, cache and output as each sequence alone; fp16 qkv rounds q and the output to fp16."""
    torch.manual_seed(1)
    lay = kv.KvLayout(9, 3, 16, 8, 16, tokens_per_block=4)
    inv = 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)
    lens, past = [5, 1, 0, 7], [0, 9, 3, 2]
    b = len(lens)
    mb = 5
    table = torch.arange(b * mb, dtype=torch.int32).reshape(b, mb).flip(1).contiguous()
    codes, params = kv.new_pool(lay, 1, b * mb)
    codes2, params2 = kv.new_pool(lay, 1, b * mb)
    # fill the past with random content through the same function
    for j in range(b):
        if past[j]:
            x = torch.randn(past[j], lay.qkv_width).half()
            for c, p in ((codes, params), (codes2, params2)):
                kv.rope_append(x, torch.arange(past[j], dtype=torch.int32),
                               torch.tensor([0, past[j]], dtype=torch.int32), table[j:j + 1],
                               inv, c, p, 0, lay)
    qkv = torch.randn(sum(lens), lay.qkv_width).half()
    positions = torch.cat([torch.arange(p, p + n) for p, n in zip(past, lens)]).to(torch.int32)
    offs = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    q = kv.rope_append(qkv, positions, offs, table, inv, codes, params, 0, lay)
    out = kv.attention(q, positions, offs, table, codes, params, 0, lay)
    assert q.dtype == torch.float16 and out.dtype == torch.float16
    for j in range(b):
        a, e = int(offs[j]), int(offs[j + 1])
        o1 = torch.tensor([0, e - a], dtype=torch.int32)
        q1 = kv.rope_append(qkv[a:e], positions[a:e], o1, table[j:j + 1], inv, codes2, params2,
                            0, lay)
        out1 = kv.attention(q1, positions[a:e], o1, table[j:j + 1], codes2, params2, 0, lay)
        assert torch.equal(q1, q[a:e]) and torch.equal(out1, out[a:e])
    assert torch.equal(codes, codes2) and torch.equal(params, params2)


def test_pack_unpack_round_trip():
    torch.manual_seed(2)
    lay = kv.KvLayout(8, 2, 64, 32, 64, tokens_per_block=16)
    k, v = torch.randn(2, 37, 64), torch.randn(2, 37, 64) * 3
    k[0, 5] = 0.25  # a constant group: scale 0, code 0, value = zero
    codes, params = kv.pack_sequence(k, v, lay)
    assert codes.shape == (3, 2, 2, 16, 32) and codes.dtype == torch.uint8
    assert params.shape == (3, 2, 16, lay.params_per_token) and params.dtype == torch.float16
    kh, vh = kv.unpack_sequence(codes, params, 37, lay)
    assert torch.equal(kh, kv_dequantize_int4(*kv_quantize_int4(k, 32)))
    assert torch.equal(vh, kv_dequantize_int4(*kv_quantize_int4(v, 64)))
    assert torch.equal(kh[0, 5], torch.full((64,), 0.25))
    # nibble order: channel 2i low, 2i+1 high; K codes then V codes; padding slots zero
    qk = kv_quantize_int4(k, 32)[0]
    assert int(codes[0, 0, 1, 3, 0]) == int(qk[1, 3, 0]) | int(qk[1, 3, 1]) << 4
    assert not codes[2, :, :, 37 - 32:].any() and not params[2, :, 37 - 32:].any()
    c2, p2 = kv.pack_sequence(kh, vh, lay)  # quantized values re-quantize to themselves
    assert torch.equal(kv.unpack_sequence(c2, p2, 37, lay)[0], kh)
    assert torch.equal(kv.unpack_codes(kv.pack_codes(qk)), qk)


def test_rope_append_writes_slots_of_the_block_table():
    lay = kv.KvLayout(2, 1, 8, 8, 8, tokens_per_block=4)
    codes, params = kv.new_pool(lay, 3, 6)
    table = torch.tensor([[5, 2, 0]], dtype=torch.int32)
    qkv = torch.randn(3, lay.qkv_width)
    pos = torch.tensor([3, 4, 5], dtype=torch.int32)
    kv.rope_append(qkv, pos, torch.tensor([0, 3], dtype=torch.int32), table,
                   torch.ones(4), codes, params, 2, lay)
    written = params[2].abs().sum((1, 3)) > 0  # [NB, tpb]
    want = torch.zeros(6, 4, dtype=torch.bool)
    want[5, 3] = want[2, 0] = want[2, 1] = True
    assert torch.equal(written, want)
    assert not codes[:2].any() and not params[:2].any()


def test_allocator():
    a = kv.BlockAllocator(4)
    x = a.allocate(3)
    assert sorted(x) == [0, 1, 2] and a.num_free == 1
    with pytest.raises(RuntimeError, match="3 blocks requested, 1 of 4 free"):
        a.allocate(3)
    a.free([x[1]])
    assert a.num_free == 2
    with pytest.raises(ValueError, match="not allocated"):
        a.free([x[1]])
    assert sorted(a.allocate(2)) == [1, 3] and a.num_free == 0
    with pytest.raises(ValueError, match="positive"):
        kv.BlockAllocator(0)


def test_layout_and_input_errors():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        kv.KvLayout(9, 2, 64, 32, 64)
    with pytest.raises(ValueError, match=r"k_group_size \(48\) must divide head_size \(64\)"):
        kv.KvLayout(8, 8, 64, 48, 64)
    lay = kv.KvLayout(4, 2, 16, 8, 16, tokens_per_block=4)
    assert lay.params_per_token == 2 * (2 + 1)
    codes, params = kv.new_pool(lay, 1, 4)
    offs = torch.tensor([0, 2], dtype=torch.int32)
    table = torch.tensor([[0, 1]], dtype=torch.int32)
    pos = torch.tensor([0, 1], dtype=torch.int32)
    inv = torch.ones(8)
    with pytest.raises(ValueError, match=r"qkv: expected a float \[T, \(nh \+ 2 nkv\) d = 128\]"):
        kv.rope_append(torch.zeros(2, 96), pos, offs, table, inv, codes, params, 0, lay)
    with pytest.raises(ValueError, match="seq_offsets must rise from 0 to T=2"):
        kv.rope_append(torch.zeros(2, 128), pos, torch.tensor([0, 3]), table, inv, codes,
                       params, 0, lay)
    with pytest.raises(ValueError, match=r"positions must be in \[0, MB \* tpb = 8\)"):
        kv.rope_append(torch.zeros(2, 128), torch.tensor([7, 8]), offs, table, inv, codes,
                       params, 0, lay)
    with pytest.raises(ValueError, match=r"block_table entries used must be in \[0, NB = 4\)"):
        kv.rope_append(torch.zeros(2, 128), pos, offs, torch.tensor([[9, 1]]), inv, codes,
                       params, 0, lay)
    with pytest.raises(ValueError, match="layer must be in"):
        kv.attention(torch.zeros(2, 4, 16), pos, offs, table, codes, params, 1, lay)
    with pytest.raises(ValueError, match=r"params: expected float16"):
        kv.attention(torch.zeros(2, 4, 16), pos, offs, table, codes, params.float(), 0, lay)
