"""VICReg (Bardes, Ponce & LeCun, ICLR 2022)."""
from __future__ import annotations

from ..models.heads import build_projector
from .base import Method, register_method


@register_method("vicreg")
class VICReg(Method):
    """Variance-invariance-covariance regularisation on an MLP expander.

    Defaults: CIFAR-10 recipe of solo-learn (``scripts/pretrain/cifar/
    vicreg.yaml``): expander 2048-2048-2048, coefficients 25/25/1.
    """

    DEFAULTS = dict(projector=[2048, 2048, 2048], inv_coeff=25.0, var_coeff=25.0, cov_coeff=1.0,
                    eps=1e-4, strategy="auto")

    def __init__(self, backbone, projector, inv_coeff, var_coeff, cov_coeff, eps, strategy) -> None:
        super().__init__(backbone)
        from sslext.losses import VICRegLoss  # lazy: the loss extension lives on another branch

        self.projector = build_projector(self.feat_dim, projector)
        self.loss_fn = VICRegLoss(inv_coeff=float(inv_coeff), var_coeff=float(var_coeff),
                                  cov_coeff=float(cov_coeff), eps=float(eps), strategy=strategy)

    def project(self, h):
        return self.projector(h)
