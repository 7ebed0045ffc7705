"""Training augmentations by name (``TrainConfig.augment`` -> ``AUGMENTS``). An augmentation has two
parts, both optional:

- ``crop_flip``: the loader-level geometric augmentation (small datasets: batched random crop
  with 4-pixel zero padding + horizontal flip on the device, :class:`gradmask.data.RandomCropFlip`;
  streamed ImageNet: random-resized-crop + flip in the workers). Off: images as they are
  (ImageNet: the evaluation resize + centre crop).
- ``batch``: ``batch(images, labels, model) -> images``, applied to every training batch on the
  device after the loader (images float (N, 3, H, W) in [0, 1], labels int64 (N,), ``model`` the
  unwrapped model in train mode). It may use the global torch RNG (checkpointed, so resumption
  stays exact). The hook point for image-space augmentations that need the model.

Built in: ``crop-flip``, ``none`` and ``li-blur`` (Algorithm 2). Register another with
``@register_augment("name")`` on a factory ``(config) -> Augment``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..hooks import no_gradient_mask
from ..saliency.blur import LIBackgroundBlur

BatchAugment = Callable[[torch.Tensor, torch.Tensor, nn.Module], torch.Tensor]


@dataclass
class Augment:
    crop_flip: bool = True
    batch: Optional[BatchAugment] = None


#: name -> ``factory(config) -> Augment`` (``config`` a :class:`gradmask.train.TrainConfig`)
AUGMENTS: dict[str, Callable[[Any], Augment]] = {}


def register_augment(name: str):
    """Decorator: ``factory(config) -> Augment`` becomes ``TrainConfig(augment=name)``."""
    def deco(factory: Callable[[Any], Augment]):
        AUGMENTS[name] = factory
        return factory
    return deco


def augment_names() -> list[str]:
    """Every name ``TrainConfig.augment`` accepts."""
    return sorted(AUGMENTS)


def find_augment(name: str) -> Callable[[Any], Augment]:
    """The registered factory of ``name``; a ValueError naming the registered ones when unknown."""
    if name not in AUGMENTS:
        raise ValueError(f"augment must be one of {augment_names()}, got {name!r}")
    return AUGMENTS[name]


def build_augment(config) -> Augment:
    return find_augment(config.augment)(config)


@register_augment("crop-flip")
def _crop_flip(config) -> Augment:
    return Augment(crop_flip=True)


@register_augment("none")
def _none(config) -> Augment:
    return Augment(crop_flip=False)


@register_augment("li-blur")
def li_blur(config) -> Augment:
    """Crop-flip, then Algorithm 2 (:class:`gradmask.LIBackgroundBlur`, rate 0.5, quantile 0.5,
    blur sigma 2) with the model being trained and the run's LoG settings; the gradient mask is
    off while the LI map is computed (the map needs the plain gradient of the class score)."""
    settings = config.mask_settings
    blur = LIBackgroundBlur(sigma=settings.sigma, kernel_size=settings.kernel_size, kernel=settings.kernel,
                            padding=settings.padding)

    def batch(images: torch.Tensor, labels: torch.Tensor, model: nn.Module) -> torch.Tensor:
        with no_gradient_mask(model):
            return blur(images, labels, model=model)

    return Augment(crop_flip=True, batch=batch)


__all__ = ["AUGMENTS", "Augment", "BatchAugment", "augment_names", "build_augment", "find_augment", "li_blur",
           "register_augment"]
