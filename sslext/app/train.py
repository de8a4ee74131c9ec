"""The trainer's command line: ``sslext-train`` and ``python -m sslext.train`` (sslext/train.py re-exports it).

``python -m sslext.train --config configs/vicreg_resnet18_cifar10.yaml [--set k=v ...] [--resume]``

Writes into ``train.out_dir/<name>/``: ``config.yaml``, ``metrics.jsonl``
(every ``log_every`` steps, every epoch, and events: non-finite steps,
signals, resumes), ``metrics.csv`` (per epoch), ``last.pt`` (atomically,
every ``checkpoint_every`` epochs, every ``checkpoint_every_steps`` steps, on
SIGTERM/SIGINT and at the end), ``final_eval.json`` and ``report.md`` + PNG
plots. At the end it prints a short JSON summary (the run's scalars, the
headline evaluation numbers and the paths of that full record) on stdout.

Resuming restores the model and loss buffers, optimizer, schedule, online
probe, all RNG streams (augmentation generator, torch) and the position in
the data order, so a resumed CPU run reproduces the uninterrupted one
bit-for-bit, whenever the previous process stopped (even SIGKILL: the
checkpoint file is replaced atomically, so it is always the last complete one).

Exit codes of ``sslext-train``: 0 done (or ``train.max_steps`` reached),
1 error, 2 config error, 3 non-finite loss/gradients, 4 stopped by
SIGTERM/SIGINT after writing a checkpoint (continue with ``--resume``).

Under ``torchrun --nproc_per_node=K`` the method and the online probe are
wrapped in DistributedDataParallel (NCCL on GPUs, gloo on CPU),
``optim.batch_size`` is the GLOBAL batch (each rank takes a contiguous
``batch_size / K`` slice of the same seeded per-epoch permutation), batch
norms are synchronised (``distributed.sync_batchnorm``), the losses gather
the global batch, each rank augments with its own generator (seed offset by
rank, every rank's state checkpointed) and only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..distributed import cleanup_distributed
from .config import ConfigError, dump_config, load_config

# The trainer's public names, re-exported by the public entry module sslext.train.
from .training import (  # noqa: F401
    CHECKPOINT_VERSION,
    CheckpointMismatchError,
    NonFiniteLossError,
    RunExistsError,
    Trainer,
    build_everything,
    load_checkpoint_file,
    resolve_device,
    train,
)
from .training.faults import FaultInjector as _FaultInjector  # noqa: F401

__all__ = [
    "train",
    "Trainer",
    "NonFiniteLossError",
    "CheckpointMismatchError",
    "RunExistsError",
    "build_everything",
    "load_checkpoint_file",
    "resolve_device",
    "main",
    "short_summary",
    "EXIT_INTERRUPTED",
]

EXIT_INTERRUPTED = 4  # sslext-train stopped by SIGTERM/SIGINT after writing its checkpoint


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslext-train", description="Self-supervised pretraining with sslext losses.")
    p.add_argument("--config", "-c", help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=0.1 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/<name>/last.pt")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh where a run exists: the old run is moved to <name>.old-<time>, not deleted",
    )
    p.add_argument("--download", action="store_true", help="download the dataset if missing (CIFAR, Imagenette)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


# The final evaluation's headline numbers; the rest (collapse statistics, spectra)
# stays in the run directory's final_eval.json.
SUMMARY_EVAL_KEYS = ("linear_acc", "linear_acc_10pct", "knn_acc", "backbone_rankme", "projector_rankme")


def short_summary(summary: Dict[str, Any]) -> Dict[str, Any]:
    """What ``sslext-train`` prints at the end: the run's scalars, the headline
    evaluation numbers, and where the full record is (never the spectra)."""
    out: Dict[str, Any] = {k: v for k, v in summary.items() if not isinstance(v, (dict, list, tuple))}
    final_eval = summary.get("final_eval")
    if isinstance(final_eval, dict):
        out["final_eval"] = {k: final_eval[k] for k in SUMMARY_EVAL_KEYS if k in final_eval}
    run_dir = Path(str(summary.get("run_dir", ".")))
    out["full_record"] = {
        "final_eval": str(run_dir / "final_eval.json") if isinstance(final_eval, dict) else None,
        "metrics": str(run_dir / "metrics.jsonl"),
        "report": summary.get("report"),
    }
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        overrides = list(args.overrides) + (["data.download=true"] if args.download else [])
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"sslext-train: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg))
        return 0
    try:
        summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except NonFiniteLossError as e:
        print(f"sslext-train: {e}", file=sys.stderr)
        return 3
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"sslext-train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: stopped without a new checkpoint
        print("sslext-train: interrupted; the last complete checkpoint is intact", file=sys.stderr)
        return 130
    finally:
        cleanup_distributed()
    if int(os.environ.get("RANK", "0")) == 0 and summary.get("moved_aside"):
        print(f"sslext-train: --overwrite: the previous run was moved to {summary['moved_aside']}", file=sys.stderr)
    if int(os.environ.get("RANK", "0")) == 0:  # the group is gone by now; torchrun's RANK still says who we are
        print(json.dumps(short_summary(summary), indent=2, default=str))
    if summary.get("interrupted"):
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"sslext-train: stopped by {summary['interrupted']} at step {summary['global_step']}; checkpoint "
                f"written to {Path(summary['run_dir']) / 'last.pt'}; continue with --resume",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
