"""``nn.Module`` forms of the sslext losses, drop-in replacements for the
losses of lightly, solo-learn and the official repositories.

Each module returns a scalar loss and keeps the last call's terms, detached,
in ``last_terms`` for logging. TiCo and VICReg-TiCo own their running
covariance as the buffer ``C`` (in ``state_dict``, moved by ``.to()``),
updated in place by every forward call unless ``update=False``.

Distributed training: every module takes ``gather_distributed``. With a
multi-process ``torch.distributed`` group, the embeddings of all ranks are
gathered (rank order) before the fused op, so every statistic (means,
variances, covariances, Barlow Twins' batch norm, TiCo's running covariance,
the ``auto`` strategy choice) is that of the global batch, and every rank
computes the same loss. The gather's backward makes the parameter gradients,
after DDP's averaging, equal to one process's on the concatenated batch
(see :mod:`sslext.distributed`). Every rank must pass the same shape.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from . import functional as F
from ._checks import STRATEGIES, check_non_negative, check_pair, check_unit_interval
from .distributed import gather_with_grad, is_distributed

__all__ = ["VICRegLoss", "BarlowTwinsLoss", "TiCoLoss", "VICRegTiCoLoss"]


def _check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return strategy


def _check_gather(value) -> Optional[bool]:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"gather_distributed must be None, True or False, got {value!r}")
    return value


class _TermsMixin:
    last_terms: Dict[str, Tensor]
    gather_distributed: Optional[bool]

    def _keep(self, out):
        loss, terms = out
        self.last_terms = terms
        return loss

    def _gather(self, z_a: Tensor, z_b: Tensor):
        """Both views of the global batch when gathering applies, else the inputs.

        ``gather_distributed=None`` gathers whenever a process group with more
        than one rank is initialised; ``True`` additionally requires an
        initialised group (a single-rank group is fine); ``False`` keeps the
        statistics per rank.
        """
        if self.gather_distributed is False:
            return z_a, z_b
        if self.gather_distributed and not (torch.distributed.is_available()
                                            and torch.distributed.is_initialized()):
            raise RuntimeError("gather_distributed=True: torch.distributed is not initialised "
                               "(call torch.distributed.init_process_group, or pass gather_distributed=None)")
        if not is_distributed():
            return z_a, z_b
        check_pair(z_a, z_b)  # fail on the local inputs, before any collective
        d = z_a.shape[1]
        # One collective for both views: gather [z_a | z_b] and split columns.
        g = gather_with_grad(torch.cat([z_a, z_b], 1))
        return g[:, :d], g[:, d:]


class VICRegLoss(_TermsMixin, nn.Module):
    """VICReg (Bardes, Ponce, LeCun, ICLR 2022); defaults from the paper.

    See :func:`sslext.functional.vicreg_loss`. ``last_terms``: ``invariance``,
    ``variance``, ``covariance`` (before their coefficients).
    """

    def __init__(
        self,
        inv_coeff: float = 25.0,
        var_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        eps: float = 1e-4,
        strategy: str = "auto",
        gather_distributed: Optional[bool] = None,
    ):
        super().__init__()
        self.inv_coeff, self.var_coeff, self.cov_coeff = float(inv_coeff), float(var_coeff), float(cov_coeff)
        self.eps = check_non_negative(eps, "eps")
        self.strategy = _check_strategy(strategy)
        self.gather_distributed = _check_gather(gather_distributed)
        self.last_terms = {}

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        z_a, z_b = self._gather(z_a, z_b)
        return self._keep(
            F.vicreg_loss(
                z_a, z_b, self.inv_coeff, self.var_coeff, self.cov_coeff, self.eps,
                self.strategy, return_terms=True,
            )
        )

    def extra_repr(self) -> str:
        return (f"inv_coeff={self.inv_coeff}, var_coeff={self.var_coeff}, "
                f"cov_coeff={self.cov_coeff}, eps={self.eps}, strategy={self.strategy!r}")


class BarlowTwinsLoss(_TermsMixin, nn.Module):
    """Barlow Twins (Zbontar et al., ICML 2021); ``lambd`` = 0.0051 from the paper.

    See :func:`sslext.functional.barlow_twins_loss`. ``last_terms``:
    ``on_diagonal``, ``off_diagonal``.
    """

    def __init__(self, lambd: float = 0.0051, eps: float = 1e-5, strategy: str = "auto",
                 gather_distributed: Optional[bool] = None):
        super().__init__()
        self.lambd = float(lambd)
        self.eps = check_non_negative(eps, "eps")
        self.strategy = _check_strategy(strategy)
        self.gather_distributed = _check_gather(gather_distributed)
        self.last_terms = {}

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        z_a, z_b = self._gather(z_a, z_b)
        return self._keep(
            F.barlow_twins_loss(z_a, z_b, self.lambd, self.eps, self.strategy, return_terms=True)
        )

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, eps={self.eps}, strategy={self.strategy!r}"


class _RunningCovariance(nn.Module):
    """Owns the running covariance buffer ``C`` (float32, zeros at start).

    With ``dim`` given, ``C`` is allocated at construction (needed for
    ``torch.compile(fullgraph=True)``); without it, ``C`` is allocated on the
    first forward call from the embeddings' dim and device, as lightly does.
    A state_dict holding a ``C`` of any shape loads into an unallocated one.
    """

    def __init__(self, dim: Optional[int]):
        super().__init__()
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        self.register_buffer("C", torch.zeros(dim, dim) if dim is not None else torch.empty(0))

    def _covariance_for(self, z: Tensor) -> Tensor:
        if self.C.numel() == 0:
            self.C = torch.zeros(z.shape[1], z.shape[1], device=z.device, dtype=torch.float32)
        return self.C

    def reset_covariance(self) -> None:
        """Zero the running covariance (e.g. at the start of a new run)."""
        self.C.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "C"
        if key in state_dict and self.C.numel() == 0:
            self.C = torch.empty_like(state_dict[key], device=self.C.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class TiCoLoss(_TermsMixin, _RunningCovariance):
    """TiCo (Zhu, Liu, Huang, 2022); ``beta`` = 0.9 and ``rho`` = 8.0 as lightly's defaults.

    ``loss_fn(z_a, z_b, update=True)``: see :func:`sslext.functional.tico_loss`.
    The running covariance ``C`` is a buffer, updated in place by every call
    with ``update=True`` (pass ``update=False`` to evaluate without touching it).
    ``last_terms``: ``similarity``, ``contrast``.
    """

    def __init__(self, beta: float = 0.9, rho: float = 8.0, dim: Optional[int] = None,
                 strategy: str = "auto", gather_distributed: Optional[bool] = None):
        super().__init__(dim)
        self.beta = check_unit_interval(beta, "beta")
        self.rho = float(rho)
        self.strategy = _check_strategy(strategy)
        self.gather_distributed = _check_gather(gather_distributed)
        self.last_terms = {}

    def forward(self, z_a: Tensor, z_b: Tensor, update: bool = True) -> Tensor:
        # Gathered first, so C is updated from the global batch and stays
        # identical on every rank (no buffer broadcast needed).
        z_a, z_b = self._gather(z_a, z_b)
        c = self._covariance_for(z_a) if isinstance(z_a, Tensor) and z_a.dim() == 2 else self.C
        return self._keep(
            F.tico_loss(z_a, z_b, c, self.beta, self.rho, update, self.strategy, return_terms=True)
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, rho={self.rho}, dim={self.C.shape[0] if self.C.dim() == 2 else None}"


class VICRegTiCoLoss(_TermsMixin, _RunningCovariance):
    """VICReg with its covariance term replaced by TiCo's running-covariance contrast.

    The research proposal sslext exists to test. ``variant="symmetric"``
    (default: both branches, /D scaling) or ``"proposal"`` (the proposal's
    literal one-branch term without /D); every choice (centering, branches,
    scaling, detached ``C_new``) is spelled out in
    :func:`sslext.functional.vicreg_tico_loss`. ``last_terms``: ``invariance``,
    ``variance``, ``covariance``.
    """

    def __init__(
        self,
        inv_coeff: float = 25.0,
        var_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        beta: float = 0.9,
        eps: float = 1e-4,
        dim: Optional[int] = None,
        strategy: str = "auto",
        gather_distributed: Optional[bool] = None,
        variant: str = "symmetric",
    ):
        super().__init__(dim)
        self.inv_coeff, self.var_coeff, self.cov_coeff = float(inv_coeff), float(var_coeff), float(cov_coeff)
        self.beta = check_unit_interval(beta, "beta")
        self.eps = check_non_negative(eps, "eps")
        self.strategy = _check_strategy(strategy)
        self.gather_distributed = _check_gather(gather_distributed)
        if variant not in F.VICREG_TICO_VARIANTS:
            raise ValueError(f"variant must be one of {F.VICREG_TICO_VARIANTS}, got {variant!r}")
        self.variant = variant
        self.last_terms = {}

    def forward(self, z_a: Tensor, z_b: Tensor, update: bool = True) -> Tensor:
        z_a, z_b = self._gather(z_a, z_b)
        c = self._covariance_for(z_a) if isinstance(z_a, Tensor) and z_a.dim() == 2 else self.C
        return self._keep(
            F.vicreg_tico_loss(
                z_a, z_b, c, self.inv_coeff, self.var_coeff, self.cov_coeff, self.beta,
                self.eps, update, self.strategy, return_terms=True, variant=self.variant,
            )
        )

    def extra_repr(self) -> str:
        return (f"inv_coeff={self.inv_coeff}, var_coeff={self.var_coeff}, "
                f"cov_coeff={self.cov_coeff}, beta={self.beta}, eps={self.eps}, variant={self.variant!r}")
