"""Kernels of liblowbit_kernels.so (through lowbit.ops) against lowbit.reference.

GPU tests (marker `gpu`) skip with a reason when there is no CUDA device or no built library.
Every case draws fresh random inputs from its own seed, poisons the outputs before the call and
checks that every element was written.

Tolerances (why):
- GEMMs: the kernels sum exact integer group products in fp32 in another order than the
  reference, then round to fp16 once: ||y - ref|| / ||ref|| < 1e-3 (fp16 rounding alone is
  ~3e-4), no NaN/inf, and >= 90% of outputs bit-equal to the reference rounded to fp16 (the
  rest differ where accumulation order flips an fp16 rounding).
- Quantizers with RMSNorm: the sum of squares is reduced in another order than torch's, so
  rstd may differ in its last bit; a value on a rounding boundary then moves by one integer step
  and an fp16 scale by one ulp: codes differ by at most 1, in at most 0.1% of elements; scales
  within 1e-3 relative. Without RMSNorm (reorder-quantize) results are bit-exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import pytest
import torch

from lowbit import library, ops, packing, reference
from lowbit.reference import AtomActivation, AtomWeight

GEMM_REL_TOL = 1e-3
GEMM_MIN_EXACT = 0.90
Q_MAX_MISMATCH = 1e-3
SCALE_REL_TOL = 1e-3


def _gen(*case) -> torch.Generator:
    """A generator seeded from the case itself (stable across processes, unlike hash())."""
    return torch.Generator(device="cuda").manual_seed(zlib.crc32(repr(case).encode()))


def _rand_i8(shape, lo: int, hi: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(lo, hi + 1, shape, generator=g, device="cuda", dtype=torch.int8)


def _rand_scale(shape, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=g, device="cuda") * 0.02 + 1e-3).half()


def _check_gemm(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.isfinite(y).all(), "output has NaN/inf (unwritten poisoned elements?)"
    yf = y.float()
    rel = ((yf - ref).norm() / ref.norm()).item()
    exact = (y == ref.half()).float().mean().item()
    assert rel < GEMM_REL_TOL, f"relative error {rel:.3e} >= {GEMM_REL_TOL}"
    assert exact >= GEMM_MIN_EXACT, f"only {exact:.3f} of outputs equal the fp16 reference"


# ---- W4A4 -------------------------------------------------------------------------------------
# (M, K, N, K_o, G, config): Llama-7B/8B/13B and SmolLM2 projections, ragged M, then the
# outlier-count / group-size / forced-tile edges.
W4A4_CASES = [
    (1, 4096, 4096, 128, 128, "auto"),
    (16, 4096, 11008, 128, 128, "auto"),
    (3, 11008, 4096, 128, 128, "auto"),
    (255, 4096, 14336, 128, 128, "auto"),
    (17, 14336, 4096, 128, 128, "auto"),
    (100, 5120, 13824, 128, 128, "auto"),
    (1000, 4096, 11008, 128, 128, "auto"),
    (4097, 4096, 4096, 128, 128, "auto"),
    (1, 576, 576, 192, 128, "auto"),
    (17, 576, 1536, 192, 128, "auto"),
    (255, 1536, 576, 128, 128, "auto"),
    (100, 576, 576, 64, 64, "auto"),
    (3, 4096, 4096, 128, 64, "auto"),
    (1000, 4096, 4096, 128, 64, "auto"),
    (17, 4096, 4096, 0, 128, "auto"),
    (100, 4112, 4096, 16, 128, "auto"),
    (33, 1280, 1024, 256, 128, "auto"),
    (100, 2096, 1032, 48, 128, "decode"),
    (100, 2096, 1032, 48, 128, "mid"),
    (100, 2096, 1032, 48, 128, "large"),
    (300, 2096, 1032, 48, 64, "decode"),
    (300, 2096, 1032, 48, 64, "mid"),
    (300, 2096, 1032, 48, 64, "large"),
    (16, 2096, 1032, 48, 128, "skinny"),
    (5, 2096, 1032, 48, 128, "skinny"),
    (1, 576, 1536, 192, 128, "skinny"),
    (16, 2096, 1032, 48, 128, "decode"),
    (7, 4096, 1032, 128, 128, "skinny"),
    (16, 2096, 1032, 48, 128, "gemv"),
    (9, 2096, 1032, 48, 128, "gemv"),
    (5, 2096, 1032, 48, 128, "gemv"),
    (1, 576, 1536, 192, 128, "gemv"),
    (3, 4096, 1032, 0, 128, "gemv"),
    (13, 4096, 1032, 128, 128, "gemv_k16"),
    (1, 576, 1536, 192, 128, "gemv_k16"),
    (16, 2096, 1032, 48, 128, "gemv_k12"),
    (2, 4112, 1032, 16, 128, "gemv_k12"),
    (1, 4096, 4104, 128, 128, "gemv_k12"),
    # gemv with 4 token groups (M = 17..32): ragged M, N not a multiple of 16, K12 and K16
    (32, 4096, 11008, 128, 128, "gemv"),
    (17, 2096, 1032, 48, 128, "gemv"),
    (29, 576, 1536, 192, 128, "gemv_k16"),
    (24, 4112, 1032, 16, 128, "gemv_k12"),
    (32, 4096, 1032, 0, 128, "gemv_k12"),
    # eight token groups (M = 33..64, activations loaded by the multiplier)
    (64, 4096, 11008, 128, 128, "gemv"),
    (33, 2096, 1032, 48, 128, "gemv_k12"),
    (47, 576, 1536, 192, 128, "gemv_k16"),
    (64, 4112, 1032, 16, 128, "gemv"),
    (40, 4096, 1032, 0, 128, "gemv_k16"),
    (64, 11008, 4096, 128, 128, "auto"),  # auto: gemv up to M = 64 (W4A4)
    (2, 576, 8, 64, 128, "auto"),  # N < 16: gemv does not fit, auto falls back to skinny
    # sm_90a wgmma kernel (64x256 tiles; skipped on other GPUs): ragged M, N not a multiple of
    # 256, outlier counts 0 / 16 / 48 / 192 / 256, SmolLM2 shapes
    (17, 4096, 4096, 128, 128, "wgmma"),
    (1000, 4096, 11008, 128, 128, "wgmma"),
    (4097, 4096, 4096, 128, 128, "wgmma"),
    (100, 11008, 4096, 128, 128, "wgmma"),
    (100, 576, 1536, 192, 128, "wgmma"),
    (255, 1536, 576, 128, 128, "wgmma"),
    (33, 4096, 4096, 0, 128, "wgmma"),
    (100, 4112, 4096, 16, 128, "wgmma"),
    (300, 2096, 1032, 48, 128, "wgmma"),
    (64, 1280, 1024, 256, 128, "wgmma"),
    (1, 4096, 1032, 128, 128, "wgmma"),
    (1000, 4096, 11008, 128, 128, "wgmma_n128"),  # the ping-pong variant
    (300, 2096, 1032, 48, 128, "wgmma_n128"),
    (33, 4096, 4096, 0, 128, "wgmma_n128"),
    # the wide kernel (weights as the register operand, activations widened into the workspace):
    # the same ragged shapes; auto takes it where "wgmma" would run (the op gives a workspace)
    (17, 4096, 4096, 128, 128, "wgmma_wide"),
    (1000, 4096, 11008, 128, 128, "wgmma_wide"),
    (4097, 4096, 4096, 128, 128, "wgmma_wide"),
    (100, 11008, 4096, 128, 128, "wgmma_wide"),
    (100, 576, 1536, 192, 128, "wgmma_wide"),
    (255, 1536, 576, 128, 128, "wgmma_wide"),
    (33, 4096, 4096, 0, 128, "wgmma_wide"),
    (100, 4112, 4096, 16, 128, "wgmma_wide"),
    (300, 2096, 1032, 48, 128, "wgmma_wide"),
    (64, 1280, 1024, 256, 128, "wgmma_wide"),
    (1, 4096, 1032, 128, 128, "wgmma_wide"),
    (130, 2096, 1032, 48, 128, "auto"),
    (256, 4096, 4096, 128, 128, "auto"),  # wide where 7 would not run (M >= 256)
    (2050, 4096, 4096, 128, 128, "auto"),
]


def _skip_unless_hopper(config: str) -> None:
    if config.startswith("wgmma") and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("wgmma configurations need a compute capability 9.0 GPU")


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n,ko,gs,config", W4A4_CASES)
def test_w4a4_gemm(cuda_lib, m, k, n, ko, gs, config) -> None:
    _skip_unless_hopper(config)
    g = _gen((m, k, n, ko, gs, config))
    kn = k - ko
    a = AtomActivation(_rand_i8((m, kn // 2), -128, 127, g), _rand_scale((m, kn // gs), g),
                       _rand_i8((m, ko), -127, 127, g), _rand_scale((m,), g))
    w = AtomWeight(_rand_i8((n, kn // 2), -128, 127, g), _rand_scale((n, kn // gs), g),
                   _rand_i8((n, ko), -127, 127, g), _rand_scale((n,), g))
    out = torch.full((m, n), float("nan"), dtype=torch.float16, device="cuda")
    y = ops.w4a4_gemm(a.x4, a.xs4, a.x8, a.xs8, w.w4, packing.pack_w4a4_scales(w.ws4), w.w8,
                      w.ws8, gs, out=out, config=config)
    assert y.data_ptr() == out.data_ptr()
    _check_gemm(y, reference.atom_gemm(a, w, gs))


@pytest.mark.gpu
def test_w4a4_gemm_workspace(cuda_lib) -> None:
    """The wide kernel's scratch: the size formula of the header, a caller's workspace used as
    given, a too small one refused by the forced configuration and not used by auto (config 7
    runs instead: same result)."""
    _skip_unless_hopper("wgmma")
    m, k, n, ko, gs = 300, 2096, 1032, 48, 128
    kn = k - ko
    # M (K_n + K_o) int8 rounded up to 256 B, then K_n/128 x round_up(M, 4) fp32 scales
    need = (m * k + 255) // 256 * 256 + kn // 128 * m * 4
    assert ops.w4a4_gemm_workspace(m, n, kn, ko, gs) == need
    assert ops.w4a4_gemm_workspace(m, n, kn, ko, 64) == 0  # no wide kernel for G = 64
    g = _gen(("workspace", m))
    a = AtomActivation(_rand_i8((m, kn // 2), -128, 127, g), _rand_scale((m, kn // gs), g),
                       _rand_i8((m, ko), -127, 127, g), _rand_scale((m,), g))
    w = AtomWeight(_rand_i8((n, kn // 2), -128, 127, g), _rand_scale((n, kn // gs), g),
                   _rand_i8((n, ko), -127, 127, g), _rand_scale((n,), g))
    args = (a.x4, a.xs4, a.x8, a.xs8, w.w4, packing.pack_w4a4_scales(w.ws4), w.w8, w.ws8, gs)
    ref = reference.atom_gemm(a, w, gs)
    ws = torch.full((need + 64,), 0x7F, dtype=torch.uint8, device="cuda")  # stale contents
    _check_gemm(ops.w4a4_gemm(*args, config="wgmma_wide", workspace=ws), ref)
    small = ws[: need - 16]
    with pytest.raises(RuntimeError, match="unsupported configuration"):
        ops.w4a4_gemm(*args, config="wgmma_wide", workspace=small)
    _check_gemm(ops.w4a4_gemm(*args, workspace=small), ref)  # auto: the 64 x 256 kernel


# ---- W8A8 -------------------------------------------------------------------------------------
W8A8_CASES = [  # (M, K, N, static x scale, config)
    (1, 4096, 4096, False, "auto"),
    (16, 4096, 11008, False, "auto"),
    (3, 11008, 4096, True, "auto"),
    (255, 4096, 14336, False, "auto"),
    (17, 14336, 4096, False, "auto"),
    (100, 5120, 13824, True, "auto"),
    (1000, 4096, 11008, False, "auto"),
    (4097, 4096, 4096, False, "auto"),
    (1, 576, 576, False, "auto"),
    (255, 576, 1536, True, "auto"),
    (17, 1536, 576, False, "auto"),
    (100, 1040, 1032, False, "decode"),
    (100, 1040, 1032, False, "mid"),
    (100, 1040, 1032, True, "large"),
    (16, 1040, 1032, True, "skinny"),
    (7, 1040, 1032, False, "skinny"),
    (16, 1040, 1032, True, "gemv"),
    (7, 1040, 1032, False, "gemv"),
    (1, 576, 1032, False, "gemv"),
    (11, 4096, 1032, False, "gemv_k16"),
    (1, 1040, 1032, True, "gemv_k16"),
    (16, 4096, 1032, False, "gemv_k12"),
    (3, 1040, 4104, False, "gemv_k12"),
    (32, 4096, 11008, False, "gemv"),
    (19, 1040, 1032, True, "gemv"),
    (25, 576, 1536, False, "gemv_k16"),
    (32, 11008, 4104, True, "gemv_k12"),
    (5, 1040, 8, False, "auto"),  # N < 16: falls back to skinny
    # sm_90a wgmma kernels (128x256 / 128x128 tiles; skipped on other GPUs)
    (17, 4096, 4096, False, "wgmma"),
    (1000, 4096, 11008, False, "wgmma"),
    (4097, 4096, 4096, True, "wgmma"),
    (255, 576, 1536, False, "wgmma"),
    (64, 4112, 1032, False, "wgmma"),
    (1, 1040, 1032, False, "wgmma"),
    (17, 1536, 576, True, "wgmma_n128"),
    (1000, 1040, 1032, False, "wgmma_n128"),
    (130, 11008, 4096, False, "wgmma_n128"),
    (4097, 4096, 11008, False, "wgmma_n128"),
    (33, 11008, 4096, False, "wgmma_n64"),
    (200, 1040, 1032, True, "wgmma_n64"),
    (64, 4096, 4096, False, "wgmma_n32"),
    (17, 576, 1536, False, "wgmma_n32"),
    (1000, 1040, 1032, False, "wgmma_n32"),
    # 128x96 tile: N not a multiple of 96 (1032, 4104), several M-tiles, ragged M
    (32, 4096, 11008, False, "wgmma_n96"),
    (200, 1040, 1032, True, "wgmma_n96"),
    (1000, 576, 1536, False, "wgmma_n96"),
    (4097, 4096, 4104, False, "wgmma_n96"),
    (32, 4096, 11008, True, "auto"),  # auto takes 128x96 here (one wave of 115 tiles)
    # split-K over thread-block clusters (DSMEM reduction): ragged M (one or both consumer
    # halves live, several M-tiles), N not a multiple of the tile, K with fewer k-blocks than
    # CTAs in the cluster (K = 144: 2 k-blocks over S = 3/4), several tiles per cluster
    (32, 4096, 11008, False, "wgmma_sk"),
    (64, 11008, 4096, True, "wgmma_sk"),
    (33, 4096, 4096, False, "auto"),
    (64, 4096, 4096, False, "auto"),
    (5, 1040, 1032, False, "wgmma_sk64x2"),
    (100, 1040, 1032, False, "wgmma_sk64x3"),
    (300, 4112, 4104, False, "wgmma_sk64x4"),
    (64, 144, 1032, True, "wgmma_sk64x4"),
    (17, 4096, 4096, False, "wgmma_sk32x2"),
    (129, 1040, 1032, True, "wgmma_sk32x3"),
    (64, 144, 576, False, "wgmma_sk32x3"),
    (64, 11008, 4096, False, "wgmma_sk32x4"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n,static,config", W8A8_CASES)
def test_w8a8_gemm(cuda_lib, m, k, n, static, config) -> None:
    _skip_unless_hopper(config)
    g = _gen((m, k, n, static, config))
    xq = _rand_i8((m, k), -127, 127, g)
    wq = _rand_i8((n, k), -127, 127, g)
    xs = torch.rand((1,) if static else (m,), generator=g, device="cuda") * 0.01 + 1e-4
    ws = torch.rand((n,), generator=g, device="cuda") * 0.01 + 1e-4
    out = torch.full((m, n), float("nan"), dtype=torch.float16, device="cuda")
    y = ops.w8a8_gemm(xq, xs, wq, ws, out=out, config=config)
    _check_gemm(y, reference.w8a8_gemm(xq, xs, wq, ws))


# ---- quantizers -------------------------------------------------------------------------------
def _activation(m: int, k: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    x = torch.randn((m, k), generator=g, device="cuda")
    big = torch.randperm(k, generator=g, device="cuda")[: max(1, k // 64)]
    x[:, big] *= 20.0  # a few outlier channels, as in real LLM activations
    return x.to(dtype)


def _perm(x: torch.Tensor, ko: int) -> torch.Tensor:
    imp = x.float().pow(2).mean(0).cpu()
    return packing.outliers_last_permutation(imp, ko).cuda()


def _poisoned_atom(m: int, k: int, ko: int, gs: int) -> AtomActivation:
    kn = k - ko
    return AtomActivation(
        torch.full((m, kn // 2), 0x55, dtype=torch.int8, device="cuda"),
        torch.full((m, kn // gs), float("nan"), dtype=torch.float16, device="cuda"),
        torch.full((m, ko), 0x55, dtype=torch.int8, device="cuda"),
        torch.full((m,), float("nan"), dtype=torch.float16, device="cuda"),
    )


def _check_codes(q: torch.Tensor, ref: torch.Tensor, what: str, exact: bool) -> None:
    d = (q.to(torch.int16) - ref.to(torch.int16)).abs()
    if exact:
        assert int(d.max()) == 0 if d.numel() else True, f"{what}: codes differ"
        return
    assert d.numel() == 0 or int(d.max()) <= 1, f"{what}: a code differs by {int(d.max())}"
    frac = (d != 0).float().mean().item() if d.numel() else 0.0
    assert frac <= Q_MAX_MISMATCH, f"{what}: {frac:.2e} of codes off by one"


def _check_scales(s: torch.Tensor, ref: torch.Tensor, what: str, exact: bool) -> None:
    assert torch.isfinite(s).all(), f"{what}: NaN/inf (unwritten?)"
    if exact:
        assert torch.equal(s, ref), f"{what}: scales differ"
        return
    rel = ((s.float() - ref.float()).abs() / ref.float().abs().clamp_min(1e-30)).max().item()
    assert rel <= SCALE_REL_TOL, f"{what}: scale relative difference {rel:.2e}"


def _check_atom(out: AtomActivation, ref: AtomActivation, exact: bool) -> None:
    _check_codes(packing.unpack_int4(out.x4), packing.unpack_int4(ref.x4), "x4", exact)
    _check_codes(out.x8, ref.x8, "x8", exact)
    _check_scales(out.xs4, ref.xs4, "xs4", exact)
    _check_scales(out.xs8, ref.xs8, "xs8", exact)


ATOM_Q_CASES = [  # (M, K, K_o, G, dtype, eps, clip, use perm)
    (1, 4096, 128, 128, torch.float16, 1e-5, 0.9, True),
    (17, 4096, 128, 128, torch.bfloat16, 1e-6, 1.0, True),
    (1000, 5120, 128, 128, torch.float16, 1e-5, 0.85, True),
    (255, 11008, 128, 128, torch.float16, 1e-5, 0.9, False),
    (3, 14336, 256, 64, torch.bfloat16, 1e-5, 0.9, True),
    (4097, 576, 192, 128, torch.float16, 1e-5, 0.9, True),
    (100, 576, 64, 64, torch.float16, 1e-6, 1.0, True),
    (16, 1536, 0, 128, torch.float16, 1e-5, 0.9, False),
    (5, 20480, 128, 128, torch.float16, 1e-5, 0.9, True),  # K > 16384: the general kernel
    # Which kernel (H100, 132 SMs): the set-up-once kernel's bandwidth plans from 3/4 of a row per
    # row group (K = 4096: M >= 792, 512-thread CTAs; K = 11008: M >= 297, 1024-thread CTAs), its
    # latency plan below that where K <= 4096 (M = 1 / 17 / 16 above), the general kernel for the
    # rest (K = 11008 M = 255, K = 14336 / 20480, K_o > 128)
    (4500, 4096, 128, 128, torch.float16, 1e-5, 0.9, True),
    (2200, 4096, 128, 64, torch.bfloat16, 1e-6, 1.0, True),
    (1500, 11008, 128, 128, torch.float16, 1e-5, 0.9, True),
    # K > 4096 (13B / 70B hidden sizes) on the H100: K = 8192 CPT 4 (row groups of 256 threads);
    # K = 5120 from M = 792 CPT 5 (eight groups of 128 threads per 1024-thread CTA)
    (1600, 5120, 128, 128, torch.float16, 1e-5, 0.9, True),
    (1100, 8192, 128, 128, torch.bfloat16, 1e-6, 1.0, True),
    (2300, 5120, 128, 128, torch.bfloat16, 1e-5, 0.9, True),
    (2150, 5120, 128, 64, torch.float16, 1e-6, 1.0, True),
]


def _ref_atom_no_outliers(x, gamma, eps, gs, clip) -> AtomActivation:
    # reference.atom_quantize_activation raises for n_outliers = 0 (it builds a group of size 0);
    # the same math for the normal part, and scale 0 for the empty outlier group.
    q4, s4 = reference.quantize_symmetric(reference.rms_norm(x, gamma, eps), reference.INT4_MAX,
                                          gs, clip, torch.float16)
    m = x.shape[0]
    return AtomActivation(packing.pack_int4(q4), s4, torch.zeros((m, 0), dtype=torch.int8,
                          device=x.device), torch.zeros(m, dtype=torch.float16, device=x.device))


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,ko,gs,dtype,eps,clip,use_perm", ATOM_Q_CASES)
def test_atom_rmsnorm_quantize(cuda_lib, m, k, ko, gs, dtype, eps, clip, use_perm) -> None:
    g = _gen((m, k, ko, gs, str(dtype), eps, clip, use_perm))
    x = _activation(m, k, dtype, g)
    perm = _perm(x, ko) if use_perm else None
    gamma = (torch.rand(k, generator=g, device="cuda") + 0.5).to(dtype)
    gamma_p = gamma[perm.long()] if use_perm else gamma
    ref_perm = perm if use_perm else torch.arange(k, dtype=torch.int32, device="cuda")
    out = ops.atom_rmsnorm_quantize(x, gamma_p, perm, eps, ko, gs, clip,
                                    out=_poisoned_atom(m, k, ko, gs))
    if ko == 0 and not use_perm:
        ref = _ref_atom_no_outliers(x, gamma_p, eps, gs, clip)
    else:
        ref = reference.atom_rmsnorm_quantize(x, gamma_p, ref_perm, eps, ko, gs, clip)
    _check_atom(out, ref, exact=False)


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,ko,gs,dtype,use_perm", [
    (1, 4096, 128, 128, torch.float16, True),  # set-up-once kernel, latency plan (CPT 2)
    (1000, 11008, 128, 128, torch.float16, True),
    (17, 4112, 16, 64, torch.bfloat16, False),  # general kernel (K / 8 > 512)
    (255, 1536, 128, 128, torch.bfloat16, True),  # latency plan (CPT 1)
    (4500, 4096, 128, 128, torch.float16, True),  # set-up-once kernel, 512-thread CTAs
    (2100, 11008, 128, 128, torch.bfloat16, True),  # set-up-once kernel, 1024-thread CTAs
    (1100, 8192, 128, 128, torch.float16, True),  # CPT 4, 1024-thread CTAs
    (2300, 5120, 128, 128, torch.float16, True),  # CPT 5, 1024-thread CTAs
])
def test_atom_reorder_quantize(cuda_lib, m, k, ko, gs, dtype, use_perm) -> None:
    g = _gen((m, k, ko, gs, str(dtype), use_perm))
    x = _activation(m, k, dtype, g)
    perm = _perm(x, ko) if use_perm else None
    out = ops.atom_reorder_quantize(x, perm, ko, gs, 0.9, out=_poisoned_atom(m, k, ko, gs))
    ref = reference.atom_reorder_quantize(x, perm, ko, gs, 0.9)
    _check_atom(out, ref, exact=True)


@pytest.mark.gpu
@pytest.mark.parametrize("m,k", [(2200, 4096), (2300, 5120), (1500, 11008), (17, 4096),
                                 (17, 11008)])
def test_atom_quantize_zero_groups(cuda_lib, m, k) -> None:
    # Groups whose values are all zero get scale 0 and codes 0 (the set-up-once kernel takes
    # inv = 0 there instead of a branch; all but K = 11008 M = 17, the general kernel, reach it):
    # the first int4 group of every row, one whole row, and the outlier group of another row.
    ko, gs = 128, 128
    g = _gen((m, k, "zero-groups"))
    x = _activation(m, k, torch.float16, g)
    perm = _perm(x, ko)
    x[:, perm[:gs].long()] = 0.0  # reordered channels 0..127: int4 group 0 of every row
    x[5] = 0.0
    x[9, perm[k - ko:].long()] = 0.0  # row 9's outlier group
    gamma = (torch.rand(k, generator=g, device="cuda") + 0.5).half()
    out = ops.atom_reorder_quantize(x, perm, ko, gs, 0.9, out=_poisoned_atom(m, k, ko, gs))
    _check_atom(out, reference.atom_reorder_quantize(x, perm, ko, gs, 0.9), exact=True)
    assert (out.xs4[:, 0] == 0).all() and (out.xs4[5] == 0).all() and out.xs8[9] == 0
    assert (packing.unpack_int4(out.x4)[:, :gs] == 0).all() and (out.x8[9] == 0).all()
    out = ops.atom_rmsnorm_quantize(x, gamma, perm, 1e-5, ko, gs, 0.9,
                                    out=_poisoned_atom(m, k, ko, gs))
    _check_atom(out, reference.atom_rmsnorm_quantize(x, gamma, perm, 1e-5, ko, gs, 0.9),
                exact=False)
    assert (out.xs4[:, 0] == 0).all() and (out.xs4[5] == 0).all() and out.xs8[9] == 0


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,dtype,static", [
    (1, 4096, torch.float16, False),
    (17, 5120, torch.bfloat16, False),
    (1000, 4096, torch.float16, True),
    (4097, 576, torch.float16, False),
    (255, 11008, torch.float16, False),
    (3, 14336, torch.bfloat16, True),
])
def test_rmsnorm_quantize_int8(cuda_lib, m, k, dtype, static) -> None:
    g = _gen((m, k, str(dtype), static))
    x = _activation(m, k, dtype, g)
    gamma = (torch.rand(k, generator=g, device="cuda") + 0.5).to(dtype)
    scale = torch.tensor([0.05], device="cuda") if static else None
    q_out = torch.full((m, k), 0x55, dtype=torch.int8, device="cuda")
    s_out = torch.full((m,), float("nan"), device="cuda")
    q, s = ops.rmsnorm_quantize_int8(x, gamma, 1e-5, scale, out=(q_out, s_out))
    rq, rs = reference.rmsnorm_quantize_int8(x, gamma, 1e-5, scale)
    _check_codes(q, rq, "q", exact=False)
    if static:
        assert s.data_ptr() == scale.data_ptr()
    else:
        assert torch.isfinite(s).all()
        rel = ((s - rs).abs() / rs.abs()).max().item()
        assert rel <= 1e-5, f"per-token scale relative difference {rel:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,dtype,static", [
    (1, 4096, torch.float16, False),
    (33, 576, torch.float16, True),
    (1000, 11008, torch.bfloat16, False),
])
def test_quantize_int8_without_norm(cuda_lib, m, k, dtype, static) -> None:
    # gamma None: the SmoothQuant dense / proj input quantize (no RMSNorm)
    g = _gen((m, k, str(dtype), static, "nonorm"))
    x = _activation(m, k, dtype, g)
    scale = torch.tensor([0.05], device="cuda") if static else None
    q_out = torch.full((m, k), 0x55, dtype=torch.int8, device="cuda")
    s_out = torch.full((m,), float("nan"), device="cuda")
    q, s = ops.rmsnorm_quantize_int8(x, None, 1e-5, scale, out=(q_out, s_out))
    if static:
        rq = reference.quantize_static_int8(x, scale)
    else:
        rq, rs = reference.quantize_per_token_int8(x)
        rel = ((s - rs).abs() / rs.abs()).max().item()
        assert rel <= 1e-5, f"per-token scale relative difference {rel:.2e}"
    _check_codes(q, rq, "q", exact=True)  # h = x exactly: nothing to round differently


# ---- CUDA graph capture -----------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_graph_capture(cuda_lib) -> None:
    g = _gen(7)
    m, k, n, ko, gs = 16, 4096, 4096, 128, 128
    x = _activation(m, k, torch.float16, g)
    gamma = (torch.rand(k, generator=g, device="cuda") + 0.5).half()
    perm = _perm(x, ko)
    w = AtomWeight(_rand_i8((n, (k - ko) // 2), -128, 127, g), _rand_scale((n, (k - ko) // gs), g),
                   _rand_i8((n, ko), -127, 127, g), _rand_scale((n,), g))
    ws4t = packing.pack_w4a4_scales(w.ws4)

    def step():
        a = ops.atom_rmsnorm_quantize(x, gamma, perm, 1e-5, ko, gs, 0.9)
        return ops.w4a4_gemm(*a, w.w4, ws4t, w.w8, w.ws8, gs)

    eager = step()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm-up on the side stream, as torch's graph docs ask
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = step()
    y.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, eager)



@pytest.mark.gpu
@pytest.mark.parametrize("mode,m,const", [("w4a4", 1, False), ("w4a4", 1, True), ("w4a4", 16, True),
                                          ("w8a8", 1, False), ("w8a8", 16, False)])
def test_decode_gemm_waits_for_the_quantize_before_it(cuda_lib, mode, m, const) -> None:
    # On sm_90 the decode gemv is a programmatic dependent of the kernel before it and the
    # quantize kernels trigger at their start: queued back to back with every quantize rewriting
    # the SAME activation buffers, each product must still see its own step's activations (with
    # weights_constant, W4A4 at M <= 8 loads its first weights before the wait, never activations)
    g = _gen((mode, m, 11))
    k, n, ko, gs, steps = 4096, 4096, 128, 128, 6
    xs = [_activation(m, k, torch.float16, g) for _ in range(steps)]
    gamma = (torch.rand(k, generator=g, device="cuda") + 0.5).half()
    if mode == "w4a4":
        perm = _perm(xs[0], ko)
        w = AtomWeight(_rand_i8((n, (k - ko) // 2), -128, 127, g),
                       _rand_scale((n, (k - ko) // gs), g), _rand_i8((n, ko), -127, 127, g),
                       _rand_scale((n,), g))
        ws4t = packing.pack_w4a4_scales(w.ws4)
        buf = _poisoned_atom(m, k, ko, gs)

        def step(x, out=None, act=None):
            a = ops.atom_rmsnorm_quantize(x, gamma, perm, 1e-5, ko, gs, 0.9, out=act)
            return ops.w4a4_gemm(*a, w.w4, ws4t, w.w8, w.ws8, gs, out=out, weights_constant=const)
    else:
        wq, ws = _rand_i8((n, k), -127, 127, g), torch.rand(n, generator=g, device="cuda")
        buf = (torch.empty(m, k, dtype=torch.int8, device="cuda"),
               torch.empty(m, dtype=torch.float32, device="cuda"))

        def step(x, out=None, act=None):
            return ops.w8a8_gemm(*ops.rmsnorm_quantize_int8(x, gamma, 1e-5, out=act), wq, ws,
                                 out=out)

    ref = []
    for x in xs:  # one step at a time, synchronized
        ref.append(step(x))
        torch.cuda.synchronize()
    ys = [torch.full((m, n), float("nan"), dtype=torch.float16, device="cuda") for _ in xs]

    def chain():  # back to back on one stream, shared activation buffers
        for x, y in zip(xs, ys):
            step(x, out=y, act=buf)

    # captured in a CUDA graph, as served: launched eagerly, Python's launch overhead alone would
    # let each quantize finish before its GEMM is even queued
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        chain()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain()
    for y in ys:
        y.fill_(float("nan"))
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    for i, (y, r) in enumerate(zip(ys, ref)):
        assert torch.equal(y, r), f"step {i}: the GEMM read activations of another step"

def _xor_words(t: torch.Tensor) -> int:
    """XOR of all 32-bit words of an int32 tensor (halving folds on the CPU)."""
    t = t.flatten().cpu()
    while t.numel() > 1:
        if t.numel() % 2:
            t = torch.cat([t, t.new_zeros(1)])
        t = t[0::2] ^ t[1::2]
    return int(t[0]) & 0xFFFFFFFF


@pytest.mark.gpu
@pytest.mark.parametrize("nbytes,ctas_per_sm,unroll,sink_len", [
    (16, 2, 4, None), (4096 + 16, 1, 2, None), (23_949_312, 2, 4, None), (23_949_312, 8, 8, None),
    (1 << 20, 2, 8, 3)])
def test_stream_read_reads_every_word(cuda_lib, nbytes, ctas_per_sm, unroll, sink_len) -> None:
    # the floor kernel of bench_gemm must really read every byte: the XOR of its per-CTA folds
    # equals the XOR of all 32-bit words (one flipped bit anywhere changes it)
    g = _gen((nbytes, ctas_per_sm, unroll))
    src = torch.randint(-2**31, 2**31 - 1, (nbytes // 4,), generator=g, device="cuda",
                        dtype=torch.int32)
    want = _xor_words(src)
    sink = None if sink_len is None else torch.full((sink_len,), 7, dtype=torch.int32,
                                                    device="cuda")
    got = ops.stream_read(src, ctas_per_sm=ctas_per_sm, unroll=unroll, sink=sink)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert got.numel() == min(ctas_per_sm * sms, sink_len or ctas_per_sm * sms)
    assert _xor_words(got) == want
    src.view(torch.uint8)[nbytes // 2] ^= 1
    got = ops.stream_read(src, ctas_per_sm=ctas_per_sm, unroll=unroll, sink=sink)
    assert _xor_words(got) != want


# ---- CPU-side checks (no GPU, no library needed) ----------------------------------------------
def test_import_does_not_load_library() -> None:
    code = "import lowbit.ops, lowbit.library as l; print(l._lib is None)"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(__import__("pathlib").Path(library.__file__).parents[1])]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       check=True)
    assert r.stdout.strip() == "True"


def test_missing_library_error_names_paths(monkeypatch, tmp_path) -> None:
    missing = [tmp_path / "a" / library.LIB_NAME, tmp_path / "b" / library.LIB_NAME]
    monkeypatch.setattr(library, "_lib", None)
    monkeypatch.setattr(library, "candidate_paths", lambda: missing)
    with pytest.raises(library.LibraryNotFoundError) as e:
        library.load()
    for p in missing:
        assert str(p) in str(e.value)


def test_env_var_is_searched_first(monkeypatch) -> None:
    monkeypatch.setenv(library.ENV_VAR, "/some/where/liblowbit_kernels.so")
    paths = library.candidate_paths()
    assert str(paths[0]) == "/some/where/liblowbit_kernels.so"
    assert paths[1].parts[-2:] == ("build", library.LIB_NAME)


def test_validation_errors_on_cpu_tensors() -> None:
    x4 = torch.zeros(4, 64, dtype=torch.int8)
    with pytest.raises(ValueError, match="CUDA"):
        ops.w4a4_gemm(x4, torch.zeros(4, 1, dtype=torch.float16),
                      torch.zeros(4, 0, dtype=torch.int8),
                      torch.zeros(4, dtype=torch.float16), torch.zeros(8, 64, dtype=torch.int8),
                      torch.zeros(1, 8, dtype=torch.float16), torch.zeros(8, 0, dtype=torch.int8),
                      torch.zeros(8, dtype=torch.float16))
    with pytest.raises(ValueError, match="multiple of 128"):
        ops.w4a4_gemm(torch.zeros(4, 32, dtype=torch.int8), torch.zeros(4, 1),
                      torch.zeros(4, 0, dtype=torch.int8), torch.zeros(4),
                      torch.zeros(8, 32, dtype=torch.int8), torch.zeros(1, 8),
                      torch.zeros(8, 0, dtype=torch.int8), torch.zeros(8))
    with pytest.raises(ValueError, match="multiple of 16"):
        ops.w8a8_gemm(torch.zeros(4, 40, dtype=torch.int8), torch.zeros(4),
                      torch.zeros(8, 40, dtype=torch.int8), torch.zeros(8))
    with pytest.raises(ValueError, match="CUDA"):
        ops.rmsnorm_quantize_int8(torch.zeros(4, 64), torch.zeros(64), 1e-5)
    with pytest.raises(ValueError, match="contiguous CUDA tensor"):
        ops.stream_read(torch.zeros(16))
