"""gradmask data layer.

Convention: pipelines yield float images in [0, 1], shape (N, 3, H, W), and
int64 labels; normalisation is the model's first layer (see ``DATASET_STATS``).

``load_dataset(name, root=None, split="train", cache_dir=None, **kw)`` returns
an in-memory :class:`ImageDataset` (images uint8 (N,3,H,W), labels int64 (N,),
classes, optional boxes int64 (N,4)) for the names in ``DATASETS``
(``load_test_split``: "test", else "val" when the data has no test split).  Feed it to
:class:`TensorLoader`.  Large datasets (ImageNet) stream through
:func:`make_imagenet_loader` instead.

Modules: dataset (ImageDataset), synthetic, cifar, placed (CIFAR-10 objects placed on backgrounds,
with boxes), folder, cache, augment, loader, transforms (PIL), imagenet; registry (DatasetSpec: one
per dataset, registered by its module).
"""
from __future__ import annotations

import os
from typing import Sequence

from .augment import RandomCropFlip, crop_flip, random_crop_flip, sample_crop_flip, to_float
from .cache import default_cache_dir
from .cifar import read_cifar
from .dataset import SUBSET_SEED, ImageDataset, class_mapping, match_classes, subset_index
from .folder import MissingSplitError, decode_image_folder, load_image_folder
from .imagenet import ImageFolderDataset, eval_transform, make_imagenet_loader, train_transform
from .loader import TensorLoader
from .placed import PLACED, make_placed, place_objects
from .registry import (
    DATASET_STATS,
    DATASETS,
    DatasetSpec,
    Stats,
    dataset_spec,
    dataset_stats,
    register_dataset,
    render_options,
)
from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_DATA_SEED, make_synthetic, render_synthetic

__all__ = [
    "ImageDataset",
    "TensorLoader",
    "RandomCropFlip",
    "random_crop_flip",
    "crop_flip",
    "sample_crop_flip",
    "to_float",
    "load_dataset",
    "load_test_split",
    "MissingSplitError",
    "subset_index",
    "SUBSET_SEED",
    "class_mapping",
    "match_classes",
    "register_dataset",
    "DatasetSpec",
    "dataset_spec",
    "load_eval_split",
    "DATASETS",
    "DATASET_STATS",
    "Stats",
    "dataset_stats",
    "default_cache_dir",
    "make_synthetic",
    "render_synthetic",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_DATA_SEED",
    "render_options",
    "PLACED",
    "make_placed",
    "place_objects",
    "read_cifar",
    "load_image_folder",
    "decode_image_folder",
    "ImageFolderDataset",
    "make_imagenet_loader",
    "train_transform",
    "eval_transform",
]


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    **kw,
) -> ImageDataset:
    """Load dataset ``name`` (an in-memory one of ``DATASETS``: "synthetic", "cifar10",
    "cifar100", "folder", ...) -> ImageDataset with images uint8 (N,3,H,W), labels int64 (N,).

    ``root``: dataset path (not used by "synthetic"); ``cache_dir``: decoded-image
    cache (default $GRADMASK_CACHE or ~/.cache/gradmask); ``kw`` go to the loader.
    """
    spec = dataset_spec(name)
    if spec.load is None:
        raise ValueError(f"dataset {name!r} is streamed (make_imagenet_loader), not loaded into memory")
    return spec.load(root=root, split=split, cache_dir=cache_dir, **kw)


def load_test_split(
    name: str,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    **kw,
) -> ImageDataset:
    """The test split of ``name`` (:func:`load_eval_split`: e.g. "val" where an ImageFolder tree
    has no test/); the returned dataset's ``split`` says which one was loaded. ``classes``
    (the training split's class list): labels are matched to it by name
    (:func:`match_classes`; a class unknown to it raises ``ValueError``)."""
    ds = load_eval_split(name, root=root, cache_dir=cache_dir, **kw)
    return ds if classes is None else match_classes(ds, classes)[0]


def load_eval_split(name: str, root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                    **kw) -> ImageDataset:
    """The test split of dataset ``name`` by its rule: the first of its spec's ``test_splits``
    that the data has (:class:`MissingSplitError` moves on to the next)."""
    *fallbacks, last = dataset_spec(name).test_splits
    for split in fallbacks:
        try:
            return load_dataset(name, root=root, split=split, cache_dir=cache_dir, **kw)
        except MissingSplitError:
            pass
    return load_dataset(name, root=root, split=last, cache_dir=cache_dir, **kw)
