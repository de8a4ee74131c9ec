"""Contrastive predictive coding on images (van den Oord, Li & Vinyals 2018;
CPC v2: Henaff et al., "Data-Efficient Image Recognition with Contrastive
Predictive Coding", ICML 2020)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...pretext import ContextNetwork, bn_stats_frozen, cpc_infonce, patch_grid, single_view
from .base import Method, register_method


def _pos_int(key: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"method.{key}: expected an int >= {lo}, got {v!r}")
    return v


@register_method("cpc")
class CPC(Method):
    """Predict the encodings of patches ``k = 1..steps`` rows below from a
    row-causal context, contrasted against every other patch of the batch.

    The image is cut into overlapping ``patch_size`` patches every
    ``patch_stride`` px (32 px, 8/4 -> 7x7 grid; 28 px -> 6x6); the backbone
    encodes each patch (pooled features ``z``), a masked-convolution
    ``ContextNetwork`` (``context_layers`` residual blocks of
    ``context_kernel`` causal convolutions, ``context_dim`` channels) turns the
    grid into contexts ``c`` where row ``r`` sees rows ``<= r``, and one linear
    map per step ``k`` predicts ``z[r+k]`` from ``c[r]`` (``cpc_infonce``).

    Patches are encoded at native resolution (no upsampling) so the backbone
    sees the pixel scale of the whole images it is evaluated on. BatchNorm
    running statistics come only from a no-grad whole-image forward per step
    (which also feeds the online probe); the patch forward uses batch
    statistics without updating them.
    """

    num_views = 1
    DEFAULTS = dict(patch_size=8, patch_stride=4, steps=3, context_dim=256, context_layers=2, context_kernel=3)

    HELP = dict(
        patch_size="side of the square patches in pixels",
        patch_stride="stride between patches in pixels",
        steps="patch rows ahead the context predicts",
        context_dim="width of the context network",
        context_layers="convolution layers of the context network",
        context_kernel="kernel size of the context network",
    )

    def __init__(self, backbone, patch_size, patch_stride, steps, context_dim, context_layers, context_kernel) -> None:
        super().__init__(backbone)
        self.patch_size = _pos_int("patch_size", patch_size)
        self.patch_stride = _pos_int("patch_stride", patch_stride)
        self.steps = _pos_int("steps", steps)
        try:
            self.context = ContextNetwork(
                self.feat_dim,
                _pos_int("context_dim", context_dim),
                _pos_int("context_layers", context_layers, 0),
                context_kernel,
            )
        except ValueError as e:
            raise ValueError(e.args[0] if str(e).startswith("method.") else f"method.{e}") from None
        self.projector = None  # no embedding head: evaluation uses backbone features only
        self.predictors = nn.ModuleList(nn.Linear(context_dim, self.feat_dim, bias=False) for _ in range(steps))

    def encode_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Patch encodings ``(N, feat_dim, G_h, G_w)`` of a batch of images."""
        try:
            p = patch_grid(x, self.patch_size, self.patch_stride)
        except ValueError as e:
            raise ValueError(f"method.{e} (augment.view1.crop_size gives {x.shape[-2]}x{x.shape[-1]} px)") from None
        n, gh, gw = p.shape[:3]
        if self.steps >= gh:
            raise ValueError(
                f"method.steps: expected < {gh}, the number of patch rows of a {x.shape[-2]} px crop "
                f"with method.patch_size={self.patch_size}, method.patch_stride={self.patch_stride}; "
                f"got {self.steps}"
            )
        with bn_stats_frozen(self.backbone):
            h = self.backbone(p.reshape(n * gh * gw, *p.shape[3:]))
        return h.view(n, gh, gw, -1).permute(0, 3, 1, 2)

    def training_step(self, views):
        x = single_view(views)
        z = self.encode_patches(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = z.float()
            loss, acc = cpc_infonce(z, self.context(z), self.predictors)
        with torch.no_grad():
            feats = self.backbone(x)
        self.last_outputs = {"feats": feats.detach()}
        return loss, {"pretext_acc": acc}
