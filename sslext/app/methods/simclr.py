"""SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020)."""

from __future__ import annotations

from ...contrastive import NTXentLoss
from ...models.heads import build_projector
from .base import Method, register_method


@register_method("simclr")
class SimCLR(Method):
    """NT-Xent over the 2N projections of a batch's two views.

    Defaults: solo-learn CIFAR recipe (``scripts/pretrain/cifar/simclr.yaml``):
    projector 2048 (BN, ReLU) -> 256, temperature 0.2. ``NTXentLoss`` itself
    defaults to the paper's 0.5.
    """

    DEFAULTS = dict(projector=[2048, 256], temperature=0.2)

    HELP = dict(
        projector="projector MLP widths [hidden, out]",
        temperature="NT-Xent temperature",
    )

    def __init__(self, backbone, projector, temperature) -> None:
        super().__init__(backbone)
        try:
            self.loss_fn = NTXentLoss(temperature)
        except ValueError as e:
            raise ValueError(f"method.{e}") from None
        self.projector = build_projector(self.feat_dim, projector)

    def project(self, h):
        return self.projector(h)
