"""SimSiam (Chen & He, CVPR 2021)."""

from __future__ import annotations

from typing import List

import torch

from ...contrastive import SimSiamLoss
from ...models.heads import PredictorHead, build_projector
from ._common import check_positive_int, run_two_views
from .base import Method, register_method


@register_method("simsiam")
class SimSiam(Method):
    """Projector + predictor, stop-gradient on the projections, negative cosine.

    Defaults: solo-learn CIFAR recipe (``scripts/pretrain/cifar/simsiam.yaml``):
    projector 2048-2048-2048 with BN on the output (no affine), predictor
    2048 -> 512 (BN, ReLU) -> 2048.
    """

    DEFAULTS = dict(projector=[2048, 2048, 2048], predictor_hidden=512)

    HELP = dict(
        projector="projector MLP widths",
        predictor_hidden="hidden width of the predictor",
    )

    def __init__(self, backbone, projector, predictor_hidden) -> None:
        super().__init__(backbone)
        self.projector = build_projector(self.feat_dim, projector, last_bn=True)
        self.predictor = PredictorHead(int(projector[-1]), check_positive_int(predictor_hidden, "predictor_hidden"))
        self.loss_fn = SimSiamLoss()

    def project(self, h):
        return self.projector(h)

    def training_step(self, views: List[torch.Tensor]):
        def forward(v):
            h = self.backbone(v)
            z = self.projector(h)
            return h, z, self.predictor(z)

        (h1, z1, p1), (_, z2, p2) = run_two_views(views, forward)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            loss = self.loss_fn(p1.float(), p2.float(), z1.float(), z2.float())
        self.last_outputs = {"feats": h1.detach(), "z": z1.detach()}
        return loss, {k: v.detach().float() for k, v in self.loss_fn.last_terms.items()}
