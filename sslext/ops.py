"""Typed wrappers of the ``torch.ops.sslext`` ops, with their fake kernels and
autograd formulas (schemas: ``csrc/register_ops.cpp``).

The low-level ops are public; the fused loss ops are the engine of
:mod:`sslext.functional` and are easier to use from there. The ops named with a
leading underscore (``_vicreg_loss_backward`` and the like) are the fused
losses' backwards, for autograd and compiled graphs, not for users; like every
op they check each argument in C++ and raise an error naming it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _native  # noqa: F401  (registers torch.ops.sslext.*: _C, or _C_emu)
from ._checks import (
    STRATEGY_CODES,
    check_embedding,
    check_non_negative,
    check_pair,
    check_running_cov,
    check_unit_interval,
    opmath_dtype,
)

_ops = torch.ops.sslext
_GRAM = STRATEGY_CODES["gram"]

__all__ = [
    "batch_covariance",
    "cross_correlation",
    "off_diagonal_penalty",
    "tico_ema_update_",
]


# --------------------------------------------------------------------------
# Public low-level ops
# --------------------------------------------------------------------------


def batch_covariance(z: Tensor) -> Tensor:
    """Unbiased batch covariance ``(z - mean)^T (z - mean) / (N - 1)``.

    Args:
        z: ``(N, D)`` embeddings, N >= 2, float16/bfloat16/float32/float64.
    Returns:
        ``(D, D)`` covariance in float32 (float64 for float64 input).
    """
    check_embedding(z, "z")
    return _ops.batch_covariance(z)


def cross_correlation(z_a: Tensor, z_b: Tensor, eps: float = 1e-5) -> Tensor:
    """Barlow Twins' cross-correlation ``bn(z_a)^T bn(z_b) / N``.

    ``bn`` standardises each dimension with the biased batch variance and
    ``eps``, as ``BatchNorm1d(affine=False)`` does in training mode.
    Returns a ``(D, D)`` float32 matrix (float64 for float64 inputs).
    """
    check_pair(z_a, z_b)
    return _ops.cross_correlation(z_a, z_b, check_non_negative(eps, "eps"))


def off_diagonal_penalty(c: Tensor, off_weight: float = 1.0, diag_target: Optional[float] = None) -> Tensor:
    """``off_weight * sum_{i != j} c_ij^2 (+ sum_i (c_ii - diag_target)^2)``.

    One pass over ``c``: no off-diagonal copy, no mask, no temporary; the sums
    accumulate in float64. With ``diag_target=None`` the diagonal is ignored.
    """
    if not isinstance(c, torch.Tensor):
        raise TypeError(f"c must be a torch.Tensor, got {type(c).__name__}")
    if c.dim() != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"c must be a square 2-D matrix, got shape {tuple(c.shape)}")
    if not c.is_floating_point():
        raise TypeError(f"c must be a floating-point matrix, got {c.dtype}")
    target = None if diag_target is None else float(diag_target)
    return _ops.off_diagonal_penalty(c, float(off_weight), target)


def tico_ema_update_(c: Tensor, z: Tensor, beta: float) -> None:
    """In place: ``c <- beta * c + (1 - beta) * z^T z / N``.

    One rank-N GEMM update of ``c`` (no ``z^T z`` temporary); ``c`` is a
    ``(D, D)`` float32/float64 matrix on ``z``'s device, e.g. a registered
    buffer. Not differentiable: ``z`` is used detached.
    """
    check_embedding(z, "z")
    check_running_cov(c, z, "c")
    _ops.tico_ema_update_(c, z.detach(), check_unit_interval(beta, "beta"))


# --------------------------------------------------------------------------
# Fake kernels: shapes and dtypes only, for torch.compile and meta tensors.
# --------------------------------------------------------------------------


def _empty(like: Tensor, *shape: int, dtype: Optional[torch.dtype] = None) -> Tensor:
    return like.new_empty(shape, dtype=dtype or opmath_dtype(like.dtype))


def _c_new(z: Tensor, strategy: int) -> Tensor:
    d = z.shape[1]
    return _empty(z, 0) if strategy == _GRAM else _empty(z, d, d)


def _grads(z_a: Tensor, z_b: Tensor, output_mask, dtype: torch.dtype):
    """The backwards' outputs: contiguous gradients (whatever the inputs'
    strides, as the kernels write them), an empty tensor where output_mask
    asks for none."""
    if len(output_mask) != 2:
        raise ValueError(f"output_mask must have 2 entries (one per input: z_a, z_b), got {len(output_mask)}")
    return tuple(z.new_empty(z.shape if wanted else (0,), dtype=dtype) for z, wanted in zip((z_a, z_b), output_mask))


@torch.library.register_fake("sslext::batch_covariance")
def _(z):
    check_embedding(z, "z")
    return _empty(z, z.shape[1], z.shape[1])


@torch.library.register_fake("sslext::cross_correlation")
def _(z_a, z_b, eps):
    check_pair(z_a, z_b)
    return _empty(z_a, z_a.shape[1], z_a.shape[1])


@torch.library.register_fake("sslext::off_diagonal_penalty")
def _(c, off_weight, diag_target):
    return _empty(c)


@torch.library.register_fake("sslext::tico_ema_update_")
def _(c, z, beta):
    check_running_cov(c, z, "c")
    return None


@torch.library.register_fake("sslext::vicreg_loss")
def _(z_a, z_b, inv_coeff, var_coeff, cov_coeff, eps, strategy):
    check_pair(z_a, z_b)
    n, d = z_a.shape
    m = n if strategy == _GRAM else d
    return (
        _empty(z_a, 4),
        _empty(z_a, d),
        _empty(z_a, d),
        _empty(z_a, d),
        _empty(z_a, d),
        _empty(z_a, m, m),
        _empty(z_a, m, m),
    )


@torch.library.register_fake("sslext::_vicreg_loss_backward")
def _(
    grad_terms,
    z_a,
    z_b,
    mean_a,
    mean_b,
    var_a,
    var_b,
    mat_a,
    mat_b,
    inv_coeff,
    var_coeff,
    cov_coeff,
    eps,
    strategy,
    output_mask,
):
    check_pair(z_a, z_b)
    return _grads(z_a, z_b, output_mask, z_a.dtype)


@torch.library.register_fake("sslext::vicreg_tico_loss")
def _(z_a, z_b, c, inv_coeff, var_coeff, cov_coeff, beta, eps, strategy, proposal=False, batch_cov_in_graph=False):
    check_pair(z_a, z_b)
    check_running_cov(c, z_a, "c")
    n, d = z_a.shape
    rows = n if proposal else 2 * n  # the rows the contrast is taken over
    return (
        _empty(z_a, 4),
        _empty(z_a, rows, d),
        _empty(z_a, d),
        _empty(z_a, d),
        _empty(z_a, d),
        _empty(z_a, d),
        _empty(z_a, rows, d),
        _c_new(z_a, strategy),
    )


@torch.library.register_fake("sslext::_vicreg_tico_loss_backward")
def _(
    grad_terms,
    z_a,
    z_b,
    mean_a,
    mean_b,
    var_a,
    var_b,
    proj,
    inv_coeff,
    var_coeff,
    cov_coeff,
    eps,
    proposal,
    output_mask,
):
    check_pair(z_a, z_b)
    return _grads(z_a, z_b, output_mask, z_a.dtype)


@torch.library.register_fake("sslext::barlow_twins_loss")
def _(z_a, z_b, lambd, eps, strategy):
    check_pair(z_a, z_b)
    n, d = z_a.shape
    mat = _empty(z_a, 2, n, n) if strategy == _GRAM else _empty(z_a, d, d)
    return (
        _empty(z_a, 3),
        _empty(z_a, n, d),
        _empty(z_a, n, d),
        _empty(z_a, d),
        _empty(z_a, d),
        mat,
    )


@torch.library.register_fake("sslext::_barlow_twins_loss_backward")
def _(grad_terms, norm_a, norm_b, inv_std_a, inv_std_b, mat, lambd, strategy, out_dtype, output_mask):
    return _grads(norm_a, norm_b, output_mask, out_dtype)


@torch.library.register_fake("sslext::tico_loss")
def _(z_a, z_b, c, beta, rho, strategy, batch_cov_in_graph=False):
    check_pair(z_a, z_b)
    check_running_cov(c, z_a, "c")
    n, d = z_a.shape
    return (
        _empty(z_a, 3),
        _empty(z_a, n, d),
        _empty(z_a, n, d),
        _empty(z_a, n),
        _empty(z_a, n),
        _empty(z_a, n, d),
        _c_new(z_a, strategy),
    )


@torch.library.register_fake("sslext::_tico_loss_backward")
def _(grad_terms, zhat_a, zhat_b, norm_a, norm_b, proj, rho, out_dtype, output_mask):
    return _grads(zhat_a, zhat_b, output_mask, out_dtype)


# --------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------


def _standardize(z: Tensor, eps: float):
    x = z.to(opmath_dtype(z.dtype))
    x = x - x.mean(0)
    inv_std = torch.rsqrt(x.pow(2).mean(0) + eps)
    return x * inv_std, inv_std


def _bn_backward(da: Tensor, a: Tensor, inv_std: Tensor) -> Tensor:
    return inv_std * (da - da.mean(0) - a * (da * a).mean(0))


def _batch_covariance_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _batch_covariance_backward(ctx, grad):
    (z,) = ctx.saved_tensors
    x = z.to(grad.dtype)
    x = x - x.mean(0)
    # d/dz of x^T x / (N - 1): x (G + G^T) / (N - 1); centering adds nothing
    # because the columns of x (G + G^T) already sum to zero.
    dz = x @ (grad + grad.mT) / (z.shape[0] - 1)
    return dz.to(z.dtype)


def _cross_correlation_setup(ctx, inputs, output):
    z_a, z_b, eps = inputs
    ctx.save_for_backward(z_a, z_b)
    ctx.eps = eps


def _cross_correlation_backward(ctx, grad):
    z_a, z_b = ctx.saved_tensors
    n = z_a.shape[0]
    a, inv_a = _standardize(z_a, ctx.eps)
    b, inv_b = _standardize(z_b, ctx.eps)
    grad = grad.to(a.dtype)
    dz_a = dz_b = None
    if ctx.needs_input_grad[0]:
        dz_a = _bn_backward(b @ grad.mT / n, a, inv_a).to(z_a.dtype)
    if ctx.needs_input_grad[1]:
        dz_b = _bn_backward(a @ grad / n, b, inv_b).to(z_b.dtype)
    return dz_a, dz_b, None


def _off_diagonal_setup(ctx, inputs, output):
    c, off_weight, diag_target = inputs
    ctx.save_for_backward(c)
    ctx.off_weight, ctx.diag_target = off_weight, diag_target


def _off_diagonal_backward(ctx, grad):
    (c,) = ctx.saved_tensors
    x = c.to(grad.dtype)
    dc = x * (2.0 * ctx.off_weight)
    diag = torch.diagonal(x)
    on = 2.0 * (diag - ctx.diag_target) if ctx.diag_target is not None else torch.zeros_like(diag)
    dc = dc - torch.diag_embed(torch.diagonal(dc)) + torch.diag_embed(on)
    return (grad * dc).to(c.dtype), None, None


def _input_grads(ctx, op, *args):
    """(dz_a, dz_b) from a backward op, computing only what autograd needs."""
    mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])]
    dz_a, dz_b = op(*args, mask)
    return (dz_a if mask[0] else None), (dz_b if mask[1] else None)


def _no_grad_outputs(ctx, output):
    """Only the terms vector is differentiable; the rest feeds the backward.

    Without set_materialize_grads(False) autograd would hand the backward a
    zero tensor for every one of them: a D x D fill per call on the covariance path.
    """
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def _vicreg_setup(ctx, inputs, output):
    z_a, z_b, inv_coeff, var_coeff, cov_coeff, eps, strategy = inputs
    _, mean_a, mean_b, var_a, var_b, mat_a, mat_b = output
    ctx.save_for_backward(z_a, z_b, mean_a, mean_b, var_a, var_b, mat_a, mat_b)
    ctx.params = (inv_coeff, var_coeff, cov_coeff, eps, strategy)
    _no_grad_outputs(ctx, output)


def _vicreg_backward(ctx, grad_terms, *_):
    if grad_terms is None:  # only auxiliary outputs were used
        return (None,) * 7
    dz_a, dz_b = _input_grads(ctx, _ops._vicreg_loss_backward, grad_terms, *ctx.saved_tensors, *ctx.params)
    return dz_a, dz_b, None, None, None, None, None


def _vicreg_tico_setup(ctx, inputs, output):
    z_a, z_b, c, inv_coeff, var_coeff, cov_coeff, beta, eps, strategy, *flags = inputs
    _, _, mean_a, mean_b, var_a, var_b, proj, _ = output
    # proj already carries the batch_cov_in_graph term (the forward added it),
    # so the backward takes no flag for it.
    ctx.save_for_backward(z_a, z_b, mean_a, mean_b, var_a, var_b, proj)
    ctx.params = (inv_coeff, var_coeff, cov_coeff, eps, bool(flags and flags[0]))
    ctx.n_inputs = len(inputs)
    _no_grad_outputs(ctx, output)


def _vicreg_tico_backward(ctx, grad_terms, *_):
    if grad_terms is None:  # only auxiliary outputs were used
        return (None,) * ctx.n_inputs
    dz_a, dz_b = _input_grads(ctx, _ops._vicreg_tico_loss_backward, grad_terms, *ctx.saved_tensors, *ctx.params)
    return (dz_a, dz_b) + (None,) * (ctx.n_inputs - 2)


def _barlow_setup(ctx, inputs, output):
    z_a, z_b, lambd, eps, strategy = inputs
    _, a, b, inv_a, inv_b, mat = output
    ctx.save_for_backward(a, b, inv_a, inv_b, mat)
    ctx.params = (lambd, strategy, z_a.dtype)
    _no_grad_outputs(ctx, output)


def _barlow_backward(ctx, grad_terms, *_):
    if grad_terms is None:  # only auxiliary outputs were used
        return (None,) * 5
    dz_a, dz_b = _input_grads(ctx, _ops._barlow_twins_loss_backward, grad_terms, *ctx.saved_tensors, *ctx.params)
    return dz_a, dz_b, None, None, None


def _tico_setup(ctx, inputs, output):
    # proj already carries the batch_cov_in_graph term (the forward added it).
    _, zhat_a, zhat_b, norm_a, norm_b, proj, _ = output
    z_a = inputs[0]
    ctx.save_for_backward(zhat_a, zhat_b, norm_a, norm_b, proj)
    ctx.params = (inputs[4], z_a.dtype)
    ctx.n_inputs = len(inputs)
    _no_grad_outputs(ctx, output)


def _tico_backward(ctx, grad_terms, *_):
    if grad_terms is None:  # only auxiliary outputs were used
        return (None,) * ctx.n_inputs
    dz_a, dz_b = _input_grads(ctx, _ops._tico_loss_backward, grad_terms, *ctx.saved_tensors, *ctx.params)
    # The running covariance c is a detached statistic, as in the paper.
    return (dz_a, dz_b) + (None,) * (ctx.n_inputs - 2)


for _name, _setup, _backward in (
    ("batch_covariance", _batch_covariance_setup, _batch_covariance_backward),
    ("cross_correlation", _cross_correlation_setup, _cross_correlation_backward),
    ("off_diagonal_penalty", _off_diagonal_setup, _off_diagonal_backward),
    ("vicreg_loss", _vicreg_setup, _vicreg_backward),
    ("vicreg_tico_loss", _vicreg_tico_setup, _vicreg_tico_backward),
    ("barlow_twins_loss", _barlow_setup, _barlow_backward),
    ("tico_loss", _tico_setup, _tico_backward),
):
    torch.library.register_autograd(f"sslext::{_name}", _backward, setup_context=_setup)


# --------------------------------------------------------------------------
# Autocast
# --------------------------------------------------------------------------
# Inside torch.autocast the kernels' own GEMMs would otherwise be autocast
# too, meeting the float32 running covariance or opmath buffers in bf16/fp16
# (a dtype mismatch). Like torch's own losses, the ops run in float32 there:
# half-precision inputs are cast up (float64 ones are left alone) and autocast
# is off inside; autograd casts the gradients back to the inputs' dtype.
for _name in (
    "batch_covariance",
    "cross_correlation",
    "off_diagonal_penalty",
    "tico_ema_update_",
    "vicreg_loss",
    "_vicreg_loss_backward",
    "vicreg_tico_loss",
    "_vicreg_tico_loss_backward",
    "barlow_twins_loss",
    "_barlow_twins_loss_backward",
    "tico_loss",
    "_tico_loss_backward",
):
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(f"sslext::{_name}", _device, torch.float32)
