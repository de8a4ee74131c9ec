"""Pieces of a training step that keep a GPU busy: the batch's way to the device,
the autocast/GradScaler settings, the compiled forward and the one read of the
device a step needs (is it finite?).

The host runs ahead of a CUDA device only while it never waits for it. A
non-logging step reads the device once (``step_is_finite``); everything else
it needs later (loss and term sums, probe hits) stays on the device
(``step_stats.EpochStats``).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["BatchStager", "autocast_settings", "make_scaler", "compile_forward", "step_is_finite"]


class BatchStager:
    """This step's uint8 images (and labels) on the training device, through pinned host memory on CUDA.

    On CUDA the batch is gathered into one of ``slots`` pinned buffers and
    copied without blocking (a copy from pageable memory makes the host wait);
    only the batch is pinned, not the dataset (pinning all of it would hold a
    second copy in page-locked host memory). A slot is refilled ``slots``
    steps later, after the event recorded behind its copy: the host waits
    there only if the GPU is that many steps behind.
    """

    def __init__(
        self, images: torch.Tensor, labels: Optional[torch.Tensor], batch: int, device: torch.device, slots: int = 2
    ) -> None:
        self.images, self.labels, self.device = images, labels, device
        self._pinned = device.type == "cuda"
        self._slot = 0
        if self._pinned:
            self._buffers = [
                (
                    torch.empty((batch, *images.shape[1:]), dtype=images.dtype).pin_memory(),
                    None if labels is None else torch.empty(batch, dtype=labels.dtype).pin_memory(),
                )
                for _ in range(slots)
            ]
            self._events: List[Optional[torch.cuda.Event]] = [None] * slots

    def __call__(self, idx: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(images, labels)`` of the dataset rows ``idx`` on the device (labels None without labels)."""
        if not self._pinned:
            y = None if self.labels is None else self.labels[idx].to(self.device, non_blocking=True)
            return self.images[idx].to(self.device, non_blocking=True), y
        slot = self._slot
        self._slot = (slot + 1) % len(self._buffers)
        if self._events[slot] is not None:
            self._events[slot].synchronize()
        n = idx.numel()
        img_buf, lab_buf = self._buffers[slot]
        x = torch.index_select(self.images, 0, idx, out=img_buf[:n]).to(self.device, non_blocking=True)
        y = None
        if lab_buf is not None:
            y = torch.index_select(self.labels, 0, idx, out=lab_buf[:n]).to(self.device, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self._events[slot] = ev
        return x, y


def autocast_settings(trainer: Any) -> Tuple[bool, torch.dtype]:
    """``(enabled, dtype)`` of the step's autocast.

    Reads ``trainer.precision`` (``dtype``: the autocast dtype, None or
    float32 for none) where the trainer has one, else the boolean
    ``trainer.amp`` (bf16 autocast when true).
    """
    prec = getattr(trainer, "precision", None)
    if prec is not None:
        dtype = getattr(prec, "dtype", None)
        return dtype not in (None, torch.float32), dtype or torch.float32
    return bool(trainer.amp), torch.bfloat16


def make_scaler(trainer: Any) -> Optional[torch.amp.GradScaler]:
    """A GradScaler when the trainer's precision asks for one (fp16 autocast), else None.

    ``trainer.precision.scaler`` may be a ready GradScaler or a flag.
    """
    s = getattr(getattr(trainer, "precision", None), "scaler", None)
    if isinstance(s, torch.amp.GradScaler) or s is None or s is False:
        return s or None
    return torch.amp.GradScaler(trainer.device.type)


def compile_forward(model: nn.Module, enabled: bool) -> nn.Module:
    """``model`` (the method, or its DDP wrapper) compiled with ``torch.compile`` when enabled.

    The method's forward is its whole training step up to the loss (both
    views through backbone and heads, then the loss), so one compiled graph
    covers the forward and the loss; the module keeps its parameters, so the
    optimizer, checkpoints and hooks see the same tensors.
    """
    return torch.compile(model) if enabled else model


def step_is_finite(losses: Sequence[torch.Tensor], module: nn.Module, check_grads: bool = True) -> bool:
    """Whether every loss in ``losses`` and (with ``check_grads``) every gradient of ``module`` is finite.

    The step's one read of the device: the flag is reduced on the device and
    only the boolean crosses to the host.
    """
    flags = [torch.isfinite(loss.detach()).all() for loss in losses]
    if check_grads:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if grads:
            flags.append(torch.stack(torch._foreach_norm(grads, float("inf"))).isfinite().all())
    ok = flags[0]
    for f in flags[1:]:
        ok = ok & f
    return bool(ok)
