"""Console entry points ``sslext-train``, ``sslext-eval`` and ``sslext-export``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from .config import ConfigError
from .export import main as export_cli
from .train import main as train_cli
from .training import evaluate_checkpoint

__all__ = ["train_main", "eval_main", "export_main"]


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``sslext-train --config configs/<name>.yaml [--set key=value ...] [--resume]``."""
    return train_cli(argv)


def eval_main(argv: Optional[Sequence[str]] = None) -> int:
    """``sslext-eval --checkpoint runs/<name>/last.pt [--set eval.offline_epochs=50 ...]``.

    Linear probe (all labels and ``eval.label_fraction``), weighted kNN and
    collapse diagnostics of the checkpoint's frozen backbone, test split.
    """
    p = argparse.ArgumentParser(prog="sslext-eval", description="Evaluate a frozen sslext checkpoint.")
    p.add_argument("--checkpoint", required=True, help="path to a checkpoint written by sslext-train (last.pt)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override config values stored in the checkpoint (e.g. data.root=...)",
    )
    p.add_argument("--output", help="JSON file for the results (default: <checkpoint>.eval.json)")
    args = p.parse_args(argv)

    try:
        res = evaluate_checkpoint(args.checkpoint, args.overrides, args.output)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"sslext-eval: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res, indent=2))
    return 0


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """``sslext-export runs/<name> --out backbone.pt [--format torchvision|sslext]`` (see :mod:`sslext.app.export`)."""
    return export_cli(argv)


if __name__ == "__main__":
    raise SystemExit(train_main())
