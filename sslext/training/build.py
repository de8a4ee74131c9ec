"""What a config describes, built: the device, the datasets, the method and the augmentation.

Shared by the trainer and by the offline evaluation of a checkpoint, so both
rebuild exactly the same model from the same config.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import torch

from ..config import ConfigError
from ..data import DATASET_STATS, TwoViewAugment, build_dataset
from ..methods import build_method
from ..models import build_backbone

__all__ = ["resolve_device", "resolve_amp", "cpu_has_native_bf16", "build_everything"]


# Set by the test suite (python_tests/conftest.py): a test that leaves
# train.device at "auto" would train on CUDA on a GPU machine, against CPU
# tensors and bit-exact CPU expectations; it fails on every machine instead.
FORBID_AUTO_DEVICE_ENV = "SSLEXT_TEST_FORBID_AUTO_DEVICE"


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        if os.environ.get(FORBID_AUTO_DEVICE_ENV) == "1":
            raise ConfigError(f"train.device: 'auto' in a test ({FORBID_AUTO_DEVICE_ENV}=1): pin train.device=cpu, "
                              "or train.device=cuda in a test marked cuda")
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
    (bf16 on CUDA only). On the CPU bf16 did not pay off where it was measured:
    on a 2-core AVX512-BF16 Xeon with torch 2.14.1, a ResNet-10 VICReg step ran
    at 0.90-1.00x float32's speed, and bf16 + channels_last at 0.95-1.07x
    against channels_last's 1.28-1.37x (benchmarks/results/cpu/cpu_precision.md)."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def _stats(cfg: Dict[str, Any]):
    d = cfg["data"]
    mean, std = DATASET_STATS.get(d["dataset"], DATASET_STATS["imagenet"])
    return tuple(d["mean"] or mean), tuple(d["std"] or std)


def build_everything(cfg: Dict[str, Any], device: torch.device, need_train_labels: bool = False) -> Dict[str, Any]:
    """Datasets, method and augmentation described by ``cfg`` (no optimizer)."""
    d = cfg["data"]
    kw = dict(root=d["root"], download=d["download"], image_size=d["image_size"], cache_dir=d["cache_dir"],
              seed=cfg["seed"], variant=d["variant"], on_bad_image=d["on_bad_image"])
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
