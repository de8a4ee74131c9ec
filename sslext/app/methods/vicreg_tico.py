"""VICReg-TiCo: VICReg's variance/invariance terms with TiCo's running covariance."""

from __future__ import annotations

from ...losses import VICRegTiCoLoss
from ...models.heads import build_projector
from .base import Method, register_method


@register_method("vicreg_tico")
class VICRegTiCo(Method):
    """VICReg whose covariance term uses a running (EMA, ``beta``) covariance.

    The running statistics are a buffer of ``VICRegTiCoLoss`` and so part of
    ``state_dict()``. Defaults follow the VICReg CIFAR recipe (expander
    2048-2048-2048, 25/25/1) with TiCo's beta 0.9 — an adaptation, no
    published CIFAR recipe exists for this hybrid. ``variant``: ``symmetric``
    (default) or ``proposal`` (the proposal's literal one-branch term, no /D;
    see :func:`sslext.functional.vicreg_tico_loss`). ``batch_cov_in_graph``:
    the proposal's gradient, batch matrix in the graph (default False:
    lightly's detached reading; docs/api.md).
    """

    DEFAULTS = dict(
        projector=[2048, 2048, 2048],
        inv_coeff=25.0,
        var_coeff=25.0,
        cov_coeff=1.0,
        beta=0.9,
        eps=1e-4,
        strategy="auto",
        variant="symmetric",
        batch_cov_in_graph=False,
        bias_correction=False,
    )

    HELP = dict(
        projector="projector MLP widths (last = embedding dim D)",
        inv_coeff="weight of the invariance (MSE) term",
        var_coeff="weight of the variance hinge",
        cov_coeff="weight of the running-covariance contrast term",
        beta="running covariance momentum: C = beta C + (1 - beta) B",
        eps="epsilon inside the variance hinge's square root",
        strategy="loss op path: auto (Gram when N < D), gram or covariance",
        variant="symmetric (both branches, /D) or proposal (one branch, no /D; docs/methods.md)",
        batch_cov_in_graph="B in the gradient (TiCo pseudocode, the proposal) instead of detached C_new (lightly; default)",
        bias_correction="divide C_new by 1 - beta^t in the contrast (t = updates so far; saved), as Adam does",
    )

    def __init__(
        self,
        backbone,
        projector,
        inv_coeff,
        var_coeff,
        cov_coeff,
        beta,
        eps,
        strategy,
        variant,
        batch_cov_in_graph,
        bias_correction,
    ) -> None:
        super().__init__(backbone)
        self.projector = build_projector(self.feat_dim, projector)
        self.loss_fn = VICRegTiCoLoss(
            inv_coeff=float(inv_coeff),
            var_coeff=float(var_coeff),
            cov_coeff=float(cov_coeff),
            beta=float(beta),
            eps=float(eps),
            dim=int(projector[-1]),
            strategy=strategy,
            variant=variant,
            batch_cov_in_graph=batch_cov_in_graph,
            bias_correction=bias_correction,
        )
        # A bad batch makes the loss non-finite too, which the trainer's one check per step
        # handles (stop, or skip and restore C); the loss's own warning would read a second flag.
        self.loss_fn.warn_nonfinite = False

    def project(self, h):
        return self.projector(h)
