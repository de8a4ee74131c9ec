"""What a config describes, built: the device, the datasets, the method and the augmentation.

Shared by the trainer and by the offline evaluation of a checkpoint, so both
rebuild exactly the same model from the same config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import torch

from ...data import DATASET_STATS, TwoViewAugment, build_dataset, first_on_local_rank_zero
from ...data.stream import evaluation_bank, streaming_datasets
from ...distributed import get_rank
from ...evaluate import stratified_subset
from ...models import build_backbone
from ..config import ConfigError
from ..methods import build_method

__all__ = ["resolve_device", "cpu_has_native_bf16", "build_everything", "IGNORE_LABEL"]

IGNORE_LABEL = -100  # F.cross_entropy's default ignore_index


# Set by the test suite (python_tests/conftest.py): a test that leaves
# train.device at "auto" would train on CUDA on a GPU machine, against CPU
# tensors and bit-exact CPU expectations; it fails on every machine instead.
FORBID_AUTO_DEVICE_ENV = "SSLEXT_TEST_FORBID_AUTO_DEVICE"


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if os.environ.get(FORBID_AUTO_DEVICE_ENV) == "1":
            raise ConfigError(
                f"train.device: 'auto' in a test ({FORBID_AUTO_DEVICE_ENV}=1): pin train.device=cpu, "
                "or train.device=cuda in a test marked cuda"
            )
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


def _stats(cfg: Dict[str, Any]):
    d = cfg["data"]
    mean, std = DATASET_STATS.get(d["dataset"], DATASET_STATS["imagenet"])
    return tuple(d["mean"] or mean), tuple(d["std"] or std)


def _datasets(cfg: Dict[str, Any], need_train_labels: bool):
    d = cfg["data"]
    if d["source"] != "memory":  # the training split is read lazily, the test split decoded
        a = cfg["augment"]
        views = [a["view1"], a["view2"]]
        return streaming_datasets(
            d["source"], d["root"], views, d["image_size"], cfg["seed"], d["on_bad_image"], d["classes"],
            d["verify_shards"], d["cache_dir"], d["test_limit"],
        )  # fmt: skip
    kw = dict(
        root=d["root"],
        download=d["download"],
        image_size=d["image_size"],
        cache_dir=d["cache_dir"],
        seed=cfg["seed"],
        variant=d["variant"],
        on_bad_image=d["on_bad_image"],
        classes=d["classes"],
    )
    train_ds = build_dataset(d["dataset"], "train", limit=d["train_limit"], **kw)
    try:
        test_ds = build_dataset(d["dataset"], "test", limit=d["test_limit"], **kw)
    except Exception:
        if need_train_labels:
            raise
        test_ds = None  # unlabeled pretraining folders have no test split; evaluation is skipped
    if test_ds is not None and test_ds.labels is None:
        test_ds = None
    return train_ds, test_ds


def build_everything(cfg: Dict[str, Any], device: torch.device, need_train_labels: bool = False) -> Dict[str, Any]:
    """Datasets, method and augmentation described by ``cfg`` (no optimizer)."""
    # Under torchrun, each node's local rank 0 downloads, extracts and caches;
    # the other ranks wait, then read what it left.
    train_ds, test_ds = first_on_local_rank_zero(lambda: _datasets(cfg, need_train_labels))
    if need_train_labels and (train_ds.labels is None or test_ds is None):
        raise ValueError(
            f"data.dataset: evaluation needs labelled train and test splits for {cfg['data']['dataset']!r}"
        )
    eval_train_ds, probe_labels = train_ds, train_ds.labels
    if cfg["eval"]["split"] == "val" and train_ds.labels is not None:
        eval_train_ds, test_ds, probe_labels = _hold_out_val(train_ds, cfg["eval"])
    torch.manual_seed(cfg["seed"])  # network init
    m = cfg["model"]
    backbone = build_backbone(
        m["backbone"], m["cifar_stem"], m["width"], image_size=cfg["augment"]["view1"]["crop_size"]
    )
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
        raise ConfigError(
            f"augment.view2.crop_size: both views must use the same crop_size ({crop} vs {a['view2']['crop_size']})"
        )
    if cfg["data"]["source"] != "memory":  # workers crop the method's views; rank 0 evaluates
        train_ds.specs = train_ds.specs[:nv]
        lim, size = cfg["eval"]["knn_train_limit"], cfg["data"]["image_size"]
        eval_train_ds = evaluation_bank(train_ds, lim, size, cfg["seed"]) if get_rank() == 0 else None
    return dict(
        train_ds=train_ds,
        test_ds=test_ds,
        eval_train_ds=eval_train_ds,
        probe_labels=probe_labels,
        method=method,
        augment=augment,
        mean=mean,
        std=std,
        crop_size=crop,
    )


def _hold_out_val(train_ds, ev: Dict[str, Any]):
    """``eval.split: val``: a class-stratified, seeded ``val_fraction`` of the training
    images becomes the evaluation split, so tuning never reads the test split.

    Returns (labelled images evaluation trains on, the held-out split, labels for
    the online probe). Pretraining still uses every training image: it reads no
    labels, and the budget (steps per epoch) stays the study's. The online probe
    must not learn the held-out labels: theirs become cross_entropy's ignore_index.
    The split depends on ``val_seed`` only, so every cell holds out the same images."""
    val_idx = stratified_subset(train_ds.labels, ev["val_fraction"], ev["val_seed"])
    keep = torch.ones(len(train_ds), dtype=torch.bool)
    keep[val_idx] = False
    val_ds = train_ds.subset(val_idx)
    val_ds.name = train_ds.name.removesuffix("-train") + "-val"
    val_ds.skipped = []  # the training split's, already reported with it
    probe_labels = train_ds.labels.clone()
    probe_labels[val_idx] = IGNORE_LABEL
    return train_ds.subset(torch.nonzero(keep).flatten()), val_ds, probe_labels
