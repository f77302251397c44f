"""CPU tests of the kernel weight layouts in lowbit.packing (pack/unpack round trips)."""

from __future__ import annotations

import pytest
import torch

from lowbit import packing


@pytest.mark.parametrize("n,ng", [(4096, 32), (11008, 85), (576, 3), (8, 1)])
def test_w4a4_scales_round_trip(n: int, ng: int) -> None:
    g = torch.Generator().manual_seed(n * 131 + ng)
    ws4 = (torch.rand(n, ng, generator=g) * 0.1 + 1e-3).half()
    ws4t = packing.pack_w4a4_scales(ws4)
    assert ws4t.shape == (ng, n) and ws4t.is_contiguous()
    assert torch.equal(ws4t[:, 0], ws4[0, :])  # the layout the kernel reads: [group, column]
    back = packing.unpack_w4a4_scales(ws4t)
    assert back.is_contiguous()
    assert torch.equal(back, ws4)


def test_w4a4_scales_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="float16"):
        packing.pack_w4a4_scales(torch.zeros(8, 2))
    with pytest.raises(ValueError, match="2-D"):
        packing.unpack_w4a4_scales(torch.zeros(8, dtype=torch.float16))


def test_int4_round_trip_with_kernel_widening() -> None:
    """The GEMM widens a packed byte b into lo = (b << 4) & 0xF0 and hi = b & 0xF0 (int8 lanes
    holding 16 * value); check that identity against unpack_int4 on every byte value."""
    b = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8)
    q = packing.unpack_int4(b).view(-1, 2).to(torch.int16)
    u = b.to(torch.int16) & 0xFF
    lo = ((u << 4) & 0xF0).to(torch.uint8).view(torch.int8).to(torch.int16)
    hi = (u & 0xF0).to(torch.uint8).view(torch.int8).to(torch.int16)
    assert torch.equal(lo, 16 * q[:, 0])
    assert torch.equal(hi, 16 * q[:, 1])
    assert torch.equal(packing.pack_int4(q.flatten()), b)
