"""Self-supervised pretraining loop.

``python -m sslext.train --config configs/vicreg_resnet18_cifar10.yaml [--set k=v ...] [--resume]``

Writes into ``train.out_dir/<name>/``: ``config.yaml``, ``metrics.jsonl``
(every ``log_every`` steps, every epoch, and events: non-finite steps,
signals, resumes), ``metrics.csv`` (per epoch), ``last.pt`` (atomically,
every ``checkpoint_every`` epochs, every ``checkpoint_every_steps`` steps, on
SIGTERM/SIGINT and at the end), ``final_eval.json`` and ``report.md`` + PNG
plots.

Resuming restores the model and loss buffers, optimizer, schedule, online
probe, all RNG streams (augmentation generator, torch) and the position in
the data order, so a resumed CPU run reproduces the uninterrupted one
bit-for-bit, whenever the previous process stopped (even SIGKILL: the
checkpoint file is replaced atomically, so it is always the last complete one).

Exit codes of ``sslext-train``: 0 done (or ``train.max_steps`` reached),
1 error, 2 config error, 3 non-finite loss/gradients, 4 stopped by
SIGTERM/SIGINT after writing a checkpoint (continue with ``--resume``).

Under ``torchrun --nproc_per_node=K`` the method and the online probe are
wrapped in DistributedDataParallel (NCCL on GPUs, gloo on CPU),
``optim.batch_size`` is the GLOBAL batch (each rank takes a contiguous
``batch_size / K`` slice of the same seeded per-epoch permutation), batch
norms are synchronised (``distributed.sync_batchnorm``), the losses gather
the global batch, each rank augments with its own generator (seed offset by
rank, every rank's state checkpointed) and only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError, dump_config, load_config
from .data import DATASET_STATS, TwoViewAugment, atomic_save, build_dataset
from .distributed import (_comm_device, all_gather_tensors, cleanup_distributed, convert_sync_batchnorm, get_rank,
                          get_world_size, init_distributed, is_main_process, wrap_ddp)
from .evaluate import collapse_diagnostics, evaluate_backbone, extract_features, knn_accuracy
from .methods import build_method
from .models import build_backbone
from .optim import WarmupCosine, build_optimizer

__all__ = ["train", "Trainer", "NonFiniteLossError", "CheckpointMismatchError", "build_everything",
           "load_checkpoint_file", "resolve_device", "main", "EXIT_INTERRUPTED"]

CHECKPOINT_VERSION = 1
# What every checkpoint written by Trainer.state_dict holds (newer optional keys are read with .get).
_CHECKPOINT_KEYS = ("config", "method", "optimizer", "scheduler", "probe", "probe_opt", "augment", "torch_rng",
                    "cuda_rng", "epoch", "step_in_epoch", "global_step", "epoch_acc")

EXIT_INTERRUPTED = 4  # sslext-train stopped by SIGTERM/SIGINT after writing its checkpoint

# Config keys that may differ on --resume without changing the trajectory.
_RESUME_FREE = ("name", "train.out_dir", "train.progress", "train.log_every", "train.checkpoint_every",
                "train.checkpoint_every_steps", "train.max_steps", "train.on_nonfinite",
                "train.max_consecutive_skips", "data.root", "data.cache_dir", "data.download", "eval.")
_RESUME_FREE_EXCEPT = ("eval.online_probe", "eval.probe_lr")  # these shape the online probe's training
# Config keys that must match: they change tensor shapes, the optimizer state's
# layout, or what the saved data position (epoch, step) means.
_RESUME_MUST_MATCH = ("method.name", "model.", "seed", "optim.name", "optim.batch_size", "data.dataset",
                      "data.train_limit")

# Rank r > 0 seeds its augmentation generator with seed + r * stride, so
# ranks draw different augmentations and rank 0 matches a single-process run.
_RANK_SEED_STRIDE = 1_000_003


class NonFiniteLossError(FloatingPointError):
    """The training loss or gradients became NaN/Inf; the last checkpoint on disk is untouched."""


class CheckpointMismatchError(ValueError):
    """``--resume`` found a checkpoint of another method, model shape or data setup."""


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available")
    return torch.device(spec)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): where bf16
    autocast pays off. Elsewhere bf16 is emulated and slower than float32."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_amp(setting: Any, device: torch.device) -> bool:
    """``train.amp``: true (bf16 autocast on any device), false, or ``auto``
    (bf16 on CUDA, and on a CPU that computes bf16 natively)."""
    if setting == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return bool(setting)


def load_checkpoint_file(path: str | Path) -> Dict[str, Any]:
    """``torch.load(weights_only=True)`` with clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {path}")
    try:
        # weights_only: the unpickler only rebuilds tensors and plain containers,
        # so a crafted file cannot run code (sslext never writes anything else).
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False; name only the offending global instead.
        detail = next((l.strip().split(" was not")[0] for l in str(e).splitlines() if "Unsupported global" in l),
                      None)
        if detail is None:  # garbled bytes, not a foreign object
            why = next((l.strip() for l in str(e).splitlines() if "Unsupported" in l), type(e).__name__)
            raise RuntimeError(f"checkpoint: {path} cannot be loaded (corrupt or not a torch file: {why})") from e
        raise RuntimeError(f"checkpoint: {path} was refused by torch.load(weights_only=True): it holds objects "
                           f"other than tensors and plain containers, which sslext never writes; the file is "
                           f"not an sslext checkpoint and is not safe to load ({detail})") from e
    except Exception as e:
        raise RuntimeError(f"checkpoint: {path} cannot be loaded ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise RuntimeError(f"checkpoint: {path} is not an sslext training checkpoint (version {CHECKPOINT_VERSION})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise RuntimeError(f"checkpoint: {path} lacks {missing}; it is incomplete or not written by sslext-train")
    if not isinstance(ckpt["config"], dict):
        raise RuntimeError(f"checkpoint: {path} has no config mapping; it is not written by sslext-train")
    return ckpt


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and f"{prefix}{k}" != "method.projector":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def _shape_mismatches(saved: Dict[str, Any], current: Dict[str, Any], what: str) -> List[str]:
    out = []
    for k in sorted(set(saved) | set(current)):
        if k not in current:
            out.append(f"{what}.{k} is in the checkpoint but not in the model built from the config")
        elif k not in saved:
            out.append(f"{what}.{k} is missing from the checkpoint")
        else:
            a, b = saved[k], current[k]
            # An empty current buffer is allocated lazily and takes any saved shape.
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and b.numel() and a.shape != b.shape:
                out.append(f"{what}.{k}: shape {tuple(a.shape)} in the checkpoint, {tuple(b.shape)} now")
    return out


def _json_num(v: Any) -> Any:
    """Non-finite floats as strings ('nan', 'inf'), so metrics.jsonl stays strict JSON."""
    v = float(v)
    return v if math.isfinite(v) else repr(v)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _FaultInjector:
    """Test hook: ``SSLEXT_TEST_FAULT=<action>:<point>:<n>`` makes the process
    kill or signal itself at a chosen point, so tests can interrupt a run
    deterministically. ``action``: ``kill`` (SIGKILL), ``term`` (SIGTERM),
    ``int`` (SIGINT); ``point``: ``step`` (after the optimizer step of global
    step n, before its log record), ``save`` (the checkpoint write at global
    step n: the temp file is written and truncated to half, then SIGKILL before
    ``os.replace``), ``epoch`` (after epoch n's record is logged, before its
    checkpoint). Unset (always, outside tests), every check is a no-op.
    """

    def __init__(self, spec: Optional[str]) -> None:
        self.action = self.point = None
        self.n = -1
        if spec:
            try:
                self.action, self.point, n = spec.split(":")
                self.n = int(n)
            except ValueError:
                raise ValueError(f"SSLEXT_TEST_FAULT: expected <kill|term|int>:<step|save|epoch>:<n>, got {spec!r}")
            if self.action not in ("kill", "term", "int") or self.point not in ("step", "save", "epoch"):
                raise ValueError(f"SSLEXT_TEST_FAULT: expected <kill|term|int>:<step|save|epoch>:<n>, got {spec!r}")

    def at(self, point: str, n: int) -> None:
        if self.point == point and self.n == n:
            sig = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}[self.action]
            os.kill(os.getpid(), sig)

    def saving(self, n: int):
        """A context that, at the chosen save, tears the temp file and dies before os.replace."""
        import contextlib

        if not (self.point == "save" and self.n == n):
            return contextlib.nullcontext()
        real_save = torch.save

        def torn_save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            f.flush()
            os.ftruncate(f.fileno(), max(f.tell() // 2, 1))
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        @contextlib.contextmanager
        def patched():
            torch.save = torn_save
            try:
                yield
            finally:
                torch.save = real_save

        return patched()


def _stats(cfg: Dict[str, Any]):
    d = cfg["data"]
    mean, std = DATASET_STATS.get(d["dataset"], DATASET_STATS["imagenet"])
    return tuple(d["mean"] or mean), tuple(d["std"] or std)


def build_everything(cfg: Dict[str, Any], device: torch.device, need_train_labels: bool = False) -> Dict[str, Any]:
    """Datasets, method and augmentation described by ``cfg`` (no optimizer)."""
    d = cfg["data"]
    kw = dict(root=d["root"], download=d["download"], image_size=d["image_size"], cache_dir=d["cache_dir"],
              seed=cfg["seed"])
    train_ds = build_dataset(d["dataset"], "train", limit=d["train_limit"], **kw)
    try:
        test_ds = build_dataset(d["dataset"], "test", limit=d["test_limit"], **kw)
    except Exception:
        if need_train_labels:
            raise
        test_ds = None  # unlabeled pretraining folders have no test split; evaluation is skipped
    if test_ds is not None and test_ds.labels is None:
        test_ds = None
    if need_train_labels and (train_ds.labels is None or test_ds is None):
        raise ValueError(f"data.dataset: evaluation needs labelled train and test splits for {d['dataset']!r}")
    torch.manual_seed(cfg["seed"])  # network init
    m = cfg["model"]
    backbone = build_backbone(m["backbone"], m["cifar_stem"], m["width"])
    mkw = {k: v for k, v in cfg["method"].items() if k != "name"}
    method = build_method(cfg["method"]["name"], backbone, **mkw).to(device)
    mean, std = _stats(cfg)
    a = cfg["augment"]
    nv = method.num_views
    if nv not in (1, 2):
        raise ValueError(f"method.name: {cfg['method']['name']!r} declares num_views={nv}; the trainer supports 1 or 2")
    # Slicing keeps two-view methods' augmentation RNG stream unchanged.
    augment = TwoViewAugment([a["view1"], a["view2"]][:nv], mean, std, seed=cfg["seed"])
    crop = a["view1"]["crop_size"]
    if nv == 2 and a["view2"]["crop_size"] != crop:
        raise ConfigError("augment.view2.crop_size: both views must use the same crop_size "
                          f"({crop} vs {a['view2']['crop_size']})")
    return dict(train_ds=train_ds, test_ds=test_ds, method=method, augment=augment, mean=mean, std=std,
                crop_size=crop)


class Trainer:
    """Owns every piece of training state; ``fit()`` runs (or resumes) a config."""

    def __init__(self, cfg: Dict[str, Any], resume: bool = False) -> None:
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
        parts = build_everything(cfg, self.device)
        self.__dict__.update(parts)
        if self.rank > 0:
            self.augment.generator.manual_seed(cfg["seed"] + _RANK_SEED_STRIDE * self.rank)
        o = cfg["optim"]
        # optim.batch_size is the global batch: configs (and their lr) mean the
        # same thing for any number of processes.
        self.batch_size = o["batch_size"]
        if self.batch_size % self.world_size:
            raise ConfigError(f"optim.batch_size: {self.batch_size} is the global batch and must be divisible by "
                              f"the number of processes ({self.world_size})")
        self.local_batch = self.batch_size // self.world_size
        if self.world_size > 1 and self.local_batch < 2:
            raise ConfigError(f"optim.batch_size: {self.batch_size} over {self.world_size} processes leaves "
                              f"{self.local_batch} image per process; at least 2 per process are needed")
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
        self.optimizer = build_optimizer(o["name"], self.method, o["lr"], o["weight_decay"], o["momentum"], o["eta"],
                                         o["clip_lr"], o["exclude_bias_norm"])
        self.scheduler = WarmupCosine(self.optimizer, int(round(o["warmup_epochs"] * self.steps_per_epoch)),
                                      self.total_steps, o["warmup_start_factor"], o["final_lr_factor"])
        self.use_probe = cfg["eval"]["online_probe"] and self.train_ds.labels is not None
        nc = max(self.train_ds.num_classes, 1)
        self.probe = nn.Linear(self.method.feat_dim, nc).to(self.device)
        self.probe_opt = torch.optim.SGD(self.probe.parameters(), lr=cfg["eval"]["probe_lr"], momentum=0.9)
        # bf16 autocast covers the backbone and heads; every method leaves it
        # before its loss, which accumulates in float32 (as the ops do anyway).
        self.amp = resolve_amp(t["amp"], self.device)
        if t["channels_last"]:
            self.method.to(memory_format=torch.channels_last)
        # self.method / self.probe stay the unwrapped modules (state_dict keys,
        # hooks, evaluation); self.model / self.probe_model are what the loop
        # calls, so DDP's forward sees every step and syncs its gradients.
        self.model: nn.Module = self.method
        self.probe_model: nn.Module = self.probe
        if self.world_size > 1:
            self.model = wrap_ddp(self.method, self.device, dcfg["find_unused_parameters"])
            self.probe_model = wrap_ddp(self.probe, self.device)
        self.train_images = self.train_ds.images.pin_memory() if self.device.type == "cuda" else self.train_ds.images
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self._reset_acc()
        self._n_records = 0  # lines in metrics.jsonl, checkpointed so a resume can cut the log back exactly
        self._consecutive_skips = 0
        self._stop_signal: Optional[str] = None
        self._prev_handlers: Dict[int, Any] = {}
        self._faults = _FaultInjector(os.environ.get("SSLEXT_TEST_FAULT"))
        if self.main:
            self._remove_stale_temp_files()
        if resume:
            self._load(self.ckpt_path)
        elif self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for f in ("metrics.jsonl", "metrics.csv"):
                (self.run_dir / f).unlink(missing_ok=True)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))

    # ------------------------------------------------------------------ state
    def _reset_acc(self) -> None:
        # Running sums of the current epoch; checkpointed so a mid-epoch resume
        # reports the same epoch means as an uninterrupted run.
        self.acc: Dict[str, Any] = {"loss": 0.0, "n": 0, "probe_correct": 0, "terms": {}, "seconds": 0.0,
                                    "skipped": 0}

    def _remove_stale_temp_files(self) -> None:
        # A process killed inside atomic_save leaves its temp file behind; it
        # is never read, only cleaned up here.
        if self.run_dir.is_dir():
            for p in self.run_dir.glob(f".{self.ckpt_path.name}.*.tmp"):
                p.unlink(missing_ok=True)

    def state_dict(self, rank_rng: Optional[List[Dict[str, torch.Tensor]]] = None) -> Dict[str, Any]:
        """Checkpoint dict; ``rank_rng`` (from ``_gather_rank_rng``) adds every rank's RNG streams."""
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
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "epoch_acc": self.acc,
            "world_size": self.world_size,
            "metrics_records": self._n_records,
            "consecutive_skips": self._consecutive_skips,
        }
        if rank_rng is not None and self.world_size > 1:
            out["rank_rng"] = rank_rng
        return out

    def _own_rng(self) -> Dict[str, torch.Tensor]:
        st = {"augment": self.augment.generator.get_state(), "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            st["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return st

    def _gather_rank_rng(self) -> Optional[List[Dict[str, torch.Tensor]]]:
        """Every rank's RNG streams, in rank order (a collective: all ranks call it)."""
        if self.world_size == 1:
            return None
        own = self._own_rng()
        per_key = {k: all_gather_tensors(v) for k, v in own.items()}
        return [{k: per_key[k][r] for k in own} for r in range(self.world_size)]

    def save(self) -> None:
        """Write ``last.pt`` from rank 0; under DDP every rank must call it (RNG gather)."""
        rank_rng = self._gather_rank_rng()
        if self.main:
            with self._faults.saving(self.global_step):
                atomic_save(self.state_dict(rank_rng), self.ckpt_path)

    def _restore_rng(self, ckpt: Dict[str, Any]) -> None:
        rank_rng = ckpt.get("rank_rng")
        saved_world = ckpt.get("world_size", 1)
        if saved_world == self.world_size and (self.world_size == 1 or rank_rng is not None):
            own = rank_rng[self.rank] if self.world_size > 1 else {
                "augment": ckpt["augment"]["generator"], "torch_rng": ckpt["torch_rng"]}
            self.augment.generator.set_state(own["augment"])
            torch.set_rng_state(own["torch_rng"])
            if self.world_size == 1:
                if ckpt["cuda_rng"] and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            elif "cuda_rng" in own and self.device.type == "cuda":
                torch.cuda.set_rng_state(own["cuda_rng"], self.device)
            return
        # Another world size: the per-rank augmentation streams of the saved run
        # do not exist here. Derive fresh ones from (seed, step, rank) so the
        # resume is still deterministic, and say that it is not bit-exact.
        seed = (self.cfg["seed"] * _RANK_SEED_STRIDE + self.global_step) * 8191 + self.rank
        self.augment.generator.manual_seed(seed % (2 ** 63))
        torch.manual_seed(seed % (2 ** 63))
        if self.main:
            print(f"sslext-train: warning: checkpoint written by {saved_world} process(es), resuming with "
                  f"{self.world_size}: model, optimizer, schedule and data position restored, augmentation RNG "
                  "re-seeded from (seed, step, rank): not bit-identical to an uninterrupted run", file=sys.stderr)

    def _check_resume_compatible(self, ckpt: Dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of another method/shape/data setup, naming what differs."""
        old, new = _flatten(ckpt["config"]), _flatten(self.cfg)
        absent = "<absent>"
        differ = sorted(k for k in set(old) | set(new) if old.get(k, absent) != new.get(k, absent))
        problems = [f"{k}: {old.get(k, absent)!r} in the checkpoint, {new.get(k, absent)!r} in the config"
                    for k in differ if _matches(k, _RESUME_MUST_MATCH)]
        shapes = []
        if old.get("method.name") == new.get("method.name"):
            shapes = (_shape_mismatches(ckpt["method"], self.method.state_dict(), "method")
                      + _shape_mismatches(ckpt["probe"], self.probe.state_dict(), "probe"))
        if shapes:
            listed = {p.split(":")[0] for p in problems}
            problems += [f"{k}: {old.get(k, absent)!r} in the checkpoint, {new.get(k, absent)!r} in the config"
                         for k in differ if _matches(k, ("method.", "model.", "data.", "eval.")) and k not in listed]
            more = f" (and {len(shapes) - 8} more)" if len(shapes) > 8 else ""
            problems.append("tensor shapes differ: " + "; ".join(shapes[:8]) + more)
        if problems:
            raise CheckpointMismatchError(
                f"--resume: checkpoint {path} does not belong to this config:\n  " + "\n  ".join(problems)
                + f"\nResume with the run's own config (--config {self.run_dir / 'config.yaml'}), or start a new "
                  "run (another `name` or `train.out_dir`).")
        changed = [k for k in differ if not (_matches(k, _RESUME_FREE) and k not in _RESUME_FREE_EXCEPT)]
        if changed:
            warnings.warn(f"--resume: the config differs from the checkpoint's in {changed}; the resumed run "
                          "continues with the new values and will not match an uninterrupted run", stacklevel=3)

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint_file(path)
        self._check_resume_compatible(ckpt, path)
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.probe.load_state_dict(ckpt["probe"])
        self.probe_opt.load_state_dict(ckpt["probe_opt"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        self._restore_rng(ckpt)
        self.acc = {"skipped": 0, **ckpt["epoch_acc"]}
        self._consecutive_skips = int(ckpt.get("consecutive_skips", 0))
        # Drop metric records written after this checkpoint (the run died
        # between logging and checkpointing; the resumed run writes them again)
        # so the log has no duplicates; keep the events (non-finite steps,
        # signals, resumes) as history. A torn last line is dropped too.
        mpath = self.run_dir / "metrics.jsonl"
        keep: List[str] = []
        if mpath.exists() and self.main:
            n_saved = ckpt.get("metrics_records")
            for i, line in enumerate(mpath.read_text().splitlines()):
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if n_saved is not None:
                    if i < n_saved or r.get("kind") not in ("step", "epoch"):
                        keep.append(line)
                elif r.get("step", 0) <= self.global_step:  # checkpoints written before metrics_records
                    keep.append(line)
            _atomic_write_text(mpath, "".join(k + "\n" for k in keep))
        self._n_records = len(keep)
        self._log({"kind": "resume", "step": self.global_step, "epoch": self.epoch, "checkpoint": str(path)})
        self._write_csv()

    # ------------------------------------------------------------------ logging
    def _log(self, rec: Dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        self._n_records += 1

    def _write_csv(self) -> None:
        if not self.main:
            return
        mpath = self.run_dir / "metrics.jsonl"
        if not mpath.exists():
            return
        recs = [json.loads(l) for l in mpath.read_text().splitlines() if l.strip()]
        recs = [r for r in recs if r.get("kind") == "epoch"]
        if not recs:
            return
        keys = sorted({k for r in recs for k in r})
        tmp = self.run_dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(recs)
        os.replace(tmp, self.run_dir / "metrics.csv")

    # ------------------------------------------------------------------ epoch eval
    @torch.no_grad()
    def _epoch_eval(self) -> Dict[str, float]:
        ev = self.cfg["eval"]
        out: Dict[str, float] = {}
        g = torch.Generator().manual_seed(self.cfg["seed"] + 7)
        ntr = len(self.train_ds)
        pick = torch.randperm(ntr, generator=g)[: min(ntr, ev["knn_train_limit"] or ntr)]
        feats, z = extract_features(self.method.backbone, self.train_ds.images[pick], ev["batch_size"], self.device,
                                    self.crop_size, self.mean, self.std, getattr(self.method, "projector", None))
        nd = min(ev["diag_samples"], feats.shape[0])
        out.update(collapse_diagnostics(feats[:nd], "backbone_"))
        if z is not None:  # pretext methods have no projector
            out.update(collapse_diagnostics(z[:nd], "projector_"))
        if self.test_ds is not None and self.train_ds.labels is not None:
            tf, _ = extract_features(self.method.backbone, self.test_ds.images, ev["batch_size"], self.device,
                                     self.crop_size, self.mean, self.std)
            nc = max(self.train_ds.num_classes, self.test_ds.num_classes)
            out["knn_acc"] = knn_accuracy(feats, self.train_ds.labels[pick], tf, self.test_ds.labels,
                                          ev["knn_k"], ev["knn_t"], nc)
            if self.use_probe:
                pred = self.probe(tf.to(self.device)).argmax(1).cpu()
                out["online_probe_acc"] = float((pred == self.test_ds.labels).float().mean() * 100)
        return out

    # ------------------------------------------------------------------ distributed step helpers
    def _loss_value(self, loss: torch.Tensor) -> float:
        """This rank's loss as a float; NaN on every rank when any rank's is non-finite.

        Under DDP a rank that stopped alone would leave the others blocked in
        the next collective, so the non-finite decision is taken together.
        """
        lval = float(loss.detach())
        if self.world_size > 1:
            s = loss.detach().float().reshape(1).clone()
            dist.all_reduce(s)
            if not math.isfinite(float(s)) and math.isfinite(lval):
                return float("nan")
        return lval

    def _global_probe_stats(self, correct: torch.Tensor, probe_loss: torch.Tensor) -> tuple:
        """(correct count, mean probe loss) over the global batch (one collective under DDP)."""
        if self.world_size == 1:
            return int(correct), float(probe_loss.detach())
        st = torch.stack([correct.float(), probe_loss.detach().float()])
        dist.all_reduce(st)
        return int(round(float(st[0]))), float(st[1]) / self.world_size

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:
            # Asked twice: stop now, with the signal's usual effect. The
            # checkpoint on disk is the last complete one (atomic writes).
            self._restore_signal_handlers()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._stop_signal = signal.Signals(signum).name

    def _install_signal_handlers(self) -> None:
        self._stop_signal = None
        # signal.signal only works in the main thread; a Trainer driven from
        # another thread keeps the process's handlers.
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._prev_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for sig, prev in self._prev_handlers.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._prev_handlers = {}

    def _stop_requested(self) -> Optional[str]:
        """The signal that asked the loop to stop, if any, agreed by every rank.

        Under DDP a signal may reach the ranks at different steps (or only
        one of them); all must stop at the same step, because the checkpoint
        write is a collective. One MAX all-reduce of the signal number per call.
        """
        if self.world_size > 1:
            own = signal.Signals[self._stop_signal].value if self._stop_signal else 0
            flag = torch.tensor([own], dtype=torch.int64, device=_comm_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if int(flag) and self._stop_signal is None:
                self._stop_signal = signal.Signals(int(flag)).name
        return self._stop_signal

    # ------------------------------------------------------------------ non-finite steps
    def _snapshot_buffers(self) -> List[Any]:
        # The forward pass mutates buffers (BatchNorm statistics, TiCo's running
        # covariance, queues); a skipped step must leave them as they were.
        return [(m, n, b.detach().clone()) for m in self.method.modules() for n, b in m._buffers.items()
                if b is not None]

    @staticmethod
    def _restore_buffers(snap: List[Any]) -> None:
        with torch.no_grad():
            for m, n, saved in snap:
                cur = m._buffers.get(n)
                if cur is not None and cur.shape == saved.shape and cur.dtype == saved.dtype:
                    cur.copy_(saved)  # in place: other holders of the buffer (DDP) keep seeing it
                else:
                    m._buffers[n] = saved

    def _nonfinite(self, lval: float) -> Optional[str]:
        """'loss' or 'gradients' when this step's loss or method gradients are NaN/Inf, else None."""
        if not math.isfinite(lval):
            return "loss"
        grads = [p.grad for p in self.method.parameters() if p.grad is not None]
        if grads and not bool(torch.stack(torch._foreach_norm(grads, float("inf"))).isfinite().all()):
            return "gradients"
        return None

    def _handle_nonfinite(self, what: str, lval: float, terms: Dict[str, torch.Tensor], snap: Optional[List[Any]],
                          pbar: Any) -> None:
        """Log the offending step; raise NonFiniteLossError (stop) or undo the step's side effects (skip)."""
        t = self.cfg["train"]
        bad = [n for n, p in self.method.named_parameters() if p.grad is not None and not bool(p.grad.isfinite().all())]
        skip = t["on_nonfinite"] == "skip" and self._consecutive_skips < t["max_consecutive_skips"]
        rec = {"kind": "nonfinite", "step": self.global_step + 1, "epoch": self.epoch, "what": what,
               "action": "skip" if skip else "stop", "loss": _json_num(lval),
               **{k: _json_num(v) for k, v in terms.items()}, "nonfinite_grads": bad[:10],
               "consecutive_skips": self._consecutive_skips + (1 if skip else 0)}
        self._log(rec)
        self.optimizer.zero_grad(set_to_none=True)
        if skip:
            self._consecutive_skips += 1
            if snap is not None:
                self._restore_buffers(snap)
            return
        if pbar:
            pbar.close()
        why = (f"{t['max_consecutive_skips']} consecutive steps were already skipped (train.max_consecutive_skips)"
               if t["on_nonfinite"] == "skip" else "train.on_nonfinite=stop")
        raise NonFiniteLossError(
            f"non-finite {what} (loss {lval}) at epoch {self.epoch} step {self.global_step + 1}; terms: "
            f"{ {k: float(v) for k, v in terms.items()} }; parameters with non-finite gradients: {bad[:5]}. "
            f"Training stopped ({why}); the last good checkpoint "
            f"({self.ckpt_path if self.ckpt_path.exists() else 'none written yet'}) is intact. "
            "Try a lower optim.lr or more warmup, or train.on_nonfinite=skip.")

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
        return self._finish(summary)

    def _fit_loop(self) -> Dict[str, Any]:
        cfg, t = self.cfg, self.cfg["train"]
        B, b = self.batch_size, self.local_batch
        labels = self.train_ds.labels
        every_steps = t["checkpoint_every_steps"]
        pbar = None
        if self.main and t["progress"]:
            from tqdm import tqdm
            pbar = tqdm(total=self.total_steps, initial=self.global_step, desc=cfg["name"], dynamic_ncols=True)
        stop: Optional[str] = None  # "max_steps" or the name of the signal that stopped the loop
        t_start = time.time()
        while self.epoch < t["epochs"]:
            # The data order is a pure function of (seed, epoch), so resuming
            # mid-epoch only needs the step index, not a saved permutation.
            perm = torch.randperm(len(self.train_ds), generator=torch.Generator().manual_seed(
                cfg["seed"] * 1_000_003 + self.epoch))
            acc = self.acc
            t_epoch = time.time()
            while self.step_in_epoch < self.steps_per_epoch:
                # This rank's contiguous slice of the global batch: the global
                # batches are the same for any number of processes.
                start = self.step_in_epoch * B + self.rank * b
                idx = perm[start:start + b]
                x = self.train_images[idx].to(self.device, non_blocking=True)
                views = self.augment(x)
                if t["channels_last"]:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                snap = self._snapshot_buffers() if t["on_nonfinite"] == "skip" else None
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    loss, terms = self.model(views)
                lval = self._loss_value(loss)
                self.optimizer.zero_grad(set_to_none=True)
                # Backward even on a non-finite loss: the gradient check is
                # what every process of a distributed run sees alike.
                loss.backward()
                what = self._nonfinite(lval)
                probe_loss = None
                if what is not None:
                    self._handle_nonfinite(what, lval, terms, snap, pbar)  # raises unless the step is skipped
                    acc["skipped"] = acc.get("skipped", 0) + 1
                else:
                    self._consecutive_skips = 0
                    self.optimizer.step()
                    self.scheduler.step()
                    self.method.after_optimizer_step(self.global_step, self.total_steps)
                    if self.use_probe:
                        y = labels[idx].to(self.device, non_blocking=True)
                        logits = self.probe_model(self.method.last_outputs["feats"].float())
                        probe_loss = F.cross_entropy(logits, y)
                        self.probe_opt.zero_grad(set_to_none=True)
                        probe_loss.backward()
                        self.probe_opt.step()
                        correct, probe_loss = self._global_probe_stats((logits.argmax(1) == y).sum(), probe_loss)
                        acc["probe_correct"] += correct
                self.step_in_epoch += 1
                self.global_step += 1
                self._faults.at("step", self.global_step)
                if what is None:
                    acc["loss"] += lval
                    acc["n"] += 1
                    for k, v in terms.items():
                        acc["terms"][k] = acc["terms"].get(k, 0.0) + float(v)
                    if self.global_step % t["log_every"] == 0 or self.step_in_epoch == self.steps_per_epoch:
                        rec = {"kind": "step", "step": self.global_step, "epoch": self.epoch, "loss": lval,
                               "lr": self.scheduler.get_last_lr()[0], **{k: float(v) for k, v in terms.items()}}
                        if probe_loss is not None:
                            rec["probe_loss"] = probe_loss
                        self._log(rec)
                if pbar:
                    pbar.update(1)
                    pbar.set_postfix(epoch=self.epoch, loss=f"{lval:.4g}")
                if t["max_steps"] and self.global_step >= t["max_steps"]:
                    stop = "max_steps"
                    break
                requested = self._stop_requested()
                if requested:
                    stop = requested
                    break
                if every_steps and self.global_step % every_steps == 0 and self.step_in_epoch < self.steps_per_epoch:
                    self.save()
            acc["seconds"] += time.time() - t_epoch
            if stop is not None and (self.step_in_epoch < self.steps_per_epoch or stop != "max_steps"):
                # Mid-epoch state (a signal at the last step of an epoch is saved
                # before the epoch's evaluation too, to exit quickly; the resumed
                # run evaluates that epoch first).
                if stop != "max_steps":
                    self._log({"kind": "signal", "signal": stop, "step": self.global_step, "epoch": self.epoch})
                self.save()
                break
            ep_n = acc["n"]
            # epoch finished
            rec: Dict[str, Any] = {"kind": "epoch", "epoch": self.epoch, "step": self.global_step,
                                   "loss": acc["loss"] / max(ep_n, 1),
                                   **{k: v / max(ep_n, 1) for k, v in acc["terms"].items()},
                                   "lr": self.scheduler.get_last_lr()[0],
                                   "train_seconds": acc["seconds"],
                                   "images_per_second": ep_n * B / max(acc["seconds"], 1e-9),
                                   "skipped_steps": acc.get("skipped", 0)}
            if self.use_probe and ep_n:
                rec["online_probe_train_acc"] = acc["probe_correct"] / (ep_n * B) * 100
            if self.main and ((self.epoch + 1) % cfg["eval"]["every"] == 0 or self.epoch + 1 == t["epochs"]):
                rec.update(self._epoch_eval())  # rank 0 only: its record is the only one written
            self._log(rec)
            self._write_csv()
            self._faults.at("epoch", self.epoch)
            if pbar:
                pbar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in rec.items() if k in ("epoch", "loss", "online_probe_acc", "knn_acc",
                                                                     "backbone_rankme", "projector_rankme")))
            self.epoch += 1
            self.step_in_epoch = 0
            self._reset_acc()
            requested = self._stop_requested() if stop is None else None
            if requested:  # arrived during the epoch's evaluation
                stop = requested
                self._log({"kind": "signal", "signal": stop, "step": self.global_step, "epoch": self.epoch})
            if (self.epoch % t["checkpoint_every"] == 0 or self.epoch == t["epochs"] or stop is not None
                    or (every_steps and self.global_step % every_steps == 0)):
                self.save()
            if stop is not None:
                break
        if pbar:
            pbar.close()
        return {"run_dir": str(self.run_dir), "global_step": self.global_step, "epoch": self.epoch,
                "train_seconds": time.time() - t_start, "finished": self.epoch >= t["epochs"],
                "interrupted": stop if stop not in (None, "max_steps") else None}

    def _finish(self, summary: Dict[str, Any]) -> Dict[str, Any]:
        cfg, t = self.cfg, self.cfg["train"]
        # Rank 0 alone evaluates: its record is the only one written.
        if self.main and summary["finished"] and cfg["eval"]["final"] and self.test_ds is not None \
                and self.train_ds.labels is not None:
            res = evaluate_backbone(self.method.backbone, self.train_ds, self.test_ds, device=self.device,
                                    crop_size=self.crop_size, mean=self.mean, std=self.std,
                                    projector=getattr(self.method, "projector", None),
                                    batch_size=cfg["eval"]["batch_size"],
                                    probe_epochs=cfg["eval"]["offline_epochs"], probe_lr=cfg["eval"]["offline_lr"],
                                    label_fraction=cfg["eval"]["label_fraction"], knn_k=cfg["eval"]["knn_k"],
                                    knn_t=cfg["eval"]["knn_t"], seed=cfg["seed"], progress=t["progress"])
            summary["final_eval"] = res
            _atomic_write_text(self.run_dir / "final_eval.json", json.dumps(res, indent=2))
        if self.main and summary["finished"]:
            from .report import write_report
            summary["report"] = str(write_report(self.run_dir))
        return summary


def train(cfg: Dict[str, Any], resume: bool = False) -> Dict[str, Any]:
    """Run (or resume) pretraining for a validated config dict."""
    return Trainer(cfg, resume=resume).fit()


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslext-train", description="Self-supervised pretraining with sslext losses.")
    p.add_argument("--config", "-c", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.1 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/<name>/last.pt")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (CIFAR)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        overrides = list(args.overrides) + (["data.download=true"] if args.download else [])
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"sslext-train: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg))
        return 0
    try:
        summary = train(cfg, resume=args.resume)
    except NonFiniteLossError as e:
        print(f"sslext-train: {e}", file=sys.stderr)
        return 3
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"sslext-train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: stopped without a new checkpoint
        print("sslext-train: interrupted; the last complete checkpoint is intact", file=sys.stderr)
        return 130
    finally:
        cleanup_distributed()
    if int(os.environ.get("RANK", "0")) == 0:  # the group is gone by now; torchrun's RANK still says who we are
        print(json.dumps({k: v for k, v in summary.items()}, indent=2, default=str))
    if summary.get("interrupted"):
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"sslext-train: stopped by {summary['interrupted']} at step {summary['global_step']}; checkpoint "
                  f"written to {Path(summary['run_dir']) / 'last.pt'}; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
