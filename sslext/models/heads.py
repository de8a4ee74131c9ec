"""Projector / expander / predictor MLPs for joint-embedding methods."""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

__all__ = ["MLP", "build_projector", "TiCoHead", "PredictorHead"]


class MLP(nn.Sequential):
    """Linear-BN-ReLU blocks with a plain final Linear.

    ``dims = [in, h1, ..., out]``. This is the VICReg/Barlow Twins expander
    (e.g. ``[512, 2048, 2048, 2048]`` on CIFAR, up to 8192 wide on ImageNet).
    The hidden Linears have no bias because BatchNorm follows them.
    ``last_bn`` adds an affine-free BN on the output (Barlow Twins applies
    one inside its loss; SimSiam-style heads use it on the projector).
    ``hidden_bn=False`` gives Linear(+bias)-ReLU blocks, MoCo v2's head.
    """

    def __init__(self, dims: Sequence[int], last_bn: bool = False, hidden_bn: bool = True) -> None:
        dims = list(dims)
        if len(dims) < 2 or any((not isinstance(d, int)) or isinstance(d, bool) or d <= 0 for d in dims):
            raise ValueError(f"dims: expected >= 2 positive ints, got {dims!r}")
        layers = []
        for i in range(len(dims) - 2):
            if hidden_bn:
                layers += [
                    nn.Linear(dims[i], dims[i + 1], bias=False),
                    nn.BatchNorm1d(dims[i + 1]),
                    nn.ReLU(inplace=True),
                ]
            else:
                layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-2], dims[-1], bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(dims[-1], affine=False))
        super().__init__(*layers)
        self.out_dim = dims[-1]


def build_projector(in_dim: int, widths: Sequence[int], last_bn: bool = False, hidden_bn: bool = True) -> MLP:
    """Projector from backbone features of size ``in_dim`` through ``widths``."""
    if not widths:
        raise ValueError("model.projector: expected a non-empty list of layer widths")
    return MLP([in_dim, *widths], last_bn=last_bn, hidden_bn=hidden_bn)


class TiCoHead(MLP):
    """TiCo projection head: ``in -> hidden (BN, ReLU) -> out``.

    TiCo (Zhu et al., 2022) builds on BYOL/Barlow-style projectors; the loss
    L2-normalises the output itself, so no output BN is used.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__([in_dim, hidden_dim, out_dim])


class PredictorHead(MLP):
    """BYOL/SimSiam-style predictor ``dim -> hidden (BN, ReLU) -> dim`` for asymmetric methods."""

    def __init__(self, dim: int, hidden_dim: int = 4096) -> None:
        super().__init__([dim, hidden_dim, dim])
