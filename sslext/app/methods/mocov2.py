"""MoCo v2 (He et al., CVPR 2020; Chen, Fan, Girshick & He, arXiv 2003.04297)."""

from __future__ import annotations

from typing import List

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ...contrastive import InfoNCELoss, KeyQueue
from ...distributed import get_world_size, is_distributed
from ...models.heads import build_projector
from ...models.momentum import check_momentum, cosine_momentum, ema_update_, momentum_copy
from ...models.split_bn import convert_split_bn
from ._common import check_positive_int, run_two_views
from .base import Method, register_method


@register_method("mocov2")
class MoCoV2(Method):
    """Query encoder, momentum key encoder, queue of negatives, InfoNCE.

    * Query encoder: ``backbone`` + ``projector`` (MoCo v2's MLP head,
      Linear-ReLU-Linear, no BN). Key encoder: ``key_backbone`` +
      ``key_projector``, copies with ``requires_grad=False`` (in
      ``state_dict``, not in the optimizer), moved after every optimizer step
      by ``k <- m k + (1 - m) q``; ``m`` goes from ``momentum`` to
      ``final_momentum`` on a cosine over the run (equal values: constant m).
    * ``queue``: ``KeyQueue`` of ``queue_size`` L2-normalised keys; its keys
      and pointer are buffers, so ``--resume`` restores them. The current
      batch's keys are enqueued after the loss is computed, never used as
      their own negatives. ``queue_size`` must be >= the keys enqueued per
      step (batch, or 2 x batch with ``symmetric``); it need not be a multiple.
    * ``symmetric``: also contrast view 2's queries with view 1's keys and
      average the two losses (solo-learn's MoCo v2+); both views' keys are
      enqueued.
    * ``bn_splits > 1``: BatchNorm2d layers of both encoders compute training
      statistics over that many sub-batches and the key batch is shuffled
      before the key encoder (un-shuffled after), the official MoCo CIFAR-10
      demo's single-GPU stand-in for shuffle-BN. ``1``: plain BatchNorm.

    Defaults: solo-learn CIFAR recipe (``scripts/pretrain/cifar/mocov2plus.yaml``):
    head 2048 -> 256, queue 32768, temperature 0.2, m 0.99 -> 0.999,
    symmetric loss. The MoCo v2 paper (ImageNet): K 65536, m 0.999 constant,
    asymmetric.
    """

    DEFAULTS = dict(
        projector=[2048, 256],
        queue_size=32768,
        temperature=0.2,
        momentum=0.99,
        final_momentum=0.999,
        symmetric=True,
        bn_splits=1,
    )

    HELP = dict(
        projector="projector MLP widths [hidden, out]",
        queue_size="negatives kept in the queue",
        temperature="InfoNCE temperature",
        momentum="key encoder EMA momentum at the start",
        final_momentum="EMA momentum reached at the end (cosine)",
        symmetric="also contrast view 2's queries with view 1's keys",
        bn_splits="BatchNorm statistics over this many sub-batches (a single-device stand-in for shuffle BN)",
    )

    def __init__(
        self, backbone, projector, queue_size, temperature, momentum, final_momentum, symmetric, bn_splits
    ) -> None:
        super().__init__(backbone)
        self.momentum, self.final_momentum = check_momentum(momentum, final_momentum)
        if not isinstance(symmetric, bool):
            raise ValueError(f"method.symmetric: expected true/false, got {symmetric!r}")
        self.symmetric = symmetric
        self.bn_splits = check_positive_int(bn_splits, "bn_splits")
        try:
            self.loss_fn = InfoNCELoss(temperature)
        except ValueError as e:
            raise ValueError(f"method.{e}") from None
        if self.bn_splits > 1:
            self.backbone = convert_split_bn(self.backbone, self.bn_splits)
        self.projector = build_projector(self.feat_dim, projector, hidden_bn=False)
        self.key_backbone = momentum_copy(self.backbone)
        self.key_projector = momentum_copy(self.projector)
        self.queue = KeyQueue(check_positive_int(queue_size, "queue_size"), int(projector[-1]))

    def project(self, h):
        return self.projector(h)

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn_splits > 1:
            # A random permutation puts each key in a different BN sub-batch
            # than its query, so BN statistics cannot leak the positive.
            perm = torch.randperm(x.shape[0], device=x.device)
            k = self.key_projector(self.key_backbone(x[perm]))
            return F.normalize(k.float(), dim=1)[torch.argsort(perm)]
        return F.normalize(self.key_projector(self.key_backbone(x)).float(), dim=1)

    def training_step(self, views: List[torch.Tensor]):
        x1, x2 = run_two_views(views, lambda v: v)
        n = x1.shape[0]
        world = get_world_size()
        per_step = (2 * n if self.symmetric else n) * world
        if per_step > self.queue.size:
            raise ValueError(
                f"method.queue_size: {self.queue.size} is smaller than the {per_step} keys enqueued "
                f"per step (batch {n}{' x 2 views, symmetric' if self.symmetric else ''}"
                f"{f' x {world} processes' if world > 1 else ''}); "
                f"use a queue of at least {per_step} (MoCo uses thousands)"
            )
        h1 = self.backbone(x1)
        q1, k2 = self.projector(h1), self._keys(x2)
        if self.symmetric:
            q2, k1 = self.projector(self.backbone(x2)), self._keys(x1)
        # The loss reads a snapshot: autograd keeps the queue for the backward
        # of q, and enqueueing below writes into the buffer in place.
        negatives = self.queue.keys.clone()
        with torch.autocast(device_type=q1.device.type, enabled=False):
            loss = self.loss_fn(q1.float(), k2, negatives)
            terms = dict(self.loss_fn.last_terms)
            if self.symmetric:
                loss = (loss + self.loss_fn(q2.float(), k1, negatives)) / 2
                terms = {k: (v + self.loss_fn.last_terms[k]) / 2 for k, v in terms.items()}
        keys = torch.cat([k1, k2]) if self.symmetric else k2
        if is_distributed():
            # One global queue, as the official code's concat_all_gather: every
            # rank enqueues every rank's keys in rank order, so the queues (and
            # the checkpoint, written from rank 0) stay identical across ranks.
            parts = [torch.empty_like(keys) for _ in range(world)]
            dist.all_gather(parts, keys.contiguous())
            keys = torch.cat(parts)
        self.queue.enqueue(keys)
        self.last_outputs = {"feats": h1.detach(), "z": q1.detach()}
        return loss, {k: v.detach().float() for k, v in terms.items()}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        m = cosine_momentum(self.momentum, self.final_momentum, step, total_steps)
        ema_update_(self.key_backbone, self.backbone, m)
        ema_update_(self.key_projector, self.projector, m)
