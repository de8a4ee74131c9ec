"""The training loop: :class:`Trainer` owns the run's state and steps through it.

Every other concern lives in a module of its own: ``build`` (datasets,
model, augmentation from a config), ``checkpoint`` (atomic write,
weights-only load, resume compatibility, RNG streams), ``signals``
(SIGTERM/SIGINT), ``nonfinite`` (NaN/Inf steps), ``metrics``
(metrics.jsonl/csv) and ``faults`` (the test hook that interrupts a run).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError, dump_config
from ..distributed import convert_sync_batchnorm, get_rank, get_world_size, init_distributed, is_main_process, wrap_ddp
from ..evaluate import collapse_diagnostics, evaluate_backbone, extract_features, knn_accuracy
from ..optim import WarmupCosine, build_optimizer
from .build import IGNORE_LABEL, build_everything, resolve_device
from .checkpoint import (
    CHECKPOINT_VERSION,
    RANK_SEED_STRIDE,
    check_resume_compatible,
    gather_rank_rng,
    load_checkpoint_file,
    remove_stale_temp_files,
    restore_rng,
    write_checkpoint,
)
from .faults import FaultInjector
from .metrics import MetricsLog, atomic_write_text
from .nonfinite import NonFinitePolicy, nonfinite_reason
from .precision import trainer_precision
from .rundir import prepare_run_dir
from .signals import StopSignals
from .step import BatchStager, autocast_settings, compile_forward, make_scaler, step_is_finite
from .step_stats import EpochStats

__all__ = ["Trainer", "train"]


class Trainer:
    """Owns every piece of training state; ``fit()`` runs (or resumes) a config."""

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
        parts = build_everything(cfg, self.device)
        self.__dict__.update(parts)
        if self.rank > 0:
            self.augment.generator.manual_seed(cfg["seed"] + RANK_SEED_STRIDE * self.rank)
        o = cfg["optim"]
        # optim.batch_size is the global batch: configs (and their lr) mean the
        # same thing for any number of processes.
        self.batch_size = o["batch_size"]
        if self.batch_size % self.world_size:
            raise ConfigError(
                f"optim.batch_size: {self.batch_size} is the global batch and must be divisible by "
                f"the number of processes ({self.world_size})"
            )
        self.local_batch = self.batch_size // self.world_size
        if self.world_size > 1 and self.local_batch < 2:
            raise ConfigError(
                f"optim.batch_size: {self.batch_size} over {self.world_size} processes leaves "
                f"{self.local_batch} image per process; at least 2 per process are needed"
            )
        n = len(self.train_ds)
        if n < self.batch_size:
            raise ConfigError(f"optim.batch_size: {self.batch_size} is larger than the training set ({n} images)")
        dcfg = cfg["distributed"]
        if self.world_size > 1 and dcfg["sync_batchnorm"]:
            # Before the optimizer is built: the BN parameters are shared, but
            # the module tree must be final when DDP registers it.
            self.method = convert_sync_batchnorm(self.method, self.device)
        self.steps_per_epoch = n // self.batch_size  # drop_last: full batches keep BN/loss statistics stable
        self.total_steps = t["epochs"] * self.steps_per_epoch
        self.optimizer = build_optimizer(
            o["name"],
            self.method,
            o["lr"],
            o["weight_decay"],
            o["momentum"],
            o["eta"],
            o["clip_lr"],
            o["exclude_bias_norm"],
        )
        self.scheduler = WarmupCosine(
            self.optimizer,
            int(round(o["warmup_epochs"] * self.steps_per_epoch)),
            self.total_steps,
            o["warmup_start_factor"],
            o["final_lr_factor"],
        )
        self.use_probe = cfg["eval"]["online_probe"] and self.train_ds.labels is not None
        nc = max(self.train_ds.num_classes, 1)
        self.probe = nn.Linear(self.method.feat_dim, nc).to(self.device)
        self.probe_opt = torch.optim.SGD(self.probe.parameters(), lr=cfg["eval"]["probe_lr"], momentum=0.9)
        if t["channels_last"]:
            self.method.to(memory_format=torch.channels_last)
        # Autocast covers the backbone and heads; every method leaves it before
        # its loss, which accumulates in float32 (as the ops do anyway). CPU
        # auto is measured on this model (after channels_last, as it will run).
        self.precision = trainer_precision(cfg, self.device, self.method, self.local_batch, self.crop_size, self.rank)
        # self.method / self.probe stay the unwrapped modules (state_dict keys,
        # hooks, evaluation); self.model / self.probe_model are what the loop
        # calls, so DDP's forward sees every step and syncs its gradients.
        self.model: nn.Module = self.method
        self.probe_model: nn.Module = self.probe
        if self.world_size > 1:
            self.model = wrap_ddp(self.method, self.device, dcfg["find_unused_parameters"])
            self.probe_model = wrap_ddp(self.probe, self.device)
        # What the step calls: the method's forward and loss, compiled with train.compile.
        self.forward = compile_forward(self.model, t["compile"])
        self.autocast_enabled, self.autocast_dtype = autocast_settings(self)
        self.scaler = make_scaler(self)
        self.stage_batch = BatchStager(self.train_ds.images, self.probe_labels, self.local_batch, self.device)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.stats = EpochStats(self.device)
        self.metrics = MetricsLog(self.run_dir, self.main, t["loggers"])
        self.nonfinite = NonFinitePolicy(t["on_nonfinite"], t["max_consecutive_skips"])
        self.signals = StopSignals()
        self._faults = FaultInjector(os.environ.get("SSLEXT_TEST_FAULT"))
        if self.main:
            remove_stale_temp_files(self.ckpt_path)
        if resume:
            self._load(self.ckpt_path)
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
        out = {
            "version": CHECKPOINT_VERSION,
            "config": self.cfg,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "probe": self.probe.state_dict(),
            "probe_opt": self.probe_opt.state_dict(),
            "augment": self.augment.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_acc": self.acc,
            "world_size": self.world_size,
            "metrics_records": self.metrics.n_records,
            "consecutive_skips": self.nonfinite.consecutive_skips,
        }
        if rank_rng is not None and self.world_size > 1:
            out["rank_rng"] = rank_rng
        return out

    def save(self) -> None:
        """Write ``last.pt`` from rank 0; under DDP every rank must call it (RNG gather)."""
        rank_rng = gather_rank_rng(self.augment, self.device, self.world_size)
        if self.main:
            with self._faults.saving(self.global_step):
                write_checkpoint(self.state_dict(rank_rng), self.ckpt_path)

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint_file(path)
        check_resume_compatible(
            ckpt, path, self.cfg, {"method": self.method.state_dict(), "probe": self.probe.state_dict()}, self.run_dir
        )
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.probe.load_state_dict(ckpt["probe"])
        self.probe_opt.load_state_dict(ckpt["probe_opt"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        rng_note = restore_rng(
            ckpt, self.augment, self.device, self.rank, self.world_size, self.cfg["seed"], self.global_step, self.main
        )
        self.stats.load_dict(ckpt["epoch_acc"])
        self.nonfinite.consecutive_skips = int(ckpt.get("consecutive_skips", 0))
        self.metrics.truncate_for_resume(ckpt.get("metrics_records"), self.global_step)
        self._log(
            {
                "kind": "resume",
                "step": self.global_step,
                "epoch": self.epoch,
                "checkpoint": str(path),
                **({"cuda_rng": rng_note} if rng_note else {}),
            }
        )
        self.metrics.write_csv()

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

    # ------------------------------------------------------------------ epoch eval
    @torch.no_grad()
    def _epoch_eval(self) -> Dict[str, float]:
        ev = self.cfg["eval"]
        out: Dict[str, float] = {}
        g = torch.Generator().manual_seed(self.cfg["seed"] + 7)
        # eval_train_ds is train_ds unless eval.split=val holds images out (build._hold_out_val).
        bank = self.eval_train_ds
        ntr = len(bank)
        pick = torch.randperm(ntr, generator=g)[: min(ntr, ev["knn_train_limit"] or ntr)]
        feats, z = extract_features(
            self.method.backbone,
            bank.images[pick],
            ev["batch_size"],
            self.device,
            self.crop_size,
            self.mean,
            self.std,
            getattr(self.method, "projector", None),
        )
        nd = min(ev["diag_samples"], feats.shape[0])
        out.update(collapse_diagnostics(feats[:nd], "backbone_"))
        if z is not None:  # pretext methods have no projector
            out.update(collapse_diagnostics(z[:nd], "projector_"))
        self.metrics.log_spectra(self.global_step, backbone=feats[:nd], projector=None if z is None else z[:nd])
        if self.test_ds is not None and bank.labels is not None:
            tf, _ = extract_features(
                self.method.backbone,
                self.test_ds.images,
                ev["batch_size"],
                self.device,
                self.crop_size,
                self.mean,
                self.std,
            )
            nc = max(bank.num_classes, self.test_ds.num_classes)
            out["knn_acc"] = knn_accuracy(
                feats, bank.labels[pick], tf, self.test_ds.labels, ev["knn_k"], ev["knn_t"], nc
            )
            if self.use_probe:
                pred = self.probe(tf.to(self.device)).argmax(1).cpu()
                out["online_probe_acc"] = float((pred == self.test_ds.labels).float().mean() * 100)
        return out

    # ------------------------------------------------------------------ distributed step helpers
    def _loss_all_ranks(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss summed over the ranks (this rank's loss alone without DDP), on the device.

        Under DDP a rank that stopped alone would leave the others blocked in
        the next collective, so the non-finite decision is taken together:
        the sum is non-finite on every rank when any rank's loss is.
        """
        if self.world_size == 1:
            return loss.detach()
        s = loss.detach().float().reshape(1).clone()
        dist.all_reduce(s)
        return s

    def _loss_value(self, loss: torch.Tensor, loss_all: torch.Tensor) -> float:
        """This rank's loss as a float; NaN on every rank when any rank's is non-finite (reads the device)."""
        lval = float(loss.detach())
        if self.world_size > 1 and not math.isfinite(float(loss_all)) and math.isfinite(lval):
            return float("nan")
        return lval

    def _global_probe_stats(self, correct: torch.Tensor, probe_loss: torch.Tensor) -> tuple:
        """(correct count, mean probe loss) over the global batch as device tensors (one collective under DDP)."""
        if self.world_size == 1:
            return correct, probe_loss.detach()
        st = torch.stack([correct.float(), probe_loss.detach().float()])
        dist.all_reduce(st)
        return torch.round(st[0]), st[1] / self.world_size

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
        summary["skipped_images"] = sum(len(ds.skipped) for ds in (self.train_ds, self.test_ds) if ds is not None)
        if self.moved_aside is not None:
            summary["moved_aside"] = str(self.moved_aside)
        return self._finish(summary)

    def _fit_loop(self) -> Dict[str, Any]:
        t = self.cfg["train"]
        pbar = None
        if self.main and t["progress"]:
            from tqdm import tqdm

            pbar = tqdm(total=self.total_steps, initial=self.global_step, desc=self.cfg["name"], dynamic_ncols=True)
        stop: Optional[str] = None  # "max_steps" or the name of the signal that stopped the loop
        t_start = time.time()
        while self.epoch < t["epochs"]:
            perm = self._epoch_order()
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

    def _epoch_order(self) -> torch.Tensor:
        # The data order is a pure function of (seed, epoch), so resuming
        # mid-epoch only needs the step index, not a saved permutation.
        return torch.randperm(
            len(self.train_ds), generator=torch.Generator().manual_seed(self.cfg["seed"] * 1_000_003 + self.epoch)
        )

    def _stop_after_step(self) -> Optional[str]:
        """ "max_steps" when train.max_steps is reached, else the signal that asked to stop, if any."""
        max_steps = self.cfg["train"]["max_steps"]
        if max_steps and self.global_step >= max_steps:
            return "max_steps"
        return self._stop_requested()

    def _step_checkpoint_due(self) -> bool:
        every = self.cfg["train"]["checkpoint_every_steps"]
        return bool(every and self.global_step % every == 0 and self.step_in_epoch < self.steps_per_epoch)

    def train_step(self, perm: torch.Tensor, pbar: Any = None) -> None:
        """One optimizer step on this rank's slice of the next global batch of ``perm`` (or a skipped step).

        Reads the device once (is the step finite?) unless it logs; the
        loss, terms and probe statistics are summed on the device.
        """
        t = self.cfg["train"]
        # This rank's contiguous slice of the global batch: the global
        # batches are the same for any number of processes.
        start = self.step_in_epoch * self.batch_size + self.rank * self.local_batch
        idx = perm[start : start + self.local_batch]
        x, y = self.stage_batch(idx)
        views = self.augment(x)
        if t["channels_last"]:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        snap = self.nonfinite.snapshot(self.method)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_enabled):
            loss, terms = self.forward(views)
        loss_all = self._loss_all_ranks(loss)
        self.optimizer.zero_grad(set_to_none=True)
        # Backward even on a non-finite loss: the gradient check is
        # what every process of a distributed run sees alike.
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        # With a GradScaler, non-finite gradients are its overflow signal (it
        # skips the update and lowers the scale), not a divergence.
        ok = step_is_finite([loss, loss_all], self.method, check_grads=self.scaler is None)
        probe_loss = None
        if not ok:
            lval = self._loss_value(loss, loss_all)
            what = nonfinite_reason(lval, self.method) or "loss"
            # Raises unless the step is skipped.
            self.nonfinite.on_bad_step(
                what,
                lval,
                terms,
                self.method,
                snap,
                self.global_step + 1,
                self.epoch,
                self._log,
                lambda: self.optimizer.zero_grad(set_to_none=True),
                lambda: pbar.close() if pbar else None,
                self.ckpt_path,
            )
            if self.scaler is not None:
                self.scaler.update()
            self.stats.skipped += 1
        else:
            self.nonfinite.step_ok()
            if self.scaler is None:
                self.optimizer.step()
            else:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.scheduler.step()
            self.method.after_optimizer_step(self.global_step, self.total_steps)
            if self.use_probe:
                probe_loss = self._probe_step(y)
        self.step_in_epoch += 1
        self.global_step += 1
        self._faults.at("step", self.global_step)
        if ok:
            self.stats.add_step(loss, terms)
            if self.global_step % t["log_every"] == 0 or self.step_in_epoch == self.steps_per_epoch:
                self._log_step(loss, terms, probe_loss, pbar)
        if pbar:
            pbar.update(1)

    def _log_step(
        self, loss: torch.Tensor, terms: Dict[str, Any], probe_loss: Optional[torch.Tensor], pbar: Any
    ) -> None:
        """The step's record (this reads the device: only every train.log_every steps)."""
        lval = float(loss.detach())
        rec = {
            "kind": "step",
            "step": self.global_step,
            "epoch": self.epoch,
            "loss": lval,
            "lr": self.scheduler.get_last_lr()[0],
            **{k: float(v) for k, v in terms.items()},
        }
        if probe_loss is not None:
            rec["probe_loss"] = float(probe_loss)
        if self.scaler is not None:
            rec["grad_scale"] = float(self.scaler.get_scale())
        self._log(rec)
        if pbar:
            pbar.set_postfix(epoch=self.epoch, loss=f"{lval:.4g}")

    def _probe_step(self, y: torch.Tensor) -> torch.Tensor:
        """Train the online linear probe on this step's (detached) features and labels ``y``; return its
        global mean loss."""
        logits = self.probe_model(self.method.last_outputs["feats"].float())
        if self.probe_labels is self.train_ds.labels:
            probe_loss = F.cross_entropy(logits, y)
        else:  # eval.split=val: a batch of held-out images only must give 0, not 0/0
            probe_loss = F.cross_entropy(logits, y, reduction="sum") / (y != IGNORE_LABEL).sum().clamp_min(1)
        self.probe_opt.zero_grad(set_to_none=True)
        probe_loss.backward()
        self.probe_opt.step()
        correct, mean_loss = self._global_probe_stats((logits.argmax(1) == y).sum(), probe_loss)
        self.stats.add_probe_correct(correct)
        return mean_loss

    def end_epoch(self, stop: Optional[str], pbar: Any = None) -> Optional[str]:
        """Log the finished epoch (evaluating it when due), advance to the next and checkpoint when due.

        ``stop`` is why the loop is stopping, if it is; returns it, or the
        signal that arrived during the epoch's evaluation.
        """
        cfg, t, acc, B = self.cfg, self.cfg["train"], self.stats.to_dict(), self.batch_size
        ep_n = acc["n"]
        rec: Dict[str, Any] = {
            "kind": "epoch",
            "epoch": self.epoch,
            "step": self.global_step,
            "loss": acc["loss"] / max(ep_n, 1),
            **{k: v / max(ep_n, 1) for k, v in acc["terms"].items()},
            "lr": self.scheduler.get_last_lr()[0],
            "train_seconds": acc["seconds"],
            "images_per_second": ep_n * B / max(acc["seconds"], 1e-9),
            "skipped_steps": acc.get("skipped", 0),
        }
        if self.use_probe and ep_n:
            rec["online_probe_train_acc"] = acc["probe_correct"] / (ep_n * B) * 100
        if self.main and ((self.epoch + 1) % cfg["eval"]["every"] == 0 or self.epoch + 1 == t["epochs"]):
            rec.update(self._epoch_eval())  # rank 0 only: its record is the only one written
        self._log(rec)
        self.metrics.write_csv()
        self._faults.at("epoch", self.epoch)
        if pbar:
            pbar.write(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in rec.items()
                    if k in ("epoch", "loss", "online_probe_acc", "knn_acc", "backbone_rankme", "projector_rankme")
                )
            )
        self.epoch += 1
        self.step_in_epoch = 0
        self.stats.reset()
        requested = self._stop_requested() if stop is None else None
        if requested:  # arrived during the epoch's evaluation
            stop = requested
            self._log({"kind": "signal", "signal": stop, "step": self.global_step, "epoch": self.epoch})
        every_steps = t["checkpoint_every_steps"]
        if (
            self.epoch % t["checkpoint_every"] == 0
            or self.epoch == t["epochs"]
            or stop is not None
            or (every_steps and self.global_step % every_steps == 0)
        ):
            self.save()
        return stop

    def _finish(self, summary: Dict[str, Any]) -> Dict[str, Any]:
        cfg, t = self.cfg, self.cfg["train"]
        # Rank 0 alone evaluates: its record is the only one written.
        if (
            self.main
            and summary["finished"]
            and cfg["eval"]["final"]
            and self.test_ds is not None
            and self.train_ds.labels is not None
        ):
            res = evaluate_backbone(
                self.method.backbone,
                self.eval_train_ds,
                self.test_ds,
                device=self.device,
                crop_size=self.crop_size,
                mean=self.mean,
                std=self.std,
                projector=getattr(self.method, "projector", None),
                batch_size=cfg["eval"]["batch_size"],
                probe_epochs=cfg["eval"]["offline_epochs"],
                probe_lr=cfg["eval"]["offline_lr"],
                label_fraction=cfg["eval"]["label_fraction"],
                knn_k=cfg["eval"]["knn_k"],
                knn_t=cfg["eval"]["knn_t"],
                seed=cfg["seed"],
                progress=t["progress"],
            )
            summary["final_eval"] = res
            atomic_write_text(self.run_dir / "final_eval.json", json.dumps(res, indent=2))
            self.metrics.log_final(self.global_step, res)
        self.metrics.close()
        if self.main and summary["finished"]:
            from ..report import write_report

            summary["report"] = str(write_report(self.run_dir))
        return summary


def train(cfg: Dict[str, Any], resume: bool = False, overwrite: bool = False) -> Dict[str, Any]:
    """Run (or resume) pretraining for a validated config dict.

    A run directory that already holds a run needs ``resume=True`` (continue
    it) or ``overwrite=True`` (move it aside, start afresh); otherwise
    ``RunExistsError`` (see :mod:`sslext.training.rundir`).
    """
    return Trainer(cfg, resume=resume, overwrite=overwrite).fit()
