"""lowbit.packing and lowbit.reference: the numeric contract (CPU)."""

from __future__ import annotations

import pytest
import torch

from lowbit import reference as R
from lowbit.packing import invert_permutation, outliers_last_permutation, pack_int4, unpack_int4


def test_pack_unpack_round_trip_and_nibble_order():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-8, 8, (5, 6, 64), generator=g, dtype=torch.int8)
    p = pack_int4(q)
    assert p.dtype == torch.int8 and p.shape == (5, 6, 32)
    assert torch.equal(unpack_int4(p), q)
    # low nibble first: [1, -2] -> 0xE1 (int8 -31)
    assert pack_int4(torch.tensor([[1, -2]], dtype=torch.int8)).item() == -31
    with pytest.raises(ValueError, match=r"values in \[-8, 7\]"):
        pack_int4(torch.tensor([[8, 0]]))
    with pytest.raises(ValueError, match="even last dimension"):
        pack_int4(torch.zeros(3, 5, dtype=torch.int8))


def test_outlier_permutation_moves_largest_last():
    imp = torch.tensor([5.0, 0.1, 9.0, 0.2, 7.0, 0.3])
    perm = outliers_last_permutation(imp, 2)
    assert perm.tolist() == [0, 1, 3, 5, 4, 2]
    inv = invert_permutation(perm)
    x = torch.randn(3, 6)
    assert torch.equal(x[:, perm][:, inv], x)


def test_quantize_symmetric_uses_stored_scale():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(7, 256, generator=g) * 3
    q, s = R.quantize_symmetric(h, 7, 128, clip=0.9)
    assert s.dtype == torch.float16 and s.shape == (7, 2)
    assert int(q.min()) >= -8 and int(q.max()) <= 7
    expect = torch.clamp(torch.round(h.view(7, 2, 128) / s.float()[..., None]), -8, 7)
    assert torch.equal(q.view(7, 2, 128).float(), expect)
    z, zs = R.quantize_symmetric(torch.zeros(2, 128), 7, 128)
    assert torch.all(z == 0) and torch.all(zs == 0)


@pytest.mark.parametrize("m,n,k,ko,gs", [(3, 5, 576, 192, 128), (17, 33, 1536, 128, 128),
                                         (4, 8, 512, 64, 64)])
def test_atom_gemm_equals_float64_of_dequantized(m, n, k, ko, gs):
    g = torch.Generator().manual_seed(m * n)
    x = torch.randn(m, k, generator=g)
    x[:, -ko:] *= 20  # outlier channels
    w = torch.randn(n, k, generator=g) * 0.05
    a = R.atom_quantize_activation(x, ko, gs, 0.9)
    q4, s4 = R.quantize_symmetric(w[:, :k - ko], 7, gs)
    q8, s8 = R.quantize_symmetric(w[:, k - ko:], 127, None)
    wt = R.AtomWeight(pack_int4(q4), s4, q8, s8.reshape(-1))
    y = R.atom_gemm(a, wt, gs)
    ref = R.dequantize_atom_activation(a, gs).double() @ R.dequantize_atom_weight(wt, gs).double().T
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-6
    # and it approximates the float product (quantization error only)
    assert ((y - x @ w.T).norm() / (x @ w.T).norm()).item() < 0.2


def test_atom_rmsnorm_quantize_applies_permutation():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 576, generator=g)
    gamma = torch.rand(576, generator=g) + 0.5
    perm = torch.randperm(576, generator=g).to(torch.int32)
    a = R.atom_rmsnorm_quantize(x, gamma[perm.long()], perm, 1e-5, 192, 128, 0.9)
    h = R.rms_norm(x, gamma, 1e-5)[:, perm.long()]
    b = R.atom_quantize_activation(h, 192, 128, 0.9)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_w8a8_gemm_exact_and_static_quant():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 1536, generator=g)
    w = torch.randint(-127, 128, (11, 1536), generator=g, dtype=torch.int8)
    ws = torch.rand(11, generator=g) * 0.01
    xq, xs = R.quantize_per_token_int8(x)
    assert xs.dtype == torch.float32 and xs.shape == (9,)
    y = R.w8a8_gemm(xq, xs, w, ws)
    ref = (xq.double() @ w.double().T) * xs.double()[:, None] * ws.double()[None]
    assert torch.allclose(y.double(), ref, rtol=1e-6)
    s = torch.tensor(0.03)
    q = R.quantize_static_int8(x, s)
    assert torch.equal(q.float(), torch.clamp(torch.round(x / 0.03), -127, 127))


def test_atom_activation_without_outliers():
    a = R.atom_quantize_activation(torch.randn(3, 256), 0, 128, 0.9)
    assert a.x8.shape == (3, 0) and torch.all(a.xs8 == 0)
    assert a.x4.shape == (3, 128)


def test_static_scale_must_be_positive():
    with pytest.raises(ValueError, match="must be > 0"):
        R.quantize_static_int8(torch.randn(2, 4), torch.tensor(0.0))
