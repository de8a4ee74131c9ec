"""Datasets held in memory as uint8 tensors, and batched two-view augmentation."""

from .augment import DATASET_STATS, TwoViewAugment, ViewAugment, prepare_eval
from .datasets import DatasetError, ImageDataset, atomic_save, load_cifar, load_fashion_mnist, load_image_folder
from .factory import DATASETS, build_dataset, synthetic_dataset
from .imagenette import load_imagenette
from .ranks import first_on_local_rank_zero

__all__ = [
    "DATASET_STATS",
    "TwoViewAugment",
    "ViewAugment",
    "prepare_eval",
    "DATASETS",
    "DatasetError",
    "first_on_local_rank_zero",
    "ImageDataset",
    "atomic_save",
    "build_dataset",
    "load_cifar",
    "load_fashion_mnist",
    "load_image_folder",
    "load_imagenette",
    "synthetic_dataset",
]
