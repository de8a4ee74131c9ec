"""A run never destroys another: the rule for starting a run in a directory.

A run directory (``train.out_dir/<name>``) that already holds a run, i.e. any
of ``RUN_FILES``, is only touched when the user says what to do with it:

* ``resume``: continue it from its ``last.pt`` (the caller loads it);
* ``overwrite``: start afresh; the old run is first *moved aside*, whole, to
  ``<dir>.old-<UTC time>`` next to it (one ``os.rename``, nothing deleted), so
  a mistaken ``--overwrite`` costs nothing but disk space;
* neither: ``RunExistsError`` naming what is there (epochs, steps, files) and
  the two ways on.

An empty directory, or one holding only files no run writes, counts as free.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

__all__ = ["RunExistsError", "RUN_FILES", "describe_run", "prepare_run_dir"]

# What sslext-train writes into a run directory; any one of them marks a run.
RUN_FILES = ("last.pt", "metrics.jsonl", "metrics.csv", "config.yaml", "final_eval.json", "report.md")


class RunExistsError(RuntimeError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


def _checkpoint_position(path: Path) -> Optional[Dict[str, Any]]:
    try:
        # mmap: only the few scalars read below are paged in, not the weights.
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        cfg = ck.get("config", {}) if isinstance(ck, dict) else {}
        return {
            "epoch": int(ck["epoch"]),
            "step": int(ck["global_step"]),
            "epochs": cfg.get("train", {}).get("epochs") if isinstance(cfg, dict) else None,
        }
    except Exception:  # unreadable or foreign: describe the run from its log instead
        return None


def _log_position(path: Path) -> Optional[Dict[str, Any]]:
    pos: Optional[Dict[str, Any]] = None
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and r.get("kind") in ("step", "epoch"):
            pos = {
                "epoch": int(r.get("epoch", 0)) + (r.get("kind") == "epoch"),
                "step": int(r.get("step", 0)),
                "epochs": None,
            }
    return pos


def describe_run(run_dir: str | os.PathLike) -> Optional[str]:
    """A one-line description of the run in ``run_dir`` (epochs, steps, files), or ``None`` if it holds none."""
    d = Path(run_dir)
    if not d.is_dir():
        return None
    files = [f for f in RUN_FILES if (d / f).is_file()]
    if not files:
        return None
    pos = (_checkpoint_position(d / "last.pt") if "last.pt" in files else None) or (
        _log_position(d / "metrics.jsonl") if "metrics.jsonl" in files else None
    )
    if pos is None:
        what = "a run of unknown progress"
    else:
        of = f" of {pos['epochs']}" if pos.get("epochs") else ""
        done = ", finished" if pos.get("epochs") and pos["epoch"] >= pos["epochs"] else ""
        what = f"a run with {pos['epoch']}{of} epochs done (step {pos['step']}{done})"
    return f"{what}; files: {', '.join(files)}"


def _aside_name(d: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    cand = d.with_name(f"{d.name}.old-{stamp}")
    i = 1
    while cand.exists():
        cand = d.with_name(f"{d.name}.old-{stamp}-{i}")
        i += 1
    return cand


def prepare_run_dir(run_dir: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> Optional[Path]:
    """Apply the rule above before a run writes into ``run_dir``.

    Returns where an existing run was moved (``overwrite``), else ``None``.
    Raises ``RunExistsError`` when ``run_dir`` holds a run and neither flag is
    set, and ``ValueError`` when both are.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite: choose one (continue the run, or move it aside and start afresh)")
    d = Path(run_dir)
    desc = describe_run(d)
    if desc is None or resume:
        return None  # --resume on a missing checkpoint is reported by the checkpoint loader
    if not overwrite:
        raise RunExistsError(
            f"{d} already holds {desc}. Continue it with --resume (library: resume=True), or start afresh with "
            f"--overwrite (overwrite=True), which first moves the old run to {d.with_name(d.name + '.old-<UTC time>')}"
            f" (nothing is deleted); or give the new run another name or train.out_dir."
        )
    aside = _aside_name(d)
    os.rename(d, aside)
    return aside
