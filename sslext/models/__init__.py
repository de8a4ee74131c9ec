"""Backbones (CIFAR-stem ResNets) and projection/prediction heads."""
from .heads import MLP, PredictorHead, TiCoHead, build_projector
from .resnet import BACKBONES, build_backbone

__all__ = ["MLP", "PredictorHead", "TiCoHead", "build_projector", "BACKBONES", "build_backbone"]
