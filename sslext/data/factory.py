"""Datasets by name: the one place that knows every loader (``data.dataset``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch

from .datasets import DatasetError, ImageDataset, load_cifar, load_fashion_mnist, load_image_folder
from .imagenette import load_imagenette

__all__ = ["DATASETS", "build_dataset", "synthetic_dataset"]

DATASETS = ("cifar10", "cifar100", "fashion_mnist", "image_folder", "imagenette", "imagewoof", "synthetic")


def synthetic_dataset(n: int = 256, num_classes: int = 4, image_size: int = 32, seed: int = 0) -> ImageDataset:
    """Class-dependent coloured blobs: a tiny stand-in used by tests/smoke runs."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    base = torch.rand(num_classes, 3, 1, 1, generator=g) * 200
    noise = torch.rand(n, 3, image_size, image_size, generator=g) * 55
    img = (base[labels] + noise).clamp(0, 255).to(torch.uint8)
    return ImageDataset(img, labels, [f"c{i}" for i in range(num_classes)], "synthetic")


def build_dataset(
    name: str,
    split: str,
    root: Optional[str] = None,
    download: bool = False,
    image_size: int = 32,
    cache_dir: Optional[str] = None,
    limit: Optional[int] = None,
    seed: int = 0,
    variant: str = "160px",
    on_bad_image: str = "error",
    classes: Optional[List[str]] = None,
) -> ImageDataset:
    """Build a dataset by name (``DATASETS``); ``limit`` keeps a seeded random subset.

    ``variant`` selects the Imagenette/Imagewoof archive (``full``, ``320px``,
    ``160px``); ``on_bad_image`` applies to the image-folder datasets, ``classes``
    (a selection of class folders) to ``image_folder``.
    """
    if name in ("cifar10", "cifar100"):
        ds = load_cifar(root or "data", name, split, download)
    elif name == "fashion_mnist":
        ds = load_fashion_mnist(root, split)
    elif name in ("imagenette", "imagewoof"):
        ds = load_imagenette(root or "data", name, split, variant, image_size, download, cache_dir, on_bad_image)
    elif name == "image_folder":
        if not root:
            raise ValueError("data.root: required for dataset 'image_folder'")
        if split == "test":
            sub = next((s for s in ("val", "test") if Path(root, s).is_dir()), None)
            if sub is None:
                # Never evaluate on the pretraining images by accident.
                raise DatasetError(f"image folder: no 'val' or 'test' sub-folder under {root} for the test split")
        else:
            sub = "train" if Path(root, "train").is_dir() else None
        ds = load_image_folder(root, image_size, sub, cache_dir, on_bad_image, classes)
    elif name == "synthetic":
        ds = synthetic_dataset(256 if split == "train" else 128, 4, image_size, seed + (split == "test"))
    else:
        raise ValueError(f"data.dataset: expected one of {list(DATASETS)}, got {name!r}")
    if limit is not None and limit < len(ds):
        g = torch.Generator().manual_seed(seed + 12345)
        ds = ds.subset(torch.randperm(len(ds), generator=g)[:limit].sort().values)
    return ds
