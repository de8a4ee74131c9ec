"""A training step keeps a GPU busy: counted on the CPU with a dispatch mode.

Every read of a device value on the host (``item()``, ``float(t)``, ``if t``,
data-dependent shapes, copies to the host) drains a CUDA queue; these tests
count them per ``Trainer.train_step`` so a regression fails here, without a
GPU. See sslext/app/training/dispatch_count.py for what counts.
"""

import json

import pytest
import torch
from test_train_e2e import tiny_cfg

from sslext.app.config import load_config
from sslext.app.methods import METHODS
from sslext.app.training.dispatch_count import DispatchCounter
from sslext.app.training.step_stats import EpochStats
from sslext.optim import LARS, param_groups
from sslext.train import Trainer

# ResNet-18/50 on 8 px crops of 4 images: the real networks (and so their
# number of parameter tensors and of ops per step), at a cost tests afford.
SMALL = [
    "data.dataset=synthetic",
    "optim.batch_size=4",
    "train.device=cpu",
    "train.threads=2",
    "train.progress=false",
    "augment.view1.crop_size=8",
    "augment.view2.crop_size=8",
    "method.projector=[32,32]",
    "eval.final=false",
    "name=run",
]


def _trainer(tmp_path, backbone, *extra):
    return Trainer(load_config(None, [*SMALL, f"model.backbone={backbone}", f"train.out_dir={tmp_path}", *extra]))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_at_most_one_sync_per_non_logging_step(tmp_path, backbone):
    tr = _trainer(tmp_path, backbone, "train.log_every=1000")
    perm = tr._epoch_order()
    tr.train_step(perm)  # the first step creates the momentum buffers and caches
    counts = []
    for _ in range(2):
        with DispatchCounter() as c:
            tr.train_step(perm)
        counts.append((c.syncs, dict(c.sync_ops)))
    assert all(n <= 1 for n, _ in counts), counts
    assert tr.acc["n"] == 3 and tr.acc["probe_correct"] >= 0


def test_logged_steps_add_up_to_the_epoch_sums(tmp_path):
    """What logging steps read from the device is what the device-side sums hold."""
    tr = _trainer(tmp_path, "resnet18", "train.log_every=1")
    perm = tr._epoch_order()
    for _ in range(3):
        tr.train_step(perm)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    acc = tr.acc
    assert acc["n"] == 3 and acc["loss"] == steps[0]["loss"] + steps[1]["loss"] + steps[2]["loss"]
    for k in ("invariance", "variance", "covariance"):
        assert acc["terms"][k] == steps[0][k] + steps[1][k] + steps[2][k]


def test_epoch_stats_sum_like_python_floats():
    """float64 device sums of float32 values equal Python's sums of their float(): logs unchanged."""
    g = torch.Generator().manual_seed(0)
    st = EpochStats(torch.device("cpu"))
    ref_loss, ref_terms = 0.0, {"a": 0.0, "b": 0.0}
    for _ in range(50):
        loss = torch.rand((), generator=g) * 100
        terms = {"a": torch.rand((), generator=g), "b": torch.rand((), generator=g) * 1e-3}
        st.add_step(loss, terms)
        st.add_probe_correct(torch.tensor(3))
        ref_loss += float(loss)
        for k, v in terms.items():
            ref_terms[k] += float(v)
    d = st.to_dict()
    assert d["loss"] == ref_loss and d["terms"] == ref_terms and d["probe_correct"] == 150 and d["n"] == 50
    st2 = EpochStats(torch.device("cpu"))
    st2.load_dict(d)
    assert st2.to_dict() == d


def _optimizer_ops(tmp_path, backbone):
    tr = _trainer(tmp_path / backbone, backbone)
    for p in tr.method.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    tr.optimizer.step()  # momentum buffers exist from here on
    with DispatchCounter() as c:
        tr.optimizer.step()
    return c.ops, sum(len(g["params"]) for g in tr.optimizer.param_groups)


def test_lars_step_ops_do_not_grow_with_parameter_tensors(tmp_path):
    ops18, n18 = _optimizer_ops(tmp_path, "resnet18")
    ops50, n50 = _optimizer_ops(tmp_path, "resnet50")
    assert n50 > 2 * n18  # the premise: many more tensors
    assert ops50 <= 1.3 * ops18, (ops18, ops50)


class ReferenceLARS(torch.optim.Optimizer):
    """sslext's LARS before the foreach rewrite, parameter by parameter (the reference)."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02, clip_lr=False, eps=1e-8):
        super().__init__(
            params,
            dict(
                lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip_lr=clip_lr, eps=eps, lars_adapt=True
            ),
        )

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            wd, lr = group["weight_decay"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["lars_adapt"]:
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(d_p)
                    trust = group["eta"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                    if group["clip_lr"]:
                        trust = torch.clamp(trust / lr, max=1.0)
                    trust = torch.where((p_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                    d_p = d_p.add(p, alpha=wd).mul(trust)
                elif wd:
                    d_p = d_p.add(p, alpha=wd)
                state = self.state[p]
                if group["momentum"]:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d_p.detach().clone()
                    else:
                        buf.mul_(group["momentum"]).add_(d_p)
                    d_p = buf
                p.add_(d_p, alpha=-lr)


def _lars_model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 5),
        torch.nn.Linear(5, 3, bias=False),
    )
    with torch.no_grad():
        m[4].weight.zero_()  # a zero weight norm: the trust ratio falls back to 1
    return m


@pytest.mark.parametrize("clip_lr", [False, True])
@pytest.mark.parametrize("momentum,wd", [(0.9, 1e-4), (0.0, 0.0), (0.9, 0.0)])
def test_lars_foreach_matches_per_parameter_reference(clip_lr, momentum, wd):
    a, b = _lars_model(), _lars_model()
    ga, gb = param_groups(a, wd), param_groups(b, wd)
    opt = LARS(ga, lr=0.3, momentum=momentum, weight_decay=wd, eta=0.02, clip_lr=clip_lr)
    ref = ReferenceLARS(gb, lr=0.3, momentum=momentum, weight_decay=wd, eta=0.02, clip_lr=clip_lr)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 6, 6, generator=g)
    for step in range(4):
        for m, o in ((a, opt), (b, ref)):
            o.zero_grad(set_to_none=True)
            m(x).pow(2).mean().backward()
            if step == 2:
                m[3].bias.grad = None  # a parameter without a gradient this step is left alone
            o.step()
        for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
            # Same elementwise formula in the same order; only the norms' reduction
            # order may differ (foreach vs vector_norm): float32 rounding.
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7, msg=f"{n} at step {step}")


def test_lars_mixed_dtypes_group_by_dtype():
    """Parameters of two dtypes in one group: each dtype is updated like the reference."""
    ps = [torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for p, q in zip(ps, qs):
        p.grad = torch.ones_like(p) * 0.1
        q.grad = p.grad.clone()
    LARS([{"params": ps, "weight_decay": 1e-4, "lars_adapt": True}], lr=0.1, weight_decay=1e-4).step()
    ReferenceLARS([{"params": qs, "weight_decay": 1e-4, "lars_adapt": True}], lr=0.1, weight_decay=1e-4).step()
    for p, q in zip(ps, qs):
        assert p.dtype == q.dtype
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_steps_with_at_most_one_sync(tmp_path, method):
    """The methods' own steps (queues, EMA targets, pretext labels) add no reads of the device."""
    tr = Trainer(tiny_cfg(tmp_path, method, "train.log_every=1000", "eval.final=false"))
    perm = tr._epoch_order()
    tr.train_step(perm)
    with DispatchCounter() as c:
        tr.train_step(perm)
    assert c.syncs <= 1, dict(c.sync_ops)
