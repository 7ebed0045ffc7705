"""The in-memory dataset record returned by :func:`gradmask.data.load_dataset`.

Shapes: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,),
``boxes`` optional int64 (N, 4) as (x0, y0, x1, y1) in pixels, x1/y1 exclusive.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

__all__ = ["ImageDataset", "SUBSET_SEED", "subset_index"]


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
