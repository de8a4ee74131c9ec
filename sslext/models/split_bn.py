"""Split batch norm: BatchNorm statistics over sub-batches of one device's batch.

MoCo's shuffle-BN relies on each GPU normalising its own slice of the batch
and on keys being computed from a shuffled batch, so a query and its key never
share BN statistics (otherwise the model can find its positive through the
batch statistics instead of the image). On one GPU the official MoCo CIFAR-10
demo simulates this with ``SplitBatchNorm`` (statistics over ``num_splits``
sub-batches) plus a shuffle of the key batch; this is that layer.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SplitBatchNorm2d", "convert_split_bn"]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that, in training, normalises each of ``num_splits``
    interleaved sub-batches (samples ``j, j + s, j + 2s, ...``) with its own
    statistics. Running statistics are the mean over the sub-batches; eval
    mode is plain BatchNorm. The state_dict is that of ``BatchNorm2d``.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
            raise ValueError(f"num_splits: expected a positive int, got {num_splits!r}")
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % s:
            raise ValueError(f"method.bn_splits: the batch ({n}) must be divisible by the number of BN splits ({s})")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        rm = self.running_mean.repeat(s) if self.track_running_stats else None
        rv = self.running_var.repeat(s) if self.track_running_stats else None
        wt = self.weight.repeat(s) if self.affine else None
        bs = self.bias.repeat(s) if self.affine else None
        # (N, C, H, W) -> (N/s, s*C, H, W): sample i lands in channel block i % s,
        # so one batch_norm call normalises every sub-batch separately.
        out = F.batch_norm(x.reshape(n // s, s * c, h, w), rm, rv, wt, bs, True, factor, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(rm.view(s, c).mean(0))
                self.running_var.copy_(rv.view(s, c).mean(0))
        return out.reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` (in place) by a
    ``SplitBatchNorm2d`` with the same parameters and running statistics.
    Returns ``module`` (or the new layer if ``module`` itself is a BatchNorm2d).
    """
    if type(module) is nn.BatchNorm2d:
        new = SplitBatchNorm2d(
            module.num_features,
            num_splits,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        ref = next(itertools.chain(module.parameters(), module.buffers()), None)
        if ref is not None:
            new.to(ref.device)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_split_bn(child, num_splits))
    return module
