"""Training augmentations by name: ``TrainConfig.augment`` looks them up in ``AUGMENTS``.

An augmentation has two parts, both optional:

- ``crop_flip``: the loader-level geometric augmentation (small datasets: batched random crop
  with 4-pixel zero padding + horizontal flip on the device, :class:`gradmask.data.RandomCropFlip`;
  streamed ImageNet: random-resized-crop + flip in the workers). Off: images as they are
  (ImageNet: the evaluation resize + centre crop).
- ``batch``: ``batch(images, labels, model) -> images``, applied to every training batch on the
  device after the loader (images float (N, 3, H, W) in [0, 1], labels int64 (N,), ``model`` the
  unwrapped model in train mode). It may use the global torch RNG (checkpointed, so resumption
  stays exact). The hook point for image-space augmentations that need the model.

Register a new one with ``@register_augment("name")`` on a factory ``(config) -> Augment``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import TrainConfig

BatchAugment = Callable[[torch.Tensor, torch.Tensor, nn.Module], torch.Tensor]


@dataclass
class Augment:
    crop_flip: bool = True
    batch: Optional[BatchAugment] = None


AUGMENTS: dict[str, Callable[["TrainConfig"], Augment]] = {}


def register_augment(name: str):
    """Decorator: ``factory(config) -> Augment`` becomes ``TrainConfig(augment=name)``."""
    def deco(factory: Callable[["TrainConfig"], Augment]):
        AUGMENTS[name] = factory
        return factory
    return deco


@register_augment("crop-flip")
def _crop_flip(config: "TrainConfig") -> Augment:
    return Augment(crop_flip=True)


@register_augment("none")
def _none(config: "TrainConfig") -> Augment:
    return Augment(crop_flip=False)


@register_augment("li-blur")
def _li_blur(config: "TrainConfig") -> Augment:
    """Crop-flip, then Algorithm 2 (:class:`gradmask.LIBackgroundBlur`, rate 0.5, quantile 0.5,
    blur sigma 2) with the model being trained and the run's LoG settings; the gradient mask is
    off while the LI map is computed (the map needs the plain gradient of the class score)."""
    from ..hooks import no_gradient_mask
    from ..saliency import LIBackgroundBlur

    blur = LIBackgroundBlur(sigma=config.sigma, kernel_size=config.kernel_size, kernel=config.kernel,
                            padding=config.padding)

    def batch(images: torch.Tensor, labels: torch.Tensor, model: nn.Module) -> torch.Tensor:
        with no_gradient_mask(model):
            return blur(images, labels, model=model)

    return Augment(crop_flip=True, batch=batch)


def build_augment(config: "TrainConfig") -> Augment:
    try:
        factory = AUGMENTS[config.augment]
    except KeyError:
        raise ValueError(f"augment must be one of {sorted(AUGMENTS)}, got {config.augment!r}") from None
    return factory(config)


__all__ = ["AUGMENTS", "Augment", "BatchAugment", "build_augment", "register_augment"]
