"""The evaluation images of a split, shared by every robustness measurement and ``reproduce``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..data import (
    SYNTHETIC_DATA_SEED,
    TensorLoader,
    dataset_spec,
    eval_transform,
    load_dataset,
    load_eval_split,
    make_imagenet_loader,
    match_classes,
    render_options,
    to_float,
)
from ..data.dataset import SUBSET_SEED, subset_index


class _Streamed:
    """Batches of a streamed (ImageNet) loader as float images, at most ``limit`` images."""

    def __init__(self, loader, limit: Optional[int]):
        self.loader, self.limit = loader, limit

    def __iter__(self):
        seen = 0
        for x, y in self.loader:
            if self.limit is not None:
                if seen >= self.limit:
                    break
                x, y = x[: self.limit - seen], y[: self.limit - seen]
            seen += y.shape[0]
            yield to_float(x), y


def training_classes(dataset: str, root, **decode) -> Optional[list[str]]:
    """The class names of the training split of ``dataset`` at ``root`` (the label order of a
    model trained on it), for runs whose checkpoint does not record them; None for synthetic.
    ``decode``: options of the loader (``image_size``) where the split must be decoded."""
    spec = dataset_spec(dataset)
    if spec.rendered:
        return None
    classes = spec.train_classes(Path(root)) if spec.train_classes is not None else None
    return classes if classes is not None else load_dataset(dataset, root=root, split="train", **decode).classes


def evaluation_loader(dataset: str, root, split: str, limit: Optional[int], config, batch_size: int,
                      device: torch.device, classes: Optional[Sequence[str]] = None,
                      image_size: Optional[int] = None, model: Optional[str] = None):
    """``(loader, n_images, source)``: batches of ``(images in [0, 1], labels)`` of ``split``.

    ``limit``: a fixed random subset of that many images (seed :data:`SUBSET_SEED`, the same for
    every caller); in-memory datasets come as a :class:`~gradmask.data.TensorLoader` on ``device``,
    ImageNet streams. ``config`` (a TrainConfig) gives the synthetic set sizes and clutter, the worker count and
    ``image_size``. Labels are the indices of ``classes`` (the training split's class names, from
    the checkpoint; None: read from the data's training split, or unchecked for synthetic data),
    matched by name for every dataset: a class unknown to the model raises ``ValueError`` naming
    both lists (and ``model``, the run evaluated). ``image_size``: the side to evaluate at (None: the
    training side: ``config.image_size`` for folder data, the dataset's own size otherwise);
    CIFAR's python release has a fixed 32 px."""
    spec = dataset_spec(dataset)
    size = image_size if image_size is not None else (config.image_size if spec.resizable else None)
    if spec.fixed_size and size is not None:
        if size != spec.image_size:
            raise ValueError(f"{dataset} images are {spec.image_size} px (the models trained on them too); "
                             f"image size {size} does not apply")
        size = None
    decode = {} if size is None else {"image_size": size}
    if classes is None and split != "train":
        classes = training_classes(dataset, root, **decode)
    if spec.streamed:
        split = spec.test_splits[0] if split == "test" else split
        transform = eval_transform(uint8=True) if size is None else eval_transform(round(size * 256 / 224), size,
                                                                                   uint8=True)
        loader = make_imagenet_loader(root, split, batch_size, train=True, drop_last=False, seed=SUBSET_SEED,
                                      transform=transform, num_workers=config.num_workers,
                                      uint8=True, classes=classes)  # train=True: shuffled, evaluation transform
        n = len(loader.dataset) if limit is None else min(limit, len(loader.dataset))
        return _Streamed(loader, limit), n, str(root)
    if spec.rendered:
        default = config.synthetic_test if split == "test" else config.synthetic_train
        n = default if limit is None else limit
        ds = load_dataset(dataset, root=root, split=split, n=n, seed=SYNTHETIC_DATA_SEED,
                          **render_options(config, dataset), **decode)
        if classes is not None:
            ds = match_classes(ds, classes, model or "the model")[0]
        images, labels, source = ds.images, ds.labels, f"rendered {dataset} data"
    else:
        if split == "test":
            ds = load_eval_split(dataset, root=root, **decode)  # folder: "val" if the tree has no test/
        else:
            ds = load_dataset(dataset, root=root, split=split, **decode)
        if classes is not None:
            ds = match_classes(ds, classes, model)[0]
        images, labels, source = ds.images, ds.labels, str(root)
        index = subset_index(images.shape[0], limit, SUBSET_SEED)
        if index is not None:
            images, labels = images[index], labels[index]
    loader = TensorLoader(images, labels, batch_size, shuffle=False, device=device)
    return loader, int(images.shape[0]), source


__all__ = ["evaluation_loader", "training_classes"]
