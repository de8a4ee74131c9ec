"""``sslext-export RUN_OR_CHECKPOINT --out FILE [--format torchvision|sslext]``: a run's backbone on its own.

The backbone (no projector, predictor, probe or optimizer state) of a run
directory's ``last.pt`` or of any checkpoint ``sslext-train`` wrote:

* ``--format torchvision`` (default): the ``state_dict`` that a torchvision ResNet
  built as the command prints (CIFAR stem if the run used it, ``fc = nn.Identity()``)
  loads with ``strict=True``, and then computes the same features;
* ``--format sslext``: the backbone's name, what rebuilding it needs and its
  weights, for :func:`sslext.models.load_backbone`; any backbone, timm's included.

The file is written atomically: a crash leaves the old file or the new one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..data import atomic_save
from ..models import build_backbone
from ..models.io import backbone_record, torchvision_snippet, torchvision_state_dict
from ..models.timm_backbone import is_timm_backbone
from .training.checkpoint import load_checkpoint_file

__all__ = ["FORMATS", "export_backbone", "main"]

FORMATS = ("torchvision", "sslext")
_PREFIX = "backbone."


def _checkpoint_path(source: str | Path) -> Path:
    p = Path(source)
    if p.is_dir():
        ckpt = p / "last.pt"
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"RUN_OR_CHECKPOINT: {p} holds no last.pt; give a run directory of sslext-train or a checkpoint file"
            )
        return ckpt
    if not p.exists():
        raise FileNotFoundError(f"RUN_OR_CHECKPOINT: no such run directory or checkpoint file: {p}")
    return p


def export_backbone(source: str | Path, out: str | Path, fmt: str = "torchvision") -> Dict[str, Any]:
    """Write the backbone of a run (its ``last.pt``) or of a checkpoint file to ``out``.

    Returns what was written: ``out``, ``format``, ``backbone``, ``out_dim``,
    ``cifar_stem`` and, for the torchvision format, ``torchvision`` (the line that
    builds the model the file loads into).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {list(FORMATS)}, got {fmt!r}")
    ckpt_path = _checkpoint_path(source)
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out: {out} is a directory; give a file name (e.g. {out / 'backbone.pt'})")
    if out.resolve() == ckpt_path.resolve():
        raise ValueError(f"--out: {out} is the checkpoint being exported; give another file name")
    try:
        ckpt = load_checkpoint_file(ckpt_path)
    except (FileNotFoundError, RuntimeError) as e:
        raise type(e)(f"RUN_OR_CHECKPOINT: {e}") from e
    cfg = ckpt["config"]
    m = cfg["model"]
    name, cifar_stem, width = m["backbone"], m["cifar_stem"], m["width"]
    sd = {k[len(_PREFIX) :]: v for k, v in ckpt["method"].items() if k.startswith(_PREFIX)}
    if not sd:
        raise RuntimeError(f"RUN_OR_CHECKPOINT: {ckpt_path} has no backbone weights (no 'backbone.*' entries)")
    # Rebuilding the backbone checks that the weights fit it (strict) and gives its feature size.
    net = build_backbone(name, cifar_stem, width, image_size=cfg["augment"]["view1"]["crop_size"])
    net.load_state_dict(sd, strict=True)
    info: Dict[str, Any] = {
        "out": str(out),
        "format": fmt,
        "backbone": name,
        "out_dim": int(net.out_dim),
        "cifar_stem": bool(cifar_stem) and not is_timm_backbone(name),
    }
    if fmt == "torchvision":
        payload: Any = torchvision_state_dict(name, cifar_stem, width, sd)
        info["torchvision"] = torchvision_snippet(name, cifar_stem)
    else:
        source_info = {
            "run": cfg.get("name"),
            "method": cfg["method"]["name"],
            "epoch": int(ckpt["epoch"]),
            "global_step": int(ckpt["global_step"]),
            "checkpoint": str(ckpt_path),
        }
        payload = backbone_record(
            name,
            sd,
            net.out_dim,
            cifar_stem=cifar_stem,
            width=width,
            timm_kwargs=getattr(net, "timm_kwargs", None),
            source=source_info,
        )
    atomic_save(payload, out)
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line of ``sslext-export``; exit code 0, 1 on a bad input, 2 on bad usage."""
    p = argparse.ArgumentParser(
        prog="sslext-export",
        description="Write the backbone of a run on its own: a "
        "state dict for torchvision's ResNet, or a file for sslext.models.load_backbone.",
    )
    p.add_argument(
        "source",
        metavar="RUN_OR_CHECKPOINT",
        help="a run directory of sslext-train (its last.pt is read) or a checkpoint file",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (replaced atomically)")
    p.add_argument(
        "--format",
        dest="fmt",
        choices=FORMATS,
        default="torchvision",
        help="torchvision: a state dict for torchvision's ResNet (default); "
        "sslext: for sslext.models.load_backbone, any backbone",
    )
    args = p.parse_args(argv)
    try:
        info = export_backbone(args.source, args.out, args.fmt)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"sslext-export: error: {e}", file=sys.stderr)
        return 1
    print(
        f"sslext-export: wrote {info['out']} ({info['format']} format): {info['backbone']} backbone, "
        f"{info['out_dim']}-d features"
    )
    if "torchvision" in info:
        print(
            f"load it with: import torch, torch.nn as nn, torchvision; {info['torchvision']}; "
            f"m.load_state_dict(torch.load({info['out']!r}, weights_only=True))"
        )
    else:
        print(f"load it with: sslext.models.load_backbone({info['out']!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
