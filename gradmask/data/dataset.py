"""The in-memory dataset record returned by :func:`gradmask.data.load_dataset`.

Shapes: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,),
``boxes`` optional int64 (N, 4) as (x0, y0, x1, y1) in pixels, x1/y1 exclusive.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch

__all__ = ["ImageDataset", "SUBSET_SEED", "class_mapping", "match_classes", "subset_index"]


@dataclass
class ImageDataset:
    """A small image dataset held entirely in memory.

    images:  uint8 (N, 3, H, W), values 0..255 (convert with ``augment.to_float``).
    labels:  int64 (N,), values in ``range(len(classes))``.
    classes: class names, index = label.
    boxes:   optional int64 (N, 4) object boxes (x0, y0, x1, y1), x1/y1 exclusive.
    name/split/source: provenance, informational only.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    boxes: Optional[torch.Tensor] = None
    name: str = ""
    split: str = ""
    source: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        what = f"dataset {self.name!r} split {self.split!r}" if self.name else "ImageDataset"
        im, lb = self.images, self.labels
        if not isinstance(im, torch.Tensor) or im.dtype != torch.uint8 or im.dim() != 4 or im.shape[1] != 3:
            raise ValueError(
                f"{what}: images must be a uint8 tensor of shape (N, 3, H, W), got "
                f"{getattr(im, 'dtype', type(im))} {tuple(getattr(im, 'shape', ()))}"
            )
        if not isinstance(lb, torch.Tensor) or lb.dtype != torch.int64 or lb.shape != (im.shape[0],):
            raise ValueError(
                f"{what}: labels must be an int64 tensor of shape ({im.shape[0]},), got "
                f"{getattr(lb, 'dtype', type(lb))} {tuple(getattr(lb, 'shape', ()))}"
            )
        if lb.numel() and (int(lb.min()) < 0 or int(lb.max()) >= len(self.classes)):
            raise ValueError(
                f"{what}: labels must lie in [0, {len(self.classes)}), got range "
                f"[{int(lb.min())}, {int(lb.max())}]"
            )
        if self.boxes is not None:
            bx = self.boxes
            if bx.dtype != torch.int64 or bx.shape != (im.shape[0], 4):
                raise ValueError(
                    f"{what}: boxes must be int64 of shape ({im.shape[0]}, 4), got "
                    f"{bx.dtype} {tuple(bx.shape)}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, index: torch.Tensor | slice) -> "ImageDataset":
        """A new ImageDataset with the selected samples (tensors indexed, not copied for slices)."""
        return ImageDataset(
            images=self.images[index],
            labels=self.labels[index],
            classes=list(self.classes),
            boxes=None if self.boxes is None else self.boxes[index],
            name=self.name,
            split=self.split,
            source=self.source,
        )


#: Seed of :func:`subset_index`: a limited evaluation/training set is the same in every run.
SUBSET_SEED = 0


def subset_index(n: int, limit: Optional[int], seed: int = SUBSET_SEED) -> Optional[torch.Tensor]:
    """Sorted int64 indices of ``limit`` of ``n`` samples drawn at random with the fixed ``seed``
    (the same for every caller and run; files are stored class by class, so the first ``limit``
    would hold only a few classes), or None when ``limit`` is None or ``>= n`` (keep all)."""
    if limit is None or limit >= n:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:limit].sort().values


def _names(classes: Sequence[str]) -> str:
    return f"{list(classes)[:20]}{' ...' if len(classes) > 20 else ''}"


def class_mapping(split_classes: Sequence[str], classes: Sequence[str], where: str,
                  model: Optional[str] = None) -> tuple[list[int], list[str]]:
    """``(index, missing)``: ``index[k]`` is the position in ``classes`` (the training split's class
    list) of ``split_classes[k]``, matched by name; ``missing`` the names of ``classes`` the split
    lacks. A class of the split unknown to ``classes`` raises ``ValueError`` naming it, both lists
    and ``where`` (and ``model``, the trained model being evaluated, when given)."""
    position = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in split_classes if c not in position]
    if unknown and model is not None:
        raise ValueError(f"{where} does not match {model}: the data's classes {_names(split_classes)} include "
                         f"{_names(unknown)}, which the model was not trained on (its classes: {_names(classes)}); "
                         f"evaluate it on data of its own classes")
    if unknown:
        raise ValueError(f"{where} has class(es) {unknown} that the training split does not have (its classes: "
                         f"{_names(classes)}; the split's: {_names(split_classes)}); a model cannot be scored "
                         f"on classes it was not trained on: remove those folders or add them to the training split")
    present = set(split_classes)
    return [position[c] for c in split_classes], [c for c in classes if c not in present]


def match_classes(ds: ImageDataset, classes: Sequence[str], model: Optional[str] = None
                  ) -> tuple[ImageDataset, list[str]]:
    """``(ds relabelled with the indices of classes, missing)``: every label of ``ds`` becomes the
    index of its class name in ``classes`` (the training split's list), so that splits whose own
    sorted class lists differ (a class absent from one of them) agree; ``missing`` lists the
    ``classes`` without images in ``ds``. Unknown classes raise ``ValueError`` (see
    :func:`class_mapping`; ``model``: the trained model being evaluated, named in it)."""
    where = f"split {ds.split!r} of {ds.source or ds.name or 'the dataset'}"
    index, missing = class_mapping(list(ds.classes), list(classes), where, model)
    if list(ds.classes) == list(classes):
        return ds, missing
    labels = torch.tensor(index, dtype=torch.int64)[ds.labels] if len(ds) else ds.labels
    return replace(ds, labels=labels, classes=list(classes)), missing
