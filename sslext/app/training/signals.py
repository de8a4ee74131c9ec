"""SIGTERM/SIGINT as a request to stop after the current step, agreed by every rank."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist

from ...distributed import _comm_device

__all__ = ["StopSignals"]


class StopSignals:
    """Records the first SIGTERM/SIGINT; a second one stops the process at once.

    ``install`` replaces the process's handlers, ``restore`` puts them back;
    ``requested`` is what the training loop polls between steps.
    """

    def __init__(self) -> None:
        self.name: Optional[str] = None  # the signal that asked to stop, e.g. "SIGTERM"
        self._prev_handlers: Dict[int, Any] = {}

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.name is not None:
            # Asked twice: stop now, with the signal's usual effect. The
            # checkpoint on disk is the last complete one (atomic writes).
            self.restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.name = signal.Signals(signum).name

    def install(self) -> None:
        self.name = None
        # signal.signal only works in the main thread; a Trainer driven from
        # another thread keeps the process's handlers.
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._prev_handlers[sig] = signal.signal(sig, self.on_signal)

    def restore(self) -> None:
        for sig, prev in self._prev_handlers.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._prev_handlers = {}

    def requested(self, world_size: int) -> Optional[str]:
        """The signal that asked the loop to stop, if any, agreed by every rank.

        Under DDP a signal may reach the ranks at different steps (or only
        one of them); all must stop at the same step, because the checkpoint
        write is a collective. One MAX all-reduce of the signal number per call.
        """
        if world_size > 1:
            own = signal.Signals[self.name].value if self.name else 0
            flag = torch.tensor([own], dtype=torch.int64, device=_comm_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if int(flag) and self.name is None:
                self.name = signal.Signals(int(flag)).name
        return self.name
