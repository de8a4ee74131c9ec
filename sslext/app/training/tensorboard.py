"""``train.loggers: [..., tensorboard]``: the run's metrics as TensorBoard events in its run directory.

``tensorboard --logdir <train.out_dir>`` then shows every run by its name:

* ``train/<key>``: each step record (loss, every loss term, lr, online-probe loss),
  at its global step;
* ``epoch/<key>``: each epoch record (epoch means, kNN and online-probe accuracy,
  RankMe and the other collapse diagnostics, throughput), at the step the epoch
  ended;
* ``final/<key>``: the final evaluation (linear probes, kNN, diagnostics);
* images ``spectrum`` and ``final/spectrum``: the normalised singular values of
  the backbone features and projector embeddings, log scale (the picture of
  dimensional collapse), at every evaluated epoch and at the end.

Needs the tensorboard package (``pip install 'sslext[tensorboard]'``). A resumed
run hides what the interrupted one wrote after its checkpoint (``purge_step``),
so the curves have no duplicates, as ``metrics.jsonl`` has none.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

__all__ = ["TensorBoardLog", "require_tensorboard"]

# Keys of a record that are not measurements.
_NOT_SCALARS = {"kind", "step", "epoch"}


def require_tensorboard():
    """torch's ``SummaryWriter``, or an ``ImportError`` saying how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(
            "train.loggers: 'tensorboard' needs the tensorboard package: "
            "pip install 'sslext[tensorboard]' (or pip install tensorboard)"
        ) from e
    return SummaryWriter


def _scalars(rec: Dict[str, Any]):
    for k, v in rec.items():
        if k in _NOT_SCALARS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        yield k, float(v)


def _spectrum_figure(spectra: Dict[str, Sequence[float]], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for name, s in spectra.items():
        ys = [max(float(v), 1e-12) for v in s]  # a log axis cannot show the exact zeros of collapsed dimensions
        ax.plot(range(1, len(ys) + 1), ys, label=f"{name} ({len(ys)})")
    ax.set_yscale("log")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("singular value / largest")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


class TensorBoardLog:
    """A ``SummaryWriter`` on ``run_dir``, created at the first write (after a resume
    has said where to purge from)."""

    def __init__(self, run_dir: Path) -> None:
        self._writer_cls = require_tensorboard()
        self.run_dir = Path(run_dir)
        self.purge_step: Optional[int] = None
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            self._writer = self._writer_cls(log_dir=str(self.run_dir), purge_step=self.purge_step)
        return self._writer

    def resume_from(self, global_step: int) -> None:
        """Hide events the interrupted run wrote after its checkpoint (step > ``global_step``)."""
        self.purge_step = global_step + 1

    def log(self, rec: Dict[str, Any]) -> None:
        kind = rec.get("kind")
        if kind not in ("step", "epoch"):
            return  # events (resume, signal, nonfinite, data) stay in metrics.jsonl
        step = int(rec.get("step", 0))
        prefix = "train" if kind == "step" else "epoch"
        for k, v in _scalars(rec):
            if math.isfinite(v):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
        if kind == "epoch":
            self.writer.flush()

    def log_spectra(self, step: int, spectra: Dict[str, Sequence[float]], tag: str = "spectrum") -> None:
        spectra = {k: v for k, v in spectra.items() if v is not None and len(v)}
        if spectra:
            self.writer.add_figure(tag, _spectrum_figure(spectra, f"{tag} at step {step}"), step)
            self.writer.flush()

    def log_final(self, step: int, res: Dict[str, Any]) -> None:
        for k, v in _scalars(res):
            if math.isfinite(v):
                self.writer.add_scalar(f"final/{k}", v, step)
        self.log_spectra(
            step,
            {k.removesuffix("_spectrum"): v for k, v in res.items() if k.endswith("_spectrum") and isinstance(v, list)},
            tag="final/spectrum",
        )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
