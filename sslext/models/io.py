"""A backbone on its own: the two file formats ``sslext-export`` writes, and :func:`load_backbone`.

* ``torchvision``: the backbone's ``state_dict`` alone (tensors, no ``fc``), which a
  torchvision ResNet with the same stem and ``fc = nn.Identity()`` loads with
  ``strict=True`` (:data:`TORCHVISION_SNIPPETS` says how to build it).
* ``sslext``: a dict (``format: "sslext-backbone"``) holding the backbone's name,
  what rebuilding it needs, its feature size, where it came from and its
  ``state_dict``; any backbone (ResNets, timm models) can be written so.

Both hold tensors and plain containers only, so ``torch.load(weights_only=True)``
reads them.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from .resnet import _guard_strided_convs, build_backbone
from .timm_backbone import build_timm_backbone, is_timm_backbone

__all__ = [
    "BACKBONE_FORMAT",
    "BACKBONE_FORMAT_VERSION",
    "TORCHVISION_SNIPPETS",
    "torchvision_state_dict",
    "backbone_record",
    "load_backbone",
]

BACKBONE_FORMAT = "sslext-backbone"
BACKBONE_FORMAT_VERSION = 1

# How torchvision builds each of our ResNets (then: the CIFAR stem if the run used
# it, and fc = nn.Identity()). resnet10 exists in torchvision only at width 64.
TORCHVISION_SNIPPETS = {
    "resnet18": "torchvision.models.resnet18()",
    "resnet34": "torchvision.models.resnet34()",
    "resnet50": "torchvision.models.resnet50()",
    "resnet10": "torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])",
}
_CIFAR_STEM = "m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = nn.Identity()"
# (block type, blocks per stage) -> our name
_LAYOUTS = {
    ("basic", (1, 1, 1, 1)): "resnet10",
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
}


def torchvision_snippet(name: str, cifar_stem: bool) -> str:
    """The lines that build the torchvision model a ``torchvision`` export of ``name`` loads into."""
    stem = f"; {_CIFAR_STEM}" if cifar_stem else ""
    return f"m = {TORCHVISION_SNIPPETS[name]}{stem}; m.fc = nn.Identity()"


def torchvision_state_dict(
    name: str, cifar_stem: bool, width: int, state_dict: Mapping[str, torch.Tensor]
) -> Dict[str, torch.Tensor]:
    """``state_dict`` of our backbone ``name`` as torchvision's ResNet names it.

    Our ResNets are torchvision's modules (the ``fc`` replaced by an identity), so
    the keys already match; this checks that torchvision has the architecture.
    """
    if is_timm_backbone(name):
        raise ValueError(
            f"--format: torchvision has no {name!r}; export timm backbones with --format sslext "
            "(the file's state_dict loads into timm.create_model(..., num_classes=0))"
        )
    if name not in TORCHVISION_SNIPPETS:
        raise ValueError(f"--format: torchvision has no backbone {name!r}; use --format sslext")
    if name == "resnet10" and width != 64:
        raise ValueError(
            f"--format: torchvision's ResNets have base width 64; this resnet10 has width {width}. "
            "Use --format sslext (sslext.models.load_backbone reads it)"
        )
    return {k: v.detach().clone().contiguous() for k, v in state_dict.items()}


def backbone_record(
    name: str,
    state_dict: Mapping[str, torch.Tensor],
    out_dim: int,
    *,
    cifar_stem: bool = True,
    width: int = 64,
    timm_kwargs: Optional[Dict[str, Any]] = None,
    source: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The ``sslext`` format: what :func:`load_backbone` needs to rebuild the backbone and its weights."""
    rec: Dict[str, Any] = {
        "format": BACKBONE_FORMAT,
        "version": BACKBONE_FORMAT_VERSION,
        "backbone": name,
        "cifar_stem": bool(cifar_stem),
        "width": int(width),
        "out_dim": int(out_dim),
        "source": dict(source or {}),
        "state_dict": {k: v.detach().clone().contiguous() for k, v in state_dict.items()},
    }
    if timm_kwargs is not None:
        rec["timm_kwargs"] = dict(timm_kwargs)
    return rec


def _layout(sd: Mapping[str, torch.Tensor]) -> Tuple[str, bool, int]:
    """(our name, cifar_stem, width) of a torchvision-style ResNet state dict."""
    if "conv1.weight" not in sd:
        raise ValueError("path: a plain state dict without conv1.weight is not a torchvision ResNet backbone")
    kind = "bottleneck" if any(k.endswith(".conv3.weight") for k in sd) else "basic"
    blocks = []
    for stage in range(1, 5):
        idx = {int(k.split(".")[1]) for k in sd if k.startswith(f"layer{stage}.")}
        blocks.append(max(idx) + 1 if idx else 0)
    name = _LAYOUTS.get((kind, tuple(blocks)))
    if name is None:
        raise ValueError(
            f"path: a ResNet with {kind} blocks {blocks} per stage is none of {sorted(set(_LAYOUTS.values()))}"
        )
    w = sd["conv1.weight"]
    return name, w.shape[-1] == 3, int(w.shape[0])


def _read(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f"path: {path} is not a backbone file written by sslext-export (torch.load with "
            f"weights_only=True refused it: {str(e).splitlines()[0]})"
        ) from e
    except Exception as e:
        raise RuntimeError(f"path: {path} cannot be loaded ({type(e).__name__}: {e})") from e


def load_backbone(path: str | Path) -> nn.Module:
    """Rebuild a backbone exported by ``sslext-export`` (either format), weights loaded.

    The module maps images to pooled features (``.out_dim`` wide) and comes back
    on the CPU in training mode, as a freshly built module does; call ``.eval()``
    to extract features. A ``torchvision`` file (or torchvision's own ResNet
    weights: its ``fc`` is dropped) is recognised by its layout: ResNet-10 (any
    width), -18, -34 or -50, CIFAR stem when ``conv1`` is 3x3.
    """
    path = Path(path)
    obj = _read(path)
    if isinstance(obj, dict) and obj.get("format") == BACKBONE_FORMAT:
        if obj.get("version") != BACKBONE_FORMAT_VERSION:
            raise RuntimeError(
                f"path: {path} is an sslext backbone of format version {obj.get('version')!r}; "
                f"this sslext reads version {BACKBONE_FORMAT_VERSION}"
            )
        name, sd = obj["backbone"], obj["state_dict"]
        if is_timm_backbone(name):
            net = _guard_strided_convs(build_timm_backbone(name, timm_kwargs=obj.get("timm_kwargs", {})))
        else:
            net = build_backbone(name, obj["cifar_stem"], obj["width"])
    elif (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        sd = {k: v for k, v in obj.items() if not k.startswith("fc.")}
        name, cifar_stem, width = _layout(sd)
        if name != "resnet10" and width != 64:
            raise ValueError(f"path: {name} with a first conv of {width} channels is not a torchvision ResNet")
        net = build_backbone(name, cifar_stem, width)
    else:
        raise ValueError(
            f"path: {path} holds neither an sslext backbone nor a ResNet state dict (got {type(obj).__name__})"
        )
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"path: the weights in {path} do not fit {name!r}: {e}") from e
    return net
