"""The SSL trainer, one concern per module.

- ``trainer``: :class:`Trainer` (the loop) and :func:`train`;
- ``parts``: :class:`TrainerParts`, everything a run trains with, built from a config;
- ``train_step``, ``epoch``, ``evaluation``, ``state``: one optimizer step; the data
  order and the end of an epoch; the per-epoch and final evaluations; save and resume;
- ``build``: datasets, method and augmentation from a config;
- ``checkpoint``: atomic write, weights-only load, resume compatibility, RNG streams;
- ``signals``: SIGTERM/SIGINT as "stop after the current step";
- ``nonfinite``: the policy for NaN/Inf steps (stop or skip);
- ``precision``: ``train.amp`` -> autocast dtype and GradScaler, measured on the CPU;
- ``metrics``: metrics.jsonl, metrics.csv and (``tensorboard``) TensorBoard events;
- ``faults``: the test hook that interrupts a run at a chosen point;
- ``rundir``: a run never destroys another (refuse, ``--resume`` or ``--overwrite``);
- ``checkpoint_eval``: offline evaluation of a checkpoint (``sslext-eval``).

The command line is :mod:`sslext.app.train`, run as ``python -m sslext.train`` or ``sslext-train``.
"""

from __future__ import annotations

from .build import build_everything, cpu_has_native_bf16, resolve_device
from .checkpoint import CHECKPOINT_VERSION, CheckpointMismatchError, load_checkpoint_file
from .checkpoint_eval import evaluate_checkpoint, evaluate_parts
from .nonfinite import NonFiniteLossError
from .parts import TrainerParts, build_trainer_parts
from .precision import Precision, resolve_precision
from .rundir import RunExistsError
from .trainer import Trainer, train

__all__ = [
    "Trainer",
    "TrainerParts",
    "build_trainer_parts",
    "train",
    "build_everything",
    "resolve_device",
    "resolve_precision",
    "Precision",
    "cpu_has_native_bf16",
    "load_checkpoint_file",
    "CheckpointMismatchError",
    "NonFiniteLossError",
    "CHECKPOINT_VERSION",
    "evaluate_checkpoint",
    "evaluate_parts",
    "RunExistsError",
]
