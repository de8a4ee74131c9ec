"""What a training run is made of, built once from a config: :class:`TrainerParts`.

The trainer's loop, epoch, evaluation and checkpoint modules read these parts;
nothing else adds fields to the trainer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from ...data import ImageDataset, TwoViewAugment
from ...data.stream import StreamLoader
from ...distributed import convert_sync_batchnorm, wrap_ddp
from ...optim import WarmupCosine, build_optimizer
from ..config import ConfigError
from .build import build_everything
from .checkpoint import RANK_SEED_STRIDE
from .faults import FaultInjector
from .metrics import MetricsLog
from .nonfinite import NonFinitePolicy
from .precision import Precision, trainer_precision
from .signals import StopSignals
from .step import BatchStager, autocast_settings, compile_forward, make_scaler
from .step_stats import EpochStats

__all__ = ["TrainerParts", "build_trainer_parts"]


@dataclass
class TrainerParts:
    """Every object a run trains with; :class:`~.trainer.Trainer` exposes each as an attribute."""

    # data (build.build_everything)
    train_ds: ImageDataset  # a StreamingDataset (file list or shard index) when data.source streams
    test_ds: Optional[ImageDataset]
    # train_ds unless eval.split=val holds images out; streaming: a decoded sample
    # of eval.knn_train_limit images on rank 0, None on the others
    eval_train_ds: Optional[ImageDataset]
    probe_labels: Optional[torch.Tensor]  # train_ds.labels, held-out ones set to IGNORE_LABEL
    augment: TwoViewAugment
    mean: Any
    std: Any
    crop_size: int
    # batches: optim.batch_size is the global batch, local_batch this rank's slice
    batch_size: int
    local_batch: int
    steps_per_epoch: int
    total_steps: int
    stage_batch: Optional[BatchStager]  # data.source=memory: the batch gathered from train_ds.images
    stream: Optional[StreamLoader]  # data.source=stream/shards: the batch cropped by DataLoader workers
    # models: method / probe are the unwrapped modules (state_dict keys, hooks,
    # evaluation); model / probe_model are what the loop calls (DDP under torchrun)
    method: nn.Module
    model: nn.Module
    forward: nn.Module  # the model's forward and loss, compiled with train.compile
    probe: nn.Linear
    probe_model: nn.Module
    use_probe: bool
    # optimisation
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosine
    probe_opt: torch.optim.Optimizer
    precision: Precision
    autocast_enabled: bool
    autocast_dtype: torch.dtype
    scaler: Optional[torch.amp.GradScaler]
    # bookkeeping
    stats: EpochStats
    metrics: MetricsLog
    nonfinite: NonFinitePolicy
    signals: StopSignals
    faults: FaultInjector


def _check_batch(batch_size: int, world_size: int, n_images: int) -> int:
    """This rank's batch; a ConfigError when the global batch does not split or fit."""
    if batch_size % world_size:
        raise ConfigError(
            f"optim.batch_size: {batch_size} is the global batch and must be divisible by "
            f"the number of processes ({world_size})"
        )
    local_batch = batch_size // world_size
    if world_size > 1 and local_batch < 2:
        raise ConfigError(
            f"optim.batch_size: {batch_size} over {world_size} processes leaves "
            f"{local_batch} image per process; at least 2 per process are needed"
        )
    if n_images < batch_size:
        raise ConfigError(f"optim.batch_size: {batch_size} is larger than the training set ({n_images} images)")
    return local_batch


def build_trainer_parts(
    cfg: Dict[str, Any], device: torch.device, world_size: int, rank: int, run_dir: Path, main: bool
) -> TrainerParts:
    """Build a run's parts in a fixed order (the torch RNG draws of model and probe
    initialisation follow it, so a resumed run rebuilds the same modules)."""
    t, o, dcfg = cfg["train"], cfg["optim"], cfg["distributed"]
    data = build_everything(cfg, device)
    augment, method, train_ds = data["augment"], data["method"], data["train_ds"]
    if rank > 0:
        augment.generator.manual_seed(cfg["seed"] + RANK_SEED_STRIDE * rank)
    batch_size = o["batch_size"]
    local_batch = _check_batch(batch_size, world_size, len(train_ds))
    if world_size > 1 and dcfg["sync_batchnorm"]:
        # Before the optimizer is built: the BN parameters are shared, but
        # the module tree must be final when DDP registers it.
        method = convert_sync_batchnorm(method, device)
    steps_per_epoch = len(train_ds) // batch_size  # drop_last: full batches keep BN/loss statistics stable
    total_steps = t["epochs"] * steps_per_epoch
    optimizer = build_optimizer(
        o["name"], method, o["lr"], o["weight_decay"], o["momentum"], o["eta"], o["clip_lr"], o["exclude_bias_norm"]
    )
    scheduler = WarmupCosine(
        optimizer,
        int(round(o["warmup_epochs"] * steps_per_epoch)),
        total_steps,
        o["warmup_start_factor"],
        o["final_lr_factor"],
    )
    probe = nn.Linear(method.feat_dim, max(train_ds.num_classes, 1)).to(device)
    probe_opt = torch.optim.SGD(probe.parameters(), lr=cfg["eval"]["probe_lr"], momentum=0.9)
    if t["channels_last"]:
        method.to(memory_format=torch.channels_last)
    # Autocast covers the backbone and heads; every method leaves it before
    # its loss, which accumulates in float32 (as the ops do anyway). CPU
    # auto is measured on this model (after channels_last, as it will run).
    precision = trainer_precision(cfg, device, method, local_batch, data["crop_size"], rank)
    model, probe_model = method, probe
    if world_size > 1:
        model = wrap_ddp(method, device, dcfg["find_unused_parameters"])
        probe_model = wrap_ddp(probe, device)
    step_view = _PrecisionView(precision, device)
    autocast_enabled, autocast_dtype = autocast_settings(step_view)
    d = cfg["data"]
    stage_batch, stream = None, None
    if d["source"] == "memory":
        stage_batch = BatchStager(train_ds.images, data["probe_labels"], local_batch, device)
    else:
        stream = StreamLoader(train_ds, batch_size, cfg["seed"], device, rank, world_size, d["workers"], d["prefetch"])
    return TrainerParts(
        train_ds=train_ds,
        test_ds=data["test_ds"],
        eval_train_ds=data["eval_train_ds"],
        probe_labels=data["probe_labels"],
        augment=augment,
        mean=data["mean"],
        std=data["std"],
        crop_size=data["crop_size"],
        batch_size=batch_size,
        local_batch=local_batch,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        stage_batch=stage_batch,
        stream=stream,
        method=method,
        model=model,
        forward=compile_forward(model, t["compile"]),
        probe=probe,
        probe_model=probe_model,
        use_probe=bool(cfg["eval"]["online_probe"] and train_ds.labels is not None),
        optimizer=optimizer,
        scheduler=scheduler,
        probe_opt=probe_opt,
        precision=precision,
        autocast_enabled=autocast_enabled,
        autocast_dtype=autocast_dtype,
        scaler=make_scaler(step_view),
        stats=EpochStats(device),
        metrics=MetricsLog(run_dir, main, t["loggers"]),
        nonfinite=NonFinitePolicy(t["on_nonfinite"], t["max_consecutive_skips"]),
        signals=StopSignals(),
        faults=FaultInjector(os.environ.get("SSLEXT_TEST_FAULT")),
    )


@dataclass
class _PrecisionView:
    """What step.autocast_settings / make_scaler read of a trainer."""

    precision: Precision
    device: torch.device
