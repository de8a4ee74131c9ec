"""VICReg (Bardes, Ponce & LeCun, ICLR 2022)."""

from __future__ import annotations

from ...losses import VICRegLoss
from ...models.heads import build_projector
from .base import Method, register_method


@register_method("vicreg")
class VICReg(Method):
    """Variance-invariance-covariance regularisation on an MLP expander.

    Defaults: CIFAR-10 recipe of solo-learn (``scripts/pretrain/cifar/
    vicreg.yaml``): expander 2048-2048-2048, coefficients 25/25/1.
    """

    DEFAULTS = dict(
        projector=[2048, 2048, 2048], inv_coeff=25.0, var_coeff=25.0, cov_coeff=1.0, eps=1e-4, strategy="auto"
    )

    HELP = dict(
        projector="projector MLP widths (last = embedding dim D)",
        inv_coeff="weight of the invariance (MSE) term",
        var_coeff="weight of the variance hinge",
        cov_coeff="weight of the covariance (off-diagonal) term",
        eps="epsilon inside the variance hinge's square root",
        strategy="loss op path: auto (Gram when N < D), gram or covariance",
    )

    def __init__(self, backbone, projector, inv_coeff, var_coeff, cov_coeff, eps, strategy) -> None:
        super().__init__(backbone)
        self.projector = build_projector(self.feat_dim, projector)
        self.loss_fn = VICRegLoss(
            inv_coeff=float(inv_coeff),
            var_coeff=float(var_coeff),
            cov_coeff=float(cov_coeff),
            eps=float(eps),
            strategy=strategy,
        )

    def project(self, h):
        return self.projector(h)
