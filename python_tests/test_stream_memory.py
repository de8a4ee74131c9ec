"""Host memory of the streaming path stays bounded by what is in flight, not by the dataset.

A pass over 20,000 images through ``StreamLoader`` (2 workers, prefetch 2):
the resident memory of the training process and its workers, sampled after
every batch, may not grow by more than a bound derived from the batch, far
below what holding the decoded dataset would cost.
"""

import os
from pathlib import Path

import numpy as np
import torch

from sslext.data.folder import CropSpec, StreamingImageFolder
from sslext.data.stream import StreamLoader

N, SIDE, BATCH, WORKERS, PREFETCH = 20_000, 64, 200, 2, 2


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:  # a worker that has just exited
        pass
    return 0


def _tree_rss_kib() -> int:
    """RSS of this process and its children (the DataLoader workers), KiB."""
    me = os.getpid()
    kids = []
    for task in Path(f"/proc/{me}/task").iterdir():
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return _rss_kib(me) + sum(_rss_kib(k) for k in kids)


def _write_folder(root: Path) -> None:
    from PIL import Image

    # Flat-colour PNGs (~100 bytes each on disk) that decode to 64 x 64 RGB:
    # the folder is small, its decoded pixels (245 MB) are not.
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (N, 3), dtype=np.uint8)
    for c in range(4):
        (root / f"c{c}").mkdir(parents=True)
    for i in range(N):
        Image.new("RGB", (SIDE, SIDE), tuple(int(v) for v in colours[i])).save(root / f"c{i % 4}" / f"{i:05d}.png")


def test_rss_is_bounded_by_the_batches_in_flight(tmp_path):
    _write_folder(tmp_path / "f")
    specs = [CropSpec(SIDE, 0.2, 1.0, 0.5)] * 2
    ds = StreamingImageFolder(tmp_path / "f", specs, seed=0)
    assert len(ds) == N
    loader = StreamLoader(ds, BATCH, 0, torch.device("cpu"), workers=WORKERS, prefetch=PREFETCH)
    loader.start(0, 0)
    steps = len(loader.sampler)
    warm, peak, seen = 0, 0, 0
    for s in range(steps):
        x, _ = loader.next_batch()
        seen += x.shape[0]
        if s == 4:  # workers started, allocator and queues at their working size
            warm = _tree_rss_kib()
        elif s > 4:
            peak = max(peak, _tree_rss_kib())
    assert seen == N
    batch_kib = BATCH * 2 * 3 * SIDE * SIDE // 1024  # one batch of two uint8 views: 4.8 MiB
    dataset_kib = N * 3 * SIDE * SIDE // 1024  # the decoded dataset at one view: 240 MiB
    # In flight at once: WORKERS x PREFETCH batches queued, one being built per
    # worker, and the one the loop holds; each crosses shared memory once (a
    # worker's copy and the received one), so twice that, plus 16 MiB for
    # allocator slack. A path that kept decoded images would grow by the
    # dataset (240 MiB) instead.
    bound = 2 * (WORKERS * PREFETCH + WORKERS + 1) * batch_kib + 16 * 1024
    assert bound < dataset_kib / 2
    assert peak - warm < bound, f"RSS grew by {(peak - warm) / 1024:.1f} MiB over the pass (bound {bound / 1024:.1f})"
