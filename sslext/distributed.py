"""torch.distributed support: process group setup, rank-0 helpers, the
autograd-aware all-gather the losses use for global-batch statistics, and a
SyncBatchNorm that also runs on CPU (gloo).

Gradient convention (read this before touching :func:`gather_with_grad`):
under DistributedDataParallel every rank ``r`` computes a loss ``L_r`` and DDP
*averages* parameter gradients over the ``W`` ranks. A loss that gathers the
embeddings of all ranks computes the *same* global-batch loss ``L`` on every
rank, so ``sum_r L_r = W * L``. The gather's backward returns to rank ``r``
the gradient of ``sum_s L_s`` with respect to its own rows, i.e.
``all_reduce(SUM)`` of every rank's gradient of the full gathered tensor,
sliced to rank ``r``'s rows: ``W * dL/dz_r``. DDP's average then divides by
``W``, and the parameter gradients are exactly ``dL/dtheta`` of one process
on the concatenated batch. A backward that only slices (no all-reduce) yields
``dL/dtheta / W`` after DDP's averaging: the ``1/world_size`` bug that
several SSL libraries shipped (e.g. lightly's BarlowTwinsLoss, issue #1977).
"""

from __future__ import annotations

import inspect
import os
from typing import Any, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

__all__ = [
    "init_distributed",
    "cleanup_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "is_distributed",
    "check_same_shape",
    "gather_with_grad",
    "all_reduce_with_grad",
    "all_gather_tensors",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "wrap_ddp",
]

# True when init_distributed() created the process group (so it may destroy it).
_CREATED_GROUP = False


def is_distributed() -> bool:
    """A default process group is initialised and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device: Optional[torch.device] = None) -> bool:
    """Initialise the default process group from torchrun's environment.

    Does nothing when ``WORLD_SIZE`` is unset or 1, or when a group is already
    initialised (e.g. by a test harness or an outer script, which then keeps
    ownership of it). The backend follows the training device: NCCL for CUDA,
    gloo for CPU. Returns True when a multi-process group is active.
    """
    global _CREATED_GROUP
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    _CREATED_GROUP = True
    return dist.get_world_size() > 1


def cleanup_distributed() -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    global _CREATED_GROUP
    if _CREATED_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _CREATED_GROUP = False


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective tensors must live for the default group's backend."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """A new tensor: ``t`` summed over ranks (``t`` itself is left as it is)."""
    out = t.contiguous().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


# Ranks exchange shapes as fixed-size vectors (dim count, then sizes, -1 padded),
# so the check itself can never be a mismatched collective.
_MAX_SHAPE_DIMS = 8


def check_same_shape(x: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` on every rank unless every rank's ``x`` has the same shape.

    gloo aborts the process (SIGABRT, no Python exception) and NCCL hangs or
    reads garbage when an all_gather or all_reduce gets tensors of different
    sizes; one small fixed-size all_gather of the shapes first turns that into
    an error naming each rank's shape. Costs one extra collective of 9 ints.
    """
    if x.dim() > _MAX_SHAPE_DIMS:
        raise ValueError(f"{what}: at most {_MAX_SHAPE_DIMS} dims, got shape {tuple(x.shape)}")
    mine = torch.full((_MAX_SHAPE_DIMS + 1,), -1, dtype=torch.int64)
    mine[0] = x.dim()
    mine[1 : 1 + x.dim()] = torch.tensor(x.shape, dtype=torch.int64)
    mine = mine.to(_comm_device())
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    shapes = [tuple(p[1 : 1 + int(p[0])].tolist()) for p in (q.cpu() for q in parts)]
    if len(set(shapes)) > 1:
        per_rank = ", ".join(f"rank {r}: {s}" for r, s in enumerate(shapes))
        raise ValueError(
            f"{what}: every rank must pass the same shape (equal batch sizes: drop the last "
            f"incomplete batch, e.g. DataLoader(drop_last=True)); got {per_rank}"
        )


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward is all_reduce(SUM) + this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank holds the gradient of its own loss with respect to the
        # whole gathered batch; the sum over ranks is the gradient of
        # sum_r L_r (see the module docstring for why SUM and not AVG).
        return _sum_over_ranks(grad)[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor, check_shape: bool = True) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks along dim 0, rank order.

    Differentiable: the backward gives each rank the gradient of the sum of
    all ranks' losses with respect to its own rows (module docstring). Without
    a multi-process group, returns ``x`` unchanged. ``check_shape`` first
    compares the ranks' shapes (:func:`check_same_shape`); callers whose shape
    is fixed by construction may skip that collective.
    """
    if not is_distributed():
        return x
    if check_shape:
        check_same_shape(x, "gather_with_grad")
    return _GatherWithGrad.apply(x)


class _AllReduceWithGrad(torch.autograd.Function):
    """all_reduce(SUM) whose backward is all_reduce(SUM): every rank's loss depends on
    every rank's input, so each input gets the sum of all ranks' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _sum_over_ranks(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _sum_over_ranks(grad)


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks, differentiable (same convention as :func:`gather_with_grad`).

    Used instead of ``torch.distributed.nn.all_reduce``, which torch deprecates
    (a FutureWarning at every call). Without a multi-process group, returns ``x``.
    """
    if not is_distributed():
        return x
    check_same_shape(x, "all_reduce_with_grad")
    return _AllReduceWithGrad.apply(x)


def all_gather_tensors(t: torch.Tensor) -> List[torch.Tensor]:
    """Every rank's ``t`` (same shape and dtype everywhere), returned on CPU, no autograd."""
    if not is_distributed():
        return [t.detach().cpu()]
    dev = _comm_device()
    x = t.detach().to(dev).contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return [p.cpu() for p in parts]


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors, so gloo (CPU) training
    needs this one. Each rank computes the mean, biased variance and count of
    its rows; one differentiable all-gather (:func:`gather_with_grad`, the
    losses' gradient convention) brings every rank's statistics, which are
    combined exactly (parallel variance formula), so the output, the
    gradients after DDP's averaging, and the running statistics equal those of
    ``BatchNorm`` on the concatenated batch. In eval mode, or without a
    multi-process group, it is plain ``BatchNorm``. Accepts (N, C, ...) input.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm: expected input of at least 2 dims (N, C, ...), got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and is_distributed()):
            return super().forward(input)
        if self.momentum is None:
            raise ValueError("SyncBatchNorm: momentum=None (cumulative average) is not supported")
        dims = [0] + list(range(2, input.dim()))
        x = input.float()
        var_r, mean_r = torch.var_mean(x, dim=dims, unbiased=False)
        count_r = torch.full_like(mean_r, float(input.numel() // input.shape[1]))
        # (W, 3, C): C is this module's num_features on every rank, no shape check needed.
        stats = gather_with_grad(torch.stack([mean_r, var_r, count_r])[None], check_shape=False)
        means, vars_, counts = stats[:, 0], stats[:, 1], stats[:, 2].detach()
        total = counts.sum(0)
        mean = (counts * means).sum(0) / total
        var = (counts * (vars_ + (means - mean) ** 2)).sum(0) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                unbiased = var * (total / (total - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = [1, -1] + [1] * (input.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``BatchNorm*d`` in ``module`` by a synchronised one.

    CUDA: ``torch.nn.SyncBatchNorm`` (fused kernels; NOT exercised by our
    tests, which have no multi-GPU machine). Other devices: :class:`SyncBatchNorm`
    above. Parameters are shared, not copied, and buffers keep their values
    and state_dict keys, so checkpoints stay loadable by plain BatchNorm.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out: Any = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        if module.track_running_stats:
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


def wrap_ddp(module: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(module)`` without per-forward buffer broadcasts.

    BN statistics (synchronised) and TiCo's running covariance (updated from
    the gathered batch) are identical on every rank by construction, so the
    default broadcast of rank 0's buffers before each forward would only cost
    a D x D collective per step and hide a divergence. Buffers are still
    synchronised once, at construction. torch >= 2.14 spells the option
    ``forward_sync_buffers`` (``broadcast_buffers`` warns there).
    """
    params = inspect.signature(DDP.__init__).parameters
    kw = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=find_unused_parameters, **kw)
