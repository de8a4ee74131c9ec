"""Imagenette and Imagewoof (fast.ai's 10-class ImageNet subsets) as in-memory datasets.

Both ship as archives that unpack to the same layout:

    <data.root>/imagenette2-160/train/n01440764/*.JPEG   (and .../val/..., one folder per WordNet id)

``imagenette2`` (full size), ``imagenette2-320`` and ``imagenette2-160`` (short
side 320 / 160 px) are the three variants; Imagewoof's folders are named
``imagewoof2``, ``imagewoof2-320`` and ``imagewoof2-160``. ``data.root`` may be
the folder holding that directory (what ``data.download`` fills) or the
directory itself. Images are decoded once by the image-folder loader and cached.

torchvision downloads Imagenette (``torchvision.datasets.Imagenette``) but has
no downloader for Imagewoof: fetch fast.ai's ``imagewoof2-<variant>`` archive
yourself and unpack it under ``data.root``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import torch

from .datasets import DatasetError, ImageDataset, load_image_folder

__all__ = ["IMAGENETTE_CLASSES", "IMAGEWOOF_CLASSES", "VARIANTS", "load_imagenette"]

VARIANTS = ("full", "320px", "160px")

# WordNet id -> class name, in the sorted-id order that sets the label numbers.
IMAGENETTE_CLASSES: Dict[str, str] = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}
IMAGEWOOF_CLASSES: Dict[str, str] = {
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}
_NAMES = {"imagenette": IMAGENETTE_CLASSES, "imagewoof": IMAGEWOOF_CLASSES}


def _folder_name(name: str, variant: str) -> str:
    return f"{name}2" + ("" if variant == "full" else f"-{variant[:-2]}")


def _find_root(root: Path, folder: str) -> Optional[Path]:
    for cand in (root / folder, root):
        if (cand / "train").is_dir() and (cand / "val").is_dir():
            return cand
    return None


def _download_imagenette(root: Path, variant: str) -> None:
    try:
        # Only a download needs torchvision.datasets (slow to import); a missing one is a clear error.
        import torchvision.datasets as tvd
    except ImportError as e:
        raise DatasetError(f"data.download: torchvision is needed to download imagenette ({e})") from e
    root.mkdir(parents=True, exist_ok=True)
    try:
        # Downloads and unpacks the md5-checked archive once; the constructor then only lists files.
        tvd.Imagenette(str(root), split="train", size=variant, download=True)
    except Exception as e:  # URLError, socket errors, HTTP errors, a failed md5 check
        raise DatasetError(
            f"imagenette: data.download=true could not fetch the {variant} archive into {root} "
            f"({type(e).__name__}: {e}). Without internet, download it on another machine (the same command, or "
            f"torchvision.datasets.Imagenette(root, size='{variant}', download=True)) and copy the "
            f"'{_folder_name('imagenette', variant)}' folder under data.root."
        ) from e


def load_imagenette(
    root: str | os.PathLike,
    name: str = "imagenette",
    split: str = "train",
    variant: str = "160px",
    image_size: int = 128,
    download: bool = False,
    cache_dir: Optional[str | os.PathLike] = None,
    on_bad_image: str = "error",
) -> ImageDataset:
    """Imagenette or Imagewoof, ``split`` ``"train"`` or ``"test"`` (the ``val`` folder).

    Labels are the positions of the WordNet ids in sorted order; ``classes``
    holds their names (``"tench"``, ...). ``variant`` picks the archive
    (``full``, ``320px``, ``160px``); ``image_size`` is the side every image is
    resized (short side) and center-cropped to, once, when the cache is built.
    """
    if name not in _NAMES:
        raise ValueError(f"data.dataset: expected one of {sorted(_NAMES)}, got {name!r}")
    if variant not in VARIANTS:
        raise ValueError(f"data.variant: expected one of {list(VARIANTS)}, got {variant!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    folder = _folder_name(name, variant)
    d = _find_root(root, folder)
    if d is None and download:
        if name == "imagewoof":
            raise DatasetError(
                f"imagewoof: data.download=true is not available: torchvision has no Imagewoof downloader. "
                f"Download fast.ai's '{folder}' archive (the Imagewoof release of the Imagenette project) and "
                f"unpack it under data.root so that {root / folder}/train/<wnid>/*.JPEG and .../val/ exist."
            )
        _download_imagenette(root, variant)
        d = _find_root(root, folder)
    if d is None:
        raise DatasetError(
            f"{name}: no '{folder}' folder with train/ and val/ under {root} (data.root). Expected "
            f"{root / folder}/train/<wnid>/*.JPEG and {root / folder}/val/<wnid>/*.JPEG (e.g. "
            f"{next(iter(_NAMES[name]))})"
            + (
                ", or set data.download=true to fetch it through torchvision."
                if name == "imagenette"
                else "; torchvision cannot download Imagewoof, fetch fast.ai's archive and unpack it there."
            )
        )
    ds = load_image_folder(d, image_size, "train" if split == "train" else "val", cache_dir, on_bad_image)
    if ds.labels is None:
        raise DatasetError(
            f"{name}: {d / ('train' if split == 'train' else 'val')} holds images but no "
            "class folders (expected one folder per WordNet id)"
        )
    known = _NAMES[name]
    if set(ds.classes) <= set(known):
        # Fixed label numbers even if a split lacks a class folder, so train and val always agree.
        wnids = sorted(known)
        remap = torch.tensor([wnids.index(w) for w in ds.classes], dtype=torch.int64)
        ds.labels = remap[ds.labels]
        ds.classes = [known[w] for w in wnids]
    else:
        ds.classes = [known.get(w, w) for w in ds.classes]
    ds.name = f"{name}-{variant}-{split}"
    return ds
