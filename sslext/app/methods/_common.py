"""Helpers shared by the two-view methods (no method is registered here)."""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple, TypeVar

import torch

__all__ = ["check_positive_int", "run_two_views"]

T = TypeVar("T")


def check_positive_int(value, key: str) -> int:
    """``value`` as an int > 0, else ``ValueError`` naming ``method.<key>``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"method.{key}: expected a positive integer, got {value!r}")
    return value


def run_two_views(views: Sequence[torch.Tensor], forward: Callable[[torch.Tensor], T]) -> Tuple[T, T]:
    """``forward`` applied to each of exactly two views, separately.

    Views go through one at a time so BatchNorm statistics are per view, as in
    the reference implementations.
    """
    if not isinstance(views, (list, tuple)) or len(views) != 2:
        raise ValueError(
            f"views: expected a list of 2 batches, got {type(views).__name__} of "
            f"length {len(views) if hasattr(views, '__len__') else '?'}"
        )
    out: List[T] = [forward(v) for v in views]
    return out[0], out[1]
