"""The trainer's epochs: the seeded data order and the end of an epoch (record, evaluation, checkpoint)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ...data.sampler import epoch_permutation
from .evaluation import epoch_eval

# ``tr`` below is the :class:`~.trainer.Trainer` (not imported: the trainer imports this module).

__all__ = ["epoch_order", "end_epoch"]

# The columns the progress bar prints at the end of an epoch.
PROGRESS_KEYS = ("epoch", "loss", "online_probe_acc", "knn_acc", "backbone_rankme", "projector_rankme")


def epoch_order(tr: Any) -> torch.Tensor:
    """The epoch's permutation of the training set.

    A pure function of (seed, epoch), so resuming mid-epoch only needs the
    step index, not a saved permutation."""
    return epoch_permutation(len(tr.train_ds), tr.cfg["seed"], tr.epoch)  # the streaming paths' order too


def epoch_record(tr: Any) -> Dict[str, Any]:
    """The finished epoch's means (from the device-side sums: reads the device once)."""
    acc, B = tr.stats.to_dict(), tr.batch_size
    ep_n = acc["n"]
    rec: Dict[str, Any] = {
        "kind": "epoch",
        "epoch": tr.epoch,
        "step": tr.global_step,
        "loss": acc["loss"] / max(ep_n, 1),
        **{k: v / max(ep_n, 1) for k, v in acc["terms"].items()},
        "lr": tr.scheduler.get_last_lr()[0],
        "train_seconds": acc["seconds"],
        "images_per_second": ep_n * B / max(acc["seconds"], 1e-9),
        "skipped_steps": acc.get("skipped", 0),
    }
    if tr.use_probe and ep_n:
        rec["online_probe_train_acc"] = acc["probe_correct"] / (ep_n * B) * 100
    return rec


def end_epoch(tr: Any, stop: Optional[str], pbar: Any = None) -> Optional[str]:
    """Log the finished epoch (evaluating it when due), advance to the next and checkpoint when due.

    ``stop`` is why the loop is stopping, if it is; returns it, or the
    signal that arrived during the epoch's evaluation.
    """
    cfg, t = tr.cfg, tr.cfg["train"]
    rec = epoch_record(tr)
    if tr.main and ((tr.epoch + 1) % cfg["eval"]["every"] == 0 or tr.epoch + 1 == t["epochs"]):
        rec.update(epoch_eval(tr))  # rank 0 only: its record is the only one written
    tr.metrics.log(rec)
    tr.metrics.write_csv()
    tr.faults.at("epoch", tr.epoch)
    if pbar:
        pbar.write(
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items() if k in PROGRESS_KEYS
            )
        )
    tr.epoch += 1
    tr.step_in_epoch = 0
    tr.stats.reset()
    requested = tr.signals.requested(tr.world_size) if stop is None else None
    if requested:  # arrived during the epoch's evaluation
        stop = requested
        tr.metrics.log({"kind": "signal", "signal": stop, "step": tr.global_step, "epoch": tr.epoch})
    every_steps = t["checkpoint_every_steps"]
    if (
        tr.epoch % t["checkpoint_every"] == 0
        or tr.epoch == t["epochs"]
        or stop is not None
        or (every_steps and tr.global_step % every_steps == 0)
    ):
        tr.save()
    return stop
