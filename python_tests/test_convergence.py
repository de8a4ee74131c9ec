"""Convergence: a short training run with each fused loss follows the plain-PyTorch run.

Modelled on Liger-Kernel's convergence tests: a small seeded model (a 2-layer
MLP projector on fixed random data) is trained for STEPS optimizer steps twice
from the same initial weights, once with the sslext module and once with a thin
``nn.Module`` over :mod:`sslext.reference` (the official formulation, D x D
matrices, plain autograd). Every step's loss, the final parameters and, for
the TiCo family, the running covariance after every step must agree. A
single-call test cannot see an error that only shows through the optimizer
(a gradient slightly off in one direction, a running covariance updated from
the wrong rows or at the wrong time): here it accumulates over the run.

Tolerances (``TOLERANCES``, elementwise ``|ours - ref| <= atol + rtol |ref|``),
from the worst case measured over every case below (CPU "Intel(R) Xeon(R)
Processor", torch 2.14.1), as the largest difference relative to the largest
magnitude of each quantity: float64 runs agree to 7e-16 (losses, C) and 2e-15
(parameters), bound rtol 1e-11; float32 runs, which differ from the float32
reference by float32 rounding in every step amplified by 20 steps of momentum
SGD, to 4e-7 (losses, C) and 1.1e-6 (parameters), bound rtol 1e-5. The atol
terms cover entries near zero (C's off-diagonal, small weights).
"""

import copy

import pytest
import torch
from torch import nn

import sslext
from sslext import reference as R

STEPS = 20
N, D_IN, HIDDEN, D = 16, 12, 32, 40  # N < D, and 2N < D for VICReg-TiCo's Gram path
LR, MOMENTUM = 0.02, 0.9

TOLERANCES = {  # dtype: (rtol, atol) for losses, parameters and C
    torch.float32: (1e-5, 1e-6),
    torch.float64: (1e-11, 1e-13),
}


# ------------------------------------------------- plain-PyTorch modules
class RefVICReg(nn.Module):
    def forward(self, z_a, z_b):
        return R.vicreg_reference(z_a, z_b, 25.0, 25.0, 1.0, 1e-4)[0]


class RefBarlowTwins(nn.Module):
    def forward(self, z_a, z_b):
        return R.barlow_twins_reference(z_a, z_b, 0.0051, 1e-5)[0]


class _RefRunningCov(nn.Module):
    """The running covariance as lightly keeps it: updated by every training call."""

    def __init__(self, dim: int, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("C", torch.zeros(dim, dim, dtype=dtype))

    def forward(self, z_a, z_b):
        loss, _, c_new = self.step(z_a, z_b, self.C)
        if self.training:
            self.C = c_new.detach().to(self.C.dtype)
        return loss


class RefTiCo(_RefRunningCov):
    def step(self, z_a, z_b, c):
        return R.tico_reference(z_a, z_b, c, 0.9, 8.0)


class RefVICRegTiCo(_RefRunningCov):
    def step(self, z_a, z_b, c):
        return R.vicreg_tico_reference(z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4)


class RefVICRegTiCoProposal(_RefRunningCov):
    def step(self, z_a, z_b, c):
        # cov_coeff 1/D keeps the proposal's un-normalised term at the other losses' scale
        return R.vicreg_tico_proposal_reference(z_a, z_b, c, 25.0, 25.0, 1.0 / D, 0.9, 1e-4)


LOSSES = {  # name: (sslext module for a strategy, reference module for a dtype)
    "vicreg": (lambda s: sslext.VICRegLoss(strategy=s), lambda dt: RefVICReg()),
    "barlow_twins": (lambda s: sslext.BarlowTwinsLoss(strategy=s), lambda dt: RefBarlowTwins()),
    "tico": (lambda s: sslext.TiCoLoss(dim=D, strategy=s), lambda dt: RefTiCo(D, dt)),
    "vicreg_tico_symmetric": (lambda s: sslext.VICRegTiCoLoss(dim=D, strategy=s), lambda dt: RefVICRegTiCo(D, dt)),
    "vicreg_tico_proposal": (
        lambda s: sslext.VICRegTiCoLoss(cov_coeff=1.0 / D, dim=D, strategy=s, variant="proposal"),
        lambda dt: RefVICRegTiCoProposal(D, dt),
    ),
}


# ------------------------------------------------------------- the runs
def _data(dtype):
    """Fixed data: 64 samples, two noisy views of each; the batches of each step."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, D_IN, generator=g)
    view_a = x + 0.3 * torch.randn(64, D_IN, generator=g)
    view_b = x + 0.3 * torch.randn(64, D_IN, generator=g)
    order = torch.randperm(64, generator=g)
    batches = [order[(i * N) % 64 : (i * N) % 64 + N] for i in range(STEPS)]
    return view_a.to(dtype), view_b.to(dtype), batches


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, D))


def _train(model, loss_fn, dtype):
    """STEPS of momentum SGD; every step's loss and C (None without one), and the final parameters."""
    holder = nn.ModuleDict({"model": model, "loss": loss_fn}).to(dtype)  # one cast, C keeps its rule
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    view_a, view_b, batches = _data(dtype)
    losses, covs = [], []
    for idx in batches:
        opt.zero_grad(set_to_none=True)
        loss = holder["loss"](model(view_a[idx]), model(view_b[idx]))
        loss.backward()
        opt.step()
        losses.append(loss.detach().to(torch.float64))
        covs.append(loss_fn.C.detach().clone() if hasattr(loss_fn, "C") else None)
    return torch.stack(losses), covs, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("strategy", ["gram", "covariance"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_training_run_matches_plain_pytorch(name, strategy, dtype):
    make_ours, make_ref = LOSSES[name]
    model = _model()
    ours = _train(copy.deepcopy(model), make_ours(strategy), dtype)
    ref = _train(copy.deepcopy(model), make_ref(dtype), dtype)
    rtol, atol = TOLERANCES[dtype]

    assert torch.isfinite(ours[0]).all()
    torch.testing.assert_close(ours[0], ref[0], rtol=rtol, atol=atol, msg=lambda m: f"losses per step: {m}")
    for step, (c_ours, c_ref) in enumerate(zip(ours[1], ref[1])):
        if c_ref is None:
            break
        # C keeps the dtype of the run (float64 after .to(float64), float32 otherwise)
        assert c_ours.dtype == dtype
        torch.testing.assert_close(c_ours, c_ref, rtol=rtol, atol=atol, msg=lambda m: f"C after step {step}: {m}")
    for i, (p_ours, p_ref) in enumerate(zip(ours[2], ref[2])):
        torch.testing.assert_close(p_ours, p_ref, rtol=rtol, atol=atol, msg=lambda m: f"parameter {i}: {m}")
    # the run trains: the parameters moved well beyond the tolerance
    initial = [p.detach().to(dtype) for p in model.parameters()]
    assert max(float((p - q).abs().max()) for p, q in zip(ours[2], initial)) > 1e-3


def test_losses_without_memory_fall_over_the_run():
    """VICReg and Barlow Twins go down over the run (TiCo's rise while C fills is documented)."""
    for name in ("vicreg", "barlow_twins"):
        losses = _train(_model(), LOSSES[name][0]("covariance"), torch.float64)[0]
        assert losses[-5:].mean() < losses[:5].mean(), name
