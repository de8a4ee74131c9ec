"""Datasets held in memory as uint8 tensors, and batched two-view augmentation."""
from .augment import DATASET_STATS, TwoViewAugment, ViewAugment, prepare_eval
from .datasets import (DATASETS, DatasetError, ImageDataset, atomic_save, build_dataset, load_cifar,
                       load_fashion_mnist, load_image_folder, synthetic_dataset)

__all__ = ["DATASET_STATS", "TwoViewAugment", "ViewAugment", "prepare_eval", "DATASETS", "DatasetError",
           "ImageDataset", "atomic_save", "build_dataset", "load_cifar", "load_fashion_mnist",
           "load_image_folder", "synthetic_dataset"]
