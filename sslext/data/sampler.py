"""The data order of a run, as a pure function of (seed, epoch, step): global batches and each rank's share.

The in-memory trainer draws ``epoch_permutation`` and slices it; the streaming
paths hand the same slices to a ``DataLoader`` through :class:`GlobalBatchSampler`.
Because the order depends on nothing but the seed, the epoch and the step, a
run resumed at (epoch, step) sees the batches an uninterrupted run would, and
the global batch (the ranks' slices side by side) is the same for any number
of processes.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import torch

__all__ = ["epoch_permutation", "GlobalBatchSampler"]

# The trainer's historical seed formula: changing it would change every run's data order.
_EPOCH_SEED_STRIDE = 1_000_003


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the ``n`` training images in ``epoch`` (the trainer's in-memory order too)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * _EPOCH_SEED_STRIDE + epoch))


class GlobalBatchSampler:
    """This rank's slice of every global batch of an epoch, from a given step on (``batch_sampler``).

    Each item is a list of ``(epoch, index)`` keys: the epoch travels with
    the index so a worker process seeds its random crop from (seed, epoch,
    index) without any state of its own. Batches are full (drop_last), as in
    the in-memory trainer.
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if global_batch < 1 or global_batch % world_size:
            raise ValueError(
                f"global_batch: {global_batch} must be positive and divisible by world_size ({world_size})"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < {world_size}, got {rank}")
        if n < global_batch:
            raise ValueError(f"global_batch: {global_batch} is larger than the dataset ({n} images)")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = n // global_batch
        self.epoch, self.step = 0, 0

    def set_position(self, epoch: int, step: int) -> None:
        """Start the next iteration at ``step`` of ``epoch`` (what a resumed run passes)."""
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"step: expected 0 <= step <= {self.steps_per_epoch}, got {step}")
        self.epoch, self.step = int(epoch), int(step)

    def __len__(self) -> int:
        return self.steps_per_epoch - self.step

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        # The position is read now, not when the generator first runs: the
        # loader advances ``step`` as it hands out batches.
        return self._batches(self.epoch, self.step)

    def _batches(self, epoch: int, first: int) -> Iterator[List[Tuple[int, int]]]:
        perm = epoch_permutation(self.n, self.seed, epoch)
        for s in range(first, self.steps_per_epoch):
            start = s * self.global_batch + self.rank * self.local_batch
            yield [(epoch, int(i)) for i in perm[start : start + self.local_batch]]

    def state_dict(self) -> Dict[str, Any]:
        """What the position means: a resume checks these against the rebuilt sampler."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "n": self.n,
            "global_batch": self.global_batch,
            "seed": self.seed,
        }
