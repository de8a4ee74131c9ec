"""Momentum (EMA) target networks for MoCo and BYOL, and their momentum schedule."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

__all__ = ["momentum_copy", "ema_update_", "cosine_momentum", "check_momentum"]


def check_momentum(base, final, prefix: str = "method.") -> tuple[float, float]:
    """Validate a (base, final) momentum pair: ``0 <= base <= final <= 1``."""
    for v, nm in ((base, "momentum"), (final, "final_momentum")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError(f"{prefix}{nm}: expected a number in [0, 1], got {v!r}")
    if final < base:
        raise ValueError(
            f"{prefix}final_momentum: expected >= {prefix}momentum ({base}), got {final} "
            "(the schedule only moves the momentum towards 1)"
        )
    return float(base), float(final)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy that receives no gradient.

    ``requires_grad=False`` keeps its parameters out of the optimizer
    (``sslext.optim.param_groups`` skips them) while they stay in the owner's
    ``state_dict`` for checkpoints.
    """
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``t <- m t + (1 - m) o`` for every parameter pair, in place.

    Only parameters are averaged; buffers (BatchNorm running statistics) of
    the target are its own, accumulated by its own forward passes, as in the
    official MoCo and BYOL code.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum: expected a number in [0, 1], got {momentum!r}")
    tp, op = list(target.parameters()), list(online.parameters())
    if len(tp) != len(op) or any(a.shape != b.shape for a, b in zip(tp, op)):
        raise ValueError("target: expected a copy of the online network (same parameters and shapes)")
    for t, o in zip(tp, op):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)


def cosine_momentum(base: float, final: float, step: int, total_steps: int) -> float:
    """Momentum after ``step`` of ``total_steps``: ``final - (final - base) (cos(pi step / total) + 1) / 2``.

    BYOL's schedule (Grill et al. 2020, sec. 3.2): ``base`` at step 0,
    ``final`` at ``step = total_steps`` (clamped beyond). ``base == final``
    is a constant momentum.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps: expected > 0, got {total_steps}")
    if step < 0:
        raise ValueError(f"step: expected >= 0, got {step}")
    t = min(step, total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * t) + 1.0) / 2.0
