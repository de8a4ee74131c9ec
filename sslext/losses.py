"""``nn.Module`` forms of the sslext losses, drop-in replacements for the
losses of lightly, solo-learn and the official repositories.

Each module returns a scalar loss and keeps the last call's terms, detached,
in ``last_terms`` for logging. TiCo and VICReg-TiCo own their running
covariance as the buffer ``C`` (float32 or float64, in ``state_dict``; moved by
``.to(device)``, kept in its dtype by ``.to(dtype)``, ``.half()``,
``.bfloat16()``), updated in place by forward calls in training mode (see
:class:`TiCoLoss` for the rule) and never by a batch that would make it
non-finite.

Distributed training: every module takes ``gather_distributed``. With a
multi-process ``torch.distributed`` group, the embeddings of all ranks are
gathered (rank order) before the fused op, so every statistic (means,
variances, covariances, Barlow Twins' batch norm, TiCo's running covariance,
the ``auto`` strategy choice) is that of the global batch, and every rank
computes the same loss. The gather's backward makes the parameter gradients,
after DDP's averaging, equal to one process's on the concatenated batch
(see :mod:`sslext.distributed`). Every rank must pass the same shape; unequal
batch sizes raise a ``ValueError`` naming each rank's shape, on every rank,
before the gather.
"""

from __future__ import annotations

import warnings
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from . import functional as F
from ._checks import STRATEGIES, check_choice, check_flag, check_fraction, check_pair, check_real, opmath_dtype
from .distributed import check_same_shape, gather_with_grad, is_distributed

__all__ = ["VICRegLoss", "BarlowTwinsLoss", "TiCoLoss", "VICRegTiCoLoss"]


def _check_strategy(strategy: str) -> str:
    return check_choice(strategy, "strategy", STRATEGIES)


def _check_coefficients(module, **values) -> None:
    """Each loss weight: a finite number >= 0 (a negative weight rewards what the term penalises)."""
    for name, value in values.items():
        setattr(module, name, check_real(value, name, minimum=0.0))


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
        if self.gather_distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError(
                "gather_distributed=True: torch.distributed is not initialised "
                "(call torch.distributed.init_process_group, or pass gather_distributed=None)"
            )
        if not is_distributed():
            return z_a, z_b
        check_pair(z_a, z_b)  # fail on the local inputs, before any collective
        check_same_shape(z_a, f"{type(self).__name__}: z_a and z_b")
        d = z_a.shape[1]
        # One collective for both views: gather [z_a | z_b] and split columns.
        g = gather_with_grad(torch.cat([z_a, z_b], 1), check_shape=False)
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
        _check_coefficients(self, inv_coeff=inv_coeff, var_coeff=var_coeff, cov_coeff=cov_coeff, eps=eps)
        self.strategy = _check_strategy(strategy)
        self.gather_distributed = _check_gather(gather_distributed)
        self.last_terms = {}

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        z_a, z_b = self._gather(z_a, z_b)
        return self._keep(
            F.vicreg_loss(
                z_a,
                z_b,
                self.inv_coeff,
                self.var_coeff,
                self.cov_coeff,
                self.eps,
                self.strategy,
                return_terms=True,
            )
        )

    def extra_repr(self) -> str:
        return (
            f"inv_coeff={self.inv_coeff}, var_coeff={self.var_coeff}, "
            f"cov_coeff={self.cov_coeff}, eps={self.eps}, strategy={self.strategy!r}"
        )


class BarlowTwinsLoss(_TermsMixin, nn.Module):
    """Barlow Twins (Zbontar et al., ICML 2021); ``lambd`` = 0.0051 from the paper.

    See :func:`sslext.functional.barlow_twins_loss`. ``last_terms``:
    ``on_diagonal``, ``off_diagonal``.
    """

    def __init__(
        self,
        lambd: float = 0.0051,
        eps: float = 1e-5,
        strategy: str = "auto",
        gather_distributed: Optional[bool] = None,
    ):
        super().__init__()
        _check_coefficients(self, lambd=lambd, eps=eps)
        self.strategy = _check_strategy(strategy)
        self.gather_distributed = _check_gather(gather_distributed)
        self.last_terms = {}

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        z_a, z_b = self._gather(z_a, z_b)
        return self._keep(F.barlow_twins_loss(z_a, z_b, self.lambd, self.eps, self.strategy, return_terms=True))

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}, eps={self.eps}, strategy={self.strategy!r}"


_COV_DTYPES = (torch.float32, torch.float64)


def keep_covariance_dtype(module: nn.Module, fn, recurse: bool, apply) -> nn.Module:
    """``module._apply(fn)`` that moves the buffer ``C`` but never casts it to half precision.

    ``model.half()`` / ``.bfloat16()`` / ``.to(torch.float16)`` run ``fn`` on
    every floating buffer; the ops accumulate the running covariance in
    float32 or float64 only, so ``C`` takes the device (and a float32 /
    float64 dtype) that ``fn`` gives and otherwise keeps its own dtype and
    every bit of its value (moved from the original, not cast back).
    """
    before = module._buffers.get("C")
    apply(fn, recurse)
    after = module._buffers.get("C")
    if before is not None and after is not None and after.dtype not in _COV_DTYPES:
        module._buffers["C"] = before.to(device=after.device)
    return module


class _RunningCovariance(nn.Module):
    """Owns the running covariance buffer ``C`` (zeros at start).

    With ``dim`` given, ``C`` is allocated at construction, float32 (needed for
    ``torch.compile(fullgraph=True)``; ``.double()`` makes it float64); without
    it, ``C`` is allocated on the first forward call from the embeddings' dim
    and device, float64 for float64 embeddings and float32 otherwise.
    A state_dict holding a ``C`` of any shape loads into an unallocated one,
    and one saved before the first call (an empty ``C``) loads into a sized
    one as zeros. ``skipped_updates`` (a buffer, not saved) counts the calls
    whose update was refused because it was not finite; the warning that says
    so reads a flag from the device, so a caller that checks every loss itself
    (the trainer: one sync per step) sets ``warn_nonfinite = False``. With
    ``bias_correction``, ``updates`` (a buffer, saved) counts the updates made.
    """

    warn_nonfinite = True

    def __init__(self, dim: Optional[int], update_in_eval: bool, beta: float = 0.9, bias_correction: bool = False):
        super().__init__()
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        self.update_in_eval = check_flag(update_in_eval, "update_in_eval")
        self.beta = check_fraction(beta, "beta")
        self.bias_correction = check_flag(bias_correction, "bias_correction")
        if self.bias_correction and self.beta == 1.0:
            raise ValueError(
                "bias_correction needs beta < 1: with beta = 1, C never leaves its start and 1 - beta^t is 0"
            )
        self.register_buffer("C", torch.zeros(dim, dim) if dim is not None else torch.empty(0))
        self.register_buffer("skipped_updates", torch.zeros((), dtype=torch.int64), persistent=False)
        if self.bias_correction:
            # Only then: checkpoints of the default modules keep their keys.
            self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    def _bias_corrected(self, terms: Tensor, coeff: float, counted: bool) -> Tensor:
        """The terms vector with the contrast (its last entry) divided by 1 - beta^(t+1).

        C_new after t stored updates holds 1 - beta^(t+1) of the embeddings'
        second moment (C starts at zeros), as Adam's moments do; the contrast is
        linear in C_new, so dividing it (and its share of the loss, ``coeff``
        times it) is dividing C_new, in both gradient readings. A tensor
        factor, not a float: no device sync, and one compiled graph for every t.

        Called after ``_count_update`` (``counted``: this call's update was
        counted, so ``updates`` already is t + 1; a refused, non-finite update
        leaves t, and that call's loss is non-finite anyway).
        """
        if not self.bias_correction:
            return terms
        t = self.updates.to(device=terms.device, dtype=torch.float64) + (0 if counted else 1)
        k = (1.0 / (1.0 - torch.pow(self.beta, t))).to(terms.dtype)
        contrast = terms[-1]
        loss = terms[0] + (k - 1) * coeff * contrast
        return torch.cat([loss.unsqueeze(0), terms[1:-1], (k * contrast).unsqueeze(0)])

    def _covariance_for(self, z: Tensor) -> Tensor:
        if not (isinstance(z, Tensor) and z.dim() == 2):
            return self.C  # the functional's checks name the bad argument
        d = z.shape[1]
        if self.C.numel() == 0:
            self.C = torch.zeros(d, d, device=z.device, dtype=opmath_dtype(z.dtype))
        elif self.C.shape != (d, d):
            raise ValueError(
                f"z_a has embedding dim {d} but the running covariance C is {tuple(self.C.shape)} "
                f"(from dim= or earlier calls); call loss_fn.reset_covariance(dim={d}) to start a new "
                f"one of this size, or load a matching state_dict"
            )
        return self.C

    def _should_update(self, update: Optional[bool]) -> bool:
        if update is None:
            return self.training or self.update_in_eval
        return check_flag(update, "update")

    def _count_update(self, finite: Optional[Tensor]) -> None:
        if finite is None:
            return
        self.skipped_updates.add_((~finite).to(self.skipped_updates.dtype))
        if self.bias_correction:
            # Out of place: a compiled graph may recompute the correction in the
            # backward from the buffer it read, which an in-place add would have
            # changed by then.
            self.updates = self.updates + finite.to(self.updates.dtype)
        # Warning needs the flag on the host (a device sync); compiled graphs keep the
        # count only, so they stay free of a data-dependent branch.
        if self.warn_nonfinite and not torch.compiler.is_compiling() and not bool(finite):
            warnings.warn(
                f"{type(self).__name__}: the batch made the running covariance non-finite (NaN or Inf "
                f"in the embeddings?); C was left unchanged ({int(self.skipped_updates)} update(s) "
                "skipped so far, see .skipped_updates)",
                RuntimeWarning,
                stacklevel=5,  # _count_update, forward, Module._call_impl, _wrapped_call_impl, caller
            )

    def reset_covariance(self, dim: Optional[int] = None) -> None:
        """Zero the running covariance (e.g. at the start of a new run).

        With ``dim``, start a new ``(dim, dim)`` one instead (same device and
        dtype), for embeddings of another size. ``skipped_updates`` (and
        ``updates``, with ``bias_correction``) restart at 0.
        """
        if dim is None:
            self.C.zero_()
        else:
            if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
                raise ValueError(f"dim must be a positive int or None, got {dim!r}")
            dtype = self.C.dtype if self.C.dtype in _COV_DTYPES else torch.float32
            self.C = torch.zeros(dim, dim, device=self.C.device, dtype=dtype)
        self.skipped_updates.zero_()
        if self.bias_correction:
            self.updates.zero_()

    def _apply(self, fn, recurse=True):
        return keep_covariance_dtype(self, fn, recurse, super()._apply)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "C"
        saved = state_dict.get(key)
        if isinstance(saved, Tensor):
            if saved.numel() == 0 and self.C.numel() != 0:
                # Saved before the first call: no covariance accumulated yet.
                state_dict = {**state_dict, key: torch.zeros_like(self.C)}
            elif self.C.numel() == 0 and saved.numel() != 0:
                dtype = saved.dtype if saved.dtype in _COV_DTYPES else torch.float32
                self.C = torch.empty(saved.shape, dtype=dtype, device=self.C.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


_UPDATE_RULE = """
    ``C`` is replaced by ``C_new`` after the loss when ``update`` says so:
    ``update=None`` (default) updates in training mode only (``loss_fn.train()``,
    the default; a validation loop under ``.eval()`` leaves it alone) unless the
    module was built with ``update_in_eval=True``; ``update=True`` / ``False``
    updates / never updates, whatever the mode. An update that would make ``C``
    non-finite (a NaN or Inf batch) is skipped: ``C`` keeps its value, the
    buffer ``skipped_updates`` counts it, and a ``RuntimeWarning`` says so (a
    device sync per call; under torch.compile only the count is kept). The
    loss of that call is still returned (NaN): skip the optimizer step as usual.
    A new embedding size needs ``loss_fn.reset_covariance(dim=D)``."""


class TiCoLoss(_TermsMixin, _RunningCovariance):
    __doc__ = (
        """TiCo (Zhu, Liu, Huang, 2022); ``beta`` = 0.9 and ``rho`` = 8.0 as lightly's defaults.

    ``loss_fn(z_a, z_b, update=None)``: see :func:`sslext.functional.tico_loss`.
    ``last_terms``: ``similarity`` (the mean cosine ``mean <z_a, z_b>`` of the
    normalised rows, not the ``1 - cos`` term of the loss) and ``contrast``
    (``mean z_a^T C_new z_a``, before ``rho``); loss = ``1 - similarity + rho *
    contrast``. The contrast grows over the first ~1 / (1 - beta) calls as
    ``C`` fills from zeros, so the loss of a fresh run rises at first.
    ``batch_cov_in_graph=True`` keeps the batch matrix in the gradient (TiCo's
    pseudocode) instead of lightly's detached ``C_new`` (the default).
    ``bias_correction=True`` divides ``C_new`` by ``1 - beta^t`` in the
    contrast (``t`` = updates so far plus this call's; the buffer ``updates``,
    saved in ``state_dict``), as Adam corrects its moments: the contrast then
    has its full weight from the first step instead of filling.
    """
        + _UPDATE_RULE
    )

    def __init__(
        self,
        beta: float = 0.9,
        rho: float = 8.0,
        dim: Optional[int] = None,
        strategy: str = "auto",
        gather_distributed: Optional[bool] = None,
        update_in_eval: bool = False,
        batch_cov_in_graph: bool = False,
        bias_correction: bool = False,
    ):
        super().__init__(dim, update_in_eval, beta, bias_correction)
        self.rho = check_real(rho, "rho", minimum=0.0)
        self.batch_cov_in_graph = check_flag(batch_cov_in_graph, "batch_cov_in_graph")
        self.strategy = _check_strategy(strategy)
        self.gather_distributed = _check_gather(gather_distributed)
        self.last_terms = {}

    def forward(self, z_a: Tensor, z_b: Tensor, update: Optional[bool] = None) -> Tensor:
        update = self._should_update(update)
        # Gathered first, so C is updated from the global batch and stays
        # identical on every rank (no buffer broadcast needed).
        z_a, z_b = self._gather(z_a, z_b)
        c = self._covariance_for(z_a)
        terms, finite = F._tico(
            z_a,
            z_b,
            c,
            self.beta,
            self.rho,
            update,
            self.strategy,
            skip_nonfinite=True,
            batch_cov_in_graph=self.batch_cov_in_graph,
        )
        self._count_update(finite)
        terms = self._bias_corrected(terms, self.rho, counted=finite is not None)
        return self._keep(F._finish(terms, F.TICO_TERMS, True))

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, rho={self.rho}, dim={self.C.shape[0] if self.C.dim() == 2 else None}, "
            f"update_in_eval={self.update_in_eval}, batch_cov_in_graph={self.batch_cov_in_graph}, "
            f"bias_correction={self.bias_correction}"
        )


class VICRegTiCoLoss(_TermsMixin, _RunningCovariance):
    __doc__ = (
        """VICReg with its covariance term replaced by TiCo's running-covariance contrast.

    The research proposal sslext exists to test. ``variant="symmetric"``
    (default: both branches, /D scaling) or ``"proposal"`` (the proposal's
    literal one-branch term without /D); every choice (centering, branches,
    scaling, detached ``C_new`` or, with ``batch_cov_in_graph=True``, the
    batch matrix in the gradient as the proposal writes it; ``bias_correction``
    as in :class:`TiCoLoss`) is spelled out in
    :func:`sslext.functional.vicreg_tico_loss`. ``last_terms``: ``invariance``,
    ``variance``, ``covariance`` (before their coefficients).
    """
        + _UPDATE_RULE
    )

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
        update_in_eval: bool = False,
        batch_cov_in_graph: bool = False,
        bias_correction: bool = False,
    ):
        super().__init__(dim, update_in_eval, beta, bias_correction)
        _check_coefficients(self, inv_coeff=inv_coeff, var_coeff=var_coeff, cov_coeff=cov_coeff, eps=eps)
        self.strategy = _check_strategy(strategy)
        self.gather_distributed = _check_gather(gather_distributed)
        self.variant = check_choice(variant, "variant", F.VICREG_TICO_VARIANTS)
        self.batch_cov_in_graph = check_flag(batch_cov_in_graph, "batch_cov_in_graph")
        self.last_terms = {}

    def forward(self, z_a: Tensor, z_b: Tensor, update: Optional[bool] = None) -> Tensor:
        update = self._should_update(update)
        z_a, z_b = self._gather(z_a, z_b)
        c = self._covariance_for(z_a)
        terms, finite = F._vicreg_tico(
            z_a,
            z_b,
            c,
            self.inv_coeff,
            self.var_coeff,
            self.cov_coeff,
            self.beta,
            self.eps,
            update,
            self.strategy,
            self.variant,
            skip_nonfinite=True,
            batch_cov_in_graph=self.batch_cov_in_graph,
        )
        self._count_update(finite)
        terms = self._bias_corrected(terms, self.cov_coeff, counted=finite is not None)
        return self._keep(F._finish(terms, F.VICREG_TICO_TERMS, True))

    def extra_repr(self) -> str:
        return (
            f"inv_coeff={self.inv_coeff}, var_coeff={self.var_coeff}, "
            f"cov_coeff={self.cov_coeff}, beta={self.beta}, eps={self.eps}, variant={self.variant!r}, "
            f"update_in_eval={self.update_in_eval}, batch_cov_in_graph={self.batch_cov_in_graph}, "
            f"bias_correction={self.bias_correction}"
        )
