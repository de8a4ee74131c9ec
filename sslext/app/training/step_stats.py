"""The epoch's running sums (loss, loss terms, online-probe hits) kept on the training device.

Reading a CUDA value on the host waits for every kernel queued before it; a
``float(loss)`` per step would drain the GPU's queue at every step. The sums
stay device tensors and are read when a record is written (every
``train.log_every`` steps, the epoch's end, a checkpoint). They are float64:
adding float32 values in float64 gives, bit for bit, what adding their
``float()`` in Python did, so the logged means are those of before.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

__all__ = ["EpochStats"]


class EpochStats:
    """Running sums of one epoch; ``to_dict()``/``load_dict()`` are the checkpoint's ``epoch_acc``.

    ``n`` (good steps), ``skipped`` (non-finite steps skipped) and ``seconds``
    are known on the host and stay Python numbers.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.n, self.skipped, self.seconds = 0, 0, 0.0
        self._keys: List[str] = []
        self._sums = torch.zeros(1, dtype=torch.float64, device=self.device)  # loss, then one per term
        self._correct = torch.zeros((), dtype=torch.float64, device=self.device)
        # Sums of terms that a method stopped reporting (read once, when it happened).
        self._host_terms: Dict[str, float] = {}

    def add_step(self, loss: torch.Tensor, terms: Dict[str, Any]) -> None:
        """Add one good step's loss and terms (device tensors; nothing is read on the host)."""
        keys = list(terms)
        if keys != self._keys:
            if self._keys:
                self._fold_terms()
            self._keys = keys
            self._sums = torch.cat([self._sums[:1], self._sums.new_zeros(len(keys))])
        vals = [loss.detach()] + [
            v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for v in terms.values()
        ]
        vals = [v.to(self.device, torch.float64, non_blocking=True).reshape(()) for v in vals]
        self._sums += torch.stack(vals)
        self.n += 1

    def add_probe_correct(self, correct: torch.Tensor) -> None:
        """Add this step's count of correct online-probe predictions (a device tensor)."""
        self._correct += correct.detach().to(torch.float64)

    def _fold_terms(self) -> None:
        for k, v in zip(self._keys, self._sums[1:].tolist()):
            self._host_terms[k] = self._host_terms.get(k, 0.0) + v

    def to_dict(self) -> Dict[str, Any]:
        """The sums as Python numbers (one read of the device), in the checkpoint's ``epoch_acc`` layout."""
        vals = torch.cat([self._correct.reshape(1), self._sums]).tolist()
        terms = dict(self._host_terms)
        for k, v in zip(self._keys, vals[2:]):
            terms[k] = terms.get(k, 0.0) + v
        return {
            "loss": vals[1],
            "n": self.n,
            "probe_correct": int(vals[0]),
            "terms": terms,
            "seconds": self.seconds,
            "skipped": self.skipped,
        }

    def load_dict(self, acc: Optional[Dict[str, Any]]) -> None:
        """Continue from a checkpoint's ``epoch_acc`` (older checkpoints may lack ``skipped``)."""
        self.reset()
        acc = acc or {}
        self.n, self.skipped = int(acc.get("n", 0)), int(acc.get("skipped", 0))
        self.seconds = float(acc.get("seconds", 0.0))
        terms = acc.get("terms", {})
        self._keys = list(terms)
        self._sums = torch.tensor(
            [float(acc.get("loss", 0.0)), *map(float, terms.values())], dtype=torch.float64, device=self.device
        )
        self._correct = torch.tensor(float(acc.get("probe_correct", 0)), dtype=torch.float64, device=self.device)
