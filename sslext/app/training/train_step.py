"""One optimizer step of the trainer: forward and loss, the step-wide finiteness decision, the update, the online probe.

Reads the device once per step (is the step finite?) unless the step logs;
the loss, terms and probe statistics are summed on the device.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .build import IGNORE_LABEL
from .nonfinite import nonfinite_reason
from .step import step_is_finite

# ``tr`` below is the :class:`~.trainer.Trainer` (not imported: the trainer imports this module).

__all__ = ["train_step"]


def loss_all_ranks(tr: Any, loss: torch.Tensor) -> torch.Tensor:
    """The loss summed over the ranks (this rank's loss alone without DDP), on the device.

    Under DDP a rank that stopped alone would leave the others blocked in
    the next collective, so the non-finite decision is taken together:
    the sum is non-finite on every rank when any rank's loss is.
    """
    if tr.world_size == 1:
        return loss.detach()
    s = loss.detach().float().reshape(1).clone()
    dist.all_reduce(s)
    return s


def loss_value(tr: Any, loss: torch.Tensor, loss_all: torch.Tensor) -> float:
    """This rank's loss as a float; NaN on every rank when any rank's is non-finite (reads the device)."""
    lval = float(loss.detach())
    if tr.world_size > 1 and not math.isfinite(float(loss_all)) and math.isfinite(lval):
        return float("nan")
    return lval


def global_probe_stats(tr: Any, correct: torch.Tensor, probe_loss: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """(correct count, mean probe loss) over the global batch as device tensors (one collective under DDP)."""
    if tr.world_size == 1:
        return correct, probe_loss.detach()
    st = torch.stack([correct.float(), probe_loss.detach().float()])
    dist.all_reduce(st)
    return torch.round(st[0]), st[1] / tr.world_size


def train_step(tr: Any, perm: torch.Tensor, pbar: Any = None) -> None:
    """One optimizer step on this rank's slice of the next global batch of ``perm`` (or a skipped step)."""
    t = tr.cfg["train"]
    if tr.stream is not None:  # the workers cropped this rank's slice of the global batch
        x, y = tr.stream.next_batch()
        views = tr.augment.after_crop(x)
    else:
        # This rank's contiguous slice of the global batch: the global
        # batches are the same for any number of processes.
        start = tr.step_in_epoch * tr.batch_size + tr.rank * tr.local_batch
        idx = perm[start : start + tr.local_batch]
        x, y = tr.stage_batch(idx)
        views = tr.augment(x)
    if t["channels_last"]:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    snap = tr.nonfinite.snapshot(tr.method)
    with torch.autocast(tr.device.type, dtype=tr.autocast_dtype, enabled=tr.autocast_enabled):
        loss, terms = tr.forward(views)
    loss_all = loss_all_ranks(tr, loss)
    tr.optimizer.zero_grad(set_to_none=True)
    # Backward even on a non-finite loss: the gradient check is
    # what every process of a distributed run sees alike.
    if tr.scaler is None:
        loss.backward()
    else:
        tr.scaler.scale(loss).backward()
        tr.scaler.unscale_(tr.optimizer)
    # With a GradScaler, non-finite gradients are its overflow signal (it
    # skips the update and lowers the scale), not a divergence.
    ok = step_is_finite([loss, loss_all], tr.method, check_grads=tr.scaler is None)
    probe_loss = None
    if not ok:
        _skip_step(tr, loss, loss_all, terms, snap, pbar)
    else:
        tr.nonfinite.step_ok()
        if tr.scaler is None:
            tr.optimizer.step()
        else:
            tr.scaler.step(tr.optimizer)
            tr.scaler.update()
        tr.scheduler.step()
        tr.method.after_optimizer_step(tr.global_step, tr.total_steps)
        if tr.use_probe:
            probe_loss = probe_step(tr, y)
    tr.step_in_epoch += 1
    tr.global_step += 1
    tr.faults.at("step", tr.global_step)
    if ok:
        tr.stats.add_step(loss, terms)
        if tr.global_step % t["log_every"] == 0 or tr.step_in_epoch == tr.steps_per_epoch:
            log_step(tr, loss, terms, probe_loss, pbar)
    if pbar:
        pbar.update(1)


def _skip_step(tr: Any, loss: torch.Tensor, loss_all: torch.Tensor, terms: Dict[str, Any], snap, pbar) -> None:
    """A non-finite step: the policy raises (train.on_nonfinite) or the step is skipped and counted."""
    lval = loss_value(tr, loss, loss_all)
    what = nonfinite_reason(lval, tr.method) or "loss"
    tr.nonfinite.on_bad_step(
        what,
        lval,
        terms,
        tr.method,
        snap,
        tr.global_step + 1,
        tr.epoch,
        tr.metrics.log,
        lambda: tr.optimizer.zero_grad(set_to_none=True),
        lambda: pbar.close() if pbar else None,
        tr.ckpt_path,
    )
    if tr.scaler is not None:
        tr.scaler.update()
    tr.stats.skipped += 1


def log_step(tr: Any, loss: torch.Tensor, terms: Dict[str, Any], probe_loss: Optional[torch.Tensor], pbar: Any) -> None:
    """The step's record (this reads the device: only every train.log_every steps)."""
    lval = float(loss.detach())
    rec = {
        "kind": "step",
        "step": tr.global_step,
        "epoch": tr.epoch,
        "loss": lval,
        "lr": tr.scheduler.get_last_lr()[0],
        **{k: float(v) for k, v in terms.items()},
    }
    if probe_loss is not None:
        rec["probe_loss"] = float(probe_loss)
    if tr.scaler is not None:
        rec["grad_scale"] = float(tr.scaler.get_scale())
    tr.metrics.log(rec)
    if pbar:
        pbar.set_postfix(epoch=tr.epoch, loss=f"{lval:.4g}")


def probe_step(tr: Any, y: torch.Tensor) -> torch.Tensor:
    """Train the online linear probe on this step's (detached) features and labels ``y``; return its
    global mean loss."""
    logits = tr.probe_model(tr.method.last_outputs["feats"].float())
    if tr.probe_labels is tr.train_ds.labels:
        probe_loss = F.cross_entropy(logits, y)
    else:  # eval.split=val: a batch of held-out images only must give 0, not 0/0
        probe_loss = F.cross_entropy(logits, y, reduction="sum") / (y != IGNORE_LABEL).sum().clamp_min(1)
    tr.probe_opt.zero_grad(set_to_none=True)
    probe_loss.backward()
    tr.probe_opt.step()
    correct, mean_loss = global_probe_stats(tr, (logits.argmax(1) == y).sum(), probe_loss)
    tr.stats.add_probe_correct(correct)
    return mean_loss
