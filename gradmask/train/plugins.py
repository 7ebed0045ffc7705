"""The registries a ``TrainConfig`` names and the engine looks up, for your own additions:

- augmentations (``TrainConfig.augment``): ``@register_augment("name")`` on a factory
  ``(config) -> Augment`` (:mod:`gradmask.train.augment`: built in ``crop-flip``, ``none``, ``li-blur``);
- config-driven callbacks: ``@register_config_callback(field)`` on a factory
  ``(config, data) -> callback``, added to every run whose ``config.<field>`` is truthy (built in:
  the GSNR probe of ``gsnr_every``, :mod:`gradmask.train.gsnr_probe`).

Worker processes (``jobs`` > 1, Slurm jobs) are fresh interpreters: register your additions in the
``setup`` callable of ``compare`` / ``reproduce`` (:func:`gradmask.compare.executor.open_trainer`).
"""
from __future__ import annotations

from typing import Any, Callable

from .augment import AUGMENTS, Augment, register_augment
from .gsnr_probe import gsnr_probe

#: ``factory(config, data) -> callback`` (``config`` a TrainConfig, ``data`` its RunData)
CallbackFactory = Callable[[Any, Any], Any]

#: config field -> the factory of its callback
CONFIG_CALLBACKS: dict[str, CallbackFactory] = {"gsnr_every": gsnr_probe}


def register_config_callback(field: str):
    """Decorator: ``factory(config, data) -> callback`` is added to every run whose ``config.<field>``
    is truthy."""
    def deco(factory: CallbackFactory) -> CallbackFactory:
        CONFIG_CALLBACKS[field] = factory
        return factory
    return deco


def config_callbacks(config, data) -> list:
    """The callbacks ``config`` asks for, built by their registered factories."""
    return [factory(config, data) for field, factory in CONFIG_CALLBACKS.items() if getattr(config, field)]


__all__ = ["AUGMENTS", "CONFIG_CALLBACKS", "Augment", "CallbackFactory", "config_callbacks", "register_augment",
           "register_config_callback"]
