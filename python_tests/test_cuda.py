"""CUDA kernels: parity with the CPU kernels and the float64 reference, determinism.

Marked ``cuda``: skipped on machines without a GPU (or without CUDA kernels
compiled in); benchmarks/gpu_check.sh runs them under compute-sanitizer.
"""

import pytest
import torch
from cases import CASE_IDS, CASES
from test_losses import make_views

import sslext
from sslext import ops

pytestmark = pytest.mark.cuda

SHAPES = [(2, 8), (64, 256), (256, 64), (100, 100), (37, 1030), (1030, 37)]


def _run(case, z_a, z_b, strategy, c):
    a = z_a.clone().requires_grad_()
    b = z_b.clone().requires_grad_()
    loss, terms = case.run_ours(a, b, strategy, c)
    loss.backward()
    return loss.detach(), a.grad, b.grad


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("strategy", ["gram", "covariance"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{d}" for n, d in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_matches_cpu(case, strategy, shape, dtype):
    # TF32 would change the GEMMs, not our kernels: compare like with like.
    torch.backends.cuda.matmul.allow_tf32 = False
    z_a, z_b = make_views(*shape, dtype=dtype, seed=7)
    c = case.make_cov(shape[1])
    c_cpu = c.clone() if c is not None else None
    c_gpu = c.clone().cuda() if c is not None else None
    cpu = _run(case, z_a, z_b, strategy, c_cpu)
    gpu = _run(case, z_a.cuda(), z_b.cuda(), strategy, c_gpu)
    rtol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=rtol, atol=rtol * abs(cpu[0].item()))
    for g_gpu, g_cpu in zip(gpu[1:], cpu[1:]):
        scale = g_cpu.abs().max().item()
        torch.testing.assert_close(g_gpu.cpu().double(), g_cpu.double(), rtol=rtol, atol=rtol * scale)
    if c is not None:
        torch.testing.assert_close(c_gpu.cpu(), c_cpu, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cuda_deterministic(case):
    z_a, z_b = make_views(300, 700, seed=1, device="cuda")
    c = case.make_cov(700, "cuda")
    first = _run(case, z_a, z_b, "auto", c.clone() if c is not None else None)
    for _ in range(3):
        again = _run(case, z_a, z_b, "auto", c.clone() if c is not None else None)
        for x, y in zip(first, again):
            assert torch.equal(x, y)


DET_SHAPES = [(300, 700), (1030, 37)]
DET_PARAMS = [
    (case, strategy, shape)
    for case in CASES
    for strategy in ("gram", "covariance")
    for shape in DET_SHAPES
    # the Gram path is for N < D (2N < D for VICReg-TiCo); forcing it beyond only warns
    if strategy == "covariance" or (2 * shape[0] if case.kind == "vicreg_tico" else shape[0]) < shape[1]
]


@pytest.mark.parametrize(
    "case,strategy,shape", DET_PARAMS, ids=[f"{c.name}-{s}-{n}x{d}" for c, s, (n, d) in DET_PARAMS]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_deterministic_every_path(case, strategy, shape, dtype):
    """Bitwise-identical loss, gradients and updated running covariance on every repeat."""
    z_a, z_b = make_views(*shape, dtype=dtype, seed=3, device="cuda")
    c0 = case.make_cov(shape[1], "cuda")

    def once():
        c = c0.clone() if c0 is not None else None
        out = _run(case, z_a, z_b, strategy, c)
        return out + ((c,) if c is not None else ())

    first = once()
    for _ in range(2):
        for x, y in zip(first, once()):
            assert torch.equal(x, y)


def test_cuda_low_level_ops_deterministic():
    """Forward and backward of every low-level op, bitwise identical on every repeat."""
    g = torch.Generator().manual_seed(5)
    z = (torch.randn(1030, 257, generator=g) * 3 + 1).cuda()
    zb = torch.randn(1030, 257, generator=g).cuda()
    w = torch.randn(257, 257, generator=g).cuda()

    def once():
        za, zb_ = z.clone().requires_grad_(), zb.clone().requires_grad_()
        cov = ops.batch_covariance(za)
        cc = ops.cross_correlation(za, zb_)
        m = cc.detach().clone().requires_grad_()
        pen = ops.off_diagonal_penalty(m, 0.0051, 1.0)
        ((cov * w).sum() + (cc * w).sum() + pen).backward()
        c = torch.eye(257, device="cuda")
        ops.tico_ema_update_(c, z, 0.9)
        return [cov.detach(), cc.detach(), pen.detach(), za.grad, zb_.grad, m.grad, c]

    first = once()
    for _ in range(3):
        for x, y in zip(first, once()):
            assert torch.equal(x, y)


def test_cuda_low_level_ops_match_cpu():
    z = torch.randn(77, 130, dtype=torch.float64) * 2 + 1
    torch.testing.assert_close(ops.batch_covariance(z.cuda()).cpu(), ops.batch_covariance(z))
    torch.testing.assert_close(
        ops.cross_correlation(z.cuda(), z.cuda().flip(0)).cpu(), ops.cross_correlation(z, z.flip(0))
    )
    m = torch.randn(1000, 1000, dtype=torch.float64)
    torch.testing.assert_close(
        ops.off_diagonal_penalty(m.cuda(), 0.3, 1.0).cpu(), ops.off_diagonal_penalty(m, 0.3, 1.0)
    )
    c_cpu = torch.eye(130)
    c_gpu = c_cpu.cuda()
    ops.tico_ema_update_(c_cpu, z.float(), 0.8)
    ops.tico_ema_update_(c_gpu, z.float().cuda(), 0.8)
    torch.testing.assert_close(c_gpu.cpu(), c_cpu, rtol=1e-5, atol=1e-5)


def test_cuda_opcheck():
    from test_ops import _opcheck_samples

    for op, args in _opcheck_samples("cuda"):
        torch.library.opcheck(op, args)


def test_cuda_compiled_loss():
    torch._dynamo.reset()
    loss_fn = sslext.VICRegTiCoLoss(dim=256).cuda()
    compiled = torch.compile(sslext.VICRegTiCoLoss(dim=256).cuda(), fullgraph=True)
    z_a, z_b = make_views(64, 256, device="cuda")
    torch.testing.assert_close(compiled(z_a, z_b), loss_fn(z_a, z_b), rtol=1e-5, atol=1e-6)


def test_cuda_autocast_bf16():
    """Under autocast the projector emits bf16; the loss accumulates in float32."""
    proj = torch.nn.Linear(64, 512).cuda()
    x_a, x_b = torch.randn(128, 64, device="cuda"), torch.randn(128, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        z_a, z_b = proj(x_a), proj(x_b)
        loss = sslext.functional.vicreg_loss(z_a, z_b)
    assert z_a.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(proj.weight.grad).all()
