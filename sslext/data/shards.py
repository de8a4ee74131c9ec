"""WebDataset-style tar shards: writing them from an image folder, and reading samples by index.

Layout (what the ``webdataset`` package reads): ``shard-000000.tar``, ... each
holding, per sample, ``<key>.<ext>`` (the original image file's bytes,
unchanged) and ``<key>.cls`` (the label as decimal text; absent when the
folder is unlabelled), ``<key>`` the sample's zero-padded global index. Next
to them ``manifest.json``: the classes, and per shard its file name, sample
count, size, sha256 and each sample's (offset, size, label, extension) inside
the tar.

Reading goes through the manifest's offsets: one ``seek`` + ``read`` per
sample, so any sample is reachable directly and the streaming guarantees of
``folder.py`` (per-sample seeded crops, any number of workers and processes,
exact mid-epoch resume) hold for shards unchanged. Only the index (a few
numpy arrays) is in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .datasets import DatasetError, _list_folder
from .folder import CropSpec, StreamingDataset

__all__ = ["MANIFEST", "write_shards", "ShardDataset", "read_manifest", "verify_shards"]

MANIFEST = "manifest.json"
FORMAT = "sslext-webdataset-shards"
_BLOCK = 1 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_BLOCK), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_image(data: bytes) -> Optional[str]:
    """None when ``data`` decodes as an image, else why not."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return None
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append one member; return the offset of its data in the file."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: the same folder gives the same bytes
    start = tar.offset
    tar.addfile(info, io.BytesIO(data))
    return start + len(info.tobuf(tar.format, tar.encoding, tar.errors))


def write_shards(
    folder: Union[str, os.PathLike],
    out: Union[str, os.PathLike],
    shard_size: int = 1000,
    classes: Optional[List[str]] = None,
    skip_bad: bool = False,
) -> Dict[str, Any]:
    """Write ``folder`` (``<class>/*.jpg`` or loose images) as shards of ``shard_size`` samples under ``out``.

    Every image is decoded once to check it: an undecodable file stops the
    writing with its path, or with ``skip_bad`` is left out and listed in the
    manifest's ``skipped``. Shards are written to temporary names and renamed;
    the manifest is written last (atomically), so a folder with a manifest is
    complete. Refuses an ``out`` that already holds a manifest. Returns the manifest.
    """
    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
        raise ValueError(f"--shard-size: expected a positive integer, got {shard_size!r}")
    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"FOLDER: {folder} is not a directory")
    if (out / MANIFEST).exists():
        raise FileExistsError(f"OUT: {out / MANIFEST} exists; write the shards to a new folder")
    files, labels, names = _list_folder(folder, classes)
    if not files:
        raise DatasetError(f"FOLDER: no images under {folder}")
    out.mkdir(parents=True, exist_ok=True)
    shards: List[Dict[str, Any]] = []
    skipped: List[str] = []
    members: List[list] = []
    tmp: Optional[Path] = None
    tar: Optional[tarfile.TarFile] = None
    index = 0

    def close_shard() -> None:
        nonlocal tar, tmp, members
        if tar is None:
            return
        tar.close()
        final = out / f"shard-{len(shards):06d}.tar"
        os.replace(tmp, final)
        shards.append(
            {
                "name": final.name,
                "count": len(members),
                "bytes": final.stat().st_size,
                "sha256": _sha256(final),
                "samples": members,
            }
        )
        tar, tmp, members = None, None, []

    try:
        for k, path in enumerate(files):
            data = path.read_bytes()
            why = _check_image(data)
            if why is not None:
                if not skip_bad:
                    raise DatasetError(f"{path}: cannot decode image ({why}); pass --skip-bad to leave it out")
                skipped.append(str(path.relative_to(folder)))
                continue
            if tar is None:
                fd, name = tempfile.mkstemp(dir=out, prefix=".shard-", suffix=".tar.tmp")
                os.close(fd)
                tmp = Path(name)
                tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
            key = f"{index:09d}"
            ext = path.suffix.lower().lstrip(".")
            label = -1 if labels is None else labels[k]
            offset = _add(tar, f"{key}.{ext}", data)
            if labels is not None:
                _add(tar, f"{key}.cls", str(label).encode())
            members.append([offset, len(data), label, ext])
            index += 1
            if len(members) == shard_size:
                close_shard()
        close_shard()
    except BaseException:
        if tar is not None:
            tar.close()
        if tmp is not None and tmp.exists():
            tmp.unlink()
        raise
    if not shards:
        raise DatasetError(f"FOLDER: none of the {len(files)} images under {folder} could be decoded")
    manifest = {
        "format": FORMAT,
        "version": 1,
        "count": index,
        "labelled": labels is not None,
        "classes": list(names),
        "skipped": skipped,
        "shards": shards,
    }
    fd, name = tempfile.mkstemp(dir=out, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(name, out / MANIFEST)
    return manifest


def read_manifest(folder: Union[str, os.PathLike]) -> Dict[str, Any]:
    path = Path(folder).expanduser() / MANIFEST
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"shards: no {MANIFEST} in {path.parent} (write the shards with sslext-shard)") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot be read as a shard manifest ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("shards"), list):
        raise DatasetError(f"{path}: not a manifest written by sslext-shard (format {FORMAT!r})")
    return m


def verify_shards(folder: Union[str, os.PathLike], manifest: Optional[Dict[str, Any]] = None) -> None:
    """Check every shard's size and sha256 against the manifest; raise naming the first that differs."""
    folder = Path(folder).expanduser()
    m = manifest or read_manifest(folder)
    for s in m["shards"]:
        p = folder / s["name"]
        if not p.is_file():
            raise DatasetError(f"shards: {p} is missing (listed in {folder / MANIFEST})")
        if p.stat().st_size != s["bytes"]:
            raise DatasetError(f"shards: {p} is {p.stat().st_size} bytes, the manifest says {s['bytes']}: truncated?")
        if _sha256(p) != s["sha256"]:
            raise DatasetError(f"shards: {p} does not match its sha256 in the manifest: corrupt, re-copy it")


class ShardDataset(StreamingDataset):
    """The samples of a shard folder, read by index through the manifest's offsets."""

    def __init__(
        self,
        folder: Union[str, os.PathLike],
        specs: Sequence[CropSpec],
        seed: int = 0,
        on_bad_image: str = "error",
        verify: bool = True,
    ) -> None:
        super().__init__(specs, seed, on_bad_image)
        self.folder = Path(folder).expanduser()
        m = read_manifest(self.folder)
        if verify:
            verify_shards(self.folder, m)
        self.shard_names = [s["name"] for s in m["shards"]]
        rows = [(k, *r[:3]) for k, s in enumerate(m["shards"]) for r in s["samples"]]
        if not rows:
            raise DatasetError(f"shards: {self.folder / MANIFEST} lists no samples")
        arr = np.array(rows, dtype=np.int64)
        self._shard, self._offset, self._size = arr[:, 0].astype(np.int32), arr[:, 1], arr[:, 2]
        self.labels = torch.from_numpy(arr[:, 3].copy()) if m.get("labelled") else None
        self.classes, self.name = list(m.get("classes", [])), f"shards:{self.folder.name}"
        self._files: Dict[int, Any] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self._offset)

    def _source(self, i: int) -> io.BytesIO:
        # One open file per shard and process: handles opened before a
        # DataLoader forked its workers would share (and race on) one offset.
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        k = int(self._shard[i])
        f = self._files.get(k)
        if f is None:
            f = self._files[k] = open(self.folder / self.shard_names[k], "rb")
        f.seek(int(self._offset[i]))
        return io.BytesIO(f.read(int(self._size[i])))

    def describe(self, i: int) -> str:
        return f"{self.folder / self.shard_names[int(self._shard[i])]}#{i:09d}"

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, -1  # open files do not travel to spawned workers
        return state
