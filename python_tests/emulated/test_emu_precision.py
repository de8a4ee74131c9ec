"""Regression tests for the places where the CUDA kernels computed something
other than their CPU twins (issue 10), run on the emulated kernels one by one
(torch.ops.sslext_emu.* call csrc/cuda's entry points directly)."""

import torch

import sslext.functional as F
from sslext import ops
from sslext import reference as R

EMU = torch.ops.sslext_emu


def test_row_normalize_norm_in_float64():
    """|z| ~ 1e20: the float32 sum of squares (1e40) overflowed to norm = inf, zhat = 0."""
    z = torch.tensor([[1e20], [1.0]], dtype=torch.float32)
    zhat, norms = EMU.row_normalize(z, 1e-12)
    assert torch.isfinite(norms).all(), norms
    torch.testing.assert_close(zhat, torch.ones(2, 1))
    torch.testing.assert_close(norms, torch.tensor([1e20, 1.0]))


def test_tico_loss_with_a_huge_row_matches_reference():
    """The same through the TiCo loss (N = 2, D = 1), forward and backward."""
    z_a = torch.tensor([[1e20], [1.0]], dtype=torch.float32)
    z_b = torch.tensor([[2.0], [-3.0]], dtype=torch.float32)
    c = torch.eye(1)
    a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    loss = F.tico_loss(a, b, c.clone(), strategy="covariance")
    loss.backward()
    ra, rb = z_a.double().requires_grad_(), z_b.double().requires_grad_()
    ref = R.tico_reference(ra, rb, c.double().clone())[0]
    ref.backward()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad.double(), rb.grad, rtol=1e-4, atol=1e-6)


def test_sum_sq_diff_squares_in_float64():
    """A difference of 2e19: its float32 square (4e38) overflowed before the float64 sum."""
    a = torch.zeros(3, 5)
    a[1, 2] = 2e19
    b = torch.zeros(3, 5)
    out = EMU.sum_sq_diff(a, b)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor(4e38, dtype=torch.float64), rtol=1e-6, atol=0)


def test_vicreg_invariance_term_with_large_differences():
    z_a = torch.zeros(2, 2)
    z_a[0, 0] = 2e19
    z_b = torch.zeros(2, 2)
    _, terms = F.vicreg_loss(z_a, z_b, strategy="covariance", return_terms=True)
    inv = (2e19) ** 2 / 4  # mean of the squared differences
    assert torch.isfinite(terms["invariance"]), terms
    torch.testing.assert_close(terms["invariance"].double(), torch.tensor(inv, dtype=torch.float64), rtol=1e-6, atol=0)


def test_offdiag_squares_in_float64():
    m = torch.zeros(3, 3)
    m[0, 1] = 2e19
    m[2, 2] = 3.0
    out = EMU.offdiag_sums(m, 1.0)
    torch.testing.assert_close(out, torch.tensor([4e38, 1.0 + 1.0 + 4.0], dtype=torch.float64), rtol=1e-6, atol=0)
    pen = ops.off_diagonal_penalty(m, 1e-3, 1.0)
    assert torch.isfinite(pen), pen


def test_dot_f64_products_in_float64():
    """Products of float32 entries formed exactly in float64: 3e19 * 3e19 = 9e38 and
    last bits that a float32 product would round away."""
    a = torch.tensor([3e19, 1.0 + 2**-20, 7.0], dtype=torch.float32)
    b = torch.tensor([3e19, 1.0 + 2**-20, 0.0], dtype=torch.float32)
    out = EMU.dot_f64(a, b)
    expected = (a.double() * b.double()).sum()
    assert torch.equal(out, expected), (out, expected)


def test_column_moments_accumulate_in_float64():
    """N = 20000 (each thread sums ~20 rows of its split, 128 splits): float32
    accumulation gave m2 relative errors of 2-3e-7 (issue 10); float64 gives the
    rounding of the float32 centered values only."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 40, generator=g) * 3 + 100
    mean, m2, centered = EMU.column_moments(z)
    zd = z.double()
    ref_mean = zd.mean(0)
    ref_m2 = (zd - ref_mean).pow(2).sum(0)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=6e-8, atol=0)
    rel = ((m2.double() - ref_m2).abs() / ref_m2).max().item()
    assert rel < 1.2e-7, rel
    cpu_m2 = ((z - mean).double().pow(2)).sum(0)  # the CPU's definition: float32 centered, float64 sum
    torch.testing.assert_close(m2.double(), cpu_m2, rtol=1.2e-7, atol=0)
