"""Callbacks a ``TrainConfig`` field asks for, provided by the layers above the engine.

The engine imports nothing above it. A config field whose work lives in a higher layer (the GSNR
probe of ``gsnr_every``, owned by :mod:`gradmask.robustness`) is served by a factory that the
owning module registers when it is imported; ``PLUGIN_CALLBACKS`` names that module, so training
without it fails before any work with a message saying what to import (the ``gradmask`` commands,
``compare`` and ``reproduce`` import them all). Augmentations work the same way
(:mod:`gradmask.train.augment`, ``PLUGIN_AUGMENTS``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .augment import find_augment

if TYPE_CHECKING:
    from .config import TrainConfig
    from .data import RunData

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


__all__ = ["CONFIG_CALLBACKS", "PLUGIN_CALLBACKS", "check_plugins", "config_callbacks", "register_config_callback"]
