"""What a ``TrainConfig`` names and the engine looks up: training augmentations and config-driven
callbacks, each registered by the module that owns it.

Augmentations (``TrainConfig.augment`` -> ``AUGMENTS``). An augmentation has two parts, both optional:

- ``crop_flip``: the loader-level geometric augmentation (small datasets: batched random crop
  with 4-pixel zero padding + horizontal flip on the device, :class:`gradmask.data.RandomCropFlip`;
  streamed ImageNet: random-resized-crop + flip in the workers). Off: images as they are
  (ImageNet: the evaluation resize + centre crop).
- ``batch``: ``batch(images, labels, model) -> images``, applied to every training batch on the
  device after the loader (images float (N, 3, H, W) in [0, 1], labels int64 (N,), ``model`` the
  unwrapped model in train mode). It may use the global torch RNG (checkpointed, so resumption
  stays exact). The hook point for image-space augmentations that need the model.

Register one with ``@register_augment("name")`` on a factory ``(config) -> Augment``.

Callbacks (``CONFIG_CALLBACKS``): a config field whose work lives above the engine (the GSNR probe
of ``gsnr_every``) is served by ``factory(config, data) -> callback``, registered with
``@register_config_callback(field)``.

The engine imports nothing above it: ``li-blur`` (Algorithm 2) is registered by
:mod:`gradmask.saliency.li_blur_augment`, the GSNR probe by :mod:`gradmask.robustness.gsnr_callback`.
``PLUGIN_AUGMENTS`` / ``PLUGIN_CALLBACKS`` name those modules, so a config naming one validates
before it is imported, and training without it fails before any work saying what to import (the
``gradmask`` commands, ``compare`` and ``reproduce`` import them all).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import TrainConfig
    from .data import RunData

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


CallbackFactory = Callable[["TrainConfig", "RunData"], Any]

# config field -> the module (above the engine) that registers its callback factory when imported
PLUGIN_CALLBACKS: dict[str, str] = {"gsnr_every": "gradmask.robustness.gsnr_callback"}
CONFIG_CALLBACKS: dict[str, CallbackFactory] = {}


def register_config_callback(field: str):
    """Decorator: ``factory(config, data) -> callback`` is added to every run whose ``config.<field>``
    is truthy."""
    def deco(factory: CallbackFactory) -> CallbackFactory:
        CONFIG_CALLBACKS[field] = factory
        return factory
    return deco


def check_plugins(config: "TrainConfig") -> None:
    """ValueError, before any work, when ``config`` needs a plug-in whose module was not imported."""
    find_augment(config.augment)
    for field, module in PLUGIN_CALLBACKS.items():
        if getattr(config, field) and field not in CONFIG_CALLBACKS:
            raise ValueError(f"{field}={getattr(config, field)!r} needs the callback registered by {module}: "
                             f"import {module} before training")


def config_callbacks(config: "TrainConfig", data: "RunData") -> list:
    """The callbacks ``config`` asks for, built by their registered factories."""
    return [factory(config, data) for field, factory in CONFIG_CALLBACKS.items() if getattr(config, field)]


__all__ = ["AUGMENTS", "CONFIG_CALLBACKS", "PLUGIN_AUGMENTS", "PLUGIN_CALLBACKS", "Augment", "BatchAugment",
           "augment_names", "build_augment", "check_plugins", "config_callbacks", "find_augment", "register_augment",
           "register_config_callback"]
