"""TiCo: Transformation Invariance and Covariance Contrast (Zhu et al., 2022)."""

from __future__ import annotations

from ...losses import TiCoLoss
from ...models.heads import TiCoHead
from .base import Method, register_method


@register_method("tico")
class TiCo(Method):
    """Invariance + contrast against a running covariance of the embeddings.

    The running covariance is a buffer of ``TiCoLoss`` and therefore part of
    ``state_dict()``; it is sized up front (``dim=out_dim``) so checkpoints load
    strictly. Defaults: head 4096 -> 256 with beta 0.9 and rho 8. The TiCo
    paper reports ImageNet settings only; these CIFAR defaults are an
    adaptation, not a published recipe. ``batch_cov_in_graph`` keeps the batch
    matrix in the gradient as TiCo's pseudocode does (default False: lightly's
    detached reading; docs/api.md).
    """

    DEFAULTS = dict(hidden_dim=4096, out_dim=256, beta=0.9, rho=8.0, batch_cov_in_graph=False, bias_correction=False)

    HELP = dict(
        hidden_dim="projector hidden width",
        out_dim="embedding dimension D (size of the running covariance)",
        beta="running covariance momentum: C = beta C + (1 - beta) B",
        rho="weight of the covariance contrast term",
        batch_cov_in_graph="B in the gradient (TiCo pseudocode, the proposal) instead of detached C_new (lightly; default)",
        bias_correction="divide C_new by 1 - beta^t in the contrast (t = updates so far; saved), as Adam does",
    )

    def __init__(self, backbone, hidden_dim, out_dim, beta, rho, batch_cov_in_graph, bias_correction) -> None:
        super().__init__(backbone)
        self.projector = TiCoHead(self.feat_dim, hidden_dim, out_dim)
        self.loss_fn = TiCoLoss(
            beta=float(beta),
            rho=float(rho),
            dim=int(out_dim),
            batch_cov_in_graph=batch_cov_in_graph,
            bias_correction=bias_correction,
        )
        # A bad batch makes the loss non-finite too, which the trainer's one check per step
        # handles (stop, or skip and restore C); the loss's own warning would read a second flag.
        self.loss_fn.warn_nonfinite = False

    def project(self, h):
        return self.projector(h)
