"""Per-image PIL transforms for streamed (large) datasets, implemented with
Pillow/numpy only.

Random choices use torch's global RNG, which ``torch.utils.data.DataLoader``
seeds differently in every worker (reproducible when the DataLoader gets a
seeded ``generator``).  ``ToTensor`` ends a pipeline with float (3, H, W) in [0, 1].
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .augment import to_float
from .pixels import to_rgb

__all__ = [
    "Compose",
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "ResizeShorter",
    "CenterCrop",
    "ToTensor",
    "random_resized_crop_box",
]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


def _uniform(a: float, b: float) -> float:
    return a + (b - a) * float(torch.rand(()))


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Sample a crop box (left, top, right, bottom) covering a random fraction in
    ``scale`` of the area with aspect ratio (w/h) log-uniform in ``ratio``; after
    10 failed tries, the largest centred box with aspect ratio clamped to ``ratio``
    (the Inception / torchvision rule)."""
    area = width * height
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(*scale)
        aspect = math.exp(_uniform(lo, hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, ()))
            left = int(torch.randint(0, width - w + 1, ()))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class RandomResizedCrop:
    """PIL image -> PIL image (size x size): random area/aspect crop, bilinear resize."""

    def __init__(self, size: int = 224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)

    def __call__(self, img: Image.Image) -> Image.Image:
        box = random_resized_crop_box(img.width, img.height, self.scale, self.ratio)
        return img.resize((self.size, self.size), Image.BILINEAR, box=box)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """PIL image -> PIL image, mirrored with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if float(torch.rand(())) < self.p:
            return img.transpose(Image.FLIP_LEFT_RIGHT)
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ResizeShorter:
    """PIL image -> PIL image whose shorter side is ``size`` (aspect kept, bilinear)."""

    def __init__(self, size: int = 256) -> None:
        self.size = int(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w <= h:
            nw, nh = self.size, max(1, int(self.size * h / w))
        else:
            nw, nh = max(1, int(self.size * w / h)), self.size
        if (nw, nh) == (w, h):
            return img
        return img.resize((nw, nh), Image.BILINEAR)

    def __repr__(self) -> str:
        return f"ResizeShorter({self.size})"


class CenterCrop:
    """PIL image -> PIL image (size x size) from the centre; zero-padded if smaller."""

    def __init__(self, size: int = 224) -> None:
        self.size = int(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        s = self.size
        w, h = img.size
        if w < s or h < s:
            canvas = Image.new(img.mode, (max(w, s), max(h, s)))
            canvas.paste(img, ((max(w, s) - w) // 2, (max(h, s) - h) // 2))
            img, (w, h) = canvas, canvas.size
        left = int(round((w - s) / 2.0))
        top = int(round((h - s) / 2.0))
        return img.crop((left, top, left + s, top + s))

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class ToTensor:
    """PIL image (any mode, made RGB by :func:`gradmask.data.pixels.to_rgb`) -> float (3, H, W) in
    [0, 1] (or uint8 (3, H, W) with ``uint8=True``, a quarter of the bytes to ship; convert on the
    device with ``augment.to_float``)."""

    def __init__(self, uint8: bool = False) -> None:
        self.uint8 = uint8

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(to_rgb(img, getattr(img, "filename", "") or "image"), dtype=np.uint8)
        t = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        return t if self.uint8 else to_float(t)

    def __repr__(self) -> str:
        return f"ToTensor(uint8={self.uint8})"
