"""Weight quantization: RTN semantics, clipping search, GPTQ beats RTN."""

from __future__ import annotations

import torch

from converters.gptq import ColumnGroups, gptq, output_error, rtn, search_clip


def _case(seed=0, n=64, k=256):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02
    x = torch.randn(4096, k, generator=g) @ (torch.eye(k) + 0.3 * torch.randn(k, k, generator=g))
    x[:, -64:] *= 8  # outlier channels, as after Atom's reorder
    return w, x, (x.T @ x) / x.shape[0]


def test_gptq_lowers_layer_error_vs_rtn():
    w, x, h = _case()
    groups = ColumnGroups.atom(256, 64, 64)
    e_rtn = output_error(w, rtn(w, groups).dequantize(groups), h)
    q = gptq(w, h, groups)
    e_gptq = output_error(w, q.dequantize(groups), h)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)
    # codes respect each group's range, scales are fp16 per row
    assert int(q.codes[:, :192].min()) >= -8 and int(q.codes[:, :192].max()) <= 7
    assert int(q.codes[:, 192:].abs().max()) <= 127
    assert len(q.scales) == 4 and all(s.dtype == torch.float16 for s in q.scales)


def test_clip_search_never_worse_than_no_clip():
    w, x, h = _case(1)
    w[:, 5] *= 20  # a weight outlier inside a group makes clipping worthwhile
    groups = ColumnGroups.atom(256, 64, 64)
    best, errs = search_clip(w, groups, h)
    assert errs[best] <= errs[1.0]


def test_rtn_int8_per_channel_matches_formula():
    w, _, _ = _case(2)
    q = rtn(w, ColumnGroups.per_channel_int8(256))
    s = (w.abs().amax(1) / 127).to(torch.float16).float()
    assert torch.equal(q.codes.float(), torch.clamp(torch.round(w / s[:, None]), -127, 127))


def test_gptq_int8_per_channel_beats_rtn():
    """SmoothQuant's INT8 weights: GPTQ with one per-row scale over all K columns."""
    w, x, h = _case(3)
    groups = ColumnGroups.per_channel_int8(256)
    e_rtn = output_error(w, rtn(w, groups).dequantize(groups), h)
    e_gptq = output_error(w, gptq(w, h, groups).dequantize(groups), h)
    assert e_gptq < 0.95 * e_rtn, (e_gptq, e_rtn)  # INT8 rounding is fine: a smaller gain
