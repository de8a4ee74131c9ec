"""Several processes, one download: each node's local rank 0 prepares the data first.

Without this every rank of a ``torchrun`` job found the dataset missing and
downloaded and extracted it into the same folder at once (and built the same
decoded-image cache at once). Here the other ranks wait at a collective until
local rank 0 has loaded the data (downloading, extracting and caching what is
missing), then load it themselves from what it left. A failure on local rank 0
reaches every rank as an error, never as a hang.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import torch.distributed as dist

from .datasets import DatasetError

__all__ = ["first_on_local_rank_zero"]

T = TypeVar("T")


def first_on_local_rank_zero(fn: Callable[[], T], what: str = "the datasets") -> T:
    """``fn()`` on each node's local rank 0 (``LOCAL_RANK``, else the global rank), then on the others.

    Every rank of the default process group must call it (it holds one
    collective); without a multi-process group it is just ``fn()``. If local
    rank 0 raises, it re-raises there and every other rank raises
    :class:`DatasetError` naming the failed rank, without calling ``fn``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn()
    rank = dist.get_rank()
    first = int(os.environ.get("LOCAL_RANK", rank)) == 0
    result, error = None, None
    if first:
        try:
            result = fn()
        except Exception as e:  # reported to the other ranks below, then re-raised here
            error = e
    statuses = [None] * dist.get_world_size()
    dist.all_gather_object(statuses, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, s) for r, s in enumerate(statuses) if s is not None]
    if failed:
        r, s = failed[0]
        raise DatasetError(
            f"{what}: rank {r}, which prepares them for its node, failed ({s}); rank {rank} did not try again"
        )
    return result if first else fn()  # type: ignore[return-value]
