"""The training and test data of a run, as device-side batches of images in [0, 1].

Small datasets (synthetic, CIFAR, ImageFolder trees decoded to memory) sit whole on the device as
uint8 and are served by :class:`gradmask.data.TensorLoader` with batched crop + flip there;
ImageNet streams through :func:`gradmask.data.make_imagenet_loader` worker processes (uint8
batches, converted on the device). Under ``torch.distributed`` every process gets a disjoint
shard of each epoch's permutation; the test set is sharded too, and :meth:`RunData.test_batches`
marks the padding samples that the shards repeat so that every test image counts once.
"""
from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from ..data import (
    SYNTHETIC_DATA_SEED,
    RandomCropFlip,
    TensorLoader,
    dataset_spec,
    eval_transform,
    load_dataset,
    load_eval_split,
    make_imagenet_loader,
    match_classes,
    render_options,
    subset_index,
    to_float,
)
from .augment import Augment
from .config import TrainConfig

_CROP_PADDING = 4
VALIDATION_SEED = 1  # the validation split is the same in every run (any seed, any variant)


@dataclass
class RunData:
    """``train`` / ``test``: a TensorLoader or a DataLoader; sizes are images per epoch over all
    processes (``train_size`` after ``train_limit``); ``mean`` / ``std`` the model's
    normalisation; ``image_size`` the side of the training images. ``eval_split`` names what
    ``test`` holds: ``"test"``, or ``"val"`` (the validation split of ``val_fraction``)."""

    train: object
    test: object
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple
    train_size: int
    test_size: int
    device: torch.device
    rank: int = 0
    world_size: int = 1
    streamed: bool = False
    train_steps: int = 0  # batches per epoch on each process
    classes: tuple = ()  # the training split's class names, in label order
    eval_split: str = "test"
    # the fixed subset of training images evaluated after every epoch without augmentation
    # (``train_eval_images``; 0: none, e.g. a streamed dataset)
    train_eval: object = None
    train_eval_size: int = 0

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.train, TensorLoader):
            self.train.set_epoch(epoch)
        elif getattr(self.train, "sampler", None) is not None and hasattr(self.train.sampler, "set_epoch"):
            self.train.sampler.set_epoch(epoch)

    def train_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's training batches of the current epoch, on the device."""
        if not self.streamed:
            yield from self.train
            return
        for step, (x, y) in enumerate(self.train):
            if step >= self.train_steps:
                break
            yield (to_float(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True))

    def test_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
        """``(images, labels, valid)``: ``valid`` bool (B,) is False on the samples that pad this
        process's shard (or lie beyond ``test_limit``), None when every sample counts."""
        return self._eval_batches(self.test, self.test_size)

    def train_eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
        """The fixed training subset's ``(images, labels, valid)`` as :meth:`test_batches` gives the test's."""
        return self._eval_batches(self.train_eval, self.train_eval_size)

    def _eval_batches(self, loader, size: int):
        seen = 0  # samples of this process so far: sample k sits at position rank + k * world_size
        for x, y in loader:
            b = y.shape[0]
            positions = self.rank + self.world_size * (seen + torch.arange(b))
            seen += b
            valid = positions < size
            if not bool(valid.any()):
                break
            if self.streamed:
                x, y = to_float(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)
            yield x, y, (None if bool(valid.all()) else valid.to(y.device))

    def loader_state(self) -> dict:
        """What the loader needs to continue exactly: TensorLoader permutations and augmentation
        streams derive from (seed, epoch); a single-process DataLoader draws from its generator."""
        state = {"epoch": getattr(self.train, "epoch", None)}
        gen = getattr(self.train, "generator", None)
        if isinstance(gen, torch.Generator):
            state["generator"] = gen.get_state()
        return state

    def load_loader_state(self, state: dict) -> None:
        gen = getattr(self.train, "generator", None)
        if isinstance(gen, torch.Generator) and state.get("generator") is not None:
            gen.set_state(state["generator"])


def _channel_stats(images: torch.Tensor, max_images: int = 10000) -> tuple[tuple, tuple]:
    """Per-channel mean and std in [0, 1] of uint8 images (an even subsample of at most
    ``max_images``), for datasets without published statistics."""
    step = max(1, images.shape[0] // max_images)
    sample = images[::step][:max_images].to(torch.float64).div_(255.0)
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def _small_splits(config: TrainConfig):
    """``(train, test)`` datasets; ``test`` is None when a validation split replaces it (the test
    split is then not read at all)."""
    spec = dataset_spec(config.dataset)
    decode = {"image_size": config.image_size} if config.image_size is not None else {}  # resizable only
    if spec.rendered:  # the first n images of a fixed sequence, sized by the run's synthetic_* fields
        n_train = min(config.synthetic_train, config.train_limit or config.synthetic_train)
        if config.val_fraction:  # render enough that train_limit images remain besides the validation split
            n_train = min(config.synthetic_train, math.ceil(n_train / (1.0 - config.val_fraction)))
        n_test = min(config.synthetic_test, config.test_limit or config.synthetic_test)
        options = dict(root=config.data, seed=SYNTHETIC_DATA_SEED, **render_options(config), **decode)
        train = load_dataset(config.dataset, split="train", n=n_train, **options)
        if config.val_fraction:
            return train, None
        return train, load_dataset(config.dataset, split="test", n=n_test, **options)
    train = load_dataset(config.dataset, root=config.data, split="train", **decode)
    if config.val_fraction:
        return train, None
    return train, load_eval_split(config.dataset, root=config.data, **decode)  # folder: "val" if no test/


def random_subset(images: torch.Tensor, labels: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``limit`` images drawn at random with a fixed seed (:func:`gradmask.data.subset_index`),
    the same for every run and seed."""
    index = subset_index(len(labels), limit)
    if index is None:
        return images, labels
    return images[index], labels[index]


@functools.lru_cache(maxsize=16)
def validation_split(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_index, val_index)`` of ``n`` training images: ``round(fraction * n)`` (at least
    one) drawn at random with the fixed :data:`VALIDATION_SEED` for validation, the rest for
    training; sorted int64, disjoint, together ``range(n)``. The same for every run, seed and
    variant, and drawn once per process (cached; do not modify the returned tensors)."""
    if not 0.0 < fraction < 1.0 or n < 2:
        raise ValueError(f"validation_split needs 0 < fraction < 1 and n >= 2, got fraction {fraction!r}, n {n}")
    n_val = min(max(1, round(fraction * n)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    return order[n_val:].sort().values, order[:n_val].sort().values


def build_data(config: TrainConfig, augment: Augment, device: torch.device, rank: int = 0,
               world_size: int = 1) -> RunData:
    """The run's data on ``device``; ``config.batch_size`` is split over ``world_size``."""
    if config.batch_size % world_size:
        raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the number of "
                         f"processes ({world_size})")
    batch = config.batch_size // world_size
    eval_batch = max(2 * batch, 256)
    spec = dataset_spec(config.dataset)
    if spec.streamed:
        return _build_imagenet(config, augment, device, rank, world_size, batch, eval_batch)

    train_ds, test_ds = _small_splits(config)
    if test_ds is not None:  # labelled by the training split's class indices, matched by name
        test_ds, missing = match_classes(test_ds, train_ds.classes)
        if missing and rank == 0:
            print(f"note: the {test_ds.split} split of {config.data} has no images of the training class(es) "
                  f"{missing}; it is scored on the other {len(train_ds.classes) - len(missing)} classes",
                  file=sys.stderr)
    if test_ds is not None and train_ds.images.shape[1:] != test_ds.images.shape[1:]:
        raise ValueError(f"train and test images of {config.dataset!r} differ in shape: "
                         f"{tuple(train_ds.images.shape[1:])} vs {tuple(test_ds.images.shape[1:])}")
    num_classes = len(train_ds.classes)
    if spec.stats is None:  # no published statistics: measured on the training images
        mean, std = _channel_stats(train_ds.images)
    else:
        mean, std = tuple(spec.stats.mean), tuple(spec.stats.std)
    train_images, train_labels = train_ds.images, train_ds.labels
    eval_split = "test"
    if config.val_fraction:  # evaluate on a held-out share of the training images (test_limit unused)
        eval_split = "val"
        train_index, val_index = validation_split(len(train_labels), float(config.val_fraction))
        test_images, test_labels = train_images[val_index], train_labels[val_index]
        train_images, train_labels = train_images[train_index], train_labels[train_index]
    else:
        test_images, test_labels = test_ds.images, test_ds.labels
        if config.test_limit is not None:
            test_images, test_labels = random_subset(test_images, test_labels, config.test_limit)
    if config.train_limit is not None:
        train_images, train_labels = random_subset(train_images, train_labels, config.train_limit)
    image_size = int(train_images.shape[-1])
    loader_aug = None
    if augment.crop_flip:
        loader_aug = RandomCropFlip(padding=min(_CROP_PADDING, image_size - 1))
    train = TensorLoader(train_images, train_labels, batch, shuffle=True, augment=loader_aug,
                         seed=config.seed, rank=rank, world_size=world_size, device=device)
    test = TensorLoader(test_images, test_labels, eval_batch, shuffle=False, rank=rank,
                        world_size=world_size, device=device)
    train_eval, train_eval_size = None, 0
    if config.train_eval_images:  # the same draw in every run of the same training images
        fit_images, fit_labels = random_subset(train_images, train_labels, config.train_eval_images)
        train_eval = TensorLoader(fit_images, fit_labels, eval_batch, shuffle=False, rank=rank,
                                  world_size=world_size, device=device)
        train_eval_size = int(fit_labels.shape[0])
    return RunData(train, test, num_classes, image_size, mean, std, train_size=int(train_images.shape[0]),
                   test_size=int(test_images.shape[0]), device=device, rank=rank, world_size=world_size,
                   streamed=False, classes=tuple(train_ds.classes), train_steps=len(train), eval_split=eval_split,
                   train_eval=train_eval, train_eval_size=train_eval_size)


def _build_imagenet(config, augment, device, rank, world_size, batch, eval_batch) -> RunData:
    distributed = world_size > 1
    common = dict(num_workers=config.num_workers, distributed=distributed, rank=rank if distributed else None,
                  world_size=world_size if distributed else None, seed=config.seed, uint8=True)
    transform = None if augment.crop_flip else eval_transform(uint8=True)
    train = make_imagenet_loader(config.data, "train", batch, train=True, transform=transform, **common)
    test = make_imagenet_loader(config.data, "val", eval_batch, train=False, classes=train.dataset.classes,
                                **common)
    if test.dataset.missing_classes and rank == 0:
        print(f"note: the val split of {config.data} has no images of the training class(es) "
              f"{test.dataset.missing_classes}; it is scored on the other classes", file=sys.stderr)
    n_train, n_test = len(train.dataset), len(test.dataset)
    if config.train_limit is not None:
        n_train = min(n_train, config.train_limit)
    if config.test_limit is not None:
        n_test = min(n_test, config.test_limit)
    # train_limit on a stream: a random ``train_limit`` images per epoch (the first batches)
    steps = min(len(train), max(1, math.ceil(n_train / (batch * world_size))))
    if steps < 1:  # the loader drops the last partial batch
        raise ValueError(f"the training split of {config.data} has {len(train.dataset)} training images, fewer "
                         f"than one batch (batch_size {config.batch_size} over {world_size} process(es); the last "
                         f"partial batch is dropped): lower batch_size or add images")
    spec = dataset_spec(config.dataset)
    return RunData(train, test, len(train.dataset.classes), spec.image_size, tuple(spec.stats.mean),
                   tuple(spec.stats.std),
                   train_size=n_train, test_size=n_test, device=device, rank=rank, world_size=world_size,
                   streamed=True, train_steps=steps, classes=tuple(train.dataset.classes))


__all__ = ["RunData", "VALIDATION_SEED", "build_data", "validation_split"]
