"""python_tests/test_cuda.py's checks, run on the emulated CUDA kernels.

Under SSLEXT_EMULATED=1 the sslext ops on CPU tensors run csrc/cuda/*.cu
(compiled as host C++) through the same host code and Python layer as the real
CUDA build, every launch under the emulator's synccheck, racecheck, memcheck
and launch checks: any finding raises, so every test here also asserts a clean
sanitizer run. Tolerances are test_cuda.py's.
"""

import pytest
import torch
from cases import CASE_IDS, CASES
from parity_cases import RTOL, case_id, matrix, run
from test_losses import make_views

import sslext
from sslext import ops
from sslext import reference as R

EMU = torch.ops.sslext_emu
MATRIX = matrix()


@pytest.mark.parametrize("m", MATRIX, ids=[case_id(*m) for m in MATRIX])
def test_emulated_matches_cpu(m, cpu_results):
    """CPU/CUDA parity: loss, both gradients and the in-place running covariance."""
    case, strategy, shape, dtype = m
    emu = run(*m)
    cpu = cpu_results[case_id(*m)]
    rtol = RTOL[dtype]
    torch.testing.assert_close(emu[0], cpu[0], rtol=rtol, atol=rtol * abs(cpu[0].item()))
    for g_emu, g_cpu in zip(emu[1:3], cpu[1:3]):
        scale = g_cpu.abs().max().item()
        torch.testing.assert_close(g_emu.double(), g_cpu.double(), rtol=rtol, atol=rtol * scale)
    if len(cpu) > 3:
        torch.testing.assert_close(emu[3], cpu[3], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("shape", [(37, 1030), (1030, 37), (5, 1)], ids=["37x1030", "1030x37", "5x1"])
def test_emulated_matches_float64_reference(case, shape):
    """float64 through the emulated kernels against the plain-PyTorch reference."""
    z_a, z_b = make_views(*shape, dtype=torch.float64, seed=11)
    c = case.make_cov(shape[1])
    c = c.double() if c is not None else None
    strategy = "covariance" if (2 * shape[0] if case.kind == "vicreg_tico" else shape[0]) >= shape[1] else "gram"
    a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    loss, _ = case.run_ours(a, b, strategy, c.clone() if c is not None else None)
    loss.backward()
    ra, rb = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    ref, _ = case.run_ref(ra, rb, c.clone() if c is not None else None)
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-12, atol=0)
    for g, r in ((a.grad, ra.grad), (b.grad, rb.grad)):
        # D = 1 TiCo: unit rows, the exact gradient is 0 and both sides are
        # float64 rounding noise (~1e-15); hence the absolute floor of 1e-12.
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12 * max(r.abs().max().item(), 1.0))


def _twice_with_two_block_orders(fn):
    """fn() under two block-order seeds; restores the session's seed."""
    seed = EMU.seed()
    try:
        EMU.set_seed(seed + 1)
        first = fn()
        EMU.set_seed(seed + 2)
        second = fn()
    finally:
        EMU.set_seed(seed)
    return first, second


DET_SHAPES = [(300, 700), (1030, 37)]
DET_PARAMS = [
    (case, strategy, shape)
    for case in CASES
    for strategy in ("gram", "covariance")
    for shape in DET_SHAPES
    if strategy == "covariance" or (2 * shape[0] if case.kind == "vicreg_tico" else shape[0]) < shape[1]
]


@pytest.mark.parametrize(
    "case,strategy,shape", DET_PARAMS, ids=[f"{c.name}-{s}-{n}x{d}" for c, s, (n, d) in DET_PARAMS]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_emulated_deterministic_every_path(case, strategy, shape, dtype):
    """Bitwise-identical loss, gradients and running covariance under two block orders."""
    z_a, z_b = make_views(*shape, dtype=dtype, seed=3)
    c0 = case.make_cov(shape[1])

    def once():
        c = c0.clone() if c0 is not None else None
        a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
        loss, _ = case.run_ours(a, b, strategy, c)
        loss.backward()
        return [loss.detach(), a.grad, b.grad] + ([c] if c is not None else [])

    first, second = _twice_with_two_block_orders(once)
    for x, y in zip(first, second):
        assert torch.equal(x, y)


def test_emulated_low_level_ops_deterministic():
    """Forward and backward of every low-level op, bitwise identical under two block orders."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1030, 257, generator=g) * 3 + 1
    zb = torch.randn(1030, 257, generator=g)
    w = torch.randn(257, 257, generator=g)

    def once():
        za, zb_ = z.clone().requires_grad_(), zb.clone().requires_grad_()
        cov = ops.batch_covariance(za)
        cc = ops.cross_correlation(za, zb_)
        m = cc.detach().clone().requires_grad_()
        pen = ops.off_diagonal_penalty(m, 0.0051, 1.0)
        ((cov * w).sum() + (cc * w).sum() + pen).backward()
        c = torch.eye(257)
        ops.tico_ema_update_(c, z, 0.9)
        return [cov.detach(), cc.detach(), pen.detach(), za.grad, zb_.grad, m.grad, c]

    first, second = _twice_with_two_block_orders(once)
    for x, y in zip(first, second):
        assert torch.equal(x, y)


def test_emulated_low_level_ops_match_reference():
    z = torch.randn(77, 130, dtype=torch.float64) * 2 + 1
    torch.testing.assert_close(ops.batch_covariance(z), torch.cov(z.T))
    zc = z - z.mean(0)
    za = zc / torch.sqrt(zc.pow(2).mean(0) + 1e-5)
    zf = z.flip(0)
    zfc = zf - zf.mean(0)
    zb = zfc / torch.sqrt(zfc.pow(2).mean(0) + 1e-5)
    torch.testing.assert_close(ops.cross_correlation(z, zf), za.T @ zb / 77)
    m = torch.randn(1000, 1000, dtype=torch.float64)
    off = m.pow(2).sum() - m.diagonal().pow(2).sum()
    expected = 0.3 * off + (m.diagonal() - 1.0).pow(2).sum()
    torch.testing.assert_close(ops.off_diagonal_penalty(m, 0.3, 1.0), expected, rtol=1e-12, atol=0)
    c = torch.eye(130)
    ops.tico_ema_update_(c, z.float(), 0.8)
    expected = 0.8 * torch.eye(130, dtype=torch.float64) + 0.2 * z.T @ z / 77
    torch.testing.assert_close(c, expected.float(), rtol=1e-5, atol=1e-5)


def test_emulated_opcheck():
    from test_ops import _opcheck_samples

    for op, args in _opcheck_samples("cpu"):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("layout", ["transposed", "stride0", "sliced"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_emulated_non_contiguous_inputs(case, layout):
    """Transposed, stride-0 (expand) and strided-slice inputs, against the reference on copies."""
    z_a, z_b = make_views(40, 70, dtype=torch.float64, seed=2)
    if layout == "transposed":
        x, y = z_a.T.contiguous().T, z_b.T.contiguous().T
    elif layout == "stride0":
        x, y = z_a[:, :1].expand(40, 70), z_b
    else:
        x, y = torch.cat([z_a, z_a], 1)[:, ::2], torch.cat([z_b, z_b], 1)[:, 1::2]
    c = case.make_cov(70)
    c = c.double() if c is not None else None
    loss, _ = case.run_ours(x, y, "covariance", c.clone() if c is not None else None)
    ref, _ = case.run_ref(x.contiguous(), y.contiguous(), c.clone() if c is not None else None)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)


def test_emulated_sanitize_ops_workload():
    """benchmarks/sanitize_ops.py, the compute-sanitizer workload, on the emulated kernels."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "sanitize_ops.py"
    spec = importlib.util.spec_from_file_location("sanitize_ops", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--device", "cpu"]) == 0


def test_emulated_vicreg_grad_grid_stride():
    """numel past kMaxBlocks * kThreads = 2^21: vicreg_grad_kernel loops, tracking its
    column incrementally (col += stride mod D); a wrong wrap would misplace terms."""
    n, d = 2100, 1001  # 2,102,100 elements: every thread of the first 10,100 loops twice
    z_a, z_b = make_views(n, d, dtype=torch.float64, seed=4)
    a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    sslext.functional.vicreg_loss(a, b, strategy="covariance").backward()
    ra, rb = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    R.vicreg_reference(ra, rb)[0].backward()
    for g, r in ((a.grad, ra.grad), (b.grad, rb.grad)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12 * r.abs().max().item())


def test_emulated_column_split_cap():
    """N > 16384: 128 row splits (the cap) of 157 rows, the last one short."""
    n, d = 20000, 3
    z_a, z_b = make_views(n, d, dtype=torch.float64, seed=6)
    a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    sslext.functional.barlow_twins_loss(a, b, strategy="covariance").backward()
    ra, rb = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    R.barlow_twins_reference(ra, rb)[0].backward()
    for g, r in ((a.grad, ra.grad), (b.grad, rb.grad)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12 * r.abs().max().item())
