"""Test hook that interrupts a training process at a chosen point (kill, SIGTERM, SIGINT)."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Optional

import torch

__all__ = ["FaultInjector"]


class FaultInjector:
    """Test hook: ``SSLEXT_TEST_FAULT=<action>:<point>:<n>`` makes the process
    kill or signal itself at a chosen point, so tests can interrupt a run
    deterministically. ``action``: ``kill`` (SIGKILL), ``term`` (SIGTERM),
    ``int`` (SIGINT); ``point``: ``step`` (after the optimizer step of global
    step n, before its log record), ``save`` (the checkpoint write at global
    step n: the temp file is written and truncated to half, then SIGKILL before
    ``os.replace``), ``epoch`` (after epoch n's record is logged, before its
    checkpoint). Unset (always, outside tests), every check is a no-op.
    """

    def __init__(self, spec: Optional[str]) -> None:
        self.action = self.point = None
        self.n = -1
        if spec:
            try:
                self.action, self.point, n = spec.split(":")
                self.n = int(n)
            except ValueError:
                raise ValueError(
                    f"SSLEXT_TEST_FAULT: expected <kill|term|int>:<step|save|epoch>:<n>, got {spec!r}"
                ) from None
            if self.action not in ("kill", "term", "int") or self.point not in ("step", "save", "epoch"):
                raise ValueError(f"SSLEXT_TEST_FAULT: expected <kill|term|int>:<step|save|epoch>:<n>, got {spec!r}")

    def at(self, point: str, n: int) -> None:
        if self.point == point and self.n == n:
            sig = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}[self.action]
            os.kill(os.getpid(), sig)

    def saving(self, n: int):
        """A context that, at the chosen save, tears the temp file and dies before os.replace."""
        if not (self.point == "save" and self.n == n):
            return contextlib.nullcontext()
        real_save = torch.save

        def torn_save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            f.flush()
            os.ftruncate(f.fileno(), max(f.tell() // 2, 1))
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        @contextlib.contextmanager
        def patched():
            torch.save = torn_save
            try:
                yield
            finally:
                torch.save = real_save

        return patched()
