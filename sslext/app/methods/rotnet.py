"""RotNet (Gidaris, Singh & Komodakis, "Unsupervised Representation Learning
by Predicting Image Rotations", ICLR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...models.heads import MLP
from ...pretext import check_widths, rotation_batch, single_view
from .base import Method, register_method


@register_method("rotnet")
class RotNet(Method):
    """Predict which of 0/90/180/270 degrees each image was rotated by.

    Every image of the (single) augmented view is presented at all four
    rotations in one batch, as in the paper; a 4-way classifier on the pooled
    backbone features is trained with cross-entropy. ``head`` lists hidden
    widths of that classifier (``[]``: linear, the paper's classifier on top of
    its last block); the default one hidden layer of 512 keeps the pooled
    features that linear probes evaluate one layer away from the rotation
    logits (the paper found the last layers too task-specific).

    ``last_outputs["feats"]`` are the features of the unrotated images, so the
    online probe costs no extra forward.
    """

    num_views = 1
    DEFAULTS = dict(head=[512])

    HELP = dict(
        head="hidden widths of the rotation classifier",
    )

    def __init__(self, backbone, head) -> None:
        super().__init__(backbone)
        head = check_widths("method.head", head, allow_empty=True)
        self.projector = None  # no embedding head: evaluation uses backbone features only
        self.classifier = MLP([self.feat_dim, *head, 4])

    def training_step(self, views):
        x = single_view(views)
        n = x.shape[0]
        imgs, labels = rotation_batch(x)
        h = self.backbone(imgs)
        logits = self.classifier(h)
        with torch.autocast(device_type=x.device.type, enabled=False):
            loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        self.last_outputs = {"feats": h[:n].detach(), "z": logits[:n].detach()}
        return loss, {"pretext_acc": acc}
