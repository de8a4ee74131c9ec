"""Worker functions for the 2-process gloo tests (test_distributed.py).

They live in a module of their own so ``torch.multiprocessing.spawn`` can
import them in the child processes. Workers save their observations with
``torch.save``; the test process makes the assertions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import sslext
import sslext.functional as SF
from sslext.distributed import convert_sync_batchnorm

# (loss, strategy, N global, D). The "auto" shapes are chosen so a rank's
# local batch (N/2) would pick the Gram path while the global N picks the
# covariance path: the tests check the decision is taken on the global N.
LOSS_CASES = [
    ("vicreg", "gram", 16, 32),
    ("vicreg", "covariance", 24, 16),
    ("vicreg", "auto", 24, 16),
    ("barlow_twins", "gram", 16, 32),
    ("barlow_twins", "covariance", 24, 16),
    ("barlow_twins", "auto", 24, 16),
    ("tico", "gram", 16, 32),
    ("tico", "covariance", 24, 16),
    ("tico", "auto", 24, 16),
    # VICReg-TiCo's contrast runs on 2N stacked rows.
    ("vicreg_tico", "gram", 16, 48),
    ("vicreg_tico", "covariance", 24, 16),
    ("vicreg_tico", "auto", 24, 40),
]
IN_DIM = 8
RUNNING_COV = ("tico", "vicreg_tico")


def case_id(case) -> str:
    return "{}-{}-{}x{}".format(*case)


def make_loss(name: str, strategy: str, d: int, gather: Optional[bool] = None) -> nn.Module:
    if name == "vicreg":
        return sslext.VICRegLoss(strategy=strategy, gather_distributed=gather)
    if name == "barlow_twins":
        return sslext.BarlowTwinsLoss(strategy=strategy, gather_distributed=gather)
    if name == "tico":
        return sslext.TiCoLoss(dim=d, strategy=strategy, gather_distributed=gather)
    return sslext.VICRegTiCoLoss(dim=d, strategy=strategy, gather_distributed=gather)


class Pair(nn.Module):
    """A linear projector applied to both views, as a method applies its network."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x_a, x_b):
        return self.lin(x_a), self.lin(x_b)


def case_inputs(case):
    """Deterministic global inputs and initial weights of a case (same on every rank)."""
    _, _, n, d = case
    g = torch.Generator().manual_seed(1234 + n * 100 + d)
    shared = torch.randn(n, IN_DIM, generator=g)
    x_a = shared + 0.5 * torch.randn(n, IN_DIM, generator=g) + 0.3
    x_b = shared + 0.5 * torch.randn(n, IN_DIM, generator=g) - 0.1
    torch.manual_seed(7)
    model = Pair(IN_DIM, d)
    return x_a, x_b, model


def run_loss_case(case, rank: int, world: int, steps: int = 2) -> Dict[str, Any]:
    """Forward/backward ``steps`` times on this rank's rows; what a test compares.

    ``world == 1`` is the single-process reference on the global batch.
    """
    name, strategy, n, d = case
    x_a, x_b, model = case_inputs(case)
    rows = slice(rank * n // world, (rank + 1) * n // world)
    wrapped = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    loss_fn = make_loss(name, strategy, d)
    seen: List[tuple] = []
    orig = SF.resolve_strategy

    def spy(strategy_, n_, d_, **kwargs):
        seen.append((n_, d_))
        return orig(strategy_, n_, d_, **kwargs)

    SF.resolve_strategy = spy
    out: Dict[str, Any] = {"loss": [], "terms": [], "grad_w": [], "grad_b": [], "grad_za": [], "grad_zb": [], "C": []}
    try:
        for _ in range(steps if name in RUNNING_COV else 1):
            model.zero_grad(set_to_none=True)
            za, zb = wrapped(x_a[rows], x_b[rows])
            za.retain_grad()
            zb.retain_grad()
            loss = loss_fn(za, zb)
            loss.backward()
            out["loss"].append(loss.detach().clone())
            out["terms"].append({k: v.clone() for k, v in loss_fn.last_terms.items()})
            out["grad_w"].append(model.lin.weight.grad.clone())
            out["grad_b"].append(model.lin.bias.grad.clone())
            out["grad_za"].append(za.grad.clone())
            out["grad_zb"].append(zb.grad.clone())
            if name in RUNNING_COV:
                out["C"].append(loss_fn.C.clone())
    finally:
        SF.resolve_strategy = orig
    out["resolved_shapes"] = seen
    return out


BN_SHAPES = {"bn1d": (12, 6), "bn2d": (12, 3, 4, 4)}


def bn_model(kind: str) -> nn.Module:
    torch.manual_seed(3)
    if kind == "bn1d":
        m = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6))
    else:
        m = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3))
    with torch.no_grad():  # non-trivial affine parameters
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.5, 0.5)
    return m


def run_bn_case(kind: str, rank: int, world: int, steps: int = 2) -> Dict[str, Any]:
    """SyncBN (world > 1, under DDP) or plain BN (world == 1) on the same global batch."""
    shape = BN_SHAPES[kind]
    g = torch.Generator().manual_seed(11)
    x = torch.randn(*shape, generator=g) * 2 + 0.7
    coef = torch.randn(*shape[1:], generator=g)
    n = shape[0]
    rows = slice(rank * n // world, (rank + 1) * n // world)
    model = bn_model(kind)
    wrapped = model
    if world > 1:
        model = convert_sync_batchnorm(model, torch.device("cpu"))
        wrapped = nn.parallel.DistributedDataParallel(model)
    out: Dict[str, Any] = {"y": [], "grad_x": [], "grads": [], "bn_type": type(model[1]).__name__}
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        xr = x[rows].clone().requires_grad_()
        y = wrapped(xr)
        # per-rank mean: DDP's average of the ranks' means is the global mean
        (y.pow(3) * coef).mean().backward()
        out["y"].append(y.detach().clone())
        out["grad_x"].append(xr.grad.clone())
        out["grads"].append({k: p.grad.clone() for k, p in model.named_parameters()})
    out["buffers"] = {k: b.clone() for k, b in model.named_buffers()}
    return out


# Full-image "crops" (scale 1 with an aspect ratio != 1 never fits, so the
# crop falls back to the whole image), no flip, no colour ops: the views no
# longer depend on the generator, so a run's trajectory depends only on the
# global batches and the arithmetic, not on how many ranks drew augmentations.
DETERMINISTIC_VIEWS = [
    f"augment.{v}.{k}={val}"
    for v in ("view1", "view2")
    for k, val in (
        ("crop_min_scale", 1.0),
        ("flip_prob", 0.0),
        ("jitter_prob", 0.0),
        ("gray_prob", 0.0),
        ("blur_prob", 0.0),
        ("solarize_prob", 0.0),
    )
] + ["train.max_steps=4"]


METHOD_CASES = ("vicreg_tico", "barlow_twins")


def method_overrides(method: str, out_dir: str) -> List[str]:
    from test_train_e2e import TINY

    # One run directory per method: a second run never starts in another's directory.
    return [
        f"method.name={method}",
        "method.projector=[32,32]",
        f"name=grad_{method}",
        "train.epochs=1",
        *TINY,
        "train.threads=1",
        "eval.final=false",
        f"train.out_dir={out_dir}",
    ]


def run_method_case(method: str, rank: int, world: int, out_dir: str) -> Dict[str, Any]:
    """One training step's gradients of a whole method (ResNet with BN, projector,
    loss) set up by the Trainer: SyncBN + DDP + gathered loss for world > 1."""
    from sslext.app.config import load_config
    from sslext.train import Trainer

    tr = Trainer(load_config(None, method_overrides(method, out_dir)))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 3, 16, 16, generator=g)
    v2 = 0.9 * x + 0.3 * torch.randn(32, 3, 16, 16, generator=g)
    rows = slice(rank * 32 // world, (rank + 1) * 32 // world)
    loss, _ = tr.model([x[rows], v2[rows]])
    loss.backward()
    # Grouped per module: a bias right before a centring op (BN, the losses'
    # centring) has a zero gradient in exact arithmetic, so it is compared
    # together with its module's weight.
    grads: Dict[str, List[torch.Tensor]] = {}
    for name, p in tr.method.named_parameters():
        grads.setdefault(name.rsplit(".", 1)[0], []).append(p.grad.flatten().clone())
    return {
        "loss": loss.detach().clone(),
        "grads": {k: torch.cat(v) for k, v in grads.items()},
        "norm_types": sorted({type(m).__name__ for m in tr.method.modules() if "Norm" in type(m).__name__}),
    }


# ---------------------------------------------------------------------- workers
@contextlib.contextmanager
def process_group(rank: int, world: int, init_file: str) -> Iterator[None]:
    """A worker's gloo group: created on entry, destroyed on exit.

    On success every rank meets at a barrier first, so no rank tears its gloo
    connections down while a peer may still be inside a collective (CI once saw
    one rank of a finished test abort: 'terminate called without an active
    exception'). After an error there is no barrier: the peer may be gone, and
    run_ranks reports the failure.
    """
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def loss_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    with process_group(rank, world, init_file):
        res = {
            "loss": {case_id(c): run_loss_case(c, rank, world) for c in LOSS_CASES},
            "bn": {k: run_bn_case(k, rank, world) for k in BN_SHAPES},
        }
        res["method"] = {m: run_method_case(m, rank, world, out_dir) for m in METHOD_CASES}
        # gather_distributed=False keeps per-rank statistics: the loss of the local rows only
        x_a, x_b, model = case_inputs(LOSS_CASES[0])
        rows = slice(rank * 8, (rank + 1) * 8)
        with torch.no_grad():
            za, zb = model(x_a[rows], x_b[rows])
        res["local_loss"] = make_loss("vicreg", "gram", 32, gather=False)(za, zb)
        torch.save(res, Path(out_dir) / f"rank{rank}.pt")


def train_worker(rank: int, world: int, init_file: str, out_dir: str, overrides: List[str]) -> None:
    from sslext.app.config import ConfigError, load_config
    from sslext.train import Trainer

    out = Path(out_dir)
    res: Dict[str, Any] = {}
    with process_group(rank, world, init_file):

        def cfg(run_dir: Path, *extra: str):
            return load_config(None, [*overrides, f"train.out_dir={run_dir}", *extra])

        for bad in ("optim.batch_size=33", "optim.batch_size=2"):
            try:
                Trainer(cfg(out / f"bad{rank}", bad))
            except ConfigError as e:
                res.setdefault("errors", []).append(str(e))
        # Uninterrupted run; each rank gets its own out_dir so the test can see
        # that rank 1 writes nothing.
        tr = Trainer(cfg(out / f"ref{rank}"))
        res["aug_seed_state"] = tr.augment.generator.get_state().clone()
        res["ref_summary"] = tr.fit()
        res["ref_method"] = {k: v.clone() for k, v in tr.method.state_dict().items()}
        res["ref_probe"] = {k: v.clone() for k, v in tr.probe.state_dict().items()}
        res["bn_types"] = sorted({type(m).__name__ for m in tr.method.modules() if "Norm" in type(m).__name__})
        # Interrupted after 3 steps, then resumed (shared out_dir, as on one machine).
        Trainer(cfg(out / "cut", "train.max_steps=3")).fit()
        if rank == 0:
            shutil.copy(out / "cut" / "run" / "last.pt", out / "cut3.pt")
        dist.barrier()
        tr2 = Trainer(cfg(out / "cut"), resume=True)
        res["resumed_summary"] = tr2.fit()
        res["resumed_method"] = {k: v.clone() for k, v in tr2.method.state_dict().items()}
        # A single-process checkpoint (written by the test before spawning) resumed on 2 processes.
        tr_one = Trainer(cfg(out / "one"), resume=True)
        res["from_one_summary"] = tr_one.fit()
        res["from_one_method"] = {k: v.clone() for k, v in tr_one.method.state_dict().items()}
        # Deterministic views (see DETERMINISTIC_VIEWS): 2 processes must train
        # like one process on the same global batches.
        tr3 = Trainer(cfg(out / "det", *DETERMINISTIC_VIEWS))
        tr3.fit()
        res["det_method"] = {k: v.clone() for k, v in tr3.method.state_dict().items()}
        torch.save(res, out / f"train_rank{rank}.pt")


def run_ranks(fn: Callable, world: int, tmp: Path, *args: Any, timeout: float = 300.0) -> None:
    """Spawn ``world`` gloo ranks of ``fn(rank, world, init_file, *args)``; fail (not hang) after ``timeout``."""
    init_file = str(tmp / "pg_init")
    if os.path.exists(init_file):
        os.unlink(init_file)
    ctx = mp.start_processes(fn, args=(world, init_file, *args), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{fn.__name__}: {world} ranks did not finish within {timeout} s (deadlock?)")


def signal_worker(rank: int, world: int, init_file: str, out_dir: str, overrides: List[str]) -> None:
    """Only rank 1 gets SIGTERM (after global step 3); both ranks must stop at that step together."""
    from sslext.app.config import load_config
    from sslext.train import Trainer

    out = Path(out_dir)
    with process_group(rank, world, init_file):
        if rank == 1:
            os.environ["SSLEXT_TEST_FAULT"] = "term:step:3"
        cfg = load_config(None, [*overrides, f"train.out_dir={out / 'sig'}"])
        summary = Trainer(cfg).fit()
        os.environ.pop("SSLEXT_TEST_FAULT", None)
        dist.barrier()
        resumed = Trainer(cfg, resume=True)
        res = {
            "summary": summary,
            "resumed_summary": resumed.fit(),
            "method": {k: v.clone() for k, v in resumed.method.state_dict().items()},
        }
        torch.save(res, out / f"sig_rank{rank}.pt")


def moco_queue_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Two MoCo v2 steps per rank on different rows; every rank must hold the same global queue."""
    from sslext.app.methods import build_method
    from sslext.models import build_backbone

    with process_group(rank, world, init_file):
        torch.manual_seed(0)
        method = build_method("mocov2", build_backbone("resnet10", True, 8), projector=[32, 16], queue_size=256)
        g = torch.Generator().manual_seed(3)
        keys = []
        for _ in range(2):
            x = torch.randn(2, 16, 3, 16, 16, generator=g)  # (views, global batch 16, ...)
            rows = slice(rank * 8, (rank + 1) * 8)
            with torch.no_grad():
                method.training_step([x[0, rows], x[1, rows]])
            keys.append(method.queue.keys.clone())
        torch.save({"queue": keys, "ptr": method.queue.ptr.clone()}, Path(out_dir) / f"moco_rank{rank}.pt")


def unequal_batch_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Rank r passes 8 - 2r rows: every gathering loss must raise on every rank, not abort in gloo."""
    from sslext.compat import lightly as compat
    from sslext.distributed import all_reduce_with_grad, gather_with_grad

    n, d = 8 - 2 * rank, 16
    g = torch.Generator().manual_seed(rank)
    z_a, z_b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    calls = {
        "VICRegLoss": lambda: sslext.VICRegLoss()(z_a, z_b),
        "BarlowTwinsLoss": lambda: sslext.BarlowTwinsLoss()(z_a, z_b),
        "TiCoLoss": lambda: sslext.TiCoLoss(dim=d)(z_a, z_b),
        "VICRegTiCoLoss": lambda: sslext.VICRegTiCoLoss(dim=d)(z_a, z_b),
        "compat.VICRegLoss": lambda: compat.VICRegLoss(gather_distributed=True)(z_a, z_b),
        "compat.TiCoLoss": lambda: compat.TiCoLoss(gather_distributed=True)(z_a, z_b),
        "gather_with_grad": lambda: gather_with_grad(z_a),
        # a D x D statistic of another size per rank (compat Barlow Twins all-reduces one)
        "all_reduce_with_grad": lambda: all_reduce_with_grad(torch.ones(d + rank, d + rank)),
    }
    errors: Dict[str, str] = {}
    with process_group(rank, world, init_file):
        for name, call in calls.items():
            try:
                call()
                errors[name] = "no error"
            except ValueError as e:
                errors[name] = str(e)
        # The group is still usable afterwards: equal shapes gather as before.
        errors["after"] = str(tuple(gather_with_grad(torch.full((2, 3), float(rank))).shape))
    torch.save(errors, Path(out_dir) / f"rank{rank}.pt")
