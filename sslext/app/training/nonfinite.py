"""What a step with a NaN/Inf loss or gradient does: stop the run, or skip the step without a trace.

``train.on_nonfinite: stop`` raises :class:`NonFiniteLossError`; ``skip``
discards the step (no optimizer update, the buffers the forward pass changed
are put back) up to ``train.max_consecutive_skips`` steps in a row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from .metrics import json_num

__all__ = ["NonFiniteLossError", "NonFinitePolicy", "nonfinite_reason"]


class NonFiniteLossError(FloatingPointError):
    """The training loss or gradients became NaN/Inf; the last checkpoint on disk is untouched.

    ``step`` (1-based global step) and ``epoch`` say where; ``terms`` are the loss terms of that step.
    """

    def __init__(
        self,
        message: str,
        step: Optional[int] = None,
        epoch: Optional[int] = None,
        terms: Optional[Dict[str, float]] = None,
    ) -> None:
        super().__init__(message)
        self.step, self.epoch, self.terms = step, epoch, dict(terms or {})


def nonfinite_reason(lval: float, module: nn.Module) -> Optional[str]:
    """'loss' or 'gradients' when this step's loss or ``module``'s gradients are NaN/Inf, else None."""
    if not math.isfinite(lval):
        return "loss"
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if grads and not bool(torch.stack(torch._foreach_norm(grads, float("inf"))).isfinite().all()):
        return "gradients"
    return None


class NonFinitePolicy:
    """``train.on_nonfinite`` and ``train.max_consecutive_skips``, with the count of skips in a row."""

    def __init__(self, mode: str, max_consecutive_skips: int) -> None:
        self.mode, self.max_consecutive_skips = mode, max_consecutive_skips
        self.consecutive_skips = 0  # checkpointed: a resume continues the count

    def snapshot(self, module: nn.Module) -> Optional[List[Any]]:
        """The buffers a skipped step must give back (None when steps are never skipped).

        The forward pass mutates buffers (BatchNorm statistics, TiCo's running
        covariance, queues); a skipped step must leave them as they were.
        """
        if self.mode != "skip":
            return None
        return [(m, n, b.detach().clone()) for m in module.modules() for n, b in m._buffers.items() if b is not None]

    @staticmethod
    def restore(snap: List[Any]) -> None:
        with torch.no_grad():
            for m, n, saved in snap:
                cur = m._buffers.get(n)
                if cur is not None and cur.shape == saved.shape and cur.dtype == saved.dtype:
                    cur.copy_(saved)  # in place: other holders of the buffer (DDP) keep seeing it
                else:
                    m._buffers[n] = saved

    def step_ok(self) -> None:
        self.consecutive_skips = 0

    def on_bad_step(
        self,
        what: str,
        lval: float,
        terms: Dict[str, torch.Tensor],
        module: nn.Module,
        snap: Optional[List[Any]],
        step: int,
        epoch: int,
        log: Callable[[Dict[str, Any]], None],
        zero_grad: Callable[[], None],
        on_stop: Callable[[], None],
        ckpt_path: Path,
    ) -> None:
        """Log the offending step, then undo its side effects (skip) or raise NonFiniteLossError (stop).

        ``step`` is the 1-based number of the offending step; ``on_stop`` runs
        just before the error is raised (closing a progress bar).
        """
        bad = [n for n, p in module.named_parameters() if p.grad is not None and not bool(p.grad.isfinite().all())]
        skip = self.mode == "skip" and self.consecutive_skips < self.max_consecutive_skips
        log(
            {
                "kind": "nonfinite",
                "step": step,
                "epoch": epoch,
                "what": what,
                "action": "skip" if skip else "stop",
                "loss": json_num(lval),
                **{k: json_num(v) for k, v in terms.items()},
                "nonfinite_grads": bad[:10],
                "consecutive_skips": self.consecutive_skips + (1 if skip else 0),
            }
        )
        zero_grad()
        if skip:
            self.consecutive_skips += 1
            if snap is not None:
                self.restore(snap)
            return
        on_stop()
        why = (
            f"{self.max_consecutive_skips} consecutive steps were already skipped (train.max_consecutive_skips)"
            if self.mode == "skip"
            else "train.on_nonfinite=stop"
        )
        values = {k: float(v) for k, v in terms.items()}
        raise NonFiniteLossError(
            f"non-finite {what} (loss {lval}) at epoch {epoch} step {step}; terms: "
            f"{values}; parameters with non-finite gradients: {bad[:5]}. "
            f"Training stopped ({why}); the last good checkpoint "
            f"({ckpt_path if ckpt_path.exists() else 'none written yet'}) is intact. "
            "Try a lower optim.lr or more warmup, or train.on_nonfinite=skip.",
            step=step,
            epoch=epoch,
            terms=values,
        )
