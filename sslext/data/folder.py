"""Image folders read lazily: decoded and randomly cropped by ``DataLoader`` workers, never held whole.

For datasets larger than memory (ImageNet-100, ImageNet-1k). Each sample is
decoded from its file when a batch asks for it; the geometric part of the
augmentation (torchvision's random resized crop to the training size, and the
horizontal flip) runs there, on the full-resolution image, once per view, and
the worker returns uint8 views. The photometric rest (colour jitter,
grayscale, blur, solarisation) runs batched on the training device
(``TwoViewAugment.after_crop``).

The crop of a sample is drawn from a generator seeded by (seed, epoch, index,
view) alone, so the pixels of a batch do not depend on the number of workers,
on which worker decodes a sample, or on the number of processes.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .datasets import IMG_EXTENSIONS, ON_BAD_IMAGE, DatasetError, ImageDataset, _decode, _list_folder

__all__ = ["CropSpec", "StreamingDataset", "StreamingImageFolder", "random_resized_crop_box", "collate_views"]

_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


class CropSpec(tuple):
    """(crop_size, min_scale, max_scale, flip_prob) of one view: what a worker needs of ``ViewAugment``."""

    def __new__(cls, size: int, min_scale: float, max_scale: float, flip_prob: float) -> "CropSpec":
        return super().__new__(cls, (int(size), float(min_scale), float(max_scale), float(flip_prob)))

    @classmethod
    def of(cls, view: Any) -> "CropSpec":
        get = view.get if isinstance(view, dict) else lambda k: getattr(view, k)
        return cls(get("crop_size"), get("crop_min_scale"), get("crop_max_scale"), get("flip_prob"))


def random_resized_crop_box(
    width: int, height: int, min_scale: float, max_scale: float, rng: np.random.Generator
) -> Tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` (10 tries, then the central crop), as a PIL box."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(min_scale, max_scale)
        aspect = math.exp(rng.uniform(*_LOG_RATIO))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < 3 / 4:
        w, h = width, int(round(width / (3 / 4)))
    elif ratio > 4 / 3:
        w, h = int(round(height * (4 / 3))), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _crop_views(src: Union[str, os.PathLike, BinaryIO], specs: Sequence[CropSpec], seed: int, epoch: int, index: int):
    """Decode ``src`` and return its views as one uint8 array (V, 3, S, S); raises on an undecodable file."""
    from PIL import Image

    rng = np.random.default_rng([seed, epoch, index])
    with Image.open(src) as im:
        im = im.convert("RGB")
        out = []
        for size, lo, hi, flip_p in specs:
            box = random_resized_crop_box(im.width, im.height, lo, hi, rng)
            # One resample from the crop box: PIL's bilinear filter widens with
            # the reduction, so large crops are antialiased as torchvision's are.
            v = im.resize((size, size), Image.BILINEAR, box=box)
            if rng.uniform() < flip_p:
                v = v.transpose(Image.FLIP_LEFT_RIGHT)
            out.append(np.asarray(v, dtype=np.uint8).transpose(2, 0, 1))
    return np.stack(out)


class StreamingDataset(torch.utils.data.Dataset):
    """A map-style dataset of ``(epoch, index)`` keys: ``(views uint8 (V, 3, S, S), label, bad files)``.

    Subclasses say where sample ``i`` is (``_source``) and what it is called
    (``describe``). ``on_bad_image="skip"`` replaces an undecodable sample by
    the next decodable one in file order (so every batch stays full and the
    replacement is the same whichever worker meets it) and reports the bad
    file with the batch; ``"error"`` raises, naming the file.
    """

    labels: Optional[torch.Tensor]
    classes: List[str]
    name: str

    def __init__(self, specs: Sequence[CropSpec], seed: int, on_bad_image: str) -> None:
        if on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"data.on_bad_image: expected one of {list(ON_BAD_IMAGE)}, got {on_bad_image!r}")
        if not specs:
            raise ValueError("specs: expected one crop spec per view, got none")
        self.specs = [CropSpec(*s) for s in specs]
        self.seed, self.on_bad_image = int(seed), on_bad_image
        # Files met undecodable so far (reported by the batches through StreamLoader).
        self.skipped: List[str] = []

    def __len__(self) -> int:
        raise NotImplementedError

    def _source(self, i: int) -> Union[str, os.PathLike, BinaryIO]:
        raise NotImplementedError

    def describe(self, i: int) -> str:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        if self.labels is None:
            return 0
        return max(len(self.classes), int(self.labels.max()) + 1 if len(self.labels) else 0)

    @property
    def image_size(self) -> int:
        return self.specs[0][0]

    def _label(self, i: int) -> int:
        return -1 if self.labels is None else int(self.labels[i])

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        bad: List[str] = []
        n = len(self)
        for k in range(n):
            i = (index + k) % n
            try:
                # The crop keeps the requested index's seed: a replacement is cropped as its slot would be.
                return _crop_views(self._source(i), self.specs, self.seed, epoch, index), self._label(i), bad
            except Exception as e:
                what = f"{self.describe(i)}: cannot decode image ({type(e).__name__}: {e})"
                if self.on_bad_image == "error":
                    raise DatasetError(f"{what}; set data.on_bad_image=skip to leave such files out") from e
                bad.append(self.describe(i))
        raise DatasetError(f"{self.name}: none of the {n} images could be decoded")

    def decode_subset(self, indices: Sequence[int], image_size: int) -> ImageDataset:
        """The images ``indices`` decoded in memory as the in-memory path stores them (short side resized,
        center-cropped): the labelled bank evaluation reads. Undecodable ones are left out."""
        arrs, labels = [], []
        for i in map(int, indices):
            try:
                arrs.append(_decode(self._source(i), image_size))
            except DatasetError as e:
                if self.on_bad_image == "error":
                    why = e.__cause__ or e
                    raise DatasetError(
                        f"{self.describe(i)}: cannot decode image ({type(why).__name__}: {why}); "
                        "set data.on_bad_image=skip to leave such files out"
                    ) from why
                warn_skipped([self.describe(i)])
                continue
            labels.append(self._label(i))
        if not arrs:
            raise DatasetError(f"{self.name}: none of the {len(indices)} images picked for evaluation decode")
        lab = None if self.labels is None else torch.tensor(labels, dtype=torch.int64)
        return ImageDataset(torch.from_numpy(np.stack(arrs)), lab, list(self.classes), f"{self.name}-bank")


class StreamingImageFolder(StreamingDataset):
    """``root/<class>/*.jpg`` (or ``root/*.jpg``) read one file at a time; only the file list is in memory."""

    def __init__(
        self,
        root: Union[str, os.PathLike],
        specs: Sequence[CropSpec],
        seed: int = 0,
        on_bad_image: str = "error",
        classes: Optional[List[str]] = None,
    ) -> None:
        super().__init__(specs, seed, on_bad_image)
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"image folder: {self.root} is not a directory (expected root/<class>/*.jpg)")
        files, labels, names = _list_folder(self.root, classes)
        if not files:
            raise DatasetError(f"image folder: no images ({', '.join(IMG_EXTENSIONS)}) under {self.root}")
        # Relative paths as one numpy array of strings: a list of Path objects
        # would be copied page by page into every forked worker (refcounts).
        self.files = np.array([str(p.relative_to(self.root)) for p in files])
        self.labels = None if labels is None else torch.tensor(labels, dtype=torch.int64)
        self.classes, self.name = list(names), f"folder:{self.root.name}"

    def __len__(self) -> int:
        return len(self.files)

    def _source(self, i: int) -> Path:
        return self.root / str(self.files[i])

    def describe(self, i: int) -> str:
        return str(self.root / str(self.files[i]))


def collate_views(items) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """A batch: uint8 ``(B, V, 3, S, S)``, int64 labels (-1 unlabelled), and the bad files met."""
    views = torch.from_numpy(np.stack([it[0] for it in items]))
    labels = torch.tensor([it[1] for it in items], dtype=torch.int64)
    return views, labels, [b for it in items for b in it[2]]


def warn_skipped(paths: Sequence[str]) -> None:
    for p in paths:
        warnings.warn(f"{p}: skipped (cannot be decoded; data.on_bad_image=skip)", stacklevel=2)
