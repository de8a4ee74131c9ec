"""Argument checks shared by the functional API, the modules and the fake kernels.

They run at trace time under torch.compile too (they look only at shapes,
dtypes and devices), so a bad call fails with the same message eagerly and
compiled.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
STRATEGIES = ("auto", "gram", "covariance")
STRATEGY_CODES = {"covariance": 0, "gram": 1}


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sslext computes and returns in: float64 stays, the rest is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_embedding(z, name: str) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(z.shape)}")
    if z.shape[0] < 2:
        raise ValueError(f"{name} must have at least 2 rows (batch statistics need N >= 2), got shape {tuple(z.shape)}")
    if z.shape[1] < 1:
        raise ValueError(f"{name} must have at least 1 column, got shape {tuple(z.shape)}")
    if z.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {z.dtype}")


def check_pair(z_a, z_b) -> None:
    check_embedding(z_a, "z_a")
    check_embedding(z_b, "z_b")
    if z_a.shape != z_b.shape:
        raise ValueError(f"z_b must have the shape of z_a {tuple(z_a.shape)}, got {tuple(z_b.shape)}")
    if z_a.device != z_b.device:
        raise ValueError(f"z_b must be on the device of z_a ({z_a.device}), got {z_b.device}")
    if z_a.dtype != z_b.dtype:
        raise TypeError(f"z_b must have the dtype of z_a ({z_a.dtype}), got {z_b.dtype}")


def check_running_cov(c, z, name: str = "c") -> None:
    if not isinstance(c, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(c).__name__}")
    d = z.shape[1]
    if c.dim() != 2 or c.shape[0] != d or c.shape[1] != d:
        raise ValueError(f"{name} must have shape ({d}, {d}) to match the embedding dim, got {tuple(c.shape)}")
    if c.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {c.dtype}")
    if c.device != z.device:
        raise ValueError(f"{name} must be on the device of z ({z.device}), got {c.device}")


def check_unit_interval(value, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_non_negative(value, name: str) -> float:
    value = float(value)
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be a non-negative number, got {value}")
    return value


def resolve_strategy(strategy: str, n: int, d: int, stacklevel: int = 3) -> int:
    """'auto' takes the N x N Gram path when N < D and the D x D path otherwise.

    The rule is both the cheaper and the more accurate choice: the Gram path
    gets the off-diagonal sum as ||Z Z^T||^2 - sum(diag^2), a subtraction that
    loses precision when the diagonal dominates, which is the N >= D regime.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
        strategy = "gram" if n < d else "covariance"
    elif strategy == "gram" and n >= d:
        warnings.warn(
            f"strategy='gram' with N={n} >= D={d}: the Gram path subtracts the diagonal "
            "from the full norm and loses precision when the diagonal dominates, as it "
            "does for N >= D; 'auto' or 'covariance' is exact and cheaper here",
            stacklevel=stacklevel,
        )
    return STRATEGY_CODES[strategy]


# Constructor arguments of the loss modules (the messages of sslext.compat.lightly).
def check_real(value, name: str, *, minimum: float = -math.inf) -> float:
    """A finite real number (not a bool) no smaller than ``minimum``, as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value}")
    return value


def check_fraction(value, name: str) -> float:
    """A real number in [0, 1], as a float."""
    value = check_real(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
