"""Model registry: one contract for every model (images in [0, 1] -> logits).

``create_model("resnet18", num_classes=10, stem="cifar")`` builds a registered model;
``"torchvision:NAME"`` / ``"timm:NAME"`` build a user's model from those packages (randomly
initialised, never downloaded) wrapped in :class:`Normalized` when they are installed.
"""
from __future__ import annotations

import contextlib
import importlib
import itertools
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .resnet import (IMAGENET_MEAN, IMAGENET_STD, BasicBlock, Bottleneck, Normalize, Normalized,
                     ResNet)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn(num_classes, stem, mean, std) -> nn.Module`` under its name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


@register_model
def resnet18(num_classes: int = 1000, stem: str = "imagenet", **kw) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), num_classes, stem, **kw)


@register_model
def resnet34(num_classes: int = 1000, stem: str = "imagenet", **kw) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, stem, **kw)


@register_model
def resnet50(num_classes: int = 1000, stem: str = "imagenet", **kw) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, stem, **kw)


@register_model
def resnet18_narrow(num_classes: int = 10, stem: str = "cifar", **kw) -> ResNet:
    """ResNet-18 layout at a quarter of the width (16-32-64-128): for CPU runs."""
    return ResNet(BasicBlock, (2, 2, 2, 2), (16, 32, 64, 128), num_classes, stem, **kw)


def _external(name: str, num_classes: int, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    package, _, model_name = name.partition(":")
    try:
        module = importlib.import_module(package)
    except Exception as exc:  # torchvision fails at import on CPU-only torch builds
        raise ValueError(f"model {name!r} needs the package {package!r}, which does not import "
                         f"here ({type(exc).__name__}: {exc})") from exc
    if package == "timm":
        model = module.create_model(model_name, pretrained=False, num_classes=num_classes)
    else:
        builder = getattr(importlib.import_module("torchvision.models"), model_name, None)
        if builder is None:
            raise ValueError(f"torchvision has no model {model_name!r}")
        model = builder(weights=None, num_classes=num_classes)
    return Normalized(model, mean, std)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without either)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; each submodule's ``training`` flag restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def create_model(name: str, num_classes: int, stem: str = "cifar",
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> nn.Module:
    """Build a model taking images in [0, 1] ``(N, 3, H, W)`` and returning logits ``(N, classes)``."""
    if name.startswith(("torchvision:", "timm:")):
        return _external(name, num_classes, mean, std)
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())} "
                         f"(or 'torchvision:NAME' / 'timm:NAME' where installed)")
    return _REGISTRY[name](num_classes=num_classes, stem=stem, mean=mean, std=std)


__all__ = ["BasicBlock", "Bottleneck", "Normalize", "Normalized", "ResNet", "create_model", "eval_mode",
           "list_models", "model_device", "register_model", "IMAGENET_MEAN", "IMAGENET_STD"]
