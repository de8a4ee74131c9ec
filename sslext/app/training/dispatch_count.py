"""Count what a piece of code dispatches: host-device synchronisations and ATen ops.

A CUDA step is fast only while the host queues work ahead of the GPU; every
point where the host must wait for a value computed on the device drains that
queue. Those points are visible on the CPU too, as the dispatched ops that
produce them, so a CPU test can count them and fail on a regression:

* ``aten._local_scalar_dense`` (``item()``, ``float(t)``, ``int(t)``,
  ``bool(t)``, ``t.tolist()``), ``aten.is_nonzero`` (``if t:``),
  ``aten.equal`` / ``aten.allclose``: a value read on the host;
* ops whose output shape depends on the data (``nonzero``, ``masked_select``,
  ``unique``...): the host needs the size before it can allocate;
* a copy from a non-CPU tensor to the CPU, and a blocking (not
  ``non_blocking``) copy from the CPU to another device.

    with DispatchCounter() as c:
        trainer.train_step(perm)
    c.syncs, c.ops, c.sync_ops
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["DispatchCounter", "SYNC_OPS"]

# Ops that make the host wait for the device whatever the tensors' device.
SYNC_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.is_nonzero",
        "aten.equal",
        "aten.allclose",
        "aten.nonzero",
        "aten.nonzero_static",
        "aten.masked_select",
        "aten.unique",
        "aten._unique",
        "aten._unique2",
        "aten.unique_dim",
        "aten.unique_consecutive",
        "aten.repeat_interleave",
        "aten.bincount",
        "aten.histc",
        "aten._assert_async",
    }
)


def _packet(func: Any) -> str:
    return str(func.overloadpacket) if hasattr(func, "overloadpacket") else str(func)


def _device_of(x: Any) -> Optional[torch.device]:
    return x.device if isinstance(x, torch.Tensor) else None


def _is_blocking_copy(name: str, args: tuple, kwargs: Dict[str, Any], out: Any) -> bool:
    """A copy that crosses the host-device boundary and makes the host wait."""
    if name == "aten._to_copy":
        src, dst = _device_of(args[0]), _device_of(out)
        non_blocking = kwargs.get("non_blocking", False)
    elif name == "aten.copy_":
        dst, src = _device_of(args[0]), _device_of(args[1])
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    else:
        return False
    if src is None or dst is None or src == dst:
        return False
    if dst.type == "cpu":
        return True  # device -> host: the host waits for the value whatever non_blocking says
    return src.type == "cpu" and not non_blocking


class DispatchCounter(TorchDispatchMode):
    """A dispatch mode that counts every ATen op and the host-device synchronisations among them.

    ``ops``: every dispatched op (the work the host queues); ``syncs``: the
    ops that make the host wait (see the module docstring); ``sync_ops``
    and ``op_names``: the same per op name, to say what a regression added.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.op_names: Counter = Counter()
        self.sync_ops: Counter = Counter()

    def reset(self) -> None:
        self.ops = self.syncs = 0
        self.op_names.clear()
        self.sync_ops.clear()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _packet(func)
        self.ops += 1
        self.op_names[name] += 1
        if name in SYNC_OPS or _is_blocking_copy(name, args, kwargs, out):
            self.syncs += 1
            self.sync_ops[name] += 1
        return out
