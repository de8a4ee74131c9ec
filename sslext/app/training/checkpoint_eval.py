"""``sslext-eval``: the offline evaluation of a checkpoint written by the trainer.

It lives with the trainer, not in :mod:`sslext.evaluate`, because it rebuilds
the run's model from the checkpoint's config (``build``) and reads the file
(``checkpoint``); :mod:`sslext.evaluate` stays a leaf that the trainer uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from ...evaluate import evaluate_backbone
from ..config import apply_override, validate
from .build import build_everything, resolve_device
from .checkpoint import load_checkpoint_file
from .evaluation import eval_settings
from .metrics import atomic_write_text

__all__ = ["evaluate_checkpoint", "evaluate_parts"]


def evaluate_parts(
    parts: Dict[str, Any], cfg: Dict[str, Any], device: torch.device, progress: Optional[bool] = None
) -> Dict[str, Any]:
    """``evaluate_backbone`` of a built method (``build_everything``'s parts) with
    the ``eval`` settings and seed of ``cfg``."""
    m = parts["method"]
    return evaluate_backbone(
        m.backbone,
        parts["eval_train_ds"],
        parts["test_ds"],
        device=device,
        crop_size=parts["crop_size"],
        mean=parts["mean"],
        std=parts["std"],
        projector=getattr(m, "projector", None),
        **eval_settings(cfg, progress),
    )


def evaluate_checkpoint(
    checkpoint: str | Path, overrides: Optional[Sequence[str]] = None, output: Optional[str | Path] = None
) -> Dict[str, float]:
    """Load a training checkpoint and run ``evaluate_backbone`` with its config.

    ``overrides`` (``eval.*``, ``data.*``...) adjust the stored config; results
    are written as JSON next to the checkpoint unless ``output`` is given.
    """
    ckpt = load_checkpoint_file(checkpoint)
    cfg = ckpt["config"]
    for o in overrides or []:
        apply_override(cfg, o)
    validate(cfg)
    device = resolve_device(cfg["train"]["device"])
    parts = build_everything(cfg, device, need_train_labels=True)
    parts["method"].load_state_dict(ckpt["method"])
    res = evaluate_parts(parts, cfg, device)
    out = Path(output) if output else Path(checkpoint).with_suffix(".eval.json")
    atomic_write_text(out, json.dumps(res, indent=2))
    return res
