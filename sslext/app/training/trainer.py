"""The training loop: :class:`Trainer` holds a run's :class:`~.parts.TrainerParts` and its position, and steps through it.

Each job lives in a module of its own: ``parts`` (what a run is made of,
built from a config by ``build``), ``train_step`` (one optimizer step),
``epoch`` (data order, end of epoch), ``evaluation`` (per-epoch and final),
``state`` (the checkpoint of a trainer: save, resume; file format in
``checkpoint``), ``signals`` (SIGTERM/SIGINT), ``nonfinite`` (NaN/Inf steps),
``metrics`` (metrics.jsonl/csv) and ``faults`` (the test hook that interrupts a run).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from tqdm import tqdm

from ...distributed import get_rank, get_world_size, init_distributed, is_main_process
from ..config import dump_config
from ..report import write_report
from .build import resolve_device
from .checkpoint import remove_stale_temp_files
from .epoch import end_epoch, epoch_order
from .evaluation import epoch_eval, final_eval
from .metrics import atomic_write_text
from .parts import TrainerParts, build_trainer_parts
from .rundir import prepare_run_dir
from .state import restore_trainer, save_trainer, trainer_state_dict
from .train_step import train_step

__all__ = ["Trainer", "train"]


class _Part:
    """A :class:`TrainerParts` field read and written as an attribute of the trainer."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, tr: Optional[Trainer], owner: type) -> Any:
        return self if tr is None else getattr(tr.parts, self.name)

    def __set__(self, tr: Trainer, value: Any) -> None:
        setattr(tr.parts, self.name, value)


class Trainer:
    """Owns every piece of training state; ``fit()`` runs (or resumes) a config.

    ``parts`` holds what the run is made of (see :class:`TrainerParts`; each
    field is also an attribute: ``tr.method``, ``tr.optimizer``, ...); the
    trainer itself holds where the run is (``epoch``, ``step_in_epoch``,
    ``global_step``) and where it writes (``run_dir``, ``ckpt_path``).
    """

    # The TrainerParts fields, in its order (a test checks the two lists agree).
    train_ds = _Part()
    test_ds = _Part()
    eval_train_ds = _Part()
    probe_labels = _Part()
    augment = _Part()
    mean = _Part()
    std = _Part()
    crop_size = _Part()
    batch_size = _Part()
    local_batch = _Part()
    steps_per_epoch = _Part()
    total_steps = _Part()
    stage_batch = _Part()
    stream = _Part()
    method = _Part()
    model = _Part()
    forward = _Part()
    probe = _Part()
    probe_model = _Part()
    use_probe = _Part()
    optimizer = _Part()
    scheduler = _Part()
    probe_opt = _Part()
    precision = _Part()
    autocast_enabled = _Part()
    autocast_dtype = _Part()
    scaler = _Part()
    stats = _Part()
    metrics = _Part()
    nonfinite = _Part()
    signals = _Part()
    faults = _Part()

    def __init__(self, cfg: Dict[str, Any], resume: bool = False, overwrite: bool = False) -> None:
        self.cfg = cfg
        t = cfg["train"]
        if t["threads"]:
            torch.set_num_threads(t["threads"])
        self.device = resolve_device(t["device"])
        init_distributed(self.device)
        self.world_size, self.rank = get_world_size(), get_rank()
        if self.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())  # LOCAL_RANK's GPU
        self.main = is_main_process()
        self.run_dir = Path(t["out_dir"]) / cfg["name"]
        self.ckpt_path = self.run_dir / "last.pt"
        # Before the (possibly slow) dataset build: a refused start costs nothing.
        self.moved_aside = prepare_run_dir(self.run_dir, resume, overwrite) if self.main else None
        self.parts: TrainerParts = build_trainer_parts(
            cfg, self.device, self.world_size, self.rank, self.run_dir, self.main
        )
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        if self.main:
            remove_stale_temp_files(self.ckpt_path)
        if resume:
            restore_trainer(self, self.ckpt_path)
        elif self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.metrics.clear()
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
        self._log(self.precision.log_record(t["amp"]))
        if not resume:
            for split, ds in (("train", self.train_ds), ("test", self.test_ds)):
                if ds is not None and ds.skipped:  # data.on_bad_image=skip
                    self._log(
                        {"kind": "data", "split": split, "skipped_images": len(ds.skipped), "skipped": list(ds.skipped)}
                    )

    # ------------------------------------------------------------------ state
    @property
    def acc(self) -> Dict[str, Any]:
        """The epoch's running sums as Python numbers (reads the device): checkpointed so a
        mid-epoch resume reports the same epoch means as an uninterrupted run."""
        return self.stats.to_dict()

    def state_dict(self, rank_rng: Optional[List[Dict[str, torch.Tensor]]] = None) -> Dict[str, Any]:
        """Checkpoint dict; ``rank_rng`` (from ``checkpoint.gather_rank_rng``) adds every rank's RNG streams."""
        return trainer_state_dict(self, rank_rng)

    def save(self) -> None:
        """Write ``last.pt`` from rank 0; under DDP every rank must call it (RNG gather)."""
        save_trainer(self)

    def _log(self, rec: Dict[str, Any]) -> None:
        self.metrics.log(rec)

    # ------------------------------------------------------------------ signals (see signals.StopSignals)
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.on_signal(signum, frame)

    def _install_signal_handlers(self) -> None:
        self.signals.install()

    def _restore_signal_handlers(self) -> None:
        self.signals.restore()

    def _stop_requested(self) -> Optional[str]:
        return self.signals.requested(self.world_size)

    # ------------------------------------------------------------------ steps and epochs
    def train_step(self, perm: torch.Tensor, pbar: Any = None) -> None:
        """One optimizer step on this rank's slice of the next global batch of ``perm`` (or a skipped step).

        Reads the device once (is the step finite?) unless it logs; see :mod:`.train_step`.
        """
        train_step(self, perm, pbar)

    def end_epoch(self, stop: Optional[str], pbar: Any = None) -> Optional[str]:
        """Log the finished epoch (evaluating it when due), advance and checkpoint when due (see :mod:`.epoch`)."""
        return end_epoch(self, stop, pbar)

    def _epoch_order(self) -> torch.Tensor:
        return epoch_order(self)

    def _epoch_eval(self) -> Dict[str, float]:
        return epoch_eval(self)

    # ------------------------------------------------------------------ main loop
    def fit(self) -> Dict[str, Any]:
        """Train until ``train.epochs`` (or ``train.max_steps``, or SIGTERM/SIGINT); return a summary dict.

        On SIGTERM/SIGINT the current step finishes, a checkpoint is written and
        ``fit`` returns with ``summary["interrupted"]`` set to the signal's
        name; a second signal stops at once with its default effect. The
        process's previous handlers are restored before returning.
        """
        self._install_signal_handlers()
        try:
            summary = self._fit_loop()
        finally:
            self._restore_signal_handlers()
            if self.stream is not None:  # also on an error: its workers must not outlive the run
                self.stream.close()
        summary["skipped_images"] = self._skipped_images()
        if self.moved_aside is not None:
            summary["moved_aside"] = str(self.moved_aside)
        return self._finish(summary)

    def _skipped_images(self) -> int:
        """Distinct images skipped (``data.on_bad_image: skip``) in the run, counted alike on every rank.

        A streamed rank decodes only its own slices of each batch, so it meets only
        the bad files there: the ranks' lists are gathered (every rank ends ``fit``
        after the same step, so all of them reach this collective)."""
        train = list(self.train_ds.skipped)
        if self.stream is not None and self.world_size > 1:
            every: List[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(every, train)
            train = sorted({f for rank_files in every for f in rank_files})
        return len(train) + (len(self.test_ds.skipped) if self.test_ds is not None else 0)

    def _fit_loop(self) -> Dict[str, Any]:
        t = self.cfg["train"]
        pbar = None
        if self.main and t["progress"]:
            pbar = tqdm(total=self.total_steps, initial=self.global_step, desc=self.cfg["name"], dynamic_ncols=True)
        stop: Optional[str] = None  # "max_steps" or the name of the signal that stopped the loop
        t_start = time.time()
        while self.epoch < t["epochs"]:
            perm = self._epoch_order()
            if self.stream is not None:  # the same batches as perm's slices, from this step on
                self.stream.start(self.epoch, self.step_in_epoch)
            t_epoch = time.time()
            while self.step_in_epoch < self.steps_per_epoch:
                self.train_step(perm, pbar)
                stop = self._stop_after_step()
                if stop is not None:
                    break
                if self._step_checkpoint_due():
                    self.save()
            self.stats.seconds += time.time() - t_epoch
            if stop is not None and (self.step_in_epoch < self.steps_per_epoch or stop != "max_steps"):
                # Mid-epoch state (a signal at the last step of an epoch is saved
                # before the epoch's evaluation too, to exit quickly; the resumed
                # run evaluates that epoch first).
                if stop != "max_steps":
                    self._log({"kind": "signal", "signal": stop, "step": self.global_step, "epoch": self.epoch})
                self.save()
                break
            stop = self.end_epoch(stop, pbar)
            if stop is not None:
                break
        if pbar:
            pbar.close()
        return {
            "run_dir": str(self.run_dir),
            "global_step": self.global_step,
            "epoch": self.epoch,
            "train_seconds": time.time() - t_start,
            "finished": self.epoch >= t["epochs"],
            "interrupted": stop if stop not in (None, "max_steps") else None,
        }

    def _stop_after_step(self) -> Optional[str]:
        """ "max_steps" when train.max_steps is reached, else the signal that asked to stop, if any."""
        max_steps = self.cfg["train"]["max_steps"]
        if max_steps and self.global_step >= max_steps:
            return "max_steps"
        return self._stop_requested()

    def _step_checkpoint_due(self) -> bool:
        every = self.cfg["train"]["checkpoint_every_steps"]
        return bool(every and self.global_step % every == 0 and self.step_in_epoch < self.steps_per_epoch)

    def _finish(self, summary: Dict[str, Any]) -> Dict[str, Any]:
        # Rank 0 alone evaluates: its record is the only one written.
        if (
            self.main
            and summary["finished"]
            and self.cfg["eval"]["final"]
            and self.test_ds is not None
            and self.train_ds.labels is not None
        ):
            summary["final_eval"] = final_eval(self)
        self.metrics.close()
        if self.main and summary["finished"]:
            summary["report"] = str(write_report(self.run_dir))
        return summary


def train(cfg: Dict[str, Any], resume: bool = False, overwrite: bool = False) -> Dict[str, Any]:
    """Run (or resume) pretraining for a validated config dict.

    A run directory that already holds a run needs ``resume=True`` (continue
    it) or ``overwrite=True`` (move it aside, start afresh); otherwise
    ``RunExistsError`` (see :mod:`sslext.app.training.rundir`).
    """
    return Trainer(cfg, resume=resume, overwrite=overwrite).fit()
