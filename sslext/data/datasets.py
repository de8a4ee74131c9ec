"""In-memory image datasets stored as uint8 tensors ``(N, 3, H, W)``.

Everything is decoded once into a single contiguous uint8 tensor so that the
training loop can index batches directly and move them to the device in one
copy; augmentation then happens batched on the device (see ``augment.py``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .safe_pickle import UnsafePickleError, load_restricted

__all__ = [
    "ImageDataset",
    "DatasetError",
    "load_cifar",
    "load_fashion_mnist",
    "load_image_folder",
    "FASHION_MNIST_DIRS",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")

# Debian's dataset-fashion-mnist installs here (checked with `dpkg -L`).
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or not in the expected layout."""


@dataclass
class ImageDataset:
    """Images as a uint8 tensor ``(N, 3, H, W)`` plus optional int64 labels.

    ``labels`` is ``None`` for unlabeled data (e.g. an image folder without
    class sub-folders), which is fine for pretraining but not for evaluation.
    """

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    classes: List[str] = field(default_factory=list)
    name: str = "dataset"
    # Files left out by ``on_bad_image="skip"`` (paths relative to the folder), so a run can report them.
    skipped: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (
            not isinstance(self.images, torch.Tensor)
            or self.images.dtype != torch.uint8
            or self.images.ndim != 4
            or self.images.shape[1] != 3
        ):
            raise ValueError(
                f"images: expected a uint8 tensor of shape (N, 3, H, W), got "
                f"{getattr(self.images, 'dtype', type(self.images))} {tuple(getattr(self.images, 'shape', ()))}"
            )
        if self.labels is not None:
            if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
                raise ValueError(f"labels: expected shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
            self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        if self.labels is None:
            return 0
        return max(len(self.classes), int(self.labels.max()) + 1 if len(self.labels) else 0)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, indices: torch.Tensor) -> "ImageDataset":
        """A new dataset holding only ``indices`` (copies the pixels)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(
            self.images[indices].contiguous(),
            None if self.labels is None else self.labels[indices].clone(),
            list(self.classes),
            self.name,
            list(self.skipped),
        )


# --------------------------------------------------------------------------- CIFAR
_CIFAR = {
    "cifar10": dict(
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        label_key="labels",
        meta="batches.meta",
        names_key="label_names",
        tv="CIFAR10",
    ),
    "cifar100": dict(
        folder="cifar-100-python",
        train=["train"],
        test=["test"],
        label_key="fine_labels",
        meta="meta",
        names_key="fine_label_names",
        tv="CIFAR100",
    ),
}


def _unpickle(path: Path) -> dict:
    try:
        obj = load_restricted(path)
    except FileNotFoundError:
        raise
    except UnsafePickleError as e:
        raise DatasetError(str(e)) from e
    except Exception as e:  # truncated/garbled pickles raise many different types
        raise DatasetError(
            f"{path}: cannot be read as a CIFAR pickle ({type(e).__name__}: {e}); "
            "the file is corrupt, re-create or re-download it"
        ) from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _find_cifar_dir(root: Path, folder: str) -> Optional[Path]:
    for cand in (root / folder, root):
        if cand.is_dir() and (cand / ("test_batch" if folder.startswith("cifar-10-") else "test")).exists():
            return cand
    return None


def _download_cifar(root: Path, name: str) -> None:
    """Fetch and unpack the official archive through torchvision (md5-checked)."""
    try:
        # Only a download needs torchvision.datasets (slow to import); a missing one is a clear error.
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive
    except ImportError as e:
        raise DatasetError(f"data.download: torchvision is needed to download {name} ({e})") from e
    cls = getattr(tvd, _CIFAR[name]["tv"])
    # Not cls(root, download=True): its constructor then reads the batches with an
    # unrestricted pickle.load; we only want the archive, read below by load_restricted.
    try:
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    except Exception as e:  # URLError, socket errors, HTTP errors, a failed md5 check
        raise DatasetError(
            f"{name}: data.download=true could not fetch the dataset into {root} "
            f"({type(e).__name__}: {e}). On a machine without internet, download it elsewhere (the same "
            f"command with data.download=true, or torchvision.datasets.{_CIFAR[name]['tv']}(root, download=True)) "
            f"and copy the '{_CIFAR[name]['folder']}' folder under data.root."
        ) from e


def load_cifar(
    root: str | os.PathLike, name: str = "cifar10", split: str = "train", download: bool = False
) -> ImageDataset:
    """Load CIFAR-10/100 from the official *python* layout.

    ``root`` may be the directory containing ``cifar-10-batches-py`` (what
    torchvision downloads) or that folder itself. The batches are read with a
    restricted unpickler (``safe_pickle.load_restricted``) that cannot run code.
    File checksums are NOT verified, deliberately: re-encoded copies of the
    dataset differ from the official md5 sums but are valid. With
    ``download=True`` a missing dataset is fetched through torchvision (whose
    download does check the archive's md5).
    """
    if name not in _CIFAR:
        raise ValueError(f"name: expected one of {sorted(_CIFAR)}, got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    spec = _CIFAR[name]
    root = Path(root).expanduser()
    d = _find_cifar_dir(root, spec["folder"])
    if d is None and download:
        _download_cifar(root, name)
        d = _find_cifar_dir(root, spec["folder"])
    if d is None:
        files = ", ".join(spec["train"] + spec["test"] + [spec["meta"]])
        raise DatasetError(
            f"{name}: no '{spec['folder']}' folder with the python-format batches under {root} (data.root). "
            f"Set data.download=true (or pass --download) to fetch it through torchvision, or point data.root "
            f"at the folder that contains '{spec['folder']}/' with the files {files}."
        )
    xs, ys = [], []
    for fname in spec[split]:
        path = d / fname
        if not path.exists():
            raise DatasetError(f"{name}: missing file {path} (expected files: {spec[split]})")
        entry = _unpickle(path)
        if "data" not in entry or spec["label_key"] not in entry:
            raise DatasetError(f"{path}: expected keys 'data' and '{spec['label_key']}', found {sorted(entry)}")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[spec["label_key"]], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{path}: expected 'data' of shape (n, 3072) and n labels, got {data.shape} and {labels.shape}"
            )
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    classes: List[str] = []
    meta = d / spec["meta"]
    if meta.exists():
        try:
            classes = list(_unpickle(meta).get(spec["names_key"], []))
        except DatasetError as e:
            if isinstance(e.__cause__, UnsafePickleError):
                raise  # a crafted file is worth stopping for, even where a corrupt one is not
            classes = []  # class names are cosmetic; pixels/labels are what matter
    images = torch.from_numpy(np.ascontiguousarray(np.concatenate(xs)))
    labels = torch.from_numpy(np.concatenate(ys))
    return ImageDataset(images, labels, classes, f"{name}-{split}")


# --------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot be read ({e}); the file is corrupt") from e
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    n = int(np.prod(dims))
    if len(raw) - offset != n:
        raise DatasetError(f"{path}: header says {dims} ({n} bytes) but the file holds {len(raw) - offset}; truncated?")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(d: Path, stem: str) -> Optional[Path]:
    for sub in ("", "FashionMNIST/raw", "raw"):
        for ext in (".gz", ""):
            p = d / sub / f"{stem}{ext}"
            if p.exists():
                return p
    return None


def load_fashion_mnist(root: Optional[str | os.PathLike] = None, split: str = "train") -> ImageDataset:
    """Load Fashion-MNIST from gzipped (or raw) IDX files, grey replicated to RGB.

    ``root`` may be Debian's ``/usr/share/datasets/fashion-mnist`` (package
    ``dataset-fashion-mnist``), torchvision's root (``FashionMNIST/raw``) or
    any folder holding the four IDX files. ``None`` searches the Debian path.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    stem = "train" if split == "train" else "t10k"
    cands = [Path(root).expanduser()] if root else [Path(p) for p in FASHION_MNIST_DIRS]
    for d in cands:
        ip, lp = _find_idx(d, f"{stem}-images-idx3-ubyte"), _find_idx(d, f"{stem}-labels-idx1-ubyte")
        if ip and lp:
            x, y = _read_idx(ip), _read_idx(lp)
            if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise DatasetError(f"{ip}: expected (n, 28, 28) images matching {lp} labels, got {x.shape} / {y.shape}")
            img = torch.from_numpy(x.copy()).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
            return ImageDataset(
                img, torch.from_numpy(y.astype(np.int64)), list(FASHION_MNIST_CLASSES), f"fashion_mnist-{split}"
            )
    raise DatasetError(
        f"Fashion-MNIST: '{stem}-images-idx3-ubyte[.gz]' / '{stem}-labels-idx1-ubyte[.gz]' not found in "
        f"{[str(c) for c in cands]}. Install the Debian package with "
        "`apt-get update && apt-get install -y dataset-fashion-mnist` or set data.root to a folder with the IDX files."
    )


# --------------------------------------------------------------------------- image folders
def _list_folder(root: Path, classes: Optional[List[str]] = None):
    """(files, labels or None, class names) of a folder; ``classes`` keeps only those class folders.

    Labels follow the sorted class names (the selection's, when one is
    given), so every split of a dataset numbers its classes alike.
    """
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is not None:
        have = {p.name for p in subdirs}
        missing = sorted(set(classes) - have)
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise DatasetError(f"data.classes: no class folder {missing[:5]}{more} under {root}")
        subdirs = [p for p in subdirs if p.name in set(classes)]
    files: List[Path] = []
    labels: List[int] = []
    classes: List[str] = []
    if subdirs:
        for ci, sd in enumerate(subdirs):
            classes.append(sd.name)
            for p in sorted(sd.rglob("*")):
                if p.suffix.lower() in IMG_EXTENSIONS and p.is_file():
                    files.append(p)
                    labels.append(ci)
    loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if loose and subdirs:
        raise DatasetError(
            f"{root}: mixes images and class sub-folders; put every image in a class folder "
            "(labeled) or all images directly in the root (unlabeled)"
        )
    if loose:
        return loose, None, []
    return files, labels, classes


def _decode(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            # Resize the short side then center-crop: keeps aspect, square tensor.
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            im = im.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except Exception as e:
        raise DatasetError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file in the same directory then ``os.replace``.

    A crash mid-write therefore never leaves a truncated file at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


ON_BAD_IMAGE = ("error", "skip")


def load_image_folder(
    root: str | os.PathLike,
    image_size: int = 64,
    split: Optional[str] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    on_bad_image: str = "error",
    classes: Optional[List[str]] = None,
) -> ImageDataset:
    """Load ``root/<class>/*.jpg|png`` (or ``root/*.jpg`` unlabeled) into memory.

    Images are decoded, converted to RGB (grayscale, palette, RGBA and CMYK
    included), resized (short side) and center-cropped to ``image_size`` once;
    the result is cached on disk (``cache_dir``, default ``root/.sslext_cache``)
    keyed by the file list, sizes, mtimes, size and policy, and written
    atomically so an interrupted run never leaves a corrupt cache. ``split``
    selects ``root/<split>`` (Imagenette uses ``train``/``val``).

    ``on_bad_image``: ``"error"`` stops at the first file that cannot be
    decoded, naming it; ``"skip"`` leaves such files out, warns once per file
    and lists them in the returned dataset's ``skipped``. ``classes`` keeps
    only those class folders (``data.classes``: ImageNet-100 from ImageNet).
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size: expected an int >= 8, got {image_size!r}")
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"data.on_bad_image: expected one of {list(ON_BAD_IMAGE)}, got {on_bad_image!r}")
    root = Path(root).expanduser()
    if split:
        root = root / split
    if not root.is_dir():
        raise DatasetError(f"image folder: {root} is not a directory (expected root/<class>/*.jpg or root/*.jpg)")
    files, labels, classes = _list_folder(root, classes)
    if not files:
        raise DatasetError(f"image folder: no images ({', '.join(IMG_EXTENSIONS)}) under {root}")
    skip = on_bad_image == "skip"
    h = hashlib.sha1(f"v1|{image_size}{'|skip' if skip else ''}".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache_dir = Path(cache_dir) if cache_dir else root / ".sslext_cache"
    cache = cache_dir / f"{root.name}-{image_size}-{h.hexdigest()[:16]}.pt"
    if cache.exists():
        try:
            obj = torch.load(cache, weights_only=True)
            skipped = [str(x) for x in obj.get("skipped", [])]
            for rel in skipped:
                warnings.warn(f"{root / rel}: skipped (cannot be decoded; data.on_bad_image=skip)", stacklevel=2)
            return ImageDataset(obj["images"], obj["labels"], list(classes), f"folder:{root.name}", skipped)
        except Exception:
            pass  # unreadable cache: rebuild it below rather than fail
    try:
        it = tqdm(files, desc=f"decoding {root.name}", leave=False, disable=len(files) < 500)
    except ImportError:
        it = files
    arrs, kept, skipped = [], [], []
    for i, p in enumerate(it):
        try:
            arrs.append(_decode(p, image_size))
            kept.append(i)
        except DatasetError as e:
            if not skip:
                raise DatasetError(f"{e}; set data.on_bad_image=skip to leave such files out") from e.__cause__
            skipped.append(str(p.relative_to(root)))
            warnings.warn(f"{e}: skipped (data.on_bad_image=skip)", stacklevel=2)
    if not arrs:
        raise DatasetError(f"image folder: none of the {len(files)} images under {root} could be decoded")
    images = torch.from_numpy(np.stack(arrs))
    lab = None if labels is None else torch.tensor([labels[i] for i in kept], dtype=torch.int64)
    try:
        atomic_save({"images": images, "labels": lab, "skipped": skipped}, cache)
    except OSError:
        pass  # read-only dataset dirs are common; caching is an optimisation
    return ImageDataset(images, lab, list(classes), f"folder:{root.name}", skipped)
