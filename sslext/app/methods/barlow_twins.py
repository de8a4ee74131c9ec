"""Barlow Twins (Zbontar et al., ICML 2021)."""

from __future__ import annotations

from ...losses import BarlowTwinsLoss
from ...models.heads import build_projector
from .base import Method, register_method


@register_method("barlow_twins")
class BarlowTwins(Method):
    """Cross-correlation towards identity on an MLP projector.

    Defaults: solo-learn CIFAR recipe (``scripts/pretrain/cifar/barlow.yaml``):
    projector 2048-2048-2048, lambda 0.0051 and ``loss_scale`` 0.1 (solo-learn's
    ``scale_loss``, which keeps the loss in a range LARS at lr 0.3 likes).
    """

    DEFAULTS = dict(projector=[2048, 2048, 2048], lambd=0.0051, loss_scale=0.1, strategy="auto")

    HELP = dict(
        projector="projector MLP widths (last = embedding dim D)",
        lambd="weight of the off-diagonal cross-correlation terms",
        loss_scale="multiplies the loss (solo-learn's scale_loss)",
        strategy="loss op path: auto (Gram when N < D), gram or covariance",
    )

    def __init__(self, backbone, projector, lambd, loss_scale, strategy) -> None:
        super().__init__(backbone)
        if not isinstance(loss_scale, (int, float)) or loss_scale <= 0:
            raise ValueError(f"method.loss_scale: expected a number > 0, got {loss_scale!r}")
        self.loss_scale = float(loss_scale)
        self.projector = build_projector(self.feat_dim, projector)
        self.loss_fn = BarlowTwinsLoss(lambd=float(lambd), strategy=strategy)

    def project(self, h):
        return self.projector(h)

    def compute_loss(self, z):
        loss, terms = super().compute_loss(z)
        return loss * self.loss_scale, terms
