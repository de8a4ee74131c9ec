"""The trainer's checkpoint: what ``last.pt`` holds of a run and how a resume puts it back."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .checkpoint import (
    CHECKPOINT_VERSION,
    check_resume_compatible,
    gather_rank_rng,
    load_checkpoint_file,
    restore_rng,
    write_checkpoint,
)

# ``tr`` below is the :class:`~.trainer.Trainer` (not imported: the trainer imports this module).

__all__ = ["trainer_state_dict", "save_trainer", "restore_trainer"]


def trainer_state_dict(tr: Any, rank_rng: Optional[List[Dict[str, torch.Tensor]]] = None) -> Dict[str, Any]:
    """Checkpoint dict; ``rank_rng`` (from ``checkpoint.gather_rank_rng``) adds every rank's RNG streams."""
    out = {
        "version": CHECKPOINT_VERSION,
        "config": tr.cfg,
        "method": tr.method.state_dict(),
        "optimizer": tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(),
        "probe": tr.probe.state_dict(),
        "probe_opt": tr.probe_opt.state_dict(),
        "augment": tr.augment.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "epoch": tr.epoch,
        "step_in_epoch": tr.step_in_epoch,
        "global_step": tr.global_step,
        "epoch_acc": tr.acc,
        "world_size": tr.world_size,
        "metrics_records": tr.metrics.n_records,
        "consecutive_skips": tr.nonfinite.consecutive_skips,
    }
    if rank_rng is not None and tr.world_size > 1:
        out["rank_rng"] = rank_rng
    if tr.stream is not None:
        out["data_position"] = tr.stream.position(tr.epoch, tr.step_in_epoch)
    return out


def save_trainer(tr: Any) -> None:
    """Write ``last.pt`` from rank 0; under DDP every rank must call it (RNG gather)."""
    rank_rng = gather_rank_rng(tr.augment, tr.device, tr.world_size)
    if tr.main:
        with tr.faults.saving(tr.global_step):
            write_checkpoint(tr.state_dict(rank_rng), tr.ckpt_path)


def restore_trainer(tr: Any, path: Path) -> None:
    """Put a checkpoint's modules, optimizers, position, RNG streams and epoch sums back into ``tr``."""
    ckpt = load_checkpoint_file(path)
    check_resume_compatible(
        ckpt, path, tr.cfg, {"method": tr.method.state_dict(), "probe": tr.probe.state_dict()}, tr.run_dir
    )
    tr.method.load_state_dict(ckpt["method"])
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    tr.scheduler.load_state_dict(ckpt["scheduler"])
    tr.probe.load_state_dict(ckpt["probe"])
    tr.probe_opt.load_state_dict(ckpt["probe_opt"])
    tr.epoch, tr.step_in_epoch, tr.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
    if tr.stream is not None:
        tr.stream.check_position(ckpt.get("data_position", {}), f"--resume: {path}")
    rng_note = restore_rng(ckpt, tr.augment, tr.device, tr.rank, tr.world_size, tr.cfg["seed"], tr.global_step, tr.main)
    tr.stats.load_dict(ckpt["epoch_acc"])
    tr.nonfinite.consecutive_skips = int(ckpt.get("consecutive_skips", 0))
    tr.metrics.truncate_for_resume(ckpt.get("metrics_records"), tr.global_step)
    tr.metrics.log(
        {
            "kind": "resume",
            "step": tr.global_step,
            "epoch": tr.epoch,
            "checkpoint": str(path),
            **({"cuda_rng": rng_note} if rng_note else {}),
        }
    )
    tr.metrics.write_csv()
