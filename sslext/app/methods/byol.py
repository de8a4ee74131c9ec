"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020)."""

from __future__ import annotations

from typing import List

import torch

from ...contrastive import BYOLLoss
from ...models.heads import PredictorHead, build_projector
from ...models.momentum import check_momentum, cosine_momentum, ema_update_, momentum_copy
from ._common import check_positive_int, run_two_views
from .base import Method, register_method


@register_method("byol")
class BYOL(Method):
    """Online network (backbone, projector, predictor) regressing an EMA target.

    The target (``target_backbone``, ``target_projector``) is a copy of the
    online backbone and projector with ``requires_grad=False``: it is in
    ``state_dict`` (checkpoints, ``--resume``) but not in the optimizer.
    After optimizer step k of K (``after_optimizer_step``) the target moves
    with ``tau = final - (final - base)(cos(pi k / K) + 1) / 2``, so tau is
    ``momentum`` at the first step and reaches ``final_momentum`` at the end.

    Defaults: solo-learn CIFAR recipe (``scripts/pretrain/cifar/byol.yaml``):
    projector 4096 (BN, ReLU) -> 256, predictor 256 -> 4096 -> 256, tau
    0.99 -> 1.0.
    """

    DEFAULTS = dict(projector=[4096, 256], predictor_hidden=4096, momentum=0.99, final_momentum=1.0)

    HELP = dict(
        projector="projector MLP widths [hidden, out]",
        predictor_hidden="hidden width of the predictor",
        momentum="target network EMA momentum at the start",
        final_momentum="EMA momentum reached at the end (cosine)",
    )

    def __init__(self, backbone, projector, predictor_hidden, momentum, final_momentum) -> None:
        super().__init__(backbone)
        self.momentum, self.final_momentum = check_momentum(momentum, final_momentum)
        self.projector = build_projector(self.feat_dim, projector)
        self.predictor = PredictorHead(int(projector[-1]), check_positive_int(predictor_hidden, "predictor_hidden"))
        self.target_backbone = momentum_copy(self.backbone)
        self.target_projector = momentum_copy(self.projector)
        self.loss_fn = BYOLLoss()

    def project(self, h):
        return self.projector(h)

    def training_step(self, views: List[torch.Tensor]):
        def forward(v):
            h = self.backbone(v)
            z = self.projector(h)
            with torch.no_grad():
                t = self.target_projector(self.target_backbone(v))
            return h, z, self.predictor(z), t

        (h1, z1, p1, t1), (_, _, p2, t2) = run_two_views(views, forward)
        with torch.autocast(device_type=p1.device.type, enabled=False):
            loss = self.loss_fn(p1.float(), p2.float(), t1.float(), t2.float())
        self.last_outputs = {"feats": h1.detach(), "z": z1.detach()}
        return loss, {k: v.detach().float() for k, v in self.loss_fn.last_terms.items()}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        tau = cosine_momentum(self.momentum, self.final_momentum, step, total_steps)
        ema_update_(self.target_backbone, self.backbone, tau)
        ema_update_(self.target_projector, self.projector, tau)
