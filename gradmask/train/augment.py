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
Augmentations owned by a layer above the engine register themselves from there (the engine
imports nothing above it): ``li-blur`` (Algorithm 2) from :mod:`gradmask.saliency.li_blur_augment`;
``PLUGIN_AUGMENTS`` names the module, so a config naming one validates before it is imported, and
training without it says what to import.
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


# augmentation name -> the module (above the engine) that registers it when imported
PLUGIN_AUGMENTS: dict[str, str] = {"li-blur": "gradmask.saliency.li_blur_augment"}


def augment_names() -> list[str]:
    """Every name ``TrainConfig.augment`` accepts: registered, or registered by a plug-in module."""
    return sorted(set(AUGMENTS) | set(PLUGIN_AUGMENTS))


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


def build_augment(config: "TrainConfig") -> Augment:
    return find_augment(config.augment)(config)


def find_augment(name: str) -> Callable[["TrainConfig"], Augment]:
    """The registered factory of ``name``; a clear ValueError when it is unknown, or when the plug-in
    module that provides it was not imported (the ``gradmask`` commands import them all)."""
    if name in AUGMENTS:
        return AUGMENTS[name]
    if name in PLUGIN_AUGMENTS:
        raise ValueError(f"augment {name!r} is registered by {PLUGIN_AUGMENTS[name]}: "
                         f"import {PLUGIN_AUGMENTS[name]} before training")
    raise ValueError(f"augment must be one of {augment_names()}, got {name!r}")


__all__ = ["AUGMENTS", "PLUGIN_AUGMENTS", "Augment", "BatchAugment", "augment_names", "build_augment", "find_augment",
           "register_augment"]
