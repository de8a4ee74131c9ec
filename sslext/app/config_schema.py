"""The config schema: every key's default (``DEFAULTS``), type and range rules, and one-line meaning (``MEANINGS``).

Read by :mod:`.config` (loading, overrides, validation) and :mod:`.config_docs` (docs/config.md).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Dict

from ..data.augment import ViewAugment

__all__ = ["ConfigError", "DEFAULTS", "MEANINGS", "CHOICES", "FLOATS", "NULLABLE", "POSITIVE", "NONNEG"]


class ConfigError(ValueError):
    """Invalid configuration; the message names the offending key."""


_VIEW = {f.name: f.default for f in fields(ViewAugment)}

DEFAULTS: Dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "method": {"name": "vicreg"},
    "model": {"backbone": "resnet18", "cifar_stem": True, "width": 64},
    "data": {
        "dataset": "cifar10",
        "root": None,
        "download": False,
        "image_size": 32,
        "cache_dir": None,
        "train_limit": None,
        "test_limit": None,
        "mean": None,
        "std": None,
        "variant": "160px",
        "on_bad_image": "error",
        # Streaming (sslext.data.folder / sslext.data.shards)
        "source": "memory",
        "classes": None,
        "workers": 4,
        "prefetch": 2,
        "verify_shards": True,
    },
    "augment": {"view1": dict(_VIEW), "view2": {**_VIEW, "solarize_prob": 0.2}},
    "optim": {
        "name": "lars",
        "batch_size": 256,
        "lr": 0.3,
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "eta": 0.02,
        "clip_lr": True,
        "exclude_bias_norm": True,
        "warmup_epochs": 10,
        "warmup_start_factor": 0.0,
        "final_lr_factor": 0.0,
    },
    "train": {
        "epochs": 1000,
        "max_steps": None,
        "device": "auto",
        "amp": "auto",
        "channels_last": True,
        "out_dir": "runs",
        "checkpoint_every": 1,
        "checkpoint_every_steps": None,
        "log_every": 20,
        "progress": True,
        "threads": None,
        "on_nonfinite": "stop",
        "max_consecutive_skips": 10,
        "loggers": ["jsonl", "csv"],
        "compile": False,
    },
    "distributed": {"sync_batchnorm": True, "find_unused_parameters": False},
    "eval": {
        "online_probe": True,
        "probe_lr": 0.1,
        "every": 1,
        "knn_k": 200,
        "knn_t": 0.1,
        "knn_train_limit": 10000,
        "diag_samples": 2048,
        "batch_size": 512,
        "final": True,
        "offline_epochs": 100,
        "offline_lr": 0.01,
        "label_fraction": 0.1,
        "split": "test",
        "val_fraction": 0.1,
        "val_seed": 0,
    },
}

# Keys whose default is None, with the type they take when set.
NULLABLE = {
    "data.root": str,
    "data.cache_dir": str,
    "data.train_limit": int,
    "data.test_limit": int,
    "data.mean": list,
    "data.std": list,
    "data.classes": list,
    "train.max_steps": int,
    "train.threads": int,
    "train.checkpoint_every_steps": int,
    "eval.knn_train_limit": int,
}
# Keys that take a fraction although their default is a whole number: a budget
# sweep scales the warm-up with the epochs (10 epochs -> 10/3 warm-up epochs).
FLOATS = {"optim.warmup_epochs"}

CHOICES = {
    "optim.name": ("lars", "sgd", "adam", "adamw"),
    "data.dataset": ("cifar10", "cifar100", "fashion_mnist", "image_folder", "imagenette", "imagewoof", "synthetic"),
    "data.variant": ("full", "320px", "160px"),
    "data.on_bad_image": ("error", "skip"),
    "data.source": ("memory", "stream", "shards"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.on_nonfinite": ("stop", "skip"),
    "eval.split": ("test", "val"),
}
POSITIVE = {
    "optim.batch_size",
    "optim.lr",
    "optim.eta",
    "train.epochs",
    "train.max_steps",
    "train.checkpoint_every",
    "train.checkpoint_every_steps",
    "train.max_consecutive_skips",
    "train.log_every",
    "eval.probe_lr",
    "eval.every",
    "eval.knn_k",
    "eval.knn_t",
    "eval.diag_samples",
    "eval.batch_size",
    "eval.offline_epochs",
    "eval.offline_lr",
    "data.image_size",
    "model.width",
    "data.train_limit",
    "data.test_limit",
    "eval.knn_train_limit",
    "train.threads",
    "data.prefetch",
}
NONNEG = {
    "optim.weight_decay",
    "optim.momentum",
    "optim.warmup_epochs",
    "optim.warmup_start_factor",
    "optim.final_lr_factor",
    "seed",
    "data.workers",
}


# Every key of DEFAULTS, with one line on what it does: docs/config.md is
# generated from this (python -m sslext.app.config --markdown), and docs-check
# fails when a key has no meaning or the page is stale.
MEANINGS: Dict[str, str] = {
    "name": "run name: the run directory is `train.out_dir/name`",
    "seed": "seeds network init, data order, augmentation and the probe's label subset",
    "model.backbone": "backbone network: resnet10, resnet18, resnet34, resnet50, or timm/<name> (`pip install 'sslext[timm]'`)",
    "model.cifar_stem": "3x3 stride-1 first convolution and no max-pool, for 32 px images",
    "model.width": "channels of the first stage (64 = the standard ResNet; the CPU study uses 16)",
    "data.dataset": "which dataset to pretrain and evaluate on",
    "data.root": "folder holding the dataset (its standard layout, see docs/data.md)",
    "data.download": "fetch the dataset into `data.root` when it is missing (torchvision's downloader, checksummed)",
    "data.image_size": "side the images are stored at (image folders are resized to it)",
    "data.cache_dir": "where decoded image folders are cached (default `data.root/.sslext_cache`)",
    "data.train_limit": "use only the first N training images (null: all)",
    "data.test_limit": "use only the first N test images (null: all)",
    "data.mean": "per-channel normalisation mean (null: the dataset's standard statistics)",
    "data.std": "per-channel normalisation standard deviation (null: the dataset's standard statistics)",
    "data.variant": "Imagenette/Imagewoof archive: full, 320px or 160px",
    "data.on_bad_image": "an unreadable image file: stop with its path (error) or leave it out and report it (skip)",
    "data.source": "image_folder: decode every image into memory once (memory), read the files lazily in "
    "DataLoader workers (stream), or read the tar shards `sslext-shard` wrote (shards); see docs/data.md",
    "data.classes": "image_folder: only these class folders (e.g. the ImageNet-100 list), labelled in sorted order "
    "(null: every class folder)",
    "data.workers": "stream/shards: DataLoader worker processes per rank that decode and crop (0: in the training "
    "process)",
    "data.prefetch": "stream/shards: batches each worker keeps ready (host memory per rank ~ workers x prefetch x "
    "batch)",
    "data.verify_shards": "shards: check every shard's size and sha256 against the manifest before training",
    "optim.name": "optimizer: lars, sgd, adam or adamw",
    "optim.batch_size": "global batch size, split over the processes of a distributed run",
    "optim.lr": "peak learning rate (after warm-up)",
    "optim.weight_decay": "weight decay",
    "optim.momentum": "momentum (lars, sgd)",
    "optim.eta": "LARS trust coefficient",
    "optim.clip_lr": "LARS: clip the trust ratio at 1 (solo-learn's `clip_lr`)",
    "optim.exclude_bias_norm": "no weight decay (and no LARS scaling) for biases and normalisation parameters",
    "optim.warmup_epochs": "linear warm-up length in epochs (a fraction is allowed)",
    "optim.warmup_start_factor": "warm-up starts at this multiple of `optim.lr`",
    "optim.final_lr_factor": "cosine schedule ends at this multiple of `optim.lr`",
    "train.epochs": "training epochs (each a pass over the training set, last partial batch dropped)",
    "train.max_steps": "stop after this many optimizer steps, checkpointed and resumable (null: no limit)",
    "train.device": "auto (CUDA when available), cpu or cuda",
    "train.amp": "autocast: auto (GPU: bf16 from compute capability 8.0, else fp16 + GradScaler; CPU: the faster of float32 and bf16, measured once per CPU model), bf16, fp16, false; true = bf16",
    "train.channels_last": "channels-last memory format for the network (faster convolutions on CPU and GPU)",
    "train.out_dir": "parent folder of run directories",
    "train.checkpoint_every": "save `last.pt` every N epochs (and at the end)",
    "train.checkpoint_every_steps": "also save every N optimizer steps (null: per epoch only)",
    "train.log_every": "write a step record (loss, terms, lr) every N steps; the only host reads of the loss",
    "train.progress": "show a progress bar on the main process",
    "train.threads": "CPU threads torch uses (null: torch's default)",
    "train.on_nonfinite": "a non-finite loss or gradient: stop (exit 3) or skip the step",
    "train.compile": "torch.compile the method's forward and loss (same results as eager within float tolerance)",
    "train.loggers": "where metrics go: jsonl (always), csv, tensorboard (needs `pip install 'sslext[tensorboard]'`)",
    "train.max_consecutive_skips": "with on_nonfinite=skip, stop after this many skipped steps in a row",
    "distributed.sync_batchnorm": "synchronise BatchNorm statistics across processes",
    "distributed.find_unused_parameters": "DDP's find_unused_parameters (only for methods with unused branches)",
    "eval.online_probe": "train a linear probe on detached features during pretraining",
    "eval.probe_lr": "online probe learning rate (SGD, momentum 0.9)",
    "eval.every": "evaluate (kNN, online probe, RankMe) every N epochs",
    "eval.knn_k": "neighbours of the weighted kNN classifier",
    "eval.knn_t": "temperature of the weighted kNN classifier",
    "eval.knn_train_limit": "training images in the per-epoch kNN bank (null: all; the final kNN uses all)",
    "eval.diag_samples": "samples for the per-epoch collapse diagnostics (RankMe, dead dimensions)",
    "eval.batch_size": "batch size of feature extraction",
    "eval.final": "evaluate the frozen backbone at the end (linear probes, kNN, spectra)",
    "eval.offline_epochs": "epochs of the final linear probes",
    "eval.offline_lr": "learning rate of the final linear probes",
    "eval.label_fraction": "fraction of the labels for the second final probe (stratified, seeded)",
    "eval.split": "evaluate on the test split, or on a held-out part of the training set (val) for tuning",
    "eval.val_fraction": "with split=val: the fraction of training images held out (stratified)",
    "eval.val_seed": "with split=val: seeds which images are held out (independent of `seed`)",
    "augment.VIEW.crop_size": "random-resized-crop output side in pixels",
    "augment.VIEW.crop_min_scale": "smallest crop area, as a fraction of the image",
    "augment.VIEW.crop_max_scale": "largest crop area, as a fraction of the image",
    "augment.VIEW.flip_prob": "probability of a horizontal flip",
    "augment.VIEW.jitter_prob": "probability of colour jitter",
    "augment.VIEW.brightness": "colour jitter: brightness strength",
    "augment.VIEW.contrast": "colour jitter: contrast strength",
    "augment.VIEW.saturation": "colour jitter: saturation strength",
    "augment.VIEW.hue": "colour jitter: hue strength (at most 0.5)",
    "augment.VIEW.gray_prob": "probability of converting to grayscale",
    "augment.VIEW.blur_prob": "probability of a Gaussian blur",
    "augment.VIEW.solarize_prob": "probability of solarisation",
}
