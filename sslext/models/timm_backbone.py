"""timm backbones: ``model.backbone: timm/<name>`` (optional: ``pip install 'sslext[timm]'``).

Any model of ``timm.list_models()`` is built with ``pretrained=False`` (nothing
is downloaded) and ``num_classes=0``, which leaves the pooled features that a
linear probe reads; their size is the model's own (``head_hidden_size``, else
``num_features``). timm models keep their own stem: ``model.cifar_stem`` does
not apply to them.

Small images: a model that takes an input size (ViTs and the other
patch-embedding models) is built for the crop size, with patches of 4 px up to
32 px crops and 8 px up to 64 px (a 32 px CIFAR image becomes 8 x 8 tokens,
as solo-learn's CIFAR ViTs do; the default 16 px patches would leave 2 x 2);
larger crops keep the model's patch size. A model that takes no input size
(ResNets, ConvNeXts) is built as is: its pooling makes any input size work.
"""

from __future__ import annotations

import difflib
from typing import Any, Dict, Optional

import torch.nn as nn

__all__ = ["TIMM_PREFIX", "is_timm_backbone", "small_image_kwargs", "build_timm_backbone"]

TIMM_PREFIX = "timm/"


def is_timm_backbone(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            "model.backbone: 'timm/...' backbones need the timm package: "
            "pip install 'sslext[timm]' (or pip install timm)"
        ) from e
    return timm


def small_image_kwargs(image_size: Optional[int]) -> Dict[str, int]:
    """The input-size arguments tried first for a model built for ``image_size`` px crops."""
    if image_size is None:
        return {}
    kw = {"img_size": int(image_size)}
    if image_size <= 32:
        kw["patch_size"] = 4
    elif image_size <= 64:
        kw["patch_size"] = 8
    return kw


def _create(timm, arch: str, kwargs: Dict[str, Any]) -> nn.Module:
    return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


def build_timm_backbone(
    name: str, image_size: Optional[int] = None, timm_kwargs: Optional[Dict[str, Any]] = None
) -> nn.Module:
    """A timm model as a backbone: ``.out_dim`` is its feature size, ``.timm_kwargs``
    the arguments it was built with (beyond ``pretrained=False, num_classes=0``).

    Args:
        name: ``"timm/<model name>"``.
        image_size: the crop size the model will see; see the module docstring.
        timm_kwargs: build with exactly these arguments instead (how
            :func:`sslext.models.load_backbone` rebuilds an exported backbone).
    """
    if not is_timm_backbone(name):
        raise ValueError(f"model.backbone: expected 'timm/<model name>', got {name!r}")
    timm = _import_timm()
    arch = name[len(TIMM_PREFIX) :]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ValueError(f"model.backbone: timm has no model {arch!r}{hint}; timm.list_models() lists them")
    kwargs = dict(timm_kwargs) if timm_kwargs is not None else small_image_kwargs(image_size)
    while True:
        try:
            net = _create(timm, arch, kwargs)
            break
        except TypeError as e:
            # The model's constructor does not take this input-size argument:
            # drop it (patch size first) and build the model as is.
            refused = [k for k in ("patch_size", "img_size") if k in kwargs and repr(k) in str(e)]
            if timm_kwargs is not None or not refused:
                raise ValueError(f"model.backbone: timm cannot build {arch!r} with {kwargs} ({e})") from e
            kwargs.pop(refused[0])
        except Exception as e:
            raise ValueError(
                f"model.backbone: timm cannot build {arch!r} with {kwargs} ({type(e).__name__}: {e})"
            ) from e
    net.out_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
    net.timm_kwargs = kwargs
    return net
