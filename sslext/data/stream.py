"""The streaming input pipeline of a rank: sampler + ``DataLoader`` workers + the batch's way to the device.

Host memory is bounded by what is in flight: ``workers x prefetch`` local
batches of uint8 views (each ``local_batch x V x 3 x S x S`` bytes) plus the
one being staged; the dataset object itself holds only the file list (or the
shard index).
"""

from __future__ import annotations

import atexit
import signal
import weakref
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader

from .datasets import DatasetError, ImageDataset
from .folder import CropSpec, StreamingDataset, StreamingImageFolder, collate_views, warn_skipped
from .sampler import GlobalBatchSampler

__all__ = ["StreamLoader", "streaming_datasets", "evaluation_bank"]


# How long a worker keeps serving after a SIGTERM: the training process needs it until its
# step ends and the checkpoint is written (seconds), and must not wait on it for ever.
STOP_GRACE_S = 120


def _on_sigterm(signum, frame) -> None:
    earlier = signal.alarm(STOP_GRACE_S)
    if earlier:  # already counting down: keep the first deadline
        signal.alarm(earlier)


def _defer_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT to the training process and outlive SIGTERM by a grace period.

    A scheduler's SIGTERM (or a Ctrl-C) reaches the whole process group; the
    trainer finishes its step, checkpoints and exits (``sslext.app.training.signals``),
    which needs its workers alive until it lets them go: a worker killed by the
    signal would fail the step in progress. SIGTERM is not ignored outright:
    ``multiprocessing`` stops leftover workers at interpreter exit with SIGTERM and
    then waits for them, so a worker immune to it would hang the exit. It dies
    ``STOP_GRACE_S`` seconds later instead (SIGALRM's default action)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# Loaders whose workers may still run. Closed at interpreter exit, before torch's own exit
# hook (registered earlier, so run later) turns DataLoader's worker shutdown into a no-op and
# multiprocessing's terminates the workers the hard way.
_OPEN: "weakref.WeakSet[StreamLoader]" = weakref.WeakSet()


@atexit.register
def _close_open_loaders() -> None:
    for loader in list(_OPEN):
        loader.close()


class StreamLoader:
    """This rank's batches of an epoch, from a step on: ``start(epoch, step)`` then ``next_batch()``.

    ``workers=0`` decodes in the training process (no worker processes);
    ``prefetch`` is the number of batches each worker keeps ready.
    """

    def __init__(
        self,
        dataset: StreamingDataset,
        global_batch: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 4,
        prefetch: int = 2,
    ) -> None:
        if workers < 0:
            raise ValueError(f"data.workers: expected >= 0, got {workers}")
        if prefetch < 1:
            raise ValueError(f"data.prefetch: expected >= 1, got {prefetch}")
        self.dataset, self.device = dataset, device
        self.sampler = GlobalBatchSampler(len(dataset), global_batch, seed, rank, world_size)
        self.workers, self.prefetch = workers, prefetch
        self._it: Optional[Iterator] = None
        self._seen_bad: set = set()
        _OPEN.add(self)

    def start(self, epoch: int, step: int) -> None:
        """Begin (or resume) ``epoch`` at ``step``; the batches that follow are a pure function of both."""
        self.close()
        self.sampler.set_position(epoch, step)
        kw: Dict[str, Any] = {}
        if self.workers:
            kw = dict(prefetch_factor=self.prefetch, persistent_workers=False, worker_init_fn=_defer_stop_signals)
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=self.workers,
            collate_fn=collate_views,
            pin_memory=self.device.type == "cuda",
            **kw,
        )
        self._it = iter(loader)

    def next_batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(views uint8 (B, V, 3, S, S), labels)`` of the next step, on the device."""
        if self._it is None:
            raise RuntimeError("StreamLoader.next_batch: call start(epoch, step) first")
        try:
            views, labels, bad = next(self._it)
        except BaseException:  # a worker's error (a bad file) or the epoch's end: let the workers go now
            self.close()
            raise
        self.sampler.step += 1  # the position a checkpoint taken after this step records
        new = [b for b in bad if b not in self._seen_bad]
        if new:
            self._seen_bad.update(new)
            self.dataset.skipped.extend(new)
            warn_skipped(new)
        return views.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def position(self, epoch: int, step: int) -> Dict[str, Any]:
        """The checkpoint's record of where the data stands before ``step`` of ``epoch``: the position and
        what gives it meaning (the dataset's size, the global batch, the seed)."""
        return {**self.sampler.state_dict(), "epoch": int(epoch), "step": int(step)}

    def check_position(self, saved: Dict[str, Any], where: str) -> None:
        """Refuse to resume from a position of another dataset (files added or removed) or order."""
        now = self.sampler.state_dict()
        differ = [
            f"{k}: {saved.get(k)!r} saved, {now[k]!r} now"
            for k in ("n", "global_batch", "seed")
            if saved.get(k) != now[k]
        ]
        if differ:
            raise DatasetError(
                f"{where}: the saved data position does not fit this dataset ({'; '.join(differ)}); "
                "the resumed run would not see the batches of the interrupted one"
            )

    def close(self) -> None:
        """Stop the workers of the current epoch (a new ``start``, the end of the run, or an error).

        Explicitly, not by dropping the iterator: an exception's traceback can keep it
        (and its worker processes) alive until the interpreter exits."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)  # torch's multi-worker iterator
        if shutdown is not None:
            shutdown()


def streaming_datasets(
    source: str,
    root: str,
    views: Sequence[Any],
    image_size: int,
    seed: int = 0,
    on_bad_image: str = "error",
    classes: Optional[List[str]] = None,
    verify_shards: bool = True,
    cache_dir: Optional[str] = None,
    test_limit: Optional[int] = None,
) -> Tuple[StreamingDataset, Optional[ImageDataset]]:
    """(the streamed training split, the test split decoded in memory or None) of an image folder or shards.

    ``root`` holds ``train`` and ``val``/``test`` (folders, or shard folders
    with a manifest each), or is the training split itself (then there is no
    test split). The test split is decoded once at ``image_size`` (short side
    resized, center-cropped), as the in-memory path stores it: evaluation
    reads whole images, not crops.
    """
    from .datasets import load_image_folder
    from .shards import ShardDataset

    if source not in ("stream", "shards"):
        raise ValueError(f"data.source: expected 'stream' or 'shards' here, got {source!r}")
    if not root:
        raise ValueError(f"data.root: required for data.source={source!r}")
    base = Path(root).expanduser()
    specs = [CropSpec.of(v) for v in views]
    train_dir = base / "train" if (base / "train").is_dir() else base
    test_dir = next((base / s for s in ("val", "test") if (base / s).is_dir()), None)
    test: Optional[ImageDataset] = None
    if source == "stream":
        train: StreamingDataset = StreamingImageFolder(train_dir, specs, seed, on_bad_image, classes)
        if test_dir is not None:
            test = load_image_folder(base, image_size, test_dir.name, cache_dir, on_bad_image, classes)
    else:
        if classes is not None:
            raise ValueError("data.classes: select the classes when writing the shards (sslext-shard --classes)")
        train = ShardDataset(train_dir, specs, seed, on_bad_image, verify_shards)
        if test_dir is not None:
            shards = ShardDataset(test_dir, specs, seed, on_bad_image, verify_shards)
            test = shards.decode_subset(range(len(shards)), image_size)
            test.name = f"shards:{test_dir.name}"
    if test is not None and test_limit is not None and test_limit < len(test):
        g = torch.Generator().manual_seed(seed + 12345)
        test = test.subset(torch.randperm(len(test), generator=g)[:test_limit].sort().values)
    return train, test


def evaluation_bank(train: StreamingDataset, limit: Optional[int], image_size: int, seed: int) -> ImageDataset:
    """A seeded random ``limit`` training images decoded in memory: the labelled images the per-epoch kNN
    and the final probes train on when the training split is streamed (null ``limit``: every image)."""
    n = len(train)
    g = torch.Generator().manual_seed(seed + 7)
    pick = torch.randperm(n, generator=g)[: min(n, limit or n)].sort().values
    return train.decode_subset(pick.tolist(), image_size)
