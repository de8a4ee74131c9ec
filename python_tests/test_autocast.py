"""Every covariance-family loss inside torch.autocast, as users run their losses.

Under autocast the ops run in float32 (half-precision inputs cast up, autocast
off inside), so the result must equal the same op on the float32-cast inputs
outside autocast, bit for bit, and the gradients must come back in the
inputs' dtype. Before the Autocast registration TiCo and VICReg-TiCo raised a
dtype mismatch here (their float32 running covariance met autocast GEMMs).
"""

import pytest
import torch
from cases import CASE_IDS, CASES
from conftest import HAS_CUDA
from test_losses import make_views

import sslext

AUTOCAST_DTYPES = {"cpu": [torch.bfloat16], "cuda": [torch.bfloat16, torch.float16]}
DEVICE_DTYPES = [(dev, dt) for dev in (["cpu", "cuda"] if HAS_CUDA else ["cpu"]) for dt in AUTOCAST_DTYPES[dev]]
DEVICE_DTYPE_IDS = [f"{dev}-{str(dt).split('.')[1]}" for dev, dt in DEVICE_DTYPES]


def _half_views(n, d, dtype, device, seed=0):
    z_a, z_b = make_views(n, d, seed=seed)
    return z_a.to(device=device, dtype=dtype), z_b.to(device=device, dtype=dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=DEVICE_DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("strategy", ["gram", "covariance"])
def test_functional_under_autocast_equals_float32(case, strategy, device, dtype):
    # 12 x 40: N < D and 2N < D, so the Gram path is the natural one for every loss.
    z_a, z_b = _half_views(12, 40, dtype, device)
    c = case.make_cov(40, device)
    results = []
    for autocast in (True, False):
        a = z_a.clone().requires_grad_()
        b = z_b.clone().requires_grad_()
        c_run = c.clone() if c is not None else None
        with torch.autocast(device, dtype=dtype, enabled=autocast):
            # Outside autocast the reference run feeds float32 copies explicitly.
            ins = (a, b) if autocast else (a.float(), b.float())
            loss, terms = case.run_ours(*ins, strategy, c_run)
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert a.grad.dtype == dtype and b.grad.dtype == dtype
        results.append((loss.detach(), a.grad, b.grad, c_run, terms))
    got, want = results
    for x, y in zip(got[:3], want[:3]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    if c is not None:
        torch.testing.assert_close(got[3], want[3], rtol=0, atol=0)
    assert got[4].keys() == want[4].keys()


MODULES = {
    "vicreg": lambda s: sslext.VICRegLoss(strategy=s),
    "barlow_twins": lambda s: sslext.BarlowTwinsLoss(strategy=s),
    "tico": lambda s: sslext.TiCoLoss(strategy=s),
    "tico_dim": lambda s: sslext.TiCoLoss(dim=40, strategy=s),
    "vicreg_tico": lambda s: sslext.VICRegTiCoLoss(strategy=s),
    "vicreg_tico_proposal": lambda s: sslext.VICRegTiCoLoss(dim=40, strategy=s, variant="proposal"),
}


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=DEVICE_DTYPE_IDS)
@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("strategy", ["gram", "covariance"])
def test_module_in_an_autocast_training_step(name, strategy, device, dtype):
    """A projector under autocast feeding the loss module, as Lightning's bf16-mixed does."""
    torch.manual_seed(0)
    proj = torch.nn.Linear(16, 40).to(device)
    x_a = torch.randn(12, 16, device=device)
    x_b = torch.randn(12, 16, device=device)
    runs = []
    for loss_in_autocast in (True, False):
        loss_fn = MODULES[name](strategy).to(device)
        proj.zero_grad()
        for _ in range(2):  # the second call sees the running C the first one wrote
            with torch.autocast(device, dtype=dtype):
                z_a, z_b = proj(x_a), proj(x_b)
                assert z_a.dtype == dtype
                if loss_in_autocast:
                    loss = loss_fn(z_a, z_b)
            if not loss_in_autocast:  # the same embeddings, cast up by hand
                loss = loss_fn(z_a.float(), z_b.float())
            loss.backward()
        runs.append((loss.detach(), proj.weight.grad.clone(), getattr(loss_fn, "C", None)))
    (l1, g1, c1), (l2, g2, c2) = runs
    assert torch.isfinite(l1) and torch.isfinite(g1).all()
    for got, want in zip(runs[0], runs[1]):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_float64_inputs_are_not_downcast():
    z_a, z_b = make_views(8, 12, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sslext.functional.vicreg_loss(z_a, z_b)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, sslext.functional.vicreg_loss(z_a, z_b), rtol=0, atol=0)


def test_in_place_ema_update_on_a_buffer_under_autocast():
    z = torch.randn(10, 6).to(torch.bfloat16)
    c = torch.zeros(6, 6)
    want = c.clone()
    sslext.ops.tico_ema_update_(want, z.float(), 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sslext.ops.tico_ema_update_(c, z, 0.5)
    torch.testing.assert_close(c, want, rtol=0, atol=0)
