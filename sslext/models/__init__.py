"""Backbones (CIFAR-stem ResNets, timm models) and projection/prediction heads; a backbone's own file."""

from .heads import MLP, PredictorHead, TiCoHead, build_projector
from .io import BACKBONE_FORMAT, load_backbone
from .resnet import BACKBONES, build_backbone
from .timm_backbone import TIMM_PREFIX

__all__ = [
    "MLP",
    "PredictorHead",
    "TiCoHead",
    "build_projector",
    "BACKBONES",
    "build_backbone",
    "load_backbone",
    "BACKBONE_FORMAT",
    "TIMM_PREFIX",
]
