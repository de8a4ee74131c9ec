"""sslext: covariance-family self-supervised losses as fast, tested PyTorch ops.

>>> import sslext
>>> loss_fn = sslext.VICRegLoss()
>>> loss = loss_fn(z_a, z_b)          # (N, D) embeddings of two views

Public API: the loss modules below (the contrastive / asymmetric ones, plain
PyTorch, are in :mod:`sslext.contrastive`), :mod:`sslext.functional`, the low-level ops
in :mod:`sslext.ops`, the plain-PyTorch references in :mod:`sslext.reference`,
and :func:`build_info`.
"""

from __future__ import annotations

import json

import torch

from . import (  # noqa: F401
    _native,  # noqa: F401  (registers torch.ops.sslext.*: _C, or _C_emu)
    functional,
    ops,
    reference,
)
from .contrastive import BYOLLoss, InfoNCELoss, KeyQueue, NTXentLoss, SimSiamLoss
from .losses import BarlowTwinsLoss, TiCoLoss, VICRegLoss, VICRegTiCoLoss

__version__ = "0.1.0"

__all__ = [
    "VICRegLoss",
    "BarlowTwinsLoss",
    "TiCoLoss",
    "VICRegTiCoLoss",
    "NTXentLoss",
    "InfoNCELoss",
    "BYOLLoss",
    "SimSiamLoss",
    "KeyQueue",
    "functional",
    "ops",
    "reference",
    "build_info",
]


def build_info() -> dict:
    """How the loaded extension was built.

    Keys: ``with_cuda`` (CUDA kernels compiled in), ``cuda_archs`` (the
    TORCH_CUDA_ARCH_LIST they were compiled for), ``cuda_version`` (nvcc's),
    ``torch_version`` (the torch it was built against), plus the running
    ``torch_runtime_version`` and ``cuda_available`` (a GPU is usable now).
    """
    info = json.loads(torch.ops.sslext.build_info())
    info["torch_runtime_version"] = torch.__version__
    info["cuda_available"] = bool(info["with_cuda"] and torch.cuda.is_available())
    return info
