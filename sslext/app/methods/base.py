"""Method base class and registry.

A method owns its networks (backbone + heads) and its loss module, including
any loss state (e.g. TiCo's running covariance, a registered buffer), so
``method.state_dict()`` is everything needed to resume it. Adding a method is
one new file in this package that defines a ``Method`` subclass decorated with
``@register_method("name")``; the package imports every module on import.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple, Type

import torch
import torch.nn as nn

__all__ = ["Method", "register_method", "build_method", "METHODS", "method_defaults"]

METHODS: Dict[str, Type["Method"]] = {}


def register_method(name: str):
    """Class decorator registering a ``Method`` subclass under ``name``."""

    def deco(cls: Type["Method"]) -> Type["Method"]:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {METHODS[name].__qualname__}")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def method_defaults(name: str) -> Dict[str, Any]:
    """The hyper-parameters (and defaults) a registered method accepts."""
    if name not in METHODS:
        raise ValueError(f"method.name: expected one of {sorted(METHODS)}, got {name!r}")
    return dict(METHODS[name].DEFAULTS)


def build_method(name: str, backbone: nn.Module, **kwargs: Any) -> "Method":
    """Instantiate a registered method around ``backbone`` (needs ``.out_dim``).

    Unknown keyword arguments raise ``ValueError`` naming ``method.<key>``.
    """
    defaults = method_defaults(name)
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise ValueError(f"method.{unknown[0]}: unknown option for method {name!r}; accepted: {sorted(defaults)}")
    if not hasattr(backbone, "out_dim"):
        raise ValueError("backbone: expected a module with an 'out_dim' attribute (see sslext.models.build_backbone)")
    return METHODS[name](backbone, **{**defaults, **kwargs})


class Method(nn.Module):
    """Base class of joint-embedding SSL methods.

    Subclasses set ``DEFAULTS`` (their hyper-parameters) and build
    ``self.backbone``, their heads and ``self.loss_fn``; they implement
    ``training_step``. After each call, ``last_outputs`` holds detached
    backbone features (``feats``) and embeddings (``z``) of the first view for
    the online probe and collapse diagnostics, at no extra forward cost.

    ``num_views`` is how many augmented views ``training_step`` takes: 2 for
    joint-embedding methods, 1 for pretext-task methods (RotNet, Jigsaw,
    CPC), which the trainer then augments with ``augment.view1`` only.
    Methods without an embedding head set ``self.projector = None``.
    """

    name: str = "base"
    DEFAULTS: Dict[str, Any] = {}
    HELP: Dict[str, str] = {}  # one line per DEFAULTS key: docs/config.md is generated from it
    num_views: int = 2

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.feat_dim: int = int(backbone.out_dim)
        self.last_outputs: Dict[str, torch.Tensor] = {}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (what linear probes and kNN evaluate)."""
        return self.backbone(x)

    def project(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(features, embeddings)`` of a batch."""
        h = self.encode(x)
        return h, self.project(h)

    def compute_loss(self, z: List[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Loss from the per-view embeddings; always evaluated in float32."""
        loss = self.loss_fn(z[0].float(), z[1].float())
        return loss, dict(getattr(self.loss_fn, "last_terms", {}) or {})

    def training_step(self, views: List[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Forward both views, return ``(loss, terms)``; ``terms`` are detached scalars."""
        if not isinstance(views, (list, tuple)) or len(views) != 2:
            raise ValueError(
                f"views: expected a list of 2 batches, got {type(views).__name__} of "
                f"length {len(views) if hasattr(views, '__len__') else '?'}"
            )
        hs, zs = [], []
        for v in views:
            # Views go through separately so BatchNorm statistics are per view,
            # as in the reference VICReg/Barlow Twins implementations.
            h, z = self.embed(v)
            hs.append(h)
            zs.append(z)
        device_type = zs[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            loss, terms = self.compute_loss(zs)
        self.last_outputs = {"feats": hs[0].detach(), "z": zs[0].detach()}
        terms = {
            k: (v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))) for k, v in terms.items()
        }
        return loss, terms

    def forward(self, views: List[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``training_step``: the trainer calls the method through ``forward`` so
        that a ``DistributedDataParallel`` wrapper sees the step and syncs gradients."""
        return self.training_step(views)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Hook run after every optimizer step (EMA targets, schedules...)."""
