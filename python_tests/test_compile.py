"""Each loss under torch.compile(fullgraph=True): same loss, gradients and running C as eager."""

import pytest
import torch
import torch._inductor.config
from test_losses import make_views

import sslext
import sslext.functional as F

# Compile for real on every run: a cached artifact from an older build of the
# extension would test that build, not this one.
torch._inductor.config.fx_graph_cache = False
torch._inductor.config.autotune_local_cache = False

MODULES = {
    "vicreg": lambda: sslext.VICRegLoss(),
    "barlow_twins": lambda: sslext.BarlowTwinsLoss(),
    "tico": lambda: sslext.TiCoLoss(dim=48),
    "vicreg_tico": lambda: sslext.VICRegTiCoLoss(dim=48),
    "vicreg_tico_proposal": lambda: sslext.VICRegTiCoLoss(dim=48, variant="proposal"),
    # B in the graph and the bias-corrected C: the step count t is a tensor,
    # so the second step must reuse the first step's graph with t = 1.
    "tico_graph_bias_corrected": lambda: sslext.TiCoLoss(dim=48, batch_cov_in_graph=True, bias_correction=True),
    "vicreg_tico_proposal_graph_bias_corrected": lambda: sslext.VICRegTiCoLoss(
        dim=48, variant="proposal", batch_cov_in_graph=True, bias_correction=True
    ),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_compiled_loss_matches_eager(name):
    torch._dynamo.reset()
    eager_fn, compiled_module = MODULES[name](), MODULES[name]()
    compiled_fn = torch.compile(compiled_module, fullgraph=True)
    for step in range(2):  # the second step sees the running C the first one wrote
        z_a, z_b = make_views(16, 48, seed=step)
        results = []
        for fn in (eager_fn, compiled_fn):
            a = z_a.clone().requires_grad_()
            b = z_b.clone().requires_grad_()
            loss = fn(a, b)
            loss.backward()
            results.append((loss.detach(), a.grad, b.grad))
        for got, want in zip(results[1], results[0]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    if hasattr(eager_fn, "C"):
        torch.testing.assert_close(compiled_module.C, eager_fn.C, rtol=1e-6, atol=1e-8)
        assert compiled_module.C.abs().sum() > 0
    if getattr(eager_fn, "bias_correction", False):
        assert int(compiled_module.updates) == int(eager_fn.updates) == 2


def test_compiled_in_a_training_step():
    """The loss inside a compiled projector + loss step, with dynamic batch sizes."""
    torch._dynamo.reset()
    proj = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 64))
    loss_fn = sslext.VICRegLoss()

    @torch.compile(fullgraph=True, dynamic=True)
    def step(x_a, x_b):
        return loss_fn(proj(x_a), proj(x_b))

    for n in (12, 20):
        x_a, x_b = torch.randn(n, 8), torch.randn(n, 8)
        loss = step(x_a, x_b)
        loss.backward()
        torch.testing.assert_close(loss, loss_fn(proj(x_a), proj(x_b)), rtol=1e-5, atol=1e-6)


TRANSPOSED = {
    "vicreg-gram": lambda a, b, c: F.vicreg_loss(a, b, strategy="gram"),
    "vicreg-covariance": lambda a, b, c: F.vicreg_loss(a, b, strategy="covariance"),
    "barlow_twins": lambda a, b, c: F.barlow_twins_loss(a, b),
    "tico": lambda a, b, c: F.tico_loss(a, b, c),
    "vicreg_tico": lambda a, b, c: F.vicreg_tico_loss(a, b, c),
    "vicreg_tico_proposal": lambda a, b, c: F.vicreg_tico_loss(a, b, c, variant="proposal"),
}


@pytest.mark.parametrize("name", list(TRANSPOSED))
def test_compiled_loss_on_transposed_inputs(name):
    """Transposed views in (strides (1, N)): the compiled graph checks every op
    output's strides against its fake kernel, so a fake that promised the input's
    strides for a contiguous gradient fails here."""
    torch._dynamo.reset()
    fn = TRANSPOSED[name]
    compiled = torch.compile(fn, fullgraph=True)
    z_a, z_b = make_views(48, 16, seed=3)
    results = []
    for f in (fn, compiled):
        # (16, 48) leaves with strides (1, 16): N < D, so "auto" takes the Gram path.
        a, b = z_a.T.clone().requires_grad_(), z_b.T.clone().requires_grad_()
        assert a.stride() == (1, 16)
        c = torch.eye(48) / 48
        loss = f(a, b, c)
        loss.backward()
        results.append((loss.detach(), a.grad, b.grad, c))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
