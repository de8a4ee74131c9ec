"""Sweeps: a grid of training runs (rows x seeds), run resumably, then aggregated.

``sslext-sweep run FILE [--jobs K] [--only NAME] [--out DIR]`` trains and
evaluates every cell with the ordinary trainer, one child process per cell;
``sslext-sweep report FILE [--out DIR]`` turns the per-cell records into
tables and plots (:mod:`sslext.app.sweeps.report`) without training. A sweep file::

    name: seed_question_cpu
    base: ../some_config.yaml        # a training config, relative to this file
    set: {train.threads: 2}          # --set overrides for every cell
    budget: {epochs: 6}              # the same optimizer steps for every trained cell
    seeds: [0, 1, 2]
    rows:
      - {name: random_init, train: false}          # evaluated at initialisation
      - {name: vicreg, set: {method.name: vicreg}}
      - {name: simclr, set: {method: {name: simclr, temperature: 0.2}, optim: {lr: 0.4}}}  # nested = dotted keys
      - {name: vicreg_tico, set: {method.name: vicreg_tico}}   # a row may name its own baseline:
    compare:
      baseline: vicreg               # paired differences against this row (per-row `baseline:` wins)
      pairs: [[vicreg_tico, random_init]]   # further [row, baseline] comparisons (optional)
    runs_dir: runs/sweeps/seed_question_cpu        # checkpoints, logs (not committed)
    results_dir: benchmarks/results/science        # records, tables, plots

A cell is ``<row>-s<seed>``. Its record ``<results_dir>/cells/<cell>.json`` is
written atomically when the cell finished (status ``done``), diverged (status
``diverged``: a non-finite loss stopped training, with the step and the loss
terms; a result, reported in the tables) or failed (status ``failed`` with the
error). Done and diverged cells are finished and never rerun (delete the
record to rerun one); a failed or interrupted one is retried on the next
``run`` (resumed from its checkpoint when it has one). Killing the runner at
any moment loses at most the cells in progress, and those resume. ``--out DIR`` puts runs under ``DIR/runs`` and the
records and tables in ``DIR``, so a rerun never touches the committed study.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from ..config import ConfigError
from ..report import read_metrics
from ..training import NonFiniteLossError, Trainer, build_everything, evaluate_parts, resolve_device
from ..training.metrics import atomic_write_text, json_num
from ..training.precision import cpu_model
from .report import read_record, write_report
from .spec import Cell, Sweep, load_sweep

__all__ = ["Sweep", "Cell", "load_sweep", "run_sweep", "main"]

EXIT_DIVERGED = 3  # sslext-train's exit code for a non-finite loss
EXIT_INTERRUPTED = 4


def _write_record(path: Path, obj: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1, default=float))


FINISHED = ("done", "diverged")


def cell_status(sweep: Sweep, cell: Cell) -> str:
    """``done`` or ``diverged`` (finished), ``failed``, ``partial`` (a checkpoint to resume) or ``pending``."""
    rec = read_record(sweep.record_path(cell))
    if rec and rec.get("status") in (*FINISHED, "failed"):
        return rec["status"]
    return "partial" if (sweep.run_dir(cell) / "last.pt").exists() else "pending"


# ------------------------------------------------------------------ one cell


def run_cell(sweep: Sweep, cell: Cell) -> int:
    """Train (or resume) and evaluate one cell in this process; write its record."""
    cfg = sweep.config(cell)
    run_dir = sweep.run_dir(cell)
    t0 = time.time()

    def record(status: str, **fields: Any) -> None:
        _write_record(
            sweep.record_path(cell),
            {
                "status": status,
                "cell": cell.name,
                "row": cell.row,
                "seed": cell.seed,
                "method": cfg["method"]["name"],
                "trained": cell.train,
                **fields,
                "run_dir": str(run_dir),
                "overrides": cell.overrides,
                "config": cfg,
                "seconds": time.time() - t0,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpu": cpu_model(),
                "machine": platform.machine(),  # reports pair within one CPU model
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )

    def epochs() -> List[Dict[str, Any]]:
        return [r for r in read_metrics(run_dir) if r.get("kind") == "epoch"]

    if cell.train:
        resume = (run_dir / "last.pt").exists()
        # Without a checkpoint, whatever an earlier attempt left (a run that
        # failed before its first save) is moved aside, never deleted.
        try:
            summary = Trainer(cfg, resume=resume, overwrite=not resume).fit()
        except NonFiniteLossError as e:
            # Divergence is the cell's result, not an accident: the same config and
            # seed diverge again at the same step, so the cell is finished.
            record(
                "diverged",
                steps=e.step,
                diverged_at_step=e.step,
                diverged_at_epoch=e.epoch,
                terms_at_divergence={k: json_num(v) for k, v in e.terms.items()},
                error=str(e),
                epochs=epochs(),
            )
            raise
        if summary.get("interrupted"):
            return EXIT_INTERRUPTED
        if not summary["finished"] or "final_eval" not in summary:
            raise RuntimeError(f"cell {cell.name}: the run stopped before its final evaluation: {summary}")
        record("done", steps=summary["global_step"], final_eval=summary["final_eval"], epochs=epochs())
    else:
        # The network exactly as the trained rows start from it (same seed, same build).
        if cfg["train"]["threads"]:
            torch.set_num_threads(cfg["train"]["threads"])
        device = resolve_device(cfg["train"]["device"])
        final = evaluate_parts(build_everything(cfg, device, need_train_labels=True), cfg, device, progress=False)
        record("done", steps=0, final_eval=final, epochs=[])
    return 0


# ------------------------------------------------------------------ runner


def _tail(path: Path, start: int = 0, n: int = 4000) -> str:
    """The last ``n`` characters this attempt wrote to ``path`` (from byte ``start``): a
    failed cell's record holds its own error, not the log of earlier attempts nor the
    command line of the machine that ran it (records are committed)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")[-n:]
    except FileNotFoundError:
        return ""


def keep_niceness(pid: int) -> None:
    """Give a cell's session the runner's niceness as a scheduling group.

    A cell runs in a session of its own, so that a signal to the runner's process
    group does not reach it mid-step. Where Linux groups processes by session for
    the scheduler (autogroups), niceness only ranks processes within a group:
    under ``nice -n 19 sslext-sweep`` each cell would still take a fair share of
    the CPU from the user's other sessions. Best effort: without autogroups, or
    without permission, nothing changes."""
    nice = os.nice(0)
    if nice <= 0:
        return
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass


def run_sweep(sweep: Sweep, jobs: int = 1, only: Optional[str] = None, progress: bool = True) -> Dict[str, int]:
    """Run every unfinished cell (or the cells of ``only``); returns counts by final status."""
    if jobs < 1:
        raise ConfigError(f"--jobs: expected >= 1, got {jobs}")
    if only is not None:
        cells = [c for c in sweep.cells if c.row == only] or [sweep.cell(only)]
    else:
        cells = list(sweep.cells)
    todo = [c for c in cells if cell_status(sweep, c) not in FINISHED]
    sweep.runs_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        bar = tqdm(
            total=len(cells),
            initial=len(cells) - len(todo),
            desc=f"sweep {sweep.name}",
            unit="cell",
            dynamic_ncols=True,
        )
    running: Dict[str, tuple] = {}
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signal.Signals(signum).name
        for proc, *_ in running.values():  # each child checkpoints and exits
            proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    counts = {"done": 0, "diverged": 0, "failed": 0, "interrupted": 0, "skipped": len(cells) - len(todo)}
    try:
        queue = list(todo)
        while queue or running:
            while queue and len(running) < jobs and stop["signal"] is None:
                c = queue.pop(0)
                log = sweep.runs_dir / f"{c.name}.log"
                cmd = [sys.executable, "-m", "sslext.app.sweeps.run", "_cell", str(sweep.path), c.name]
                if sweep.out is not None:
                    cmd += ["--out", sweep.out]
                for item in sweep.extra:
                    cmd += ["--set", item]
                with open(log, "a") as f:
                    f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
                    f.flush()
                    start = f.tell()
                    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
                keep_niceness(proc.pid)
                running[c.name] = (proc, c, log, start)
                if bar:
                    bar.set_postfix_str(", ".join(running))
            if not queue and not running:
                break
            if stop["signal"] is not None and not running:
                break
            time.sleep(0.5)
            for name in list(running):
                proc, c, log, start = running[name]
                rc = proc.poll()
                if rc is None:
                    continue
                del running[name]
                finished = rc == 0 or (rc == EXIT_DIVERGED and cell_status(sweep, c) == "diverged")
                if finished:
                    counts["done" if rc == 0 else "diverged"] += 1
                elif rc == EXIT_INTERRUPTED or stop["signal"] is not None:
                    counts["interrupted"] += 1
                else:
                    counts["failed"] += 1
                    _write_record(
                        sweep.record_path(c),
                        {
                            "status": "failed",
                            "cell": c.name,
                            "row": c.row,
                            "seed": c.seed,
                            "returncode": rc,
                            "run_dir": str(sweep.run_dir(c)),
                            "log": str(log),
                            "error": _tail(log, start),
                            "overrides": c.overrides,
                            "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        },
                    )
                if bar:
                    bar.update(1 if finished else 0)
                    bar.set_postfix_str(", ".join(running) or "-")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if bar:
            bar.close()
    counts["stopped_by"] = stop["signal"]
    return counts


# ------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslext-sweep", description="Grids of sslext training runs and their tables.")
    # The metavar lists the public commands: argparse prints a sub-command's
    # help=SUPPRESS as "==SUPPRESS==" instead of hiding it, so _cell has no help.
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{run,report,status}")
    sweep_file = "the sweep file (YAML: base config, rows, seeds; see docs/sweeps.md)"
    r = sub.add_parser("run", help="train and evaluate every unfinished cell")
    r.add_argument("file", help=sweep_file)
    r.add_argument("--jobs", type=int, default=1, help="cells run in parallel (default 1)")
    r.add_argument("--only", help="one cell (ROW-sSEED) or every seed of one row")
    r.add_argument("--out", help="runs under OUT/runs, records and tables in OUT (never the committed study)")
    r.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value of every cell, after the sweep's own (repeatable)",
    )
    r.add_argument("--no-report", action="store_true", help="do not write the tables after running")
    s = sub.add_parser("report", help="aggregate the finished cells into tables and plots (no training)")
    s.add_argument("file", help=sweep_file)
    s.add_argument("--out", help="read and write OUT instead of the sweep's results_dir")
    t = sub.add_parser("status", help="list every cell and its status")
    t.add_argument("file", help=sweep_file)
    t.add_argument("--out", help="read OUT instead of the sweep's results_dir")
    # Internal: one cell in a child process (run's workers); not listed in --help.
    c = sub.add_parser("_cell")
    c.add_argument("file")
    c.add_argument("cell")
    c.add_argument("--out")
    c.add_argument("--set", dest="extra", action="append", default=[])
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        sweep = load_sweep(args.file, getattr(args, "out", None), getattr(args, "extra", ()))
        if args.cmd == "_cell":
            try:
                return run_cell(sweep, sweep.cell(args.cell))
            except NonFiniteLossError as e:
                print(f"sslext-sweep: {e}", file=sys.stderr)
                return EXIT_DIVERGED
        if args.cmd == "status":
            for c in sweep.cells:
                print(f"{c.name:32s} {cell_status(sweep, c)}")
            return 0
        if args.cmd == "run":
            counts = run_sweep(sweep, args.jobs, args.only)
            print(f"sslext-sweep: {json.dumps(counts)}", file=sys.stderr)
            if not args.no_report:
                print(f"sslext-sweep: report in {write_report(sweep)}", file=sys.stderr)
            if counts["stopped_by"]:
                return EXIT_INTERRUPTED
            return 1 if counts["failed"] else 0
        print(write_report(sweep))
        return 0
    except ConfigError as e:
        print(f"sslext-sweep: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
