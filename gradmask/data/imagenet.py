"""Large ImageFolder datasets (ImageNet layout ``root/{train,val}/<wnid>/*.JPEG``)
streamed from disk through ``torch.utils.data.DataLoader`` worker processes.

The validation split must be in class folders like the training split (the
usual "valprep" reorganisation).  Samples are ``(float (3, S, S) in [0,1], int)``;
batches are ``(float (B, 3, S, S), int64 (B,))`` on the CPU (move them to the
device; with ``uint8=True`` they stay uint8 to cut the copy fourfold).
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .dataset import class_mapping
from .folder import scan_image_folder
from .pixels import to_rgb
from .registry import Stats, register_dataset
from .transforms import CenterCrop, Compose, RandomHorizontalFlip, RandomResizedCrop, ResizeShorter, ToTensor

__all__ = ["ImageFolderDataset", "train_transform", "eval_transform", "make_imagenet_loader"]


def train_transform(size: int = 224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), uint8: bool = False) -> Compose:
    """Random-resized-crop to ``size`` + horizontal flip + to tensor."""
    return Compose([RandomResizedCrop(size, scale, ratio), RandomHorizontalFlip(), ToTensor(uint8)])


def eval_transform(resize: int = 256, crop: int = 224, uint8: bool = False) -> Compose:
    """Shorter side to ``resize`` + centre crop ``crop`` + to tensor."""
    return Compose([ResizeShorter(resize), CenterCrop(crop), ToTensor(uint8)])


class ImageFolderDataset(Dataset):
    """Map-style dataset over ``root/<split>/<class>/<image>`` read lazily with Pillow.

    ``classes[label]`` is the class folder name (sorted order; or the given ``classes``, the
    training split's list, matched by name: a class folder unknown to it raises ValueError,
    ``missing_classes`` lists those without a folder here); ``samples`` lists (path, label).
    ``__getitem__`` -> (transform(RGB PIL image), label int); an undecodable file raises
    ValueError naming it.
    """

    def __init__(self, root: str | os.PathLike, split: Optional[str] = "train",
                 transform: Optional[Callable] = None, classes: Optional[Sequence[str]] = None) -> None:
        index = scan_image_folder(root, split)
        self.root, self.split, self.transform = str(root), split, transform
        self.location = index.location
        self.classes, labels, self.missing_classes = index.classes, index.labels, []
        if classes is not None:
            mapping, self.missing_classes = class_mapping(index.classes, list(classes), index.location)
            self.classes, labels = list(classes), [mapping[k] for k in index.labels]
        self.samples = list(zip(index.files, labels))
        self.targets = list(labels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                img = to_rgb(im, str(path))  # deeper than 8 bits: scaled, not clipped
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e
        if self.transform is not None:
            img = self.transform(img)
        return img, label


def make_imagenet_loader(
    root: str | os.PathLike,
    split: str = "train",
    batch_size: int = 256,
    *,
    train: Optional[bool] = None,
    image_size: int = 224,
    resize: int = 256,
    num_workers: int = 8,
    distributed: bool = False,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    seed: int = 0,
    drop_last: Optional[bool] = None,
    pin_memory: bool = True,
    uint8: bool = False,
    transform: Optional[Callable] = None,
    classes: Optional[Sequence[str]] = None,
) -> DataLoader:
    """DataLoader over a split. ``train`` (default: split == "train") picks the
    random-resized-crop + flip transform and shuffling; otherwise resize ``resize``
    + centre crop ``image_size``.  ``distributed``: a DistributedSampler (rank /
    world_size default to the initialised process group) -- call
    ``loader.sampler.set_epoch(e)`` every epoch.  Seeded by ``seed``.  ``classes``: label by
    this class list (the training split's), see :class:`ImageFolderDataset`."""
    train = (split == "train") if train is None else train
    if transform is None:
        transform = train_transform(image_size, uint8=uint8) if train else eval_transform(resize, image_size, uint8)
    ds = ImageFolderDataset(root, split, transform, classes)
    drop_last = train if drop_last is None else drop_last
    g = torch.Generator()
    g.manual_seed(seed)
    sampler = None
    if distributed:
        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                                     drop_last=drop_last)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        drop_last=drop_last,
        generator=g,
        persistent_workers=num_workers > 0,
    )


def _train_classes(root) -> list:
    return scan_image_folder(root, "train").classes


# streamed (make_imagenet_loader); its val/ split is the test split
register_dataset("imagenet", stats=Stats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), streamed=True,
                 test_splits=("val",), image_size=224, train_classes=_train_classes, num_classes=1000,
                 train_images=1281167)(None)
