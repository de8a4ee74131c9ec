"""The run's metric log: ``metrics.jsonl`` (one JSON record per line), its per-epoch
``metrics.csv``, and TensorBoard events (``train.loggers``).

Only the main process writes; on other ranks every call is a no-op.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ...evaluate import singular_spectrum

__all__ = ["MetricsLog", "LOGGERS", "json_num", "atomic_write_text"]

# What train.loggers may list; metrics.jsonl is the run's own record (resume and
# the report read it), so it is always written.
LOGGERS = ("jsonl", "csv", "tensorboard")


def json_num(v: Any) -> Any:
    """Non-finite floats as strings ('nan', 'inf'), so metrics.jsonl stays strict JSON."""
    v = float(v)
    return v if math.isfinite(v) else repr(v)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class MetricsLog:
    """Appends records to ``<run_dir>/metrics.jsonl`` and counts them; writes
    ``metrics.csv`` and TensorBoard events when ``loggers`` lists them.

    ``n_records`` is checkpointed, so a resume can cut the log back to exactly
    what the checkpoint had seen (``truncate_for_resume``).
    """

    def __init__(self, run_dir: Path, main: bool, loggers: Sequence[str] = ("jsonl", "csv")) -> None:
        unknown = [x for x in loggers if x not in LOGGERS]
        if unknown or "jsonl" not in loggers:
            raise ValueError(f"train.loggers: expected 'jsonl' and any of {list(LOGGERS[1:])}, got {list(loggers)}")
        self.run_dir, self.main = run_dir, main
        self.path = run_dir / "metrics.jsonl"
        self.n_records = 0
        self.csv = "csv" in loggers
        self.tensorboard = None
        if main and "tensorboard" in loggers:
            from .tensorboard import TensorBoardLog  # optional dependency: imported only when asked for

            self.tensorboard = TensorBoardLog(run_dir)

    def clear(self) -> None:
        """A fresh run: drop the logs of an earlier run of the same name."""
        for f in ("metrics.jsonl", "metrics.csv"):
            (self.run_dir / f).unlink(missing_ok=True)
        for f in self.run_dir.glob("events.out.tfevents.*"):
            f.unlink()

    def log(self, rec: Dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.n_records += 1
        if self.tensorboard is not None:
            self.tensorboard.log(rec)

    def log_spectra(self, step: int, **feats: Any) -> None:
        """Singular-value spectra of ``name=(N, D) tensor`` (None skips one) as a TensorBoard image.

        Computed only when TensorBoard is on: the spectra are not in metrics.jsonl.
        """
        if self.tensorboard is None:
            return
        self.tensorboard.log_spectra(step, {k: singular_spectrum(v) for k, v in feats.items() if v is not None})

    def log_final(self, step: int, res: Dict[str, Any]) -> None:
        """The final evaluation (``final_eval.json``'s content) into TensorBoard."""
        if self.tensorboard is not None:
            self.tensorboard.log_final(step, res)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def truncate_for_resume(self, n_saved: Optional[int], global_step: int) -> None:
        """Drop metric records written after the checkpoint being resumed.

        The run died between logging and checkpointing and the resumed run
        writes them again, so the log keeps no duplicates; the events
        (non-finite steps, signals, resumes) stay as history. A torn last line
        is dropped too. ``n_saved`` is None for checkpoints written before the
        record count was saved: then the step numbers decide.
        """
        keep: List[str] = []
        if self.path.exists() and self.main:
            for i, line in enumerate(self.path.read_text().splitlines()):
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if n_saved is not None:
                    if i < n_saved or r.get("kind") not in ("step", "epoch"):
                        keep.append(line)
                elif r.get("step", 0) <= global_step:
                    keep.append(line)
            atomic_write_text(self.path, "".join(k + "\n" for k in keep))
        self.n_records = len(keep)
        if self.tensorboard is not None:
            self.tensorboard.resume_from(global_step)

    def write_csv(self) -> None:
        """Rewrite ``metrics.csv`` (atomically) from the epoch records of ``metrics.jsonl``."""
        if not self.main or not self.csv or not self.path.exists():
            return
        recs = [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]
        recs = [r for r in recs if r.get("kind") == "epoch"]
        if not recs:
            return
        keys = sorted({k for r in recs for k in r})
        tmp = self.run_dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(recs)
        os.replace(tmp, self.run_dir / "metrics.csv")
