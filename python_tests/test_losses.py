"""Every fused loss, both strategies, against the float64 plain-PyTorch reference."""

import pytest
import torch
from cases import CASE_IDS, CASES
from conftest import assert_forward_close, assert_grad_close

import sslext
from sslext import reference as R
from sslext._checks import resolve_strategy

# N < D, N > D, N = 2, N = D, and odd sizes that no kernel tile divides.
SHAPES = [(16, 64), (64, 16), (2, 8), (32, 32), (37, 53)]


def make_views(n, d, dtype=torch.float32, device="cpu", seed=0):
    """Two correlated views with an offset and unequal scales, as projector outputs look."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, d, generator=g, dtype=torch.float64)
    scale = torch.rand(d, generator=g, dtype=torch.float64) * 2 + 0.2
    z_a = (shared + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)) * scale + 0.3
    z_b = (shared + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)) * scale - 0.1
    return z_a.to(device=device, dtype=dtype), z_b.to(device=device, dtype=dtype)


def _rel_err(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def _grads(fn, z_a, z_b):
    a = z_a.clone().requires_grad_()
    b = z_b.clone().requires_grad_()
    fn(a, b)[0].backward()
    return a.grad, b.grad


def run_both(case, z_a, z_b, strategy, device):
    """Our loss on (z_a, z_b) and the float64 reference on the same values."""
    c = case.make_cov(z_a.shape[1], device)
    a = z_a.clone().requires_grad_()
    b = z_b.clone().requires_grad_()
    c_ours = c.clone() if c is not None else None
    loss, terms = case.run_ours(a, b, strategy, c_ours)
    loss.backward()
    a64 = z_a.double().requires_grad_()
    b64 = z_b.double().requires_grad_()
    ref = case.ref(a64, b64, c.double()) if c is not None else case.ref(a64, b64)
    ref[0].backward()
    return (loss, terms, a.grad, b.grad, c_ours), (
        ref[0],
        ref[1],
        a64.grad,
        b64.grad,
        ref[2] if c is not None else None,
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("strategy", ["gram", "covariance"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{d}" for n, d in SHAPES])
def test_float32_matches_float64_reference(case, strategy, shape, device):
    z_a, z_b = make_views(*shape, device=device)
    ours, ref = run_both(case, z_a, z_b, strategy, device)
    assert ours[0].dtype == torch.float32 and ours[0].dim() == 0
    assert_forward_close(ours[0], ref[0])
    for name, value in ours[1].items():
        # Each term to float32 precision relative to the loss it is part of.
        torch.testing.assert_close(value.double(), ref[1][name].double(), rtol=1e-5, atol=1e-6 * abs(ref[0].item()))
    assert ours[2].dtype == z_a.dtype and ours[3].dtype == z_b.dtype
    if case.kind == "barlow_twins" and shape[0] == 2:
        # Two standardised rows are +-sqrt(var / (var + eps)) whatever z is, so
        # the true gradient is O(eps / var) and emerges from cancelling O(1)
        # terms: no float32 computation carries 1e-4 relative accuracy here.
        # Hold us to the low-precision rule instead: at most 2x the error of
        # the plain-PyTorch reference run in float32.
        torch_grads = _grads(R.barlow_twins_reference, z_a, z_b)
        for i in (0, 1):
            assert _rel_err(ours[2 + i], ref[2 + i]) <= 2 * _rel_err(torch_grads[i], ref[2 + i]) + 1e-6
    else:
        assert_grad_close(ours[2], ref[2])
        assert_grad_close(ours[3], ref[3])
    if case.stateful:
        torch.testing.assert_close(ours[4].double(), ref[4], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("strategy", ["gram", "covariance"])
def test_float64_is_exact(case, strategy):
    z_a, z_b = make_views(12, 20, dtype=torch.float64)
    ours, ref = run_both(case, z_a, z_b, strategy, "cpu")
    assert ours[0].dtype == torch.float64
    assert_forward_close(ours[0], ref[0], torch.float64)
    assert_grad_close(ours[2], ref[2], torch.float64)
    assert_grad_close(ours[3], ref[3], torch.float64)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("strategy", ["gram", "covariance"])
def test_low_precision_within_twice_pytorch_error(case, dtype, strategy, device):
    """Our fp16/bf16 error is at most 2x plain PyTorch's in that dtype (flash-attention's rule)."""
    z_a, z_b = make_views(32, 96, dtype=dtype, device=device, seed=3)
    c = case.make_cov(96, device)

    def grads_of(fn, a, b):
        a = a.clone().requires_grad_()
        b = b.clone().requires_grad_()
        loss = fn(a, b)
        loss.backward()
        return loss.detach(), a.grad, b.grad

    ours = grads_of(lambda a, b: case.run_ours(a, b, strategy, c.clone() if c is not None else None)[0], z_a, z_b)
    exact = grads_of(
        lambda a, b: case.run_ref(a, b, c.double() if c is not None else None)[0],
        z_a.double(),
        z_b.double(),
    )
    torch_low = grads_of(lambda a, b: case.run_ref(a, b, c.to(dtype) if c is not None else None)[0], z_a, z_b)
    assert ours[0].dtype == torch.float32 and ours[1].dtype == dtype
    for i, what in enumerate(["loss", "grad z_a", "grad z_b"]):
        ours_err = _rel_err(ours[i], exact[i])
        torch_err = _rel_err(torch_low[i], exact[i])
        assert ours_err <= 2 * torch_err + 1e-6, (what, ours_err, torch_err)


@pytest.mark.parametrize("n,d,expected", [(8, 64, "gram"), (64, 8, "covariance"), (32, 32, "covariance")])
def test_auto_strategy_rule(n, d, expected):
    assert resolve_strategy("auto", n, d) == resolve_strategy(expected, n, d)


def test_auto_rule_follows_precision():
    """The Gram path's subtraction loses digits when the diagonal dominates (N >> D):
    that regime is exactly where 'auto' uses the covariance path instead."""
    z_a, z_b = make_views(4096, 8, seed=5)
    exact = R.vicreg_reference(z_a.double(), z_b.double())[1]["covariance"]
    gram = sslext.functional.vicreg_loss(z_a, z_b, strategy="gram", return_terms=True)[1]["covariance"]
    cov = sslext.functional.vicreg_loss(z_a, z_b, strategy="covariance", return_terms=True)[1]["covariance"]
    auto = sslext.functional.vicreg_loss(z_a, z_b, return_terms=True)[1]["covariance"]
    err_gram = abs(gram.item() - exact.item()) / exact.item()
    err_cov = abs(cov.item() - exact.item()) / exact.item()
    assert err_cov <= err_gram
    assert auto.item() == cov.item()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_non_contiguous_and_expanded_inputs(case):
    z_a, z_b = make_views(24, 40)
    c = case.make_cov(40)
    base = case.run_ours(z_a, z_b, "auto", c.clone() if c is not None else None)[0]
    # Transposed storage: same values, column-major strides.
    ta = z_a.T.contiguous().T
    tb = z_b.T.contiguous().T
    assert not ta.is_contiguous()
    got = case.run_ours(ta, tb, "auto", c.clone() if c is not None else None)[0]
    torch.testing.assert_close(got, base, rtol=1e-6, atol=0)
    # Stride-0 (expanded) input: every row equal along the expanded dim.
    row = torch.randn(40)
    ea = row.expand(24, 40) + 0.0 * z_a  # materialised reference values
    eb = z_b
    got_expanded = case.run_ours(row.expand(24, 40), eb, "auto", c.clone() if c is not None else None)[0]
    want = case.run_ours(ea.contiguous(), eb, "auto", c.clone() if c is not None else None)[0]
    assert torch.isfinite(got_expanded)
    torch.testing.assert_close(got_expanded, want, rtol=1e-6, atol=0)


# ------------------------------------------------------------------ modules


def test_vicreg_module_defaults_and_terms():
    loss_fn = sslext.VICRegLoss()
    assert (loss_fn.inv_coeff, loss_fn.var_coeff, loss_fn.cov_coeff, loss_fn.eps) == (25.0, 25.0, 1.0, 1e-4)
    z_a, z_b = make_views(16, 32)
    loss = loss_fn(z_a, z_b)
    terms = loss_fn.last_terms
    assert set(terms) == {"invariance", "variance", "covariance"}
    assert all(not t.requires_grad for t in terms.values())
    recombined = 25 * terms["invariance"] + 25 * terms["variance"] + terms["covariance"]
    torch.testing.assert_close(loss, recombined)


def test_barlow_module_defaults_and_terms():
    loss_fn = sslext.BarlowTwinsLoss()
    assert loss_fn.lambd == 0.0051
    z_a, z_b = make_views(16, 32)
    loss = loss_fn(z_a, z_b)
    t = loss_fn.last_terms
    torch.testing.assert_close(loss, t["on_diagonal"] + 0.0051 * t["off_diagonal"])


@pytest.mark.parametrize("cls", [sslext.TiCoLoss, sslext.VICRegTiCoLoss])
def test_running_covariance_buffer(cls):
    z_a, z_b = make_views(16, 32)
    loss_fn = cls()
    assert loss_fn.C.numel() == 0  # allocated lazily from the first batch, like lightly
    loss_fn(z_a, z_b)
    assert loss_fn.C.shape == (32, 32) and loss_fn.C.dtype == torch.float32
    c_after_one = loss_fn.C.clone()
    assert c_after_one.abs().sum() > 0
    # update=False evaluates without touching C.
    loss_fn(z_a, z_b, update=False)
    assert torch.equal(loss_fn.C, c_after_one)
    # The buffer round-trips through state_dict, into a fresh (unallocated) module too.
    fresh = cls()
    fresh.load_state_dict(loss_fn.state_dict())
    assert torch.equal(fresh.C, c_after_one)
    sized = cls(dim=32)
    assert torch.equal(sized.C, torch.zeros(32, 32))
    sized.load_state_dict(loss_fn.state_dict())
    torch.testing.assert_close(sized(z_a, z_b, update=False), loss_fn(z_a, z_b, update=False))


def test_tico_module_matches_lightly_semantics_over_steps():
    """Three consecutive steps: C starts at zeros and is replaced by C_new every call."""
    loss_fn = sslext.TiCoLoss(beta=0.9, rho=8.0)
    c_ref = torch.zeros(32, 32, dtype=torch.float64)
    for step in range(3):
        z_a, z_b = make_views(16, 32, seed=step)
        loss = loss_fn(z_a, z_b)
        ref_loss, _, c_ref = R.tico_reference(z_a.double(), z_b.double(), c_ref, 0.9, 8.0)
        assert_forward_close(loss, ref_loss)
        torch.testing.assert_close(loss_fn.C.double(), c_ref, rtol=1e-5, atol=1e-7)


BIAS_MODULES = {
    "tico": (
        lambda **kw: sslext.TiCoLoss(beta=0.8, rho=8.0, **kw),
        lambda a, b, c, k, graph: R.tico_reference(a, b, c, 0.8, 8.0 * k, batch_cov_in_graph=graph),
    ),
    "vicreg_tico": (
        lambda **kw: sslext.VICRegTiCoLoss(beta=0.8, **kw),
        lambda a, b, c, k, graph: R.vicreg_tico_reference(a, b, c, cov_coeff=k, beta=0.8, batch_cov_in_graph=graph),
    ),
    "vicreg_tico_proposal": (
        lambda **kw: sslext.VICRegTiCoLoss(beta=0.8, variant="proposal", **kw),
        lambda a, b, c, k, graph: R.vicreg_tico_proposal_reference(
            a, b, c, cov_coeff=k, beta=0.8, batch_cov_in_graph=graph
        ),
    ),
}


@pytest.mark.parametrize("graph", [False, True], ids=["detached", "graph"])
@pytest.mark.parametrize("name", list(BIAS_MODULES))
def test_bias_corrected_modules_match_reference_over_steps(name, graph):
    """bias_correction: the contrast uses C_new / (1 - beta^t), t counting this call's
    update; the reference takes it as the contrast's coefficient times 1 / (1 - beta^t)
    (the term is linear in C_new). Loss, gradients, the reported term and the stored
    (uncorrected) C over four steps, one of them not updating."""
    make, ref = BIAS_MODULES[name]
    loss_fn = make(bias_correction=True, batch_cov_in_graph=graph)
    c_ref = torch.zeros(24, 24, dtype=torch.float64)
    t = 0
    for step, update in enumerate([True, True, False, True]):
        z_a, z_b = make_views(12, 24, seed=step)
        a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
        loss = loss_fn(a, b, update=update)
        loss.backward()
        k = 1.0 / (1.0 - 0.8 ** (t + 1))
        a64, b64 = z_a.double().requires_grad_(), z_b.double().requires_grad_()
        ref_loss, ref_terms, c_new = ref(a64, b64, c_ref, k, graph)
        ref_loss.backward()
        assert_forward_close(loss, ref_loss)
        assert_grad_close(a.grad, a64.grad)
        assert_grad_close(b.grad, b64.grad)
        term = "contrast" if name == "tico" else "covariance"
        torch.testing.assert_close(
            loss_fn.last_terms[term].double(), k * ref_terms[term].detach(), rtol=1e-5, atol=1e-7
        )
        if update:
            c_ref, t = c_new, t + 1
        assert int(loss_fn.updates) == t
        torch.testing.assert_close(loss_fn.C.double(), c_ref, rtol=1e-5, atol=1e-7)


def test_bias_correction_state():
    """t is a saved buffer (only with bias_correction), restored by load_state_dict,
    zeroed by reset_covariance, not advanced by a refused (non-finite) update."""
    assert "updates" not in sslext.TiCoLoss(dim=8).state_dict()
    loss_fn = sslext.VICRegTiCoLoss(dim=8, bias_correction=True)
    z_a, z_b = make_views(6, 8)
    for _ in range(3):
        loss_fn(z_a, z_b)
    bad = z_a.clone()
    bad[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        loss_fn(bad, z_b)
    assert int(loss_fn.updates) == 3 and int(loss_fn.skipped_updates) == 1
    fresh = sslext.VICRegTiCoLoss(dim=8, bias_correction=True)
    fresh.load_state_dict(loss_fn.state_dict())
    assert int(fresh.updates) == 3
    torch.testing.assert_close(fresh(z_a, z_b, update=False), loss_fn(z_a, z_b, update=False))
    fresh.reset_covariance()
    assert int(fresh.updates) == 0
    with pytest.raises(ValueError, match="bias_correction needs beta < 1"):
        sslext.TiCoLoss(beta=1.0, bias_correction=True)
    with pytest.raises(TypeError, match="bias_correction must be True or False"):
        sslext.TiCoLoss(bias_correction=1)
    with pytest.raises(TypeError, match="batch_cov_in_graph must be True or False"):
        sslext.VICRegTiCoLoss(batch_cov_in_graph="yes")


def test_vicreg_tico_gram_reference_agrees():
    z_a, z_b = make_views(10, 30, dtype=torch.float64)
    c = torch.eye(30, dtype=torch.float64) / 30
    a = R.vicreg_tico_reference(z_a, z_b, c)
    b = R.vicreg_tico_gram(z_a, z_b, c)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[2], b[2])


def test_plain_gram_references_agree_with_official_formulation():
    z_a, z_b = make_views(10, 30, dtype=torch.float64)
    torch.testing.assert_close(R.vicreg_gram(z_a, z_b)[0], R.vicreg_reference(z_a, z_b)[0])
    torch.testing.assert_close(R.barlow_twins_gram(z_a, z_b)[0], R.barlow_twins_reference(z_a, z_b)[0])
    c = torch.eye(30, dtype=torch.float64) / 30
    torch.testing.assert_close(R.tico_gram(z_a, z_b, c)[0], R.tico_reference(z_a, z_b, c)[0])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_deterministic(case):
    z_a, z_b = make_views(33, 70)
    c = case.make_cov(70)
    outs = []
    for _ in range(2):
        a = z_a.clone().requires_grad_()
        loss = case.run_ours(a, z_b, "auto", c.clone() if c is not None else None)[0]
        loss.backward()
        outs.append((loss.detach(), a.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_column_centers_to_exact_zero(dtype):
    # N copies of v summed and divided by N need not give v back; the column
    # mean is taken over deviations from row 0 so a constant column centers to
    # exact zeros, and VICReg's variance gradient (which amplifies a centering
    # residual by 1/sqrt(eps)) is exactly zero there, as in float64 PyTorch.
    z = torch.full((10, 3), 9486.83300001, dtype=dtype)
    z[:, 1:] = torch.randn(10, 2, dtype=dtype)
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    sslext.functional.vicreg_loss(a, b, strategy="covariance").backward()
    assert torch.equal(a.grad[:, 0], torch.zeros(10, dtype=dtype))
