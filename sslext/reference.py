"""Plain-PyTorch references, written from the papers' formulas and the official code.

Used by the tests (in float64, as ground truth) and by the benchmarks (as the
peers users run today). Two families:

* ``*_reference``: the formulation of the official repositories, lightly and
  solo-learn: the full D x D covariance / cross-correlation, the off-diagonal
  taken by the flatten-view trick of the official code.
* ``*_gram``: the same losses through the Gram identity
  ``||Z^T Z||_F = ||Z Z^T||_F`` in plain PyTorch, so a benchmark can tell what
  the custom kernels add beyond the algebra.

Every function returns ``(loss, terms)`` with ``terms`` a dict of the loss
terms; the TiCo-family functions take the running covariance ``c`` and return
the updated one as a third element instead of mutating it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def off_diagonal(x: Tensor) -> Tensor:
    """The off-diagonal elements of a square matrix, flattened (official VICReg/Barlow code)."""
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


# ----------------------------------------------------------------- VICReg
def vicreg_reference(z_a, z_b, inv_coeff=25.0, var_coeff=25.0, cov_coeff=1.0, eps=1e-4):
    """VICReg as facebookresearch/vicreg main_vicreg.py computes it (single process)."""
    n, d = z_a.shape
    repr_loss = F.mse_loss(z_a, z_b)
    x = z_a - z_a.mean(dim=0)
    y = z_b - z_b.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + eps)
    std_y = torch.sqrt(y.var(dim=0) + eps)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(d) + off_diagonal(cov_y).pow_(2).sum().div(d)
    loss = inv_coeff * repr_loss + var_coeff * std_loss + cov_coeff * cov_loss
    return loss, {"invariance": repr_loss, "variance": std_loss, "covariance": cov_loss}


def vicreg_gram(z_a, z_b, inv_coeff=25.0, var_coeff=25.0, cov_coeff=1.0, eps=1e-4):
    """VICReg with the covariance term through N x N Gram matrices, in plain PyTorch."""
    n, d = z_a.shape
    repr_loss = F.mse_loss(z_a, z_b)
    x = z_a - z_a.mean(dim=0)
    y = z_b - z_b.mean(dim=0)
    var_x = x.pow(2).sum(0) / (n - 1)
    var_y = y.pow(2).sum(0) / (n - 1)
    std_loss = (F.relu(1 - torch.sqrt(var_x + eps)).mean() + F.relu(1 - torch.sqrt(var_y + eps)).mean()) / 2
    k_x = (x @ x.T) / (n - 1)
    k_y = (y @ y.T) / (n - 1)
    cov_loss = (k_x.pow(2).sum() - var_x.pow(2).sum() + k_y.pow(2).sum() - var_y.pow(2).sum()) / d
    loss = inv_coeff * repr_loss + var_coeff * std_loss + cov_coeff * cov_loss
    return loss, {"invariance": repr_loss, "variance": std_loss, "covariance": cov_loss}


# ------------------------------------------------------------ Barlow Twins
def _bn(z, eps):
    return F.batch_norm(z, None, None, training=True, eps=eps)


def barlow_twins_reference(z_a, z_b, lambd=0.0051, eps=1e-5):
    """Barlow Twins as facebookresearch/barlowtwins main.py computes it (single process)."""
    n = z_a.shape[0]
    c = _bn(z_a, eps).T @ _bn(z_b, eps) / n
    on_diag = torch.diagonal(c).add(-1).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag, {"on_diagonal": on_diag, "off_diagonal": off_diag}


def barlow_twins_gram(z_a, z_b, lambd=0.0051, eps=1e-5):
    """Barlow Twins through <A A^T, B B^T>_F, in plain PyTorch."""
    n = z_a.shape[0]
    a, b = _bn(z_a, eps), _bn(z_b, eps)
    diag = (a * b).sum(0) / n
    frob = ((a @ a.T) * (b @ b.T)).sum() / (n * n)
    on_diag = (diag - 1).pow(2).sum()
    off_diag = frob - diag.pow(2).sum()
    return on_diag + lambd * off_diag, {"on_diagonal": on_diag, "off_diagonal": off_diag}


# -------------------------------------------------------------------- TiCo
def _batch(t: Tensor, batch_cov_in_graph: bool) -> Tensor:
    """The rows the batch matrix B is formed from: detached (lightly's reading) or in the graph."""
    return t if batch_cov_in_graph else t.detach()


def tico_reference(z_a, z_b, c, beta=0.9, rho=8.0, batch_cov_in_graph=False):
    """TiCo as lightly's TiCoLoss computes it (``B`` in the graph with ``batch_cov_in_graph``,
    as TiCo's pseudocode); returns (loss, terms, c_new)."""
    z_a = F.normalize(z_a, dim=1)
    z_b = F.normalize(z_b, dim=1)
    zb = _batch(z_a, batch_cov_in_graph)
    b = torch.mm(zb.T, zb) / z_a.shape[0]
    c_new = beta * c.to(b.dtype) + (1 - beta) * b
    sim = (z_a * z_b).sum(dim=1).mean()
    quad = (torch.mm(z_a, c_new) * z_a).sum(dim=1).mean()
    loss = 1 - sim + rho * quad
    return loss, {"similarity": sim, "contrast": quad}, c_new.detach()


def tico_gram(z_a, z_b, c, beta=0.9, rho=8.0, batch_cov_in_graph=False):
    """TiCo's quadratic term split as (1/N)[beta <C, Z^T Z> + (1-beta)/N ||Z Z^T||^2]."""
    n = z_a.shape[0]
    z_a = F.normalize(z_a, dim=1)
    z_b = F.normalize(z_b, dim=1)
    c = c.to(z_a.dtype)
    zd = _batch(z_a, batch_cov_in_graph)
    proj = beta * (z_a @ c) + (1 - beta) / n * ((z_a @ zd.T) @ zd)
    sim = (z_a * z_b).sum(dim=1).mean()
    quad = (proj * z_a).sum(dim=1).mean()
    loss = 1 - sim + rho * quad
    c_new = beta * c + (1 - beta) * (zd.T @ zd) / n
    return loss, {"similarity": sim, "contrast": quad}, c_new.detach()


# ------------------------------------------------------------- VICReg-TiCo
def vicreg_tico_reference(
    z_a,
    z_b,
    c,
    inv_coeff=25.0,
    var_coeff=25.0,
    cov_coeff=1.0,
    beta=0.9,
    eps=1e-4,
    batch_cov_in_graph=False,
):
    """VICReg with its covariance term replaced by TiCo's running-covariance contrast.

    Both branches are centered; the running covariance is updated with the
    second moment of both centered branches stacked (2N rows); the contrast is
    ``mean_i y_i^T C_new y_i / D`` per branch, summed over branches, with
    ``C_new`` detached (``B`` in the graph, centering included, with
    ``batch_cov_in_graph``). Returns (loss, terms, c_new).
    """
    n, d = z_a.shape
    repr_loss = F.mse_loss(z_a, z_b)
    x = z_a - z_a.mean(dim=0)
    y = z_b - z_b.mean(dim=0)
    std_loss = (
        torch.mean(F.relu(1 - torch.sqrt(x.var(dim=0) + eps))) + torch.mean(F.relu(1 - torch.sqrt(y.var(dim=0) + eps)))
    ) / 2
    stacked = _batch(torch.cat([x, y]), batch_cov_in_graph)
    c_new = beta * c.to(x.dtype) + (1 - beta) * stacked.T @ stacked / (2 * n)
    cov_loss = ((x @ c_new) * x).sum(1).mean() / d + ((y @ c_new) * y).sum(1).mean() / d
    loss = inv_coeff * repr_loss + var_coeff * std_loss + cov_coeff * cov_loss
    return loss, {"invariance": repr_loss, "variance": std_loss, "covariance": cov_loss}, c_new.detach()


def vicreg_tico_gram(
    z_a,
    z_b,
    c,
    inv_coeff=25.0,
    var_coeff=25.0,
    cov_coeff=1.0,
    beta=0.9,
    eps=1e-4,
    batch_cov_in_graph=False,
):
    """VICReg-TiCo with the contrast split through the (2N x 2N) Gram matrix, in plain PyTorch."""
    n, d = z_a.shape
    repr_loss = F.mse_loss(z_a, z_b)
    x = z_a - z_a.mean(dim=0)
    y = z_b - z_b.mean(dim=0)
    var_x = x.pow(2).sum(0) / (n - 1)
    var_y = y.pow(2).sum(0) / (n - 1)
    std_loss = (F.relu(1 - torch.sqrt(var_x + eps)).mean() + F.relu(1 - torch.sqrt(var_y + eps)).mean()) / 2
    stacked = torch.cat([x, y])
    sd = _batch(stacked, batch_cov_in_graph)
    c = c.to(x.dtype)
    proj = beta * (stacked @ c) + (1 - beta) / (2 * n) * ((stacked @ sd.T) @ sd)
    cov_loss = (proj * stacked).sum() / (n * d)
    loss = inv_coeff * repr_loss + var_coeff * std_loss + cov_coeff * cov_loss
    c_new = beta * c + (1 - beta) * sd.T @ sd / (2 * n)
    return loss, {"invariance": repr_loss, "variance": std_loss, "covariance": cov_loss}, c_new.detach()


def vicreg_tico_proposal_reference(
    z_a,
    z_b,
    c,
    inv_coeff=25.0,
    var_coeff=25.0,
    cov_coeff=1.0,
    beta=0.9,
    eps=1e-4,
    batch_cov_in_graph=False,
):
    """VICReg-TiCo as the research proposal writes it, term by term.

    ``z1`` is branch a, centered; ``B = z1^T z1 / n``; ``C = beta c + (1 - beta) B``
    (detached, or in the graph with ``batch_cov_in_graph`` as the proposal's
    text has it); the covariance term is ``mean_i sum_j (z1 C)_ij z1_ij`` — one
    branch, no /D. Invariance and variance are VICReg's. Returns (loss, terms, c_new).
    """
    n = z_a.shape[0]
    repr_loss = F.mse_loss(z_a, z_b)
    z1 = z_a - z_a.mean(dim=0)
    z2 = z_b - z_b.mean(dim=0)
    std_loss = (
        torch.mean(F.relu(1 - torch.sqrt(z1.var(dim=0) + eps)))
        + torch.mean(F.relu(1 - torch.sqrt(z2.var(dim=0) + eps)))
    ) / 2
    zb = _batch(z1, batch_cov_in_graph)
    b = zb.T @ zb / n
    c_new = beta * c.to(z1.dtype) + (1 - beta) * b
    cov_loss = ((z1 @ c_new) * z1).sum(1).mean()
    loss = inv_coeff * repr_loss + var_coeff * std_loss + cov_coeff * cov_loss
    return loss, {"invariance": repr_loss, "variance": std_loss, "covariance": cov_loss}, c_new.detach()
