"""``sslext-shard FOLDER OUT [--shard-size N]``: an image folder as WebDataset-style tar shards + manifest.

A folder with ``train`` and ``val``/``test`` sub-folders becomes ``OUT/train``
and ``OUT/val`` (``OUT/test``), the layout ``data.source: shards`` reads; any
other folder becomes shards directly under ``OUT``. ``--verify OUT`` checks
shards already written against their manifest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ..data.datasets import DatasetError
from ..data.shards import MANIFEST, read_manifest, verify_shards, write_shards

__all__ = ["main"]


def _classes(path: Optional[str]) -> Optional[List[str]]:
    if path is None:
        return None
    try:
        names = [line.split("#")[0].strip() for line in Path(path).read_text().splitlines()]
    except OSError as e:
        raise DatasetError(f"--classes: cannot read {path} ({e})") from e
    names = [n for n in names if n]
    if not names:
        raise DatasetError(f"--classes: {path} lists no class folder names")
    return names


def _splits(folder: Path, out: Path):
    subs = [s for s in ("train", "val", "test") if (folder / s).is_dir()]
    if "train" in subs:
        return [(folder / s, out / s) for s in subs]
    return [(folder, out)]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="sslext-shard", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", metavar="FOLDER", nargs="?", help="image folder (<class>/*.jpg, or train/ and val/)")
    p.add_argument("out", metavar="OUT", nargs="?", help="new folder for the shards and manifest.json")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--classes", help="a text file of class folder names, one a line: shard only those")
    p.add_argument("--skip-bad", action="store_true", help="leave undecodable images out (listed in the manifest)")
    p.add_argument("--verify", metavar="SHARDS", help="check the shards under SHARDS against their manifest, and exit")
    a = p.parse_args(argv)
    try:
        if a.verify:
            folders = [d for d in [Path(a.verify), *sorted(Path(a.verify).iterdir())] if (d / MANIFEST).is_file()]
            if not folders:
                raise DatasetError(f"--verify: no {MANIFEST} in {a.verify} or its sub-folders")
            for d in folders:
                m = read_manifest(d)
                verify_shards(d, m)
                print(f"{d}: {len(m['shards'])} shards, {m['count']} samples: sizes and sha256 match")
            return 0
        if not a.folder or not a.out:
            p.error("FOLDER and OUT are required (or --verify SHARDS)")
        classes = _classes(a.classes)
        for src, dst in _splits(Path(a.folder), Path(a.out)):
            m = write_shards(src, dst, a.shard_size, classes, a.skip_bad)
            skipped = f", {len(m['skipped'])} undecodable left out" if m["skipped"] else ""
            print(f"{dst}: {m['count']} samples in {len(m['shards'])} shards, {len(m['classes'])} classes{skipped}")
    except (DatasetError, FileExistsError, ValueError) as e:
        print(f"sslext-shard: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
