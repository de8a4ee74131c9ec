"""Functional forms of the sslext losses.

Every function takes two ``(N, D)`` embedding batches (the two views), any of
float16 / bfloat16 / float32 / float64, and returns a scalar loss computed with
float32 accumulation (float64 for float64 inputs), differentiable with respect
to both inputs. With ``return_terms=True`` it returns ``(loss, terms)`` where
``terms`` maps each loss term's name to a detached scalar tensor.

``strategy`` chooses how the quadratic terms are computed:

* ``"gram"``: through N x N Gram matrices, ``||Z^T Z||_F = ||Z Z^T||_F``:
  O(N^2 D) time and O(N^2) memory;
* ``"covariance"``: through the D x D covariance: O(N D^2) time, O(D^2) memory;
* ``"auto"`` (default): Gram when N < D, covariance otherwise. This is the
  cheaper path, and also the accurate one: the Gram path obtains the
  off-diagonal sum by subtracting the diagonal from the full norm, which loses
  precision when the diagonal dominates (N >= D).
"""

from __future__ import annotations

from typing import Dict, Tuple, Union

import torch
from torch import Tensor

from . import ops as _ops_module  # noqa: F401  (registers fake kernels and autograd)
from ._checks import (
    check_flag,
    check_non_negative,
    check_pair,
    check_running_cov,
    check_unit_interval,
    resolve_strategy,
)

_ops = torch.ops.sslext

LossOut = Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]

__all__ = ["vicreg_loss", "barlow_twins_loss", "tico_loss", "vicreg_tico_loss"]


def _update_running_cov(c: Tensor, c_new: Tensor, rows: Tensor, beta: float) -> None:
    """c <- C_new: a copy where the covariance path formed C_new anyway, else one
    rank-N GEMM on the rows the loss already normalised / centered."""
    if c_new.numel():
        c.copy_(c_new)
    else:
        _ops.tico_ema_update_(c, rows, beta)


def _update_running_cov_if_finite(c: Tensor, c_new: Tensor, rows: Tensor, beta: float) -> Tensor:
    """c <- C_new only where C_new is all finite; returns that condition (0-d bool).

    A NaN or Inf batch would otherwise stay in ``c`` for good (every later
    C_new inherits it through ``beta * c``). ``torch.where`` instead of a
    Python branch keeps this free of a device sync and traceable by
    torch.compile; the Gram path pays one D x D copy to get a candidate.
    """
    if c_new.numel():
        candidate = c_new
    else:
        candidate = c.clone()
        _ops.tico_ema_update_(candidate, rows, beta)
    finite = torch.isfinite(candidate).all()
    c.copy_(torch.where(finite, candidate, c))
    return finite


def _finish(terms: Tensor, names, return_terms: bool) -> LossOut:
    loss = terms[0]
    if not return_terms:
        return loss
    detached = terms.detach()
    return loss, {name: detached[i + 1] for i, name in enumerate(names)}


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    inv_coeff: float = 25.0,
    var_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
    strategy: str = "auto",
    return_terms: bool = False,
) -> LossOut:
    """VICReg (Bardes, Ponce, LeCun, ICLR 2022), as the official code computes it.

    ``inv_coeff * mse(z_a, z_b) + var_coeff * variance + cov_coeff * covariance``
    with ``variance = (mean(relu(1 - std(z_a))) + mean(relu(1 - std(z_b)))) / 2``
    (``std = sqrt(var + eps)``, unbiased variance) and ``covariance`` = the sum of
    squared off-diagonal entries of each branch's covariance, divided by D and
    summed over the two branches. Terms: ``invariance``, ``variance``, ``covariance``.
    """
    check_pair(z_a, z_b)
    code = resolve_strategy(strategy, z_a.shape[0], z_a.shape[1])
    terms = _ops.vicreg_loss(
        z_a,
        z_b,
        float(inv_coeff),
        float(var_coeff),
        float(cov_coeff),
        check_non_negative(eps, "eps"),
        code,
    )[0]
    return _finish(terms, ("invariance", "variance", "covariance"), return_terms)


def barlow_twins_loss(
    z_a: Tensor,
    z_b: Tensor,
    lambd: float = 0.0051,
    eps: float = 1e-5,
    strategy: str = "auto",
    return_terms: bool = False,
) -> LossOut:
    """Barlow Twins (Zbontar et al., ICML 2021), as the official code computes it.

    ``c = bn(z_a)^T bn(z_b) / N`` with ``bn`` = per-dimension standardisation
    (biased variance, ``eps``), as ``BatchNorm1d(affine=False)`` in training
    mode; loss ``sum_i (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2``.
    Terms: ``on_diagonal``, ``off_diagonal`` (before ``lambd``).
    """
    check_pair(z_a, z_b)
    code = resolve_strategy(strategy, z_a.shape[0], z_a.shape[1])
    terms = _ops.barlow_twins_loss(z_a, z_b, float(lambd), check_non_negative(eps, "eps"), code)[0]
    return _finish(terms, ("on_diagonal", "off_diagonal"), return_terms)


def tico_loss(
    z_a: Tensor,
    z_b: Tensor,
    c: Tensor,
    beta: float = 0.9,
    rho: float = 8.0,
    update: bool = True,
    strategy: str = "auto",
    return_terms: bool = False,
    batch_cov_in_graph: bool = False,
) -> LossOut:
    """TiCo (Zhu, Liu, Huang, 2022), as the paper and lightly's ``TiCoLoss`` compute it.

    Rows are L2-normalised; ``B = z_a^T z_a / N``;
    ``C_new = beta * c + (1 - beta) * B``; loss
    ``1 - mean_i <z_a_i, z_b_i> + rho * mean_i z_a_i^T C_new z_a_i``.
    ``c`` (``(D, D)``, float32/float64, on the inputs' device) is the running
    covariance; with ``update=True`` it is replaced by ``C_new`` in place after
    the loss is computed (as lightly does on every forward call). Gradients
    treat ``C_new`` as a constant by default (lightly's reading); with
    ``batch_cov_in_graph=True``, ``B`` stays in the graph (TiCo's pseudocode)
    and the contrast's gradient gains ``2 (1 - beta) / N * z_a B`` beside
    ``2 / N * z_a C_new`` (``c`` itself is never differentiated). Terms: ``similarity`` (the mean cosine
    ``mean_i <z_a_i, z_b_i>``, not the ``1 - cos`` term) and ``contrast`` (before
    ``rho``). With ``c`` starting at zeros, the contrast, and the loss, rise over
    the first ~1 / (1 - beta) calls as ``c`` fills. A NaN or Inf batch enters
    ``c`` here; the modules (:class:`sslext.TiCoLoss`) refuse such an update.
    """
    terms, _ = _tico(
        z_a, z_b, c, beta, rho, update, strategy, skip_nonfinite=False, batch_cov_in_graph=batch_cov_in_graph
    )
    return _finish(terms, TICO_TERMS, return_terms)


TICO_TERMS = ("similarity", "contrast")


def _tico(z_a, z_b, c, beta, rho, update, strategy, skip_nonfinite, batch_cov_in_graph=False):
    """TiCo's terms, and with ``update`` and ``skip_nonfinite`` whether C_new was finite (else None)."""
    check_pair(z_a, z_b)
    check_running_cov(c, z_a, "c")
    beta = check_unit_interval(beta, "beta")
    graph = check_flag(batch_cov_in_graph, "batch_cov_in_graph")
    code = resolve_strategy(strategy, z_a.shape[0], z_a.shape[1], stacklevel=4)
    out = _ops.tico_loss(z_a, z_b, c, beta, float(rho), code, graph)
    return out[0], _apply_update(c, out, beta, update, skip_nonfinite)


def _apply_update(c, out, beta, update, skip_nonfinite):
    if not update:
        return None
    if skip_nonfinite:
        return _update_running_cov_if_finite(c, out[-1], out[1], beta)
    _update_running_cov(c, out[-1], out[1], beta)
    return None


VICREG_TICO_VARIANTS = ("symmetric", "proposal")


def vicreg_tico_loss(
    z_a: Tensor,
    z_b: Tensor,
    c: Tensor,
    inv_coeff: float = 25.0,
    var_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    beta: float = 0.9,
    eps: float = 1e-4,
    update: bool = True,
    strategy: str = "auto",
    return_terms: bool = False,
    variant: str = "symmetric",
    batch_cov_in_graph: bool = False,
) -> LossOut:
    """VICReg whose covariance term is replaced by TiCo's running-covariance contrast.

    The invariance and variance terms are VICReg's (see :func:`vicreg_loss`).
    Both variants center each branch with its own batch mean (VICReg's
    covariance, and the proposal's "standard covariance", assume centered
    embeddings), do NOT L2-normalise (VICReg's variance term fixes the scale),
    include the diagonal of ``C_new`` (as TiCo does) and, by default, treat
    ``C_new`` as a constant in the gradient (lightly's detach). With
    ``batch_cov_in_graph=True`` the batch matrix ``B`` stays in the graph (the
    proposal's text, TiCo's pseudocode): for the contrast ``sum_i y_i^T C_new
    y_i`` over the M rows ``Y``, the gradient ``2 Y C_new`` gains ``2 (1 - beta)
    Y B``, under the same scaling (/ (N D) symmetric, / N proposal); ``c`` is
    never differentiated. With ``update=True``, ``c`` is
    replaced by ``C_new`` in place after the loss.

    ``variant="symmetric"`` (default):

    * the running covariance sees both branches: ``B = Y^T Y / (2N)`` with
      ``Y = [z_a - mean(z_a); z_b - mean(z_b)]`` (2N x D), and
      ``C_new = beta * c + (1 - beta) * B``;
    * the term is ``sum over branches of mean_i y_i^T C_new y_i / D``: the /D
      and the sum over branches mirror VICReg's covariance term so that
      ``cov_coeff`` keeps VICReg's scale (default 1.0).

    ``variant="proposal"``, the research proposal as written:
    ``B = z1^T z1 / n; C <- beta C + (1 - beta) B; term = mean_i sum_j (z1 C)_ij z1_ij``
    with ``z1 = z_a - mean(z_a)``: one branch only (``z_b`` enters through
    the invariance and variance terms alone) and no division by D, so the
    term is about D times the symmetric one's per-branch value and
    ``cov_coeff`` must be chosen for that scale.

    Terms: ``invariance``, ``variance``, ``covariance``.
    """
    terms, _ = _vicreg_tico(
        z_a,
        z_b,
        c,
        inv_coeff,
        var_coeff,
        cov_coeff,
        beta,
        eps,
        update,
        strategy,
        variant,
        skip_nonfinite=False,
        batch_cov_in_graph=batch_cov_in_graph,
    )
    return _finish(terms, VICREG_TICO_TERMS, return_terms)


VICREG_TICO_TERMS = ("invariance", "variance", "covariance")


def _vicreg_tico(
    z_a,
    z_b,
    c,
    inv_coeff,
    var_coeff,
    cov_coeff,
    beta,
    eps,
    update,
    strategy,
    variant,
    skip_nonfinite,
    batch_cov_in_graph=False,
):
    """VICReg-TiCo's terms, and with ``update`` and ``skip_nonfinite`` whether C_new was finite (else None)."""
    check_pair(z_a, z_b)
    check_running_cov(c, z_a, "c")
    beta = check_unit_interval(beta, "beta")
    if variant not in VICREG_TICO_VARIANTS:
        raise ValueError(f"variant must be one of {VICREG_TICO_VARIANTS}, got {variant!r}")
    proposal = variant == "proposal"
    graph = check_flag(batch_cov_in_graph, "batch_cov_in_graph")
    # The contrast runs over the stacked rows (2N symmetric, N for the proposal),
    # so the Gram path pays off while that count is below D.
    rows = z_a.shape[0] if proposal else 2 * z_a.shape[0]
    code = resolve_strategy(strategy, rows, z_a.shape[1], stacklevel=4)
    out = _ops.vicreg_tico_loss(
        z_a,
        z_b,
        c,
        float(inv_coeff),
        float(var_coeff),
        float(cov_coeff),
        beta,
        check_non_negative(eps, "eps"),
        code,
        proposal,
        graph,
    )
    return out[0], _apply_update(c, out, beta, update, skip_nonfinite)
