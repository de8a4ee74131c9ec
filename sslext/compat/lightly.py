"""lightly 1.6's ``VICRegLoss``, ``BarlowTwinsLoss`` and ``TiCoLoss``, on sslext's fused ops.

Switching is one import::

    # from lightly.loss import VICRegLoss, BarlowTwinsLoss, TiCoLoss
    from sslext.compat.lightly import VICRegLoss, BarlowTwinsLoss, TiCoLoss

Constructor arguments, defaults, attribute names and forward semantics are
lightly's (``lightly.loss.{vicreg_loss,barlow_twins_loss,tico_loss}``, 1.6):
the same value and the same gradients, with sslext's float32 accumulation
(float64 for float64 inputs). Where lightly behaves in a particular way, so
do these modules:

* VICReg: the invariance term is the local batch's MSE even when
  ``gather_distributed`` gathers the embeddings for the variance and
  covariance terms; inputs may be ``(batch, ..., dim)`` (each middle index is
  its own VICReg problem, averaged, as lightly's generalised terms are).
* Barlow Twins: each rank normalises its own batch; with
  ``gather_distributed`` the ranks' cross-correlation matrices are averaged
  (an autograd-aware all-reduce), not the embeddings gathered.
* TiCo: ``C`` is ``None`` until the first call, then the ``(D, D)`` running
  covariance, replaced (never mutated in place) by ``beta * C + (1 - beta) *
  B`` with ``B`` from the first view only, by every call with
  ``update_covariance_matrix=True``; it is a plain attribute as in lightly
  (not in ``state_dict``) but moves with ``.to()``; like lightly's, it is
  updated in training and eval mode alike, and a NaN batch enters it. It is
  float32 (float64 for float64 inputs), where lightly keeps it in the inputs'
  dtype, and ``.half()`` / ``.to(torch.bfloat16)`` of a parent model leave
  its dtype alone (lightly's plain attribute is not cast either).
* ``gather_distributed`` gathers only when a process group with more than one
  rank is initialised, and raises ``ValueError`` at construction when
  ``torch.distributed`` is unavailable.

Bad inputs raise the exception type lightly raises for them, as a class that is
also a ``ValueError`` (or ``TypeError``) naming the argument: an ``except
AssertionError`` written for lightly still catches a batch of one. lightly
asserts (``AssertionError``) a batch size > 1 and equal shapes in VICReg and
TiCo; its torch calls raise ``RuntimeError`` or ``IndexError`` for inputs of
the wrong rank, ``AttributeError`` for a non-tensor, and, in Barlow Twins,
``ValueError`` for a batch of one, ``RuntimeError`` for batch sizes that
differ and ``AssertionError`` (``RuntimeError`` in versions that stack the
views) for dims that differ. Bad constructor arguments (a non-number, a
negative ``eps``, ``beta`` outside [0, 1]), which lightly accepts, are refused
at construction.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import functional as F
from .. import ops
from .._checks import check_real
from ..distributed import all_reduce_with_grad, check_same_shape, gather_with_grad
from ..losses import keep_covariance_dtype

__all__ = [
    "VICRegLoss",
    "BarlowTwinsLoss",
    "TiCoLoss",
    "LightlyAssertionError",
    "LightlyRuntimeError",
    "LightlyIndexError",
    "LightlyAttributeError",
]


class LightlyAssertionError(ValueError, AssertionError):
    """A bad input for which lightly fails an ``assert``."""


class LightlyRuntimeError(ValueError, RuntimeError):
    """A bad input for which a torch call inside lightly raises ``RuntimeError``."""


class LightlyIndexError(ValueError, IndexError):
    """An input lacking a dimension that lightly indexes (``IndexError``)."""


class LightlyAttributeError(TypeError, AttributeError):
    """A non-tensor input, whose ``.shape`` lightly reads (``AttributeError``)."""


class _BarlowShapeError(LightlyAssertionError, RuntimeError):
    """Barlow Twins views of different dims: lightly's square-matrix assert, or
    ``torch.stack``'s ``RuntimeError`` where the views are stacked."""


# lightly normalises with F.batch_norm's default eps.
_BATCH_NORM_EPS = 1e-5


# The native modules check their arguments with the same function (same messages).
_number = check_real


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    if value and not dist.is_available():
        raise ValueError(
            f"{name} is True but torch.distributed is not available; "
            f"pass {name}=False or use a torch build with distributed support"
        )
    return value


def _gathering(flag: bool) -> bool:
    """lightly's rule: gather only with the flag set and a multi-rank group up."""
    return flag and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _check_tensors(z_a, z_b) -> None:
    for name, z in (("z_a", z_a), ("z_b", z_b)):
        if not isinstance(z, Tensor):
            raise LightlyAttributeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")


def _shape_error(error, name: str, z: Tensor, shape: str):
    return error(f"{name} must have shape {shape}, got {tuple(z.shape)}")


def _check_asserted(z_a: Tensor, z_b: Tensor, max_dim: Optional[int]) -> None:
    """VICReg's and TiCo's checks, in lightly's order: its two asserts, then its torch calls."""
    _check_tensors(z_a, z_b)
    shape = "(batch, dim)" if max_dim == 2 else "(batch, ..., dim)"
    for name, z in (("z_a", z_a), ("z_b", z_b)):
        if z.dim() == 0:
            raise _shape_error(LightlyIndexError, name, z, shape)
    if z_a.shape[0] < 2 or z_b.shape[0] < 2:
        raise LightlyAssertionError(f"z_a and z_b must have batch size > 1, got {z_a.shape[0]} and {z_b.shape[0]}")
    if z_a.shape != z_b.shape:
        raise LightlyAssertionError(
            f"z_a and z_b must have the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    if z_a.dim() == 1:
        # VICReg's covariance einsum needs two dims; TiCo's normalize(dim=1) indexes the second.
        raise _shape_error(LightlyRuntimeError if max_dim is None else LightlyIndexError, "z_a", z_a, shape)
    if max_dim is not None and z_a.dim() > max_dim:
        raise _shape_error(LightlyRuntimeError, "z_a", z_a, shape)


def _check_barlow(z_a: Tensor, z_b: Tensor) -> None:
    """Barlow Twins' checks, in lightly's order: each view's batch norm, then the cross-correlation."""
    _check_tensors(z_a, z_b)
    for name, z in (("z_a", z_a), ("z_b", z_b)):
        if z.dim() < 2:
            raise _shape_error(LightlyIndexError, name, z, "(batch, dim)")
        if z.shape[0] < 2:  # F.batch_norm's own ValueError in lightly
            raise ValueError(f"z_a and z_b must have batch size > 1, got {name} of batch size {z.shape[0]}")
        if z.dim() > 2:
            raise _shape_error(LightlyRuntimeError, name, z, "(batch, dim)")
    if z_a.shape[0] != z_b.shape[0]:
        raise LightlyRuntimeError(
            f"z_a and z_b must have the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    if z_a.shape != z_b.shape:
        raise _BarlowShapeError(f"z_a and z_b must have the same shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")


class VICRegLoss(nn.Module):
    """VICReg (Bardes, Ponce, LeCun, ICLR 2022) with lightly's signature.

    ``lambda_param * mse(z_a, z_b) + mu_param * (v(z_a) + v(z_b)) / 2 +
    nu_param * (c(z_a) + c(z_b))`` with ``v(z) = mean_d relu(1 - sqrt(var_d(z) +
    eps))`` (unbiased variance) and ``c(z)`` = sum of squared off-diagonal
    entries of the unbiased covariance, divided by ``dim``. Inputs
    ``(batch, dim)`` or ``(batch, ..., dim)``.
    """

    def __init__(
        self,
        lambda_param: float = 25.0,
        mu_param: float = 25.0,
        nu_param: float = 1.0,
        gather_distributed: bool = False,
        eps: float = 0.0001,
    ):
        super().__init__()
        self.lambda_param = _number(lambda_param, "lambda_param")
        self.mu_param = _number(mu_param, "mu_param")
        self.nu_param = _number(nu_param, "nu_param")
        self.gather_distributed = _flag(gather_distributed, "gather_distributed")
        self.eps = _number(eps, "eps")
        if self.eps < 0:
            raise ValueError(f"eps must be non-negative, got {self.eps}")

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        _check_asserted(z_a, z_b, None)
        if z_a.dim() > 2:
            # lightly's terms average over every middle index, which is the mean
            # of one VICReg problem per index.
            a = z_a.reshape(z_a.shape[0], -1, z_a.shape[-1])
            b = z_b.reshape(z_b.shape[0], -1, z_b.shape[-1])
            return torch.stack([self._loss_2d(a[:, k], b[:, k]) for k in range(a.shape[1])]).mean()
        return self._loss_2d(z_a, z_b)

    def _loss_2d(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        if not _gathering(self.gather_distributed):
            return F.vicreg_loss(z_a, z_b, self.lambda_param, self.mu_param, self.nu_param, self.eps)
        # Invariance on this rank's rows, variance and covariance on the global batch.
        invariance = torch.nn.functional.mse_loss(z_a, z_b)
        d = z_a.shape[1]
        check_same_shape(z_a, "VICRegLoss: z_a and z_b")
        g = gather_with_grad(torch.cat([z_a, z_b], 1), check_shape=False)
        rest = F.vicreg_loss(g[:, :d], g[:, d:], 0.0, self.mu_param, self.nu_param, self.eps)
        return self.lambda_param * invariance.to(rest.dtype) + rest


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins (Zbontar et al., ICML 2021) with lightly's signature.

    ``c = bn(z_a)^T bn(z_b) / N`` (per-dimension standardisation, biased
    variance, eps 1e-5, as ``F.batch_norm`` in training mode); loss
    ``sum_i (1 - c_ii)^2 + lambda_param * sum_{i != j} c_ij^2``. With
    ``gather_distributed`` and several ranks, ``c`` is the mean of the ranks'
    matrices, each from its own batch's normalisation. Inputs ``(batch, dim)``.
    """

    def __init__(self, lambda_param: float = 5e-3, gather_distributed: bool = False):
        super().__init__()
        self.lambda_param = _number(lambda_param, "lambda_param")
        self.gather_distributed = _flag(gather_distributed, "gather_distributed")

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        _check_barlow(z_a, z_b)
        if not _gathering(self.gather_distributed):
            return F.barlow_twins_loss(z_a, z_b, self.lambda_param, _BATCH_NORM_EPS)
        c = ops.cross_correlation(z_a, z_b, _BATCH_NORM_EPS)
        # Autograd-aware all-reduce: every rank's gradient reaches every c_r.
        c = all_reduce_with_grad(c / dist.get_world_size())
        return ops.off_diagonal_penalty(c, self.lambda_param, 1.0)


class TiCoLoss(nn.Module):
    """TiCo (Zhu, Liu, Huang, 2022) with lightly's signature and running covariance ``C``.

    Rows are L2-normalised; ``B = z_a^T z_a / N`` (detached, first view only);
    ``C_new = beta * C + (1 - beta) * B`` (``C`` starts at zeros); loss
    ``1 - mean_i <z_a_i, z_b_i> + rho * mean_i z_a_i^T C_new z_a_i``, with
    ``C_new`` a constant for the gradients. ``C`` becomes ``C_new`` after the
    call when ``update_covariance_matrix`` is True. Inputs ``(batch, dim)``.
    """

    def __init__(self, beta: float = 0.9, rho: float = 8.0, gather_distributed: bool = False):
        super().__init__()
        self.beta = _number(beta, "beta")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        self.rho = _number(rho, "rho")
        self.gather_distributed = _flag(gather_distributed, "gather_distributed")
        # A buffer so that .to() moves it; not persistent, as lightly keeps it out of state_dict.
        self.register_buffer("C", None, persistent=False)

    def forward(self, z_a: Tensor, z_b: Tensor, update_covariance_matrix: bool = True) -> Tensor:
        _check_asserted(z_a, z_b, 2)
        if _gathering(self.gather_distributed):
            d = z_a.shape[1]
            check_same_shape(z_a, "TiCoLoss: z_a and z_b")
            g = gather_with_grad(torch.cat([z_a, z_b], 1), check_shape=False)
            z_a, z_b = g[:, :d], g[:, d:]
        dtype = torch.float64 if z_a.dtype == torch.float64 else torch.float32
        d = z_a.shape[1]
        if self.C is None:
            self.C = torch.zeros(d, d, device=z_a.device, dtype=dtype)
        elif self.C.shape != (d, d):
            # lightly fails in the C update's broadcast (RuntimeError).
            raise LightlyRuntimeError(
                f"z_a has dim {d} but the running covariance C is {tuple(self.C.shape)}; "
                "set loss.C = None to start a new one"
            )
        elif self.C.dtype != dtype and dtype == torch.float64:
            self.C = self.C.to(dtype)  # lightly's C follows type promotion to float64
        if not update_covariance_matrix:
            return F.tico_loss(z_a, z_b, self.C, self.beta, self.rho, update=False)
        # lightly rebinds C to a new tensor; a copy keeps any reference to the old one intact.
        c = self.C.clone()
        loss = F.tico_loss(z_a, z_b, c, self.beta, self.rho, update=True)
        self.C = c
        return loss

    def _apply(self, fn, recurse=True):
        # lightly's C is a plain attribute that .half() never touches; this buffer
        # follows the device only and keeps its float32 / float64 dtype.
        return keep_covariance_dtype(self, fn, recurse, super()._apply)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, rho={self.rho}"
