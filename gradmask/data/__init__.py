"""gradmask data layer.

Convention: pipelines yield float images in [0, 1], shape (N, 3, H, W), and
int64 labels; normalisation is the model's first layer (see ``DATASET_STATS``).

``load_dataset(name, root=None, split="train", cache_dir=None, **kw)`` returns
an in-memory :class:`ImageDataset` (images uint8 (N,3,H,W), labels int64 (N,),
classes, optional boxes int64 (N,4)) for the names in ``DATASETS``
(``load_test_split``: "test", else "val" when the data has no test split).  Feed it to
:class:`TensorLoader`.  Large datasets (ImageNet) stream through
:func:`make_imagenet_loader` instead.

Modules: dataset (ImageDataset), synthetic, cifar, folder, cache, augment,
loader, transforms (PIL), imagenet.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from .augment import RandomCropFlip, crop_flip, random_crop_flip, sample_crop_flip, to_float
from .cache import default_cache_dir
from .cifar import CIFAR_LAYOUTS, find_cifar_root, is_cifar_archive, read_cifar
from .dataset import SUBSET_SEED, ImageDataset, class_mapping, match_classes, subset_index
from .folder import MissingSplitError, decode_image_folder, is_archive, load_image_folder
from .imagenet import ImageFolderDataset, eval_transform, make_imagenet_loader, train_transform
from .loader import TensorLoader
from .synthetic import SYNTHETIC_CLASSES, make_synthetic, render_synthetic

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
    "DATASETS",
    "DATASET_STATS",
    "Stats",
    "dataset_stats",
    "default_cache_dir",
    "make_synthetic",
    "render_synthetic",
    "SYNTHETIC_CLASSES",
    "read_cifar",
    "load_image_folder",
    "decode_image_folder",
    "ImageFolderDataset",
    "make_imagenet_loader",
    "train_transform",
    "eval_transform",
]


class Stats(NamedTuple):
    """Per-channel (R, G, B) mean and std of images in [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


#: Normalisation statistics for the models' first layer, by dataset name.
DATASET_STATS: dict[str, Stats] = {
    "cifar10": Stats((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Stats((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": Stats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # measured on make_synthetic(20000, seed=0, clutter=1.0); depends little on seed
    "synthetic": Stats((0.4992, 0.4998, 0.4998), (0.2155, 0.2155, 0.2154)),
}


def dataset_stats(name: str) -> Stats:
    """``DATASET_STATS[name]`` with an error listing the known names."""
    try:
        return DATASET_STATS[name]
    except KeyError:
        raise KeyError(f"no normalisation stats for dataset {name!r}; known: {sorted(DATASET_STATS)}") from None


Loader = Callable[..., ImageDataset]
#: name -> loader(root, split, cache_dir, **kw) -> ImageDataset
DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator adding ``fn(root, split, cache_dir, **kw) -> ImageDataset`` to DATASETS."""

    def deco(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return deco


def _need_root(name: str, root) -> Path:
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=<path> (a directory or archive)")
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dataset path {root} for {name!r} does not exist")
    return root


@register_dataset("synthetic")
def _load_synthetic(root=None, split="train", cache_dir=None, **kw) -> ImageDataset:
    """kw: n, image_size, num_classes, seed, clutter (see make_synthetic). Not cached:
    rendering is fast and deterministic."""
    return make_synthetic(split=split, **kw)


@register_dataset("folder")
def _load_folder(root=None, split="train", cache_dir=None, **kw) -> ImageDataset:
    """kw: name, use_cache, image_size, num_workers (see load_image_folder)."""
    return load_image_folder(_need_root("folder", root), split, cache_dir=cache_dir, **kw)


def _load_cifar(variant: str, root=None, split="train", cache_dir=None, label_mode: str = "fine",
                **kw) -> ImageDataset:
    """root: the python release folder, its parent, or its .tar.gz -- read directly;
    or an ImageFolder directory / archive -- decoded through the cache (kw: use_cache,
    num_workers, image_size)."""
    root = _need_root(variant, root)
    lay = CIFAR_LAYOUTS[variant]
    if (root.is_dir() and find_cifar_root(root, variant) is not None) or (
        root.is_file() and is_cifar_archive(root, variant)
    ):
        if kw:
            raise TypeError(f"unexpected options for the {variant} python release: {sorted(kw)}")
        images, labels, classes = read_cifar(root, variant, split, label_mode)
        return ImageDataset(images, labels, classes, None, name=variant, split=split, source=str(root))
    if root.is_file() and not is_archive(root):
        raise ValueError(
            f"{root} is neither a {variant} python release ({lay['folder']}/ or its .tar.gz) "
            "nor an ImageFolder directory / .tar / .tar.gz"
        )
    try:
        ds = load_image_folder(root, split, name=variant, cache_dir=cache_dir, **kw)
    except ValueError as e:
        raise ValueError(
            f"{root} is not a {variant} python release (no {lay['meta']} in it or in {lay['folder']}/) "
            f"and not a usable ImageFolder tree: {e}"
        ) from e
    expected = lay["num_classes"][label_mode]
    if ds.num_classes != expected:
        raise ValueError(
            f"{variant} ImageFolder tree {root} split {split!r} has {ds.num_classes} class folders, "
            f"expected {expected}: {ds.classes[:12]}"
        )
    return ds


DATASETS["cifar10"] = functools.partial(_load_cifar, "cifar10")
DATASETS["cifar100"] = functools.partial(_load_cifar, "cifar100")


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    **kw,
) -> ImageDataset:
    """Load dataset ``name`` (one of ``DATASETS``: "synthetic", "cifar10", "cifar100",
    "folder") -> ImageDataset with images uint8 (N,3,H,W), labels int64 (N,).

    ``root``: dataset path (not used by "synthetic"); ``cache_dir``: decoded-image
    cache (default $GRADMASK_CACHE or ~/.cache/gradmask); ``kw`` go to the loader.
    """
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(DATASETS)}") from None
    return loader(root=root, split=split, cache_dir=cache_dir, **kw)


def load_test_split(
    name: str,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    **kw,
) -> ImageDataset:
    """``load_dataset(name, root, "test", ...)``, or the "val" split where the data has no
    test split (:class:`MissingSplitError`, e.g. an ImageFolder directory or archive with only
    train/ and val/). The returned dataset's ``split`` says which one was loaded. ``classes``
    (the training split's class list): labels are matched to it by name
    (:func:`match_classes`; a class unknown to it raises ``ValueError``)."""
    try:
        ds = load_dataset(name, root=root, split="test", cache_dir=cache_dir, **kw)
    except MissingSplitError:
        ds = load_dataset(name, root=root, split="val", cache_dir=cache_dir, **kw)
    return ds if classes is None else match_classes(ds, classes)[0]
